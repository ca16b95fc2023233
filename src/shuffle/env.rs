//! What a running task needs beyond its plan: who it is, where its inputs live, the
//! local store and the Flight clients. It rides in the task's DataFusion session config
//! as an extension, so Baton's operators find it in `execute`.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;

use super::fetch::FlightClients;
use super::store::ShuffleStore;

/// Where one map task's output lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLocation {
    /// The executor that ran the map task.
    pub executor_id: String,
    /// host:port of that executor's Flight endpoint.
    pub flight_address: String,
}

/// The per-task environment of Baton's shuffle operators.
#[derive(Debug)]
pub struct TaskEnv {
    /// The query the task belongs to.
    pub query_id: Arc<str>,
    /// The stage the task runs.
    pub stage_id: u32,
    /// The task's partition of that stage: the map partition its output is stored as
    /// (a task may run it as partition 0 of an instance narrowed to it).
    pub map_partition: u32,
    /// The executor running the task.
    pub executor_id: String,
    /// For each input stage: the location of each of its map tasks' output, by partition.
    pub inputs: HashMap<u32, Vec<MapLocation>>,
    /// This executor's shuffle store.
    pub store: ShuffleStore,
    /// Flight clients to other executors.
    pub clients: FlightClients,
}

impl TaskEnv {
    /// The environment of the task running in `ctx`.
    pub fn from_context(ctx: &TaskContext) -> Result<Arc<TaskEnv>> {
        ctx.session_config()
            .get_extension::<TaskEnv>()
            .ok_or_else(|| {
                DataFusionError::Execution(
                    "Baton shuffle operators run only inside a Baton executor task".into(),
                )
            })
    }

    /// The map-output locations of one input stage.
    pub fn input(&self, stage_id: u32) -> Result<&[MapLocation]> {
        self.inputs
            .get(&stage_id)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "task of stage {} has no locations for its input stage {stage_id}",
                    self.stage_id
                ))
            })
    }
}
