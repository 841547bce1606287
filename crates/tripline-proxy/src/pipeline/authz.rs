//! AuthorizationPolicy, evaluated before routing: on every HTTP request (a denial is `403
//! rbac-denied`) and every TCP connection (a denial closes it). The rules come decoded and
//! selected for this workload from `tripline_config::authz`.
//!
//! Istio's order: a matching DENY policy denies; otherwise, when ALLOW policies apply, a
//! request that matches none of them is denied; otherwise it is allowed. A matching AUDIT
//! policy changes nothing and is named in the access log. On a TCP connection a rule's
//! HTTP-only fields (hosts, methods, paths, request headers) cannot be evaluated: an ALLOW
//! rule with one never matches, and a DENY rule is evaluated without them (it denies more),
//! so either way the connection is refused rather than let through, as Istio does.
//!
//! Dry-run policies (`istio.io/dry-run: "true"`) are evaluated apart, as if they alone were
//! in force (as Istio's shadow rules are): what they would have denied is counted and logged
//! (`shadow_denied_by`), and nothing is enforced.
//!
//! A policy's counters are kept by its name across reloads, as the metrics need.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use tripline_config::authz::{
    Attribute, AuthzAction, AuthzPolicyPlan, AuthzRule, Constraint, StringMatch, Values,
};
use tripline_config::plan::Cidr;

/// The policies that apply to this proxy, compiled for one config.
#[derive(Debug)]
pub struct Authz {
    enforced: Engine,
    /// The dry-run policies.
    shadow: Engine,
}

/// A set of policies evaluated together.
#[derive(Debug)]
struct Engine {
    policies: Vec<Policy>,
    any_allow: bool,
    /// Requests and connections denied (or, dry run, that would be) because no ALLOW policy
    /// matched.
    unmatched: Arc<Counts>,
    /// [`UNMATCHED`], made once rather than per denial.
    unmatched_name: Arc<str>,
}

#[derive(Debug)]
struct Policy {
    name: Arc<str>,
    action: AuthzAction,
    rules: Vec<Rule>,
    counts: Arc<Counts>,
}

/// A rule as it runs: each constraint one check on one fact (see [`AuthzRule`]).
#[derive(Debug)]
struct Rule {
    from: Vec<Vec<Check>>,
    to: Vec<Vec<Check>>,
    when: Vec<Check>,
}

#[derive(Debug)]
struct Check {
    what: What,
    negate: bool,
}

/// A constraint's attribute with its values, in one match (header names parsed once).
#[derive(Debug)]
enum What {
    SourceIp(Box<[Cidr]>),
    RemoteIp(Box<[Cidr]>),
    Port(Box<[u16]>),
    /// What only an HTTP request has.
    Http(HttpWhat),
    /// What the connection's TLS handshake tells.
    Peer(PeerWhat, Box<[StringMatch]>),
    /// An identity Tripline does not have (a JWT's; see `tripline_config::authz`): no value.
    Absent,
}

/// What a TLS connection tells of its peer: none of it on plaintext, the identities only when
/// the client presented a certificate.
#[derive(Debug, Clone, Copy)]
enum PeerWhat {
    /// `connection.sni`.
    Sni,
    /// `principals`: the SPIFFE ID without `spiffe://` (`cluster.local/ns/default/sa/web`).
    Principal,
    /// `namespaces`: the `ns` of that ID.
    Namespace,
    /// `serviceAccounts`: `<ns>/<sa>` of that ID.
    ServiceAccount,
}

impl PeerWhat {
    fn of<'a>(self, tls: &'a crate::tls::TlsInfo) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        if let PeerWhat::Sni = self {
            return tls.sni.as_deref().map(Cow::Borrowed);
        }
        let id = tls.peer_identity.as_deref()?;
        let principal = id.strip_prefix("spiffe://").unwrap_or(id);
        // `<trust domain>/ns/<namespace>/sa/<service account>`
        let mut parts = principal.split('/');
        let spiffe = (parts.next(), parts.next(), parts.next(), parts.next(), parts.next());
        let (ns, sa) = match spiffe {
            (Some(_), Some("ns"), Some(ns), Some("sa"), Some(sa)) => (Some(ns), Some(sa)),
            _ => (None, None),
        };
        match self {
            PeerWhat::Principal => Some(Cow::Borrowed(principal)),
            PeerWhat::Namespace => ns.map(Cow::Borrowed),
            PeerWhat::ServiceAccount => Some(Cow::Owned(format!("{}/{}", ns?, sa?))),
            PeerWhat::Sni => None,
        }
    }
}

