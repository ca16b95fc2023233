//! A running task that can move to another runtime between two polls, so a task started
//! on the low-priority runtime continues at normal priority once the scheduler promotes
//! it (a burst of costlier work arrived after it was pushed).
//!
//! The task's future lives in a shared slot, polled by one driver task at a time. Moving
//! spawns a new driver on the target runtime and retires the old one: a retired driver
//! never polls the future again, and one caught mid-poll puts the future back and wakes
//! its successor. Futures the task spawned itself (an operator's helper tasks, blocking
//! file reads already under way) stay on the runtime they were spawned on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::runtime::Handle;
use tokio::task::AbortHandle;

type TaskFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Default)]
struct Slot {
    /// The task; None while a driver polls it, and once it finished or was cancelled.
    future: Option<TaskFuture>,
    /// The driver allowed to poll it; older ones end at their next poll.
    owner: u64,
    /// The task finished or was cancelled.
    over: bool,
    /// The owner, when it found the future out on a retired driver's poll.
    waiting: Option<Waker>,
    /// The owner's tokio task.
    driver: Option<AbortHandle>,
}

/// A spawned task that can move between runtimes, or be cancelled, while it runs.
#[derive(Clone)]
pub struct MovableTask {
    slot: Arc<Mutex<Slot>>,
}

impl MovableTask {
    /// Spawns `future` on `runtime`.
    pub fn spawn(future: impl Future<Output = ()> + Send + 'static, runtime: &Handle) -> Self {
        let task = Self {
            slot: Arc::new(Mutex::new(Slot {
                future: Some(Box::pin(future)),
                ..Slot::default()
            })),
        };
        task.drive_on(runtime);
        task
    }

    /// Continues the task on `runtime`: its next poll, and every later one, runs there.
    /// A task that finished or was cancelled stays as it is.
    pub fn move_to(&self, runtime: &Handle) {
        self.drive_on(runtime);
    }

    /// Drops the task's future (its operators' streams with it) unless it is being
    /// polled, in which case its driver drops it when the poll returns.
    pub fn cancel(&self) {
        let future = {
            let mut slot = self.lock();
            slot.over = true;
            slot.owner += 1;
            if let Some(driver) = slot.driver.take() {
                driver.abort();
            }
            slot.waiting = None;
            slot.future.take()
        };
        drop(future);
    }

    /// Hands the future to a new driver spawned on `runtime` and retires the current one,
    /// unless the task is over.
    fn drive_on(&self, runtime: &Handle) {
        let mut slot = self.lock();
        if slot.over {
            return;
        }
        slot.owner += 1;
        slot.waiting = None;
        let driver = Driver {
            slot: self.slot.clone(),
            id: slot.owner,
        };
        // Aborting a driver drops only its handle on the slot: the future stays there.
        if let Some(old) = slot.driver.replace(runtime.spawn(driver).abort_handle()) {
            old.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().expect("movable task lock")
    }
}

/// Polls the task's future while it is the slot's owner.
struct Driver {
    slot: Arc<Mutex<Slot>>,
    id: u64,
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut future = {
            let mut slot = self.slot.lock().expect("movable task lock");
            if slot.owner != self.id || slot.over {
                return Poll::Ready(());
            }
            match slot.future.take() {
                Some(future) => future,
                None => {
                    // A retired driver is polling it and wakes this one when it is back.
                    slot.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        // The lock is not held while the task runs: a move or a cancel must not wait for
        // a batch to be computed.
        let poll = future.as_mut().poll(cx);
        let mut slot = self.slot.lock().expect("movable task lock");
        if poll.is_ready() {
            slot.over = true;
        }
        if slot.over {
            if let Some(waiting) = slot.waiting.take() {
                waiting.wake();
            }
            drop(slot);
            drop(future);
            return Poll::Ready(());
        }
        slot.future = Some(future);
        if slot.owner != self.id {
            if let Some(waiting) = slot.waiting.take() {
                waiting.wake();
            }
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};

    fn runtime(name: &str) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Waits until no driver polls `task` (bounded: ten seconds).
    fn wait_parked(task: &MovableTask) {
        for _ in 0..10_000 {
            if task.lock().future.is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the task never parked");
    }

    fn thread_name() -> String {
        std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn a_moved_task_continues_on_the_new_runtime() {
        let (first, second) = (runtime("first"), runtime("second"));
        let (step, mut steps) = mpsc::unbounded_channel::<()>();
        let (seen, mut names) = mpsc::unbounded_channel();
        let task = MovableTask::spawn(
            async move {
                while steps.recv().await.is_some() {
                    seen.send(thread_name()).unwrap();
                }
            },
            first.handle(),
        );
        let next = |step: &mpsc::UnboundedSender<()>, names: &mut mpsc::UnboundedReceiver<_>| {
            step.send(()).unwrap();
            names.blocking_recv().unwrap()
        };
        assert_eq!(next(&step, &mut names), "first");
        // Moved once its poll ended (else that poll could take the next step itself).
        wait_parked(&task);
        task.move_to(second.handle());
        assert_eq!(next(&step, &mut names), "second");
        assert_eq!(next(&step, &mut names), "second");
        drop(step);
        // The task ends on its own once its input closes.
        assert!(names.blocking_recv().is_none());
    }

    #[test]
    fn a_task_moved_in_the_middle_of_a_poll_continues_on_the_new_runtime() {
        let (first, second) = (runtime("first"), runtime("second"));
        let (started, running) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (done, finished) = oneshot::channel();
        let task = MovableTask::spawn(
            async move {
                // The first poll holds its thread until the test has moved the task; the
                // yield then ends that poll, and the wake-up it asks for goes to the
                // retired driver.
                started.send(()).unwrap();
                released.recv().unwrap();
                tokio::task::yield_now().await;
                done.send(thread_name()).unwrap();
            },
            first.handle(),
        );
        running.recv().unwrap();
        task.move_to(second.handle());
        release.send(()).unwrap();
        let name = second.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), finished)
                .await
                .expect("the moved task finished")
                .unwrap()
        });
        assert_eq!(name, "second");
    }

    #[test]
    fn a_cancelled_task_drops_its_future() {
        let first = runtime("first");
        let (_keep, mut never) = mpsc::unbounded_channel::<()>();
        let (dropped, on_drop) = oneshot::channel::<()>();
        let task = MovableTask::spawn(
            async move {
                let _dropped = dropped;
                never.recv().await;
            },
            first.handle(),
        );
        task.cancel();
        // The sender inside the future is gone: the receiver sees the channel closed.
        let closed =
            first.block_on(async { tokio::time::timeout(Duration::from_secs(10), on_drop).await });
        assert!(closed.expect("the future was dropped").is_err());
        // Moving a cancelled task does nothing.
        task.move_to(first.handle());
    }
}
