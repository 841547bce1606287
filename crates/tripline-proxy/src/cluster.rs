//! Live clusters and endpoints.
//!
//! A [`Cluster`] is rebuilt on every config load from its [`ClusterPlan`], but the state that
//! matters under load lives in objects that survive the reload: the cluster's
//! [`ClusterState`] (limits, counters) is kept by cluster name and every [`Endpoint`] (active
//! requests, connection pool, counters) by cluster name and address. In-flight requests that
//! started on the old config release their permits into the same counters.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tripline_config::plan::{ClusterPlan, Discovery, HashKey, LoadBalancer, PoolLimits, UpstreamProtocol};
use tripline_core::balancer::{hash_bytes, Algorithm, Balancer, EndpointSpec, EndpointView};
use tripline_core::breaker::CircuitBreaker;
use tripline_core::outlier::{Endpoint as OutlierEndpoint, Health};

pub use crate::endpoint::{ClusterState, ClusterStats, Endpoint};
use crate::resilience::{self, ClusterResilience};

/// An endpoint as the balancer sees it: the endpoint plus its resilience handles.
#[derive(Debug, Clone)]
pub struct Member {
    pub ep: Arc<Endpoint>,
    pub outlier: Option<Arc<OutlierEndpoint>>,
    pub breaker: Option<Arc<CircuitBreaker>>,
}

impl Member {
    /// Not ejected (or the cluster is in panic) and its breaker is not open.
    pub fn ejected(&self) -> bool {
        match &self.outlier {
            Some(o) if o.health() != Health::Healthy => !o.is_available(resilience::now()),
            _ => false,
        }
    }

    /// Its breaker keeps traffic away (open and enforcing, or forced open; a dry-run breaker
    /// never does).
    pub fn breaker_open(&self) -> bool {
        self.breaker.as_ref().is_some_and(|b| b.refuses_traffic())
    }

    /// Available but for a hold the endpoint asked for (`Retry-After`).
    fn available_unless_held(&self) -> bool {
        // In panic (fewer healthy endpoints than `minHealthPercent`) the balancer spreads over
        // every endpoint; asked of the detector only for an ejected endpoint.
        (!self.ejected() || self.outlier.as_ref().is_some_and(|o| o.detector_in_panic()))
            && !self.breaker_open()
    }

    /// Held: it answered `429` with a `Retry-After` that has not passed.
    pub fn held(&self) -> bool {
        self.ep.hold.is_held(resilience::now)
    }
}

/// A member as the balancer sees it when every available endpoint is held: the holds are
/// ignored (they are the endpoints' wish, not a failure; the upstreams' own 429s then reach
/// clients, as without holds).
pub struct IgnoringHold<'a>(pub &'a Member);

impl EndpointView for IgnoringHold<'_> {
    fn active_requests(&self) -> u32 {
        self.0.active_requests()
    }

    fn is_available(&self) -> bool {
        self.0.available_unless_held()
    }
}

impl EndpointView for Member {
    fn active_requests(&self) -> u32 {
        self.ep.active.load(Ordering::Relaxed)
    }

    fn is_available(&self) -> bool {
        self.available_unless_held() && !self.held()
    }
}

/// The endpoints of a cluster at one moment, with a balancer built for exactly them.
#[derive(Debug)]
pub struct EndpointSet {
    pub members: Vec<Member>,
    pub balancer: Balancer,
}

/// A cluster as the request path sees it.
#[derive(Debug)]
pub struct Cluster {
    pub plan: ClusterPlan,
    pub state: Arc<ClusterState>,
    pub resilience: Arc<ClusterResilience>,
    pub endpoints: ArcSwap<EndpointSet>,
    pub algorithm: Algorithm,
    /// TLS to the endpoints (`DestinationRule.trafficPolicy.tls`).
    pub tls: Option<Arc<crate::tls::client::UpstreamTls>>,
}

