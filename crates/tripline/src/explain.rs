//! `tripline validate --explain HOST`: what every route to HOST does, in plain words, and
//! where each value came from (a resource and field, or whose default it is), in the spirit
//! of `istioctl x describe`, for Tripline's resilience settings.
//!
//! The values are the compiled plan's, so what is explained is what runs; their origins are
//! [`Provenance`]'s, which gives none rather than a guess (then "origin unknown" is printed).
//! The explanation is one list of statements ([`Item`]s) per route and per cluster, written
//! out as text or as JSON from the same data, so the two never say different things.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tripline_config::authz::{
    Attribute, AuthzAction, AuthzPolicyPlan, AuthzRule, Constraint, StringMatch as AuthzString, Values,
};
use tripline_config::compile::host_match;
use tripline_config::decode::format_duration;
use tripline_config::explain::{ClusterOrigin, Origin, PolicyOrigin, Provenance, RouteOrigin, Whose};
use tripline_config::model::TrafficPolicy;
use tripline_config::peer_authn::MtlsMode;
use tripline_config::plan::{
    AbortWith, Answer, ClusterPlan, Discovery, Fraction, HashKey, HeaderOps, HeaderPlan, HostMatch,
    ListenerPlan, LoadBalancer, Plan, RedirectPlan, RedirectPort, RequestMatch, ResiliencePlan, RetryPlan,
    RoutePlan, StringMatch, TcpRoutePlan, UpstreamProtocol, WeightedCluster, UNLIMITED,
};
use tripline_config::policy::BREAKER_FIELDS;
use tripline_core::breaker::{BreakerConfig, Mode};
use tripline_core::classify::Classifier;
use tripline_core::outlier::{ejection_cap, CapRounding, OutlierConfig};

/// One statement: a topic, what it says, and where each of its values came from, each
/// optionally labelled with the field it is (`maxConnections`).
struct Item {
    topic: &'static str,
    says: String,
    from: Vec<(Option<String>, Origin)>,
}

impl Item {
    fn new(topic: &'static str, says: impl Into<String>) -> Item {
        Item { topic, says: says.into(), from: Vec::new() }
    }

    fn from(mut self, origin: Origin) -> Item {
        self.from.push((None, origin));
        self
    }

    fn with(mut self, what: impl Into<String>, origin: Origin) -> Item {
        self.from.push((Some(what.into()), origin));
        self
    }

    /// `topic: says (sources)`, the sources with one origin shared by several fields said once.
    fn text(&self) -> String {
        let mut groups: Vec<(Vec<&str>, &Origin)> = Vec::new();
        for (what, origin) in &self.from {
            match groups.iter_mut().find(|(_, o)| *o == origin) {
                Some((whats, _)) => whats.extend(what.as_deref()),
                None => groups.push((what.as_deref().into_iter().collect(), origin)),
            }
        }
        let sources: Vec<String> = groups
            .iter()
            .map(
                |(whats, o)| {
                    if whats.is_empty() {
                        o.to_string()
                    } else {
                        format!("{}: {o}", whats.join(", "))
                    }
                },
            )
            .collect();
        match sources.is_empty() {
            true => format!("{}: {}", self.topic, self.says),
            false => format!("{}: {} ({})", self.topic, self.says, sources.join("; ")),
        }
    }

    fn json(&self) -> Value {
        let from: Vec<Value> = self
            .from
            .iter()
            .map(|(what, origin)| {
                let mut v = serde_json::to_value(origin).unwrap_or(Value::Null);
                if let (Some(what), Value::Object(m)) = (what, &mut v) {
                    m.insert("what".into(), json!(what));
                }
                v
            })
            .collect();
        json!({"topic": self.topic, "says": self.says, "from": from})
    }
}

/// One route that serves the host or sends traffic to it, explained.
struct RouteView {
    listener: String,
    bind: SocketAddr,
    /// How the listener terminates TLS, one statement per Gateway server (none: plaintext).
    listener_tls: Vec<String>,
    virtual_host: Option<String>,
    /// Whether the route's virtual host serves the host (else it only sends traffic to it).
    serves: bool,
    name: String,
    protocol: &'static str,
    entry: Origin,
    items: Vec<Item>,
    clusters: Vec<(String, Vec<Item>)>,
}

/// What `--explain HOST` found: every route to the host, and the AuthorizationPolicies every
/// request meets before any route.
pub struct Explanation {
    host: String,
    routes: Vec<RouteView>,
    /// One statement per policy, in the order written.
    authorization: Vec<Item>,
    /// An enforced ALLOW policy applies: a request none of them takes is denied.
    allow_applies: bool,
}

/// Explains the routes of `plan` that serve `host` (the first virtual host of each listener
/// whose domains match it, as the router picks it) or send traffic to one of its clusters.
/// `Err` says that none does, and which hosts are served.
pub fn explain(plan: &Plan, prov: &Provenance, host: &str) -> Result<Explanation, String> {
    let host = authority_host(host);
    let mut routes = Vec::new();
    for l in &plan.listeners {
        let serving = l.virtual_hosts.iter().position(|vh| vh.domains.iter().any(|d| d.matches(&host)));
        for (i, vh) in l.virtual_hosts.iter().enumerate() {
            let domains = vh.domains.iter().map(domain).collect::<Vec<_>>().join(", ");
            for r in vh.routes.iter().filter(|r| serving == Some(i) || sends_to(plan, r, &host)) {
                let cx = RouteCx::new(plan, prov, r);
                routes.push(cx.view(l, domains.clone(), serving == Some(i)));
            }
        }
        // A `tls` route also serves the SNI names it takes.
        let takes = |t: &&TcpRoutePlan| t.sni_hosts.iter().any(|n| host_match(n).matches(&host));
        let tcp = l
            .tcp_routes
            .iter()
            .filter(|t| takes(t) || t.destinations.iter().any(|w| is_of(plan, w.cluster, &host)));
        routes.extend(tcp.map(|t| tcp_view(plan, prov, l, t)));
    }
    if routes.is_empty() {
        return Err(format!("no route serves host {host}; hosts served: {}", served(plan)));
    }
    Ok(Explanation {
        host,
        routes,
        authorization: plan.authorization.iter().map(authorization_item).collect(),
        allow_applies: plan.authorization.iter().any(|p| p.action == AuthzAction::Allow && !p.dry_run),
    })
}

/// A policy in plain words: what it does and when (see `tripline_config::authz`).
fn authorization_item(p: &AuthzPolicyPlan) -> Item {
    let (topic, does) = match p.action {
        AuthzAction::Deny => ("DENY", "denies"),
        AuthzAction::Allow => ("ALLOW", "allows"),
        AuthzAction::Audit => ("AUDIT", "names in the access log"),
    };
    let when = match p.rules.as_slice() {
        [] => "no request (it has no rules)".to_string(),
        rules => rules.iter().map(rule_says).collect::<Vec<_>>().join("; or "),
    };
    let dry = if p.dry_run { " (dry run: counted and logged, never enforced)" } else { "" };
    Item::new(topic, format!("{} {does} {when}{dry}", p.name))
}

fn rule_says(r: &AuthzRule) -> String {
    let clause = |cs: &Vec<Constraint>| cs.iter().map(constraint_says).collect::<Vec<_>>().join(" and ");
    let any_of = |list: &Vec<Vec<Constraint>>| {
        list.iter()
            .map(|cs| if cs.is_empty() { "any".to_string() } else { clause(cs) })
            .collect::<Vec<_>>()
            .join(", or ")
    };
    let mut parts = Vec::new();
    if !r.from.is_empty() {
        parts.push(format!("from {}", any_of(&r.from)));
    }
    if !r.to.is_empty() {
        parts.push(format!("to {}", any_of(&r.to)));
    }
    if !r.when.is_empty() {
        parts.push(format!("when {}", clause(&r.when)));
    }
    if parts.is_empty() {
        "every request".to_string()
    } else {
        format!("requests {}", parts.join(", "))
    }
}

