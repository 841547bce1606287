//! Linkerd's `ServiceProfile` (`linkerd.io/v1alpha2`): per-route timeouts, retries and failure
//! classes for one service, and a retry budget by rate.
//!
//! ```yaml
//! apiVersion: linkerd.io/v1alpha2
//! kind: ServiceProfile
//! metadata: {name: payments.default.svc.cluster.local, namespace: default}
//! spec:
//!   routes:
//!   - name: POST /charge
//!     condition: {method: POST, pathRegex: /charge}     # also all: [...], any: [...]
//!     responseClasses:
//!     - condition: {status: {min: 500, max: 599}}       # also all / any / not
//!       isFailure: true
//!     isRetryable: true
//!     timeout: 2s
//!   retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
//! ```
//!
//! How Tripline reads it, and where it departs from Linkerd (docs/configuration.md says the
//! same for users):
//!
//! - The profile's name is the host it applies to. Its routes become the mesh routes of that
//!   host, in order (first match wins), each sending to the host itself, followed by a route
//!   for every other request. A host that a VirtualService routes on the mesh takes its
//!   routes from the VirtualService: a profile with `routes` there is an error.
//! - `condition`: `method` (exact) and `pathRegex` (the whole path, RE2), all given fields
//!   together; `all` and `any` combine conditions. `not` is refused (Tripline's route matches
//!   cannot negate a path yet).
//! - `timeout` is the whole request's, retries included; Linkerd's default is 10 s.
//! - `responseClasses`: the first class whose condition holds decides whether a response is a
//!   failure; no class: 5xx. The statuses that fail are what an `isRetryable` route retries,
//!   and what counts against an endpoint for outlier detection and breakers. Tripline judges
//!   an upstream's health per host, not per route, so the routes' classes must agree.
//! - `isRetryable`: failed responses (and failed connections, resets and refused streams) are
//!   retried, whatever the method: the profile says the route may be retried. Linkerd has no
//!   count; Tripline stops at [`RETRYABLE_ATTEMPTS`] retries, and the budget usually first.
//!   A route that is not retryable, and the route for other requests, retry only what never
//!   reached the application (failed connections, refused streams).
//! - `retryBudget`: retries over the last `ttl` at most `retryRatio` × requests +
//!   `minRetriesPerSecond` × `ttl` ([`tripline_core::rate_budget`]), besides Tripline's own
//!   budget of retries in flight.
//! - Refused until implemented: `dstOverrides` (write a VirtualService with weights) and
//!   `opaquePorts`.

use std::time::Duration;

use serde::Serialize;

use crate::decode::{Cx, Schema};
use crate::model::{At, HttpRoute, Retries, RouteDestination};
use crate::plan::{RequestMatch, RetryOn, StringMatch};
use crate::yaml::{Node, Pos};

/// The API versions of Linkerd's ServiceProfile Tripline reads.
pub const API_VERSIONS: &[&str] = &["linkerd.io/v1alpha2"];

/// Retries of an `isRetryable` route, at most (Linkerd sets none: its budget alone decides).
pub const RETRYABLE_ATTEMPTS: u32 = 10;

/// Linkerd's timeout of a route that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A ServiceProfile, decoded: its routes as the mesh routes of its host, its budget, and the
/// statuses its response classes call failures.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceProfile {
    /// `metadata.name`: the host.
    pub host: String,
    /// Where the name is written.
    #[serde(skip)]
    pub host_pos: Pos,
    /// The profile's routes followed by the route for every other request; empty when the
    /// profile has no `routes` (then it does not route the host).
    pub routes: Vec<HttpRoute>,
    #[serde(rename = "retryBudget", skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// What fails, from the routes that have `responseClasses` (they agree), as inclusive
    /// ranges of HTTP statuses; `None`: no route has classes.
    #[serde(rename = "failureStatuses", skip_serializing_if = "Option::is_none")]
    pub failures: Option<At<Statuses>>,
}