impl Cluster {
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// A sidecar's inbound cluster (`inbound|<port>||`, Istio's name): the local workload, not
    /// a service this proxy calls.
    pub fn is_inbound(&self) -> bool {
        self.name().starts_with("inbound|")
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.plan.pool
    }

    /// What its endpoints' pools need of it to check a connection out.
    pub fn pool_cx(&self) -> crate::endpoint::pool::PoolCx<'_> {
        crate::endpoint::pool::PoolCx {
            state: &self.state,
            limits: &self.plan.pool,
            protocol: self.protocol(),
            tls: self.tls.as_deref(),
        }
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.plan.protocol
    }

    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.plan.load_balancer {
            LoadBalancer::RingHash { key, .. } | LoadBalancer::Maglev { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Replaces the endpoint set (DNS refresh), keeping the state of addresses that stay.
    pub fn set_addresses(&self, addrs: Vec<(SocketAddr, u32, BTreeMap<String, String>)>) {
        let current = self.endpoints.load();
        let mut by_addr: HashMap<SocketAddr, Arc<Endpoint>> =
            current.members.iter().map(|m| (m.ep.address, m.ep.clone())).collect();
        let endpoints: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|(address, weight, labels)| match by_addr.remove(&address) {
                Some(e) if e.weight == weight && e.labels == labels => e,
                _ => Endpoint::new(address, weight, labels),
            })
            .collect();
        self.endpoints.store(Arc::new(self.build_set(endpoints)));
    }

    /// Attaches the resilience handles (outlier state, endpoint breakers) and builds the
    /// balancer for a list of endpoints.
    fn build_set(&self, endpoints: Vec<Arc<Endpoint>>) -> EndpointSet {
        let res = &self.resilience;
        let outliers: Vec<Option<Arc<OutlierEndpoint>>> = match &res.outlier {
            Some(d) => {
                let ids: Vec<&str> = endpoints.iter().map(|e| &*e.id).collect();
                d.update_endpoints(&ids, resilience::now()).into_iter().map(Some).collect()
            }
            None => vec![None; endpoints.len()],
        };
        let members: Vec<Member> = endpoints
            .into_iter()
            .zip(outliers)
            .map(|(ep, outlier)| {
                let breaker = {
                    let mut slot = ep.breaker_slot.lock().unwrap_or_else(|p| p.into_inner());
                    let keep = match (&*slot, &res.plan.endpoint_breaker) {
                        (Some(b), Some(cfg)) => b.config() == cfg,
                        _ => false,
                    };
                    if !keep {
                        *slot = res.endpoint_breaker(&ep.id);
                    }
                    slot.clone()
                };
                Member { ep, outlier, breaker }
            })
            .collect();
        let specs: Vec<EndpointSpec> = members
            .iter()
            .map(|m| EndpointSpec { key: hash_bytes(m.ep.id.as_bytes()), weight: m.ep.weight })
            .collect();
        EndpointSet { balancer: Balancer::new(self.algorithm, &specs), members }
    }
}

fn algorithm(lb: &LoadBalancer) -> Algorithm {
    match lb {
        LoadBalancer::RoundRobin => Algorithm::RoundRobin,
        LoadBalancer::LeastRequest => Algorithm::LeastRequest,
        LoadBalancer::Random => Algorithm::Random,
        LoadBalancer::RingHash { minimum_ring_size, .. } => {
            Algorithm::RingHash { minimum_ring_size: *minimum_ring_size }
        }
        LoadBalancer::Maglev { table_size, .. } => Algorithm::Maglev { table_size: *table_size },
    }
}

