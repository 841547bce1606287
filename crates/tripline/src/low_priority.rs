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
//!
//! It is one thread for the life of the process, not one a job: memory a thread allocated
//! (the reload's config, its cache) outlives it, and mimalloc hands the heap of a thread that
//! ended to whichever thread next needs memory, which could be a worker that then does the
//! freeing and purging of the next reload. Each job that frees a lot ends with
//! `alloc::release_free_memory`, which returns it to the system here rather than on a worker.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::OnceLock;

/// The nice value of the low-priority thread: the lowest priority a normal thread can have.
const NICE: libc::c_int = 19;

type Job = Box<dyn FnOnce() + Send>;

/// The queue of the low-priority thread, which is started on first use; `None` if it could
/// not be started.
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new().name("tripline-low".into()).spawn(move || {
                if let Err(e) = lower_this_thread() {
                    tracing::debug!(error = %e, "could not lower the low-priority thread's priority");
                }
                for job in rx {
                    job();
                }
            });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "could not start the low-priority thread");
                    None
                }
            }
        })
        .as_ref()
}

/// Runs `work` on the low-priority thread, after the jobs before it, and waits for it
/// without blocking the event loop. `None` if the thread could not be started or `work`
/// panicked (the thread goes on with the next job).
pub async fn run<T, F>(work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        if let Ok(done) = std::panic::catch_unwind(AssertUnwindSafe(work)) {
            let _ = tx.send(done);
        }
    });
    queue()?.send(job).ok()?;
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
        let (own, child) = super::run(|| {
            let child = std::thread::spawn(nice).join().expect("child thread");
            (nice(), child)
        })
        .await
        .expect("the work ran");
        assert_eq!((own, child), (19, 19));
        assert_eq!(nice(), before);
    }

    /// Every job runs on the same thread (so no heap is left behind by a thread that ended),
    /// one after the other, and a job that panics costs only its own answer.
    #[tokio::test]
    async fn jobs_share_one_thread_and_survive_a_panic() {
        let first = super::run(|| std::thread::current().id()).await.expect("ran");
        let panicked = super::run(|| -> u8 { panic!("a job that fails") }).await;
        assert_eq!(panicked, None);
        let (a, b) = tokio::join!(
            super::run(|| std::thread::current().id()),
            super::run(|| std::thread::current().id())
        );
        assert_eq!((a, b), (Some(first), Some(first)));
        assert_ne!(first, std::thread::current().id());
    }
}
