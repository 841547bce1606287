//! Any sequence of HTTP/2 frames from a client: Tripline's own HTTP/2 server
//! (`tripline_proxy::h2_server`) must answer or close, never panic, hang or stop serving.
//!
//! Real sockets on loopback, as in production: a proxy (the library, with deferred writes, on a
//! single-threaded runtime like a worker's) in front of a tiny upstream, both on a background
//! thread. Each input is a list of frame operations, encoded into well-formed frames (stream
//! ids, HPACK literals, padding, CONTINUATION splits) so that the fuzzer reaches the stream
//! states behind the frame parser, plus raw frames for everything else. `Pause` splits the input:
//! the client sends what came before and reads until those streams are answered (so that later
//! frames meet responses in progress: window updates, resets, SETTINGS changes). Then it closes
//! its side and must see the proxy close the connection within `HANG`. A panic anywhere aborts
//! (libFuzzer's panic hook), which is the finding.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longer than anything the server waits for by itself (its linger and drain timers are 1 s).
const HANG: Duration = Duration::from_secs(5);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Arbitrary, Debug)]
enum Op {
    /// A request head, maybe padded, maybe with a priority, maybe split into CONTINUATIONs.
    Headers {
        stream: StreamRef,
        head: Head,
        end_stream: bool,
        pad: Option<u8>,
        priority: bool,
        split: Option<u8>,
    },
    /// Trailers: a header block without pseudo-headers.
    Trailers {
        stream: StreamRef,
        fields: Vec<(Name, Value)>,
        end_stream: bool,
    },
    /// `len` is taken modulo the largest frame a client may send by default (16 KiB) unless
    /// `oversize`: a frame too large is a connection error, which would end most inputs early.
    Data {
        stream: StreamRef,
        len: u16,
        oversize: bool,
        end_stream: bool,
        pad: Option<u8>,
    },
    /// On a stream, or (None) the connection. Often small: a large one overflows the window.
    WindowUpdate {
        stream: Option<StreamRef>,
        increment: Increment,
    },
    Reset {
        stream: StreamRef,
        code: u32,
    },
    Settings {
        ack: bool,
        params: Vec<Setting>,
    },
    Ping {
        ack: bool,
        data: u64,
    },
    Priority {
        stream: StreamRef,
        depends_on: StreamRef,
        weight: u8,
    },
    GoAway {
        last: u8,
        code: u32,
    },
    /// `n` well-formed requests on fresh streams, each reset by the client at once if `reset`:
    /// what the rapid-reset rule is for (100 streams, more than half of them reset).
    Burst {
        n: u8,
        reset: bool,
    },
    /// Anything at all, on any stream id (even, zero, huge).
    Raw {
        ty: u8,
        flags: u8,
        id: u32,
        payload: Vec<u8>,
    },
    /// Send what came before and wait for the answers (see `settle`) before going on.
    Pause,
}

