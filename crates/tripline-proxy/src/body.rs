//! The client's response body. The upstream's body ([`UpstreamBody`]) comes back wrapped with
//! the in-flight guard, so the permits, the pooled connection and the duration measurement are
//! released exactly when the response ends (or the client goes away); a local answer is its
//! bytes. No boxing either way.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::access_log::{BodyEnd, BodyLog};
use crate::client_conns::RequestMark;
use crate::endpoint::body::UpstreamBody;
use crate::upstream::InFlight;
use crate::BoxError;
use tripline_core::classify::grpc::{DEADLINE_EXCEEDED, UNAVAILABLE};

/// A response body sent to the client.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Inner,
    /// Dropped when the body ends or is abandoned: releases permits and returns the connection.
    guard: Option<Box<InFlight>>,
    /// The route's timeout, which covers the whole response as Envoy's does: a body still
    /// streaming when it passes is cut off.
    deadline: Option<BodyDeadline>,
    /// The access log line, written when the body ends, is cut off or is abandoned.
    log: Option<Box<dyn BodyLog>>,
    /// Ends the request on its client connection when the body is dropped.
    request: Option<RequestMark>,
    /// The upstream body's error, held for one poll: see [`ResponseBody::poll_frame`].
    failed: Option<BoxError>,
    /// A gRPC response: cut short, it ends with a `grpc-status` in trailers (a status the client
    /// can act on) instead of a reset, which clients report as INTERNAL.
    grpc: bool,
}

#[derive(Debug)]
enum Inner {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
}

#[derive(Debug)]
struct BodyDeadline {
    at: Instant,
    /// Armed only when the body first has to wait: a body that is already there (most small
    /// responses) never registers a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl BodyDeadline {
    /// Ready once the deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at))).as_mut().poll(cx)
    }
}

impl ResponseBody {
    /// A body Tripline made; an empty one has ended already (a gRPC trailers-only answer
    /// must end its stream with its head).
    pub fn local(bytes: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Local((!bytes.is_empty()).then_some(bytes)),
            guard: None,
            deadline: None,
            log: None,
            request: None,
            failed: None,
            grpc: false,
        }
    }

    /// Wraps an upstream body with its in-flight guard and the route deadline. A body that is
    /// already complete (no content) releases the guard's connection for reuse at once.
    pub fn upstream(body: UpstreamBody, mut guard: Box<InFlight>, deadline: Option<Instant>) -> Self {
        let mut inner = Inner::Upstream(body);
        if Self::inner_ended(&mut inner, &mut guard) {
            guard.mark_complete();
        }
        let deadline = deadline.map(|at| BodyDeadline { at, timer: None });
        ResponseBody {
            inner,
            guard: Some(guard),
            deadline,
            log: None,
            request: None,
            failed: None,
            grpc: false,
        }
    }

    /// Makes a failure after the head (the upstream gone, the route deadline passed) end the
    /// response with gRPC status trailers: `UNAVAILABLE` (retryable) or `DEADLINE_EXCEEDED`.
    pub(crate) fn end_with_grpc_status(&mut self) {
        self.grpc = true;
    }

    /// What the client gets when the body fails with `error` (the upstream's `status`): the
    /// error, which resets the stream or closes the connection, or for gRPC the status in
    /// trailers, which ends the stream cleanly.
    fn failure(&mut self, status: u8, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.grpc {
            return Poll::Ready(Some(Err(error)));
        }
        self.grpc = false;
        self.inner = Inner::Local(None);
        let message = format!("upstream response cut short by Tripline: {error}");
        Poll::Ready(Some(Ok(Frame::trailers(crate::grpc::status_trailers(status, &message)))))
    }

    /// The stream idle timeout cut this response (HTTP/2, where the stream is reset): its log
    /// line says so. (On HTTP/1.1 the connection's stop flag tells `drop`.)
    pub(crate) fn end_idle(&mut self) {
        self.count_idle_cut();
        self.end_log(BodyEnd::StreamIdleTimeout);
    }

    /// Counts a response the stream idle timeout cut, for its cluster.
    fn count_idle_cut(&self) {
        if let Some(g) = &self.guard {
            g.count_local(crate::reason::Reason::StreamIdleTimeout);
        }
    }

    /// Writes `log` when this body ends.
    pub(crate) fn log_on_end(&mut self, log: Box<dyn BodyLog>) {
        self.log = Some(log);
    }

    /// Holds `mark` until this body is dropped; see [`RequestMark`].
    pub(crate) fn end_request_with(&mut self, mark: RequestMark) {
        self.request = Some(mark);
    }

    fn end_log(&mut self, end: BodyEnd) {
        if let Some(log) = self.log.take() {
            log.finish(end);
        }
    }

    /// True when the body has ended; then hands a reusable lean-client connection to `guard`.
    fn inner_ended(inner: &mut Inner, guard: &mut InFlight) -> bool {
        let Inner::Upstream(body) = inner else { return false };
        if !body.is_end_stream() {
            return false;
        }
        if let UpstreamBody::H1(stream) = body {
            if let Some(conn) = stream.take_reusable() {
                guard.reuse_connection(conn);
            }
        }
        true
    }

    /// The route deadline passed mid-body: the upstream response is abandoned (its connection
    /// closed) and the attempt recorded as a timeout. hyper resets the client's stream (HTTP/2)
    /// or closes its connection (HTTP/1.1), as Envoy does when headers were already sent.
    fn time_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.inner = Inner::Local(None);
        self.deadline = None;
        if let Some(g) = self.guard.take() {
            g.time_out();
        }
        self.end_log(BodyEnd::RouteTimeout);
        self.failure(DEADLINE_EXCEEDED, "route timeout while streaming the response body".into())
    }
}