/// HTTP statuses, as inclusive ranges in order.
pub type Statuses = Vec<(u16, u16)>;

/// `retryBudget`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryBudget {
    #[serde(rename = "retryRatio")]
    pub retry_ratio: f64,
    #[serde(rename = "minRetriesPerSecond")]
    pub min_retries_per_second: u32,
    #[serde(serialize_with = "crate::model::ser_duration")]
    pub ttl: Duration,
}

impl RetryBudget {
    pub fn config(&self) -> tripline_core::rate_budget::RateBudgetConfig {
        tripline_core::rate_budget::RateBudgetConfig {
            retry_ratio: self.retry_ratio,
            min_retries_per_second: self.min_retries_per_second,
            ttl: self.ttl,
        }
    }
}

const SPEC: Schema = Schema::new("Linkerd's ServiceProfile", &["routes", "retryBudget"]).refusing(&[
    ("dstOverrides", "split traffic with a VirtualService's route weights instead"),
    ("opaquePorts", "declare the port's protocol TCP in a ServiceEntry instead"),
]);
const ROUTE: Schema =
    Schema::new("Linkerd's RouteSpec", &["name", "condition", "responseClasses", "isRetryable", "timeout"]);
const REQUEST_MATCH: Schema = Schema::new("Linkerd's RequestMatch", &["method", "pathRegex", "all", "any"])
    .refusing(&[(
        "not",
        "Tripline's route matches cannot negate a path or method; list the requests the route takes instead",
    )]);
const RESPONSE_CLASS: Schema = Schema::new("Linkerd's ResponseClass", &["condition", "isFailure"]);
const RESPONSE_MATCH: Schema = Schema::new("Linkerd's ResponseMatch", &["status", "all", "any", "not"]);
const RANGE: Schema = Schema::new("Linkerd's Range", &["min", "max"]);
const BUDGET: Schema = Schema::new("Linkerd's RetryBudget", &["retryRatio", "minRetriesPerSecond", "ttl"]);

/// Decodes a ServiceProfile's `spec`; `host` is its name, written at `host_pos`.
pub fn service_profile(cx: &mut Cx, spec: &Node, host: &str, host_pos: Pos) -> Option<ServiceProfile> {
    let f = cx.fields(spec, "spec", &SPEC)?;
    let mut ok = !f.has("dstOverrides") && !f.has("opaquePorts");
    let retry_budget = match f.value("retryBudget") {
        Some((n, p)) => budget(cx, n, &p),
        None => None,
    };
    ok &= f.value("retryBudget").is_none() || retry_budget.is_some();
    let mut routes = Vec::new();
    let mut failures: Option<(At<Statuses>, String)> = None;
    if let Some((n, p)) = f.value("routes") {
        for (item, path) in cx.list(n, &p, "routes") {
            let Some((r, classes)) = route(cx, item, &path, host) else {
                ok = false;
                continue;
            };
            if let Some(classes) = classes {
                match &failures {
                    Some((first, name)) if first.value != classes.value => {
                        let msg = format!(
                            "these responseClasses fail statuses {} where route `{name}`'s fail {}: Tripline judges an upstream's health per host, not per route, so the routes' classes must agree",
                            ranges_text(&classes.value),
                            ranges_text(&first.value)
                        );
                        cx.report(crate::Severity::Error, classes.pos, &classes.path, msg);
                        ok = false;
                    }
                    Some(_) => {}
                    None => failures = Some((classes, r.name.clone().unwrap_or_default())),
                }
            }
            routes.push(r);
        }
        if !routes.is_empty() {
            routes.push(other_requests(host, n, &p));
        }
    }
    ok.then(|| ServiceProfile {
        host: host.to_string(),
        host_pos,
        routes,
        retry_budget,
        failures: failures.map(|(f, _)| f),
    })
}

