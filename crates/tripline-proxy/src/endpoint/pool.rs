//! Per-endpoint upstream connection pools with Envoy's `connectionPool` semantics.
//!
//! - HTTP/1.1: idle keep-alive connections wait in a lock-free stack; a request takes the one
//!   returned last ([`IdleStack`] says why),
//!   or opens a new connection if the cluster is under `maxConnections`, or else waits as
//!   *pending* (at most `http1MaxPendingRequests` of them, beyond that `overflow-pending`)
//!   until a connection is returned or closed. A pending request that gets no connection
//!   within `connectTimeout` is refused with `overflow-connections`: the pool is saturated.
//! - HTTP/2: one multiplexed connection per endpoint (and worker), replaced when it closes or
//!   has served `maxRequestsPerConnection` requests.
//! - Per worker (see [`crate::workers`]): each worker thread keeps its own idle connections,
//!   so a request uses a socket its own event loop watches. The limits are the cluster's,
//!   across workers; a request that finds its worker without an idle connection and the
//!   cluster at `maxConnections` borrows one from another worker before it waits.
//! - An HTTP/1.1 connection is driven by the lean client ([`super::h1`]) for requests without
//!   a body, or by hyper's client (a task per connection) for the rest. An idle lean-client
//!   connection taken by a request with a body is handed to hyper; never the other way.
//!
//! Connection slots are [`Permit`]s held by the connection's task, so a connection that dies
//! for any reason frees its slot and wakes the pending requests.

use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

use arc_swap::ArcSwapOption;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::io::UpstreamIo;
use crate::net_io::TcpIo;
use tripline_config::plan::{PoolLimits, UpstreamProtocol};
use tripline_core::clock::Nanos;
use tripline_core::limits::Permit;

use super::h1::{self, RawConn};
use super::idle_stack::IdleStack;
use super::{ClusterState, Endpoint};
use crate::endpoint::body::{RequestBody, UpstreamBody};
use crate::reason::Reason;
use crate::BoxError;

/// Idle HTTP/1.1 connections kept per endpoint, shared out among the workers; more are
/// closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

#[derive(Debug)]
pub struct ConnectionPool {
    /// Each worker's connections (by the worker whose event loop watches the socket),
    /// allocated when the endpoint gets its first connection: a mesh proxy knows every
    /// endpoint of every service it may call, and most of them never see a request.
    workers: OnceLock<Box<[WorkerPool]>>,
    /// How many workers there were when the pool was made: the length of `workers`.
    width: usize,
    /// Open connections to this endpoint.
    pub connections: AtomicU32,
}

/// One worker's connections to an endpoint.
#[derive(Debug)]
struct WorkerPool {
    /// Idle HTTP/1.1 connections.
    idle: IdleStack<IdleH1>,
    /// The multiplexed HTTP/2 connection.
    h2: ArcSwapOption<H2Conn>,
}

#[derive(Debug)]
struct IdleH1 {
    link: H1Link,
    /// `resilience::now()` when it was returned.
    since: Nanos,
}

/// An HTTP/1.1 connection: driven by the lean client (requests without a body) or, once a
/// request needed full-duplex streaming or an upgrade, by hyper.
#[derive(Debug)]
pub enum H1Link {
    Raw(Box<RawConn>),
    /// `home`: the worker whose event loop watches the socket.
    Hyper {
        tx: http1::SendRequest<RequestBody>,
        uses: u32,
        home: usize,
    },
}

impl H1Link {
    fn uses(&self) -> u32 {
        match self {
            H1Link::Raw(c) => c.uses,
            H1Link::Hyper { uses, .. } => *uses,
        }
    }

    /// The worker whose event loop watches the socket: the connection's idle queue.
    fn home(&self) -> usize {
        match self {
            H1Link::Raw(c) => c.home(),
            H1Link::Hyper { home, .. } => *home,
        }
    }
}

#[derive(Debug)]
struct H2Conn {
    tx: http2::SendRequest<RequestBody>,
    uses: AtomicU32,
    /// `resilience::now()` when a request last took it or ended on it: once no stream is
    /// in flight, the idle sweep lets it go `idleTimeout` after that.
    last_used: AtomicU64,
    /// Requests holding an [`H2Stream`] on it.
    streams: AtomicU32,
}

