//! Tripline's own HTTP/2 server connection (h2c, client side of the proxy).
//!
//! Why not hyper's: hyper's HTTP/2 server is built on the `h2` crate's general-purpose stream
//! machinery (every stream behind one `Mutex`, a slab store, priority queues, a task per stream
//! and a channel per response), which is where a proxied h2c request spent two thirds of its
//! user-space instructions (callgrind, docs/benchmarks.md). A proxy's server side needs much
//! less: here one task owns the connection and every stream's state outright, polls each
//! stream's request future and response body itself (a stream's waker queues just that stream,
//! see [`crate::h2_streams::StreamWaker`]), and writes frames straight into the codec.
//!
//! What is reused: `h2`'s codec (`h2::Codec`, behind its `unstable` feature, pinned to one
//! version): frame parsing and validation, HPACK and CONTINUATION assembly, the parts of
//! HTTP/2 that are easiest to get subtly wrong and where `h2` is well tested and fuzzed.
//!
//! What this module owns: streams (RFC 9113 §5.1), flow control both ways (§5.2, §6.9),
//! SETTINGS, PING, GOAWAY on drain, RST_STREAM, concurrency and header limits, and the
//! defences `h2` and Envoy have against abusive clients (rapid reset, frame floods).
//!
//! The connection answers its requests through a [`Handler`] (the proxy's request path,
//! `http_proxy::handle`, in production) and runs over any byte stream, so that the unit tests
//! (`tests`) and the fuzz target drive it frame by frame over an in-memory pipe.

mod closed;
mod date;
mod flood;
mod idle;
mod recv;
mod request;
mod respond;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream as _;
use h2::frame::{Frame, GoAway, Ping, Reason, Reset, Settings, StreamId, WindowUpdate};
use h2::Codec;
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

pub use crate::client_conns::StreamIdleConfig;
pub use crate::h2_streams::RecvBody;
use crate::h2_streams::{IdMap, Shared, StreamWaker, RECV_WINDOW};
use crate::header_limits::HeaderLimits;
use crate::stats::GlobalStats;
use crate::upload::ClientBody;
use closed::ClosedStreams;
use flood::Flood;
use idle::IdleCheck;
use respond::{advance, ready_ok, user_error, Outbound};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Control frames (acks, window updates, resets) waiting to be written before reading stops:
/// a client that floods PINGs or SETTINGS without reading the answers is not read either.
const MAX_CONTROL_QUEUE: usize = 1024;
/// Frames read in one poll before the task yields to the others on its worker.
const READS_PER_POLL: usize = 256;
/// DATA frames one stream writes before the other streams get a turn.
const FRAMES_PER_TURN: usize = 16;
/// Envoy's rule against "rapid reset" (CVE-2023-44487): once a connection has opened this many
/// streams, it is closed (GOAWAY ENHANCE_YOUR_CALM) when more than half of them were reset
/// before their response head was sent (by the client, or by Tripline for a malformed request).
const PREMATURE_RESET_MIN_STREAMS: u32 = 100;
/// Streams Tripline may reset for the client's errors over a connection's life before closing it
/// (`h2`'s limit, which hyper's server had): each costs an abandoned upstream request, and
/// each frame on a closed stream that is answered with RST_STREAM counts too.
const MAX_LOCAL_ERROR_RESETS: u32 = 1024;
/// How long a closed connection keeps reading what the client still sends, so that the kernel
/// does not answer it with a TCP reset that could destroy the last response unread.
const LINGER: Duration = Duration::from_secs(1);
/// How long the drain waits for the client to answer its PING before sending the final GOAWAY
/// anyway: far above any round trip, and well inside the default `--drain-timeout` (5 s), so
/// that the streams a silent client opens meanwhile still have time to finish.
const DRAIN_PING_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest flow-control window (RFC 9113 §6.9.1).
const MAX_WINDOW: i64 = (1 << 31) - 1;

/// A request being answered: the future the [`Handler`] returned for it.
pub type Handling<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

/// What answers a connection's requests: the proxy's request path (`http_proxy::handle`) in
/// production, canned responders in the unit tests and the fuzz target. Any
/// `FnMut(Request<ClientBody>) -> impl Future<Output = Result<Response<B>, Infallible>>` is one.
pub trait Handler {
    /// The response body; its error resets the stream with INTERNAL_ERROR.
    type Body: Body<Data = Bytes, Error: std::fmt::Display> + Unpin + Send + 'static;

    fn call(&mut self, request: Request<ClientBody>) -> Handling<Self::Body>;

    /// The stream idle timeout cut a response under way: its body, before it is dropped and
    /// the stream reset (CANCEL).
    fn idle_cut(&mut self, body: Self::Body) {
        drop(body);
    }
}

