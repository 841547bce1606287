//! Route tables: VirtualService rules compiled for one listener, matched per request without
//! allocation (authority host, then routes in order).

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tripline_config::plan::{
    Cidr, HostMatch, ListenerPlan, RequestMatch, RoutePlan, StringMatch, TcpRoutePlan, WeightedCluster,
};
use tripline_core::rng::Rng;

use crate::cluster::Cluster;
use crate::headers::{authority, host_of};
use crate::pipeline::header_edits::HeaderEdits;
use crate::pipeline::rate_limit::RateLimiters;
use crate::pipeline::Features;
use crate::resilience::RouteBreakers;
use crate::upstream::RoutePolicy;

/// What routes share across a config and keep across reloads: the breakers of routes and the
/// rate limiters of their policies.
#[derive(Debug, Clone, Copy)]
pub struct RouteShared<'a> {
    pub breakers: &'a RouteBreakers,
    pub limiters: &'a RateLimiters,
}

/// What a listener serves, swapped as a whole on reload.
#[derive(Debug, Default)]
pub struct ListenerConfig {
    pub virtual_hosts: Vec<VirtualHost>,
    /// Where each exact domain (lower-cased) first appears in `virtual_hosts`, and which
    /// virtual hosts have a wildcard domain (`*.example.com`, `*`): a lookup is a hash probe
    /// and a scan of the few wildcards, not a scan of every virtual host (10,000 services
    /// added 200 µs to a request for the last one).
    exact: std::collections::HashMap<String, usize>,
    wildcards: Vec<usize>,
    /// TCP listeners: the routes in order (first match wins).
    pub tcp: Vec<TcpEntry>,
    /// See `ListenerPlan::trust_client`.
    pub trust_client: bool,
    /// See `ListenerPlan::trusted_proxies`.
    pub trusted_proxies: u32,
    /// The AuthorizationPolicies of this proxy (the same for every listener), if any.
    pub authz: Option<Arc<crate::pipeline::authz::Authz>>,
    /// TLS termination, for a listener with `tls` servers.
    pub tls: Option<Arc<crate::tls::server::ServerTls>>,
    /// See `ListenerPlan::https_redirect`.
    pub https_redirect: bool,
    /// See `ListenerPlan::passthrough`: the SNI, peeked, picks a route in `tcp`.
    pub passthrough: bool,
    /// See `ListenerPlan::plaintext_too` (PeerAuthentication PERMISSIVE): `tls` terminates a
    /// connection that begins with a TLS record; any other is served in plaintext.
    pub plaintext_too: bool,
    /// See `ListenerPlan::intercepted`: the mesh listener's service addresses.
    pub intercepted: Option<Arc<[Intercepted]>>,
    /// See `ListenerPlan::captured` and `ListenerPlan::inbound_capture`.
    pub captured: bool,
    pub inbound_capture: bool,
}

/// A service address on the mesh listener: an HTTP port (routed by Host), or a TCP port with
/// the cluster its connections are proxied to.
#[derive(Debug, Clone)]
pub struct Intercepted {
    pub address: tripline_config::plan::ServiceAddress,
    pub tcp: Option<Arc<Cluster>>,
}

/// A TCP listener's route and the connections it takes.
#[derive(Debug)]
pub struct TcpEntry {
    /// The subnets of each match entry, one of which the connection's local address must be
    /// in (no entries: every address).
    pub subnets: Vec<Vec<Cidr>>,
    /// The SNI names it takes (`tls` routes on a passthrough listener); empty: any connection,
    /// with or without an SNI.
    pub sni: Vec<HostMatch>,
    pub route: Arc<Route>,
}

impl TcpEntry {
    /// Whether the entry takes a connection to `local` with SNI `sni`, and how closely: the
    /// rank of its most specific name that matches (an exact name `(0, 0)`, a longer
    /// `*.suffix` before a shorter, `*` last); `(0, 0)` for an entry without names.
    fn rank(&self, local: std::net::IpAddr, sni: Option<&str>) -> Option<(u8, usize)> {
        let address =
            self.subnets.is_empty() || self.subnets.iter().any(|s| s.iter().any(|c| c.contains(local)));
        if !address {
            return None;
        }
        if self.sni.is_empty() {
            return Some((0, 0));
        }
        let sni = sni?;
        let rank = |m: &HostMatch| match m {
            HostMatch::Exact(_) => (0, 0),
            HostMatch::Suffix(s) => (1, usize::MAX - s.len()),
            HostMatch::Any => (2, 0),
        };
        self.sni.iter().filter(|m| m.matches(sni)).map(rank).min()
    }
}

