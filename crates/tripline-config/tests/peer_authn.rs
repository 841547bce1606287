//! The sidecar's inbound listeners (`Sidecar` `ingress`) and the mutual TLS their
//! PeerAuthentication asks for: Istio's precedence (workload over namespace over mesh, the
//! first loaded of equals), `portLevelMtls`, UNSET inheriting, and where each mistake is
//! pointed at.

use std::collections::BTreeMap;

use tripline_config::peer_authn::MtlsMode;
use tripline_config::plan::{Discovery, ListenerPlan, ListenerProtocol, UpstreamProtocol};
use tripline_config::{load, Diagnostic, LoadOptions, Loaded, Severity, Source};

#[path = "common/svid.rs"]
mod svid;
use svid::Svid;

const SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: checkout, namespace: shop}
spec:
  workloadSelector: {labels: {app: checkout}}
  ingress:
  - port: {number: 19080, protocol: HTTP, name: http}
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:8080
  - port: {number: 19090, protocol: TCP, name: db}
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:5432
";

fn peer(name: &str, namespace: &str, body: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}")
}

fn options(svid: Option<&Svid>) -> LoadOptions {
    LoadOptions {
        workload_namespace: Some("shop".into()),
        workload_labels: BTreeMap::from([("app".to_string(), "checkout".to_string())]),
        identity_dir: svid.map(|s| s.0.clone()),
        ..LoadOptions::default()
    }
}

