//! Test support: real upstream servers, the real `tripline` process, a small HTTP client and
//! config builders. Everything listens on 127.0.0.1 with ports picked per test.

pub mod client;
pub mod config;
pub mod faulty;
pub mod proxy;
pub mod upstream;

use std::future::Future;
use std::time::{Duration, Instant};

pub use client::{get, get_with, Conn, Proto, Resp};
pub use proxy::Proxy;
pub use upstream::Upstream;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
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
