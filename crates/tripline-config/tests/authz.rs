//! `AuthorizationPolicy`: what is decoded and where mistakes are pointed at, which policies
//! apply to this proxy's workload, and what `validate` warns about.

mod common;

use common::{errors, ok, src, the_error};
use tripline_config::authz::{AuthzAction, Constraint, StringMatch, Values};
use tripline_config::{load, LoadOptions, Severity};

const BASE: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  servers:
  - port: {number: 18130, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b}
spec:
  hosts: [b.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route: [{destination: {host: b.local}}]
---
"#;

fn policy(meta: &str, spec: &str) -> String {
    format!("{BASE}apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {meta}\nspec:\n{spec}\n")
}

fn with(opts: &LoadOptions, text: &str) -> Result<tripline_config::Loaded, Vec<String>> {
    load(&src(text), opts)
        .map_err(|d| d.iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()).collect())
}

fn workload(ns: Option<&str>, labels: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        workload_namespace: ns.map(str::to_string),
        workload_labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..LoadOptions::default()
    }
}

#[test]
fn a_policy_is_decoded_into_constraints() {
    let text = policy(
        "{name: p}",
        "  action: DENY\n  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/8], notRemoteIpBlocks: [1.2.3.4]}}]\n    to: [{operation: {methods: [POST], paths: [\"/admin/*\"], hosts: [\"*.Example.com\"], ports: [\"8080\"]}}]\n    when: [{key: \"request.headers[X-Token]\", notValues: [secret]}]",
    );
    let loaded = ok(&text);
    let p = &loaded.plan.authorization[0];
    assert_eq!((p.name.as_str(), p.action), ("p", AuthzAction::Deny));
    let rule = &p.rules[0];
    assert_eq!(rule.from[0].len(), 2);
    assert!(rule.from[0][1].negate);
    let hosts: Vec<&Constraint> =
        rule.to[0].iter().filter(|c| c.attribute == tripline_config::authz::Attribute::Host).collect();
    assert_eq!(
        hosts[0].values,
        Values::Strings(vec![StringMatch::Suffix(".example.com".into())]),
        "hosts lower-cased"
    );
    assert_eq!(rule.when[0].attribute, tripline_config::authz::Attribute::Header("x-token".into()));
    assert!(rule.when[0].negate);
    let beta = text.replace("security.istio.io/v1", "security.istio.io/v1beta1");
    assert_eq!(ok(&beta).plan.authorization.len(), 1, "v1beta1 as well");
}

