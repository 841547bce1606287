//! Any bytes from an HTTP/1.1 client: the proxy must answer or close, never panic or hang, and
//! whatever it forwards must be one unambiguous, well-formed request (no request smuggling).
//!
//! Real sockets on loopback, all on one runtime with paused time (`tripline_fuzz::Harness`): a
//! proxy (the library, as one worker runs it) in front of a strict upstream. The client writes
//! the input's pieces (request lines, header fields, bodies, chunks, raw bytes; `Pause` sends
//! what came before and waits a millisecond), closes its side, and must see the proxy close
//! within `HANG` (`tripline_fuzz::within`). The upstream parses every request it gets and
//! panics, which is the finding, unless:
//! - the request line and head parse, the target is in origin form (or `*` for OPTIONS);
//! - there is exactly one non-empty `Host`;
//! - the body's length is told one way: one `Content-Length` of digits, or
//!   `Transfer-Encoding: chunked` alone, never both;
//! - no hop-by-hop field is left (`Keep-Alive`, `Proxy-Connection`, `TE` other than
//!   `trailers`, `Connection` other than `upgrade` with an `Upgrade`);
//! - a chunked body is well-formed.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tripline_fuzz::{Harness, Segments};

/// Longer than anything the proxy waits for by itself for a client that closed its side.
const HANG: Duration = Duration::from_secs(5);

#[derive(Arbitrary, Debug)]
enum Piece {
    RequestLine {
        method: Method,
        target: Target,
        version: Version,
    },
    Field(Name, Value),
    EndHead,
    /// That many body bytes (modulo 4 KiB).
    Body(u16),
    /// A chunk-size line, maybe with an extension.
    ChunkSize(u16, bool),
    Crlf,
    Raw(Vec<u8>),
    Pause,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Head,
    Put,
    Options,
    Connect,
    Lowercase,
    Spaced,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    Root,
    Query,
    Star,
    Absolute,
    AbsoluteOtherHost,
    AuthorityForm,
    Empty,
    Encoded,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Version {
    Http11,
    Http10,
    Http20,
    Http12,
    Missing,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    Host,
    HostUppercase,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    Te,
    KeepAlive,
    ProxyConnection,
    ForwardedFor,
    RequestId,
    Cookie,
    Trailer,
    SpaceBeforeColon,
    LeadingSpace,
    Empty,
    Long,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    Backend,
    BackendPort,
    OtherHost,
    Empty,
    Zero,
    Five,
    Negative,
    List,
    TwoLengths,
    Chunked,
    ChunkedIdentity,
    Identity,
    GzipChunked,
    Close,
    KeepAlive,
    UpgradeToken,
    NamesHost,
    NamesLength,
    NamesForwardedFor,
    CloseAndHost,
    Websocket,
    Continue,
    Trailers,
    Long,
    Controls,
    Folded,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Lowercase => "get",
            Method::Spaced => "G T",
        }
    }
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::Root => "/",
            Target::Query => "/p/a?q=1&r",
            Target::Star => "*",
            Target::Absolute => "http://backend.local/abs",
            Target::AbsoluteOtherHost => "http://other.host:8080/abs?x",
            Target::AuthorityForm => "backend.local:80",
            Target::Empty => "",
            Target::Encoded => "/%00/%zz",
        }
    }
}

impl Version {
    fn as_str(self) -> &'static str {
        match self {
            Version::Http11 => " HTTP/1.1",
            Version::Http10 => " HTTP/1.0",
            Version::Http20 => " HTTP/2.0",
            Version::Http12 => " HTTP/1.2",
            Version::Missing => "",
        }
    }
}

