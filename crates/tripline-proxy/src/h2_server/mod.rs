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

mod request;
mod shared;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream as _;
use h2::frame::{
    Data, Frame, GoAway, Headers, Ping, Pseudo, Reason, Reset, Settings, StreamId, WindowUpdate,
};
use h2::Codec;
use http::header::CONTENT_LENGTH;
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
    /// The highest stream id the client has opened.
    last_id: u32,
    opened: u32,
    premature_resets: u32,
    /// Tripline sent GOAWAY (drain): no new streams, close when the last one ends.
    going_away: bool,
    /// The client sent GOAWAY: it opens no more streams.
    peer_going_away: bool,
    read_closed: bool,
    /// A connection error: write the GOAWAY and close.
    closing: bool,
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
            opened: 0,
            premature_resets: 0,
            going_away: false,
            peer_going_away: false,
            read_closed: false,
            closing: false,
        }
    }

    /// Starts a graceful close (the drain, the idle timeout): GOAWAY naming the last stream
    /// accepted, then the streams in flight finish and the connection closes.
    pub fn graceful_shutdown(&mut self) {
        if !self.going_away && !self.closing {
            self.going_away = true;
            self.control.push_back(GoAway::new(StreamId::from(self.last_id), Reason::NO_ERROR).into());
        }
    }

    fn drive(&mut self, cx: &mut Context<'_>) -> io::Result<Poll<()>> {
        self.read(cx)?;
        self.queue_window_updates();
        self.write_control(cx)?;
        if !self.closing {
            self.run_streams(cx)?;
            self.write_control(cx)?;
        }
        let flushed = ready_ok(self.codec.flush(cx))?;
        let done = self.closing
            || ((self.going_away || self.peer_going_away || self.read_closed) && self.streams.is_empty());
        if done && flushed && self.control.is_empty() {
            // Best effort: the client may already be gone.
            return Ok(self.codec.shutdown(cx).map(|_| ()));
        }
        Ok(Poll::Pending)
    }

    /// Reads and handles the frames that have arrived.
    fn read(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        for _ in 0..READS_PER_POLL {
            if self.read_closed || self.closing {
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
                self.last_id = self.last_id.max(id);
                self.premature_reset();
                self.reset(id, reason);
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
            // Trailers: they must end the request (RFC 9113 §8.1).
            if !s.recv_open || !h.is_end_stream() {
                return self.reset(id, Reason::PROTOCOL_ERROR);
            }
            s.recv_open = false;
            let length_ok = s.expected.is_none_or(|n| n == s.received);
            let (pseudo, fields) = h.into_parts();
            if !length_ok || pseudo.method.is_some() || pseudo.path.is_some() || pseudo.status.is_some() {
                return self.reset(id, Reason::PROTOCOL_ERROR);
            }
            let mut st = self.shared.lock();
            if let Some(inb) = st.bodies.get_mut(&id) {
                inb.trailers = Some(fields);
                inb.end = true;
                inb.wake();
            }
            return;
        }
        if id <= self.last_id {
            // A stream that already ended; what is still in flight from the client is ignored.
            return;
        }
        self.last_id = id;
        if self.going_away {
            // Above the id the GOAWAY named: not processed, the client may retry it elsewhere.
            return;
        }
        if self.streams.len() >= MAX_CONCURRENT_STREAMS as usize {
            self.control.push_back(Reset::new(h.stream_id(), Reason::REFUSED_STREAM).into());
            return;
        }
        self.opened += 1;
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
        };
        self.streams.insert(id, stream);
        self.ready.push(id);
    }

    fn malformed(&mut self, id: u32, why: &str) {
        tracing::debug!(stream = id, why, "malformed HTTP/2 request");
        self.premature_reset();
        self.control.push_back(Reset::new(StreamId::from(id), Reason::PROTOCOL_ERROR).into());
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
            return self.reset(id, Reason::STREAM_CLOSED);
        }
        let payload = d.into_payload();
        let n = payload.len() as u64;
        s.received += n;
        if end {
            s.recv_open = false;
        }
        let bad_length = s.expected.is_some_and(|e| s.received > e || (end && s.received != e));
        let mut error = bad_length.then_some(Reason::PROTOCOL_ERROR);
        {
            let mut st = self.shared.lock();
            let st = &mut *st;
            match st.bodies.get_mut(&id) {
                // The request no longer reads its body.
                None => st.release_conn(len),
                Some(inb) => {
                    inb.window -= i64::from(len);
                    if inb.window < 0 {
                        error = Some(Reason::FLOW_CONTROL_ERROR);
                    }
                    if !payload.is_empty() {
                        inb.chunks.push_back(payload);
                    }
                    inb.end |= end;
                    inb.wake();
                    // Padding is flow-controlled but never read: given back now.
                    let padding = len - n as u32;
                    if padding > 0 {
                        st.release_stream(id, padding);
                    }
                }
            }
        }
        if let Some(reason) = error {
            self.reset(id, reason);
        }
    }

    fn recv_reset(&mut self, id: u32) {
        if id > self.last_id {
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
        let Some(s) = self.streams.get_mut(&id) else { return };
        s.send_window += i64::from(inc);
        if s.send_window > MAX_WINDOW {
            return self.reset(id, Reason::FLOW_CONTROL_ERROR);
        }
        if s.blocked_on_window {
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
            for s in self.streams.values_mut() {
                s.send_window += delta;
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
            if let Some(s) = self.streams.get_mut(&id).filter(|s| s.blocked_on_window) {
                s.blocked_on_window = false;
                self.ready.push(id);
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

    /// Resets a stream (a stream error): its request is cancelled.
    fn reset(&mut self, id: u32, reason: Reason) {
        self.end_inbound(id);
        let s = self.streams.remove(&id);
        self.control.push_back(Reset::new(StreamId::from(id), reason).into());
        drop(s);
    }

    /// Tells a request still reading its body that the stream is gone.
    fn end_inbound(&mut self, id: u32) {
        if let Some(inb) = self.shared.lock().bodies.get_mut(&id) {
            inb.reset = true;
            inb.wake();
        }
    }

    /// A connection error: GOAWAY with the reason, every stream cancelled, then close.
    fn fail(&mut self, reason: Reason) {
        if self.closing {
            return;
        }
        tracing::debug!(peer = %self.ctx.peer, ?reason, "HTTP/2 connection error");
        self.closing = true;
        self.control.push_back(GoAway::new(StreamId::from(self.last_id), reason).into());
        self.drop_all_streams();
    }

    fn drop_all_streams(&mut self) {
        {
            let mut st = self.shared.lock();
            for inb in st.bodies.values_mut() {
                inb.reset = true;
                inb.wake();
            }
        }
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
                self.window_blocked.push(id);
            }
            Step::Yield => {
                self.ready.push(id);
                cx.waker().wake_by_ref();
            }
            Step::Finished(Some(reason)) => self.reset(id, reason),
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
                let no_content = matches!(parts.status.as_u16(), 204 | 304);
                if !no_content && !parts.headers.contains_key(CONTENT_LENGTH) {
                    // As hyper does: a length known in advance is declared.
                    if let Some(n) = body.size_hint().exact() {
                        parts.headers.insert(CONTENT_LENGTH, n.into());
                    }
                }
                let bodiless = s.head_request || no_content || body.is_end_stream();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_padded_frame_counts_its_padding_against_the_window() {
        let d = Data::new(StreamId::from(1), Bytes::from_static(b"abc"));
        assert_eq!(flow_controlled_len(&d), 3);
    }
}
