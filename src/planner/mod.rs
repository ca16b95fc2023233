//! The DAG planner: a DataFusion physical plan becomes a DAG of stages, and stage plans
//! become bytes (datafusion-proto plus [`BatonCodec`] for Baton's operators) and back.

mod codec;
mod cost;
mod joins;
mod stages;

pub use codec::{BatonCodec, decode_plan, encode_plan};
pub use cost::{ROWS_PER_UNIT, StageEstimate, estimate_stages};
pub use joins::distribute_joins;
pub use stages::{StageDag, StagePlan, plan_stages};

/// Errors of planning and plan serialization.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    /// DataFusion could not plan, rewrite or (de)serialize the plan.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// The plan bytes are not a valid datafusion-proto plan.
    #[error("invalid plan bytes: {0}")]
    Decode(#[from] prost::DecodeError),
}
