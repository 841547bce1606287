//! Any HTTP/1.1 response from an upstream, well-formed or not, whole or cut, slow or fast:
//! the proxy's upstream clients must give a response or an error, and a body that ends or
//! fails, never panic or hang, and must never hand a later request a response that was not
//! meant for it.
//!
//! In memory: the client side of an upstream connection as the proxy's pool makes it
//! (`tripline_proxy::endpoint`: the lean client of `endpoint::h1` for a `GET` or `HEAD`,
//! hyper's client for a `POST` with a body or an upgrade) over a `tokio::io::duplex` pipe
//! (`UpstreamIo::Memory`), on a single-threaded runtime with tokio's paused time. At the other
//! end, an upstream plays the input's script of response pieces to the request for `/fuzz`
//! and answers `/canary` correctly. The client sends one request and reads the body to its end
//! or its error, all within `HANG` (a hang is the finding). A response must be one the proxy
//! can pass on as it is: at most one `Content-Length`, of digits, never beside
//! `Transfer-Encoding`, and a complete body of that length (`framing`). Then, if the input asks and the
//! client says the connection can carry another request (as the pool asks it: the body ended,
//! the connection is idle and usable), a canary request goes on the same connection: had the
//! client left bytes of the fuzzed response on it (a desync), the canary would get them. The
//! canary must get the upstream's own answer, or an error. No sockets, no proxy, no router: a
//! run goes through thousands of connections a second (docs/testing.md has the figures). The
//! proxy around these clients (its 502s, its pool) is the end-to-end tests' to drive.
#![no_main]

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body::Body as _;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tripline_fuzz::Segments;
use tripline_proxy::endpoint::body::{RequestBody, UpstreamBody};
use tripline_proxy::endpoint::io::UpstreamIo;
use tripline_proxy::endpoint::pool::{hyper_h1, Conn, ConnGuard, H1Link, Reusable};

/// Longer than anything the clients or the upstream wait for by themselves (on paused time).
const HANG: Duration = Duration::from_secs(5);
/// How long the upstream keeps a connection open for another request after a script that
/// leaves it open: a keep-alive upstream with a short idle timeout.
const IDLE: Duration = Duration::from_millis(20);
/// The pipe's buffer each way: a socket's worth, so a long script waits for the client.
const PIPE: usize = 64 * 1024;

