//! Where each setting of a compiled route or cluster came from, for `tripline validate
//! --explain`: the resource and field path that set it, or whose default it is.
//!
//! Why a module of its own: the [`Plan`](crate::plan::Plan) keeps values, not their origins (a
//! default and a written value look the same there), and the decoded resources keep most
//! origins but not all (`timeout: 0s` is dropped, `retries.attempts` defaults to 2, a
//! ResiliencePolicy's sections come with their defaults filled in). So [`load`] keeps, beside
//! the plan, the resources it was compiled from and the YAML documents they were read from,
//! and [`Provenance`] answers "was this written, and where" from them, in the compiler's order
//! of precedence.
//!
//! An origin is never guessed: a cluster's DestinationRule, subset and ResiliencePolicy are
//! found as the compiler finds them and the cluster's settings computed again from them; when
//! the result differs from the plan's (or a route matches no single VirtualService entry), the
//! lookup gives `None` and the caller says the origin is unknown.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::model::{DestinationRule, HttpRoute, OutlierDetection, Resource, Spec, Subset, TrafficPolicy};
use crate::plan::{ClusterPlan, RoutePlan, TcpRoutePlan};
use crate::policy::{ResiliencePolicy, Target};
use crate::yaml::{Kind, Node};
use crate::{Diagnostic, LoadOptions, Loaded, Source};

/// Whose default a value is, when no resource wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Whose {
    /// The Istio API's documented default (e.g. no route timeout, 2 retries).
    Istio,
    /// Tripline's own default, for what Istio does not define (the retry budget, probing).
    Tripline,
}

/// Where one effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Origin {
    /// Written in a resource (`DestinationRule/payments-cb`) at a field path.
    Field { resource: String, path: String },
    /// Written nowhere: a default.
    Default { default: Whose },
    /// The value is the plan's, but the resource that set it could not be established.
    Unknown { unknown: bool },
}

impl Origin {
    pub const ISTIO: Origin = Origin::Default { default: Whose::Istio };
    pub const TRIPLINE: Origin = Origin::Default { default: Whose::Tripline };
    pub const UNKNOWN: Origin = Origin::Unknown { unknown: true };

    fn field(r: &Resource, path: impl Into<String>) -> Origin {
        Origin::Field { resource: r.id(), path: path.into() }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Field { resource, path } => write!(f, "{resource} {path}"),
            Origin::Default { default: Whose::Istio } => f.write_str("Istio default"),
            Origin::Default { default: Whose::Tripline } => f.write_str("Tripline default"),
            Origin::Unknown { .. } => f.write_str("origin unknown"),
        }
    }
}

/// A loaded configuration with what [`Provenance`] needs.
pub struct Explained {
    pub loaded: Loaded,
    pub provenance: Provenance,
}

/// [`crate::load`], keeping the decoded resources and their documents: one compile gives
/// both the plan and the origins of its values.
pub fn load(sources: &[Source], opts: &LoadOptions) -> Result<Explained, Vec<Diagnostic>> {
    let (resources, plan, warnings) = crate::compiled(sources, opts, None)?;
    let provenance = Provenance::new(resources, sources);
    let loaded = Loaded { plan, warnings, dump: crate::dump::ConfigDump::new(sources, opts) };
    Ok(Explained { loaded, provenance })
}

/// The resources a plan was compiled from, and the documents they were read from.
pub struct Provenance {
    resources: Vec<Arc<Resource>>,
    /// Each document's tree by (file, line it starts on), as [`Resource::file`] and
    /// [`Resource::pos`] name it: what was written, before defaults.
    documents: HashMap<(String, usize), Node>,
}

impl Provenance {
    pub fn new(resources: Vec<Arc<Resource>>, sources: &[Source]) -> Provenance {
        let mut documents = HashMap::new();
        for source in sources {
            // These sources loaded, so they parse; one that did not would only lose origins.
            let _ = crate::yaml::parse_each(&source.text, |doc| {
                documents.insert((source.name.clone(), doc.root.pos.line), doc.root);
            });
        }
        Provenance { resources, documents }
    }