/// Keeps cluster and endpoint state across config loads.
#[derive(Debug, Default)]
pub struct Registry {
    /// Where the clusters' breakers list themselves while open or half-open (housekeeping
    /// ticks those); shared with [`crate::Shared`].
    pub(crate) timed: Arc<resilience::TimedBreakers>,
    states: HashMap<String, Arc<ClusterState>>,
    resilience: HashMap<String, Arc<ClusterResilience>>,
    /// Each cluster's static endpoints by address: one lookup by name per cluster, then only
    /// addresses are hashed (a key of name and address copied the name for every endpoint and
    /// hashed it again for each: a tenth of a 100,000-endpoint reload's main-thread time).
    endpoints: HashMap<String, HashMap<SocketAddr, Arc<Endpoint>>>,
    /// The files clusters' TLS configs are read from, watched for changes; shared with
    /// [`crate::Shared`].
    tls_files: Arc<crate::tls::files::Registry>,
}

/// Clusters built for a plan, not yet in force: a reload that fails after building them (a
/// listener cannot bind) must leave the running config's limits and state as they were.
pub struct Built {
    pub clusters: Vec<Arc<Cluster>>,
    states: HashMap<String, Arc<ClusterState>>,
    resilience: HashMap<String, Arc<ClusterResilience>>,
    endpoints: HashMap<String, HashMap<SocketAddr, Arc<Endpoint>>>,
    /// Clusters whose TLS files could not be read: the config cannot be put in force.
    pub errors: Vec<String>,
}

impl Registry {
    /// A registry whose clusters' breakers list themselves in `timed` while open or half-open,
    /// and whose TLS configs join `tls_files`.
    pub fn new(timed: Arc<resilience::TimedBreakers>, tls_files: Arc<crate::tls::files::Registry>) -> Self {
        Registry { timed, tls_files, ..Default::default() }
    }

    /// Builds live clusters for a plan, reusing the state of clusters and endpoints that stay
    /// (DNS clusters start from `dns`, their last resolved endpoints).
    /// Nothing running changes until [`Registry::commit`]; then the state of clusters that
    /// are gone is dropped once no request holds it.
    pub fn build(&self, plans: &[ClusterPlan], dns: &DnsEndpoints) -> Built {
        let mut states = HashMap::new();
        let mut resiliences = HashMap::new();
        let mut endpoints = HashMap::new();
        let mut errors = Vec::new();
        let clusters = plans
            .iter()
            .map(|plan| {
                // A kept state gets the new limits at commit.
                let state = self
                    .states
                    .get(&plan.name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(ClusterState::new(&plan.name, &plan.pool)));
                states.insert(plan.name.clone(), state.clone());
                let resilience = ClusterResilience::build(
                    &plan.name,
                    &plan.resilience,
                    self.resilience.get(&plan.name).map(|r| &**r),
                    &self.timed,
                );
                resiliences.insert(plan.name.clone(), resilience.clone());
                let eps: Vec<Arc<Endpoint>> = match &plan.discovery {
                    Discovery::Static(statics) => {
                        let before = self.endpoints.get(&plan.name);
                        let mut now = HashMap::with_capacity(statics.len());
                        let eps = statics
                            .iter()
                            .map(|ep| {
                                // An address listed twice gets a second endpoint, not the same one.
                                let kept = (!now.contains_key(&ep.address))
                                    .then(|| before.and_then(|b| b.get(&ep.address)))
                                    .flatten()
                                    .filter(|e: &&Arc<Endpoint>| {
                                        e.weight == ep.weight && e.labels == ep.labels
                                    })
                                    .cloned();
                                let e = kept.unwrap_or_else(|| {
                                    Endpoint::new(ep.address, ep.weight, ep.labels.clone())
                                });
                                now.insert(ep.address, e.clone());
                                e
                            })
                            .collect();
                        endpoints.insert(plan.name.clone(), now);
                        eps
                    }
                    Discovery::Dns { .. } => dns.get(&plan.name).cloned().unwrap_or_default(),
                };
                let algorithm = algorithm(&plan.load_balancer);
                let empty = EndpointSet { members: Vec::new(), balancer: Balancer::new(algorithm, &[]) };
                let tls = plan.tls.as_ref().and_then(|t| {
                    let alpn: &[&[u8]] = match plan.protocol {
                        UpstreamProtocol::Http1 => &[crate::tls::server::HTTP11],
                        UpstreamProtocol::Http2 => &[crate::tls::server::H2],
                        UpstreamProtocol::Tcp => &[],
                    };
                    crate::tls::client::UpstreamTls::build(&plan.name, &plan.host, t, alpn, &self.tls_files)
                        .map_err(|e| errors.push(e))
                        .ok()
                        .map(Arc::new)
                });
                let cluster = Arc::new(Cluster {
                    plan: plan.clone(),
                    state,
                    resilience,
                    endpoints: ArcSwap::from_pointee(empty),
                    algorithm,
                    tls,
                });
                cluster.endpoints.store(Arc::new(cluster.build_set(eps)));
                cluster
            })
            .collect();
        Built { clusters, states, resilience: resiliences, endpoints, errors }
    }