#[derive(Arbitrary, Debug)]
struct Input {
    request: Req,
    script: Vec<Piece>,
    /// After its script, the upstream waits for another request on the connection (else it
    /// closes its side).
    keep_open: bool,
    canary: bool,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Req {
    Get,
    Head,
    Post,
    ExpectContinue,
    Upgrade,
}

#[derive(Arbitrary, Debug, Clone)]
enum Piece {
    StatusLine {
        version: Version,
        code: Code,
        reason: bool,
    },
    /// A whole well-formed response with a body of that length: two in a row are an answer
    /// and an unsolicited one, which a pooled connection must not deliver to the next request.
    Response {
        code: Code,
        length: u8,
    },
    Field(Name, Value),
    EndHead,
    /// That many body bytes.
    Body(u16),
    /// A chunk-size line, maybe with an extension.
    ChunkSize(u16, bool),
    Crlf,
    Raw(Vec<u8>),
    /// Sends what came before and waits a millisecond, so the proxy parses a part.
    Pause,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Version {
    Http11,
    Http10,
    Http2,
    Lowercase,
    Missing,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Code {
    Ok,
    Continue,
    SwitchingProtocols,
    EarlyHints,
    NoContent,
    NotModified,
    ServerError,
    Any(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    Upgrade,
    Trailer,
    SetCookie,
    ProxyConnection,
    Date,
    Spaced,
    Empty,
    Long,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    Zero,
    Two,
    Six,
    Large,
    Negative,
    List,
    Overflow,
    Chunked,
    GzipChunked,
    ChunkedGzip,
    Close,
    KeepAlive,
    UpgradeToken,
    Websocket,
    Long,
    Controls,
    Folded,
    Empty,
}

impl Version {
    fn as_str(self) -> &'static str {
        match self {
            Version::Http11 => "HTTP/1.1 ",
            Version::Http10 => "HTTP/1.0 ",
            Version::Http2 => "HTTP/2 ",
            Version::Lowercase => "http/1.1 ",
            Version::Missing => "",
        }
    }
}

impl Code {
    fn number(self) -> u16 {
        match self {
            Code::Ok => 200,
            Code::Continue => 100,
            Code::SwitchingProtocols => 101,
            Code::EarlyHints => 103,
            Code::NoContent => 204,
            Code::NotModified => 304,
            Code::ServerError => 500,
            Code::Any(n) => n % 1000,
        }
    }
}

impl Name {
    fn as_str(self) -> &'static str {
        match self {
            Name::ContentLength => "content-length",
            Name::TransferEncoding => "transfer-encoding",
            Name::Connection => "connection",
            Name::KeepAlive => "keep-alive",
            Name::Upgrade => "upgrade",
            Name::Trailer => "trailer",
            Name::SetCookie => "set-cookie",
            Name::ProxyConnection => "proxy-connection",
            Name::Date => "date",
            Name::Spaced => "x bad",
            Name::Empty => "",
            Name::Long => "x-a-header-name-long-enough-to-count-towards-the-head-size-limit-when-repeated",
        }
    }
}

impl Value {
    fn as_str(self) -> &'static str {
        match self {
            Value::Zero => "0",
            Value::Two => "2",
            Value::Six => "6",
            Value::Large => "100000",
            Value::Negative => "-1",
            Value::List => "2, 2",
            Value::Overflow => "18446744073709551616",
            Value::Chunked => "chunked",
            Value::GzipChunked => "gzip, chunked",
            Value::ChunkedGzip => "chunked, gzip",
            Value::Close => "close",
            Value::KeepAlive => "keep-alive",
            Value::UpgradeToken => "upgrade",
            Value::Websocket => "websocket",
            Value::Long => {
                "a-value-long-enough-to-count-towards-the-head-size-limit-when-it-is-repeated-often"
            }
            Value::Controls => "a\u{1}b",
            Value::Folded => "a\r\n b",
            Value::Empty => "",
        }
    }
}

/// The script as the bytes to write, split where it pauses.
fn encode(script: &[Piece]) -> Segments {
    let mut out = Segments::default();
    for piece in script.iter().take(256) {
        match piece {
            Piece::StatusLine { version, code, reason } => {
                out.bytes(version.as_str().as_bytes());
                out.bytes(format!("{:03}", code.number()).as_bytes());
                out.bytes(if *reason { b" Reason\r\n" } else { b"\r\n" });
            }
            Piece::Response { code, length } => {
                out.bytes(
                    format!("HTTP/1.1 {:03} R\r\ncontent-length: {length}\r\n\r\n", code.number()).as_bytes(),
                );
                out.fill(usize::from(*length), b'r');
            }
            Piece::Field(n, v) => out.field(n.as_str(), v.as_str()),
            Piece::EndHead | Piece::Crlf => out.bytes(b"\r\n"),
            Piece::Body(n) => out.fill(usize::from(*n), b'b'),
            Piece::ChunkSize(n, ext) => out.chunk_size(*n, *ext),
            Piece::Raw(bytes) => out.bytes(bytes),
            Piece::Pause => out.pause(),
        }
    }
    out
}

const CANARY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ncanary";

/// Reads one request head (and its `content-length` body) from `s`; returns its path.
/// `None` when the connection closed, failed, or stayed quiet for `wait`.
async fn read_request<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>, wait: Duration) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let body: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + body {
                    let path = buf.split(|&b| b == b' ').nth(1).unwrap_or_default().to_vec();
                    buf.drain(..end + body);
                    return Some(path);
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

/// The upstream end of the pipe: answers `/canary` correctly and anything else with `script`
/// (once; a second request for it gets nothing and the connection closes).
/// Says on `played` when the script is written (or could not be).
async fn upstream(
    mut s: DuplexStream,
    script: Segments,
    keep_open: bool,
    played: tokio::sync::oneshot::Sender<()>,
) {
    let mut buf = Vec::new();
    let mut wait = HANG;
    let mut script = Some((script, played));
    while let Some(path) = read_request(&mut s, &mut buf, wait).await {
        wait = IDLE;
        if path == b"/canary" {
            if s.write_all(CANARY).await.is_err() {
                return;
            }
            continue;
        }
        let Some((script, played)) = script.take() else { return };
        let ok = script.write_to(&mut s).await;
        let _ = played.send(());
        if !(ok && keep_open) {
            let _ = s.shutdown().await;
            // Reads on until the client closes, as a server that closes its side only.
            let mut sink = [0u8; 4096];
            let drain = async { while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(HANG, drain).await;
            return;
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    })
}

fn request(req: Req, path: &'static str) -> Request<RequestBody> {
    let (method, body) = match req {
        Req::Get => (Method::GET, None),
        Req::Head => (Method::HEAD, None),
        Req::Post | Req::ExpectContinue => (Method::POST, Some(Bytes::from_static(b"hello"))),
        Req::Upgrade => (Method::GET, None),
    };
    let body = match body {
        Some(b) => RequestBody::Replay(VecDeque::from([b]), None),
        None => RequestBody::Empty,
    };
    let mut r = Request::builder().method(method).uri(path).body(body).expect("request");
    let h = r.headers_mut();
    h.insert(header::HOST, HeaderValue::from_static("backend.local"));
    match req {
        Req::Post => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        }
        Req::ExpectContinue => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        }
        Req::Upgrade => {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        Req::Get | Req::Head => {}
    }
    r
}

/// A connection as the pool opens it for `req`: the lean client for a request it can carry,
/// hyper's otherwise. `None` if hyper's handshake failed.
async fn open(io: UpstreamIo, req: &Request<RequestBody>) -> Option<Conn> {
    if tripline_proxy::endpoint::h1::is_simple(req) {
        return Some(Conn::H1(H1Link::Raw(tripline_proxy::endpoint::h1::RawConn::new(
            io,
            ConnGuard::detached(),
        ))));
    }
    let tx = hyper_h1(io, ConnGuard::detached()).await.ok()?;
    Some(Conn::H1(H1Link::Hyper { tx, uses: 0, home: 0 }))
}

/// Sends `req` on `conn` and reads the response body to its end or its error. The response
/// (status and body) if it all came, and the connection if the client gives it back for
/// another request.
async fn exchange(conn: Conn, req: Request<RequestBody>) -> (Option<(u16, Vec<u8>)>, Option<H1Link>) {
    let bodiless = req.method() == Method::HEAD;
    let (resp, reusable) = match conn.send(req, 1).await {
        Ok(sent) => sent,
        Err(_) => return (None, None),
    };
    let status = resp.status().as_u16();
    // A 1xx or 204 response's Content-Length is dropped later (`http_proxy::client_head`).
    let length = if matches!(status, 100..=199 | 204) { None } else { framing(resp.headers()) };
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let complete = loop {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            None => break true,
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    data.extend_from_slice(d);
                }
            }
            Some(Err(_)) => break false,
        }
    };
    let bodiless = bodiless || matches!(status, 100..=199 | 204 | 304);
    if let (true, false, Some(length)) = (complete, bodiless, length) {
        assert_eq!(data.len() as u64, length, "a complete body of another length than its Content-Length");
    }
    // As the proxy gives a connection back: the lean client's travels in its body.
    let back = match (body, reusable) {
        (UpstreamBody::H1(mut stream), _) => stream.take_reusable().map(|c| H1Link::Raw(c)),
        (_, Some(Reusable(link))) if complete => Some(link),
        _ => None,
    };
    (complete.then_some((status, data)), back)
}

