//! Work that must not take CPU from the workers: a config reload, and freeing what it replaced.
//!
//! Reading, parsing and compiling a large config takes a second of CPU or more (about 1.2 s
//! at 100,000 endpoints), and on a small machine the workers, and the client and upstream
//! processes beside the proxy, then wait for a core: in `bench/endpoints-scale.sh` a reload
//! every 2 s doubled the requests' p99, and so did two processes that were not the proxy
//! spinning for the same CPU (the control run). Spinning at nice 19 left the p99 where it was.
//! So the reload runs on a thread of its own at nice 19 (threads it starts inherit it): it
//! gets whatever the rest leave, and still about 1.5% of a busy core, so it cannot starve for
//! good as it could under `SCHED_IDLE`.

use std::io;

/// The nice value of the reload's thread: the lowest priority a normal thread can have.
const NICE: libc::c_int = 19;

/// Runs `work` on a new thread at [`NICE`] and waits for it without blocking the event loop.
/// `None` if the thread could not be started or `work` panicked.
pub async fn run<T, F>(name: &str, work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        if let Err(e) = lower_this_thread() {
            tracing::debug!(error = %e, "could not lower the reload thread's priority");
        }
        let _ = tx.send(work());
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the {name} thread");
        return None;
    }
    rx.await.ok()
}

/// Sets the calling thread's nice value to [`NICE`] (on Linux a nice value is per thread).
fn lower_this_thread() -> io::Result<()> {
    // SAFETY: `gettid` has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain syscall on this thread's own id; no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// What a user would notice: the reload's thread, and the threads it starts (the second
    /// parsing half), run at nice 19, and the caller's priority does not change.
    #[tokio::test]
    async fn work_runs_at_nice_19_and_leaves_the_caller_alone() {
        fn nice() -> i32 {
            // SAFETY: as in `lower_this_thread`; `getpriority` returns the nice value (errno
            // is not checked: 0 is a valid answer and no error is possible for our own tid).
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        }
        let before = nice();
        let (own, child) = super::run("test-low", || {
            let child = std::thread::spawn(nice).join().expect("child thread");
            (nice(), child)
        })
        .await
        .expect("the work ran");
        assert_eq!((own, child), (19, 19));
        assert_eq!(nice(), before);
    }
}
