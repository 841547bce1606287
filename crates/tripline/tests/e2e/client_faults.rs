//! A client's mistakes are the client's: a malformed request body, a client that leaves
//! mid-upload, one still uploading when the route deadline passes. Each is answered (or
//! logged) with its own reason, and none is ever counted by breakers or outlier detection:
//! with `consecutive5xxErrors: 3`, three anonymous clients must not be able to eject a healthy
//! endpoint and cut the service off for everyone.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::config;
use crate::support::faulty::{Fault, Faulty};
use crate::support::{access_log_lines, free_port, Proxy};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Gateway on `port` → `backend.local` at `up`, with `route` appended to the route, outlier
/// detection after 3 consecutive 5xx, and endpoint and destination breakers after 2
/// consecutive failures: any failure counted against the upstream shows within three requests.
fn guarded(port: u16, up: SocketAddr, route: &str) -> String {
    let routes = format!(
        "  http:\n  - route:\n    - destination: {{host: backend.local, port: {{number: 80}}}}\n{route}"
    );
    config::join(&[
        config::gateway("edge", port, "HTTP"),
        config::service_entry("backend.local", "HTTP", &[up]),
        config::virtual_service("backend", &["*"], "edge", &routes),
        config::destination_rule(
            "backend.local",
            "    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n",
        ),
        "apiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: backend}\nspec:\n  target: {host: backend.local}\n  endpointCircuitBreaker: {consecutiveFailures: 2, openDuration: 30s}\n  circuitBreaker: {consecutiveFailures: 2, openDuration: 30s}\n".to_owned(),
    ])
}

