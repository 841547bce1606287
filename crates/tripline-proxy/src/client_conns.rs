//! Client connections as Tripline supervises them from outside their tasks: the request-head
//! timeout (a connection that has no request in flight for `--header-timeout` is closed:
//! slow-loris clients, idle HTTP/1.1 keep-alive) and the drain on SIGTERM.
//!
//! Why not hyper's `header_read_timeout`: it arms a timer for every request on a keep-alive
//! connection (a boxed `Sleep`, a clock read, an insert into and a removal from tokio's timer
//! wheel), about 1,400 instructions per HTTP/1.1 request under callgrind, 6% of the proxy's
//! user-space work. Here a request costs two atomic updates of its connection's counters and
//! a clock read (vDSO), and the housekeeping task sweeps every connection's counters once a
//! second (every 100 ms tick when the timeout is under 10 s).
//!
//! A connection's supervision state is a [`ConnSignal`]: requests in flight, since when it has
//! had none, and a stop flag with the connection task's waker. [`Supervised`] wraps the
//! connection's future: when the flag is up it starts hyper's
//! graceful shutdown (a request in flight finishes with `Connection: close`, HTTP/2 gets a
//! GOAWAY); on a timeout, a connection with no request in flight is then dropped outright,
//! since hyper would wait for the head a slow client is still sending. Otherwise it costs one
//! atomic load a poll.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// hyper's default, and what Tripline used before it kept the time itself.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Every open client connection, for the sweep and the drain.
#[derive(Debug)]
pub struct ClientConns {
    conns: Mutex<HashMap<u64, Arc<ConnSignal>>>,
    next_id: AtomicU64,
    /// Times are kept as milliseconds since this instant.
    epoch: Instant,
    header_timeout_ms: AtomicU64,
    /// Set by the drain: connections opened after it are stopped at once.
    draining: AtomicBool,
}

impl Default for ClientConns {
    fn default() -> Self {
        ClientConns {
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            header_timeout_ms: AtomicU64::new(DEFAULT_HEADER_TIMEOUT.as_millis() as u64),
            draining: AtomicBool::new(false),
        }
    }
}

/// One client connection's supervision state.
#[derive(Debug, Default)]
pub struct ConnSignal {
    in_flight: AtomicU32,
    /// When the last request ended (or the connection opened), in [`ClientConns`]'s
    /// milliseconds.
    idle_since_ms: AtomicU64,
    /// Set once the connection has made an HTTP/2 request: time without streams there is not
    /// a request-head wait (gRPC channels idle for minutes), so such connections are only
    /// drained.
    h2: AtomicBool,
    /// [`STOP_NONE`], [`STOP_DRAIN`] or [`STOP_TIMEOUT`].
    stop: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

const STOP_NONE: u8 = 0;
/// Finish what is in flight, then close.
const STOP_DRAIN: u8 = 1;
/// The request-head timeout: as a drain, but a connection with no request in flight closes at
/// once, even mid-head (hyper's graceful shutdown waits for the head a fresh connection is
/// sending, which is just what a slow-loris client wants).
const STOP_TIMEOUT: u8 = 2;

/// What a sweep decides for one connection.
fn expired(in_flight: u32, h2: bool, idle_since_ms: u64, now_ms: u64, timeout_ms: u64) -> bool {
    in_flight == 0 && !h2 && now_ms.saturating_sub(idle_since_ms) >= timeout_ms
}

impl ClientConns {
    pub fn set_header_timeout(&self, timeout: Duration) {
        self.header_timeout_ms.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms.load(Ordering::Relaxed))
    }

    /// Milliseconds since this registry's epoch at `at`.
    pub fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Milliseconds since this registry's epoch now: what request ends are stamped with (a
    /// vDSO clock read; a clock the sweep advanced would lag whenever a sweep runs late, and
    /// close connections early).
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Registers a new connection; it deregisters when the returned handle drops.
    pub fn open(self: &Arc<Self>) -> ConnHandle {
        self.open_at(Instant::now())
    }

    /// [`Self::open`], for a connection accepted at `at`.
    pub fn open_at(self: &Arc<Self>, at: Instant) -> ConnHandle {
        let signal = Arc::new(ConnSignal::default());
        signal.idle_since_ms.store(self.ms_at(at), Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.conns).insert(id, signal.clone());
        if self.draining.load(Ordering::Acquire) {
            signal.signal_stop(STOP_DRAIN);
        }
        ConnHandle { conns: self.clone(), id, signal }
    }

