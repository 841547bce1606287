//! `ResiliencePolicy` (`tripline.dev/v1alpha1`): what Istio's networking API cannot express —
//! circuit breakers, Envoy's extra outlier detectors, outcome classification and the retry
//! behaviour Tripline adds — for one destination, in the same YAML files as the Istio resources.
//!
//! ```yaml
//! apiVersion: tripline.dev/v1alpha1
//! kind: ResiliencePolicy
//! metadata: {name: payments}
//! spec:
//!   target: {host: payments.svc.cluster.local, subset: v1}   # subset optional
//!   circuitBreaker: {consecutiveFailures: 5, openDuration: 5s, halfOpen: {maxProbes: 3}}
//!   endpointCircuitBreaker: {consecutiveFailures: 3}
//!   outlierDetection: {successRate: {minimumHosts: 5}, ejectionCapRounding: AT_LEAST_ONE}
//!   classification: {failureStatuses: ["500-599"], gatewayStatuses: [502, 503, 504]}
//!   retries: {retryNonIdempotent: false, backoff: {baseInterval: 25ms, maxInterval: 250ms}}
//! ```
//!
//! # Target
//!
//! Either a destination, `{host, subset}`, or one http route of a VirtualService,
//! `{virtualService: <name>, route: <route name> | "http[<index>]"}`; mixing the forms is an
//! error.
//!
//! `target.host` must be declared by a ServiceEntry and `target.subset`, when given, defined by
//! the host's DestinationRule. Without a subset the policy applies to every cluster of the host
//! (the host itself and each of its subsets); a policy that names the subset replaces it, as a
//! whole, for that subset. Two policies with the same target are an error.
//!
//! A route target gets a breaker for the route itself (`circuitBreaker`, with the policy's
//! classification) and `retries` that replace, as a whole, those of the destinations' policies
//! for that route; `endpointCircuitBreaker` and `outlierDetection` apply to hosts and are an
//! error there.
//!
//! # Defaults
//!
//! Every field is optional and defaults to the engine's own default
//! ([`BreakerConfig::default`], [`OutlierConfig::default`], [`Classifier::default`]): a policy
//! with `circuitBreaker: {}` gets the default breaker. A section that is absent is off
//! (no breaker), except `classification`, which is always the default classifier.
//!
//! # Outlier detection: DestinationRule and policy together
//!
//! The policy's `outlierDetection` accepts the Istio fields (`consecutive5xxErrors`,
//! `interval`, ...) and Envoy's extras (`successRate`, `failurePercentage`, `latency`,
//! `maxEjectionTime`, enforcing percentages, probing, cap rounding). When the target's
//! DestinationRule also has `outlierDetection`, **the DestinationRule wins for every Istio field
//! it sets** (its subset level over its top level, field by field), the policy fills the Istio
//! fields the DestinationRule leaves out, and the extras come from the policy only. So a policy
//! can add detectors to an existing Istio config without silently changing what it says.
//!
//! # Classification
//!
//! One classifier feeds the destination breaker, the endpoint breaker and outlier detection.
//! Each list given replaces the engine default for that list; when `failureStatuses` is given and
//! `gatewayStatuses` is not, the default gateway statuses (502, 503, 504) are kept only if they
//! are failures (likewise for gRPC), so what is listed as failures is exactly what fails.
//! Gateway statuses are always failures too.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tripline_core::breaker::{BreakerConfig, Mode, RatioRule, SlowCallRule};
use tripline_core::classify::{grpc, Classifier};
use tripline_core::outlier::{
    CapRounding, Enforcing, FailurePercentageRule, LatencyRule, OutlierConfig, SuccessRateRule,
};

use crate::decode::{format_duration, Cx, Fields, Schema};
use crate::model::{At, HttpOnly, OutlierDetection, OUTLIER_FIELDS};
use crate::yaml::{Kind, Node};

/// A decoded `ResiliencePolicy` spec, every value validated and defaults applied.
#[derive(Debug, Clone)]
pub struct ResiliencePolicy {
    pub target: Target,
    /// `circuitBreaker` with the policy's classifier.
    pub breaker: Option<BreakerConfig>,
    /// `endpointCircuitBreaker` with the policy's classifier.
    pub endpoint_breaker: Option<BreakerConfig>,
    pub outlier: Option<PolicyOutlier>,
    pub classification: Classification,
    pub retries: Option<PolicyRetries>,
    /// `rateLimit` (a route target only).
    pub rate_limit: Option<crate::rate_limit::RateLimitPlan>,
    /// `fallback` (a route target only).
    pub fallback: Option<crate::fallback::Fallback>,
    /// The sections set that act on HTTP requests only (the breakers, `retries`, the latency
    /// detector): a TCP route's cluster refuses them, since they would do nothing there.
    pub http_only: Vec<HttpOnly>,
}

/// What a policy applies to: a destination (`{host, subset}`) or one http route of a
/// VirtualService (`{virtualService, route}`).
#[derive(Debug, Clone)]
pub enum Target {
    Destination { host: At<String>, subset: Option<At<String>> },
    Route { virtual_service: At<String>, route: At<RouteRef> },
}

/// How a route target names its route: by its `name:` or as `http[<index>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteRef {
    Name(String),
    Index(usize),
}

impl std::fmt::Display for RouteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteRef::Name(n) => f.write_str(n),
            RouteRef::Index(i) => write!(f, "http[{i}]"),
        }
    }
}

