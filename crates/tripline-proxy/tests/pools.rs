//! Upstream connection pools under paused time: a request over a limit is refused at once, one
//! waiting for a connection at exactly `connectTimeout`; idle connections are closed by the
//! idle sweep (every 5 s, the housekeeping task's 50th tick: 4.9 s, 9.9 s... from the proxy's
//! start) once idle for `idleTimeout`, never while a stream or an upload is still using them.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use hyper::body::Frame;
use support::client::{channel_body, send};
use support::config;
use support::in_process::ms;
use support::upstream::{grpc_messages, grpc_request};
use support::{Conn, InProcess, Proto, Resp, Upstream};

/// The first two idle sweeps after a proxy's start.
const SWEEPS: [Duration; 2] = [Duration::from_millis(4900), Duration::from_millis(9900)];

fn idle_timeout(protocol: &str, up: SocketAddr, timeout: &str) -> impl Fn(u16) -> String {
    let policy = format!("    connectionPool:\n      http: {{idleTimeout: {timeout}}}\n");
    let protocol = protocol.to_owned();
    move |port| config::simple(port, &protocol, &[up], Some(&policy))
}

async fn get(proxy: &InProcess, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(proxy.addr, Method::GET, "backend.local", path, headers, "").await.unwrap()
}

/// `n` GETs at once, each on its own connection: (status, reason, when answered), by time.
async fn burst(proxy: &InProcess, n: usize) -> Vec<(u16, Option<String>, Duration)> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let addr = proxy.addr;
            tokio::spawn(
                async move { send(addr, Method::GET, "backend.local", &format!("/{i}"), &[], "").await },
            )
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        answers.push((r.status.as_u16(), r.reason().map(str::to_owned), r.elapsed));
    }
    answers.sort_by_key(|a| a.2);
    answers
}

fn refused(reason: &str, at: Duration) -> (u16, Option<String>, Duration) {
    (503, Some(reason.to_owned()), at)
}

fn served(at: Duration) -> (u16, Option<String>, Duration) {
    (200, None, at)
}

/// Six requests at once against an 800 ms upstream. With one connection and one pending slot,
/// one is served at 800 ms, the one that waited for the connection at 1.6 s, and the other
/// four are refused with `overflow-pending` at once; with `http2MaxRequests: 2` (the cluster's
/// concurrency limit), two are served at 800 ms and four refused with `overflow-requests` at
/// once. No refused request reaches the upstream.
#[tokio::test(start_paused = true)]
async fn requests_over_a_limit_are_refused_at_once() {
    let pending =
        "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n";
    let requests = "    connectionPool:\n      tcp: {maxConnections: 100}\n      http: {http1MaxPendingRequests: 100, http2MaxRequests: 2}\n";
    // The limit, its reason, when the two served are, and how many the upstream had at once.
    for (pool, reason, served_at, at_once) in [
        (pending, "overflow-pending", [ms(800), ms(1600)], 1),
        (requests, "overflow-requests", [ms(800), ms(800)], 2),
    ] {
        let up = Upstream::http_delayed("slow", ms(800)).await;
        let proxy = InProcess::start(|port| config::simple(port, "HTTP", &[up.addr], Some(pool))).await;
        let mut want = vec![refused(reason, ms(0)); 4];
        want.extend(served_at.map(served));
        assert_eq!(burst(&proxy, 6).await, want, "{reason}");
        assert_eq!((up.requests(), up.max_active()), (2, at_once), "{reason}");
        assert_eq!(proxy.local_responses(reason), 4.0);
    }
}

/// One connection, busy for 1.5 s, and room in the queue: three more requests wait as pending
/// and are each refused with `503 overflow-connections` at exactly `connectTimeout` (300 ms),
/// not when the upstream frees its connection.
#[tokio::test(start_paused = true)]
async fn a_pending_request_is_refused_at_exactly_its_connect_timeout() {
    let up = Upstream::http_delayed("slow", ms(1500)).await;
    let pool = "    connectionPool:\n      tcp: {maxConnections: 1, connectTimeout: 300ms}\n      http: {http1MaxPendingRequests: 10}\n";
    let proxy = InProcess::start(|port| config::simple(port, "HTTP", &[up.addr], Some(pool))).await;
    let watch = async {
        proxy.run_until(ms(299)).await;
        assert_eq!(proxy.local_responses("overflow-connections"), 0.0, "refused before connectTimeout");
        assert_eq!(proxy.cluster()["pending_requests"], 3);
    };
    let (answers, ()) = tokio::join!(burst(&proxy, 4), watch);
    let mut want = vec![refused("overflow-connections", ms(300)); 3];
    want.push(served(ms(1500)));
    assert_eq!(answers, want);
    assert_eq!(up.requests(), 1);
}

/// `idleTimeout` is when a connection may go, checked at each idle sweep: with a 1 s timeout,
/// a connection last used 1.1 s before the 4.9 s sweep closes at it, one last used 0.9 s
/// before stays until the next, at 9.9 s. The same for HTTP/1.1 and HTTP/2 upstreams.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_closes_at_the_first_sweep_after_its_idle_timeout() {
    for protocol in ["HTTP", "HTTP2"] {
        for (last_used, closed) in [(ms(3800), SWEEPS[0]), (ms(4000), SWEEPS[1])] {
            let up = Upstream::http("u1").await;
            let proxy = InProcess::start(idle_timeout(protocol, up.addr, "1s")).await;
            proxy.run_until(last_used).await;
            assert_eq!(get(&proxy, "/", &[]).await.status, 200);
            proxy.run_until(closed - ms(1)).await;
            assert_eq!(up.open(), 1, "{protocol}, last used at {last_used:?}: closed early");
            proxy.run_until(closed + ms(1)).await;
            let closings: Vec<_> = up.closed_at().into_iter().map(|at| proxy.time_of(at)).collect();
            assert_eq!(closings, [closed], "{protocol}, last used at {last_used:?}");
        }
    }
}

