//! Request replay for retries: the request head is copied and the body is teed into a bounded
//! buffer as it streams to the first upstream. A retry re-sends the copy only if the whole body
//! fit (default 64 KiB); a larger body is never retried, because part of it is gone.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};

use super::body::RequestBody;
use crate::upload::Watched;
use crate::BoxError;

/// What was captured of a request for re-sending.
#[derive(Debug)]
pub struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// `None` for a request without a body.
    body: Option<Arc<Tee>>,
}

/// The buffer shared between the streaming body and the retry logic (one request: never
/// contended).
#[derive(Debug)]
pub struct Tee {
    state: Mutex<TeeState>,
}

#[derive(Debug, Default)]
struct TeeState {
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    overflowed: bool,
    complete: bool,
    trailers: Option<HeaderMap>,
}

impl Tee {
    fn lock(&self) -> std::sync::MutexGuard<'_, TeeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, frame: &Frame<Bytes>, end: bool) {
        let mut s = self.lock();
        if let Some(data) = frame.data_ref() {
            if !s.overflowed {
                if s.size + data.len() <= s.limit {
                    s.size += data.len();
                    s.chunks.push(data.clone());
                } else {
                    s.overflowed = true;
                    s.chunks.clear();
                }
            }
        } else if let Some(t) = frame.trailers_ref() {
            s.trailers = Some(t.clone());
        }
        if end {
            s.complete = true;
        }
    }

    fn mark_complete(&self) {
        self.lock().complete = true;
    }
}

impl Replay {
    /// Copies the head of `req` and, if it has a body, makes it tee into a buffer of at most
    /// `limit` bytes.
    pub fn capture(req: &mut Request<RequestBody>, limit: usize) -> Replay {
        let body = match std::mem::replace(req.body_mut(), RequestBody::Empty) {
            RequestBody::Stream(b) if !b.is_end_stream() => {
                let tee = Arc::new(Tee { state: Mutex::new(TeeState { limit, ..TeeState::default() }) });
                *req.body_mut() = RequestBody::Teed(TeedBody { inner: b, tee: tee.clone() });
                Some(tee)
            }
            other => {
                *req.body_mut() = other;
                None
            }
        };
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        }
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// True when the body (if any) was read completely and fit the buffer.
    pub fn can_replay(&self) -> bool {
        self.body.as_ref().is_none_or(|t| {
            let s = t.lock();
            s.complete && !s.overflowed
        })
    }

    /// A copy of the request with the buffered body, or `None` if it cannot be replayed.
    pub fn next_request(&mut self) -> Option<Request<RequestBody>> {
        if !self.can_replay() {
            return None;
        }
        let body = match &self.body {
            None => RequestBody::Empty,
            Some(t) => {
                let s = t.lock();
                RequestBody::Replay(s.chunks.iter().cloned().collect(), s.trailers.clone())
            }
        };
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        Some(r)
    }
}

/// The client's body, streaming upstream while a copy goes into the replay buffer.
#[derive(Debug)]
pub struct TeedBody {
    inner: Watched,
    tee: Arc<Tee>,
}

impl TeedBody {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => self.tee.record(frame, self.inner.is_end_stream()),
            Poll::Ready(None) => self.tee.mark_complete(),
            _ => {}
        }
        polled
    }

    pub fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A replayed body: the buffered chunks, then the trailers.
pub fn replay_frame(chunks: &mut VecDeque<Bytes>, trailers: &mut Option<HeaderMap>) -> Option<Frame<Bytes>> {
    if let Some(c) = chunks.pop_front() {
        return Some(Frame::data(c));
    }
    trailers.take().map(Frame::trailers)
}