impl RouteRef {
    /// `http[2]` is an index; anything else is a route name.
    pub fn parse(text: &str) -> RouteRef {
        let index = text.strip_prefix("http[").and_then(|r| r.strip_suffix(']')).and_then(|i| i.parse().ok());
        match index {
            Some(i) => RouteRef::Index(i),
            None => RouteRef::Name(text.to_string()),
        }
    }
}

/// The two forms of `target`, for messages.
const TARGET_FORMS: &str = "either {host, subset} (a destination; subset optional) or {virtualService, route} (one http route of a VirtualService, by its `name` or as `http[<index>]`)";

/// The policy's `outlierDetection`: its Istio fields as written (so a DestinationRule can win
/// field by field) and a config carrying the extras (its Istio fields are overwritten).
#[derive(Debug, Clone)]
pub struct PolicyOutlier {
    pub istio: OutlierDetection,
    pub extras: OutlierConfig,
}

/// `classification`, as written (for the dump) and compiled.
#[derive(Debug, Clone)]
pub struct Classification {
    pub failure_statuses: Vec<(u16, u16)>,
    pub gateway_statuses: Vec<(u16, u16)>,
    pub grpc_failures: Vec<u8>,
    pub grpc_gateway_errors: Vec<u8>,
    pub rate_limited_is_failure: bool,
    /// Local-origin outcomes: whether a failed connect, a reset and a per-try timeout count.
    pub connect_failure: bool,
    pub reset: bool,
    pub timeout: bool,
    pub classifier: Classifier,
}

impl Default for Classification {
    fn default() -> Self {
        use grpc::*;
        Classification {
            failure_statuses: vec![(500, 599)],
            gateway_statuses: vec![(502, 504)],
            grpc_failures: vec![UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS],
            grpc_gateway_errors: vec![DEADLINE_EXCEEDED, UNAVAILABLE],
            rate_limited_is_failure: false,
            connect_failure: true,
            reset: true,
            timeout: true,
            classifier: Classifier::default(),
        }
    }
}

/// `retries`: applied to every route whose destinations are the target.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRetries {
    pub retry_non_idempotent: bool,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_replay_bytes: usize,
}

impl Default for PolicyRetries {
    fn default() -> Self {
        let d = crate::plan::RetryPlan::default();
        PolicyRetries {
            retry_non_idempotent: d.retry_non_idempotent,
            backoff_base: d.backoff_base,
            backoff_max: d.backoff_max,
            max_replay_bytes: d.max_replay_bytes,
        }
    }
}

const SPEC: Schema = Schema::new(
    "Tripline's ResiliencePolicy",
    &[
        "target",
        "circuitBreaker",
        "endpointCircuitBreaker",
        "outlierDetection",
        "classification",
        "retries",
        "rateLimit",
        "fallback",
    ],
);
const TARGET: Schema =
    Schema::new("a ResiliencePolicy target", &["host", "subset", "virtualService", "route"]);
/// The fields of a `circuitBreaker` / `endpointCircuitBreaker` section.
pub const BREAKER_FIELDS: &[&str] = &[
    "mode",
    "consecutiveFailures",
    "failureRatio",
    "slowCalls",
    "window",
    "windowBuckets",
    "openDuration",
    "openDurationMultiplier",
    "maxOpenDuration",
    "openJitter",
    "halfOpen",
];
const BREAKER: Schema = Schema::new("Tripline's CircuitBreaker", BREAKER_FIELDS);
const FAILURE_RATIO: Schema =
    Schema::new("a failureRatio rule", &["enabled", "threshold", "minimumRequests"]);
const SLOW_CALLS: Schema =
    Schema::new("a slowCalls rule", &["enabled", "duration", "threshold", "minimumRequests"]);
const HALF_OPEN: Schema = Schema::new("Tripline's HalfOpen", &["maxProbes", "successRatio", "probeTimeout"]);
const OUTLIER_EXTRAS: &[&str] = &[
    "successRate",
    "failurePercentage",
    "latency",
    "maxEjectionTime",
    "maxEjectionTimeJitter",
    "ejectionCapRounding",
    "enforcing",
    "probe",
];
/// `outlierDetection` of a policy: Istio's fields and the extras.
const OUTLIER_ALL: [&str; 17] = {
    let mut all = [""; 17];
    let mut i = 0;
    while i < OUTLIER_FIELDS.len() {
        all[i] = OUTLIER_FIELDS[i];
        i += 1;
    }
    let mut j = 0;
    while j < OUTLIER_EXTRAS.len() {
        all[i + j] = OUTLIER_EXTRAS[j];
        j += 1;
    }
    all
};
const OUTLIER: Schema =
    Schema::new("Tripline's OutlierDetection (Istio's fields and Envoy's extras)", &OUTLIER_ALL);
const SUCCESS_RATE: Schema =
    Schema::new("a successRate rule", &["minimumHosts", "requestVolume", "stdevFactor"]);
const FAILURE_PERCENTAGE: Schema =
    Schema::new("a failurePercentage rule", &["threshold", "minimumHosts", "requestVolume"]);
