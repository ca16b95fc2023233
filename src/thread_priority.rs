//! OS priorities of the calling thread (Linux; elsewhere a no-op).
//!
//! Lowering needs no privilege, raising it back does, so only threads that stay low for
//! the rest of their life (background task and transfer threads) or end soon (the
//! planning thread of a big query) are lowered.
//!
//! Where the process enables it ([`use_realtime_priorities`], the `baton` binary unless
//! `--no-realtime`) and the OS allows it (root, `CAP_SYS_NICE` or an `RLIMIT_RTPRIO`),
//! the threads interactive work waits on run at the lowest real-time priorities
//! (`SCHED_RR`): the async runtime that carries the streams, Flight and the scheduler
//! ([`Realtime::Service`]), and urgent task threads and the threads that plan small
//! queries, also while they wait for the next ([`Realtime::Interactive`], one below,
//! so a status or a push never waits behind an urgent task). On this kernel (EEVDF)
//! idle-class threads otherwise take whole ticks (4 ms) from normal ones now and then: a
//! normal thread that slept is placed level with them, and a woken one can wait behind
//! one until the next tick (see docs/design.md, Measured, Sessions 16 and 17). A
//! real-time thread always runs before them. Real-time threads are kept to short work,
//! and the kernel's real-time throttling leaves other threads at least 5 % of each CPU.
//! Where the OS refuses, the threads keep normal priority.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether threads that interactive work waits on ask for real-time priority.
static REALTIME: AtomicBool = AtomicBool::new(false);

/// Lets [`raise_current_thread`] ask for real-time priority in this process (off by
/// default: a library should not change its host's scheduling unasked).
pub fn use_realtime_priorities(enabled: bool) {
    REALTIME.store(enabled, Ordering::Relaxed);
}

/// The real-time priority levels of threads interactive work waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realtime {
    /// Urgent task threads and a small query's planning thread.
    Interactive,
    /// The runtime of streams, Flight and the scheduler: above interactive work, which
    /// waits on it.
    Service,
}

impl Realtime {
    /// The `SCHED_RR` priority (1 is the lowest).
    fn priority(self) -> i32 {
        match self {
            Realtime::Interactive => 1,
            Realtime::Service => 2,
        }
    }
}

/// Moves the calling thread to real-time priority `level` when the process enabled it
/// and the OS allows it; otherwise leaves it as it is. After the OS refused once, the
/// process stops asking.
pub fn raise_current_thread(level: Realtime) {
    static GRANTED: AtomicBool = AtomicBool::new(false);
    if !REALTIME.load(Ordering::Relaxed) {
        return;
    }
    if set_current_thread_realtime(level) {
        if !GRANTED.swap(true, Ordering::Relaxed) {
            tracing::info!("threads interactive work waits on run at real-time priority");
        }
    } else if REALTIME.swap(false, Ordering::Relaxed) {
        // Refused once, refused for every thread: stop asking.
        tracing::info!("real-time priority refused by the OS; threads keep normal priority");
    }
}

/// Whether threads that interactive work waits on ask for real-time priority: enabled,
/// and not refused by the OS so far.
pub fn realtime_in_effect() -> bool {
    REALTIME.load(Ordering::Relaxed)
}

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

/// Moves the calling thread to `SCHED_RR` at `level`'s priority; false where the OS
/// refuses (the thread then keeps its priority).
#[cfg(target_os = "linux")]
fn set_current_thread_realtime(level: Realtime) -> bool {
    let param = libc::sched_param {
        sched_priority: level.priority(),
    };
    // Threads this one starts (and processes it spawns) begin at normal priority.
    let policy = libc::SCHED_RR | libc::SCHED_RESET_ON_FORK;
    // SAFETY: sched_setscheduler reads `param` only during the call; pid 0 names the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        return true;
    }
    tracing::debug!(error = %std::io::Error::last_os_error(), "no real-time priority for a thread");
    false
}

/// Other systems: threads keep their priority.
#[cfg(not(target_os = "linux"))]
pub fn lower_current_thread_to_idle() {}

/// Other systems: threads keep their priority.
#[cfg(not(target_os = "linux"))]
fn set_current_thread_realtime(_level: Realtime) -> bool {
    false
}

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

    /// The calling thread's `SCHED_RR` priority, or None when it is not real-time.
    fn realtime_priority() -> Option<i32> {
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_getparam writes one sched_param; pid 0 names the calling thread.
        let got = unsafe { libc::sched_getparam(0, &mut param) };
        let policy = current_thread_priority().0 & !libc::SCHED_RESET_ON_FORK;
        (got == 0 && policy == libc::SCHED_RR).then_some(param.sched_priority)
    }

    #[test]
    fn a_thread_raised_to_real_time_runs_at_its_level_and_its_children_at_normal() {
        for level in [Realtime::Interactive, Realtime::Service] {
            let (raised, during) = std::thread::spawn(move || {
                let raised = set_current_thread_realtime(level);
                // A thread it starts begins at normal priority.
                let child = std::thread::spawn(current_thread_priority)
                    .join()
                    .unwrap()
                    .0;
                assert_eq!(child, libc::SCHED_OTHER, "{level:?}");
                (raised, realtime_priority())
            })
            .join()
            .unwrap();
            // Where the OS refuses (no privilege), the thread keeps normal priority.
            let expected = raised.then_some(level.priority());
            assert_eq!(during, expected, "{level:?}");
        }
        assert!(Realtime::Service.priority() > Realtime::Interactive.priority());
    }
}
