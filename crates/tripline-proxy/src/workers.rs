//! Thread-per-core workers: `--workers N` runs N threads, each with its own single-threaded
//! runtime, instead of one work-stealing runtime.
//!
//! Why: on a work-stealing runtime a connection's tasks wander between threads, every wakeup
//! may cross a core, and a socket write cannot be held to the end of the event-loop tick
//! (`net_io`'s deferred writes need the writer and the flusher on one thread). Measured on the
//! benchmark machine, two of these workers sharing a core spend about a quarter less CPU per
//! h2c request than two work-stealing ones, and wake the proxy's peers half as often
//! (docs/benchmarks.md). Envoy and HAProxy run a loop per thread for the same reason.
//!
//! How:
//! - `--workers 1`: the main thread's runtime is the one worker and runs everything.
//! - `--workers N`, N ≥ 2: N threads of their own ([`start`]); the main thread keeps the
//!   control plane (admin API, config reload, DNS, housekeeping) and the accept loops.
//! - One socket per listener accepts on the main thread and hands each connection to the
//!   worker with the fewest open client connections ([`pick`]); the connection's tasks, its
//!   upstream requests and their upstream connections then stay on that worker.
//! - Upstream pools keep idle connections per worker (`endpoint::pool`), so a request takes a
//!   connection whose socket its own thread watches. Limits (`maxConnections` and the rest)
//!   stay per cluster, counted across workers: a request on a worker at the limit borrows an
//!   idle connection of another worker rather than wait.
//!
//! Without [`start`] (unit tests, the demo) there is one worker, index 0: this thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};

use tokio::runtime::Handle;
use tokio::sync::watch;

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// The worker this thread is; `None` on the main thread when the workers have threads
    /// of their own.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

struct Workers {
    handles: Vec<Handle>,
    /// Open client connections on each worker.
    conns: Box<[AtomicUsize]>,
    /// Client connections each worker was given, ever (for `/metrics`).
    accepted: Box<[AtomicUsize]>,
    /// Rotates the winner of ties in [`pick`].
    next: AtomicUsize,
}

/// The number of workers (1 unless [`start`] ran).
pub fn count() -> usize {
    WORKERS.get().map_or(1, |w| w.handles.len())
}

/// The worker this thread is, `0..count()`; the main thread of several workers counts as 0
/// (it only runs the control plane, which uses no pool slot of its own).
pub fn current() -> usize {
    INDEX.with(Cell::get).unwrap_or(0)
}

/// Whether this thread may use a worker's pool slot: it is a worker, or none were started.
/// The main thread of several workers is not one (it would take worker 0's slot).
pub fn on_worker() -> bool {
    INDEX.with(Cell::get).is_some() || WORKERS.get().is_none()
}

fn is_here(index: usize) -> bool {
    match INDEX.with(Cell::get) {
        Some(i) => i == index,
        // Never started (unit tests, the demo): everything runs here.
        None => WORKERS.get().is_none(),
    }
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

/// Starts `n` workers, each a single-threaded runtime that defers small writes to the end of
/// its tick. One worker is the caller's own runtime (the main thread runs everything, as the
/// benchmarks measure it); several are threads of their own, and the main thread keeps the
/// control plane and the accept loops, as Envoy's main thread does. Call it once, from the
/// main runtime, before the first config is applied (pools are sized by [`count`]).
pub fn start(n: usize) -> std::io::Result<Threads> {
    if WORKERS.get().is_some() {
        return Err(std::io::Error::other("workers already started"));
    }
    let (stop, stopped) = watch::channel(false);
    let mut threads = Threads { stop, joins: Vec::new() };
    let mut handles = Vec::new();
    if n <= 1 {
        INDEX.with(|c| c.set(Some(0)));
        handles.push(Handle::current());
    }
    let own_threads = if n > 1 { n } else { 0 };
    for i in 0..own_threads {
        // The runtime is built on its own thread: a runtime must not be dropped in async
        // context, which is where this runs if a later step fails.
        let (tx, rx) = mpsc::channel();
        let mut stopped = stopped.clone();
        let spawned = std::thread::Builder::new().name(format!("tripline-worker-{i}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return drop(tx.send(Err(e))),
            };
            INDEX.with(|c| c.set(Some(i)));
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(async move {
                crate::net_io::defer_writes_on_this_thread();
                let _ = stopped.wait_for(|s| *s).await;
            });
        });
        let handle = spawned.and_then(|join| {
            threads.joins.push(join);
            rx.recv().map_err(std::io::Error::other)?
        });
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                threads.stop();
                return Err(e);
            }
        }
    }
    let zeros = || (0..handles.len()).map(|_| AtomicUsize::new(0)).collect();
    let workers = Workers { conns: zeros(), accepted: zeros(), handles, next: AtomicUsize::new(0) };
    if WORKERS.set(workers).is_err() {
        threads.stop();
        return Err(std::io::Error::other("workers already started"));
    }
    Ok(threads)
}

/// The worker a new client connection goes to: the one with the fewest open connections;
/// ties are taken in turn.
pub fn pick() -> usize {
    let Some(w) = WORKERS.get().filter(|w| w.conns.len() > 1) else { return 0 };
    let loads: Vec<usize> = w.conns.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    least_loaded(&loads, w.next.fetch_add(1, Ordering::Relaxed))
}

/// The index of the lowest load; among equal lowest loads, the `turn`-th (modulo their
/// number), so that a counter for `turn` takes them in turn.
fn least_loaded(loads: &[usize], turn: usize) -> usize {
    let min = loads.iter().copied().min().unwrap_or(0);
    let lowest = || loads.iter().enumerate().filter(move |(_, &l)| l == min).map(|(i, _)| i);
    let tied = lowest().count().max(1);
    lowest().nth(turn % tied).unwrap_or(0)
}

/// Runs `fut` on worker `index`: spawned there, or here if this thread is that worker.
pub fn spawn_on<F>(index: usize, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match WORKERS.get().and_then(|w| w.handles.get(index)) {
        Some(h) if !is_here(index) => {
            h.spawn(fut);
        }
        _ => {
            tokio::spawn(fut);
        }
    }
}

/// Whether a future for worker `index` may simply be spawned on this thread.
pub fn runs_here(index: usize) -> bool {
    is_here(index) || WORKERS.get().is_none_or(|w| index >= w.handles.len())
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

/// Client connections given to each worker so far, and open on each now, in worker order.
pub fn connections() -> Vec<(u64, u64)> {
    let Some(w) = WORKERS.get() else { return Vec::new() };
    let load = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
    w.accepted.iter().zip(w.conns.iter()).map(|(a, o)| (load(a), load(o))).collect()
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
    fn connections_go_to_the_least_loaded_worker_and_ties_in_turn() {
        let loads = [3, 1, 1, 2];
        let picks: Vec<usize> = (0..4).map(|turn| least_loaded(&loads, turn)).collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        // Only some tied: the tied ones alternate, the others never come up.
        let picks: Vec<usize> = (0..4).map(|turn| least_loaded(&[0, 0, 1], turn)).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        let picks: Vec<usize> = (0..4).map(|turn| least_loaded(&[2, 2, 2, 2], turn)).collect();
        assert_eq!(picks, [0, 1, 2, 3]);
        assert_eq!(least_loaded(&[9], 7), 0);
    }
}
