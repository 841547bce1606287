//! A lean HTTP/1.1 client for the common request: one without a body, on a pooled keep-alive
//! connection. The request's own task writes the head and reads the response straight from
//! the socket; the response body reads from it as the client takes data, and the connection
//! goes back to the pool when the body ends.
//!
//! Why not hyper's client here: it runs each connection as its own task and passes every
//! request to it over a channel and the response back over another, around a general codec.
//! On the benchmark that was about a third of the proxy's user-space instructions per request
//! (callgrind; docs/benchmarks.md). Requests with a body, upgrades and HTTP/2 keep using
//! hyper, which does full-duplex streaming; a pooled connection is handed over to hyper when
//! such a request needs one (never the other way).
//!
//! Response framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and 304;
//! chunked when Transfer-Encoding ends in chunked (trailers are passed on); otherwise
//! Content-Length; otherwise until the upstream closes.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;

use super::content_length;
use super::io::UpstreamIo;
use super::pool::{ConnGuard, Reusable, SendError};
use crate::endpoint::body::{RequestBody, UpstreamBody};
use crate::headers::has_token;
use crate::BoxError;

/// Larger response heads (or trailer blocks) are refused: the request fails as a reset.
const MAX_HEAD: usize = 64 * 1024;
/// More header lines than this in one response head are refused the same way.
const MAX_HEADERS: usize = 100;
/// How much the read buffer grows by when it is (nearly) full.
const READ_CHUNK: usize = 16 * 1024;
/// More interim (1xx) responses than this before the final one are refused.
const MAX_INTERIM: usize = 16;
/// A chunk-size line longer than this is not HTTP.
const MAX_CHUNK_LINE: usize = 4096;

/// Whether a request can take the lean path: HTTP/1.1 upstream, no body, not an upgrade.
pub fn is_simple(req: &Request<RequestBody>) -> bool {
    req.body().is_end_stream()
        && req.method() != Method::CONNECT
        && !req.headers().contains_key(header::UPGRADE)
}

/// A pooled upstream connection driven by this module.
pub struct RawConn {
    io: UpstreamIo,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
    /// The last read returned less than the buffer offered: the socket had nothing more.
    drained: bool,
    /// Requests sent on this connection (for `maxRequestsPerConnection`).
    pub uses: u32,
    /// Frees the cluster's connection slot when the connection closes.
    guard: ConnGuard,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConn").field("peer", &self.io.peer_addr()).field("uses", &self.uses).finish()
    }
}

impl RawConn {
    /// Boxed once for its whole life: it then moves through the pool, the request and the
    /// response body as a pointer.
    pub fn new(io: UpstreamIo, guard: ConnGuard) -> Box<Self> {
        Box::new(RawConn {
            io,
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
            drained: false,
            uses: 0,
            guard,
        })
    }

    /// Whether an idle connection can take a request: false when the upstream closed it, or
    /// sent bytes nobody asked for, while it sat in the pool (see
    /// [`UpstreamIo::is_idle_usable`]: no syscall in the common case).
    pub fn is_usable(&mut self) -> bool {
        self.io.is_idle_usable()
    }

    /// The worker whose event loop watches the socket.
    pub fn home(&self) -> usize {
        self.guard.home()
    }

    /// Moves an idle connection that another worker opened to this worker's event loop, so
    /// that it returns to this worker's idle queue. `None` if it is not usable (the upstream
    /// closed it or sent something) or could not be moved: it is closed and its slot freed.
    pub fn rehome(self) -> Option<Box<Self>> {
        let RawConn { io, read_buf, write_buf, drained, uses, mut guard } = self;
        if !read_buf.is_empty() {
            return None;
        }
        let io = io.rehome_idle()?;
        guard.set_home_here();
        Some(Box::new(RawConn { io, read_buf, write_buf, drained, uses, guard }))
    }

    /// The socket and its slot, for hyper to take over (the read buffer is empty: pooled
    /// connections never hold unread bytes).
    pub fn into_parts(self) -> (UpstreamIo, ConnGuard, u32) {
        (self.io, self.guard, self.uses)
    }