fn budget(cx: &mut Cx, node: &Node, path: &str) -> Option<RetryBudget> {
    let f = cx.fields(node, path, &BUDGET)?;
    let d = tripline_core::rate_budget::RateBudgetConfig::default();
    let retry_ratio = match f.value("retryRatio") {
        Some((n, p)) => cx.float(n, &p, 0.0, 1000.0)?,
        None => d.retry_ratio,
    };
    let min_retries_per_second = match f.value("minRetriesPerSecond") {
        Some((n, p)) => cx.u32(n, &p, 0)?,
        None => d.min_retries_per_second,
    };
    let ttl = match f.value("ttl") {
        Some((n, p)) => {
            let ttl = cx.duration(n, &p, false)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
                cx.error(n, &p, "ttl is between 1s and 60s (Linkerd's range)");
                return None;
            }
            ttl
        }
        None => d.ttl,
    };
    Some(RetryBudget { retry_ratio, min_retries_per_second, ttl })
}

/// One route; with the statuses its classes call failures, if it has classes.
fn route(cx: &mut Cx, node: &Node, path: &str, host: &str) -> Option<(HttpRoute, Option<At<Statuses>>)> {
    let f = cx.fields(node, path, &ROUTE)?;
    let Some((name_node, name_path)) = f.value("name") else {
        cx.required(&f, "name", "the route's name (Linkerd's metrics and Tripline's route name)");
        return None;
    };
    let name = cx.string(name_node, &name_path)?;
    let Some((cond, cond_path)) = f.value("condition") else {
        cx.required(
            &f,
            "condition",
            "the requests the route takes, e.g. {method: GET, pathRegex: /users/[^/]*}",
        );
        return None;
    };
    let matches = request_condition(cx, cond, &cond_path)?;
    let retryable = match f.value("isRetryable") {
        Some((n, p)) => cx.bool(n, &p)?,
        None => false,
    };
    let timeout = match f.value("timeout") {
        Some((n, p)) => cx.duration(n, &p, false)?,
        None => DEFAULT_TIMEOUT,
    };
    let classes = match f.value("responseClasses") {
        Some((n, p)) => Some(At { value: response_classes(cx, n, &p)?, pos: n.pos, path: p.into() }),
        None => None,
    };
    let failing = classes.as_ref().map_or(&[(500, 599)][..], |c| &c.value[..]);
    let retries = if retryable { retry_failures(failing) } else { retry_unsent() };
    let route = HttpRoute {
        name: Some(name),
        matches,
        route: vec![to_host(host, node.pos, path)],
        timeout: Some(timeout),
        retries: Some(retries),
        fault: None,
        mirrors: Vec::new(),
        features: Default::default(),
        answers_itself: false,
        pos: node.pos,
        path: path.to_string(),
    };
    Some((route, classes))
}

/// The route for the requests no route of the profile takes: to the host, no timeout,
/// retrying only what never reached the application.
fn other_requests(host: &str, routes: &Node, path: &str) -> HttpRoute {
    HttpRoute {
        name: Some("other requests".into()),
        matches: Vec::new(),
        route: vec![to_host(host, routes.pos, path)],
        timeout: None,
        retries: Some(retry_unsent()),
        fault: None,
        mirrors: Vec::new(),
        features: Default::default(),
        answers_itself: false,
        pos: routes.pos,
        path: path.to_string(),
    }
}

fn to_host(host: &str, pos: Pos, path: &str) -> RouteDestination {
    RouteDestination {
        host: At { value: host.to_string(), pos, path: path.into() },
        subset: None,
        port: None,
        weight: None,
        headers: Default::default(),
        pos,
        path: path.to_string(),
    }
}