/// A request's hold on an HTTP/2 connection, from checkout until its response body is
/// dropped and its request body has gone out (whichever is later: an upload can outlast its
/// response). The idle sweep leaves a connection with streams in flight alone, as Envoy does.
#[derive(Debug)]
pub struct H2Stream(Arc<H2Conn>);

impl H2Stream {
    fn new(conn: Arc<H2Conn>) -> Self {
        conn.streams.fetch_add(1, Ordering::Relaxed);
        H2Stream(conn)
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.0.last_used.store(crate::resilience::now(), Ordering::Relaxed);
        // Release, with the sweep's Acquire: a sweep that sees the count drop sees this time.
        self.0.streams.fetch_sub(1, Ordering::Release);
    }
}

/// A connection checked out for one request.
#[derive(Debug)]
pub enum Conn {
    H1(H1Link),
    H2(http2::SendRequest<RequestBody>, H2Stream),
}

/// An HTTP/1.1 connection to give back to its endpoint's pool once the response is read.
#[derive(Debug)]
pub struct Reusable(pub H1Link);

impl Default for ConnectionPool {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionPool {
    pub fn new() -> Self {
        ConnectionPool {
            workers: OnceLock::new(),
            width: crate::workers::count(),
            connections: AtomicU32::new(0),
        }
    }

    /// The workers' pools, allocated now if this is the endpoint's first connection.
    fn workers(&self) -> &[WorkerPool] {
        self.workers.get_or_init(|| {
            // The endpoint's cap shared out: the total stays near it whatever the number of
            // workers (a stack's slots grow with its use, up to that).
            let per_worker = (MAX_IDLE_PER_ENDPOINT / self.width).max(8);
            (0..self.width)
                .map(|_| WorkerPool { idle: IdleStack::new(per_worker), h2: ArcSwapOption::empty() })
                .collect()
        })
    }

    /// The workers' pools, empty while the endpoint never had a connection.
    fn existing(&self) -> &[WorkerPool] {
        self.workers.get().map_or(&[], |w| w)
    }

    pub fn idle_count(&self) -> usize {
        self.existing().iter().map(|w| w.idle.len()).sum()
    }

    /// Whether the endpoint ever had a connection (the pool's tables are allocated).
    pub fn is_allocated(&self) -> bool {
        self.workers.get().is_some()
    }

    /// This worker's slot in the per-worker tables.
    fn here(&self) -> usize {
        debug_assert!(crate::workers::on_worker(), "upstream pool used off the workers");
        crate::workers::current() % self.width
    }

    /// Returns a connection after a complete response. Closed or worn-out connections are
    /// dropped (which closes them).
    pub fn give_back(&self, Reusable(link): Reusable, max_uses: Option<u32>, now: Nanos) {
        let closed = matches!(&link, H1Link::Hyper { tx, .. } if tx.is_closed());
        if closed || max_uses.is_some_and(|m| link.uses() >= m) {
            return;
        }
        let home = link.home() % self.width;
        let _ = self.workers()[home].idle.push(IdleH1 { link, since: now });
    }

    /// Closes worker `worker`'s idle connections that are older than `idle_timeout` or dead.
    /// Called periodically on that worker's thread.
    pub fn evict_idle(&self, worker: usize, idle_timeout: std::time::Duration, now: Nanos) {
        let Some(WorkerPool { idle: stack, h2: slot }) = self.existing().get(worker) else { return };
        // No stream on the HTTP/2 connection for `idle_timeout`: let it go (hyper closes it
        // once the last handle is dropped). A request that took it just now still holds a
        // handle and finishes on it; the next one opens a new connection.
        if let Some(c) = slot.load_full() {
            let idle = c.streams.load(Ordering::Acquire) == 0
                && idle_too_long(c.last_used.load(Ordering::Relaxed), now, idle_timeout);
            if c.tx.is_closed() || idle {
                slot.compare_and_swap(&Some(c), None);
            }
        }
        let mut idle = stack.take_all();
        // Oldest first: pushed back in this order, the connection returned last is on top
        // again, even if another worker returned one while the stack was taken.
        idle.sort_by_key(|c| c.since);
        let mut closing = Vec::new();
        for mut c in idle {
            if idle_too_long(c.since, now, idle_timeout) || !c.link_alive() {
                closing.push(c);
            } else if let Err(c) = stack.push(c) {
                // Filled by other workers meanwhile: closed, as one returned to a full pool is.
                closing.push(c);
            }
        }
        // Closed once the live ones are back in the pool.
        drop(closing);
    }
}

fn idle_too_long(since: Nanos, now: Nanos, idle_timeout: std::time::Duration) -> bool {
    now.saturating_sub(since) >= u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX)
}