    /// Reads more from the socket into the read buffer; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < 1024 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let offered = self.read_buf.capacity() - self.read_buf.len();
        let n = ready!(self.io.poll_read_buf(cx, &mut self.read_buf))?;
        self.drained = n < offered;
        Poll::Ready(Ok(n))
    }

    /// Called when a response ended and nothing is left unread. The last read drained the
    /// socket, so its "readable" flag is stale: clearing it lets [`RawConn::is_usable`] skip the
    /// probe syscall. Tokio clears only if no event arrived since, and never clears "closed".
    fn settle(&mut self) {
        if self.drained && self.read_buf.is_empty() {
            self.io.forget_readable();
        }
    }
}

fn fail(msg: &'static str) -> BoxError {
    msg.into()
}

/// Sends a request without a body and reads the response head. The body streams from the
/// connection, which travels inside it and comes back through [`ResponseStream::take_reusable`].
/// The request is only borrowed: the caller keeps it for a retry, with no copy made.
/// `attempt` goes upstream as `x-tripline-attempt`, written with the head rather than
/// inserted into the request's header map (see [`encode_head`]).
pub async fn send(
    mut conn: Box<RawConn>,
    req: &Request<RequestBody>,
    attempt: u32,
) -> Result<(Response<UpstreamBody>, Option<Reusable>), SendError> {
    let reused = conn.uses > 0;
    conn.uses += 1;
    encode_head(&mut conn.write_buf, req, attempt);
    let mut written = 0;
    while written < conn.write_buf.len() {
        match conn.io.write(&conn.write_buf[written..]).await {
            Ok(n) if n > 0 => written += n,
            // Nothing reached the upstream: the request can go out on another connection.
            Ok(_) | Err(_) if written == 0 => return Err(SendError::NotSent(None)),
            Ok(_) => return Err(SendError::Reset(fail("upstream stopped reading the request"))),
            Err(e) => return Err(SendError::Reset(e.into())),
        }
    }
    let is_head = req.method() == Method::HEAD;
    let mut interim = 0;
    loop {
        if let Some(head) = parse_head(&mut conn.read_buf).map_err(SendError::Reset)? {
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                // Nothing asked to switch (upgrades go through hyper): the connection is no
                // longer HTTP/1.1.
                return Err(SendError::Reset(fail("upstream switched protocols unasked")));
            }
            // Interim responses (103 Early Hints and the like) are not forwarded; an upstream
            // that sends nothing else must not keep us reading forever.
            if head.status.is_informational() {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(SendError::Reset(fail("upstream sent too many interim responses")));
                }
                continue;
            }
            return respond(conn, head, is_head).map(|r| (r, None)).map_err(SendError::Reset);
        }
        if conn.read_buf.len() > MAX_HEAD {
            return Err(SendError::Reset(fail("upstream response head too large")));
        }
        let failure = match poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) => fail("upstream closed the connection before responding"),
            Ok(_) => continue,
            Err(e) => e.into(),
        };
        // A kept-alive connection the upstream closed just as we reused it (its close and our
        // request crossed): nothing of a response came back, and an idempotent request
        // without a body is safe to send again on another connection, as Go's and curl's
        // clients do. Anything else is a reset for the retry policy to judge.
        // Likewise when the deferred send of the head failed outright (see `net_io`).
        let unanswered = interim == 0 && conn.read_buf.is_empty();
        let stale = unanswered && ((reused && super::idempotent(req.method())) || conn.io.failed_unsent());
        return Err(if stale { SendError::NotSent(None) } else { SendError::Reset(failure) });
    }
}