impl Name {
    fn as_str(self) -> &'static str {
        match self {
            Name::Host => "host",
            Name::HostUppercase => "HOST",
            Name::ContentLength => "content-length",
            Name::TransferEncoding => "transfer-encoding",
            Name::Connection => "connection",
            Name::Upgrade => "upgrade",
            Name::Expect => "expect",
            Name::Te => "te",
            Name::KeepAlive => "keep-alive",
            Name::ProxyConnection => "proxy-connection",
            Name::ForwardedFor => "x-forwarded-for",
            Name::RequestId => "x-request-id",
            Name::Cookie => "cookie",
            Name::Trailer => "trailer",
            Name::SpaceBeforeColon => "host ",
            Name::LeadingSpace => " host",
            Name::Empty => "",
            Name::Long => "x-a-header-name-long-enough-to-count-towards-the-head-size-limit-when-repeated",
        }
    }
}

impl Value {
    fn as_str(self) -> &'static str {
        match self {
            Value::Backend => "backend.local",
            Value::BackendPort => "backend.local:80",
            Value::OtherHost => "other.host",
            Value::Empty => "",
            Value::Zero => "0",
            Value::Five => "5",
            Value::Negative => "-1",
            Value::List => "5, 5",
            Value::TwoLengths => "5,6",
            Value::Chunked => "chunked",
            Value::ChunkedIdentity => "chunked, identity",
            Value::Identity => "identity",
            Value::GzipChunked => "gzip, chunked",
            Value::Close => "close",
            Value::KeepAlive => "keep-alive",
            Value::UpgradeToken => "upgrade",
            Value::NamesHost => "host",
            Value::NamesLength => "content-length",
            Value::NamesForwardedFor => "x-forwarded-for",
            Value::CloseAndHost => "close, host, content-length",
            Value::Websocket => "websocket",
            Value::Continue => "100-continue",
            Value::Trailers => "trailers",
            Value::Long => {
                "a-value-long-enough-to-count-towards-the-head-size-limit-when-it-is-repeated-often"
            }
            Value::Controls => "a\u{1}b",
            Value::Folded => "a\r\n b",
        }
    }
}

/// The client's bytes, split where it pauses.
fn encode(pieces: &[Piece]) -> Segments {
    let mut out = Segments::default();
    for piece in pieces.iter().take(256) {
        match piece {
            Piece::RequestLine { method, target, version } => out
                .bytes(format!("{} {}{}\r\n", method.as_str(), target.as_str(), version.as_str()).as_bytes()),
            Piece::Field(n, v) => out.field(n.as_str(), v.as_str()),
            Piece::EndHead | Piece::Crlf => out.bytes(b"\r\n"),
            Piece::Body(n) => out.fill(usize::from(*n % 4096), b'b'),
            Piece::ChunkSize(n, ext) => out.chunk_size(*n, *ext),
            Piece::Raw(bytes) => out.bytes(bytes),
            Piece::Pause => out.pause(),
        }
    }
    out
}

/// Reads more into `buf`; false at end of stream or on an error.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// What a forwarded request head says about its body.
enum Framing {
    Length(usize),
    Chunked,
}

/// Checks a forwarded request head (see the module doc); panics on a violation.
fn check_head(req: &httparse::Request<'_, '_>, raw: &[u8]) -> Framing {
    let show = || String::from_utf8_lossy(raw).into_owned();
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    assert!(
        path.starts_with('/') || (path == "*" && method == "OPTIONS"),
        "forwarded a request target not in origin form: {}",
        show()
    );
    let values = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .collect()
    };
    let hosts = values("host");
    assert!(hosts.len() == 1 && !hosts[0].is_empty(), "forwarded without exactly one Host: {}", show());
    let lengths = values("content-length");
    let codings = values("transfer-encoding");
    assert!(
        lengths.is_empty() || codings.is_empty(),
        "forwarded both Content-Length and Transfer-Encoding: {}",
        show()
    );
    assert!(lengths.len() <= 1 && codings.len() <= 1, "forwarded a repeated framing field: {}", show());
    for name in ["keep-alive", "proxy-connection"] {
        assert!(values(name).is_empty(), "forwarded the hop-by-hop field {name}: {}", show());
    }
    assert!(values("te").iter().all(|v| v.eq_ignore_ascii_case("trailers")), "forwarded TE: {}", show());
    let connection = values("connection");
    let upgrade = !values("upgrade").is_empty();
    assert!(
        connection.is_empty()
            || (upgrade && connection.len() == 1 && connection[0].eq_ignore_ascii_case("upgrade")),
        "forwarded Connection (or Upgrade without it): {}",
        show()
    );
    assert!(!upgrade || !connection.is_empty(), "forwarded Upgrade without Connection: {}", show());
    if let Some(len) = lengths.first() {
        assert!(
            !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()),
            "forwarded a bad Content-Length: {}",
            show()
        );
        return Framing::Length(
            len.parse().unwrap_or_else(|_| panic!("forwarded a huge Content-Length: {}", show())),
        );
    }
    if let Some(coding) = codings.first() {
        assert!(coding.eq_ignore_ascii_case("chunked"), "forwarded a coding other than chunked: {}", show());
        return Framing::Chunked;
    }
    Framing::Length(0)
}

