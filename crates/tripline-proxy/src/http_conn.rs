//! One client connection on an HTTP listener: which protocol it speaks, then the server for it,
//! hyper's for HTTP/1.1 and Tripline's own for HTTP/2 ([`crate::h2_server`]).
//!
//! The protocol is told from the first bytes, peeked rather than read: an HTTP/1.1 request
//! stays in the socket for hyper, and only an HTTP/2 client's connection preface is consumed.
//! Bytes that are neither (a preface that goes wrong after `PRI `, or a request line whose
//! version is not HTTP/1.x) are an invalid HTTP/2 preface (RFC 9113 §3.4): GOAWAY
//! PROTOCOL_ERROR and the close. Anything else that is not the preface is HTTP/1.x, malformed
//! or not, for hyper to answer (a 400 for a malformed request).
//! The whole connection, the wait for those first bytes included, runs under `client_conns`'
//! supervision, so a client that connects and says nothing meets the request-head timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::access_log::{BodyEnd, Entry};
use crate::body::ResponseBody;
use crate::client_conns::Supervised;
use crate::h2_server::{self, Handling, PREFACE};
use crate::header_limits::HeaderLimits;
use crate::http_proxy::{self, ConnContext};
use crate::local_reply::Reply;
use crate::net_io::TcpIo;
use crate::reason::{Reason, REASON_HEADER};
use crate::tls::server::{ServerStream, ServerTls};
use crate::upload::ClientBody;

/// hyper's HTTP/1.1 server settings, shared by a listener's connections.
pub fn http1_builder(limits: HeaderLimits) -> http1::Builder {
    let mut b = http1::Builder::new();
    // The request-head timeout is kept by `client_conns` (no timer per request).
    b.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    // hyper answers 431 once its read buffer is full and the head is still incomplete. A head
    // arriving in one read may overshoot the buffer, so the exact size check is `serve_http1`'s;
    // this bounds what a connection buffers (twice the limit leaves room for the request line).
    b.max_buf_size((2 * limits.max_bytes() as usize).max(8192));
    // hyper's default is 100 fields on the stack; any other count costs it an allocation per
    // request, so it is only set when it differs.
    if limits.max_count() != 100 {
        b.max_headers(limits.max_count() as usize);
    }
    b
}

/// Serves one accepted client connection until it closes. `h2_only`: the listener speaks
/// HTTP/2 only (Istio's `HTTP2` and `GRPC` ports); an HTTP/1.x client gets `505 http2-only`.
/// `tls`: the listener terminates TLS; the handshake runs first, under the same supervision
/// (a client that stalls it meets the request-head timeout). `plaintext_too` (PERMISSIVE):
/// only a connection that begins with a TLS record is terminated.
pub async fn serve(
    http1: Arc<http1::Builder>,
    h2_only: bool,
    ctx: Arc<ConnContext>,
    stream: TcpStream,
    tls: Option<Arc<ServerTls>>,
    plaintext_too: bool,
) {
    let signal = ctx.conn.signal().clone();
    let detecting: Detecting = match tls {
        None => Box::pin(detect(stream, ctx.clone(), h2_only)),
        Some(tls) if plaintext_too => Box::pin(detect_either(stream, tls, ctx.clone(), h2_only)),
        Some(tls) => Box::pin(detect_tls(stream, tls, ctx.clone(), h2_only)),
    };
    let conn = Conn::Detecting(detecting, Some((http1, ctx)));
    let _ = Supervised::new(conn, signal, Conn::graceful_shutdown).await;
}

/// The proxy's request path as the HTTP/2 server's handler.
pub struct Proxying(Arc<ConnContext>);

impl h2_server::Handler for Proxying {
    type Body = ResponseBody;

    /// Inlined, so that the request path's future is built in its box rather than moved there.
    #[inline(always)]
    fn call(&mut self, request: Request<ClientBody>) -> Handling<ResponseBody> {
        Box::pin(http_proxy::handle(self.0.clone(), request))
    }

    /// The cut is counted and logged as `stream-idle-timeout`.
    fn idle_cut(&mut self, mut body: ResponseBody) {
        body.end_idle();
    }
}

