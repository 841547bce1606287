//! Tripline's own HTTP/2 server, frame by frame. A hand-written client on a raw socket sends
//! what library clients never do (padding, a wrong content-length, a tiny window, streams
//! opened and reset in a loop) and reads every frame the proxy answers with. Request headers
//! are HPACK literals without indexing or Huffman, which every decoder must accept.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::config;
use crate::support::{free_port, Conn, Proto, Proxy, Resp, Upstream};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
struct RawFrame {
    ty: u8,
    flags: u8,
    id: u32,
    payload: Vec<u8>,
}

impl RawFrame {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A client that speaks HTTP/2 one frame at a time.
struct Raw {
    s: TcpStream,
}

fn frame(ty: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[ty, flags]);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literals without indexing (RFC 7541 §6.2.2), names and values under 127
/// bytes.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0x00);
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

fn request_headers(id: u32, method: &str, path: &str, extra: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let mut fields =
        vec![(":method", method), (":scheme", "http"), (":path", path), (":authority", "backend.local")];
    fields.extend_from_slice(extra);
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, id, &header_block(&fields))
}

impl Raw {
    /// Connects and sends the preface and SETTINGS with `settings` (id, value).
    async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Raw {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut payload = Vec::new();
        for (id, v) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&v.to_be_bytes());
        }
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &payload));
        s.write_all(&out).await.expect("preface");
        Raw { s }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// The next frame, or `None` when the proxy closed the connection.
    async fn next(&mut self) -> Option<RawFrame> {
        let read = async {
            let mut head = [0u8; 9];
            self.s.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.s.read_exact(&mut payload).await.ok()?;
            let id = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
            Some(RawFrame { ty: head[3], flags: head[4], id, payload })
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("the proxy answers within 10 s")
    }

    /// Reads frames until one matches, returning it.
    async fn until(&mut self, what: &str, mut pred: impl FnMut(&RawFrame) -> bool) -> RawFrame {
        loop {
            let f = self.next().await.unwrap_or_else(|| panic!("connection closed while waiting for {what}"));
            if pred(&f) {
                return f;
            }
        }
    }

    /// Reads a whole response body on `id`, returning it.
    async fn body(&mut self, id: u32) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let f = self.until("the response", |f| f.id == id).await;
            assert_ne!(f.ty, RST_STREAM, "stream {id} reset with code {}", f.u32_at(0));
            if f.ty == DATA {
                body.extend_from_slice(&f.payload);
            }
            if f.flags & END_STREAM != 0 && matches!(f.ty, DATA | HEADERS) {
                return body;
            }
        }
    }
}

