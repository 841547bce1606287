//! TCP proxying: pick a destination, connect within the connect timeout, and copy bytes both
//! ways. `copy_bidirectional` forwards a half-close (FIN) in each direction independently, so
//! a client that shuts its write side still receives the rest of the upstream's answer.
//!
//! Connecting feeds outlier detection the way Envoy's TCP proxy does: a connect that fails or
//! times out is a local-origin failure of its endpoint, a connect that succeeds a success, so a
//! dead endpoint is ejected and skipped like an HTTP one. A failed connect is tried again on
//! another endpoint, up to [`MAX_CONNECT_ATTEMPTS`] in all: the client only sees a closed
//! connection when none of them could be reached.
//!
//! A passthrough listener (`tls.mode: PASSTHROUGH`) terminates nothing: the SNI of the
//! client's ClientHello, peeked and left unread (`sni`), picks the route, whose upstream gets
//! every byte as the client sent it. A client that sends no ClientHello, none with an SNI a
//! route takes, or bytes that are not TLS, is closed and counted as `no-route` before any
//! upstream is chosen, so its bytes never count against one.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tripline_core::balancer::EndpointView;
use tripline_core::classify::Outcome;

use crate::cluster::{Cluster, Endpoint, Member};
use crate::listener::{refuse_global, ConnTracker, ListenerRuntime};
use crate::net_io::TcpIo;
use crate::pipeline::authz::Facts;
use crate::reason::Reason;
use crate::resilience;
use crate::sni::Hello;
use crate::Shared;

/// Endpoints one client connection tries, each once, before it is closed: the first and
/// two more after a failed or timed-out connect (fewer when the cluster has fewer available).
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Serves an accepted connection on a TCP listener: terminates its TLS first if the listener
/// has `tls` servers (a failed handshake is counted on the listener and the connection closed;
/// on a PERMISSIVE listener only a connection that begins with a TLS record is terminated),
/// or reads its SNI on a passthrough listener.
pub async fn serve(
    shared: Arc<Shared>,
    rt: Arc<ListenerRuntime>,
    client: TcpStream,
    peer: SocketAddr,
    t: ConnTracker,
) {
    let local = client.local_addr().map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
    let (tls, passthrough, plaintext_too) = {
        let config = rt.config.load();
        (config.tls.clone(), config.passthrough, config.plaintext_too)
    };
    if passthrough {
        return pass_through(shared, rt, client, local, peer, t).await;
    }
    let Some(tls) = tls else {
        return proxy(shared, rt, client, local, peer, None, t).await;
    };
    if plaintext_too && !begins_tls(&shared, &client).await {
        return proxy(shared, rt, client, local, peer, None, t).await;
    }
    // A client that stalls the handshake is cut at the request-head timeout, as on HTTP.
    let handshake = tls.accept(crate::net_io::TcpIo::new(client));
    let failure = match tokio::time::timeout(shared.client_conns.header_timeout(), handshake).await {
        Ok(Ok((stream, info))) => {
            rt.tls_stats.handshake();
            return proxy(shared, rt, stream, local, peer, Some(info), t).await;
        }
        Ok(Err(failure)) => failure,
        Err(_) => crate::tls::server::HandshakeFailure::Disconnected,
    };
    rt.tls_stats.failed(failure);
    tracing::debug!(listener = %rt.name, %peer, reason = failure.as_str(), "TLS handshake failed");
}

/// How long a passed-through connection may take to connect (Istio's default
/// `connectTimeout`).
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection iptables redirected to the mesh listener whose destination is no service it
/// routes: connected to where it was going and copied both ways, bytes untouched (Istio's
/// `ALLOW_ANY` through its PassthroughCluster). Counted as connected or failed.
pub async fn pass_to(
    shared: Arc<Shared>,
    rt: Arc<ListenerRuntime>,
    mut client: TcpStream,
    peer: SocketAddr,
    to: SocketAddr,
    _t: ConnTracker,
) {
    let stats = &shared.global;
    let connected = tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(to)).await;
    let mut upstream = match connected {
        Ok(Ok(s)) => s,
        failed => {
            stats.passthrough_failed.fetch_add(1, Ordering::Relaxed);
            let error = failed.map_or_else(
                |_| "timed out".to_string(),
                |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
            );
            tracing::debug!(listener = %rt.name, %peer, %to, %error, "passthrough: cannot connect to the original destination");
            return;
        }
    };
    stats.passthrough_connected.fetch_add(1, Ordering::Relaxed);
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(listener = %rt.name, %peer, %to, error = %e, "passthrough ended with error");
    }
}

