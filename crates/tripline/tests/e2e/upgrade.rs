//! HTTP/1.1 details a proxy must pass through: protocol upgrades (WebSocket-style) become a
//! byte tunnel, and `Expect: 100-continue` clients get their `100 Continue` and their body
//! delivered.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{config, free_port, Proxy};
use crate::tcp::{read_exact_timeout, IO_TIMEOUT};

/// An upstream that accepts `Upgrade: echo` with 101 and then echoes bytes, and answers any
/// other request with the length of the body it received.
async fn upgrade_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<Incoming>| async move {
                    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = on.await {
                                let mut io = TokioIo::new(up);
                                let mut buf = [0u8; 1024];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        let resp = Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header("connection", "upgrade")
                            .header("upgrade", "echo")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        return Ok::<_, Infallible>(resp);
                    }
                    let len = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                    Ok(Response::new(Full::new(Bytes::from(format!("received {len}")))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut byte))
            .await
            .expect("head timed out")
            .expect("read");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_becomes_a_tunnel_both_ways() {
    let up = upgrade_upstream().await;
    let port = free_port();
    // With sticky cookies on, so that the handshake shows it carries one.
    let tp = "    loadBalancer:\n      consistentHash:\n        httpCookie: {name: route, ttl: 1h}\n";
    let _proxy = Proxy::start(&config::simple(port, "HTTP", &[up], Some(tp))).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: backend.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "expected 101 Switching Protocols, got:\n{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "the Upgrade header must pass through:\n{head}"
    );
    assert!(
        head.contains("set-cookie: route="),
        "a WebSocket client becomes sticky from its handshake:\n{head}"
    );
    for msg in [&b"ping"[..], &b"a longer message through the tunnel"[..]] {
        s.write_all(msg).await.unwrap();
        assert_eq!(read_exact_timeout(&mut s, msg.len()).await, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_continue_and_the_body_arrives() {
    let up = upgrade_upstream().await;
    let port = free_port();
    let _proxy = Proxy::start(&config::simple(port, "HTTP", &[up], None)).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: backend.local\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // A well-behaved client waits for 100 Continue before sending the body.
    let interim = read_head(&mut s).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "expected 100 Continue first, got:\n{interim}");
    s.write_all(b"hello world").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = read_exact_timeout(&mut s, "received 11".len()).await;
    assert_eq!(body, b"received 11");
}
