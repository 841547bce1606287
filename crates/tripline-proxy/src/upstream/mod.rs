//! Sending a request to a cluster: admission, endpoint choice, connection, and the in-flight
//! guard that releases everything when the response ends.

pub mod pool;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use tripline_config::plan::HashKey;
use tripline_core::balancer::hash_bytes;
use tripline_core::limits::Permit;
use tripline_core::rng::Rng;

use crate::body::RequestBody;
use crate::cluster::{Cluster, ClusterState, Endpoint};
use crate::local_reply::Reason;
use pool::{Reusable, SendError};

/// One request in flight to one endpoint. Dropping it releases the cluster's active-request
/// slot and the endpoint's counter, records the duration, and gives the connection back if
/// the response was read to its end.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<ClusterState>,
    endpoint: Arc<Endpoint>,
    max_uses: Option<u32>,
    _active: Permit,
    start: Instant,
    conn: Option<Reusable>,
    complete: bool,
}

impl InFlight {
    fn new(cluster: &Cluster, endpoint: Arc<Endpoint>, active: Permit) -> Self {
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        endpoint.requests_total.fetch_add(1, Ordering::Relaxed);
        InFlight {
            state: cluster.state.clone(),
            endpoint,
            max_uses: cluster.limits().max_requests_per_connection,
            _active: active,
            start: Instant::now(),
            conn: None,
            complete: false,
        }
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Marks how the response ended and releases everything.
    pub fn finish(mut self, complete: bool) {
        self.complete = complete;
    }

    /// Marks the response as already complete (empty body) without releasing yet.
    pub fn mark_complete(&mut self) {
        self.complete = true;
    }

    /// The connection will not be reused (e.g. it was upgraded to a tunnel).
    pub fn forget_connection(&mut self) {
        self.conn = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
        self.state.stats.duration.observe(self.start.elapsed());
        if let Some(conn) = self.conn.take() {
            if self.complete {
                self.endpoint.pool.give_back(conn, self.max_uses);
                self.state.notify_released();
            }
        }
    }
}

/// Computes the consistent-hash key of a request, if the cluster hashes and the key is there.
pub fn request_hash<B>(key: &HashKey, req: &Request<B>, peer: SocketAddr) -> Option<u64> {
    match key {
        HashKey::Header(name) => req.headers().get(name.as_str()).map(|v| hash_bytes(v.as_bytes())),
        HashKey::SourceIp => Some(match peer.ip() {
            std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
        }),
        HashKey::Cookie { name } => req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| hash_bytes(v.as_bytes())),
        HashKey::QueryParameter(name) => req
            .uri()
            .query()
            .and_then(|q| q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| k == name))
            .map(|(_, v)| hash_bytes(v.as_bytes())),
    }
}

/// The result of sending a request to a cluster: the upstream's response with its in-flight
/// guard, or the reason Tripline answers itself.
pub type Outcome = Result<(Response<Incoming>, InFlight), Reason>;

/// Admits the request to the cluster, picks an endpoint, gets a connection and sends.
/// Requests that never reached the upstream (dead pooled connection) are sent again on
/// another connection; nothing that reached the upstream is re-sent here.
pub async fn send(
    cluster: &Cluster,
    mut req: Request<RequestBody>,
    hash: Option<u64>,
    rng: &dyn Rng,
) -> Outcome {
    let state = &cluster.state;
    let Some(active) = state.active.try_acquire() else {
        return Err(Reason::OverflowRequests);
    };
    let endpoint = {
        let set = cluster.endpoints.load();
        match set.balancer.pick(&set.endpoints, hash, rng) {
            Some(i) => set.endpoints[i].clone(),
            None => return Err(Reason::NoHealthyUpstream),
        }
    };
    let mut inflight = InFlight::new(cluster, endpoint.clone(), active);
    // A pooled connection can die between checkout and send; bounded so a flapping upstream
    // cannot spin us.
    for _ in 0..3 {
        let conn = match pool::checkout(cluster, &endpoint).await {
            Ok(c) => c,
            Err(reason) => return Err(reason),
        };
        match conn.send(req).await {
            Ok((resp, reusable)) => {
                inflight.conn = reusable;
                return Ok((resp, inflight));
            }
            Err(SendError::NotSent(back)) => req = *back,
            Err(SendError::Reset(e)) => {
                tracing::debug!(cluster = %state.name, endpoint = %endpoint.address, error = %e, "upstream reset");
                return Err(Reason::UpstreamReset);
            }
        }
    }
    Err(Reason::UpstreamReset)
}
