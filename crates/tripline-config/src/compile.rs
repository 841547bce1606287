//! Cross-resource validation and compilation of decoded resources into a [`Plan`]:
//! listeners from Gateways (and the mesh listener), virtual hosts from VirtualServices,
//! clusters from every (host, port, subset) a route refers to, with endpoints from
//! ServiceEntries and policy from DestinationRules and ResiliencePolicies.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

mod inbound;
mod profiles;

use crate::authz::{AuthorizationPolicy, AuthzAction, AuthzPolicyPlan};
use crate::decode::Cx;
use crate::diag::{Diagnostic, Severity};
use crate::fallback::{FallbackPlan, FallbackTo};
use crate::model::{
    DestinationRule, Gateway, HttpRoute, Resource, RouteDestination, SePort, Server, ServiceEntry, Spec,
    Subset, TrafficPolicy, VirtualService,
};
use crate::plan::*;
use crate::policy::{effective_outlier, PolicyRetries, ResiliencePolicy, RouteRef, Target};
use crate::tls::{ClientMode, ClientTls};
use crate::yaml::Pos;
use crate::LoadOptions;

/// Istio's default load balancer since 1.14.
pub const DEFAULT_LOAD_BALANCER: LoadBalancer = LoadBalancer::LeastRequest;

/// The effective load balancer and pool limits of a subset (or of the host when `subset` is
/// `None`): the subset's policy overrides the top-level one field by field.
pub fn effective_policy(top: &TrafficPolicy, subset: Option<&TrafficPolicy>) -> (LoadBalancer, PoolLimits) {
    let empty = TrafficPolicy::default();
    let sub = subset.unwrap_or(&empty);
    let lb = sub.load_balancer.clone().or_else(|| top.load_balancer.clone()).unwrap_or(DEFAULT_LOAD_BALANCER);
    let (s, t) = (&sub.connection_pool, &top.connection_pool);
    let d = PoolLimits::default();
    let pool = PoolLimits {
        max_connections: s.max_connections.or(t.max_connections).unwrap_or(d.max_connections),
        connect_timeout: s.connect_timeout.or(t.connect_timeout).unwrap_or(d.connect_timeout),
        max_pending_requests: s
            .http1_max_pending_requests
            .or(t.http1_max_pending_requests)
            .unwrap_or(d.max_pending_requests),
        max_requests: s.http2_max_requests.or(t.http2_max_requests).unwrap_or(d.max_requests),
        max_requests_per_connection: s.max_requests_per_connection.or(t.max_requests_per_connection),
        max_retries: s.max_retries.or(t.max_retries).unwrap_or(d.max_retries),
        idle_timeout: s.idle_timeout.or(t.idle_timeout).unwrap_or(d.idle_timeout),
    };
    (lb, pool)
}

/// The TLS a subset's connections (or the host's, when `subset` is `None`) are made with: the
/// subset's `tls` replaces the top level's whole, as in Istio. `None`: plaintext (no `tls`, or
/// mode DISABLE).
pub fn effective_tls<'p>(
    top: Option<&'p TrafficPolicy>,
    subset: Option<&'p TrafficPolicy>,
) -> Option<&'p ClientTls> {
    let tls = subset.and_then(|s| s.tls.as_ref()).or_else(|| top.and_then(|t| t.tls.as_ref()));
    tls.filter(|t| t.mode != ClientMode::Disable)
}

/// The resilience settings of a cluster: outlier detection from the DestinationRule (subset
/// over top level, field by field) and the policy (see [`crate::policy`]), the policy's
/// breakers, and the retry budget (`retryBudget`, subset over top level, capped by
/// `connectionPool.http.maxRetries`).
pub fn effective_resilience(
    top: &TrafficPolicy,
    subset: Option<&TrafficPolicy>,
    policy: Option<(&str, &ResiliencePolicy)>,
    pool: &PoolLimits,
) -> ResiliencePlan {
    let p = policy.map(|(_, p)| p);
    let outlier = effective_outlier(
        top.outlier_detection.as_ref(),
        subset.and_then(|s| s.outlier_detection.as_ref()),
        p,
    );
    let (s, t) = (subset.map(|s| &s.retry_budget), &top.retry_budget);
    let d = tripline_core::budget::RetryBudgetConfig::default();
    let retry_budget = tripline_core::budget::RetryBudgetConfig {
        percent: s.and_then(|s| s.percent).or(t.percent).unwrap_or(d.percent),
        min_retry_concurrency: s
            .and_then(|s| s.min_retry_concurrency)
            .or(t.min_retry_concurrency)
            .unwrap_or(d.min_retry_concurrency),
        max_retries: pool.max_retries,
        rate: None,
    };
    ResiliencePlan {
        outlier,
        breaker: p.and_then(|p| p.breaker.clone()),
        endpoint_breaker: p.and_then(|p| p.endpoint_breaker.clone()),
        retry_budget,
        policy: policy.map(|(name, _)| name.to_string()),
    }
}

/// A route's retry policy: its `retries` (Istio's default when absent), with the retry settings
/// of the ResiliencePolicies of its destinations. When the destinations disagree the safest
/// setting wins: non-idempotent requests are retried only if every destination opts in, the
/// longest backoff and the smallest replay buffer apply.
pub fn route_retry(h: &HttpRoute, destinations: &[PolicyRetries]) -> RetryPlan {
    let mut plan = RetryPlan::default();
    if let Some(r) = &h.retries {
        plan.attempts = r.attempts;
        plan.per_try_timeout = r.per_try_timeout;
        if let Some((on, codes)) = &r.conditions {
            plan.retry_on = *on;
            plan.status_codes = codes.clone();
        }
    }
    if let Some(first) = destinations.first() {
        plan.retry_non_idempotent = destinations.iter().all(|d| d.retry_non_idempotent);
        plan.backoff_base = destinations.iter().map(|d| d.backoff_base).max().unwrap_or(first.backoff_base);
        plan.backoff_max = destinations.iter().map(|d| d.backoff_max).max().unwrap_or(first.backoff_max);
        plan.max_replay_bytes =
            destinations.iter().map(|d| d.max_replay_bytes).min().unwrap_or(first.max_replay_bytes);
    }
    // A ServiceProfile's `isRetryable`: the route may be retried whatever the method.
    if h.retries.as_ref().is_some_and(|r| r.any_method) {
        plan.retry_non_idempotent = true;
    }
    // Istio's `retries.backoff` is the route's own base interval.
    if let Some(base) = h.retries.as_ref().and_then(|r| r.backoff) {
        plan.backoff_base = base;
        plan.backoff_max = plan.backoff_max.max(base);
    }
    plan
}

fn same_target(first: &Resource, second: &Resource, what: &str) -> String {
    format!(
        "{} and {} both target {what} ({}): merge them into one ResiliencePolicy",
        first.id(),
        second.id(),
        first.source
    )
}

/// The full name of a Kubernetes service written short, as Istio reads a config's hosts: a
/// name without a dot is a service of `namespace` (a name with one is a domain name, as in
/// Istio; clients' `Host` headers may still say `name.namespace`: [`Ctx::host_aliases`]).
fn kube_expansion(host: &str, namespace: Option<&str>) -> Option<String> {
    if host.contains('.') || host.contains('*') {
        return None;
    }
    namespace.map(|ns| format!("{host}.{ns}.svc.{}", crate::KUBE_DOMAIN))
}

fn unknown_host(host: &str) -> String {
    format!(
        "unknown host `{host}`: no ServiceEntry declares it (IST0101: referenced host not found); add a ServiceEntry with `hosts: [{host}]`, its ports and endpoints"
    )
}

fn unknown_subset(subset: &str, host: &str, rule: Option<(&Resource, &DestinationRule)>) -> String {
    match rule {
        Some((dr_res, dr)) => {
            let names: Vec<&str> = dr.subsets.iter().map(|x| x.name.value.as_str()).collect();
            let known = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            format!("unknown subset `{subset}` of host `{host}`: {} defines subsets: {known}", dr_res.id())
        }
        None => format!(
            "unknown subset `{subset}` of host `{host}`: no DestinationRule for `{host}` defines subsets; add one with `subsets: [{{name: {subset}, labels: ...}}]`"
        ),
    }
}

/// Strips the `namespace/` of Gateway server hosts (`./`, `*/`, `ns/`).
fn server_host(h: &str) -> &str {
    h.rsplit_once('/').map_or(h, |(_, host)| host)
}

/// Whether `pattern` (`*`, `*.example.com` or a name) covers `host` (which may be a wildcard).
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        let host = host.strip_prefix('*').unwrap_or(host);
        return host.len() >= suffix.len() && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
    }
    pattern.eq_ignore_ascii_case(host)
}

/// The domain a VirtualService host answers on a server with `server` host: the more
/// specific of the two, when one covers the other.
fn intersect(vs_host: &str, server: &str) -> Option<String> {
    if covers(server, vs_host) {
        Some(vs_host.to_ascii_lowercase())
    } else if covers(vs_host, server) {
        Some(server.to_ascii_lowercase())
    } else {
        None
    }
}

pub fn host_match(domain: &str) -> HostMatch {
    if domain == "*" {
        HostMatch::Any
    } else if let Some(s) = domain.strip_prefix('*') {
        HostMatch::Suffix(s.to_ascii_lowercase())
    } else {
        HostMatch::Exact(domain.to_ascii_lowercase())
    }
}

/// Exact names first, then longer suffixes, then `*`.
fn specificity(m: &HostMatch) -> (u8, usize) {
    match m {
        HostMatch::Exact(_) => (0, 0),
        HostMatch::Suffix(s) => (1, usize::MAX - s.len()),
        HostMatch::Any => (2, 0),
    }
}

struct Ctx<'a> {
    opts: &'a LoadOptions,
    diags: &'a mut Vec<Diagnostic>,
    service_entries: Vec<(&'a Resource, &'a ServiceEntry)>,
    /// Lower-cased host → the first ServiceEntry declaring it. The indexes below replace
    /// scans that made loading quadratic in the number of services (20 s for 10,000).
    service_entry_by_host: HashMap<String, usize>,
    rules: Vec<(&'a Resource, &'a DestinationRule)>,
    /// Lower-cased host → its DestinationRule in `rules`.
    rule_by_host: HashMap<String, Vec<usize>>,
    /// The DestinationRules whose host is a wildcard, in order.
    wildcard_rules: Vec<usize>,
    clusters: Vec<ClusterPlan>,
    cluster_ids: HashMap<String, ClusterId>,
    /// ResiliencePolicies whose target is valid.
    policies: Vec<(&'a Resource, &'a ResiliencePolicy)>,
    /// (lower-cased host, subset) → the policy in `policies` targeting that destination.
    policy_by_target: HashMap<(String, Option<String>), usize>,
    /// The policy applied to each cluster (parallel to `clusters`).
    cluster_policies: Vec<Option<&'a ResiliencePolicy>>,
    /// ResiliencePolicies whose target is a route, with the route resolved: (VirtualService
    /// name, index in its `http`).
    route_policies: Vec<(&'a Resource, &'a ResiliencePolicy, String, usize)>,
    /// `maxRetries` fields already warned about (resource, field path): a DestinationRule's
    /// field serves every cluster of its host (each port, each subset), and is one finding.
    retry_floor_reported: std::collections::HashSet<(String, String)>,
    /// The files TLS settings name, read once per load.
    tls_files: crate::tls::Files<'a>,
    /// Each cluster TLS setting compiled, by (DestinationRule document, path of its `tls`,
    /// ServiceEntry document): one setting serves every port and subset of its host.
    upstream_tls: HashMap<(String, String, String), Option<UpstreamTlsPlan>>,
    /// TLS findings already reported (document, field path, message): once each, whatever
    /// number of clusters or servers share the setting.
    tls_reported: std::collections::HashSet<(String, String, String)>,
    /// The ServiceProfile of each host it applies to (see [`profiles`]).
    profiles: profiles::Profiles<'a>,
}