/// Whether a client on a PERMISSIVE listener begins with a TLS record. A client that sends
/// nothing within the request-head timeout is taken as plaintext: the protocol may be one
/// whose server speaks first (a database's greeting), and the application answers it then.
async fn begins_tls(shared: &Shared, client: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(shared.client_conns.header_timeout(), client.peek(&mut first)).await;
    matches!(peeked, Ok(Ok(1))) && crate::sni::starts_tls(first[0])
}

/// Reads the SNI of a client on a passthrough listener, within the request-head timeout (a
/// client that stalls is closed then), and proxies the connection, ClientHello and all, by it.
async fn pass_through(
    shared: Arc<Shared>,
    rt: Arc<ListenerRuntime>,
    client: TcpStream,
    local: std::net::IpAddr,
    peer: SocketAddr,
    t: ConnTracker,
) {
    let hello = crate::sni::peek_client_hello(&client);
    let sni = match tokio::time::timeout(shared.client_conns.header_timeout(), hello).await {
        Ok(Ok(Hello::Tls(sni))) => sni,
        Ok(Ok(Hello::NotTls)) => {
            refuse_global(&shared, Reason::NoRoute);
            tracing::debug!(listener = %rt.name, %peer, "not a TLS ClientHello on a passthrough listener");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(listener = %rt.name, %peer, error = %e, "the client left before its ClientHello");
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %rt.name, %peer, "no ClientHello within the request-head timeout");
            return;
        }
    };
    let info = crate::tls::TlsInfo { sni, ..Default::default() };
    proxy(shared, rt, client, local, peer, Some(info), t).await
}

/// Routes a client connection (plaintext, TLS already terminated, or TLS passed through, with
/// the SNI in `tls`) and copies bytes both ways, originating TLS to the endpoint if the
/// cluster has it.
async fn proxy<C: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    rt: Arc<ListenerRuntime>,
    client: C,
    local: std::net::IpAddr,
    peer: SocketAddr,
    tls: Option<crate::tls::TlsInfo>,
    _t: ConnTracker,
) {
    if !allowed(&shared, &rt, peer, tls.as_ref()) {
        return;
    }
    let route = {
        let sni = tls.as_ref().and_then(|t| t.sni.as_deref());
        rt.config.load().tcp_route(local, sni).cloned()
    };
    let Some(cluster) = route.as_ref().and_then(|r| r.pick_cluster(&shared.rng)).cloned() else {
        refuse_global(&shared, Reason::NoRoute);
        let sni = tls.as_ref().and_then(|t| t.sni.as_deref());
        tracing::debug!(listener = %rt.name, %peer, sni, "no route takes this connection");
        return;
    };
    forward(&shared, client, peer, &cluster).await
}

/// A connection iptables redirected to the mesh listener for a service's TCP port (its
/// cluster IP and port): proxied to the service's endpoints with its cluster's limits,
/// outlier detection and balancing, as a `tcp` route would.
pub async fn to_service(
    shared: Arc<Shared>,
    rt: Arc<ListenerRuntime>,
    client: TcpStream,
    peer: SocketAddr,
    cluster: Arc<Cluster>,
    _t: ConnTracker,
) {
    if allowed(&shared, &rt, peer, None) {
        forward(&shared, client, peer, &cluster).await
    }
}

/// Whether the AuthorizationPolicies let the connection through (a denial is counted).
fn allowed(
    shared: &Shared,
    rt: &ListenerRuntime,
    peer: SocketAddr,
    tls: Option<&crate::tls::TlsInfo>,
) -> bool {
    let config = rt.config.load();
    let Some(authz) = &config.authz else { return true };
    // A TCP connection has no `x-forwarded-for`: the peer is the client.
    let facts = Facts { peer: peer.ip(), remote: peer.ip(), port: rt.bind.port(), tls, http: None };
    let decision = authz.check(&facts);
    if let Some(policy) = decision.shadow_denied_by {
        tracing::debug!(listener = %rt.name, %peer, %policy, "a dry-run authorization policy would deny this connection");
    }
    if let Some(policy) = decision.denied_by {
        refuse_global(shared, Reason::RbacDenied);
        tracing::debug!(listener = %rt.name, %peer, %policy, "connection denied by an authorization policy");
        return false;
    }
    true
}

