//! Rewrites that keep a plan's meaning through datafusion-proto.
//!
//! datafusion-proto encodes a `LazyMemoryExec` (`generate_series`, `range`) with its
//! projected schema but not its projection: decoded, the generator emits every column
//! under a schema of fewer (`count(*)` over a series projects none), and the stage
//! fails. Before cutting, such a scan becomes the whole scan under a `ProjectionExec`,
//! which encodes faithfully.
//!
//! datafusion-proto (55) sends a CSV sink's unset date and time formats as empty strings
//! and decodes them as formats set to "": the sink would write every date, time and
//! timestamp as an empty field (`COPY … STORED AS CSV` of a timestamp column reads back
//! as NULLs). It also sends an aggregate's grouping sets flattened to one flag per set
//! and expression, so the one empty set of `GROUP BY GROUPING SETS (())` decodes as no
//! set at all and the aggregate yields no row. [`repair_decoded`] undoes both.

use std::sync::Arc;

use datafusion::arrow::csv::WriterBuilder;
use datafusion::common::file_options::csv_writer::CsvWriterOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::file_format::csv::CsvSink;
use datafusion::datasource::physical_plan::FileSink;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, PhysicalGroupBy};
use datafusion::physical_plan::memory::LazyMemoryExec;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};

/// `plan` with every projected `LazyMemoryExec` replaced by an unprojected one under a
/// projection.
pub fn unproject_lazy_scans(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(scan) = node.downcast_ref::<LazyMemoryExec>() else {
            return Ok(Transformed::no(node));
        };
        let [generator] = scan.generators().as_slice() else {
            return Ok(Transformed::no(node));
        };
        // A fresh copy of the generator shows the columns it really emits.
        let probe = generator.read().reset_state();
        let Some(batch) = probe.write().generate_next_batch()? else {
            return Ok(Transformed::no(node));
        };
        let full = batch.schema();
        let projected = scan.schema();
        if full.fields().len() == projected.fields().len() {
            return Ok(Transformed::no(node));
        }
        let whole: Arc<dyn ExecutionPlan> = Arc::new(LazyMemoryExec::try_new(
            full.clone(),
            scan.generators().clone(),
        )?);
        let exprs = projected
            .fields()
            .iter()
            .map(|field| {
                let index = full.index_of(field.name())?;
                Ok(ProjectionExpr::new(
                    Arc::new(Column::new(field.name(), index)),
                    field.name().clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformed::yes(Arc::new(ProjectionExec::try_new(
            exprs, whole,
        )?)))
    })
    .map(|t| t.data)
}

/// `plan`, as datafusion-proto decoded it, with what the wire lost put back: a CSV sink's
/// unset date and time formats and an aggregate's empty grouping set.
pub fn repair_decoded(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let repaired = match csv_sink_with_formats_unset(node.as_ref()) {
            Some(sink) => Some(sink),
            None => aggregate_with_empty_set(node.as_ref())?,
        };
        Ok(match repaired {
            Some(repaired) => Transformed::yes(repaired),
            None => Transformed::no(node),
        })
    })
    .map(|t| t.data)
}

/// `node` with its empty date and time formats unset, when it is a CSV sink with some.
fn csv_sink_with_formats_unset(node: &dyn ExecutionPlan) -> Option<Arc<dyn ExecutionPlan>> {
    let exec = node.downcast_ref::<DataSinkExec>()?;
    let sink = exec.sink().downcast_ref::<CsvSink>()?;
    let options = sink.writer_options();
    let options = CsvWriterOptions {
        writer_options: without_empty_formats(&options.writer_options)?,
        ..options.clone()
    };
    let sink = CsvSink::new(sink.config().clone(), options);
    Some(Arc::new(DataSinkExec::new(
        exec.input().clone(),
        Arc::new(sink),
        exec.sort_order().clone(),
    )))
}

/// `node` with its one empty grouping set back, when it is an aggregate over grouping
/// sets with no expression and (as decoded) no set.
fn aggregate_with_empty_set(node: &dyn ExecutionPlan) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    let group_by = aggregate.group_expr();
    if !(group_by.has_grouping_set() && group_by.is_empty() && group_by.groups().is_empty()) {
        return Ok(None);
    }
    let group_by = PhysicalGroupBy::new(vec![], vec![], vec![vec![]], true);
    let repaired = AggregateExec::try_new(
        *aggregate.mode(),
        group_by,
        aggregate.aggr_expr().to_vec(),
        aggregate.filter_expr().to_vec(),
        aggregate.input().clone(),
        aggregate.input_schema(),
    )?
    .with_limit_options(aggregate.limit_options());
    Ok(Some(Arc::new(repaired)))
}

