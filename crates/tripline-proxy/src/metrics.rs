//! Counters on the request path are plain atomics owned by the cluster or endpoint they
//! describe, resolved once when the cluster is built; nothing is looked up by name per request.
//! At scrape time a `prometheus-client` collector walks the live clusters and encodes them.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cluster::{Cluster, ClusterState};
use crate::pipeline::authz::Authz;
use crate::pipeline::rate_limit::{RateLimiter, RateLimiters};
use crate::reason::Reason;
use crate::resilience::STATES;
use crate::stats::{GlobalStats, Http2Flood};
use tripline_core::outlier::Detector;

/// RFC 9113's names of the error codes, for labels.
const HTTP2_ERRORS: [&str; 14] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
];

/// Encodes everything into Prometheus text format.
pub fn render(
    global: &Arc<GlobalStats>,
    live: &[Arc<Cluster>],
    routes: &crate::resilience::RouteBreakers,
    limiters: &RateLimiters,
    authz: Option<&Authz>,
    tls: TlsScrape,
    istio: Option<&crate::istio_metrics::Workload>,
) -> String {
    let clusters: Vec<Arc<ClusterState>> = live.iter().map(|c| c.state.clone()).collect();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { global: global.clone(), clusters }));
    registry.register_collector(Box::new(ResilienceScrape {
        clusters: live.to_vec(),
        routes: routes.breakers.iter().map(|(n, b)| (n.clone(), b.clone())).collect(),
        route_stats: routes.stats.clone(),
    }));
    registry.register_collector(Box::new(RateLimitScrape(limiters.limiters.values().cloned().collect())));
    if let Some(authz) = authz {
        registry.register_collector(Box::new(AuthzScrape(authz.counts())));
    }
    if !tls.listeners.is_empty() || !tls.credentials.is_empty() || live.iter().any(|c| c.tls.is_some()) {
        let upstream = live
            .iter()
            .filter(|c| c.tls.is_some())
            .map(|c| (c.state.name.to_string(), c.state.stats.tls_handshake_failures.load(Ordering::Relaxed)))
            .collect();
        registry.register_collector(Box::new(TlsCollector { scrape: tls, upstream }));
    }
    if let Some(workload) = istio {
        registry.register_collector(Box::new(crate::istio_metrics::IstioScrape {
            clusters: live.to_vec(),
            workload: workload.clone(),
        }));
    }
    let mut out = String::with_capacity(8 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
        let _ = writeln!(out, "# metrics encoding failed");
    }
    out
}

