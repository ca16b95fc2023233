//! `EXPLAIN ANALYZE` of a distributed query: every stage's operators, each with
//! DataFusion's metrics summed over the stage's tasks.
//!
//! The scheduler plans the analysed query's input as any query and keeps each stage's
//! operators as lines ([`operator_lines`]). Its tasks report what each operator of their
//! stage plan measured ([`operator_metrics`]), top down and named, Baton's own wrappers
//! left out; the scheduler sums them per stage ([`StageMetrics`]) and, when the query's
//! last stage is done, answers with one row per stage ([`render`]) instead of the
//! query's rows.

use std::borrow::Cow;
use std::mem::discriminant;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::error::Result;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::metrics::{
    Count, Gauge, Metric, MetricValue, MetricsSet, PruningMetrics, Time,
};

use crate::proto::{MetricFigure, MetricKind, OperatorLine, OperatorMetrics};

/// `plan`'s operators top down, as `EXPLAIN ANALYZE` prints them.
pub fn operator_lines(plan: &Arc<dyn ExecutionPlan>) -> Vec<OperatorLine> {
    fn walk(plan: &Arc<dyn ExecutionPlan>, depth: u32, lines: &mut Vec<OperatorLine>) {
        let text = DisplayableExecutionPlan::new(plan.as_ref())
            .one_line()
            .to_string();
        lines.push(OperatorLine {
            depth,
            name: plan.name().to_string(),
            text: text.trim_end().to_string(),
        });
        for child in plan.children() {
            walk(child, depth + 1, lines);
        }
    }
    let mut lines = Vec::new();
    walk(plan, 0, &mut lines);
    lines
}

