//! Listeners as the request path sees them: a bound socket's name and live routes, the count of
//! open client connections, and refusals made before any route is chosen. The accept loops
//! that feed them are [`crate::accept`]'s, at the top of the layers.
//!
//! A listener's routes live in an `ArcSwap` so a reload swaps them without touching the
//! socket; connections already accepted keep serving, each request reading the current table.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tripline_config::plan::ListenerProtocol;

use crate::reason::Reason;
use crate::router::ListenerConfig;
use crate::Shared;

/// A bound listener and the routes it serves.
pub struct ListenerRuntime {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: ListenerProtocol,
    pub config: ArcSwap<ListenerConfig>,
    /// TLS handshakes on this listener (all zero on a plaintext one).
    pub tls_stats: crate::tls::server::TlsStats,
    /// Closing this stops the accept loop (the socket is released).
    stop: watch::Sender<bool>,
}

/// Binds and listens on `addr` (accepting starts with [`crate::accept::start`]).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

impl ListenerRuntime {
    /// A listener serving `config`; closing `stop` ends its accept loop ([`crate::accept`]).
    pub fn new(
        name: String,
        bind: SocketAddr,
        protocol: ListenerProtocol,
        config: Arc<ListenerConfig>,
        stop: watch::Sender<bool>,
    ) -> Self {
        ListenerRuntime {
            name,
            bind,
            protocol,
            config: ArcSwap::new(config),
            tls_stats: Default::default(),
            stop,
        }
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// How an accept loop waits after `accept` fails (out of file descriptors, most often): it
/// backs off, from 10 ms doubling to 1 s, instead of spinning on the error, and logs once per
/// run of failures rather than at every try.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Duration,
    failures: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// `accept` failed: waits before the next try.
    pub async fn failed(&mut self, what: &str, e: &std::io::Error) {
        if self.failures == 0 {
            tracing::warn!(listener = what, error = %e, "accept failed; backing off until it succeeds again");
        }
        self.failures += 1;
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        tokio::time::sleep(self.delay).await;
    }

    /// `accept` succeeded: the next failure starts from the first delay.
    pub fn succeeded(&mut self, what: &str) {
        if self.failures > 0 {
            tracing::info!(listener = what, failures = self.failures, "accepting again");
        }
        *self = AcceptBackoff::default();
    }
}

/// Counts open client connections so shutdown can wait for them to drain.
pub struct ConnTracker {
    shared: Arc<Shared>,
}

impl ConnTracker {
    pub fn new(shared: &Arc<Shared>) -> Self {
        shared.global.downstream_connections.fetch_add(1, Ordering::Relaxed);
        shared.global.downstream_connections_total.fetch_add(1, Ordering::Relaxed);
        ConnTracker { shared: shared.clone() }
    }
}

impl Drop for ConnTracker {
    fn drop(&mut self) {
        self.shared.global.downstream_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a local refusal that happens before any cluster is chosen.
pub fn refuse_global(shared: &Shared, reason: Reason) {
    shared.global.local.inc(reason);
}