#[test]
fn mistakes_are_errors_at_their_field() {
    // The needle's line within the policy (the shared documents before it say `ports` too).
    let line_of = |text: &str, needle: &str| {
        let start = text.lines().position(|l| l.contains("AuthorizationPolicy")).unwrap();
        start + text.lines().skip(start).position(|l| l.contains(needle)).unwrap() + 1
    };
    for (spec, needle, says) in [
        (
            "  action: CUSTOM\n  provider: {name: ext}",
            "CUSTOM",
            "`CUSTOM` (an external authorizer) is not supported",
        ),
        ("  targetRefs: [{kind: Gateway, name: edge}]", "targetRefs", "`targetRefs`"),
        (
            "  rules: [{from: [{source: {ipBlocks: [10.0.0.300]}}]}]",
            "ipBlocks",
            "`10.0.0.300` is not an IP address",
        ),
        ("  rules: [{to: [{operation: {ports: [http]}}]}]", "ports", "`http` is not a port number"),
        ("  rules: [{to: [{operation: {paths: [admin]}}]}]", "paths", "`admin` is not a path"),
        ("  rules: [{to: [{operation: {methods: []}}]}]", "methods", "an empty list matches nothing"),
        (
            "  rules: [{when: [{key: source.port, values: [\"1\"]}]}]",
            "source.port",
            "unknown or unsupported key `source.port`",
        ),
        (
            "  rules: [{when: [{key: \"request.headers[x-a]\"}]}]",
            "request.headers",
            "the values the key must have",
        ),
        ("  rules: [{to: [{operation: {verbs: [GET]}}]}]", "verbs", "verbs"),
    ] {
        let text = policy("{name: p}", spec);
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{spec}: {e:#?}");
        let shown = e[0].to_string();
        assert!(shown.contains(says), "{spec}: {shown}");
        assert_eq!(e[0].line, line_of(&text, needle), "{spec}: {shown}");
    }
    let dry = policy("{name: p, annotations: {\"istio.io/dry-run\": \"maybe\"}}", "  action: DENY");
    assert!(the_error(&dry).contains("`istio.io/dry-run` is \"true\""), "{}", the_error(&dry));
    let dry = policy("{name: p, annotations: {\"istio.io/dry-run\": \"true\"}}", "  action: DENY");
    assert!(ok(&dry).plan.authorization[0].dry_run);
    let jwt = format!("{BASE}apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: p}}\nspec: {{}}\n");
    assert!(errors(&jwt)[0]
        .to_string()
        .contains("kind `RequestAuthentication` (security.istio.io/v1) is not implemented yet"));
}

#[test]
fn which_policies_apply_follows_istios_namespaces_and_selectors() {
    let applied = |opts: &LoadOptions, meta: &str, spec: &str| -> Result<usize, Vec<String>> {
        with(opts, &policy(meta, spec)).map(|l| l.plan.authorization.len())
    };
    let gw = workload(Some("shop"), &[("app", "gw"), ("tier", "edge")]);
    assert_eq!(applied(&gw, "{name: p}", "  action: DENY"), Ok(1), "no namespace: the workload's");
    assert_eq!(applied(&gw, "{name: p, namespace: shop}", "  action: DENY"), Ok(1));
    assert_eq!(applied(&gw, "{name: p, namespace: other}", "  action: DENY"), Ok(0));
    assert_eq!(applied(&gw, "{name: p, namespace: istio-system}", "  action: DENY"), Ok(1), "mesh-wide");
    assert_eq!(
        applied(&gw, "{name: p, namespace: shop}", "  selector: {matchLabels: {app: gw}}\n  action: DENY"),
        Ok(1)
    );
    assert_eq!(
        applied(&gw, "{name: p, namespace: shop}", "  selector: {matchLabels: {app: api}}\n  action: DENY"),
        Ok(0)
    );
    assert_eq!(
        applied(
            &gw,
            "{name: p, namespace: istio-system}",
            "  selector: {matchLabels: {tier: edge}}\n  action: DENY"
        ),
        Ok(1),
        "the root namespace's selector reaches every namespace"
    );
    let name = with(&gw, &policy("{name: p, namespace: shop}", "  action: DENY")).unwrap().plan.authorization
        [0]
    .name
    .clone();
    assert_eq!(name, "shop/p");

    let unknown = workload(None, &[]);
    let e = applied(&unknown, "{name: p, namespace: shop}", "  action: DENY").unwrap_err();
    assert!(e[0].contains("metadata.namespace") && e[0].contains("give --workload-namespace"), "{e:#?}");
    let e =
        applied(&unknown, "{name: p}", "  selector: {matchLabels: {app: gw}}\n  action: DENY").unwrap_err();
    assert!(e[0].contains("spec.selector") && e[0].contains("give --workload-labels"), "{e:#?}");
    assert_eq!(applied(&unknown, "{name: p, namespace: istio-system}", "  action: DENY"), Ok(1));
}

#[test]
fn validate_warns_about_allow_nothing_and_identities_that_never_match() {
    let warnings = |spec: &str| -> Vec<String> {
        ok(&policy("{name: p}", spec)).warnings.iter().map(|w| w.to_string()).collect()
    };
    let w = warnings("  action: ALLOW");
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("an ALLOW policy without rules matches no request"), "{w:#?}");
    assert!(warnings("  rules: [{}]").is_empty(), "allow-all says what it means");
    assert!(warnings("  action: DENY").is_empty());
    let w = warnings(
        "  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/a/sa/b\"], notServiceAccounts: [a/b]}}]\n    when: [{key: connection.sni, values: [a]}]",
    );
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w[0].contains("spec.rules[0].from[0].source.principals")
            && w[0].contains("no listener of this config asks clients for a certificate"),
        "{w:#?}"
    );
    assert!(w[1].contains("source.notServiceAccounts"), "{w:#?}");
    assert!(
        w[2].contains("spec.rules[0].when[0].key")
            && w[2].contains("no listener of this config terminates TLS"),
        "{w:#?}"
    );
}
