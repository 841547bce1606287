//! What the client sends: each frame read off the connection, and what it does to the streams,
//! the windows and the connection's state (RFC 9113 §5.1, §6, §8.1), with the errors it can
//! cause: a stream error resets one stream, a connection error ends them all with GOAWAY.

use std::io;
use std::sync::atomic::Ordering;
use std::task::Waker;

use h2::frame::{
    Data, Frame, GoAway, Headers, Ping, Pseudo, Reason, Reset, Settings, StreamId, WindowUpdate,
};
use http::{HeaderMap, Method};
use tokio::io::{AsyncRead, AsyncWrite};

use super::closed::Verdict;
use super::idle::IdleCheck;
use super::{
    request, Closing, Connection, Handler, Stream, Task, MAX_CONCURRENT_STREAMS, MAX_LOCAL_ERROR_RESETS,
    MAX_WINDOW, PREMATURE_RESET_MIN_STREAMS,
};
use crate::h2_streams::{Inbound, RecvBody, StreamWaker};
use crate::stats::Http2Flood;
use crate::upload::ClientBody;

impl<T, H> Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    pub(super) fn recv_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Headers(h) => self.recv_headers(h),
            Frame::Data(d) => {
                let empty = !d.is_end_stream() && d.payload().is_empty();
                let flood = self.flood.payload_frame(empty);
                if !self.flooded(flood) {
                    self.recv_data(d);
                }
            }
            Frame::Reset(r) => self.recv_reset(u32::from(r.stream_id())),
            Frame::WindowUpdate(w) => {
                let flood = self.flood.window_update(self.opened, self.out.data_frames);
                if !self.flooded(flood) {
                    self.recv_window_update(u32::from(w.stream_id()), w.size_increment());
                }
            }
            Frame::Settings(s) => self.recv_settings(&s),
            Frame::Ping(p) => {
                if !p.is_ack() {
                    self.control.push_back(Ping::pong(p.into_payload()).into());
                } else if *p.payload() == Ping::SHUTDOWN {
                    self.drained();
                }
            }
            Frame::GoAway(_) => self.peer_going_away = true,
            // Ignored, as RFC 9113 §5.3.2 allows; counted.
            Frame::Priority(_) => {
                let flood = self.flood.priority(self.opened);
                self.flooded(flood);
            }
            // Only a server pushes.
            Frame::PushPromise(_) => self.fail(Reason::PROTOCOL_ERROR),
        }
    }

    /// The codec found an error: in one stream (a malformed header block) or in the connection.
    pub(super) fn recv_error(&mut self, e: h2::proto::Error) -> io::Result<()> {
        match e {
            h2::proto::Error::Reset(id, reason, _) => {
                let id = u32::from(id);
                if id % 2 == 1 && id > self.last_id {
                    if matches!(self.closing, Closing::Drained | Closing::Failed) {
                        // Above the GOAWAY's id: ignored like any new stream.
                        return Ok(());
                    }
                    // A malformed request still opens its stream, and counts as one; it was
                    // not taken up, so a GOAWAY does not name it.
                    self.new_stream_id(id);
                    self.opened += 1;
                    self.premature_reset();
                } else if id % 2 == 0 {
                    // Only the server opens even streams.
                    self.fail(Reason::PROTOCOL_ERROR);
                    return Ok(());
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

    /// The client opened stream `id`, the highest so far.
    fn new_stream_id(&mut self, id: u32) {
        self.closed.opened(self.last_id, id);
        self.last_id = id;
    }

    /// After the final GOAWAY, streams above the last one it names were never taken up: what
    /// the client sends on them is ignored (RFC 9113 §6.8).
    fn beyond_goaway(&self, id: u32) -> bool {
        matches!(self.closing, Closing::Drained | Closing::Failed) && id > self.last_accepted
    }

    fn recv_headers(&mut self, mut h: Headers) {
        // (Checked here rather than where the frame is matched: there, it cost the frame a copy.)
        let empty =
            !h.is_end_stream() && !h.is_over_size() && h.fields().is_empty() && is_empty(h.pseudo_mut());
        let flood = self.flood.payload_frame(empty);
        if self.flooded(flood) {
            return;
        }
        let id = u32::from(h.stream_id());
        if !h.stream_id().is_client_initiated() {
            return self.fail(Reason::PROTOCOL_ERROR);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.recv_open {
                // Half-closed (remote): the request has ended (RFC 9113 §5.1).
                return self.reset(id, Reason::STREAM_CLOSED, true);
            }
            // Trailers: they must end the request (RFC 9113 §8.1), within the size limit and
            // without pseudo-header fields.
            if !h.is_end_stream() || h.is_over_size() {
                return self.reset(id, Reason::PROTOCOL_ERROR, true);
            }
            s.recv_open = false;
            let length_ok = s.expected.is_none_or(|n| n == s.received);
            let (p, fields) = h.into_parts();
            if !length_ok || !is_empty(&p) {
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
            if self.beyond_goaway(id) {
                return;
            }
            // A stream that has closed, or an id skipped for good: trailers the client sent
            // before it saw Tripline's reset are ignored, anything else ends the connection.
            if let Verdict::Error(reason) = self.closed.headers(id, h.is_end_stream()) {
                self.fail(reason);
            }
            return;
        }
        self.new_stream_id(id);
        if matches!(self.closing, Closing::Drained | Closing::Failed) {
            // Above the id the GOAWAY named: not processed, the client may retry it elsewhere.
            return;
        }
        let end = h.is_end_stream();
        if self.streams.len() >= MAX_CONCURRENT_STREAMS as usize {
            return self.send_reset(id, Reason::REFUSED_STREAM, end);
        }
        self.opened += 1;
        self.last_accepted = id;
        if h.is_over_size() || h.fields().len() > self.config.limits.max_count() as usize {
            let reason = crate::reason::Reason::RequestHeadersTooLarge;
            self.config.stats.local.inc(reason);
            let mut fields = HeaderMap::new();
            fields.insert(crate::reason::REASON_HEADER, http::HeaderValue::from_static(reason.as_str()));
            let mut reply = Headers::new(h.stream_id(), Pseudo::response(reason.status()), fields);
            reply.set_end_stream();
            self.control.push_back(reply.into());
            if !end {
                self.closed.reset_by_us(id, false);
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
            task: Task::Handling(self.handler.call(req)),
            waker: Waker::from(queued.clone()),
            queued,
            send_window: self.init_send_window,
            recv_open: !end,
            expected: head.content_length,
            received: 0,
            head_request,
            blocked_on_window: false,
            listed: false,
            progress: self.idle.as_ref().map_or(0, IdleCheck::now),
            idle_expired: false,
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
            // A stream that has closed: thrown away, and given back to the connection (RFC 9113
            // §6.9: it counted against the window all the same). Ignored if Tripline reset the
            // stream and the client sent it before it knew; otherwise a stream error.
            self.shared.lock().release_conn(len);
            if !self.beyond_goaway(id) {
                if let Verdict::Error(reason) = self.closed.data(id, len, end) {
                    self.reset(id, reason, true);
                }
            }
            return;
        };
        if !s.recv_open {
            self.shared.lock().release_conn(len);
            return self.reset(id, Reason::STREAM_CLOSED, true);
        }
        let payload = d.into_payload();
        let n = payload.len() as u64;
        s.received += n;
        if let Some(idle) = &self.idle {
            s.progress = idle.now();
        }
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
        let Some(s) = self.streams.remove(&id) else {
            // Closed already: ignored (RFC 9113 §5.1), but only so many times.
            let flood = self.flood.reset_on_closed_stream(self.opened);
            self.flooded(flood);
            return;
        };
        self.config.stats.http2.client_resets.fetch_add(1, Ordering::Relaxed);
        if matches!(s.task, Task::Handling(_) | Task::Head(..)) {
            self.premature_reset();
        }
        self.end_inbound(id);
        // Dropping the stream cancels its request: the upstream request is abandoned.
        drop(s);
    }

    fn recv_window_update(&mut self, id: u32, inc: u32) {
        if id == 0 {
            self.out.conn_window += i64::from(inc);
            if self.out.conn_window > MAX_WINDOW {
                return self.fail(Reason::FLOW_CONTROL_ERROR);
            }
            self.unblock_all();
            return;
        }
        if id > self.last_id {
            // WINDOW_UPDATE on a stream never opened (RFC 9113 §5.1).
            return self.fail(Reason::PROTOCOL_ERROR);
        }
        // On a closed stream: ignored (RFC 9113 §5.1), and counted by the flood limit.
        let Some(s) = self.streams.get_mut(&id) else { return };
        s.send_window += i64::from(inc);
        if s.send_window > MAX_WINDOW {
            return self.reset(id, Reason::FLOW_CONTROL_ERROR, true);
        }
        // Polled again only if the connection has room too; otherwise it stays listed for the
        // connection's own update (a client sending stream updates alone gets nothing polled).
        if s.blocked_on_window && self.out.conn_window > 0 {
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
            self.flooded(Some(Http2Flood::RapidReset));
        }
    }

    /// Closes the connection with GOAWAY ENHANCE_YOUR_CALM if the client went past an abuse
    /// limit (`kind`); true if it did. (Checked on most frames: the common answer is inline.)
    #[inline(always)]
    fn flooded(&mut self, kind: Option<Http2Flood>) -> bool {
        match kind {
            None => false,
            Some(kind) => {
                self.calm_down(kind);
                true
            }
        }
    }

    #[cold]
    fn calm_down(&mut self, kind: Http2Flood) {
        if self.closing != Closing::Failed {
            tracing::warn!(peer = %self.config.peer, limit = kind.as_str(), opened = self.opened,
                reset = self.premature_resets, "closing an abusive HTTP/2 connection");
            self.config.stats.http2.flood(kind);
            self.fail(Reason::ENHANCE_YOUR_CALM);
        }
    }

    /// Resets a stream (a stream error): its request is cancelled. `client_error`: the client
    /// caused it, so it counts toward the premature-reset rule (when the response head had not
    /// gone out) and toward `MAX_LOCAL_ERROR_RESETS`. Otherwise it is an upstream failure after
    /// the response head.
    pub(super) fn reset(&mut self, id: u32, reason: Reason, client_error: bool) {
        self.end_inbound(id);
        let s = self.streams.remove(&id);
        // Once answered, a closed stream's frames are ignored like an open one's: they were
        // sent before the answer arrived.
        self.send_reset(id, reason, s.as_ref().is_some_and(|s| !s.recv_open));
        if client_error {
            // Made to reset its own streams, a client could otherwise keep any number of
            // abandoned requests going upstream ("MadeYouReset", CVE-2025-8671).
            if s.as_ref().is_some_and(|s| matches!(s.task, Task::Handling(_) | Task::Head(..))) {
                self.premature_reset();
            }
            self.local_error_resets += 1;
            if self.local_error_resets > MAX_LOCAL_ERROR_RESETS {
                self.flooded(Some(Http2Flood::StreamErrors));
            }
        }
        drop(s);
    }

    /// Queues RST_STREAM, counted in `tripline_downstream_http2_stream_resets{by="proxy"}`, and
    /// remembers the stream so that what the client sent before it sees the reset is ignored.
    /// `ended`: the client had already ended its side of the stream.
    pub(super) fn send_reset(&mut self, id: u32, reason: Reason, ended: bool) {
        self.config.stats.http2.proxy_resets.fetch_add(1, Ordering::Relaxed);
        self.closed.reset_by_us(id, ended);
        self.control.push_back(Reset::new(StreamId::from(id), reason).into());
    }

    /// Tells a request still reading its body that the stream is gone.
    pub(super) fn end_inbound(&mut self, id: u32) {
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
        tracing::debug!(peer = %self.config.peer, ?reason, "HTTP/2 connection error");
        self.config.stats.http2.connection_error(reason.into());
        self.closing = Closing::Failed;
        self.control.push_back(GoAway::new(StreamId::from(self.last_accepted), reason).into());
        self.drop_all_streams();
    }

    /// Turns the window the requests gave back into WINDOW_UPDATE frames.
    pub(super) fn queue_window_updates(&mut self) {
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
}

impl<T, H: Handler> Connection<T, H> {
    pub(super) fn drop_all_streams(&mut self) {
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
}

/// True when a header block has no pseudo-header field.
fn is_empty(p: &Pseudo) -> bool {
    p.method.is_none()
        && p.scheme.is_none()
        && p.authority.is_none()
        && p.path.is_none()
        && p.protocol.is_none()
        && p.status.is_none()
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

pub(super) fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}