/// An HTTP/1.1 request through the proxy's request path, unless its header fields are over
/// `--max-request-headers-kb`: then `431` and the connection closes, as hyper does for a head
/// that does not fit its buffer. (Inlined, so that the request path's future is built where
/// hyper keeps it rather than moved there.)
#[inline(always)]
fn serve_http1(
    ctx: Arc<ConnContext>,
    limits: HeaderLimits,
    req: Request<Incoming>,
) -> Http1Response<impl Future<Output = Result<Response<ResponseBody>, Infallible>>> {
    if limits.too_large(req.headers()) {
        return Http1Response::Refused(Some(Box::new(refuse_headers(&ctx, &req))));
    }
    Http1Response::Proxied(http_proxy::handle(ctx, req.map(ClientBody::Hyper)))
}

/// The `431 request-headers-too-large` of a request whose header fields are over the limits:
/// counted and logged like the other refusals before routing, and the connection closes.
#[cold]
fn refuse_headers(ctx: &ConnContext, req: &Request<Incoming>) -> Response<ResponseBody> {
    let started = (SystemTime::now(), Instant::now());
    let reason = Reason::RequestHeadersTooLarge;
    crate::listener::refuse_global(&ctx.shared, reason);
    let line = RequestLine {
        method: req.method().as_str().to_owned(),
        path: req.uri().path_and_query().map_or_else(String::new, |p| p.as_str().to_owned()),
        version: if req.version() == http::Version::HTTP_10 { "HTTP/1.0" } else { "HTTP/1.1" },
        host: req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    };
    log_refusal(ctx, started, &line, reason, true);
    let mut r = reason.response();
    r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    r
}

/// `serve_http1`'s answer: the refusal, or the request path's future polled where it is. (An
/// `async` wrapper around the request path cost a copy of its future and a poll layer on every
/// request: 270 instructions under callgrind.)
enum Http1Response<F> {
    /// Boxed: the rare case stays out of the common one's size.
    Refused(Option<Box<Response<ResponseBody>>>),
    Proxied(F),
}

impl<F: Future<Output = Result<Response<ResponseBody>, Infallible>>> Future for Http1Response<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the enum is never moved or reassigned once pinned: `Proxied`'s future is
        // only polled in place, through a pin that lives no longer than this call, and
        // `Refused` holds nothing that needs pinning.
        match unsafe { self.get_unchecked_mut() } {
            Http1Response::Refused(r) => Poll::Ready(Ok(*r.take().expect("polled after completion"))),
            Http1Response::Proxied(f) => unsafe { Pin::new_unchecked(f) }.poll(cx),
        }
    }
}

/// The first bytes being looked at (after the TLS handshake, on a TLS listener): the
/// connection, and whether it speaks HTTP/2.
type Detecting = Pin<Box<dyn Future<Output = io::Result<Transport>> + Send>>;

/// What a client connection turned out to be.
enum Transport {
    Plain(TcpStream, bool),
    Tls(Box<ServerStream>, bool),
}

/// A connection through its life: detecting (with what serving it will need), then served by
/// one of the two servers. The HTTP/2 server is the same code over either transport, each
/// its own type (no `match` per read or write on the plaintext path).
enum Conn {
    Detecting(Detecting, Option<(Arc<http1::Builder>, Arc<ConnContext>)>),
    Http1(Pin<Box<dyn Http1Conn>>),
    Http2(Box<h2_server::Connection<TcpIo, Proxying>>),
    Http2Tls(Box<h2_server::Connection<ServerStream, Proxying>>),
    Closed,
}