fn constraint_says(c: &Constraint) -> String {
    let what = match &c.attribute {
        Attribute::Principal => "principal".to_string(),
        Attribute::Namespace => "namespace".to_string(),
        Attribute::ServiceAccount => "service account".to_string(),
        Attribute::RequestAuth => "request identity".to_string(),
        Attribute::Sni => "TLS server name".to_string(),
        Attribute::SourceIp => "peer address".to_string(),
        Attribute::RemoteIp => "client address".to_string(),
        Attribute::Port => "port".to_string(),
        Attribute::Host => "host".to_string(),
        Attribute::Method => "method".to_string(),
        Attribute::Path => "path".to_string(),
        Attribute::Header(name) => format!("header {name}"),
    };
    let values: Vec<String> = match &c.values {
        Values::Ips(l) => l.iter().map(|b| format!("{}/{}", b.addr, b.prefix)).collect(),
        Values::Ports(l) => l.iter().map(u16::to_string).collect(),
        Values::Strings(l) => l
            .iter()
            .map(|m| match m {
                AuthzString::Exact(s) => s.clone(),
                AuthzString::Prefix(p) => format!("{p}*"),
                AuthzString::Suffix(s) => format!("*{s}"),
                AuthzString::Present => "(any value)".to_string(),
            })
            .collect(),
    };
    // Peer identities and the SNI come from TLS (validate warns where no listener gives them);
    // a JWT's never do.
    let never = match c.attribute {
        Attribute::RequestAuth => " (no request has one: Tripline reads no JWT)",
        _ => "",
    };
    let verb = if c.negate { "not in" } else { "in" };
    format!("{what} {verb} [{}]{never}", values.join(", "))
}

/// The host of a `host[:port]` argument, lower-cased as the router compares it.
fn authority_host(arg: &str) -> String {
    let host = match arg.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => arg,
    };
    host.trim().to_ascii_lowercase()
}

fn domain(m: &HostMatch) -> String {
    match m {
        HostMatch::Any => "*".into(),
        HostMatch::Exact(h) => h.clone(),
        HostMatch::Suffix(s) => format!("*{s}"),
    }
}

/// Every domain a listener serves, for the message when none is the host asked about.
fn served(plan: &Plan) -> String {
    let mut all: Vec<String> = plan
        .listeners
        .iter()
        .flat_map(|l| &l.virtual_hosts)
        .flat_map(|vh| vh.domains.iter().map(domain))
        .collect();
    all.sort();
    all.dedup();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

fn is_of(plan: &Plan, cluster: usize, host: &str) -> bool {
    plan.clusters.get(cluster).is_some_and(|c| c.host.eq_ignore_ascii_case(host))
}

/// Whether a route sends requests, or copies of them, to a cluster of `host`.
fn sends_to(plan: &Plan, r: &RoutePlan, host: &str) -> bool {
    r.destinations.iter().any(|w| is_of(plan, w.cluster, host))
        || r.features.mirrors.iter().any(|m| is_of(plan, m.cluster, host))
}

impl Explanation {
    /// The text for a person: a header per listener and virtual host, then each route's
    /// statements, then each of its clusters'.
    pub fn text(&self) -> String {
        let mut out = format!("host {}\n", self.host);
        if !self.authorization.is_empty() {
            out.push_str("authorization, before any route (every request of this proxy; DENY first");
            out.push_str(if self.allow_applies {
                ", then a request no ALLOW policy takes is denied)\n"
            } else {
                ")\n"
            });
            for item in &self.authorization {
                out.push_str(&format!("  {}\n", item.text()));
            }
        }
        let mut last_header = String::new();
        for r in &self.routes {
            let header = header(r, &self.host);
            if header != last_header {
                out.push_str(&header);
                out.push('\n');
                for tls in &r.listener_tls {
                    out.push_str(&format!("  tls: {tls}\n"));
                }
                last_header = header;
            }
            out.push_str(&format!("  route {} ({})\n", r.name, r.entry));
            for item in &r.items {
                out.push_str(&format!("    {}\n", item.text()));
            }
            for (name, items) in &r.clusters {
                out.push_str(&format!("    cluster {name}\n"));
                for item in items {
                    out.push_str(&format!("      {}\n", item.text()));
                }
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let clusters: Vec<Value> = r
                    .clusters
                    .iter()
                    .map(|(name, items)| {
                        json!({"cluster": name, "items": items.iter().map(Item::json).collect::<Vec<_>>()})
                    })
                    .collect();
                json!({
                    "listener": r.listener,
                    "bind": r.bind.to_string(),
                    "listenerTls": r.listener_tls,
                    "virtualHost": r.virtual_host,
                    "servesHost": r.serves,
                    "route": r.name,
                    "protocol": r.protocol,
                    "from": r.entry,
                    "items": r.items.iter().map(Item::json).collect::<Vec<_>>(),
                    "clusters": clusters,
                })
            })
            .collect();
        let authorization: Vec<Value> = self.authorization.iter().map(Item::json).collect();
        json!({"host": self.host, "authorization": authorization, "routes": routes})
    }
}

fn header(r: &RouteView, host: &str) -> String {
    let place = format!("listener {} ({})", r.listener, r.bind);
    match (&r.virtual_host, r.serves) {
        (Some(vh), true) => format!("{place}, virtual host {vh}"),
        (Some(vh), false) => format!("{place}, virtual host {vh}: routes that send to {host}"),
        (None, _) => format!("{place}, {}", r.protocol),
    }
}

/// What one HTTP route is explained from.
struct RouteCx<'a> {
    plan: &'a Plan,
    prov: &'a Provenance,
    route: &'a RoutePlan,
    origin: Option<RouteOrigin<'a>>,
    /// The ResiliencePolicy that targets the route: `None` inside when it has none, `None`
    /// outside when it has one that could not be found.
    policy: Option<Option<PolicyOrigin<'a>>>,
}

impl<'a> RouteCx<'a> {
    fn new(plan: &'a Plan, prov: &'a Provenance, route: &'a RoutePlan) -> Self {
        let origin = prov.route(route);
        let policy = match (&route.policy, &origin) {
            (None, _) => Some(None),
            (Some(_), Some(o)) => prov.route_policy(route, o).map(Some),
            (Some(_), None) => None,
        };
        RouteCx { plan, prov, route, origin, policy }
    }

    /// `field` of the route's entry when written, else `whose` default.
    fn at(&self, field: &str, whose: Whose) -> Origin {
        self.origin.as_ref().map_or(Origin::UNKNOWN, |o| o.field_or(field, whose))
    }

    fn written(&self, field: &str) -> Option<Origin> {
        self.origin.as_ref().and_then(|o| o.field(field))
    }

    fn view(&self, l: &ListenerPlan, virtual_host: String, serves: bool) -> RouteView {
        let mut items = vec![self.matches()];
        items.extend(self.answer());
        items.push(self.fault());
        items.extend(destination_items(self.plan, &self.route.destinations, self.origin.as_ref()));
        items.extend(self.headers_and_rewrite());
        // A route that answers by itself sends nothing upstream: no timeout, retry or breaker
        // of its own applies.
        if self.route.features.answer.is_none() {
            items.push(self.timeout());
            items.extend(self.retries());
            items.push(self.route_breaker());
        }
        items.push(self.cors());
        items.push(self.rate_limit());
        items.extend(self.mirrors());
        items.push(self.fallback());
        let mut ids: Vec<usize> = self.route.destinations.iter().map(|w| w.cluster).collect();
        ids.extend(self.route.features.mirrors.iter().map(|m| m.cluster));
        RouteView {
            listener: l.name.clone(),
            bind: l.bind,
            listener_tls: listener_tls(l),
            virtual_host: Some(virtual_host),
            serves,
            name: self.route.name.clone(),
            protocol: "http",
            entry: self.origin.as_ref().map_or(Origin::UNKNOWN, RouteOrigin::entry),
            items,
            clusters: cluster_views(self.plan, self.prov, ids),
        }
    }

