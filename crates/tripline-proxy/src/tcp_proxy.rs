//! TCP proxying: pick a destination, connect within the connect timeout, and copy bytes both
//! ways. `copy_bidirectional` forwards a half-close (FIN) in each direction independently, so
//! a client that shuts its write side still receives the rest of the upstream's answer.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::listener::{refuse_global, ConnTracker, ListenerRuntime};
use crate::local_reply::Reason;
use crate::Shared;

pub async fn serve(
    shared: Arc<Shared>,
    rt: Arc<ListenerRuntime>,
    mut client: TcpStream,
    peer: SocketAddr,
    _t: ConnTracker,
) {
    let route = rt.config.load().tcp.clone();
    let Some(cluster) = route.as_ref().and_then(|r| r.pick_cluster(&shared.rng)).cloned() else {
        refuse_global(&shared, Reason::NoRoute);
        return;
    };
    let state = &cluster.state;
    let Some(_slot) = state.connections.try_acquire() else {
        state.stats.local.inc(Reason::OverflowConnections);
        return;
    };
    let hash = crate::upstream::ip_hash(peer);
    let endpoint = {
        let set = cluster.endpoints.load();
        match set.balancer.pick(&set.members, Some(hash), &shared.rng) {
            Some(i) => set.members[i].ep.clone(),
            None => {
                state.stats.local.inc(Reason::NoHealthyUpstream);
                return;
            }
        }
    };
    let connect = TcpStream::connect(endpoint.address);
    let mut upstream = match tokio::time::timeout(cluster.limits().connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        _ => {
            state.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            state.stats.local.inc(Reason::UpstreamConnectFailure);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    endpoint.active.fetch_add(1, Ordering::Relaxed);
    endpoint.requests_total.fetch_add(1, Ordering::Relaxed);
    endpoint.pool.connections.fetch_add(1, Ordering::Relaxed);
    // On drain, TCP connections get the drain timeout to finish; the process then exits.
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(cluster = %state.name, error = %e, "tcp proxy ended with error");
    }
    endpoint.pool.connections.fetch_sub(1, Ordering::Relaxed);
    endpoint.active.fetch_sub(1, Ordering::Relaxed);
}
