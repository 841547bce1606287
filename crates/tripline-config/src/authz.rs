//! Istio's `AuthorizationPolicy` (`security.istio.io/v1`, `v1beta1`), decoded into rules the
//! proxy evaluates on every request (HTTP) and connection (TCP) before routing.
//!
//! ```yaml
//! apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: {name: no-admin, namespace: shop}
//! spec:
//!   selector: {matchLabels: {app: gateway}}   # none: every workload of the namespace
//!   action: DENY                              # ALLOW (default), DENY or AUDIT
//!   rules:
//!   - from: [{source: {ipBlocks: [10.0.0.0/8]}}]
//!     to: [{operation: {methods: [POST], paths: ["/admin/*"]}}]
//!     when: [{key: request.headers[x-debug], values: ["*"]}]
//! ```
//!
//! Which policies apply to this proxy follows Istio: a policy in the root namespace
//! (`istio-system`) without a selector applies everywhere; one in another namespace without a
//! selector, to the workloads of that namespace; one with a selector, to the workloads whose
//! labels it matches, in its namespace (any namespace from the root one). The proxy's own
//! labels and namespace come from `--workload-labels` and `--workload-namespace`; a policy
//! that cannot be placed without them is an error, never silently left out (a DENY left out
//! lets through what it was written to stop). A policy without `metadata.namespace` is in
//! the workload's namespace.
//!
//! Identities come from TLS: `connection.sni` from the SNI a client sent to a listener that
//! terminates TLS; `principals`, `namespaces` and `serviceAccounts` (`source.principal`,
//! `source.namespace`) from the SPIFFE ID (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`) of the
//! certificate a client presented to a `MUTUAL` or `OPTIONAL_MUTUAL` server. A request without
//! one (plaintext, no client certificate) is evaluated as Istio evaluates it: no value, so a
//! list of values never matches and a `not` list always does. A JWT's identities
//! (`requestPrincipals`, `request.auth.*`) never have a value: Tripline reads no
//! RequestAuthentication. `validate` warns at each identity field no listener of the config
//! can give a request.
//!
//! A policy annotated `istio.io/dry-run: "true"` is evaluated on its own, as Istio's shadow
//! rules are (dry-run DENY policies, and dry-run ALLOW policies, each as if they alone were
//! enforced): what it would have decided is counted and logged, and nothing is enforced.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::decode::{Cx, Schema};
use crate::plan::Cidr;
use crate::yaml::Node;

/// Istio's root namespace: a policy there without a selector applies to every workload.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// An `AuthorizationPolicy` as decoded, before it is known whether it applies to this proxy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthorizationPolicy {
    /// `matchLabels` of `selector`; `None` without a selector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    pub action: AuthzAction,
    pub rules: Vec<AuthzRule>,
    /// `istio.io/dry-run: "true"`: evaluated, counted and logged, never enforced.
    pub dry_run: bool,
    /// Identity fields, each with where it was written (for `validate`'s warnings when no
    /// listener can give a request that identity).
    #[serde(skip)]
    pub identity_fields: Vec<(crate::yaml::Pos, String, Attribute)>,
}

/// A policy that applies to this proxy, as the plan carries it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthzPolicyPlan {
    /// `<namespace>/<name>` (or `<name>` without a namespace): metrics and the access log
    /// carry it.
    pub name: String,
    pub action: AuthzAction,
    /// Empty: the policy matches no request (an ALLOW like that denies everything).
    pub rules: Vec<AuthzRule>,
    /// See [`AuthorizationPolicy::dry_run`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthzAction {
    Allow,
    Deny,
    Audit,
}

/// A rule matches when one of its sources (if any), one of its operations (if any) and all of
/// its conditions match. Each source and each operation holds when all of its constraints do.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct AuthzRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Vec<Constraint>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Vec<Constraint>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Constraint>,
}

