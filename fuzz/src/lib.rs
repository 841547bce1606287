//! What the fuzz targets share: the proxy (the library, as one worker runs it) in front of an
//! upstream the target writes, on loopback, started once per fuzzing process.

use std::future::Future;
use std::net::SocketAddr;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// A listener on `PROXY_PORT` routing every request to one HTTP/1.1 endpoint on
/// `UPSTREAM_PORT`, for [`start`].
pub const ONE_UPSTREAM: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  servers:
  - port: {number: PROXY_PORT, name: http, protocol: HTTP}
    bind: 127.0.0.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {http: UPSTREAM_PORT}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route:
    - destination: {host: backend.local, port: {number: 80}}
"#;

/// Bytes for one side of an HTTP/1.1 exchange, built piece by piece and split where the
/// sender pauses (at most eight times, so an input cannot make a run slow).
pub struct Segments {
    parts: Vec<Vec<u8>>,
}

impl Default for Segments {
    fn default() -> Self {
        Segments { parts: vec![Vec::new()] }
    }
}

impl Segments {
    fn out(&mut self) -> &mut Vec<u8> {
        self.parts.last_mut().expect("never empty")
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.out().extend_from_slice(b);
    }

    /// `n` copies of `byte`: a body.
    pub fn fill(&mut self, n: usize, byte: u8) {
        let out = self.out();
        out.resize(out.len() + n, byte);
    }

    /// `name: value` and CRLF.
    pub fn field(&mut self, name: &str, value: &str) {
        self.bytes(format!("{name}: {value}\r\n").as_bytes());
    }

    /// A chunk-size line, maybe with an extension.
    pub fn chunk_size(&mut self, n: u16, extension: bool) {
        self.bytes(format!("{n:x}{}\r\n", if extension { ";x=y" } else { "" }).as_bytes());
    }

    pub fn pause(&mut self) {
        if self.parts.len() <= 8 {
            self.parts.push(Vec::new());
        }
    }

    /// Writes the segments, a millisecond apart; false if a write failed.
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> bool {
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            if w.write_all(part).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Starts the upstream (`upstream`, given its listener) and a proxy configured by `config`
/// on a background thread with a single-threaded runtime and deferred writes, as a worker
/// runs; returns the proxy's address. `config` names the ports `PROXY_PORT` and
/// `UPSTREAM_PORT`. Call it once per process (keep the address in a `OnceLock`).
pub fn start<F, Fut>(config: &'static str, upstream: F) -> SocketAddr
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            tripline_proxy::net_io::defer_writes_on_this_thread();
            let up = TcpListener::bind("127.0.0.1:0").await.expect("upstream bind");
            let up_port = up.local_addr().expect("upstream address").port();
            tokio::spawn(upstream(up));
            // A port below the kernel's ephemeral range (which starts at 32768), so that no
            // outgoing connection holds it; another process may, hence the tries.
            let proxy = tripline_proxy::Proxy::new();
            let mut port = 0;
            for attempt in 0..64u32 {
                let candidate = 20_000 + (std::process::id() * 7 + attempt * 131) % 10_000;
                let text = config
                    .replace("PROXY_PORT", &candidate.to_string())
                    .replace("UPSTREAM_PORT", &up_port.to_string());
                let sources = [tripline_config::Source { name: "fuzz.yaml".into(), text }];
                let loaded = tripline_config::load(&sources, &tripline_config::LoadOptions::default())
                    .expect("the fuzz config loads");
                if proxy.apply(&loaded).await.is_ok() {
                    port = candidate as u16;
                    break;
                }
            }
            assert_ne!(port, 0, "no free port for the proxy between 20000 and 29999");
            tx.send(SocketAddr::from(([127, 0, 0, 1], port))).expect("main thread waits");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("the proxy thread starts")
}

/// A single-threaded runtime for the fuzzing client, built once.
pub fn client() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}