/// hyper's HTTP/1.1 connection future, whose service closure has no name.
trait Http1Conn: Future<Output = hyper::Result<()>> + Send {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Http1Conn for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send,
    S::Future: Send,
    S::ResBody: Send + 'static,
    <S::ResBody as http_body::Body>::Data: Send,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl Conn {
    /// Stops the connection gracefully: one still detecting is simply closed; hyper finishes a
    /// request in flight with `Connection: close`; HTTP/2 sends GOAWAY and drains its streams.
    fn graceful_shutdown(&mut self) {
        match self {
            Conn::Detecting(..) => *self = Conn::Closed,
            Conn::Http1(c) => c.as_mut().graceful_shutdown(),
            Conn::Http2(c) => c.graceful_shutdown(),
            Conn::Http2Tls(c) => c.graceful_shutdown(),
            Conn::Closed => {}
        }
    }
}

impl Future for Conn {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut *self {
                Conn::Detecting(detecting, parts) => {
                    let transport = match std::task::ready!(detecting.as_mut().poll(cx)) {
                        Ok(found) => found,
                        Err(e) => {
                            tracing::debug!(error = %e, "client connection ended before its first request was read");
                            *self = Conn::Closed;
                            continue;
                        }
                    };
                    let (http1, ctx) = parts.take().expect("detected once");
                    *self = match transport {
                        Transport::Plain(stream, false) => {
                            Conn::Http1(serve_hyper(&http1, ctx, TcpIo::new(stream)))
                        }
                        Transport::Plain(stream, true) => {
                            let config = h2_config(&ctx);
                            Conn::Http2(Box::new(h2_server::Connection::new(
                                TcpIo::new(stream),
                                Proxying(ctx),
                                config,
                            )))
                        }
                        Transport::Tls(stream, false) => Conn::Http1(serve_hyper(&http1, ctx, *stream)),
                        Transport::Tls(stream, true) => {
                            let config = h2_config(&ctx);
                            Conn::Http2Tls(Box::new(h2_server::Connection::new(
                                *stream,
                                Proxying(ctx),
                                config,
                            )))
                        }
                    };
                }
                Conn::Http1(c) => {
                    let _ = std::task::ready!(c.as_mut().poll(cx));
                    return Poll::Ready(());
                }
                Conn::Http2(c) => return Pin::new(&mut **c).poll(cx),
                Conn::Http2Tls(c) => return Pin::new(&mut **c).poll(cx),
                Conn::Closed => return Poll::Ready(()),
            }
        }
    }
}

/// The HTTP/2 server's settings for a connection.
fn h2_config(ctx: &ConnContext) -> h2_server::Config {
    h2_server::Config {
        peer: ctx.peer,
        stats: ctx.shared.global.clone(),
        limits: ctx.shared.header_limits.get(),
        stream_idle: ctx.shared.client_conns.stream_idle_config(),
    }
}

/// hyper's HTTP/1.1 server on a connection, with the proxy's request path as its service.
fn serve_hyper<I>(http1: &http1::Builder, ctx: Arc<ConnContext>, io: I) -> Pin<Box<dyn Http1Conn>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.shared.header_limits.get();
    let service = service_fn(move |req: Request<Incoming>| serve_http1(ctx.clone(), limits, req));
    Box::pin(http1.serve_connection(TokioIo::new(io), service).with_upgrades())
}

/// A PERMISSIVE listener's connection: TLS if its first byte begins a TLS handshake record
/// ([`crate::sni::starts_tls`]), plaintext otherwise. The byte is peeked, not read, within the
/// request-head timeout like the rest of the head.
async fn detect_either(
    stream: TcpStream,
    tls: Arc<ServerTls>,
    ctx: Arc<ConnContext>,
    h2_only: bool,
) -> io::Result<Transport> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 1 && crate::sni::starts_tls(first[0]) {
        detect_tls(stream, tls, ctx, h2_only).await
    } else {
        detect(stream, ctx, h2_only).await
    }
}