#[derive(Debug)]
pub struct VirtualHost {
    pub domains: Vec<HostMatch>,
    pub routes: Vec<Arc<Route>>,
}

/// A route: its matches, its weighted destinations and its features.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    matches: Vec<RequestMatch>,
    destinations: Vec<Destination>,
    total_weight: u32,
    pub timeout: Option<Duration>,
    /// What `upstream::send` needs of the route: its retry policy and its own breaker.
    pub upstream: RoutePolicy,
    /// Headers, rewrite, fault, redirect, direct response; `None` for a route that only
    /// forwards (see `pipeline`).
    pub features: Option<Box<Features>>,
}

/// One of a route's weighted destinations.
#[derive(Debug)]
pub struct Destination {
    pub cluster: Arc<Cluster>,
    weight: u32,
    /// The destination's own `headers`, when they edit anything.
    pub(crate) headers: Option<Arc<HeaderEdits>>,
}

/// `upstream::send` takes the route through this, so that the upstream layer does not depend
/// on the router above it.
impl AsRef<RoutePolicy> for Route {
    fn as_ref(&self) -> &RoutePolicy {
        &self.upstream
    }
}

impl Route {
    fn new(
        name: &str,
        matches: Vec<RequestMatch>,
        dests: &[WeightedCluster],
        clusters: &[Arc<Cluster>],
    ) -> Self {
        let destinations: Vec<Destination> = dests
            .iter()
            .filter_map(|d| {
                Some(Destination {
                    cluster: clusters.get(d.cluster)?.clone(),
                    weight: d.weight,
                    headers: HeaderEdits::compile(&d.headers).map(Arc::new),
                })
            })
            .collect();
        let total_weight = destinations.iter().map(|d| d.weight).sum();
        Route {
            name: name.into(),
            matches,
            destinations,
            total_weight,
            timeout: None,
            upstream: RoutePolicy::default(),
            features: None,
        }
    }

    fn from_plan(r: &RoutePlan, clusters: &[Arc<Cluster>], shared: RouteShared<'_>) -> Self {
        let RouteShared { breakers, limiters } = shared;
        let mut route = Route::new(&r.name, r.matches.clone(), &r.destinations, clusters);
        route.timeout = r.timeout;
        route.upstream =
            RoutePolicy { retry: r.retry.clone(), breaker: breakers.breakers.get(&r.name).cloned() };
        route.features = Features::compile(&r.features, clusters, limiters, &r.retry);
        route
    }

    fn from_tcp(r: &TcpRoutePlan, clusters: &[Arc<Cluster>]) -> Self {
        Route::new(&r.name, Vec::new(), &r.destinations, clusters)
    }

    /// Picks a destination by weight.
    pub fn pick(&self, rng: &dyn Rng) -> Option<&Destination> {
        if self.destinations.len() <= 1 || self.total_weight == 0 {
            return self.destinations.first();
        }
        let mut r = rng.below(u64::from(self.total_weight)) as u32;
        for d in &self.destinations {
            if r < d.weight {
                return Some(d);
            }
            r -= d.weight;
        }
        self.destinations.last()
    }

    /// Picks a destination's cluster by weight.
    pub fn pick_cluster(&self, rng: &dyn Rng) -> Option<&Arc<Cluster>> {
        self.pick(rng).map(|d| &d.cluster)
    }

    fn matches<B>(&self, req: &Request<B>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| request_matches(m, req))
    }

    /// The uri match of the first match entry that takes `req` (`None`: it has no uri match),
    /// for `rewrite.uri`, which replaces the prefix the request matched.
    pub fn matched_uri<B>(&self, req: &Request<B>) -> Option<&StringMatch> {
        self.matches.iter().find(|m| request_matches(m, req)).and_then(|m| m.uri.as_ref())
    }
}

