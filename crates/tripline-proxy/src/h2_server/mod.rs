//! Tripline's own HTTP/2 server connection (h2c, client side of the proxy).
//!
//! Why not hyper's: hyper's HTTP/2 server is built on the `h2` crate's general-purpose stream
//! machinery (every stream behind one `Mutex`, a slab store, priority queues, a task per stream
//! and a channel per response), which is where a proxied h2c request spent two thirds of its
//! user-space instructions (callgrind, docs/benchmarks.md). A proxy's server side needs much
//! less: here one task owns the connection and every stream's state outright, polls each
//! stream's request future and response body itself (a stream's waker queues just that stream,
//! see [`shared::StreamWaker`]), and writes frames straight into the codec.
//!
//! What is reused: `h2`'s codec (`h2::Codec`, behind its `unstable` feature, pinned to one
//! version): frame parsing and validation, HPACK and CONTINUATION assembly, the parts of
//! HTTP/2 that are easiest to get subtly wrong and where `h2` is well tested and fuzzed.
//!
//! What this module owns: streams (RFC 9113 §5.1), flow control both ways (§5.2, §6.9),
//! SETTINGS, PING, GOAWAY on drain, RST_STREAM, concurrency and header-size limits, and the
//! defences Envoy has against a client that opens and resets streams in a loop.

mod date;
mod request;
mod shared;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream as _;
use h2::frame::{
    Data, Frame, GoAway, Headers, Ping, Pseudo, Reason, Reset, Settings, StreamId, WindowUpdate,
};
use h2::Codec;
use http::header::{CONTENT_LENGTH, DATE};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::Body;

use crate::body::{ClientBody, ResponseBody};
use crate::http_proxy::{self, ConnContext};
use crate::net_io::TcpIo;
pub use shared::RecvBody;
use shared::{IdMap, Inbound, Shared, StreamWaker, RECV_WINDOW};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// The largest request header block accepted (hyper's default); a larger one gets a 431.
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
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
/// (`h2`'s limit, which hyper's server had): each costs an abandoned upstream request.
const MAX_LOCAL_ERROR_RESETS: u32 = 1024;
/// How long a closed connection keeps reading what the client still sends, so that the kernel
/// does not answer it with a TCP reset that could destroy the last response unread.
const LINGER: Duration = Duration::from_secs(1);
/// The largest flow-control window (RFC 9113 §6.9.1).
const MAX_WINDOW: i64 = (1 << 31) - 1;

type Handling = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

/// Where a stream is in answering its request.
enum Task {
    /// The request path is working on the response head.
    Handling(Handling),
    /// The head is ready, waiting for room in the codec.
    Head(http::response::Parts, ResponseBody),
    /// Sending the body; the chunk is what is left of the last one, waiting for window.
    Body(ResponseBody, Option<Bytes>),
    Done,
}

