//! Any HTTP/1.1 response from an upstream, well-formed or not, whole or cut, slow or fast:
//! the proxy must answer its client (a response head, even if only a 502) and close, never
//! panic or hang, and must never hand a later request a response that was not meant for it.
//!
//! Real sockets on loopback, all on one runtime with paused time (`tripline_fuzz::Harness`): a
//! proxy (the library, as one worker runs it) in front of an upstream that plays the input's
//! script of response pieces to each request for `/fuzz`, and answers `/canary` correctly. The
//! client sends one request (a `GET` or `HEAD`, which take the lean client in `upstream::h1`;
//! a `POST` with a body or an upgrade, which take hyper's), reads until the proxy closes
//! (within `HANG`, checked by `tripline_fuzz::within`), and waits for the upstream to finish
//! its script. Then, if the input asks, it sends a canary request on a new connection: if the
//! proxy put the fuzzed connection back in its pool with bytes left on it (a desync), the
//! canary would get them. The canary must get the upstream's own answer, or one the proxy made
//! (`x-tripline-reason`).
#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tripline_fuzz::{Harness, Segments};

/// Longer than anything the proxy or the upstream waits for by itself (on the harness's paused
/// clock, as `IDLE` and the script's pauses).
const HANG: Duration = Duration::from_secs(5);
/// How long the upstream keeps a connection open for another request after a script that
/// leaves it open: a keep-alive upstream with a short idle timeout.
const IDLE: Duration = Duration::from_millis(20);

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

/// The script the upstream plays to requests for `/fuzz`, and how many plays are running.
struct Stage {
    script: Mutex<Arc<Segments>>,
    keep_open: std::sync::atomic::AtomicBool,
    playing: AtomicUsize,
}

fn stage() -> &'static Stage {
    static STAGE: OnceLock<Stage> = OnceLock::new();
    STAGE.get_or_init(|| Stage {
        script: Mutex::new(Arc::new(Segments::default())),
        keep_open: false.into(),
        playing: AtomicUsize::new(0),
    })
}

const CANARY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ncanary";

/// Reads one request head (and its `content-length` body) from `s`; returns its path.
/// `None` when the connection closed, failed, or stayed quiet for `wait`.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, wait: Duration) -> Option<Vec<u8>> {
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

/// The upstream: answers `/canary` correctly and anything else with the current script.
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        // Each write goes out at once. With Nagle's algorithm a response written after an
        // earlier one waits for the proxy's acknowledgement, which a delayed ACK sends only
        // with the proxy's next request: bytes that arrive after a request are its answer to
        // any HTTP/1.1 client, so the canary check would report a desync that is not one.
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut wait = HANG;
            while let Some(path) = read_request(&mut s, &mut buf, wait).await {
                wait = IDLE;
                if path == b"/canary" {
                    if s.write_all(CANARY).await.is_err() {
                        return;
                    }
                    continue;
                }
                let stage = stage();
                stage.playing.fetch_add(1, Ordering::SeqCst);
                let script = stage.script.lock().expect("script lock").clone();
                let ok = script.write_to(&mut s).await;
                let keep = ok && stage.keep_open.load(Ordering::SeqCst);
                if !keep {
                    let _ = s.shutdown().await;
                }
                stage.playing.fetch_sub(1, Ordering::SeqCst);
                if !keep {
                    // Reads on until the proxy closes: closing with unread bytes would send a
                    // TCP reset, which could destroy what the proxy has not read yet.
                    let mut sink = [0u8; 4096];
                    let drain = async { while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {} };
                    let _ = tokio::time::timeout(HANG, drain).await;
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

fn request(req: Req) -> &'static [u8] {
    match req {
        Req::Get => b"GET /fuzz HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n",
        Req::Head => b"HEAD /fuzz HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n",
        Req::Post => b"POST /fuzz HTTP/1.1\r\nhost: backend.local\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        Req::ExpectContinue => {
            b"POST /fuzz HTTP/1.1\r\nhost: backend.local\r\ncontent-length: 5\r\nexpect: 100-continue\r\nconnection: close\r\n\r\nhello"
        }
        Req::Upgrade => {
            b"GET /fuzz HTTP/1.1\r\nhost: backend.local\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\r\n"
        }
    }
}

/// Sends `req` on a new connection and reads until the proxy closes it (within `HANG`).
async fn exchange(req: &[u8]) -> Vec<u8> {
    // Loopback connects do not fail while the proxy lives.
    let Ok(mut s) = TcpStream::connect(harness().proxy()).await else {
        return b"HTTP/1.1 000 no connect".to_vec();
    };
    let _ = s.set_nodelay(true);
    let _ = s.write_all(req).await;
    let mut out = Vec::new();
    let read = async {
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
    };
    if tripline_fuzz::within(HANG, read).await.is_none() {
        panic!("the proxy kept the client connection open {HANG:?} after the request");
    }
    out
}

fn has_status_line(resp: &[u8]) -> bool {
    resp.len() >= 12 && resp.starts_with(b"HTTP/1.1 ") && resp[9..12].iter().all(u8::is_ascii_digit)
}

async fn run(input: Input) {
    let stage = stage();
    *stage.script.lock().expect("script lock") = Arc::new(encode(&input.script));
    stage.keep_open.store(input.keep_open, Ordering::SeqCst);
    let resp = exchange(request(input.request)).await;
    assert!(
        has_status_line(&resp),
        "the proxy closed without a response: {:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(200)])
    );
    // Every play of the script (a retry makes a second one) is written before the canary goes.
    let played = async {
        while stage.playing.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    assert!(
        tripline_fuzz::within(HANG, played).await.is_some(),
        "the upstream could not write its script for {HANG:?}"
    );
    if input.canary {
        let resp =
            exchange(b"GET /canary HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n").await;
        let text = String::from_utf8_lossy(&resp);
        let made_by_proxy = text.to_ascii_lowercase().contains("\r\nx-tripline-reason:");
        let canary = text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\ncanary");
        assert!(made_by_proxy || canary, "the canary request got another response: {text:?}");
    }
}

fuzz_target!(|input: Input| {
    harness().run(run(input));
});
