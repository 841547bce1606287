//! An upstream endpoint and its connections: the endpoint's counters, the limits it shares
//! with the rest of its cluster, its connection pool, the lean HTTP/1.1 client and hyper's,
//! and the bodies that cross them (with the copy a retry replays).
//!
//! The bottom of the request path's layers. It knows nothing of clusters' balancers, routes or
//! retries: [`crate::cluster`] holds endpoints, and [`crate::upstream`] checks connections out
//! of their pools and sends on them. A pooled connection refers back to its endpoint (its
//! [`pool::ConnGuard`] frees the endpoint's and the cluster's connection slots when it
//! closes), which is why the endpoint lives here with its pool.

pub mod body;
mod content_length;
pub mod h1;
pub mod hold;
mod idle_stack;
pub mod io;
pub mod pool;
pub mod replay;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use http::{header, HeaderValue, Method};
use tripline_config::plan::PoolLimits;
use tripline_core::breaker::CircuitBreaker;
use tripline_core::limits::Limit;

use crate::stats::{Histogram, MirrorStats, ReasonCounters, StatusCounters};
use pool::ConnectionPool;

/// Which attempt of a request this is, from 1, as the upstream sees it.
pub static X_TRIPLINE_ATTEMPT: header::HeaderName = header::HeaderName::from_static("x-tripline-attempt");

/// `x-tripline-attempt`'s value: static for the first attempts, so the usual ones allocate nothing.
fn attempt_value(n: u32) -> HeaderValue {
    match n {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        n => HeaderValue::from(n),
    }
}

/// Idempotent methods (RFC 9110 §9.2.2) may be sent again after they reached an upstream.
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

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
    /// An endpoint of it ever had an upstream connection: the idle sweep each worker runs
    /// every 5 s visits only such clusters (a mesh proxy knows every endpoint of every
    /// service and connects to few; walking all 100,000 stalled each worker's event loop).
    pub connected: AtomicBool,
}

#[derive(Debug, Default)]
pub struct ClusterStats {
    pub codes: StatusCounters,
    pub local: ReasonCounters,
    /// Per request: from its admission to the cluster to the end of its response body, every
    /// attempt, connection wait and backoff included (the client's wait, less routing).
    pub request_duration: Histogram,
    /// Per attempt: from sending it to the end of its response body (or its failure).
    pub attempt_duration: Histogram,
    pub connect_failures: AtomicU64,
    /// Connects whose TLS handshake failed (also counted in `connect_failures`).
    pub tls_handshake_failures: AtomicU64,
    pub mirror: MirrorStats,
    /// Connections of a TCP cluster (Istio's `istio_tcp_*`).
    pub tcp: TcpStats,
}

/// A TCP cluster's connections and the bytes they carried, counted when each closes.
#[derive(Debug, Default)]
pub struct TcpStats {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    /// To the client.
    pub sent: AtomicU64,
    /// From the client.
    pub received: AtomicU64,
}

impl ClusterState {
    pub(crate) fn new(name: &str, pool: &PoolLimits) -> Self {
        ClusterState {
            name: name.into(),
            active: Limit::new(pool.max_requests),
            pending: Limit::new(pool.max_pending_requests),
            connections: Limit::new(pool.max_connections),
            conn_released: tokio::sync::Notify::new(),
            stats: ClusterStats::default(),
            connected: AtomicBool::new(false),
        }
    }

    pub(crate) fn apply_limits(&self, pool: &PoolLimits) {
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
    /// `127.0.0.1:8080`, the id used by the outlier detector and in logs (shared with the
    /// endpoint breaker's log lines).
    pub id: Arc<str>,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
    pub active: AtomicU32,
    pub requests_total: AtomicU64,
    /// Attempts the endpoint failed (5xx, failed gRPC, reset, timeout, connect failure; never
    /// one Tripline refused or the client abandoned), for `/stats` and `tripline stat`.
    pub failures_total: AtomicU64,
    /// Attempt durations, allocated at the first: most endpoints a mesh proxy knows see none.
    pub duration: std::sync::OnceLock<Box<crate::stats::Histogram>>,
    pub pool: ConnectionPool,
    /// Set by a `429` with `Retry-After`: the balancer leaves the endpoint alone until then.
    pub hold: hold::Hold,
    /// The endpoint's breaker, kept here between endpoint-set rebuilds (control plane only;
    /// the request path reads the copy in its [`Member`]).
    pub(crate) breaker_slot: Mutex<Option<Arc<CircuitBreaker>>>,
}

impl Endpoint {
    pub fn new(address: SocketAddr, weight: u32, labels: BTreeMap<String, String>) -> Arc<Self> {
        Arc::new(Endpoint {
            address,
            id: address.to_string().into(),
            weight,
            labels,
            active: AtomicU32::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            duration: std::sync::OnceLock::new(),
            pool: ConnectionPool::new(),
            hold: hold::Hold::default(),
            breaker_slot: Mutex::new(None),
        })
    }
}