impl<'a> Ctx<'a> {
    fn cx<'b>(&'b mut self, r: &'b Resource) -> Cx<'b> {
        Cx { file: &r.file, resource: r.id(), diags: self.diags }
    }

    /// `pos` is one of `r`'s own, read when its document was decoded (see
    /// [`Resource::shifted`]).
    fn report(&mut self, r: &Resource, severity: Severity, pos: Pos, path: &str, msg: impl Into<String>) {
        self.cx(r).report(severity, r.shifted(pos), path, msg);
    }

    /// Reports what compiling a TLS setting of `r` found, each finding once per load.
    fn report_tls(&mut self, r: &Resource, findings: Vec<crate::tls::Finding>) {
        for f in findings {
            if self.tls_reported.insert((r.source.clone(), f.path.clone(), f.message.clone())) {
                self.report(r, f.severity, f.pos, &f.path, f.message);
            }
        }
    }

    /// A cluster's TLS origination from `t` (written in `rule`), to `host` of `se`.
    fn upstream_tls(
        &mut self,
        rule: &Resource,
        t: &ClientTls,
        (se_res, se): (&Resource, &ServiceEntry),
        host: &str,
    ) -> Option<UpstreamTlsPlan> {
        if t.sni.is_none() && rustls_pki_types::ServerName::try_from(host).is_err() {
            let msg = format!("`{host}` is not a TLS server name, and without `sni` the cluster's host is sent as the SNI and checked against the upstream's certificate: set `sni`");
            let finding = crate::tls::Finding {
                severity: Severity::Error,
                pos: t.pos,
                path: t.path.clone(),
                message: msg,
            };
            self.report_tls(rule, vec![finding]);
            return None;
        }
        let key = (rule.source.clone(), t.path.clone(), se_res.source.clone());
        if let Some(done) = self.upstream_tls.get(&key) {
            return done.clone();
        }
        let mut findings = Vec::new();
        let plan = self.tls_files.client(&rule.file, t, &se.subject_alt_names, &mut findings);
        self.report_tls(rule, findings);
        self.upstream_tls.insert(key, plan.clone());
        plan
    }

    fn service_entry(&self, host: &str) -> Option<(&'a Resource, &'a ServiceEntry)> {
        self.service_entry_by_host.get(&host.to_ascii_lowercase()).map(|&i| self.service_entries[i])
    }

    /// The host `host` names when `r` writes it: the declared host itself, or, for a
    /// Kubernetes service written short as Istio allows (`checkout`), the declared
    /// `<name>.<namespace>.svc.cluster.local`, the namespace being `r`'s own (else the
    /// workload's). Lower-cased; `host` as written when nothing declares either.
    fn canonical(&self, r: &Resource, host: &str) -> String {
        let lower = host.to_ascii_lowercase();
        if self.service_entry_by_host.contains_key(&lower) {
            return lower;
        }
        let namespace = r.namespace.as_deref().or(self.opts.workload_namespace.as_deref());
        kube_expansion(&lower, namespace)
            .filter(|full| self.service_entry_by_host.contains_key(full))
            .unwrap_or(lower)
    }

    /// With [`LoadOptions::assume_kubernetes_services`], the note for an undeclared `host`
    /// that is written as a Kubernetes service; `None` for any other.
    fn assumed_kube_service(&self, r: &Resource, host: &str) -> Option<String> {
        if !self.opts.assume_kubernetes_services {
            return None;
        }
        let lower = host.to_ascii_lowercase();
        let suffix = format!(".svc.{}", crate::KUBE_DOMAIN);
        let namespace =
            r.namespace.as_deref().or(self.opts.workload_namespace.as_deref()).unwrap_or("<namespace>");
        let full = if lower.ends_with(&suffix) { lower } else { kube_expansion(&lower, Some(namespace))? };
        Some(format!("`{host}` is taken to be the Kubernetes service `{full}` (no file declares it): `tripline run --kubernetes` reads it from the API server; its routes are not checked further here"))
    }

    /// The names a client may use for `host` (as `r` writes it) in its `Host` header on the
    /// mesh listener: for a Kubernetes service, the forms Kubernetes' DNS answers (the bare
    /// name only in the workload's own namespace, or where it is written so), else `host`
    /// alone.
    fn host_aliases(&self, r: &Resource, host: &str) -> Vec<String> {
        let full = self.canonical(r, host);
        let Some(rest) = full.strip_suffix(&format!(".svc.{}", crate::KUBE_DOMAIN)) else {
            return vec![host.to_string()];
        };
        let Some((name, namespace)) = rest.split_once('.') else { return vec![host.to_string()] };
        let mut out = vec![full.clone(), format!("{rest}.svc"), rest.to_string()];
        if self.opts.workload_namespace.as_deref() == Some(namespace) || host.eq_ignore_ascii_case(name) {
            out.push(name.to_string());
        }
        out
    }

    /// The DestinationRule for `host`, in Istio's lookup order: the workload's namespace's,
    /// else the namespace's of the ServiceEntry (Service) declaring the host, else the root
    /// namespace's; then a wildcard rule covering it.
    fn rule(&self, host: &str) -> Option<(&'a Resource, &'a DestinationRule)> {
        let exact = self.rule_by_host.get(&host.to_ascii_lowercase()).and_then(|candidates| {
            let of = |ns: Option<&str>| {
                candidates.iter().map(|&i| self.rules[i]).find(|(r, _)| r.namespace.as_deref() == ns)
            };
            let service_ns = self.service_entry(host).and_then(|(r, _)| r.namespace.as_deref());
            let workload = self.opts.workload_namespace.as_deref();
            workload
                .and_then(|w| of(Some(w)))
                .or_else(|| service_ns.and_then(|n| of(Some(n))))
                .or_else(|| of(Some(crate::authz::ROOT_NAMESPACE)))
                .or_else(|| candidates.first().map(|&i| self.rules[i]))
        });
        exact.or_else(|| {
            self.wildcard_rules.iter().map(|&i| self.rules[i]).find(|(_, dr)| covers(&dr.host.value, host))
        })
    }

    /// Adds a DestinationRule: one per host and namespace (the first wins; a second in the
    /// same namespace is an error), chosen among namespaces by [`Ctx::rule`].
    fn add_rule(&mut self, r: &'a Resource, dr: &'a DestinationRule) {
        let host = self.canonical(r, &dr.host.value);
        let same_namespace = self
            .rule_by_host
            .get(&host)
            .into_iter()
            .flatten()
            .map(|&i| self.rules[i].0)
            .find(|f| f.namespace == r.namespace);
        if let Some(first) = same_namespace {
            let msg = format!(
                "{} already applies to host `{}` ({}): merge the two into one DestinationRule (Tripline applies one per host and namespace)",
                first.id(),
                dr.host.value,
                first.source
            );
            self.report(r, Severity::Error, dr.host.pos, &dr.host.path, msg);
            return;
        }
        if host.starts_with('*') {
            self.wildcard_rules.push(self.rules.len());
        }
        self.rule_by_host.entry(host).or_default().push(self.rules.len());
        self.rules.push((r, dr));
    }

    /// [`Ctx::exported`], reported: a note when the resource is for other namespaces, an
    /// error when that cannot be told.
    fn visible(&mut self, r: &Resource, export_to: Option<&crate::model::At<Vec<String>>>) -> bool {
        match self.exported(r, export_to) {
            Ok(true) => true,
            Ok(false) => {
                let at = export_to.expect("only a narrowed exportTo hides");
                let msg = format!(
                    "not exported to this workload's namespace (`exportTo`): this {} does not apply here",
                    r.kind
                );
                self.report(r, Severity::Note, at.pos, &at.path, msg);
                false
            }
            Err(msg) => {
                let at = export_to.expect("only a narrowed exportTo is unknown");
                self.report(r, Severity::Error, at.pos, &at.path, msg);
                false
            }
        }
    }

    /// Whether a resource with `exportTo` is visible to this proxy's workload, or why that
    /// cannot be told. A resource without a namespace is in the workload's.
    fn exported(
        &self,
        r: &Resource,
        export_to: Option<&crate::model::At<Vec<String>>>,
    ) -> Result<bool, String> {
        let Some(to) = export_to.filter(|t| !t.value.iter().any(|n| n == "*")) else { return Ok(true) };
        let own = |ns: &str| r.namespace.as_deref().is_none_or(|mine| mine == ns);
        let Some(workload) = self.opts.workload_namespace.as_deref() else {
            if r.namespace.is_none() && to.value.iter().any(|n| n == ".") {
                return Ok(true);
            }
            return Err(format!("`exportTo` limits where this {} applies, and this proxy's namespace is not known: give --workload-namespace", r.kind));
        };
        Ok(to.value.iter().any(|n| n == workload || (n == "." && own(workload))))
    }

    /// Indexes the ServiceEntries by host; a host declared by two of them is an error.
    fn index_service_entries(&mut self) {
        for i in 0..self.service_entries.len() {
            let (r, se) = self.service_entries[i];
            for h in &se.hosts {
                let first = *self.service_entry_by_host.entry(h.value.to_ascii_lowercase()).or_insert(i);
                if first != i {
                    let msg = format!(
                        "host `{}` is already declared by {}: declare each host in one ServiceEntry (Tripline takes a host's ports and endpoints from one)",
                        h.value,
                        self.service_entries[first].0.id()
                    );
                    self.report(r, Severity::Error, h.pos, &h.path, msg);
                }
            }
        }
    }

    /// The policy for a cluster: the one naming its subset, else the one for the whole host.
    fn policy(&self, host: &str, subset: Option<&str>) -> Option<(&'a Resource, &'a ResiliencePolicy)> {
        let host = host.to_ascii_lowercase();
        let of_subset = |want: Option<&str>| {
            self.policy_by_target.get(&(host.clone(), want.map(str::to_string))).map(|&i| self.policies[i])
        };
        subset.and_then(|s| of_subset(Some(s))).or_else(|| of_subset(None))
    }