fn request_matches<B>(m: &RequestMatch, req: &Request<B>) -> bool {
    if let Some(uri) = &m.uri {
        if !uri_matches(uri, m.ignore_uri_case, req.uri().path()) {
            return false;
        }
    }
    if let Some(method) = &m.method {
        if !method.matches(req.method().as_str()) {
            return false;
        }
    }
    if let Some(scheme) = &m.scheme {
        if !scheme.matches(req.uri().scheme_str().unwrap_or("http")) {
            return false;
        }
    }
    if let Some(a) = &m.authority {
        if !authority(req).is_some_and(|v| a.matches(v)) {
            return false;
        }
    }
    if let Some(port) = m.port {
        if addressed_port(req) != port {
            return false;
        }
    }
    m.headers.iter().all(|(name, sm)| {
        req.headers().get(name.as_str()).and_then(|v| v.to_str().ok()).is_some_and(|v| sm.matches(v))
    }) && !m.without_headers.iter().any(|(name, sm)| header_present_and_matching(req, name, sm))
        && (m.query_params.is_empty() || query_matches(&m.query_params, req.uri().query().unwrap_or("")))
}

/// The port a request was addressed to (on the mesh listener, where a match's `port` is
/// checked per request): the authority's, else the scheme's default.
fn addressed_port<B>(req: &Request<B>) -> u16 {
    let written = authority(req).and_then(|a| {
        let (_, port) = a.rsplit_once(':')?;
        // `[::1]` has colons but no port.
        (!port.ends_with(']')).then(|| port.parse().ok()).flatten()
    });
    written.unwrap_or(if req.uri().scheme_str() == Some("https") { 443 } else { 80 })
}

/// `exact` and `prefix` compare ASCII case-insensitively under `ignoreUriCase`; a regex is
/// unchanged (Istio).
fn uri_matches(uri: &StringMatch, ignore_case: bool, path: &str) -> bool {
    match uri {
        StringMatch::Exact(e) if ignore_case => path.eq_ignore_ascii_case(e),
        StringMatch::Prefix(p) if ignore_case => {
            path.as_bytes().get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
        }
        other => other.matches(path),
    }
}

/// Whether a match is Istio's "is present" (`{}`, or an empty `exact` for query parameters).
fn presence(sm: &StringMatch) -> bool {
    matches!(sm, StringMatch::Prefix(p) | StringMatch::Exact(p) if p.is_empty())
}

/// For `withoutHeaders`: the header is there and its value matches (a value that is not text
/// only counts for a presence match).
fn header_present_and_matching<B>(req: &Request<B>, name: &str, sm: &StringMatch) -> bool {
    req.headers().get(name).is_some_and(|v| v.to_str().map_or(presence(sm), |v| sm.matches(v)))
}

/// Every `queryParams` entry is matched by some parameter of the query (names and values
/// percent-decoded; a parameter without `=` has an empty value).
fn query_matches(wanted: &[(String, StringMatch)], query: &str) -> bool {
    wanted.iter().all(|(name, sm)| {
        query.split('&').filter(|kv| !kv.is_empty()).any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            percent_decoded(k) == name.as_str() && (presence(sm) || sm.matches(&percent_decoded(v)))
        })
    })
}

/// `%XX` sequences decoded (as Envoy decodes query parameters; `+` stays a `+`); a sequence
/// that is not two hex digits, or bytes that are not UTF-8, are kept as they came.
fn percent_decoded(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return s.into();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_or(s.into(), Into::into)
}

impl ListenerConfig {
    /// The TCP route for a connection addressed to `local`, whose TLS SNI is `sni` if it
    /// has one. `tcp` routes: the first that takes it. `tls` routes (on a passthrough
    /// listener): the one naming the SNI most specifically (exact, then the longest
    /// `*.suffix`, then `*`), as Envoy's filter chains chosen by server name that Istio makes
    /// of them; the first of equals.
    pub fn tcp_route(&self, local: std::net::IpAddr, sni: Option<&str>) -> Option<&Arc<Route>> {
        let mut best: Option<((u8, usize), &Arc<Route>)> = None;
        for e in &self.tcp {
            match e.rank(local, sni) {
                Some((0, 0)) => return Some(&e.route),
                Some(rank) if best.is_none_or(|(b, _)| rank < b) => best = Some((rank, &e.route)),
                _ => {}
            }
        }
        best.map(|(_, r)| r)
    }

