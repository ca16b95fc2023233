//! The runtimes an executor runs tasks on, apart from the runtime of its scheduler
//! stream, heartbeats and Flight endpoint, so a CPU-bound operator never delays a pushed
//! task, a cancel or a shuffle fetch.
//!
//! Tasks the scheduler marks urgent (a cheap query's, while much costlier work runs in
//! the cluster) run on threads of normal OS priority; every other task runs on threads
//! of lower priority ([`BACKGROUND_NICE`] more nice on Linux). The OS then gives an urgent
//! task most of the CPU even against tasks of other executors on the same host, which
//! the executor's own suspension cannot reach; with no urgent task around, background
//! threads get the whole CPU as before.

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

/// Raises the calling thread's nice value by [`BACKGROUND_NICE`] (to 19 at most).
#[cfg(target_os = "linux")]
fn lower_thread_priority() {
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

    fn nice_of_current_thread() -> i32 {
        // SAFETY: as above; getpriority only reads its arguments.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn background_threads_run_at_a_lower_priority_than_urgent_ones() {
        let runtimes = TaskRuntimes::start("test", 1, 1).unwrap();
        let handles = runtimes.handles();
        let background = handles
            .background
            .block_on(async { tokio::spawn(async { nice_of_current_thread() }).await })
            .unwrap();
        let urgent = handles
            .urgent
            .block_on(async { tokio::spawn(async { nice_of_current_thread() }).await })
            .unwrap();
        assert_eq!(background, (urgent + BACKGROUND_NICE).min(19));
        runtimes.shutdown();
    }
}