    /// The policy whose target is route `index` of VirtualService `vs`.
    fn route_policy(&self, vs: &str, index: usize) -> Option<(&'a Resource, &'a ResiliencePolicy)> {
        self.route_policies.iter().find(|(_, _, v, i)| v == vs && *i == index).map(|&(r, p, _, _)| (r, p))
    }

    /// Checks every policy's target (host and subset, or VirtualService and route) and that no
    /// two share one.
    fn check_policies(
        &mut self,
        all: Vec<(&'a Resource, &'a ResiliencePolicy)>,
        services: &[(&'a Resource, &'a VirtualService)],
    ) {
        for (r, p) in all {
            let (host, subset) = match &p.target {
                Target::Destination { host, subset } => (host, subset),
                Target::Route { virtual_service, route } => {
                    self.check_route_policy(r, p, services, virtual_service, route);
                    continue;
                }
            };
            let canonical = self.canonical(r, &host.value);
            if self.service_entry(&canonical).is_none() {
                match self.assumed_kube_service(r, &host.value) {
                    Some(note) => self.report(r, Severity::Note, host.pos, &host.path, note),
                    None => self.report(r, Severity::Error, host.pos, &host.path, unknown_host(&host.value)),
                }
                continue;
            }
            if let Some(s) = subset {
                let rule = self.rule(&canonical);
                if !rule.is_some_and(|(_, dr)| dr.subsets.iter().any(|x| x.name.value == s.value)) {
                    self.report(
                        r,
                        Severity::Error,
                        s.pos,
                        &s.path,
                        unknown_subset(&s.value, &host.value, rule),
                    );
                    continue;
                }
            }
            let key = (canonical, subset.as_ref().map(|s| s.value.clone()));
            if let Some(&(first, _)) = self.policy_by_target.get(&key).map(|&i| &self.policies[i]) {
                let what = match subset {
                    Some(s) => format!("subset `{}` of host `{}`", s.value, host.value),
                    None => format!("host `{}`", host.value),
                };
                let msg = same_target(first, r, &what);
                self.report(r, Severity::Error, host.pos, &host.path, msg);
                continue;
            }
            self.policy_by_target.insert(key, self.policies.len());
            self.policies.push((r, p));
        }
    }

    /// Resolves a route target to (VirtualService, index in `http`); reports what is wrong.
    fn check_route_policy(
        &mut self,
        r: &'a Resource,
        p: &'a ResiliencePolicy,
        services: &[(&'a Resource, &'a VirtualService)],
        vs_name: &crate::model::At<String>,
        route: &crate::model::At<RouteRef>,
    ) {
        let Some(&(vs_res, vs)) = services.iter().find(|(vr, _)| vr.name == vs_name.value) else {
            let known: Vec<&str> = services.iter().map(|(vr, _)| vr.name.as_str()).collect();
            let known = if known.is_empty() {
                "none is defined".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            let msg = format!("unknown VirtualService `{}` ({known})", vs_name.value);
            self.report(r, Severity::Error, vs_name.pos, &vs_name.path, msg);
            return;
        };
        let routes = || {
            let all: Vec<String> = vs
                .http
                .iter()
                .enumerate()
                .map(|(i, h)| match &h.name {
                    Some(n) => format!("`{n}` (http[{i}])"),
                    None => format!("http[{i}]"),
                })
                .collect();
            if all.is_empty() {
                "it has no http routes".to_string()
            } else {
                format!("its http routes: {}", all.join(", "))
            }
        };
        let found = match &route.value {
            RouteRef::Index(i) => (*i < vs.http.len()).then_some(*i),
            RouteRef::Name(n) => vs.http.iter().position(|h| h.name.as_deref() == Some(n)),
        };
        let Some(index) = found else {
            let msg = format!("{} has no route `{}`: {}", vs_res.id(), route.value, routes());
            self.report(r, Severity::Error, route.pos, &route.path, msg);
            return;
        };
        let h = &vs.http[index];
        // Two routes with one name would share one route breaker.
        let namesakes: Vec<String> = (0..vs.http.len())
            .filter(|&i| h.name.is_some() && vs.http[i].name == h.name)
            .map(|i| format!("http[{i}]"))
            .collect();
        if namesakes.len() > 1 {
            let msg = format!(
                "{} has several routes named `{}` ({}): give them distinct names (each route breaker is keyed by `<virtualService>/<route name>`)",
                vs_res.id(),
                h.name.as_deref().unwrap_or_default(),
                namesakes.join(", ")
            );
            self.report(r, Severity::Error, route.pos, &route.path, msg);
            return;
        }
        if h.route.is_empty() {
            let msg = format!(
                "route `{}` of {} has no destinations (it answers by itself): a ResiliencePolicy can only target a route that forwards",
                route.value,
                vs_res.id()
            );
            self.report(r, Severity::Error, route.pos, &route.path, msg);
            return;
        }
        if let Some(&(first, _, _, _)) =
            self.route_policies.iter().find(|(_, _, v, i)| *v == vs_res.name && *i == index)
        {
            let shown = match &h.name {
                Some(n) => format!("`{n}` (http[{index}])"),
                None => format!("http[{index}]"),
            };
            let msg = same_target(first, r, &format!("route {shown} of {}", vs_res.id()));
            self.report(r, Severity::Error, route.pos, &route.path, msg);
            return;
        }
        self.route_policies.push((r, p, vs_res.name.clone(), index));
    }

    /// Resolves a route destination to a cluster, creating it on first use.
    fn destination(&mut self, r: &Resource, d: &RouteDestination, tcp: bool) -> Option<ClusterId> {
        let canonical = self.canonical(r, &d.host.value);
        let Some((se_res, se)) = self.service_entry(&canonical) else {
            match self.assumed_kube_service(r, &d.host.value) {
                Some(note) => self.report(r, Severity::Note, d.host.pos, &d.host.path, note),
                None => {
                    self.report(r, Severity::Error, d.host.pos, &d.host.path, unknown_host(&d.host.value))
                }
            }
            return None;
        };
        if se.resolution == "NONE" {
            let msg = format!(
                "`{}` has resolution NONE ({}): its connections go to where they were going (the sidecar passes those `tripline iptables` redirects to its addresses through), so a route cannot send to it; give the ServiceEntry `resolution: STATIC` with endpoints, or DNS, to route to it",
                d.host.value,
                se_res.id()
            );
            self.report(r, Severity::Error, d.host.pos, &d.host.path, msg);
            return None;
        }
        // As the route writes it, unless it is a short name for another: clusters are named
        // by it.
        let host = if canonical.eq_ignore_ascii_case(&d.host.value) {
            d.host.value.as_str()
        } else {
            let declared = se.hosts.iter().find(|h| h.value.eq_ignore_ascii_case(&canonical));
            declared.map_or(canonical.as_str(), |h| h.value.as_str())
        };
        let ports_list = || se.ports.iter().map(|p| p.number.to_string()).collect::<Vec<_>>().join(", ");
        let port: &SePort = match &d.port {
            Some(p) => match se.ports.iter().find(|sp| sp.number == p.value) {
                Some(sp) => sp,
                None => {
                    let msg =
                        format!("{} has no port {} (its ports: {})", se_res.id(), p.value, ports_list());
                    self.report(r, Severity::Error, p.pos, &p.path, msg);
                    return None;
                }
            },
            None => match se.ports.as_slice() {
                [only] => only,
                [] => {
                    let msg = format!(
                        "{} declares no ports: add `ports: [{{number, name, protocol}}]` to it",
                        se_res.id()
                    );
                    self.report(r, Severity::Error, d.host.pos, &d.host.path, msg);
                    return None;
                }
                _ => {
                    let path = d.host.path.replace(".host", ".port.number");
                    let msg = format!(
                        "`port.number` is required: {} has several ports ({})",
                        se_res.id(),
                        ports_list()
                    );
                    self.report(r, Severity::Error, d.host.pos, &path, msg);
                    return None;
                }
            },
        };
        let rule = self.rule(host);
        let subset: Option<&'a Subset> = match &d.subset {
            None => None,
            Some(s) => match rule {
                Some((_, dr)) if dr.subsets.iter().any(|x| x.name.value == s.value) => {
                    dr.subsets.iter().find(|x| x.name.value == s.value)
                }
                _ => {
                    self.report(r, Severity::Error, s.pos, &s.path, unknown_subset(&s.value, host, rule));
                    return None;
                }
            },
        };
        let tls = effective_tls(rule.map(|(_, dr)| &dr.traffic_policy), subset.map(|s| &s.traffic_policy));
        let port_protocol = port_protocol(port);
        let written = subset.map(|s| &s.traffic_policy).filter(|p| p.tls.is_some() || p.tls_invalid);
        let tls_invalid = written.or(rule.map(|(_, dr)| &dr.traffic_policy)).is_some_and(|p| p.tls_invalid);
        if !tcp && tls.is_none() && !tls_invalid && matches!(port_protocol.as_str(), "HTTPS" | "TLS") {
            let msg = format!(
                "port {} of `{host}` is {port_protocol} ({}), and an HTTP route would send it plaintext HTTP: add a DestinationRule for `{host}` with `trafficPolicy.tls.mode: SIMPLE` to originate TLS (or pass a client's own TLS through with a `tcp` route)",
                port.number,
                se_res.id()
            );
            self.report(r, Severity::Error, d.host.pos, &d.host.path, msg);
            return None;
        }
        let subset_name = subset.map(|s| s.name.value.clone());
        let name = format!("outbound|{}|{}|{}", port.number, subset_name.as_deref().unwrap_or(""), host);
        if let Some(&id) = self.cluster_ids.get(&name) {
            return Some(id);
        }
        let tls = match (tls, rule) {
            (Some(t), Some((rule_res, _))) => Some(self.upstream_tls(rule_res, t, (se_res, se), host)?),
            _ => None,
        };
        let protocol = upstream_protocol(port, tcp);
        let labels = subset.map(|s| s.labels.clone()).unwrap_or_default();
        let selected: Vec<_> =
            se.endpoints.iter().filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))).collect();
        let ep_port = |e: &crate::model::Endpoint| {
            e.ports.get(&port.name).copied().or(port.target_port).unwrap_or(port.number)
        };
        let discovery = if se.resolution == "STATIC" {
            let eps = selected
                .iter()
                .filter_map(|e| {
                    let ip: IpAddr = e.address.value.parse().ok()?;
                    Some(EndpointPlan {
                        address: SocketAddr::new(ip, ep_port(e)),
                        weight: e.weight,
                        labels: e.labels.clone(),
                    })
                })
                .collect::<Vec<_>>();
            Discovery::Static(eps)
        } else {
            let targets = if se.endpoints.is_empty() {
                // As in Istio: without endpoints, a host's cluster resolves that host only, not
                // every host of the entry. A wildcard host has nothing to resolve.
                se.hosts
                    .iter()
                    .filter(|h| h.value.eq_ignore_ascii_case(host) && !h.value.contains('*'))
                    .take(1)
                    .map(|h| DnsTarget {
                        hostname: h.value.clone(),
                        port: port.target_port.unwrap_or(port.number),
                        weight: 1,
                        labels: BTreeMap::new(),
                    })
                    .collect()
            } else {
                selected
                    .iter()
                    .map(|e| DnsTarget {
                        hostname: e.address.value.clone(),
                        port: ep_port(e),
                        weight: e.weight,
                        labels: e.labels.clone(),
                    })
                    .collect()
            };
            Discovery::Dns { targets, refresh: self.opts.dns_refresh }
        };
        let empty = match &discovery {
            Discovery::Static(e) => e.is_empty(),
            Discovery::Dns { targets, .. } => targets.is_empty(),
        };
        if empty {
            let why = match &subset_name {
                Some(s) if !se.endpoints.is_empty() => format!(
                    "subset `{s}` (labels {labels:?}) selects none of the endpoints of {}",
                    se_res.id()
                ),
                _ => format!("{} has no endpoints", se_res.id()),
            };
            let msg = format!(
                "cluster `{name}` has no endpoints: {why}; requests to it get 503 no-healthy-upstream"
            );
            self.report(r, Severity::Warning, d.pos, &d.path, msg);
        }
        let top = rule.map(|(_, dr)| dr.traffic_policy.clone()).unwrap_or_default();
        let (load_balancer, pool) = effective_policy(&top, subset.map(|s| &s.traffic_policy));
        let policy = self.policy(host, subset_name.as_deref());
        let mut resilience = effective_resilience(
            &top,
            subset.map(|s| &s.traffic_policy),
            policy.map(|(pr, p)| (pr.name.as_str(), p)),
            &pool,
        );
        self.apply_profile(host, &mut resilience);
        self.check_ejection_cap(rule, subset, &discovery, &resilience);
        self.check_retry_floor(rule, subset, &resilience);
        self.cluster_policies.push(policy.map(|(_, p)| p));
        let id = self.clusters.len();
        self.clusters.push(ClusterPlan {
            name: name.clone(),
            host: host.to_string(),
            port: port.number,
            subset: subset_name,
            protocol,
            discovery,
            load_balancer,
            pool,
            resilience,
            tls,
        });
        self.cluster_ids.insert(name, id);
        Some(id)
    }

    /// Refuses the settings that act on HTTP requests only (see [`crate::model::HttpOnly`])
    /// in the DestinationRule and ResiliencePolicy of every cluster a `tcp` route sends to:
    /// they would do nothing there.
    fn check_tcp_clusters(&mut self, tcp_clusters: &[ClusterId]) {
        let mut reported = std::collections::HashSet::new();
        for &id in tcp_clusters {
            let (host, subset, name) = {
                let c = &self.clusters[id];
                (c.host.clone(), c.subset.clone(), c.name.clone())
            };
            let mut found: Vec<(&'a Resource, &'a crate::model::HttpOnly)> = Vec::new();
            if let Some((r, dr)) = self.rule(&host) {
                found.extend(dr.traffic_policy.http_only.iter().map(|s| (r, s)));
                let sub = dr.subsets.iter().find(|s| Some(&s.name.value) == subset.as_ref());
                found.extend(sub.into_iter().flat_map(|s| &s.traffic_policy.http_only).map(|s| (r, s)));
            }
            if let Some((r, p)) = self.policy(&host, subset.as_deref()) {
                found.extend(p.http_only.iter().map(|s| (r, s)));
            }
            for (r, setting) in found {
                if reported.insert((r.id(), setting.path.clone())) {
                    let msg = format!(
                        "`{}` acts on HTTP requests only, and `{name}` is the cluster of a `tcp` route: remove it, or send the TCP traffic to a host of its own (a TCP cluster takes `connectionPool.tcp` and `outlierDetection`, fed by connect failures)",
                        setting.path
                    );
                    self.report(r, Severity::Error, setting.pos, &setting.path, msg);
                }
            }
        }
    }

    /// A written `maxEjectionPercent` that, for the cluster's endpoints, ejects nobody or
    /// everybody: a warning where it was written (the subset's, else the rule's).
    fn check_ejection_cap(
        &mut self,
        rule: Option<(&Resource, &DestinationRule)>,
        subset: Option<&Subset>,
        discovery: &Discovery,
        resilience: &ResiliencePlan,
    ) {
        let (Some((rule_res, dr)), Discovery::Static(endpoints), Some(outlier)) =
            (rule, discovery, &resilience.outlier)
        else {
            return;
        };
        let Some(at) = written(dr, subset, |p| {
            p.outlier_detection
                .as_ref()
                .and_then(|o| o.max_ejection_percent.as_ref())
                .map(|a| (a.pos, &*a.path))
        }) else {
            return;
        };
        let msg = crate::lint::ejection_cap(
            endpoints.len(),
            outlier.max_ejection_percent,
            outlier.cap_rounding,
            outlier.min_health_percent,
        );
        if let Some(msg) = msg {
            self.report(rule_res, Severity::Warning, at.0, at.1, msg);
        }
    }

    /// A written `maxRetries` below the retry budget's floor: a warning where it was written
    /// (the subset's, else the rule's).
    fn check_retry_floor(
        &mut self,
        rule: Option<(&Resource, &DestinationRule)>,
        subset: Option<&Subset>,
        resilience: &ResiliencePlan,
    ) {
        let Some((rule_res, dr)) = rule else { return };
        let Some(at) = written(dr, subset, |p| {
            let w = p.http_only.iter().find(|w| w.path.ends_with("connectionPool.http.maxRetries"))?;
            Some((w.pos, w.path.as_str()))
        }) else {
            return;
        };
        let budget = &resilience.retry_budget;
        let floor_written = [subset.map(|s| &s.traffic_policy), Some(&dr.traffic_policy)]
            .into_iter()
            .flatten()
            .any(|p| p.retry_budget.min_retry_concurrency.is_some());
        if let Some(msg) = crate::lint::retries_below_budget_floor(
            budget.max_retries,
            budget.min_retry_concurrency,
            floor_written,
        ) {
            if self.retry_floor_reported.insert((rule_res.id(), at.1.to_string())) {
                self.report(rule_res, Severity::Warning, at.0, at.1, msg);
            }
        }
    }

    /// Resolves a route's destinations and checks weights (Istio: they sum to 100).
    fn destinations(
        &mut self,
        r: &Resource,
        dests: &[RouteDestination],
        route_path: &str,
        tcp: bool,
    ) -> Option<Vec<WeightedCluster>> {
        let mut out = Vec::new();
        let mut ok = true;
        for d in dests {
            match self.destination(r, d, tcp) {
                Some(cluster) => out.push(WeightedCluster {
                    cluster,
                    weight: d.weight.as_ref().map_or(0, |w| w.value),
                    headers: d.headers.clone(),
                }),
                None => ok = false,
            }
        }
        if dests.len() == 1 {
            if let Some(w) = out.first_mut() {
                w.weight = 100;
            }
        } else if dests.len() > 1 {
            let sum: u32 = dests.iter().map(|d| d.weight.as_ref().map_or(0, |w| w.value)).sum();
            if sum != 100 {
                let shown: Vec<String> = dests
                    .iter()
                    .map(|d| d.weight.as_ref().map_or("(none)".to_string(), |w| w.value.to_string()))
                    .collect();
                let msg = format!(
                    "the weights of the {} destinations ({}) sum to {sum}: expected 100",
                    dests.len(),
                    shown.join(" + ")
                );
                self.report(r, Severity::Error, dests[0].pos, &format!("{route_path}.route"), msg);
                ok = false;
            }
        }
        (ok && !out.is_empty()).then_some(out)
    }
}