impl IdleH1 {
    fn link_alive(&mut self) -> bool {
        match &mut self.link {
            H1Link::Raw(c) => c.is_usable(),
            H1Link::Hyper { tx, .. } => !tx.is_closed(),
        }
    }
}

/// Held by a connection (its hyper task, or the lean client's [`RawConn`]): frees the
/// connection slot and wakes pending requests when the connection closes.
pub struct ConnGuard {
    state: Arc<ClusterState>,
    endpoint: Arc<Endpoint>,
    slot: Option<Permit>,
    /// The worker that opened the connection: its event loop watches the socket.
    home: usize,
}

impl ConnGuard {
    pub(crate) fn home(&self) -> usize {
        self.home
    }

    /// The connection's socket moved to this worker's event loop.
    pub(crate) fn set_home_here(&mut self) {
        self.home = crate::workers::current();
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.endpoint.pool.connections.fetch_sub(1, Ordering::Relaxed);
        // Free the slot before waking waiters, so the woken request can take it.
        drop(self.slot.take());
        self.state.notify_released();
    }
}

/// What checking a connection out needs of the endpoint's cluster: the limits its endpoints
/// share, its pool settings (this config's) and the protocol it speaks.
#[derive(Clone, Copy, Debug)]
pub struct PoolCx<'a> {
    pub state: &'a Arc<ClusterState>,
    pub limits: &'a PoolLimits,
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints, if the cluster has it.
    pub tls: Option<&'a crate::tls::client::UpstreamTls>,
}

/// Finds or opens a connection to `ep`, honouring the cluster's limits.
/// `now` is `resilience::now()` at the start of the attempt (for the idle timeout); `simple`
/// says the request can take the lean HTTP/1.1 client ([`h1::is_simple`]).
pub async fn checkout(cx: PoolCx<'_>, ep: &Arc<Endpoint>, now: Nanos, simple: bool) -> Result<Conn, Reason> {
    let state = cx.state;
    let limits = cx.limits;
    let mut pending: Option<Permit> = None;
    let mut deadline: Option<Instant> = None;
    let mut armed = false;
    loop {
        let notified = state.conn_released.notified();
        let mut notified = pin!(notified);
        if armed {
            // Register before re-checking so a release between the check and the wait is seen.
            notified.as_mut().enable();
        }
        if let Some(conn) = reuse(cx, ep, now, simple, Some(ep.pool.here())).await {
            return Ok(conn);
        }
        if let Some(slot) = state.connections.try_acquire() {
            drop(pending);
            // Boxed: connecting is the rare path, and its large future would otherwise be
            // part of every request's future (moved and zeroed on every request).
            return Box::pin(connect(cx, ep, slot, simple, now)).await;
        }
        if ep.pool.width > 1 {
            // At the limit: another worker's idle connection serves rather than none.
            if let Some(conn) = Box::pin(reuse(cx, ep, now, simple, None)).await {
                return Ok(conn);
            }
        }
        if pending.is_none() {
            pending = Some(state.pending.try_acquire().ok_or(Reason::OverflowPending)?);
            deadline = Some(Instant::now() + limits.connect_timeout);
        }
        if !armed {
            armed = true;
            continue;
        }
        let until = deadline.unwrap_or_else(Instant::now);
        if tokio::time::timeout_at(until, notified).await.is_err() {
            return Err(Reason::OverflowConnections);
        }
    }
}

