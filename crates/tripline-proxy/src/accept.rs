//! Accept loops: where a client connection enters, and which server takes it: HTTP (HTTP/1.1
//! and h2c detected per connection, [`crate::http_conn`]) or raw TCP ([`crate::tcp_proxy`]).
//! The top of the layers: it starts the servers, and nothing below it knows of it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tripline_config::plan::ListenerProtocol;

use crate::http_proxy::ConnContext;
use crate::listener::{AcceptBackoff, ConnTracker, ListenerRuntime};
use crate::router::ListenerConfig;
use crate::workers;
use crate::Shared;

/// Starts accepting on a socket [`bind`] returned.
pub fn start(
    shared: &Arc<Shared>,
    name: String,
    bind: SocketAddr,
    protocol: ListenerProtocol,
    config: Arc<ListenerConfig>,
    listener: TcpListener,
) -> Arc<ListenerRuntime> {
    let (stop, stopped) = watch::channel(false);
    let rt = Arc::new(ListenerRuntime::new(name, bind, protocol, config, stop));
    tokio::spawn(accept_loop(shared.clone(), rt.clone(), listener, stopped));
    rt
}

/// A listener that accepts nothing itself: a Sidecar ingress port the inbound capture
/// listener hands its connections to (`ListenerPlan::captured`).
pub fn captured(
    name: String,
    bind: SocketAddr,
    protocol: ListenerProtocol,
    config: Arc<ListenerConfig>,
) -> Arc<ListenerRuntime> {
    let (stop, _) = watch::channel(false);
    Arc::new(ListenerRuntime::new(name, bind, protocol, config, stop))
}

async fn accept_loop(
    shared: Arc<Shared>,
    rt: Arc<ListenerRuntime>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    let http1 = Arc::new(crate::http_conn::http1_builder(shared.header_limits.get()));
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
        let rt = match served_by(&shared, &rt, &stream) {
            Served::Here => rt.clone(),
            Served::Port(target) => target,
            Served::PassTo(to) => {
                let (shared, rt) = (shared.clone(), rt.clone());
                hand_over(stream, move |s| crate::tcp_proxy::pass_to(shared, rt, s, peer, to, tracker));
                continue;
            }
            Served::Tcp(cluster) => {
                let (shared, rt) = (shared.clone(), rt.clone());
                hand_over(stream, move |s| {
                    crate::tcp_proxy::to_service(shared, rt, s, peer, cluster, tracker)
                });
                continue;
            }
        };
        let h2_only = rt.protocol == ListenerProtocol::Http2;
        match rt.protocol {
            ListenerProtocol::Tcp => {
                let (shared, rt) = (shared.clone(), rt.clone());
                hand_over(stream, move |s| crate::tcp_proxy::serve(shared, rt, s, peer, tracker));
            }
            _ => {
                let peer_value = crate::headers::peer_value(peer.ip());
                let conn = shared.client_conns.open();
                let (tls, plaintext_too) = {
                    let config = rt.config.load();
                    (config.tls.clone(), config.plaintext_too)
                };
                let ctx = Arc::new(ConnContext {
                    shared: shared.clone(),
                    listener: rt.clone(),
                    peer,
                    peer_value,
                    conn,
                    tls: Default::default(),
                });
                let http1 = http1.clone();
                hand_over(stream, move |s| async move {
                    crate::http_conn::serve(http1, h2_only, ctx, s, tls, plaintext_too).await;
                    drop(tracker);
                });
            }
        }
    }
    tracing::info!(listener = %rt.name, bind = %rt.bind, "listener closed");
}

/// Who serves a connection accepted on a listener.
enum Served {
    /// The listener itself.
    Here,
    /// On the inbound capture listener: the captured Sidecar ingress port it was for.
    Port(Arc<ListenerRuntime>),
    /// Its original destination, untouched: on the mesh listener, a destination that is no
    /// service it routes (`ListenerPlan::intercepted`); on the inbound capture listener, a
    /// port no ingress has.
    PassTo(SocketAddr),
    /// On the mesh listener: a service's TCP port, proxied to its cluster.
    Tcp(Arc<crate::cluster::Cluster>),
}

/// Where a connection iptables redirected to a sidecar listener goes, by its original
/// destination (`SO_ORIGINAL_DST`): a syscall per accepted connection on those listeners, and
/// on the capture listener a look in the listener table; nothing on any other listener, or
/// for a connection made to the listener itself.
fn served_by(shared: &Shared, rt: &ListenerRuntime, stream: &TcpStream) -> Served {
    let config = rt.config.load();
    if config.intercepted.is_none() && !config.inbound_capture {
        return Served::Here;
    }
    let (Some(to), Ok(local)) = (crate::net_io::original_destination(stream), stream.local_addr()) else {
        return Served::Here;
    };
    if to == local {
        return Served::Here;
    }
    if let Some(services) = &config.intercepted {
        return match services.iter().find(|s| s.address.takes(to)) {
            Some(s) if s.address.passthrough => Served::PassTo(to),
            Some(s) => s.tcp.clone().map_or(Served::Here, Served::Tcp),
            None => Served::PassTo(to),
        };
    }
    let listeners = crate::lock(&shared.listeners);
    match listeners.values().find(|l| l.bind.port() == to.port() && l.config.load().captured) {
        Some(l) => Served::Port(l.clone()),
        None => Served::PassTo(to),
    }
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
