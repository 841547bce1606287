//! Locally generated responses: overflow reasons under concurrent load, connect failure,
//! upstream reset, route timeout. Each carries `x-tripline-reason` and shows in metrics. Time
//! bounds here are only "not sooner than"; when each comes, exactly, is checked under paused
//! time in `crates/tripline-proxy/tests/` (pools, timeouts).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::spawn_gets;
use crate::support::config;
use crate::support::faulty::{Fault, Faulty};
use crate::support::{eventually, free_port, get_with, Conn, Proto, Proxy, Resp, Upstream};
use crate::tcp::{read_exact_timeout, tcp_config, IO_TIMEOUT};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `n` concurrent GETs, each on its own connection.
async fn burst(addr: SocketAddr, n: usize) -> Vec<Resp> {
    let mut out = Vec::new();
    for t in spawn_gets(addr, "backend.local", "/burst", n) {
        out.push(t.await.unwrap().expect("every request gets a response"));
    }
    out
}

fn summary(rs: &[Resp]) -> Vec<String> {
    rs.iter().map(|r| format!("{} {:?} in {:?}", r.status, r.reason(), r.elapsed)).collect()
}

/// Checks a burst against a slow (800 ms) upstream: only 200s and 503s with `reason`, at most
/// `max_ok` 200s, and the metric counts the rejections. (That the refusals are immediate, and
/// exactly which requests are served when, is `crates/tripline-proxy/tests/pools.rs`.)
async fn assert_overflow(proxy: &Proxy, rs: &[Resp], reason: &str, max_ok: usize) {
    let ok = rs.iter().filter(|r| r.status == 200).count();
    let rejected: Vec<&Resp> = rs.iter().filter(|r| r.status == 503).collect();
    assert!((1..=max_ok).contains(&ok), "{ok} requests admitted (want 1..={max_ok}): {:?}", summary(rs));
    assert_eq!(ok + rejected.len(), rs.len(), "unexpected statuses: {:?}", summary(rs));
    assert!(rejected.len() >= rs.len() - max_ok, "too few rejections: {:?}", summary(rs));
    for r in &rejected {
        assert_eq!(r.reason(), Some(reason), "{:?}", summary(rs));
        assert_eq!(r.upstream(), None);
    }
    let counted = proxy.metric("tripline_local_responses_total", &[("reason", reason)]).await;
    assert!(
        counted >= rejected.len() as f64,
        "tripline_local_responses_total{{reason=\"{reason}\"}} = {counted}, {} rejections seen",
        rejected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_pending_when_connections_and_queue_are_full() {
    let up = Upstream::http_delayed("slow", Duration::from_millis(800)).await;
    let port = free_port();
    let tp =
        "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n";
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], Some(tp))).await;
    let rs = burst(addr(port), 6).await;
    // One request on the single connection, one waiting in the queue, the rest rejected.
    assert_overflow(&proxy, &rs, "overflow-pending", 2).await;
    // HTTP/1.1 with one connection: never more than one request at the upstream at once.
    assert_eq!(up.max_active(), 1, "maxConnections 1 but the upstream served requests concurrently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_requests_when_concurrency_limit_is_reached() {
    let up = Upstream::http_delayed("slow", Duration::from_millis(800)).await;
    let port = free_port();
    let tp = "    connectionPool:\n      tcp: {maxConnections: 100}\n      http: {http1MaxPendingRequests: 100, http2MaxRequests: 2}\n";
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], Some(tp))).await;
    let rs = burst(addr(port), 6).await;
    assert_overflow(&proxy, &rs, "overflow-requests", 2).await;
    assert_eq!(
        up.requests(),
        rs.iter().filter(|r| r.status == 200).count(),
        "rejected requests reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_connections_when_a_pending_request_waits_past_connect_timeout() {
    // One connection, busy for 1.5 s; the queue has room, so the others wait as pending, and
    // each is refused once `connectTimeout` passes without a connection coming free.
    let up = Upstream::http_delayed("slow", Duration::from_millis(1500)).await;
    let port = free_port();
    let tp = "    connectionPool:\n      tcp: {maxConnections: 1, connectTimeout: 300ms}\n      http: {http1MaxPendingRequests: 10}\n";
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], Some(tp))).await;
    let rs = burst(addr(port), 4).await;
    let ok: Vec<&Resp> = rs.iter().filter(|r| r.status == 200).collect();
    assert_eq!(ok.len(), 1, "one request holds the one connection: {:?}", summary(&rs));
    for r in rs.iter().filter(|r| r.status != 200) {
        assert_eq!(
            (r.status.as_u16(), r.reason()),
            (503, Some("overflow-connections")),
            "{:?}",
            summary(&rs)
        );
        assert!(
            r.elapsed >= Duration::from_millis(300) && r.elapsed < ok[0].elapsed,
            "refused after {:?}: should wait connectTimeout (300 ms), not the upstream (1.5 s)",
            r.elapsed
        );
    }
    let counted = proxy.metric("tripline_local_responses_total", &[("reason", "overflow-connections")]).await;
    assert!(counted >= 3.0, "overflow-connections counted {counted}, 3 refusals seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_upstream_when_the_subset_has_no_endpoints() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    // The route's subset selects `version: v2`; the only endpoint has no labels.
    let docs = [
        config::gateway("edge", port, "HTTP"),
        config::service_entry("backend.local", "HTTP", &[up.addr]),
        config::virtual_service(
            "backend",
            &["*"],
            "edge",
            "  http:\n  - route:\n    - destination: {host: backend.local, subset: v2, port: {number: 80}}\n",
        ),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: backend}\nspec:\n  host: backend.local\n  subsets:\n  - {name: v2, labels: {version: v2}}\n".to_owned(),
    ];
    let proxy = Proxy::start(&config::join(&docs)).await;
    let r = get_with(addr(port), "backend.local", "/", &[]).await.expect("a response");
    assert_eq!((r.status.as_u16(), r.reason()), (503, Some("no-healthy-upstream")));
    assert_eq!(up.requests(), 0);
    let counted = proxy.metric("tripline_local_responses_total", &[("reason", "no-healthy-upstream")]).await;
    assert!(counted >= 1.0, "no-healthy-upstream not counted\n{}", proxy.metrics().await);
}