/// `isRetryable`: the failing statuses, failed connections, resets and refused streams, any
/// method.
fn retry_failures(failing: &[(u16, u16)]) -> Retries {
    let mut on = RetryOn { connect_failure: true, refused_stream: true, reset: true, ..RetryOn::default() };
    let mut codes = Vec::new();
    if failing == [(500, 599)] {
        on.server_error = true;
    } else {
        on.retriable_status_codes = true;
        codes = failing.iter().flat_map(|&(lo, hi)| lo..=hi).collect();
    }
    let statuses =
        if on.server_error { "5xx".to_string() } else { format!("statuses {}", ranges_text(failing)) };
    let words = [statuses.as_str(), "connect-failure", "refused-stream", "reset"];
    Retries {
        attempts: RETRYABLE_ATTEMPTS,
        per_try_timeout: None,
        retry_on: words.iter().map(|w| w.to_string()).collect(),
        conditions: Some((on, codes)),
        retry_ignore_previous_hosts: None,
        backoff: None,
        any_method: true,
    }
}

/// Not retryable: only what never reached the application.
fn retry_unsent() -> Retries {
    let on = RetryOn { connect_failure: true, refused_stream: true, ..RetryOn::default() };
    Retries {
        attempts: 2,
        per_try_timeout: None,
        retry_on: vec!["connect-failure".into(), "refused-stream".into()],
        conditions: Some((on, Vec::new())),
        retry_ignore_previous_hosts: None,
        backoff: None,
        any_method: false,
    }
}

