//! SIGTERM: stop accepting, drain in-flight requests, exit 0; and `--header-timeout`. Smoke
//! tests of the real binary: the times these happen at, exactly, are checked under paused time
//! in `crates/tripline-proxy/tests/client_connections.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::support::client::spawn_gets;
use crate::support::config;
use crate::support::{eventually, free_port, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    // The requests stay in flight this long: time for the checks below on a busy machine.
    let up = Upstream::http_delayed("slow", Duration::from_secs(3)).await;
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], None)).await;

    let in_flight = spawn_gets(addr, "backend.local", "/drain", 4);
    eventually("4 requests in flight at the upstream", Duration::from_secs(5), || async { up.active() == 4 })
        .await;
    let term_at = Instant::now();
    proxy.signal("TERM");

    // Readiness goes first: a load balancer polling /ready stops sending here while the
    // requests already in flight are still being served.
    let admin = proxy.admin;
    eventually("/ready to answer 503 while draining", Duration::from_secs(2), || async move {
        let r = crate::support::get(admin, "localhost", "/ready").await;
        r.is_ok_and(|r| r.status == 503 && r.text() == "not ready\n")
    })
    .await;
    assert_eq!(up.active(), 4, "/ready went 503 only once the in-flight requests had ended");

    // New connections are refused while the in-flight requests drain.
    let mut refused = false;
    while up.active() > 0 && term_at.elapsed() < Duration::from_secs(5) {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for (i, t) in in_flight.into_iter().enumerate() {
        let r = t.await.unwrap().unwrap_or_else(|e| panic!("in-flight request {i} failed during drain: {e}"));
        assert_eq!(r.status, 200, "in-flight request {i}: {:?} {}", r.reason(), r.text());
    }
    let status =
        proxy.wait_exit(Duration::from_secs(7)).await.expect("tripline still running 7 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status}");
    assert!(refused, "the listener accepted connections for as long as the in-flight requests drained");
    assert!(TcpStream::connect(addr).await.is_err(), "listener open after exit");
}

/// `--header-timeout`: a client connection with no request in flight that long is closed:
/// one sending its head too slowly (slow loris) is, never before the timeout; a request in
/// flight is not cut, however long the upstream takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_closes_connections_without_a_request_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::http_delayed("slow", Duration::from_millis(1500)).await;
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let _proxy =
        Proxy::start_args(&config::simple(port, "HTTP", &[up.addr], None), &["--header-timeout", "500ms"])
            .await;

    // Reads until the proxy closes the connection; returns what it sent and when it closed.
    async fn read_to_close(mut s: TcpStream) -> (String, Instant) {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the proxy did not close the connection");
        (String::from_utf8_lossy(&got).into_owned(), Instant::now())
    }

    // Taken before connecting: the timeout runs from the proxy's accept, which comes after.
    let opened = Instant::now();
    let mut slow_head = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    slow_head.write_all(b"GET / HTTP/1.1\r\nHost: backend.local\r\n").await.unwrap();
    busy.write_all(b"GET / HTTP/1.1\r\nHost: backend.local\r\n\r\n").await.unwrap();
    let (sent, closed) = read_to_close(slow_head).await;
    assert!(sent.is_empty(), "an incomplete head gets no response: {sent:?}");
    assert!(closed - opened >= Duration::from_millis(500), "closed after {:?}", closed - opened);
    let (sent, _) = read_to_close(busy).await;
    assert!(sent.starts_with("HTTP/1.1 200"), "the request in flight was cut: {sent:?}");
}

/// `tripline run` raises its soft open-file limit to the hard one: a proxy started under a
/// soft limit of 256 (many init systems start services at 1,024) can hold as many connections
/// as the hard limit allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let up = Upstream::http("u1").await;
    let yaml = config::simple(free_port(), "HTTP", &[up.addr], None);
    let proxy = Proxy::start_wrapped(&yaml, &[], &["prlimit", "--nofile=256:4096", "--"]).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let values: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(values, ["4096", "4096"], "{line}");
}