const LATENCY: Schema = Schema::new(
    "a latency rule",
    &["percentile", "factor", "minimumHosts", "requestVolume", "minimumRequests", "minimumLatency"],
);
const ENFORCING: Schema = Schema::new(
    "enforcing percentages",
    &[
        "consecutive5xx",
        "consecutiveGateway",
        "consecutiveLocalOrigin",
        "successRate",
        "failurePercentage",
        "latency",
    ],
);
const PROBE: Schema = Schema::new("ejection probing", &["concurrency", "successes"]);
const CLASSIFICATION: Schema = Schema::new(
    "Tripline's Classification",
    &[
        "failureStatuses",
        "gatewayStatuses",
        "grpcFailures",
        "grpcGatewayErrors",
        "rateLimitedIsFailure",
        "connectFailureIsFailure",
        "resetIsFailure",
        "timeoutIsFailure",
    ],
);
const RETRIES: Schema =
    Schema::new("Tripline's retry settings", &["retryNonIdempotent", "backoff", "maxReplayBytes"]);
const BACKOFF: Schema = Schema::new("a retry backoff", &["baseInterval", "maxInterval"]);

/// Probes in half-open and probe requests to an ejected endpoint: 1..=64.
const MAX_PROBES: i64 = 64;
/// Largest body kept for replay (64 MiB): more is a memory hazard under load.
const MAX_REPLAY_BYTES: i64 = 64 << 20;