/// An idle connection of worker `only`, or of any worker (`None`).
async fn reuse(cx: PoolCx<'_>, ep: &Endpoint, now: Nanos, simple: bool, only: Option<usize>) -> Option<Conn> {
    let limits = cx.limits;
    let pools = ep.pool.existing();
    let slots = match only {
        Some(i) => i..i + 1,
        None => 0..pools.len(),
    };
    let pools = pools.get(slots)?;
    match cx.protocol {
        UpstreamProtocol::Http2 => pools.iter().find_map(|w| {
            let slot = &w.h2;
            let c = slot.load_full()?;
            let uses = c.uses.fetch_add(1, Ordering::Relaxed) + 1;
            c.last_used.store(now, Ordering::Relaxed);
            let worn = limits.max_requests_per_connection.is_some_and(|m| uses > m);
            if c.tx.is_closed() || worn {
                slot.compare_and_swap(&Some(c), None);
                return None;
            }
            Some(Conn::H2(c.tx.clone(), H2Stream::new(c)))
        }),
        _ => {
            while let Some(idle) = pools.iter().find_map(|w| w.idle.pop()) {
                if idle_too_long(idle.since, now, limits.idle_timeout) {
                    continue;
                }
                match idle.link {
                    H1Link::Raw(mut c) => {
                        let here = crate::workers::current();
                        if c.home() == here {
                            if !c.is_usable() {
                                continue;
                            }
                        } else {
                            // Another worker's: checked and moved to this worker's event loop,
                            // so it comes back to this worker (connections follow the traffic).
                            let Some(moved) = (*c).rehome() else { continue };
                            c = moved;
                        }
                        if simple {
                            return Some(Conn::H1(H1Link::Raw(c)));
                        }
                        let (io, guard, uses) = (*c).into_parts();
                        let home = guard.home();
                        if let Ok(tx) = Box::pin(hyper_h1(io, guard)).await {
                            return Some(Conn::H1(H1Link::Hyper { tx, uses, home }));
                        }
                    }
                    H1Link::Hyper { mut tx, uses, home } => {
                        if tx.ready().await.is_ok() {
                            return Some(Conn::H1(H1Link::Hyper { tx, uses, home }));
                        }
                    }
                }
            }
            None
        }
    }
}

async fn connect(
    cx: PoolCx<'_>,
    ep: &Arc<Endpoint>,
    slot: Permit,
    simple: bool,
    now: Nanos,
) -> Result<Conn, Reason> {
    let state = cx.state;
    let failed = || {
        state.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        Reason::UpstreamConnectFailure
    };
    let stream = match tokio::time::timeout(cx.limits.connect_timeout, TcpStream::connect(ep.address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(cluster = %state.name, endpoint = %ep.address, error = %e, "upstream connect failed");
            return Err(failed());
        }
        Err(_) => {
            tracing::debug!(cluster = %state.name, endpoint = %ep.address, "upstream connect timed out");
            return Err(failed());
        }
    };
    let _ = stream.set_nodelay(true);
    let io = match cx.tls {
        None => UpstreamIo::tcp(stream),
        Some(tls) => {
            match tokio::time::timeout(cx.limits.connect_timeout, tls.connect(TcpIo::new(stream))).await {
                Ok(Ok(s)) => UpstreamIo::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    tracing::debug!(cluster = %state.name, endpoint = %ep.address, error = %e, "upstream TLS handshake failed");
                    state.stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(failed());
                }
                Err(_) => {
                    tracing::debug!(cluster = %state.name, endpoint = %ep.address, "upstream TLS handshake timed out");
                    state.stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(failed());
                }
            }
        }
    };
    ep.pool.connections.fetch_add(1, Ordering::Relaxed);
    if !state.connected.load(Ordering::Relaxed) {
        state.connected.store(true, Ordering::Relaxed);
    }
    let home = crate::workers::current();
    let guard = ConnGuard { state: state.clone(), endpoint: ep.clone(), slot: Some(slot), home };
    match cx.protocol {
        UpstreamProtocol::Http2 => {
            // The plaintext socket keeps its own type: no `match` per read or write for it.
            let tx = match io {
                UpstreamIo::Tcp(tcp) => h2_handshake(tcp, guard).await,
                other => h2_handshake(other, guard).await,
            }
            .map_err(|_| failed())?;
            let shared = Arc::new(H2Conn {
                tx: tx.clone(),
                uses: AtomicU32::new(1),
                last_used: AtomicU64::new(now),
                streams: AtomicU32::new(0),
            });
            ep.pool.workers()[ep.pool.here()].h2.store(Some(shared.clone()));
            // A request of another worker may wait for a connection at the limit: this one
            // can carry it.
            state.notify_released();
            Ok(Conn::H2(tx, H2Stream::new(shared)))
        }
        _ if simple => Ok(Conn::H1(H1Link::Raw(RawConn::new(io, guard)))),
        _ => {
            let tx = hyper_h1(io, guard).await.map_err(|_| failed())?;
            Ok(Conn::H1(H1Link::Hyper { tx, uses: 0, home }))
        }
    }
}