/// An HTTP/2 upstream connection under a gRPC stream of 6.32 s (80 messages 80 ms apart) is
/// kept by the 4.9 s sweep although the timeout is 1 s, so a call after that sweep shares it;
/// once the stream has ended and nothing else comes, the 9.9 s sweep closes it, and the next
/// call opens a new one.
#[tokio::test(start_paused = true)]
async fn an_http2_connection_under_a_stream_outlives_the_sweep_and_closes_after_it() {
    let up = Upstream::http("g1").await;
    let proxy = InProcess::start(idle_timeout("GRPC", up.addr, "1s")).await;
    let mut conn = Conn::connect(proxy.addr, Proto::H2).await.unwrap();
    let req = grpc_request(&conn, "/test.Echo/Stream", b"80");
    let stream = tokio::spawn(async move { conn.call(req).await.map_err(|e| e.to_string()) });
    proxy.run_until(ms(5000)).await;
    let unary = |proxy: &InProcess| {
        let addr = proxy.addr;
        async move {
            let mut c = Conn::connect(addr, Proto::H2).await.unwrap();
            let r = c.call(grpc_request(&c, "/test.Echo/Unary", b"hi")).await.unwrap();
            assert_eq!(r.trailers.expect("trailers").get("grpc-status").unwrap(), "0");
        }
    };
    unary(&proxy).await;
    assert_eq!(up.connections(), 1, "the sweep let the connection of a stream in flight go");
    let r = stream.await.unwrap().expect("the stream");
    assert_eq!(grpc_messages(&r.body).len(), 80, "the stream was cut");
    assert_eq!(proxy.now(), ms(6320));
    proxy.run_until(SWEEPS[1] - ms(1)).await;
    assert_eq!(up.open(), 1, "closed before the sweep");
    proxy.run_until(SWEEPS[1] + ms(1)).await;
    assert_eq!(up.closed_at().into_iter().map(|at| proxy.time_of(at)).collect::<Vec<_>>(), [SWEEPS[1]]);
    unary(&proxy).await;
    assert_eq!(up.connections(), 2);
}

/// An HTTP/1.1 client's upload to an HTTP/2 upstream that answered at once goes on for 6 s
/// after the answer, across the 4.9 s sweep: its connection stays in the pool under it (a
/// request after the sweep shares it), and the whole upload arrives.
#[tokio::test(start_paused = true)]
async fn an_upload_outlasting_its_response_keeps_its_http2_connection() {
    let up = Upstream::http("u1").await;
    let proxy = InProcess::start(idle_timeout("HTTP2", up.addr, "1s")).await;
    let mut conn = Conn::connect(proxy.addr, Proto::H1).await.unwrap();
    let (tx, body) = channel_body(4);
    let req = conn.request(Method::POST, "backend.local", "/early").body(body).unwrap();
    assert_eq!(conn.call(req).await.expect("the early answer").text(), "early");
    for i in 0..12 {
        proxy.run_until(ms(500 * i)).await;
        tx.send(Frame::data(Bytes::from_static(b"chunk"))).await.expect("the upload goes on");
    }
    assert_eq!(get(&proxy, "/after-the-sweep", &[]).await.status, 200);
    assert_eq!(up.connections(), 1, "the sweep let go of the connection of an upload in flight");
    drop(tx);
    proxy.run_until(ms(6000)).await;
    assert_eq!(up.body_bytes(), 60);
}

/// A burst of eight opens eight upstream connections; light traffic after it (a request
/// every 100 ms) takes the connection returned last every time, so the other seven idle and
/// the 4.9 s sweep closes them, the gauge following. (Taking the oldest instead would rotate
/// through all eight and keep every one of them alive.)
#[tokio::test(start_paused = true)]
async fn surplus_connections_idle_out_under_light_traffic() {
    let up = Upstream::http("u1").await;
    let proxy = InProcess::start(idle_timeout("HTTP", up.addr, "1s")).await;
    let gauge = || proxy.metric("tripline_upstream_connections", &[("cluster", support::CLUSTER)]);
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                send(addr, Method::GET, "backend.local", "/burst", &[("x-delay-ms", "300")], "").await
            })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap().unwrap().status, 200);
    }
    assert_eq!((up.open(), gauge()), (8, 8.0), "eight concurrent requests, eight connections");
    let mut client = Conn::connect(proxy.addr, Proto::H1).await.unwrap();
    let mut served_on = std::collections::BTreeSet::new();
    for i in 0..60 {
        proxy.run_until(ms(400 + 100 * i)).await;
        let r = client.get("backend.local", "/light").await.unwrap();
        served_on.insert(r.json()["conn"].as_u64().unwrap());
        if proxy.now() < SWEEPS[0] {
            assert_eq!(up.open(), 8, "closed before the sweep at {:?}", proxy.now());
        }
    }
    assert_eq!(served_on.len(), 1, "light traffic spread over upstream connections {served_on:?}");
    let closings: Vec<_> = up.closed_at().into_iter().map(|at| proxy.time_of(at)).collect();
    assert_eq!(closings, [SWEEPS[0]; 7], "the seven idle ones, at the first sweep");
    assert_eq!((up.open(), gauge()), (1, 1.0));
}
