//! Hosts as Kubernetes names them: a short name in a resource is the service of the
//! resource's namespace (Istio's rule), the mesh listener answers every name Kubernetes' DNS
//! gives a service, and with `--kubernetes` every service is routable without a
//! VirtualService. `validate` without a cluster takes an undeclared short name for a
//! Kubernetes service, with a note.

use std::collections::BTreeSet;

use tripline_config::plan::{HostMatch, ListenerPlan};
use tripline_config::{load, LoadOptions, Loaded, Severity, Source};

/// What the Kubernetes source makes of Services `checkout` and `payments` in namespace `shop`.
const SERVICES: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: checkout, namespace: shop}
spec:
  hosts: [checkout.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, ports: {http: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec:
  hosts: [payments.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.2, ports: {http: 8080}}]
";

const RULES: &str = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: checkout, namespace: shop}
spec:
  hosts: [checkout]
  http:
  - route: [{destination: {host: checkout}}]
    timeout: 2s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: checkout, namespace: shop}
spec:
  host: checkout
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}
";

fn with(text: &str, opts: LoadOptions) -> Loaded {
    let src = vec![Source { name: "mesh.yaml".into(), text: text.into() }];
    load(&src, &opts)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))
}

fn domains(l: &ListenerPlan) -> BTreeSet<String> {
    let shown = |m: &HostMatch| match m {
        HostMatch::Exact(h) => h.clone(),
        HostMatch::Suffix(s) => format!("*{s}"),
        HostMatch::Any => "*".into(),
    };
    l.virtual_hosts.iter().flat_map(|v| v.domains.iter().map(shown)).collect()
}

#[test]
fn a_short_name_is_the_service_of_the_resource_s_namespace() {
    let loaded = with(&format!("{SERVICES}{RULES}"), LoadOptions::default());
    let plan = &loaded.plan;
    let id = plan
        .cluster_by_name("outbound|80||checkout.shop.svc.cluster.local")
        .expect("the full name's cluster");
    assert_eq!(plan.clusters[id].pool.max_connections, 7, "the DestinationRule written `host: checkout`");
    let mesh = &plan.listeners[0];
    let route = &mesh.virtual_hosts[0].routes[0];
    assert_eq!(route.destinations[0].cluster, id);
    // The names a client of the namespace may send as Host.
    let want = ["checkout", "checkout.shop", "checkout.shop.svc", "checkout.shop.svc.cluster.local"];
    assert_eq!(domains(mesh), want.iter().map(|s| s.to_string()).collect());
}

#[test]
fn with_kubernetes_every_service_is_routable_and_a_virtual_service_s_routes_win() {
    let opts =
        LoadOptions { kubernetes: true, workload_namespace: Some("shop".into()), ..LoadOptions::default() };
    // No VirtualService at all: the mesh listener exists and routes both services.
    let loaded = with(SERVICES, opts.clone());
    let mesh = &loaded.plan.listeners[0];
    assert_eq!(mesh.name, "mesh");
    assert!(domains(mesh).contains("payments") && domains(mesh).contains("checkout.shop.svc.cluster.local"));
    let route = &mesh
        .virtual_hosts
        .iter()
        .find(|v| v.domains == [HostMatch::Exact("payments".into())])
        .unwrap()
        .routes[0];
    assert_eq!(route.timeout, None, "Istio's default route");
    assert_eq!(route.retry.attempts, 2, "Istio's default retries");
    // A VirtualService for checkout: its route, not the default, for every one of its names.
    let loaded = with(&format!("{SERVICES}{RULES}"), opts);
    let mesh = &loaded.plan.listeners[0];
    for name in ["checkout", "checkout.shop.svc.cluster.local"] {
        let vh = mesh.virtual_hosts.iter().find(|v| v.domains == [HostMatch::Exact(name.into())]).unwrap();
        assert_eq!(vh.routes.len(), 1, "{name}");
        assert_eq!(vh.routes[0].timeout, Some(std::time::Duration::from_secs(2)), "{name}");
    }
    // Another namespace's service has no short name here.
    let other = SERVICES.replace("namespace: shop}", "namespace: billing}").replace(".shop.", ".billing.");
    let opts =
        LoadOptions { kubernetes: true, workload_namespace: Some("shop".into()), ..LoadOptions::default() };
    let mesh = &with(&other, opts).plan.listeners[0];
    assert!(!domains(mesh).contains("payments") && domains(mesh).contains("payments.billing"));
}