/// Writes the request line and headers. The target is origin-form (`prepare_request` made it
/// so) and `Host` is among the headers.
///
/// `x-tripline-attempt` is written here, and a client's own is left out. Inserting it into the
/// map instead costs a hash and a probe per attempt, and with a client that sends few
/// headers it is the insert that outgrows the map hyper sized for them: a rehash of the
/// whole map on every request (measured in docs/benchmarks.md, "Route features").
fn encode_head(buf: &mut Vec<u8>, req: &Request<RequestBody>, attempt: u32) {
    buf.clear();
    buf.extend_from_slice(req.method().as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(req.uri().path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if *name == super::X_TRIPLINE_ATTEMPT {
            continue;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    // A POST or PUT without a body still says so, or some servers wait for one (or answer 411).
    let bodiless_method = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if !bodiless_method && !req.headers().contains_key(header::CONTENT_LENGTH) {
        buf.extend_from_slice(b"content-length: 0\r\n");
    }
    buf.extend_from_slice(b"x-tripline-attempt: ");
    buf.extend_from_slice(super::attempt_value(attempt).as_bytes());
    buf.extend_from_slice(b"\r\n\r\n");
}

struct Head {
    status: StatusCode,
    version: Version,
    /// End-to-end headers only: hop-by-hop ones are read here and never stored.
    headers: HeaderMap,
    /// `Connection: close` / `Connection: keep-alive`.
    close: bool,
    keep_alive: bool,
    /// Whether the (last) transfer coding is chunked, if Transfer-Encoding was present.
    chunked: Option<bool>,
    /// The upstream's reason phrase, kept only for a status with no standard one: hyper's
    /// server would write `<none>` there (hyper's client keeps it the same way).
    reason: Option<hyper::ext::ReasonPhrase>,
}

/// Parses a complete response head off the front of `buf`, or returns `None` if more bytes
/// are needed. Header values share the head's memory instead of being copied. Hop-by-hop
/// headers are interpreted and left out, so the proxy does not pay to insert and then remove
/// them (`Connection` stays only when it names other headers, for `strip_hop_by_hop`).
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, BoxError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, &buf[..], &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid upstream response head: {e}").into()),
    };
    let status =
        StatusCode::from_u16(res.code.unwrap_or(0)).map_err(|_| fail("invalid upstream status code"))?;
    let version = if res.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let reason = match status.canonical_reason() {
        Some(_) => None,
        None => res.reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok()),
    };
    // Names now; values (as offsets into the head) once the head is split off the buffer.
    let (mut close, mut keep_alive, mut chunked) = (false, false, None);
    let mut fields = Vec::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| fail("invalid upstream header name"))?;
        if name == header::CONNECTION {
            close |= has_token(h.value, b"close");
            keep_alive |= has_token(h.value, b"keep-alive");
            let names_others = h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii).any(|t| {
                !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
            });
            if !names_others {
                continue;
            }
        } else if name == header::TRANSFER_ENCODING {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        } else if crate::headers::is_hop_by_hop(&name) {
            continue;
        }
        fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, at, n) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + n))
            .map_err(|_| fail("invalid upstream header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head { status, version, headers, close, keep_alive, chunked, reason }))
}

/// Builds the response and its streaming body from a parsed head.
fn respond(mut conn: Box<RawConn>, head: Head, is_head: bool) -> Result<Response<UpstreamBody>, BoxError> {
    let Head { status, version, mut headers, close, keep_alive, chunked, reason } = head;
    let framing = framing(status, is_head, chunked, &mut headers)?;
    let keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => keep_alive && !close,
    } && !matches!(framing, Framing::UntilClose);
    if matches!(framing, Framing::Done) {
        conn.settle();
    }
    let body = ResponseStream { conn: Some(conn), framing, keep_alive };
    let mut resp = Response::new(UpstreamBody::H1(body));
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    if let Some(reason) = reason {
        resp.extensions_mut().insert(reason);
    }
    Ok(resp)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

fn framing(
    status: StatusCode,
    is_head: bool,
    chunked: Option<bool>,
    headers: &mut HeaderMap,
) -> Result<Framing, BoxError> {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        // Any Content-Length goes (`http_proxy::client_head`): these never have a body.
        return Ok(Framing::Done);
    }
    if is_head || status == StatusCode::NOT_MODIFIED {
        content_length::normalize(headers)?;
        return Ok(Framing::Done);
    }
    if let Some(chunked) = chunked {
        // Transfer-Encoding wins over Content-Length, which must not reach the client.
        headers.remove(header::CONTENT_LENGTH);
        return Ok(if chunked { Framing::Chunked(Chunk::Size) } else { Framing::UntilClose });
    }
    Ok(match content_length::normalize(headers)? {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// A response body read from a [`RawConn`] as the client consumes it.
pub struct ResponseStream {
    /// `None` once the body failed (the connection is closed).
    conn: Option<Box<RawConn>>,
    framing: Framing,
    keep_alive: bool,
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream").field("framing", &self.framing).finish()
    }
}

impl ResponseStream {
    /// The connection, if the body was read to its end and the connection may carry another
    /// request.
    pub fn take_reusable(&mut self) -> Option<Box<RawConn>> {
        let reusable = self.framing == Framing::Done
            && self.keep_alive
            && self.conn.as_ref().is_some_and(|c| c.read_buf.is_empty());
        if reusable {
            self.conn.take()
        } else {
            None
        }
    }

    fn failed(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(e)))
    }

    fn finished(&mut self) {
        self.framing = Framing::Done;
        if let Some(c) = self.conn.as_mut() {
            c.settle();
        }
    }
}