/// Which stream an operation is on.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum StreamRef {
    /// The next unused client id: a new stream.
    Fresh,
    /// One of the last few fresh ids (0 the latest): streams open, ended or reset.
    Recent(u8),
    /// Any id at all: even, zero, skipped ahead, the maximum.
    Any(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Increment {
    Small(u16),
    Any(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Setting {
    HeaderTableSize(u32),
    EnablePush(bool),
    MaxConcurrentStreams(u32),
    InitialWindowSize(u16),
    /// Valid sizes, 16 KiB to 16 MiB.
    MaxFrameSize(u16),
    MaxHeaderListSize(u32),
    /// Any id and value: out-of-range values and unknown ids.
    Any(u16, u32),
}

impl Setting {
    fn pair(self) -> (u16, u32) {
        match self {
            Setting::HeaderTableSize(v) => (1, v),
            Setting::EnablePush(v) => (2, u32::from(v)),
            Setting::MaxConcurrentStreams(v) => (3, v),
            Setting::InitialWindowSize(v) => (4, u32::from(v)),
            Setting::MaxFrameSize(v) => (5, 16_384 + u32::from(v) * 255),
            Setting::MaxHeaderListSize(v) => (6, v),
            Setting::Any(k, v) => (k, v),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Head {
    method: Method,
    path: Path,
    /// A pseudo-header left out (half the time none: the request is well-formed more often).
    omit: Option<Pseudo>,
    fields: Vec<(Name, Value)>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Pseudo {
    Method,
    Scheme,
    Path,
    Authority,
}

/// What the client sends before its operations: its SETTINGS, and (as most clients do) a
/// larger connection window, so that a response can be held by its stream's window alone.
#[derive(Arbitrary, Debug)]
struct Input {
    settings: Vec<Setting>,
    connection_window: Option<Increment>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Head,
    Connect,
    Options,
    Bogus,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Path {
    Root,
    /// The upstream's answer for each of these: see `response`.
    Big,
    Chunked,
    Cut,
    NoContent,
    UntilClose,
    Star,
    Empty,
    Relative,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    ContentLength,
    ContentType,
    Te,
    Connection,
    Upgrade,
    Host,
    Cookie,
    Expect,
    XRequestId,
    Uppercase,
    PseudoPath,
    PseudoUnknown,
    Empty,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    Zero,
    Small,
    Huge,
    NotANumber,
    Trailers,
    Close,
    Continue,
    Long,
    Controls,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Head => "HEAD",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Bogus => "G T",
        }
    }
}

impl Path {
    fn as_str(self) -> &'static str {
        match self {
            Path::Root => "/",
            Path::Big => "/big",
            Path::Chunked => "/chunked",
            Path::Cut => "/cut",
            Path::NoContent => "/204",
            Path::UntilClose => "/eof",
            Path::Star => "*",
            Path::Empty => "",
            Path::Relative => "big",
        }
    }
}

impl Name {
    fn as_str(self) -> &'static str {
        match self {
            Name::ContentLength => "content-length",
            Name::ContentType => "content-type",
            Name::Te => "te",
            Name::Connection => "connection",
            Name::Upgrade => "upgrade",
            Name::Host => "host",
            Name::Cookie => "cookie",
            Name::Expect => "expect",
            Name::XRequestId => "x-request-id",
            Name::Uppercase => "X-Upper",
            Name::PseudoPath => ":path",
            Name::PseudoUnknown => ":bogus",
            Name::Empty => "",
        }
    }
}

impl Value {
    fn as_str(self) -> &'static str {
        match self {
            Value::Zero => "0",
            Value::Small => "5",
            Value::Huge => "18446744073709551616",
            Value::NotANumber => "ten",
            Value::Trailers => "trailers",
            Value::Close => "close",
            Value::Continue => "100-continue",
            Value::Long => "a-value-long-enough-to-matter-in-a-header-list-size-limit-if-repeated-often",
            Value::Controls => "a\u{1}b",
        }
    }
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;
const CANCEL: u32 = 0x8;

/// Hands out client stream ids: odd and increasing for fresh streams (RFC 9113 §5.1.1).
struct Ids {
    next: u32,
    recent: Vec<u32>,
}

impl Ids {
    fn fresh(&mut self) -> u32 {
        let id = self.next;
        self.next += 2;
        self.recent.push(id);
        if self.recent.len() > 8 {
            self.recent.remove(0);
        }
        id
    }

    fn get(&mut self, r: StreamRef) -> u32 {
        match r {
            StreamRef::Fresh => self.fresh(),
            StreamRef::Recent(k) => match self.recent.len() {
                0 => 1,
                n => self.recent[n - 1 - usize::from(k) % n],
            },
            StreamRef::Any(v) => v & 0x7fff_ffff,
        }
    }
}

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, id: u32, payload: &[u8]) {
    let len = payload.len().min(0xff_ffff) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[ty, flags]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&payload[..len as usize]);
}

/// HPACK literals without indexing (RFC 7541 §6.2.2), no Huffman; names and values are short.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

fn head_block(h: &Head) -> Vec<u8> {
    let mut b = Vec::new();
    let pseudo = [
        (Pseudo::Method, ":method", h.method.as_str()),
        (Pseudo::Scheme, ":scheme", "http"),
        (Pseudo::Path, ":path", h.path.as_str()),
        (Pseudo::Authority, ":authority", "backend.local"),
    ];
    for (which, name, value) in pseudo {
        if h.omit != Some(which) {
            literal(&mut b, name, value);
        }
    }
    for (n, v) in h.fields.iter().take(64) {
        literal(&mut b, n.as_str(), v.as_str());
    }
    b
}

/// A payload with optional padding (the PADDED flag's length byte first).
fn padded(body: &[u8], pad: Option<u8>) -> (Vec<u8>, u8) {
    match pad {
        None => (body.to_vec(), 0),
        Some(p) => {
            let mut v = Vec::with_capacity(1 + body.len() + usize::from(p));
            v.push(p);
            v.extend_from_slice(body);
            v.resize(v.len() + usize::from(p), 0);
            (v, PADDED)
        }
    }
}

/// What the client sends between two pauses, and the streams it opens there.
#[derive(Default)]
struct Segment {
    bytes: Vec<u8>,
    opened: Vec<u32>,
}

fn settings_payload(settings: &[Setting]) -> Vec<u8> {
    let mut p = Vec::new();
    for (k, v) in settings.iter().take(8).map(|s| s.pair()) {
        p.extend_from_slice(&k.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

fn increment(i: Increment) -> u32 {
    match i {
        Increment::Small(v) => u32::from(v),
        Increment::Any(v) => v,
    }
}

/// Pauses honoured per input: each may wait `QUIET`, and the whole exchange must stay well
/// inside the fuzzer's timeout.
const MAX_PAUSES: usize = 16;

fn encode(input: &Input) -> Vec<Segment> {
    let mut segments = vec![Segment::default()];
    let mut seg = segments.last_mut().expect("one segment");
    seg.bytes.extend_from_slice(PREFACE);
    frame(&mut seg.bytes, SETTINGS, 0, 0, &settings_payload(&input.settings));
    if let Some(i) = input.connection_window {
        frame(&mut seg.bytes, WINDOW_UPDATE, 0, 0, &increment(i).to_be_bytes());
    }
    let mut ids = Ids { next: 1, recent: Vec::new() };
    let mut pauses = 0;
    for op in input.ops.iter().take(256) {
        if let Op::Pause = op {
            if pauses < MAX_PAUSES {
                pauses += 1;
                segments.push(Segment::default());
                seg = segments.last_mut().expect("just pushed");
            }
            continue;
        }
        let out = &mut seg.bytes;
        match op {
            Op::Pause => {}
            Op::Headers { stream, head, end_stream, pad, priority, split } => {
                let id = ids.get(*stream);
                if let StreamRef::Fresh = stream {
                    seg.opened.push(id);
                }
                let block = head_block(head);
                let mut flags = if *end_stream { END_STREAM } else { 0 };
                // The priority fields lead the first fragment; only the header block is split.
                let mut first = Vec::new();
                if *priority {
                    flags |= PRIORITY_FLAG;
                    first.extend_from_slice(&0u32.to_be_bytes());
                    first.push(15);
                }
                let at = split.map_or(block.len(), |s| usize::from(s).min(block.len()));
                first.extend_from_slice(&block[..at]);
                let (first, pad_flag) = padded(&first, *pad);
                if at == block.len() {
                    frame(out, HEADERS, flags | pad_flag | END_HEADERS, id, &first);
                } else {
                    frame(out, HEADERS, flags | pad_flag, id, &first);
                    frame(out, CONTINUATION, END_HEADERS, id, &block[at..]);
                }
            }
            Op::Trailers { stream, fields, end_stream } => {
                let mut b = Vec::new();
                for (n, v) in fields.iter().take(16) {
                    literal(&mut b, n.as_str(), v.as_str());
                }
                let flags = END_HEADERS | if *end_stream { END_STREAM } else { 0 };
                frame(out, HEADERS, flags, ids.get(*stream), &b);
            }
            Op::Data { stream, len, oversize, end_stream, pad } => {
                let len = if *oversize { usize::from(*len) } else { usize::from(*len) % (16_384 - 256) };
                let (payload, pad_flag) = padded(&vec![b'x'; len], *pad);
                let flags = pad_flag | if *end_stream { END_STREAM } else { 0 };
                frame(out, DATA, flags, ids.get(*stream), &payload);
            }
            Op::WindowUpdate { stream, increment: inc } => {
                let id = stream.map_or(0, |s| ids.get(s));
                frame(out, WINDOW_UPDATE, 0, id, &increment(*inc).to_be_bytes());
            }
            Op::Reset { stream, code } => frame(out, RST_STREAM, 0, ids.get(*stream), &code.to_be_bytes()),
            Op::Settings { ack: true, .. } => frame(out, SETTINGS, 1, 0, &[]),
            Op::Settings { ack: false, params } => frame(out, SETTINGS, 0, 0, &settings_payload(params)),
            Op::Ping { ack, data } => frame(out, PING, u8::from(*ack), 0, &data.to_be_bytes()),
            Op::Priority { stream, depends_on, weight } => {
                let id = ids.get(*stream);
                let mut p = ids.get(*depends_on).to_be_bytes().to_vec();
                p.push(*weight);
                frame(out, PRIORITY, 0, id, &p);
            }
            Op::GoAway { last, code } => {
                let mut p = (2 * u32::from(*last) + 1).to_be_bytes().to_vec();
                p.extend_from_slice(&code.to_be_bytes());
                frame(out, GOAWAY, 0, 0, &p);
            }
            Op::Burst { n, reset } => {
                let head = Head { method: Method::Get, path: Path::Root, omit: None, fields: Vec::new() };
                let block = head_block(&head);
                for _ in 0..*n {
                    let id = ids.fresh();
                    frame(out, HEADERS, END_HEADERS | END_STREAM, id, &block);
                    if *reset {
                        frame(out, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
                    } else {
                        seg.opened.push(id);
                    }
                }
            }
            Op::Raw { ty, flags, id, payload } => {
                frame(out, *ty, *flags, *id, &payload[..payload.len().min(4096)])
            }
        }
    }
    segments
}

/// What the upstream answers to a request for `path`: a body larger than the flow-control
/// windows, a chunked body with trailers, a body cut short of its length (the proxy must reset
/// the stream), no content, a body delimited by the close, or two bytes.
fn response(path: &[u8]) -> Vec<u8> {
    let (head, body): (&str, Vec<u8>) = match path {
        b"/big" => ("content-length: 200000", vec![b'o'; 200_000]),
        b"/chunked" => ("transfer-encoding: chunked", b"5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n".to_vec()),
        b"/cut" => ("content-length: 100000", vec![b'o'; 1000]),
        b"/204" => return b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_vec(),
        b"/eof" => ("x-framing: none", vec![b'o'; 70_000]),
        _ => ("content-length: 2", b"ok".to_vec()),
    };
    let mut r = format!("HTTP/1.1 200 OK\r\n{head}\r\nconnection: close\r\n\r\n").into_bytes();
    r.extend_from_slice(&body);
    r
}

/// The upstream: answers every request head (see `response`) and closes the connection, so
/// that a request body it does not parse cannot confuse it. It reads on until the proxy closes
/// too: closing with unread bytes would send a TCP reset, which could destroy the response,
/// and an input must behave the same on every run.
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let path = head.split(|&b| b == b' ').nth(1).unwrap_or_default();
            if s.write_all(&response(path)).await.is_ok() && s.shutdown().await.is_ok() {
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        });
    }
}


/// The proxy in front of `upstream`, started once; its address.
fn proxy() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| tripline_fuzz::start(tripline_fuzz::ONE_UPSTREAM, upstream))
}

/// One client connection: sends each segment and waits for the proxy to answer it (at most
/// `MAX_PAUSES` quiet periods in all), then closes its side: from then on the proxy has `HANG`
/// to close the connection, or the input is reported as a hang.
async fn exchange(addr: SocketAddr, segments: Vec<Segment>) {
    // Loopback connects do not fail while the proxy lives; if one did, it says nothing about
    // this input.
    let Ok(s) = TcpStream::connect(addr).await else { return };
    let (mut rd, mut wr) = s.into_split();
    let mut frames = Frames::default();
    for seg in segments {
        // Written while reading, so that neither side blocks on a full socket. The proxy may
        // close before reading everything: that is an answer too.
        let write = async {
            let _ = wr.write_all(&seg.bytes).await;
        };
        let (_, open) = tokio::join!(write, frames.settle(&mut rd, &seg.opened));
        if !open {
            return;
        }
    }
    let _ = wr.shutdown().await;
    let mut buf = vec![0u8; 64 * 1024];
    let closed = async { while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {} };
    if tokio::time::timeout(HANG, closed).await.is_err() {
        panic!("the proxy kept the connection open {HANG:?} after the client closed its side");
    }
}

/// The frames the proxy sends, as far as the client needs to know when its streams are answered.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    ended: std::collections::HashSet<u32>,
    goaway: bool,
}

impl Frames {
    /// Reads until every stream in `opened` has ended (END_STREAM or RST_STREAM from the proxy),
    /// the proxy sent GOAWAY, or nothing arrived for `QUIET` (a stream waiting for window or for
    /// more of its request). False once the connection is closed.
    async fn settle(&mut self, rd: &mut tokio::net::tcp::OwnedReadHalf, opened: &[u32]) -> bool {
        const QUIET: Duration = Duration::from_millis(20);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if self.goaway || opened.iter().all(|id| self.ended.contains(id)) {
                return true;
            }
            match tokio::time::timeout(QUIET, rd.read(&mut chunk)).await {
                Err(_) => return true,
                Ok(Ok(0) | Err(_)) => return false,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
            while self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() < 9 + len {
                    break;
                }
                let (ty, flags) = (self.buf[3], self.buf[4]);
                let id =
                    u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff;
                if ty == RST_STREAM || ((ty == DATA || ty == HEADERS) && flags & END_STREAM != 0) {
                    self.ended.insert(id);
                }
                self.goaway |= ty == GOAWAY;
                self.buf.drain(..9 + len);
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let addr = proxy();
    let segments = encode(&input);
    tripline_fuzz::client().block_on(exchange(addr, segments));
});