    /// Stops every connection whose request-head wait has passed the timeout at `now`.
    /// Returns how many were stopped.
    pub fn sweep(&self, now: Instant) -> usize {
        let now_ms = self.ms_at(now);
        let timeout_ms = self.header_timeout_ms.load(Ordering::Relaxed);
        let conns = lock(&self.conns);
        let mut stopped = 0;
        for s in conns.values() {
            let hit = expired(
                s.in_flight.load(Ordering::Acquire),
                s.h2.load(Ordering::Relaxed),
                s.idle_since_ms.load(Ordering::Relaxed),
                now_ms,
                timeout_ms,
            );
            if hit && s.stop.load(Ordering::Relaxed) == STOP_NONE {
                s.signal_stop(STOP_TIMEOUT);
                stopped += 1;
            }
        }
        stopped
    }

    /// The drain: every connection finishes what it has in flight and closes.
    pub fn stop_all(&self) {
        self.draining.store(true, Ordering::Release);
        for s in lock(&self.conns).values() {
            s.signal_stop(STOP_DRAIN);
        }
    }

    /// Open client connections.
    pub fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ConnSignal {
    fn signal_stop(&self, how: u8) {
        // A drain does not soften a timeout already under way.
        self.stop.fetch_max(how, Ordering::Release);
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }

    /// A request arrived (its head is parsed). `h2`: it came over HTTP/2.
    pub fn request_started(&self, h2: bool) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    /// A request ended (its response body was sent, cut or abandoned) at `now_ms`
    /// ([`ClientConns::now_ms`]).
    pub fn request_ended(&self, now_ms: u64) {
        // Stamp first: a sweep that sees zero in flight must not see an old stamp.
        self.idle_since_ms.store(now_ms, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// A connection's registration; dropping it deregisters the connection.
#[derive(Debug)]
pub struct ConnHandle {
    conns: Arc<ClientConns>,
    id: u64,
    signal: Arc<ConnSignal>,
}

impl ConnHandle {
    pub fn signal(&self) -> &Arc<ConnSignal> {
        &self.signal
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        lock(&self.conns.conns).remove(&self.id);
    }
}

/// A connection future that Tripline can stop from outside: see the module docs. `shut_down`
/// starts the connection's graceful shutdown (hyper's `graceful_shutdown`).
pub struct Supervised<F, S> {
    conn: F,
    shut_down: S,
    signal: Arc<ConnSignal>,
    registered: bool,
    stopping: bool,
}

impl<F, S: FnMut(&mut F)> Supervised<F, S> {
    pub fn new(conn: F, signal: Arc<ConnSignal>, shut_down: S) -> Self {
        Supervised { conn, shut_down, signal, registered: false, stopping: false }
    }
}

impl<F: Future + Unpin, S: FnMut(&mut F) + Unpin> Future for Supervised<F, S> {
    /// `None` when the request-head timeout closed the connection outright.
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.registered {
            // A task's waker wakes that task whichever poll it came from, so once is enough.
            *lock(&this.signal.waker) = Some(cx.waker().clone());
            this.registered = true;
        }
        let stop = this.signal.stop.load(Ordering::Acquire);
        if !this.stopping && stop != STOP_NONE {
            this.stopping = true;
            (this.shut_down)(&mut this.conn);
            let polled = Pin::new(&mut this.conn).poll(cx);
            // Decided once, here: a head that arrived before this poll has started its request
            // (hyper parsed it and called the service), and from then on the connection only
            // drains, so a response that is still being written is never cut.
            if polled.is_pending()
                && stop == STOP_TIMEOUT
                && this.signal.in_flight.load(Ordering::Acquire) == 0
            {
                // Dropping the connection closes it; what hyper already wrote (a GOAWAY) goes out.
                return Poll::Ready(None);
            }
            return polled.map(Some);
        }
        let polled = Pin::new(&mut this.conn).poll(cx);
        polled.map(Some)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn only_a_connection_without_requests_for_the_timeout_expires() {
        // 30 s timeout, last request ended at t = 10 s.
        assert!(!expired(0, false, 10 * S, 40 * S - 1, 30 * S), "a millisecond short");
        assert!(expired(0, false, 10 * S, 40 * S, 30 * S));
        assert!(!expired(1, false, 10 * S, 500 * S, 30 * S), "a request in flight is never cut");
        assert!(!expired(0, true, 10 * S, 500 * S, 30 * S), "HTTP/2 is not a head wait");
    }

    #[test]
    fn a_sweep_stops_the_idle_connection_and_spares_the_busy_one() {
        let conns = Arc::new(ClientConns::default());
        conns.set_header_timeout(Duration::from_secs(30));
        let at = |secs: u64| conns.epoch + Duration::from_secs(secs);
        let idle = conns.open_at(at(1));
        let busy = conns.open_at(at(1));
        busy.signal().request_started(false);
        assert_eq!(conns.sweep(at(30)), 0);
        assert_eq!(conns.sweep(at(31)), 1);
        assert_eq!(idle.signal().stop.load(Ordering::Relaxed), STOP_TIMEOUT);
        assert_eq!(busy.signal().stop.load(Ordering::Relaxed), STOP_NONE);
        // The busy connection's request ends at t = 40 s: it may wait for a head until 70 s.
        busy.signal().request_ended(conns.ms_at(at(40)));
        assert_eq!(conns.sweep(at(69)), 0);
        assert_eq!(conns.sweep(at(70)), 1);
        assert_eq!(conns.len(), 2);
        drop((idle, busy));
        assert!(conns.is_empty(), "closed connections deregister");
    }

    /// A stand-in for hyper's connection: pending forever; when `head_arrives`, its first poll
    /// after a shutdown request parses a head and starts a request, as hyper would.
    struct FakeConn {
        signal: Arc<ConnSignal>,
        head_arrives: bool,
        shut_down: bool,
    }

    impl Future for FakeConn {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.shut_down && self.head_arrives {
                self.head_arrives = false;
                self.signal.request_started(false);
            }
            Poll::Pending
        }
    }

    fn supervised(
        conns: &Arc<ClientConns>,
        head_arrives: bool,
    ) -> (ConnHandle, impl Future<Output = Option<()>>) {
        let handle = conns.open();
        let conn = FakeConn { signal: handle.signal().clone(), head_arrives, shut_down: false };
        let fut = Supervised::new(conn, handle.signal().clone(), |c: &mut FakeConn| c.shut_down = true);
        (handle, fut)
    }

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_timed_out_connection_without_a_request_is_dropped_at_once() {
        let conns = Arc::new(ClientConns::default());
        let (handle, fut) = supervised(&conns, false);
        let mut fut = std::pin::pin!(fut);
        assert!(poll_once(fut.as_mut()).is_pending());
        handle.signal().signal_stop(STOP_TIMEOUT);
        assert_eq!(poll_once(fut.as_mut()), Poll::Ready(None));
    }

    #[test]
    fn a_head_that_arrives_with_the_timeout_only_drains_even_once_its_request_ends() {
        let conns = Arc::new(ClientConns::default());
        let (handle, fut) = supervised(&conns, true);
        let mut fut = std::pin::pin!(fut);
        handle.signal().signal_stop(STOP_TIMEOUT);
        assert!(poll_once(fut.as_mut()).is_pending(), "the request that just started is served");
        // Its response body is dropped while hyper may still be writing it out.
        handle.signal().request_ended(conns.now_ms());
        assert!(poll_once(fut.as_mut()).is_pending(), "never cut: the connection closes when hyper is done");
    }

    #[test]
    fn a_drained_connection_is_never_dropped() {
        let conns = Arc::new(ClientConns::default());
        let (_handle, fut) = supervised(&conns, false);
        let mut fut = std::pin::pin!(fut);
        conns.stop_all();
        assert!(poll_once(fut.as_mut()).is_pending());
    }

    #[test]
    fn the_drain_stops_every_connection_and_wakes_its_task() {
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let conns = Arc::new(ClientConns::default());
        let a = conns.open();
        let woken = Arc::new(Flag(AtomicBool::new(false)));
        *lock(&a.signal().waker) = Some(Waker::from(woken.clone()));
        a.signal().request_started(true);
        conns.stop_all();
        assert_eq!(a.signal().stop.load(Ordering::Relaxed), STOP_DRAIN);
        assert!(woken.0.load(Ordering::Relaxed));
        let late = conns.open();
        assert_eq!(
            late.signal().stop.load(Ordering::Relaxed),
            STOP_DRAIN,
            "a connection accepted during the drain"
        );
    }
}