/// The response's `Content-Length`, after checking that the proxy's downstream side can write
/// the head as it is: one `Content-Length` of digits at most, never beside `Transfer-Encoding`.
/// (hyper's server closes the connection without a word on anything else: before 2acfde8, the
/// proxy's clients got no response at all for such upstream answers.)
fn framing(headers: &http::HeaderMap) -> Option<u64> {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let length = lengths.next()?;
    assert!(lengths.next().is_none(), "more than one Content-Length passed on: {headers:?}");
    assert!(
        !headers.contains_key(header::TRANSFER_ENCODING),
        "Content-Length beside Transfer-Encoding: {headers:?}"
    );
    let digits = length.as_bytes();
    assert!(
        !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        "Content-Length {length:?} passed on"
    );
    Some(
        std::str::from_utf8(digits)
            .ok()?
            .parse()
            .expect("a Content-Length that does not fit 64 bits passed on"),
    )
}

/// The connection, if it can take another request as the pool checks an idle one: the lean
/// client's must be usable (nothing came while idle), hyper's ready.
async fn reuse(link: H1Link) -> Option<Conn> {
    match link {
        H1Link::Raw(mut c) => c.is_usable().then_some(Conn::H1(H1Link::Raw(c))),
        H1Link::Hyper { mut tx, uses, home } => {
            tx.ready().await.is_ok().then_some(Conn::H1(H1Link::Hyper { tx, uses, home }))
        }
    }
}

async fn run(input: Input) {
    let (client, server) = tokio::io::duplex(PIPE);
    let (played, script_played) = tokio::sync::oneshot::channel();
    let up = tokio::spawn(upstream(server, encode(&input.script), input.keep_open, played));
    let req = request(input.request, "/fuzz");
    let conn = open(UpstreamIo::Memory(client), &req).await;
    let Some(conn) = conn else { return };
    let Ok((_, back)) = tokio::time::timeout(HANG, exchange(conn, req)).await else {
        panic!("the client hung for {HANG:?} on the response");
    };
    // No client can tell bytes that have not come yet from none: before the canary, the
    // upstream has written all of its script, or filled the pipe (a client that stopped
    // reading), or given up.
    let _ = tokio::time::timeout(HANG * 2, script_played).await;
    let back = match back.filter(|_| input.canary) {
        Some(link) => reuse(link).await,
        None => None,
    };
    if let Some(conn) = back {
        let canary = tokio::time::timeout(HANG, exchange(conn, request(Req::Get, "/canary"))).await;
        match canary {
            Err(_) => panic!("the client hung for {HANG:?} on the canary's response"),
            Ok((Some((status, body)), _)) => assert!(
                status == 200 && body == b"canary",
                "the canary request got another response: {status} {:?}",
                String::from_utf8_lossy(&body)
            ),
            // An error is the client noticing something wrong: no desync.
            Ok((None, _)) => {}
        }
    }
    // With the client's side gone, the upstream ends (its reads see the pipe close).
    if tokio::time::timeout(HANG * 3, up).await.is_err() {
        panic!("the upstream never saw the connection close");
    }
}

fuzz_target!(|input: Input| {
    runtime().block_on(run(input));
});
