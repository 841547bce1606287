//! Route timeouts and gRPC deadlines under paused time: each fires at exactly its virtual
//! time and not a millisecond before, and the access log records the time it fired at.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::client::send;
use support::config;
use support::in_process::{access_log_lines, ms, with_access_log};
use support::upstream::grpc_request;
use support::{Conn, Fault, Faulty, InProcess, Proto, Upstream};

/// `timeout` on the route to `up` (HTTP/1.1, or what `protocol` says).
fn route_timeout(port: u16, protocol: &str, up: std::net::SocketAddr, timeout: &str) -> String {
    config::mesh(port, protocol, &[up], &format!("    timeout: {timeout}\n"), None, None)
}

/// A 1 s route timeout before the response head: 504 `route-timeout` at 1 s, not at 999 ms.
#[tokio::test(start_paused = true)]
async fn a_route_timeout_fires_exactly_on_time() {
    let up = Upstream::http_delayed("slow", Duration::from_secs(5)).await;
    let proxy = InProcess::start(|port| route_timeout(port, "HTTP", up.addr, "1s")).await;
    let addr = proxy.addr;
    let call = tokio::spawn(async move { send(addr, Method::GET, "backend.local", "/", &[], "").await });
    proxy.run_until(ms(999)).await;
    assert!(!call.is_finished(), "answered before the timeout");
    let r = call.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.reason(), r.elapsed), (504, Some("route-timeout"), ms(1000)), "{r:?}");
    assert_eq!(proxy.local_responses("route-timeout"), 1.0);
}

/// A proxy with an access log and the route timeout `timeout`, in front of an upstream that
/// sends a 200 head and 10 of 1000 body bytes at once, then stalls for 3 s.
async fn stalling(timeout: &str) -> (Faulty, InProcess, PathBuf) {
    let up = Faulty::start("stall", Fault::StallMidResponse(Duration::from_secs(3))).await;
    let (proxy, log) = with_access_log("stall");
    let proxy = InProcess::start_with(proxy, |port| route_timeout(port, "HTTP", up.addr, timeout)).await;
    (up, proxy, log)
}

/// At `start`, a GET to the stalling upstream over `proto`: the head and the first 10 bytes
/// arrive at once. The connection (to keep) and the rest of the body.
async fn stalled_at(proxy: &InProcess, start: Duration, proto: Proto) -> (Conn, Incoming) {
    proxy.run_until(start).await;
    let (conn, resp) = proxy.open_get(proto, "/").await;
    assert_eq!((resp.status().as_u16(), proxy.now()), (200, start), "{proto:?}: the head at once");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!((first.len(), proxy.now()), (10, start), "{proto:?}: the bytes before the stall");
    (conn, body)
}

/// The route timeout covers the whole response: an upstream that sends the head and 10 bytes
/// and then stalls for 3 s has its response cut at the 300 ms deadline, for an HTTP/1.1 client
/// (the connection closes short of its length) and an h2c one (the stream is reset). Counted
/// as `route-timeout`, and logged with the bytes that went out and the time of the cut.
#[tokio::test(start_paused = true)]
async fn a_route_timeout_cuts_a_response_body_that_stalls() {
    let (_up, proxy, log) = stalling("300ms").await;
    for (i, proto) in [Proto::H1, Proto::H2].into_iter().enumerate() {
        let start = ms(1000 * i as u64);
        let (_conn, body) = stalled_at(&proxy, start, proto).await;
        let cut = body.collect().await;
        assert!(cut.is_err(), "{proto:?}: a body cut at the deadline must not look complete");
        assert_eq!(proxy.now(), start + ms(300), "{proto:?}: cut at the route timeout");
    }
    assert_eq!(proxy.local_responses("route-timeout"), 2.0);
    for line in access_log_lines(&log, 2) {
        assert_eq!(
            (line["status"].as_u64(), line["response_end"].as_str()),
            (Some(200), Some("route-timeout")),
            "{line}"
        );
        assert_eq!(line["bytes_sent"], 10, "{line}");
        assert_eq!(
            (line["response_head_ms"].as_f64(), line["duration_ms"].as_f64()),
            (Some(0.0), Some(300.0)),
            "{line}"
        );
    }
}