    fn matches(&self) -> Item {
        if self.route.matches.is_empty() {
            return Item::new("match", "every request (no `match`)");
        }
        let says: Vec<String> = self.route.matches.iter().map(match_says).collect();
        Item::new("match", says.join("; or ")).from(self.at("match", Whose::Istio))
    }

    fn answer(&self) -> Option<Item> {
        let (says, field) = match self.route.features.answer.as_ref()? {
            Answer::Redirect(r) => (redirect_says(r), "redirect"),
            Answer::Direct { status, body } => (
                format!("answers itself: HTTP {status} with a {}-byte body; no destination", body.len()),
                "directResponse",
            ),
        };
        Some(Item::new("answer", says).from(self.at(field, Whose::Istio)))
    }

    fn fault(&self) -> Item {
        let Some(fault) = &self.route.features.fault else { return Item::new("fault", "none") };
        let mut says = Vec::new();
        let mut item = Item::new("fault", "");
        if let Some(d) = &fault.delay {
            says.push(format!("delays {} of requests by {}", share(d.share), dur(d.fixed)));
            item = item.with("delay", self.at("fault.delay.fixedDelay", Whose::Istio));
            let percent =
                self.written("fault.delay.percentage").or_else(|| self.written("fault.delay.percent"));
            item = item.with("delay percentage", percent.unwrap_or(Origin::ISTIO));
        }
        if let Some((with, part)) = &fault.abort {
            let answer = match with {
                AbortWith::Http(s) => format!("HTTP {s}"),
                AbortWith::Grpc(c) => format!("gRPC status {c}"),
            };
            says.push(format!("aborts {} of requests with {answer}, before routing", share(*part)));
            let status = match with {
                AbortWith::Http(_) => "fault.abort.httpStatus",
                AbortWith::Grpc(_) => "fault.abort.grpcStatus",
            };
            item = item.with("abort", self.at(status, Whose::Istio));
            item = item.with("abort percentage", self.at("fault.abort.percentage", Whose::Istio));
        }
        item.says = says.join("; ");
        item
    }

    fn headers_and_rewrite(&self) -> Vec<Item> {
        let mut items = Vec::new();
        if !self.route.features.headers.is_empty() {
            let says = headers_says(&self.route.features.headers);
            items.push(Item::new("headers", says).from(self.at("headers", Whose::Istio)));
        }
        if let Some(r) = &self.route.features.rewrite {
            let mut says = Vec::new();
            says.extend(r.uri.as_ref().map(|u| format!("path rewritten to `{u}`")));
            says.extend(
                r.uri_regex.as_ref().map(|(re, with)| format!("path rewritten by s/{}/{with}/", re.as_str())),
            );
            says.extend(r.authority.as_ref().map(|a| format!("host rewritten to `{a}`")));
            items.push(Item::new("rewrite", says.join(", ")).from(self.at("rewrite", Whose::Istio)));
        }
        items
    }

    fn timeout(&self) -> Item {
        match (self.route.timeout, self.written("timeout")) {
            (Some(t), _) => {
                Item::new("timeout", format!("{} for the whole request, retries included", dur(t)))
                    .from(self.at("timeout", Whose::Istio))
            }
            (None, Some(written)) => Item::new("timeout", "none: 0s turns it off").from(written),
            (None, None) => Item::new("timeout", "none: a request may take as long as the upstream takes")
                .from(Origin::ISTIO),
        }
    }

    fn retries(&self) -> Vec<Item> {
        let retry = &self.route.retry;
        let attempts = self.at("retries.attempts", Whose::Istio);
        if retry.attempts == 0 {
            return vec![Item::new("retries", "none (attempts 0)").with("attempts", attempts)];
        }
        let per_try = match retry.per_try_timeout {
            Some(t) => format!("each try times out after {}", dur(t)),
            None => "no per-try timeout".into(),
        };
        let plural = if retry.attempts == 1 { "retry" } else { "retries" };
        let says = format!("up to {} {plural}, on {}; {per_try}", retry.attempts, retry_on(retry));
        let retries = Item::new("retries", says)
            .with("attempts", attempts)
            .with("retryOn", self.at("retries.retryOn", Whose::Istio))
            .with("perTryTimeout", self.at("retries.perTryTimeout", Whose::Istio));
        let mut items = vec![retries, self.backoff(), self.replay()];
        items.extend(self.budgets());
        items
    }

    fn backoff(&self) -> Item {
        let r = &self.route.retry;
        // Full jitter: a uniform draw below a bound that doubles (`tripline_core::backoff`).
        let says = format!(
            "a random wait of up to {} before the first retry, the bound doubling at each retry up to {}",
            dur(r.backoff_base),
            dur(r.backoff_max.max(r.backoff_base))
        );
        let mut item = Item::new("retry backoff", says);
        let base = match self.written("retries.backoff") {
            Some(o) => vec![o],
            None => self.policy_retries("backoff.baseInterval"),
        };
        for o in base {
            item = item.with("baseInterval", o);
        }
        for o in self.policy_retries("backoff.maxInterval") {
            item = item.with("maxInterval", o);
        }
        item
    }

    fn replay(&self) -> Item {
        let r = &self.route.retry;
        let methods = if r.retry_non_idempotent {
            "any request is retried, POST and PATCH included"
        } else {
            "a POST, PATCH or other non-idempotent request is retried only if it never reached the upstream"
        };
        let says = format!("{methods}; a body over {} is not retried", bytes(r.max_replay_bytes));
        let mut item = Item::new("retried requests", says);
        for o in self.policy_retries("retryNonIdempotent") {
            item = item.with("retryNonIdempotent", o);
        }
        for o in self.policy_retries("maxReplayBytes") {
            item = item.with("maxReplayBytes", o);
        }
        item
    }

    /// Where a ResiliencePolicy `retries` setting of the route came from, as the compiler
    /// takes it: the route's own policy's, else each destination's policy's (the most
    /// cautious of them applies), else Tripline's default.
    fn policy_retries(&self, field: &str) -> Vec<Origin> {
        let path = format!("spec.retries.{field}");
        let own = match self.policy {
            None => return vec![Origin::UNKNOWN],
            Some(p) => p.filter(|p| p.policy().retries.is_some()),
        };
        if let Some(p) = own {
            return vec![p.field(&path)];
        }
        let mut out: Vec<Origin> = Vec::new();
        for w in &self.route.destinations {
            let origin = match self.plan.clusters.get(w.cluster).and_then(|c| self.prov.cluster(c)) {
                None => Origin::UNKNOWN,
                Some(c) => c
                    .policy()
                    .filter(|p| p.policy().retries.is_some())
                    .map_or(Origin::TRIPLINE, |p| p.field(&path)),
            };
            if !out.contains(&origin) {
                out.push(origin);
            }
        }
        if out.is_empty() {
            out.push(Origin::TRIPLINE);
        }
        out
    }

    /// The retry budget of each destination cluster (it is the cluster's, shared by every
    /// route to it).
    fn budgets(&self) -> Vec<Item> {
        let mut seen = Vec::new();
        let mut items = Vec::new();
        for w in &self.route.destinations {
            let Some(c) = self.plan.clusters.get(w.cluster).filter(|_| !seen.contains(&w.cluster)) else {
                continue;
            };
            seen.push(w.cluster);
            items.push(budget_item(c, self.prov.cluster(c).as_ref()));
        }
        items
    }

