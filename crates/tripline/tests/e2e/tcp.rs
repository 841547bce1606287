//! TCP listeners: bytes both ways, half-close; connect failures and timeouts retried on another
//! endpoint and fed to outlier detection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::config;
use crate::support::faulty::refusing_addr;
use crate::support::{free_port, Proxy, Upstream};

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub fn tcp_config(listener: u16, upstream: SocketAddr, traffic_policy: Option<&str>) -> String {
    tcp_cluster_config(listener, &[upstream], traffic_policy)
}

/// A TCP listener whose one route goes to `echo.local`, with `endpoints`.
fn tcp_cluster_config(listener: u16, endpoints: &[SocketAddr], traffic_policy: Option<&str>) -> String {
    let mut docs = vec![
        config::gateway("tcp-edge", listener, "TCP"),
        config::service_entry("echo.local", "TCP", endpoints),
        config::virtual_service("echo", &["*"], "tcp-edge", &config::tcp_route("echo.local")),
    ];
    if let Some(tp) = traffic_policy {
        docs.push(config::destination_rule("echo.local", tp));
    }
    config::join(&docs)
}

pub async fn read_exact_timeout(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut buf)).await.expect("read timed out").expect("read");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_round_trip_and_half_close() {
    let up = Upstream::tcp_echo("t1").await;
    let port = free_port();
    let _proxy = Proxy::start(&tcp_config(port, up.addr, None)).await;
    check_echo_half_close(SocketAddr::from(([127, 0, 0, 1], port))).await;
}

pub async fn check_echo_half_close(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    assert_eq!(read_exact_timeout(&mut s, 5).await, b"hello");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let expect = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&big).await.unwrap();
        // Half-close: the upstream sees EOF, and we can still read its answer.
        w.shutdown().await.unwrap();
        w
    });
    let mut rest = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, r.read_to_end(&mut rest))
        .await
        .expect("the proxy did not close after the upstream's reply to the half-close")
        .expect("read after half-close");
    let _w = writer.await.unwrap();
    assert!(rest.len() >= expect.len(), "got {} of {} echoed bytes", rest.len(), expect.len());
    assert!(rest[..expect.len()] == expect[..], "echoed bytes differ");
    let tail = String::from_utf8_lossy(&rest[expect.len()..]).into_owned();
    assert_eq!(tail, format!("<EOF:{}>", 5 + expect.len()), "upstream's answer to the half-close");
}

/// An address whose connects hang until they time out: a listener whose accept queue is full
/// (backlog 0 and one connection never accepted) drops every new SYN.
struct Unanswered {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: std::net::TcpStream,
}

impl Unanswered {
    fn new() -> Unanswered {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let queued = std::net::TcpStream::connect(addr).unwrap();
        Unanswered { addr, _listener: listener, _queued: queued }
    }
}

/// The case: a TCP cluster with a dead endpoint (connects refused), one whose connects
/// time out, and a live one. Every client connection is served (a failed connect is retried
/// on another endpoint), and the two bad endpoints are ejected after two failures each, then
/// skipped: /clusters shows them ejected and the connect failures stop at four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_and_timeouts_are_retried_and_eject_the_endpoint() {
    let up = Upstream::tcp_echo("live").await;
    let (dead, silent) = (refusing_addr(), Unanswered::new());
    let port = free_port();
    let policy = "    loadBalancer: {simple: ROUND_ROBIN}\n    connectionPool: {tcp: {connectTimeout: 200ms}}\n    outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 10m, maxEjectionPercent: 100}\n";
    let proxy = Proxy::start(&tcp_cluster_config(port, &[dead, silent.addr, up.addr], Some(policy))).await;
    for n in 0..9u8 {
        let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
        s.write_all(&[b'a' + n]).await.unwrap();
        assert_eq!(read_exact_timeout(&mut s, 1).await, [b'a' + n], "connection {n}");
    }
    let cluster = proxy.cluster("outbound|80||echo.local").await;
    let outlier = |addr: SocketAddr| {
        let ep = cluster["endpoints"].as_array().unwrap().iter().find(|e| e["address"] == addr.to_string());
        ep.map(|e| (e["outlier"].as_str().unwrap().to_owned(), e["healthy"].as_bool().unwrap()))
    };
    assert_eq!(outlier(dead), Some(("ejected".to_owned(), false)), "{cluster}");
    assert_eq!(outlier(silent.addr), Some(("ejected".to_owned(), false)), "{cluster}");
    assert_eq!(outlier(up.addr), Some(("healthy".to_owned(), true)), "{cluster}");
    let failures = proxy
        .metric("tripline_upstream_connect_failures_total", &[("cluster", "outbound|80||echo.local")])
        .await;
    assert_eq!(failures, 4.0, "two failures each, then the ejected endpoints are not tried");
    let refused =
        proxy.metric("tripline_local_responses_total", &[("cluster", "outbound|80||echo.local")]).await;
    assert_eq!(refused, 0.0, "no client connection was closed for want of an upstream");
}

/// `tcp[]` routes are tried in order; a route's `match` takes the connections addressed to
/// its `destinationSubnets` (here: 127.0.0.2 versus the rest of loopback, on a listener bound
/// to every address). HTTP upstreams behind TCP routes say who answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_are_chosen_by_the_address_a_connection_was_addressed_to() {
    let (two, rest) = (Upstream::http("two").await, Upstream::http("rest").await);
    let port = free_port();
    let yaml = config::join(&[
        config::gateway("tcp-edge", port, "TCP").replace("bind: 127.0.0.1", "bind: 0.0.0.0"),
        config::service_entry("two.local", "TCP", &[two.addr]),
        config::service_entry("rest.local", "TCP", &[rest.addr]),
        config::virtual_service(
            "by-subnet",
            &["*"],
            "tcp-edge",
            "  tcp:
  - match: [{destinationSubnets: [127.0.0.2/32]}]
    route: [{destination: {host: two.local}}]
  - route: [{destination: {host: rest.local}}]
",
        ),
    ]);
    let _proxy = Proxy::start(&yaml).await;
    for (ip, want) in [([127, 0, 0, 2], "two"), ([127, 0, 0, 1], "rest"), ([127, 0, 0, 3], "rest")] {
        let mut s = TcpStream::connect(SocketAddr::from((ip, port))).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(answer.contains(&format!("x-upstream-id: {want}")), "{ip:?}: {answer}");
    }
}
