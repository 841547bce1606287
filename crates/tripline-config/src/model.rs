//! The Istio networking resources Tripline reads, decoded from the positioned tree with
//! validation of every scalar (durations, ranges, enums, regexes). Semantic checks across
//! resources (references, weights, ports) are in [`crate::compile`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::decode::{join, Cx, Fields, Schema};
use crate::gaps;
use crate::plan::{HashKey, LoadBalancer, NewCookie, RequestMatch, RetryOn, StringMatch};
use crate::route_features::{self, HeaderPlan, RouteFeatures};
use crate::yaml::{Kind, Node, Pos};

/// A value with where it was written, for diagnostics found after decoding.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct At<T> {
    pub value: T,
    #[serde(skip)]
    pub pos: Pos,
    /// Boxed: exactly its length, and 16 bytes instead of 24 in every value a reload keeps.
    #[serde(skip)]
    pub path: Box<str>,
}

impl<T> At<T> {
    pub(crate) fn new(value: T, node: &Node, path: &str) -> At<T> {
        At { value, pos: node.pos, path: path.into() }
    }
}

/// Equal when the values are: where a value was written does not change what it means.
impl<T: PartialEq> PartialEq for At<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

/// The API versions of `networking.istio.io` Tripline reads.
pub const API_VERSIONS: &[&str] =
    &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];
pub const KINDS: &[&str] = &["Gateway", "ServiceEntry", "VirtualService", "DestinationRule", "Sidecar"];
/// The API versions and kinds of Tripline's own resources (see [`crate::policy`]).
pub const TRIPLINE_API_VERSIONS: &[&str] = &["tripline.dev/v1alpha1"];
pub const TRIPLINE_KINDS: &[&str] = &["ResiliencePolicy"];
/// The API versions of Istio's `AuthorizationPolicy` (see [`crate::authz`]) and
/// `PeerAuthentication` (see [`crate::peer_authn`]).
pub const SECURITY_API_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];

#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    pub kind: String,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `file:line` of the document.
    pub source: String,
    #[serde(skip)]
    pub file: String,
    #[serde(skip)]
    pub pos: Pos,
    /// The line `pos` was on when the document was decoded, which the positions inside `spec`
    /// are relative to: a document kept from an earlier load (`documents::DocumentCache`) may
    /// have moved since, and [`Resource::shifted`] moves those positions with it.
    #[serde(skip)]
    pub decoded_at_line: usize,
    pub spec: Spec,
}

impl Resource {
    /// `VirtualService/backend`
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// A position read from this resource's document, where it is now. Line 0 (no position)
    /// stays.
    pub fn shifted(&self, pos: Pos) -> Pos {
        if pos.line == 0 {
            return pos;
        }
        Pos { line: pos.line + self.pos.line - self.decoded_at_line, ..pos }
    }

    /// Where the resource began when its document was decoded: what [`Resource::shifted`]
    /// takes to point at the resource itself.
    pub fn decoded_pos(&self) -> Pos {
        Pos { line: self.decoded_at_line, ..self.pos }
    }