/// Reads a chunked body off the front of `buf`, reading more as needed; panics if it is not
/// well-formed. False if the connection ended first (the client went away: not a finding).
async fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            assert!(buf.len() < 4096, "forwarded a chunk-size line over 4 KiB");
            if !fill(s, buf).await {
                return false;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|_| panic!("forwarded a malformed chunk-size line: {line:?}"));
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if !fill(s, buf).await {
                        return false;
                    }
                };
                let empty = end == 0;
                buf.drain(..end + 2);
                if empty {
                    return true;
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(s, buf).await {
                return false;
            }
        }
        assert_eq!(&buf[size..size + 2], b"\r\n", "forwarded a chunk not followed by CRLF");
        buf.drain(..size + 2);
    }
}

/// The strict upstream: checks each request and answers `200 ok`, keeping the connection.
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let (framing, used) = loop {
                    let mut fields = [httparse::EMPTY_HEADER; 128];
                    let mut req = httparse::Request::new(&mut fields);
                    match req.parse(&buf) {
                        Ok(httparse::Status::Complete(n)) => break (check_head(&req, &buf[..n]), n),
                        Ok(httparse::Status::Partial) => {}
                        Err(e) => {
                            panic!("forwarded a malformed head ({e}): {:?}", String::from_utf8_lossy(&buf))
                        }
                    }
                    if !fill(&mut s, &mut buf).await {
                        return;
                    }
                };
                buf.drain(..used);
                match framing {
                    Framing::Length(n) => {
                        while buf.len() < n {
                            if !fill(&mut s, &mut buf).await {
                                return;
                            }
                        }
                        buf.drain(..n);
                    }
                    Framing::Chunked => {
                        if !read_chunked(&mut s, &mut buf).await {
                            return;
                        }
                    }
                }
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                    return;
                }
            }
        });
    }
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| Harness::start(tripline_fuzz::ONE_UPSTREAM, upstream))
}

async fn exchange(parts: Segments) {
    // Loopback connects do not fail while the proxy lives.
    let Ok(s) = TcpStream::connect(harness().proxy()).await else { return };
    let _ = s.set_nodelay(true);
    let (mut rd, mut wr) = s.into_split();
    // Written while reading, so that neither side blocks on a full socket; the proxy may close
    // before reading everything.
    let write = async move {
        if parts.write_to(&mut wr).await {
            let _ = wr.shutdown().await;
        }
    };
    let read = async {
        let mut chunk = vec![0u8; 64 * 1024];
        let closed = async { while matches!(rd.read(&mut chunk).await, Ok(n) if n > 0) {} };
        if tripline_fuzz::within(HANG, closed).await.is_none() {
            panic!("the proxy kept the connection open {HANG:?} after the client closed its side");
        }
    };
    tokio::join!(write, read);
}

fuzz_target!(|pieces: Vec<Piece>| {
    harness().run(exchange(encode(&pieces)));
});