async fn proxy() -> (Upstream, Proxy, SocketAddr) {
    let up = Upstream::http("h2").await;
    let port = free_port();
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], None)).await;
    (up, proxy, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn body_len(json: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(json).expect("the upstream's JSON");
    v["body_len"].as_u64().expect("body_len")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padding_is_given_back_to_the_client_s_flow_control_windows() {
    let (_up, _proxy, addr) = proxy().await;
    let mut c = Raw::connect(addr, &[]).await;
    // 6,000 frames of 100 bytes, each padded with 255 more: 2.1 MB against flow control, more
    // than both 1 MiB windows, for 600 kB of body. Unless the padding is given back, the
    // windows close for good after about a third of it and the upload stalls.
    let (frames, payload, pad) = (6_000u32, 100usize, 255u8);
    let flow = (payload + usize::from(pad) + 1) as i64;
    let total = u64::from(frames) * payload as u64;
    c.write(&request_headers(1, "POST", "/upload", &[("content-length", &total.to_string())], false)).await;
    let (mut conn_window, mut stream_window) = (65_535i64, 65_535i64);
    let mut sent = 0;
    while sent < frames {
        let mut batch = Vec::new();
        while sent < frames && conn_window >= flow && stream_window >= flow {
            let mut p = vec![pad];
            p.extend(std::iter::repeat_n(b'x', payload));
            p.extend(std::iter::repeat_n(0u8, usize::from(pad)));
            sent += 1;
            batch.extend(frame(DATA, PADDED | if sent == frames { END_STREAM } else { 0 }, 1, &p));
            conn_window -= flow;
            stream_window -= flow;
        }
        if !batch.is_empty() {
            c.write(&batch).await;
            continue;
        }
        // Out of window: wait for the proxy to give some back.
        let f = c
            .until("a WINDOW_UPDATE", |f| matches!(f.ty, WINDOW_UPDATE | SETTINGS | RST_STREAM | GOAWAY))
            .await;
        match f.ty {
            WINDOW_UPDATE if f.id == 0 => conn_window += i64::from(f.u32_at(0)),
            WINDOW_UPDATE => stream_window += i64::from(f.u32_at(0)),
            SETTINGS if f.flags & ACK == 0 => {
                // SETTINGS_INITIAL_WINDOW_SIZE (4) moves the stream's window.
                for kv in f.payload.chunks(6) {
                    if u16::from_be_bytes([kv[0], kv[1]]) == 4 {
                        let v = u32::from_be_bytes(kv[2..6].try_into().unwrap());
                        stream_window += i64::from(v) - 65_535;
                    }
                }
            }
            SETTINGS => {}
            _ => panic!("upload refused after {sent} frames: {f:?}"),
        }
    }
    assert_eq!(body_len(&c.body(1).await), total, "the upstream got the whole body, padding stripped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_its_content_length_resets_only_its_stream() {
    let (up, _proxy, addr) = proxy().await;
    let mut c = Raw::connect(addr, &[]).await;
    let mut out = request_headers(1, "POST", "/", &[("content-length", "5")], false);
    out.extend(frame(DATA, END_STREAM, 1, b"abcdef"));
    c.write(&out).await;
    let rst = c.until("RST_STREAM on stream 1", |f| f.id == 1 && f.ty == RST_STREAM).await;
    assert_eq!(rst.u32_at(0), PROTOCOL_ERROR);
    // The connection serves on.
    c.write(&request_headers(3, "GET", "/after", &[], true)).await;
    assert_eq!(body_len(&c.body(3).await), 0);
    assert!(up.requests() <= 2, "the malformed body was not passed on whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_s_window_bounds_what_the_proxy_sends() {
    let (_up, _proxy, addr) = proxy().await;
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 16 bytes per stream.
    let mut c = Raw::connect(addr, &[(4, 16)]).await;
    c.write(&request_headers(1, "GET", "/windowed", &[], true)).await;
    let (mut granted, mut body) = (16usize, Vec::new());
    loop {
        let f = c.until("the response", |f| f.id == 1).await;
        if f.ty != DATA {
            continue;
        }
        body.extend_from_slice(&f.payload);
        assert!(body.len() <= granted, "{} bytes sent on a window of {granted}", body.len());
        if f.flags & END_STREAM != 0 {
            break;
        }
        if body.len() == granted {
            // Window spent: a PING's answer comes back with no DATA before it.
            c.write(&frame(PING, 0, 0, b"tripline")).await;
            let pong = c.until("the PING ACK", |f| f.ty == PING || (f.ty == DATA && f.id == 1)).await;
            assert_eq!(pong.ty, PING, "DATA beyond the window: {pong:?}");
            assert_eq!(
                (pong.flags, &pong.payload[..]),
                (ACK, &b"tripline"[..]),
                "the PING comes back as sent"
            );
            c.write(&frame(WINDOW_UPDATE, 0, 1, &16u32.to_be_bytes())).await;
            granted += 16;
        }
    }
    assert!(body.len() > 64, "the response needed several windows: {} bytes", body.len());
    assert_eq!(body_len(&body), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_its_streams_in_a_loop_is_told_to_calm_down() {
    let (up, proxy, addr) = proxy().await;
    let mut c = Raw::connect(addr, &[]).await;
    // Rapid reset (CVE-2023-44487): each request is cancelled as soon as it is sent.
    let mut out = Vec::new();
    for i in 0..300u32 {
        let id = 2 * i + 1;
        out.extend(request_headers(id, "GET", "/", &[("x-delay-ms", "2000")], true));
        out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    c.write(&out).await;
    let goaway = c.until("GOAWAY", |f| f.ty == GOAWAY).await;
    assert_eq!(goaway.u32_at(4), ENHANCE_YOUR_CALM);
    let last = goaway.u32_at(0);
    assert!((199..=599).contains(&last), "GOAWAY after 100 to 300 streams, last stream id {last}");
    while c.next().await.is_some() {}
    assert!(up.requests() < 300, "not every reset request reached the upstream ({})", up.requests());
    let calm = [("reason", "ENHANCE_YOUR_CALM")];
    assert_eq!(proxy.metric("tripline_downstream_http2_connection_errors_total", &calm).await, 1.0);
    let by_client = proxy.metric("tripline_downstream_http2_stream_resets_total", &[("by", "client")]).await;
    assert!(by_client >= 100.0, "{by_client} client resets counted");

    // "MadeYouReset" (CVE-2025-8671): the client sends something that makes the proxy reset
    // each stream itself (DATA after END_STREAM), which must count the same.
    let mut c = Raw::connect(addr, &[]).await;
    let mut out = Vec::new();
    for i in 0..300u32 {
        let id = 2 * i + 1;
        out.extend(request_headers(id, "GET", "/", &[("x-delay-ms", "2000")], true));
        out.extend(frame(DATA, 0, id, b"x"));
    }
    c.write(&out).await;
    let goaway = c.until("GOAWAY", |f| f.ty == GOAWAY).await;
    assert_eq!(goaway.u32_at(4), ENHANCE_YOUR_CALM);
    assert_eq!(proxy.metric("tripline_downstream_http2_connection_errors_total", &calm).await, 2.0);
    let by_proxy = proxy.metric("tripline_downstream_http2_stream_resets_total", &[("by", "proxy")]).await;
    assert!(by_proxy >= 100.0, "{by_proxy} proxy resets counted");

    // A well-behaved connection is not affected.
    let mut ok = Raw::connect(addr, &[]).await;
    for i in 0..150u32 {
        ok.write(&request_headers(2 * i + 1, "GET", "/", &[], true)).await;
        assert_eq!(body_len(&ok.body(2 * i + 1).await), 0);
    }
}

/// A proxy sent SIGTERM while stream 1 of `c` waits `delay_ms` at the upstream; the first
/// GOAWAY (the largest id, so streams the client already sent are still served) is read.
async fn drain_with_a_request_in_flight(delay_ms: u64) -> (Upstream, Proxy, Raw) {
    let (up, proxy, addr) = proxy().await;
    let mut c = Raw::connect(addr, &[]).await;
    c.write(&request_headers(1, "GET", "/slow", &[("x-delay-ms", &delay_ms.to_string())], true)).await;
    crate::support::eventually("the request reaches the upstream", Duration::from_secs(5), || {
        let n = up.requests();
        async move { n > 0 }
    })
    .await;
    proxy.signal("TERM");
    let first = c.until("the first GOAWAY", |f| f.ty == GOAWAY).await;
    assert_eq!((first.u32_at(0), first.u32_at(4)), (0x7fff_ffff, 0));
    (up, proxy, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_announces_itself_in_two_steps_and_finishes_the_stream_in_flight() {
    let (_up, mut proxy, mut c) = drain_with_a_request_in_flight(600).await;
    let ping = c.until("the drain's PING", |f| f.ty == PING && f.flags & ACK == 0).await;
    // A stream opened before the client saw the GOAWAY is served.
    c.write(&request_headers(3, "GET", "/late", &[], true)).await;
    c.write(&frame(PING, ACK, 0, &ping.payload)).await;
    // Then everything until the proxy closes the connection.
    let (mut goaways, mut bodies, mut ended) = (Vec::new(), [Vec::new(), Vec::new()], [false, false]);
    while let Some(f) = c.next().await {
        match (f.ty, f.id) {
            (GOAWAY, _) => goaways.push((f.u32_at(0), f.u32_at(4))),
            (DATA | HEADERS, 1 | 3) => {
                let i = (f.id / 2) as usize;
                if f.ty == DATA {
                    bodies[i].extend_from_slice(&f.payload);
                }
                ended[i] |= f.flags & END_STREAM != 0;
            }
            (RST_STREAM, _) => panic!("stream {} reset: {f:?}", f.id),
            _ => {}
        }
    }
    assert_eq!(goaways, vec![(3, 0)], "the second GOAWAY names the last stream taken");
    assert_eq!(ended, [true, true], "both streams finished before the connection closed");
    assert_eq!((body_len(&bodies[0]), body_len(&bodies[1])), (0, 0));
    let status = proxy.wait_exit(Duration::from_secs(7)).await.expect("tripline exits after the drain");
    assert_eq!(status.code(), Some(0));
}

/// A deterministic stream of pseudo-random numbers (xorshift), so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A frame a confused or hostile client might send: any type, any flags, ids that exist,
/// never existed or are zero, payloads random or shaped like the real thing.
fn hostile_frame(r: &mut Rng) -> Vec<u8> {
    let ty = r.below(11) as u8;
    let flags = r.next() as u8;
    let id = match r.below(6) {
        0 => 0,
        1 => 1,
        2 => 3,
        3 => 2 * r.below(40) as u32 + 1,
        4 => r.next() as u32,
        _ => 2,
    };
    let payload: Vec<u8> = match r.below(4) {
        0 if ty == HEADERS => {
            let mut b =
                header_block(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "h")]);
            b.truncate(r.below(b.len() as u64 + 1) as usize);
            b
        }
        1 => r.next().to_be_bytes()[..r.below(9) as usize].to_vec(),
        _ => (0..r.below(48)).map(|_| r.next() as u8).collect(),
    };
    frame(ty, flags, id, &payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_never_take_the_proxy_down() {
    let (_up, proxy, addr) = proxy().await;
    let mut r = Rng(0x7269_706c_696e_6521);
    for _ in 0..500 {
        let mut c = Raw::connect(addr, &[]).await;
        // A valid request first half the time, so there are streams to confuse.
        let mut out = if r.below(2) == 0 { request_headers(1, "POST", "/", &[], false) } else { Vec::new() };
        for _ in 0..r.below(40) + 1 {
            out.extend(hostile_frame(&mut r));
        }
        // The proxy may close first; what it writes before that does not matter here.
        let _ = c.s.write_all(&out).await;
        let _ = c.s.shutdown().await;
        // Every connection ends: the proxy closes it or answers and closes once we are gone.
        while c.next().await.is_some() {}
    }
    assert!(!proxy.stderr().contains("panicked"), "the proxy panicked:\n{}", proxy.logs());
    // And it still serves, over both protocols.
    let mut ok = Raw::connect(addr, &[]).await;
    ok.write(&request_headers(1, "GET", "/", &[], true)).await;
    assert_eq!(body_len(&ok.body(1).await), 0);
    let r = crate::support::get(addr, "backend.local", "/").await.expect("HTTP/1.1 after the hostile frames");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_the_client_never_acknowledges_still_ends() {
    let (_up, mut proxy, mut c) = drain_with_a_request_in_flight(300).await;
    // The PING is never answered: the final GOAWAY comes after the drain's PING timeout (1 s).
    let start = std::time::Instant::now();
    let (mut last, mut ended) = (None, false);
    while let Some(f) = c.next().await {
        match f.ty {
            GOAWAY => last = Some((f.u32_at(0), start.elapsed())),
            DATA | HEADERS if f.id == 1 => ended |= f.flags & END_STREAM != 0,
            _ => {}
        }
    }
    let (id, after) = last.expect("a final GOAWAY before the close");
    assert_eq!(id, 1);
    assert!(after >= Duration::from_millis(800), "the final GOAWAY waited for the PING ({after:?})");
    assert!(ended, "the stream in flight finished");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).await.expect("exit").code(), Some(0));
}

/// `n` fields of gRPC-style binary metadata (`x-meta-<i>-bin`), `len` bytes of value each.
fn metadata(n: usize, len: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("x-meta-{i}-bin"), "QUJD".repeat(len / 4))).collect()
}

/// One GET with `fields` on a fresh connection of `proto`.
async fn get_with_fields(addr: SocketAddr, proto: Proto, fields: &[(String, String)]) -> Resp {
    let mut conn = Conn::connect(addr, proto).await.expect("connect");
    let refs: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    conn.get_with("backend.local", "/", &refs).await.expect("a response")
}

/// `--max-request-headers-kb` and `--max-request-headers` at their defaults (Envoy's: 60 KiB,
/// 100 fields): 20 KiB of gRPC metadata reaches the upstream over either protocol (the limit
/// was 16 KiB for HTTP/2), and 61 KiB or 101 fields get 431 from the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_within_the_default_limits_pass_and_beyond_them_get_431() {
    let (up, _proxy, addr) = proxy().await;
    for proto in [Proto::H1, Proto::H2] {
        let r = get_with_fields(addr, proto, &metadata(20, 1024)).await;
        assert_eq!(r.status, 200, "{proto:?}: 20 KiB of metadata");
        assert_eq!(
            r.seen_header("x-meta-19-bin").map(|v| v.len()),
            Some(1024),
            "{proto:?}: reached the upstream"
        );
        let before = up.requests();
        let r = get_with_fields(addr, proto, &metadata(61, 1024)).await;
        assert_eq!(r.status, 431, "{proto:?}: 61 KiB");
        assert_eq!(r.reason(), Some("request-headers-too-large"), "{proto:?}: 61 KiB");
        let r = get_with_fields(addr, proto, &metadata(101, 1)).await;
        assert_eq!(r.status, 431, "{proto:?}: 101 fields");
        // On HTTP/1.1 hyper's parser refuses a count over the limit itself, before Tripline
        // sees the request: its 431 has no reason (docs/cli.md).
        if proto == Proto::H2 {
            assert_eq!(r.reason(), Some("request-headers-too-large"), "{proto:?}: 101 fields");
        }
        assert_eq!(up.requests(), before, "{proto:?}: refused requests never reach the upstream");
    }
}

/// The flags move both limits, for both protocols (a count other than hyper's default, 100,
/// goes through hyper's `max_headers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_limits_follow_their_flags() {
    let up = Upstream::http("h2").await;
    let port = free_port();
    let yaml = config::simple(port, "HTTP", &[up.addr], None);
    let _proxy =
        Proxy::start_args(&yaml, &["--max-request-headers-kb", "8", "--max-request-headers", "10"]).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for proto in [Proto::H1, Proto::H2] {
        // Nine fields: ten with HTTP/1.1's Host (HTTP/2's pseudo-header fields do not count).
        let ok = get_with_fields(addr, proto, &metadata(9, 768)).await;
        assert_eq!(ok.status, 200, "{proto:?}: 9 fields, 7 KiB");
        assert_eq!(get_with_fields(addr, proto, &metadata(11, 4)).await.status, 431, "{proto:?}: 11 fields");
        assert_eq!(get_with_fields(addr, proto, &metadata(9, 1024)).await.status, 431, "{proto:?}: 9 KiB");
    }
}

/// Sends `bytes` as a connection's first bytes, then reads until the proxy closes.
async fn first_bytes(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    read.expect("an answer and the close within 5 s").expect("a clean close");
    got
}

/// GOAWAY, last stream 0, PROTOCOL_ERROR.
const PREFACE_GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// h2spec http2/3.5/2: bytes that are neither HTTP/1.x nor the HTTP/2 preface are an invalid
/// preface, a connection error PROTOCOL_ERROR, on both kinds of listener; HTTP/1.x (well
/// formed or not) is still HTTP/1.x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_connection_preface_gets_goaway_and_http_1_x_its_answer() {
    let up = Upstream::http("h2").await;
    let (http_port, grpc_port) = (free_port(), free_port());
    let yaml = config::join(&[
        config::gateway("edge", http_port, "HTTP"),
        config::gateway("grpc", grpc_port, "GRPC"),
        config::service_entry("backend.local", "HTTP", &[up.addr]),
        config::virtual_service("backend", &["*"], "edge", &config::http_route("backend.local")),
        config::virtual_service("backend-grpc", &["*"], "grpc", &config::http_route("backend.local")),
    ]);
    let proxy = Proxy::start(&yaml).await;
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    let grpc = SocketAddr::from(([127, 0, 0, 1], grpc_port));
    for addr in [http, grpc] {
        // What h2spec sends, and a preface that goes wrong after `PRI `.
        assert_eq!(first_bytes(addr, b"INVALID CONNECTION PREFACE\r\n\r\n").await, PREFACE_GOAWAY);
        assert_eq!(first_bytes(addr, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").await, PREFACE_GOAWAY);
    }
    let errors = proxy
        .metric("tripline_downstream_http2_connection_errors_total", &[("reason", "PROTOCOL_ERROR")])
        .await;
    assert_eq!(errors, 4.0);
    // A malformed HTTP/1.1 request is answered as one on the HTTP listener (hyper's 400) ...
    let got = first_bytes(http, b"GET /\x01 HTTP/1.1\r\nhost: backend.local\r\n\r\n").await;
    assert!(got.starts_with(b"HTTP/1.1 400 "), "{:?}", String::from_utf8_lossy(&got));
    // ... and HTTP/1.1 on the gRPC listener is told to use HTTP/2.
    let got = first_bytes(grpc, b"GET / HTTP/1.1\r\nhost: backend.local\r\n\r\n").await;
    assert!(got.starts_with(b"HTTP/1.1 505 "), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(up.requests(), 0);
}