    /// Whether `path` (`spec.http[0].timeout`) is written, and not null, in `r`'s document.
    fn written(&self, r: &Resource, path: &str) -> bool {
        let root = self.documents.get(&(r.file.clone(), r.pos.line));
        root.and_then(|root| lookup(root, path)).is_some()
    }

    /// The VirtualService `http` entry `route` was compiled from, if exactly one fits.
    pub fn route(&self, route: &RoutePlan) -> Option<RouteOrigin<'_>> {
        unique(self.resources.iter().flat_map(|r| {
            match &r.spec {
                Spec::VirtualService(vs) => vs
                    .http
                    .iter()
                    .enumerate()
                    .filter(|(i, h)| route_name(r, *i, h) == route.name && compiles_to(h, route))
                    .map(|(_, h)| RouteOrigin { prov: self, resource: r, path: &h.path, http: Some(h) })
                    .collect(),
                _ => Vec::new(),
            }
        }))
    }

    /// The VirtualService `tcp` (or `tls`) entry `route` was compiled from, if exactly one fits.
    pub fn tcp_route(&self, route: &TcpRoutePlan) -> Option<RouteOrigin<'_>> {
        let field = if route.sni_hosts.is_empty() { "tcp" } else { "tls" };
        unique(self.resources.iter().filter_map(|r| match &r.spec {
            Spec::VirtualService(vs) => {
                let entries = if field == "tcp" { &vs.tcp } else { &vs.tls };
                entries.iter().enumerate().find_map(|(i, t)| {
                    let fits = format!("{}/{field}[{i}]", r.name) == route.name
                        && t.route.len() == route.destinations.len();
                    fits.then_some(RouteOrigin { prov: self, resource: r, path: &t.path, http: None })
                })
            }
            _ => None,
        }))
    }

    /// The ResiliencePolicy whose target is `route`, if it has one and it can be found.
    pub fn route_policy(&self, route: &RoutePlan, origin: &RouteOrigin<'_>) -> Option<PolicyOrigin<'_>> {
        let name = route.policy.as_deref()?;
        let vs = &origin.resource.name;
        let found = self.unique_policy(|r, p| {
            r.name == name
                && matches!(&p.target, Target::Route { virtual_service, .. } if &virtual_service.value == vs)
        })?;
        (found.policy.breaker == route.breaker).then_some(found)
    }

    /// The ServiceEntry, DestinationRule, subset and ResiliencePolicy `cluster` was compiled
    /// from, if computing its settings again from them gives the plan's.
    pub fn cluster(&self, cluster: &ClusterPlan) -> Option<ClusterOrigin<'_>> {
        let rule = self.rule(&cluster.host);
        let subset = match (&cluster.subset, rule) {
            (None, _) => None,
            (Some(name), Some((_, dr))) => Some(dr.subsets.iter().find(|s| &s.name.value == name)?),
            (Some(_), None) => return None,
        };
        let policy = match &cluster.resilience.policy {
            Some(name) => Some(self.unique_policy(|r, p| {
                &r.name == name
                    && matches!(&p.target, Target::Destination { host, .. } if host.value.eq_ignore_ascii_case(&cluster.host))
            })?),
            None => None,
        };
        let origin = ClusterOrigin {
            prov: self,
            service_entry: self.service_entry(&cluster.host)?,
            rule,
            subset,
            policy,
        };
        origin.reproduces(cluster).then_some(origin)
    }

    /// The first ServiceEntry declaring `host`, as the compiler takes it.
    fn service_entry(&self, host: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| match &r.spec {
                Spec::ServiceEntry(se) => se.hosts.iter().any(|h| h.value.eq_ignore_ascii_case(host)),
                _ => false,
            })
            .map(|r| &**r)
    }

    /// The DestinationRule of `host`, as the compiler picks it: the one naming the host, else
    /// the first whose wildcard host covers it.
    fn rule(&self, host: &str) -> Option<(&Resource, &DestinationRule)> {
        let rules: Vec<(&Resource, &DestinationRule)> = self
            .resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::DestinationRule(dr) => Some((&**r, &**dr)),
                _ => None,
            })
            .collect();
        let exact = rules.iter().find(|(_, dr)| dr.host.value.eq_ignore_ascii_case(host));
        let wildcard = || {
            rules.iter().find(|(_, dr)| {
                dr.host.value.starts_with('*') && crate::compile::covers(&dr.host.value, host)
            })
        };
        exact.or_else(wildcard).copied()
    }

    /// The one ResiliencePolicy `pick` accepts (two, from different namespaces, would be
    /// ambiguous: none then).
    fn unique_policy(&self, pick: impl Fn(&Resource, &ResiliencePolicy) -> bool) -> Option<PolicyOrigin<'_>> {
        unique(self.resources.iter().filter_map(|r| match &r.spec {
            Spec::ResiliencePolicy(p) if pick(r, p) => {
                Some(PolicyOrigin { prov: self, resource: r, policy: p })
            }
            _ => None,
        }))
    }
}

