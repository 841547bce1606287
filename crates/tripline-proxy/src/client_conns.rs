//! Client connections as Tripline supervises them from outside their tasks: the request-head
//! timeout (a connection that has no request in flight for `--header-timeout` is closed:
//! slow-loris clients, idle HTTP/1.1 keep-alive), the stream idle timeout (a request whose
//! bytes have not moved either way for `--stream-idle-timeout`: a client that never reads its
//! response or uploads a byte a minute, holding an upstream connection that others need) and
//! the drain on SIGTERM.
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
use std::time::Duration;

use tokio::time::Instant;

/// hyper's default, and what Tripline used before it kept the time itself.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Envoy's default `stream_idle_timeout`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How stale a progress stamp can be: the coarse clock requests stamp their progress with is
/// advanced by the housekeeping task every 100 ms, so a stream is only called idle once it
/// has been idle for the timeout plus this.
const COARSE_TICK_MS: u64 = 100;

/// The stream idle timeout as an HTTP/2 connection keeps it for its streams: the timeout and
/// the clock they are stamped with.
#[derive(Clone, Debug)]
pub struct StreamIdleConfig {
    pub timeout: Duration,
    /// Milliseconds, advanced by the housekeeping task.
    pub clock: Arc<AtomicU64>,
}

/// Every open client connection, for the sweep and the drain.
#[derive(Debug)]
pub struct ClientConns {
    conns: Mutex<HashMap<u64, Arc<ConnSignal>>>,
    next_id: AtomicU64,
    /// Times are kept as milliseconds since this instant.
    epoch: Instant,
    header_timeout_ms: AtomicU64,
    /// 0: off.
    stream_idle_timeout_ms: AtomicU64,
    /// Set by the drain: connections opened after it are stopped at once.
    draining: AtomicBool,
    /// The time progress is stamped with: milliseconds since `epoch`, advanced by
    /// [`ClientConns::tick`] (a load instead of a clock read for every body chunk).
    coarse: Arc<AtomicU64>,
}

impl Default for ClientConns {
    fn default() -> Self {
        ClientConns {
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            header_timeout_ms: AtomicU64::new(DEFAULT_HEADER_TIMEOUT.as_millis() as u64),
            stream_idle_timeout_ms: AtomicU64::new(DEFAULT_STREAM_IDLE_TIMEOUT.as_millis() as u64),
            draining: AtomicBool::new(false),
            coarse: Arc::default(),
        }
    }
}

/// One client connection's supervision state.
#[derive(Debug, Default)]
pub struct ConnSignal {
    in_flight: AtomicU32,
    /// Requests whose response head is not ready yet (HTTP/1.1: at most one).
    awaiting_head: AtomicU32,
    /// When a request of the connection last moved a byte (its head, a request or response
    /// body chunk), on the coarse clock.
    progress_ms: AtomicU64,
    /// The registry's coarse clock.
    coarse: Arc<AtomicU64>,
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
/// The stream idle timeout: a request waiting for its response head is answered `408
/// stream-idle-timeout` (see [`StreamIdle`]) and the connection closes after it; one whose
/// response is under way is cut (the connection dropped), as Envoy resets such a stream.
const STOP_IDLE: u8 = 3;

/// What a sweep decides for one connection.
fn expired(in_flight: u32, h2: bool, idle_since_ms: u64, now_ms: u64, timeout_ms: u64) -> bool {
    in_flight == 0 && !h2 && now_ms.saturating_sub(idle_since_ms) >= timeout_ms
}

/// Whether the requests in flight on a connection have made no progress for the stream idle
/// timeout (`timeout_ms` 0: off). HTTP/2 connections carry many streams whose progress one
/// stamp cannot tell apart; their server keeps its own per stream.
fn stream_idle(in_flight: u32, h2: bool, progress_ms: u64, now_ms: u64, timeout_ms: u64) -> bool {
    timeout_ms > 0
        && in_flight > 0
        && !h2
        && now_ms.saturating_sub(progress_ms) >= timeout_ms + COARSE_TICK_MS
}

/// What a sweep stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Connections past the request-head timeout.
    pub head_timeouts: usize,
    /// Connections whose request made no progress for the stream idle timeout.
    pub stream_idle: usize,
}