/// What [`render`] writes.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What [`to_prometheus_text`] writes.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus text format (0.0.4) of what [`render`] wrote in OpenMetrics, for scrapers
/// that do not ask for OpenMetrics (and people with curl). The samples are the same; the
/// differences are in the comments: a counter's `# HELP` / `# TYPE` name its samples
/// (`x_total`, where OpenMetrics names the family `x`), and there is no `# UNIT` or `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if line.starts_with("# TYPE ") && line.ends_with(" counter") {
            if let Some(name) = line.split(' ').nth(2) {
                counters.insert(name);
            }
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "].into_iter().find(|c| line.starts_with(c));
        match comment.and_then(|c| line[c.len()..].split_once(' ').map(|(name, rest)| (c, name, rest))) {
            Some((c, name, rest)) if counters.contains(name) => {
                out.push_str(c);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// What the TLS families show: each TLS listener's handshakes, and every certificate in force.
#[derive(Default)]
pub struct TlsScrape {
    /// `(listener, handshakes, failures by reason)`.
    pub listeners: Vec<(String, u64, [u64; 4])>,
    pub credentials: Vec<Arc<dyn crate::tls::files::Reload>>,
}

impl std::fmt::Debug for TlsScrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsScrape").field("listeners", &self.listeners).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct TlsCollector {
    scrape: TlsScrape,
    /// `(cluster, handshake failures)` of clusters with TLS.
    upstream: Vec<(String, u64)>,
}

impl Collector for TlsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::tls::server::HandshakeFailure;
        let listeners = &self.scrape.listeners;
        counter(
            &mut enc,
            "tripline_tls_handshakes",
            "Client TLS handshakes completed, by listener.",
            listeners.iter().map(|(l, n, _)| (vec![("listener", l.clone())], *n)),
        )?;
        counter(
            &mut enc,
            "tripline_tls_handshake_failures",
            "Client TLS handshakes that failed, by listener and reason (unknown-sni, client-certificate, protocol, client-disconnected): the client's doing, never an upstream's.",
            listeners.iter().flat_map(|(l, _, failures)| {
                HandshakeFailure::ALL.iter().map(move |f| {
                    (vec![("listener", l.clone()), ("reason", f.as_str().to_string())], failures[*f as usize])
                })
            }),
        )?;
        counter(
            &mut enc,
            "tripline_upstream_tls_handshake_failures",
            "Connections to an endpoint whose TLS handshake failed or timed out (also counted in tripline_upstream_connect_failures).",
            self.upstream.iter().map(|(c, n)| (vec![("cluster", c.clone())], *n)),
        )?;
        let creds = &self.scrape.credentials;
        gauge(
            &mut enc,
            "tripline_tls_certificate_expiry_timestamp_seconds",
            "When each certificate in force expires (Unix seconds): role=certificate is the one presented, role=ca the first of a CA bundle to expire; owner is the listener or cluster.",
            creds.iter().flat_map(|c| c.expiries()).map(|e| {
                (
                    vec![("owner", e.owner), ("role", e.role.to_string()), ("file", e.file.display().to_string())],
                    e.not_after,
                )
            }),
        )?;
        counter(
            &mut enc,
            "tripline_tls_reloads",
            "Certificate files that changed and were read again: result=ok put in force, result=failed kept the previous certificate (the log says why).",
            creds.iter().flat_map(|c| {
                let (ok, failed) = c.reloads();
                let owner = c.owner().to_string();
                [("ok", ok), ("failed", failed)]
                    .into_iter()
                    .map(move |(r, n)| (vec![("owner", owner.clone()), ("result", r.to_string())], n))
            }),
        )
    }
}

/// Each AuthorizationPolicy's decisions.
#[derive(Debug)]
struct AuthzScrape(Vec<(Arc<str>, &'static str, u64)>);

impl Collector for AuthzScrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter(
            &mut enc,
            "tripline_authorization_decisions",
            "Requests and TCP connections each AuthorizationPolicy decided: a DENY policy's denials, an ALLOW policy's allows, an AUDIT policy's matches; policy=\"none\" counts denials because no ALLOW policy matched.",
            self.0.iter().map(|(policy, decision, n)| {
                (vec![("policy", policy.to_string()), ("decision", decision.to_string())], *n)
            }),
        )
    }
}

/// Each policy's rate limit decisions.
#[derive(Debug)]
struct RateLimitScrape(Vec<Arc<RateLimiter>>);

impl Collector for RateLimitScrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter(
            &mut enc,
            "tripline_rate_limit_decisions",
            "Requests a route's rate limit admitted, limited (429), or would have limited in shadow mode.",
            self.0.iter().flat_map(|l| {
                let d = &l.decisions;
                [("allowed", &d.allowed), ("limited", &d.limited), ("shadow_limited", &d.shadow_limited)].map(
                    |(decision, n)| {
                        let labels =
                            vec![("policy", l.policy().to_string()), ("decision", decision.to_string())];
                        (labels, n.load(Ordering::Relaxed))
                    },
                )
            }),
        )
    }
}

