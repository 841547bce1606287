//! `ISTIO_MUTUAL` with the workload's own identity (`--identity-dir`): a Gateway server that
//! asks callers for a mesh certificate, a DestinationRule that presents the workload's SVID
//! and expects a peer of its trust domain (or the names it lists), and where each mistake is
//! pointed at.

use std::path::Path;

use tripline_config::plan::DownstreamTlsMode;
use tripline_config::{load, LoadOptions, Loaded, Severity, Source};

#[path = "common/svid.rs"]
mod svid;
use svid::Svid;

const MESH: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  servers:
  - port: {number: 18443, name: mtls, protocol: HTTPS}
    hosts: [\"*\"]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.shop]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [\"*\"]
  gateways: [edge]
  http:
  - route: [{destination: {host: backend.shop}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend.shop
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      tls: {mode: ISTIO_MUTUAL, subjectAltNames: [\"spiffe://cluster.local/ns/shop/sa/backend-v2\"]}
";

fn src(text: &str) -> Vec<Source> {
    vec![Source { name: "mesh.yaml".into(), text: text.into() }]
}

fn with_identity(text: &str, dir: &Path) -> Loaded {
    let opts = LoadOptions { identity_dir: Some(dir.to_path_buf()), ..LoadOptions::default() };
    load(&src(text), &opts)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))
}

#[test]
fn istio_mutual_uses_the_workload_svid_on_both_sides() {
    let svid = Svid::new("both", "spiffe://cluster.local/ns/shop/sa/gateway");
    let text = MESH.replace(
        "  - route: [{destination: {host: backend.shop}}]",
        "  - route: [{destination: {host: backend.shop}, weight: 50}, {destination: {host: backend.shop, subset: v2}, weight: 50}]",
    );
    let loaded = with_identity(&text, &svid.0);
    let server = &loaded.plan.listeners[0].tls[0];
    assert_eq!(server.mode, DownstreamTlsMode::Mutual, "callers must present a mesh certificate");
    assert_eq!(server.certificate, svid.0.join("svid.pem"));
    assert_eq!(server.private_key, svid.0.join("svid_key.pem"));
    assert_eq!(server.ca_certificates.as_deref(), Some(svid.0.join("svid_bundle.pem").as_path()));

    let cluster = |subset: Option<&str>| {
        let c = loaded.plan.clusters.iter().find(|c| c.subset.as_deref() == subset).unwrap();
        c.tls.clone().expect("TLS to the endpoints")
    };
    let top = cluster(None);
    assert!(top.mutual);
    assert_eq!(top.client_certificate.as_deref(), Some(svid.0.join("svid.pem").as_path()));
    assert_eq!(top.ca_certificates.as_deref(), Some(svid.0.join("svid_bundle.pem").as_path()));
    assert_eq!(top.trust_domain.as_deref(), Some("cluster.local"), "any workload of the mesh's trust domain");
    let v2 = cluster(Some("v2"));
    assert_eq!(v2.subject_alt_names, ["spiffe://cluster.local/ns/shop/sa/backend-v2"]);
    assert_eq!(v2.trust_domain, None, "the names listed, not the whole trust domain");
}

#[test]
fn istio_mutual_without_an_identity_is_an_error_at_each_mode() {
    let e = tripline_config::load(&src(MESH), &LoadOptions::default()).unwrap_err();
    let needs: Vec<&str> = e
        .iter()
        .filter(|d| d.message.contains("start Tripline with --identity-dir DIR"))
        .map(|d| d.path.as_str())
        .collect();
    // The v2 subset has no cluster (no route sends to it), so nothing of it is compiled.
    assert_eq!(
        needs,
        ["Gateway/edge: spec.servers[0].tls.mode", "DestinationRule/backend: spec.trafficPolicy.tls.mode"],
        "{e:#?}"
    );

    let empty = std::env::temp_dir().join(format!("tripline-svid-none-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let opts = LoadOptions { identity_dir: Some(empty.clone()), ..LoadOptions::default() };
    let e = tripline_config::load(&src(MESH), &opts).unwrap_err();
    assert!(e[0].message.contains("no workload certificate there"), "{e:#?}");
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn certificate_files_with_istio_mutual_are_refused() {
    let text = MESH.replace("tls: {mode: ISTIO_MUTUAL}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry", "tls: {mode: ISTIO_MUTUAL, serverCertificate: a.pem}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry");
    let svid = Svid::new("files", "spiffe://cluster.local/ns/shop/sa/gateway");
    let opts = LoadOptions { identity_dir: Some(svid.0.clone()), ..LoadOptions::default() };
    let e: Vec<_> = tripline_config::load(&src(&text), &opts)
        .unwrap_err()
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(e.len(), 1, "{e:#?}");
    let e = e[0].to_string();
    assert!(
        e.contains("spec.servers[0].tls.serverCertificate")
            && e.contains(
                "cannot be given with mode ISTIO_MUTUAL, which uses the workload's own certificate"
            ),
        "{e}"
    );
}

#[test]
fn each_agent_s_layout_is_found_and_the_trust_domain_read() {
    let layouts = [
        ("svid.pem", "svid_key.pem", "svid_bundle.pem"),
        ("tls.crt", "tls.key", "ca.crt"),
        ("cert-chain.pem", "key.pem", "root-cert.pem"),
    ];
    for (i, layout) in layouts.into_iter().enumerate() {
        let svid = Svid::written(&format!("layout{i}"), Some("spiffe://example.org/ns/shop/sa/web"), layout);
        let id = tripline_config::identity::find(&svid.0).unwrap();
        assert_eq!((id.certificate, id.bundle), (svid.0.join(layout.0), svid.0.join(layout.2)));
        assert_eq!(
            (id.spiffe_id.as_str(), id.trust_domain.as_str()),
            ("spiffe://example.org/ns/shop/sa/web", "example.org")
        );
    }
    let plain = Svid::written("no-uri", None, layouts[0]);
    let e = tripline_config::identity::find(&plain.0).unwrap_err();
    assert!(e.contains("carries no SPIFFE ID"), "{e}");
    let empty = Svid::written("elsewhere", None, ("a.pem", "b.pem", "c.pem"));
    let e = tripline_config::identity::find(&empty.0).unwrap_err();
    assert!(
        e.contains("no workload certificate there") && e.contains("svid.pem, svid_key.pem, svid_bundle.pem"),
        "{e}"
    );
}