/// A client that leaves in the middle of a body (the upstream stalls for 3 s, the route allows
/// 5 s) is logged when it leaves, with `downstream-disconnect` and the bytes it got; and one
/// that leaves before the response head, when it leaves, with status 0. Neither is a timeout.
#[tokio::test(start_paused = true)]
async fn clients_leaving_are_logged_when_they_leave() {
    use tokio::io::AsyncWriteExt;
    let (up, proxy, log) = stalling("5s").await;
    for (i, proto) in [Proto::H1, Proto::H2].into_iter().enumerate() {
        let start = ms(1000 * i as u64);
        let (conn, body) = stalled_at(&proxy, start, proto).await;
        proxy.run_until(start + ms(250)).await;
        drop(body);
        drop(conn);
    }
    // Before the head: the upstream takes 2 s to answer a HEAD, the client leaves at 200 ms.
    up.set(Fault::Slow(Duration::from_secs(2)));
    proxy.run_until(ms(2000)).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"HEAD /slow HTTP/1.1\r\nHost: backend.local\r\n\r\n").await.unwrap();
    proxy.run_until(ms(2200)).await;
    drop(client);
    proxy.run_until(ms(2201)).await;

    let lines = access_log_lines(&log, 3);
    for line in &lines[..2] {
        assert_eq!(
            (line["response_end"].as_str(), line["bytes_sent"].as_u64()),
            (Some("downstream-disconnect"), Some(10)),
            "{line}"
        );
        assert_eq!(line["duration_ms"].as_f64(), Some(250.0), "logged when the client left: {line}");
    }
    let head = &lines[2];
    assert_eq!(
        (head["status"].as_u64(), head["response_end"].as_str()),
        (Some(0), Some("downstream-disconnect")),
        "{head}"
    );
    assert_eq!(
        (head["path"].as_str(), head["route"].as_str()),
        (Some("/slow"), Some("backend/http[0]")),
        "{head}"
    );
    assert_eq!(head["duration_ms"].as_f64(), Some(200.0), "{head}");
    assert_eq!(proxy.local_responses("route-timeout"), 0.0);
}

/// `grpc-timeout` is the call's deadline, capped by the route timeout (2 s): the upstream gets
/// exactly the time left, and a call still unanswered at its deadline ends with
/// DEADLINE_EXCEEDED at that deadline, long before the route's.
#[tokio::test(start_paused = true)]
async fn a_grpc_deadline_goes_upstream_whole_and_ends_the_call_on_time() {
    let up = Upstream::http("g1").await;
    let proxy = InProcess::start(|port| route_timeout(port, "GRPC", up.addr, "2s")).await;
    let mut conn = Conn::connect(proxy.addr, Proto::H2).await.unwrap();
    let call = |conn: &Conn, timeout: &str, delay_ms: u64| {
        let mut req = grpc_request(conn, "/test.Echo/Unary", b"hi");
        req.headers_mut().insert("grpc-timeout", timeout.parse().unwrap());
        req.headers_mut().insert("x-delay-ms", delay_ms.into());
        req
    };
    // The client's 1.5 s, under the route's 2 s: what is left of it goes upstream, which is
    // all of it, since no time passed on the way (the upstream then takes 100 ms).
    let r = conn.call(call(&conn, "1500m", 100)).await.unwrap();
    assert_eq!(r.header("x-seen-grpc-timeout"), Some("1500m"), "{r:?}");
    assert_eq!(r.trailers.as_ref().and_then(|t| t.get("grpc-status")).unwrap(), "0");
    // Longer than the route's 2 s: capped.
    let r = conn.call(call(&conn, "30S", 0)).await.unwrap();
    assert_eq!(r.header("x-seen-grpc-timeout"), Some("2000m"), "{r:?}");

    // Past the client's 300 ms deadline: DEADLINE_EXCEEDED at 300 ms.
    let r = conn.call(call(&conn, "300m", 5000)).await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.header("grpc-status"), r.reason()),
        (200, Some("4"), Some("route-timeout")),
        "{r:?}"
    );
    assert_eq!(r.elapsed, ms(300));
}
