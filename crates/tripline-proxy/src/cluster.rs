//! Live clusters and endpoints.
//!
//! A [`Cluster`] is rebuilt on every config load from its [`ClusterPlan`], but the state that
//! matters under load lives in objects that survive the reload: the cluster's
//! [`ClusterState`] (limits, counters) is kept by cluster name and every [`Endpoint`] (active
//! requests, connection pool, counters) by cluster name and address. In-flight requests that
//! started on the old config release their permits into the same counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tripline_config::plan::{ClusterPlan, Discovery, HashKey, LoadBalancer, PoolLimits, UpstreamProtocol};
use tripline_core::balancer::{hash_bytes, Algorithm, Balancer, EndpointSpec, EndpointView};
use tripline_core::limits::Limit;

use crate::metrics::{Histogram, ReasonCounters, StatusCounters};
use crate::upstream::pool::ConnectionPool;

/// Cluster-wide state that survives reloads.
#[derive(Debug)]
pub struct ClusterState {
    pub name: Arc<str>,
    /// `http2MaxRequests`: requests in flight.
    pub active: Limit,
    /// `http1MaxPendingRequests`: requests waiting for a connection.
    pub pending: Limit,
    /// `tcp.maxConnections`: open upstream connections.
    pub connections: Limit,
    /// Wakes requests waiting for a connection when one is returned or closed.
    pub conn_released: tokio::sync::Notify,
    pub stats: ClusterStats,
}

#[derive(Debug, Default)]
pub struct ClusterStats {
    pub codes: StatusCounters,
    pub local: ReasonCounters,
    pub duration: Histogram,
    pub connect_failures: AtomicU64,
}

impl ClusterState {
    fn new(name: &str, pool: &PoolLimits) -> Self {
        ClusterState {
            name: name.into(),
            active: Limit::new(pool.max_requests),
            pending: Limit::new(pool.max_pending_requests),
            connections: Limit::new(pool.max_connections),
            conn_released: tokio::sync::Notify::new(),
            stats: ClusterStats::default(),
        }
    }

    fn apply_limits(&self, pool: &PoolLimits) {
        self.active.set_max(pool.max_requests);
        self.pending.set_max(pool.max_pending_requests);
        self.connections.set_max(pool.max_connections);
    }

    /// Called when an upstream connection becomes free; cheap when nobody waits.
    pub fn notify_released(&self) {
        if self.pending.current() > 0 {
            self.conn_released.notify_waiters();
        }
    }
}

/// One upstream address of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
    pub labels: std::collections::BTreeMap<String, String>,
    pub active: AtomicU32,
    pub requests_total: AtomicU64,
    pub pool: ConnectionPool,
}

impl Endpoint {
    pub fn new(
        address: SocketAddr,
        weight: u32,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Arc<Self> {
        Arc::new(Endpoint {
            address,
            weight,
            labels,
            active: AtomicU32::new(0),
            requests_total: AtomicU64::new(0),
            pool: ConnectionPool::new(),
        })
    }
}

impl EndpointView for Endpoint {
    fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    fn is_available(&self) -> bool {
        // Outlier ejection and endpoint breakers plug in here.
        true
    }
}

/// The endpoints of a cluster at one moment, with a balancer built for exactly them.
#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
}

/// A cluster as the request path sees it.
#[derive(Debug)]
pub struct Cluster {
    pub plan: ClusterPlan,
    pub state: Arc<ClusterState>,
    pub endpoints: ArcSwap<EndpointSet>,
    pub algorithm: Algorithm,
}

impl Cluster {
    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.plan.pool
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
    pub fn set_addresses(&self, addrs: Vec<(SocketAddr, u32, std::collections::BTreeMap<String, String>)>) {
        let current = self.endpoints.load();
        let mut by_addr: HashMap<SocketAddr, Arc<Endpoint>> =
            current.endpoints.iter().map(|e| (e.address, e.clone())).collect();
        let endpoints: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|(address, weight, labels)| match by_addr.remove(&address) {
                Some(e) if e.weight == weight && e.labels == labels => e,
                _ => Endpoint::new(address, weight, labels),
            })
            .collect();
        self.endpoints.store(Arc::new(build_set(self.algorithm, endpoints)));
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

fn endpoint_key(addr: &SocketAddr) -> u64 {
    hash_bytes(addr.to_string().as_bytes())
}

fn build_set(algorithm: Algorithm, endpoints: Vec<Arc<Endpoint>>) -> EndpointSet {
    let specs: Vec<EndpointSpec> =
        endpoints.iter().map(|e| EndpointSpec { key: endpoint_key(&e.address), weight: e.weight }).collect();
    EndpointSet { balancer: Balancer::new(algorithm, &specs), endpoints }
}

/// Keeps cluster and endpoint state across config loads.
#[derive(Debug, Default)]
pub struct Registry {
    states: HashMap<String, Arc<ClusterState>>,
    /// DNS clusters keep their last resolved endpoints until the next resolution.
    dns: HashMap<String, Arc<EndpointSet>>,
    endpoints: HashMap<(String, SocketAddr), Arc<Endpoint>>,
}

impl Registry {
    /// Builds live clusters for a plan, reusing the state of clusters and endpoints that stay.
    /// State of clusters that are gone is dropped once no request holds it.
    pub fn build(&mut self, plans: &[ClusterPlan]) -> Vec<Arc<Cluster>> {
        let mut states = HashMap::new();
        let mut endpoints = HashMap::new();
        let clusters = plans
            .iter()
            .map(|plan| {
                let state = self
                    .states
                    .remove(&plan.name)
                    .inspect(|s| s.apply_limits(&plan.pool))
                    .unwrap_or_else(|| Arc::new(ClusterState::new(&plan.name, &plan.pool)));
                states.insert(plan.name.clone(), state.clone());
                let statics: &[_] = match &plan.discovery {
                    Discovery::Static(eps) => eps,
                    Discovery::Dns { .. } => &[],
                };
                let eps: Vec<Arc<Endpoint>> = statics
                    .iter()
                    .map(|ep| {
                        let key = (plan.name.clone(), ep.address);
                        let kept = self
                            .endpoints
                            .remove(&key)
                            .filter(|e| e.weight == ep.weight && e.labels == ep.labels);
                        let e =
                            kept.unwrap_or_else(|| Endpoint::new(ep.address, ep.weight, ep.labels.clone()));
                        endpoints.insert(key, e.clone());
                        e
                    })
                    .collect();
                let algorithm = algorithm(&plan.load_balancer);
                let cluster = Arc::new(Cluster {
                    plan: plan.clone(),
                    state,
                    endpoints: ArcSwap::from_pointee(build_set(algorithm, eps)),
                    algorithm,
                });
                if let (Discovery::Dns { .. }, Some(last)) = (&plan.discovery, self.dns.get(&plan.name)) {
                    cluster.endpoints.store(Arc::new(build_set(algorithm, last.endpoints.clone())));
                }
                cluster
            })
            .collect();
        self.states = states;
        self.endpoints = endpoints;
        clusters
    }

    /// Remembers the resolved endpoints of DNS clusters (called after each resolution).
    pub fn remember_dns(&mut self, cluster: &Cluster) {
        self.dns.insert(cluster.plan.name.clone(), cluster.endpoints.load_full());
    }
}
