//! `GET /stats`: the counters of every cluster and endpoint at one moment, for `tripline
//! stat` (and any tool) to turn two snapshots into rates, success rates and percentiles over
//! the time between them, as `linkerd viz stat` does from Prometheus. Counters only, never
//! rates: a snapshot is cheap to take (loads of atomics) and exact to subtract.
//!
//! Per cluster: the requests whose answer the client got, by whether it was a success (not a
//! 5xx) or a refusal of Tripline's own, the attempts' duration histogram, requests in flight
//! and waiting, and the destination breaker. Per endpoint: its attempts, the ones it failed,
//! their duration histogram, requests in flight, outlier and breaker state. And the cluster's
//! last transitions (its breaker's, its endpoints' breakers', its outlier detector's), each with
//! its evidence, newest first: what the dashboard's event log shows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::reason::Reason;
use crate::stats::{Histogram, DURATION_BUCKETS};

/// The snapshot: the clusters that have had traffic (a mesh proxy knows thousands of
/// services and talks to a few), or with `all` every one.
pub fn stats_json(clusters: &[Arc<Cluster>], all: bool) -> Value {
    let list: Vec<Value> = clusters.iter().filter(|c| all || had_traffic(c)).map(|c| cluster(c)).collect();
    json!({
        "uptime_ms": crate::resilience::now() / 1_000_000,
        "duration_buckets_le": DURATION_BUCKETS,
        "clusters": list,
    })
}

fn had_traffic(c: &Cluster) -> bool {
    c.state.stats.codes.total() > 0
        || Reason::ALL.iter().any(|r| c.state.stats.local.get(*r) > 0)
        || c.endpoints.load().members.iter().any(|m| m.ep.requests_total.load(Ordering::Relaxed) > 0)
}

fn cluster(c: &Cluster) -> Value {
    let s = &c.state;
    let answered = s.stats.codes.total();
    let server_errors: u64 = s.stats.codes.nonzero().filter(|(code, _)| *code >= 500).map(|(_, n)| n).sum();
    let refused: u64 = Reason::ALL.iter().map(|r| s.stats.local.get(*r)).sum();
    let set = c.endpoints.load();
    let endpoints: Vec<Value> = set
        .members
        .iter()
        .map(|m| {
            let e = &m.ep;
            json!({
                "address": e.address.to_string(),
                "name": e.labels.get("instance"),
                "attempts": e.requests_total.load(Ordering::Relaxed),
                "failures": e.failures_total.load(Ordering::Relaxed),
                "active": e.active.load(Ordering::Relaxed),
                "duration_counts": e.duration.get().map(|h| counts(h)),
                "outlier": m.outlier.as_ref().map(|o| o.health().as_str()),
                "breaker": m.breaker.as_ref().map(|b| b.state().as_str()),
            })
        })
        .collect();
    json!({
        "name": c.name(),
        "host": c.plan.host,
        "requests": answered + refused,
        "server_errors": server_errors,
        "refused": refused,
        "active": s.active.current(),
        "pending": s.pending.current(),
        "duration_counts": counts(&s.stats.request_duration),
        "breaker": c.resilience.breaker.as_ref().map(|b| b.state().as_str()),
        "endpoints": endpoints,
        "events": events(c),
    })
}

/// Transitions kept per cluster in `/stats` (each breaker and detector keeps its own last ones).
const EVENTS: usize = 30;

/// The cluster's last transitions, newest first: `what` names the breaker or endpoint.
fn events(c: &Cluster) -> Vec<Value> {
    let now = crate::resilience::now();
    let mut all: Vec<(u64, Value)> = Vec::new();
    let mut breaker = |what: &str, b: &tripline_core::breaker::CircuitBreaker| {
        for t in b.history() {
            let v = json!({"what": what, "from": t.from.as_str(), "to": t.to.as_str(), "reason": t.reason.as_str(),
                "evidence": t.evidence, "ms_ago": now.saturating_sub(t.at) / 1_000_000});
            all.push((t.at, v));
        }
    };
    if let Some(b) = &c.resilience.breaker {
        breaker("destination breaker", b);
    }
    for m in &c.endpoints.load().members {
        if let Some(b) = &m.breaker {
            let name = m.ep.labels.get("instance").map_or(&*m.ep.id, String::as_str);
            breaker(&format!("breaker of {name}"), b);
        }
    }
    if let Some(o) = &c.resilience.outlier {
        for e in o.history() {
            let v = json!({"what": format!("endpoint {}", e.endpoint), "from": e.from.as_str(), "to": e.to.as_str(),
                "reason": e.detector.map(|d| d.as_str()), "evidence": e.evidence, "ms_ago": now.saturating_sub(e.at) / 1_000_000});
            all.push((e.at, v));
        }
    }
    all.sort_by_key(|e| std::cmp::Reverse(e.0));
    all.into_iter().take(EVENTS).map(|(_, v)| v).collect()
}

/// Each bucket's own count (the last is above the largest bound).
fn counts(h: &Histogram) -> Vec<u64> {
    h.snapshot().2.into_iter().map(|(_, n)| n).collect()
}
