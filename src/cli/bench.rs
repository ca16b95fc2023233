//! `baton bench …` and `baton datagen`.

use std::path::PathBuf;
use std::time::Instant;

use super::CliError;
use crate::catalog::TableFormat;
use crate::client::bench::fairness::{
    FairnessBench, format_fairness_report, run_fairness_bench as run_fairness,
};
use crate::client::bench::joins::{JoinsBench, format_joins_report, run_joins_bench as run_joins};
use crate::client::bench::scheduler::{
    SchedulerBench, format_scheduler_report, run_scheduler_bench as run_sched,
};
use crate::client::bench::straggler::{
    StragglerBench, format_straggler_report, run_straggler_bench as run_straggler,
};
use crate::client::bench::{self, TpchBench, format_report, run_tpch_bench as run_bench};
use crate::datagen;

/// `baton datagen tpch`: into a directory, or an object store prefix (`s3://…`).
pub async fn run_datagen(scale: f64, out: PathBuf, format: TableFormat) -> Result<(), CliError> {
    let started = Instant::now();
    let target = out.to_string_lossy().into_owned();
    let catalog = if crate::object_stores::is_url(&target) {
        datagen::upload_tpch(scale, &target, format).await?
    } else {
        let out = out.clone();
        tokio::task::spawn_blocking(move || datagen::generate_tpch(scale, &out, format))
            .await
            .map_err(|e| CliError::Io {
                what: "generating TPC-H".into(),
                source: std::io::Error::other(e),
            })??
            .display()
            .to_string()
    };
    eprintln!(
        "TPC-H SF {scale} written to {target} in {:.1} s; catalog: {catalog}",
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// `baton bench tpch`.
pub async fn run_tpch_bench(bench: TpchBench) -> Result<(), CliError> {
    if !datagen::cache_dir()
        .join(format!("tpch-sf{}-parquet", bench.scale))
        .join("catalog.toml")
        .exists()
    {
        eprintln!("generating TPC-H SF {} (first run only)…", bench.scale);
    }
    let report = run_bench(&bench).await?;
    println!("{}", format_report(&report));
    if let Some(out) = &bench.out {
        eprintln!("results and plots written to {}", out.display());
    }
    Ok(())
}

/// `baton bench straggler`.
pub async fn run_straggler_bench(bench: StragglerBench) -> Result<(), CliError> {
    let report = run_straggler(&bench).await?;
    println!("{}", format_straggler_report(&report));
    if let Some(out) = &bench.out {
        eprintln!("results and timelines written to {}", out.display());
    }
    Ok(())
}

/// `baton bench fairness`.
pub async fn run_fairness_bench(bench: FairnessBench, out: PathBuf) -> Result<(), CliError> {
    let preempt = bench.preempt_slots.unwrap_or(bench.slots);
    eprintln!(
        "fairness: {} long + {} short queries per policy on {} executors × {} slots \
         (up to {preempt} suspended each), TPC-H SF {}, {} run(s); separate processes",
        bench.long_queries,
        bench.short_queries,
        bench.executors,
        bench.slots,
        bench.scale,
        bench.runs
    );
    let results = run_fairness(&bench).await?;
    println!("{}", format_fairness_report(&results));
    let path = bench::write_json(&out, "fairness.json", &results)?;
    eprintln!("results written to {}", path.display());
    Ok(())
}

/// `baton bench joins`.
pub async fn run_joins_bench(bench: JoinsBench) -> Result<(), CliError> {
    let report = run_joins(&bench).await?;
    println!("{}", format_joins_report(&report));
    eprintln!(
        "results written to {}",
        bench.out.join("joins.json").display()
    );
    Ok(())
}

/// `baton bench scheduler`.
pub async fn run_scheduler_bench(bench: SchedulerBench, out: PathBuf) -> Result<(), CliError> {
    let report = run_sched(&bench).await?;
    println!("{}", format_scheduler_report(&report));
    let path = bench::write_json(&out, "scheduler.json", &report)?;
    eprintln!("results written to {}", path.display());
    Ok(())
}