#[derive(Debug)]
enum HttpWhat {
    Host(Box<[StringMatch]>),
    Method(Box<[StringMatch]>),
    Path(Box<[StringMatch]>),
    Header(HeaderName, Box<[StringMatch]>),
}

impl Rule {
    fn compile(r: &AuthzRule) -> Rule {
        let all = |cs: &Vec<Constraint>| cs.iter().map(Check::compile).collect::<Vec<_>>();
        Rule {
            from: r.from.iter().map(all).collect(),
            to: r.to.iter().map(all).collect(),
            when: all(&r.when),
        }
    }
}

impl Check {
    fn compile(c: &Constraint) -> Check {
        let what = match (&c.attribute, &c.values) {
            (Attribute::SourceIp, Values::Ips(l)) => What::SourceIp(l.as_slice().into()),
            (Attribute::RemoteIp, Values::Ips(l)) => What::RemoteIp(l.as_slice().into()),
            (Attribute::Port, Values::Ports(l)) => What::Port(l.as_slice().into()),
            (Attribute::Host, Values::Strings(l)) => What::Http(HttpWhat::Host(l.as_slice().into())),
            (Attribute::Method, Values::Strings(l)) => What::Http(HttpWhat::Method(l.as_slice().into())),
            (Attribute::Path, Values::Strings(l)) => What::Http(HttpWhat::Path(l.as_slice().into())),
            (Attribute::Header(name), Values::Strings(l)) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => What::Http(HttpWhat::Header(name, l.as_slice().into())),
                // The decoder checked the name; were it not a name, no request would have it.
                Err(_) => What::Absent,
            },
            (Attribute::Sni, Values::Strings(l)) => What::Peer(PeerWhat::Sni, l.as_slice().into()),
            (Attribute::Principal, Values::Strings(l)) => {
                What::Peer(PeerWhat::Principal, l.as_slice().into())
            }
            (Attribute::Namespace, Values::Strings(l)) => {
                What::Peer(PeerWhat::Namespace, l.as_slice().into())
            }
            (Attribute::ServiceAccount, Values::Strings(l)) => {
                What::Peer(PeerWhat::ServiceAccount, l.as_slice().into())
            }
            // A JWT's identities, and (never produced by the decoder) values of another
            // attribute's kind: no value.
            _ => What::Absent,
        };
        Check { what, negate: c.negate }
    }
}

/// What a policy decided, for `tripline_authorization_decisions_total`.
#[derive(Debug, Default)]
pub struct Counts {
    /// DENY: requests it denied. ALLOW: requests it allowed. AUDIT: requests it audited.
    pub decided: AtomicU64,
}

/// What is known of a request or connection when it is authorized.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The connection's peer.
    pub peer: IpAddr,
    /// The client as the listener's trusted proxies report it (`remote.ip`).
    pub remote: IpAddr,
    /// The port the request or connection arrived on.
    pub port: u16,
    /// What the TLS handshake settled; `None` on plaintext.
    pub tls: Option<&'a crate::tls::TlsInfo>,
    /// `None` for a TCP connection.
    pub http: Option<HttpFacts<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpFacts<'a> {
    /// With `headers`, the authority (read only by a rule about `hosts`: reading it checks
    /// every byte of `Host`).
    pub uri: &'a http::Uri,
    pub method: &'a str,
    /// The path without its query, as [`normalize_path`] makes it.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The decision, and the AUDIT policy that matched if any.
#[derive(Debug, PartialEq, Eq, Default, Clone)]
pub struct Decision {
    /// The policy that denied (`none` when no ALLOW policy matched); `None`: allowed.
    pub denied_by: Option<Arc<str>>,
    pub audited_by: Option<Arc<str>>,
    /// The dry-run policy that would have denied (`none`: no dry-run ALLOW policy matched).
    pub shadow_denied_by: Option<Arc<str>>,
}

/// The name a denial carries when no ALLOW policy matched.
pub const UNMATCHED: &str = "none";

