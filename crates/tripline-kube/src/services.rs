//! A Kubernetes Service and its EndpointSlices as the ServiceEntry Tripline's compiler reads,
//! which is how Istio sees them too: the host `<name>.<namespace>.svc.cluster.local`, the
//! Service's ports with a protocol, and one endpoint per ready address with the port each
//! slice gives for each Service port. Pure: the watchers hand in what they hold.
//!
//! - **Protocol**, as Istio selects it: the port's `appProtocol`, else its name's prefix
//!   (`http`, `http-web`, `grpc-api`, ...: `http`, `http2`, `grpc`, `grpc-web`, `https`,
//!   `tls`, `tcp`, `mongo`, `mysql`, `redis`), else HTTP (where Istio would sniff; Tripline
//!   does not, and HTTP is what a mesh mostly carries). UDP and SCTP ports are left out.
//! - **Endpoints**: every address of a slice endpoint whose `ready` condition is true or unset
//!   (Kubernetes' "assume ready"). A terminating endpoint is not ready: it gets no new
//!   requests, and the requests it has finish (a reload keeps in-flight requests). Both
//!   address families of a dual-stack Service are endpoints; `FQDN` slices are left out.
//! - **Zone**: the endpoint's `zone` (else the slice's first zone hint) is kept as the label
//!   `topology.kubernetes.io/zone`, for locality later.
//! - **Cluster IPs** are the entry's `addresses`: what a sidecar's intercepted connections
//!   to the Service are recognized by.
//! - **ExternalName** Services become a DNS-resolved entry for the external name.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The label of an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The host a Service is known by in the mesh.
pub fn host(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// A port's protocol as Istio names it (see the module docs).
pub fn protocol(port: &ServicePort) -> Option<&'static str> {
    if matches!(port.protocol.as_deref(), Some("UDP" | "SCTP")) {
        return None;
    }
    let of = |word: &str| -> Option<&'static str> {
        Some(match word.to_ascii_lowercase().as_str() {
            "http" | "grpc-web" => "HTTP",
            "http2" | "kubernetes.io/h2c" => "HTTP2",
            "grpc" => "GRPC",
            "https" => "HTTPS",
            "tls" => "TLS",
            "tcp" | "mongo" | "mysql" | "redis" | "kubernetes.io/ws" | "kubernetes.io/wss" => "TCP",
            _ => return None,
        })
    };
    let by_name = || {
        let name = port.name.as_deref()?;
        let prefix = name.split_once('-').map_or(name, |(p, _)| p);
        of(name).or_else(|| of(prefix))
    };
    Some(port.app_protocol.as_deref().and_then(of).or_else(by_name).unwrap_or("HTTP"))
}

/// The name a Service port goes by in the ServiceEntry: its own, or `port-<number>` for the
/// one unnamed port a Service may have.
fn port_name(port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("port-{}", port.port),
    }
}

/// The ServiceEntry (as a JSON document) for `svc` with the EndpointSlices naming it.
/// `None` for a Service without a name, namespace or usable port.
pub fn service_entry(svc: &Service, slices: &[&EndpointSlice]) -> Option<Value> {
    let name = svc.metadata.name.as_deref()?;
    let namespace = svc.metadata.namespace.as_deref()?;
    let spec = svc.spec.as_ref()?;
    let ports: Vec<(&ServicePort, &str, String)> =
        spec.ports.iter().flatten().filter_map(|p| Some((p, protocol(p)?, port_name(p)))).collect();
    if ports.is_empty() {
        return None;
    }
    let se_ports: Vec<Value> =
        ports.iter().map(|(p, proto, n)| json!({"number": p.port, "name": n, "protocol": proto})).collect();
    let mut entry = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "hosts": [host(name, namespace)],
            "location": "MESH_INTERNAL",
            "ports": se_ports,
        },
    });
    // The cluster IPs (both families' on a dual-stack Service): a sidecar's intercepted
    // connections to them are this Service's.
    let ips: Vec<&String> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .collect();
    let mut ips: Vec<&String> = ips.into_iter().fold(Vec::new(), |mut v, ip| {
        if !v.contains(&ip) {
            v.push(ip);
        }
        v
    });
    ips.sort();
    if !ips.is_empty() {
        entry["spec"]["addresses"] = json!(ips);
    }
    if spec.type_.as_deref() == Some("ExternalName") {
        let external = spec.external_name.as_deref()?;
        entry["spec"]["resolution"] = json!("DNS");
        entry["spec"]["endpoints"] = json!([{"address": external}]);
        return Some(entry);
    }
    entry["spec"]["resolution"] = json!("STATIC");
    entry["spec"]["endpoints"] = Value::Array(endpoints(&ports, slices));
    Some(entry)
}