/// The TLS handshake, then what the client speaks: HTTP/2 when it chose `h2` in ALPN (or the
/// listener speaks nothing else), and its connection preface must follow; HTTP/1.1 otherwise.
/// A failed handshake is the client's (a certificate it lacks, versions or ciphers in common,
/// an SNI no server answers), counted by reason on the listener.
async fn detect_tls(
    stream: TcpStream,
    tls: Arc<ServerTls>,
    ctx: Arc<ConnContext>,
    h2_only: bool,
) -> io::Result<Transport> {
    let (mut stream, info) = match tls.accept(TcpIo::new(stream)).await {
        Ok(done) => done,
        Err(failure) => {
            ctx.listener.tls_stats.failed(failure);
            return Err(io::Error::other(format!("TLS handshake failed: {}", failure.as_str())));
        }
    };
    ctx.listener.tls_stats.handshake();
    let h2 = h2_only || stream.get_ref().1.alpn_protocol() == Some(crate::tls::server::H2);
    let _ = ctx.tls.set(info);
    if !h2 {
        return Ok(Transport::Tls(Box::new(stream), false));
    }
    match read_preface(&mut stream).await? {
        Detected::Http2 => Ok(Transport::Tls(Box::new(stream), true)),
        _ => {
            ctx.shared.global.http2.connection_error(h2::Reason::PROTOCOL_ERROR.into());
            if stream.write_all(&INVALID_PREFACE_GOAWAY).await.is_ok() {
                let _ = stream.shutdown().await;
            }
            Err(io::Error::new(io::ErrorKind::InvalidData, "not the HTTP/2 connection preface after ALPN h2"))
        }
    }
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detected {
    Http1,
    /// `PRI `: an HTTP/2 preface, to be read whole.
    Http2,
    /// Neither HTTP/1.x nor the HTTP/2 preface: an invalid preface (RFC 9113 §3.4).
    Invalid,
}

/// Tells HTTP/2 (prior knowledge) from HTTP/1.1, consuming the HTTP/2 connection preface.
/// `h2_only` (an HTTP/2-only listener): an HTTP/1.x client is answered with `505 http2-only`
/// (counted, and in the access log) and the connection closed, instead of being reset or left
/// waiting. Bytes that are neither get GOAWAY PROTOCOL_ERROR and the close.
async fn detect(mut stream: TcpStream, ctx: Arc<ConnContext>, h2_only: bool) -> io::Result<Transport> {
    let detected = match sniff(&stream).await? {
        Detected::Http2 => read_preface(&mut stream).await?,
        other => other,
    };
    match detected {
        Detected::Http2 => Ok(Transport::Plain(stream, true)),
        Detected::Http1 if !h2_only => Ok(Transport::Plain(stream, false)),
        Detected::Http1 => {
            let started = (SystemTime::now(), Instant::now());
            let reason = Reason::Http2Only;
            crate::listener::refuse_global(&ctx.shared, reason);
            let line = RequestLine::peek(&stream).await;
            let answered = refuse_http1_client(&mut stream, reason).await;
            log_refusal(&ctx, started, &line, reason, answered);
            if answered {
                linger(&mut stream).await;
            }
            Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP/1.x on an HTTP/2-only listener"))
        }
        Detected::Invalid => {
            ctx.shared.global.http2.connection_error(h2::Reason::PROTOCOL_ERROR.into());
            if stream.write_all(&INVALID_PREFACE_GOAWAY).await.is_ok() && stream.shutdown().await.is_ok() {
                linger(&mut stream).await;
            }
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "neither HTTP/1.x nor the HTTP/2 connection preface",
            ))
        }
    }
}

/// GOAWAY (last stream 0, PROTOCOL_ERROR): the answer to an invalid connection preface.
const INVALID_PREFACE_GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Reads the HTTP/2 connection preface, stopping at the first byte that differs from it.
async fn read_preface<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> io::Result<Detected> {
    let mut got = [0u8; PREFACE.len()];
    let mut n = 0;
    while n < got.len() {
        let read = stream.read(&mut got[n..]).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if got[n..n + read] != PREFACE[n..n + read] {
            return Ok(Detected::Invalid);
        }
        n += read;
    }
    Ok(Detected::Http2)
}

/// Whether bytes that are not the HTTP/2 preface can be HTTP/1.x: anything but a request line
/// with another version (`PRI * HTTP/2.0` aside). A malformed request is still HTTP/1.x, for
/// hyper to answer with 400; so is a request line not complete yet.
fn http1_or_invalid(first: &[u8]) -> Detected {
    let mut no_fields = [];
    match httparse::Request::new(&mut no_fields).parse(first) {
        Err(httparse::Error::Version) => Detected::Invalid,
        _ => Detected::Http1,
    }
}

/// Answers an HTTP/1.x client with `reason` and shuts the sending side; `false` if the
/// client was already gone.
async fn refuse_http1_client(stream: &mut TcpStream, reason: Reason) -> bool {
    let body = reason.body();
    let status = reason.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\n{REASON_HEADER}: {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        reason.as_str(),
        body.len()
    );
    stream.write_all(format!("{head}{body}").as_bytes()).await.is_ok() && stream.shutdown().await.is_ok()
}

/// Reads on (for up to a second and 64 KiB) after an answer, so closing with the request
/// unread does not reset the connection under the answer before the client has read it; a
/// client that keeps sending past that gets the reset.
async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n @ 1..) = stream.read(&mut sink).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// What the access log shows of a request refused before it was parsed: its request line and
/// `Host`, from the bytes already received (whatever of them is there and well formed).
#[derive(Default)]
struct RequestLine {
    method: String,
    path: String,
    version: &'static str,
    host: String,
}