    pub fn build(plan: &ListenerPlan, clusters: &[Arc<Cluster>], shared: RouteShared<'_>) -> Self {
        Self::indexed(ListenerConfig {
            virtual_hosts: plan
                .virtual_hosts
                .iter()
                .map(|vh| VirtualHost {
                    domains: vh.domains.clone(),
                    routes: vh
                        .routes
                        .iter()
                        .map(|r| Arc::new(Route::from_plan(r, clusters, shared)))
                        .collect(),
                })
                .collect(),
            tcp: plan
                .tcp_routes
                .iter()
                .map(|r| TcpEntry {
                    subnets: r.matches.clone(),
                    sni: r.sni_hosts.iter().map(|h| tripline_config::compile::host_match(h)).collect(),
                    route: Arc::new(Route::from_tcp(r, clusters)),
                })
                .collect(),
            trust_client: plan.trust_client,
            trusted_proxies: plan.trusted_proxies,
            authz: None,
            tls: None,
            https_redirect: plan.https_redirect,
            passthrough: plan.passthrough,
            plaintext_too: plan.plaintext_too,
            intercepted: plan.intercepted.as_ref().map(|addresses| {
                addresses
                    .iter()
                    .map(|&address| Intercepted { address, tcp: address.tcp.map(|c| clusters[c].clone()) })
                    .collect()
            }),
            captured: plan.captured,
            inbound_capture: plan.inbound_capture,
            exact: Default::default(),
            wildcards: Vec::new(),
        })
    }