fn endpoints(ports: &[(&ServicePort, &str, String)], slices: &[&EndpointSlice]) -> Vec<Value> {
    let mut out = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        // Each Service port's number on this slice's endpoints, by the Service port's name
        // (a slice's port name is the Service port's; unnamed for a one-port Service).
        let mut numbers = BTreeMap::new();
        for (sp, _, se_name) in ports {
            let wanted = sp.name.as_deref().unwrap_or("");
            let found = slice.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or("") == wanted);
            if let Some(n) = found.and_then(|p| p.port) {
                numbers.insert(se_name.clone(), n);
            }
        }
        if numbers.is_empty() {
            continue;
        }
        for e in &slice.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            let zone = e.zone.clone().or_else(|| {
                e.hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .and_then(|z| z.first())
                    .map(|z| z.name.clone())
            });
            for address in &e.addresses {
                let mut endpoint = json!({"address": address, "ports": numbers});
                if let Some(zone) = &zone {
                    endpoint["labels"] = json!({ ZONE_LABEL: zone });
                }
                out.push(endpoint);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn port(name: Option<&str>, number: i32, app: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(Into::into),
            port: number,
            app_protocol: app.map(Into::into),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn service(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("checkout".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec { ports: Some(ports), ..Default::default() }),
            status: None,
        }
    }

    fn endpoint(address: &str, ready: Option<bool>, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![address.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving: Some(true),
                terminating: Some(terminating),
            }),
            zone: Some("zone-a".into()),
            ..Default::default()
        }
    }

    fn slice(family: &str, ports: &[(Option<&str>, i32)], endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: family.into(),
            endpoints,
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: n.map(Into::into),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
            metadata: ObjectMeta::default(),
        }
    }

    #[test]
    fn protocols_come_from_app_protocol_then_the_port_name_then_http() {
        assert_eq!(protocol(&port(Some("grpc-api"), 9090, None)), Some("GRPC"));
        assert_eq!(protocol(&port(Some("web"), 80, Some("kubernetes.io/h2c"))), Some("HTTP2"));
        assert_eq!(protocol(&port(Some("tcp-db"), 5432, None)), Some("TCP"));
        assert_eq!(protocol(&port(Some("http2"), 8080, None)), Some("HTTP2"));
        assert_eq!(protocol(&port(None, 80, None)), Some("HTTP"), "unnamed: HTTP");
        let mut udp = port(Some("dns"), 53, None);
        udp.protocol = Some("UDP".into());
        assert_eq!(protocol(&udp), None);
    }

    #[test]
    fn ready_addresses_of_every_slice_are_endpoints_with_the_slice_s_target_port() {
        let svc = service(vec![port(Some("http"), 80, None), port(Some("grpc"), 9090, None)]);
        let v4 = slice(
            "IPv4",
            &[(Some("http"), 8080), (Some("grpc"), 9091)],
            vec![
                endpoint("10.0.0.1", Some(true), false),
                endpoint("10.0.0.2", None, false),
                endpoint("10.0.0.3", Some(false), true),
            ],
        );
        let v6 = slice("IPv6", &[(Some("http"), 8081)], vec![endpoint("fd00::1", Some(true), false)]);
        let fqdn = slice("FQDN", &[(Some("http"), 80)], vec![endpoint("example.com", Some(true), false)]);
        let mut svc = svc;
        let spec = svc.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.96.0.10".into());
        spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
        let se = service_entry(&svc, &[&v4, &v6, &fqdn]).unwrap();
        assert_eq!(se["spec"]["hosts"], json!(["checkout.shop.svc.cluster.local"]));
        assert_eq!(se["spec"]["addresses"], json!(["10.96.0.10", "fd00::10"]));
        assert_eq!(
            se["spec"]["ports"],
            json!([{"number": 80, "name": "http", "protocol": "HTTP"}, {"number": 9090, "name": "grpc", "protocol": "GRPC"}])
        );
        let endpoints = se["spec"]["endpoints"].as_array().unwrap();
        let addresses: Vec<&str> = endpoints.iter().map(|e| e["address"].as_str().unwrap()).collect();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.2", "fd00::1"], "the terminating one is left out");
        assert_eq!(endpoints[0]["ports"], json!({"http": 8080, "grpc": 9091}));
        assert_eq!(endpoints[2]["ports"], json!({"http": 8081}));
        assert_eq!(endpoints[0]["labels"], json!({"topology.kubernetes.io/zone": "zone-a"}));
    }

    #[test]
    fn a_one_port_service_s_unnamed_port_is_named_and_external_names_resolve_by_dns() {
        let svc = service(vec![port(None, 80, None)]);
        let s = slice("IPv4", &[(None, 8080)], vec![endpoint("10.0.0.1", Some(true), false)]);
        let se = service_entry(&svc, &[&s]).unwrap();
        assert_eq!(se["spec"]["ports"][0]["name"], "port-80");
        assert_eq!(se["spec"]["endpoints"][0]["ports"], json!({"port-80": 8080}));
        let mut external = service(vec![port(Some("https"), 443, None)]);
        let spec = external.spec.as_mut().unwrap();
        spec.type_ = Some("ExternalName".into());
        spec.external_name = Some("api.example.com".into());
        let se = service_entry(&external, &[]).unwrap();
        assert_eq!(se["spec"]["resolution"], "DNS");
        assert_eq!(se["spec"]["endpoints"], json!([{"address": "api.example.com"}]));
    }
}