/// The only item of `items`, if there is exactly one: two candidates are an ambiguity that
/// must not be resolved by a guess.
fn unique<T>(mut items: impl Iterator<Item = T>) -> Option<T> {
    let first = items.next()?;
    items.next().is_none().then_some(first)
}

/// The name the compiler gives entry `index` of a VirtualService.
fn route_name(r: &Resource, index: usize, h: &HttpRoute) -> String {
    match &h.name {
        Some(n) => format!("{}/{n}", r.name),
        None => format!("{}/http[{index}]", r.name),
    }
}

/// Whether `h` could have compiled to `route` (a check against a name that matches by chance).
fn compiles_to(h: &HttpRoute, route: &RoutePlan) -> bool {
    let destinations = if route.features.answer.is_some() { 0 } else { h.route.len() };
    h.timeout == route.timeout && destinations == route.destinations.len()
}

/// The node at `path` (`spec.http[0].retries`) under `root`, if it is there and not null.
fn lookup<'n>(root: &'n Node, path: &str) -> Option<&'n Node> {
    let node = path.split('.').try_fold(root, |node, segment| {
        let (key, indexes) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
        let mut node = node.get(key)?;
        for index in indexes.split_terminator(']') {
            let i: usize = index.strip_prefix('[')?.parse().ok()?;
            node = match &node.kind {
                Kind::Seq(items) => items.get(i)?,
                _ => return None,
            };
        }
        Some(node)
    })?;
    (!node.is_null()).then_some(node)
}

/// A VirtualService `http` or `tcp` entry that a route was compiled from.
pub struct RouteOrigin<'a> {
    prov: &'a Provenance,
    resource: &'a Resource,
    /// `spec.http[0]`
    path: &'a str,
    /// The entry as decoded, for an `http` one.
    http: Option<&'a HttpRoute>,
}

impl<'a> RouteOrigin<'a> {
    /// `VirtualService/payments-fault`.
    pub fn resource(&self) -> String {
        self.resource.id()
    }

    /// The entry as decoded, for an `http` one.
    pub fn http(&self) -> Option<&'a HttpRoute> {
        self.http
    }

    /// The entry itself: `VirtualService/payments-fault spec.http[0]`.
    pub fn entry(&self) -> Origin {
        Origin::field(self.resource, self.path)
    }

    /// `field` of the entry (`timeout`, `retries.attempts`, `route[0].weight`), when written.
    pub fn field(&self, field: &str) -> Option<Origin> {
        let path = format!("{}.{field}", self.path);
        self.prov.written(self.resource, &path).then(|| Origin::field(self.resource, path))
    }

    /// [`RouteOrigin::field`], or the default of whoever defines it.
    pub fn field_or(&self, field: &str, whose: Whose) -> Origin {
        self.field(field).unwrap_or(Origin::Default { default: whose })
    }
}

/// A ResiliencePolicy applied to a route or a cluster.
#[derive(Clone, Copy)]
pub struct PolicyOrigin<'a> {
    prov: &'a Provenance,
    resource: &'a Resource,
    policy: &'a ResiliencePolicy,
}

impl<'a> PolicyOrigin<'a> {
    /// `ResiliencePolicy/payments`.
    pub fn resource(&self) -> String {
        self.resource.id()
    }