/// One field of a source, an operation or a condition: the attribute holds one of `values`
/// (or, `negate`d, none of them; an attribute with no value is in no list).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Constraint {
    pub attribute: Attribute,
    pub values: Values,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub negate: bool,
}

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Attribute {
    /// The peer's identity (`principals`, `source.principal`): none without mTLS.
    Principal,
    /// The peer's namespace (`namespaces`, `source.namespace`): none without mTLS.
    Namespace,
    /// The peer's service account, `<namespace>/<name>` (`serviceAccounts`): none without
    /// mTLS.
    ServiceAccount,
    /// A JWT's identity or claims (`requestPrincipals`, `request.auth.*`): none, as Tripline
    /// reads no `RequestAuthentication`.
    RequestAuth,
    /// The TLS server name (`connection.sni`): none without TLS.
    Sni,
    /// The address of the connection's peer (`ipBlocks`, `source.ip`).
    SourceIp,
    /// The client's address as the listener's trusted proxies report it in
    /// `x-forwarded-for` (`remoteIpBlocks`, `remote.ip`); the peer's without them.
    RemoteIp,
    /// The port the request arrived on (`ports`, `destination.port`).
    Port,
    /// HTTP only: the authority (`hosts`), compared without case, with and without its port.
    Host,
    /// HTTP only (`methods`).
    Method,
    /// HTTP only: the path without its query, normalized (RFC 3986 dot segments removed,
    /// unreserved characters decoded) (`paths`).
    Path,
    /// HTTP only: a request header's value, several joined with `,` (`request.headers[name]`;
    /// the name lower-cased).
    Header(String),
}

