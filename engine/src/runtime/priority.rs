//! Thread priority: worker threads may run below the rest of the process
//! (`AppConfig::worker_nice`), so that when the CPUs are busy the gRPC
//! server's threads get them first and queries keep a bounded latency.
//!
//! Linux only: there a nice value is per thread (`setpriority(2)` with a
//! thread id). Elsewhere `PRIO_PROCESS` would lower the whole process, so
//! the setting is ignored there (with a warning). Lowering a priority needs
//! no privilege; a failure is logged and the thread runs on at its
//! priority, since it changes how fast, not what, the engine computes.

/// Lowers the calling thread's priority by `nice` (0: unchanged), up to
/// the lowest priority.
pub(crate) fn lower_this_thread(nice: u8) {
    if nice == 0 {
        return;
    }
    imp::lower(nice);
}

// The libc calls are the one use of `unsafe` in the engine.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod imp {
    use crate::config::MAX_NICE;

    pub(super) fn lower(nice: u8) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        // getpriority may return -1 as a value: tell errors by errno.
        // SAFETY: errno is this thread's; getpriority only reads.
        let now = unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        };
        if now == -1 && std::io::Error::last_os_error().raw_os_error() != Some(0) {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the worker thread's priority; it runs unchanged");
            return;
        }
        let target = (now + i32::from(nice)).min(i32::from(MAX_NICE));
        // SAFETY: sets the priority of this thread only (a Linux thread id).
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } != 0 {
            tracing::warn!(nice = target, error = %std::io::Error::last_os_error(),
                "cannot lower the worker thread's priority (worker_nice); it runs unchanged");
        }
    }

    /// The calling thread's nice value.
    #[cfg(test)]
    pub(super) fn current() -> i32 {
        // SAFETY: as above.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn lower(nice: u8) {
        tracing::warn!(
            nice,
            "worker_nice is supported on Linux only; the worker threads run at the process's priority"
        );
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread_and_stops_at_the_lowest_priority() {
        let main = imp::current();
        let (lowered, clamped) = std::thread::spawn(move || {
            lower_this_thread(3);
            let lowered = imp::current();
            lower_this_thread(crate::config::MAX_NICE);
            (lowered, imp::current())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (main + 3).min(19));
        assert_eq!(clamped, 19);
        assert_eq!(imp::current(), main, "the calling thread only");
        lower_this_thread(0);
        assert_eq!(imp::current(), main);
    }
}