/// What each operator of `plan` measured, top down, skipping the operators `wrapper`
/// names (an executor's own, which the stage plan does not have): only what partition
/// `partition` measured when given (a plan instance that several tasks share).
pub fn operator_metrics(
    plan: &Arc<dyn ExecutionPlan>,
    partition: Option<usize>,
    wrapper: &dyn Fn(&dyn ExecutionPlan) -> bool,
) -> Vec<OperatorMetrics> {
    fn walk(
        plan: &Arc<dyn ExecutionPlan>,
        partition: Option<usize>,
        wrapper: &dyn Fn(&dyn ExecutionPlan) -> bool,
        out: &mut Vec<OperatorMetrics>,
    ) {
        if !wrapper(plan.as_ref()) {
            let metrics = plan
                .metrics()
                .map(|set| {
                    set.iter()
                        .filter(|m| partition.is_none() || m.partition() == partition)
                        .filter_map(|m| figure_of(m.value()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(OperatorMetrics {
                operator: plan.name().to_string(),
                metrics,
            });
        }
        for child in plan.children() {
            walk(child, partition, wrapper, out);
        }
    }
    let mut out = Vec::new();
    walk(plan, partition, wrapper, &mut out);
    out
}

/// What a stage's tasks measured, per operator of its plan.
#[derive(Debug, Default, Clone)]
pub struct StageMetrics {
    operators: Vec<Vec<MetricValue>>,
    tasks: usize,
    unmatched: usize,
}

impl StageMetrics {
    /// Adds a task's report to the sums of the operators `lines` lists. A reported
    /// operator goes to the next line of its name: an executor may have left one out (a
    /// join filter that got no keys); what matches no line is counted, not summed.
    pub fn add(&mut self, lines: &[OperatorLine], reported: Vec<OperatorMetrics>) {
        self.operators.resize_with(lines.len(), Vec::new);
        self.tasks += 1;
        let mut next = 0;
        for operator in reported {
            let Some(at) = (next..lines.len()).find(|&i| lines[i].name == operator.operator) else {
                self.unmatched += 1;
                continue;
            };
            next = at + 1;
            for value in operator.metrics.iter().filter_map(value_of) {
                let sums = &mut self.operators[at];
                match sums
                    .iter_mut()
                    .find(|v| v.name() == value.name() && discriminant(*v) == discriminant(&value))
                {
                    Some(sum) => sum.aggregate(&value),
                    None => sums.push(value),
                }
            }
        }
    }

    /// The stage's operators with their sums, one line each, indented by depth as
    /// DataFusion prints a plan with metrics.
    fn text(&self, lines: &[OperatorLine]) -> String {
        let mut text = String::new();
        for (i, line) in lines.iter().enumerate() {
            let mut set = MetricsSet::new();
            for value in self.operators.get(i).into_iter().flatten() {
                set.push(Arc::new(Metric::new(value.clone(), None)));
            }
            let indent = "  ".repeat(line.depth as usize);
            let metrics = set.sorted_for_display();
            text.push_str(&format!("{indent}{}, metrics=[{metrics}]\n", line.text));
        }
        if self.unmatched > 0 {
            text.push_str(&format!(
                "({} operator reports matched no operator of the stage plan)\n",
                self.unmatched
            ));
        }
        text
    }
}

/// A stage as [`render`] prints it.
pub struct AnalyzedStage<'a> {
    /// Its id.
    pub id: u32,
    /// Its input stages.
    pub inputs: &'a [u32],
    /// Its tasks.
    pub tasks: usize,
    /// From its first task's start to its last task's end.
    pub wall: Duration,
    /// Its operators.
    pub lines: &'a [OperatorLine],
    /// What its tasks measured.
    pub metrics: &'a StageMetrics,
}

/// The answer of an `EXPLAIN ANALYZE` over `stages` (inputs first), in `schema`
/// (`AnalyzeExec`'s: plan type and plan), as Arrow IPC: one row per stage.
pub fn render(schema: &SchemaRef, stages: &[AnalyzedStage<'_>]) -> Result<Bytes> {
    let kinds: Vec<String> = stages.iter().map(|s| format!("Stage {}", s.id)).collect();
    let plans: Vec<String> = stages
        .iter()
        .map(|s| {
            let inputs = match s.inputs {
                [] => String::new(),
                ids => format!(
                    ", reads stages {}",
                    ids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            format!(
                "{} tasks ({} reported), {:.3} s{inputs}\n{}",
                s.tasks,
                s.metrics.tasks,
                s.wall.as_secs_f64(),
                s.metrics.text(s.lines)
            )
        })
        .collect();
    let batch = RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            Arc::new(StringArray::from(kinds)),
            Arc::new(StringArray::from(plans)),
        ],
    )?;
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    writer.write(&batch)?;
    Ok(writer.into_inner()?.into())
}

/// `value` as sent, or `None` for what is not summed (timestamps, ratios, custom).
fn figure_of(value: &MetricValue) -> Option<MetricFigure> {
    let figure = |kind: MetricKind, value: usize| MetricFigure {
        kind: kind as i32,
        name: String::new(),
        value: value as u64,
        matched: 0,
        fully_matched: 0,
    };
    let named = |kind, name: &str, value| MetricFigure {
        name: name.to_string(),
        ..figure(kind, value)
    };
    Some(match value {
        MetricValue::OutputRows(c) => figure(MetricKind::OutputRows, c.value()),
        MetricValue::ElapsedCompute(t) => figure(MetricKind::ElapsedCompute, t.value()),
        MetricValue::SpillCount(c) => figure(MetricKind::SpillCount, c.value()),
        MetricValue::SpilledBytes(c) => figure(MetricKind::SpilledBytes, c.value()),
        MetricValue::OutputBytes(c) => figure(MetricKind::OutputBytes, c.value()),
        MetricValue::OutputBatches(c) => figure(MetricKind::OutputBatches, c.value()),
        MetricValue::SpilledRows(c) => figure(MetricKind::SpilledRows, c.value()),
        MetricValue::CurrentMemoryUsage(g) => figure(MetricKind::CurrentMemory, g.value()),
        MetricValue::Count { name, count } => named(MetricKind::Count, name, count.value()),
        MetricValue::Gauge { name, gauge } => named(MetricKind::Gauge, name, gauge.value()),
        MetricValue::PeakMemoryUsage { name, gauge } => {
            named(MetricKind::PeakMemory, name, gauge.value())
        }
        MetricValue::Time { name, time } => named(MetricKind::Time, name, time.value()),
        MetricValue::PruningMetrics {
            name,
            pruning_metrics,
        } => MetricFigure {
            matched: pruning_metrics.matched() as u64,
            fully_matched: pruning_metrics.fully_matched() as u64,
            ..named(MetricKind::Pruning, name, pruning_metrics.pruned())
        },
        MetricValue::StartTimestamp(_)
        | MetricValue::EndTimestamp(_)
        | MetricValue::Ratio { .. }
        | MetricValue::Custom { .. } => return None,
    })
}

/// The metric value `figure` describes (`None` for a kind this build does not know).
fn value_of(figure: &MetricFigure) -> Option<MetricValue> {
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let count = || {
        let count = Count::new();
        count.add(size(figure.value));
        count
    };
    let gauge = || {
        let gauge = Gauge::new();
        gauge.set(size(figure.value));
        gauge
    };
    let time = || {
        let time = Time::new();
        time.add_duration(Duration::from_nanos(figure.value));
        time
    };
    let name = || Cow::Owned(figure.name.clone());
    Some(match MetricKind::try_from(figure.kind).ok()? {
        MetricKind::OutputRows => MetricValue::OutputRows(count()),
        MetricKind::ElapsedCompute => MetricValue::ElapsedCompute(time()),
        MetricKind::SpillCount => MetricValue::SpillCount(count()),
        MetricKind::SpilledBytes => MetricValue::SpilledBytes(count()),
        MetricKind::OutputBytes => MetricValue::OutputBytes(count()),
        MetricKind::OutputBatches => MetricValue::OutputBatches(count()),
        MetricKind::SpilledRows => MetricValue::SpilledRows(count()),
        MetricKind::CurrentMemory => MetricValue::CurrentMemoryUsage(gauge()),
        MetricKind::Count => MetricValue::Count {
            name: name(),
            count: count(),
        },
        MetricKind::Gauge => MetricValue::Gauge {
            name: name(),
            gauge: gauge(),
        },
        MetricKind::PeakMemory => MetricValue::PeakMemoryUsage {
            name: name(),
            gauge: gauge(),
        },
        MetricKind::Time => MetricValue::Time {
            name: name(),
            time: time(),
        },
        MetricKind::Pruning => {
            let pruning = PruningMetrics::new();
            pruning.add_pruned(size(figure.value));
            pruning.add_matched(size(figure.matched));
            pruning.add_fully_matched(size(figure.fully_matched));
            MetricValue::PruningMetrics {
                name: name(),
                pruning_metrics: pruning,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(depth: u32, name: &str) -> OperatorLine {
        OperatorLine {
            depth,
            name: name.into(),
            text: format!("{name}: …"),
        }
    }

    fn rows(operator: &str, rows: usize) -> OperatorMetrics {
        let count = Count::new();
        count.add(rows);
        OperatorMetrics {
            operator: operator.into(),
            metrics: figure_of(&MetricValue::OutputRows(count))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn every_summed_kind_survives_the_wire() {
        let pruning = PruningMetrics::new();
        pruning.add_pruned(3);
        pruning.add_matched(5);
        let time = Time::new();
        time.add_duration(Duration::from_micros(1500));
        let bytes = Count::new();
        bytes.add(4096);
        for value in [
            MetricValue::PruningMetrics {
                name: "row_groups_pruned_statistics".into(),
                pruning_metrics: pruning,
            },
            MetricValue::Time {
                name: "build_time".into(),
                time,
            },
            MetricValue::SpilledBytes(bytes),
        ] {
            let back = value_of(&figure_of(&value).unwrap()).unwrap();
            assert_eq!(
                (back.name(), back.to_string()),
                (value.name(), value.to_string())
            );
        }
    }

    #[test]
    fn a_stage_sums_its_tasks_operator_by_operator() {
        let lines = [
            line(0, "ShuffleWriterExec"),
            line(1, "ProbeFilterExec"),
            line(2, "DataSourceExec"),
        ];
        let mut stage = StageMetrics::default();
        stage.add(
            &lines,
            vec![
                rows("ShuffleWriterExec", 2),
                rows("ProbeFilterExec", 2),
                rows("DataSourceExec", 5),
            ],
        );
        // An executor that took the filter out, and an operator no line has.
        stage.add(
            &lines,
            vec![
                rows("ShuffleWriterExec", 3),
                rows("DataSourceExec", 3),
                rows("Unknown", 1),
            ],
        );
        let text = stage.text(&lines);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ShuffleWriterExec: …, metrics=[output_rows=5]");
        assert_eq!(lines[1], "  ProbeFilterExec: …, metrics=[output_rows=2]");
        assert_eq!(lines[2], "    DataSourceExec: …, metrics=[output_rows=8]");
        assert!(
            lines[3].starts_with("(1 operator reports matched no"),
            "{text}"
        );
    }
}
