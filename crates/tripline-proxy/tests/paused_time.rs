//! The proxy under tokio's paused time: the proxy, its upstream and its client on loopback in
//! one runtime whose clock the test controls. The proxy reads every time it uses (deadlines,
//! timers, breaker and ejection durations: `resilience::now`) from the runtime's clock, so a
//! timeout fires at exactly its virtual time, and the test takes milliseconds of real time.
//! (Loopback delivers a write to the peer's socket at once, so the runtime never sees IO
//! "in flight" and advances the clock only when every task waits on a timer.)

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tripline_config::{load, LoadOptions, Source};
use tripline_proxy::Proxy;

async fn slow_upstream(delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                tokio::time::sleep(delay).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            });
        }
    });
    addr
}

fn config(listen: u16, up: SocketAddr, route_extra: &str) -> tripline_config::Loaded {
    let text = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  servers:
  - {{port: {{number: {listen}, name: http, protocol: HTTP}}, bind: 127.0.0.1, hosts: [\"*\"]}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend}}
spec:
  hosts: [backend.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [\"*\"]
  gateways: [edge]
  http:
  - route: [{{destination: {{host: backend.local, port: {{number: 80}}}}}}]
{route_extra}",
        port = up.port()
    );
    load(&[Source { name: "mesh.yaml".into(), text }], &LoadOptions::default()).expect("valid config")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(start_paused = true)]
async fn a_route_timeout_fires_exactly_on_time() {
    let up = slow_upstream(Duration::from_secs(5)).await;
    let port = free_port();
    let proxy = Proxy::new();
    proxy.apply(&config(port, up, "    timeout: 1s\n")).await.unwrap();
    let started = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nhost: backend.local\r\n\r\n").await.unwrap();
    let mut out = vec![0u8; 1024];
    let n = c.read(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out[..n]);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}
