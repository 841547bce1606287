//! `/breakers` in the admin API: every destination breaker, endpoint breaker and outlier
//! detector with its state, since when, and the last transitions with their evidence; and the
//! operator's levers (`POST /breakers/force-open|force-closed|reset?cluster=..[&endpoint=..]`).

use std::sync::Arc;

use serde_json::{json, Value};
use tripline_core::breaker::{CircuitBreaker, Mode, Transition};
use tripline_core::clock::Nanos;
use tripline_core::outlier::OutlierEvent;

use crate::cluster::Cluster;
use crate::resilience;

/// Milliseconds from `at` to `now` (positive: in the past).
fn ago_ms(now: Nanos, at: Nanos) -> i64 {
    (now as i128 - at as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64 / 1_000_000
}

fn transition_json(now: Nanos, t: &Transition) -> Value {
    json!({
        "from": t.from.as_str(),
        "to": t.to.as_str(),
        "reason": t.reason.as_str(),
        "evidence": t.evidence,
        "ms_ago": ago_ms(now, t.at),
    })
}

pub fn breaker_json(now: Nanos, b: &CircuitBreaker) -> Value {
    let s = b.snapshot(now);
    json!({
        "state": s.state.as_str(),
        "mode": match s.mode { Mode::Enforcing => "enforcing", Mode::DryRun => "dry-run" },
        "since_ms_ago": ago_ms(now, s.since),
        "open_for_ms": s.open_until.map(|u| -ago_ms(now, u)),
        "consecutive_failures": s.consecutive_failures,
        "window": {"requests": s.window.requests, "failures": s.window.failures, "slow": s.window.slow},
        "probes_in_flight": s.probes_in_flight,
        "dry_run_rejections": s.dry_run_rejections,
        "history": b.history().iter().rev().map(|t| transition_json(now, t)).collect::<Vec<_>>(),
    })
}

fn event_json(now: Nanos, e: &OutlierEvent) -> Value {
    json!({
        "endpoint": e.endpoint,
        "from": e.from.as_str(),
        "to": e.to.as_str(),
        "detector": e.detector.map(|d| d.as_str()),
        "evidence": e.evidence,
        "ms_ago": ago_ms(now, e.at),
    })
}

/// The whole `/breakers` document.
pub fn breakers_json(clusters: &[Arc<Cluster>], routes: &resilience::RouteBreakers) -> Value {
    let now = resilience::now();
    let route_list: Vec<Value> = routes
        .breakers
        .iter()
        .map(|(name, b)| json!({"route": name, "breaker": breaker_json(now, b)}))
        .collect();
    let list: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let res = &c.resilience;
            let set = c.endpoints.load();
            let endpoints: Vec<Value> = set
                .members
                .iter()
                .map(|m| {
                    let outlier = m.outlier.as_ref().map(|o| {
                        let s = o.snapshot();
                        json!({
                            "health": s.health.as_str(),
                            "ejected_for_ms": s.until.map(|u| -ago_ms(now, u)),
                            "times_ejected": s.times_ejected,
                            "consecutive_5xx": s.consecutive_5xx,
                            "consecutive_gateway": s.consecutive_gateway,
                            "consecutive_local_origin": s.consecutive_local_origin,
                            "probes_in_flight": s.probes_in_flight,
                        })
                    });
                    json!({
                        "address": &*m.ep.id,
                        "available": tripline_core::balancer::EndpointView::is_available(m),
                        "held_for_ms": m.ep.hold.left(now).map(|d| d.as_millis() as u64),
                        "outlier": outlier,
                        "breaker": m.breaker.as_ref().map(|b| breaker_json(now, b)),
                    })
                })
                .collect();
            let outlier = res.outlier.as_ref().map(|o| {
                json!({
                    "ejections_active": o.ejections_active(),
                    "ejection_cap": o.ejection_cap(),
                    "in_panic": o.in_panic(),
                    "events": o.history().iter().rev().map(|e| event_json(now, e)).collect::<Vec<_>>(),
                })
            });
            json!({
                "cluster": c.name(),
                "policy": res.plan.policy,
                "breaker": res.breaker.as_ref().map(|b| breaker_json(now, b)),
                "outlier": outlier,
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "clusters": list, "routes": route_list })
}

/// An operator action on a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ForceOpen,
    ForceClosed,
    Reset,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "force-open" => Some(Action::ForceOpen),
            "force-closed" => Some(Action::ForceClosed),
            "reset" => Some(Action::Reset),
            _ => None,
        }
    }
}

/// Decodes `%XX` escapes and `+` in a query value (cluster names contain `|`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

/// Applies an action; `Ok` describes what changed, `Err` says what was wrong with the request.
pub fn apply(
    clusters: &[Arc<Cluster>],
    routes: &resilience::RouteBreakers,
    action: Action,
    query: &str,
) -> Result<String, String> {
    if let Some(route) = query_param(query, "route") {
        let b = routes.breakers.get(&route).ok_or_else(|| {
            format!("no route breaker named `{route}` (a ResiliencePolicy must target the route); see GET /breakers")
        })?;
        act(b, action);
        return Ok(format!("route {route}: breaker is now {}\n", b.state().as_str()));
    }
    let wanted = query_param(query, "cluster")
        .ok_or("missing `cluster` (a cluster name or host) or `route` query parameter")?;
    let matching: Vec<&Arc<Cluster>> =
        clusters.iter().filter(|c| c.name() == wanted || c.plan.host == wanted).collect();
    let cluster = match matching.as_slice() {
        [c] => *c,
        [] => return Err(format!("no cluster named `{wanted}`; see GET /breakers")),
        _ => return Err(format!("`{wanted}` matches several clusters; use the full cluster name")),
    };
    let breaker: Arc<CircuitBreaker> = match query_param(query, "endpoint") {
        Some(ep) => {
            let set = cluster.endpoints.load();
            let m = set
                .members
                .iter()
                .find(|m| *m.ep.id == *ep)
                .ok_or_else(|| format!("cluster `{}` has no endpoint `{ep}`", cluster.name()))?;
            m.breaker.clone().ok_or_else(|| {
                format!(
                    "endpoint `{ep}` has no breaker (configure endpointCircuitBreaker in a ResiliencePolicy)"
                )
            })?
        }
        None => cluster.resilience.breaker.clone().ok_or_else(|| {
            format!(
                "cluster `{}` has no destination breaker (configure circuitBreaker in a ResiliencePolicy)",
                cluster.name()
            )
        })?,
    };
    act(&breaker, action);
    Ok(format!("{}: breaker is now {}\n", cluster.name(), breaker.state().as_str()))
}

fn act(breaker: &CircuitBreaker, action: Action) {
    let (now, note) = (resilience::now(), "admin API");
    match action {
        Action::ForceOpen => breaker.force_open(now, note),
        Action::ForceClosed => breaker.force_closed(now, note),
        Action::Reset => breaker.reset(now, note),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_cluster_names_in_queries() {
        assert_eq!(
            query_param("cluster=outbound%7C80%7C%7Cbackend.local&endpoint=127.0.0.1%3A80", "cluster")
                .as_deref(),
            Some("outbound|80||backend.local")
        );
        assert_eq!(
            query_param("cluster=a&endpoint=127.0.0.1%3A80", "endpoint").as_deref(),
            Some("127.0.0.1:80")
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(query_param("x=1", "cluster"), None);
    }

    #[test]
    fn actions_parse() {
        assert_eq!(Action::parse("force-open"), Some(Action::ForceOpen));
        assert_eq!(Action::parse("reset"), Some(Action::Reset));
        assert_eq!(Action::parse("open"), None);
    }
}