impl Body for ResponseStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            let buf = &mut conn.read_buf;
            // Each arm either returns a frame or needs more bytes (falls through to the read).
            match &mut this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(rem) if !buf.is_empty() => {
                    let n = (*rem).min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    *rem -= n as u64;
                    if *rem == 0 {
                        this.finished();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Data(rem)) if !buf.is_empty() => {
                    let n = (*rem).min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    *rem -= n as u64;
                    if *rem == 0 {
                        this.framing = Framing::Chunked(Chunk::DataEnd);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        this.framing =
                            Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => {}
                    _ => return this.failed(fail("invalid chunk size in upstream response")),
                },
                Framing::Chunked(Chunk::DataEnd) if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return this.failed(fail("invalid chunk end in upstream response"));
                    }
                    buf.advance(2);
                    this.framing = Framing::Chunked(Chunk::Size);
                    continue;
                }
                Framing::Chunked(Chunk::Trailers) => match parse_trailers(buf) {
                    Ok(Some(trailers)) => {
                        this.finished();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) if buf.len() <= MAX_HEAD => {}
                    Ok(None) => return this.failed(fail("upstream trailers too large")),
                    Err(e) => return this.failed(e),
                },
                _ => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.failed(fail("upstream closed the connection mid-body")),
                Ok(_) => {}
                Err(e) => return this.failed(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Parses the trailer section after the last chunk: `Some(None)` when it is empty.
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, BoxError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (used, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid upstream trailers: {e}").into()),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name =
            HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| fail("invalid upstream trailer name"))?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| fail("invalid upstream trailer value"))?;
        trailers.append(name, value);
    }
    buf.advance(used);
    Ok(Some((!trailers.is_empty()).then_some(trailers)))
}

#[cfg(test)]
mod tests {
    //! Real loopback sockets (and, where the transport should not matter, an in-memory pipe
    //! too): a scripted upstream writes raw bytes, the client reads them.
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
    use tokio::net::TcpListener;

    /// An upstream that answers each request head it reads with the next scripted reply,
    /// written in pieces of `piece` bytes (1 = byte by byte). Returns the request heads seen.
    async fn upstream(
        replies: Vec<&'static [u8]>,
        piece: usize,
    ) -> (Box<RawConn>, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            tokio::spawn(async move { play(listener.accept().await.unwrap().0, replies, piece).await });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        (RawConn::new(UpstreamIo::tcp(stream), ConnGuard::detached()), server)
    }

    /// The same upstream at the other end of an in-memory pipe (`UpstreamIo::Memory`).
    fn piped(
        replies: Vec<&'static [u8]>,
        piece: usize,
    ) -> (Box<RawConn>, tokio::task::JoinHandle<Vec<String>>) {
        let (client, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(play(server, replies, piece));
        (RawConn::new(UpstreamIo::Memory(client), ConnGuard::detached()), server)
    }

    async fn play<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        replies: Vec<&'static [u8]>,
        piece: usize,
    ) -> Vec<String> {
        let mut heads = Vec::new();
        let mut buf = Vec::new();
        for reply in replies {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return heads;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            heads.push(String::from_utf8(buf.drain(..end).collect()).unwrap());
            for part in reply.chunks(piece) {
                s.write_all(part).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
        heads
    }

    async fn call(
        conn: Box<RawConn>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        send(conn, &req, 1).await.map(|(resp, _)| resp)
    }

    fn get(method: Method, path: &str) -> Request<RequestBody> {
        let mut req = Request::builder().method(method).uri(path).body(RequestBody::Empty).unwrap();
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("backend.local"));
        req
    }

    /// Reads the whole body; returns (data, trailers, connection back for reuse).
    async fn read_all(resp: Response<UpstreamBody>) -> (Vec<u8>, Option<HeaderMap>, Option<Box<RawConn>>) {
        let UpstreamBody::H1(mut stream) = resp.into_body() else { panic!("not the lean client") };
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = stream.frame().await {
            let frame = frame.unwrap();
            if let Some(d) = frame.data_ref() {
                data.extend_from_slice(d);
            }
            if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
            }
        }
        (data, trailers, stream.take_reusable())
    }