    fn route_breaker(&self) -> Item {
        let topic = "route circuit breaker";
        match (&self.route.breaker, self.policy) {
            (Some(b), policy) => breaker_item(topic, b, policy.flatten(), "spec.circuitBreaker"),
            (None, Some(Some(p))) => {
                Item::new(topic, format!("none ({} has no circuitBreaker)", p.resource()))
            }
            (None, _) => Item::new(topic, "none (no ResiliencePolicy targets this route)"),
        }
    }

    /// A section of the route's ResiliencePolicy, or why there is none.
    fn policy_item(&self, topic: &'static str, says: Option<String>, section: &str, field: &str) -> Item {
        match (says, self.policy) {
            (Some(says), policy) => {
                let origin = policy.flatten().map_or(Origin::UNKNOWN, |p| p.section(section));
                Item::new(topic, says).from(origin)
            }
            (None, Some(Some(p))) => Item::new(topic, format!("none ({} has no {field})", p.resource())),
            (None, _) => Item::new(topic, "none (no ResiliencePolicy targets this route)"),
        }
    }

    fn rate_limit(&self) -> Item {
        let says = self.route.features.rate_limit.as_ref().map(rate_limit_says);
        self.policy_item("rate limits", says, "spec.rateLimit", "rateLimit")
    }

    fn fallback(&self) -> Item {
        let says = self.route.features.fallback.as_ref().map(|f| fallback_says(self.plan, f));
        self.policy_item("fallback", says, "spec.fallback", "fallback")
    }

    fn cors(&self) -> Item {
        let Some(c) = &self.route.features.cors else { return Item::new("cors", "none") };
        let origins: Vec<String> = c.allow_origins.iter().map(|m| string_says(m, "is anything")).collect();
        let methods =
            if c.allow_methods.is_empty() { "none listed".to_string() } else { c.allow_methods.join(", ") };
        let other =
            if c.forward_unmatched_preflights { "forwarded" } else { "answered without CORS headers" };
        let says = format!(
            "answers preflights itself when the origin {} (methods {methods}), and adds CORS headers to those origins' responses; other origins' preflights are {other}",
            origins.join(" or "),
        );
        Item::new("cors", says).from(self.at("corsPolicy", Whose::Istio))
    }

    fn mirrors(&self) -> Vec<Item> {
        let mirrors = &self.route.features.mirrors;
        if mirrors.is_empty() {
            return vec![Item::new("mirrors", "none")];
        }
        let single = self.written("mirror").is_some();
        let percent_fields = ["mirrorPercentage", "mirrorPercent", "mirror_percent"];
        mirrors
            .iter()
            .enumerate()
            .map(|(k, m)| {
                let name = self.plan.clusters.get(m.cluster).map_or("?", |c| c.name.as_str());
                let says =
                    format!("copies {} of requests to {name}, and discards the answers", share(m.share));
                // `mirror` with its `mirrorPercentage` beside it, or `mirrors[k]` with its own.
                let (at, percent) = match single {
                    true => ("mirror".to_string(), percent_fields.iter().find(|f| self.written(f).is_some())),
                    false => (format!("mirrors[{k}]"), None),
                };
                let percent = percent.map_or_else(|| format!("{at}.percentage"), |f| f.to_string());
                Item::new("mirror", says)
                    .with("destination", self.at(&at, Whose::Istio))
                    .with("percentage", self.at(&percent, Whose::Istio))
            })
            .collect()
    }
}

/// A TCP listener's route to a cluster of the host.
fn tcp_view(plan: &Plan, prov: &Provenance, l: &ListenerPlan, t: &TcpRoutePlan) -> RouteView {
    let origin = prov.tcp_route(t);
    let mut items = destination_items(plan, &t.destinations, origin.as_ref());
    if !t.sni_hosts.is_empty() {
        let says = format!("takes connections whose TLS SNI is {}", t.sni_hosts.join(" or "));
        let at = origin.as_ref().map_or(Origin::UNKNOWN, |o| o.field_or("match", Whose::Istio));
        items.insert(0, Item::new("sni", says).with("match", at));
    }
    RouteView {
        listener: l.name.clone(),
        bind: l.bind,
        listener_tls: listener_tls(l),
        virtual_host: None,
        serves: false,
        name: t.name.clone(),
        protocol: if t.sni_hosts.is_empty() { "tcp" } else { "tls" },
        entry: origin.as_ref().map_or(Origin::UNKNOWN, RouteOrigin::entry),
        items,
        clusters: cluster_views(plan, prov, t.destinations.iter().map(|w| w.cluster).collect()),
    }
}

/// Each destination's share of the requests and its cluster.
fn destination_items(plan: &Plan, dests: &[WeightedCluster], origin: Option<&RouteOrigin<'_>>) -> Vec<Item> {
    let at = |field: &str, whose| origin.map_or(Origin::UNKNOWN, |o| o.field_or(field, whose));
    dests
        .iter()
        .enumerate()
        .map(|(j, w)| {
            let name = plan.clusters.get(w.cluster).map_or("?", |c| c.name.as_str());
            let mut says = format!("{}% -> {name}", w.weight);
            if !w.headers.is_empty() {
                says.push_str(&format!(", {}", headers_says(&w.headers)));
            }
            // A lone destination takes every request, whatever its weight says (Istio).
            let weight = if dests.len() == 1 {
                Origin::ISTIO
            } else {
                at(&format!("route[{j}].weight"), Whose::Istio)
            };
            Item::new("destination", says)
                .with("destination", at(&format!("route[{j}].destination"), Whose::Istio))
                .with("weight", weight)
        })
        .collect()
}

/// Each cluster once, in the order the route names them.
fn cluster_views(plan: &Plan, prov: &Provenance, mut ids: Vec<usize>) -> Vec<(String, Vec<Item>)> {
    let mut seen = Vec::new();
    ids.retain(|id| {
        !seen.contains(id) && {
            seen.push(*id);
            true
        }
    });
    ids.iter()
        .filter_map(|&id| plan.clusters.get(id))
        .map(|c| (c.name.clone(), cluster_items(c, prov)))
        .collect()
}

/// A listener's TLS, one statement per Gateway server; `httpsRedirect` as one.
fn listener_tls(l: &ListenerPlan) -> Vec<String> {
    let mut out: Vec<String> = l.tls.iter().map(tripline_config::tls::server_says).collect();
    if l.https_redirect {
        out.push("every request is redirected to https (`tls.httpsRedirect`), before any route".into());
    }
    if l.passthrough {
        out.push("PASSTHROUGH: TLS is not terminated; the SNI picks a `tls` route, and the bytes go through still encrypted".into());
    }
    if let Some(m) = &l.mtls {
        let by = m.by.as_ref().map_or_else(
            || "no PeerAuthentication applies: Istio's default".into(),
            |p| format!("PeerAuthentication {p}"),
        );
        let does = match m.mode {
            MtlsMode::Strict => "mesh callers only: mutual TLS with a certificate of the workload's trust domain; plaintext connections are closed",
            MtlsMode::Permissive if l.plaintext_too => "mutual TLS (a connection beginning with a TLS handshake) or plaintext",
            MtlsMode::Permissive => "plaintext only: without --identity-dir there is no certificate to accept mutual TLS with",
            MtlsMode::Disable | MtlsMode::Unset => "plaintext only",
        };
        out.push(format!("inbound mTLS {} ({by}): {does}", m.mode.name()));
    }
    out
}

