//! Lowering the OS priority of the calling thread (Linux; elsewhere a no-op). Lowering
//! needs no privilege, raising it back does, so only threads that stay low for the rest
//! of their life (background task and transfer threads) or end soon (the planning
//! thread of a big query) are lowered.

/// How much higher the nice value of a thread is when the idle class is refused.
pub const BACKGROUND_NICE: i32 = 10;

/// Puts the calling thread in Linux's idle scheduling class (it runs only when no
/// normal thread wants the CPU), or where that is refused raises its nice value by
/// [`BACKGROUND_NICE`] (to 19 at most).
#[cfg(target_os = "linux")]
pub fn lower_current_thread_to_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` only during the call; pid 0 names the
    // calling thread. Moving oneself to SCHED_IDLE needs no privilege.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    raise_current_thread_nice(BACKGROUND_NICE);
}

/// Raises the calling thread's nice value by `by` (to 19 at most): the OS then gives it
/// a smaller share of a busy CPU, about 1.25× less per step, against normal threads.
#[cfg(target_os = "linux")]
fn raise_current_thread_nice(by: i32) {
    // SAFETY: getpriority and setpriority only read their integer arguments; on Linux
    // PRIO_PROCESS with a thread id names that one thread. Raising one's own nice value
    // needs no privilege; on failure the thread keeps its priority, which is harmless.
    let result = unsafe {
        let thread = libc::gettid() as libc::id_t;
        let nice = libc::getpriority(libc::PRIO_PROCESS, thread);
        libc::setpriority(libc::PRIO_PROCESS, thread, (nice + by).min(19))
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a thread's priority");
    }
}

/// Other systems: threads keep their priority.
#[cfg(not(target_os = "linux"))]
pub fn lower_current_thread_to_idle() {}

/// The scheduling policy and nice value of the calling thread, for tests.
#[cfg(all(test, target_os = "linux"))]
pub fn current_thread_priority() -> (i32, i32) {
    // SAFETY: sched_getscheduler and getpriority only read their integer arguments.
    unsafe {
        (
            libc::sched_getscheduler(0),
            libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t),
        )
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn raising_nice_lowers_only_the_calling_thread() {
        let (_, before) = current_thread_priority();
        let (policy, lowered) = std::thread::spawn(|| {
            raise_current_thread_nice(3);
            current_thread_priority()
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_OTHER);
        assert_eq!(lowered, (before + 3).min(19));
        assert_eq!(current_thread_priority().1, before);
    }
}