impl Authz {
    /// Compiles `plans`; `previous` (the config in force) lends its counters by policy name.
    pub fn build(plans: &[AuthzPolicyPlan], previous: Option<&Authz>) -> Option<Authz> {
        if plans.is_empty() {
            return None;
        }
        let (shadow, enforced): (Vec<_>, Vec<_>) = plans.iter().partition(|p| p.dry_run);
        Some(Authz {
            enforced: Engine::build(&enforced, previous.map(|p| &p.enforced)),
            shadow: Engine::build(&shadow, previous.map(|p| &p.shadow)),
        })
    }

    /// Decides; counts the decision.
    pub fn check(&self, facts: &Facts<'_>) -> Decision {
        let audited_by =
            self.enforced.policies.iter().find(|p| p.action == AuthzAction::Audit && p.matches(facts)).map(
                |p| {
                    p.counts.count();
                    p.name.clone()
                },
            );
        let shadow_denied_by = if self.shadow.policies.is_empty() { None } else { self.shadow.denied(facts) };
        Decision { denied_by: self.enforced.denied(facts), audited_by, shadow_denied_by }
    }

    /// Each policy's name, decision and count, and the denials no ALLOW matched, for metrics.
    /// Dry-run policies count `shadow_denied` and `shadow_allowed`.
    pub fn counts(&self) -> Vec<(Arc<str>, &'static str, u64)> {
        let mut out = self.enforced.counts(["allowed", "denied", "audited"]);
        out.extend(self.shadow.counts(["shadow_allowed", "shadow_denied", "audited"]));
        out
    }
}

impl Engine {
    fn build(plans: &[&AuthzPolicyPlan], previous: Option<&Engine>) -> Engine {
        let old: HashMap<&str, &Arc<Counts>> =
            previous.map(|p| p.policies.iter().map(|p| (&*p.name, &p.counts)).collect()).unwrap_or_default();
        let policies = plans
            .iter()
            .map(|p| Policy {
                name: p.name.as_str().into(),
                action: p.action,
                rules: p.rules.iter().map(Rule::compile).collect(),
                counts: old.get(p.name.as_str()).map_or_else(Default::default, |c| Arc::clone(c)),
            })
            .collect::<Vec<_>>();
        Engine {
            any_allow: policies.iter().any(|p| p.action == AuthzAction::Allow),
            policies,
            unmatched: previous.map_or_else(Default::default, |p| p.unmatched.clone()),
            unmatched_name: UNMATCHED.into(),
        }
    }

    /// The policy that denies (a matching DENY; `none` when ALLOW policies apply and none
    /// matches), counted.
    fn denied(&self, facts: &Facts<'_>) -> Option<Arc<str>> {
        let deny = self.policies.iter().find(|p| p.action == AuthzAction::Deny && p.matches(facts));
        if let Some(p) = deny {
            p.counts.count();
            return Some(p.name.clone());
        }
        if !self.any_allow {
            return None;
        }
        match self.policies.iter().find(|p| p.action == AuthzAction::Allow && p.matches(facts)) {
            Some(p) => {
                p.counts.count();
                None
            }
            None => {
                self.unmatched.count();
                Some(self.unmatched_name.clone())
            }
        }
    }

    /// `labels`: what an ALLOW, a DENY and an AUDIT policy's count is.
    fn counts(&self, labels: [&'static str; 3]) -> Vec<(Arc<str>, &'static str, u64)> {
        let mut out: Vec<_> = self
            .policies
            .iter()
            .map(|p| {
                let decision = match p.action {
                    AuthzAction::Allow => labels[0],
                    AuthzAction::Deny => labels[1],
                    AuthzAction::Audit => labels[2],
                };
                (p.name.clone(), decision, p.counts.decided.load(Ordering::Relaxed))
            })
            .collect();
        if self.any_allow {
            out.push((UNMATCHED.into(), labels[1], self.unmatched.decided.load(Ordering::Relaxed)));
        }
        out
    }
}

impl Counts {
    fn count(&self) {
        self.decided.fetch_add(1, Ordering::Relaxed);
    }
}

impl Policy {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        // What a constraint that needs HTTP counts as on a TCP connection: DENY rules drop
        // it (they deny more), ALLOW and AUDIT rules cannot match.
        let lenient = self.action == AuthzAction::Deny;
        self.rules.iter().any(|r| rule_matches(r, facts, lenient))
    }
}