    #[tokio::test]
    async fn content_length_response_then_the_connection_is_reused() {
        let (conn, server) = upstream(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            ],
            7,
        )
        .await;
        let resp = call(conn, get(Method::GET, "/a?b=c")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let xa: Vec<_> =
            resp.headers().get_all("x-a").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(xa, ["1", "2"]);
        // Hop-by-hop headers are consumed here, never passed on.
        assert!(resp.headers().get(header::CONNECTION).is_none());
        assert!(resp.headers().get("keep-alive").is_none());
        let (data, _, back) = read_all(resp).await;
        assert_eq!(data, b"hello");
        let mut conn = back.expect("a complete keep-alive response gives the connection back");
        assert!(conn.is_usable());
        let resp = call(conn, get(Method::GET, "/second")).await.unwrap();
        assert_eq!(resp.status(), 404);
        let (_, _, back) = read_all(resp).await;
        assert_eq!(back.map(|c| c.uses), Some(2));
        let heads = server.await.unwrap();
        assert!(heads[0].starts_with("GET /a?b=c HTTP/1.1\r\nhost: backend.local\r\n"), "{}", heads[0]);
        assert!(heads[1].starts_with("GET /second HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn chunked_response_byte_by_byte_with_trailers() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
            5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\ngrpc-status: 0\r\n\r\n";
        for (conn, _server) in [upstream(vec![reply], 1).await, piped(vec![reply], 1)] {
            let resp = call(conn, get(Method::GET, "/")).await.unwrap();
            assert!(resp.headers().get(header::CONTENT_LENGTH).is_none(), "Transfer-Encoding wins");
            assert!(resp.headers().get(header::TRANSFER_ENCODING).is_none());
            let (data, trailers, back) = read_all(resp).await;
            assert_eq!(data, b"hello world");
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
            assert!(back.is_some());
        }
    }

    #[tokio::test]
    async fn no_body_for_head_204_304_and_interim_responses_are_skipped() {
        let (conn, _server) = upstream(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            ],
            64,
        )
        .await;
        let resp = call(conn, get(Method::HEAD, "/")).await.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "1000");
        let (data, _, back) = read_all(resp).await;
        assert!(data.is_empty());
        let resp = call(back.unwrap(), get(Method::GET, "/")).await.unwrap();
        assert_eq!(resp.status(), 204);
        let (_, _, back) = read_all(resp).await;
        let resp = call(back.unwrap(), get(Method::GET, "/")).await.unwrap();
        assert_eq!(resp.status(), 304);
        assert!(read_all(resp).await.2.is_some());
    }

    #[tokio::test]
    async fn body_until_close_and_connection_close_are_not_reused() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        for (conn, _server) in [upstream(vec![reply], 4).await, piped(vec![reply], 4)] {
            // The scripted upstream closes after its last reply: that ends this body.
            let (data, _, back) = read_all(call(conn, get(Method::GET, "/")).await.unwrap()).await;
            assert_eq!(data, b"until the end");
            assert!(back.is_none());
        }