impl RequestLine {
    async fn peek(stream: &TcpStream) -> RequestLine {
        let mut buf = [0u8; 2048];
        // The detection saw bytes (or the close), so this returns at once; bounded anyway.
        let peeked = tokio::time::timeout(Duration::from_millis(100), stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let complete = matches!(req.parse(&buf[..n]), Ok(httparse::Status::Complete(_)));
        let host = if complete {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        } else {
            None
        };
        RequestLine {
            method: req.method.unwrap_or("").to_owned(),
            path: req.path.unwrap_or("").to_owned(),
            version: match req.version {
                Some(0) => "HTTP/1.0",
                Some(_) => "HTTP/1.1",
                None => "",
            },
            host: host.unwrap_or_default(),
        }
    }
}

/// Writes the access log line of a connection refused before its request was parsed.
fn log_refusal(
    ctx: &ConnContext,
    started: (SystemTime, Instant),
    line: &RequestLine,
    reason: Reason,
    answered: bool,
) {
    let Some(log) = &ctx.shared.access_log else { return };
    let took = started.1.elapsed();
    let queued = log.write(&Entry {
        start: started.0,
        duration: took,
        response_head: took,
        downstream: ctx.peer,
        listener: &ctx.listener.name,
        protocol: line.version,
        method: &line.method,
        authority: &line.host,
        path: &line.path,
        target: &line.path,
        scheme: None,
        bytes_received: 0,
        upstream_duration: None,
        trace_id: None,
        headers: &[],
        status: reason.status().as_u16(),
        reason: Some(reason.as_str()),
        bytes_sent: if answered { reason.body().len() as u64 } else { 0 },
        body_end: if answered { BodyEnd::Complete } else { BodyEnd::DownstreamDisconnect },
        route: None,
        cluster: None,
        upstream: None,
        attempts: 0,
        request_id: None,
        fault: None,
        authz_denied: None,
        authz_audit: None,
        authz_shadow_denied: None,
        tls_sni: ctx.tls.get().and_then(|t| t.sni.as_deref()),
        downstream_identity: ctx.tls.get().and_then(|t| t.peer_identity.as_deref()),
    });
    if !queued {
        ctx.shared.global.access_log_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What the client's first bytes say (they stay in the socket). Four bytes decide HTTP/2 ("PRI "
/// is no HTTP/1.1 method); fewer that could still be either ("P", "PR", "PRI") are looked at
/// again after a short wait, since bytes left unread keep the socket readable. Otherwise the
/// request line, as far as it has arrived, tells HTTP/1.x from neither.
async fn sniff(stream: &TcpStream) -> io::Result<Detected> {
    let mut buf = [0u8; 512];
    let mut wait = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let k = n.min(4);
        if buf[..k] != PREFACE[..k] {
            return Ok(http1_or_invalid(&buf[..n]));
        }
        if k == 4 {
            return Ok(Detected::Http2);
        }
        // A client that closed its side after these bytes will send no more: they are not the
        // preface, and hyper answers them. (Without this it waited for the request-head
        // timeout.)
        if stream.ready(Interest::READABLE).await?.is_read_closed() {
            return Ok(Detected::Http1);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_http_1_x_are_an_invalid_preface() {
        // h2spec's http2/3.5/2.
        assert_eq!(http1_or_invalid(b"INVALID CONNECTION PREFACE\r\n\r\n"), Detected::Invalid);
        assert_eq!(http1_or_invalid(b"GET / HTTP/2.0\r\n\r\n"), Detected::Invalid);
        assert_eq!(http1_or_invalid(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"), Detected::Http1);
        assert_eq!(http1_or_invalid(b"GET / HTTP/1.0\r\n\r\n"), Detected::Http1);
        // Malformed or incomplete HTTP/1.x: hyper answers (400) or waits for the rest.
        assert_eq!(http1_or_invalid(b"GET /\x01 HTTP/1.1\r\n\r\n"), Detected::Http1);
        assert_eq!(http1_or_invalid(b"GET /a-long-path HT"), Detected::Http1);
        assert_eq!(http1_or_invalid(b"\x16\x03\x01\x02\x00"), Detected::Http1, "TLS gets hyper's 400");
    }
}