fn tls_item(c: &ClusterPlan, o: Option<&ClusterOrigin<'_>>) -> Item {
    let says = c.tls.as_ref().map_or_else(|| "plaintext".to_string(), tripline_config::tls::upstream_says);
    Item::new("tls", says).from(o.map_or(Origin::UNKNOWN, ClusterOrigin::tls))
}

fn cluster_items(c: &ClusterPlan, prov: &Provenance) -> Vec<Item> {
    let origin = prov.cluster(c);
    let o = origin.as_ref();
    let mut items = vec![endpoints_item(c, o), balancing_item(c, o), connections_item(c, o), tls_item(c, o)];
    if c.protocol != UpstreamProtocol::Tcp {
        items.push(requests_item(c, o));
    }
    let r = &c.resilience;
    items.push(cluster_breaker(r.breaker.as_ref(), r, o, ("circuit breaker", "circuitBreaker")));
    let endpoint = ("endpoint circuit breaker", "endpointCircuitBreaker");
    items.push(cluster_breaker(r.endpoint_breaker.as_ref(), r, o, endpoint));
    items.extend(outlier_items(c, o));
    items
}

/// A `trafficPolicy` field's origin for a cluster, or unknown without its origins.
fn traffic(
    o: Option<&ClusterOrigin<'_>>,
    field: &str,
    set: impl Fn(&TrafficPolicy) -> bool,
    whose: Whose,
) -> Origin {
    o.map_or(Origin::UNKNOWN, |o| o.traffic(field, set, whose))
}

fn endpoints_item(c: &ClusterPlan, o: Option<&ClusterOrigin<'_>>) -> Item {
    let mut says = match &c.discovery {
        Discovery::Static(eps) => format!("{} static endpoint{}", eps.len(), plural(eps.len())),
        Discovery::Dns { targets, .. } => {
            let names: Vec<String> = targets.iter().map(|t| format!("{}:{}", t.hostname, t.port)).collect();
            format!("the addresses DNS gives for {}", names.join(", "))
        }
    };
    let mut item = Item::new("endpoints", "").from(o.map_or(Origin::UNKNOWN, ClusterOrigin::endpoints));
    if let Some(s) = &c.subset {
        says.push_str(&format!(", those labelled as subset {s}"));
        item = item.with("subset", o.and_then(ClusterOrigin::subset_labels).unwrap_or(Origin::UNKNOWN));
    }
    item.says = says;
    item
}

fn balancing_item(c: &ClusterPlan, o: Option<&ClusterOrigin<'_>>) -> Item {
    let key = |k: &HashKey| match k {
        HashKey::Header(h) => format!("header {h}"),
        HashKey::Cookie { name, .. } => format!("cookie {name}"),
        HashKey::SourceIp => "the client's address".into(),
        HashKey::QueryParameter(q) => format!("query parameter {q}"),
    };
    let says = match &c.load_balancer {
        LoadBalancer::RoundRobin => "round robin".into(),
        LoadBalancer::LeastRequest => "least request: the less busy of two endpoints drawn at random".into(),
        LoadBalancer::Random => "random".into(),
        LoadBalancer::RingHash { key: k, .. } => format!("consistent hash of {} (ring hash)", key(k)),
        LoadBalancer::Maglev { key: k, .. } => format!("consistent hash of {} (Maglev)", key(k)),
    };
    Item::new("load balancing", says).from(traffic(
        o,
        "loadBalancer",
        |p| p.load_balancer.is_some(),
        Whose::Istio,
    ))
}

fn limit(n: u32, what: &str) -> String {
    if n == UNLIMITED {
        format!("no limit on {what}")
    } else {
        format!("at most {n} {what}")
    }
}

/// The connection limits; an idle timeout only for HTTP clusters, whose connections are
/// pooled (a TCP route's connection lives as long as its client's).
fn connections_item(c: &ClusterPlan, o: Option<&ClusterOrigin<'_>>) -> Item {
    let p = &c.pool;
    let mut says = format!(
        "{}, each connected within {}",
        limit(p.max_connections, "connections"),
        dur(p.connect_timeout)
    );
    let max = |t: &TrafficPolicy| t.connection_pool.max_connections.is_some();
    let connect = |t: &TrafficPolicy| t.connection_pool.connect_timeout.is_some();
    let item = Item::new("connections", "")
        .with("maxConnections", traffic(o, "connectionPool.tcp.maxConnections", max, Whose::Istio))
        .with("connectTimeout", traffic(o, "connectionPool.tcp.connectTimeout", connect, Whose::Istio));
    if c.protocol == UpstreamProtocol::Tcp {
        return Item { says, ..item };
    }
    says.push_str(&format!(", closed after {} idle", dur(p.idle_timeout)));
    let idle = |t: &TrafficPolicy| t.connection_pool.idle_timeout.is_some();
    Item {
        says,
        ..item.with("idleTimeout", traffic(o, "connectionPool.http.idleTimeout", idle, Whose::Istio))
    }
}

fn requests_item(c: &ClusterPlan, o: Option<&ClusterOrigin<'_>>) -> Item {
    let p = &c.pool;
    let per_connection = match p.max_requests_per_connection {
        Some(n) => format!("a connection is closed after {n} requests"),
        None => "no limit on requests per connection".into(),
    };
    let says = format!(
        "{}, {}; {per_connection}",
        limit(p.max_pending_requests, "requests waiting for a connection"),
        limit(p.max_requests, "requests in flight")
    );
    let pending = |t: &TrafficPolicy| t.connection_pool.http1_max_pending_requests.is_some();
    let in_flight = |t: &TrafficPolicy| t.connection_pool.http2_max_requests.is_some();
    let per_connection = |t: &TrafficPolicy| t.connection_pool.max_requests_per_connection.is_some();
    Item::new("requests", says)
        .with(
            "http1MaxPendingRequests",
            traffic(o, "connectionPool.http.http1MaxPendingRequests", pending, Whose::Istio),
        )
        .with("http2MaxRequests", traffic(o, "connectionPool.http.http2MaxRequests", in_flight, Whose::Istio))
        .with(
            "maxRequestsPerConnection",
            traffic(o, "connectionPool.http.maxRequestsPerConnection", per_connection, Whose::Istio),
        )
}

/// A cluster's retry budget: retries in flight as a share of its active requests, with a
/// floor, capped by `maxRetries` (see `tripline_core::budget`).
fn budget_item(c: &ClusterPlan, o: Option<&ClusterOrigin<'_>>) -> Item {
    let b = &c.resilience.retry_budget;
    let share = format!("retries in flight to {} at most {}% of its active requests", c.name, b.percent);
    let floor = b.min_retry_concurrency;
    // `min(maxRetries, max(floor, percent × active))` (`tripline_core::budget`).
    let says = match b.max_retries {
        UNLIMITED => format!("{share}, always at least {floor}"),
        max if max < floor => format!("{share} and never more than {max}: maxRetries is below the floor of {floor} the budget would always allow"),
        max => format!("{share}, always at least {floor} and never more than {max}"),
    };
    let says = match &b.rate {
        Some(r) => format!(
            "{says}; and, by the ServiceProfile's retryBudget, over any {}: at most {} retries per request plus {} per second",
            format_duration(r.ttl),
            r.retry_ratio,
            r.min_retries_per_second
        ),
        None => says,
    };
    let percent = |t: &TrafficPolicy| t.retry_budget.percent.is_some();
    let floor = |t: &TrafficPolicy| t.retry_budget.min_retry_concurrency.is_some();
    let max = |t: &TrafficPolicy| t.connection_pool.max_retries.is_some();
    Item::new("retry budget", says)
        .with("percent", traffic(o, "retryBudget.percent", percent, Whose::Tripline))
        .with("minRetryConcurrency", traffic(o, "retryBudget.minRetryConcurrency", floor, Whose::Tripline))
        .with("maxRetries", traffic(o, "connectionPool.http.maxRetries", max, Whose::Istio))
}