/// Where a cluster's setting was written, as `get` finds it: in its subset's traffic policy
/// first (which overrides the rule's field by field), else in the rule's.
fn written<'p>(
    dr: &'p DestinationRule,
    subset: Option<&'p Subset>,
    get: impl Fn(&'p TrafficPolicy) -> Option<(Pos, &'p str)>,
) -> Option<(Pos, &'p str)> {
    subset.and_then(|s| get(&s.traffic_policy)).or_else(|| get(&dr.traffic_policy))
}

/// A ServiceEntry port's protocol: as written, else Istio's selection by port name prefix
/// (`http-web`, `grpc`, `tcp-db`, `https-api`).
fn port_protocol(port: &SePort) -> String {
    port.protocol.clone().unwrap_or_else(|| port.name.split('-').next().unwrap_or("").to_ascii_uppercase())
}

/// How a cluster speaks to its endpoints. `HTTPS` is HTTP/1.1 inside the TLS that the
/// DestinationRule originates; `TLS` is bytes inside it.
fn upstream_protocol(port: &SePort, tcp_route: bool) -> UpstreamProtocol {
    match port_protocol(port).as_str() {
        "HTTP" | "HTTP1" | "HTTPS" => UpstreamProtocol::Http1,
        "HTTP2" | "GRPC" => UpstreamProtocol::Http2,
        "TCP" | "TLS" | "MONGO" | "MYSQL" | "REDIS" => UpstreamProtocol::Tcp,
        _ if tcp_route => UpstreamProtocol::Tcp,
        _ => UpstreamProtocol::Http1,
    }
}

/// The servers of one Gateway on a listener: TLS servers of several Gateways may share a
/// port (the client's SNI picks the server), and a VirtualService takes the hosts of those it
/// is bound to.
#[derive(Clone)]
struct Member {
    /// `None`: the mesh listener.
    gateway: Option<String>,
    /// Server hosts (namespace stripped); `*` for the mesh.
    hosts: Vec<String>,
}

struct Listener {
    plan: ListenerPlan,
    members: Vec<Member>,
    domains: Vec<(HostMatch, Vec<RoutePlan>)>,
    /// Where each domain is in `domains`.
    domain_index: HashMap<HostMatch, usize>,
    resource: Option<usize>,
    port_pos: Pos,
}

