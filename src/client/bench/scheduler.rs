//! `baton bench scheduler`: the scheduler by itself. Simulated executors connect over the
//! real gRPC stream and report every task done the moment it arrives, so what is measured
//! is the scheduler: its query table, queue, policy, dispatcher and the stream.
//!
//! Two phases on one scheduler:
//! - throughput: `queries` queries of `tasks` map tasks plus one final task each, all
//!   submitted at once (100,000 queued tasks over 1,000 queries by default); reports tasks/s.
//! - latency: queries one after another, each with as many map tasks as there are slots,
//!   so a ready task always finds a free slot; reports ready → pushed (scheduler) and
//!   ready → received on the executor, p50 and p99.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use datafusion::arrow::datatypes::Schema;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{BenchError, quantile, text_table};
use crate::config::{HEARTBEAT_INTERVAL, MAX_MESSAGE_BYTES};
use crate::executor::micros_since;
use crate::proto::scheduler_service_client::SchedulerServiceClient;
use crate::proto::{
    ExecutorMessage, Heartbeat, RegisterExecutor, TaskStatus, TaskSucceeded, executor_message,
    scheduler_message, task_status,
};
use crate::scheduler::durable::StateLocation;
use crate::scheduler::{PolicyKind, Scheduler, StageSpec};

/// What to run (the flags of `baton bench scheduler`).
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerBench {
    /// Queries submitted at once in the throughput phase.
    #[arg(long, default_value = "1000")]
    pub queries: usize,
    /// Map tasks per query in the throughput phase.
    #[arg(long, default_value = "100")]
    pub tasks: usize,
    /// Simulated executors.
    #[arg(long, default_value = "2")]
    pub executors: usize,
    /// Slots per simulated executor.
    #[arg(long, default_value = "16")]
    pub slots: u32,
    /// Queries run one at a time in the latency phase.
    #[arg(long, default_value = "200")]
    pub latency_queries: usize,
    /// Scheduling policy.
    #[arg(long, default_value = "priority")]
    pub policy: PolicyKind,
    /// Where the scheduler keeps its state: memory, or embedded (a store in a
    /// temporary directory, written as a deployed scheduler writes it).
    #[arg(long, value_name = "memory|embedded", default_value = "memory")]
    pub state: StateLocation,
}

impl Default for SchedulerBench {
    /// The defaults of the flags.
    fn default() -> Self {
        crate::config::defaults_of::<Self>()
    }
}

/// What the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct SchedulerReport {
    /// Tasks run in the throughput phase.
    pub tasks: usize,
    /// Queries in the throughput phase.
    pub queries: usize,
    /// Wall seconds of the throughput phase.
    pub seconds: f64,
    /// Tasks per second.
    pub tasks_per_second: f64,
    /// Ready → pushed, seconds, in the latency phase.
    pub pushed_p50: f64,
    /// Ready → pushed p99.
    pub pushed_p99: f64,
    /// Ready → received by the executor, seconds, in the latency phase.
    pub started_p50: f64,
    /// Ready → received p99.
    pub started_p99: f64,
    /// Tasks sampled in the latency phase.
    pub latency_samples: usize,
}

/// Latency samples a simulated executor collected: (ready → pushed, ready → received).
type Samples = Arc<Mutex<Vec<(f64, f64)>>>;

/// Connects a simulated executor that finishes every task at once; returns when it
/// is registered.
async fn simulated_executor(
    address: &str,
    name: String,
    slots: u32,
    samples: Samples,
) -> Result<(), BenchError> {
    let channel = crate::security::Dialer::plain()
        .connect(address)
        .await
        .map_err(|e| BenchError::Simulated(e.to_string()))?;
    let mut client = SchedulerServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (outbound, outbound_rx) = mpsc::unbounded_channel();
    let _ = outbound.send(ExecutorMessage {
        message: Some(executor_message::Message::Register(RegisterExecutor {
            executor_id: name.clone(),
            flight_address: format!("{name}.invalid:1"),
            slots,
            // Its tasks end at once; there is nothing to suspend.
            preempt_slots: 0,
            held: Vec::new(),
        })),
    });
    let mut inbound = client
        .connect(UnboundedReceiverStream::new(outbound_rx))
        .await
        .map_err(|e| BenchError::Simulated(e.to_string()))?
        .into_inner();
    let beats = outbound.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            ticks.tick().await;
            let beat = ExecutorMessage {
                message: Some(executor_message::Message::Heartbeat(Heartbeat {
                    running_tasks: 0,
                })),
            };
            if beats.send(beat).is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(message)) = inbound.message().await {
            let Some(scheduler_message::Message::RunTask(task)) = message.message else {
                continue;
            };
            let received = micros_since(task.ready_at_micros);
            let pushed = task.pushed_at_micros.saturating_sub(task.ready_at_micros) as f64 / 1e6;
            samples
                .lock()
                .expect("samples lock")
                .push((pushed, received));
            let done = ExecutorMessage {
                message: Some(executor_message::Message::TaskStatus(TaskStatus {
                    task: task.task,
                    result: Some(task_status::Result::Succeeded(TaskSucceeded {
                        partitions: Vec::new(),
                        elapsed_micros: 0,
                        inline_result: None,
                        ..Default::default()
                    })),
                })),
            };
            if outbound.send(done).is_err() {
                return;
            }
        }
    });
    Ok(())
}