#[test]
fn validate_takes_an_undeclared_short_name_for_a_kubernetes_service_with_a_note() {
    let opts =
        LoadOptions { assume_kubernetes_services: true, listeners_required: false, ..LoadOptions::default() };
    let loaded = with(RULES, opts);
    let notes: Vec<String> =
        loaded.warnings.iter().filter(|d| d.severity == Severity::Note).map(|d| d.to_string()).collect();
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert!(
        notes[0]
            .contains("`checkout` is taken to be the Kubernetes service `checkout.shop.svc.cluster.local`"),
        "{notes:#?}"
    );
    assert!(loaded.warnings.iter().all(|d| d.severity == Severity::Note), "{:#?}", loaded.warnings);
    // Without the assumption (`run` from files), the same name is an unknown host.
    let src = vec![Source { name: "mesh.yaml".into(), text: RULES.into() }];
    let e = load(&src, &LoadOptions::default()).unwrap_err();
    assert!(e.iter().any(|d| d.severity == Severity::Error && d.message.contains("unknown host `checkout`")));
}

#[test]
fn export_to_hides_a_resource_from_other_namespaces_and_destination_rules_follow_istio_s_lookup_order() {
    let rule = |ns: &str, max: u32, export: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r-{ns}, namespace: {ns}}}\nspec:\n  host: checkout.shop.svc.cluster.local\n  exportTo: [{export}]\n  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {max}}}}}}}\n")
    };
    let vs = RULES.split("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule").next().unwrap();
    let max = |text: &str, workload: &str| {
        let opts = LoadOptions { workload_namespace: Some(workload.into()), ..LoadOptions::default() };
        let loaded = with(text, opts);
        let id = loaded.plan.cluster_by_name("outbound|80||checkout.shop.svc.cluster.local").unwrap();
        loaded.plan.clusters[id].pool.max_connections
    };
    let all = format!(
        "{SERVICES}{vs}{}{}{}",
        rule("istio-system", 1, "\"*\""),
        rule("shop", 2, "\"*\""),
        rule("web", 3, "\".\"")
    );
    // The client's own namespace first, then the service's, then the root namespace.
    assert_eq!(max(&all, "web"), 3);
    assert_eq!(max(&all, "shop"), 2);
    let no_service_ns =
        format!("{SERVICES}{vs}{}{}", rule("istio-system", 1, "\"*\""), rule("web", 3, "\".\""));
    assert_eq!(
        max(&no_service_ns, "shop"),
        1,
        "web's rule is exported to web only; the root namespace's applies"
    );
    // A VirtualService exported elsewhere only does not route here: the timeout is gone.
    let hidden = format!(
        "{SERVICES}{}",
        vs.replace("  hosts: [checkout]", "  exportTo: [billing]\n  hosts: [checkout]")
    );
    let opts =
        LoadOptions { workload_namespace: Some("shop".into()), kubernetes: true, ..LoadOptions::default() };
    let loaded = with(&hidden, opts);
    let mesh = &loaded.plan.listeners[0];
    let vh = mesh.virtual_hosts.iter().find(|v| v.domains == [HostMatch::Exact("checkout".into())]).unwrap();
    assert_eq!(vh.routes[0].timeout, None, "the default route, not the hidden VirtualService's");
    assert!(loaded
        .warnings
        .iter()
        .any(|d| d.severity == Severity::Note
            && d.message.contains("not exported to this workload's namespace")));
}