impl Ctx<'_> {
    /// Every ServiceEntry address with each of its HTTP ports: the destinations the mesh
    /// listener routes when iptables redirected a connection to it.
    /// The services' virtual addresses with their ports: an HTTP port is routed by Host; a
    /// TCP port gets a cluster of its own, to which a connection redirected there is proxied
    /// with the host's DestinationRule (pool limits, outlier detection, balancing, TLS)
    /// instead of being passed through. The rule's HTTP settings serve the host's HTTP ports
    /// and do nothing on its TCP ports, as in Istio (a `tcp` route of a VirtualService, which
    /// names the cluster itself, is checked instead: see `check_tcp_clusters`).
    fn service_addresses(&mut self) -> Vec<ServiceAddress> {
        let mut out = Vec::new();
        for (se_res, se) in self.service_entries.clone() {
            let Some(host) = se.hosts.iter().find(|h| !h.value.contains('*')) else { continue };
            if se.addresses.is_empty() {
                continue;
            }
            for p in &se.ports {
                if se.resolution == "NONE" {
                    // Passed through to the original destination, whatever the protocol.
                    out.extend(se.addresses.iter().map(|&block| ServiceAddress {
                        block,
                        port: p.number,
                        tcp: None,
                        passthrough: true,
                    }));
                    continue;
                }
                let tcp = match port_protocol(p).as_str() {
                    "HTTP" | "HTTP1" | "HTTP2" | "GRPC" | "GRPC-WEB" => None,
                    "TCP" => {
                        let d = RouteDestination {
                            host: host.clone(),
                            subset: None,
                            port: Some(crate::model::At {
                                value: p.number,
                                pos: host.pos,
                                path: host.path.clone(),
                            }),
                            weight: None,
                            headers: Default::default(),
                            pos: host.pos,
                            path: host.path.to_string(),
                        };
                        let Some(cluster) = self.destination(se_res, &d, true) else { continue };
                        Some(cluster)
                    }
                    // TLS, HTTPS, and the rest: passed through as they are.
                    _ => continue,
                };
                out.extend(se.addresses.iter().map(|&block| ServiceAddress {
                    block,
                    port: p.number,
                    tcp,
                    passthrough: false,
                }));
            }
        }
        out
    }
}

/// The mesh (sidecar outbound) listener, for VirtualServices that name no gateway.
fn mesh_listener(opts: &LoadOptions) -> Listener {
    Listener {
        plan: ListenerPlan {
            intercepted: Some(Vec::new()),
            // The sidecar's own application: its headers are believed.
            ..ListenerPlan::new("mesh", opts.mesh_bind, ListenerProtocol::Http)
        },
        members: vec![Member { gateway: None, hosts: vec!["*".into()] }],
        domains: Vec::new(),
        domain_index: HashMap::new(),
        resource: None,
        port_pos: Pos::default(),
    }
}

impl<'a> Ctx<'a> {
    /// Istio's sidecar routes to every service it knows, VirtualService or not: with
    /// `--kubernetes` the mesh listener is always there, and each host no VirtualService
    /// routes on it gets a route of Istio's defaults (no timeout, its default retries) to
    /// its first HTTP port, under every name Kubernetes' DNS gives it.
    fn default_routes(&mut self, listeners: &mut Vec<Listener>, binds: &mut HashMap<SocketAddr, String>) {
        let mesh = match listeners.iter().position(|l| l.members.iter().any(|m| m.gateway.is_none())) {
            Some(i) => i,
            None if binds.contains_key(&self.opts.mesh_bind) => return,
            None => {
                binds.insert(self.opts.mesh_bind, "mesh".into());
                listeners.push(mesh_listener(self.opts));
                listeners.len() - 1
            }
        };
        // A passthrough (`resolution: NONE`) has no endpoints to route to.
        for (se_res, se) in self.service_entries.clone().into_iter().filter(|(_, se)| se.resolution != "NONE")
        {
            let http = se.ports.iter().find(|p| {
                matches!(port_protocol(p).as_str(), "HTTP" | "HTTP1" | "HTTP2" | "GRPC" | "GRPC-WEB")
            });
            let Some(port) = http else { continue };
            for h in se.hosts.iter().filter(|h| !h.value.contains('*')) {
                let aliases = self.host_aliases(se_res, &h.value);
                let l = &listeners[mesh];
                if aliases.iter().any(|a| l.domain_index.contains_key(&host_match(a))) {
                    continue;
                }
                let d = RouteDestination {
                    host: h.clone(),
                    subset: None,
                    port: Some(crate::model::At { value: port.number, pos: h.pos, path: h.path.clone() }),
                    weight: None,
                    headers: Default::default(),
                    pos: h.pos,
                    path: h.path.to_string(),
                };
                let Some(cluster) = self.destination(se_res, &d, false) else { continue };
                let route = RoutePlan {
                    name: format!("{}/default", h.value),
                    matches: Vec::new(),
                    destinations: vec![WeightedCluster { cluster, weight: 100, headers: Default::default() }],
                    timeout: None,
                    retry: RetryPlan::default(),
                    breaker: None,
                    policy: None,
                    features: Default::default(),
                };
                let l = &mut listeners[mesh];
                for a in aliases {
                    let m = host_match(&a);
                    if !l.domain_index.contains_key(&m) {
                        l.domain_index.insert(m.clone(), l.domains.len());
                        l.domains.push((m, vec![route.clone()]));
                    }
                }
            }
        }
    }
}

