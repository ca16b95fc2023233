//! Suspension inside an executor: the scheduler decides which running task to stop for
//! a far cheaper query's task (`SuspendTask`) and when it goes on (`ResumeTask`); the
//! executor only opens and closes the task's [`TaskGate`]. Every operator of a task is
//! wrapped in a [`GatedExec`] that asks the gate (a session config extension of the
//! task's context) before each batch, so a suspended task stops at its next batch
//! boundary with its state intact and resumes where it stopped.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};

use crate::planner::only_child;

/// Whether one task may run; the operators of a closed task wait at their next batch.
#[derive(Debug)]
pub struct TaskGate {
    open: AtomicBool,
    /// The task was stopped (cancelled): its output must not be kept.
    stopped: AtomicBool,
    waiting: Mutex<Vec<Waker>>,
}

impl Default for TaskGate {
    /// An open gate: a pushed task runs until the scheduler suspends it.
    fn default() -> Self {
        Self {
            open: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            waiting: Mutex::default(),
        }
    }
}

impl TaskGate {
    /// Ready when the task may run; otherwise wakes `cx` once it may.
    pub fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.open.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let mut waiting = self.waiting.lock().expect("gate lock");
        // Checked again under the lock: `set_open` flips the flag before it takes the lock.
        if self.open.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Marks the task stopped and opens its gate (see [`Self::is_stopped`]).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.set_open(true);
    }

    /// True once the task was stopped: its shuffle writer commits nothing then, since a
    /// stopped attempt's output (one its copy outran, say) is read by nobody.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// True when the task may run.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Opens or closes the gate; opening wakes the operators waiting at it. Returns
    /// whether the gate changed.
    pub fn set_open(&self, open: bool) -> bool {
        let was = self.open.swap(open, Ordering::AcqRel);
        if open && !was {
            let waiting = std::mem::take(&mut *self.waiting.lock().expect("gate lock"));
            waiting.into_iter().for_each(Waker::wake);
        }
        was != open
    }
}

/// Runs its input only while the task's gate is open.
#[derive(Debug)]
pub struct GatedExec {
    input: Arc<dyn ExecutionPlan>,
}

impl GatedExec {
    /// Wraps `input`.
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for GatedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GatedExec")
    }
}

impl ExecutionPlan for GatedExec {
    fn name(&self) -> &str {
        "GatedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = only_child("GatedExec", children)?;
        Ok(Arc::new(Self::new(input)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let gate = context.session_config().get_extension::<TaskGate>();
        let input = self.input.execute(partition, context)?;
        Ok(match gate {
            Some(gate) => Box::pin(GatedStream { input, gate }),
            None => input,
        })
    }
}

struct GatedStream {
    input: SendableRecordBatchStream,
    gate: Arc<TaskGate>,
}

impl Stream for GatedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        ready!(self.gate.poll_open(cx));
        self.input.poll_next_unpin(cx)
    }
}

impl RecordBatchStream for GatedStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_closed_gate_wakes_its_waiters_once_when_it_opens() {
        let gate = TaskGate::default();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(gate.poll_open(&mut cx).is_ready());
        assert!(gate.set_open(false));
        assert!(
            !gate.set_open(false),
            "closing a closed gate changes nothing"
        );
        assert!(gate.poll_open(&mut cx).is_pending());
        // The same waker registers once.
        assert!(gate.poll_open(&mut cx).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        assert!(gate.set_open(true));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(gate.poll_open(&mut cx).is_ready());
    }
}
