//! The bodies the upstream client sends and receives, streamed through without boxing: the
//! client's request body goes upstream as is (or as a retry's replay, or a mirror's copy), and
//! the response body comes back from hyper or the lean HTTP/1.1 client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::h1::ResponseStream;
use super::replay::{replay_frame, TeedBody};
use crate::upload::Watched;
use crate::BoxError;

/// A request body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    Stream(Watched),
    /// Streaming, with a copy kept for a possible retry.
    Teed(TeedBody),
    /// A retry: the body buffered from the first attempt.
    Replay(std::collections::VecDeque<Bytes>, Option<http::HeaderMap>),
    /// A mirror's copy of a client's body (see `upload::tee`).
    Copy(crate::upload::tee::CopyBody),
    Empty,
    /// Sent on an HTTP/2 connection, which it holds until uploaded: a body can outlast its
    /// response, and the idle sweep must not let the connection go under it.
    Held(Box<RequestBody>, std::sync::Arc<crate::endpoint::pool::H2Stream>),
}

impl RequestBody {
    /// The body without its hold on a connection (for another try on another connection).
    pub fn unheld(self) -> RequestBody {
        match self {
            RequestBody::Held(inner, _) => inner.unheld(),
            other => other,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Teed(b) => b.poll_frame(cx),
            RequestBody::Replay(chunks, trailers) => Poll::Ready(replay_frame(chunks, trailers).map(Ok)),
            RequestBody::Copy(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Held(b, _) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Teed(b) => b.is_end_stream(),
            RequestBody::Replay(chunks, trailers) => chunks.is_empty() && trailers.is_none(),
            RequestBody::Copy(b) => b.is_end_stream(),
            RequestBody::Empty => true,
            RequestBody::Held(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Teed(b) => b.size_hint(),
            RequestBody::Replay(chunks, _) => {
                SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum())
            }
            RequestBody::Copy(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Held(b, _) => b.size_hint(),
        }
    }
}

/// A response body as it comes from an upstream: through hyper (HTTP/2, requests with a body,
/// upgrades) or through the lean HTTP/1.1 client ([`crate::endpoint::h1`]).
#[derive(Debug)]
pub enum UpstreamBody {
    /// From hyper's client; over HTTP/2 with the request's hold on the connection, released
    /// when the body is dropped.
    Hyper(Incoming, Option<std::sync::Arc<crate::endpoint::pool::H2Stream>>),
    H1(ResponseStream),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b, _) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b, _) => b.is_end_stream(),
            UpstreamBody::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b, _) => b.size_hint(),
            UpstreamBody::H1(b) => b.size_hint(),
        }
    }
}