/// hyper's HTTP/2 client handshake on a connection; its task owns the connection (and its
/// guard) from now on.
async fn h2_handshake<I>(io: I, guard: ConnGuard) -> hyper::Result<http2::SendRequest<RequestBody>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
        drop(guard);
    });
    Ok(tx)
}

/// Hands a connection to hyper's HTTP/1.1 client, whose task owns it from now on. The task
/// runs on the connection's home worker, whose event loop watches the socket, even when
/// another worker borrowed the connection.
pub async fn hyper_h1(io: UpstreamIo, guard: ConnGuard) -> hyper::Result<http1::SendRequest<RequestBody>> {
    let io = TokioIo::new(io);
    let (tx, conn) = http1::Builder::new().handshake(io).await?;
    crate::workers::spawn_on(guard.home(), async move {
        let _ = conn.with_upgrades().await;
        drop(guard);
    });
    Ok(tx)
}

/// What went wrong sending a request on a connection.
#[derive(Debug)]
pub enum SendError {
    /// The connection was dead before the request went out: safe to try another connection.
    /// hyper hands the request back; the lean client only borrowed it (`None`).
    NotSent(Option<Box<Request<RequestBody>>>),
    /// The request (or part of it) was sent and then the connection failed.
    Reset(BoxError),
    /// An HTTP/2 upstream refused the stream (REFUSED_STREAM): it did not process the request.
    /// hyper consumed the request, so only a replay copy can go again.
    Refused(BoxError),
    /// The per-try timeout fired before the response head arrived.
    TimedOut,
}

impl Conn {
    /// Sends the request as attempt number `attempt` (`x-tripline-attempt`). On success returns
    /// the response and, for HTTP/1.1, the connection to give back once the response body has
    /// been read.
    pub async fn send(
        self,
        mut req: Request<RequestBody>,
        attempt: u32,
    ) -> Result<(Response<UpstreamBody>, Option<Reusable>), SendError> {
        let hyper_body = |resp: Response<Incoming>| resp.map(|b| UpstreamBody::Hyper(b, None));
        if !matches!(self, Conn::H1(H1Link::Raw(_))) {
            req.headers_mut().insert(super::X_TRIPLINE_ATTEMPT.clone(), super::attempt_value(attempt));
        }
        match self {
            // The lean client's connection travels in the response body and comes back
            // through it (`ResponseBody`), not here.
            Conn::H1(H1Link::Raw(c)) => h1::send(c, &req, attempt).await,
            Conn::H1(H1Link::Hyper { mut tx, uses, home }) => {
                match tx.try_send_request(chunked_if_unsized(req)).await {
                    Ok(mut resp) => {
                        super::content_length::settle_hyper(resp.headers_mut()).map_err(SendError::Reset)?;
                        let back = H1Link::Hyper { tx, uses: uses + 1, home };
                        Ok((hyper_body(resp), Some(Reusable(back))))
                    }
                    Err(e) => Err(unsent_or_reset(e)),
                }
            }
            Conn::H2(mut tx, hold) => {
                // The response body and a request body still uploading each hold the stream.
                let hold = Arc::new(hold);
                let req = if hyper::body::Body::is_end_stream(req.body()) {
                    req
                } else {
                    req.map(|b| RequestBody::Held(Box::new(b), hold.clone()))
                };
                match tx.try_send_request(req).await {
                    Ok(mut resp) => {
                        super::content_length::settle_hyper(resp.headers_mut()).map_err(SendError::Reset)?;
                        Ok((resp.map(|b| UpstreamBody::Hyper(b, Some(hold))), None))
                    }
                    Err(e) => Err(unsent_or_reset(e)),
                }
            }
        }
    }
}