#[derive(Debug)]
struct Scrape {
    global: Arc<GlobalStats>,
    clusters: Vec<Arc<ClusterState>>,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        m.encode_family(&labels)?.encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// The classes `tripline_responses_total` has for every cluster, from zero: a series that
/// first appears already counting hides its first increments from `rate()`, so an alert on a
/// new failure would see it a scrape or two late.
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// A cluster's responses by status class: the upstreams' (by code) and Tripline's own (by
/// its reason's status); `1xx` only when there are some.
fn classes(c: &ClusterState) -> Vec<(&'static str, u64)> {
    let mut by = [0u64; 5];
    for (code, n) in c.stats.codes.nonzero() {
        by[usize::from(code / 100).clamp(1, 5) - 1] += n;
    }
    for reason in Reason::ALL {
        let n = c.stats.local.get(reason);
        if n > 0 {
            by[usize::from(reason.status().as_u16() / 100).clamp(1, 5) - 1] += n;
        }
    }
    let mut out: Vec<(&'static str, u64)> = CLASSES.iter().zip(&by[1..]).map(|(c, n)| (*c, *n)).collect();
    if by[0] > 0 {
        out.insert(0, ("1xx", by[0]));
    }
    out
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cl = |c: &ClusterState| vec![("cluster", c.name.to_string())];
        counter(
            &mut enc,
            "tripline_requests",
            "Requests answered by an upstream, by cluster and status code.",
            self.clusters.iter().flat_map(|c| {
                c.stats.codes.nonzero().map(move |(code, v)| {
                    (vec![("cluster", c.name.to_string()), ("code", code.to_string())], v)
                })
            }),
        )?;
        counter(
            &mut enc,
            "tripline_responses",
            "Responses the clients of a cluster got, from its upstreams or from Tripline, by status class; every class of every cluster from zero (what alerts divide).",
            self.clusters.iter().flat_map(|c| {
                classes(c).into_iter().map(move |(class, v)| {
                    (vec![("cluster", c.name.to_string()), ("class", class.to_string())], v)
                })
            }),
        )?;
        let mut local_rows = Vec::new();
        for reason in Reason::ALL {
            let v = self.global.local.get(reason);
            if v > 0 {
                local_rows.push((
                    vec![
                        ("reason", reason.as_str().to_string()),
                        ("cluster", String::new()),
                        ("code", reason.status().as_str().to_string()),
                    ],
                    v,
                ));
            }
            for c in &self.clusters {
                let v = c.stats.local.get(reason);
                if v > 0 {
                    local_rows.push((
                        vec![
                            ("reason", reason.as_str().to_string()),
                            ("cluster", c.name.to_string()),
                            ("code", reason.status().as_str().to_string()),
                        ],
                        v,
                    ));
                }
            }
        }
        counter(
            &mut enc,
            "tripline_local_responses",
            "Responses Tripline generated itself, by reason (also sent as x-tripline-reason) and HTTP status.",
            local_rows.into_iter(),
        )?;
        gauge(
            &mut enc,
            "tripline_upstream_active_requests",
            "Requests in flight to the cluster.",
            self.clusters.iter().map(|c| (cl(c), i64::from(c.active.current()))),
        )?;
        gauge(
            &mut enc,
            "tripline_upstream_pending_requests",
            "Requests waiting for an upstream connection.",
            self.clusters.iter().map(|c| (cl(c), i64::from(c.pending.current()))),
        )?;
        gauge(
            &mut enc,
            "tripline_upstream_connections",
            "Open upstream connections.",
            self.clusters.iter().map(|c| (cl(c), i64::from(c.connections.current()))),
        )?;
        counter(
            &mut enc,
            "tripline_upstream_connect_failures",
            "Upstream connection attempts that failed or timed out.",
            self.clusters.iter().map(|c| (cl(c), c.stats.connect_failures.load(Ordering::Relaxed))),
        )?;
        // Only the clusters that are some route's mirror have these series.
        counter(
            &mut enc,
            "tripline_mirror_requests",
            "Copies of requests sent to a mirror cluster, and copies dropped because it had its maximum in flight.",
            self.clusters.iter().flat_map(|c| {
                let m = &c.stats.mirror;
                let (sent, dropped) = (m.sent.load(Ordering::Relaxed), m.dropped.load(Ordering::Relaxed));
                let mirrored = sent + dropped > 0;
                [("sent", sent), ("dropped", dropped)].into_iter().filter(move |_| mirrored).map(move |(result, n)| {
                    let mut labels = cl(c);
                    labels.push(("result", result.to_string()));
                    (labels, n)
                })
            }),
        )?;
        type Pick = fn(&crate::endpoint::ClusterStats) -> &crate::stats::Histogram;
        let durations: [(&str, &str, Pick); 2] = [
            (
                "tripline_request_duration_seconds",
                "Per request: from its admission to the cluster to the end of its response body, every attempt, connection wait and backoff included.",
                |s| &s.request_duration,
            ),
            (
                "tripline_attempt_duration_seconds",
                "Per attempt upstream: from sending it to the end of its response body, or its failure.",
                |s| &s.attempt_duration,
            ),
        ];
        for (name, help, histogram) in durations {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for c in &self.clusters {
                let (sum, count, buckets) = histogram(&c.stats).snapshot();
                let labels = [("cluster", c.name.as_ref())];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        counter(
            &mut enc,
            "tripline_config_reloads",
            "Configuration reloads by result; a failed reload keeps the previous config.",
            [
                (vec![("result", "success".to_string())], self.global.reloads_ok.load(Ordering::Relaxed)),
                (vec![("result", "failure".to_string())], self.global.reloads_failed.load(Ordering::Relaxed)),
            ]
            .into_iter(),
        )?;
        counter(
            &mut enc,
            "tripline_passthrough_connections",
            "Connections iptables redirected to the mesh listener for a destination that is no service of the mesh, passed through to it, by whether the connect worked.",
            [
                (vec![("result", "connected".to_string())], self.global.passthrough_connected.load(Ordering::Relaxed)),
                (vec![("result", "failed".to_string())], self.global.passthrough_failed.load(Ordering::Relaxed)),
            ]
            .into_iter(),
        )?;
        gauge(
            &mut enc,
            "tripline_kubernetes_rejected_objects",
            "Objects from the Kubernetes API server left out of the running config because they are invalid (logged with why), at the last load; 0 without --kubernetes.",
            std::iter::once((Vec::new(), self.global.kubernetes_rejected.load(Ordering::Relaxed) as i64)),
        )?;
        counter(
            &mut enc,
            "tripline_fallbacks",
            "Requests a route's fallback took (sent to its destination or answered), by why the route's destination refused them.",
            crate::pipeline::fallback::Cause::ALL.into_iter().map(|c| {
                (vec![("cause", c.as_str().to_string())], self.global.fallbacks[c as usize].load(Ordering::Relaxed))
            }),
        )?;
        counter(
            &mut enc,
            "tripline_fault_injections",
            "Requests a route's fault injection delayed or aborted (a request can be both).",
            [
                (vec![("fault", "delay".to_string())], self.global.faults_delayed.load(Ordering::Relaxed)),
                (vec![("fault", "abort".to_string())], self.global.faults_aborted.load(Ordering::Relaxed)),
            ]
            .into_iter(),
        )?;
        counter(
            &mut enc,
            "tripline_access_log_dropped",
            "Access log lines dropped because the writer fell behind (requests are never slowed).",
            std::iter::once((vec![], self.global.access_log_dropped.load(Ordering::Relaxed))),
        )?;
        counter(
            &mut enc,
            "tripline_admin_connections_refused",
            "Admin connections closed at once because the admin API had its maximum open.",
            std::iter::once((vec![], self.global.admin_connections_refused.load(Ordering::Relaxed))),
        )?;
        let h2 = &self.global.http2;
        counter(
            &mut enc,
            "tripline_downstream_http2_stream_resets",
            "HTTP/2 streams of client connections reset, by who reset them.",
            [
                (vec![("by", "client".to_string())], h2.client_resets.load(Ordering::Relaxed)),
                (vec![("by", "proxy".to_string())], h2.proxy_resets.load(Ordering::Relaxed)),
            ]
            .into_iter(),
        )?;
        counter(
            &mut enc,
            "tripline_downstream_http2_connection_errors",
            "HTTP/2 client connections closed by Tripline with GOAWAY for an error, by error code \
             (ENHANCE_YOUR_CALM: a client resetting most of its streams).",
            HTTP2_ERRORS.iter().zip(&h2.connection_errors).filter_map(|(name, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| (vec![("reason", name.to_string())], n))
            }),
        )?;
        counter(
            &mut enc,
            "tripline_downstream_http2_floods",
            "HTTP/2 client connections closed by Tripline with GOAWAY ENHANCE_YOUR_CALM, by the abuse \
             limit they went past (rapid-reset, stream-errors, empty-frames, priority, window-update, \
             closed-stream-resets).",
            Http2Flood::ALL.iter().map(|&k| (vec![("kind", k.as_str().to_string())], h2.floods(k))),
        )?;
        gauge(
            &mut enc,
            "tripline_downstream_connections",
            "Open client connections.",
            std::iter::once((vec![], self.global.downstream_connections.load(Ordering::Relaxed) as i64)),
        )?;
        let workers = crate::workers::connections();
        let worker = |i: usize| vec![("worker", i.to_string())];
        counter(
            &mut enc,
            "tripline_worker_connections",
            "Client connections each worker thread was given (the least loaded takes the next).",
            workers.iter().enumerate().map(|(i, (given, _))| (worker(i), *given)),
        )?;
        gauge(
            &mut enc,
            "tripline_worker_open_connections",
            "Open client connections on each worker thread.",
            workers.iter().enumerate().map(|(i, (_, open))| (worker(i), *open as i64)),
        )?;
        Ok(())
    }
}

/// Breakers, outlier detection and retries, per cluster.
#[derive(Debug)]
struct ResilienceScrape {
    clusters: Vec<Arc<Cluster>>,
    routes: Vec<(String, Arc<tripline_core::breaker::CircuitBreaker>)>,
    route_stats: Arc<crate::resilience::ResilienceStats>,
}

type Labels = Vec<(&'static str, String)>;

impl Collector for ResilienceScrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut states: Vec<(Labels, i64)> = Vec::new();
        let mut dry_run: Vec<(Labels, u64)> = Vec::new();
        let mut add_breaker = |cluster: &str, endpoint: &str, b: &tripline_core::breaker::CircuitBreaker| {
            let current = b.state();
            let labels = || vec![("cluster", cluster.to_string()), ("endpoint", endpoint.to_string())];
            for s in STATES {
                let mut l = labels();
                l.push(("state", s.as_str().to_string()));
                states.push((l, i64::from(s == current)));
            }
            // Every dry-run breaker, from zero: a series that appears only once it counts
            // cannot be told from a breaker that is not there.
            if b.config().mode == tripline_core::breaker::Mode::DryRun {
                dry_run.push((labels(), b.dry_run_rejections()));
            }
        };
        let mut endpoints_total = Vec::new();
        let mut ejected = Vec::new();
        let mut ejections = Vec::new();
        let mut transitions = Vec::new();
        let mut retries = Vec::new();
        for c in &self.clusters {
            let name = c.name();
            let res = &c.resilience;
            if let Some(b) = &res.breaker {
                add_breaker(name, "", b);
            }
            let set = c.endpoints.load();
            for m in &set.members {
                if let Some(b) = &m.breaker {
                    add_breaker(name, &m.ep.id, b);
                }
            }
            let cl = || vec![("cluster", name.to_string())];
            endpoints_total.push((cl(), set.members.len() as i64));
            if let Some(o) = &res.outlier {
                ejected.push((cl(), i64::from(o.ejections_active())));
                for d in Detector::ALL {
                    let v = o.ejections_total(d);
                    if v > 0 {
                        ejections.push((
                            vec![("cluster", name.to_string()), ("detector", d.as_str().to_string())],
                            v,
                        ));
                    }
                }
            }
            for (to, reason, v) in res.stats.transitions() {
                transitions.push((
                    vec![
                        ("cluster", name.to_string()),
                        ("to", to.as_str().to_string()),
                        ("reason", reason.as_str().to_string()),
                    ],
                    v,
                ));
            }
            let st = &res.stats;
            for (result, v) in [
                ("attempted", &st.retries_attempted),
                ("succeeded", &st.retries_succeeded),
                ("refused_budget", &st.retries_refused_budget),
                ("suppressed_breaker", &st.retries_suppressed_breaker),
                ("not_replayable", &st.retries_not_replayable),
            ] {
                retries.push((
                    vec![("cluster", name.to_string()), ("result", result.to_string())],
                    v.load(Ordering::Relaxed),
                ));
            }
        }
        let mut route_states = Vec::new();
        let mut route_dry_run = Vec::new();
        for (route, b) in &self.routes {
            for s in STATES {
                route_states.push((
                    vec![("route", route.clone()), ("state", s.as_str().to_string())],
                    i64::from(s == b.state()),
                ));
            }
            if b.config().mode == tripline_core::breaker::Mode::DryRun {
                route_dry_run.push((vec![("route", route.clone())], b.dry_run_rejections()));
            }
        }
        counter(
            &mut enc,
            "tripline_route_breaker_dry_run_rejections",
            "Requests a DRY_RUN route breaker would have refused (it lets them through).",
            route_dry_run.into_iter(),
        )?;
        gauge(
            &mut enc,
            "tripline_route_breaker_state",
            "Route circuit breaker state (one-hot), for ResiliencePolicies that target a route.",
            route_states.into_iter(),
        )?;
        counter(
            &mut enc,
            "tripline_route_breaker_transitions",
            "Route breaker transitions by target state and reason.",
            self.route_stats.transitions().into_iter().map(|(to, reason, v)| {
                (vec![("to", to.as_str().to_string()), ("reason", reason.as_str().to_string())], v)
            }),
        )?;
        gauge(
            &mut enc,
            "tripline_breaker_state",
            "Circuit breaker state (one-hot); endpoint=\"\" is the destination breaker.",
            states.into_iter(),
        )?;
        counter(
            &mut enc,
            "tripline_breaker_transitions",
            "Breaker transitions by target state and reason.",
            transitions.into_iter(),
        )?;
        counter(
            &mut enc,
            "tripline_breaker_dry_run_rejections",
            "Requests a DRY_RUN breaker would have refused (it lets them through); endpoint=\"\" is the destination breaker.",
            dry_run.into_iter(),
        )?;
        gauge(
            &mut enc,
            "tripline_cluster_endpoints",
            "Endpoints in the cluster.",
            endpoints_total.into_iter(),
        )?;
        gauge(
            &mut enc,
            "tripline_outlier_ejections_active",
            "Endpoints ejected or probing now.",
            ejected.into_iter(),
        )?;
        counter(&mut enc, "tripline_outlier_ejections", "Ejections by detector.", ejections.into_iter())?;
        counter(
            &mut enc,
            "tripline_retries",
            "Retries by result: attempted, succeeded, refused_budget, suppressed_breaker, not_replayable.",
            retries.into_iter(),
        )?;
        encode_endpoints(&self.clusters, &mut enc)
    }
}

/// The most endpoints `/metrics` shows per-endpoint traffic of: the busiest, by attempts.
/// A mesh proxy knows every endpoint of every service (10,000 and more); each shown costs 2
/// counters and a histogram of 15 series. `/stats` has every endpoint.
pub const MAX_ENDPOINT_SERIES: usize = 100;

/// Per-endpoint traffic: attempts, failures and attempt durations of the endpoints that had
/// any, the [`MAX_ENDPOINT_SERIES`] busiest; how many more had traffic is
/// `tripline_metrics_endpoints_omitted`.
fn encode_endpoints(clusters: &[Arc<Cluster>], enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut busy: Vec<(&str, Arc<crate::endpoint::Endpoint>, u64)> = Vec::new();
    for c in clusters {
        for m in &c.endpoints.load().members {
            let attempts = m.ep.requests_total.load(Ordering::Relaxed);
            if attempts > 0 {
                busy.push((c.name(), m.ep.clone(), attempts));
            }
        }
    }
    let omitted = busy.len().saturating_sub(MAX_ENDPOINT_SERIES);
    if omitted > 0 {
        busy.select_nth_unstable_by(MAX_ENDPOINT_SERIES - 1, |a, b| b.2.cmp(&a.2));
        busy.truncate(MAX_ENDPOINT_SERIES);
    }
    let labels = |cluster: &str, ep: &crate::endpoint::Endpoint| -> Labels {
        vec![("cluster", cluster.to_string()), ("endpoint", ep.id.to_string())]
    };
    counter(
        enc,
        "tripline_endpoint_attempts",
        "Attempts sent to an endpoint (retries included).",
        busy.iter().map(|(c, ep, attempts)| (labels(c, ep), *attempts)),
    )?;
    counter(
        enc,
        "tripline_endpoint_failures",
        "Attempts an endpoint failed: 5xx, a failed gRPC status, reset, timeout, connect failure (never a refusal of Tripline's or a client that left).",
        busy.iter().map(|(c, ep, _)| (labels(c, ep), ep.failures_total.load(Ordering::Relaxed))),
    )?;
    {
        let mut m = enc.encode_descriptor(
            "tripline_endpoint_attempt_duration_seconds",
            "Per attempt to an endpoint: from sending it to the end of its response body, or its failure.",
            None,
            MetricType::Histogram,
        )?;
        for (c, ep, _) in &busy {
            if let Some(h) = ep.duration.get() {
                let (sum, count, buckets) = h.snapshot();
                let labels = [("cluster", *c), ("endpoint", ep.id.as_ref())];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
    }
    gauge(
        enc,
        "tripline_metrics_endpoints_omitted",
        "Endpoints with traffic whose per-endpoint series /metrics leaves out (it shows the busiest only; /stats has all).",
        std::iter::once((Vec::new(), omitted as i64)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both formats carry the same samples; the Prometheus one names a counter by its samples
    /// in `# HELP` / `# TYPE` and has no OpenMetrics-only lines.
    #[test]
    fn the_prometheus_text_has_the_same_samples_with_typed_names() {
        let global = Arc::new(GlobalStats::default());
        global.local.inc(crate::reason::Reason::NoRoute);
        let om =
            render(&global, &[], &Default::default(), &Default::default(), None, Default::default(), None);
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = to_prometheus_text(&om);
        let samples =
            |s: &str| s.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(samples(&om), samples(&text));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        // Every sample's name is declared by a `# TYPE` line: its own, or its family's for a
        // histogram's `_bucket` / `_sum` / `_count`.
        let typed: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        assert!(typed.contains(&("tripline_local_responses_total", "counter")), "{typed:?}");
        for line in samples(&text) {
            let name = line.split(['{', ' ']).next().unwrap();
            let declared = typed.iter().any(|(t, kind)| {
                *t == name
                    || (*kind == "histogram"
                        && ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s) == Some(*t)))
            });
            assert!(declared, "{name} has no # TYPE of its own in:\n{text}");
        }
        let help = text.lines().find(|l| l.starts_with("# HELP tripline_local_responses")).unwrap();
        assert!(help.starts_with("# HELP tripline_local_responses_total "), "{help}");
    }
}

#[cfg(test)]
mod endpoint_series {
    use super::*;
    use std::net::SocketAddr;
    use tripline_config::plan::{
        ClusterPlan, Discovery, EndpointPlan, LoadBalancer, PoolLimits, UpstreamProtocol,
    };

    /// With more endpoints that had traffic than [`MAX_ENDPOINT_SERIES`], `/metrics` shows the
    /// busiest and counts the rest; endpoints without traffic have no series at all.
    #[test]
    fn only_the_busiest_endpoints_get_series_and_the_rest_are_counted() {
        let total = MAX_ENDPOINT_SERIES + 50;
        let endpoints = (0..total + 10)
            .map(|i| EndpointPlan {
                address: SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
                weight: 1,
                labels: Default::default(),
            })
            .collect();
        let plan = ClusterPlan {
            name: "big".into(),
            host: "big".into(),
            port: 80,
            subset: None,
            protocol: UpstreamProtocol::Http1,
            discovery: Discovery::Static(endpoints),
            load_balancer: LoadBalancer::RoundRobin,
            pool: PoolLimits::default(),
            resilience: Default::default(),
            tls: None,
        };
        let clusters = crate::cluster::Registry::default().build(&[plan], &Default::default()).clusters;
        // Endpoint i had i + 1 attempts, the first `total` of them; the last 10 had none.
        for (i, m) in clusters[0].endpoints.load().members.iter().enumerate().take(total) {
            m.ep.requests_total.store(i as u64 + 1, Ordering::Relaxed);
        }
        let om = render(
            &Arc::new(GlobalStats::default()),
            &clusters,
            &Default::default(),
            &Default::default(),
            None,
            Default::default(),
            None,
        );
        let shown: Vec<u64> = om
            .lines()
            .filter(|l| l.starts_with("tripline_endpoint_attempts_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(shown.len(), MAX_ENDPOINT_SERIES, "{om}");
        assert_eq!(shown.iter().min(), Some(&51), "the 100 busiest of 150 had 51..=150 attempts");
        assert!(om.contains("\ntripline_metrics_endpoints_omitted 50\n"), "{om}");
    }
}