    /// Puts built clusters in force: their limits apply, and their state is what the next
    /// build reuses. Returns the maps it replaced, for the caller to drop where it likes.
    pub fn commit(&mut self, built: Built) -> Built {
        for c in &built.clusters {
            c.state.apply_limits(&c.plan.pool);
        }
        Built {
            clusters: built.clusters,
            states: std::mem::replace(&mut self.states, built.states),
            resilience: std::mem::replace(&mut self.resilience, built.resilience),
            endpoints: std::mem::replace(&mut self.endpoints, built.endpoints),
            errors: built.errors,
        }
    }
}

/// DNS clusters keep their last resolved endpoints (by cluster name) until the next
/// resolution. Apart from [`Registry`]: DNS refreshes on the event loop write it while a reload
/// may be building clusters at low priority, which must not hold a lock they wait for.
pub type DnsEndpoints = HashMap<String, Vec<Arc<Endpoint>>>;

/// Remembers the resolved endpoints of a DNS cluster (called after each resolution).
pub fn remember_dns(dns: &mut DnsEndpoints, cluster: &Cluster) {
    let eps = cluster.endpoints.load().members.iter().map(|m| m.ep.clone()).collect();
    dns.insert(cluster.plan.name.clone(), eps);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripline_core::breaker::State;
    use tripline_core::classify::Outcome;

    fn plan(connect_timeout: &str) -> Vec<ClusterPlan> {
        let yaml = format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  servers: [{{port: {{number: 18130, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc}}
spec:
  hosts: [svc.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1, ports: {{http: 80}}}}, {{address: 10.0.0.2, ports: {{http: 80}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: svc.local}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc}}
spec:
  host: svc.local
  trafficPolicy:
    connectionPool: {{tcp: {{connectTimeout: {connect_timeout}}}}}
    outlierDetection: {{consecutive5xxErrors: 5}}
---
apiVersion: tripline.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: svc}}
spec:
  target: {{host: svc.local}}
  endpointCircuitBreaker: {{consecutiveFailures: 2}}
  outlierDetection: {{latency: {{minimumHosts: 1, requestVolume: 1}}}}
"#
        );
        let sources = [tripline_config::Source { name: "mesh.yaml".into(), text: yaml }];
        tripline_config::load(&sources, &Default::default()).expect("valid").plan.clusters
    }

    /// Below `minHealthPercent` healthy endpoints the balancer spreads over every endpoint,
    /// ejected or not, from the ejection on (no periodic task copies the detector's state).
    #[test]
    fn an_ejected_endpoint_is_picked_again_once_the_cluster_is_in_panic() {
        let plans = |min_health: u32| {
            let mut plans = plan("500ms");
            let cfg = plans[0].resilience.outlier.as_mut().expect("outlier detection on");
            cfg.consecutive_5xx_errors = Some(1);
            cfg.max_ejection_percent = 100;
            cfg.min_health_percent = min_health;
            plans
        };
        for (min_health, in_panic) in [(0, false), (60, true)] {
            let registry = Registry::default();
            let cluster = registry.build(&plans(min_health), &DnsEndpoints::new()).clusters.remove(0);
            let set = cluster.endpoints.load();
            let ejected = &set.members[0];
            let now = resilience::now();
            let pass = ejected.outlier.as_ref().expect("outlier state").admit(now).expect("healthy");
            pass.record(&Outcome::Http(503), Default::default(), now);
            assert!(ejected.ejected(), "one 5xx ejects it");
            assert_eq!(EndpointView::is_available(ejected), in_panic, "minHealthPercent {min_health}");
        }
    }

    /// Housekeeping ticks a breaker only while it is open or half-open (it has nothing to do
    /// for closed ones): the breaker lists itself when it opens, the tick still moves it to
    /// half-open without traffic, and forgets it once it is closed.
    #[test]
    fn only_open_or_half_open_breakers_are_ticked() {
        let mut registry = Registry::default();
        let built = registry.build(&plan("500ms"), &DnsEndpoints::new());
        let cluster = built.clusters[0].clone();
        registry.commit(built);
        let timed = registry.timed.clone();
        let set = cluster.endpoints.load();
        let breaker = set.members[0].breaker.clone().expect("endpoint breakers on");
        assert_eq!(timed.listed(), 0, "all closed");

        let t0 = 1_000_000_000;
        for _ in 0..2 {
            breaker.try_acquire(t0).expect("closed").record(&Outcome::Http(503), Default::default(), t0);
        }
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(timed.listed(), 1, "one open");

        // Past any jittered open time: the housekeeping tick alone moves it to half-open.
        let later = t0 + 60_000_000_000;
        timed.tick(later);
        assert_eq!(breaker.state(), State::HalfOpen);
        timed.tick(later);
        assert_eq!(timed.listed(), 1, "half-open still needs ticks");

        while breaker.state() == State::HalfOpen {
            breaker.try_acquire(later).expect("a probe").record(
                &Outcome::Http(200),
                Default::default(),
                later,
            );
        }
        assert_eq!(breaker.state(), State::Closed);
        timed.tick(later);
        assert_eq!(timed.listed(), 0, "closed again: forgotten");
    }

    /// A reload keeps each endpoint's state (its breaker, outlier state and pool are the same
    /// objects) whether or not the endpoint ever allocated anything, and an endpoint's pool
    /// stays unallocated until it gets a connection.
    #[test]
    fn endpoint_state_survives_a_reload_allocated_or_not() {
        let mut registry = Registry::default();
        let built = registry.build(&plan("500ms"), &DnsEndpoints::new());
        let cluster = built.clusters[0].clone();
        registry.commit(built);
        let set = cluster.endpoints.load();
        let (used, unused) = (&set.members[0], &set.members[1]);
        let breaker = used.breaker.clone().expect("endpoint breakers on");
        for _ in 0..2 {
            breaker.try_acquire(1).expect("closed").record(&Outcome::Http(503), Default::default(), 1);
        }
        assert_eq!(breaker.state(), State::Open);
        assert!(!used.ep.pool.is_allocated() && !unused.ep.pool.is_allocated());

        let built = registry.build(&plan("750ms"), &DnsEndpoints::new());
        let after = built.clusters[0].endpoints.load();
        registry.commit(built);
        for (old, new) in set.members.iter().zip(&after.members) {
            assert!(Arc::ptr_eq(&old.ep, &new.ep), "the same endpoint, pool and counters");
            assert!(Arc::ptr_eq(old.breaker.as_ref().unwrap(), new.breaker.as_ref().unwrap()));
            assert!(Arc::ptr_eq(old.outlier.as_ref().unwrap(), new.outlier.as_ref().unwrap()));
        }
        assert_eq!(after.members[0].breaker.as_ref().unwrap().state(), State::Open, "still open");
        assert!(after.members[0].breaker_open() && !after.members[1].breaker_open());
        assert!(!after.members[1].ep.pool.is_allocated());
    }
}