impl Drop for ResponseBody {
    /// hyper drops a body it never had to poll (a `HEAD` or `204` response, an empty body), one
    /// whose declared length it has sent (HTTP/1.1 stops there, even if an HTTP/2 upstream's
    /// END_STREAM is still to come), and one whose client went away: only the last is a cut.
    fn drop(&mut self) {
        let complete = self.is_end_stream() || self.size_hint().exact() == Some(0);
        if complete {
            if let Some(mut g) = self.guard.take() {
                Self::inner_ended(&mut self.inner, &mut g);
                g.finish(true);
            }
        }
        // HTTP/1.1: the stream idle timeout cuts a response by dropping its connection.
        let idle = !complete && self.request.as_ref().is_some_and(|m| m.signal().stream_idle_expired());
        if idle {
            self.count_idle_cut();
        }
        if self.log.is_some() {
            self.end_log(match (complete, idle) {
                (true, _) => BodyEnd::Complete,
                (false, true) => BodyEnd::StreamIdleTimeout,
                (false, false) => BodyEnd::DownstreamDisconnect,
            });
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        // A body that keeps data coming once its timer is armed is still cut at the deadline.
        if let Some(d) = this.deadline.as_mut().filter(|d| d.timer.is_some()) {
            if d.poll_expired(cx).is_ready() {
                return this.time_out();
            }
        }
        let polled = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        if polled.is_pending() {
            if let Some(d) = this.deadline.as_mut() {
                ready!(d.poll_expired(cx));
                return this.time_out();
            }
        }
        // hyper stops polling once `is_end_stream` is true, so a body that ends with its last
        // data frame (Content-Length) must be recognised here, not only at `Ready(None)`.
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(mark) = &this.request {
                mark.signal().progress();
            }
            if let (Some(d), Some(log)) = (frame.data_ref(), this.log.as_mut()) {
                log.sent(d.len());
            }
            if let (Some(t), Some(g)) = (frame.trailers_ref(), this.guard.as_mut()) {
                if let Some(code) = t
                    .get(&crate::grpc::GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                {
                    g.set_grpc_status(code);
                }
            }
        }
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(mut g) = this.guard.take() {
                Self::inner_ended(&mut this.inner, &mut g);
                g.finish(true);
            }
            this.end_log(BodyEnd::Complete);
        }
        if let Poll::Ready(Some(Err(e))) = polled {
            if let Some(g) = this.guard.take() {
                g.finish(false);
            }
            this.end_log(BodyEnd::UpstreamReset);
            if this.grpc {
                return this.failure(UNAVAILABLE, e);
            }
            // The error waits for the next poll. hyper's HTTP/1.1 server gives up its unsent
            // buffer when a body fails, and an upstream that closes right after the head and a
            // few bytes fails the body in the same turn that queued the head: the client got
            // no response at all. Told to wait, hyper flushes first, so the client sees the
            // head and what came of the body, then the close (found by the `upstream_h1`
            // fuzz target).
            this.failed = Some(e);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Local(None) => SizeHint::with_exact(0),
        }
    }
}