struct Stream {
    task: Task,
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

/// One client connection speaking HTTP/2: a future that runs until the connection closes.
pub struct Connection {
    codec: Codec<TcpIo, Bytes>,
    ctx: Arc<ConnContext>,
    shared: Arc<Shared>,
    streams: IdMap<Stream>,
    /// Frames that are not stream output: acks, window updates, resets, GOAWAY.
    control: VecDeque<Frame<Bytes>>,
    /// Streams to poll on this turn besides those their wakers queued.
    ready: Vec<u32>,
    write_blocked: Vec<u32>,
    window_blocked: Vec<u32>,
    scratch: Vec<u32>,
    updates: Vec<(u32, u32)>,
    /// What the client lets Tripline send on the connection as a whole.
    conn_send_window: i64,
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
    /// Set once the connection is shut down for writing: reading on until the client closes.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connection {
    /// Serves a client whose connection preface has been read from `io`.
    pub fn new(io: TcpIo, ctx: Arc<ConnContext>) -> Self {
        let mut codec = Codec::new(io);
        codec.set_max_recv_header_list_size(MAX_HEADER_LIST_SIZE as usize);
        let mut settings = Settings::default();
        settings.set_max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS));
        settings.set_initial_window_size(Some(RECV_WINDOW));
        settings.set_max_header_list_size(Some(MAX_HEADER_LIST_SIZE));
        let mut control = VecDeque::with_capacity(8);
        control.push_back(settings.into());
        // The connection window starts at 65,535 whatever SETTINGS say (RFC 9113 §6.9.2).
        control.push_back(WindowUpdate::new(StreamId::zero(), RECV_WINDOW - 65_535).into());
        Connection {
            codec,
            ctx,
            shared: Shared::new(),
            streams: IdMap::default(),
            control,
            ready: Vec::new(),
            write_blocked: Vec::new(),
            window_blocked: Vec::new(),
            scratch: Vec::new(),
            updates: Vec::new(),
            conn_send_window: 65_535,
            init_send_window: 65_535,
            last_id: 0,
            last_accepted: 0,
            opened: 0,
            premature_resets: 0,
            local_error_resets: 0,
            closing: Closing::Open,
            peer_going_away: false,
            read_closed: false,
            linger: None,
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
        }
    }

    fn drive(&mut self, cx: &mut Context<'_>) -> io::Result<Poll<()>> {
        if self.linger.is_some() {
            return Ok(self.poll_linger(cx));
        }
        self.read(cx)?;
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
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
            return Ok(self.poll_linger(cx));
        }
        Ok(Poll::Pending)
    }

    /// Reads and throws away what the client still sends after the connection was shut down for
    /// writing, until it closes its side or `LINGER` passes.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..READS_PER_POLL {
            match Pin::new(&mut self.codec).poll_next(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(None | Some(Err(_))) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        self.linger.as_mut().map_or(Poll::Ready(()), |t| t.as_mut().poll(cx))
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

    fn recv_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Headers(h) => self.recv_headers(h),
            Frame::Data(d) => self.recv_data(d),
            Frame::Reset(r) => self.recv_reset(u32::from(r.stream_id())),
            Frame::WindowUpdate(w) => self.recv_window_update(u32::from(w.stream_id()), w.size_increment()),
            Frame::Settings(s) => self.recv_settings(&s),
            Frame::Ping(p) => {
                if !p.is_ack() {
                    self.control.push_back(Ping::pong(p.into_payload()).into());
                } else if *p.payload() == Ping::SHUTDOWN && self.closing == Closing::Draining {
                    self.closing = Closing::Drained;
                    let last = StreamId::from(self.last_accepted);
                    self.control.push_back(GoAway::new(last, Reason::NO_ERROR).into());
                }
            }
            Frame::GoAway(_) => self.peer_going_away = true,
            Frame::Priority(_) => {}
            // Only a server pushes.
            Frame::PushPromise(_) => self.fail(Reason::PROTOCOL_ERROR),
        }
    }

    /// The codec found an error: in one stream (a malformed header block) or in the connection.
    fn recv_error(&mut self, e: h2::proto::Error) -> io::Result<()> {
        match e {
            h2::proto::Error::Reset(id, reason, _) => {
                let id = u32::from(id);
                if id > self.last_id {
                    // A malformed request still opens its stream, and counts as one.
                    self.last_id = id;
                    self.last_accepted = id;
                    self.opened += 1;
                    self.premature_reset();
                }
                self.reset(id, reason, true);
            }
            h2::proto::Error::GoAway(_, reason, _) => self.fail(reason),
            h2::proto::Error::Io(kind, msg) => {
                return Err(io::Error::new(kind, msg.unwrap_or_else(|| "connection error".into())));
            }
        }
        Ok(())
    }

    fn recv_headers(&mut self, h: Headers) {
        let id = u32::from(h.stream_id());
        if !h.stream_id().is_client_initiated() {
            return self.fail(Reason::PROTOCOL_ERROR);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            // Trailers: they must end the request (RFC 9113 §8.1), within the size limit and
            // without pseudo-header fields.
            if !s.recv_open || !h.is_end_stream() || h.is_over_size() {
                return self.reset(id, Reason::PROTOCOL_ERROR, true);
            }
            s.recv_open = false;
            let length_ok = s.expected.is_none_or(|n| n == s.received);
            let (p, fields) = h.into_parts();
            let pseudo = p.method.is_some()
                || p.scheme.is_some()
                || p.authority.is_some()
                || p.path.is_some()
                || p.protocol.is_some()
                || p.status.is_some();
            if !length_ok || pseudo {
                return self.reset(id, Reason::PROTOCOL_ERROR, true);
            }
            let waker = self.shared.lock().bodies.get_mut(&id).and_then(|inb| {
                inb.trailers = Some(fields);
                inb.end = true;
                inb.take_waker()
            });
            wake(waker);
            return;
        }
        if id <= self.last_id {
            // A stream that already ended. Trailers the client sent before it learnt that are
            // ignored; anything else is a new request on a used id (RFC 9113 §5.1.1).
            if !h.is_end_stream() {
                self.fail(Reason::STREAM_CLOSED);
            }
            return;
        }
        self.last_id = id;
        if matches!(self.closing, Closing::Drained | Closing::Failed) {
            // Above the id the GOAWAY named: not processed, the client may retry it elsewhere.
            return;
        }
        if self.streams.len() >= MAX_CONCURRENT_STREAMS as usize {
            self.control.push_back(Reset::new(h.stream_id(), Reason::REFUSED_STREAM).into());
            return;
        }
        self.opened += 1;
        self.last_accepted = id;
        let end = h.is_end_stream();
        if h.is_over_size() {
            let mut reply = Headers::new(
                h.stream_id(),
                Pseudo::response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                HeaderMap::new(),
            );
            reply.set_end_stream();
            self.control.push_back(reply.into());
            if !end {
                self.control.push_back(Reset::new(h.stream_id(), Reason::NO_ERROR).into());
            }
            return;
        }
        let (pseudo, fields) = h.into_parts();
        let head = match request::head(pseudo, fields) {
            Ok(head) if !(end && head.content_length.is_some_and(|n| n > 0)) => head,
            Ok(_) => return self.malformed(id, "content-length on a request without a body"),
            Err(why) => return self.malformed(id, why),
        };
        let body = if end {
            RecvBody::empty()
        } else {
            self.shared.lock().bodies.insert(id, Inbound::new());
            RecvBody::new(self.shared.clone(), id, head.content_length)
        };
        let head_request = head.request.method() == Method::HEAD;
        let req = head.request.map(|()| ClientBody::H2(body));
        let queued = StreamWaker::new(id, self.shared.clone());
        let stream = Stream {
            task: Task::Handling(Box::pin(http_proxy::handle(self.ctx.clone(), req))),
            waker: Waker::from(queued.clone()),
            queued,
            send_window: self.init_send_window,
            recv_open: !end,
            expected: head.content_length,
            received: 0,
            head_request,
            blocked_on_window: false,
            listed: false,
        };
        self.streams.insert(id, stream);
        self.ready.push(id);
    }

    fn malformed(&mut self, id: u32, why: &str) {
        tracing::debug!(stream = id, why, "malformed HTTP/2 request");
        self.premature_reset();
        self.reset(id, Reason::PROTOCOL_ERROR, true);
    }

    fn recv_data(&mut self, d: Data) {
        let id = u32::from(d.stream_id());
        let len = flow_controlled_len(&d);
        let end = d.is_end_stream();
        {
            let mut st = self.shared.lock();
            st.conn_window -= i64::from(len);
            if st.conn_window < 0 {
                drop(st);
                return self.fail(Reason::FLOW_CONTROL_ERROR);
            }
        }
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.last_id {
                // DATA on a stream never opened (RFC 9113 §6.1).
                return self.fail(Reason::PROTOCOL_ERROR);
            }
            // A stream that already ended: thrown away, and given back to the connection.
            self.shared.lock().release_conn(len);
            return;
        };
        if !s.recv_open {
            self.shared.lock().release_conn(len);
            return self.reset(id, Reason::STREAM_CLOSED, true);
        }
        let payload = d.into_payload();
        let n = payload.len() as u64;
        s.received += n;
        if end {
            s.recv_open = false;
        }
        let bad_length = s.expected.is_some_and(|e| s.received > e || (end && s.received != e));
        let mut error = bad_length.then_some(Reason::PROTOCOL_ERROR);
        let waker = {
            let mut st = self.shared.lock();
            let st = &mut *st;
            match st.bodies.get_mut(&id) {
                // The request no longer reads its body: thrown away, the windows given back.
                None => {
                    st.release_discarded(id, len, !end);
                    None
                }
                Some(inb) => {
                    inb.window -= i64::from(len);
                    if inb.window < 0 {
                        error = Some(Reason::FLOW_CONTROL_ERROR);
                    }
                    if !payload.is_empty() {
                        inb.chunks.push_back(payload);
                    }
                    inb.end |= end;
                    let waker = inb.take_waker();
                    // Padding is flow-controlled but never read: given back now.
                    let padding = len - n as u32;
                    if padding > 0 {
                        st.release_stream(id, padding);
                    }
                    waker
                }
            }
        };
        wake(waker);
        if let Some(reason) = error {
            self.reset(id, reason, true);
        }
    }

    fn recv_reset(&mut self, id: u32) {
        if id == 0 || id > self.last_id {
            // RST_STREAM on the connection or on a stream never opened (RFC 9113 §6.4).
            return self.fail(Reason::PROTOCOL_ERROR);
        }
        let Some(s) = self.streams.remove(&id) else { return };
        if matches!(s.task, Task::Handling(_) | Task::Head(..)) {
            self.premature_reset();
        }
        self.end_inbound(id);
        // Dropping the stream cancels its request: the upstream request is abandoned.
        drop(s);
    }

    fn recv_window_update(&mut self, id: u32, inc: u32) {
        if id == 0 {
            self.conn_send_window += i64::from(inc);
            if self.conn_send_window > MAX_WINDOW {
                return self.fail(Reason::FLOW_CONTROL_ERROR);
            }
            self.unblock_all();
            return;
        }
        if id > self.last_id {
            // WINDOW_UPDATE on a stream never opened (RFC 9113 §5.1).
            return self.fail(Reason::PROTOCOL_ERROR);
        }
        let Some(s) = self.streams.get_mut(&id) else { return };
        s.send_window += i64::from(inc);
        if s.send_window > MAX_WINDOW {
            return self.reset(id, Reason::FLOW_CONTROL_ERROR, true);
        }
        // Polled again only if the connection has room too; otherwise it stays listed for the
        // connection's own update (a client sending stream updates alone gets nothing polled).
        if s.blocked_on_window && self.conn_send_window > 0 {
            s.blocked_on_window = false;
            self.ready.push(id);
        }
    }

    fn recv_settings(&mut self, s: &Settings) {
        if s.is_ack() {
            return;
        }
        if let Some(size) = s.initial_window_size() {
            let delta = i64::from(size) - self.init_send_window;
            self.init_send_window = i64::from(size);
            let mut overflow = false;
            for s in self.streams.values_mut() {
                s.send_window += delta;
                overflow |= s.send_window > MAX_WINDOW;
            }
            if overflow {
                // RFC 9113 §6.9.2.
                return self.fail(Reason::FLOW_CONTROL_ERROR);
            }
            if delta > 0 {
                self.unblock_all();
            }
        }
        if let Some(size) = s.max_frame_size() {
            self.codec.set_max_send_frame_size(size as usize);
        }
        if let Some(size) = s.header_table_size() {
            self.codec.set_send_header_table_size(size as usize);
        }
        self.control.push_back(Settings::ack().into());
    }

    fn unblock_all(&mut self) {
        for id in self.window_blocked.drain(..) {
            if let Some(s) = self.streams.get_mut(&id) {
                s.listed = false;
                if s.blocked_on_window {
                    s.blocked_on_window = false;
                    self.ready.push(id);
                }
            }
        }
    }

    /// A stream reset before its response head: counted toward Envoy's premature-reset rule.
    fn premature_reset(&mut self) {
        self.premature_resets += 1;
        if self.opened >= PREMATURE_RESET_MIN_STREAMS && self.premature_resets * 2 > self.opened {
            tracing::warn!(peer = %self.ctx.peer, opened = self.opened, reset = self.premature_resets,
                "closing an HTTP/2 connection that resets most of its streams");
            self.fail(Reason::ENHANCE_YOUR_CALM);
        }
    }

    /// Resets a stream (a stream error): its request is cancelled. `client_error`: the client
    /// caused it, so it counts toward the premature-reset rule (when the response head had not
    /// gone out) and toward `MAX_LOCAL_ERROR_RESETS`. Otherwise it is an upstream failure after
    /// the response head.
    fn reset(&mut self, id: u32, reason: Reason, client_error: bool) {
        self.end_inbound(id);
        let s = self.streams.remove(&id);
        self.control.push_back(Reset::new(StreamId::from(id), reason).into());
        if client_error {
            // Made to reset its own streams, a client could otherwise keep any number of
            // abandoned requests going upstream ("MadeYouReset", CVE-2025-8671).
            if s.as_ref().is_some_and(|s| matches!(s.task, Task::Handling(_) | Task::Head(..))) {
                self.premature_reset();
            }
            self.local_error_resets += 1;
            if self.local_error_resets > MAX_LOCAL_ERROR_RESETS {
                self.fail(Reason::ENHANCE_YOUR_CALM);
            }
        }
        drop(s);
    }

    /// Tells a request still reading its body that the stream is gone.
    fn end_inbound(&mut self, id: u32) {
        let waker = self.shared.lock().bodies.get_mut(&id).and_then(|inb| {
            inb.reset = true;
            inb.take_waker()
        });
        wake(waker);
    }

    /// A connection error: GOAWAY with the reason, every stream cancelled, then close.
    fn fail(&mut self, reason: Reason) {
        if self.closing == Closing::Failed {
            return;
        }
        tracing::debug!(peer = %self.ctx.peer, ?reason, "HTTP/2 connection error");
        self.closing = Closing::Failed;
        self.control.push_back(GoAway::new(StreamId::from(self.last_accepted), reason).into());
        self.drop_all_streams();
    }

    fn drop_all_streams(&mut self) {
        let wakers: Vec<Waker> = {
            let mut st = self.shared.lock();
            st.bodies
                .values_mut()
                .filter_map(|inb| {
                    inb.reset = true;
                    inb.take_waker()
                })
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
        // Dropped outside the lock: a request's body takes it when dropped.
        let streams = std::mem::take(&mut self.streams);
        drop(streams);
    }

    /// Turns the window the requests gave back into WINDOW_UPDATE frames.
    fn queue_window_updates(&mut self) {
        {
            let mut st = self.shared.lock();
            if st.updates.is_empty() {
                return;
            }
            std::mem::swap(&mut st.updates, &mut self.updates);
        }
        for (id, inc) in self.updates.drain(..) {
            if id == 0 || self.streams.get(&id).is_some_and(|s| s.recv_open) {
                self.control.push_back(WindowUpdate::new(StreamId::from(id), inc).into());
            }
        }
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

    fn poll_stream(&mut self, id: u32, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(s) = self.streams.get_mut(&id) else { return Ok(()) };
        s.queued.clear();
        match advance(id, s, &mut self.codec, &mut self.conn_send_window, cx)? {
            Step::Waiting => {}
            Step::BlockedOnWrite => self.write_blocked.push(id),
            Step::BlockedOnWindow => {
                s.blocked_on_window = true;
                if !s.listed {
                    s.listed = true;
                    self.window_blocked.push(id);
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
                    self.control.push_back(Reset::new(StreamId::from(id), Reason::NO_ERROR).into());
                }
                drop(s);
            }
        }
        Ok(())
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.shared.lock().register(cx.waker());
        match this.drive(cx) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(peer = %this.ctx.peer, error = %e, "HTTP/2 connection lost");
                this.drop_all_streams();
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.drop_all_streams();
    }
}

/// Moves a stream's response along as far as it can go now.
fn advance(
    id: u32,
    s: &mut Stream,
    codec: &mut Codec<TcpIo, Bytes>,
    conn_window: &mut i64,
    cx: &mut Context<'_>,
) -> io::Result<Step> {
    let sid = StreamId::from(id);
    let mut scx = Context::from_waker(&s.waker);
    let mut frames = 0;
    loop {
        match &mut s.task {
            Task::Handling(f) => match f.as_mut().poll(&mut scx) {
                Poll::Pending => return Ok(Step::Waiting),
                Poll::Ready(Ok(resp)) => {
                    let (parts, body) = resp.into_parts();
                    s.task = Task::Head(parts, body);
                }
            },
            Task::Head(..) => {
                if !ready_ok(codec.poll_ready(cx))? {
                    return Ok(Step::BlockedOnWrite);
                }
                let Task::Head(mut parts, body) = std::mem::replace(&mut s.task, Task::Done) else {
                    unreachable!("matched above")
                };
                let bodiless =
                    s.head_request || matches!(parts.status.as_u16(), 204 | 304) || body.is_end_stream();
                // As hyper's server did: a body length known in advance is declared, and a
                // response without a date (Tripline's own replies) gets one.
                if !bodiless && !parts.headers.contains_key(CONTENT_LENGTH) {
                    if let Some(n) = body.size_hint().exact() {
                        parts.headers.insert(CONTENT_LENGTH, n.into());
                    }
                }
                if !parts.headers.contains_key(DATE) {
                    parts.headers.insert(DATE, date::now());
                }
                let mut frame = Headers::new(sid, Pseudo::response(parts.status), parts.headers);
                if bodiless {
                    frame.set_end_stream();
                }
                codec.buffer(frame.into()).map_err(user_error)?;
                if bodiless {
                    return Ok(Step::Finished(None));
                }
                s.task = Task::Body(body, None);
            }
            Task::Body(body, chunk) => {
                if chunk.is_none() {
                    if !ready_ok(codec.poll_ready(cx))? {
                        return Ok(Step::BlockedOnWrite);
                    }
                    match Pin::new(&mut *body).poll_frame(&mut scx) {
                        Poll::Pending => return Ok(Step::Waiting),
                        Poll::Ready(None) => {
                            let mut d = Data::new(sid, Bytes::new());
                            d.set_end_stream(true);
                            codec.buffer(d.into()).map_err(user_error)?;
                            return Ok(Step::Finished(None));
                        }
                        Poll::Ready(Some(Err(e))) => {
                            tracing::debug!(stream = id, error = %e, "response body failed: stream reset");
                            return Ok(Step::Finished(Some(Reason::INTERNAL_ERROR)));
                        }
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) if !data.is_empty() => *chunk = Some(data),
                            Ok(_) => continue,
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
                                    let mut h = Headers::trailers(sid, trailers);
                                    h.set_end_stream();
                                    codec.buffer(h.into()).map_err(user_error)?;
                                    return Ok(Step::Finished(None));
                                }
                                continue;
                            }
                        },
                    }
                }
                let room = s.send_window.min(*conn_window).min(codec.max_send_frame_size() as i64);
                if room <= 0 {
                    return Ok(Step::BlockedOnWindow);
                }
                if !ready_ok(codec.poll_ready(cx))? {
                    return Ok(Step::BlockedOnWrite);
                }
                let c = chunk.as_mut().expect("a chunk is waiting");
                let part = if c.len() as i64 <= room {
                    chunk.take().expect("some")
                } else {
                    c.split_to(room as usize)
                };
                let n = part.len() as i64;
                s.send_window -= n;
                *conn_window -= n;
                let end = chunk.is_none() && body.is_end_stream();
                let mut d = Data::new(sid, part);
                d.set_end_stream(end);
                codec.buffer(d.into()).map_err(user_error)?;
                if end {
                    return Ok(Step::Finished(None));
                }
                frames += 1;
                if frames == FRAMES_PER_TURN {
                    return Ok(Step::Yield);
                }
            }
            Task::Done => return Ok(Step::Finished(None)),
        }
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

/// `Ready(Ok)` as true, `Pending` as false.
fn ready_ok(p: Poll<io::Result<()>>) -> io::Result<bool> {
    match p {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(false),
    }
}

fn user_error(e: h2::UserError) -> io::Error {
    io::Error::other(format!("HTTP/2 frame not encoded: {e:?}"))
}

/// The bytes a DATA frame counts against flow control: its payload, plus its padding and pad
/// length byte when padded. `h2` keeps the pad length to itself except in the frame's `Debug`
/// form, which is read for the rare padded frame (the `h2` version is pinned).
fn flow_controlled_len(d: &Data) -> u32 {
    let payload = d.payload().len() as u32;
    if !d.is_padded() {
        return payload;
    }
    let shown = format!("{d:?}");
    let pad = shown
        .split("pad_len: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    payload + pad + 1
}
