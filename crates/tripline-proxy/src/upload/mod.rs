//! The client's request body on its way upstream, and whose fault it was when it broke off.
//!
//! An upload can fail on the client's side: a malformed chunked body, a client that
//! disconnects or resets its stream mid-upload, or one still sending when the route deadline
//! passes. The upstream then sees a request cut short and answers with an error, a reset or
//! nothing at all, and that failure must never count against it: three anonymous clients
//! sending broken bodies would otherwise eject a healthy endpoint and open its breaker, cutting
//! the service off for everyone.
//!
//! A request with a body shares an [`Upload`] between its body ([`Watched`], which records how
//! the body ended) and its attempts, which ask it ([`Upload::blame`]) before recording an
//! outcome: a failure while the client's side had failed is the client's, recorded as
//! [`Outcome::Local`] and answered `400 bad-request-body` or `499 downstream-disconnect`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tripline_core::classify::{LocalReason, Outcome};

use hyper::body::Incoming;

use crate::client_conns::ConnSignal;
use crate::client_fault::{ClientBodyError, ClientFault};
use crate::BoxError;
use tee::Tee;

pub mod tee;

/// The body of a client's request, as the server that read its head delivers it. Its errors
/// are [`ClientBodyError`]s: they say whether the client sent a malformed body or left.
#[derive(Debug)]
pub enum ClientBody {
    /// HTTP/1.1, through hyper's server.
    Hyper(Incoming),
    /// HTTP/2, through Tripline's own server ([`crate::h2_server`]).
    H2(crate::h2_streams::RecvBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => {
                Pin::new(b).poll_frame(cx).map_err(|e| ClientBodyError::from_hyper(e).into())
            }
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

const STREAMING: u8 = 0;
const COMPLETE: u8 = 1;
const MALFORMED: u8 = 2;
const DISCONNECTED: u8 = 3;

/// How far the client's body got, shared by the body and the request's attempts (one atomic:
/// the body may be read on another worker's thread, by the upstream connection's task).
#[derive(Debug, Default)]
pub struct Upload(AtomicU8, std::sync::atomic::AtomicU64);

impl Upload {
    fn set(&self, state: u8) {
        // The first end wins: a body that failed stays failed.
        let _ = self.0.compare_exchange(STREAMING, state, Ordering::Release, Ordering::Relaxed);
    }

    /// Body bytes read from the client so far (the access log's `bytes_received`).
    pub fn received(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }

    /// The whole body was read.
    pub(crate) fn set_complete(&self) {
        self.set(COMPLETE);
    }

    /// The body broke off on the sending side (for a copy: the copy fell behind).
    pub(crate) fn set_disconnected(&self) {
        self.set(DISCONNECTED);
    }

    /// How the client's side failed, if it did.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) {
            MALFORMED => Some(ClientFault::Malformed),
            DISCONNECTED => Some(ClientFault::Disconnected),
            _ => None,
        }
    }

    /// Whether the whole body was read.
    pub fn complete(&self) -> bool {
        self.0.load(Ordering::Acquire) == COMPLETE
    }

    /// Whose fault an attempt's failure is. `Some` when the client caused it: the body failed
    /// (whatever the upstream then did), or a timeout passed while the client was still
    /// sending (the upstream cannot be blamed for not answering a request it does not have).
    /// A response, or a reset by the upstream while the body streams, stays the upstream's.
    pub fn blame(&self, outcome: &Outcome) -> Option<LocalReason> {
        if matches!(outcome, Outcome::Local(_)) {
            return None;
        }
        match self.0.load(Ordering::Acquire) {
            MALFORMED => Some(LocalReason::ClientFault),
            DISCONNECTED => Some(LocalReason::Cancelled),
            STREAMING if *outcome == Outcome::Timeout => Some(LocalReason::ClientFault),
            _ => None,
        }
    }
}

/// The client's request body, recording how it ends in its [`Upload`], and each chunk as
/// progress on its connection (the stream idle timeout).
#[derive(Debug)]
pub struct Watched {
    body: ClientBody,
    upload: Option<Arc<Upload>>,
    conn: Option<Arc<ConnSignal>>,
    /// Copies of the body for mirrors (see `upload::tee`).
    tees: Vec<Tee>,
}

impl Watched {
    /// Watches `body`, from a client connection supervised by `conn`; a body that is already
    /// over (most requests) needs no watching and allocates nothing.
    pub fn new(body: ClientBody, conn: &Arc<ConnSignal>) -> Self {
        if body.is_end_stream() {
            return Watched { body, upload: None, conn: None, tees: Vec::new() };
        }
        Watched { body, upload: Some(Arc::default()), conn: Some(conn.clone()), tees: Vec::new() }
    }

    /// Sends a copy of every frame still to come to `tee` (a mirror's body).
    pub fn tee(&mut self, tee: Tee) {
        self.tees.push(tee);
    }

    /// The state the request's attempts share, if the request has a body.
    pub fn upload(&self) -> Option<&Arc<Upload>> {
        self.upload.as_ref()
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(_))), Some(conn)) = (&polled, &self.conn) {
            conn.progress();
        }
        let this = &mut *self;
        if !this.tees.is_empty() {
            tee::copy(&mut this.tees, &polled, this.body.is_end_stream());
        }
        if let Some(upload) = &self.upload {
            if let Poll::Ready(Some(Ok(frame))) = &polled {
                if let Some(data) = frame.data_ref() {
                    upload.1.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            match &polled {
                Poll::Ready(None) => upload.set(COMPLETE),
                Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => upload.set(COMPLETE),
                Poll::Ready(Some(Err(e))) => upload.set(match e.downcast_ref::<ClientBodyError>() {
                    Some(c) if c.fault() == ClientFault::Malformed => MALFORMED,
                    _ => DISCONNECTED,
                }),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_body_makes_every_failure_the_clients() {
        let u = Upload::default();
        u.set(MALFORMED);
        u.set(COMPLETE);
        assert_eq!(u.fault(), Some(ClientFault::Malformed), "the first end wins");
        for o in [Outcome::Reset, Outcome::Timeout, Outcome::Http(502), Outcome::ConnectFailure] {
            assert_eq!(u.blame(&o), Some(LocalReason::ClientFault), "{o}");
        }
        let gone = Upload::default();
        gone.set(DISCONNECTED);
        assert_eq!(gone.blame(&Outcome::Reset), Some(LocalReason::Cancelled));
        assert_eq!(gone.blame(&Outcome::Local(LocalReason::Overflow)), None, "already local");
    }

    #[test]
    fn an_unfinished_body_excuses_the_upstream_only_for_a_timeout() {
        let u = Upload::default();
        assert_eq!(u.blame(&Outcome::Timeout), Some(LocalReason::ClientFault));
        assert_eq!(u.blame(&Outcome::Reset), None, "the upstream reset while the body streamed");
        assert_eq!(u.blame(&Outcome::Http(503)), None);
        u.set(COMPLETE);
        assert_eq!(u.blame(&Outcome::Timeout), None, "the upstream had the whole request");
    }
}