/// Validates references across resources and builds the plan. Problems go to `diags`.
pub fn compile(resources: &[Arc<Resource>], opts: &LoadOptions, diags: &mut Vec<Diagnostic>) -> Plan {
    let mut ctx = Ctx {
        opts,
        diags,
        service_entries: Vec::new(),
        service_entry_by_host: HashMap::new(),
        rules: Vec::new(),
        rule_by_host: HashMap::new(),
        wildcard_rules: Vec::new(),
        clusters: Vec::new(),
        cluster_ids: HashMap::new(),
        policies: Vec::new(),
        policy_by_target: HashMap::new(),
        cluster_policies: Vec::new(),
        route_policies: Vec::new(),
        retry_floor_reported: Default::default(),
        tls_files: crate::tls::Files::new(opts.credentials_dir.as_deref(), opts.identity_dir.as_deref()),
        upstream_tls: HashMap::new(),
        tls_reported: Default::default(),
        profiles: Default::default(),
    };
    let mut policies = Vec::new();
    let mut authz_policies = Vec::new();
    let mut sidecars = Vec::new();
    let mut rules = Vec::new();
    let mut peer_authentications = Vec::new();
    let mut service_profiles = Vec::new();
    let mut gateways: Vec<(&Resource, &Gateway)> = Vec::new();
    let mut services: Vec<(&Resource, &VirtualService)> = Vec::new();
    for r in resources.iter().map(|r| &**r) {
        match &r.spec {
            Spec::Gateway(g) => gateways.push((r, g)),
            Spec::ServiceEntry(se) if ctx.visible(r, se.export_to.as_ref()) => {
                ctx.service_entries.push((r, se))
            }
            Spec::VirtualService(vs) if ctx.visible(r, vs.export_to.as_ref()) => services.push((r, vs)),
            Spec::DestinationRule(dr) if !ctx.visible(r, dr.export_to.as_ref()) => {}
            Spec::ResiliencePolicy(p) => policies.push((r, &**p)),
            Spec::DestinationRule(dr) => rules.push((r, &**dr)),
            Spec::ServiceEntry(_) | Spec::VirtualService(_) => {}
            Spec::AuthorizationPolicy(p) => authz_policies.push((r, &**p)),
            Spec::Sidecar(s) => sidecars.push((r, s)),
            Spec::PeerAuthentication(p) => peer_authentications.push((r, p)),
            Spec::ServiceProfile(p) => service_profiles.push((r, &**p)),
        }
    }
    let authorization = ctx.authorization(&authz_policies);
    // The Sidecar of this workload: its ingress ports (below) and its egress hosts, which
    // narrow what the outbound side sees.
    let sidecar = ctx.pick_sidecar(&sidecars);
    if let Some(sidecar) = sidecar {
        ctx.scope_to_egress(sidecar, &mut services, &mut rules);
    }
    ctx.index_service_entries();
    // After the ServiceEntries: a rule's short Kubernetes host is keyed by the full one.
    for (r, dr) in rules {
        ctx.add_rule(r, dr);
    }
    for (r, dr) in ctx.rules.clone() {
        let entry = ctx.service_entry(&ctx.canonical(r, &dr.host.value));
        if let Some((se_res, _)) = entry.filter(|(_, se)| se.resolution == "NONE") {
            let msg = format!(
                "`{}` has resolution NONE ({}): its connections are passed through untouched, and this DestinationRule would not apply to them (Tripline does not apply policies to a passthrough yet); give the ServiceEntry STATIC or DNS endpoints, or remove the rule",
                dr.host.value,
                se_res.id()
            );
            ctx.report(r, Severity::Error, dr.host.pos, &dr.host.path, msg);
            continue;
        }
        if entry.is_none() && !dr.host.value.contains('*') {
            if let Some(note) = ctx.assumed_kube_service(r, &dr.host.value) {
                ctx.report(r, Severity::Note, dr.host.pos, &dr.host.path, note);
                continue;
            }
            let msg = format!(
                "no ServiceEntry declares host `{}`: this policy applies once the host appears (add a ServiceEntry to route to it)",
                dr.host.value
            );
            ctx.report(r, Severity::Warning, dr.host.pos, &dr.host.path, msg);
        }
    }
    ctx.check_policies(policies, &services);
    // After the policies: a profile's failure classes are checked against theirs.
    let profile_routes = ctx.pick_profiles(&service_profiles, &services);
    services.extend(profile_routes.iter().map(|(r, vs)| (*r, vs)));

    // Listeners from Gateway servers.
    let mut listeners: Vec<Listener> = Vec::new();
    let mut binds: HashMap<SocketAddr, String> = HashMap::new();
    for (gi, (r, g)) in gateways.iter().enumerate() {
        for s in &g.servers {
            let bind = SocketAddr::new(s.bind, s.port.value);
            let name = format!("{}/{}", r.name, s.port_name);
            let hosts: Vec<String> = s.hosts.iter().map(|h| server_host(&h.value).to_string()).collect();
            // PASSTHROUGH (on TLS or HTTPS) proxies the still-encrypted bytes: a TCP listener.
            let passthrough = s.tls.as_ref().is_some_and(|t| t.passthrough);
            let protocol = match s.protocol.as_str() {
                _ if passthrough => ListenerProtocol::Tcp,
                "HTTP" | "HTTPS" => ListenerProtocol::Http,
                "TCP" | "TLS" => ListenerProtocol::Tcp,
                _ => ListenerProtocol::Http2,
            };
            let tls = match s.tls.as_ref().and_then(|t| t.terminate.as_ref()) {
                Some(t) => {
                    let mut findings = Vec::new();
                    let plan = ctx.tls_files.server(&r.file, t, name.clone(), hosts.clone(), &mut findings);
                    ctx.report_tls(r, findings);
                    match plan {
                        Some(plan) => Some(plan),
                        None => continue,
                    }
                }
                None => None,
            };
            if let Some(other) = binds.get(&bind) {
                let on_port = listeners.iter_mut().find(|l| l.plan.bind == bind);
                if let Some(l) = on_port.filter(|l| passthrough || l.plan.passthrough) {
                    share_passthrough(&mut ctx, l, (r, s), passthrough, hosts);
                    continue;
                }
                let shared = listeners.iter_mut().find(|l| l.plan.bind == bind && !l.plan.tls.is_empty());
                match (tls, shared) {
                    (Some(tls), Some(l)) => share_port(&mut ctx, l, (r, g, s), protocol, tls, hosts),
                    _ => {
                        let msg = format!("duplicate listener port: {bind} is already used by listener `{other}`; only TLS servers (protocol HTTPS, or TLS) share a port, the client's SNI choosing one");
                        ctx.report(r, Severity::Error, s.port.pos, &s.port.path, msg);
                    }
                }
                continue;
            }
            binds.insert(bind, name.clone());
            let https_redirect = tls.is_none()
                && protocol != ListenerProtocol::Tcp
                && s.tls.as_ref().is_some_and(|t| t.https_redirect);
            listeners.push(Listener {
                plan: ListenerPlan {
                    name,
                    bind,
                    protocol,
                    virtual_hosts: Vec::new(),
                    tcp_routes: Vec::new(),
                    trust_client: g.trusted_proxies > 0,
                    trusted_proxies: g.trusted_proxies,
                    tls: tls.into_iter().collect(),
                    https_redirect,
                    passthrough,
                    plaintext_too: false,
                    mtls: None,
                    intercepted: None,
                    captured: false,
                    inbound_capture: false,
                },
                members: vec![Member { gateway: Some(r.name.clone()), hosts }],
                domains: Vec::new(),
                domain_index: HashMap::new(),
                resource: Some(gi),
                port_pos: s.port.pos,
            });
        }
    }

    // VirtualServices.
    let mut tcp_clusters = Vec::new();
    for (r, vs) in &services {
        let mut targets_mesh = vs.gateways.is_empty();
        let mut targets: Vec<&str> = Vec::new();
        for g in &vs.gateways {
            let name = g.value.rsplit_once('/').map_or(g.value.as_str(), |(_, n)| n);
            if name == "mesh" {
                targets_mesh = true;
            } else if gateways.iter().any(|(gr, _)| gr.name == name) {
                targets.push(name);
            } else {
                let known: Vec<&str> = gateways.iter().map(|(gr, _)| gr.name.as_str()).collect();
                let known = if known.is_empty() {
                    "none are defined".to_string()
                } else {
                    format!("defined: {}", known.join(", "))
                };
                let msg =
                    format!("unknown gateway `{}` (use `mesh` for the sidecar listener; {known})", g.value);
                ctx.report(r, Severity::Error, g.pos, &g.path, msg);
            }
        }
        if targets_mesh && !listeners.iter().any(|l| l.members.iter().any(|m| m.gateway.is_none())) {
            if let Some(other) = binds.get(&opts.mesh_bind) {
                let msg = format!(
                    "the mesh listener address {} is already used by listener `{other}`",
                    opts.mesh_bind
                );
                ctx.report(r, Severity::Error, r.decoded_pos(), "spec.gateways", msg);
            } else {
                binds.insert(opts.mesh_bind, "mesh".into());
                listeners.push(mesh_listener(opts));
            }
        }
        for (i, by) in crate::lint::shadowed(&vs.http) {
            let h = &vs.http[i];
            ctx.report(r, Severity::Warning, h.pos, &h.path, crate::lint::shadowed_message(&vs.http[by]));
        }
        // Compile the routes once; attach them to every listener they belong to.
        let mut http_routes = Vec::new();
        for (i, h) in vs.http.iter().enumerate() {
            let destinations = if h.features.answer.is_some() {
                Some(Vec::new())
            } else if h.route.is_empty() {
                continue;
            } else {
                ctx.destinations(r, &h.route, &h.path, false)
            };
            // Resolved even when a destination is not, so that every unknown host is reported.
            let mirrored: Vec<_> = h
                .mirrors
                .iter()
                .filter_map(|m| Some((m, ctx.destination(r, &m.destination, false)?)))
                .collect();
            let Some(destinations) = destinations else { continue };
            // Unique across VirtualServices: route breakers are keyed by it.
            let name = match &h.name {
                Some(n) => format!("{}/{n}", r.name),
                None => format!("{}/http[{i}]", r.name),
            };
            let own = ctx.route_policy(&r.name, i);
            let fallback = own.and_then(|(pr, p)| {
                let f = p.fallback.as_ref()?;
                let to = match &f.to {
                    FallbackTo::Destination(d) => FallbackTo::Destination(ctx.destination(pr, d, false)?),
                    FallbackTo::Response { status, headers, body } => FallbackTo::Response {
                        status: Clone::clone(status),
                        headers: headers.clone(),
                        body: body.clone(),
                    },
                };
                Some(FallbackPlan { on: f.on, to })
            });
            // The route's own policy's `retries` replaces those of its destinations' policies.
            let settings: Vec<PolicyRetries> = match own.and_then(|(_, p)| p.retries.clone()) {
                Some(mine) => vec![mine],
                None => destinations
                    .iter()
                    .map(|w| {
                        ctx.cluster_policies[w.cluster].and_then(|p| p.retries.clone()).unwrap_or_default()
                    })
                    .collect(),
            };
            let retry = route_retry(h, &settings);
            for (k, m) in h.matches.iter().enumerate() {
                let scope = &m.scope;
                let unknown = if !scope.source_labels.is_empty() && opts.workload_labels.is_empty() {
                    Some(("sourceLabels", "labels", "--workload-labels"))
                } else if scope.source_namespace.is_some() && opts.workload_namespace.is_none() {
                    Some(("sourceNamespace", "namespace", "--workload-namespace"))
                } else {
                    None
                };
                if let Some((field, what, flag)) = unknown {
                    let msg = format!("this match entry never applies: the workload's {what} are not known (give them with {flag})");
                    ctx.report(r, Severity::Warning, h.pos, &format!("{}.match[{k}].{field}", h.path), msg);
                }
            }
            let mut mirrors = Vec::new();
            for (m, cluster) in &mirrored {
                if destinations.iter().any(|d| d.cluster == *cluster) {
                    let d = &m.destination;
                    let msg = crate::lint::mirror_to_primary(
                        &d.host.value,
                        d.subset.as_ref().map(|s| s.value.as_str()),
                    );
                    ctx.report(r, Severity::Warning, d.pos, &d.path, msg);
                }
                mirrors.push(MirrorPlan { cluster: *cluster, share: Fraction::of_percent(m.percent) });
            }
            if let Some(msg) = crate::lint::non_idempotent_retries(h, &retry) {
                ctx.report(r, Severity::Warning, h.pos, &format!("{}.retries", h.path), msg);
            }
            http_routes.push(RoutePlan {
                name,
                matches: h.matches.clone(),
                destinations,
                timeout: h.timeout,
                retry,
                breaker: own.and_then(|(_, p)| p.breaker.clone()),
                policy: own.map(|(pr, _)| pr.name.clone()),
                features: RouteFeatures {
                    fault: h.fault.as_ref().map(fault_plan),
                    mirrors,
                    rate_limit: own.and_then(|(_, p)| p.rate_limit.clone()),
                    fallback,
                    ..h.features.clone()
                },
            });
        }
        let mut tcp_routes = Vec::new();
        for (i, t) in vs.tcp.iter().enumerate() {
            if let Some(destinations) = ctx.destinations(r, &t.route, &t.path, true) {
                let plan = TcpRoutePlan {
                    name: format!("{}/tcp[{i}]", r.name),
                    matches: Vec::new(),
                    sni_hosts: Vec::new(),
                    destinations,
                };
                tcp_routes.push((t, plan));
            }
        }
        // A `tls` route is a `tcp` route that also matches the SNI, on passthrough listeners.
        let mut tls_routes = Vec::new();
        for (i, t) in vs.tls.iter().enumerate() {
            if let Some(destinations) = ctx.destinations(r, &t.route, &t.path, true) {
                let name = format!("{}/tls[{i}]", r.name);
                let plan = TcpRoutePlan { name, matches: Vec::new(), sni_hosts: Vec::new(), destinations };
                tls_routes.push((t, plan));
            }
        }
        let mut tls_served = vec![false; tls_routes.len()];
        let mut passthrough_listeners = 0;
        let mut attached_any = false;
        let mut tcp_listeners = 0;
        for l in listeners.iter_mut() {
            let members: Vec<Member> = l
                .members
                .iter()
                .filter(|m| match &m.gateway {
                    Some(g) => targets.contains(&g.as_str()),
                    None => targets_mesh,
                })
                .cloned()
                .collect();
            if members.is_empty() {
                continue;
            }
            let port = l.plan.bind.port();
            if l.plan.passthrough {
                passthrough_listeners += 1;
                for (k, (t, plan)) in tls_routes.iter().enumerate() {
                    let here = tls_scoped(t, plan, &members, port, opts);
                    tls_served[k] |= !here.is_empty();
                    attached_any |= !here.is_empty();
                    for t in here {
                        tcp_clusters.extend(t.destinations.iter().map(|w| w.cluster));
                        l.plan.tcp_routes.push(t);
                    }
                }
                continue;
            }
            if l.plan.protocol == ListenerProtocol::Tcp {
                let here: Vec<TcpRoutePlan> = tcp_routes
                    .iter()
                    .filter_map(|(t, plan)| {
                        members.iter().find_map(|m| tcp_scoped(t, plan, m.gateway.as_deref(), port, opts))
                    })
                    .collect();
                if !here.is_empty() {
                    attached_any = true;
                    tcp_listeners += 1;
                }
                for t in here {
                    // First match wins: after a route without matches, no other is taken.
                    if let Some(all) = l.plan.tcp_routes.iter().find(|r| r.matches.is_empty()) {
                        let at = tcp_routes.iter().find(|(_, p)| p.name == t.name).map(|(m, _)| m);
                        let (pos, path) =
                            at.map_or((t_pos(vs), "spec.tcp[0]".to_string()), |m| (m.pos, m.path.clone()));
                        let msg = format!(
                            "this `tcp` route is never taken on listener `{}`: `{}` before it takes every connection (first match wins); give that one a `match` or move this one before it",
                            l.plan.name, all.name
                        );
                        ctx.report(r, Severity::Warning, pos, &path, msg);
                    }
                    tcp_clusters.extend(t.destinations.iter().map(|w| w.cluster));
                    l.plan.tcp_routes.push(t);
                }
                continue;
            }
            if vs.http.is_empty() {
                continue;
            }
            // The domains of the Gateways before: a second Gateway on the port adds only its own.
            let mut taken: Vec<HostMatch> = Vec::new();
            for member in &members {
                let here = scoped(&http_routes, member.gateway.as_deref(), port, opts);
                let mut added = Vec::new();
                for h in &vs.hosts {
                    let names = match member.gateway {
                        None => ctx.host_aliases(r, &h.value),
                        Some(_) => vec![h.value.clone()],
                    };
                    let domains: Vec<String> = names
                        .iter()
                        .flat_map(|name| member.hosts.iter().filter_map(|s| intersect(name, s)))
                        .collect();
                    for domain in domains {
                        attached_any = true;
                        let m = host_match(&domain);
                        if taken.contains(&m) {
                            continue;
                        }
                        added.push(m.clone());
                        match l.domain_index.get(&m) {
                            Some(&i) => l.domains[i].1.extend(here.iter().cloned()),
                            None => {
                                l.domain_index.insert(m.clone(), l.domains.len());
                                l.domains.push((m, here.clone()));
                            }
                        }
                    }
                }
                taken.extend(added);
            }
        }
        if !tcp_routes.is_empty() && tcp_listeners == 0 {
            let msg = "no TCP listener serves this `tcp` route, so it receives no connection (the mesh listener serves HTTP only): bind the VirtualService to a Gateway with a `TCP` server";
            ctx.report(r, Severity::Warning, t_pos(vs), "spec.tcp[0]", msg);
        }
        // Whether a bound Gateway has a PASSTHROUGH server, as written (one refused for its
        // port has its own error).
        let passes = gateways.iter().any(|(gr, g)| {
            targets.contains(&gr.name.as_str())
                && g.servers.iter().any(|s| s.tls.as_ref().is_some_and(|t| t.passthrough))
        });
        let unbound = match targets.as_slice() {
            [] if targets_mesh => {
                Some("it is bound to the mesh listener only, which serves HTTP".to_string())
            }
            // Its gateways are all unknown: reported above.
            [] => None,
            names => {
                Some(format!("no server of gateway(s) {} has `tls.mode: PASSTHROUGH`", names.join(", ")))
            }
        };
        if let (Some(first), Some(bound), false) = (vs.tls.first(), unbound, passes) {
            let msg = format!("`tls` routes take still-encrypted connections by their SNI on a Gateway server with `tls.mode: PASSTHROUGH`, and {bound}, so these routes would take no connection: bind the VirtualService (`gateways`) to a Gateway with a server of protocol TLS (or HTTPS) and `tls: {{mode: PASSTHROUGH}}`, or remove `tls`");
            ctx.report(r, Severity::Error, first.pos, &first.path, msg);
        } else if passthrough_listeners > 0 {
            for ((t, _), served) in tls_routes.iter().zip(&tls_served) {
                if !served {
                    let msg = format!("this `tls` route takes no connection: none of its match entries applies on the PASSTHROUGH listeners `{}` is bound to (their `sniHosts` are none of the servers' hosts, or their `port` or `gateways` do not fit)", r.name);
                    ctx.report(r, Severity::Warning, t.pos, &t.path, msg);
                }
            }
        }
        if !attached_any && !targets.is_empty() && !vs.hosts.is_empty() {
            let msg = format!(
                "none of this VirtualService's hosts or routes fit the servers of gateway(s) {}: it receives no traffic",
                targets.join(", ")
            );
            ctx.report(r, Severity::Warning, vs.hosts[0].pos, &vs.hosts[0].path, msg);
        }
    }

    if opts.kubernetes {
        ctx.default_routes(&mut listeners, &mut binds);
    }
    ctx.check_tcp_clusters(&tcp_clusters);
    let addresses = match listeners.iter().any(|l| l.plan.intercepted.is_some()) {
        true => ctx.service_addresses(),
        false => Vec::new(),
    };
    for l in listeners.iter_mut().filter(|l| l.plan.intercepted.is_some()) {
        l.plan.intercepted = Some(addresses.clone());
    }
    let inbound = ctx.inbound(sidecar, &peer_authentications, &mut binds);

    let mut plan_listeners = Vec::new();
    for mut l in listeners {
        l.domains.sort_by_key(|(m, _)| specificity(m));
        l.plan.virtual_hosts =
            l.domains.into_iter().map(|(m, routes)| VirtualHostPlan { domains: vec![m], routes }).collect();
        if let Some(gi) = l.resource {
            let r = gateways[gi].0;
            let idle = match l.plan.protocol {
                ListenerProtocol::Tcp if l.plan.passthrough => l
                    .plan
                    .tcp_routes
                    .is_empty()
                    .then_some("no VirtualService gives it a `tls` route: connections are closed"),
                ListenerProtocol::Tcp => l
                    .plan
                    .tcp_routes
                    .is_empty()
                    .then_some("no VirtualService gives it a `tcp` route: connections are closed"),
                _ => l
                    .plan
                    .virtual_hosts
                    .is_empty()
                    .then_some("no VirtualService is bound to it: every request gets 404 no-route"),
            };
            if let Some(why) = idle {
                let msg = format!("listener `{}` ({}): {why}", l.plan.name, l.plan.bind);
                ctx.report(r, Severity::Warning, l.port_pos, "spec.servers", msg);
            }
        }
        plan_listeners.push(l.plan);
    }
    plan_listeners.extend(inbound);
    ctx.check_identities(&authz_policies, &plan_listeners);
    Plan { listeners: plan_listeners, clusters: ctx.clusters, authorization }
}

