//! Any sequence of HTTP/2 frames from a client: Tripline's own HTTP/2 server
//! (`tripline_proxy::h2_server`) must answer or close, never panic, hang or stop serving.
//!
//! In memory: the server's `Connection` over a `tokio::io::duplex` pipe, its requests answered
//! by a handler that answers by path (a large body, a chunked one with trailers, one cut short,
//! none, one without a length: see `answer`), on a single-threaded runtime with tokio's paused
//! time, so that the server's timers (the linger, the drain's PING) and the client's "quiet"
//! cost no wall-clock time. No sockets, no upstream, no runtime per input: a run goes through
//! thousands of connections a second (docs/testing.md has the figures). (The proxy behind the
//! server, and the protocol detection in front of it, are the end-to-end tests' and the
//! HTTP/1.1 targets' to drive.)
//!
//! Each input is a list of frame operations, encoded into well-formed frames (stream ids,
//! HPACK literals, padding, CONTINUATION splits) so that the fuzzer reaches the stream states
//! behind the frame parser, plus raw frames for everything else, and the server's header
//! limits (small, so that 431 is reachable). `Repeat` sends an operation's frames again (the
//! flood limits), `Drain` starts the server's drain. `Pause` splits the input: the client
//! sends what came before and reads until those streams are answered (so that later frames
//! meet responses in progress: window updates, resets, SETTINGS changes). Then it closes its
//! side and must see the server close the connection, and the connection's task end, within
//! `HANG`. A panic anywhere aborts (libFuzzer's panic hook), which is the finding.
#![no_main]

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method as HttpMethod, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tripline_proxy::upload::ClientBody;
use tripline_proxy::h2_server::{Config, Connection, Handler};
use tripline_proxy::header_limits::HeaderLimits;
use tripline_proxy::stats::GlobalStats;

