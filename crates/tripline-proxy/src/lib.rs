//! Tripline's data plane: listeners, routing, upstream pools, admin API and metrics.
//!
//! [`Proxy`] owns the running state. A config load compiles a [`tripline_config::Loaded`]
//! plan into live clusters (state kept across reloads) and route tables, binds new
//! listeners, swaps route tables of existing ones, and closes listeners that are gone.

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod admin_guard;
pub mod body;
pub mod breakers_api;
pub mod client_conns;
pub mod client_fault;
pub mod cluster;
mod dns;
pub mod endpoint;
pub mod grpc;
pub mod h2_server;
pub mod h2_streams;
pub mod header_limits;
pub mod headers;
pub mod http_conn;
pub mod http_proxy;
pub mod istio_metrics;
pub mod listener;
pub mod local_reply;
pub mod metrics;
pub mod net_io;
pub mod pipeline;
pub mod reason;
pub mod resilience;
pub mod router;
pub mod sni;
pub mod spans;
pub mod stats;
pub mod stats_api;
pub mod tcp_proxy;
pub mod tls;
pub mod upload;
pub mod upstream;
pub mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tripline_config::Loaded;
use tripline_core::rng::{Rng, SplitMix};

use crate::cluster::{Cluster, Registry};
use crate::listener::ListenerRuntime;
use crate::router::ListenerConfig;
use crate::stats::GlobalStats;

/// The error type of bodies that mix hyper's and our own upstream client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// State shared by every task of the proxy.
pub struct Shared {
    pub global: Arc<GlobalStats>,
    pub rng: SplitMix,
    /// Random per process: mixed into the sticky cookies Tripline generates
    /// (`httpCookie.ttl`), so that their values cannot be predicted from client addresses.
    pub sticky_secret: u64,
    /// The config in force, for the admin API.
    pub applied: ArcSwap<Applied>,
    /// True once the first config's listeners are bound; false again when draining.
    pub ready: AtomicBool,
    /// Flipped to true on SIGTERM: listeners stop accepting and connections drain.
    pub shutdown: watch::Sender<bool>,
    /// Cluster and endpoint state across reloads; locked only by reloads (and the first load),
    /// one after the other.
    registry: Mutex<Registry>,
    /// DNS clusters' last endpoints, kept across reloads.
    dns_endpoints: Mutex<cluster::DnsEndpoints>,
    /// The clusters' open and half-open breakers, for housekeeping (the registry's list).
    timed: Arc<resilience::TimedBreakers>,
    /// Every TLS config in force (listeners' and clusters'), with the files it is re-read from.
    pub tls_files: Arc<tls::files::Registry>,
    listeners: Mutex<HashMap<SocketAddr, Arc<ListenerRuntime>>>,
    /// Bumped on every load; DNS refresh tasks of older loads stop.
    generation: AtomicU64,
    /// The last good answer of every DNS name, kept across refreshes and reloads.
    dns_answers: Mutex<dns::LastAnswers>,
    /// JSON access log, if enabled.
    pub access_log: Option<access_log::AccessLog>,
    /// Open client connections: the request-head timeout and the drain.
    pub client_conns: Arc<client_conns::ClientConns>,
    /// `--max-request-headers-kb` and `--max-request-headers`.
    pub header_limits: header_limits::ConfiguredLimits,
    /// `--istio-metrics`: this workload, for Istio's standard metrics on `/metrics`.
    pub istio_metrics: std::sync::OnceLock<istio_metrics::Workload>,
    /// `--otlp-endpoint`: the tracer sampled requests' spans go to.
    pub tracer: std::sync::OnceLock<spans::Tracer>,
}