fn stages(map_tasks: usize) -> Vec<StageSpec> {
    vec![
        StageSpec {
            plan: Bytes::from_static(b"map"),
            inputs: vec![],
            tasks: map_tasks,
            cost: map_tasks as f64,
            output_rows: 0.0,
            cost_per_input_row: 0.0,
            operators: String::new(),
            filters: Vec::new(),
            analyzed: Vec::new(),
        },
        StageSpec {
            plan: Bytes::from_static(b"final"),
            inputs: vec![0],
            tasks: 1,
            cost: 1.0,
            output_rows: 0.0,
            cost_per_input_row: 0.0,
            operators: String::new(),
            filters: Vec::new(),
            analyzed: Vec::new(),
        },
    ]
}

/// Runs both phases and returns what they measured.
pub async fn run_scheduler_bench(bench: &SchedulerBench) -> Result<SchedulerReport, BenchError> {
    let state_dir = tempfile::tempdir()
        .map_err(|e| BenchError::Simulated(format!("a directory for the state store: {e}")))?;
    let config = crate::scheduler::SchedulerConfig {
        policy: bench.policy,
        state: Some(bench.state.clone()),
        state_dir: state_dir.path().to_path_buf(),
        ..Default::default()
    };
    let scheduler = Scheduler::with_session(datafusion::prelude::SessionContext::new(), &config)
        .await
        .map_err(|e| BenchError::Simulated(e.to_string()))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Simulated(format!("binding the scheduler: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| BenchError::Simulated(e.to_string()))?
        .to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        scheduler
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .map_err(|e| BenchError::Simulated(e.to_string()))?,
    );
    let samples: Samples = Arc::default();
    for i in 0..bench.executors.max(1) {
        simulated_executor(
            &address,
            format!("sim-{i}"),
            bench.slots.max(1),
            samples.clone(),
        )
        .await?;
    }
    scheduler.wait_for_executors(bench.executors.max(1)).await;
    let schema = Arc::new(Schema::empty());

    // Throughput: everything at once.
    let started = Instant::now();
    // Submitted at once, as many clients would: their writes share transactions.
    let submits = (0..bench.queries).map(|i| {
        scheduler.submit_stages(format!("bench {i}"), stages(bench.tasks), schema.clone())
    });
    let ids = futures::future::try_join_all(submits).await?;
    for id in &ids {
        scheduler.wait(id).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let tasks = bench.queries * (bench.tasks + 1);

    // Latency: one query at a time, never more ready tasks than slots.
    samples.lock().expect("samples lock").clear();
    let slots = bench.executors.max(1) * bench.slots.max(1) as usize;
    for i in 0..bench.latency_queries {
        let id = scheduler
            .submit_stages(format!("latency {i}"), stages(slots), schema.clone())
            .await?;
        scheduler.wait(&id).await?;
    }
    let latency: Vec<(f64, f64)> = samples.lock().expect("samples lock").clone();
    let pushed: Vec<f64> = latency.iter().map(|l| l.0).collect();
    let received: Vec<f64> = latency.iter().map(|l| l.1).collect();
    // The simulated executors' streams never end by themselves, so a graceful shutdown
    // would wait for them forever: stop the server outright.
    let _ = stop.send(());
    server.abort();
    Ok(SchedulerReport {
        tasks,
        queries: bench.queries,
        seconds,
        tasks_per_second: tasks as f64 / seconds.max(f64::EPSILON),
        pushed_p50: quantile(&pushed, 0.5),
        pushed_p99: quantile(&pushed, 0.99),
        started_p50: quantile(&received, 0.5),
        started_p99: quantile(&received, 0.99),
        latency_samples: latency.len(),
    })
}

/// The report as text.
pub fn format_scheduler_report(report: &SchedulerReport) -> String {
    let ms = |s: f64| format!("{:.3} ms", s * 1e3);
    let rows = vec![
        vec!["measure".to_string(), "value".to_string()],
        vec![
            "throughput".into(),
            format!(
                "{:.0} tasks/s ({} tasks of {} queries in {:.2} s)",
                report.tasks_per_second, report.tasks, report.queries, report.seconds
            ),
        ],
        vec!["ready → pushed p50".into(), ms(report.pushed_p50)],
        vec!["ready → pushed p99".into(), ms(report.pushed_p99)],
        vec!["ready → on executor p50".into(), ms(report.started_p50)],
        vec!["ready → on executor p99".into(), ms(report.started_p99)],
        vec!["latency samples".into(), report.latency_samples.to_string()],
    ];
    text_table(&rows)
}
