//! Client connections under paused time: the request-head timeout (`--header-timeout`), the
//! stream idle timeout (`--stream-idle-timeout`) and the drain (SIGTERM). Both timeouts are
//! enforced by the housekeeping task's sweep, so each fires at the first sweep at or after its
//! expiry, never before: the tests assert that sweep's time exactly. (With a head timeout under
//! 10 s the sweep runs every 100 ms tick, otherwise every tenth of the head timeout, at most
//! every second; ticks run at 0, 100 ms, 200 ms... from the proxy's start.)

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tripline_proxy::Proxy;

use support::client::{empty, send};
use support::config;
use support::in_process::{access_log_lines, ms, with_access_log};
use support::{socket_state, Conn, Fault, Faulty, InProcess, Proto, Socket, Upstream};

/// Reads `s` until the proxy closes it; what it sent, and when (virtual, since `proxy.t0`).
async fn read_to_close(proxy: &InProcess, mut s: TcpStream) -> (String, Duration) {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "not closed within 60 s: {}", String::from_utf8_lossy(&got));
    (String::from_utf8_lossy(&got).into_owned(), proxy.now())
}

/// `--header-timeout 500ms`: a connection with no request in flight for 500 ms is closed at
/// the sweep that finds it so: one still sending its head (slow loris) at 500 ms, one whose
/// request took 1.5 s at 1.5 s + 500 ms. A request in flight is never cut, and an HTTP/2
/// connection that has made a request is not closed for idling.
#[tokio::test(start_paused = true)]
async fn the_head_timeout_closes_connections_without_a_request_in_flight() {
    let up = Upstream::http_delayed("slow", Duration::from_millis(1500)).await;
    let proxy = Proxy::new();
    proxy.shared.client_conns.set_header_timeout(ms(500));
    let proxy = InProcess::start_with(proxy, |port| config::simple(port, "HTTP", &[up.addr], None)).await;

    let mut slow_head = TcpStream::connect(proxy.addr).await.unwrap();
    let mut busy = TcpStream::connect(proxy.addr).await.unwrap();
    slow_head.write_all(b"GET / HTTP/1.1\r\nHost: backend.local\r\n").await.unwrap();
    busy.write_all(b"GET / HTTP/1.1\r\nHost: backend.local\r\n\r\n").await.unwrap();
    let mut h2 = Conn::connect(proxy.addr, Proto::H2).await.unwrap();
    let mut first = h2.clone_h2();
    let h2_first = tokio::spawn(async move { first.get("backend.local", "/").await.map(|r| r.status) });

    proxy.run_until(ms(499)).await;
    assert_eq!(socket_state(&slow_head), Socket::Quiet, "closed before the head timeout");
    let (sent, closed) = read_to_close(&proxy, slow_head).await;
    assert_eq!((sent.as_str(), closed), ("", ms(500)), "an incomplete head gets no response, and the close");

    let (sent, closed) = read_to_close(&proxy, busy).await;
    assert!(sent.starts_with("HTTP/1.1 200"), "the request in flight was cut: {sent:?}");
    assert_eq!(closed, ms(2000), "closed when idle for the timeout after its response at 1.5 s");

    // Idle since 1.5 s, the HTTP/2 connection still serves at 2.5 s.
    assert_eq!(h2_first.await.unwrap().unwrap(), 200);
    proxy.run_until(ms(2500)).await;
    assert_eq!(h2.get("backend.local", "/").await.unwrap().status, 200);
    assert_eq!(proxy.metric("tripline_downstream_connections", &[]), 1.0, "only the HTTP/2 one left");
}

/// `--stream-idle-timeout 1s`, and an upstream that says nothing for 30 s: the request is
/// answered `408 stream-idle-timeout` with `connection: close` at the sweep that finds it idle
/// (the sweep runs every second here, at 0.9 s, 1.9 s...; idleness counts from the coarse
/// clock's last tick, so 1.1 s of it are needed): 1.9 s.
#[tokio::test(start_paused = true)]
async fn a_request_whose_upstream_stays_silent_gets_408_at_the_stream_idle_timeout() {
    let up = Faulty::start("silent", Fault::Slow(Duration::from_secs(30))).await;
    let proxy = Proxy::new();
    proxy.shared.client_conns.set_stream_idle_timeout(ms(1000));
    let proxy = InProcess::start_with(proxy, |port| config::simple(port, "HTTP", &[up.addr], None)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /silent HTTP/1.1\r\nhost: backend.local\r\n\r\n").await.unwrap();
    proxy.run_until(ms(1899)).await;
    assert_eq!(socket_state(&s), Socket::Quiet, "answered early");
    let (answer, closed) = read_to_close(&proxy, s).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.contains("x-tripline-reason: stream-idle-timeout"), "{answer:?}");
    assert!(answer.contains("connection: close"), "{answer:?}");
    assert_eq!(closed, ms(1900));
    assert_eq!(proxy.local_responses("stream-idle-timeout"), 1.0);
}

