//! Thread-per-core workers: `--workers N` runs N threads, each with its own single-threaded
//! runtime, instead of one work-stealing runtime.
//!
//! Why: on a work-stealing runtime a connection's tasks wander between threads, every wakeup
//! may cross a core, and a socket write cannot be held to the end of the event-loop tick
//! (`net_io`'s deferred writes need the writer and the flusher on one thread). Measured on the
//! benchmark machine, two work-stealing workers cost 20–40% more CPU per request than two of
//! these, most of it kernel time waking peers (docs/benchmarks.md). Envoy and HAProxy run a
//! loop per thread for the same reason.
//!
//! How:
//! - Worker 0 is the main thread's runtime; it also runs the control plane (admin API, config
//!   reload, DNS, housekeeping). Workers 1..N each run a thread of their own ([`start`]).
//! - One socket per listener accepts on worker 0, and hands each connection to the worker with
//!   the fewest open client connections ([`pick`]); the connection's tasks, its upstream
//!   requests and their upstream connections then stay on that worker.
//! - Upstream pools keep idle connections per worker (`upstream::pool`), so a request takes a
//!   connection whose socket its own thread watches. Limits (`maxConnections` and the rest)
//!   stay per cluster, counted across workers: a request on a worker at the limit borrows an
//!   idle connection of another worker rather than wait.
//!
//! Without [`start`] (unit tests, `--workers 1`, the demo) there is one worker, index 0.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::sync::watch;

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

struct Workers {
    handles: Vec<Handle>,
    /// Open client connections on each worker.
    conns: Box<[AtomicUsize]>,
    /// Client connections each worker was given, ever (for `/metrics`).
    accepted: Box<[AtomicUsize]>,
}

/// The number of workers (1 unless [`start`] ran).
pub fn count() -> usize {
    WORKERS.get().map_or(1, |w| w.handles.len())
}

/// The worker this thread is, `0..count()`.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The worker threads started by [`start`]; [`Threads::stop`] ends them.
pub struct Threads {
    stop: watch::Sender<bool>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl Threads {
    /// Stops the workers' runtimes (dropping whatever tasks are left) and waits for them.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for j in self.joins {
            let _ = j.join();
        }
    }
}

/// Starts workers 1..n, each a thread with a single-threaded runtime that defers small
/// writes to the end of its tick; the caller's runtime becomes worker 0. Call it once, from
/// the main runtime, before the first config is applied (pools are sized by [`count`]).
pub fn start(n: usize) -> std::io::Result<Threads> {
    if WORKERS.get().is_some() {
        return Err(std::io::Error::other("workers already started"));
    }
    let (stop, stopped) = watch::channel(false);
    let mut handles = vec![Handle::current()];
    let mut joins = Vec::new();
    for i in 1..n {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(rt.handle().clone());
        let mut stopped = stopped.clone();
        let join = std::thread::Builder::new().name(format!("tripline-worker-{i}")).spawn(move || {
            INDEX.with(|c| c.set(i));
            rt.block_on(async move {
                crate::net_io::defer_writes_on_this_thread();
                let _ = stopped.wait_for(|s| *s).await;
            });
        })?;
        joins.push(join);
    }
    let zeros = || (0..handles.len()).map(|_| AtomicUsize::new(0)).collect();
    let threads = Threads { stop, joins };
    if WORKERS.set(Workers { conns: zeros(), accepted: zeros(), handles }).is_err() {
        threads.stop();
        return Err(std::io::Error::other("workers already started"));
    }
    Ok(threads)
}

/// The worker a new client connection goes to: the one with the fewest open connections,
/// the current one on a tie (no hand-over then).
pub fn pick() -> usize {
    let Some(w) = WORKERS.get() else { return 0 };
    least_loaded(w.conns.len(), current(), |i| w.conns[i].load(Ordering::Relaxed))
}

/// The index in `0..n` with the lowest `load`; `here` wins ties, then the lowest index.
fn least_loaded(n: usize, here: usize, load: impl Fn(usize) -> usize) -> usize {
    (0..n).fold(here, |best, i| if load(i) < load(best) { i } else { best })
}

/// Runs `fut` on worker `index`: spawned there, or here if it is this one.
pub fn spawn_on<F>(index: usize, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match WORKERS.get().and_then(|w| w.handles.get(index)) {
        Some(h) if index != current() => {
            h.spawn(fut);
        }
        _ => {
            tokio::spawn(fut);
        }
    }
}

/// Counts a client connection on its worker while alive.
pub struct Assigned(usize);

impl Assigned {
    pub fn new(index: usize) -> Self {
        if let Some(w) = WORKERS.get() {
            w.conns[index].fetch_add(1, Ordering::Relaxed);
            w.accepted[index].fetch_add(1, Ordering::Relaxed);
        }
        Assigned(index)
    }
}

impl Drop for Assigned {
    fn drop(&mut self) {
        if let Some(w) = WORKERS.get() {
            w.conns[self.0].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Client connections accepted per worker so far, in worker order.
pub fn accepted() -> Vec<u64> {
    match WORKERS.get() {
        Some(w) => w.accepted.iter().map(|a| a.load(Ordering::Relaxed) as u64).collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_start_there_is_one_worker() {
        assert_eq!(count(), 1);
        assert_eq!(current(), 0);
        assert_eq!(pick(), 0);
    }

    #[test]
    fn connections_go_to_the_least_loaded_worker_and_stay_here_on_a_tie() {
        let loads = [3, 1, 1, 2];
        assert_eq!(least_loaded(4, 0, |i| loads[i]), 1);
        assert_eq!(least_loaded(4, 2, |i| loads[i]), 2);
        assert_eq!(least_loaded(4, 3, |i| [2, 2, 2, 2][i]), 3);
        assert_eq!(least_loaded(1, 0, |_| 9), 0);
    }
}
