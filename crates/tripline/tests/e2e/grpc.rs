//! gRPC (hand-rolled framing over h2c): unary, server streaming, error status in trailers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use bytes::BytesMut;
use hyper::body::Frame;

use crate::support::client::channel_body;
use crate::support::config;
use crate::support::upstream::{grpc_call, grpc_frame, grpc_messages, grpc_request, grpc_take_message};
use crate::support::{free_port, Conn, Proto, Proxy, Upstream};

async fn grpc_proxy(up: &Upstream) -> (Proxy, SocketAddr) {
    let port = free_port();
    let proxy = Proxy::start(&config::simple(port, "GRPC", &[up.addr], None)).await;
    (proxy, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_keeps_trailers() {
    let up = Upstream::http("g1").await;
    let (_proxy, addr) = grpc_proxy(&up).await;
    check_unary(addr).await;
}

pub async fn check_unary(addr: SocketAddr) {
    let mut conn = Conn::connect(addr, Proto::H2).await.unwrap();
    let r = conn.call(grpc_request(&conn, "/test.Echo/Unary", b"hello")).await.expect("unary call");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    let msgs = grpc_messages(&r.body);
    assert_eq!(msgs.len(), 1, "one response message");
    assert_eq!(&msgs[0][..], b"hello|g1");
    let trailers = r.trailers.expect("gRPC trailers reach the client");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_streaming_streams_and_keeps_trailers() {
    let up = Upstream::http("g1").await;
    let (_proxy, addr) = grpc_proxy(&up).await;
    check_stream(addr).await;
}

pub async fn check_stream(addr: SocketAddr) {
    let mut conn = Conn::connect(addr, Proto::H2).await.unwrap();
    let resp = conn.send(grpc_request(&conn, "/test.Echo/Stream", b"5")).await.expect("stream call");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut first_data_at = None;
    let mut trailers = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(frame) =
        tokio::time::timeout_at(deadline.into(), body.frame()).await.expect("stream within 5 s")
    {
        let frame = frame.expect("stream frame");
        if frame.is_data() {
            first_data_at.get_or_insert_with(Instant::now);
            data.extend_from_slice(&frame.into_data().unwrap());
        } else if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    let spread = first_data_at.expect("no message").elapsed();
    let msgs: Vec<String> =
        grpc_messages(&data).iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
    assert_eq!(msgs, ["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"]);
    // Messages are sent 80 ms apart: the first must arrive well before the end.
    assert!(
        spread >= Duration::from_millis(200),
        "stream buffered: first message only {spread:?} before end"
    );
    let trailers = trailers.expect("trailers after the stream");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_streaming_answers_each_message_while_the_request_streams() {
    let up = Upstream::http("g1").await;
    let (_proxy, addr) = grpc_proxy(&up).await;
    check_bidi(addr).await;
}

/// A bidirectional call in lockstep: each message is sent only once the echo of the one
/// before has come back, so a proxy that holds the request body (or the response) until the
/// request ends never gets past the first message.
pub async fn check_bidi(addr: SocketAddr) {
    const STEP: Duration = Duration::from_secs(3);
    let mut conn = Conn::connect(addr, Proto::H2).await.unwrap();
    let (tx, req_body) = channel_body(4);
    let req = grpc_call(&conn, "/test.Echo/Bidi", req_body);
    tx.send(Frame::data(grpc_frame(b"ping-0"))).await.unwrap();
    let resp = tokio::time::timeout(STEP, conn.send(req))
        .await
        .expect("no response head while the request streams")
        .expect("bidi call");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    for i in 0..5 {
        if i > 0 {
            tx.send(Frame::data(grpc_frame(format!("ping-{i}").as_bytes()))).await.unwrap();
        }
        let echo = loop {
            if let Some(msg) = grpc_take_message(&mut buf) {
                break msg;
            }
            let frame = tokio::time::timeout(STEP, body.frame())
                .await
                .unwrap_or_else(|_| panic!("no echo of message {i} while the request is still open"))
                .unwrap_or_else(|| panic!("the response ended before the echo of message {i}"))
                .expect("response frame");
            let data = frame.into_data().unwrap_or_else(|f| panic!("trailers before echo {i}: {f:?}"));
            buf.extend_from_slice(&data);
        };
        assert_eq!(&echo[..], format!("ping-{i}|g1").as_bytes());
    }
    // The client ends its side; the server then ends the call with its status.
    drop(tx);
    let rest = tokio::time::timeout(STEP, body.collect())
        .await
        .expect("no trailers after the request ended")
        .expect("response end");
    let trailers = rest.trailers().cloned().expect("trailers end the call");
    assert!(buf.is_empty() && rest.to_bytes().is_empty(), "messages nobody sent");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_error_status_passes_untouched() {
    let up = Upstream::http("g1").await;
    let (_proxy, addr) = grpc_proxy(&up).await;
    check_fail(addr).await;
}

pub async fn check_fail(addr: SocketAddr) {
    let mut conn = Conn::connect(addr, Proto::H2).await.unwrap();
    let r = conn.call(grpc_request(&conn, "/test.Echo/Fail", b"x")).await.expect("failing call");
    assert_eq!(r.status, 200, "gRPC errors travel in trailers with HTTP 200");
    assert_eq!(r.reason(), None, "an upstream gRPC error is not a local response");
    // A trailers-only response may arrive as headers; either way the values are untouched.
    let find = |name: &str| r.trailers.as_ref().and_then(|t| t.get(name)).or(r.headers.get(name)).cloned();
    let status = find("grpc-status").expect("grpc-status reaches the client");
    let message = find("grpc-message").expect("grpc-message reaches the client");
    assert_eq!(status, "13");
    assert_eq!(message, "boom%20here");
}

/// A Gateway server with `protocol: GRPC` is an HTTP/2-only listener (h2c prior knowledge,
/// nothing detected): gRPC works on it end to end, and an HTTP/1.1 client gets a clear answer
/// at once rather than a reset or a wait for the request-head timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_listener_serves_h2c_and_refuses_http1_clearly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::http("g1").await;
    let port = free_port();
    let yaml = config::join(&[
        config::gateway("edge", port, "GRPC"),
        config::service_entry("grpc.local", "GRPC", &[up.addr]),
        config::virtual_service("grpc", &["*"], "edge", &config::http_route("grpc.local")),
    ]);
    let log = crate::support::proxy::unique_dir("grpc-access-log").join("access.log");
    let proxy = Proxy::start_args(&yaml, &["--access-log", log.to_str().unwrap()]).await;
    let listeners = proxy.admin_get("/listeners").await.json();
    assert_eq!(listeners["listeners"][0]["protocol"], "Http2", "{listeners}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    check_unary(addr).await;
    check_stream(addr).await;
    check_bidi(addr).await;

    // HTTP/1.x requests, a full one and one shorter than the HTTP/2 preface (24 bytes): each
    // is answered at once, not reset (the first was) nor left to the 30 s request-head
    // timeout (the second was).
    for head in ["GET / HTTP/1.1\r\nHost: grpc.local\r\n\r\n", "GET / HTTP/1.0\r\n\r\n"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        let read = read.unwrap_or_else(|_| panic!("{head:?}: no answer and no close within 5 s"));
        let got = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "{head:?}: {read:?} after {got:?}");
        assert!(got.starts_with("HTTP/1.1 505 "), "{head:?}: {got:?}");
        assert!(got.contains("\r\nx-tripline-reason: http2-only\r\n"), "{head:?}: {got:?}");
        assert!(got.ends_with("HTTP/2 only (h2c with prior knowledge)\n"), "{head:?}: {got:?}");
    }
    let counted = proxy.metric("tripline_local_responses_total", &[("reason", "http2-only")]).await;
    assert_eq!(counted, 2.0, "two HTTP/1.x clients refused");
    // Both refusals are in the access log, with what was read of their request lines.
    // (After the three gRPC calls' lines.)
    let refused: Vec<_> = crate::support::access_log_lines(&log, 5)
        .await
        .into_iter()
        .filter(|v| v["reason"] == "http2-only")
        .collect();
    // The two refusals' lines are written as each ends: either may come first.
    let mut seen: Vec<_> = refused
        .iter()
        .map(|v| {
            (
                v["status"].clone(),
                v["method"].clone(),
                v["path"].clone(),
                v["protocol"].clone(),
                v["authority"].clone(),
            )
        })
        .collect();
    seen.sort_by_key(|line| line.3.as_str().map(str::to_string));
    assert_eq!(
        seen,
        [
            (505.into(), "GET".into(), "/".into(), "HTTP/1.0".into(), "".into()),
            (505.into(), "GET".into(), "/".into(), "HTTP/1.1".into(), "grpc.local".into()),
        ],
        "{refused:?}"
    );
    assert_eq!(up.requests(), 3, "only the gRPC calls reached the upstream");
    check_unary(addr).await;
}

/// What a gRPC client sees of an answer Tripline gives itself: HTTP 200 with the status in
/// the head and no body (trailers-only), the reason kept.
fn assert_grpc_status(r: &crate::support::Resp, code: &str, reason: &str) {
    assert_eq!(r.status, 200, "gRPC clients read grpc-status, not the HTTP status: {r:?}");
    assert_eq!(r.header("grpc-status"), Some(code), "{r:?}");
    assert_eq!(r.reason(), Some(reason), "{r:?}");
    assert!(r.header("grpc-message").is_some_and(|m| !m.is_empty()), "{r:?}");
    assert!(r.body.is_empty() && r.trailers.is_none(), "trailers-only: {r:?}");
}

/// Refusals (a connect failure, an open breaker) are gRPC statuses a client can act on:
/// UNAVAILABLE, which gRPC clients retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_grpc_calls_are_grpc_statuses() {
    let port = free_port();
    let dead = crate::support::faulty::refusing_addr();
    let policy = "apiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: backend}\nspec:\n  target: {host: backend.local}\n  circuitBreaker: {consecutiveFailures: 100}\n";
    let yaml = config::join(&[config::simple(port, "GRPC", &[dead], None), policy.to_owned()]);
    let proxy = Proxy::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = Conn::connect(addr, Proto::H2).await.unwrap();
    let r = conn.call(grpc_request(&conn, "/test.Echo/Unary", b"hi")).await.unwrap();
    assert_grpc_status(&r, "14", "upstream-connect-failure");

    let forced = proxy.admin_post("/breakers/force-open?cluster=outbound%7C80%7C%7Cbackend.local").await;
    assert_eq!(forced.status, 200, "{}", forced.text());
    let r = conn.call(grpc_request(&conn, "/test.Echo/Unary", b"hi")).await.unwrap();
    assert_grpc_status(&r, "14", "breaker-open");
    assert!(r.header("retry-after").is_some(), "{r:?}");

    // A plain HTTP request on the same route still gets the HTTP answer.
    let mut h2 = Conn::connect(addr, Proto::H2).await.unwrap();
    let plain = h2.get("backend.local", "/").await.unwrap();
    assert_eq!(plain.status, 503);
    assert_eq!(plain.reason(), Some("breaker-open"));
}

/// `grpc-timeout` is the call's deadline, capped by the route timeout; the upstream gets the
/// time that is left, and a call past its deadline ends with DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_the_deadline_and_what_is_left_goes_upstream() {
    let up = Upstream::http("g1").await;
    let port = free_port();
    let route = "  http:\n  - route:\n    - destination: {host: backend.local, port: {number: 80}}\n    timeout: 2s\n";
    let yaml = config::join(&[
        config::service_entry("backend.local", "GRPC", &[up.addr]),
        config::edge(port, route),
    ]);
    let _proxy = Proxy::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = Conn::connect(addr, Proto::H2).await.unwrap();
    let call = |conn: &Conn, timeout: &str, delay_ms: u64| {
        let mut req = grpc_request(conn, "/test.Echo/Unary", b"hi");
        req.headers_mut().insert("grpc-timeout", timeout.parse().unwrap());
        req.headers_mut().insert("x-delay-ms", delay_ms.into());
        req
    };
    let seen_ms = |r: &crate::support::Resp| -> u64 {
        let v = r.header("x-seen-grpc-timeout").unwrap_or_else(|| panic!("no grpc-timeout upstream: {r:?}"));
        v.strip_suffix('m').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("in milliseconds: {v}"))
    };

    // The client's deadline is shorter than the route's: it is what goes upstream, less the
    // time already spent.
    let r = conn.call(call(&conn, "1500m", 0)).await.unwrap();
    assert_eq!(
        r.trailers.as_ref().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap()),
        Some("0")
    );
    let ms = seen_ms(&r);
    assert!((1000..=1500).contains(&ms), "upstream got {ms} ms of a 1500 ms deadline");
    // Longer than the route's 2 s: capped.
    let ms = seen_ms(&conn.call(call(&conn, "30S", 0)).await.unwrap());
    assert!((1500..=2000).contains(&ms), "upstream got {ms} ms; the route allows 2000");

    // Past the client's deadline: DEADLINE_EXCEEDED. (At the deadline to the millisecond, and
    // the upstream's share exact: `crates/tripline-proxy/tests/timeouts.rs`.)
    let r = conn.call(call(&conn, "300m", 5000)).await.unwrap();
    assert_grpc_status(&r, "4", "route-timeout");
}

/// An upstream that dies after the response head ends the call with UNAVAILABLE in trailers
/// (retryable), after the messages that did arrive; not with a stream reset, which clients
/// report as INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dying_mid_call_ends_it_with_unavailable() {
    let up = Upstream::http("g1").await;
    let (_proxy, addr) = grpc_proxy(&up).await;
    let mut conn = Conn::connect(addr, Proto::H2).await.unwrap();
    let r = conn.call(grpc_request(&conn, "/test.Echo/Die", b"hello")).await.expect("the call ends cleanly");
    assert_eq!(r.status, 200);
    let msgs = grpc_messages(&r.body);
    assert_eq!(msgs.len(), 1, "the message sent before the upstream died arrives");
    let trailers = r.trailers.expect("a status in trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "14", "{trailers:?}");
    assert!(trailers.get("grpc-message").is_some(), "{trailers:?}");
}