/// A body of unknown length goes upstream chunked, whatever the method. hyper's client sends
/// such a body chunked unless the method is GET, HEAD or CONNECT, where it assumes there is
/// none and drops it; and the client's own `Transfer-Encoding` was removed as hop-by-hop. So a
/// GET with a chunked body lost its body (one with `Content-Length` went through).
fn chunked_if_unsized(mut req: Request<RequestBody>) -> Request<RequestBody> {
    let body = req.body();
    if !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !req.headers().contains_key(CONTENT_LENGTH)
    {
        req.headers_mut().insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    req
}

fn unsent_or_reset(mut e: hyper::client::conn::TrySendError<Request<RequestBody>>) -> SendError {
    match e.take_message() {
        Some(req) => SendError::NotSent(Some(Box::new(req.map(RequestBody::unheld)))),
        None if refused_stream(e.error()) => SendError::Refused(e.into_error().into()),
        None => SendError::Reset(e.into_error().into()),
    }
}

/// Whether an HTTP/2 upstream reset the stream with REFUSED_STREAM: by RFC 9113 §8.7 it did
/// no processing of the request, so the request may go again even if not idempotent.
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

impl ConnGuard {
    /// A guard for a connection outside any configured cluster: unit tests and the
    /// `upstream_h1` fuzz target, which drive the HTTP/1.1 clients over an in-memory pipe.
    pub fn detached() -> Self {
        let state = Arc::new(ClusterState::new("test", &tripline_config::plan::PoolLimits::default()));
        let endpoint = Endpoint::new(([127, 0, 0, 1], 1).into(), 1, Default::default());
        endpoint.pool.connections.fetch_add(1, Ordering::Relaxed);
        let slot = state.connections.try_acquire();
        ConnGuard { state, endpoint, slot, home: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const SECOND: Nanos = 1_000_000_000;

    /// Returns to `pool` a lean-client connection to `listener`, marked by its use count, as
    /// idle since `since`; the accepted server side is kept open in `servers`.
    async fn give_back_idle(
        pool: &ConnectionPool,
        listener: &TcpListener,
        mark: u32,
        since: Nanos,
        servers: &mut Vec<TcpStream>,
    ) {
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        servers.push(listener.accept().await.unwrap().0);
        let mut conn = RawConn::new(UpstreamIo::tcp(stream), ConnGuard::detached());
        conn.uses = mark;
        pool.give_back(Reusable(H1Link::Raw(conn)), None, since);
    }

    fn idle_marks(pool: &ConnectionPool) -> Vec<u32> {
        pool.existing()[0].idle.take_all().iter().map(|c| c.link.uses()).collect()
    }

    #[tokio::test]
    async fn a_pool_is_allocated_by_its_first_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut servers = Vec::new();
        let pool = ConnectionPool::new();
        // What the housekeeping and the admin API do to every endpoint leaves it unallocated.
        pool.evict_idle(0, Duration::from_secs(15), 30 * SECOND);
        assert_eq!((pool.idle_count(), pool.is_allocated()), (0, false));
        give_back_idle(&pool, &listener, 1, 0, &mut servers).await;
        assert_eq!((pool.idle_count(), pool.is_allocated()), (1, true));
        assert_eq!(pool.existing()[0].idle.allocated_slots(), 8, "one chunk for one connection");
        assert_eq!(idle_marks(&pool), vec![1]);
    }

    #[tokio::test]
    async fn the_sweep_closes_expired_connections_and_keeps_the_newest_on_top() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut servers = Vec::new();
        let pool = ConnectionPool::new();
        // Returned out of order (as when another worker gives one back during a sweep).
        for (mark, since) in [(1, 0), (3, 20 * SECOND), (2, 10 * SECOND), (4, 25 * SECOND)] {
            give_back_idle(&pool, &listener, mark, since, &mut servers).await;
        }
        // At 30 s with a 15 s idle timeout, the connections idle since 0 s and 10 s expire.
        pool.evict_idle(0, Duration::from_secs(15), 30 * SECOND);
        assert_eq!(pool.idle_count(), 2);
        // The upstream sees the expired ones (marks 1 and 2) closed, the others still open.
        for (server, closed) in servers.iter_mut().zip([true, false, true, false]) {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(200), server.read(&mut byte)).await;
            assert_eq!(matches!(read, Ok(Ok(0))), closed, "server side {read:?}");
        }
        assert_eq!(idle_marks(&pool), vec![4, 3], "the connection returned last must be on top");
    }
}
