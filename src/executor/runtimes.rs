//! The runtimes an executor runs tasks on, apart from the runtime of its scheduler
//! stream, heartbeats and Flight endpoint, so a CPU-bound operator never delays a pushed
//! task, a cancel or a shuffle fetch.
//!
//! Tasks the scheduler marks urgent (a cheap query's, while much costlier work runs in
//! the cluster) run on threads of normal OS priority; every other task runs on threads
//! of the lowest priority (Linux's idle scheduling class, or where that is refused
//! [`BACKGROUND_NICE`] more nice). The OS then runs an urgent task, and the stream,
//! Flight and scheduler threads it depends on, as soon as they are ready, even against
//! tasks of other executors on the same host, which the executor's own suspension cannot
//! reach; with no urgent task around, background threads get the whole CPU as before.

use tokio::runtime::{Builder, Handle, Runtime};

/// How much higher the nice value of background task threads is.
pub const BACKGROUND_NICE: i32 = 10;

/// Handles to spawn tasks on.
#[derive(Debug, Clone)]
pub struct TaskHandles {
    /// Normal OS priority.
    pub urgent: Handle,
    /// Lower OS priority.
    pub background: Handle,
}

/// The two task runtimes of an executor.
#[derive(Debug)]
pub struct TaskRuntimes {
    urgent: Runtime,
    background: Runtime,
}

impl TaskRuntimes {
    /// Starts both: a thread for every task the executor may hold (`slots` plus
    /// `preempt_slots`) in the background one, so an urgent task never waits for a thread
    /// while the tasks it suspended finish their current batch; `slots` in the urgent one.
    pub fn start(executor_id: &str, slots: u32, preempt_slots: u32) -> std::io::Result<Self> {
        let slots = slots.max(1) as usize;
        let urgent = Builder::new_multi_thread()
            .worker_threads(slots)
            .thread_name(format!("{executor_id}-urgent"))
            .enable_all()
            .build()?;
        let background = Builder::new_multi_thread()
            .worker_threads(slots + preempt_slots as usize)
            .thread_name(format!("{executor_id}-task"))
            .on_thread_start(lower_thread_priority)
            .enable_all()
            .build()?;
        Ok(Self { urgent, background })
    }

    /// Handles to spawn tasks on.
    pub fn handles(&self) -> TaskHandles {
        TaskHandles {
            urgent: self.urgent.handle().clone(),
            background: self.background.handle().clone(),
        }
    }

    /// Stops both without waiting for their tasks (callable on an async thread).
    pub fn shutdown(self) {
        self.urgent.shutdown_background();
        self.background.shutdown_background();
    }
}

/// Puts the calling thread in Linux's idle scheduling class (it runs only when no
/// normal thread wants the CPU), or where that is refused raises its nice value by
/// [`BACKGROUND_NICE`] (to 19 at most).
#[cfg(target_os = "linux")]
fn lower_thread_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` only during the call; pid 0 names the
    // calling thread. Moving oneself to SCHED_IDLE needs no privilege.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    // SAFETY: getpriority and setpriority only read their integer arguments; on Linux
    // PRIO_PROCESS with a thread id names that one thread. Raising one's own nice value
    // needs no privilege; on failure the thread keeps its priority, which is harmless.
    let result = unsafe {
        let thread = libc::gettid() as libc::id_t;
        let nice = libc::getpriority(libc::PRIO_PROCESS, thread);
        libc::setpriority(libc::PRIO_PROCESS, thread, (nice + BACKGROUND_NICE).min(19))
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a task thread's priority");
    }
}

/// Other systems: task threads keep their priority.
#[cfg(not(target_os = "linux"))]
fn lower_thread_priority() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The scheduling policy and nice value of the calling thread.
    fn priority_of_current_thread() -> (i32, i32) {
        // SAFETY: sched_getscheduler and getpriority only read their integer arguments.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t),
            )
        }
    }

    #[test]
    fn background_threads_run_at_a_lower_priority_than_urgent_ones() {
        let runtimes = TaskRuntimes::start("test", 1, 1).unwrap();
        let handles = runtimes.handles();
        let on = |handle: &Handle| {
            handle
                .block_on(async { tokio::spawn(async { priority_of_current_thread() }).await })
                .unwrap()
        };
        let (background_policy, background_nice) = on(&handles.background);
        let (urgent_policy, urgent_nice) = on(&handles.urgent);
        assert_eq!(urgent_policy, libc::SCHED_OTHER);
        assert!(
            background_policy == libc::SCHED_IDLE
                || background_nice == (urgent_nice + BACKGROUND_NICE).min(19),
            "background thread: policy {background_policy}, nice {background_nice}"
        );
        runtimes.shutdown();
    }
}
