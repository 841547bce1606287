//! Test support: real upstream servers, the real `tripline` process, a small HTTP client and
//! config builders. Everything listens on 127.0.0.1 with ports picked per test.

pub mod client;
pub mod config;
pub mod faulty;
pub mod kube;
pub mod metrics;
pub mod netns;
pub mod proxy;
/// Where the brief's seed configs are (shared with tripline-config's seed tests).
#[path = "../../../../tripline-config/tests/seeds_dir/mod.rs"]
pub mod seeds_dir;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::time::{Duration, Instant};

pub use client::{get, get_with, Conn, Proto, Resp};
pub use proxy::{binary, Proxy};
pub use upstream::Upstream;

/// A port that was free a moment ago on 127.0.0.1, for the proxy to bind.
///
/// Picked below the kernel's ephemeral range (32768+ on Linux): a port from `bind(:0)` could be
/// taken by any outgoing connection (the proxy's own upstream connections, the test clients)
/// between this call and the proxy's bind. Each test process walks its own stretch of
/// 20000..32000, starting at an offset derived from its pid, so parallel test binaries do
/// not collide either.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 48) * 250;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (base - 20_000 + n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 25 ms until it returns true; panics after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits for `n` lines in the access log at `path` and parses them.
pub async fn access_log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    eventually("access log lines", Duration::from_secs(5), || {
        lines = std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect();
        let got = lines.len();
        async move { got >= n }
    })
    .await;
    lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}