/// Longer than anything the server waits for by itself (its linger and drain timers are 1 s).
/// Paused time: it costs nothing unless the server really hangs.
const HANG: Duration = Duration::from_secs(5);
/// Bytes the pipe holds each way: small, so that backpressure is reached.
const PIPE: usize = 32 * 1024;

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
    /// The ACK of the drain's PING (the payload `h2` and Tripline use), as a client sends it.
    DrainPingAck,
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
    /// what the rapid-reset rule is for (100 streams, more than half of them reset). At most
    /// `MAX_BURST_STREAMS` in all per input: more only makes an input slow.
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
    /// The previous operation's frames again, `times` more times (at most `MAX_REPEATED` bytes
    /// of them in all per input): what the flood limits are for.
    Repeat {
        times: u8,
    },
    /// Send what came before and wait for the answers (see `send_and_settle`) before going on.
    Pause,
    /// The same, then the server starts draining (what SIGTERM and the request-head timeout
    /// do): GOAWAY, a PING, the final GOAWAY once the PING comes back or a second passes.
    /// Once per input.
    Drain,
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
/// larger connection window, so that a response can be held by its stream's window alone. And
/// the server's header limits: 1 to 8 KiB, 1 to 256 fields.
#[derive(Arbitrary, Debug)]
struct Input {
    header_kb: u8,
    header_count: u8,
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

/// The pseudo-header fields as clients send them, from HPACK's static table (RFC 7541
/// Appendix A): `:method GET` or `POST`, `:scheme http` and `:path /` indexed, other values
/// literal with an indexed name. (Far less to decode than literal names, so more inputs a
/// second; the literal names of the other fields still exercise the name checks.)
fn head_block(h: &Head) -> Vec<u8> {
    let mut b = Vec::new();
    if h.omit != Some(Pseudo::Method) {
        match h.method {
            Method::Get => b.push(0x82),
            Method::Post => b.push(0x83),
            other => indexed_name(&mut b, 2, other.as_str()),
        }
    }
    if h.omit != Some(Pseudo::Scheme) {
        b.push(0x86);
    }
    if h.omit != Some(Pseudo::Path) {
        match h.path {
            Path::Root => b.push(0x84),
            other => indexed_name(&mut b, 4, other.as_str()),
        }
    }
    if h.omit != Some(Pseudo::Authority) {
        indexed_name(&mut b, 1, "backend.local");
    }
    for (n, v) in h.fields.iter().take(64) {
        literal(&mut b, n.as_str(), v.as_str());
    }
    b
}

/// A literal without indexing whose name is static-table entry `index` (under 16).
fn indexed_name(block: &mut Vec<u8>, index: u8, value: &str) {
    block.push(index);
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
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
    /// The server is told to drain before this segment is sent.
    drain: bool,
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

/// Streams all the `Burst` operations of an input open together: enough for the rapid-reset
/// rule (100 streams) and the concurrency limit's neighbourhood is the unit tests'.
const MAX_BURST_STREAMS: usize = 400;

/// Bytes the `Repeat` operations of an input may add in all (a PRIORITY frame is 14 bytes).
const MAX_REPEATED: usize = 64 * 1024;

/// Pauses honoured per input: each may wait `QUIET`, and the whole exchange must stay well
/// inside the fuzzer's timeout.
const MAX_PAUSES: usize = 16;

fn encode(input: &Input) -> Vec<Segment> {
    let mut segments = vec![Segment::default()];
    let mut seg = segments.last_mut().expect("one segment");
    // The preface itself is read before the connection starts (`http_conn`).
    frame(&mut seg.bytes, SETTINGS, 0, 0, &settings_payload(&input.settings));
    if let Some(i) = input.connection_window {
        frame(&mut seg.bytes, WINDOW_UPDATE, 0, 0, &increment(i).to_be_bytes());
    }
    let mut ids = Ids { next: 1, recent: Vec::new() };
    let mut pauses = 0;
    let mut burst_left = MAX_BURST_STREAMS;
    let mut drained = false;
    let (mut last_op, mut repeated) = (Vec::new(), 0);
    for op in input.ops.iter().take(256) {
        if let Op::Pause | Op::Drain = op {
            let drain = matches!(op, Op::Drain) && !drained;
            drained |= drain;
            if pauses < MAX_PAUSES || drain {
                pauses += 1;
                segments.push(Segment { drain, ..Segment::default() });
                seg = segments.last_mut().expect("just pushed");
            }
            continue;
        }
        let out = &mut seg.bytes;
        if let Op::Repeat { times } = op {
            let last = last_op.clone();
            for _ in 0..*times {
                if repeated + last.len() > MAX_REPEATED {
                    break;
                }
                repeated += last.len();
                out.extend_from_slice(&last);
            }
            continue;
        }
        let before = out.len();
        match op {
            Op::Pause | Op::Drain | Op::Repeat { .. } => {}
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
            Op::DrainPingAck => frame(out, PING, 1, 0, &[0x0b, 0x7b, 0xa2, 0xf0, 0x8b, 0x9b, 0xfe, 0x54]),
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
                let n = usize::from(*n).min(burst_left);
                burst_left -= n;
                for _ in 0..n {
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
        // Repeated as is: the same stream ids, so a repeated request head is a used id.
        last_op = out[before..].to_vec();
    }
    segments
}

/// A response body as an upstream's would come: in chunks, each after a turn of the event loop
/// (as if read off a socket), maybe with trailers, maybe failing at its end.
struct Answer {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    fail: bool,
    /// The length declared (as a `content-length` would).
    length: Option<u64>,
    turn: bool,
}

impl Answer {
    fn new(chunks: impl IntoIterator<Item = Bytes>, length: Option<u64>) -> Answer {
        Answer { chunks: chunks.into_iter().collect(), trailers: None, fail: false, length, turn: false }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        if self.turn {
            self.turn = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(c) = self.chunks.pop_front() {
            self.turn = true;
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if std::mem::take(&mut self.fail) {
            return Poll::Ready(Some(Err("the upstream closed before the end of the body")));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none() && !self.fail
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// `n` bytes in chunks of at most 16 KiB (one static buffer: nothing to allocate or fill).
fn chunks(n: usize) -> Vec<Bytes> {
    static CHUNK: [u8; 16 * 1024] = [b'o'; 16 * 1024];
    let chunk = Bytes::from_static(&CHUNK);
    (0..n).step_by(chunk.len()).map(|at| chunk.slice(..chunk.len().min(n - at))).collect()
}

/// The handler: a POST's body is read to its end (or error) first, so that request bodies meet
/// flow control; any other request's body is dropped unread. Then the answer by path: `/big`
/// a body larger than the flow-control windows, `/chunked` a body without a length and with
/// trailers, `/cut` a body that fails short of its declared length (the stream is reset after
/// its head), `/204` no content, `/eof` a body without a length, anything else two bytes.
async fn answer(req: Request<ClientBody>) -> Result<Response<Answer>, Infallible> {
    let (parts, mut body) = req.into_parts();
    if parts.method == HttpMethod::POST {
        while let Some(Ok(_)) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {}
    }
    drop(body);
    let (status, body) = match parts.uri.path() {
        "/big" => (200, Answer::new(chunks(200_000), Some(200_000))),
        "/chunked" => {
            let mut a = Answer::new([Bytes::from_static(b"hello")], None);
            let mut t = HeaderMap::new();
            t.insert("x-checksum", HeaderValue::from_static("1"));
            a.trailers = Some(t);
            (200, a)
        }
        "/cut" => {
            let mut a = Answer::new(chunks(1_000), Some(100_000));
            a.fail = true;
            (200, a)
        }
        "/204" => (204, Answer::new([], Some(0))),
        "/eof" => (200, Answer::new(chunks(70_000), None)),
        _ => (200, Answer::new([Bytes::from_static(b"ok")], Some(2))),
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).expect("a status");
    Ok(r)
}

/// The runtime every input runs on: single-threaded, time paused (it advances only when every
/// task waits), built once.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
    })
}

/// One client connection: sends each segment and waits for the server to answer it (at most
/// `MAX_PAUSES` quiet periods in all), then closes its side: from then on the server has `HANG`
/// to close the connection and end its task, or the input is reported as a hang.
async fn exchange(input: &Input, segments: Vec<Segment>) {
    let (client, server) = tokio::io::duplex(PIPE);
    let limits = HeaderLimits::new(1 + u32::from(input.header_kb % 8), 1 + u32::from(input.header_count));
    let config = Config {
        peer: ([127, 0, 0, 1], 40000).into(),
        stats: Arc::new(GlobalStats::default()),
        limits,
        stream_idle: None,
    };
    let (drain, drain_rx) = tokio::sync::oneshot::channel();
    let conn =
        tokio::spawn(Drainable { conn: Connection::new(server, answer, config), drain: Some(drain_rx) });
    let mut drain = Some(drain);
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut frames = Frames { chunk: vec![0; 16 * 1024], ..Frames::default() };
    for seg in segments {
        if seg.drain {
            let _ = drain.take().map(|d| d.send(()));
        }
        if !frames.send_and_settle(&mut rd, &mut wr, &seg).await {
            break;
        }
    }
    let _ = wr.shutdown().await;
    let buf = &mut frames.chunk;
    let closed = async { while matches!(rd.read(buf).await, Ok(n) if n > 0) {} };
    if tokio::time::timeout(HANG, closed).await.is_err() {
        panic!("the server kept the connection open {HANG:?} after the client closed its side");
    }
    match tokio::time::timeout(HANG, conn).await {
        Err(_) => panic!("the connection's task did not end {HANG:?} after the client closed its side"),
        Ok(Err(e)) => panic!("the connection's task failed: {e}"),
        Ok(Ok(())) => {}
    }
}

/// The connection, which the client can have drain.
struct Drainable<H: Handler> {
    conn: Connection<DuplexStream, H>,
    drain: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl<H: Handler + Unpin> Future for Drainable<H> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(rx) = self.drain.as_mut() {
            if let Poll::Ready(signal) = Pin::new(rx).poll(cx) {
                self.drain = None;
                if signal.is_ok() {
                    self.conn.graceful_shutdown();
                }
            }
        }
        Pin::new(&mut self.conn).poll(cx)
    }
}

/// The frames the server sends, as far as the client needs to know when its streams are answered.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    /// What each read fills.
    chunk: Vec<u8>,
    ended: HashSet<u32>,
    goaway: bool,
}

impl Frames {
    /// Writes `seg` while reading what the server sends (so that neither side blocks on a full
    /// pipe), until the write is done and every stream `seg` opened has ended (END_STREAM or
    /// RST_STREAM from the server), the server sent GOAWAY, or nothing arrived for `QUIET` (a
    /// stream waiting for window or for more of its request). False once the connection is
    /// closed.
    async fn send_and_settle(
        &mut self,
        rd: &mut ReadHalf<DuplexStream>,
        wr: &mut WriteHalf<DuplexStream>,
        seg: &Segment,
    ) -> bool {
        const QUIET: Duration = Duration::from_millis(20);
        let mut write = std::pin::pin!(wr.write_all(&seg.bytes));
        let mut written = false;
        // Quiet periods while the write is blocked: the server reads nothing and sends nothing.
        let mut stalled = Duration::ZERO;
        loop {
            if written && (self.goaway || seg.opened.iter().all(|id| self.ended.contains(id))) {
                return true;
            }
            tokio::select! {
                r = &mut write, if !written => {
                    written = true;
                    if r.is_err() {
                        // The server closed its end: the connection is over.
                        return false;
                    }
                }
                r = tokio::time::timeout(QUIET, rd.read(&mut self.chunk)) => match r {
                    Err(_) if written => return true,
                    Err(_) => {
                        stalled += QUIET;
                        assert!(stalled < HANG, "the server stopped reading with nothing left to send");
                    }
                    Ok(Ok(0) | Err(_)) => return false,
                    Ok(Ok(n)) => {
                        stalled = Duration::ZERO;
                        self.buf.extend_from_slice(&self.chunk[..n]);
                        self.parse();
                    }
                },
            }
        }
    }

    fn parse(&mut self) {
        while self.buf.len() >= 9 {
            let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
            if self.buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (self.buf[3], self.buf[4]);
            let id = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff;
            if ty == RST_STREAM || ((ty == DATA || ty == HEADERS) && flags & END_STREAM != 0) {
                self.ended.insert(id);
            }
            self.goaway |= ty == GOAWAY;
            self.buf.drain(..9 + len);
        }
    }
}

fuzz_target!(|input: Input| {
    let segments = encode(&input);
    runtime().block_on(exchange(&input, segments));
});
