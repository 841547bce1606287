//! A match's `port`, `gateways`, `sourceLabels` and `sourceNamespace`: conditions on where a
//! route runs, resolved when the route is attached to each listener.

#[allow(dead_code)] // this file loads with its own options
mod common;

use std::collections::BTreeMap;

use common::src;
use tripline_config::{load, LoadOptions, Loaded};

const CONFIG: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge-a}
spec:
  servers: [{port: {number: 18201, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge-b}
spec:
  servers: [{port: {number: 18202, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["*"]
  gateways: [edge-a, edge-b, mesh]
  http:
  - name: only-a
    match: [{gateways: [edge-a], uri: {prefix: /a}}]
    route: [{destination: {host: backend.local}}]
  - name: port-b
    match: [{port: 18202}]
    route: [{destination: {host: backend.local}}]
  - name: web-clients
    match: [{sourceLabels: {app: web}, sourceNamespace: shop}, {uri: {prefix: /any}}]
    route: [{destination: {host: backend.local}}]
  - name: mesh-8080
    match: [{gateways: [mesh], port: 8080}]
    route: [{destination: {host: backend.local}}]
"#;

fn routes(loaded: &Loaded, listener: &str) -> Vec<(String, usize)> {
    let l = loaded.plan.listeners.iter().find(|l| l.name.starts_with(listener)).unwrap();
    l.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| (r.name.trim_start_matches("vs/").to_string(), r.matches.len()))
        .collect()
}

fn with(labels: &[(&str, &str)], namespace: Option<&str>) -> Loaded {
    let opts = LoadOptions {
        workload_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        workload_namespace: namespace.map(Into::into),
        ..LoadOptions::default()
    };
    load(&src(CONFIG), &opts).unwrap()
}

#[test]
fn each_listener_gets_the_match_entries_that_hold_there() {
    let loaded = with(&[("app", "web"), ("version", "v2")], Some("shop"));
    let own = |v: &[(&str, usize)]| v.iter().map(|(n, k)| (n.to_string(), *k)).collect::<Vec<_>>();
    assert_eq!(routes(&loaded, "edge-a"), own(&[("only-a", 1), ("web-clients", 2)]));
    assert_eq!(routes(&loaded, "edge-b"), own(&[("port-b", 1), ("web-clients", 2)]));
    assert_eq!(routes(&loaded, "mesh"), own(&[("port-b", 1), ("web-clients", 2), ("mesh-8080", 1)]));
    let mesh = loaded.plan.listeners.iter().find(|l| l.name == "mesh").unwrap();
    let port_b = &mesh.virtual_hosts[0].routes[0].matches[0];
    assert_eq!(port_b.port, Some(18202), "on the mesh listener the port is checked per request");
    let edge_b = loaded.plan.listeners.iter().find(|l| l.name.starts_with("edge-b")).unwrap();
    assert_eq!(edge_b.virtual_hosts[0].routes[0].matches[0].port, None, "checked when attached");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn a_source_the_workload_is_not_drops_the_entry_and_unknown_labels_are_a_warning() {
    let other = with(&[("app", "batch")], Some("shop"));
    assert_eq!(routes(&other, "edge-a")[1], ("web-clients".to_string(), 1), "only the /any entry is left");
    let unknown = with(&[], None);
    let w: Vec<String> = unknown.warnings.iter().map(|d| d.to_string()).collect();
    assert!(
        w.iter().any(|w| w.contains("spec.http[2].match[0].sourceLabels: this match entry never applies: the workload's labels are not known (give them with --workload-labels)")),
        "{w:#?}"
    );
}