fn rule_matches(rule: &Rule, facts: &Facts<'_>, lenient: bool) -> bool {
    let all = |cs: &Vec<Check>| cs.iter().all(|c| holds(c, facts, lenient));
    (rule.from.is_empty() || rule.from.iter().any(all))
        && (rule.to.is_empty() || rule.to.iter().any(all))
        && all(&rule.when)
}

/// Whether a check holds: the attribute has one of the values (`negate`: none of them; an
/// attribute with no value has none of them). `lenient` is what a check that needs HTTP
/// counts as on a TCP connection.
fn holds(c: &Check, facts: &Facts<'_>, lenient: bool) -> bool {
    let found = match &c.what {
        What::SourceIp(blocks) => blocks.iter().any(|b| b.contains(facts.peer)),
        What::RemoteIp(blocks) => blocks.iter().any(|b| b.contains(facts.remote)),
        What::Port(ports) => ports.contains(&facts.port),
        What::Absent => false,
        What::Peer(what, list) => facts.tls.and_then(|t| what.of(t)).is_some_and(|v| any(list, &v)),
        What::Http(what) => {
            let Some(h) = &facts.http else { return lenient };
            match what {
                HttpWhat::Method(list) => any(list, h.method),
                HttpWhat::Path(list) => any(list, h.path),
                HttpWhat::Host(list) => {
                    let authority =
                        crate::headers::authority_of(h.uri, h.headers).unwrap_or("").to_ascii_lowercase();
                    let host = crate::headers::host_of(&authority);
                    list.iter().any(|m| m.matches(&authority) || m.matches(host))
                }
                HttpWhat::Header(name, list) => {
                    let mut values = h.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
                    let Some(first) = values.next() else { return c.negate };
                    match values.next() {
                        None => any(list, first),
                        Some(second) => {
                            let joined = std::iter::once(first).chain(std::iter::once(second)).chain(values);
                            any(list, &joined.collect::<Vec<_>>().join(","))
                        }
                    }
                }
            }
        }
    };
    found != c.negate
}

fn any(list: &[StringMatch], value: &str) -> bool {
    list.iter().any(|m| m.matches(value))
}

/// The path a policy sees, as Istio's default (`BASE`) normalization makes it (RFC 3986 §6):
/// the query left out, percent-encoded unreserved characters decoded, and `.` and `..`
/// segments removed, so `/public/../admin` and `/%61dmin` are `/admin` to a rule about
/// `/admin` (as they are to most upstreams). `%2F` stays encoded. Borrowed when unchanged.
pub fn normalize_path(path_and_query: &str) -> Cow<'_, str> {
    // One pass to the query: most paths have nothing to normalize and are borrowed.
    let bytes = path_and_query.as_bytes();
    let (mut end, mut needs_decode, mut maybe_dots) = (bytes.len(), false, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'?' => {
                end = i;
                break;
            }
            b'%' => needs_decode = true,
            b'.' if i > 0 && bytes[i - 1] == b'/' => maybe_dots = true,
            _ => {}
        }
    }
    let path = &path_and_query[..end];
    if !needs_decode && !maybe_dots {
        return Cow::Borrowed(path);
    }
    let decoded = if needs_decode { decode_unreserved(path) } else { path.to_string() };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    Cow::Owned(if joined.starts_with('/') { joined } else { format!("/{joined}") })
}

