//! The runtimes an executor runs tasks on, apart from the runtime of its scheduler
//! stream, heartbeats and Flight endpoint, so a CPU-bound operator never delays a pushed
//! task, a cancel or a shuffle fetch.
//!
//! Tasks the scheduler marks urgent (a cheap query's, while much costlier work runs in
//! the cluster) run on threads of normal OS priority (real-time where the process asks
//! for it, see [`crate::thread_priority`]); every other task runs on threads
//! of the lowest priority (Linux's idle scheduling class, or where that is refused
//! [`crate::thread_priority::BACKGROUND_NICE`] more nice). The OS then runs an urgent
//! task, and the stream, Flight and scheduler threads it depends on, as soon as they are
//! ready, even against tasks of other executors on the same host, which the executor's
//! own suspension cannot reach; with no urgent task around, background threads get the
//! whole CPU as before.
//!
//! Background tasks' shuffle traffic (the executor's second Flight endpoint, and its
//! connections to peers' second endpoints) runs on a third runtime of low-priority
//! threads of its own: bulk transfers then take no normal-priority CPU, and no
//! CPU-bound operator on a task thread holds up a transfer.

use tokio::runtime::{Builder, Handle, Runtime};

use crate::thread_priority::{Realtime, lower_current_thread_to_idle, raise_current_thread};

/// Handles to spawn tasks on.
#[derive(Debug, Clone)]
pub struct TaskHandles {
    /// Normal OS priority.
    pub urgent: Handle,
    /// Lower OS priority.
    pub background: Handle,
    /// Lower OS priority, for background tasks' Flight traffic.
    pub background_flight: Handle,
}

/// The task runtimes of an executor, in the order urgent, background, background Flight.
/// Dropping them stops them without waiting for their tasks, which is allowed on an
/// async thread (dropping a tokio runtime there panics).
#[derive(Debug)]
pub struct TaskRuntimes {
    runtimes: Vec<Runtime>,
}

impl TaskRuntimes {
    /// Starts them: a thread for every task the executor may hold (`slots` plus
    /// `preempt_slots`) in the background one, so an urgent task never waits for a thread
    /// while the tasks it suspended finish their current batch; `slots` in the urgent one
    /// and in the one for background Flight traffic.
    pub fn start(executor_id: &str, slots: u32, preempt_slots: u32) -> std::io::Result<Self> {
        let slots = slots.max(1) as usize;
        // Each runtime is kept as soon as it is built: if a later one fails, dropping
        // `started` stops those already running the allowed way.
        let mut started = Self {
            runtimes: Vec::with_capacity(3),
        };
        for (threads, name, low_priority) in [
            (slots, "urgent", false),
            (slots + preempt_slots as usize, "task", true),
            (slots, "flight", true),
        ] {
            let mut builder = Builder::new_multi_thread();
            builder
                .worker_threads(threads)
                .thread_name(format!("{executor_id}-{name}"))
                .enable_all();
            if low_priority {
                builder.on_thread_start(lower_current_thread_to_idle);
            } else {
                builder.on_thread_start(|| raise_current_thread(Realtime::Interactive));
            }
            started.runtimes.push(builder.build()?);
        }
        Ok(started)
    }

    /// Handles to spawn tasks on.
    pub fn handles(&self) -> TaskHandles {
        let handle = |i: usize| self.runtimes[i].handle().clone();
        TaskHandles {
            urgent: handle(0),
            background: handle(1),
            background_flight: handle(2),
        }
    }
}

impl Drop for TaskRuntimes {
    fn drop(&mut self) {
        for runtime in self.runtimes.drain(..) {
            runtime.shutdown_background();
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::thread_priority::{BACKGROUND_NICE, current_thread_priority};

    #[test]
    fn background_threads_run_at_a_lower_priority_than_urgent_ones() {
        let runtimes = TaskRuntimes::start("test", 1, 1).unwrap();
        let handles = runtimes.handles();
        let on = |handle: &Handle| {
            handle
                .block_on(async { tokio::spawn(async { current_thread_priority() }).await })
                .unwrap()
        };
        // Real-time priority is off unless the process asks for it.
        let (urgent_policy, urgent_nice) = on(&handles.urgent);
        assert_eq!(urgent_policy, libc::SCHED_OTHER);
        for handle in [&handles.background, &handles.background_flight] {
            let (background_policy, background_nice) = on(handle);
            assert!(
                background_policy == libc::SCHED_IDLE
                    || background_nice == (urgent_nice + BACKGROUND_NICE).min(19),
                "background thread: policy {background_policy}, nice {background_nice}"
            );
        }
        drop(runtimes);
    }

    #[tokio::test]
    async fn dropping_them_on_an_async_thread_stops_them_without_a_panic() {
        let runtimes = TaskRuntimes::start("test", 1, 1).unwrap();
        let handles = runtimes.handles();
        assert_eq!(handles.background.spawn(async { 7 }).await.unwrap(), 7);
        drop(runtimes);
        for handle in [
            handles.urgent,
            handles.background,
            handles.background_flight,
        ] {
            assert!(
                handle.spawn(async {}).await.is_err(),
                "a stopped runtime ran a task"
            );
        }
    }
}