/// A client that never reads a large response holds the one upstream connection
/// (`maxConnections: 1`) only until the stream idle timeout (2 s; sweeps every 500 ms with a
/// 5 s head timeout, at 0.4 s, 0.9 s...): its stream is cut at the 2.4 s sweep, and the next
/// client, waiting since 1.5 s, is served then, where it would otherwise have waited for its
/// `connectTimeout` (20 s).
#[tokio::test(start_paused = true)]
async fn the_stream_idle_timeout_frees_what_a_stalled_client_holds() {
    let up = Upstream::http("big").await;
    let (proxy, log) = with_access_log("stream-idle");
    proxy.shared.client_conns.set_header_timeout(ms(5000));
    proxy.shared.client_conns.set_stream_idle_timeout(ms(2000));
    let pool = "    connectionPool:\n      tcp: {maxConnections: 1, connectTimeout: 20s}\n";
    let proxy =
        InProcess::start_with(proxy, |port| config::simple(port, "HTTP", &[up.addr], Some(pool))).await;

    // 64 MB that this client never reads: the proxy's writes stop, then the upstream's.
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    stalled.write_all(b"GET /bytes/67108864 HTTP/1.1\r\nhost: backend.local\r\n\r\n").await.unwrap();
    proxy.run_until(ms(1500)).await;
    assert_eq!(up.requests(), 1);
    let addr = proxy.addr;
    let next =
        tokio::spawn(async move { send(addr, http::Method::GET, "backend.local", "/next", &[], "").await });
    proxy.run_until(ms(2399)).await;
    assert!(!next.is_finished(), "served while the stalled client held the connection");
    let next = next.await.unwrap().unwrap();
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(proxy.now(), ms(2400), "served when the stalled stream was cut");

    // The stalled client's connection was closed under it.
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match stalled.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert_eq!(proxy.now(), ms(2400));
    let lines = access_log_lines(&log, 2);
    let cut = lines.iter().find(|l| l["path"] == "/bytes/67108864").expect("a line for the stalled request");
    assert_eq!(
        (cut["response_end"].as_str(), cut["duration_ms"].as_f64()),
        (Some("stream-idle-timeout"), Some(2400.0)),
        "{cut}"
    );
    assert_eq!(proxy.local_responses("stream-idle-timeout"), 1.0);
    let mut conn = Conn::connect(proxy.addr, Proto::H1).await.unwrap();
    let req = conn.request(http::Method::GET, "backend.local", "/after").body(empty()).unwrap();
    assert_eq!(conn.send(req).await.unwrap().status(), 200);
}

/// The drain (what SIGTERM starts): readiness goes at once and the listener closes (new
/// connections are refused), while the four requests in flight (an upstream of 3 s) finish
/// normally; the drain returns at its first look (every 20 ms from its start, 1.01 s) after
/// the last connection closed at 3 s: 3.01 s.
#[tokio::test(start_paused = true)]
async fn the_drain_refuses_new_connections_and_finishes_what_is_in_flight() {
    let up = Upstream::http_delayed("slow", Duration::from_secs(3)).await;
    let proxy = InProcess::start(|port| config::simple(port, "HTTP", &[up.addr], None)).await;
    let addr = proxy.addr;
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move {
                send(addr, http::Method::GET, "backend.local", &format!("/{i}"), &[], "").await
            })
        })
        .collect();
    proxy.run_until(ms(1010)).await;
    assert_eq!(up.active(), 4);
    let draining = proxy.proxy.clone();
    let drain = tokio::spawn(async move {
        draining.drain(Duration::from_secs(5)).await;
        tokio::time::Instant::now()
    });
    proxy.run_until(ms(1011)).await;
    assert!(!proxy.proxy.shared.ready.load(std::sync::atomic::Ordering::SeqCst), "/ready still 200");
    assert!(TcpStream::connect(addr).await.is_err(), "a new connection was accepted while draining");
    for (i, call) in in_flight.into_iter().enumerate() {
        let r = call.await.unwrap().unwrap_or_else(|e| panic!("in-flight request {i}: {e}"));
        assert_eq!((r.status.as_u16(), r.elapsed), (200, ms(3000)), "{r:?}");
    }
    let drained = drain.await.unwrap();
    assert_eq!(proxy.time_of(drained), ms(3010));
    assert_eq!(proxy.metric("tripline_downstream_connections", &[]), 0.0);
}

