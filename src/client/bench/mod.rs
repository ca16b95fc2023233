//! Benchmarks: `baton bench tpch` (TPC-H on Baton against single-node DataFusion),
//! `baton bench fairness` (short queries under a load of long ones, per policy),
//! `baton bench joins` (selective star joins with join filters on and off) and
//! `baton bench scheduler` (the scheduler's own throughput and dispatch latency) and
//! `baton bench straggler` (one slow executor among fast ones).

pub mod cpu_limit;
pub mod fairness;
pub mod joins;
pub mod memory;
pub mod plots;
pub mod processes;
pub mod scheduler;
pub mod straggler;
pub mod tpch;

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ClientError;
use crate::catalog::CatalogError;
use crate::cluster::ClusterError;
use crate::datagen::DatagenError;
use crate::scheduler::SchedulerError;

pub use tpch::{BenchReport, TpchBench, format_report, run_tpch_bench};

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Data generation failed.
    #[error(transparent)]
    Datagen(#[from] DatagenError),
    /// The catalog could not be loaded.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A cluster could not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A query failed on Baton.
    #[error("Q{query} on Baton: {source}")]
    Query {
        /// The TPC-H query.
        query: u32,
        /// The cause.
        source: ClientError,
    },
    /// A query failed on single-node DataFusion.
    #[error("Q{query} on DataFusion: {source}")]
    Baseline {
        /// The TPC-H query.
        query: u32,
        /// The cause.
        source: datafusion::error::DataFusionError,
    },
    /// A scheduler could not start or serve.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// A cluster of processes could not start.
    #[error("benchmark cluster: {0}")]
    Processes(String),
    /// A simulated executor of the scheduler benchmark failed.
    #[error("simulated executor: {0}")]
    Simulated(String),
    /// Writing results failed.
    #[error("writing {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}

/// The `q`-quantile (0..=1) of `values`, by nearest rank; 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Writes `value` as pretty JSON to `dir/name`, creating `dir`.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<PathBuf, BenchError> {
    let path = dir.join(name);
    let write_error = |message: String| BenchError::Write {
        path: path.clone(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_error(e.to_string()))?;
    let json = serde_json::to_string_pretty(value).map_err(|e| write_error(e.to_string()))?;
    std::fs::write(&path, json).map_err(|e| write_error(e.to_string()))?;
    Ok(path)
}

/// Writes `text` to `dir/name`, creating `dir`.
pub fn write_text(dir: &Path, name: &str, text: &str) -> Result<PathBuf, BenchError> {
    let path = dir.join(name);
    std::fs::create_dir_all(dir).map_err(|e| BenchError::Write {
        path: path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(|e| BenchError::Write {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(path)
}

/// Renders rows of cells as a right-aligned text table.
pub fn text_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:>w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.0), 1.0);
    }
}
