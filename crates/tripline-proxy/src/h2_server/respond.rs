//! A stream's response going out: the head once the request path has it, then the body in DATA
//! frames within the client's windows and frame size, then trailers or END_STREAM.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::frame::{Data, Headers, Pseudo, Reason, StreamId};
use h2::Codec;
use http::header::{CONTENT_LENGTH, DATE};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::{date, Step, Stream, Task, FRAMES_PER_TURN};

/// The connection's sending side as the streams share it.
pub(super) struct Outbound {
    /// What the client lets Tripline send on the connection as a whole.
    pub conn_window: i64,
    /// DATA frames sent so far: the client's WINDOW_UPDATEs are limited by it (see `flood`).
    pub data_frames: u64,
}

/// Moves a stream's response along as far as it can go now.
pub(super) fn advance<T, B>(
    id: u32,
    s: &mut Stream<B>,
    codec: &mut Codec<T, Bytes>,
    out: &mut Outbound,
    now: u64,
    cx: &mut Context<'_>,
) -> io::Result<Step>
where
    T: AsyncWrite + Unpin,
    B: Body<Data = Bytes, Error: std::fmt::Display> + Unpin,
{
    let sid = StreamId::from(id);
    let mut scx = Context::from_waker(&s.waker);
    let mut frames = 0;
    loop {
        match &mut s.task {
            Task::Handling(f) => {
                match crate::client_conns::StreamIdle::told(s.idle_expired, || f.as_mut().poll(&mut scx)) {
                    Poll::Pending => return Ok(Step::Waiting),
                    Poll::Ready(Ok(resp)) => {
                        let (parts, body) = resp.into_parts();
                        s.task = Task::Head(parts, body);
                    }
                }
            }
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
                s.progress = now;
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
                            out.data_frames += 1;
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
                let room = s.send_window.min(out.conn_window).min(codec.max_send_frame_size() as i64);
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
                out.conn_window -= n;
                out.data_frames += 1;
                let end = chunk.is_none() && body.is_end_stream();
                let mut d = Data::new(sid, part);
                d.set_end_stream(end);
                codec.buffer(d.into()).map_err(user_error)?;
                s.progress = now;
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
pub(super) fn ready_ok(p: Poll<io::Result<()>>) -> io::Result<bool> {
    match p {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(false),
    }
}

pub(super) fn user_error(e: h2::UserError) -> io::Error {
    io::Error::other(format!("HTTP/2 frame not encoded: {e:?}"))
}