    /// Puts the resource where its document now starts in its file: `start_line` against
    /// `was`, where it started when last placed.
    pub(crate) fn move_by(&mut self, was: usize, start_line: usize) {
        self.pos.line = self.pos.line - was + start_line;
        self.source = format!("{}:{}", self.file, self.pos.line);
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Spec {
    Gateway(Gateway),
    ServiceEntry(ServiceEntry),
    VirtualService(VirtualService),
    DestinationRule(Box<DestinationRule>),
    ResiliencePolicy(Box<crate::policy::ResiliencePolicy>),
    AuthorizationPolicy(Box<crate::authz::AuthorizationPolicy>),
    PeerAuthentication(crate::peer_authn::PeerAuthentication),
    Sidecar(crate::sidecar::Sidecar),
    ServiceProfile(Box<crate::service_profile::ServiceProfile>),
}

// ---------------------------------------------------------------------------------------------
// Gateway

#[derive(Debug, Clone, Serialize)]
pub struct Gateway {
    pub servers: Vec<Server>,
    /// Istio's `gatewayTopology.numTrustedProxies`, from the `proxy.istio.io/config`
    /// annotation (see [`gateway_topology`]): how many proxies in front of this gateway are
    /// trusted. 0 (the default): the gateway is the edge, and what clients say about the
    /// request's scheme and id is not believed.
    #[serde(rename = "numTrustedProxies", skip_serializing_if = "is_zero")]
    pub trusted_proxies: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The annotation Istio reads a gateway's proxy settings from (on its pod; on the Gateway
/// here, which is what stands for the gateway in Tripline's config).
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";

/// `gatewayTopology.numTrustedProxies` of a `proxy.istio.io/config` annotation (`node` holds
/// its YAML or JSON text). Its other `gatewayTopology` fields change what upstreams are told
/// (client certificate details, proxy protocol), so they are refused until implemented; the
/// annotation's other settings are about the proxy process, not its requests, and are
/// ignored with a warning.
pub fn gateway_topology(cx: &mut Cx, node: &Node, path: &str) -> u32 {
    let Some(text) = cx.string(node, path) else { return 0 };
    let root = match crate::yaml::parse(&text) {
        Ok(docs) => docs.into_iter().next().map(|d| d.root),
        Err(e) => {
            cx.error(
                node,
                path,
                format!("`{PROXY_CONFIG_ANNOTATION}` is not valid YAML or JSON: {}", e.message),
            );
            return 0;
        }
    };
    let Some(Kind::Map(entries)) = root.as_ref().map(|r| &r.kind) else { return 0 };
    let mut trusted = 0;
    for (k, v) in entries {
        let key = k.as_scalar().unwrap_or("");
        if key != "gatewayTopology" {
            cx.warn(node, path, format!("`{key}` in `{PROXY_CONFIG_ANNOTATION}` is ignored: it sets up the proxy process, and Tripline reads only `gatewayTopology.numTrustedProxies` there"));
            continue;
        }
        let Kind::Map(topology) = &v.kind else {
            cx.error(
                node,
                path,
                "`gatewayTopology` must be a mapping, e.g. {numTrustedProxies: 1}".to_string(),
            );
            continue;
        };
        for (tk, tv) in topology {
            match tk.as_scalar().unwrap_or("") {
                "numTrustedProxies" => match tv.as_scalar().and_then(|s| s.parse::<u32>().ok()) {
                    Some(n) => trusted = n,
                    None => cx.error(node, path, "`gatewayTopology.numTrustedProxies` must be a whole number".to_string()),
                },
                other => cx.error(node, path, format!("`gatewayTopology.{other}` in `{PROXY_CONFIG_ANNOTATION}` is not implemented yet; remove it (Tripline reads only numTrustedProxies)")),
            }
        }
    }
    trusted
}

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub port: At<u16>,
    #[serde(rename = "portName")]
    pub port_name: String,
    pub protocol: String,
    pub hosts: Vec<At<String>>,
    pub bind: IpAddr,
    /// `tls`: termination on an `HTTPS` or `TLS` port, `httpsRedirect` on a plaintext one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::ServerTls>,
}

const GATEWAY: Schema = Schema::new("Istio's Gateway", &["servers", "selector"]);
const SERVER: Schema =
    Schema::new("Istio's Server", &["port", "hosts", "bind", "name", "tls"]).refusing(gaps::SERVER);
/// The protocols of a Gateway server port.
const SERVER_PROTOCOLS: &str = "HTTP, HTTPS, HTTP2, GRPC, TCP, TLS";
const PORT: Schema =
    Schema::new("Istio's Port", &["number", "name", "protocol"]).ignoring(gaps::GATEWAY_PORT);

pub fn gateway(cx: &mut Cx, spec: &Node) -> Option<Gateway> {
    let f = cx.fields(spec, "spec", &GATEWAY)?;
    let mut servers = Vec::new();
    let Some((list, path)) = f.value("servers") else {
        cx.required(&f, "servers", "a list of servers with a port and hosts");
        return None;
    };
    for (node, path) in cx.list(list, &path, "servers") {
        let Some(s) = cx.fields(node, &path, &SERVER) else { continue };
        let Some((port_node, port_path)) = s.value("port") else {
            cx.required(&s, "port", "{number, name, protocol}");
            continue;
        };
        let Some(p) = cx.fields(port_node, &port_path, &PORT) else { continue };
        let number = match p.value("number") {
            Some((n, np)) => cx.port(n, &np).map(|v| At::new(v, n, &np)),
            None => {
                cx.required(&p, "number", "a port number");
                None
            }
        };
        let name = p.value("name").and_then(|(n, np)| cx.name(n, &np));
        let protocol = match p.value("protocol") {
            Some((n, np)) => {
                let proto = cx.string(n, &np).map(|s| s.to_ascii_uppercase());
                match proto.as_deref() {
                    Some("HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "TCP" | "TLS") => proto,
                    Some(_) => {
                        cx.error(
                            n,
                            &np,
                            format!("expected one of {SERVER_PROTOCOLS}, found {}", n.describe()),
                        );
                        None
                    }
                    None => None,
                }
            }
            None => {
                cx.required(&p, "protocol", &format!("one of {SERVER_PROTOCOLS}"));
                None
            }
        };
        // Istio requires `tls` on HTTPS and TLS ports; elsewhere it may only redirect.
        let tls = match (s.value("tls"), protocol.as_deref()) {
            (Some((n, tp)), proto) => crate::tls::server(cx, n, &tp, proto).map(Some),
            (None, Some(proto @ ("HTTPS" | "TLS"))) => {
                let what = format!("the certificate this {proto} port terminates TLS with: {{mode: SIMPLE, credentialName: NAME}}, or {{mode: SIMPLE, serverCertificate: PATH, privateKey: PATH}}; or {{mode: PASSTHROUGH}} to route the connections by their SNI without terminating TLS");
                cx.required(&s, "tls", &what);
                None
            }
            (None, _) => Some(None),
        };
        let hosts = match s.value("hosts") {
            Some((n, hp)) => {
                let hosts: Vec<At<String>> = cx
                    .strings(n, &hp)
                    .into_iter()
                    .map(|(h, pos, path)| At { value: h, pos, path: path.into() })
                    .collect();
                if hosts.is_empty() && matches!(n.kind, crate::yaml::Kind::Seq(_)) {
                    cx.error(n, &hp, "expected at least one host (`*` for any)");
                }
                hosts
            }
            None => {
                cx.required(&s, "hosts", "a list of hosts (`*` for any)");
                Vec::new()
            }
        };
        let bind = match s.value("bind") {
            Some((n, bp)) => match cx.string(n, &bp).map(|b| b.parse::<IpAddr>()) {
                Some(Ok(ip)) => Some(ip),
                Some(Err(_)) => {
                    cx.error(
                        n,
                        &bp,
                        format!("expected an IP address like 0.0.0.0 or 127.0.0.1, found {}", n.describe()),
                    );
                    None
                }
                None => None,
            },
            None => Some(IpAddr::from([0, 0, 0, 0])),
        };
        if let (Some(port), Some(protocol), Some(bind), Some(tls)) = (number, protocol, bind, tls) {
            if !hosts.is_empty() {
                let port_name =
                    name.unwrap_or_else(|| format!("{}-{}", protocol.to_ascii_lowercase(), port.value));
                servers.push(Server { port, port_name, protocol, hosts, bind, tls });
            }
        }
    }
    Some(Gateway { servers, trusted_proxies: 0 })
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry

#[derive(Debug, Clone, Serialize)]
pub struct ServiceEntry {
    /// `addresses`: the virtual IPs (a Kubernetes Service's cluster IP) or blocks its clients
    /// connect to; the sidecar's intercepted connections to them are the service's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<crate::plan::Cidr>,
    /// `exportTo`: the namespaces it is visible in (`None`: all).
    #[serde(rename = "exportTo", skip_serializing_if = "Option::is_none")]
    pub export_to: Option<At<Vec<String>>>,
    pub hosts: Vec<At<String>>,
    pub ports: Vec<SePort>,
    pub resolution: String,
    pub endpoints: Vec<Endpoint>,
    /// `subjectAltNames`: what the endpoints' certificates must name when a DestinationRule
    /// originates TLS to them and gives no `subjectAltNames` of its own.
    #[serde(rename = "subjectAltNames", skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SePort {
    pub number: u16,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(rename = "targetPort", skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub address: At<String>,
    pub ports: NameMap<u16>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
}

/// A small map by name, sorted, in one allocation of exactly its entries: an endpoint's
/// `ports` (usually one). A `BTreeMap` allocates a node for eleven entries, about 300 bytes,
/// for the first one, per endpoint; a reload keeps the decoded endpoints between loads
/// (`DocumentCache`). Shown as a map, as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NameMap<T>(Box<[(String, T)]>);

impl<T> NameMap<T> {
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)).ok().map(|i| &self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<T> From<BTreeMap<String, T>> for NameMap<T> {
    fn from(map: BTreeMap<String, T>) -> Self {
        NameMap(map.into_iter().collect())
    }
}

impl<T: Serialize> Serialize for NameMap<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

const SERVICE_ENTRY: Schema = Schema::new(
    "Istio's ServiceEntry",
    &["hosts", "addresses", "ports", "resolution", "endpoints", "location", "exportTo", "subjectAltNames"],
)
.refusing(gaps::SERVICE_ENTRY);
const SE_PORT: Schema = Schema::new("Istio's ServicePort", &["number", "name", "protocol", "targetPort"]);
const WORKLOAD_ENTRY: Schema =
    Schema::new("Istio's WorkloadEntry", &["address", "ports", "labels", "weight"])
        .refusing(gaps::WORKLOAD_ENTRY);
pub const SE_PROTOCOLS: &[&str] =
    &["HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS", "MONGO", "MYSQL", "REDIS"];

pub fn service_entry(cx: &mut Cx, spec: &Node) -> Option<ServiceEntry> {
    let f = cx.fields(spec, "spec", &SERVICE_ENTRY)?;
    let export_to = export_to(cx, &f);
    let hosts: Vec<At<String>> = match f.value("hosts") {
        Some((n, p)) => cx
            .strings(n, &p)
            .into_iter()
            .map(|(h, pos, path)| At { value: h, pos, path: path.into() })
            .collect(),
        None => Vec::new(),
    };
    if hosts.is_empty() {
        cx.required(&f, "hosts", "at least one host name");
    }
    let mut addresses = Vec::new();
    if let Some((n, p)) = f.value("addresses") {
        for (text, pos, ap) in cx.strings(n, &p) {
            match crate::plan::Cidr::parse(&text) {
                Ok(c) => addresses.push(c),
                Err(why) => cx.report(crate::Severity::Error, pos, &ap, why),
            }
        }
    }
    let mut ports = Vec::new();
    if let Some((n, p)) = f.value("ports") {
        for (pn, pp) in cx.list(n, &p, "ports") {
            let Some(pf) = cx.fields(pn, &pp, &SE_PORT) else { continue };
            let number = match pf.value("number") {
                Some((n, np)) => cx.port(n, &np),
                None => {
                    cx.required(&pf, "number", "a port number");
                    None
                }
            };
            let name = pf.value("name").and_then(|(n, np)| cx.name(n, &np));
            let protocol = match pf.value("protocol") {
                Some((n, np)) => match cx.string(n, &np).map(|s| s.to_ascii_uppercase()) {
                    Some(s) if SE_PROTOCOLS.contains(&s.as_str()) => Some(Some(s)),
                    Some(_) => {
                        cx.error(
                            n,
                            &np,
                            format!("expected one of {}, found {}", SE_PROTOCOLS.join(", "), n.describe()),
                        );
                        None
                    }
                    None => None,
                },
                None => Some(None),
            };
            let target_port = match pf.value("targetPort") {
                Some((n, np)) => cx.port(n, &np).map(Some),
                None => Some(None),
            };
            if let (Some(number), Some(protocol), Some(target_port)) = (number, protocol, target_port) {
                let name = name.unwrap_or_else(|| number.to_string());
                if ports.iter().any(|p: &SePort| p.number == number) {
                    cx.error(pn, &pp, format!("port {number} is listed twice"));
                    continue;
                }
                ports.push(SePort { number, name, protocol, target_port });
            }
        }
    }
    let resolution = match f.get("resolution") {
        Some((n, p)) => match cx.string(n, &p).map(|s| s.to_ascii_uppercase()).as_deref() {
            Some("STATIC") => "STATIC".to_string(),
            Some("DNS" | "DNS_ROUND_ROBIN") => "DNS".to_string(),
            Some("NONE") => "NONE".to_string(),
            Some(_) => {
                cx.error(n, &p, format!("expected one of STATIC, DNS, NONE, found {}", n.describe()));
                return None;
            }
            None => return None,
        },
        // Istio's default: the proxy passes connections to where they were going.
        None => "NONE".to_string(),
    };
    if resolution == "NONE" {
        if let Some((n, p)) = f.value("endpoints") {
            cx.error(n, &p, "resolution NONE passes each connection to where it was going: endpoints would never be used; remove them, or use STATIC");
            return None;
        }
    }
    if let Some((n, p)) = f.value("location") {
        cx.one_of(n, &p, &["MESH_EXTERNAL", "MESH_INTERNAL"], "");
    }
    let mut endpoints = Vec::new();
    if let Some((n, p)) = f.value("endpoints") {
        for (en, ep) in cx.list(n, &p, "endpoints") {
            let Some(ef) = cx.fields(en, &ep, &WORKLOAD_ENTRY) else { continue };
            let Some((an, ap)) = ef.value("address") else {
                cx.required(&ef, "address", "an IP address (or a host name with resolution DNS)");
                continue;
            };
            let Some(address) = cx.name(an, &ap) else { continue };
            if resolution == "STATIC" && address.parse::<IpAddr>().is_err() {
                cx.error(an, &ap, format!("expected an IP address for resolution STATIC, found {} (use resolution: DNS for host names)", an.describe()));
                continue;
            }
            let ports = ef.value("ports").map(|(n, p)| cx.port_map(n, &p).into()).unwrap_or_default();
            let labels = ef.value("labels").map(|(n, p)| cx.string_map(n, &p)).unwrap_or_default();
            let weight = match ef.value("weight") {
                Some((n, p)) => match cx.u32(n, &p, 1) {
                    Some(w) => w,
                    None => continue,
                },
                None => 1,
            };
            endpoints.push(Endpoint { address: At::new(address, an, &ap), ports, labels, weight });
        }
    }
    let subject_alt_names = match f.value("subjectAltNames") {
        Some((n, p)) => cx.strings(n, &p).into_iter().map(|(s, _, _)| s).collect(),
        None => Vec::new(),
    };
    Some(ServiceEntry { hosts, addresses, ports, resolution, endpoints, subject_alt_names, export_to })
}

// ---------------------------------------------------------------------------------------------
// VirtualService

#[derive(Debug, Clone, Serialize)]
pub struct VirtualService {
    /// `exportTo`: the namespaces it is visible in (`None`: all).
    #[serde(rename = "exportTo", skip_serializing_if = "Option::is_none")]
    pub export_to: Option<At<Vec<String>>>,
    pub hosts: Vec<At<String>>,
    /// Empty means `mesh`.
    pub gateways: Vec<At<String>>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    /// `tls`: routes of still-encrypted connections by their SNI, on Gateway servers with
    /// `tls.mode: PASSTHROUGH` (each match entry has `sniHosts`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TcpRoute>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Vec<RequestMatch>,
    pub route: Vec<RouteDestination>,
    #[serde(serialize_with = "ser_opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Parsed and validated, not applied yet (next issue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// `mirror` / `mirrors[]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// `headers`, `rewrite`, `redirect`, `directResponse` (the fault is added when compiled).
    #[serde(flatten)]
    pub features: RouteFeatures,
    /// The entry answers by itself (redirect, directResponse) and needs no route.
    #[serde(skip)]
    pub answers_itself: bool,
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub path: String,
}

/// Istio's `L4MatchAttributes`: `destinationSubnets` are checked per connection, the rest when
/// the route is attached to a listener (as for HTTP matches).
#[derive(Debug, Clone, Serialize)]
pub struct TcpMatch {
    /// `tls[].match[].sniHosts` (Istio's TLSMatchAttributes): names or `*.suffix`, each within
    /// the VirtualService's hosts. Empty for `tcp` routes.
    #[serde(rename = "sniHosts", skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    #[serde(rename = "destinationSubnets", skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<crate::plan::Cidr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "crate::plan::MatchScope::is_empty")]
    pub scope: crate::plan::MatchScope,
}

/// One mirror of a route: a destination, and the share of requests copied to it (0..=100).
#[derive(Debug, Clone, Serialize)]
pub struct Mirror {
    pub destination: RouteDestination,
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpRoute {
    /// `match`: any entry takes a connection.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<TcpMatch>,
    pub route: Vec<RouteDestination>,
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteDestination {
    pub host: At<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<At<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<At<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<At<u32>>,
    /// `headers` for requests sent to this destination.
    #[serde(skip_serializing_if = "HeaderPlan::is_empty")]
    pub headers: HeaderPlan,
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retries {
    pub attempts: u32,
    #[serde(
        rename = "perTryTimeout",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// The conditions as written (empty: Istio's default policy).
    #[serde(rename = "retryOn")]
    pub retry_on: Vec<String>,
    /// `retry_on` parsed; `None` when `retryOn` is absent (Istio's default conditions apply).
    #[serde(skip)]
    pub conditions: Option<(RetryOn, Vec<u16>)>,
    #[serde(rename = "retryIgnorePreviousHosts", skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(serialize_with = "ser_opt_duration", skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
    /// Retry whatever the method (a ServiceProfile's `isRetryable` says the route may be).
    #[serde(rename = "anyMethod", skip_serializing_if = "std::ops::Not::not")]
    pub any_method: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultDelay {
    #[serde(rename = "fixedDelay", serialize_with = "ser_duration")]
    pub fixed_delay: Duration,
    /// 0..=100; Istio's default when absent is 100.
    pub percentage: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultAbort {
    #[serde(rename = "httpStatus", skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The name as written, and its code.
    #[serde(rename = "grpcStatus", skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<(String, u8)>,
    /// 0..=100; Istio's default when absent is 100.
    pub percentage: f64,
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub path: String,
}

pub(crate) fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::decode::format_duration(*d))
}

pub(crate) fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

const VIRTUAL_SERVICE: Schema =
    Schema::new("Istio's VirtualService", &["hosts", "gateways", "http", "tcp", "tls", "exportTo"])
        .refusing(gaps::VIRTUAL_SERVICE);
const HTTP_ROUTE: Schema = Schema::new(
    "Istio's HTTPRoute",
    &[
        "name",
        "match",
        "route",
        "timeout",
        "retries",
        "fault",
        "headers",
        "rewrite",
        "redirect",
        "directResponse",
        "mirror",
        "mirrors",
        "mirrorPercentage",
        "mirrorPercent",
        "mirror_percent",
        "corsPolicy",
    ],
)
.refusing(gaps::HTTP_ROUTE);
const MATCH: Schema = Schema::new(
    "Istio's HTTPMatchRequest",
    &[
        "name",
        "uri",
        "headers",
        "method",
        "authority",
        "withoutHeaders",
        "queryParams",
        "ignoreUriCase",
        "scheme",
        "port",
        "gateways",
        "sourceLabels",
        "sourceNamespace",
    ],
)
.refusing(gaps::MATCH)
.ignoring(gaps::MATCH_IGNORED)
.of_conditions();
const STRING_MATCH: Schema =
    Schema::new("Istio's StringMatch", &["exact", "prefix", "regex"]).of_conditions();
const DESTINATION: Schema =
    Schema::new("Istio's HTTPRouteDestination", &["destination", "weight", "headers"]);
const DEST: Schema = Schema::new("Istio's Destination", &["host", "subset", "port"]);
const PORT_SELECTOR: Schema = Schema::new("Istio's PortSelector", &["number"]);
const TCP_ROUTE: Schema = Schema::new("Istio's TCPRoute", &["route", "match"]);
const TLS_ROUTE: Schema = Schema::new("Istio's TLSRoute", &["match", "route"]);
const TLS_MATCH: Schema = Schema::new(
    "Istio's TLSMatchAttributes",
    &["sniHosts", "destinationSubnets", "port", "gateways", "sourceLabels", "sourceNamespace"],
)
.of_conditions();
const L4_MATCH: Schema = Schema::new(
    "Istio's L4MatchAttributes",
    &["destinationSubnets", "port", "gateways", "sourceLabels", "sourceNamespace"],
)
.refusing(gaps::L4_MATCH)
.of_conditions();

/// A match entry's `port`, `gateways`, `sourceLabels` and `sourceNamespace` (HTTP and TCP).
fn where_it_runs(cx: &mut Cx, mf: &Fields<'_>) -> (Option<u16>, crate::plan::MatchScope) {
    let mut scope = crate::plan::MatchScope::default();
    let port = mf.value("port").and_then(|(n, p)| cx.port(n, &p));
    if let Some((n, p)) = mf.value("gateways") {
        scope.gateways = cx.strings(n, &p).into_iter().map(|(g, _, _)| g).collect();
    }
    if let Some((n, p)) = mf.value("sourceLabels") {
        scope.source_labels = cx.string_map(n, &p);
    }
    if let Some((n, p)) = mf.value("sourceNamespace") {
        scope.source_namespace = cx.name(n, &p);
    }
    (port, scope)
}

/// `tcp[].match`, or `tls[].match` when `vs_hosts` is given (the VirtualService's hosts,
/// which each `sniHosts` entry must be within).
fn tcp_matches(cx: &mut Cx, node: &Node, path: &str, vs_hosts: Option<&[At<String>]>) -> Vec<TcpMatch> {
    let mut out = Vec::new();
    let schema = if vs_hosts.is_some() { &TLS_MATCH } else { &L4_MATCH };
    for (mn, mp) in cx.list(node, path, "matches") {
        let Some(mf) = cx.fields(mn, &mp, schema) else { continue };
        let mut m = TcpMatch {
            sni_hosts: Vec::new(),
            destination_subnets: Vec::new(),
            port: None,
            scope: Default::default(),
        };
        if let Some(hosts) = vs_hosts {
            match mf.value("sniHosts") {
                Some((n, p)) => m.sni_hosts = sni_hosts(cx, n, &p, hosts),
                None => cx.required(&mf, "sniHosts", "the SNI names this entry takes (names or `*.suffix`, within the VirtualService's `hosts`)"),
            }
            if m.sni_hosts.is_empty() {
                continue;
            }
        }
        if let Some((n, p)) = mf.value("destinationSubnets") {
            for (text, pos, sp) in cx.strings(n, &p) {
                match crate::plan::Cidr::parse(&text) {
                    Ok(c) => m.destination_subnets.push(c),
                    Err(why) => cx.report(crate::Severity::Error, pos, &sp, why),
                }
            }
        }
        (m.port, m.scope) = where_it_runs(cx, &mf);
        out.push(m);
    }
    out
}

/// A `tls` match entry's `sniHosts`: each a DNS name or `*.suffix` (or `*`), within one of the
/// VirtualService's `hosts` (Istio requires it). Lower-cased; the ones in error are left out.
fn sni_hosts(cx: &mut Cx, node: &Node, path: &str, vs_hosts: &[At<String>]) -> Vec<String> {
    let mut out = Vec::new();
    let written = cx.strings(node, path);
    if written.is_empty() && matches!(node.kind, crate::yaml::Kind::Seq(_)) {
        cx.error(node, path, "expected at least one SNI name");
    }
    for (name, pos, p) in written {
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        let valid = name == "*" || (!bare.contains('*') && rustls_pki_types::DnsName::try_from(bare).is_ok());
        if !valid {
            let msg =
                format!("`{name}` is not an SNI name: expected a DNS name, `*.` and a DNS name, or `*`");
            cx.report(crate::Severity::Error, pos, &p, msg);
            continue;
        }
        if !vs_hosts.iter().any(|h| crate::compile::covers(&h.value, &name)) {
            let hosts: Vec<&str> = vs_hosts.iter().map(|h| h.value.as_str()).collect();
            let msg = format!("SNI host `{name}` is not within the VirtualService's hosts ({}): Istio requires each `sniHosts` entry to be one of them or covered by one (`*.example.com` covers `db.example.com`); add it to `hosts`", hosts.join(", "));
            cx.report(crate::Severity::Error, pos, &p, msg);
            continue;
        }
        out.push(name.to_ascii_lowercase());
    }
    out
}
const RETRIES: Schema = Schema::new(
    "Istio's HTTPRetry",
    &["attempts", "perTryTimeout", "retryOn", "retryIgnorePreviousHosts", "backoff"],
)
.ignoring(gaps::RETRIES_IGNORED);
const FAULT: Schema = Schema::new("Istio's HTTPFaultInjection", &["delay", "abort"]);
const DELAY: Schema =
    Schema::new("Istio's HTTPFaultInjection.Delay", &["fixedDelay", "percentage", "percent"]);
const ABORT: Schema =
    Schema::new("Istio's HTTPFaultInjection.Abort", &["httpStatus", "grpcStatus", "percentage"])
        .refusing(gaps::FAULT_ABORT);
const PERCENT: Schema = Schema::new("Istio's Percent", &["value"]);
const MIRROR_POLICY: Schema = Schema::new("Istio's HTTPMirrorPolicy", &["destination", "percentage"]);

/// The `retryOn` conditions Tripline applies (numeric status codes are accepted too).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Sets the flag of one `retryOn` word; false for a word that is not in [`RETRY_ON`].
fn set_retry_on(on: &mut RetryOn, word: &str) -> bool {
    let flag = match word {
        "5xx" => &mut on.server_error,
        "gateway-error" => &mut on.gateway_error,
        "reset" => &mut on.reset,
        "connect-failure" => &mut on.connect_failure,
        "refused-stream" => &mut on.refused_stream,
        "retriable-4xx" => &mut on.retriable_4xx,
        "retriable-status-codes" => &mut on.retriable_status_codes,
        "cancelled" => &mut on.grpc_cancelled,
        "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
        "internal" => &mut on.grpc_internal,
        "resource-exhausted" => &mut on.grpc_resource_exhausted,
        "unavailable" => &mut on.grpc_unavailable,
        _ => return false,
    };
    *flag = true;
    true
}

/// Where `offset` (bytes into a one-line scalar) is in the file, so that a diagnostic about one
/// comma-separated word points at that word.
fn pos_in_scalar(node: &Node, offset: usize) -> Pos {
    match &node.kind {
        crate::yaml::Kind::Scalar { text, plain } if !text.contains('\n') => {
            let chars = text.get(..offset).map_or(0, |t| t.chars().count());
            Pos { line: node.pos.line, col: node.pos.col + chars + usize::from(!plain) }
        }
        _ => node.pos,
    }
}

/// Parses Istio's comma-separated `retryOn`: words of [`RETRY_ON`] and status codes (which, as
/// in Istio, also turn on `retriable-status-codes`).
fn retry_on(cx: &mut Cx, node: &Node, path: &str) -> Option<(Vec<String>, RetryOn, Vec<u16>)> {
    let text = cx.string(node, path)?;
    let (mut words, mut on, mut codes, mut ok) = (Vec::new(), RetryOn::default(), Vec::new(), true);
    let mut offset = 0;
    for raw in text.split(',') {
        let word = raw.trim();
        let at = pos_in_scalar(node, offset + (raw.len() - raw.trim_start().len()));
        offset += raw.len() + 1;
        if word.is_empty() {
            continue;
        }
        if let Ok(code) = word.parse::<u16>() {
            if !(100..=599).contains(&code) {
                cx.report(
                    crate::Severity::Error,
                    at,
                    path,
                    format!("retryOn status code {code} is out of range: expected 100 to 599"),
                );
                ok = false;
                continue;
            }
            on.retriable_status_codes = true;
            if !codes.contains(&code) {
                codes.push(code);
            }
        } else if let Some((_, why)) = gaps::RETRY_ON_IGNORED.iter().find(|(w, _)| *w == word) {
            let msg = format!("retryOn condition `{word}` is Envoy-specific and is ignored: {why}");
            cx.report(crate::Severity::Warning, at, path, msg);
            continue;
        } else if let Some((_, fix)) = gaps::RETRY_ON_REFUSED.iter().find(|(w, _)| *w == word) {
            let msg = format!("retryOn condition `{word}` is not implemented yet; {fix}");
            cx.report(crate::Severity::Error, at, path, msg);
            ok = false;
            continue;
        } else if !set_retry_on(&mut on, word) {
            cx.report(
                crate::Severity::Error,
                at,
                path,
                format!(
                    "unknown retryOn condition `{word}`: expected status codes (e.g. 503) or {}",
                    RETRY_ON.join(", ")
                ),
            );
            ok = false;
            continue;
        }
        words.push(word.to_string());
    }
    if on.retriable_status_codes && codes.is_empty() {
        cx.warn(
            node,
            path,
            "`retriable-status-codes` without any status code retries nothing: list the codes too (e.g. `retriable-status-codes,503`)",
        );
    }
    ok.then_some((words, on, codes))
}

pub fn virtual_service(cx: &mut Cx, spec: &Node) -> Option<VirtualService> {
    let f = cx.fields(spec, "spec", &VIRTUAL_SERVICE)?;
    let export_to = export_to(cx, &f);
    let hosts: Vec<At<String>> = match f.value("hosts") {
        Some((n, p)) => cx
            .strings(n, &p)
            .into_iter()
            .map(|(h, pos, path)| At { value: h, pos, path: path.into() })
            .collect(),
        None => Vec::new(),
    };
    if hosts.is_empty() {
        cx.required(&f, "hosts", "at least one host (the authorities this VirtualService answers)");
    }
    let gateways = match f.value("gateways") {
        Some((n, p)) => cx
            .strings(n, &p)
            .into_iter()
            .map(|(h, pos, path)| At { value: h, pos, path: path.into() })
            .collect(),
        None => Vec::new(),
    };
    let mut http = Vec::new();
    if let Some((n, p)) = f.value("http") {
        for (rn, rp) in cx.list(n, &p, "HTTP routes") {
            if let Some(r) = http_route(cx, rn, &rp) {
                http.push(r);
            }
        }
    }
    let mut tcp = Vec::new();
    if let Some((n, p)) = f.value("tcp") {
        for (rn, rp) in cx.list(n, &p, "TCP routes") {
            let Some(tf) = cx.fields(rn, &rp, &TCP_ROUTE) else { continue };
            let route = destinations(cx, &tf);
            let matches = tf.value("match").map(|(n, p)| tcp_matches(cx, n, &p, None)).unwrap_or_default();
            tcp.push(TcpRoute { matches, route, pos: rn.pos, path: rp });
        }
    }
    let mut tls = Vec::new();
    if let Some((n, p)) = f.value("tls") {
        for (rn, rp) in cx.list(n, &p, "TLS routes") {
            let Some(tf) = cx.fields(rn, &rp, &TLS_ROUTE) else { continue };
            if !tf.has("route") {
                cx.required(&tf, "route", "the destinations of the connections this route takes");
            }
            let route = destinations(cx, &tf);
            // Istio: a `tls` route has at least one match entry, each with `sniHosts`.
            let Some((mn, mp)) = tf.value("match") else {
                cx.required(&tf, "match", "match entries with `sniHosts` (the SNI names the route takes)");
                continue;
            };
            let matches = tcp_matches(cx, mn, &mp, Some(&hosts));
            if !matches.is_empty() {
                tls.push(TcpRoute { matches, route, pos: rn.pos, path: rp });
            }
        }
    }
    if http.is_empty() && tcp.is_empty() && f.value("tls").is_none() {
        cx.error(spec, "spec", "expected at least one route in `http`, `tcp` or `tls`");
    }
    Some(VirtualService { hosts, gateways, http, tcp, tls, export_to })
}

fn http_route(cx: &mut Cx, node: &Node, path: &str) -> Option<HttpRoute> {
    let f = cx.fields(node, path, &HTTP_ROUTE)?;
    let name = f.value("name").and_then(|(n, p)| cx.name(n, &p));
    let mut matches = Vec::new();
    if let Some((n, p)) = f.value("match") {
        for (mn, mp) in cx.list(n, &p, "matches") {
            let Some(mf) = cx.fields(mn, &mp, &MATCH) else { continue };
            let mut m = RequestMatch::default();
            if let Some((n, p)) = mf.value("uri") {
                m.uri = string_match(cx, n, &p);
            }
            if let Some((n, p)) = mf.value("method") {
                m.method = string_match(cx, n, &p);
            }
            if let Some((n, p)) = mf.value("authority") {
                m.authority = string_match(cx, n, &p);
            }
            if let Some((n, p)) = mf.value("headers") {
                m.headers = named_matches(cx, n, &p, "header names", true);
            }
            if let Some((n, p)) = mf.value("withoutHeaders") {
                m.without_headers = named_matches(cx, n, &p, "header names", true);
            }
            if let Some((n, p)) = mf.value("queryParams") {
                m.query_params = named_matches(cx, n, &p, "query parameter names", false);
            }
            if let Some((n, p)) = mf.value("scheme") {
                m.scheme = string_match(cx, n, &p);
            }
            if let Some((n, p)) = mf.value("ignoreUriCase") {
                m.ignore_uri_case = cx.bool(n, &p).unwrap_or(false);
            }
            (m.port, m.scope) = where_it_runs(cx, &mf);
            matches.push(m);
        }
    }
    let route = destinations(cx, &f);
    let timeout = f.value("timeout").and_then(|(n, p)| cx.duration(n, &p, true)).filter(|d| !d.is_zero());
    let retries = f.value("retries").and_then(|(n, p)| retries(cx, n, &p));
    if let (Some(timeout), Some(per_try), Some((rn, rp))) =
        (timeout, retries.as_ref().and_then(|r| r.per_try_timeout), f.value("retries"))
    {
        if per_try > timeout {
            let node = rn.get("perTryTimeout").unwrap_or(rn);
            cx.warn(
                node,
                &join(&rp, "perTryTimeout"),
                format!(
                    "perTryTimeout {} is longer than the route timeout {}: the route timeout ends the request first, so no retry can happen after a slow attempt",
                    crate::decode::format_duration(per_try),
                    crate::decode::format_duration(timeout)
                ),
            );
        }
        let attempts = retries.as_ref().map_or(0, |r| r.attempts);
        if let Some(msg) = crate::lint::retries_outlast_timeout(timeout, per_try, attempts) {
            let node = rn.get("perTryTimeout").unwrap_or(rn);
            cx.warn(node, &join(&rp, "perTryTimeout"), msg);
        }
    }
    let fault = f.value("fault").and_then(|(n, p)| fault(cx, n, &p));
    let mirrors = mirrors(cx, &f);
    let features = RouteFeatures {
        headers: f.value("headers").map(|(n, p)| route_features::headers(cx, n, &p)).unwrap_or_default(),
        rewrite: f.value("rewrite").and_then(|(n, p)| route_features::rewrite(cx, n, &p)),
        answer: route_features::answer(cx, &f),
        fault: None,
        mirrors: Vec::new(),
        cors: f.value("corsPolicy").and_then(|(n, p)| route_features::cors(cx, n, &p)),
        rate_limit: None,
        fallback: None,
    };
    let answers_itself = f.has("redirect") || f.has("directResponse") || f.has("delegate");
    if route.is_empty() && !answers_itself && f.value("route").is_none() {
        cx.required(&f, "route", "at least one destination");
    }
    if let (Some(abort), Some(first)) = (fault.as_ref().and_then(|f| f.abort.as_ref()), route.first()) {
        if abort.percentage >= 100.0 {
            let status = abort
                .http_status
                .map(|s| format!("HTTP {s}"))
                .or_else(|| abort.grpc_status.as_ref().map(|(g, _)| format!("gRPC {g}")))
                .unwrap_or_else(|| "an error".into());
            let pos = abort.pos;
            cx.report(
                crate::Severity::Warning,
                pos,
                &abort.path,
                format!(
                    "the route destination `{}` is unreachable: `fault.abort` answers 100% of matching requests with {status} before routing (a fault is not a fallback; lower the percentage or remove the route)",
                    first.host.value
                ),
            );
        }
    }
    Some(HttpRoute {
        name,
        matches,
        route,
        timeout,
        retries,
        fault,
        mirrors,
        features,
        answers_itself,
        pos: node.pos,
        path: path.to_string(),
    })
}

/// A mapping of names (header names, lower-cased when `lower`, or query parameter names) to
/// string matches.
fn named_matches(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    what: &str,
    lower: bool,
) -> Vec<(String, StringMatch)> {
    let mut out = Vec::new();
    match &node.kind {
        crate::yaml::Kind::Map(entries) => {
            for (k, v) in entries {
                let Some(name) = cx.name(k, path) else { continue };
                let p = join(path, &name);
                if let Some(sm) = string_match(cx, v, &p) {
                    out.push((if lower { name.to_ascii_lowercase() } else { name }, sm));
                }
            }
        }
        _ => cx.error(
            node,
            path,
            format!("expected a mapping of {what} to matches, found {}", node.describe()),
        ),
    }
    out
}

pub(crate) fn string_match(cx: &mut Cx, node: &Node, path: &str) -> Option<StringMatch> {
    let f = cx.fields(node, path, &STRING_MATCH)?;
    let given: Vec<&str> = ["exact", "prefix", "regex"].into_iter().filter(|k| f.get(k).is_some()).collect();
    match given.as_slice() {
        [] => Some(StringMatch::Prefix(String::new())),
        [one] => {
            let (n, p) = f.get(one)?;
            let s = cx.string(n, &p)?;
            match *one {
                "exact" => Some(StringMatch::Exact(s)),
                "prefix" => Some(StringMatch::Prefix(s)),
                _ => whole_match_regex(cx, n, &p, &s).map(StringMatch::Regex),
            }
        }
        _ => {
            cx.error(
                node,
                path,
                format!("expected exactly one of exact, prefix, regex, found {}", given.join(" and ")),
            );
            None
        }
    }
}

/// `text` as a regex that must match a whole value (Istio's and Linkerd's reading, RE2
/// syntax), or an error at `node`.
pub(crate) fn whole_match_regex(cx: &mut Cx, node: &Node, path: &str, text: &str) -> Option<regex::Regex> {
    match regex::RegexBuilder::new(&format!("^(?:{text})$")).size_limit(1 << 20).build() {
        Ok(re) => Some(re),
        Err(e) => {
            cx.error(node, path, format!("invalid regex (RE2 syntax expected): {}", regex_error(&e)));
            None
        }
    }
}

/// The last line of a `regex` error, which says what is wrong.
pub(crate) fn regex_error(e: &regex::Error) -> String {
    e.to_string()
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("error: "))
        .unwrap_or("")
        .trim()
        .to_string()
}

fn destinations(cx: &mut Cx, f: &Fields<'_>) -> Vec<RouteDestination> {
    let mut out = Vec::new();
    let Some((n, p)) = f.value("route") else { return out };
    let items = cx.list(n, &p, "destinations");
    if items.is_empty() {
        cx.error(n, &p, "expected at least one destination");
    }
    for (rn, rp) in items {
        let Some(rf) = cx.fields(rn, &rp, &DESTINATION) else { continue };
        let weight = match rf.value("weight") {
            Some((n, p)) => match cx.int(n, &p, 0, 100) {
                Some(w) => Some(At::new(w as u32, n, &p)),
                None => continue,
            },
            None => None,
        };
        let Some((dn, dp)) = rf.value("destination") else {
            cx.required(&rf, "destination", "{host, subset, port}");
            continue;
        };
        let Some(mut d) = destination(cx, dn, &dp) else { continue };
        let headers =
            rf.value("headers").map(|(n, p)| route_features::headers(cx, n, &p)).unwrap_or_default();
        (d.weight, d.headers, d.pos, d.path) = (weight, headers, rn.pos, rp);
        out.push(d);
    }
    out
}

/// Istio's `Destination` (`host`, `subset`, `port`), at the position of the mapping.
pub(crate) fn destination(cx: &mut Cx, node: &Node, path: &str) -> Option<RouteDestination> {
    let df = cx.fields(node, path, &DEST)?;
    let Some((hn, hp)) = df.value("host") else {
        cx.required(&df, "host", "a host name declared by a ServiceEntry");
        return None;
    };
    let host = cx.name(hn, &hp)?;
    let subset = match df.value("subset") {
        Some((n, p)) => Some(At::new(cx.name(n, &p)?, n, &p)),
        None => None,
    };
    let port = match df.value("port") {
        Some((n, p)) => {
            let pf = cx.fields(n, &p, &PORT_SELECTOR)?;
            match pf.value("number") {
                Some((nn, np)) => Some(At::new(cx.port(nn, &np)?, nn, &np)),
                None => None,
            }
        }
        None => None,
    };
    Some(RouteDestination {
        host: At::new(host, hn, &hp),
        subset,
        port,
        weight: None,
        headers: HeaderPlan::default(),
        pos: node.pos,
        path: path.to_string(),
    })
}

/// `mirror` + `mirrorPercentage` (or the older `mirrorPercent` / `mirror_percent`), or
/// `mirrors[]`: where copies of the route's requests go, and the share of requests copied.
fn mirrors(cx: &mut Cx, f: &Fields<'_>) -> Vec<Mirror> {
    let mut out = Vec::new();
    if let (true, Some((n, p))) = (f.has("mirror"), f.value("mirrors")) {
        cx.error(n, &p, "`mirror` and `mirrors` both set the route's mirrors: list them all in `mirrors`");
        return out;
    }
    let percents: Vec<&str> =
        ["mirrorPercentage", "mirrorPercent", "mirror_percent"].into_iter().filter(|k| f.has(k)).collect();
    if let Some((n, p)) = f.value("mirror") {
        if let (Some(second), true) = (percents.get(1), percents.len() > 1) {
            let Some((pn, pp)) = f.value(second) else { return out };
            let msg =
                format!("{} all set the mirrored share: keep `mirrorPercentage`", percents.join(" and "));
            cx.error(pn, &pp, msg);
            return out;
        }
        let percent = match percents.first().and_then(|k| Some((*k, f.value(k)?))) {
            Some(("mirrorPercentage", (pn, pp))) => match cx.fields(pn, &pp, &PERCENT) {
                Some(pf) => match pf.value("value") {
                    Some((vn, vp)) => cx.float(vn, &vp, 0.0, 100.0),
                    None => Some(0.0),
                },
                None => None,
            },
            Some((_, (pn, pp))) => cx.int(pn, &pp, 0, 100).map(|v| v as f64),
            None => Some(100.0),
        };
        if let (Some(d), Some(percent)) = (destination(cx, n, &p), percent) {
            out.push(Mirror { destination: d, percent });
        }
    } else if let Some((first, (n, p))) = percents.first().and_then(|k| Some((*k, f.value(k)?))) {
        let msg = format!(
            "`{first}` without `mirror` mirrors nothing: add `mirror`, or use `mirrors[].percentage`"
        );
        cx.error(n, &p, msg);
    }
    if let Some((n, p)) = f.value("mirrors") {
        for (mn, mp) in cx.list(n, &p, "mirror policies") {
            let Some(mf) = cx.fields(mn, &mp, &MIRROR_POLICY) else { continue };
            let Some((dn, dp)) = mf.value("destination") else {
                cx.required(&mf, "destination", "{host, subset, port}");
                continue;
            };
            let Some(percent) = percentage(cx, &mf) else { continue };
            if let Some(d) = destination(cx, dn, &dp) {
                out.push(Mirror { destination: d, percent });
            }
        }
    }
    out
}

fn retries(cx: &mut Cx, node: &Node, path: &str) -> Option<Retries> {
    let f = cx.fields(node, path, &RETRIES)?;
    let attempts = match f.value("attempts") {
        Some((n, p)) => cx.u32(n, &p, 0)?,
        None => 2,
    };
    let per_try_timeout = match f.value("perTryTimeout") {
        Some((n, p)) => Some(cx.duration(n, &p, false)?),
        None => None,
    };
    let (retry_on, conditions) = match f.value("retryOn") {
        Some((n, p)) => {
            let (words, on, codes) = retry_on(cx, n, &p)?;
            (words, Some((on, codes)))
        }
        None => (Vec::new(), None),
    };
    if let Some((n, p)) = f.value("retryRemoteLocalities") {
        cx.bool(n, &p)?;
    }
    let retry_ignore_previous_hosts = match f.value("retryIgnorePreviousHosts") {
        Some((n, p)) => {
            let v = cx.bool(n, &p)?;
            if !v {
                cx.error(n, &p, "`retryIgnorePreviousHosts: false` is not implemented yet; remove it: Tripline always retries on another endpoint when one is available");
                return None;
            }
            Some(v)
        }
        None => None,
    };
    let backoff = match f.value("backoff") {
        Some((n, p)) => Some(cx.duration(n, &p, false)?),
        None => None,
    };
    Some(Retries {
        attempts,
        per_try_timeout,
        retry_on,
        conditions,
        retry_ignore_previous_hosts,
        backoff,
        any_method: false,
    })
}

fn percentage(cx: &mut Cx, f: &Fields<'_>) -> Option<f64> {
    match f.value("percentage") {
        Some((n, p)) => {
            let pf = cx.fields(n, &p, &PERCENT)?;
            match pf.value("value") {
                Some((vn, vp)) => cx.float(vn, &vp, 0.0, 100.0),
                None => Some(0.0),
            }
        }
        None => match f.value("percent") {
            Some((n, p)) => cx.int(n, &p, 0, 100).map(|v| v as f64),
            None => Some(100.0),
        },
    }
}

fn fault(cx: &mut Cx, node: &Node, path: &str) -> Option<Fault> {
    let f = cx.fields(node, path, &FAULT)?;
    let mut out = Fault { delay: None, abort: None };
    if let Some((n, p)) = f.value("delay") {
        let df = cx.fields(n, &p, &DELAY)?;
        let fixed_delay = match df.value("fixedDelay") {
            Some((n, p)) => cx.duration(n, &p, false)?,
            None => {
                cx.required(&df, "fixedDelay", "a duration like 5s");
                return None;
            }
        };
        out.delay = Some(FaultDelay { fixed_delay, percentage: percentage(cx, &df)? });
    }
    if let Some((n, p)) = f.value("abort") {
        let af = cx.fields(n, &p, &ABORT)?;
        let http_status = match af.value("httpStatus") {
            Some((n, p)) => Some(cx.int(n, &p, 200, 599)? as u16),
            None => None,
        };
        let grpc_status = match af.value("grpcStatus") {
            Some((n, p)) => {
                use tripline_core::classify::grpc;
                let name = cx.one_of(n, &p, &grpc::NAMES, "gRPC's status names, in capitals")?;
                let code = grpc::code(&name)?;
                Some((name, code))
            }
            None => None,
        };
        if let (Some(_), Some(_), Some((n, p))) = (http_status, &grpc_status, af.value("grpcStatus")) {
            cx.error(n, &p, "an abort answers with `httpStatus` or `grpcStatus`: keep one");
            return None;
        }
        // `http2Error` alone has its own error (refused).
        if http_status.is_none() && grpc_status.is_none() && !af.has("http2Error") {
            cx.required(&af, "httpStatus", "an HTTP status code (or grpcStatus)");
            return None;
        }
        let pos = af.value("percentage").map(|(n, _)| n.pos).unwrap_or(n.pos);
        out.abort =
            Some(FaultAbort { http_status, grpc_status, percentage: percentage(cx, &af)?, pos, path: p });
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

#[derive(Debug, Clone, Serialize)]
pub struct DestinationRule {
    /// `exportTo`: the namespaces it is visible in (`None`: all).
    #[serde(rename = "exportTo", skip_serializing_if = "Option::is_none")]
    pub export_to: Option<At<Vec<String>>>,
    pub host: At<String>,
    #[serde(rename = "trafficPolicy")]
    pub traffic_policy: TrafficPolicy,
    pub subsets: Vec<Subset>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subset {
    pub name: At<String>,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "trafficPolicy")]
    pub traffic_policy: TrafficPolicy,
}

/// Every field optional, so that a subset's policy overrides the top level field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrafficPolicy {
    #[serde(rename = "loadBalancer", skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(rename = "connectionPool")]
    pub connection_pool: ConnectionPool,
    #[serde(rename = "outlierDetection", skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(rename = "retryBudget")]
    pub retry_budget: RetryBudget,
    /// `tls`: a subset's replaces the top level's whole (Istio's rule for `tls`, unlike the
    /// other settings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::ClientTls>,
    /// A `tls` was written but had errors (reported): its absence from `tls` must not be read
    /// as plaintext, which would add errors of its own.
    #[serde(skip)]
    pub tls_invalid: bool,
    /// The settings written here that act on HTTP requests only (`connectionPool.http`,
    /// `retryBudget`, a consistent-hash key read from the request): a TCP route's cluster
    /// refuses them, since they would do nothing there.
    #[serde(skip)]
    pub http_only: Vec<HttpOnly>,
}

/// A setting that acts on HTTP requests only, and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOnly {
    pub pos: Pos,
    pub path: String,
}

impl HttpOnly {
    /// Every field set (not null) in `node`, when it is a mapping.
    pub(crate) fn fields_of(node: &Node, path: &str) -> Vec<HttpOnly> {
        match &node.kind {
            crate::yaml::Kind::Map(entries) => entries
                .iter()
                .filter(|(_, v)| !v.is_null())
                .filter_map(|(k, _)| Some(HttpOnly { pos: k.pos, path: join(path, k.as_scalar()?) }))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// `trafficPolicy.retryBudget` (recent Istio): retries in flight as a percentage of active
/// requests, with a floor.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

/// The fields of Istio's `connectionPool` that Tripline supports, its `tcp` and `http` groups
/// read into one struct (`idle_timeout` is `http.idleTimeout`; `tcp.idleTimeout` is warned
/// about as unsupported). `/config_dump` writes it back in Istio's shape, nested.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
}

impl Serialize for ConnectionPool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Tcp {
            #[serde(skip_serializing_if = "Option::is_none")]
            max_connections: Option<u32>,
            #[serde(serialize_with = "ser_opt_duration", skip_serializing_if = "Option::is_none")]
            connect_timeout: Option<Duration>,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Http {
            #[serde(rename = "http1MaxPendingRequests", skip_serializing_if = "Option::is_none")]
            http1_max_pending_requests: Option<u32>,
            #[serde(rename = "http2MaxRequests", skip_serializing_if = "Option::is_none")]
            http2_max_requests: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            max_requests_per_connection: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            max_retries: Option<u32>,
            #[serde(serialize_with = "ser_opt_duration", skip_serializing_if = "Option::is_none")]
            idle_timeout: Option<Duration>,
        }
        #[derive(Serialize)]
        struct Nested {
            #[serde(skip_serializing_if = "Option::is_none")]
            tcp: Option<Tcp>,
            #[serde(skip_serializing_if = "Option::is_none")]
            http: Option<Http>,
        }
        // Destructured whole: a field added to the struct must be placed in a group here.
        let ConnectionPool {
            max_connections,
            connect_timeout,
            http1_max_pending_requests,
            http2_max_requests,
            max_requests_per_connection,
            max_retries,
            idle_timeout,
        } = *self;
        let tcp = (max_connections.is_some() || connect_timeout.is_some())
            .then_some(Tcp { max_connections, connect_timeout });
        let http_set =
            [http1_max_pending_requests, http2_max_requests, max_requests_per_connection, max_retries]
                .iter()
                .any(Option::is_some)
                || idle_timeout.is_some();
        let http = http_set.then_some(Http {
            http1_max_pending_requests,
            http2_max_requests,
            max_requests_per_connection,
            max_retries,
            idle_timeout,
        });
        Nested { tcp, http }.serialize(s)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_local_origin_failures: Option<u32>,
    pub split_external_local_origin_errors: Option<bool>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub interval: Option<Duration>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub base_ejection_time: Option<Duration>,
    /// With where it was written: `tripline validate` says when it can eject nobody or
    /// everybody for the cluster's endpoint count.
    pub max_ejection_percent: Option<At<u32>>,
    pub min_health_percent: Option<u32>,
}

const DESTINATION_RULE: Schema =
    Schema::new("Istio's DestinationRule", &["host", "trafficPolicy", "subsets", "exportTo"])
        .refusing(gaps::DESTINATION_RULE);
const SUBSET: Schema = Schema::new("Istio's Subset", &["name", "labels", "trafficPolicy"]);
const TRAFFIC_POLICY: Schema = Schema::new(
    "Istio's TrafficPolicy",
    &["loadBalancer", "connectionPool", "outlierDetection", "retryBudget", "tls"],
)
.refusing(gaps::TRAFFIC_POLICY);
const LOAD_BALANCER: Schema =
    Schema::new("Istio's LoadBalancerSettings", &["simple", "consistentHash"]).refusing(gaps::LOAD_BALANCER);
const CONSISTENT_HASH: Schema = Schema::new(
    "Istio's ConsistentHashLB",
    &[
        "httpHeaderName",
        "httpCookie",
        "useSourceIp",
        "httpQueryParameterName",
        "ringHash",
        "maglev",
        "minimumRingSize",
    ],
);
const HTTP_COOKIE: Schema = Schema::new("Istio's HTTPCookie", &["name", "ttl", "path", "attributes"]);
const COOKIE_ATTRIBUTE: Schema = Schema::new("Istio's HTTPCookie.Attribute", &["name", "value"]);
const RING_HASH: Schema = Schema::new("Istio's RingHash", &["minimumRingSize"]);
const MAGLEV: Schema = Schema::new("Istio's MagLev", &["tableSize"]);
const CONNECTION_POOL: Schema = Schema::new("Istio's ConnectionPoolSettings", &["tcp", "http"]);
const TCP_POOL: Schema =
    Schema::new("Istio's ConnectionPoolSettings.TCPSettings", &["maxConnections", "connectTimeout"])
        .refusing(gaps::TCP_POOL);
const HTTP_POOL: Schema = Schema::new(
    "Istio's ConnectionPoolSettings.HTTPSettings",
    &[
        "http1MaxPendingRequests",
        "http2MaxRequests",
        "maxRequestsPerConnection",
        "maxRetries",
        "idleTimeout",
        "h2UpgradePolicy",
        "useClientProtocol",
    ],
)
.refusing(gaps::HTTP_POOL);

fn outlier_note(field: &str) -> Option<&'static str> {
    if field.starts_with("enforcing") {
        Some("Envoy's enforcing percentages go in a Tripline ResiliencePolicy")
    } else if field.starts_with("successRate")
        || field.starts_with("failurePercentage")
        || field.starts_with("maxEjectionTime")
    {
        Some("Envoy's success-rate, failure-percentage and max-ejection-time settings go in a Tripline ResiliencePolicy")
    } else {
        None
    }
}

const RETRY_BUDGET: Schema =
    Schema::new("Istio's TrafficPolicy.RetryBudget", &["percent", "minRetryConcurrency"]);

/// The Istio `OutlierDetection` field names (also accepted in a ResiliencePolicy).
pub const OUTLIER_FIELDS: &[&str] = &[
    "consecutive5xxErrors",
    "consecutiveGatewayErrors",
    "consecutiveLocalOriginFailures",
    "splitExternalLocalOriginErrors",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
    "consecutiveErrors",
];

const OUTLIER: Schema = Schema::new("Istio's OutlierDetection", OUTLIER_FIELDS).with_note(outlier_note);

pub fn destination_rule(cx: &mut Cx, spec: &Node) -> Option<DestinationRule> {
    let f = cx.fields(spec, "spec", &DESTINATION_RULE)?;
    let export_to = export_to(cx, &f);
    let host = match f.value("host") {
        Some((n, p)) => At::new(cx.name(n, &p)?, n, &p),
        None => {
            cx.required(&f, "host", "the host (of a ServiceEntry) this rule applies to");
            return None;
        }
    };
    let traffic_policy = match f.value("trafficPolicy") {
        Some((n, p)) => decode_traffic_policy(cx, n, &p),
        None => TrafficPolicy::default(),
    };
    let mut subsets: Vec<Subset> = Vec::new();
    if let Some((n, p)) = f.value("subsets") {
        for (sn, sp) in cx.list(n, &p, "subsets") {
            let Some(sf) = cx.fields(sn, &sp, &SUBSET) else { continue };
            let Some((nn, np)) = sf.value("name") else {
                cx.required(&sf, "name", "a subset name");
                continue;
            };
            let Some(name) = cx.name(nn, &np) else { continue };
            if subsets.iter().any(|s| s.name.value == name) {
                cx.error(nn, &np, format!("subset `{name}` is defined twice"));
                continue;
            }
            let labels = sf.value("labels").map(|(n, p)| cx.string_map(n, &p)).unwrap_or_default();
            let traffic_policy = match sf.value("trafficPolicy") {
                Some((n, p)) => decode_traffic_policy(cx, n, &p),
                None => TrafficPolicy::default(),
            };
            subsets.push(Subset { name: At::new(name, nn, &np), labels, traffic_policy });
        }
    }
    Some(DestinationRule { host, traffic_policy, subsets, export_to })
}

fn decode_traffic_policy(cx: &mut Cx, node: &Node, path: &str) -> TrafficPolicy {
    let mut tp = TrafficPolicy::default();
    let Some(f) = cx.fields(node, path, &TRAFFIC_POLICY) else { return tp };
    if let Some((n, p)) = f.value("loadBalancer") {
        tp.load_balancer = load_balancer(cx, n, &p);
        // A hash key read from the request (all but `useSourceIp`).
        if let Some(hash) = n.get("consistentHash") {
            let keys = HttpOnly::fields_of(hash, &join(&p, "consistentHash"));
            let from_request = ["httpHeaderName", "httpCookie", "httpQueryParameterName"];
            tp.http_only
                .extend(keys.into_iter().filter(|k| from_request.iter().any(|f| k.path.ends_with(f))));
        }
    }
    if let Some((n, p)) = f.value("connectionPool") {
        tp.connection_pool = connection_pool(cx, n, &p);
        if let Some(http) = n.get("http") {
            tp.http_only.extend(HttpOnly::fields_of(http, &join(&p, "http")));
        }
    }
    if let Some((n, p)) = f.value("outlierDetection") {
        tp.outlier_detection = cx.fields(n, &p, &OUTLIER).map(|f| outlier_fields(cx, &f));
    }
    if let Some((n, p)) = f.value("retryBudget") {
        tp.retry_budget = retry_budget(cx, n, &p);
        tp.http_only.push(HttpOnly { pos: n.pos, path: p });
    }
    if let Some((n, p)) = f.value("tls") {
        tp.tls = crate::tls::client(cx, n, &p);
        tp.tls_invalid = tp.tls.is_none();
    }
    tp
}

/// `percent` as a number or as Istio's `{value: N}` Percent, and `minRetryConcurrency`.
fn retry_budget(cx: &mut Cx, node: &Node, path: &str) -> RetryBudget {
    let mut rb = RetryBudget::default();
    let Some(f) = cx.fields(node, path, &RETRY_BUDGET) else { return rb };
    if let Some((n, p)) = f.value("percent") {
        rb.percent = if matches!(n.kind, crate::yaml::Kind::Map(_)) {
            cx.fields(n, &p, &PERCENT)
                .and_then(|pf| pf.value("value"))
                .and_then(|(vn, vp)| cx.float(vn, &vp, 0.0, 100.0))
        } else {
            cx.float(n, &p, 0.0, 100.0)
        };
    }
    rb.min_retry_concurrency = f.value("minRetryConcurrency").and_then(|(n, p)| cx.u32(n, &p, 0));
    rb
}

fn load_balancer(cx: &mut Cx, node: &Node, path: &str) -> Option<LoadBalancer> {
    let f = cx.fields(node, path, &LOAD_BALANCER)?;
    match (f.value("simple"), f.value("consistentHash")) {
        (Some(_), Some((n, p))) => {
            cx.error(n, &p, "expected only one of `simple` and `consistentHash`");
            None
        }
        (Some((n, p)), None) => {
            const SIMPLE: &[&str] = &["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"];
            match cx.string(n, &p)?.as_str() {
                "ROUND_ROBIN" => Some(LoadBalancer::RoundRobin),
                "LEAST_REQUEST" | "LEAST_CONN" => Some(LoadBalancer::LeastRequest),
                "RANDOM" => Some(LoadBalancer::Random),
                "UNSPECIFIED" => None,
                "PASSTHROUGH" => {
                    cx.error(
                        n,
                        &p,
                        format!("PASSTHROUGH is not supported: expected one of {}", SIMPLE.join(", ")),
                    );
                    None
                }
                _ => {
                    cx.error(n, &p, format!("expected one of {}, found {}", SIMPLE.join(", "), n.describe()));
                    None
                }
            }
        }
        (None, Some((n, p))) => consistent_hash(cx, n, &p),
        (None, None) => None,
    }
}

/// `consistentHash.httpCookie`. With `ttl`, Tripline sets the cookie on the response to a
/// client that sent none (as Envoy does), so the client sticks from its first request on.
fn http_cookie(cx: &mut Cx, node: &Node, path: &str) -> Option<HashKey> {
    let f = cx.fields(node, path, &HTTP_COOKIE)?;
    let ttl = match f.value("ttl") {
        Some((n, p)) => Some(cx.duration(n, &p, true)?),
        None => None,
    };
    let name = match f.value("name") {
        // Only a cookie Tripline writes must be a token; one it only reads may be anything.
        Some((n, p)) if ttl.is_some() => cookie_token(cx, n, &p)?,
        Some((n, p)) => cx.name(n, &p)?,
        None => {
            cx.required(&f, "name", "a cookie name");
            return None;
        }
    };
    let Some(ttl) = ttl else {
        for field in ["path", "attributes"] {
            if let Some((n, p)) = f.value(field) {
                cx.warn(
                    n,
                    &p,
                    format!("`{field}` has no effect without `ttl`: Tripline sets the cookie only when `ttl` asks it to"),
                );
            }
        }
        return Some(HashKey::Cookie { name, generate: None });
    };
    let cookie_path = match f.value("path") {
        Some((n, p)) => Some(cookie_value(cx, n, &p)?),
        None => None,
    };
    let mut attributes = Vec::new();
    if let Some((n, p)) = f.value("attributes") {
        for (item, p) in cx.list(n, &p, "cookie attributes ({name, value})") {
            let af = cx.fields(item, &p, &COOKIE_ATTRIBUTE)?;
            let Some((n, p)) = af.value("name") else {
                cx.required(&af, "name", "an attribute name such as SameSite");
                return None;
            };
            let attr = cookie_token(cx, n, &p)?;
            let written = match attr.to_ascii_lowercase().as_str() {
                "max-age" | "expires" => Some("set from `ttl`"),
                "path" => Some("set from `path`"),
                "httponly" => Some("always set"),
                _ => None,
            };
            if let Some(how) = written {
                cx.error(
                    n,
                    &p,
                    format!("`{attr}` is an attribute Tripline writes itself ({how}); remove it here"),
                );
                return None;
            }
            let value = match af.value("value") {
                Some((n, p)) => Some(cookie_value(cx, n, &p)?),
                None => None,
            };
            attributes.push((attr, value));
        }
    }
    check_cookie_prefix(cx, &f, &name, cookie_path.as_deref(), &attributes);
    Some(HashKey::Cookie {
        name,
        generate: Some(NewCookie { max_age: (!ttl.is_zero()).then_some(ttl), path: cookie_path, attributes }),
    })
}

/// Browsers drop a `__Secure-` cookie without `Secure`, and a `__Host-` one without `Secure`
/// and `Path=/` or with `Domain`: Tripline would then set a new cookie on every response and
/// the client never stick. A warning, since the rules are the browsers' and may change.
fn check_cookie_prefix(
    cx: &mut Cx,
    f: &Fields<'_>,
    name: &str,
    path: Option<&str>,
    attributes: &[(String, Option<String>)],
) {
    let has = |a: &str| attributes.iter().any(|(k, _)| k.eq_ignore_ascii_case(a));
    let host = name.starts_with("__Host-");
    let problem = if !(host || name.starts_with("__Secure-")) {
        None
    } else if !has("Secure") {
        Some("without the attribute `{name: Secure}`")
    } else if host && path != Some("/") {
        Some("without `path: /`")
    } else if host && has("Domain") {
        Some("with a `Domain` attribute")
    } else {
        None
    };
    if let (Some(problem), Some((n, p))) = (problem, f.value("name")) {
        let prefix = if host { "__Host-" } else { "__Secure-" };
        cx.warn(n, &p, format!("browsers ignore a `{prefix}` cookie {problem}, so clients would not stick"));
    }
}

/// A cookie or attribute name: an RFC 9110 token, so that the `Set-Cookie` Tripline writes
/// parses as the user meant.
fn cookie_token(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = cx.name(node, path)?;
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !s.chars().all(tchar) {
        cx.error(
            node,
            path,
            format!("expected a cookie name (letters, digits, and !#$%&'*+-.^_`|~), found {s:?}"),
        );
        return None;
    }
    Some(s)
}

/// A cookie attribute value (`path`, an attribute's `value`): printable ASCII without `;`,
/// which would end the attribute.
fn cookie_value(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = cx.string(node, path)?;
    if !s.chars().all(|c| (c.is_ascii_graphic() || c == ' ') && c != ';') {
        cx.error(node, path, format!("expected printable ASCII without `;`, found {s:?}"));
        return None;
    }
    Some(s)
}

fn consistent_hash(cx: &mut Cx, node: &Node, path: &str) -> Option<LoadBalancer> {
    let f = cx.fields(node, path, &CONSISTENT_HASH)?;
    let keys: Vec<&str> = ["httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"]
        .into_iter()
        .filter(|k| f.has(k))
        .collect();
    let key = match keys.as_slice() {
        ["httpHeaderName"] => {
            let (n, p) = f.value("httpHeaderName")?;
            HashKey::Header(cx.name(n, &p)?.to_ascii_lowercase())
        }
        ["httpCookie"] => {
            let (n, p) = f.value("httpCookie")?;
            http_cookie(cx, n, &p)?
        }
        ["useSourceIp"] => {
            let (n, p) = f.value("useSourceIp")?;
            if !cx.bool(n, &p)? {
                cx.error(
                    n,
                    &p,
                    "expected true (or another hash key: httpHeaderName, httpCookie, httpQueryParameterName)",
                );
                return None;
            }
            HashKey::SourceIp
        }
        ["httpQueryParameterName"] => {
            let (n, p) = f.value("httpQueryParameterName")?;
            HashKey::QueryParameter(cx.name(n, &p)?)
        }
        [] => {
            cx.error(
                node,
                path,
                "expected one hash key: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            );
            return None;
        }
        several => {
            cx.error(node, path, format!("expected only one hash key, found {}", several.join(" and ")));
            return None;
        }
    };
    match (f.value("ringHash"), f.value("maglev")) {
        (Some(_), Some((n, p))) => {
            cx.error(n, &p, "expected only one of `ringHash` and `maglev`");
            None
        }
        (None, Some((n, p))) => {
            let mf = cx.fields(n, &p, &MAGLEV)?;
            let table_size = match mf.value("tableSize") {
                Some((n, p)) => {
                    let v = cx.int(n, &p, 1, 5_000_011)? as u64;
                    if !is_prime(v) {
                        cx.error(
                            n,
                            &p,
                            format!(
                                "expected a prime number (Maglev needs one), found {v}; 65537 is the default"
                            ),
                        );
                        return None;
                    }
                    v
                }
                None => 65537,
            };
            Some(LoadBalancer::Maglev { key, table_size })
        }
        (ring, None) => {
            let mut minimum_ring_size = 1024;
            if let Some((n, p)) = f.value("minimumRingSize") {
                cx.warn(n, &p, "`minimumRingSize` is deprecated: use `ringHash.minimumRingSize`");
                minimum_ring_size = cx.int(n, &p, 1, 8_388_608)? as u64;
            }
            if let Some((n, p)) = ring {
                let rf = cx.fields(n, &p, &RING_HASH)?;
                if let Some((n, p)) = rf.value("minimumRingSize") {
                    minimum_ring_size = cx.int(n, &p, 1, 8_388_608)? as u64;
                }
            }
            Some(LoadBalancer::RingHash { key, minimum_ring_size })
        }
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// Istio treats 0 as "not set" for pool limits.
fn limit(cx: &mut Cx, f: &Fields<'_>, name: &str) -> Option<u32> {
    let (n, p) = f.value(name)?;
    let v = cx.int(n, &p, 0, i64::from(i32::MAX))?;
    (v > 0).then_some(v as u32)
}

fn connection_pool(cx: &mut Cx, node: &Node, path: &str) -> ConnectionPool {
    let mut cp = ConnectionPool::default();
    let Some(f) = cx.fields(node, path, &CONNECTION_POOL) else { return cp };
    if let Some((n, p)) = f.value("tcp") {
        if let Some(tf) = cx.fields(n, &p, &TCP_POOL) {
            cp.max_connections = limit(cx, &tf, "maxConnections");
            cp.connect_timeout = tf.value("connectTimeout").and_then(|(n, p)| cx.duration(n, &p, false));
        }
    }
    if let Some((n, p)) = f.value("http") {
        if let Some(hf) = cx.fields(n, &p, &HTTP_POOL) {
            cp.http1_max_pending_requests = limit(cx, &hf, "http1MaxPendingRequests");
            cp.http2_max_requests = limit(cx, &hf, "http2MaxRequests");
            cp.max_requests_per_connection = limit(cx, &hf, "maxRequestsPerConnection");
            cp.max_retries = limit(cx, &hf, "maxRetries");
            cp.idle_timeout = hf.value("idleTimeout").and_then(|(n, p)| cx.duration(n, &p, false));
            upstream_protocol_choice(cx, &hf);
        }
    }
    cp
}

/// `h2UpgradePolicy` and `useClientProtocol`: Tripline speaks to an upstream in its
/// ServiceEntry port's protocol and never upgrades, which is what `DO_NOT_UPGRADE` (Istio's
/// default) and `useClientProtocol: false` say; the other values are errors until implemented.
fn upstream_protocol_choice(cx: &mut Cx, f: &Fields<'_>) {
    if let Some((n, p)) = f.value("h2UpgradePolicy") {
        let policies = ["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"];
        if cx.one_of(n, &p, &policies, "").as_deref() == Some("UPGRADE") {
            cx.error(n, &p, "`UPGRADE` is not implemented yet; remove it, or declare the ServiceEntry port as HTTP2 to speak HTTP/2 to the upstream");
        }
    }
    if let Some((n, p)) = f.value("useClientProtocol") {
        if cx.bool(n, &p) == Some(true) {
            cx.error(n, &p, "`useClientProtocol: true` is not implemented yet; remove it: Tripline speaks to the upstream in its ServiceEntry port's protocol");
        }
    }
}

/// `exportTo`: the namespaces a resource is visible in: `*` (all, Istio's default), `.` (its
/// own), `~` (none, alone), or namespace names. `None` when absent.
fn export_to(cx: &mut Cx, f: &Fields<'_>) -> Option<At<Vec<String>>> {
    let (n, p) = f.value("exportTo")?;
    let names = cx.strings(n, &p);
    for (name, pos, path) in &names {
        let namespace = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !matches!(name.as_str(), "*" | "." | "~") && !namespace {
            let msg = format!("`{name}` is not a namespace: expected `*` (every namespace), `.` (the resource's own), `~` (none) or a namespace name");
            cx.report(crate::Severity::Error, *pos, path, msg);
        }
    }
    if names.len() > 1 && names.iter().any(|(n, _, _)| n == "~") {
        cx.error(n, &p, "`~` (visible nowhere) goes alone in `exportTo`");
    }
    Some(At::new(names.into_iter().map(|(n, _, _)| n).collect(), n, &p))
}

/// The Istio fields of an `outlierDetection` mapping (already checked against its schema).
pub(crate) fn outlier_fields(cx: &mut Cx, f: &Fields<'_>) -> OutlierDetection {
    let count = |cx: &mut Cx, name: &str| f.value(name).and_then(|(n, p)| cx.u32(n, &p, 0));
    let mut od = OutlierDetection {
        consecutive_5xx_errors: count(cx, "consecutive5xxErrors"),
        consecutive_gateway_errors: count(cx, "consecutiveGatewayErrors"),
        consecutive_local_origin_failures: count(cx, "consecutiveLocalOriginFailures"),
        ..OutlierDetection::default()
    };
    if let Some((n, p)) = f.value("consecutiveErrors") {
        cx.warn(
            n,
            &p,
            "`consecutiveErrors` is deprecated: use `consecutive5xxErrors` (or `consecutiveGatewayErrors`)",
        );
        if od.consecutive_5xx_errors.is_none() {
            od.consecutive_5xx_errors = cx.u32(n, &p, 0);
        }
    }
    od.split_external_local_origin_errors =
        f.value("splitExternalLocalOriginErrors").and_then(|(n, p)| cx.bool(n, &p));
    od.interval = f.value("interval").and_then(|(n, p)| cx.duration(n, &p, false));
    od.base_ejection_time = f.value("baseEjectionTime").and_then(|(n, p)| cx.duration(n, &p, false));
    od.max_ejection_percent = f
        .value("maxEjectionPercent")
        .and_then(|(n, p)| cx.int(n, &p, 0, 100).map(|v| At::new(v as u32, n, &p)));
    od.min_health_percent =
        f.value("minHealthPercent").and_then(|(n, p)| cx.int(n, &p, 0, 100)).map(|v| v as u32);
    od
}