impl<'a> Ctx<'a> {
    /// Warns at each identity an AuthorizationPolicy names that no request of this config can
    /// have: a JWT's (Tripline reads no RequestAuthentication), an SNI when no listener
    /// terminates TLS, a peer identity when no listener asks clients for a certificate.
    fn check_identities(
        &mut self,
        policies: &[(&Resource, &AuthorizationPolicy)],
        listeners: &[ListenerPlan],
    ) {
        let terminates = listeners.iter().any(|l| !l.tls.is_empty() || l.passthrough);
        let verifies =
            listeners.iter().any(|l| l.tls.iter().any(|t| t.mode != crate::plan::DownstreamTlsMode::Simple));
        const NEVER: &str = "so a list of values never matches and a `not` list always does, as Istio treats a request without it";
        for &(r, p) in policies {
            for (pos, path, attribute) in &p.identity_fields {
                let why = match attribute {
                    crate::authz::Attribute::RequestAuth => {
                        "Tripline reads no RequestAuthentication (JWT): no request has this attribute"
                    }
                    crate::authz::Attribute::Sni if !terminates => {
                        "no listener of this config terminates TLS or passes it through: no request has a TLS server name"
                    }
                    crate::authz::Attribute::Sni => continue,
                    _ if !verifies => "no listener of this config asks clients for a certificate (a Gateway server's `tls.mode` MUTUAL or OPTIONAL_MUTUAL): no request has a peer identity",
                    _ => continue,
                };
                self.report(r, Severity::Warning, *pos, path, format!("{why}, {NEVER}"));
            }
        }
    }

    /// The AuthorizationPolicies that apply to this proxy's workload (see [`crate::authz`]),
    /// in the order written, and `validate`'s findings about each.
    fn authorization(&mut self, policies: &[(&Resource, &AuthorizationPolicy)]) -> Vec<AuthzPolicyPlan> {
        let mut out = Vec::new();
        for &(r, p) in policies {
            if p.rules.is_empty() && p.action == AuthzAction::Allow {
                let msg = "an ALLOW policy without rules matches no request: where it applies, every request that no other ALLOW policy allows is denied (Istio's allow-nothing); to allow everything, write `rules: [{}]`";
                self.report(r, Severity::Warning, r.pos, "spec", msg);
            }
            match self.applies(r, p) {
                Ok(false) => {}
                Ok(true) => {
                    let name = match &r.namespace {
                        Some(ns) => format!("{ns}/{}", r.name),
                        None => r.name.clone(),
                    };
                    out.push(AuthzPolicyPlan {
                        name,
                        action: p.action,
                        rules: p.rules.clone(),
                        dry_run: p.dry_run,
                    });
                }
                Err((path, msg)) => self.report(r, Severity::Error, r.pos, path, msg),
            }
        }
        out
    }

    /// Whether a policy applies to this proxy's workload, or why that cannot be told.
    fn applies(&self, r: &Resource, p: &AuthorizationPolicy) -> Result<bool, (&'static str, String)> {
        Ok(self.scope(r, p.selector.as_ref(), "spec.selector")?.is_some())
    }

    /// At which level a resource written for workloads (a policy, a Sidecar) applies to this
    /// proxy's workload (`None`: it is for others), or why that cannot be told. Istio's rules:
    /// a selector makes it the workload's (any namespace's when in the root namespace),
    /// without one it is the namespace's, or the mesh's in the root namespace. A resource
    /// without `metadata.namespace` is in the workload's namespace. `selector_path` is where
    /// the selector is written.
    fn scope(
        &self,
        r: &Resource,
        selector: Option<&std::collections::BTreeMap<String, String>>,
        selector_path: &'static str,
    ) -> Result<Option<crate::peer_authn::Level>, (&'static str, String)> {
        use crate::peer_authn::Level;
        let kind = &r.kind;
        let root = r.namespace.as_deref() == Some(crate::authz::ROOT_NAMESPACE);
        if let Some(ns) = r.namespace.as_deref().filter(|_| !root) {
            match &self.opts.workload_namespace {
                Some(w) if w != ns => return Ok(None),
                Some(_) => {}
                None => return Err(("metadata.namespace", format!("this {kind} is for the workloads of namespace `{ns}`, and this proxy's namespace is not known: give --workload-namespace (a {kind} left out could let through what it was written to stop)"))),
            }
        }
        match selector {
            Some(labels) if !labels.is_empty() => {
                if self.opts.workload_labels.is_empty() {
                    return Err((selector_path, format!("this {kind} selects workloads by label, and this proxy's labels are not known: give --workload-labels (a {kind} left out could let through what it was written to stop)")));
                }
                let matches = labels.iter().all(|(k, v)| self.opts.workload_labels.get(k) == Some(v));
                Ok(matches.then_some(Level::Workload))
            }
            _ if root => Ok(Some(Level::Mesh)),
            _ => Ok(Some(Level::Namespace)),
        }
    }
}

/// What a TLS server asks of clients, in words.
fn asks(t: &TlsServerPlan) -> String {
    let ca = t.ca_certificates.as_ref().map(|p| format!(" chaining to {}", p.display())).unwrap_or_default();
    let names = match t.subject_alt_names.as_slice() {
        [] => String::new(),
        names => format!(" naming {}", names.join(" or ")),
    };
    match t.mode {
        DownstreamTlsMode::Simple => "no certificate (SIMPLE)".to_string(),
        DownstreamTlsMode::Mutual => format!("a certificate (MUTUAL){ca}{names}"),
        DownstreamTlsMode::OptionalMutual => format!("an optional certificate (OPTIONAL_MUTUAL){ca}{names}"),
    }
}

