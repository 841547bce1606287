//! Several workers (`--workers 2`, every test's default): client connections spread over the
//! workers' event loops, each worker pools its own upstream connections, and the cluster's
//! limits still hold across workers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::client::empty;
use crate::support::config;
use crate::support::{free_port, Conn, Proto, Proxy, Upstream};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Opens `n` client connections (HTTP/1.1 and h2c in turn) and makes a request on each, so
/// the proxy has accepted them all.
async fn open_connections(addr: SocketAddr, n: usize) -> Vec<Conn> {
    let mut conns = Vec::new();
    for i in 0..n {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
        let mut c = Conn::connect(addr, proto).await.expect("connect");
        let r = c.get("backend.local", &format!("/open/{i}")).await.expect("request");
        assert_eq!(r.status, 200);
        conns.push(c);
    }
    conns
}

/// Client connections each worker was given.
async fn per_worker(proxy: &Proxy) -> (f64, f64) {
    let name = "tripline_worker_connections_total";
    (proxy.metric(name, &[("worker", "0")]).await, proxy.metric(name, &[("worker", "1")]).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_go_to_the_least_loaded_worker() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], None)).await;
    let mut conns = open_connections(addr(port), 4).await;
    assert_eq!(per_worker(&proxy).await, (2.0, 2.0), "4 open connections over 2 workers");
    // Every connection keeps working on the worker it was given.
    for (i, c) in conns.iter_mut().enumerate() {
        for j in 0..5 {
            let r = c.get("backend.local", &format!("/again/{i}/{j}")).await.expect("request");
            assert_eq!(r.status, 200);
        }
    }
    // Each worker pools its own upstream connections: one each for sequential requests.
    assert_eq!(up.connections(), 2, "one upstream connection per worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_one_limit_across_workers() {
    for protocol in ["HTTP", "HTTP2"] {
        let up = Upstream::http_delayed("slow", Duration::from_millis(300)).await;
        let port = free_port();
        let tp = "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 10}\n";
        let proxy = Proxy::start(&config::simple(port, protocol, &[up.addr], Some(tp))).await;
        let mut conns = open_connections(addr(port), 2).await;
        assert_eq!(per_worker(&proxy).await, (1.0, 1.0), "{protocol}: one client connection per worker");

        // In turn from both workers: the worker without the connection borrows it instead of
        // refusing (`overflow-connections`) or opening a second one.
        for round in 0..3 {
            for c in conns.iter_mut() {
                let r = c.get("backend.local", &format!("/turn/{round}")).await.expect("request");
                assert_eq!(r.status, 200, "{protocol}: {:?}", r.reason());
            }
        }
        // At once from both workers: one waits for the other's connection, then gets it.
        let [a, b] = &mut conns[..] else { unreachable!() };
        let t0 = Instant::now();
        let (ra, rb) = tokio::join!(a.get("backend.local", "/both/a"), b.get("backend.local", "/both/b"));
        let (ra, rb) = (ra.expect("request a"), rb.expect("request b"));
        assert_eq!(
            (ra.status.as_u16(), rb.status.as_u16()),
            (200, 200),
            "{protocol}: {:?} {:?}",
            ra.reason(),
            rb.reason()
        );
        if protocol == "HTTP" {
            // One HTTP/1.1 connection carries one request at a time.
            assert!(t0.elapsed() >= Duration::from_millis(550), "{protocol}: the second did not wait");
            assert_eq!(up.max_active(), 1, "{protocol}: requests ran concurrently on one connection");
        }
        assert_eq!(up.connections(), 1, "{protocol}: maxConnections 1 across two workers");
        let refused = proxy.metric("tripline_local_responses_total", &[]).await;
        assert_eq!(refused, 0.0, "{protocol}: no request was refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_requests_from_two_workers_share_the_one_connection_being_opened() {
    for protocol in ["HTTP", "HTTP2"] {
        let up = Upstream::http("u1").await;
        let port = free_port();
        let tp = "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 10}\n";
        let proxy = Proxy::start(&config::simple(port, protocol, &[up.addr], Some(tp))).await;
        // Two client connections, one per worker, and no upstream connection yet: both
        // requests race for the single slot; the loser must be woken when the winner's
        // connection can carry it, not refused after the connect timeout (10 s).
        let mut a = Conn::connect(addr(port), Proto::H2).await.expect("connect a");
        let mut b = Conn::connect(addr(port), Proto::H2).await.expect("connect b");
        let t0 = Instant::now();
        let (ra, rb) = tokio::join!(a.get("backend.local", "/cold/a"), b.get("backend.local", "/cold/b"));
        let (ra, rb) = (ra.expect("request a"), rb.expect("request b"));
        let statuses = (ra.status.as_u16(), rb.status.as_u16());
        assert_eq!(statuses, (200, 200), "{protocol}: {:?} {:?}", ra.reason(), rb.reason());
        assert!(t0.elapsed() < Duration::from_secs(5), "{protocol}: took {:?}", t0.elapsed());
        assert_eq!(per_worker(&proxy).await, (1.0, 1.0), "{protocol}: one client connection per worker");
        assert_eq!(up.connections(), 1, "{protocol}: maxConnections 1 across two workers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowed_connection_the_upstream_closed_is_not_used() {
    // An upstream that closes every connection right after its response, and one connection
    // for the cluster: each request on the other worker would borrow a closed connection if
    // the borrow did not check it. POSTs are not retried, so a dead connection shows.
    let (up, accepted) = crate::http::closing_upstream().await;
    let port = free_port();
    let tp =
        "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 10}\n";
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up], Some(tp))).await;
    let mut conns = [
        Conn::connect(addr(port), Proto::H1).await.expect("connect"),
        Conn::connect(addr(port), Proto::H1).await.expect("connect"),
    ];
    let mut failed = Vec::new();
    for round in 0..10 {
        for (i, c) in conns.iter_mut().enumerate() {
            let req = c.request(http::Method::POST, "backend.local", &format!("/post/{round}/{i}"));
            let r = c.call(req.body(empty()).unwrap()).await.expect("request");
            if r.status != 200 {
                failed.push((round, i, r.status, r.reason().map(str::to_owned)));
            }
        }
    }
    assert!(failed.is_empty(), "POSTs failed on connections the upstream had closed: {failed:?}");
    assert_eq!(per_worker(&proxy).await, (1.0, 1.0), "one client connection per worker");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20, "a connection per request");
}