impl Shared {
    /// What `/metrics` shows of TLS: the TLS listeners' handshakes and every certificate in
    /// force.
    pub fn tls_scrape(&self) -> metrics::TlsScrape {
        let listeners = lock(&self.listeners)
            .values()
            .filter(|rt| rt.config.load().tls.is_some())
            .map(|rt| {
                let s = &rt.tls_stats;
                let failures = std::array::from_fn(|i| s.failures[i].load(Ordering::Relaxed));
                (rt.name.clone(), s.handshakes.load(Ordering::Relaxed), failures)
            })
            .collect();
        metrics::TlsScrape { listeners, credentials: self.tls_files.live() }
    }
}

/// A config's live clusters and route tables, built by [`Proxy::prepare`] and not yet in
/// force.
pub struct Prepared {
    built: cluster::Built,
    route_breakers: resilience::RouteBreakers,
    rate_limiters: pipeline::rate_limit::RateLimiters,
    authz: Option<Arc<pipeline::authz::Authz>>,
    /// One per listener of the plan, in its order.
    configs: Vec<Arc<ListenerConfig>>,
    /// What makes it impossible to put in force (TLS files that cannot be read).
    errors: Vec<String>,
}

/// What putting a config in force replaced (the old clusters, route tables and registry
/// maps), for the caller to drop. At 100,000 endpoints freeing them is most of what applying
/// costs on the main thread; a reload hands them to a low-priority thread.
#[must_use = "dropping it frees the old config here"]
pub struct Retired(Vec<Box<dyn Send>>);

/// The config in force.
#[derive(Default)]
pub struct Applied {
    pub clusters: Vec<Arc<Cluster>>,
    /// Breakers of routes targeted by a ResiliencePolicy.
    pub route_breakers: resilience::RouteBreakers,
    /// Rate limiters of the policies of routes, by policy name.
    pub rate_limiters: pipeline::rate_limit::RateLimiters,
    /// The AuthorizationPolicies that apply to this proxy, with their counters.
    pub authz: Option<Arc<pipeline::authz::Authz>>,
    /// What `/config_dump` shows (shared with the [`Loaded`] it came from); `None` before the
    /// first config is applied.
    pub dump: Option<tripline_config::dump::ConfigDump>,
    pub listeners: Vec<(String, SocketAddr, String)>,
}

/// The running proxy.
#[derive(Clone)]
pub struct Proxy {
    pub shared: Arc<Shared>,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

impl Proxy {
    pub fn new() -> Self {
        Self::with_access_log(None)
    }