/// Adds TLS server `s` of Gateway `r` (`tls`, for SNI names `hosts`) to the listener of the
/// TLS servers already on its port, as Istio's filter chains chosen by SNI: the servers must
/// be alike in what the listener does with a connection once the SNI chose (protocol, the
/// client certificate asked for, trusted proxies), since one listener routes all their hosts;
/// an SNI name is one server's.
fn share_port(
    ctx: &mut Ctx<'_>,
    l: &mut Listener,
    (r, g, s): (&Resource, &Gateway, &Server),
    protocol: ListenerProtocol,
    tls: TlsServerPlan,
    hosts: Vec<String>,
) {
    let first = &l.plan.tls[0];
    let kind = |p: ListenerProtocol| if p == ListenerProtocol::Tcp { "TLS" } else { "HTTPS" };
    let problem = if l.plan.protocol != protocol {
        Some(format!(
            "the servers sharing a port must all be HTTPS or all TLS, and `{}` is {}",
            first.name,
            kind(l.plan.protocol)
        ))
    } else if (first.mode, &first.ca_certificates, &first.subject_alt_names)
        != (tls.mode, &tls.ca_certificates, &tls.subject_alt_names)
    {
        Some(format!(
            "`{}` asks clients for {}, and this server for {}: the servers sharing a port must ask the same (mode, caCertificates, subjectAltNames), since one listener routes all their hosts and a client could pick the laxer server by its SNI",
            first.name,
            asks(first),
            asks(&tls)
        ))
    } else if g.trusted_proxies != l.plan.trusted_proxies {
        Some(format!(
            "the Gateway of `{}` trusts {} proxies in front of it (numTrustedProxies), and this one {}: the Gateways sharing a port must agree",
            first.name, l.plan.trusted_proxies, g.trusted_proxies
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        let msg = format!("{} is already used by listener `{}`: {problem}", l.plan.bind, l.plan.name);
        ctx.report(r, Severity::Error, s.port.pos, &s.port.path, msg);
        return;
    }
    let mut ok = true;
    for (h, at) in hosts.iter().zip(&s.hosts) {
        if let Some(other) = l.plan.tls.iter().find(|t| t.hosts.iter().any(|x| x.eq_ignore_ascii_case(h))) {
            let msg = format!(
                "host `{h}` is already served on {} by `{}`: the client's SNI picks one server, and one certificate, per name",
                l.plan.bind, other.name
            );
            ctx.report(r, Severity::Error, at.pos, &at.path, msg);
            ok = false;
        }
    }
    if !ok {
        return;
    }
    l.plan.tls.push(tls);
    match l.members.iter_mut().find(|m| m.gateway.as_deref() == Some(r.name.as_str())) {
        Some(m) => m.hosts.extend(hosts),
        None => l.members.push(Member { gateway: Some(r.name.clone()), hosts }),
    }
}

/// Adds server `s` of Gateway `r` (for SNI names `hosts`) to listener `l` on its port, when
/// either is PASSTHROUGH (`passthrough`: the server is): PASSTHROUGH servers share a port, each
/// Gateway's hosts narrowing the `sniHosts` of the VirtualServices bound to it; a server that
/// terminates TLS (or is plaintext) does not share one with them.
fn share_passthrough(
    ctx: &mut Ctx<'_>,
    l: &mut Listener,
    (r, s): (&Resource, &Server),
    passthrough: bool,
    hosts: Vec<String>,
) {
    if !(passthrough && l.plan.passthrough) {
        let problem = match passthrough {
            true => "it does not pass TLS through, and this server does (PASSTHROUGH)",
            false => "it passes TLS through (PASSTHROUGH), and this server does not",
        };
        let msg = format!("{} is already used by listener `{}`: {problem}; a PASSTHROUGH server shares its port only with other PASSTHROUGH servers (the SNI chooses a route for the still-encrypted connection, not whether to terminate it): give one of them a port of its own", l.plan.bind, l.plan.name);
        ctx.report(r, Severity::Error, s.port.pos, &s.port.path, msg);
        return;
    }
    match l.members.iter_mut().find(|m| m.gateway.as_deref() == Some(r.name.as_str())) {
        Some(m) => m.hosts.extend(hosts),
        None => l.members.push(Member { gateway: Some(r.name.clone()), hosts }),
    }
}

fn t_pos(vs: &VirtualService) -> Pos {
    vs.tcp.first().map(|t| t.pos).unwrap_or_default()
}

/// A `tcp` route as it applies on one TCP listener, as [`scoped`] does for HTTP routes: the
/// match entries that can apply there, each reduced to its `destinationSubnets` (checked per
/// connection); `None` when none can.
fn tcp_scoped(
    t: &crate::model::TcpRoute,
    plan: &TcpRoutePlan,
    gateway: Option<&str>,
    port: u16,
    opts: &LoadOptions,
) -> Option<TcpRoutePlan> {
    if t.matches.is_empty() {
        return Some(plan.clone());
    }
    let here: Vec<&crate::model::TcpMatch> = t
        .matches
        .iter()
        .filter(|m| {
            let http = RequestMatch { port: m.port, scope: m.scope.clone(), ..RequestMatch::default() };
            scope_holds(&http, gateway, port, opts)
        })
        .collect();
    if here.is_empty() {
        return None;
    }
    // An entry without subnets takes every connection: then so does the route.
    let matches = match here.iter().any(|m| m.destination_subnets.is_empty()) {
        true => Vec::new(),
        false => here.iter().map(|m| m.destination_subnets.clone()).collect(),
    };
    Some(TcpRoutePlan { matches, ..plan.clone() })
}

/// A `tls` route as it applies on one passthrough listener whose servers of the Gateways the
/// VirtualService is bound to are `members`: the match entries that can apply there (as for
/// `tcp` routes), each with its `sniHosts` narrowed to those servers' hosts (the more specific
/// of the two names where one covers the other, as Istio does; an entry left with none does
/// not apply). Entries with the same `destinationSubnets` are one plan. Empty: none applies.
fn tls_scoped(
    t: &crate::model::TcpRoute,
    plan: &TcpRoutePlan,
    members: &[Member],
    port: u16,
    opts: &LoadOptions,
) -> Vec<TcpRoutePlan> {
    let mut out: Vec<TcpRoutePlan> = Vec::new();
    for m in &t.matches {
        let here = RequestMatch { port: m.port, scope: m.scope.clone(), ..RequestMatch::default() };
        let mut names: Vec<String> = Vec::new();
        for member in members.iter().filter(|g| scope_holds(&here, g.gateway.as_deref(), port, opts)) {
            for sni in &m.sni_hosts {
                for name in member.hosts.iter().filter_map(|server| intersect(sni, server)) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        if names.is_empty() {
            continue;
        }
        let matches = match m.destination_subnets.is_empty() {
            true => Vec::new(),
            false => vec![m.destination_subnets.clone()],
        };
        match out.iter_mut().find(|p| p.matches == matches) {
            Some(p) => {
                for n in names {
                    if !p.sni_hosts.contains(&n) {
                        p.sni_hosts.push(n);
                    }
                }
            }
            None => out.push(TcpRoutePlan { matches, sni_hosts: names, ..plan.clone() }),
        }
    }
    out
}

/// The routes as they apply on one listener (`gateway`: its Gateway's name, `None` for the
/// mesh listener; `port`: its port): a match entry whose `gateways`, `sourceLabels` or
/// `sourceNamespace` do not hold here is dropped, and a route left without entries is not
/// attached; on a Gateway listener `port` is checked now and cleared (the mesh listener checks
/// the authority's port per request). Every other route is as compiled.
fn scoped(routes: &[RoutePlan], gateway: Option<&str>, port: u16, opts: &LoadOptions) -> Vec<RoutePlan> {
    let scoped_entry = |m: &RequestMatch| !m.scope.is_empty() || (gateway.is_some() && m.port.is_some());
    if !routes.iter().any(|r| r.matches.iter().any(scoped_entry)) {
        return routes.to_vec();
    }
    let applies = |m: &RequestMatch| scope_holds(m, gateway, port, opts);
    routes
        .iter()
        .filter_map(|r| {
            if r.matches.is_empty() {
                return Some(r.clone());
            }
            let matches: Vec<RequestMatch> = r
                .matches
                .iter()
                .filter(|m| applies(m))
                .map(|m| {
                    let mut m = m.clone();
                    m.scope = MatchScope::default();
                    if gateway.is_some() {
                        m.port = None;
                    }
                    m
                })
                .collect();
            (!matches.is_empty()).then(|| RoutePlan { matches, ..r.clone() })
        })
        .collect()
}

/// Whether a match entry's conditions on where it runs hold on a listener (see [`scoped`]).
fn scope_holds(m: &RequestMatch, gateway: Option<&str>, port: u16, opts: &LoadOptions) -> bool {
    let s = &m.scope;
    let here = |g: &String| {
        let name = g.rsplit_once('/').map_or(g.as_str(), |(_, n)| n);
        match gateway {
            Some(gw) => name == gw,
            None => name == "mesh",
        }
    };
    (s.gateways.is_empty() || s.gateways.iter().any(here))
        && s.source_labels.iter().all(|(k, v)| opts.workload_labels.get(k) == Some(v))
        && s.source_namespace.as_ref().is_none_or(|ns| opts.workload_namespace.as_ref() == Some(ns))
        && (gateway.is_none() || m.port.is_none_or(|p| p == port))
}

/// The fault as the proxy draws it: shares in millionths, the abort's answer resolved.
fn fault_plan(f: &crate::model::Fault) -> FaultPlan {
    FaultPlan {
        delay: f
            .delay
            .as_ref()
            .map(|d| FaultDelayPlan { fixed: d.fixed_delay, share: Fraction::of_percent(d.percentage) }),
        abort: f.abort.as_ref().map(|a| {
            let with = match (&a.grpc_status, a.http_status) {
                (Some((_, code)), _) => AbortWith::Grpc(*code),
                (None, status) => AbortWith::Http(status.unwrap_or(500)),
            };
            (with, Fraction::of_percent(a.percentage))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_cover_and_intersect_like_istio() {
        assert!(covers("*", "a.b"));
        assert!(covers("*.example.com", "api.example.com"));
        assert!(covers("*.example.com", "*.eu.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("API.example.com", "api.example.com"));
        assert_eq!(intersect("api.example.com", "*.example.com").as_deref(), Some("api.example.com"));
        assert_eq!(
            intersect("*", "*.example.com").as_deref(),
            Some("*.example.com"),
            "the more specific side wins"
        );
        assert_eq!(intersect("a.other.com", "*.example.com"), None);
        assert_eq!(server_host("ns/*.example.com"), "*.example.com");
    }

    #[test]
    fn virtual_hosts_sort_most_specific_first() {
        let mut v = [host_match("*"), host_match("*.com"), host_match("x.a.com"), host_match("*.a.com")];
        v.sort_by_key(specificity);
        assert_eq!(
            v,
            [
                HostMatch::Exact("x.a.com".into()),
                HostMatch::Suffix(".a.com".into()),
                HostMatch::Suffix(".com".into()),
                HostMatch::Any
            ]
        );
    }

    #[test]
    fn subset_policy_overrides_field_by_field() {
        let mut top = TrafficPolicy { load_balancer: Some(LoadBalancer::Random), ..Default::default() };
        top.connection_pool.max_connections = Some(10);
        top.connection_pool.max_retries = Some(2);
        let mut sub = TrafficPolicy::default();
        sub.connection_pool.max_connections = Some(3);
        let (lb, pool) = effective_policy(&top, Some(&sub));
        assert_eq!(lb, LoadBalancer::Random);
        assert_eq!((pool.max_connections, pool.max_retries, pool.max_requests), (3, 2, UNLIMITED));
        assert_eq!(
            effective_policy(&TrafficPolicy::default(), None),
            (LoadBalancer::LeastRequest, PoolLimits::default())
        );
    }
}
