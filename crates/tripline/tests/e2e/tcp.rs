//! TCP listeners: bytes both ways, half-close.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::config;
use crate::support::{free_port, Proxy, Upstream};

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub fn tcp_config(listener: u16, upstream: SocketAddr, traffic_policy: Option<&str>) -> String {
    let mut docs = vec![
        config::gateway("tcp-edge", listener, "TCP"),
        config::service_entry("echo.local", "TCP", &[upstream]),
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
