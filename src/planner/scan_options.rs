//! What datafusion-proto (55) drops from a file scan, put back.
//!
//! * `FileScanExecConf` has no field for the files' compression and `CsvScanExecNode` none
//!   for the line terminator: decoded, a scan of gzipped CSV or JSON reads the compressed
//!   bytes as text and fails, and a CSV with another terminator is cut into other rows.
//!   [`ScanOptionsConverter`] encodes such a scan as a Baton extension node that holds the
//!   scan as datafusion-proto encodes it plus the dropped options; [`restore`] puts them
//!   back when the codec decodes it.
//! * A Parquet scan that reads `file_row_index()` has a virtual row-number column in its
//!   table schema, which the encoding leaves out, while its projection reads it by
//!   position: the decoded scan fails. The converter writes such a projection with the
//!   `file_row_index()` calls DataFusion rewrote into column reads, so decoding pushes
//!   them into the scan again and the scan gets its virtual column back.

use std::sync::Arc;

use datafusion::arrow::datatypes::{FieldRef, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::parsers::CompressionTypeVariant;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::physical_plan::{CsvSource, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::functions::core::file_row_index;
use datafusion::parquet::arrow::RowNumber;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr_with_converter;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr_with_converter;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalPlanNodeExt,
    PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::physical_plan_node::PhysicalPlanType;
use datafusion_proto::protobuf::{PhysicalExprNode, PhysicalExtensionNode, PhysicalPlanNode};
use prost::Message;

use crate::proto::{FileCompression, PlanExtension, ScanOptionsNode, plan_extension};

/// Encodes plans as datafusion-proto does, except that a file scan with options
/// datafusion-proto drops becomes a [`ScanOptionsNode`] extension.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanOptionsConverter;

impl PhysicalProtoConverterExtension for ScanOptionsConverter {
    fn proto_to_execution_plan(
        &self,
        proto: &PhysicalPlanNode,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        proto.try_into_physical_plan_with_context(ctx, self)
    }

    fn execution_plan_to_proto(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<PhysicalPlanNode> {
        let mut node =
            PhysicalPlanNode::try_from_physical_plan_with_converter(Arc::clone(plan), codec, self)?;
        // datafusion-proto encodes an extension node's inputs without the converter
        // (their own inputs with it): a scan right under one is seen to here.
        if let Some(PhysicalPlanType::Extension(extension)) = &mut node.physical_plan_type {
            for (input, child) in extension.inputs.iter_mut().zip(plan.children()) {
                *input = self.repaired(std::mem::take(input), child.as_ref(), codec)?;
            }
        }
        self.repaired(node, plan.as_ref(), codec)
    }

    fn proto_to_physical_expr(
        &self,
        proto: &PhysicalExprNode,
        input_schema: &Schema,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        parse_physical_expr_with_converter(proto, input_schema, ctx, self)
    }

    fn physical_expr_to_proto(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<PhysicalExprNode> {
        serialize_physical_expr_with_converter(expr, codec, self)
    }
}

impl ScanOptionsConverter {
    /// `node`, datafusion-proto's encoding of `plan`, with what it dropped from a file
    /// scan put back.
    fn repaired(
        &self,
        mut node: PhysicalPlanNode,
        plan: &dyn ExecutionPlan,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<PhysicalPlanNode> {
        if let Some(projection) = row_index_projection(plan)? {
            let Some(PhysicalPlanType::ParquetScan(scan)) = &mut node.physical_plan_type else {
                return Err(DataFusionError::Internal(
                    "a scan with a row index column did not encode as a Parquet scan".into(),
                ));
            };
            let encoded = scan
                .base_conf
                .as_mut()
                .and_then(|conf| conf.projection_exprs.as_mut())
                .filter(|encoded| encoded.projections.len() == projection.len())
                .ok_or_else(|| {
                    DataFusionError::Internal("a Parquet scan's projection did not encode".into())
                })?;
            for (encoded, expr) in encoded.projections.iter_mut().zip(projection) {
                encoded.expr = Some(serialize_physical_expr_with_converter(&expr, codec, self)?);
            }
        }
        Ok(with_dropped_options(node, plan))
    }
}

/// The projection of `plan`, when it is a file scan whose projection reads a virtual
/// row-number column, with `file_row_index()` calls in place of those reads.
fn row_index_projection(plan: &dyn ExecutionPlan) -> Result<Option<Vec<Arc<dyn PhysicalExpr>>>> {
    let Some(files) = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
    else {
        return Ok(None);
    };
    let source = files.file_source();
    let table = source.table_schema();
    let is_row_number = |field: &FieldRef| field.try_extension_type::<RowNumber>().is_ok();
    let (Some(projection), true) = (
        source.projection(),
        table.virtual_columns().iter().any(is_row_number),
    ) else {
        return Ok(None);
    };
    let file_schema = table.schema_without_virtual_columns();
    let real = file_schema.fields().len();
    let call: Arc<dyn PhysicalExpr> = Arc::new(ScalarFunctionExpr::try_new(
        file_row_index(),
        vec![],
        file_schema,
        Arc::new(ConfigOptions::default()),
    )?);
    let mut any = false;
    let rewritten = projection
        .iter()
        .map(|projected| {
            let rewritten = Arc::clone(&projected.expr).transform_up(|e| {
                let row_number = e.downcast_ref::<Column>().is_some_and(|c| {
                    c.index() >= real
                        && table
                            .table_schema()
                            .fields()
                            .get(c.index())
                            .is_some_and(is_row_number)
                });
                Ok(match row_number {
                    true => Transformed::yes(Arc::clone(&call)),
                    false => Transformed::no(e),
                })
            })?;
            any |= rewritten.transformed;
            Ok(rewritten.data)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(any.then_some(rewritten))
}

/// `node`, the encoding of `plan`, inside a [`ScanOptionsNode`] when `plan` is a file scan
/// with options datafusion-proto drops.
fn with_dropped_options(node: PhysicalPlanNode, plan: &dyn ExecutionPlan) -> PhysicalPlanNode {
    let Some(mut options) = dropped_options(plan) else {
        return node;
    };
    options.scan = node.encode_to_vec();
    let extension = PlanExtension {
        node: Some(plan_extension::Node::ScanOptions(options)),
    };
    PhysicalPlanNode {
        physical_plan_type: Some(PhysicalPlanType::Extension(PhysicalExtensionNode {
            node: extension.encode_to_vec(),
            inputs: vec![],
        })),
    }
}

/// The options of `plan` datafusion-proto would drop (its `scan` left empty), when it is
/// a file scan that has some.
fn dropped_options(plan: &dyn ExecutionPlan) -> Option<ScanOptionsNode> {
    let files = plan
        .downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<FileScanConfig>()?;
    let csv_terminator = files
        .file_source()
        .downcast_ref::<CsvSource>()
        .and_then(|csv| csv.terminator())
        .map(u32::from);
    let compression = compression_to_proto(*files.file_compression_type.get_variant());
    (compression != FileCompression::Uncompressed || csv_terminator.is_some()).then(|| {
        ScanOptionsNode {
            scan: vec![],
            compression: compression as i32,
            csv_terminator,
        }
    })
}

/// The scan `node` holds, decoded in `ctx`, with its dropped options back.
pub fn restore(
    node: &ScanOptionsNode,
    ctx: &PhysicalPlanDecodeContext<'_>,
    proto_converter: &dyn PhysicalProtoConverterExtension,
) -> Result<Arc<dyn ExecutionPlan>> {
    let invalid = |what: &str| DataFusionError::Internal(format!("scan options: {what}"));
    let scan =
        PhysicalPlanNode::decode(node.scan.as_slice()).map_err(|e| invalid(&e.to_string()))?;
    let plan = proto_converter.proto_to_execution_plan(&scan, ctx)?;
    let files = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
        .ok_or_else(|| invalid("the node holds no file scan"))?;
    let compression =
        FileCompression::try_from(node.compression).map_err(|_| invalid("unknown compression"))?;
    let mut builder = FileScanConfigBuilder::from(files.clone())
        .with_file_compression_type(compression_from_proto(compression).into());
    if let Some(terminator) = node.csv_terminator {
        let terminator = u8::try_from(terminator).map_err(|_| invalid("terminator is no byte"))?;
        let csv = files
            .file_source()
            .downcast_ref::<CsvSource>()
            .ok_or_else(|| invalid("a terminator for a scan that is not CSV"))?;
        builder = builder.with_source(Arc::new(csv.with_terminator(Some(terminator))));
    }
    Ok(DataSourceExec::from_data_source(builder.build()))
}

fn compression_to_proto(variant: CompressionTypeVariant) -> FileCompression {
    match variant {
        CompressionTypeVariant::GZIP => FileCompression::Gzip,
        CompressionTypeVariant::BZIP2 => FileCompression::Bzip2,
        CompressionTypeVariant::XZ => FileCompression::Xz,
        CompressionTypeVariant::ZSTD => FileCompression::Zstd,
        CompressionTypeVariant::UNCOMPRESSED => FileCompression::Uncompressed,
    }
}

fn compression_from_proto(compression: FileCompression) -> CompressionTypeVariant {
    match compression {
        FileCompression::Gzip => CompressionTypeVariant::GZIP,
        FileCompression::Bzip2 => CompressionTypeVariant::BZIP2,
        FileCompression::Xz => CompressionTypeVariant::XZ,
        FileCompression::Zstd => CompressionTypeVariant::ZSTD,
        FileCompression::Uncompressed => CompressionTypeVariant::UNCOMPRESSED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::wire_tests::{planned, round_trip, shown};
    use crate::shuffle::ShuffleWriterExec;
    use datafusion::prelude::SessionContext;

    /// A session with table `t` over two gzipped CSV files of rows (1, a) and (2, b).
    async fn gzipped_table(dir: &std::path::Path) -> SessionContext {
        let ctx = SessionContext::new();
        for (n, row) in ["(1, 'a')", "(2, 'b')"].iter().enumerate() {
            let copy = format!(
                "copy (values {row}) to '{}/{n}.csv.gz' stored as csv \
                 options ('format.compression' gzip)",
                dir.display()
            );
            ctx.sql(&copy).await.unwrap().collect().await.unwrap();
        }
        let create = format!(
            "create external table t (n int, s varchar) stored as csv location '{}' \
             options ('format.compression' gzip)",
            dir.display()
        );
        ctx.sql(&create).await.unwrap().collect().await.unwrap();
        ctx
    }

    /// The scan under `plan`'s root (the root when it is one).
    fn scan_of(plan: &Arc<dyn ExecutionPlan>) -> &FileScanConfig {
        let mut node = plan;
        loop {
            if let Some(exec) = node.downcast_ref::<DataSourceExec>() {
                return exec.data_source().downcast_ref::<FileScanConfig>().unwrap();
            }
            node = node.children()[0];
        }
    }

    #[tokio::test]
    async fn a_gzipped_csv_scan_reads_the_same_after_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = gzipped_table(dir.path()).await;
        let plan = round_trip(&ctx, planned(&ctx, "select n, s from t order by n").await);
        let shown = shown(&ctx, plan).await;
        assert!(
            shown.contains("| 1 | a |") && shown.contains("| 2 | b |"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_scan_right_under_a_baton_operator_keeps_its_compression() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = gzipped_table(dir.path()).await;
        let scan = planned(&ctx, "select * from t").await;
        assert!(scan.is::<DataSourceExec>(), "the plan is a bare scan");
        let writer: Arc<dyn ExecutionPlan> =
            Arc::new(ShuffleWriterExec::try_new(scan, None).unwrap());
        let decoded = round_trip(&ctx, writer);
        assert!(decoded.is::<ShuffleWriterExec>());
        let compression = scan_of(&decoded).file_compression_type;
        assert_eq!(*compression.get_variant(), CompressionTypeVariant::GZIP);
    }

    #[tokio::test]
    async fn a_csv_terminator_survives_the_wire() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.csv"), "n,s#1,a#2,b#").unwrap();
        let ctx = SessionContext::new();
        let create = format!(
            "create external table t (n int, s varchar) stored as csv location '{}' \
             options ('format.has_header' 'true', 'format.terminator' '#')",
            dir.path().display()
        );
        ctx.sql(&create).await.unwrap().collect().await.unwrap();
        let sql = "select count(*) as rows, max(s) as last from t";
        let shown = shown(&ctx, round_trip(&ctx, planned(&ctx, sql).await)).await;
        assert!(shown.contains("| 2    | b    |"), "{shown}");
    }

    #[tokio::test]
    async fn file_row_index_reads_the_same_after_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        let copy = format!(
            "copy (values ('a'), ('b'), ('c')) to '{}/t.parquet' stored as parquet",
            dir.path().display()
        );
        ctx.sql(&copy).await.unwrap().collect().await.unwrap();
        let create = format!(
            "create external table t stored as parquet location '{}/t.parquet'",
            dir.path().display()
        );
        ctx.sql(&create).await.unwrap().collect().await.unwrap();
        let sql = "select file_row_index() as i, column1 from t \
                   where file_row_index() > 0 order by column1";
        let plan = planned(&ctx, sql).await;
        let expected = shown(&ctx, Arc::clone(&plan)).await;
        assert!(expected.contains("| 2 | c       |"), "{expected}");
        assert_eq!(shown(&ctx, round_trip(&ctx, plan)).await, expected);
    }

    #[test]
    fn every_compression_maps_both_ways() {
        for variant in [
            CompressionTypeVariant::GZIP,
            CompressionTypeVariant::BZIP2,
            CompressionTypeVariant::XZ,
            CompressionTypeVariant::ZSTD,
            CompressionTypeVariant::UNCOMPRESSED,
        ] {
            assert_eq!(
                compression_from_proto(compression_to_proto(variant)),
                variant
            );
        }
    }
}