    /// A proxy that writes one JSON line per HTTP request to `log`.
    pub fn with_access_log(access_log: Option<access_log::AccessLog>) -> Self {
        let (shutdown, _) = watch::channel(false);
        let timed = Arc::new(resilience::TimedBreakers::default());
        let rng = SplitMix::from_entropy();
        let sticky_secret = rng.next_u64();
        let tls_files = Arc::new(tls::files::Registry::default());
        Proxy {
            shared: Arc::new(Shared {
                global: Arc::new(GlobalStats::default()),
                rng,
                sticky_secret,
                applied: ArcSwap::from_pointee(Applied::default()),
                ready: AtomicBool::new(false),
                shutdown,
                registry: Mutex::new(Registry::new(timed.clone(), tls_files.clone())),
                tls_files,
                dns_endpoints: Mutex::default(),
                timed,
                listeners: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                dns_answers: Mutex::default(),
                access_log,
                client_conns: Arc::default(),
                header_limits: header_limits::ConfiguredLimits::default(),
                istio_metrics: std::sync::OnceLock::new(),
                tracer: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Applies a compiled config. The sockets of new listeners are bound first, before
    /// anything running changes: if a bind fails, the error says which address and the
    /// running config stays whole (listeners, routes, cluster limits, endpoint and outlier
    /// state; a listener stopped for a protocol change is started again). Must run inside
    /// the tokio runtime.
    pub async fn apply(&self, loaded: &Loaded) -> Result<(), String> {
        self.apply_binding(loaded, &listener::bind).await
    }

    /// [`Proxy::apply`], binding listener sockets with `bind` (tests inject a failure).
    async fn apply_binding(&self, loaded: &Loaded, bind: &Binder) -> Result<(), String> {
        let prepared = self.prepare(&loaded.plan);
        self.apply_prepared_binding(loaded, prepared, bind).await.map(drop)
    }

    /// The part of applying `plan` that takes CPU: the live clusters (reusing the state of
    /// those that stay), the route breakers and every listener's route table. Nothing running
    /// changes. Runs on any thread: a reload prepares at low priority, off the event loop
    /// (at 100,000 endpoints this is most of what applying took on the main thread).
    /// [`Proxy::apply_prepared`] puts it in force; a reload must not prepare another in
    /// between.
    pub fn prepare(&self, plan: &tripline_config::plan::Plan) -> Prepared {
        let shared = &self.shared;
        // A copy: DNS refreshes on the event loop must not wait for this build.
        let dns = lock(&shared.dns_endpoints).clone();
        let built = lock(&shared.registry).build(&plan.clusters, &dns);
        let route_configs: Vec<(&str, &tripline_core::breaker::BreakerConfig)> = plan
            .listeners
            .iter()
            .flat_map(|l| l.virtual_hosts.iter().flat_map(|vh| vh.routes.iter()))
            .filter_map(|r| r.breaker.as_ref().map(|b| (r.name.as_str(), b)))
            .collect();
        let routes =
            || plan.listeners.iter().flat_map(|l| l.virtual_hosts.iter().flat_map(|vh| vh.routes.iter()));
        let limits: Vec<_> = routes().filter_map(|r| r.features.rate_limit.as_ref()).collect();
        let applied = shared.applied.load();
        let route_breakers = applied.route_breakers.build(&route_configs);
        let rate_limiters = applied.rate_limiters.build(&limits);
        let route_shared = router::RouteShared { breakers: &route_breakers, limiters: &rate_limiters };
        let authz =
            pipeline::authz::Authz::build(&plan.authorization, applied.authz.as_deref()).map(Arc::new);
        let mut errors = built.errors.clone();
        let configs = plan
            .listeners
            .iter()
            .map(|lp| {
                let mut config = ListenerConfig::build(lp, &built.clusters, route_shared);
                config.authz = authz.clone();
                if !lp.tls.is_empty() {
                    let alpn = match lp.protocol {
                        tripline_config::plan::ListenerProtocol::Http => tls::server::Alpn::Http,
                        tripline_config::plan::ListenerProtocol::Http2 => tls::server::Alpn::H2Only,
                        tripline_config::plan::ListenerProtocol::Tcp => tls::server::Alpn::None,
                    };
                    match tls::server::ServerTls::build(&lp.tls, alpn, &shared.tls_files) {
                        Ok(t) => config.tls = Some(Arc::new(t)),
                        Err(e) => errors.push(e),
                    }
                }
                Arc::new(config)
            })
            .collect();
        Prepared { built, route_breakers, rate_limiters, authz, configs, errors }
    }

    /// Puts a [`Proxy::prepare`]d config in force, as [`Proxy::apply`] does; `loaded` is the
    /// config it was prepared from. Returns what it replaced, for the caller to drop: a
    /// reload does that at low priority.
    pub async fn apply_prepared(&self, loaded: &Loaded, prepared: Prepared) -> Result<Retired, String> {
        self.apply_prepared_binding(loaded, prepared, &listener::bind).await
    }

    async fn apply_prepared_binding(
        &self,
        loaded: &Loaded,
        prepared: Prepared,
        bind: &Binder,
    ) -> Result<Retired, String> {
        let mut retired = Retired(Vec::new());
        let shared = &self.shared;
        let plan = &loaded.plan;
        if !prepared.errors.is_empty() {
            return Err(prepared.errors.join("; "));
        }
        let mut sockets = bind_new_listeners(shared, plan, bind).await?;
        let Prepared { built, route_breakers, rate_limiters, authz, configs, errors: _ } = prepared;
        let clusters = built.clusters.clone();
        for c in &clusters {
            dns::resolve_now(shared, c).await;
        }

        let mut bound = Vec::new();
        let mut updates = Vec::new();
        {
            let current = lock(&shared.listeners);
            for (lp, config) in plan.listeners.iter().zip(configs) {
                if lp.captured {
                    match current.get(&lp.bind).filter(|rt| rt.protocol == lp.protocol) {
                        Some(rt) => updates.push((rt.clone(), config)),
                        None => bound.push(accept::captured(lp.name.clone(), lp.bind, lp.protocol, config)),
                    }
                    continue;
                }
                match sockets.remove(&lp.bind) {
                    Some(socket) => bound.push(accept::start(
                        shared,
                        lp.name.clone(),
                        lp.bind,
                        lp.protocol,
                        config,
                        socket,
                    )),
                    None => updates.extend(current.get(&lp.bind).map(|rt| (rt.clone(), config))),
                }
            }
        }
        // The new clusters' limits and state take over.
        retired.0.push(Box::new(lock(&shared.registry).commit(built)));
        for (rt, config) in updates {
            retired.0.push(Box::new(rt.config.swap(config)));
        }
        {
            let mut current = lock(&shared.listeners);
            for rt in bound {
                if rt.config.load().captured {
                    tracing::info!(listener = %rt.name, port = rt.bind.port(), protocol = ?rt.protocol, "served through the inbound capture listener");
                } else {
                    tracing::info!(listener = %rt.name, bind = %rt.bind, protocol = ?rt.protocol, "listening");
                }
                current.insert(rt.bind, rt);
            }
            let keep: std::collections::HashSet<SocketAddr> = plan.listeners.iter().map(|l| l.bind).collect();
            current.retain(|addr, rt| {
                let stay = keep.contains(addr);
                if !stay {
                    rt.stop();
                }
                stay
            });
        }
        dns::forget_unused(&mut lock(&shared.dns_answers), &plan.clusters);
        let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        for c in &clusters {
            dns::spawn_refresh(shared.clone(), c.clone(), generation);
        }
        let listeners =
            plan.listeners.iter().map(|l| (l.name.clone(), l.bind, format!("{:?}", l.protocol))).collect();
        retired.0.push(Box::new(shared.applied.swap(Arc::new(Applied {
            clusters,
            route_breakers,
            rate_limiters,
            authz,
            dump: Some(loaded.dump.clone()),
            listeners,
        }))));
        if !shared.tls_files.live().is_empty() {
            shared.tls_files.watch();
        }
        shared.ready.store(true, Ordering::SeqCst);
        Ok(retired)
    }

    /// Replaces, in place, the endpoints of every live cluster of `host` with
    /// `endpoints(port)` for the cluster's service port, keeping the state (breakers,
    /// ejections, pools) of the addresses that stay, as a DNS refresh does: how the Kubernetes
    /// source applies an EndpointSlice change without compiling the config again. `false`,
    /// changing nothing, when a cluster of the host selects a subset (which endpoints a
    /// subset's labels select is the compiler's to say) or is not of fixed endpoints.
    pub fn set_host_endpoints(
        &self,
        host: &str,
        endpoints: impl Fn(u16) -> Vec<(SocketAddr, u32, std::collections::BTreeMap<String, String>)>,
    ) -> bool {
        let applied = self.shared.applied.load();
        let of_host: Vec<&Arc<Cluster>> =
            applied.clusters.iter().filter(|c| c.plan.host.eq_ignore_ascii_case(host)).collect();
        let fixed = |c: &&Arc<Cluster>| {
            c.plan.subset.is_none() && matches!(c.plan.discovery, tripline_config::plan::Discovery::Static(_))
        };
        if !of_host.iter().all(fixed) {
            return false;
        }
        for c in of_host {
            c.set_addresses(endpoints(c.plan.port));
        }
        true
    }

    /// Stops accepting, lets in-flight requests finish for up to `timeout`, then returns.
    pub async fn drain(&self, timeout: Duration) {
        let shared = &self.shared;
        shared.ready.store(false, Ordering::SeqCst);
        let _ = shared.shutdown.send(true);
        for rt in lock(&shared.listeners).values() {
            rt.stop();
        }
        shared.client_conns.stop_all();
        let deadline = tokio::time::Instant::now() + timeout;
        while shared.global.downstream_connections.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    open = shared.global.downstream_connections.load(Ordering::Relaxed),
                    "drain timeout reached; closing remaining connections"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Periodic work, forever: outlier sweeps and breaker ticks (so an open breaker becomes
    /// half-open even without traffic) every 100 ms, idle connection eviction every 5 s, and
    /// the client connections' request-head timeout every second (every tick when the timeout
    /// is under 10 s, so it stays within 10%).
    pub async fn run_housekeeping(self) {
        const TICK: Duration = Duration::from_millis(100);
        let mut tick = tokio::time::interval(TICK);
        let mut n: u64 = 0;
        let (mut next_sweep, mut swept_generation) = (0, u64::MAX);
        loop {
            tick.tick().await;
            n += 1;
            let conns = &self.shared.client_conns;
            let at = tokio::time::Instant::now();
            conns.tick(at);
            let every = (conns.header_timeout().as_millis() / 10 / TICK.as_millis()).clamp(1, 10) as u64;
            if n.is_multiple_of(every) {
                let swept = conns.sweep(at);
                if swept.stream_idle > 0 {
                    // Counted where each request ends (a 408, or a cut response).
                    tracing::info!(
                        connections = swept.stream_idle,
                        "stream idle timeout: requests that moved no byte either way are ended"
                    );
                }
            }
            let applied = self.shared.applied.load_full();
            let now = resilience::now();
            if n.is_multiple_of(50) {
                // Each worker sweeps its own idle connections on its own thread, so none of its
                // requests finds the pool emptied by a sweep in progress.
                for worker in 0..workers::count() {
                    let applied = applied.clone();
                    workers::spawn_on(worker, async move { evict_idle(worker, &applied, now) });
                }
            }
            // Breakers: only the open and half-open ones have anything to do.
            self.shared.timed.tick(now);
            for b in applied.route_breakers.breakers.values() {
                b.tick(now);
            }
            // Outlier sweeps: a pass over the clusters only when one is due (each cluster's
            // `interval`, 10 s by default), or when a new config came in.
            let generation = self.shared.generation.load(Ordering::Relaxed);
            if now >= next_sweep || generation != swept_generation {
                next_sweep = applied
                    .clusters
                    .iter()
                    .filter_map(|c| c.resilience.sweep_outliers(now))
                    .min()
                    .unwrap_or(u64::MAX);
                swept_generation = generation;
            }
        }
    }
}

/// Binds the sockets of the listeners `plan` adds, or whose protocol it changes, by address.
/// New addresses go first, so a failure there touches no running listener; a listener whose
/// protocol changes gives its port up just before the new bind, and is started again as it
/// was if a later bind fails.
async fn bind_new_listeners(
    shared: &Arc<Shared>,
    plan: &tripline_config::plan::Plan,
    bind: &Binder,
) -> Result<HashMap<SocketAddr, tokio::net::TcpListener>, String> {
    let mut wanted: Vec<(bool, &tripline_config::plan::ListenerPlan)> = {
        let current = lock(&shared.listeners);
        plan.listeners
            .iter()
            // A captured inbound port binds nothing: the inbound capture listener serves it.
            .filter(|lp| !lp.captured)
            .filter_map(|lp| match current.get(&lp.bind) {
                Some(rt) if rt.protocol == lp.protocol => None,
                running => Some((running.is_some(), lp)),
            })
            .collect()
    };
    wanted.sort_by_key(|(replaces, _)| *replaces);
    let mut sockets = HashMap::new();
    let mut replaced = Vec::new();
    for (_, lp) in wanted {
        let old = lock(&shared.listeners).remove(&lp.bind);
        if let Some(old) = old {
            old.stop();
            tokio::time::sleep(Duration::from_millis(20)).await;
            replaced.push(old);
        }
        match bind(lp.bind) {
            Ok(socket) => {
                sockets.insert(lp.bind, socket);
            }
            Err(e) => {
                // Never accepted on: closed at once.
                drop(sockets);
                let mut why = format!("listener {} cannot bind {}: {e}", lp.name, lp.bind);
                for old in replaced {
                    if let Err(e) = restore(shared, &old, bind) {
                        why.push_str(&format!(
                            "; and listener {} could not be started again on {}: {e}",
                            old.name, old.bind
                        ));
                    }
                }
                return Err(why);
            }
        }
    }
    Ok(sockets)
}

/// Starts again a listener that a failed reload had stopped, with its old protocol and routes.
fn restore(shared: &Arc<Shared>, old: &ListenerRuntime, bind: &Binder) -> std::io::Result<()> {
    let socket = bind(old.bind)?;
    let rt = accept::start(shared, old.name.clone(), old.bind, old.protocol, old.config.load_full(), socket);
    lock(&shared.listeners).insert(rt.bind, rt);
    Ok(())
}

/// Binds a listener socket: [`listener::bind`], or a test's stand-in.
type Binder = dyn Fn(SocketAddr) -> std::io::Result<tokio::net::TcpListener> + Sync;

/// Closes worker `worker`'s idle upstream connections that are past their idle timeout or
/// closed by the upstream.
fn evict_idle(worker: usize, applied: &Applied, now: tripline_core::clock::Nanos) {
    for c in applied.clusters.iter().filter(|c| c.state.connected.load(Ordering::Relaxed)) {
        for m in &c.endpoints.load().members {
            m.ep.pool.evict_idle(worker, c.limits().idle_timeout, now);
        }
        // A request of another worker that looked while the sweep held the connections waits
        // for a release: this is one.
        c.state.notify_released();
    }
}

/// Locks a control-plane mutex (never used on the request path); a poisoned lock still
/// holds consistent data because every critical section is a plain map update.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tripline_config::plan::ListenerProtocol;
    use tripline_config::{load, LoadOptions, Source};

    use super::*;

    /// Two listeners on `ports`, both speaking `protocol` (HTTP or TCP) to one backend.
    fn two_listeners(ports: [u16; 2], protocol: &str) -> Loaded {
        let route = if protocol == "TCP" { "tcp" } else { "http" };
        let text = format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  servers:
  - {{port: {{number: {a}, name: a, protocol: {protocol}}}, bind: 127.0.0.1, hosts: ["*"]}}
  - {{port: {{number: {b}, name: b, protocol: {protocol}}}, bind: 127.0.0.1, hosts: ["*"]}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend}}
spec:
  hosts: [backend.local]
  ports: [{{number: 80, name: {route}, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{{route}: 9}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: ["*"]
  gateways: [edge]
  {route}:
  - route: [{{destination: {{host: backend.local, port: {{number: 80}}}}}}]
"#,
            a = ports[0],
            b = ports[1]
        );
        load(&[Source { name: "mesh.yaml".into(), text }], &LoadOptions::default()).expect("valid config")
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Whether the listener on `port` answers an HTTP request with a status line. An HTTP
    /// listener does (a 503: nothing listens on the backend's port 9); a TCP one would relay
    /// the bytes to the backend instead.
    async fn answers_http(port: u16) -> bool {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("listener accepts");
        s.write_all(b"GET / HTTP/1.1\r\nhost: backend.local\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await;
        matches!(read, Ok(Ok(_))) && &buf == b"HTTP/1.1 "
    }

    /// The idle sweep visits only clusters that ever connected upstream (a mesh proxy knows
    /// every endpoint of every service and talks to few), and still closes their idle
    /// connections once past `idleTimeout`: the upstream sees its pooled connection closed.
    #[tokio::test(flavor = "current_thread")]
    async fn the_idle_sweep_visits_only_clusters_that_connected_and_closes_their_idle_connections() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_port = upstream.local_addr().unwrap().port();
        let port = free_port();
        let text = format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  servers: [{{port: {{number: {port}, name: http, protocol: HTTP}}, bind: 127.0.0.1, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: used}}
spec:
  hosts: [used.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {up_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: unused}}
spec:
  hosts: [unused.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: 9}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routes}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - match: [{{headers: {{x-to: {{exact: unused}}}}}}]
    route: [{{destination: {{host: unused.local}}}}]
  - route: [{{destination: {{host: used.local}}}}]
"#
        );
        let loaded =
            load(&[Source { name: "mesh.yaml".into(), text }], &LoadOptions::default()).expect("valid");
        let proxy = Proxy::new();
        proxy.apply(&loaded).await.expect("applies");

        let server = tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            // Kept open by the proxy's pool until the sweep closes it.
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
        });
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut resp = Vec::new();
        c.read_to_end(&mut resp).await.unwrap();
        assert!(resp.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&resp));

        let applied = proxy.shared.applied.load_full();
        let connected = |host: &str| {
            let named = |c: &&Arc<Cluster>| c.name().rsplit('|').next() == Some(host);
            let c = applied.clusters.iter().find(named).expect("cluster");
            c.state.connected.load(Ordering::Relaxed)
        };
        assert!(connected("used.local") && !connected("unused.local"));
        assert!(!server.is_finished(), "the pooled connection stays open before the sweep");
        evict_idle(0, &applied, resilience::now() + 2 * 3_600 * 1_000_000_000);
        let read = server.await.unwrap();
        assert!(matches!(read, Ok(Ok(0))), "the sweep closed the idle connection: {read:?}");
    }

    /// The restore path of a failed reload, which no real bind failure reaches on demand:
    /// both listeners change protocol, so each gives its port up just before its new bind,
    /// and the stand-in binder (the only mock here) refuses the second address, also when it
    /// is started again. The first listener must be back, speaking HTTP, and the error must
    /// name both the failed bind and the listener it could not start again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_rebind_starts_the_replaced_listeners_again_and_names_any_it_cannot() {
        let ports = [free_port(), free_port()];
        let proxy = Proxy::new();
        proxy.apply(&two_listeners(ports, "HTTP")).await.expect("first config");
        assert!(answers_http(ports[0]).await && answers_http(ports[1]).await);

        let refused = SocketAddr::from(([127, 0, 0, 1], ports[1]));
        let binds = Arc::new(Mutex::new(Vec::new()));
        let seen = binds.clone();
        let bind = move |addr: SocketAddr| {
            lock(&seen).push(addr.port());
            if addr == refused {
                Err(std::io::Error::from(std::io::ErrorKind::AddrInUse))
            } else {
                listener::bind(addr)
            }
        };
        let err = proxy.apply_binding(&two_listeners(ports, "TCP"), &bind).await.unwrap_err();
        assert!(err.contains(&format!("cannot bind 127.0.0.1:{}:", ports[1])), "{err}");
        assert!(err.contains(&format!("could not be started again on 127.0.0.1:{}:", ports[1])), "{err}");
        assert!(!err.contains(&format!("on 127.0.0.1:{}:", ports[0])), "the first one was restored: {err}");
        // The first listener really gave its port up: bound for the new config, then again
        // for the old one.
        let bound = lock(&binds).clone();
        assert_eq!(
            bound,
            [ports[0], ports[1], ports[0], ports[1]],
            "binds in order: new a, new b, restore a, restore b"
        );

        let protocol = |port: u16| {
            let running = lock(&proxy.shared.listeners);
            running.get(&SocketAddr::from(([127, 0, 0, 1], port))).map(|rt| rt.protocol)
        };
        assert_eq!(protocol(ports[0]), Some(ListenerProtocol::Http), "restored with its old protocol");
        assert_eq!(protocol(ports[1]), None, "the one that could not be restored is not listed as running");
        assert!(answers_http(ports[0]).await, "the restored listener serves HTTP with its old routes");
    }
}
