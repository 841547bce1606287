//! Copies of a client's request body for mirrors, made as the body streams to the primary
//! upstream: never buffered whole, and never slowing the primary. Each copy has a small
//! channel; a copy that falls behind (its channel full because its upstream reads slowly or
//! not at all) is cut off, and its request ends as a client-side disconnect (see `upload`), so
//! the mirror's upstream is not blamed for it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::Upload;
use crate::client_fault::{ClientBodyError, ClientFault};
use crate::BoxError;

/// Frames a copy may lag behind the primary before it is cut off.
pub const COPY_FRAMES: usize = 16;

/// The sending end of one copy, held by the primary's body.
#[derive(Debug)]
pub struct Tee {
    tx: mpsc::Sender<Frame<Bytes>>,
    upload: Arc<Upload>,
    ended: bool,
}

/// The copy, sent as a mirror's request body.
#[derive(Debug)]
pub struct CopyBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
    upload: Arc<Upload>,
    size: SizeHint,
}

/// A copy of a body whose size the primary announced (`size`), and the copy's [`Upload`], for
/// the mirror's attempt to ask whose fault a failure was.
pub fn copy_of(size: SizeHint) -> (Tee, CopyBody, Arc<Upload>) {
    let (tx, rx) = mpsc::channel(COPY_FRAMES);
    let upload = Arc::new(Upload::default());
    (Tee { tx, upload: upload.clone(), ended: false }, CopyBody { rx, upload: upload.clone(), size }, upload)
}

/// Hands one polled frame of the primary body to every copy; `end`: the primary body is over.
pub(crate) fn copy(tees: &mut Vec<Tee>, polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>, end: bool) {
    match polled {
        Poll::Pending => return,
        Poll::Ready(Some(Ok(frame))) => {
            let copy = || match (frame.data_ref(), frame.trailers_ref()) {
                (Some(data), _) => Some(Frame::data(data.clone())),
                (None, Some(trailers)) => Some(Frame::trailers(trailers.clone())),
                _ => None,
            };
            // A full or closed channel cuts that copy off (dropping it marks it).
            tees.retain(|tee| copy().is_none_or(|c| tee.tx.try_send(c).is_ok()));
            if !end {
                return;
            }
        }
        Poll::Ready(Some(Err(_))) => {
            tees.clear();
            return;
        }
        Poll::Ready(None) => {}
    }
    for tee in tees.iter_mut() {
        tee.ended = true;
    }
    tees.clear();
}

impl Drop for Tee {
    fn drop(&mut self) {
        if !self.ended {
            self.upload.set_disconnected();
        }
    }
}

impl Body for CopyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) if self.upload.fault().is_some() => {
                let cause: BoxError =
                    "the mirror's copy fell behind the request, or the request broke off".into();
                Poll::Ready(Some(Err(Box::new(ClientBodyError::new(ClientFault::Disconnected, cause)))))
            }
            Poll::Ready(None) => {
                self.upload.set_complete();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn data(s: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.as_bytes())))))
    }

    #[tokio::test]
    async fn a_copy_gets_every_frame_and_ends_with_the_body() {
        let (tee, body, upload) = copy_of(SizeHint::with_exact(6));
        let mut tees = vec![tee];
        copy(&mut tees, &data("abc"), false);
        copy(&mut tees, &data("def"), true);
        assert!(tees.is_empty(), "the copy is done when the body is");
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"abcdef");
        assert!(upload.complete());
    }

    #[tokio::test]
    async fn a_copy_that_falls_behind_is_cut_off_as_a_client_side_break() {
        let (tee, body, upload) = copy_of(SizeHint::default());
        let mut tees = vec![tee];
        for _ in 0..COPY_FRAMES {
            copy(&mut tees, &data("x"), false);
        }
        assert_eq!(tees.len(), 1, "within its lag");
        copy(&mut tees, &data("x"), false);
        assert!(tees.is_empty(), "one frame more and it is cut off, never waited for");
        assert_eq!(upload.fault(), Some(ClientFault::Disconnected));
        let err = body.collect().await.unwrap_err();
        assert!(err.downcast_ref::<ClientBodyError>().is_some(), "{err}");
    }

    #[tokio::test]
    async fn a_primary_body_that_breaks_off_breaks_its_copies() {
        let (tee, _body, upload) = copy_of(SizeHint::default());
        let mut tees = vec![tee];
        copy(&mut tees, &Poll::Ready(Some(Err("client left".into()))), false);
        assert_eq!(upload.fault(), Some(ClientFault::Disconnected));
        let (tee, _body, upload) = copy_of(SizeHint::default());
        drop(tee);
        assert_eq!(upload.fault(), Some(ClientFault::Disconnected), "a primary dropped before its end");
    }
}
