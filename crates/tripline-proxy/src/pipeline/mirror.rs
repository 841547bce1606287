//! `mirror` / `mirrors[]` (Istio's traffic shadowing): a copy of a share of a route's requests
//! goes to another cluster, fire and forget. The copy's `Host` gets `-shadow` appended (as
//! Envoy does), so the shadow service can tell copies apart; its response is read and thrown
//! away. Promises kept here:
//! - the primary never waits for a copy: a copy's body is teed frame by frame with a bounded
//!   lag (`upload::tee`), and a copy that falls behind is cut off, not waited for;
//! - a slow or dead mirror cannot take the proxy's memory or sockets: each mirror cluster has
//!   at most [`MAX_IN_FLIGHT`] copies in flight (fewer if its `http2MaxRequests` is lower);
//!   a copy over that is dropped and counted (`tripline_mirror_requests_total{result="dropped"}`);
//! - a copy is one attempt (no retries) with the primary's deadline, and goes through the
//!   mirror cluster's own admission, breakers and outlier detection like any request to it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderValue, Request};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tripline_config::plan::{Fraction, MirrorPlan, RetryPlan};

use crate::body::ResponseBody;
use crate::cluster::Cluster;
use crate::endpoint::body::RequestBody;
use crate::upstream::{self, RoutePolicy};
use crate::Shared;

/// The most copies in flight to one mirror cluster.
pub const MAX_IN_FLIGHT: u32 = 1024;

#[derive(Debug)]
pub(crate) struct Mirrors {
    targets: Vec<(Arc<Cluster>, Fraction)>,
    /// One attempt, no route breaker.
    policy: Arc<CopyPolicy>,
}

/// The route policy of a copy.
#[derive(Debug)]
struct CopyPolicy(RoutePolicy);

impl AsRef<RoutePolicy> for CopyPolicy {
    fn as_ref(&self) -> &RoutePolicy {
        &self.0
    }
}

impl Mirrors {
    pub(crate) fn compile(plans: &[MirrorPlan], clusters: &[Arc<Cluster>]) -> Option<Mirrors> {
        let targets: Vec<_> =
            plans.iter().filter_map(|m| Some((clusters.get(m.cluster)?.clone(), m.share))).collect();
        let policy = RoutePolicy { retry: RetryPlan { attempts: 0, ..RetryPlan::default() }, breaker: None };
        (!targets.is_empty()).then(|| Mirrors { targets, policy: Arc::new(CopyPolicy(policy)) })
    }

    /// The upstream-request phase's tee: sends a copy of `req` (prepared for its upstream,
    /// headers edited) to each mirror drawn for it.
    pub(crate) fn send_copies(
        &self,
        req: &mut Request<RequestBody>,
        deadline: Option<Instant>,
        shared: &Arc<Shared>,
    ) {
        for (cluster, share) in &self.targets {
            if !super::drawn(*share, &shared.rng) {
                continue;
            }
            let stats = &cluster.state.stats.mirror;
            let limit = MAX_IN_FLIGHT.min(cluster.limits().max_requests);
            if stats.in_flight.fetch_add(1, Ordering::Relaxed) >= limit {
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            stats.sent.fetch_add(1, Ordering::Relaxed);
            let (mut copy, upload) = copy_of(req);
            // The request was shaped for the primary's protocol; the mirror's may differ.
            crate::headers::for_protocol(&mut copy, cluster.protocol());
            let send = upstream::send(
                cluster.clone(),
                self.policy.clone(),
                copy,
                None,
                shared.clone(),
                deadline,
                upstream::Observers { upload, span: None },
            );
            let slot = Slot(cluster.clone());
            tokio::spawn(async move {
                // Held until the copy is done with, whatever way it ends.
                let slot = slot;
                let Ok((resp, inflight)) = send.await else { return };
                slot.0.state.stats.codes.inc(resp.status().as_u16());
                // Read to the end (the connection goes back to the pool) and recorded like any
                // response of the cluster's.
                let mut body = ResponseBody::upstream(resp.into_body(), inflight, deadline);
                while let Some(Ok(_)) = body.frame().await {}
            });
        }
    }
}

/// A copy in flight; frees its place when the copy is done.
struct Slot(Arc<Cluster>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.state.stats.mirror.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The copy of a request: the same head with `-shadow` on its host, and a copy of the body
/// still to come (with the copy's `Upload`), or none.
fn copy_of(req: &mut Request<RequestBody>) -> (Request<RequestBody>, Option<Arc<crate::upload::Upload>>) {
    let (body, upload) = match req.body_mut() {
        RequestBody::Stream(watched) if !watched.is_end_stream() => {
            let (tee, copy, upload) = crate::upload::tee::copy_of(watched.size_hint());
            watched.tee(tee);
            (RequestBody::Copy(copy), Some(upload))
        }
        _ => (RequestBody::Empty, None),
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.uri_mut() = req.uri().clone();
    if let Some(host) = copy.headers().get(http::header::HOST).and_then(|h| shadow(h.to_str().ok()?)) {
        copy.headers_mut().insert(http::header::HOST, host);
    }
    if let Some(authority) = copy.uri().authority().and_then(|a| shadow(a.as_str())) {
        let mut parts = std::mem::take(copy.uri_mut()).into_parts();
        parts.authority = authority.to_str().ok().and_then(|a| a.parse().ok());
        *copy.uri_mut() = http::Uri::from_parts(parts).unwrap_or_default();
    }
    (copy, upload)
}

/// `host[:port]` with `-shadow` after the host.
fn shadow(authority: &str) -> Option<HeaderValue> {
    let host_end = if authority.starts_with('[') { authority.find(']').map_or(0, |i| i + 1) } else { 0 };
    let at = match authority[host_end..].rfind(':') {
        Some(i) => host_end + i,
        None => authority.len(),
    };
    HeaderValue::try_from(format!("{}-shadow{}", &authority[..at], &authority[at..])).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_host_keeps_its_port() {
        assert_eq!(shadow("order").unwrap(), "order-shadow");
        assert_eq!(shadow("order.svc:8080").unwrap(), "order.svc-shadow:8080");
        assert_eq!(shadow("[::1]:80").unwrap(), "[::1]-shadow:80");
    }

    #[test]
    fn a_bodiless_request_is_copied_without_a_body() {
        let mut req = Request::post("http://order:8080/x")
            .header("host", "order:8080")
            .header("x-a", "1")
            .body(RequestBody::Empty)
            .unwrap();
        let (copy, upload) = copy_of(&mut req);
        assert!(upload.is_none());
        assert!(matches!(copy.body(), RequestBody::Empty));
        assert_eq!((copy.method(), copy.headers()["x-a"].to_str().unwrap()), (&http::Method::POST, "1"));
        assert_eq!(copy.headers()["host"], "order-shadow:8080");
        assert_eq!(copy.uri().to_string(), "http://order-shadow:8080/x");
        assert_eq!(req.headers()["host"], "order:8080", "the primary is unchanged");
    }
}
