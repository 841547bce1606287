//! Self-tests of the test upstreams and client, without the proxy: when a proxy test fails,
//! these show the harness itself behaves as documented.

use std::time::Duration;

use crate::support::{get, get_with, Conn, Proto, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_http_upstream_echoes_over_h1_and_h2() {
    let up = Upstream::http_delayed("self", Duration::from_millis(50)).await;
    let r = get_with(up.addr, "x.local", "/a?b=1", &[("x-custom", "v")]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), Some("self"));
    assert_eq!(r.json()["path"], "/a?b=1");
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(r.seen_header("x-custom").as_deref(), Some("v"));
    assert!(r.elapsed >= Duration::from_millis(50));
    assert_eq!(r.header("x-up-hop"), Some("1"), "the upstream sends a hop-by-hop header to strip");
    let mut h2 = Conn::connect(up.addr, Proto::H2).await.unwrap();
    let r = h2.get("x.local", "/h2").await.unwrap();
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(get(up.addr, "x", "/status/418").await.unwrap().status, 418);
    assert!(get(up.addr, "x", "/reset").await.is_err(), "/reset closes without a response");
    assert_eq!(up.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_streaming_bodies() {
    let up = Upstream::http("self").await;
    crate::http::check_drip(up.addr).await;
    crate::http::check_5mb_round_trip(up.addr, &up, Proto::H1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_grpc_upstream() {
    let up = Upstream::http("g1").await;
    crate::grpc::check_unary(up.addr).await;
    crate::grpc::check_stream(up.addr).await;
    crate::grpc::check_fail(up.addr).await;
    crate::grpc::check_bidi(up.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_tcp_echo_half_close() {
    let up = Upstream::tcp_echo("t1").await;
    crate::tcp::check_echo_half_close(up.addr).await;
}