/// HTTP/2 keeps the stream idle timeout per stream (one connection carries many): with 1 s,
/// a stream whose upstream stays silent gets `408 stream-idle-timeout` (a gRPC call its
/// `DEADLINE_EXCEEDED`) at the connection's first check after 1.1 s of quiet (it checks every
/// quarter of the timeout from its first stream on: 1.25 s), while the connection and its other
/// streams go on.
#[tokio::test(start_paused = true)]
async fn an_http2_stream_whose_upstream_stays_silent_gets_408_and_the_connection_serves_on() {
    let silent = Faulty::start("silent", Fault::Slow(Duration::from_secs(30))).await;
    let proxy = Proxy::new();
    proxy.shared.client_conns.set_stream_idle_timeout(ms(1000));
    let proxy = InProcess::start_with(proxy, |port| config::simple(port, "HTTP", &[silent.addr], None)).await;
    let conn = Conn::connect(proxy.addr, Proto::H2).await.unwrap();
    let call = |path: &'static str, grpc: bool| {
        let mut c = conn.clone_h2();
        let mut req = c.request(http::Method::GET, "backend.local", path);
        if grpc {
            req = req.header("content-type", "application/grpc");
        }
        let req = req.body(empty()).unwrap();
        tokio::spawn(async move { (c.call(req).await.unwrap(), tokio::time::Instant::now()) })
    };
    let (plain, grpc) = (call("/silent", false), call("/silent-grpc", true));
    proxy.run_until(ms(1249)).await;
    assert!(!plain.is_finished() && !grpc.is_finished(), "answered early");
    let (r, at) = plain.await.unwrap();
    assert_eq!((r.status.as_u16(), r.reason()), (408, Some("stream-idle-timeout")), "{r:?}");
    assert_eq!(proxy.time_of(at), ms(1250));
    let (r, _) = grpc.await.unwrap();
    assert_eq!((r.status.as_u16(), r.header("grpc-status")), (200, Some("4")), "{r:?}");
    assert_eq!(r.reason(), Some("stream-idle-timeout"));
    assert_eq!(proxy.local_responses("stream-idle-timeout"), 2.0);
    // The connection itself was never idle for the client: a new stream on it is served.
    silent.set(Fault::Healthy);
    let mut c = conn.clone_h2();
    assert_eq!(c.get("backend.local", "/after").await.unwrap().status, 200);
}

/// An HTTP/2 client that never reads a large response (its stream window stays shut) holds the
/// one upstream connection (`maxConnections: 1`) only until the stream idle timeout: the
/// stream is reset (CANCEL), logged as `stream-idle-timeout`, the upstream connection is freed
/// for the next client, and the stalled client's connection still serves its other streams.
#[tokio::test(start_paused = true)]
async fn an_http2_stream_the_client_stops_reading_is_reset_and_frees_the_upstream() {
    let up = Upstream::http("big").await;
    let (proxy, log) = with_access_log("h2-stream-idle");
    proxy.shared.client_conns.set_stream_idle_timeout(ms(2000));
    let pool = "    connectionPool:\n      tcp: {maxConnections: 1, connectTimeout: 20s}\n";
    let proxy =
        InProcess::start_with(proxy, |port| config::simple(port, "HTTP", &[up.addr], Some(pool))).await;
    let mut conn = Conn::connect(proxy.addr, Proto::H2).await.unwrap();
    let req = conn.request(http::Method::GET, "backend.local", "/bytes/67108864").body(empty()).unwrap();
    // The head arrives; the body is never read, so the client's window stays shut.
    let stalled = conn.send(req).await.unwrap();
    assert_eq!(stalled.status(), 200);
    proxy.run_until(ms(1000)).await;
    let addr = proxy.addr;
    let next =
        tokio::spawn(async move { send(addr, http::Method::GET, "backend.local", "/next", &[], "").await });
    proxy.run_until(ms(2000)).await;
    assert!(!next.is_finished(), "served while the stalled stream held the connection");
    let next = next.await.unwrap().unwrap();
    assert_eq!(next.status, 200, "{next:?}");
    let cut_at = proxy.now();
    // Its last frame went out at once (the window filled), so it is idle once the coarse clock
    // reads 2.1 s; the connection checks every 500 ms (a quarter of the timeout): 2.5 s.
    assert_eq!(cut_at, ms(2500), "cut at the first check after 2.1 s of quiet");
    let body = http_body_util::BodyExt::collect(stalled.into_body()).await;
    assert!(body.is_err(), "the stalled stream was reset");
    let lines = access_log_lines(&log, 2);
    let cut = lines.iter().find(|l| l["path"] == "/bytes/67108864").expect("a line for the stalled stream");
    assert_eq!(cut["response_end"], "stream-idle-timeout", "{cut}");
    assert_eq!(proxy.local_responses("stream-idle-timeout"), 1.0);
    assert_eq!(conn.get("backend.local", "/after").await.unwrap().status, 200, "the connection serves on");
}