    pub fn policy(&self) -> &'a ResiliencePolicy {
        self.policy
    }

    /// `path` (`spec.circuitBreaker.openDuration`) when written, else Tripline's default (every
    /// field of a policy defaults to the engine's own default).
    pub fn field(&self, path: &str) -> Origin {
        if self.prov.written(self.resource, path) {
            Origin::field(self.resource, path)
        } else {
            Origin::TRIPLINE
        }
    }

    /// Which of `names` are written under `section` (`spec.circuitBreaker`).
    pub fn written<'n>(&self, section: &str, names: &[&'n str]) -> Vec<&'n str> {
        names
            .iter()
            .copied()
            .filter(|n| self.prov.written(self.resource, &format!("{section}.{n}")))
            .collect()
    }

    /// The section itself (`spec.circuitBreaker`).
    pub fn section(&self, section: &str) -> Origin {
        Origin::field(self.resource, section)
    }
}

/// What a cluster was compiled from.
pub struct ClusterOrigin<'a> {
    prov: &'a Provenance,
    service_entry: &'a Resource,
    rule: Option<(&'a Resource, &'a DestinationRule)>,
    subset: Option<&'a Subset>,
    policy: Option<PolicyOrigin<'a>>,
}

impl<'a> ClusterOrigin<'a> {
    /// Whether the settings computed again from these resources are the plan's.
    fn reproduces(&self, cluster: &ClusterPlan) -> bool {
        let none = TrafficPolicy::default();
        let top = self.rule.map_or(&none, |(_, dr)| &dr.traffic_policy);
        let sub = self.subset.map(|s| &s.traffic_policy);
        let (lb, pool) = crate::compile::effective_policy(top, sub);
        let policy = self.policy.map(|p| (p.resource.name.as_str(), p.policy));
        let r = crate::compile::effective_resilience(top, sub, policy, &pool);
        let c = &cluster.resilience;
        lb == cluster.load_balancer
            && pool == cluster.pool
            && r.outlier == c.outlier
            && r.breaker == c.breaker
            && r.endpoint_breaker == c.endpoint_breaker
            && r.retry_budget == c.retry_budget
            && r.policy == c.policy
            && crate::compile::effective_tls(Some(top), sub).is_some() == cluster.tls.is_some()
    }

    /// Where the cluster's endpoints are listed: the ServiceEntry's `endpoints`, or its
    /// `hosts` when it has none (the host name is resolved).
    pub fn endpoints(&self) -> Origin {
        let listed = matches!(&self.service_entry.spec, Spec::ServiceEntry(se) if !se.endpoints.is_empty());
        Origin::field(self.service_entry, if listed { "spec.endpoints" } else { "spec.hosts" })
    }

    /// Where the cluster's TLS setting is: the subset's `tls` when it has one (it replaces the
    /// rule's whole), else the rule's, else none (Istio's default: plaintext).
    pub fn tls(&self) -> Origin {
        let Some((r, dr)) = self.rule else { return Origin::ISTIO };
        if let Some(s) = self.subset.filter(|s| s.traffic_policy.tls.is_some()) {
            return Origin::field(r, format!("{}.trafficPolicy.tls", subset_path(s)));
        }
        if dr.traffic_policy.tls.is_some() {
            return Origin::field(r, "spec.trafficPolicy.tls");
        }
        Origin::ISTIO
    }

    /// Where the subset's labels are, for a subset's cluster.
    pub fn subset_labels(&self) -> Option<Origin> {
        let (r, _) = self.rule?;
        Some(Origin::field(r, format!("{}.labels", subset_path(self.subset?))))
    }