impl<F, Fut, B> Handler for F
where
    F: FnMut(Request<ClientBody>) -> Fut,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes, Error: std::fmt::Display> + Unpin + Send + 'static,
{
    type Body = B;

    #[inline]
    fn call(&mut self, request: Request<ClientBody>) -> Handling<B> {
        Box::pin(self(request))
    }
}

/// What a connection needs besides its byte stream and its handler.
#[derive(Clone)]
pub struct Config {
    /// The client, for the logs.
    pub peer: SocketAddr,
    /// Where `tripline_downstream_http2_*` are counted.
    pub stats: Arc<GlobalStats>,
    /// `--max-request-headers-kb` and `--max-request-headers`.
    pub limits: HeaderLimits,
    /// `--stream-idle-timeout` and the clock streams are stamped with; `None`: off.
    pub stream_idle: Option<StreamIdleConfig>,
}

/// Where a stream is in answering its request.
enum Task<B> {
    /// The request path is working on the response head.
    Handling(Handling<B>),
    /// The head is ready, waiting for room in the codec.
    Head(http::response::Parts, B),
    /// Sending the body; the chunk is what is left of the last one, waiting for window.
    Body(B, Option<Bytes>),
    Done,
}

struct Stream<B> {
    task: Task<B>,
    queued: Arc<StreamWaker>,
    waker: Waker,
    /// What the client lets Tripline send on this stream.
    send_window: i64,
    /// The client has not ended its request yet.
    recv_open: bool,
    /// The request's `content-length`, and the body bytes received so far.
    expected: Option<u64>,
    received: u64,
    head_request: bool,
    /// Waiting for the connection or stream send window to open.
    blocked_on_window: bool,
    /// In the connection's `window_blocked` list (once, however often it blocks).
    listed: bool,
    /// When a frame of the stream last came in or went out (the stream idle timeout's coarse
    /// clock), and whether the stream idle timeout fired while its request waits for its
    /// response head: the request path then answers it (`client_conns::StreamIdle`).
    progress: u64,
    idle_expired: bool,
}

/// How far the connection is in closing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Closing {
    Open,
    /// The drain's first step: GOAWAY with the largest stream id, and a PING. Streams the client
    /// opened before it saw the GOAWAY are still served.
    Draining,
    /// The PING came back: GOAWAY with the last stream accepted was sent, no new stream is
    /// served, and the connection closes when the last one ends.
    Drained,
    /// A connection error: GOAWAY with the reason sent, every stream cancelled.
    Failed,
}

/// What polling a stream came to.
enum Step {
    Waiting,
    BlockedOnWrite,
    BlockedOnWindow,
    /// Wrote its share of frames: polled again on the next turn.
    Yield,
    /// The response is sent, or the stream is to be reset with the reason.
    Finished(Option<Reason>),
}

/// One client connection speaking HTTP/2 over `T`, its requests answered by `H`: a future that
/// runs until the connection closes.
pub struct Connection<T, H: Handler> {
    codec: Codec<T, Bytes>,
    handler: H,
    config: Config,
    shared: Arc<Shared>,
    streams: IdMap<Stream<H::Body>>,
    /// Streams that are no longer open, as far as frames arriving on them need to know.
    closed: ClosedStreams,
    /// The frame counts Envoy's flood limits are checked on.
    flood: Flood,
    /// Frames that are not stream output: acks, window updates, resets, GOAWAY.
    control: VecDeque<Frame<Bytes>>,
    /// Streams to poll on this turn besides those their wakers queued.
    ready: Vec<u32>,
    write_blocked: Vec<u32>,
    window_blocked: Vec<u32>,
    scratch: Vec<u32>,
    updates: Vec<(u32, u32)>,
    /// What the client lets Tripline send on the connection as a whole, and the DATA frames
    /// sent so far.
    out: Outbound,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    init_send_window: i64,
    /// The highest stream id the client has opened, and the highest Tripline has taken up
    /// (what a GOAWAY names).
    last_id: u32,
    last_accepted: u32,
    opened: u32,
    premature_resets: u32,
    local_error_resets: u32,
    closing: Closing,
    /// The client sent GOAWAY: it opens no more streams.
    peer_going_away: bool,
    read_closed: bool,
    /// Running while the drain waits for its PING to come back (see `graceful_shutdown`), then
    /// once the connection is shut down for writing, while it reads on until the client closes.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    lingering: bool,
    /// The stream idle timeout, if on.
    idle: Option<IdleCheck>,
}