#[test]
fn a_sidecar_s_egress_hosts_narrow_what_its_outbound_side_sees() {
    let billing = SERVICES
        .replace("namespace: shop}", "namespace: billing}")
        .replace(".shop.", ".billing.")
        .replace("name: checkout", "name: ledger")
        .replace("checkout.billing", "ledger.billing")
        .replace("name: payments", "name: invoices")
        .replace("payments.billing", "invoices.billing");
    let sidecar = |hosts: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: shop}}\nspec:\n  egress:\n  - hosts: [{hosts}]\n")
    };
    let opts =
        LoadOptions { kubernetes: true, workload_namespace: Some("shop".into()), ..LoadOptions::default() };
    let seen = |text: String| {
        let loaded = with(&text, opts.clone());
        let mut hosts: Vec<String> = loaded.plan.clusters.iter().map(|c| c.host.clone()).collect();
        hosts.sort();
        hosts
    };
    // Everything without a Sidecar; this namespace's only with `./*`; one more by name.
    assert_eq!(seen(format!("{SERVICES}---\n{billing}")).len(), 4);
    assert_eq!(
        seen(format!("{SERVICES}---\n{billing}{}", sidecar("\"./*\""))),
        ["checkout.shop.svc.cluster.local", "payments.shop.svc.cluster.local"]
    );
    assert_eq!(
        seen(format!(
            "{SERVICES}---\n{billing}{}",
            sidecar("\"./checkout.shop.svc.cluster.local\", \"billing/*\"")
        )),
        [
            "checkout.shop.svc.cluster.local",
            "invoices.billing.svc.cluster.local",
            "ledger.billing.svc.cluster.local"
        ]
    );
    // A VirtualService of a host the sidecar does not see is not applied (no error).
    let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ledger, namespace: billing}\nspec:\n  hosts: [ledger]\n  http:\n  - route: [{destination: {host: ledger}}]\n    timeout: 2s\n";
    assert_eq!(seen(format!("{SERVICES}---\n{billing}{vs}{}", sidecar("\"./*\""))).len(), 2);
}

/// `resolution: NONE` (Istio's default, also when `resolution` is left out): connections to
/// the entry's addresses are passed through to where they were going, TCP and HTTP ports
/// alike; routing to it, a DestinationRule for it, or endpoints on it are errors that say so.
#[test]
fn resolution_none_is_a_passthrough_of_the_entry_s_addresses() {
    let none = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.example.com]
  addresses: [192.0.2.10]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 5432, name: pg, protocol: TCP}]
";
    let src = |text: String| vec![Source { name: "mesh.yaml".into(), text }];
    let opts = LoadOptions { kubernetes: true, ..LoadOptions::default() };
    let l = load(&src(format!("{SERVICES}---\n{none}")), &opts).unwrap();
    let mesh = l.plan.listeners.iter().find(|l| l.name == "mesh").unwrap();
    let passed: Vec<u16> =
        mesh.intercepted.as_ref().unwrap().iter().filter(|a| a.passthrough).map(|a| a.port).collect();
    assert_eq!(passed, [80, 5432]);
    assert!(l.plan.clusters.iter().all(|c| c.host != "legacy.example.com"), "no cluster for it");

    let errors = |extra: &str| -> Vec<String> {
        let d = load(&src(format!("{SERVICES}---\n{none}---\n{extra}")), &opts).expect_err("refused");
        d.into_iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()).collect()
    };
    let routed = errors("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [legacy.example.com]\n  http: [{route: [{destination: {host: legacy.example.com, port: {number: 80}}}]}]\n");
    assert_eq!(routed.len(), 1, "{routed:#?}");
    assert!(
        routed[0].contains("`legacy.example.com` has resolution NONE")
            && routed[0].contains("a route cannot send to it"),
        "{}",
        routed[0]
    );
    let ruled = errors("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: legacy.example.com\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}\n");
    assert_eq!(ruled.len(), 1, "{ruled:#?}");
    assert!(
        ruled[0].contains("DestinationRule/d: spec.host") && ruled[0].contains("would not apply"),
        "{}",
        ruled[0]
    );
    let with_endpoints =
        load(&src(format!("{none}  endpoints: [{{address: 10.0.0.9}}]\n")), &LoadOptions::default())
            .unwrap_err();
    assert!(
        with_endpoints.iter().any(|d| d.message.contains("endpoints would never be used")),
        "{with_endpoints:#?}"
    );
}
