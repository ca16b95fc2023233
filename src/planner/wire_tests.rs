//! Helpers for planner tests: plan SQL, send a plan through the wire, show its result.

use std::sync::Arc;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;

use super::{decode_plan, encode_plan};

/// `sql`'s physical plan in `ctx`.
pub async fn planned(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
    ctx.sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap()
}

/// `plan` encoded and decoded as an executor receives a stage plan.
pub fn round_trip(ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    decode_plan(&encode_plan(plan).unwrap(), &ctx.task_ctx()).unwrap()
}

/// What `plan` returns in `ctx`, as a pretty table.
pub async fn shown(ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> String {
    let batches = collect(plan, ctx.task_ctx()).await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}
