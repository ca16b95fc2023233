//! Serialization of stage plans: datafusion-proto for DataFusion's operators, and this
//! codec — the one place that knows the bytes of Baton's shuffle operators.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr_with_converter;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr_with_converter;
use datafusion_proto::physical_plan::{
    AsExecutionPlan, PhysicalExtensionCodec, PhysicalPlanDecodeContext,
    PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::{PhysicalExprNode, PhysicalPlanNode};
use prost::Message;

use super::PlannerError;
use super::scan_options::{self, ScanOptionsConverter};
use crate::join_filters::{KeySummaryExec, ProbeFilterExec};
use crate::proto::{
    KeySummaryNode, PlanExtension, ProbeFilterNode, ShuffleReaderNode, ShuffleWriterNode,
    plan_extension,
};
use crate::shuffle::{ReadMode, ShuffleReaderExec, ShuffleWriterExec};

/// Encodes and decodes Baton's operators ([`ShuffleWriterExec`], [`ShuffleReaderExec`],
/// [`KeySummaryExec`], [`ProbeFilterExec`]) inside datafusion-proto plans.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatonCodec;

/// Serializes a physical plan to bytes.
pub fn encode_plan(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<u8>, PlannerError> {
    let node = ScanOptionsConverter.execution_plan_to_proto(&plan, &BatonCodec)?;
    Ok(node.encode_to_vec())
}

/// Deserializes a physical plan; functions and object stores resolve in `ctx`.
pub fn decode_plan(
    bytes: &[u8],
    ctx: &TaskContext,
) -> Result<Arc<dyn ExecutionPlan>, PlannerError> {
    let plan = PhysicalPlanNode::decode(bytes)?.try_into_physical_plan(ctx, &BatonCodec)?;
    Ok(super::wire::repair_decoded(plan)?)
}

fn proto_error(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("Baton plan extension {what}: {e}"))
}

impl BatonCodec {
    /// Encodes expressions as datafusion-proto `PhysicalExprNode` bytes, one each.
    fn encode_exprs(
        &self,
        exprs: &[Arc<dyn PhysicalExpr>],
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Vec<Vec<u8>>> {
        exprs
            .iter()
            .map(|e| {
                serialize_physical_expr_with_converter(e, self, proto_converter)
                    .map(|p| p.encode_to_vec())
            })
            .collect()
    }

    /// Decodes what [`Self::encode_exprs`] wrote, over `schema`.
    fn decode_exprs(
        &self,
        encoded: &[Vec<u8>],
        schema: &Schema,
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
        let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
        encoded
            .iter()
            .map(|bytes| {
                let expr = PhysicalExprNode::decode(bytes.as_slice())
                    .map_err(|e| proto_error("decode", e))?;
                parse_physical_expr_with_converter(&expr, schema, &decode_ctx, proto_converter)
            })
            .collect()
    }
}

impl PhysicalExtensionCodec for BatonCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let extension = PlanExtension::decode(buf).map_err(|e| proto_error("decode", e))?;
        match extension.node {
            Some(plan_extension::Node::ShuffleWriter(node)) => {
                let [input] = inputs else {
                    return Err(proto_error("decode", "shuffle writer needs one input"));
                };
                let partitioning = if node.hash_partitions == 0 {
                    None
                } else {
                    let exprs =
                        self.decode_exprs(&node.hash_exprs, &input.schema(), ctx, proto_converter)?;
                    Some(Partitioning::Hash(exprs, node.hash_partitions as usize))
                };
                Ok(Arc::new(ShuffleWriterExec::try_new(
                    input.clone(),
                    partitioning,
                )?))
            }
            Some(plan_extension::Node::ShuffleReader(node)) => {
                let schema = datafusion_proto::protobuf::Schema::decode(node.schema.as_slice())
                    .map_err(|e| proto_error("decode", e))?;
                let schema = Schema::try_from(&schema).map_err(|e| proto_error("schema", e))?;
                let schema = Arc::new(schema);
                let partitions = node.partitions as usize;
                let constants = self
                    .decode_exprs(&node.constant_exprs, &schema, ctx, proto_converter)?
                    .into_iter()
                    .zip(self.decode_exprs(&node.constant_values, &schema, ctx, proto_converter)?)
                    .map(|(expr, value)| match value.downcast_ref::<Literal>() {
                        Some(literal) => Ok((expr, literal.value().clone())),
                        None => Err(proto_error("decode", "a constant's value is no literal")),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let reader = if node.per_map {
                    ShuffleReaderExec::new(node.stage_id, schema, partitions, ReadMode::PerMap)
                } else {
                    let keys =
                        self.decode_exprs(&node.hash_exprs, &schema, ctx, proto_converter)?;
                    ShuffleReaderExec::hashed(node.stage_id, schema, partitions, keys)
                };
                Ok(Arc::new(reader.with_constants(constants)))
            }
            Some(plan_extension::Node::KeySummary(node)) => {
                let [input] = inputs else {
                    return Err(proto_error("decode", "key summary needs one input"));
                };
                let keys =
                    self.decode_exprs(&node.key_exprs, &input.schema(), ctx, proto_converter)?;
                let summary = KeySummaryExec::new(
                    node.filter_id,
                    keys,
                    node.max_values as usize,
                    input.clone(),
                );
                Ok(Arc::new(summary.with_bloom(node.bloom)))
            }
            Some(plan_extension::Node::ProbeFilter(node)) => {
                let [input] = inputs else {
                    return Err(proto_error("decode", "probe filter needs one input"));
                };
                let keys =
                    self.decode_exprs(&node.key_exprs, &input.schema(), ctx, proto_converter)?;
                let probe = ProbeFilterExec::new(node.filter_id, keys, input.clone());
                Ok(Arc::new(if node.prune_only {
                    probe.pruning_only()
                } else {
                    probe
                }))
            }
            Some(plan_extension::Node::ScanOptions(node)) => scan_options::restore(
                &node,
                &PhysicalPlanDecodeContext::new(ctx, self),
                proto_converter,
            ),
            None => Err(proto_error("decode", "empty extension node")),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let extension = if let Some(writer) = node.downcast_ref::<ShuffleWriterExec>() {
            let (hash_exprs, hash_partitions) = match writer.partitioning() {
                Some(Partitioning::Hash(exprs, n)) => {
                    (self.encode_exprs(exprs, proto_converter)?, *n as u32)
                }
                _ => (vec![], 0),
            };
            plan_extension::Node::ShuffleWriter(ShuffleWriterNode {
                hash_exprs,
                hash_partitions,
            })
        } else if let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() {
            let schema = datafusion_proto::protobuf::Schema::try_from(reader.schema().as_ref())
                .map_err(|e| proto_error("schema", e))?;
            plan_extension::Node::ShuffleReader(ShuffleReaderNode {
                stage_id: reader.stage_id(),
                schema: schema.encode_to_vec(),
                partitions: reader.partitions() as u32,
                per_map: reader.mode() == ReadMode::PerMap,
                hash_exprs: self.encode_exprs(reader.hash_keys(), proto_converter)?,
                constant_exprs: self.encode_exprs(
                    &reader
                        .constants()
                        .iter()
                        .map(|(expr, _)| expr.clone())
                        .collect::<Vec<_>>(),
                    proto_converter,
                )?,
                constant_values: self.encode_exprs(
                    &reader
                        .constants()
                        .iter()
                        .map(|(_, value)| {
                            Arc::new(Literal::new(value.clone())) as Arc<dyn PhysicalExpr>
                        })
                        .collect::<Vec<_>>(),
                    proto_converter,
                )?,
            })
        } else if let Some(summary) = node.downcast_ref::<KeySummaryExec>() {
            plan_extension::Node::KeySummary(KeySummaryNode {
                filter_id: summary.filter_id(),
                key_exprs: self.encode_exprs(summary.keys(), proto_converter)?,
                max_values: u32::try_from(summary.max_values()).unwrap_or(u32::MAX),
                bloom: summary.fills_bloom(),
            })
        } else if let Some(probe) = node.downcast_ref::<ProbeFilterExec>() {
            plan_extension::Node::ProbeFilter(ProbeFilterNode {
                filter_id: probe.filter_id(),
                key_exprs: self.encode_exprs(probe.keys(), proto_converter)?,
                prune_only: probe.is_pruning_only(),
            })
        } else {
            return Err(proto_error(
                "encode",
                format!("unknown operator {}", node.name()),
            ));
        };
        PlanExtension {
            node: Some(extension),
        }
        .encode(buf)
        .map_err(|e| proto_error("encode", e))
    }
}
