//! Listeners: accept loops for HTTP (HTTP/1.1 and h2c detected per connection) and raw TCP.
//!
//! A listener's routes live in an `ArcSwap` so a reload swaps them without touching the
//! socket; connections already accepted keep serving, each request reading the current table.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tripline_config::plan::ListenerProtocol;

use crate::http_proxy::ConnContext;
use crate::reason::Reason;
use crate::router::ListenerConfig;
use crate::workers;
use crate::Shared;

/// A bound listener and the routes it serves.
pub struct ListenerRuntime {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: ListenerProtocol,
    pub config: ArcSwap<ListenerConfig>,
    /// Closing this stops the accept loop (the socket is released).
    stop: watch::Sender<bool>,
}

/// Binds and listens on `addr` (accepting starts with [`ListenerRuntime::start_bound`]).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

impl ListenerRuntime {
    /// Starts accepting on a socket [`bind`] returned.
    pub fn start_bound(
        shared: &Arc<Shared>,
        name: String,
        bind: SocketAddr,
        protocol: ListenerProtocol,
        config: Arc<ListenerConfig>,
        listener: TcpListener,
    ) -> Arc<Self> {
        let (stop, stopped) = watch::channel(false);
        let rt = Arc::new(ListenerRuntime { name, bind, protocol, config: ArcSwap::new(config), stop });
        tokio::spawn(accept_loop(shared.clone(), rt.clone(), listener, stopped));
        rt
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

async fn accept_loop(
    shared: Arc<Shared>,
    rt: Arc<ListenerRuntime>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    let http1 = Arc::new(crate::http_conn::http1_builder(shared.header_limits.get()));
    let h2_only = rt.protocol == ListenerProtocol::Http2;
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.changed() => break,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tokio::select! {
                    _ = backoff.failed(&rt.name, &e) => {}
                    _ = stopped.changed() => break,
                    _ = shutdown.changed() => break,
                }
                continue;
            }
        };
        backoff.succeeded(&rt.name);
        let _ = stream.set_nodelay(true);
        let tracker = ConnTracker::new(&shared);
        match rt.protocol {
            ListenerProtocol::Tcp => {
                let (shared, rt) = (shared.clone(), rt.clone());
                hand_over(stream, move |s| crate::tcp_proxy::serve(shared, rt, s, peer, tracker));
            }
            _ => {
                let peer_value = crate::headers::peer_value(peer.ip());
                let conn = shared.client_conns.open();
                let ctx = Arc::new(ConnContext {
                    shared: shared.clone(),
                    listener: rt.clone(),
                    peer,
                    peer_value,
                    conn,
                });
                let http1 = http1.clone();
                hand_over(stream, move |s| async move {
                    crate::http_conn::serve(http1, h2_only, ctx, s).await;
                    drop(tracker);
                });
            }
        }
    }
    tracing::info!(listener = %rt.name, bind = %rt.bind, "listener closed");
}

/// Serves an accepted connection on the worker [`workers::pick`] chooses: here, or moved to
/// that worker's event loop (the socket leaves this thread's epoll set for that one's).
fn hand_over<F, Fut>(stream: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let worker = workers::pick();
    let assigned = workers::Assigned::new(worker);
    if workers::runs_here(worker) {
        tokio::spawn(async move {
            serve(stream).await;
            drop(assigned);
        });
        return;
    }
    let moved = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand a connection to another worker");
            return;
        }
    };
    workers::spawn_on(worker, async move {
        match TcpStream::from_std(moved) {
            Ok(s) => serve(s).await,
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection to another worker"),
        }
        drop(assigned);
    });
}

/// Counts open client connections so shutdown can wait for them to drain.
pub struct ConnTracker {
    shared: Arc<Shared>,
}

impl ConnTracker {
    fn new(shared: &Arc<Shared>) -> Self {
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