fn loaded(text: &str, svid: Option<&Svid>) -> (Loaded, Vec<Diagnostic>) {
    let src = vec![Source { name: "mesh.yaml".into(), text: text.into() }];
    match load(&src, &options(svid)) {
        Ok(l) => {
            let warnings = l.warnings.clone();
            (l, warnings)
        }
        Err(d) => panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

fn refused(text: &str, svid: Option<&Svid>) -> Vec<Diagnostic> {
    let src = vec![Source { name: "mesh.yaml".into(), text: text.into() }];
    let d = load(&src, &options(svid)).expect_err("config must be refused");
    d.into_iter().filter(|d| d.severity == Severity::Error).collect()
}

fn listener(l: &Loaded, port: u16) -> &ListenerPlan {
    l.plan.listeners.iter().find(|p| p.bind.port() == port).expect("an inbound listener")
}

/// (mode, the policy that decided, terminates TLS, takes plaintext too)
fn mtls(l: &ListenerPlan) -> (MtlsMode, Option<&str>, bool, bool) {
    let m = l.mtls.as_ref().expect("an inbound listener has an mTLS mode");
    let plaintext = l.tls.is_empty() || l.plaintext_too;
    (m.mode, m.by.as_deref(), !l.tls.is_empty(), plaintext)
}

#[test]
fn each_ingress_port_is_a_listener_in_front_of_the_application_without_retries() {
    let (l, _) = loaded(SIDECAR, None);
    let http = listener(&l, 19080);
    assert_eq!(http.name, "inbound|19080");
    assert_eq!(http.protocol, ListenerProtocol::Http);
    let route = &http.virtual_hosts[0].routes[0];
    assert_eq!(route.retry.attempts, 0, "the caller's sidecar retries; the inbound side does not");
    assert_eq!(route.timeout, None);
    let app = &l.plan.clusters[route.destinations[0].cluster];
    assert_eq!(app.name, "inbound|19080||");
    assert_eq!(app.protocol, UpstreamProtocol::Http1);
    let Discovery::Static(endpoints) = &app.discovery else { panic!("a fixed endpoint") };
    assert_eq!(endpoints[0].address, "127.0.0.1:8080".parse().unwrap());
    assert!(app.resilience.breaker.is_none() && app.resilience.outlier.is_none());
    let db = listener(&l, 19090);
    assert_eq!(db.protocol, ListenerProtocol::Tcp);
    assert_eq!(l.plan.clusters[db.tcp_routes[0].destinations[0].cluster].name, "inbound|19090||");
}

#[test]
fn without_a_policy_ports_are_permissive_and_without_an_identity_plaintext_only() {
    let (l, warnings) = loaded(SIDECAR, None);
    assert_eq!(mtls(listener(&l, 19080)), (MtlsMode::Permissive, None, false, true));
    assert!(warnings.is_empty(), "Istio's default needs no warning: {warnings:#?}");
    let svid = Svid::new("pa-default", "spiffe://cluster.local/ns/shop/sa/checkout");
    let (l, _) = loaded(SIDECAR, Some(&svid));
    let http = listener(&l, 19080);
    assert_eq!(mtls(http), (MtlsMode::Permissive, None, true, true), "mutual TLS or plaintext");
    assert_eq!(http.tls[0].certificate, svid.0.join("svid.pem"));
    assert_eq!(http.tls[0].ca_certificates.as_deref(), Some(svid.0.join("svid_bundle.pem").as_path()));
}

#[test]
fn the_workload_policy_beats_the_namespace_s_which_beats_the_mesh_s_and_unset_inherits() {
    let svid = Svid::new("pa-levels", "spiffe://cluster.local/ns/shop/sa/checkout");
    let mesh = peer("default", "istio-system", "  mtls: {mode: STRICT}\n");
    let ns = peer("default", "shop", "  mtls: {mode: DISABLE}\n");
    let workload = peer(
        "checkout",
        "shop",
        "  selector: {matchLabels: {app: checkout}}\n  mtls: {mode: UNSET}\n  portLevelMtls:\n    19090: {mode: STRICT}\n",
    );
    let other = peer("other", "shop", "  selector: {matchLabels: {app: other}}\n  mtls: {mode: STRICT}\n");
    let elsewhere = peer("default", "billing", "  mtls: {mode: STRICT}\n");

    let (l, _) = loaded(&format!("{SIDECAR}{mesh}{elsewhere}"), Some(&svid));
    assert_eq!(mtls(listener(&l, 19080)), (MtlsMode::Strict, Some("istio-system/default"), true, false));

    let (l, _) = loaded(&format!("{SIDECAR}{mesh}{ns}{other}"), Some(&svid));
    assert_eq!(mtls(listener(&l, 19080)), (MtlsMode::Disable, Some("shop/default"), false, true));

    // The workload's UNSET takes the namespace's DISABLE; its port 19090 is STRICT.
    let (l, _) = loaded(&format!("{SIDECAR}{mesh}{ns}{workload}"), Some(&svid));
    assert_eq!(mtls(listener(&l, 19080)), (MtlsMode::Disable, Some("shop/default"), false, true));
    assert_eq!(mtls(listener(&l, 19090)), (MtlsMode::Strict, Some("shop/checkout"), true, false));
}

#[test]
fn of_two_policies_at_one_level_the_first_loaded_decides_and_the_second_is_reported() {
    let svid = Svid::new("pa-twice", "spiffe://cluster.local/ns/shop/sa/checkout");
    let first = peer("strict", "shop", "  mtls: {mode: STRICT}\n");
    let second = peer("relaxed", "shop", "  mtls: {mode: DISABLE}\n");
    let (l, warnings) = loaded(&format!("{SIDECAR}{first}{second}"), Some(&svid));
    assert_eq!(mtls(listener(&l, 19080)).0, MtlsMode::Strict);
    let w: Vec<String> = warnings.iter().map(|d| d.to_string()).collect();
    assert!(
        w.iter().any(|w| w.contains("PeerAuthentication/relaxed: metadata.name")
            && w.contains("`shop/strict` applies at the same level and was loaded first")),
        "{w:#?}"
    );
}

#[test]
fn strict_without_an_identity_is_an_error_at_the_mode_that_asks_for_it() {
    let strict = peer("default", "shop", "  mtls: {mode: STRICT}\n");
    let e = refused(&format!("{SIDECAR}{strict}"), None);
    assert!(!e.is_empty());
    assert!(e.iter().all(|d| d.path == "PeerAuthentication/default: spec.mtls.mode"), "{e:#?}");
    assert!(e[0].message.contains("--identity-dir"), "{}", e[0]);
    assert_eq!(e[0].line, SIDECAR.lines().count() + 6, "{}", e[0]);
}

#[test]
fn permissive_written_without_an_identity_warns_that_mesh_callers_cannot_connect() {
    let permissive = peer("default", "shop", "  mtls: {mode: PERMISSIVE}\n");
    let (l, warnings) = loaded(&format!("{SIDECAR}{permissive}"), None);
    assert_eq!(mtls(listener(&l, 19080)), (MtlsMode::Permissive, Some("shop/default"), false, true));
    assert!(warnings.iter().any(|d| d.message.contains("mesh callers using mutual TLS cannot connect")));
}

#[test]
fn port_level_mtls_needs_a_selector_and_a_port_number() {
    let e = refused(
        &format!("{SIDECAR}{}", peer("default", "shop", "  portLevelMtls:\n    19090: {mode: STRICT}\n")),
        None,
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].path, "PeerAuthentication/default: spec.portLevelMtls");
    assert!(e[0].message.contains("needs a `selector`"));
    let body = "  selector: {matchLabels: {app: checkout}}\n  portLevelMtls:\n    http: {mode: STRICT}\n";
    let e = refused(&format!("{SIDECAR}{}", peer("p", "shop", body)), None);
    assert_eq!(e[0].path, "PeerAuthentication/p: spec.portLevelMtls.http");
    assert!(e[0].message.contains("expected a port number"), "{}", e[0]);
    let e = refused(&format!("{SIDECAR}{}", peer("p", "shop", "  mtls: {mode: ON}\n")), None);
    assert!(e[0].message.contains("expected one of UNSET, DISABLE, PERMISSIVE, STRICT"), "{}", e[0]);
}

#[test]
fn policies_that_change_nothing_here_are_pointed_out() {
    let svid = Svid::new("pa-nothing", "spiffe://cluster.local/ns/shop/sa/checkout");
    // A port that is none of the inbound ones; a selector in the root namespace.
    let body = "  selector: {matchLabels: {app: checkout}}\n  portLevelMtls:\n    7000: {mode: STRICT}\n";
    let root =
        peer("root", "istio-system", "  selector: {matchLabels: {app: checkout}}\n  mtls: {mode: STRICT}\n");
    let (l, warnings) = loaded(&format!("{SIDECAR}{}{root}", peer("p", "shop", body)), Some(&svid));
    assert_eq!(mtls(listener(&l, 19080)).0, MtlsMode::Permissive);
    let w: Vec<String> = warnings.iter().map(|d| d.to_string()).collect();
    assert!(
        w.iter().any(|w| w.contains("spec.portLevelMtls.7000")
            && w.contains("port 7000 is none of this workload's inbound ports (19080, 19090)")),
        "{w:#?}"
    );
    assert!(
        w.iter().any(|w| w.contains("PeerAuthentication/root") && w.contains("applies to no workload")),
        "{w:#?}"
    );
    // No Sidecar ingress: nothing for PeerAuthentication to act on.
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 18080, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
    let (_, warnings) =
        loaded(&format!("{gateway}{}", peer("default", "shop", "  mtls: {mode: STRICT}\n")), Some(&svid));
    assert!(
        warnings.iter().any(|d| d.message.contains("this workload has none: it changes nothing here")),
        "{warnings:#?}"
    );
}

#[test]
fn the_sidecar_of_the_narrowest_level_applies() {
    let namespace_wide = SIDECAR
        .replace("name: checkout,", "name: everyone,")
        .replace("  workloadSelector: {labels: {app: checkout}}\n", "")
        .replace("19080", "19081");
    let (l, warnings) = loaded(&format!("{namespace_wide}---\n{SIDECAR}"), None);
    let ports: Vec<u16> = l.plan.listeners.iter().map(|p| p.bind.port()).collect();
    assert_eq!(ports, [19080, 19090], "the workload's own Sidecar");
    assert!(warnings.iter().any(|d| d.path == "Sidecar/everyone: metadata.name"
        && d.message.contains("`shop/checkout` applies to this workload more specifically")));
}

#[test]
fn sidecar_settings_tripline_does_not_act_on_are_refused_where_written() {
    let cases = [
        (
            "  egress:\n  - port: {number: 9000, protocol: HTTP, name: h}\n    hosts: [\"./*\"]\n",
            "Sidecar/checkout: spec.egress[0].port",
        ),
        ("  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n", "Sidecar/checkout: spec.outboundTrafficPolicy"),
    ];
    for (extra, path) in cases {
        let e = refused(&format!("{SIDECAR}{extra}"), None);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].path, path);
        assert!(e[0].message.contains("is not implemented yet"));
    }
    let e = refused(
        &SIDECAR.replace(
            "    defaultEndpoint: 127.0.0.1:8080\n",
            "    defaultEndpoint: unix:///var/run/app.sock\n",
        ),
        None,
    );
    assert_eq!(e[0].path, "Sidecar/checkout: spec.ingress[0].defaultEndpoint");
    let e = refused(
        &SIDECAR.replace(
            "    defaultEndpoint: 127.0.0.1:8080\n",
            "    captureMode: IPTABLES\n    defaultEndpoint: 127.0.0.1:8080\n",
        ),
        None,
    );
    assert_eq!(e[0].path, "Sidecar/checkout: spec.ingress[0].captureMode");
    let e = refused(&SIDECAR.replace("protocol: HTTP, name: http", "protocol: MONGO, name: http"), None);
    assert!(e[0].message.contains("expected one of HTTP, HTTP2, GRPC, TCP"), "{}", e[0]);
    let e = refused(&SIDECAR.replace("    defaultEndpoint: 127.0.0.1:8080\n", ""), None);
    assert_eq!(e[0].path, "Sidecar/checkout: spec.ingress[0].defaultEndpoint");
}