/// A ratio in (0, 1].
fn ratio(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let v = match &node.kind {
        Kind::Scalar { text, .. } => text.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
        _ => None,
    };
    match v {
        Some(v) if v > 0.0 && v <= 1.0 => Some(v),
        _ => {
            cx.error(
                node,
                path,
                format!(
                    "expected a ratio greater than 0 and at most 1 (e.g. 0.5 for 50%), found {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

fn percent(cx: &mut Cx, f: &Fields<'_>, name: &str, default: u32) -> Option<u32> {
    match f.value(name) {
        Some((n, p)) => cx.int(n, &p, 0, 100).map(|v| v as u32),
        None => Some(default),
    }
}

fn count(cx: &mut Cx, f: &Fields<'_>, name: &str, min: u32, default: u32) -> Option<u32> {
    match f.value(name) {
        Some((n, p)) => cx.u32(n, &p, min),
        None => Some(default),
    }
}

fn probes(cx: &mut Cx, f: &Fields<'_>, name: &str, default: u32) -> Option<u32> {
    match f.value(name) {
        Some((n, p)) => cx.int(n, &p, 1, MAX_PROBES).map(|v| v as u32),
        None => Some(default),
    }
}

fn duration(
    cx: &mut Cx,
    f: &Fields<'_>,
    name: &str,
    allow_zero: bool,
    default: Duration,
) -> Option<Duration> {
    match f.value(name) {
        Some((n, p)) => cx.duration(n, &p, allow_zero),
        None => Some(default),
    }
}

fn ratio_field(cx: &mut Cx, f: &Fields<'_>, name: &str, default: f64) -> Option<f64> {
    match f.value(name) {
        Some((n, p)) => ratio(cx, n, &p),
        None => Some(default),
    }
}

/// `enabled: false` turns a rule off; anything else keeps it on.
fn enabled(cx: &mut Cx, f: &Fields<'_>) -> Option<bool> {
    match f.value("enabled") {
        Some((n, p)) => cx.bool(n, &p),
        None => Some(true),
    }
}

/// Decodes a `ResiliencePolicy` spec. Every problem is reported; `None` if any was an error.
pub fn resilience_policy(cx: &mut Cx, spec: &Node, name: &str) -> Option<ResiliencePolicy> {
    let f = cx.fields(spec, "spec", &SPEC)?;
    let before = errors(cx);
    let target = match f.value("target") {
        Some((n, p)) => target(cx, n, &p),
        None => {
            cx.required(&f, "target", &format!("{TARGET_FORMS}: what this policy applies to"));
            None
        }
    };
    if let Some(Target::Route { .. }) = &target {
        for name in ["endpointCircuitBreaker", "outlierDetection"] {
            if let Some((n, p)) = f.get(name) {
                cx.error(
                    n,
                    &p,
                    format!("`{name}` applies to hosts; target the host instead (a policy whose target is a route accepts circuitBreaker, classification and retries)"),
                );
            }
        }
    }
    let classification = match f.value("classification") {
        Some((n, p)) => classification(cx, n, &p),
        None => Some(Classification::default()),
    };
    let classifier = classification.as_ref().map(|c| c.classifier.clone()).unwrap_or_default();
    let breaker = f.value("circuitBreaker").and_then(|(n, p)| breaker_config(cx, n, &p, &classifier));
    let endpoint_breaker =
        f.value("endpointCircuitBreaker").and_then(|(n, p)| breaker_config(cx, n, &p, &classifier));
    let outlier = f.value("outlierDetection").and_then(|(n, p)| outlier_config(cx, n, &p));
    let retries = f.value("retries").and_then(|(n, p)| retry_settings(cx, n, &p));
    let rate_limit = match (f.value("rateLimit"), &target) {
        (Some((n, p)), Some(Target::Route { .. })) => crate::rate_limit::rate_limit(cx, n, &p, name),
        (Some((n, p)), Some(Target::Destination { .. })) => {
            cx.error(n, &p, "`rateLimit` applies to a route: target one with {virtualService, route} (a policy per route to limit)");
            None
        }
        _ => None,
    };
    let fallback = match (f.value("fallback"), &target) {
        (Some((n, p)), Some(Target::Route { .. })) => crate::fallback::fallback(cx, n, &p),
        (Some((n, p)), Some(Target::Destination { .. })) => {
            cx.error(n, &p, "`fallback` applies to a route: target one with {virtualService, route}");
            None
        }
        _ => None,
    };
    if errors(cx) > before {
        return None;
    }
    let mut http_only = Vec::new();
    for name in ["circuitBreaker", "endpointCircuitBreaker", "retries"] {
        if let Some((n, p)) = f.value(name) {
            http_only.push(HttpOnly { pos: n.pos, path: p });
        }
    }
    if let Some((n, p)) = f.value("outlierDetection").and_then(|(o, p)| Some((o.get("latency")?, p))) {
        http_only.push(HttpOnly { pos: n.pos, path: crate::decode::join(&p, "latency") });
    }
    Some(ResiliencePolicy {
        target: target?,
        breaker,
        endpoint_breaker,
        outlier,
        classification: classification?,
        retries,
        rate_limit,
        fallback,
        http_only,
    })
}

fn errors(cx: &Cx) -> usize {
    cx.diags.iter().filter(|d| d.severity == crate::Severity::Error).count()
}

fn target(cx: &mut Cx, node: &Node, path: &str) -> Option<Target> {
    let f = cx.fields(node, path, &TARGET)?;
    let given =
        |names: [&'static str; 2]| names.into_iter().filter(|n| f.get(n).is_some()).collect::<Vec<_>>();
    let (destination, route) = (given(["host", "subset"]), given(["virtualService", "route"]));
    let mut text = |name: &str| match f.value(name) {
        Some((n, p)) => cx.name(n, &p).map(|v| Some(At::new(v, n, &p))),
        None => Some(None),
    };
    let (host, subset, vs, route_name) =
        (text("host"), text("subset"), text("virtualService"), text("route"));
    let list = |names: &[&str]| names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" and ");
    match (destination.is_empty(), route.is_empty()) {
        (false, false) => {
            let msg = format!(
                "a target has one form: {} (destination form) cannot be mixed with {} (route form); expected {TARGET_FORMS}",
                list(&destination),
                list(&route)
            );
            cx.error(node, path, msg);
            None
        }
        (true, true) => {
            cx.error(node, path, format!("empty target: expected {TARGET_FORMS}"));
            None
        }
        (false, true) => {
            let Some(host) = host? else {
                cx.required(
                    &f,
                    "host",
                    &format!("the host (of a ServiceEntry) this policy applies to ({TARGET_FORMS})"),
                );
                return None;
            };
            Some(Target::Destination { host, subset: subset? })
        }
        (true, false) => {
            let (vs, route_name) = (vs?, route_name?);
            if vs.is_none() {
                cx.required(
                    &f,
                    "virtualService",
                    "the name of the VirtualService whose route this policy applies to",
                );
            }
            if route_name.is_none() {
                cx.required(&f, "route", "the route: its `name` or `http[<index>]`");
            }
            let (virtual_service, route) = (vs?, route_name?);
            let route = At { value: RouteRef::parse(route.value.trim()), pos: route.pos, path: route.path };
            Some(Target::Route { virtual_service, route })
        }
    }
}

fn breaker_config(cx: &mut Cx, node: &Node, path: &str, classifier: &Classifier) -> Option<BreakerConfig> {
    let f = cx.fields(node, path, &BREAKER)?;
    let d = BreakerConfig::default();
    let mode = match f.value("mode") {
        Some((n, p)) => match cx.one_of(n, &p, &["ENFORCING", "DRY_RUN"], "")?.as_str() {
            "DRY_RUN" => Mode::DryRun,
            _ => Mode::Enforcing,
        },
        None => d.mode,
    };
    let consecutive_failures = match f.value("consecutiveFailures") {
        Some((n, p)) => cx.u32(n, &p, 0).map(|v| (v > 0).then_some(v)),
        None => Some(d.consecutive_failures),
    };
    let default_ratio = d.failure_ratio.unwrap_or(RatioRule { ratio: 0.5, min_requests: 20 });
    let failure_ratio = match f.value("failureRatio") {
        Some((n, p)) => (|| {
            let rf = cx.fields(n, &p, &FAILURE_RATIO)?;
            let on = enabled(cx, &rf);
            let ratio = ratio_field(cx, &rf, "threshold", default_ratio.ratio);
            let min_requests = count(cx, &rf, "minimumRequests", 1, default_ratio.min_requests);
            Some(on?.then_some(RatioRule { ratio: ratio?, min_requests: min_requests? }))
        })(),
        None => Some(d.failure_ratio),
    };
    let slow_calls = match f.value("slowCalls") {
        Some((n, p)) => (|| {
            let sf = cx.fields(n, &p, &SLOW_CALLS)?;
            let on = enabled(cx, &sf);
            let threshold = match sf.value("duration") {
                Some((n, p)) => cx.duration(n, &p, false),
                None => {
                    cx.required(&sf, "duration", "the latency from which a call is slow, e.g. 1s");
                    None
                }
            };
            let ratio = ratio_field(cx, &sf, "threshold", 0.5);
            let min_requests = count(cx, &sf, "minimumRequests", 1, 20);
            Some(on?.then_some(SlowCallRule {
                threshold: threshold?,
                ratio: ratio?,
                min_requests: min_requests?,
            }))
        })(),
        None => Some(d.slow_calls),
    };
    let window = duration(cx, &f, "window", false, d.window);
    let window_buckets = match f.value("windowBuckets") {
        Some((n, p)) => cx.int(n, &p, 1, 1024).map(|v| v as u32),
        None => Some(d.window_buckets),
    };
    let open_duration = duration(cx, &f, "openDuration", false, d.open_duration);
    let open_multiplier = match f.value("openDurationMultiplier") {
        Some((n, p)) => cx.float(n, &p, 1.0, 100.0),
        None => Some(d.open_multiplier),
    };
    // Without maxOpenDuration, a long openDuration raises the cap rather than being refused.
    let default_max = open_duration.map_or(d.max_open_duration, |o| o.max(d.max_open_duration));
    let max_open_duration = duration(cx, &f, "maxOpenDuration", false, default_max);
    let open_jitter = match f.value("openJitter") {
        Some((n, p)) => cx.float(n, &p, 0.0, 1.0),
        None => Some(d.open_jitter),
    };
    let (mut probes_n, mut success, mut probe_timeout) =
        (Some(d.probes), Some(d.probe_success_ratio), Some(d.probe_timeout));
    if let Some((n, p)) = f.value("halfOpen") {
        let hf = cx.fields(n, &p, &HALF_OPEN)?;
        probes_n = probes(cx, &hf, "maxProbes", d.probes);
        success = ratio_field(cx, &hf, "successRatio", d.probe_success_ratio);
        probe_timeout = duration(cx, &hf, "probeTimeout", false, d.probe_timeout);
    }
    if let (Some(open), Some(max)) = (open_duration, max_open_duration) {
        if max < open {
            let (n, p) = f.value("maxOpenDuration")?;
            cx.error(
                n,
                &p,
                format!(
                    "maxOpenDuration ({}) is shorter than openDuration ({}): expected maxOpenDuration >= openDuration",
                    format_duration(max),
                    format_duration(open)
                ),
            );
            return None;
        }
    }
    Some(BreakerConfig {
        mode,
        consecutive_failures: consecutive_failures?,
        failure_ratio: failure_ratio?,
        slow_calls: slow_calls?,
        window: window?,
        window_buckets: window_buckets?,
        open_duration: open_duration?,
        open_multiplier: open_multiplier?,
        max_open_duration: max_open_duration?,
        open_jitter: open_jitter?,
        probes: probes_n?,
        probe_success_ratio: success?,
        probe_timeout: probe_timeout?,
        classifier: classifier.clone(),
    })
}

fn outlier_config(cx: &mut Cx, node: &Node, path: &str) -> Option<PolicyOutlier> {
    let f = cx.fields(node, path, &OUTLIER)?;
    let istio = crate::model::outlier_fields(cx, &f);
    let d = OutlierConfig::default();
    let success_rate = match f.value("successRate") {
        Some((n, p)) => (|| {
            let sf = cx.fields(n, &p, &SUCCESS_RATE)?;
            let dr = SuccessRateRule::default();
            let minimum_hosts = count(cx, &sf, "minimumHosts", 1, dr.minimum_hosts);
            let request_volume = count(cx, &sf, "requestVolume", 1, dr.request_volume);
            let stdev_factor = match sf.value("stdevFactor") {
                Some((n, p)) => cx.float(n, &p, 0.0, 100.0),
                None => Some(dr.stdev_factor),
            };
            Some(Some(SuccessRateRule {
                minimum_hosts: minimum_hosts?,
                request_volume: request_volume?,
                stdev_factor: stdev_factor?,
            }))
        })(),
        None => Some(None),
    };
    let failure_percentage = match f.value("failurePercentage") {
        Some((n, p)) => (|| {
            let ff = cx.fields(n, &p, &FAILURE_PERCENTAGE)?;
            let dr = FailurePercentageRule::default();
            let threshold = percent(cx, &ff, "threshold", dr.threshold);
            let minimum_hosts = count(cx, &ff, "minimumHosts", 1, dr.minimum_hosts);
            let request_volume = count(cx, &ff, "requestVolume", 1, dr.request_volume);
            Some(Some(FailurePercentageRule {
                threshold: threshold?,
                minimum_hosts: minimum_hosts?,
                request_volume: request_volume?,
            }))
        })(),
        None => Some(None),
    };
    let latency = match f.value("latency") {
        Some((n, p)) => (|| {
            let lf = cx.fields(n, &p, &LATENCY)?;
            let dr = LatencyRule::default();
            let percentile = ratio_field(cx, &lf, "percentile", dr.percentile);
            let factor = match lf.value("factor") {
                Some((n, p)) => cx.float(n, &p, 1.0, 1000.0),
                None => Some(dr.factor),
            };
            let minimum_hosts = count(cx, &lf, "minimumHosts", 1, dr.minimum_hosts);
            let volume_name = match (lf.value("requestVolume"), lf.value("minimumRequests")) {
                (Some(_), Some((n, p))) => {
                    cx.error(
                        n,
                        &p,
                        "expected only one of `requestVolume` and `minimumRequests` (the same setting)",
                    );
                    return None;
                }
                (None, Some(_)) => "minimumRequests",
                _ => "requestVolume",
            };
            let request_volume = count(cx, &lf, volume_name, 1, dr.request_volume);
            let min_latency = duration(cx, &lf, "minimumLatency", false, dr.min_latency);
            Some(Some(LatencyRule {
                percentile: percentile?,
                factor: factor?,
                minimum_hosts: minimum_hosts?,
                request_volume: request_volume?,
                min_latency: min_latency?,
            }))
        })(),
        None => Some(None),
    };
    let max_ejection_time = duration(cx, &f, "maxEjectionTime", false, d.max_ejection_time);
    let max_ejection_time_jitter =
        duration(cx, &f, "maxEjectionTimeJitter", true, d.max_ejection_time_jitter);
    let cap_rounding = match f.value("ejectionCapRounding") {
        Some((n, p)) => match cx.one_of(n, &p, &["FLOOR", "CEIL", "AT_LEAST_ONE"], "")?.as_str() {
            "FLOOR" => Some(CapRounding::Floor),
            "CEIL" => Some(CapRounding::Ceil),
            _ => Some(CapRounding::AtLeastOne),
        },
        None => Some(d.cap_rounding),
    };
    let enforcing = match f.value("enforcing") {
        Some((n, p)) => (|| {
            let ef = cx.fields(n, &p, &ENFORCING)?;
            let de = Enforcing::default();
            let c5 = percent(cx, &ef, "consecutive5xx", de.consecutive_5xx);
            let cg = percent(cx, &ef, "consecutiveGateway", de.consecutive_gateway);
            let cl = percent(cx, &ef, "consecutiveLocalOrigin", de.consecutive_local_origin);
            let sr = percent(cx, &ef, "successRate", de.success_rate);
            let fp = percent(cx, &ef, "failurePercentage", de.failure_percentage);
            let la = percent(cx, &ef, "latency", de.latency);
            Some(Enforcing {
                consecutive_5xx: c5?,
                consecutive_gateway: cg?,
                consecutive_local_origin: cl?,
                success_rate: sr?,
                failure_percentage: fp?,
                latency: la?,
            })
        })(),
        None => Some(d.enforcing),
    };
    let (mut probe_concurrency, mut probe_successes) = (Some(d.probe_concurrency), Some(d.probe_successes));
    if let Some((n, p)) = f.value("probe") {
        let pf = cx.fields(n, &p, &PROBE)?;
        probe_concurrency = probes(cx, &pf, "concurrency", d.probe_concurrency);
        probe_successes = probes(cx, &pf, "successes", d.probe_successes);
    }
    let extras = OutlierConfig {
        success_rate: success_rate?,
        failure_percentage: failure_percentage?,
        latency: latency?,
        max_ejection_time: max_ejection_time?,
        max_ejection_time_jitter: max_ejection_time_jitter?,
        cap_rounding: cap_rounding?,
        enforcing: enforcing?,
        probe_concurrency: probe_concurrency?,
        probe_successes: probe_successes?,
        ..d
    };
    Some(PolicyOutlier { istio, extras })
}

/// A status (`503`) or a range (`"500-599"`), within 100..=999.
fn status_range(cx: &mut Cx, node: &Node, path: &str) -> Option<(u16, u16)> {
    let bad = |cx: &mut Cx| {
        cx.error(
            node,
            path,
            format!(
                "expected an HTTP status (e.g. 503) or a range (e.g. \"500-599\") within 100..999, found {}",
                node.describe()
            ),
        );
        None
    };
    let Some(text) = node.as_scalar().filter(|_| !node.is_null()) else { return bad(cx) };
    let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|v| (100..=999).contains(v));
    let range = match text.split_once('-') {
        Some((lo, hi)) => parse(lo).zip(parse(hi)),
        None => parse(text).map(|v| (v, v)),
    };
    match range {
        Some((lo, hi)) if lo <= hi => Some((lo, hi)),
        _ => bad(cx),
    }
}

fn statuses(cx: &mut Cx, node: &Node, path: &str) -> Vec<(u16, u16)> {
    cx.list(node, path, "HTTP statuses or ranges")
        .into_iter()
        .filter_map(|(n, p)| status_range(cx, n, &p))
        .collect()
}

/// gRPC status names (`UNAVAILABLE`, any case) or numbers 1..=16.
fn grpc_codes(cx: &mut Cx, node: &Node, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, p) in cx.list(node, path, "gRPC status names") {
        let Some(text) = cx.name(n, &p) else { continue };
        let upper = text.trim().to_ascii_uppercase();
        let code = match upper.parse::<u8>() {
            Ok(c) => grpc::name(c).map(|_| c),
            Err(_) => (0..=16u8).find(|c| grpc::name(*c) == Some(upper.as_str())),
        };
        match code {
            Some(0) => cx.error(n, &p, "gRPC OK is a success and cannot be classified as a failure"),
            Some(c) => out.push(c),
            None => {
                let names: Vec<&str> = (1..=16u8).filter_map(grpc::name).collect();
                cx.error(
                    n,
                    &p,
                    format!("unknown gRPC status {}: expected one of {}", n.describe(), names.join(", ")),
                );
            }
        }
    }
    out
}

fn classification(cx: &mut Cx, node: &Node, path: &str) -> Option<Classification> {
    let f = cx.fields(node, path, &CLASSIFICATION)?;
    let d = Classification::default();
    let failures = f.value("failureStatuses").map(|(n, p)| statuses(cx, n, &p));
    let gateway = f.value("gatewayStatuses").map(|(n, p)| statuses(cx, n, &p));
    let grpc_failures = f.value("grpcFailures").map(|(n, p)| grpc_codes(cx, n, &p));
    let grpc_gateway = f.value("grpcGatewayErrors").map(|(n, p)| grpc_codes(cx, n, &p));
    let rate_limited_is_failure = match f.value("rateLimitedIsFailure") {
        Some((n, p)) => cx.bool(n, &p)?,
        None => false,
    };
    let mut flag = |name: &str| match f.value(name) {
        Some((n, p)) => cx.bool(n, &p),
        None => Some(true),
    };
    let (connect_failure, reset, timeout) =
        (flag("connectFailureIsFailure")?, flag("resetIsFailure")?, flag("timeoutIsFailure")?);
    let failure_statuses = failures.clone().unwrap_or(d.failure_statuses);
    let gateway_statuses = gateway.unwrap_or_else(|| match &failures {
        // Keep the default gateway statuses that are still failures.
        Some(fs) => {
            (502..=504).filter(|s| fs.iter().any(|(lo, hi)| (lo..=hi).contains(&s))).map(|s| (s, s)).collect()
        }
        None => d.gateway_statuses,
    });
    let grpc_failures_v = grpc_failures.clone().unwrap_or(d.grpc_failures);
    let grpc_gateway_errors = grpc_gateway.unwrap_or_else(|| match &grpc_failures {
        Some(fs) => d.grpc_gateway_errors.into_iter().filter(|c| fs.contains(c)).collect(),
        None => d.grpc_gateway_errors,
    });
    let mut classifier = Classifier::empty();
    for &(lo, hi) in &failure_statuses {
        classifier.add_failure_range(lo, hi);
    }
    for &(lo, hi) in &gateway_statuses {
        for s in lo..=hi {
            classifier.add_gateway_status(s);
        }
    }
    for &c in &grpc_failures_v {
        classifier.add_grpc_failure(c);
    }
    for &c in &grpc_gateway_errors {
        classifier.add_grpc_gateway(c);
    }
    classifier.rate_limited_is_failure = rate_limited_is_failure;
    classifier.connect_failure_is_failure = connect_failure;
    classifier.reset_is_failure = reset;
    classifier.timeout_is_failure = timeout;
    Some(Classification {
        failure_statuses,
        gateway_statuses,
        grpc_failures: grpc_failures_v,
        grpc_gateway_errors,
        rate_limited_is_failure,
        connect_failure,
        reset,
        timeout,
        classifier,
    })
}

fn retry_settings(cx: &mut Cx, node: &Node, path: &str) -> Option<PolicyRetries> {
    let f = cx.fields(node, path, &RETRIES)?;
    let d = PolicyRetries::default();
    let retry_non_idempotent = match f.value("retryNonIdempotent") {
        Some((n, p)) => cx.bool(n, &p),
        None => Some(d.retry_non_idempotent),
    };
    let (mut base, mut max) = (Some(d.backoff_base), Some(d.backoff_max));
    if let Some((n, p)) = f.value("backoff") {
        let bf = cx.fields(n, &p, &BACKOFF)?;
        base = duration(cx, &bf, "baseInterval", false, d.backoff_base);
        // Like Envoy: the cap defaults to 10 × the base.
        let default_max = base.map_or(d.backoff_max, |b| b.saturating_mul(10));
        max = duration(cx, &bf, "maxInterval", false, default_max);
        if let (Some(b), Some(m), Some((mn, mp))) = (base, max, bf.value("maxInterval")) {
            if m < b {
                cx.error(
                    mn,
                    &mp,
                    format!(
                        "maxInterval ({}) is shorter than baseInterval ({}): expected maxInterval >= baseInterval",
                        format_duration(m),
                        format_duration(b)
                    ),
                );
                return None;
            }
        }
    }
    let max_replay_bytes = match f.value("maxReplayBytes") {
        Some((n, p)) => cx.int(n, &p, 0, MAX_REPLAY_BYTES).map(|v| v as usize),
        None => Some(d.max_replay_bytes),
    };
    Some(PolicyRetries {
        retry_non_idempotent: retry_non_idempotent?,
        backoff_base: base?,
        backoff_max: max?,
        max_replay_bytes: max_replay_bytes?,
    })
}

// ---------------------------------------------------------------------------------------------
// Applying a policy

/// Writes the Istio fields that `od` sets into `cfg` (Istio semantics: a count of 0 disables
/// that detector).
pub fn apply_istio_outlier(cfg: &mut OutlierConfig, od: &OutlierDetection) {
    let count = |v: u32| (v > 0).then_some(v);
    if let Some(v) = od.consecutive_5xx_errors {
        cfg.consecutive_5xx_errors = count(v);
    }
    if let Some(v) = od.consecutive_gateway_errors {
        cfg.consecutive_gateway_errors = count(v);
    }
    if let Some(v) = od.consecutive_local_origin_failures {
        cfg.consecutive_local_origin_failures = count(v);
    }
    if let Some(v) = od.split_external_local_origin_errors {
        cfg.split_external_local_origin_errors = v;
    }
    if let Some(v) = od.interval {
        cfg.interval = v;
    }
    if let Some(v) = od.base_ejection_time {
        cfg.base_ejection_time = v;
    }
    if let Some(v) = &od.max_ejection_percent {
        cfg.max_ejection_percent = v.value;
    }
    if let Some(v) = od.min_health_percent {
        cfg.min_health_percent = v;
    }
}

/// The outlier detection of a cluster: on when the DestinationRule (top level or subset) or the
/// policy has `outlierDetection`. Precedence, lowest first: engine defaults, the policy's
/// fields, the DestinationRule's top level, its subset level (see the module docs).
pub fn effective_outlier(
    top: Option<&OutlierDetection>,
    subset: Option<&OutlierDetection>,
    policy: Option<&ResiliencePolicy>,
) -> Option<OutlierConfig> {
    let from_policy = policy.and_then(|p| p.outlier.as_ref());
    if top.is_none() && subset.is_none() && from_policy.is_none() {
        return None;
    }
    let mut cfg = from_policy.map(|o| o.extras.clone()).unwrap_or_default();
    for od in [from_policy.map(|o| &o.istio), top, subset].into_iter().flatten() {
        apply_istio_outlier(&mut cfg, od);
    }
    if let Some(p) = policy {
        cfg.classifier = p.classification.classifier.clone();
    }
    Some(cfg)
}

// ---------------------------------------------------------------------------------------------
// Dump: the effective policy, in the policy's own field names.

fn dur(d: Duration) -> Value {
    Value::String(format_duration(d))
}

fn breaker_json(b: &BreakerConfig) -> Value {
    json!({
        "mode": match b.mode { Mode::Enforcing => "ENFORCING", Mode::DryRun => "DRY_RUN" },
        "consecutiveFailures": b.consecutive_failures.unwrap_or(0),
        "failureRatio": b.failure_ratio.map_or(json!({"enabled": false}), |r| {
            json!({"threshold": r.ratio, "minimumRequests": r.min_requests})
        }),
        "slowCalls": b.slow_calls.map_or(json!({"enabled": false}), |s| {
            json!({"duration": dur(s.threshold), "threshold": s.ratio, "minimumRequests": s.min_requests})
        }),
        "window": dur(b.window),
        "windowBuckets": b.window_buckets,
        "openDuration": dur(b.open_duration),
        "openDurationMultiplier": b.open_multiplier,
        "maxOpenDuration": dur(b.max_open_duration),
        "openJitter": b.open_jitter,
        "halfOpen": {
            "maxProbes": b.probes,
            "successRatio": b.probe_success_ratio,
            "probeTimeout": dur(b.probe_timeout),
        },
    })
}

fn outlier_json(o: &PolicyOutlier) -> Value {
    let x = &o.extras;
    let mut v = serde_json::to_value(&o.istio).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.retain(|_, v| !v.is_null());
    }
    let extras = json!({
        "successRate": x.success_rate.map(|r| json!({
            "minimumHosts": r.minimum_hosts, "requestVolume": r.request_volume, "stdevFactor": r.stdev_factor,
        })),
        "failurePercentage": x.failure_percentage.map(|r| json!({
            "threshold": r.threshold, "minimumHosts": r.minimum_hosts, "requestVolume": r.request_volume,
        })),
        "latency": x.latency.map(|r| json!({
            "percentile": r.percentile, "factor": r.factor, "minimumHosts": r.minimum_hosts,
            "requestVolume": r.request_volume, "minimumLatency": dur(r.min_latency),
        })),
        "maxEjectionTime": dur(x.max_ejection_time),
        "maxEjectionTimeJitter": dur(x.max_ejection_time_jitter),
        "ejectionCapRounding": match x.cap_rounding {
            CapRounding::Floor => "FLOOR",
            CapRounding::Ceil => "CEIL",
            CapRounding::AtLeastOne => "AT_LEAST_ONE",
        },
        "enforcing": {
            "consecutive5xx": x.enforcing.consecutive_5xx,
            "consecutiveGateway": x.enforcing.consecutive_gateway,
            "consecutiveLocalOrigin": x.enforcing.consecutive_local_origin,
            "successRate": x.enforcing.success_rate,
            "failurePercentage": x.enforcing.failure_percentage,
            "latency": x.enforcing.latency,
        },
        "probe": {"concurrency": x.probe_concurrency, "successes": x.probe_successes},
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extras) {
        m.extend(e.into_iter().filter(|(_, v)| !v.is_null()));
    }
    v
}

fn ranges_json(r: &[(u16, u16)]) -> Value {
    r.iter().map(|&(lo, hi)| if lo == hi { json!(lo) } else { json!(format!("{lo}-{hi}")) }).collect()
}

fn grpc_json(codes: &[u8]) -> Value {
    codes.iter().map(|c| json!(grpc::name(*c).unwrap_or("UNKNOWN"))).collect()
}

impl ResiliencePolicy {
    /// The policy with every default applied, for `/config_dump`.
    pub fn to_json(&self) -> Value {
        let c = &self.classification;
        json!({
            "target": match &self.target {
                Target::Destination { host, subset } => {
                    json!({"host": host.value, "subset": subset.as_ref().map(|s| &s.value)})
                }
                Target::Route { virtual_service, route } => {
                    json!({"virtualService": virtual_service.value, "route": route.value.to_string()})
                }
            },
            "circuitBreaker": self.breaker.as_ref().map(breaker_json),
            "endpointCircuitBreaker": self.endpoint_breaker.as_ref().map(breaker_json),
            "outlierDetection": self.outlier.as_ref().map(outlier_json),
            "classification": {
                "failureStatuses": ranges_json(&c.failure_statuses),
                "gatewayStatuses": ranges_json(&c.gateway_statuses),
                "grpcFailures": grpc_json(&c.grpc_failures),
                "grpcGatewayErrors": grpc_json(&c.grpc_gateway_errors),
                "rateLimitedIsFailure": c.rate_limited_is_failure,
                "connectFailureIsFailure": c.connect_failure,
                "resetIsFailure": c.reset,
                "timeoutIsFailure": c.timeout,
            },
            "retries": self.retries.as_ref().map(|r| json!({
                "retryNonIdempotent": r.retry_non_idempotent,
                "backoff": {"baseInterval": dur(r.backoff_base), "maxInterval": dur(r.backoff_max)},
                "maxReplayBytes": r.max_replay_bytes,
            })),
            "rateLimit": self.rate_limit.as_ref().map(|r| serde_json::to_value(r).unwrap_or(Value::Null)),
            "fallback": self.fallback.as_ref().map(|f| json!({"on": f.on, "to": f.to})),
        })
    }
}

impl Serialize for ResiliencePolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}
