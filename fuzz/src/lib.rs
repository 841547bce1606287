//! What the HTTP/1.1 fuzz targets share: the proxy (the library, as one worker runs it) in
//! front of an upstream the target writes, on loopback sockets, with the target's client, all
//! on one runtime with paused time, started once per fuzzing process ([`Harness`]).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// A listener on `PROXY_PORT` routing every request to one HTTP/1.1 endpoint on
/// `UPSTREAM_PORT`, for [`Harness::start`].
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

    /// Writes the segments, a millisecond apart (of the runtime's time, paused in the
    /// [`Harness`]); false if a write failed.
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> bool {
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if w.write_all(part).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// The fuzzing process's one runtime: the proxy (the library, as one worker runs it: a
/// current-thread runtime with deferred writes), the upstream the target writes and the
/// target's client all run on it, on loopback sockets, with tokio's clock paused.
///
/// Paused time makes the clients' and upstreams' millisecond pauses ([`Segments::write_to`])
/// and the proxy's own timers (its linger, its timeouts) cost no wall-clock time: when every
/// task waits, tokio moves the clock to the next timer at once. With sockets that is only
/// safe in small steps: bytes on their way through the kernel do not count as work, so the
/// clock could jump over a timeout while an answer is in flight. A task that sleeps 1 ms in a
/// loop keeps every jump to a millisecond (between two, the runtime polls the sockets), and the
/// hang checks go through [`within`], which gives a slow answer real time before it reports.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    proxy_addr: SocketAddr,
    /// Kept for the life of the process: it holds the listener's state.
    _proxy: tripline_proxy::Proxy,
}

impl Harness {
    /// Builds the runtime, starts the upstream (`upstream`, given its listener) and a proxy
    /// configured by `config`, which names the ports `PROXY_PORT` and `UPSTREAM_PORT`. Call it
    /// once per process, on the thread that runs the inputs (keep it in a `OnceLock`).
    pub fn start<F, Fut>(config: &str, upstream: F) -> Harness
    where
        F: FnOnce(TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let (proxy, proxy_addr) = rt.block_on(async move {
            tripline_proxy::net_io::defer_writes_on_this_thread();
            tokio::spawn(async {
                loop {
                    tokio::time::sleep(TICK).await;
                }
            });
            let up = TcpListener::bind("127.0.0.1:0").await.expect("upstream bind");
            let up_port = up.local_addr().expect("upstream address").port();
            tokio::spawn(upstream(up));
            // A port below the kernel's ephemeral range (which starts at 32768), so that no
            // outgoing connection holds it; another process may, hence the tries.
            let proxy = tripline_proxy::Proxy::new();
            for attempt in 0..64u32 {
                let candidate = 20_000 + (std::process::id() * 7 + attempt * 131) % 10_000;
                let text = config
                    .replace("PROXY_PORT", &candidate.to_string())
                    .replace("UPSTREAM_PORT", &up_port.to_string());
                let sources = [tripline_config::Source { name: "fuzz.yaml".into(), text }];
                let loaded = tripline_config::load(&sources, &tripline_config::LoadOptions::default())
                    .expect("the fuzz config loads");
                if proxy.apply(&loaded).await.is_ok() {
                    return (proxy, SocketAddr::from(([127, 0, 0, 1], candidate as u16)));
                }
            }
            panic!("no free port for the proxy between 20000 and 29999");
        });
        Harness { rt, proxy_addr, _proxy: proxy }
    }

    /// The proxy's listening address.
    pub fn proxy(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Runs `fut` (one input's exchange) on the runtime, with everything started before.
    pub fn run<Fut: Future>(&self, fut: Fut) -> Fut::Output {
        self.rt.block_on(fut)
    }
}

/// The largest step the paused clock takes while the runtime waits (see [`Harness`]).
const TICK: Duration = Duration::from_millis(1);

/// How much of a [`within`] limit runs on real time.
const PACED: Duration = Duration::from_secs(2);

/// `fut`'s output if it finishes within `limit` of the runtime's time; `None` if not: a hang.
///
/// On paused time a wait for bytes the kernel has not handed over yet looks like idleness,
/// and each millisecond step of the clock costs only microseconds: a slow moment of the
/// machine could run the clock past `limit` with nothing wrong. So the last [`PACED`] of the
/// limit runs on real time: a blocking task (while one runs, tokio does not move a paused
/// clock by itself) ticks every real millisecond and the clock moves one millisecond per tick.
/// A future that waits on the clock (a timer of the proxy's longer than `limit`, or a pause)
/// still reaches the limit, as on a runtime with real time; one that waits for bytes in flight
/// gets them first. A future that never finishes is reported after `PACED` of real time.
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let fast = limit.saturating_sub(PACED);
    let mut fut = std::pin::pin!(fut);
    if let Ok(out) = tokio::time::timeout(fast, fut.as_mut()).await {
        return Some(out);
    }
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (tick, mut ticks) = tokio::sync::mpsc::unbounded_channel::<()>();
    let pacer = tokio::task::spawn_blocking(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
            if tick.send(()).is_err() {
                break;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + (limit - fast);
    let out = loop {
        tokio::select! {
            biased;
            out = fut.as_mut() => break Some(out),
            ticked = ticks.recv() => {
                if ticked.is_none() || tokio::time::Instant::now() >= deadline {
                    break None;
                }
                tokio::time::advance(TICK).await;
            }
        }
    };
    // The clock moves by itself again once the pacer has returned.
    drop(stop);
    let _ = pacer.await;
    out
}