/// The requests a condition takes, as match entries any of which selects the route.
fn request_condition(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<RequestMatch>> {
    let f = cx.fields(node, path, &REQUEST_MATCH)?;
    if f.has("not") {
        return None;
    }
    // Every field given must hold: start from "any request" and narrow.
    let mut entries = vec![RequestMatch::default()];
    let mut given = false;
    if let Some((n, p)) = f.value("method") {
        let method = cx.string(n, &p)?;
        entries = and(
            cx,
            entries,
            vec![RequestMatch { method: Some(StringMatch::Exact(method)), ..Default::default() }],
            n,
            &p,
        )?;
        given = true;
    }
    if let Some((n, p)) = f.value("pathRegex") {
        let text = cx.string(n, &p)?;
        let re = crate::model::whole_match_regex(cx, n, &p, &text)?;
        entries = and(
            cx,
            entries,
            vec![RequestMatch { uri: Some(StringMatch::Regex(re)), ..Default::default() }],
            n,
            &p,
        )?;
        given = true;
    }
    if let Some((n, p)) = f.value("all") {
        for (item, ip) in cx.list(n, &p, "conditions") {
            let each = request_condition(cx, item, &ip)?;
            entries = and(cx, entries, each, item, &ip)?;
        }
        given = true;
    }
    if let Some((n, p)) = f.value("any") {
        let mut either = Vec::new();
        for (item, ip) in cx.list(n, &p, "conditions") {
            either.extend(request_condition(cx, item, &ip)?);
        }
        entries = and(cx, entries, either, n, &p)?;
        given = true;
    }
    if !given {
        cx.error(
            node,
            path,
            "an empty condition: give `method`, `pathRegex`, `all` or `any` (Linkerd refuses it too)",
        );
        return None;
    }
    Some(entries)
}

/// Both conditions: every pair of their entries, merged; pairs that cannot both hold (two
/// methods) are dropped.
fn and(
    cx: &mut Cx,
    left: Vec<RequestMatch>,
    right: Vec<RequestMatch>,
    node: &Node,
    path: &str,
) -> Option<Vec<RequestMatch>> {
    let mut out = Vec::new();
    for l in &left {
        for r in &right {
            let method = match (&l.method, &r.method) {
                (Some(StringMatch::Exact(a)), Some(StringMatch::Exact(b))) if a != b => continue,
                (Some(m), _) | (None, Some(m)) => Some(m.clone()),
                (None, None) => None,
            };
            let uri = match (&l.uri, &r.uri) {
                (Some(_), Some(_)) => {
                    cx.error(node, path, "two `pathRegex` that must both hold: Tripline matches one per condition; write them as one regex");
                    return None;
                }
                (Some(u), None) | (None, Some(u)) => Some(u.clone()),
                (None, None) => None,
            };
            out.push(RequestMatch { method, uri, ..Default::default() });
        }
    }
    Some(out)
}

/// The statuses (100..=599) the classes call failures, as inclusive ranges: the first class
/// whose condition holds decides; none: 5xx.
fn response_classes(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<(u16, u16)>> {
    let mut classes = Vec::new();
    for (item, p) in cx.list(node, path, "response classes") {
        let f = cx.fields(item, &p, &RESPONSE_CLASS)?;
        let Some((cn, cp)) = f.value("condition") else {
            cx.required(&f, "condition", "the responses of the class, e.g. {status: {min: 500, max: 599}}");
            return None;
        };
        let cond = response_condition(cx, cn, &cp)?;
        let failure = match f.value("isFailure") {
            Some((n, p)) => cx.bool(n, &p)?,
            None => false,
        };
        classes.push((cond, failure));
    }
    let fails = |s: u16| classes.iter().find(|(c, _)| c.holds(s)).map_or(s >= 500, |(_, f)| *f);
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for s in (100..=599).filter(|&s| fails(s)) {
        match ranges.last_mut() {
            Some((_, hi)) if *hi + 1 == s => *hi = s,
            _ => ranges.push((s, s)),
        }
    }
    Some(ranges)
}

/// Linkerd's ResponseMatch, over the status alone.
enum ResponseCondition {
    Status(u16, u16),
    All(Vec<ResponseCondition>),
    Any(Vec<ResponseCondition>),
    Not(Box<ResponseCondition>),
}

impl ResponseCondition {
    fn holds(&self, s: u16) -> bool {
        match self {
            ResponseCondition::Status(lo, hi) => (*lo..=*hi).contains(&s),
            ResponseCondition::All(c) => c.iter().all(|c| c.holds(s)),
            ResponseCondition::Any(c) => c.iter().any(|c| c.holds(s)),
            ResponseCondition::Not(c) => !c.holds(s),
        }
    }
}

fn response_condition(cx: &mut Cx, node: &Node, path: &str) -> Option<ResponseCondition> {
    let f = cx.fields(node, path, &RESPONSE_MATCH)?;
    let mut all = Vec::new();
    if let Some((n, p)) = f.value("status") {
        let r = cx.fields(n, &p, &RANGE)?;
        let bound = |cx: &mut Cx, name: &str, default: u16| match r.value(name) {
            Some((bn, bp)) => cx.int(bn, &bp, 100, 599).map(|v| v as u16),
            None => Some(default),
        };
        let (lo, hi) = (bound(cx, "min", 100)?, bound(cx, "max", 599)?);
        if lo > hi {
            cx.error(n, &p, format!("min {lo} is above max {hi}"));
            return None;
        }
        all.push(ResponseCondition::Status(lo, hi));
    }
    if let Some((n, p)) = f.value("all") {
        let items = cx.list(n, &p, "conditions");
        let each: Option<Vec<_>> = items.into_iter().map(|(i, ip)| response_condition(cx, i, &ip)).collect();
        all.push(ResponseCondition::All(each?));
    }
    if let Some((n, p)) = f.value("any") {
        let items = cx.list(n, &p, "conditions");
        let each: Option<Vec<_>> = items.into_iter().map(|(i, ip)| response_condition(cx, i, &ip)).collect();
        all.push(ResponseCondition::Any(each?));
    }
    if let Some((n, p)) = f.value("not") {
        all.push(ResponseCondition::Not(Box::new(response_condition(cx, n, &p)?)));
    }
    if all.is_empty() {
        cx.error(
            node,
            path,
            "an empty condition: give `status`, `all`, `any` or `not` (Linkerd refuses it too)",
        );
        return None;
    }
    Some(ResponseCondition::All(all))
}

/// `500-599` or `500-502, 504-599`.
pub fn ranges_text(ranges: &[(u16, u16)]) -> String {
    if ranges.is_empty() {
        return "none".into();
    }
    let each: Vec<String> =
        ranges.iter().map(|(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }).collect();
    each.join(", ")
}