/// One of a cluster's breakers, `(topic, field)` naming it and its ResiliencePolicy section.
fn cluster_breaker(
    breaker: Option<&BreakerConfig>,
    r: &ResiliencePlan,
    o: Option<&ClusterOrigin<'_>>,
    (topic, field): (&'static str, &str),
) -> Item {
    let policy = o.and_then(ClusterOrigin::policy);
    match (breaker, policy) {
        (Some(b), p) if o.is_some() => breaker_item(topic, b, p, &format!("spec.{field}")),
        (Some(b), _) => Item::new(topic, breaker_says(b)).from(Origin::UNKNOWN),
        (None, Some(p)) => Item::new(topic, format!("none ({} has no {field})", p.resource())),
        (None, None) if r.policy.is_none() => {
            Item::new(topic, "none (no ResiliencePolicy targets this host)")
        }
        (None, None) => Item::new(topic, "none"),
    }
}

/// A route's rate limit in plain words.
fn rate_limit_says(r: &tripline_config::rate_limit::RateLimitPlan) -> String {
    use tripline_config::rate_limit::{DescriptorKey, TokenBucket};
    let bucket = |b: &TokenBucket| {
        format!("{} per {} (bursts of {})", b.tokens_per_fill, dur(b.fill_interval), b.max_tokens)
    };
    let mut parts = Vec::new();
    if let Some(b) = &r.bucket {
        parts.push(format!("the route admits {}", bucket(b)));
    }
    for d in &r.descriptors {
        let key = match &d.key {
            DescriptorKey::Header(h) => format!("each value of header {h}"),
            DescriptorKey::RemoteAddress => "each client address".to_string(),
            DescriptorKey::PathPrefix(p) => format!("paths under {p}"),
        };
        parts.push(format!("{key} {}", bucket(&d.bucket)));
    }
    let then = if r.shadow {
        "over it, requests are counted and let through (shadow)"
    } else {
        "over it: 429 rate-limited with Retry-After"
    };
    format!("{}; {then}", parts.join("; "))
}

/// A route's fallback in plain words.
fn fallback_says(plan: &Plan, f: &tripline_config::fallback::FallbackPlan) -> String {
    use tripline_config::fallback::FallbackTo;
    let mut on = Vec::new();
    on.extend(f.on.breaker_open.then_some("a breaker is open"));
    on.extend(f.on.no_healthy_upstream.then_some("no endpoint is healthy"));
    on.extend(f.on.overflow.then_some("the pool is full"));
    let to = match &f.to {
        FallbackTo::Destination(id) => {
            format!("sends the request to {}", plan.clusters.get(*id).map_or("?", |c| c.name.as_str()))
        }
        FallbackTo::Response { status, body, .. } => {
            format!("answers HTTP {status} with a {}-byte body", body.len())
        }
    };
    format!("when {}, {to} (x-tripline-reason: fallback-<cause>)", on.join(" or "))
}

fn breaker_item(
    topic: &'static str,
    b: &BreakerConfig,
    policy: Option<PolicyOrigin<'_>>,
    section: &str,
) -> Item {
    let item = Item::new(topic, breaker_says(b));
    let Some(p) = policy else { return item.from(Origin::UNKNOWN) };
    let written = p.written(section, BREAKER_FIELDS);
    let (here, rest) = match written.is_empty() {
        true => ("on".to_string(), "every setting"),
        false => (written.join(", "), "the rest"),
    };
    let item = item.with(here, p.section(section));
    let item = if written.len() < BREAKER_FIELDS.len() { item.with(rest, Origin::TRIPLINE) } else { item };
    item.with("what fails", p.field("spec.classification"))
}

/// A breaker in plain words: what opens it, how long it stays open, how it closes again
/// (see `tripline_core::breaker`).
fn breaker_says(b: &BreakerConfig) -> String {
    let window = dur(b.window);
    let mut opens = Vec::new();
    opens
        .extend(b.consecutive_failures.filter(|n| *n > 0).map(|n| format!("after {n} consecutive failures")));
    opens.extend(b.failure_ratio.map(|r| {
        format!("when {} of at least {} requests over {window} fail", ratio(r.ratio), r.min_requests)
    }));
    opens.extend(b.slow_calls.map(|s| {
        let slow = dur(s.threshold);
        format!(
            "when {} of at least {} requests over {window} take {slow} or more",
            ratio(s.ratio),
            s.min_requests
        )
    }));
    let opens = if opens.is_empty() {
        "never opens (no rule is on)".into()
    } else {
        format!("opens {}", opens.join(", or "))
    };
    let mut open = format!("stays open {}", dur(b.open_duration));
    if b.open_multiplier > 1.0 {
        open.push_str(&format!(
            ", ×{} at each re-opening up to {}",
            b.open_multiplier,
            dur(b.max_open_duration)
        ));
    }
    if b.open_jitter > 0.0 {
        open.push_str(&format!(", ±{}", ratio(b.open_jitter)));
    }
    let (probes, need) = b.probe_plan();
    let close = format!(
        "then lets {probes} probe request{} through and closes once {need} succeed (a probe fails after {})",
        plural(probes as usize),
        dur(b.probe_timeout)
    );
    let dry = if b.mode == Mode::DryRun { "dry run, never refuses a request: " } else { "" };
    format!("{dry}{opens}; {open}; {close}")
}

fn outlier_items(c: &ClusterPlan, o: Option<&ClusterOrigin<'_>>) -> Vec<Item> {
    let Some(cfg) = &c.resilience.outlier else {
        let says = "off (no outlierDetection for this host in a DestinationRule or ResiliencePolicy)";
        return vec![Item::new("outlier detection", says)];
    };
    let at = |field: &str| o.map_or(Origin::UNKNOWN, |o| o.outlier(field));
    let mut items = detector_items(cfg, o, &at);
    items.push(Item::new("outlier interval", interval_says(cfg)).with("interval", at("interval")));
    items.push(
        Item::new("ejection cap", cap_says(&c.discovery, cfg.max_ejection_percent, cfg.cap_rounding))
            .with("maxEjectionPercent", at("maxEjectionPercent"))
            .with("ejectionCapRounding", at("ejectionCapRounding")),
    );
    items.push(ejection_time(cfg, &at));
    let probes = format!(
        "when its time is up, the endpoint gets {} request{} at a time; {} success{} it back, a failure ejects it again for longer",
        cfg.probe_concurrency,
        plural(cfg.probe_concurrency as usize),
        cfg.probe_successes,
        if cfg.probe_successes == 1 { " brings" } else { "es bring" }
    );
    items.push(
        Item::new("after ejection", probes)
            .with("probe.concurrency", at("probe.concurrency"))
            .with("probe.successes", at("probe.successes")),
    );
    let panic = match cfg.min_health_percent {
        0 => "off: requests only go to endpoints that are not ejected".to_string(),
        p => format!(
            "when fewer than {p}% of the endpoints are healthy, requests go to all of them, ejected or not"
        ),
    };
    items.push(Item::new("panic mode", panic).with("minHealthPercent", at("minHealthPercent")));
    items
}

/// What counts as a failure for the consecutive-failure detectors.
fn failures(cfg: &OutlierConfig) -> String {
    let c = &cfg.classifier;
    let mut what = vec![if *c == Classifier::default() {
        "5xx responses, failed gRPC calls"
    } else {
        "the responses its classification counts as failures"
    }
    .to_string()];
    if !cfg.split_external_local_origin_errors {
        let local = [
            (c.connect_failure_is_failure, "connect failures"),
            (c.reset_is_failure, "resets"),
            (c.timeout_is_failure, "timeouts"),
        ];
        what.extend(local.iter().filter(|(on, _)| *on).map(|(_, w)| w.to_string()));
    }
    what.join(", ")
}

fn enforced(percent: u32) -> String {
    if percent >= 100 {
        String::new()
    } else {
        format!(", enforced on {percent}% of detections")
    }
}

fn detector_items(
    cfg: &OutlierConfig,
    o: Option<&ClusterOrigin<'_>>,
    at: &dyn Fn(&str) -> Origin,
) -> Vec<Item> {
    let topic = "outlier detection";
    let classification =
        o.and_then(ClusterOrigin::policy).map_or(Origin::TRIPLINE, |p| p.field("spec.classification"));
    let checked = |h: u32, v: u32| format!("each interval, once {h} endpoints have {v} requests");
    let e = &cfg.enforcing;
    let mut items = Vec::new();
    if let Some(n) = cfg.consecutive_5xx_errors {
        let says = format!(
            "ejects an endpoint after {n} consecutive failures ({}){}",
            failures(cfg),
            enforced(e.consecutive_5xx)
        );
        items.push(
            Item::new(topic, says)
                .with("consecutive5xxErrors", at("consecutive5xxErrors"))
                .with("what fails", classification.clone()),
        );
    }
    if let Some(n) = cfg.consecutive_gateway_errors {
        let says = format!(
            "ejects an endpoint after {n} consecutive gateway errors (502, 503, 504){}",
            enforced(e.consecutive_gateway)
        );
        items.push(Item::new(topic, says).with("consecutiveGatewayErrors", at("consecutiveGatewayErrors")));
    }
    if let Some(n) = cfg.consecutive_local_origin_failures.filter(|_| cfg.split_external_local_origin_errors)
    {
        let says = format!("ejects an endpoint after {n} consecutive connect failures, resets or timeouts, counted apart from responses{}", enforced(e.consecutive_local_origin));
        items.push(
            Item::new(topic, says)
                .with("consecutiveLocalOriginFailures", at("consecutiveLocalOriginFailures"))
                .with("splitExternalLocalOriginErrors", at("splitExternalLocalOriginErrors")),
        );
    }
    if let Some(r) = cfg.success_rate {
        let says = format!(
            "ejects an endpoint whose success rate is below the mean by {} standard deviations, {}{}",
            r.stdev_factor,
            checked(r.minimum_hosts, r.request_volume),
            enforced(e.success_rate)
        );
        items.push(Item::new(topic, says).with("successRate", at("successRate")));
    }
    if let Some(r) = cfg.failure_percentage {
        let says = format!(
            "ejects an endpoint with {}% failures or more, {}{}",
            r.threshold,
            checked(r.minimum_hosts, r.request_volume),
            enforced(e.failure_percentage)
        );
        items.push(Item::new(topic, says).with("failurePercentage", at("failurePercentage")));
    }
    if let Some(r) = cfg.latency {
        let says = format!(
            "ejects an endpoint whose p{} latency is over {}× the endpoints' median and over {}, {}{}",
            (r.percentile * 100.0).round(),
            r.factor,
            dur(r.min_latency),
            checked(r.minimum_hosts, r.request_volume),
            enforced(e.latency)
        );
        items.push(Item::new(topic, says).with("latency", at("latency")));
    }
    if items.is_empty() {
        items.push(Item::new(topic, "on, but every detector is off").from(at("consecutive5xxErrors")));
    }
    items
}

fn interval_says(cfg: &OutlierConfig) -> String {
    let periodic = cfg.success_rate.is_some() || cfg.failure_percentage.is_some() || cfg.latency.is_some();
    let also = if periodic { ", and the periodic detectors run" } else { "" };
    format!(
        "every {}, a healthy endpoint's count of ejections goes down by one (its next ejection is shorter){also}",
        dur(cfg.interval)
    )
}

fn ejection_time(cfg: &OutlierConfig, at: &dyn Fn(&str) -> Origin) -> Item {
    // As the detector computes it: base × n, capped at the larger of the cap and the base.
    let max = cfg.max_ejection_time.max(cfg.base_ejection_time);
    let mut says =
        format!("{} × the times it has been ejected, at most {}", dur(cfg.base_ejection_time), dur(max));
    if !cfg.max_ejection_time_jitter.is_zero() {
        says.push_str(&format!(", plus up to {} at random", dur(cfg.max_ejection_time_jitter)));
    }
    Item::new("ejection time", says)
        .with("baseEjectionTime", at("baseEjectionTime"))
        .with("maxEjectionTime", at("maxEjectionTime"))
        .with("maxEjectionTimeJitter", at("maxEjectionTimeJitter"))
}

/// How many endpoints the ejection cap lets go at once, for the cluster's endpoint count,
/// with the arithmetic (`tripline_core::outlier::ejection_cap` is the rule).
fn cap_says(discovery: &Discovery, percent: u32, rounding: CapRounding) -> String {
    let how = match rounding {
        CapRounding::Floor => "rounded down",
        CapRounding::Ceil => "rounded up",
        CapRounding::AtLeastOne => "rounded down but at least 1",
    };
    let n = match discovery {
        Discovery::Static(eps) => eps.len(),
        Discovery::Dns { .. } => {
            return format!("at most {percent}% of the addresses DNS gives can be ejected at once ({how})");
        }
    };
    if n == 0 {
        return "no endpoint to eject".into();
    }
    let hosts = u32::try_from(n).unwrap_or(u32::MAX);
    let cap = ejection_cap(hosts, percent, rounding);
    let exact = f64::from(hosts) * f64::from(percent.min(100)) / 100.0;
    let arithmetic = if exact == f64::from(cap) {
        format!("{percent}% of {n} is {exact}")
    } else {
        format!("{percent}% of {n} is {exact}, {how}")
    };
    let endpoints = format!("endpoint{}", plural(n));
    match cap {
        0 => format!("with {n} {endpoints} none can ever be ejected ({arithmetic})"),
        _ => format!("with {n} {endpoints} at most {cap} can be ejected at once ({arithmetic})"),
    }
}

/// A redirect: its status, and what of the request's URL it changes.
fn redirect_says(r: &RedirectPlan) -> String {
    let mut to = Vec::new();
    to.extend(r.scheme.as_ref().map(|s| format!("scheme {s}")));
    to.extend(r.authority.as_ref().map(|a| format!("host {a}")));
    to.extend(match r.port {
        RedirectPort::Unchanged => None,
        RedirectPort::Fixed(p) => Some(format!("port {p}")),
        RedirectPort::ProtocolDefault => Some("the scheme's default port".into()),
        RedirectPort::RequestPort => Some("the port the request was sent to".into()),
    });
    to.extend(r.uri.as_ref().map(|u| format!("path {u}")));
    let to =
        if to.is_empty() { "the same URL".into() } else { format!("the same URL with {}", to.join(", ")) };
    format!("answers itself: a {} redirect to {to}; no destination", r.status)
}

fn match_says(m: &RequestMatch) -> String {
    let mut parts = Vec::new();
    if let Some(u) = &m.uri {
        let case = if m.ignore_uri_case { " (any case)" } else { "" };
        parts.push(format!("path {}{case}", string_says(u, "is anything")));
    }
    let fields = [("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)];
    parts.extend(
        fields
            .iter()
            .filter_map(|(name, sm)| Some(format!("{name} {}", string_says(sm.as_ref()?, "is anything")))),
    );
    parts.extend(m.headers.iter().map(|(h, sm)| format!("header {h} {}", string_says(sm, "is present"))));
    parts.extend(m.without_headers.iter().map(|(h, sm)| match sm {
        StringMatch::Prefix(p) if p.is_empty() => format!("header {h} absent"),
        _ => format!("header {h} absent or not {}", string_says(sm, "")),
    }));
    parts.extend(m.query_params.iter().map(|(q, sm)| {
        let present = matches!(sm, StringMatch::Exact(e) | StringMatch::Prefix(e) if e.is_empty());
        format!("query parameter {q} {}", if present { "is present".into() } else { string_says(sm, "") })
    }));
    if parts.is_empty() {
        "every request".into()
    } else {
        parts.join(" and ")
    }
}

fn string_says(sm: &StringMatch, empty_prefix: &str) -> String {
    match sm {
        StringMatch::Exact(e) => format!("is `{e}`"),
        StringMatch::Prefix(p) if p.is_empty() => empty_prefix.to_string(),
        StringMatch::Prefix(p) => format!("starts with `{p}`"),
        // Compiled anchored as `^(?:...)$`; shown as written.
        StringMatch::Regex(r) => {
            let re = r.as_str();
            let written = re.strip_prefix("^(?:").and_then(|s| s.strip_suffix(")$")).unwrap_or(re);
            format!("matches the regex `{written}`")
        }
    }
}

fn headers_says(h: &HeaderPlan) -> String {
    let ops = |o: &HeaderOps, on: &str| {
        let names = |list: Vec<&String>| list.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        let mut says = Vec::new();
        if !o.set.is_empty() {
            says.push(format!("sets {}", names(o.set.iter().map(|(k, _)| k).collect())));
        }
        if !o.add.is_empty() {
            says.push(format!("adds {}", names(o.add.iter().map(|(k, _)| k).collect())));
        }
        if !o.remove.is_empty() {
            says.push(format!("removes {}", names(o.remove.iter().collect())));
        }
        (!says.is_empty()).then(|| format!("{} on {on}", says.join(", ")))
    };
    [ops(&h.request, "requests"), ops(&h.response, "responses")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `retryOn` conditions of a retry policy, in `retryOn`'s words.
fn retry_on(r: &RetryPlan) -> String {
    let on = &r.retry_on;
    let flags = [
        (on.server_error, "5xx"),
        (on.gateway_error, "gateway-error"),
        (on.reset, "reset"),
        (on.connect_failure, "connect-failure"),
        (on.refused_stream, "refused-stream"),
        (on.retriable_4xx, "retriable-4xx (409)"),
        (on.grpc_cancelled, "cancelled"),
        (on.grpc_deadline_exceeded, "deadline-exceeded"),
        (on.grpc_internal, "internal"),
        (on.grpc_resource_exhausted, "resource-exhausted"),
        (on.grpc_unavailable, "unavailable"),
    ];
    let mut words: Vec<String> = flags.iter().filter(|(on, _)| *on).map(|(_, w)| w.to_string()).collect();
    if on.retriable_status_codes && !r.status_codes.is_empty() {
        let codes: Vec<String> = r.status_codes.iter().map(u16::to_string).collect();
        words.push(format!("status {}", codes.join(", ")));
    }
    if words.is_empty() {
        "no condition (nothing is retried)".into()
    } else {
        words.join(", ")
    }
}

/// A duration as Istio writes it, in the largest unit that keeps it whole (`1h`, `30s`,
/// `250ms`).
fn dur(d: Duration) -> String {
    match (d.subsec_nanos(), d.as_secs()) {
        (0, s) if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        (0, s) if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        _ => format_duration(d),
    }
}

/// A share of requests, `10%` (Istio's percentages have up to 4 decimals).
fn share(f: Fraction) -> String {
    format!("{}%", f64::from(f.0) / 10_000.0)
}

/// A ratio as a percentage, rounded to 2 decimals (`0.3` is `30%`, not `30.000000000000004%`).
fn ratio(r: f64) -> String {
    format!("{}%", (r * 10_000.0).round() / 100.0)
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripline_config::plan::EndpointPlan;

    fn endpoints(n: u8) -> Discovery {
        let ep = |i: u8| EndpointPlan {
            address: SocketAddr::from(([10, 0, 0, i], 80)),
            weight: 1,
            labels: Default::default(),
        };
        Discovery::Static((0..n).map(ep).collect())
    }

    #[test]
    fn the_ejection_cap_is_said_for_the_endpoint_count_with_its_rounding() {
        let at_least_one = CapRounding::AtLeastOne;
        assert_eq!(
            cap_says(&endpoints(4), 50, at_least_one),
            "with 4 endpoints at most 2 can be ejected at once (50% of 4 is 2)"
        );
        assert_eq!(
            cap_says(&endpoints(1), 50, at_least_one),
            "with 1 endpoint at most 1 can be ejected at once (50% of 1 is 0.5, rounded down but at least 1)"
        );
        assert_eq!(
            cap_says(&endpoints(10), 50, at_least_one),
            "with 10 endpoints at most 5 can be ejected at once (50% of 10 is 5)"
        );
        assert_eq!(
            cap_says(&endpoints(9), 10, CapRounding::Floor),
            "with 9 endpoints none can ever be ejected (10% of 9 is 0.9, rounded down)"
        );
        assert_eq!(
            cap_says(&endpoints(11), 10, CapRounding::Ceil),
            "with 11 endpoints at most 2 can be ejected at once (10% of 11 is 1.1, rounded up)"
        );
        assert_eq!(cap_says(&endpoints(0), 50, at_least_one), "no endpoint to eject");
    }

    #[test]
    fn the_default_breaker_reads_as_its_rules() {
        assert_eq!(
            breaker_says(&BreakerConfig::default()),
            "opens after 5 consecutive failures, or when 50% of at least 20 requests over 10s fail; \
             stays open 5s, ×2 at each re-opening up to 1m, ±20%; \
             then lets 3 probe requests through and closes once 2 succeed (a probe fails after 5s)"
        );
        let dry = BreakerConfig {
            mode: Mode::DryRun,
            consecutive_failures: None,
            failure_ratio: None,
            ..Default::default()
        };
        assert!(
            breaker_says(&dry).starts_with("dry run, never refuses a request: never opens"),
            "{}",
            breaker_says(&dry)
        );
    }

    #[test]
    fn sources_sharing_an_origin_are_said_once() {
        let dr = Origin::Field { resource: "DestinationRule/x".into(), path: "spec.trafficPolicy".into() };
        let item = Item::new("connections", "at most 5")
            .with("maxConnections", dr)
            .with("connectTimeout", Origin::ISTIO)
            .with("idleTimeout", Origin::ISTIO);
        assert_eq!(
            item.text(),
            "connections: at most 5 (maxConnections: DestinationRule/x spec.trafficPolicy; connectTimeout, idleTimeout: Istio default)"
        );
        assert_eq!(item.json()["from"][1], json!({"default": "Istio", "what": "connectTimeout"}));
    }

    #[test]
    fn matches_and_hosts_read_plainly() {
        let m = RequestMatch {
            uri: Some(StringMatch::Prefix("/api".into())),
            method: Some(StringMatch::Exact("GET".into())),
            without_headers: vec![("x-canary".into(), StringMatch::Prefix(String::new()))],
            ..Default::default()
        };
        assert_eq!(match_says(&m), "path starts with `/api` and method is `GET` and header x-canary absent");
        assert_eq!(match_says(&RequestMatch::default()), "every request");
        assert_eq!(authority_host("Payments.svc:80"), "payments.svc");
        assert_eq!(authority_host("payments.svc"), "payments.svc");
        assert_eq!(share(Fraction::of_percent(12.5)), "12.5%");
        assert_eq!(ratio(0.3), "30%");
        assert_eq!(bytes(64 * 1024), "64 KiB");
        let durations = [3600, 300, 90, 30].map(|s| dur(Duration::from_secs(s)));
        assert_eq!(durations, ["1h", "5m", "90s", "30s"]);
        assert_eq!(dur(Duration::from_millis(250)), "250ms");
    }
}