    /// Builds the domain index of `config`'s virtual hosts.
    fn indexed(mut config: ListenerConfig) -> Self {
        for (i, vh) in config.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                match d {
                    HostMatch::Exact(h) => {
                        config.exact.entry(h.to_ascii_lowercase()).or_insert(i);
                    }
                    _ => {
                        if config.wildcards.last() != Some(&i) {
                            config.wildcards.push(i);
                        }
                    }
                }
            }
        }
        config
    }

    /// The first route of the most specific matching virtual host that matches the request:
    /// the first virtual host (in their order, most specific first) with a domain that matches.
    pub fn find<B>(&self, req: &Request<B>) -> Option<&Arc<Route>> {
        let host = authority(req).map(host_of).unwrap_or("");
        let exact = self.exact_index(host);
        let wildcard = self
            .wildcards
            .iter()
            .copied()
            .take_while(|&i| exact.is_none_or(|e| i < e))
            .find(|&i| self.virtual_hosts[i].domains.iter().any(|d| d.matches(host)));
        let vh = &self.virtual_hosts[wildcard.or(exact)?];
        vh.routes.iter().find(|r| r.matches(req))
    }

    /// The first virtual host with `host` as an exact domain, whatever its case.
    fn exact_index(&self, host: &str) -> Option<usize> {
        if self.exact.is_empty() {
            return None;
        }
        if !host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.exact.get(host).copied();
        }
        // Lower-cased on the stack: a DNS name is at most 253 bytes.
        let mut buf = [0u8; 256];
        let lower = buf.get_mut(..host.len())?;
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        self.exact.get(std::str::from_utf8(lower).ok()?).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripline_config::plan::StringMatch;
    use tripline_core::rng::SplitMix;

    fn route(name: &str, m: Vec<RequestMatch>) -> Arc<Route> {
        Arc::new(Route::new(name, m, &[], &[]))
    }

    fn table() -> ListenerConfig {
        let by_header = RequestMatch {
            headers: vec![("x-user-tier".into(), StringMatch::Exact("premium".into()))],
            ..Default::default()
        };
        let by_prefix = RequestMatch { uri: Some(StringMatch::Prefix("/api".into())), ..Default::default() };
        let by_regex = RequestMatch {
            uri: Some(StringMatch::Regex(regex::Regex::new("^/v[0-9]+$").unwrap())),
            ..Default::default()
        };
        ListenerConfig::indexed(ListenerConfig {
            virtual_hosts: vec![
                VirtualHost {
                    domains: vec![HostMatch::Exact("media.local".into())],
                    routes: vec![route("premium", vec![by_header]), route("media-default", vec![])],
                },
                VirtualHost {
                    domains: vec![HostMatch::Suffix(".example.com".into())],
                    routes: vec![route("api", vec![by_prefix]), route("versioned", vec![by_regex])],
                },
            ],
            tcp: Vec::new(),
            trust_client: false,
            trusted_proxies: 0,
            authz: None,
            tls: None,
            https_redirect: false,
            passthrough: false,
            plaintext_too: false,
            intercepted: None,
            captured: false,
            inbound_capture: false,
            exact: Default::default(),
            wildcards: Vec::new(),
        })
    }

    fn find(t: &ListenerConfig, host: &str, path: &str, tier: Option<&str>) -> Option<String> {
        let mut b = Request::builder().uri(path).header("host", host);
        if let Some(t) = tier {
            b = b.header("x-user-tier", t);
        }
        t.find(&b.body(()).unwrap()).map(|r| r.name.to_string())
    }

    #[test]
    fn routes_by_host_header_and_path() {
        let t = table();
        assert_eq!(find(&t, "media.local:80", "/", Some("premium")).as_deref(), Some("premium"));
        assert_eq!(find(&t, "media.local", "/", Some("free")).as_deref(), Some("media-default"));
        assert_eq!(find(&t, "shop.example.com", "/api/items", None).as_deref(), Some("api"));
        assert_eq!(find(&t, "shop.example.com", "/v2", None).as_deref(), Some("versioned"));
        assert_eq!(find(&t, "shop.example.com", "/v2/x", None), None);
        assert_eq!(find(&t, "example.com", "/api", None), None, "suffix needs a subdomain");
        assert_eq!(find(&t, "other.local", "/", None), None);
    }

    /// The domain index finds what a scan in order finds: an exact domain whatever its case,
    /// among thousands of virtual hosts; a wildcard virtual host placed before an exact one
    /// still wins; a host that only a wildcard matches falls to it.
    #[test]
    fn the_domain_index_finds_what_a_scan_in_order_finds() {
        let vh = |domain: HostMatch, name: &str| VirtualHost {
            domains: vec![domain],
            routes: vec![route(name, vec![])],
        };
        let mut hosts: Vec<VirtualHost> =
            (0..5000).map(|i| vh(HostMatch::Exact(format!("svc-{i}.local")), &format!("svc-{i}"))).collect();
        hosts.push(vh(HostMatch::Suffix(".local".into()), "any-local"));
        hosts.push(vh(HostMatch::Any, "catch-all"));
        let t = ListenerConfig::indexed(ListenerConfig { virtual_hosts: hosts, ..Default::default() });
        assert_eq!(find(&t, "svc-4999.local", "/", None).as_deref(), Some("svc-4999"));
        assert_eq!(find(&t, "SVC-17.Local:8080", "/", None).as_deref(), Some("svc-17"));
        assert_eq!(find(&t, "svc-17.local.", "/", None).as_deref(), Some("svc-17"), "fully qualified");
        assert_eq!(find(&t, "new.local", "/", None).as_deref(), Some("any-local"));
        assert_eq!(find(&t, "elsewhere", "/", None).as_deref(), Some("catch-all"));

        let ordered = ListenerConfig::indexed(ListenerConfig {
            virtual_hosts: vec![
                vh(HostMatch::Suffix(".local".into()), "wildcard-first"),
                vh(HostMatch::Exact("a.local".into()), "exact-later"),
                vh(HostMatch::Exact("A.LOCAL".into()), "exact-again"),
            ],
            ..Default::default()
        });
        assert_eq!(find(&ordered, "a.local", "/", None).as_deref(), Some("wildcard-first"), "order decides");
        let exact_first = ListenerConfig::indexed(ListenerConfig {
            virtual_hosts: vec![
                vh(HostMatch::Exact("A.local".into()), "exact-first"),
                vh(HostMatch::Exact("a.LOCAL".into()), "exact-again"),
                vh(HostMatch::Suffix(".local".into()), "wildcard"),
            ],
            ..Default::default()
        });
        assert_eq!(find(&exact_first, "a.local", "/", None).as_deref(), Some("exact-first"));
    }

    /// `tls` routes on a passthrough listener: of those whose subnets take the connection, the
    /// one naming its SNI most specifically (exact, longest `*.suffix`, `*`), the first of
    /// equals; no SNI is taken by none of them, and a `tcp` route (no names) takes any
    /// connection, the first one.
    #[test]
    fn tcp_routes_are_chosen_by_sni_and_address() {
        let entry = |sni: &[&str], subnets: Vec<Vec<Cidr>>, name: &str| TcpEntry {
            subnets,
            sni: sni.iter().map(|h| tripline_config::compile::host_match(h)).collect(),
            route: route(name, vec![]),
        };
        let local: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let t = ListenerConfig {
            tcp: vec![
                entry(&["*"], vec![], "any-name"),
                entry(&["a.example"], vec![vec![Cidr::parse("192.168.0.0/16").unwrap()]], "a-elsewhere"),
                entry(&["a.example", "*.b.example"], vec![], "a-or-b"),
                entry(&["*.x.b.example"], vec![], "under-x"),
                entry(&["y.x.b.example"], vec![], "y"),
                entry(&["y.x.b.example"], vec![], "y-again"),
            ],
            ..Default::default()
        };
        let found = |sni: Option<&str>| t.tcp_route(local, sni).map(|r| r.name.to_string());
        assert_eq!(
            found(Some("a.example")).as_deref(),
            Some("a-or-b"),
            "the first one's subnets do not hold"
        );
        assert_eq!(found(Some("x.b.example")).as_deref(), Some("a-or-b"));
        assert_eq!(found(Some("z.x.b.example")).as_deref(), Some("under-x"), "the longer suffix");
        assert_eq!(found(Some("y.x.b.example")).as_deref(), Some("y"), "the exact name, the first of two");
        assert_eq!(found(Some("b.example")).as_deref(), Some("any-name"), "`*.b.example` needs a subdomain");
        assert_eq!(found(None), None, "no SNI: no `tls` route");
        let tcp = ListenerConfig { tcp: vec![entry(&[], vec![], "tcp")], ..Default::default() };
        assert_eq!(tcp.tcp_route(local, None).map(|r| r.name.to_string()).as_deref(), Some("tcp"));
        assert_eq!(
            tcp.tcp_route(local, Some("a.example")).map(|r| r.name.to_string()).as_deref(),
            Some("tcp")
        );
    }

    #[test]
    fn a_match_needs_method_authority_and_every_header() {
        let m = RequestMatch {
            method: Some(StringMatch::Exact("POST".into())),
            authority: Some(StringMatch::Prefix("api.".into())),
            headers: vec![
                ("x-version".into(), StringMatch::Prefix("v2".into())),
                ("x-user".into(), StringMatch::Regex(regex::Regex::new("^[0-9]+$").unwrap())),
            ],
            ..Default::default()
        };
        let req = |method: &str, host: &str, version: &str, user: &str| {
            Request::builder()
                .method(method)
                .uri("/")
                .header("host", host)
                .header("x-version", version)
                .header("x-user", user)
                .body(())
                .unwrap()
        };
        assert!(request_matches(&m, &req("POST", "api.local", "v2.1", "42")));
        assert!(!request_matches(&m, &req("GET", "api.local", "v2.1", "42")), "method");
        assert!(!request_matches(&m, &req("POST", "web.local", "v2.1", "42")), "authority prefix");
        assert!(!request_matches(&m, &req("POST", "api.local", "v1", "42")), "header prefix");
        assert!(!request_matches(&m, &req("POST", "api.local", "v2", "4x2")), "header regex");
        let absent = Request::builder().method("POST").uri("/").header("host", "api.local").body(()).unwrap();
        assert!(!request_matches(&m, &absent), "a header the match names must be present");
        // An HTTP/2 request's authority is in its URI, not a Host header.
        let h2 = Request::builder()
            .method("POST")
            .uri("http://api.mesh/")
            .header("x-version", "v2")
            .header("x-user", "7")
            .body(())
            .unwrap();
        assert!(request_matches(&m, &h2));
    }

    #[test]
    fn weighted_split_follows_weights() {
        use tripline_config::plan::{ClusterPlan, Discovery, LoadBalancer, PoolLimits, UpstreamProtocol};
        let plan = |name: &str| ClusterPlan {
            name: name.into(),
            host: "checkout".into(),
            port: 80,
            subset: None,
            protocol: UpstreamProtocol::Http1,
            discovery: Discovery::Static(vec![]),
            load_balancer: LoadBalancer::RoundRobin,
            pool: PoolLimits::default(),
            resilience: Default::default(),
            tls: None,
        };
        let clusters = crate::cluster::Registry::default()
            .build(&[plan("v1"), plan("v2")], &Default::default())
            .clusters;
        let dest = |cluster, weight| WeightedCluster { cluster, weight, headers: Default::default() };
        let dests = [dest(0, 90), dest(1, 10)];
        let route = Route::new("canary", vec![], &dests, &clusters);
        let rng = SplitMix::seeded(11);
        let v2 = (0..10_000).filter(|_| route.pick_cluster(&rng).unwrap().name() == "v2").count();
        assert!((850..1150).contains(&v2), "v2 got {v2} of 10000");
    }

    fn get(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn without_headers_takes_requests_whose_header_is_absent_or_different() {
        let m = RequestMatch {
            without_headers: vec![
                ("x-canary".into(), StringMatch::Exact("true".into())),
                ("x-debug".into(), StringMatch::Prefix(String::new())),
            ],
            ..Default::default()
        };
        assert!(request_matches(&m, &get("/", &[])));
        assert!(request_matches(&m, &get("/", &[("x-canary", "false")])));
        assert!(!request_matches(&m, &get("/", &[("x-canary", "true")])));
        // `{}`: the header must be absent, whatever its value.
        assert!(!request_matches(&m, &get("/", &[("x-debug", "")])));
    }

    #[test]
    fn query_params_match_decoded_values_and_presence() {
        let m = RequestMatch {
            query_params: vec![
                ("debug".into(), StringMatch::Exact(String::new())),
                ("user".into(), StringMatch::Regex(regex::Regex::new("^(?:a b|c)$").unwrap())),
            ],
            ..Default::default()
        };
        assert!(request_matches(&m, &get("/p?debug&user=c", &[])));
        assert!(request_matches(&m, &get("/p?user=a%20b&debug=1", &[])), "decoded, and present with a value");
        assert!(!request_matches(&m, &get("/p?user=c", &[])), "debug missing");
        assert!(!request_matches(&m, &get("/p?debug=1&user=d", &[])));
        assert!(!request_matches(&m, &get("/p?debugx=1&user=c", &[])), "names compare whole");
        assert!(!request_matches(&m, &get("/p", &[])));
        let exact = RequestMatch {
            query_params: vec![("v".into(), StringMatch::Exact("2".into()))],
            ..Default::default()
        };
        assert!(request_matches(&exact, &get("/?a=1&v=2", &[])));
        assert!(!request_matches(&exact, &get("/?v=22", &[])));
        assert_eq!(percent_decoded("a%2Fb%zz%4"), "a/b%zz%4", "bad sequences kept");
        assert_eq!(percent_decoded("%ff"), "%ff", "not UTF-8: kept as it came");
    }

    #[test]
    fn scheme_is_the_targets_or_http() {
        let https = RequestMatch { scheme: Some(StringMatch::Exact("https".into())), ..Default::default() };
        let http = RequestMatch { scheme: Some(StringMatch::Exact("http".into())), ..Default::default() };
        assert!(request_matches(&http, &get("/x", &[])), "origin form on a plaintext listener");
        assert!(!request_matches(&https, &get("/x", &[])));
        assert!(request_matches(&https, &get("https://a.example/x", &[])), "absolute form, or :scheme");
    }

    #[test]
    fn ignore_uri_case_applies_to_exact_and_prefix_not_regex() {
        let with = |uri: StringMatch, ignore_uri_case| RequestMatch {
            uri: Some(uri),
            ignore_uri_case,
            ..Default::default()
        };
        let prefix = with(StringMatch::Prefix("/API/".into()), true);
        assert!(request_matches(&prefix, &get("/api/users", &[])));
        assert!(request_matches(&prefix, &get("/Api/x", &[])));
        assert!(!request_matches(&prefix, &get("/ap", &[])));
        assert!(!request_matches(&with(StringMatch::Prefix("/API/".into()), false), &get("/api/users", &[])));
        assert!(request_matches(&with(StringMatch::Exact("/Health".into()), true), &get("/HEALTH", &[])));
        let regex = with(StringMatch::Regex(regex::Regex::new("^/api$").unwrap()), true);
        assert!(!request_matches(&regex, &get("/API", &[])), "a regex stays case-sensitive");
    }
}
