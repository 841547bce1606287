//! Builders for the Istio YAML the tests feed to `tripline run` (and the proxy's in-process
//! tests to `tripline_config::load`: `crates/tripline-proxy/tests/support` shares this file).

use std::net::SocketAddr;

fn quoted(items: &[&str]) -> String {
    let v: Vec<String> = items.iter().map(|h| format!("\"{h}\"")).collect();
    format!("[{}]", v.join(", "))
}

fn port_name(protocol: &str) -> String {
    protocol.to_ascii_lowercase()
}

/// A Gateway with one server bound to 127.0.0.1:`port`.
pub fn gateway(name: &str, port: u16, protocol: &str) -> String {
    let pname = port_name(protocol);
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec:
  servers:
  - port: {{number: {port}, name: {pname}, protocol: {protocol}}}
    bind: 127.0.0.1
    hosts: [\"*\"]
"
    )
}

/// A STATIC ServiceEntry for `host`, service port 80, one endpoint per address.
pub fn service_entry(host: &str, protocol: &str, endpoints: &[SocketAddr]) -> String {
    let pname = port_name(protocol);
    let name = host.replace('.', "-");
    let mut s = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: {pname}, protocol: {protocol}}}]
  resolution: STATIC
  endpoints:
"
    );
    for ep in endpoints {
        s.push_str(&format!("  - address: {}\n    ports: {{{pname}: {}}}\n", ep.ip(), ep.port()));
    }
    s
}

/// A VirtualService bound to `gateway`; `routes` is the YAML under `spec:` after hosts and
/// gateways (e.g. from [`http_route`]), indented by two spaces.
pub fn virtual_service(name: &str, hosts: &[&str], gateway: &str, routes: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: {}
  gateways: [{gateway}]
{routes}",
        quoted(hosts)
    )
}

/// `http:` with one catch-all route to `host` port 80.
pub fn http_route(host: &str) -> String {
    format!("  http:\n  - route:\n    - destination: {{host: {host}, port: {{number: 80}}}}\n")
}

/// `tcp:` with one route to `host` port 80.
pub fn tcp_route(host: &str) -> String {
    format!("  tcp:\n  - route:\n    - destination: {{host: {host}, port: {{number: 80}}}}\n")
}

/// A DestinationRule; `traffic_policy` is YAML indented by four spaces.
pub fn destination_rule(host: &str, traffic_policy: &str) -> String {
    let name = host.replace('.', "-");
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}}}
spec:
  host: {host}
  trafficPolicy:
{traffic_policy}"
    )
}

pub fn join(docs: &[String]) -> String {
    docs.join("---\n")
}

/// Listener `listener` (HTTP) → every request to `backend.local` with the given upstream
/// protocol and endpoints, with an optional DestinationRule traffic policy.
pub fn simple(
    listener: u16,
    upstream_protocol: &str,
    endpoints: &[SocketAddr],
    traffic_policy: Option<&str>,
) -> String {
    let mut docs = vec![
        service_entry("backend.local", upstream_protocol, endpoints),
        edge(listener, &http_route("backend.local")),
    ];
    if let Some(tp) = traffic_policy {
        docs.push(destination_rule("backend.local", tp));
    }
    join(&docs)
}

/// Listener `listener` (HTTP, Gateway `edge`) with one VirtualService for every host; `routes`
/// as for [`virtual_service`].
pub fn edge(listener: u16, routes: &str) -> String {
    join(&[gateway("edge", listener, "HTTP"), virtual_service("backend", &["*"], "edge", routes)])
}

/// Listener `port` (HTTP, Gateway `edge`) → `backend.local` over `protocol` at `endpoints`.
/// `route` is appended to the route entry (e.g. `    retries: {...}\n`), `dr` is the
/// DestinationRule traffic policy (indented four spaces), `policy` the body of a
/// ResiliencePolicy spec after its target (indented two spaces).
pub fn mesh(
    port: u16,
    protocol: &str,
    endpoints: &[SocketAddr],
    route: &str,
    dr: Option<&str>,
    policy: Option<&str>,
) -> String {
    let routes = format!("{}{route}", http_route("backend.local"));
    let mut docs = vec![
        gateway("edge", port, "HTTP"),
        service_entry("backend.local", protocol, endpoints),
        virtual_service("backend", &["*"], "edge", &routes),
    ];
    if let Some(tp) = dr {
        docs.push(destination_rule("backend.local", tp));
    }
    if let Some(p) = policy {
        docs.push(format!(
            "apiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: backend}}\nspec:\n  target: {{host: backend.local}}\n{p}"
        ));
    }
    join(&docs)
}