/// On a TCP listener, maxConnections is the only limit: a connection over it is closed at
/// once (no bytes are proxied) and counted as `overflow-connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_connections_on_tcp_listener() {
    let up = Upstream::tcp_echo("t1").await;
    let port = free_port();
    let tp = "    connectionPool:\n      tcp: {maxConnections: 1}\n";
    let proxy = Proxy::start(&tcp_config(port, up.addr, Some(tp))).await;

    let mut first = TcpStream::connect(addr(port)).await.unwrap();
    first.write_all(b"one").await.unwrap();
    assert_eq!(read_exact_timeout(&mut first, 3).await, b"one");

    let mut second = TcpStream::connect(addr(port)).await.unwrap();
    let _ = second.write_all(b"two").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(IO_TIMEOUT, second.read_to_end(&mut buf))
        .await
        .expect("the connection over maxConnections must be closed, not left hanging");
    assert!(read.is_err() || buf.is_empty(), "second connection got bytes back: {buf:?}");
    assert_eq!(up.connections(), 1, "the upstream saw a second connection");
    let counted = proxy.metric("tripline_local_responses_total", &[("reason", "overflow-connections")]).await;
    assert!(counted >= 1.0, "overflow-connections not counted\n{}", proxy.metrics().await);

    // The first connection is unaffected, and once it closes a new one is admitted.
    first.write_all(b"again").await.unwrap();
    assert_eq!(read_exact_timeout(&mut first, 5).await, b"again");
    drop(first);
    eventually("the upstream to see the first connection close", Duration::from_secs(5), || async {
        up.active() == 0
    })
    .await;
    let mut third = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let mut s = TcpStream::connect(addr(port)).await.unwrap();
        s.write_all(b"three").await.unwrap();
        let mut buf = [0u8; 5];
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await {
            third = Some(buf);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        third.as_ref().map(|b| &b[..]),
        Some(&b"three"[..]),
        "no connection admitted after the first closed"
    );
    assert_eq!(up.max_open(), 1, "maxConnections 1 but the upstream had more connections open at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_503_upstream_connect_failure() {
    let dead: SocketAddr = addr(free_port()); // nothing listens there
    let port = free_port();
    let tp = "    connectionPool:\n      tcp: {connectTimeout: 1s}\n";
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[dead], Some(tp))).await;
    let r =
        get_with(addr(port), "backend.local", "/", &[]).await.expect("a response, not a dropped connection");
    assert_eq!(r.status, 503);
    assert_eq!(r.reason(), Some("upstream-connect-failure"));
    assert!(r.elapsed < Duration::from_secs(3), "refused connect took {:?}", r.elapsed);
    let counted =
        proxy.metric("tripline_local_responses_total", &[("reason", "upstream-connect-failure")]).await;
    assert!(counted >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_is_reported() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let _proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], None)).await;
    let r = get_with(addr(port), "backend.local", "/reset", &[])
        .await
        .expect("a response, not a dropped connection");
    assert!(r.status == 502 || r.status == 503, "status {}", r.status);
    assert_eq!(r.reason(), Some("upstream-reset"));
    // The proxy still serves afterwards.
    let r = get_with(addr(port), "backend.local", "/fine", &[]).await.unwrap();
    assert_eq!(r.status, 200);
}