impl Attribute {
    /// A peer or request identity, or the TLS server name: what no request has yet (see the
    /// module docs), so `validate` warns where one is written.
    pub fn identity(&self) -> bool {
        matches!(
            self,
            Attribute::Principal
                | Attribute::Namespace
                | Attribute::ServiceAccount
                | Attribute::RequestAuth
                | Attribute::Sni
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Values {
    Strings(Vec<StringMatch>),
    Ips(Vec<Cidr>),
    Ports(Vec<u16>),
}

/// Istio's string values: `abc` exact, `abc*` prefix, `*abc` suffix, `*` any value present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringMatch {
    fn parse(text: &str, lower: bool) -> StringMatch {
        let text = if lower { text.to_ascii_lowercase() } else { text.to_string() };
        if text == "*" {
            StringMatch::Present
        } else if let Some(p) = text.strip_suffix('*') {
            StringMatch::Prefix(p.to_string())
        } else if let Some(s) = text.strip_prefix('*') {
            StringMatch::Suffix(s.to_string())
        } else {
            StringMatch::Exact(text)
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Present => !value.is_empty(),
        }
    }
}

const SPEC: Schema = Schema::new(
    "Istio's AuthorizationPolicy",
    &["selector", "targetRef", "targetRefs", "action", "provider", "rules"],
);
const SELECTOR: Schema = Schema::new("Istio's WorkloadSelector", &["matchLabels"]);
const RULE: Schema = Schema::new("Istio's AuthorizationPolicy rule", &["from", "to", "when"]);
const FROM: Schema = Schema::new("Istio's Rule.From", &["source"]);
const TO: Schema = Schema::new("Istio's Rule.To", &["operation"]);
const SOURCE: Schema = Schema::new(
    "Istio's Source",
    &[
        "principals",
        "notPrincipals",
        "requestPrincipals",
        "notRequestPrincipals",
        "namespaces",
        "notNamespaces",
        "ipBlocks",
        "notIpBlocks",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
        "serviceAccounts",
        "notServiceAccounts",
    ],
);
const OPERATION: Schema = Schema::new(
    "Istio's Operation",
    &["hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"],
);
const CONDITION: Schema = Schema::new("Istio's Condition", &["key", "values", "notValues"]);

/// The `when` keys Tripline evaluates.
const KEYS: &str = "request.headers[NAME], source.ip, remote.ip, destination.port, source.principal, source.namespace, connection.sni, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME]";

/// Decodes a policy's `spec`; `dry_run` is its `istio.io/dry-run` annotation.
pub fn authorization_policy(cx: &mut Cx, spec: &Node, dry_run: bool) -> Option<AuthorizationPolicy> {
    let f = cx.fields(spec, "spec", &SPEC)?;
    for name in ["targetRef", "targetRefs"] {
        if let Some((n, p)) = f.get(name) {
            cx.error(n, &p, format!("`{name}` (a policy attached to a Gateway or Service) is not implemented yet; use `selector` with the workload's labels"));
            return None;
        }
    }
    let action = match f.value("action") {
        Some((n, p)) => match cx.one_of(n, &p, &["ALLOW", "DENY", "AUDIT", "CUSTOM"], "")?.as_str() {
            "DENY" => AuthzAction::Deny,
            "AUDIT" => AuthzAction::Audit,
            "CUSTOM" => {
                cx.error(n, &p, "`CUSTOM` (an external authorizer) is not supported by Tripline; use ALLOW, DENY or AUDIT");
                return None;
            }
            _ => AuthzAction::Allow,
        },
        None => AuthzAction::Allow,
    };
    if let Some((n, p)) = f.get("provider") {
        cx.error(n, &p, "`provider` goes with `action: CUSTOM`, which Tripline does not support");
        return None;
    }
    let selector = match f.value("selector") {
        Some((n, p)) => {
            let s = cx.fields(n, &p, &SELECTOR)?;
            Some(s.value("matchLabels").map(|(n, p)| cx.string_map(n, &p)).unwrap_or_default())
        }
        None => None,
    };
    let mut identity_fields = Vec::new();
    let mut rules = Vec::new();
    let mut ok = true;
    if let Some((n, p)) = f.value("rules") {
        for (rn, rp) in cx.list(n, &p, "rules") {
            match rule(cx, rn, &rp, &mut identity_fields) {
                Some(r) => rules.push(r),
                None => ok = false,
            }
        }
    }
    ok.then_some(AuthorizationPolicy { selector, action, rules, dry_run, identity_fields })
}

fn rule(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    identity: &mut Vec<(crate::yaml::Pos, String, Attribute)>,
) -> Option<AuthzRule> {
    let f = cx.fields(node, path, &RULE)?;
    let from =
        clauses(cx, f.value("from"), (&FROM, "source", "who the request comes from"), &SOURCE, identity);
    let to = clauses(cx, f.value("to"), (&TO, "operation", "what the request does"), &OPERATION, identity);
    let mut when = Some(Vec::new());
    if let Some((n, p)) = f.value("when") {
        for (item, ip) in cx.list(n, &p, "conditions") {
            match (condition(cx, item, &ip, identity), when.as_mut()) {
                (Some(mut c), Some(all)) => all.append(&mut c),
                _ => when = None,
            }
        }
    }
    Some(AuthzRule { from: from?, to: to?, when: when? })
}

/// `from` or `to`: a list of `{source: …}` or `{operation: …}` (`wrapper`: its schema, the
/// one field and what it says), each a conjunction of constraints. `None` after an error.
fn clauses(
    cx: &mut Cx,
    list: Option<(&Node, String)>,
    wrapper: (&Schema, &str, &str),
    schema: &Schema,
    identity: &mut Vec<(crate::yaml::Pos, String, Attribute)>,
) -> Option<Vec<Vec<Constraint>>> {
    let (wrapper_schema, field, expected) = wrapper;
    let mut out = Some(Vec::new());
    let Some((n, p)) = list else { return out };
    for (item, ip) in cx.list(n, &p, "clauses") {
        let w = cx.fields(item, &ip, wrapper_schema)?;
        let Some((inner, inner_path)) = w.value(field) else {
            cx.required(&w, field, expected);
            return None;
        };
        match (constraints(cx, inner, &inner_path, schema, identity), out.as_mut()) {
            (Some(c), Some(all)) => all.push(c),
            _ => out = None,
        }
    }
    out
}

/// A source's or an operation's fields, each a constraint.
fn constraints(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    schema: &Schema,
    identity: &mut Vec<(crate::yaml::Pos, String, Attribute)>,
) -> Option<Vec<Constraint>> {
    let f = cx.fields(node, path, schema)?;
    let mut out = Vec::new();
    let mut ok = true;
    for &field in schema.known {
        let Some((n, p)) = f.value(field) else { continue };
        let negate = field.starts_with("not");
        let base = if negate { lower_first(&field[3..]) } else { field.to_string() };
        let attribute = match base.as_str() {
            "principals" => Attribute::Principal,
            "namespaces" => Attribute::Namespace,
            "requestPrincipals" => Attribute::RequestAuth,
            "ipBlocks" => Attribute::SourceIp,
            "remoteIpBlocks" => Attribute::RemoteIp,
            "hosts" => Attribute::Host,
            "ports" => Attribute::Port,
            "methods" => Attribute::Method,
            "paths" => Attribute::Path,
            "serviceAccounts" => Attribute::ServiceAccount,
            _ => {
                cx.error(n, &p, format!("unknown field `{field}`"));
                ok = false;
                continue;
            }
        };
        if attribute.identity() {
            identity.push((n.pos, p.clone(), attribute.clone()));
        }
        match values(cx, n, &p, &attribute) {
            Some(values) => out.push(Constraint { attribute, values, negate }),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A `when` condition: a key and its `values` and/or `notValues` (both: both must hold).
fn condition(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    identity: &mut Vec<(crate::yaml::Pos, String, Attribute)>,
) -> Option<Vec<Constraint>> {
    let f = cx.fields(node, path, &CONDITION)?;
    let Some((kn, kp)) = f.value("key") else {
        cx.required(&f, "key", &format!("what to look at: {KEYS}"));
        return None;
    };
    let key = cx.string(kn, &kp)?;
    let attribute = if let Some(name) = key.strip_prefix("request.headers[").and_then(|r| r.strip_suffix(']'))
    {
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            cx.error(kn, &kp, format!("`{name}` is not a header name"));
            return None;
        }
        Attribute::Header(name.to_ascii_lowercase())
    } else {
        match key.as_str() {
            "source.ip" => Attribute::SourceIp,
            "remote.ip" => Attribute::RemoteIp,
            "destination.port" => Attribute::Port,
            "source.principal" => Attribute::Principal,
            "source.namespace" => Attribute::Namespace,
            "connection.sni" => Attribute::Sni,
            "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
                Attribute::RequestAuth
            }
            k if k.starts_with("request.auth.claims[") && k.ends_with(']') => Attribute::RequestAuth,
            other => {
                cx.error(kn, &kp, format!("unknown or unsupported key `{other}`: Tripline evaluates {KEYS}"));
                return None;
            }
        }
    };
    if attribute.identity() {
        identity.push((kn.pos, kp.clone(), attribute.clone()));
    }
    let mut out = Vec::new();
    for (field, negate) in [("values", false), ("notValues", true)] {
        if let Some((n, p)) = f.value(field) {
            out.push(Constraint {
                attribute: attribute.clone(),
                values: values(cx, n, &p, &attribute)?,
                negate,
            });
        }
    }
    if out.is_empty() {
        cx.required(&f, "values", "the values the key must have (or `notValues`, those it must not)");
        return None;
    }
    Some(out)
}

/// A list of values in the form the attribute takes.
fn values(cx: &mut Cx, node: &Node, path: &str, attribute: &Attribute) -> Option<Values> {
    let items = cx.strings(node, path);
    if items.is_empty() {
        cx.error(node, path, "an empty list matches nothing: remove the field, or give it values");
        return None;
    }
    let values = match attribute {
        Attribute::SourceIp | Attribute::RemoteIp => Values::Ips(each(cx, &items, Cidr::parse)?),
        Attribute::Port => Values::Ports(each(cx, &items, |text| match text.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{text}` is not a port number (1 to 65535)")),
        })?),
        Attribute::Path => Values::Strings(each(cx, &items, |text| {
            if text.starts_with('/') || text.starts_with('*') {
                Ok(StringMatch::parse(text, false))
            } else {
                Err(format!("`{text}` is not a path: a path starts with `/` (or `*` for a suffix)"))
            }
        })?),
        // Hosts are compared without case.
        Attribute::Host => Values::Strings(each(cx, &items, |text| Ok(StringMatch::parse(text, true)))?),
        _ => Values::Strings(each(cx, &items, |text| Ok(StringMatch::parse(text, false)))?),
    };
    Some(values)
}

/// Each of `items` read by `read`, every failure an error at its item; `None` after any.
fn each<T>(
    cx: &mut Cx,
    items: &[(String, crate::yaml::Pos, String)],
    read: impl Fn(&str) -> Result<T, String>,
) -> Option<Vec<T>> {
    let mut out = Some(Vec::with_capacity(items.len()));
    for (text, pos, path) in items {
        match (read(text), out.as_mut()) {
            (Ok(v), Some(all)) => all.push(v),
            (Ok(_), None) => {}
            (Err(e), _) => {
                cx.report(crate::diag::Severity::Error, *pos, path, e);
                out = None;
            }
        }
    }
    out
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_lowercase().to_string() + c.as_str()).unwrap_or_default()
}