    /// The policy applied to the cluster, if any.
    pub fn policy(&self) -> Option<PolicyOrigin<'a>> {
        self.policy
    }

    /// A `trafficPolicy` field (`connectionPool.tcp.maxConnections`) that `set` reads as set
    /// or not, exactly as the compiler does: the subset's when set there, else the rule's,
    /// else `whose` default.
    pub fn traffic(&self, field: &str, set: impl Fn(&TrafficPolicy) -> bool, whose: Whose) -> Origin {
        let Some((r, dr)) = self.rule else { return Origin::Default { default: whose } };
        if let Some(s) = self.subset.filter(|s| set(&s.traffic_policy)) {
            return Origin::field(r, format!("{}.trafficPolicy.{field}", subset_path(s)));
        }
        if set(&dr.traffic_policy) {
            return Origin::field(r, format!("spec.trafficPolicy.{field}"));
        }
        Origin::Default { default: whose }
    }

    /// An `outlierDetection` field (`consecutive5xxErrors`, `maxEjectionTime`): for Istio's
    /// fields the subset's, else the rule's, else the policy's, else Istio's default (see
    /// [`crate::policy::effective_outlier`]); the others only come from the policy.
    pub fn outlier(&self, field: &str) -> Origin {
        if !crate::model::OUTLIER_FIELDS.contains(&field) {
            return self
                .policy
                .map_or(Origin::TRIPLINE, |p| p.field(&format!("spec.outlierDetection.{field}")));
        }
        let levels = self.rule.into_iter().flat_map(|(r, dr)| {
            let sub = self.subset.map(|s| (s.traffic_policy.outlier_detection.as_ref(), subset_path(s)));
            let top = (dr.traffic_policy.outlier_detection.as_ref(), "spec".to_string());
            sub.into_iter()
                .chain([top])
                .map(move |(od, at)| (r, od, format!("{at}.trafficPolicy.outlierDetection")))
        });
        let from_policy = self.policy.map(|p| {
            (p.resource, p.policy.outlier.as_ref().map(|o| &o.istio), "spec.outlierDetection".to_string())
        });
        for (r, od, section) in levels.chain(from_policy) {
            if od.is_some_and(|od| istio_outlier_set(od, field)) {
                return Origin::field(r, self.spelled(r, &section, field));
            }
        }
        Origin::ISTIO
    }

    /// `section.field`, with the deprecated name when that is the one written
    /// (`consecutiveErrors` sets `consecutive5xxErrors`).
    fn spelled(&self, r: &Resource, section: &str, field: &str) -> String {
        let path = format!("{section}.{field}");
        let old = format!("{section}.consecutiveErrors");
        if field == "consecutive5xxErrors" && !self.prov.written(r, &path) && self.prov.written(r, &old) {
            old
        } else {
            path
        }
    }
}

/// `spec.subsets[2]`, from where the subset's name was read.
fn subset_path(s: &Subset) -> String {
    let name = &*s.name.path;
    name.strip_suffix(".name").unwrap_or(name).to_string()
}

/// Whether an Istio `outlierDetection` field is set at one level.
fn istio_outlier_set(od: &OutlierDetection, field: &str) -> bool {
    match field {
        "consecutive5xxErrors" | "consecutiveErrors" => od.consecutive_5xx_errors.is_some(),
        "consecutiveGatewayErrors" => od.consecutive_gateway_errors.is_some(),
        "consecutiveLocalOriginFailures" => od.consecutive_local_origin_failures.is_some(),
        "splitExternalLocalOriginErrors" => od.split_external_local_origin_errors.is_some(),
        "interval" => od.interval.is_some(),
        "baseEjectionTime" => od.base_ejection_time.is_some(),
        "maxEjectionPercent" => od.max_ejection_percent.is_some(),
        "minHealthPercent" => od.min_health_percent.is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments}
spec:
  hosts: [payments.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments-cb}
spec:
  host: payments.local
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 100}}
    outlierDetection: {consecutiveErrors: 7, interval: 10s}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 5}}
      outlierDetection: {interval: 20s}