/// Connects to an endpoint of `cluster` (within its connection limit) and copies bytes both
/// ways, originating TLS to the endpoint if the cluster has it.
async fn forward<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    mut client: C,
    peer: SocketAddr,
    cluster: &Cluster,
) {
    let state = &cluster.state;
    let Some(_slot) = state.connections.try_acquire() else {
        state.stats.local.inc(Reason::OverflowConnections);
        return;
    };
    let hash = crate::upstream::ip_hash(peer);
    let (upstream, endpoint) = match connect(shared, cluster, hash).await {
        Ok(connected) => connected,
        Err(reason) => {
            state.stats.local.inc(reason);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut upstream = match &cluster.tls {
        None => Upstream::Plain(upstream),
        Some(tls) => {
            match tokio::time::timeout(cluster.limits().connect_timeout, tls.connect(TcpIo::new(upstream)))
                .await
            {
                Ok(Ok(s)) => Upstream::Tls(Box::new(s)),
                failed => {
                    state.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    state.stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                    state.stats.local.inc(Reason::UpstreamConnectFailure);
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::debug!(cluster = %state.name, endpoint = %endpoint.address, %error, "upstream TLS handshake failed");
                    return;
                }
            }
        }
    };
    endpoint.active.fetch_add(1, Ordering::Relaxed);
    endpoint.requests_total.fetch_add(1, Ordering::Relaxed);
    endpoint.pool.connections.fetch_add(1, Ordering::Relaxed);
    // On drain, TCP connections get the drain timeout to finish; the process then exits.
    let tcp = &state.stats.tcp;
    tcp.opened.fetch_add(1, Ordering::Relaxed);
    let copied = match &mut upstream {
        Upstream::Plain(s) => tokio::io::copy_bidirectional(&mut client, s).await,
        Upstream::Tls(s) => tokio::io::copy_bidirectional(&mut client, &mut **s).await,
    };
    tcp.closed.fetch_add(1, Ordering::Relaxed);
    match copied {
        Ok((from_client, to_client)) => {
            tcp.received.fetch_add(from_client, Ordering::Relaxed);
            tcp.sent.fetch_add(to_client, Ordering::Relaxed);
        }
        // The bytes of a connection that ended in an error are not known (not counted).
        Err(e) => tracing::debug!(cluster = %state.name, error = %e, "tcp proxy ended with error"),
    }
    endpoint.pool.connections.fetch_sub(1, Ordering::Relaxed);
    endpoint.active.fetch_sub(1, Ordering::Relaxed);
}

/// The connection to the endpoint: the socket, or TLS over it.
enum Upstream {
    Plain(TcpStream),
    Tls(Box<crate::tls::client::ClientStream>),
}

/// Connects to an endpoint that the balancer offers and outlier detection admits, recording
/// each attempt's outcome against its endpoint, and tries endpoints not tried yet after a
/// failure. `Err` is why the client's connection is closed: no endpoint available, or every
/// attempt failed.
async fn connect(
    shared: &Shared,
    cluster: &Cluster,
    hash: u64,
) -> Result<(TcpStream, Arc<Endpoint>), Reason> {
    let set = cluster.endpoints.load();
    let timeout = cluster.limits().connect_timeout;
    let mut tried = [0usize; MAX_CONNECT_ATTEMPTS];
    let mut attempts = 0;
    let mut failed = false;
    while attempts < MAX_CONNECT_ATTEMPTS {
        let now = resilience::now();
        let picked = set.balancer.pick(&set.members, Some(hash), &shared.rng);
        let Some(i) = pick_untried(&set.members, &tried[..attempts], picked) else { break };
        tried[attempts] = i;
        attempts += 1;
        let member = &set.members[i];
        let pass = match &member.outlier {
            Some(o) => match o.admit_owned(now) {
                Some(pass) => Some(pass),
                // Its probe slots filled since the balancer looked: another endpoint.
                None => continue,
            },
            None => None,
        };
        let (outcome, stream) = attempt(member.ep.address, timeout).await;
        let end = resilience::now();
        if let Some(pass) = pass {
            pass.record(&outcome, Duration::from_nanos(end.saturating_sub(now)), end);
        }
        match stream {
            Some(s) => return Ok((s, member.ep.clone())),
            None => {
                failed = true;
                cluster.state.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Err(if failed { Reason::UpstreamConnectFailure } else { Reason::NoHealthyUpstream })
}

/// The balancer's choice if not tried yet, else the next available endpoint after it that is
/// not; `None` when every available endpoint has been tried.
fn pick_untried(members: &[Member], tried: &[usize], picked: Option<usize>) -> Option<usize> {
    let first = picked?;
    (0..members.len())
        .map(|k| (first + k) % members.len())
        .find(|&j| !tried.contains(&j) && (j == first || members[j].is_available()))
}

/// One connect within the connect timeout: the outcome to record, and the stream if it worked.
async fn attempt(address: SocketAddr, timeout: Duration) -> (Outcome, Option<TcpStream>) {
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(s)) => (Outcome::Success, Some(s)),
        Ok(Err(e)) => {
            tracing::debug!(endpoint = %address, error = %e, "tcp connect failed");
            (Outcome::ConnectFailure, None)
        }
        Err(_) => {
            tracing::debug!(endpoint = %address, ?timeout, "tcp connect timed out");
            (Outcome::Timeout, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tripline_config::plan::{
        ClusterPlan, Discovery, EndpointPlan, LoadBalancer, PoolLimits, ResiliencePlan, UpstreamProtocol,
    };
    use tripline_core::outlier::{Health, OutlierConfig};

    /// A cluster of `endpoints`, round robin, ejecting an endpoint after two consecutive
    /// failures (for as long as the test runs), with up to all of them ejected.
    fn cluster(endpoints: &[SocketAddr], connect_timeout: Duration) -> Arc<Cluster> {
        let outlier = OutlierConfig {
            consecutive_5xx_errors: Some(2),
            base_ejection_time: Duration::from_secs(600),
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        };
        let plan = ClusterPlan {
            name: "outbound|5432||db.local".into(),
            host: "db.local".into(),
            port: 5432,
            subset: None,
            protocol: UpstreamProtocol::Tcp,
            discovery: Discovery::Static(
                endpoints
                    .iter()
                    .map(|&address| EndpointPlan { address, weight: 1, labels: BTreeMap::new() })
                    .collect(),
            ),
            load_balancer: LoadBalancer::RoundRobin,
            pool: PoolLimits { connect_timeout, ..PoolLimits::default() },
            resilience: ResiliencePlan { outlier: Some(outlier), ..ResiliencePlan::default() },
            tls: None,
        };
        crate::cluster::Registry::default().build(&[plan], &Default::default()).clusters.remove(0)
    }

    fn shared() -> Arc<Shared> {
        crate::Proxy::new().shared
    }

    /// A port nothing listens on: connects are refused at once.
    fn refusing() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn health(cluster: &Cluster, address: SocketAddr) -> Health {
        let set = cluster.endpoints.load();
        let m = set.members.iter().find(|m| m.ep.address == address).unwrap();
        m.outlier.as_ref().unwrap().health()
    }

    /// The case: one dead endpoint, one live. Every connect reaches the live one (the
    /// dead one is tried and then skipped), and after two failures the dead one is ejected and
    /// no longer tried at all.
    #[tokio::test]
    async fn a_refused_connect_is_retried_elsewhere_and_ejects_its_endpoint() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (dead, up) = (refusing(), live.local_addr().unwrap());
        let cluster = cluster(&[dead, up], Duration::from_secs(5));
        let shared = shared();
        for n in 0..6 {
            let (_stream, ep) = connect(&shared, &cluster, n).await.expect("the live endpoint connects");
            assert_eq!(ep.address, up, "connection {n}");
        }
        assert_eq!(health(&cluster, dead), Health::Ejected);
        assert_eq!(health(&cluster, up), Health::Healthy);
        assert_eq!(
            cluster.state.stats.connect_failures.load(Ordering::Relaxed),
            2,
            "tried until ejected, then skipped"
        );
    }

    /// A connect that times out is a failure of its endpoint too (a listener whose accept
    /// queue is full drops the SYN, so the connect hangs until the timeout).
    #[tokio::test]
    async fn a_timed_out_connect_is_retried_elsewhere_and_ejects_its_endpoint() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = socket.listen(0).unwrap();
        let silent = full.local_addr().unwrap();
        let _queued = std::net::TcpStream::connect(silent).unwrap();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = live.local_addr().unwrap();
        let cluster = cluster(&[silent, up], Duration::from_millis(100));
        let shared = shared();
        for n in 0..4 {
            let (_stream, ep) = connect(&shared, &cluster, n).await.expect("the live endpoint connects");
            assert_eq!(ep.address, up);
        }
        assert_eq!(health(&cluster, silent), Health::Ejected);
    }

    /// Attempts are bounded: with every endpoint dead, a connection tries three of them, each
    /// once, and is closed as a connect failure; once all are ejected, as no-healthy-upstream.
    #[tokio::test]
    async fn with_every_endpoint_dead_three_are_tried_then_none() {
        let dead: Vec<SocketAddr> = (0..4).map(|_| refusing()).collect();
        let cluster = cluster(&dead, Duration::from_secs(5));
        let shared = shared();
        assert!(matches!(connect(&shared, &cluster, 0).await, Err(Reason::UpstreamConnectFailure)));
        assert_eq!(cluster.state.stats.connect_failures.load(Ordering::Relaxed), MAX_CONNECT_ATTEMPTS as u64);
        let mut rounds = 0;
        while let Err(Reason::UpstreamConnectFailure) = connect(&shared, &cluster, 0).await {
            rounds += 1;
            assert!(rounds < 4, "each endpoint is ejected after its second failure");
        }
        assert!(matches!(connect(&shared, &cluster, 0).await, Err(Reason::NoHealthyUpstream)));
        assert_eq!(cluster.state.stats.connect_failures.load(Ordering::Relaxed), 8, "two per endpoint");
    }
}
