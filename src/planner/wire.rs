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
//! as NULLs). After decoding, an empty format is unset again.

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

/// `plan` with every CSV sink's empty date and time formats unset, so it writes them
/// as DataFusion does by default.
pub fn unset_empty_csv_formats(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(exec) = node.downcast_ref::<DataSinkExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(sink) = exec.sink().downcast_ref::<CsvSink>() else {
            return Ok(Transformed::no(node));
        };
        let options = sink.writer_options();
        let Some(writer) = without_empty_formats(&options.writer_options) else {
            return Ok(Transformed::no(node));
        };
        let options = CsvWriterOptions {
            writer_options: writer,
            ..options.clone()
        };
        let sink = CsvSink::new(sink.config().clone(), options);
        Ok(Transformed::yes(Arc::new(DataSinkExec::new(
            exec.input().clone(),
            Arc::new(sink),
            exec.sort_order().clone(),
        ))))
    })
    .map(|t| t.data)
}

/// `writer` with its empty date and time formats unset, or `None` when it has none.
fn without_empty_formats(writer: &WriterBuilder) -> Option<WriterBuilder> {
    let formats = [
        writer.date_format(),
        writer.datetime_format(),
        writer.timestamp_format(),
        writer.timestamp_tz_format(),
        writer.time_format(),
    ];
    if !formats.contains(&Some("")) {
        return None;
    }
    let set = |format: Option<&str>| format.filter(|f| !f.is_empty()).map(str::to_owned);
    let mut out = WriterBuilder::new()
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
    if let Some(f) = set(writer.date_format()) {
        out = out.with_date_format(f);
    }
    if let Some(f) = set(writer.datetime_format()) {
        out = out.with_datetime_format(f);
    }
    if let Some(f) = set(writer.timestamp_format()) {
        out = out.with_timestamp_format(f);
    }
    if let Some(f) = set(writer.timestamp_tz_format()) {
        out = out.with_timestamp_tz_format(f);
    }
    if let Some(f) = set(writer.time_format()) {
        out = out.with_time_format(f);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{decode_plan, encode_plan};
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn a_series_projected_to_no_column_counts_the_same_after_decoding() {
        let ctx = SessionContext::new();
        let plan = ctx
            .sql("select count(*) as n from generate_series(1, 2000) as t(v)")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let plan = unproject_lazy_scans(plan).unwrap();
        let decoded = decode_plan(&encode_plan(plan).unwrap(), &ctx.task_ctx()).unwrap();
        let batches = datafusion::physical_plan::collect(decoded, ctx.task_ctx())
            .await
            .unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
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
        let plan = ctx
            .sql(&copy)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let decoded = decode_plan(&encode_plan(plan).unwrap(), &ctx.task_ctx()).unwrap();
        datafusion::physical_plan::collect(decoded, ctx.task_ctx())
            .await
            .unwrap();
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written, "t,d,n\n2020-12-10T01:02:03,2020-12-11,7\n");
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
