//! SIGTERM: stop accepting, drain in-flight requests, exit 0.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::support::config;
use crate::support::{eventually, free_port, get_with, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let up = Upstream::http_delayed("slow", Duration::from_millis(1500)).await;
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut proxy = Proxy::start_multi(&config::simple(port, "HTTP", &[up.addr], None)).await;

    let mut in_flight = Vec::new();
    for i in 0..4 {
        in_flight.push(tokio::spawn(async move {
            get_with(addr, "backend.local", &format!("/drain/{i}"), &[]).await.map_err(|e| e.to_string())
        }));
    }
    eventually("4 requests in flight at the upstream", Duration::from_secs(5), || async { up.active() == 4 })
        .await;
    let term_at = Instant::now();
    proxy.signal("TERM");

    // New connections are refused while the in-flight requests drain.
    let mut refused_after = None;
    while term_at.elapsed() < Duration::from_millis(1200) {
        match TcpStream::connect(addr).await {
            Err(_) => {
                refused_after = Some(term_at.elapsed());
                break;
            }
            Ok(s) => drop(s),
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
    assert!(
        refused_after.is_some(),
        "the listener still accepted connections 1.2 s after SIGTERM while draining"
    );
    assert!(TcpStream::connect(addr).await.is_err(), "listener open after exit");
}