        let (conn, _server) =
            upstream(vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"], 64).await;
        let (data, _, back) = read_all(call(conn, get(Method::GET, "/")).await.unwrap()).await;
        assert_eq!(data, b"ok");
        assert!(back.is_none());

        let (conn, _server) = upstream(vec![b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"], 64).await;
        assert!(read_all(call(conn, get(Method::GET, "/")).await.unwrap()).await.2.is_none());
    }

    /// A body framed by a repeated Content-Length (a list or two fields, all equal) is read by
    /// that length, and the client gets one clean field, never the list (found by
    /// `upstream_h1`; see `content_length::normalize`).
    #[tokio::test]
    async fn a_repeated_content_length_framing_a_body_is_passed_on_once() {
        let replies: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok",
        ];
        for reply in replies {
            let (conn, _server) = piped(vec![reply], 64);
            let resp = call(conn, get(Method::GET, "/")).await.unwrap();
            let lengths: Vec<_> = resp.headers().get_all(header::CONTENT_LENGTH).iter().collect();
            assert_eq!(lengths, ["2"], "{:?}", String::from_utf8_lossy(reply));
            assert_eq!(read_all(resp).await.0, b"ok");
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_a_short_success() {
        let (conn, _server) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], 64).await;
        let resp = call(conn, get(Method::GET, "/")).await.unwrap();
        let UpstreamBody::H1(mut stream) = resp.into_body() else { panic!() };
        assert_eq!(&stream.frame().await.unwrap().unwrap().into_data().unwrap()[..], b"short");
        assert!(stream.frame().await.unwrap().is_err());
        assert!(stream.take_reusable().is_none());
    }

    #[tokio::test]
    async fn bad_or_missing_responses_are_resets() {
        let endless_interim: &'static [u8] = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(40).leak();
        for reply in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, \r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            endless_interim,
            b"",
        ] {
            let (conn, _server) = upstream(vec![reply], 64).await;
            match call(conn, get(Method::GET, "/")).await {
                Err(SendError::Reset(_)) => {}
                other => panic!("{reply:?}: expected a reset, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_usable() {
        let (conn, server) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], 64).await;
        let resp = call(conn, get(Method::GET, "/")).await.unwrap();
        let (_, _, back) = read_all(resp).await;
        let mut conn = back.unwrap();
        assert!(conn.is_usable());
        // The scripted upstream closes after its last reply; wait for the event loop to see it.
        server.await.unwrap();
        let seen =
            tokio::time::timeout(std::time::Duration::from_secs(5), conn.io.tcp_stream().unwrap().readable())
                .await;
        assert!(seen.is_ok(), "the close never reached the event loop");
        assert!(!conn.is_usable());
    }

    #[tokio::test]
    async fn a_reused_connection_closed_under_us_hands_an_idempotent_request_back() {
        for (method, expect_not_sent) in [(Method::GET, true), (Method::POST, false)] {
            let (conn, server) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], 64).await;
            let (_, _, back) = read_all(call(conn, get(Method::GET, "/")).await.unwrap()).await;
            // The upstream closes; reuse the connection anyway, as if the close had not been
            // seen yet when the request was sent.
            server.await.unwrap();
            match (call(back.unwrap(), get(method.clone(), "/")).await, expect_not_sent) {
                (Err(SendError::NotSent(None)), true) | (Err(SendError::Reset(_)), false) => {}
                (other, _) => panic!("{method}: {other:?}"),
            }
        }
        // A fresh connection that closes without answering is a reset, whatever the method.
        let (conn, _server) = upstream(vec![b""], 64).await;
        assert!(matches!(call(conn, get(Method::GET, "/")).await, Err(SendError::Reset(_))));
    }

    #[tokio::test]
    async fn post_without_body_says_content_length_zero() {
        let (conn, server) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], 64).await;
        read_all(call(conn, get(Method::POST, "/submit")).await.unwrap()).await;
        let heads = server.await.unwrap();
        assert!(heads[0].contains("\r\ncontent-length: 0\r\n"), "{}", heads[0]);
    }

    /// The upstream learns which attempt this is from the proxy alone: a client's own
    /// `x-tripline-attempt` never reaches it, and the proxy's appears once.
    #[tokio::test]
    async fn the_attempt_number_replaces_a_clients_own() {
        let (conn, server) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], 64).await;
        let mut req = get(Method::GET, "/");
        req.headers_mut().insert("x-tripline-attempt", http::HeaderValue::from_static("7"));
        read_all(send(conn, &req, 2).await.map(|(resp, _)| resp).unwrap()).await;
        let heads = server.await.unwrap();
        assert_eq!(heads[0].matches("x-tripline-attempt").count(), 1, "{}", heads[0]);
        assert!(heads[0].contains("\r\nx-tripline-attempt: 2\r\n"), "{}", heads[0]);
    }
}