impl ClientConns {
    pub fn set_header_timeout(&self, timeout: Duration) {
        self.header_timeout_ms.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms.load(Ordering::Relaxed))
    }

    /// `Duration::ZERO` turns the stream idle timeout off.
    pub fn set_stream_idle_timeout(&self, timeout: Duration) {
        self.stream_idle_timeout_ms.store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// The stream idle timeout as an HTTP/2 connection keeps it for its streams (each stamped
    /// on this registry's coarse clock), or `None` when it is off.
    pub fn stream_idle_config(&self) -> Option<StreamIdleConfig> {
        let ms = self.stream_idle_timeout_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| StreamIdleConfig { timeout: Duration::from_millis(ms), clock: self.coarse.clone() })
    }

    /// Advances the coarse clock that progress is stamped with (every housekeeping tick).
    pub fn tick(&self, now: Instant) {
        self.coarse.store(self.ms_at(now), Ordering::Relaxed);
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
        let signal = Arc::new(ConnSignal { coarse: self.coarse.clone(), ..ConnSignal::default() });
        signal.idle_since_ms.store(self.ms_at(at), Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.conns).insert(id, signal.clone());
        if self.draining.load(Ordering::Acquire) {
            signal.signal_stop(STOP_DRAIN);
        }
        ConnHandle { conns: self.clone(), id, signal }
    }

    /// Stops every connection whose request-head wait has passed the timeout at `now`, and
    /// every one whose request made no progress for the stream idle timeout.
    pub fn sweep(&self, now: Instant) -> Swept {
        let now_ms = self.ms_at(now);
        let timeout_ms = self.header_timeout_ms.load(Ordering::Relaxed);
        let idle_ms = self.stream_idle_timeout_ms.load(Ordering::Relaxed);
        let conns = lock(&self.conns);
        let mut swept = Swept::default();
        for s in conns.values() {
            let (in_flight, h2) = (s.in_flight.load(Ordering::Acquire), s.h2.load(Ordering::Relaxed));
            let stop = s.stop.load(Ordering::Relaxed);
            if stop == STOP_NONE
                && expired(in_flight, h2, s.idle_since_ms.load(Ordering::Relaxed), now_ms, timeout_ms)
            {
                s.signal_stop(STOP_TIMEOUT);
                swept.head_timeouts += 1;
            } else if stop != STOP_IDLE
                && stream_idle(in_flight, h2, s.progress_ms.load(Ordering::Relaxed), now_ms, idle_ms)
            {
                s.signal_stop(STOP_IDLE);
                swept.stream_idle += 1;
            }
        }
        swept
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
        self.progress();
        self.awaiting_head.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    /// A request's response head is ready (or the request is gone without one).
    pub fn head_ready(&self) {
        self.progress();
        self.awaiting_head.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request moved bytes: a chunk of its body came in, or one of its response went out.
    pub fn progress(&self) {
        self.progress_ms.store(self.coarse.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The stream idle timeout fired: the request waiting for its head gives up.
    pub fn stream_idle_expired(&self) -> bool {
        self.stop.load(Ordering::Acquire) == STOP_IDLE
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

    /// [`ClientConns::now_ms`] of the registry this connection is in.
    pub fn now_ms(&self) -> u64 {
        self.conns.now_ms()
    }
}

/// Whatever owns a client connection's [`ConnHandle`] for its requests: the proxy's
/// per-connection context, which lives in a layer above this one (`http_proxy::ConnContext`),
/// so a request's [`RequestMark`] holds it by this trait.
pub trait ClientConn: Send + Sync {
    fn conn(&self) -> &ConnHandle;
}

/// A request in flight on its client connection, until the response body is done with:
/// dropping it tells the connection's supervision that the request ended. It owns the
/// request's reference to the connection context, so it costs no extra clone.
pub struct RequestMark {
    ctx: Arc<dyn ClientConn>,
    /// Until the response head is ready (the stream idle timeout answers such a request 408).
    awaiting_head: bool,
}

impl RequestMark {
    pub fn new(ctx: Arc<dyn ClientConn>, h2: bool) -> Self {
        ctx.conn().signal().request_started(h2);
        RequestMark { ctx, awaiting_head: true }
    }

    pub fn head_ready(&mut self) {
        if std::mem::take(&mut self.awaiting_head) {
            self.signal().head_ready();
        }
    }

    /// The connection's supervision: body chunks moving stamp its progress.
    pub fn signal(&self) -> &ConnSignal {
        self.ctx.conn().signal()
    }
}

impl Drop for RequestMark {
    fn drop(&mut self) {
        self.head_ready();
        let conn = self.ctx.conn();
        conn.signal().request_ended(conn.now_ms());
    }
}

impl std::fmt::Debug for RequestMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMark").field("awaiting_head", &self.awaiting_head).finish()
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
    /// The stream idle timeout was seen (and what to do decided).
    idle_seen: bool,
}

impl<F, S: FnMut(&mut F)> Supervised<F, S> {
    pub fn new(conn: F, signal: Arc<ConnSignal>, shut_down: S) -> Self {
        Supervised { conn, shut_down, signal, registered: false, stopping: false, idle_seen: false }
    }
}

impl<F: Future + Unpin, S: FnMut(&mut F) + Unpin> Future for Supervised<F, S> {
    /// `None` when a timeout closed the connection outright.
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.registered {
            // A task's waker wakes that task whichever poll it came from, so once is enough.
            *lock(&this.signal.waker) = Some(cx.waker().clone());
            this.registered = true;
        }
        let stop = this.signal.stop.load(Ordering::Acquire);
        if stop == STOP_IDLE && !this.idle_seen {
            this.idle_seen = true;
            // Decided once, when first seen. A response under way that has moved nothing is
            // cut, with the connection (HTTP/1.1 has no other way to end a response early).
            // A request still waiting for its head is answered 408 by its own wait
            // (`StreamIdle`), and the connection closes gracefully after it.
            if this.signal.awaiting_head.load(Ordering::Acquire) == 0 {
                return Poll::Ready(None);
            }
        }
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

thread_local! {
    /// Set while the HTTP/2 server polls a stream the stream idle timeout fired on (HTTP/2
    /// keeps the timeout per stream, and the request path cannot name its stream).
    static IDLE_STREAM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A request's wait for its response head, given up when the stream idle timeout fires on its
/// connection (HTTP/1.1) or its stream (HTTP/2): `None`. Costs an atomic load and a
/// thread-local read a poll; the timers are the sweep's and the HTTP/2 connection's.
pub struct StreamIdle<'a, F: ?Sized> {
    signal: &'a ConnSignal,
    inner: Pin<&'a mut F>,
}

impl<'a, F: Future + ?Sized> StreamIdle<'a, F> {
    pub fn new(signal: &'a ConnSignal, inner: Pin<&'a mut F>) -> Self {
        StreamIdle { signal, inner }
    }
}

impl StreamIdle<'_, ()> {
    /// Runs `poll` (the HTTP/2 server polling a stream's request) telling any `StreamIdle` in
    /// it whether the stream's idle timeout fired.
    pub fn told<T>(expired: bool, poll: impl FnOnce() -> T) -> T {
        if !expired {
            return poll();
        }
        IDLE_STREAM.with(|c| c.set(true));
        let out = poll();
        IDLE_STREAM.with(|c| c.set(false));
        out
    }
}

impl<F: Future + ?Sized> Future for StreamIdle<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.signal.stream_idle_expired() || IDLE_STREAM.with(std::cell::Cell::get) {
            return Poll::Ready(None);
        }
        self.inner.as_mut().poll(cx).map(Some)
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
        assert_eq!(conns.sweep(at(30)).head_timeouts, 0);
        assert_eq!(conns.sweep(at(31)).head_timeouts, 1);
        assert_eq!(idle.signal().stop.load(Ordering::Relaxed), STOP_TIMEOUT);
        assert_eq!(busy.signal().stop.load(Ordering::Relaxed), STOP_NONE);
        // The busy connection's request ends at t = 40 s: it may wait for a head until 70 s.
        busy.signal().request_ended(conns.ms_at(at(40)));
        assert_eq!(conns.sweep(at(69)).head_timeouts, 0);
        assert_eq!(conns.sweep(at(70)).head_timeouts, 1);
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
    fn a_request_that_moves_no_byte_for_the_stream_idle_timeout_is_stopped() {
        let conns = Arc::new(ClientConns::default());
        conns.set_stream_idle_timeout(Duration::from_secs(10));
        let at = |ms: u64| conns.epoch + Duration::from_millis(ms);
        let (stuck, moving, idle) = (conns.open_at(at(0)), conns.open_at(at(0)), conns.open_at(at(0)));
        conns.tick(at(1_000));
        stuck.signal().request_started(false);
        moving.signal().request_started(false);
        for ms in (2_000..=11_000).step_by(1_000) {
            conns.tick(at(ms));
            moving.signal().progress();
            assert_eq!(conns.sweep(at(ms)).stream_idle, 0, "{ms} ms");
        }
        // Stamped at 1 s on a clock that may lag a tick: idle from 11.1 s on, not before.
        conns.tick(at(11_099));
        assert_eq!(conns.sweep(at(11_099)).stream_idle, 0);
        conns.tick(at(11_100));
        assert_eq!(conns.sweep(at(11_100)), Swept { head_timeouts: 0, stream_idle: 1 });
        assert!(stuck.signal().stream_idle_expired());
        assert!(!moving.signal().stream_idle_expired(), "progress keeps a stream alive");
        assert!(!idle.signal().stream_idle_expired(), "a connection without a request is the head timeout's");
        assert_eq!(conns.sweep(at(20_000)).stream_idle, 0, "fired once");

        conns.set_stream_idle_timeout(Duration::ZERO);
        moving.signal().request_started(false);
        conns.tick(at(1_000_000));
        assert_eq!(conns.sweep(at(1_000_000)).stream_idle, 0, "0 turns it off");
    }

    #[test]
    fn the_stream_idle_timeout_answers_a_request_waiting_for_its_head_and_cuts_one_under_way() {
        let conns = Arc::new(ClientConns::default());
        // Waiting for its head: the connection is not dropped; the request's wait gives up.
        let (handle, fut) = supervised(&conns, false);
        let mut fut = std::pin::pin!(fut);
        handle.signal().request_started(false);
        let mut waiting = std::pin::pin!(std::future::pending::<()>());
        let mut wait = std::pin::pin!(StreamIdle::new(handle.signal(), waiting.as_mut()));
        assert!(poll_once(wait.as_mut()).is_pending());
        handle.signal().signal_stop(STOP_IDLE);
        assert_eq!(poll_once(wait.as_mut()), Poll::Ready(None), "the wait ends: 408");
        assert!(poll_once(fut.as_mut()).is_pending(), "the connection stays to write the 408");
        handle.signal().head_ready();
        assert!(poll_once(fut.as_mut()).is_pending(), "and closes gracefully after it");

        // A response under way that moved nothing: the connection is dropped, cutting it.
        let (handle, fut) = supervised(&conns, false);
        let mut fut = std::pin::pin!(fut);
        handle.signal().request_started(false);
        handle.signal().head_ready();
        assert!(poll_once(fut.as_mut()).is_pending());
        handle.signal().signal_stop(STOP_IDLE);
        assert_eq!(poll_once(fut.as_mut()), Poll::Ready(None));
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