/// A proxy whose one route to `upstream` has this VirtualService `timeout`.
async fn with_route_timeout(upstream: SocketAddr, timeout: &str) -> (Proxy, u16) {
    with_route_timeout_args(upstream, timeout, &[]).await
}

async fn with_route_timeout_args(upstream: SocketAddr, timeout: &str, args: &[&str]) -> (Proxy, u16) {
    let port = free_port();
    let routes =
        format!("  http:\n  - timeout: {timeout}\n    route:\n    - destination: {{host: backend.local, port: {{number: 80}}}}\n");
    let yaml = config::join(&[
        config::gateway("edge", port, "HTTP"),
        config::service_entry("backend.local", "HTTP", &[upstream]),
        config::virtual_service("backend", &["*"], "edge", &routes),
    ]);
    (Proxy::start_args(&yaml, args).await, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504() {
    let up = Upstream::http_delayed("slow", Duration::from_secs(2)).await;
    let (proxy, port) = with_route_timeout(up.addr, "200ms").await;
    let r = get_with(addr(port), "backend.local", "/", &[]).await.unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.reason(), Some("route-timeout"));
    assert!(r.elapsed >= Duration::from_millis(200), "timeout 200ms answered after {:?}", r.elapsed);
    let counted = proxy.metric("tripline_local_responses_total", &[("reason", "route-timeout")]).await;
    assert!(counted >= 1.0);
}

/// The route timeout covers the whole response, as Envoy's does: an upstream that sends the
/// head and a few bytes, then stalls for 10 s, has its response cut at the 300 ms deadline. The
/// client already has a 200 head, so it sees the body fail (HTTP/1.1: the connection closes
/// short of its content-length; HTTP/2: the stream is reset), and the cut is counted as a
/// `route-timeout`, in the metrics and in the access log line, which is written when the body
/// ends and so shows the cut, the bytes that did go out and the whole duration. The proxy keeps
/// serving. (When the cut comes, to the millisecond: `crates/tripline-proxy/tests/timeouts.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_cuts_a_response_body_that_stalls() {
    let (_up, proxy, port, log) = logged_stall("300ms").await;
    for proto in [Proto::H1, Proto::H2] {
        let started = std::time::Instant::now();
        let (_conn, resp) = get_stalled(port, proto).await;
        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
        let elapsed = started.elapsed();
        assert!(body.is_err(), "{proto:?}: a body cut at the deadline must not look complete");
        assert!(
            elapsed >= Duration::from_millis(300),
            "{proto:?}: timeout 300ms, body cut after {elapsed:?}"
        );
    }
    let counted = proxy.metric("tripline_local_responses_total", &[("reason", "route-timeout")]).await;
    assert_eq!(counted, 2.0);
    for line in crate::support::access_log_lines(&log, 2).await {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["response_end"], "route-timeout", "{line}");
        assert_eq!(line["bytes_sent"], 10, "the 10 bytes before the stall: {line}");
        let (total, head) =
            (line["duration_ms"].as_f64().unwrap(), line["response_head_ms"].as_f64().unwrap());
        assert!(total >= 300.0 && head < total, "the duration runs to the cut: {line}");
    }
    // A new connection is served as before (the head arrives; the body would be cut again).
    let mut conn = Conn::connect(addr(port), Proto::H1).await.unwrap();
    let req =
        conn.request(http::Method::GET, "backend.local", "/").body(crate::support::client::empty()).unwrap();
    assert_eq!(conn.send(req).await.unwrap().status(), 200);
}