---
apiVersion: tripline.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: payments}
spec:
  target: {host: payments.local}
  circuitBreaker: {consecutiveFailures: 3}
  outlierDetection: {baseEjectionTime: 45s, probe: {concurrency: 2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments}
spec:
  hosts: [payments.local]
  http:
  - name: slow
    match: [{uri: {prefix: /slow}}]
    timeout: 0s
    retries: {retryOn: 5xx}
    route: [{destination: {host: payments.local, subset: v1}}]
  - route: [{destination: {host: payments.local}}]
"#;

    fn explained() -> Explained {
        let sources = [Source { name: "mesh.yaml".into(), text: MESH.into() }];
        load(&sources, &LoadOptions::default()).unwrap_or_else(|d| panic!("{d:?}"))
    }

    fn field(resource: &str, path: &str) -> Origin {
        Origin::Field { resource: resource.into(), path: path.into() }
    }

    #[test]
    fn a_route_knows_what_its_entry_wrote_even_where_the_plan_dropped_it() {
        let e = explained();
        let routes = &e.loaded.plan.listeners[0].virtual_hosts[0].routes;
        let slow = e.provenance.route(&routes[0]).expect("the entry of payments/slow");
        assert_eq!(slow.entry(), field("VirtualService/payments", "spec.http[0]"));
        assert_eq!(routes[0].timeout, None, "0s is no timeout in the plan");
        assert_eq!(slow.field("timeout"), Some(field("VirtualService/payments", "spec.http[0].timeout")));
        assert_eq!(slow.field("retries.attempts"), None, "the plan's 2 is Istio's default");
        assert_eq!(slow.field_or("retries.attempts", Whose::Istio), Origin::ISTIO);
        assert!(slow.field("retries.retryOn").is_some());
        let other = e.provenance.route(&routes[1]).expect("payments/http[1]");
        assert_eq!(other.field("timeout"), None);
    }

    #[test]
    fn a_cluster_setting_comes_from_the_level_the_compiler_took_it_from() {
        let e = explained();
        let plan = &e.loaded.plan;
        let v1 = plan.cluster_by_name("outbound|80|v1|payments.local").map(|i| &plan.clusters[i]);
        let v1 = e.provenance.cluster(v1.expect("the v1 cluster")).expect("reproduced");
        let max_connections = |p: &TrafficPolicy| p.connection_pool.max_connections.is_some();
        assert_eq!(
            v1.traffic("connectionPool.tcp.maxConnections", max_connections, Whose::Istio),
            field(
                "DestinationRule/payments-cb",
                "spec.subsets[0].trafficPolicy.connectionPool.tcp.maxConnections"
            )
        );
        assert_eq!(
            v1.outlier("interval"),
            field("DestinationRule/payments-cb", "spec.subsets[0].trafficPolicy.outlierDetection.interval")
        );
        assert_eq!(
            v1.outlier("consecutive5xxErrors"),
            field("DestinationRule/payments-cb", "spec.trafficPolicy.outlierDetection.consecutiveErrors"),
            "the deprecated name, as written"
        );
        assert_eq!(
            v1.outlier("baseEjectionTime"),
            field("ResiliencePolicy/payments", "spec.outlierDetection.baseEjectionTime"),
            "the policy fills what the rule leaves out"
        );
        assert_eq!(v1.outlier("maxEjectionPercent"), Origin::ISTIO);
        assert_eq!(v1.outlier("maxEjectionTime"), Origin::TRIPLINE);
        let policy = v1.policy().expect("the host's policy");
        assert_eq!(
            v1.outlier("probe.concurrency"),
            policy.section("spec.outlierDetection.probe.concurrency")
        );
        assert_eq!(
            policy.written("spec.circuitBreaker", &["consecutiveFailures", "openDuration"]),
            ["consecutiveFailures"]
        );
        assert_eq!(v1.subset_labels(), Some(field("DestinationRule/payments-cb", "spec.subsets[0].labels")));
        assert_eq!(v1.endpoints(), field("ServiceEntry/payments", "spec.endpoints"));
    }

    #[test]
    fn a_cluster_that_its_resources_do_not_reproduce_has_no_origin() {
        let e = explained();
        let mut cluster = e.loaded.plan.clusters[0].clone();
        assert!(e.provenance.cluster(&cluster).is_some());
        cluster.pool.max_connections = 1;
        assert!(e.provenance.cluster(&cluster).is_none(), "never a wrong origin");
        cluster.pool = e.loaded.plan.clusters[0].pool.clone();
        cluster.host = "elsewhere.local".into();
        assert!(e.provenance.cluster(&cluster).is_none());
    }

    #[test]
    fn paths_are_looked_up_through_lists_and_skip_nulls() {
        let doc = crate::yaml::parse("spec:\n  http:\n  - timeout: 1s\n    retries: ~\n").unwrap();
        let root = &doc[0].root;
        assert!(lookup(root, "spec.http[0].timeout").is_some());
        assert!(lookup(root, "spec.http[0].retries").is_none(), "null is not written");
        assert!(lookup(root, "spec.http[1].timeout").is_none());
        assert!(lookup(root, "spec.http.timeout").is_none());
        assert!(lookup(root, "spec.http[x]").is_none());
    }
}