/// Decodes `%XX` where it stands for an unreserved character (letters, digits, `-._~`) and
/// upper-cases the hex digits of the others.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|_| bytes[i] == b'%');
        let value =
            hex.and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, value) {
            (_, Some(b)) if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                out.push(b)
            }
            (Some(h), Some(_)) => {
                out.push(b'%');
                out.extend(h.iter().map(u8::to_ascii_uppercase));
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
                continue;
            }
        }
        i += 3;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripline_config::{load, LoadOptions, Source};

    const BASE: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  servers:\n  - port: {number: 18130, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b}\nspec:\n  hosts: [b.local]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\nspec:\n  hosts: [\"*\"]\n  gateways: [edge]\n  http:\n  - route: [{destination: {host: b.local}}]\n";

    /// The policies of `yaml` (AuthorizationPolicy documents, `---` separated) as the proxy
    /// compiles them, through the real config loader.
    fn authz(yaml: &str) -> Authz {
        let opts = LoadOptions {
            workload_labels: [("app".to_string(), "gw".to_string())].into(),
            workload_namespace: Some("shop".into()),
            ..LoadOptions::default()
        };
        let text = format!("{BASE}---\n{yaml}");
        let loaded = load(&[Source { name: "mesh.yaml".into(), text }], &opts)
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")));
        Authz::build(&loaded.plan.authorization, None).expect("a policy applies")
    }

    fn policy(name: &str, body: &str) -> String {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n{body}\n---\n")
    }

    struct Req {
        peer: &'static str,
        method: &'static str,
        path: &'static str,
        host: &'static str,
        headers: HeaderMap,
        tcp: bool,
        port: u16,
        tls: Option<crate::tls::TlsInfo>,
    }

    fn get(path: &'static str) -> Req {
        Req {
            peer: "10.0.0.5",
            method: "GET",
            path,
            host: "shop.local",
            headers: HeaderMap::new(),
            tcp: false,
            port: 18130,
            tls: None,
        }
    }

    #[test]
    fn identities_come_from_the_client_certificate_and_the_sni() {
        let a = authz(&policy(
            "only-web",
            "  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}]\n  - from: [{source: {namespaces: [ops]}}]\n  - from: [{source: {serviceAccounts: [\"batch/cron\"]}}]\n    when: [{key: connection.sni, values: [\"*.shop.example\"]}]",
        ));
        let with = |id: Option<&str>, sni: Option<&str>| Req {
            tls: Some(crate::tls::TlsInfo {
                sni: sni.map(Into::into),
                peer_identity: id.map(Into::into),
                ..Default::default()
            }),
            ..get("/")
        };
        assert_eq!(denied(&a, &get("/")).as_deref(), Some(UNMATCHED), "plaintext has no identity");
        assert_eq!(
            denied(&a, &with(None, Some("a.shop.example"))).as_deref(),
            Some(UNMATCHED),
            "no client certificate"
        );
        assert_eq!(denied(&a, &with(Some("spiffe://cluster.local/ns/shop/sa/web"), None)), None);
        assert_eq!(
            denied(&a, &with(Some("spiffe://cluster.local/ns/shop/sa/api"), None)).as_deref(),
            Some(UNMATCHED)
        );
        assert_eq!(denied(&a, &with(Some("spiffe://other.domain/ns/ops/sa/x"), None)), None, "by namespace");
        assert_eq!(
            denied(&a, &with(Some("spiffe://cluster.local/ns/batch/sa/cron"), Some("api.shop.example"))),
            None
        );
        assert_eq!(
            denied(&a, &with(Some("spiffe://cluster.local/ns/batch/sa/cron"), Some("api.other"))).as_deref(),
            Some(UNMATCHED),
            "the right account, the wrong SNI"
        );
        assert_eq!(
            denied(&a, &with(Some("https://not.spiffe/ns/ops/sa/x"), None)).as_deref(),
            Some(UNMATCHED),
            "only a SPIFFE ID has a namespace"
        );
    }

    fn denied(a: &Authz, r: &Req) -> Option<String> {
        let path = normalize_path(r.path);
        let uri: http::Uri = format!("http://{}/", r.host).parse().unwrap();
        let http = HttpFacts { uri: &uri, method: r.method, path: &path, headers: &r.headers };
        let peer = r.peer.parse().unwrap();
        let facts =
            Facts { peer, remote: peer, port: r.port, tls: r.tls.as_ref(), http: (!r.tcp).then_some(http) };
        a.check(&facts).denied_by.map(|p| p.to_string())
    }

    #[test]
    fn deny_comes_before_allow_and_without_allow_policies_everything_else_passes() {
        let a = authz(
            &(policy("no-admin", "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin/*\"]}}]}]")
                + &policy("get-only", "  rules: [{to: [{operation: {methods: [GET, HEAD]}}]}]")),
        );
        assert_eq!(
            denied(&a, &get("/admin/users")).as_deref(),
            Some("no-admin"),
            "DENY wins over a matching ALLOW"
        );
        assert_eq!(denied(&a, &get("/cart")), None);
        let post = Req { method: "POST", ..get("/cart") };
        assert_eq!(denied(&a, &post).as_deref(), Some(UNMATCHED), "ALLOW policies exist and none matched");
        let only_deny = authz(&policy(
            "no-admin",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin/*\"]}}]}]",
        ));
        assert_eq!(denied(&only_deny, &post), None, "no ALLOW policy: what no DENY matches passes");
        let counts = a.counts();
        assert!(counts.contains(&("no-admin".into(), "denied", 1)), "{counts:?}");
        assert!(counts.contains(&("get-only".into(), "allowed", 1)), "{counts:?}");
        assert!(counts.contains(&(UNMATCHED.into(), "denied", 1)), "{counts:?}");
    }

    #[test]
    fn no_rules_allows_nothing_and_an_empty_rule_allows_everything() {
        let nothing = authz(&policy("allow-nothing", "  {}"));
        assert_eq!(denied(&nothing, &get("/")).as_deref(), Some(UNMATCHED));
        let all = authz(&(policy("allow-nothing", "  {}") + &policy("allow-all", "  rules: [{}]")));
        assert_eq!(denied(&all, &get("/")), None);
        let deny_nothing = authz(&policy("deny-nothing", "  action: DENY"));
        assert_eq!(denied(&deny_nothing, &get("/")), None, "a DENY without rules matches nothing");
    }

    #[test]
    fn values_match_exact_prefix_suffix_and_presence_and_not_fields_negate() {
        let a = authz(&policy(
            "rules",
            "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/exact, \"/pre/*\", \"*.php\"]}}]\n  - when: [{key: \"request.headers[x-debug]\", values: [\"*\"]}]\n  - to: [{operation: {hosts: [\"*.internal\"], notMethods: [GET]}}]",
        ));
        for (path, deny) in [
            ("/exact", true),
            ("/exact/", false),
            ("/pre/x", true),
            ("/pre", false),
            ("/a/b.php", true),
            ("/", false),
        ] {
            assert_eq!(denied(&a, &get(path)).is_some(), deny, "{path}");
        }
        let mut debug = get("/");
        debug.headers.insert("x-debug", "1".parse().unwrap());
        assert!(denied(&a, &debug).is_some(), "a present header");
        debug.headers.insert("x-debug", "".parse().unwrap());
        assert!(denied(&a, &debug).is_none(), "presence means a value");
        let internal_post = Req { method: "POST", host: "DB.Internal:8080", ..get("/") };
        assert!(denied(&a, &internal_post).is_some(), "hosts without case, with the port stripped");
        let internal_get = Req { host: "db.internal", ..get("/") };
        assert!(denied(&a, &internal_get).is_none(), "notMethods: [GET] excludes a GET");
    }

    #[test]
    fn sources_ports_and_ip_blocks() {
        let a = authz(&policy(
            "office",
            "  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/24], notIpBlocks: [10.0.0.9]}}]\n    to: [{operation: {ports: [\"18130\"]}}]",
        ));
        assert_eq!(denied(&a, &get("/")), None);
        assert!(denied(&a, &Req { peer: "10.0.0.9", ..get("/") }).is_some(), "notIpBlocks");
        assert!(denied(&a, &Req { peer: "10.0.1.5", ..get("/") }).is_some(), "outside the block");
        assert!(denied(&a, &Req { port: 9000, ..get("/") }).is_some(), "another port");
    }

    #[test]
    fn identities_are_absent_without_mtls() {
        let a = authz(
            &(policy("by-principal", "  rules: [{from: [{source: {principals: [\"*\"]}}]}]")
                + &policy(
                    "deny-others",
                    "  action: DENY\n  rules: [{from: [{source: {notNamespaces: [shop]}}]}]",
                )),
        );
        assert_eq!(
            denied(&a, &get("/")).as_deref(),
            Some("deny-others"),
            "no namespace is in no list: notNamespaces matches, principals [*] would not"
        );
        let allow = authz(&policy("by-principal", "  rules: [{from: [{source: {principals: [\"*\"]}}]}]"));
        assert_eq!(denied(&allow, &get("/")).as_deref(), Some(UNMATCHED));
    }

    #[test]
    fn on_tcp_http_fields_fail_closed_both_ways() {
        let tcp = Req { tcp: true, ..get("/") };
        let allow = authz(&policy("get-only", "  rules: [{to: [{operation: {methods: [GET]}}]}]"));
        assert_eq!(
            denied(&allow, &tcp).as_deref(),
            Some(UNMATCHED),
            "an ALLOW rule that needs HTTP never matches"
        );
        let deny = authz(&policy(
            "no-admin",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin/*\"], ports: [\"18130\"]}}]}]",
        ));
        assert_eq!(denied(&deny, &tcp).as_deref(), Some("no-admin"), "a DENY rule drops what needs HTTP");
        assert_eq!(denied(&deny, &Req { port: 9000, ..tcp }), None, "and keeps the rest");
    }

    #[test]
    fn audit_policies_are_named_and_decide_nothing() {
        let a =
            authz(&policy("watch", "  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/pay*\"]}}]}]"));
        let path = normalize_path("/pay");
        let h = HeaderMap::new();
        let uri = http::Uri::from_static("/pay");
        let http = HttpFacts { uri: &uri, method: "GET", path: &path, headers: &h };
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let d = a.check(&Facts { peer, remote: peer, port: 1, tls: None, http: Some(http) });
        assert_eq!(d, Decision { audited_by: Some("watch".into()), ..Decision::default() });
    }

    #[test]
    fn paths_are_normalized_before_they_are_matched() {
        for (raw, normal) in [
            ("/a/b?x=1", "/a/b"),
            ("/public/../admin", "/admin"),
            ("/./admin/./", "/admin/"),
            ("/../../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/%zz", "/%zz"),
            ("/%4", "/%4"),
        ] {
            assert_eq!(normalize_path(raw), normal, "{raw}");
        }
        assert!(matches!(normalize_path("/plain/path?q"), Cow::Borrowed(_)), "no copy when nothing changes");
        let a = authz(&policy(
            "no-admin",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]",
        ));
        for sneaky in ["/public/../admin", "/%61dmin/x", "/./admin"] {
            assert!(denied(&a, &get(sneaky)).is_some(), "{sneaky}");
        }
    }

    #[test]
    fn counters_survive_a_rebuild_by_policy_name() {
        let a = authz(&policy(
            "no-admin",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin\"]}}]}]",
        ));
        denied(&a, &get("/admin"));
        let plans = [AuthzPolicyPlan {
            name: "no-admin".into(),
            action: AuthzAction::Deny,
            rules: Vec::new(),
            dry_run: false,
        }];
        let b = Authz::build(&plans, Some(&a)).unwrap();
        assert_eq!(b.counts(), vec![("no-admin".into(), "denied", 1)]);
        assert!(Authz::build(&[], Some(&a)).is_none(), "no policy: nothing to evaluate");
    }

    #[test]
    fn dry_run_policies_decide_apart_and_enforce_nothing() {
        let dry = |name: &str, body: &str| {
            policy(name, body).replace(
                &format!("metadata: {{name: {name}}}"),
                &format!("metadata: {{name: {name}, annotations: {{istio.io/dry-run: \"true\"}}}}"),
            )
        };
        let a = authz(
            &(dry("would-deny", "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin\"]}}]}]")
                + &dry("would-allow", "  rules: [{to: [{operation: {methods: [GET]}}]}]")
                + &policy(
                    "deny-debug",
                    "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/debug\"]}}]}]",
                )),
        );
        let check = |r: &Req| {
            let path = normalize_path(r.path);
            let uri: http::Uri = format!("http://{}/", r.host).parse().unwrap();
            let http = HttpFacts { uri: &uri, method: r.method, path: &path, headers: &r.headers };
            let peer = r.peer.parse().unwrap();
            a.check(&Facts { peer, remote: peer, port: r.port, tls: r.tls.as_ref(), http: Some(http) })
        };
        let admin = check(&get("/admin"));
        assert_eq!((admin.denied_by, admin.shadow_denied_by.as_deref()), (None, Some("would-deny")));
        let post = check(&Req { method: "POST", ..get("/cart") });
        assert_eq!(
            (post.denied_by, post.shadow_denied_by.as_deref()),
            (None, Some(UNMATCHED)),
            "the dry-run ALLOW alone"
        );
        let debug = check(&get("/debug"));
        assert_eq!(
            (debug.denied_by.as_deref(), debug.shadow_denied_by),
            (Some("deny-debug"), None),
            "enforced ones still are"
        );
        let counts = a.counts();
        for row in [
            ("would-deny", "shadow_denied", 1),
            ("would-allow", "shadow_allowed", 1),
            (UNMATCHED, "shadow_denied", 1),
            ("deny-debug", "denied", 1),
        ] {
            assert!(counts.contains(&(row.0.into(), row.1, row.2)), "{row:?} in {counts:?}");
        }
    }
}