/// A client that goes away in the middle of a response body is logged as such, when it goes:
/// the upstream stalls for 10 s and the route allows 15 s, but the line appears at once, with
/// `downstream-disconnect`, and the abandoned upstream attempt is not counted as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_body_is_logged_as_a_disconnect() {
    let (_up, proxy, port, log) = logged_stall("15s").await;
    for proto in [Proto::H1, Proto::H2] {
        let (conn, resp) = get_stalled(port, proto).await;
        let mut body = resp.into_body();
        let first = http_body_util::BodyExt::frame(&mut body).await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), 10, "{proto:?}: the bytes before the stall");
        drop(body);
        drop(conn);
    }
    for line in crate::support::access_log_lines(&log, 2).await {
        assert_eq!(line["response_end"], "downstream-disconnect", "{line}");
        assert_eq!(line["bytes_sent"], 10, "{line}");
        // Logged when the client left, not when the upstream's 10 s stall ended.
        assert!(line["duration_ms"].as_f64().unwrap() < 5000.0, "{line}");
    }
    let timeouts = proxy.metric("tripline_local_responses_total", &[("reason", "route-timeout")]).await;
    assert_eq!(timeouts, 0.0);
}

/// A proxy with an access log and the route timeout `timeout`, in front of an upstream that
/// sends a 200 head and 10 of 1000 body bytes, then stalls for 10 s.
async fn logged_stall(timeout: &str) -> (Faulty, Proxy, u16, std::path::PathBuf) {
    let up = Faulty::start("stall", Fault::StallMidResponse(Duration::from_secs(10))).await;
    let log = crate::support::proxy::unique_dir("stall-log").join("access.log");
    let (proxy, port) =
        with_route_timeout_args(up.addr, timeout, &["--access-log", log.to_str().unwrap()]).await;
    (up, proxy, port, log)
}

/// `GET /` on a new connection; the response head must be a 200.
async fn get_stalled(port: u16, proto: Proto) -> (Conn, http::Response<hyper::body::Incoming>) {
    let mut conn = Conn::connect(addr(port), proto).await.unwrap();
    let req =
        conn.request(http::Method::GET, "backend.local", "/").body(crate::support::client::empty()).unwrap();
    let resp = conn.send(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{proto:?}");
    (conn, resp)
}

/// A client that leaves before the response head is logged too, when it leaves: status 0 (as
/// Envoy logs it) and `downstream-disconnect`, with the route it had been given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_the_head_is_logged_with_status_0() {
    let up = Upstream::http_delayed("slow", Duration::from_secs(10)).await;
    let log = crate::support::proxy::unique_dir("dc-head-log").join("access.log");
    let (_proxy, port) =
        with_route_timeout_args(up.addr, "15s", &["--access-log", log.to_str().unwrap()]).await;
    let mut client = TcpStream::connect(addr(port)).await.unwrap();
    client.write_all(b"HEAD /slow HTTP/1.1\r\nHost: backend.local\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    let line = crate::support::access_log_lines(&log, 1).await.remove(0);
    assert_eq!(
        (line["status"].as_u64(), line["response_end"].as_str()),
        (Some(0), Some("downstream-disconnect")),
        "{line}"
    );
    assert_eq!(line["path"], "/slow");
    assert_eq!(line["route"], "backend/http[0]", "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() < 5000.0, "logged when the client left: {line}");
}