impl<T, H> Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    /// Serves a client whose connection preface has been read from `io`.
    pub fn new(io: T, handler: H, config: Config) -> Self {
        let mut codec = Codec::new(io);
        let max_header_list = config.limits.max_bytes();
        codec.set_max_recv_header_list_size(max_header_list as usize);
        let mut settings = Settings::default();
        settings.set_max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS));
        settings.set_initial_window_size(Some(RECV_WINDOW));
        settings.set_max_header_list_size(Some(max_header_list));
        let mut control = VecDeque::with_capacity(8);
        control.push_back(settings.into());
        // The connection window starts at 65,535 whatever SETTINGS say (RFC 9113 §6.9.2).
        control.push_back(WindowUpdate::new(StreamId::zero(), RECV_WINDOW - 65_535).into());
        Connection {
            idle: config.stream_idle.as_ref().and_then(IdleCheck::new),
            codec,
            handler,
            config,
            shared: Shared::new(),
            streams: IdMap::default(),
            closed: ClosedStreams::default(),
            flood: Flood::default(),
            control,
            ready: Vec::new(),
            write_blocked: Vec::new(),
            window_blocked: Vec::new(),
            scratch: Vec::new(),
            updates: Vec::new(),
            out: Outbound { conn_window: 65_535, data_frames: 0 },
            init_send_window: 65_535,
            last_id: 0,
            last_accepted: 0,
            opened: 0,
            premature_resets: 0,
            local_error_resets: 0,
            closing: Closing::Open,
            peer_going_away: false,
            read_closed: false,
            timer: None,
            lingering: false,
        }
    }

    /// Starts a graceful close (the drain, the idle timeout) in two steps, as `h2` does: GOAWAY
    /// with the largest stream id and a PING; when the PING comes back, every stream the client
    /// opened before it saw the GOAWAY has arrived, and a second GOAWAY names the last one. The
    /// streams in flight finish, then the connection closes.
    pub fn graceful_shutdown(&mut self) {
        if self.closing == Closing::Open {
            self.closing = Closing::Draining;
            self.control.push_back(GoAway::new(StreamId::MAX, Reason::NO_ERROR).into());
            self.control.push_back(Ping::new(Ping::SHUTDOWN).into());
            self.timer = Some(Box::pin(tokio::time::sleep(DRAIN_PING_TIMEOUT)));
        }
    }

    /// The drain's second step: the client has seen the first GOAWAY (its PING came back, or
    /// it had `DRAIN_PING_TIMEOUT` to), so the last stream taken up is final.
    pub(super) fn drained(&mut self) {
        if self.closing == Closing::Draining {
            self.closing = Closing::Drained;
            self.timer = None;
            let last = StreamId::from(self.last_accepted);
            self.control.push_back(GoAway::new(last, Reason::NO_ERROR).into());
        }
    }

    fn drive(&mut self, cx: &mut Context<'_>) -> io::Result<Poll<()>> {
        if self.lingering {
            return Ok(self.poll_linger(cx));
        }
        if self.closing == Closing::Draining
            && self.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready())
        {
            self.drained();
        }
        self.read(cx)?;
        let busy = !self.streams.is_empty();
        if self.idle.as_mut().is_some_and(|i| i.due(busy, cx)) {
            self.expire_idle_streams();
        }
        self.queue_window_updates();
        self.write_control(cx)?;
        if self.closing != Closing::Failed {
            self.run_streams(cx)?;
            self.write_control(cx)?;
        }
        let flushed = ready_ok(self.codec.flush(cx))?;
        let done = self.closing == Closing::Failed
            || ((self.closing == Closing::Drained || self.peer_going_away || self.read_closed)
                && self.streams.is_empty());
        if done && flushed && self.control.is_empty() {
            // Best effort: the client may already be gone.
            if self.codec.shutdown(cx).is_pending() {
                return Ok(Poll::Pending);
            }
            if self.read_closed {
                return Ok(Poll::Ready(()));
            }
            self.lingering = true;
            self.timer = Some(Box::pin(tokio::time::sleep(LINGER)));
            return Ok(self.poll_linger(cx));
        }
        Ok(Poll::Pending)
    }

    /// Reads and throws away what the client still sends after the connection was shut down for
    /// writing, until it closes its side or `LINGER` passes.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut budget = READS_PER_POLL;
        loop {
            match Pin::new(&mut self.codec).poll_next(cx) {
                // A stream-level error is just another frame to throw away.
                Poll::Ready(Some(Ok(_) | Err(h2::proto::Error::Reset(..)))) => {}
                Poll::Ready(None | Some(Err(_))) => return Poll::Ready(()),
                Poll::Pending => break,
            }
            budget -= 1;
            if budget == 0 {
                cx.waker().wake_by_ref();
                break;
            }
        }
        self.timer.as_mut().map_or(Poll::Ready(()), |t| t.as_mut().poll(cx))
    }

    /// Reads and handles the frames that have arrived.
    fn read(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        for _ in 0..READS_PER_POLL {
            if self.read_closed || self.closing == Closing::Failed {
                return Ok(());
            }
            if self.control.len() >= MAX_CONTROL_QUEUE {
                // Resumed by `write_control` once the client reads what it is sent.
                return Ok(());
            }
            match Pin::new(&mut self.codec).poll_next(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(None) => {
                    // The client closed its side: nobody is left to answer.
                    self.read_closed = true;
                    self.drop_all_streams();
                }
                Poll::Ready(Some(Ok(frame))) => self.recv_frame(frame),
                Poll::Ready(Some(Err(e))) => self.recv_error(e)?,
            }
        }
        cx.waker().wake_by_ref();
        Ok(())
    }

    fn write_control(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let was_full = self.control.len() >= MAX_CONTROL_QUEUE;
        while !self.control.is_empty() {
            if !ready_ok(self.codec.poll_ready(cx))? {
                return Ok(());
            }
            let frame = self.control.pop_front().expect("not empty");
            self.codec.buffer(frame).map_err(user_error)?;
        }
        if was_full {
            // Reading stopped for the queue: resume it.
            cx.waker().wake_by_ref();
        }
        Ok(())
    }

    /// Polls the streams that were woken or are waiting for room to write.
    fn run_streams(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut ready = std::mem::take(&mut self.scratch);
        ready.append(&mut self.ready);
        ready.append(&mut self.shared.lock().ready);
        if !self.write_blocked.is_empty() && ready_ok(self.codec.poll_ready(cx))? {
            ready.append(&mut self.write_blocked);
        }
        for &id in &ready {
            self.poll_stream(id, cx)?;
        }
        ready.clear();
        self.scratch = ready;
        Ok(())
    }

    /// Ends every stream that has been idle for the stream idle timeout: one still waiting for
    /// its response head is polled once more, told so (its request path answers
    /// `408 stream-idle-timeout`, or a gRPC status, and logs it), one whose response is under
    /// way is reset (CANCEL), as Envoy does.
    fn expire_idle_streams(&mut self) {
        let Some(idle) = &self.idle else { return };
        let expired: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.idle_expired && idle.expired(s.progress))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let Some(s) = self.streams.get_mut(&id) else { continue };
            tracing::debug!(peer = %self.config.peer, stream = id, "stream idle timeout");
            if matches!(s.task, Task::Handling(_)) {
                s.idle_expired = true;
                self.ready.push(id);
                continue;
            }
            match std::mem::replace(&mut s.task, Task::Done) {
                Task::Head(_, body) | Task::Body(body, _) => self.handler.idle_cut(body),
                _ => {}
            }
            self.reset(id, Reason::CANCEL, false);
        }
    }

    fn poll_stream(&mut self, id: u32, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(s) = self.streams.get_mut(&id) else { return Ok(()) };
        s.queued.clear();
        let now = self.idle.as_ref().map_or(0, IdleCheck::now);
        match advance(id, s, &mut self.codec, &mut self.out, now, cx)? {
            Step::Waiting => {}
            Step::BlockedOnWrite => self.write_blocked.push(id),
            Step::BlockedOnWindow => {
                s.blocked_on_window = true;
                if !s.listed {
                    s.listed = true;
                    self.window_blocked.push(id);
                    // Streams that ended while listed leave their ids behind until the next
                    // connection-level update: pruned, so the list stays near the streams' count.
                    if self.window_blocked.len() > 2 * self.streams.len() + 16 {
                        let streams = &self.streams;
                        self.window_blocked.retain(|id| streams.get(id).is_some_and(|s| s.listed));
                    }
                }
            }
            Step::Yield => {
                self.ready.push(id);
                cx.waker().wake_by_ref();
            }
            Step::Finished(Some(reason)) => self.reset(id, reason, false),
            Step::Finished(None) => {
                let s = self.streams.remove(&id);
                if s.as_ref().is_some_and(|s| s.recv_open) {
                    // The response is complete before the request: the client may stop
                    // sending (RFC 9113 §8.1).
                    self.end_inbound(id);
                    self.closed.reset_by_us(id, false);
                    self.control.push_back(Reset::new(StreamId::from(id), Reason::NO_ERROR).into());
                }
                drop(s);
            }
        }
        Ok(())
    }
}

impl<T, H> Future for Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.shared.lock().register(cx.waker());
        match this.drive(cx) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(peer = %this.config.peer, error = %e, "HTTP/2 connection lost");
                this.drop_all_streams();
                Poll::Ready(())
            }
        }
    }
}

impl<T, H: Handler> Drop for Connection<T, H> {
    fn drop(&mut self) {
        self.drop_all_streams();
    }
}
