//! Baton: a push-based, streaming, distributed query scheduler for Apache DataFusion.
//!
//! # The path of a query
//!
//! 1. A client (`baton sql`, a program using [`client::BatonClient`]) submits SQL — or a
//!    physical plan it planned itself — to the scheduler's gRPC `SchedulerService`, as a
//!    user the [`security`] checks know (or anyone on loopback when they are off), in a
//!    session of its own.
//! 2. The scheduler plans SQL against its [`catalog`] with DataFusion, then the
//!    [`planner`] cuts the physical plan at exchange boundaries (hash repartition,
//!    coalesce, sort-preserving merge) into a DAG of stages. Each stage ends in a
//!    [`shuffle::ShuffleWriterExec`]; its consumers read it through a
//!    [`shuffle::ShuffleReaderExec`]. Stage plans travel as datafusion-proto bytes.
//! 3. The [`scheduler`]'s query table keeps a readiness counter per stage (input stages
//!    still running). Stages at zero put their tasks (one per partition) in the work queue.
//! 4. Each executor holds one bidirectional gRPC stream to the scheduler. The dispatcher
//!    pushes a task down that stream the moment a ready task and a free slot meet — there
//!    is no polling anywhere.
//! 5. The [`executor`] runs the task's DataFusion operators. Shuffle output goes into its
//!    memory-first [`shuffle::ShuffleStore`] and is served to other executors by Arrow
//!    Flight `do_get`; a reader on the same executor reads the store directly.
//! 6. A finished task reports up the stream; the scheduler counts its stage down and
//!    releases the consumers. When the final stage is done, the client's Flight `do_get`
//!    on the scheduler streams the result batches through from the executors.

pub mod analyze;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod datagen;
pub mod executor;
pub mod flight_service;
pub mod ipc_types;
pub mod join_filters;
pub mod net;
pub mod object_stores;
pub mod planner;
pub mod proto;
pub mod scheduler;
pub mod security;
pub mod shuffle;
pub mod telemetry;
pub mod tpch;