/// A CSV writer's date or time format: how to read it and how to set it.
type Format = (
    fn(&WriterBuilder) -> Option<&str>,
    fn(WriterBuilder, String) -> WriterBuilder,
);

/// Every date and time format of a CSV writer.
const FORMATS: [Format; 5] = [
    (WriterBuilder::date_format, WriterBuilder::with_date_format),
    (
        WriterBuilder::datetime_format,
        WriterBuilder::with_datetime_format,
    ),
    (
        WriterBuilder::timestamp_format,
        WriterBuilder::with_timestamp_format,
    ),
    (
        WriterBuilder::timestamp_tz_format,
        WriterBuilder::with_timestamp_tz_format,
    ),
    (WriterBuilder::time_format, WriterBuilder::with_time_format),
];

/// `writer` with its empty date and time formats unset, or `None` when it has none.
fn without_empty_formats(writer: &WriterBuilder) -> Option<WriterBuilder> {
    if !FORMATS.iter().any(|(get, _)| get(writer) == Some("")) {
        return None;
    }
    let base = WriterBuilder::new()
        .with_header(writer.header())
        .with_delimiter(writer.delimiter())
        .with_quote(writer.quote())
        .with_escape(writer.escape())
        .with_double_quote(writer.double_quote())
        .with_null(writer.null().to_owned())
        .with_ignore_leading_whitespace(writer.ignore_leading_whitespace())
        .with_ignore_trailing_whitespace(writer.ignore_trailing_whitespace())
        .with_quote_style(writer.quote_style())
        .with_line_terminator(writer.line_terminator().clone());
    Some(FORMATS.iter().fold(
        base,
        |out, (get, set)| match get(writer).filter(|f| !f.is_empty()) {
            Some(format) => set(out, format.to_owned()),
            None => out,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::wire_tests::{planned, round_trip, shown};
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn a_series_projected_to_no_column_counts_the_same_after_decoding() {
        let ctx = SessionContext::new();
        let plan = planned(
            &ctx,
            "select count(*) as n from generate_series(1, 2000) as t(v)",
        )
        .await;
        let plan = unproject_lazy_scans(plan).unwrap();
        let shown = shown(&ctx, round_trip(&ctx, plan)).await;
        assert!(shown.contains("| 2000 |"), "{shown}");
    }

    #[tokio::test]
    async fn a_csv_sink_writes_timestamps_after_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.csv");
        let ctx = SessionContext::new();
        let copy = format!(
            "copy (select to_timestamp('2020-12-10T01:02:03Z') as t, \
             to_date('2020-12-11') as d, 7 as n) to '{}' stored as csv",
            file.display()
        );
        let plan = round_trip(&ctx, planned(&ctx, &copy).await);
        datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written, "t,d,n\n2020-12-10T01:02:03,2020-12-11,7\n");
    }

    #[tokio::test]
    async fn an_empty_grouping_set_yields_its_row_after_decoding() {
        let ctx = SessionContext::new();
        let sql = "select count(*) as n from (values (1), (2)) as t(a) group by grouping sets (())";
        let shown = shown(&ctx, round_trip(&ctx, planned(&ctx, sql).await)).await;
        assert!(shown.contains("| 2 |"), "{shown}");
    }

    #[test]
    fn a_writer_with_a_set_format_keeps_it_and_its_other_options() {
        let writer = WriterBuilder::new()
            .with_delimiter(b';')
            .with_header(false)
            .with_null("NA".into())
            .with_date_format("%d/%m/%Y".into())
            .with_timestamp_format(String::new());
        let fixed = without_empty_formats(&writer).unwrap();
        assert_eq!(fixed.date_format(), Some("%d/%m/%Y"));
        assert_eq!(fixed.timestamp_format(), None);
        assert_eq!(fixed.delimiter(), b';');
        assert!(!fixed.header());
        assert_eq!(fixed.null(), "NA");
        assert!(without_empty_formats(&fixed).is_none());
    }
}