/// Sends `bytes` on a new connection and returns what comes back until the proxy closes
/// (bounded: 5 s). `close_write`: the client shuts its sending side after the bytes.
async fn exchange(port: u16, bytes: &[u8], close_write: bool) -> String {
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_write {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The cluster's breakers and the endpoint's outlier state, all untouched.
async fn assert_untouched(proxy: &Proxy) {
    let breakers: Value = proxy.admin_get("/breakers").await.json();
    let cluster = &breakers["clusters"][0];
    assert_eq!(cluster["breaker"]["state"], "closed", "{cluster}");
    let ep = &cluster["endpoints"][0];
    assert_eq!(ep["breaker"]["state"], "closed", "{cluster}");
    assert_eq!(ep["outlier"]["health"], "healthy", "{cluster}");
    assert_eq!(ep["outlier"]["consecutive_5xx"], 0, "no failure was counted: {cluster}");
    assert_eq!(ep["breaker"]["consecutive_failures"], 0, "{cluster}");
    assert_eq!(cluster["breaker"]["consecutive_failures"], 0, "{cluster}");
}

/// Sends the start of a request (`start`: its head and the first bytes of its body), waits until
/// the upstream has it (its `seen`-th POST), then breaks the body off: sends `rest`, and closes
/// the sending side if `close_write`. Returns what comes back until the proxy closes (at most
/// 5 s). Waiting makes sure the failure happens while an upstream attempt is in flight, the
/// case that used to count against the upstream.
async fn broken_upload(
    port: u16,
    up: &Faulty,
    seen: usize,
    start: &str,
    rest: &[u8],
    close_write: bool,
) -> String {
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(start.as_bytes()).await.unwrap();
    crate::support::eventually("the request reaches the upstream", Duration::from_secs(5), || {
        let n = up.count_method("POST");
        async move { n >= seen }
    })
    .await;
    s.write_all(rest).await.unwrap();
    if close_write {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_and_clients_leaving_mid_upload_never_count_against_the_upstream() {
    let up = Faulty::start("healthy", Fault::Healthy).await;
    let port = free_port();
    let log = crate::support::proxy::unique_dir("client-faults").join("access.log");
    let proxy =
        Proxy::start_args(&guarded(port, up.addr, ""), &["--access-log", log.to_str().unwrap()]).await;

    // A chunk whose size line is not hexadecimal, after a good chunk that has gone upstream.
    for i in 0..4 {
        let start =
            format!("POST /bad/{i} HTTP/1.1\r\nhost: backend.local\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
        let answer = broken_upload(port, &up, i + 1, &start, b"ZZ\r\n", false).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "malformed chunked body {i}: {answer:?}");
        assert!(answer.contains("x-tripline-reason: bad-request-body"), "{answer:?}");
    }
    // A body that stops 990 bytes short of its declared length: the client closes its side.
    for i in 0..4 {
        let start = format!(
            "POST /gone/{i} HTTP/1.1\r\nhost: backend.local\r\ncontent-length: 1000\r\n\r\n0123456789"
        );
        let answer = broken_upload(port, &up, i + 5, &start, b"", true).await;
        assert!(!answer.contains(" 502 "), "never an upstream failure: {answer:?}");
    }
    assert_eq!(up.count_method("POST"), 8, "each request reached the upstream before its body broke off");
    assert_untouched(&proxy).await;
    let after = crate::support::get(addr(port), "backend.local", "/after").await.unwrap();
    assert_eq!(after.status, 200, "the service is still there for everyone else");

    let lines = access_log_lines(&log, 9).await;
    let reasons: Vec<(&str, u64)> = lines
        .iter()
        .filter(|l| l["path"].as_str().is_some_and(|p| p.starts_with("/bad/") || p.starts_with("/gone/")))
        .map(|l| (l["reason"].as_str().unwrap_or("-"), l["status"].as_u64().unwrap_or(0)))
        .collect();
    let bad = reasons.iter().filter(|r| **r == ("bad-request-body", 400)).count();
    let gone = reasons.iter().filter(|r| **r == ("downstream-disconnect", 499)).count();
    assert_eq!((bad, gone), (4, 4), "access log reasons: {reasons:?}");
    for (reason, code) in [("bad-request-body", "400"), ("downstream-disconnect", "499")] {
        assert_eq!(
            proxy.metric("tripline_local_responses_total", &[("reason", reason), ("code", code)]).await,
            4.0,
            "{reason}"
        );
    }
}

/// A client that uploads too slowly for the route timeout gets `408 request-timeout`: the
/// upstream, still waiting for the body, did nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_uploading_at_the_route_deadline_gets_408_and_the_upstream_no_blame() {
    let up = Faulty::start("healthy", Fault::Healthy).await;
    let port = free_port();
    let proxy = Proxy::start(&guarded(port, up.addr, "    timeout: 500ms\n")).await;
    let mut slow = Vec::new();
    for i in 0..4 {
        slow.push(tokio::spawn(async move {
            let req = format!(
                "POST /slow/{i} HTTP/1.1\r\nhost: backend.local\r\ncontent-length: 100\r\n\r\n0123456789"
            );
            exchange(port, req.as_bytes(), false).await
        }));
    }
    for s in slow {
        let answer = s.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
        assert!(answer.contains("x-tripline-reason: request-timeout"), "{answer:?}");
    }
    assert_untouched(&proxy).await;
    let after = crate::support::get(addr(port), "backend.local", "/after").await.unwrap();
    assert_eq!(after.status, 200);
}

/// `--stream-idle-timeout`: a request whose upstream stays silent gets `408
/// stream-idle-timeout`. (A smoke test of the flag; under paused time,
/// `crates/tripline-proxy/tests/client_connections.rs` checks when, exactly, and that a client
/// that stops reading frees the upstream connection it holds for the next client.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_upstream_stays_silent_gets_408_at_the_stream_idle_timeout() {
    let up = Faulty::start("silent", Fault::Slow(Duration::from_secs(30))).await;
    let port = free_port();
    let yaml = config::simple(port, "HTTP", &[up.addr], None);
    let _proxy = Proxy::start_args(&yaml, &["--stream-idle-timeout", "1s"]).await;
    let started = std::time::Instant::now();
    let answer = exchange(port, b"GET /silent HTTP/1.1\r\nhost: backend.local\r\n\r\n", false).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.contains("x-tripline-reason: stream-idle-timeout"), "{answer:?}");
    assert!(answer.contains("connection: close"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}
