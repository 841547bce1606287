//! Istio's `Sidecar` (`networking.istio.io`): the sidecar's inbound listeners, each in front
//! of a port of the local application (`ingress`).
//!
//! ```yaml
//! apiVersion: networking.istio.io/v1
//! kind: Sidecar
//! metadata: {name: checkout, namespace: shop}
//! spec:
//!   workloadSelector: {labels: {app: checkout}}     # none: every workload of the namespace
//!   ingress:
//!   - port: {number: 9080, protocol: HTTP, name: http}   # HTTP, HTTP2, GRPC or TCP
//!     bind: 0.0.0.0                                  # the default
//!     defaultEndpoint: 127.0.0.1:8080                # the application
//! ```
//!
//! Each ingress port becomes a listener (`inbound|<port>`) sending everything to the
//! application (cluster `inbound|<port>||`): no routes, retries, timeouts or breakers of its
//! own (Istio's inbound has none by default); the AuthorizationPolicies of the workload apply,
//! and its PeerAuthentication decides whether callers must use mutual TLS
//! ([`crate::peer_authn`]).
//!
//! Which Sidecar applies follows Istio: the one selecting this workload's labels
//! (`--workload-labels`) in its namespace, else its namespace's without a selector, else the
//! root namespace's (`istio-system`) without a selector; the first loaded of equals.
//!
//! Tripline intercepts no traffic yet: each port is bound directly (what Istio's
//! `captureMode: NONE` does; `DEFAULT` reads the same), unless `--inbound-capture` is given.
//!
//! `egress[].hosts` (`namespace/dnsName`) narrows the services the sidecar's outbound side sees:
//! ServiceEntries, VirtualServices and DestinationRules of other hosts are not applied (a note
//! says so), as Istio scopes a sidecar's config. Refused until implemented:
//! `outboundTrafficPolicy`, an egress listener's `port`, `bind` and `captureMode`, an ingress
//! port's `tls` and `connectionPool`, `inboundConnectionPool`, `captureMode: IPTABLES`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::decode::{Cx, Schema};
use crate::model::At;
use crate::yaml::{Node, Pos};

/// A Sidecar's `spec`, decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sidecar {
    /// `workloadSelector.labels`; `None`: namespace- (or, in the root namespace, mesh-) wide.
    #[serde(rename = "workloadSelector", skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    pub ingress: Vec<Ingress>,
    /// `egress[].hosts`, all listeners' together: the services the sidecar's outbound side
    /// sees. `None`: every service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressHost>>,
}

/// One inbound port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ingress {
    pub port: At<u16>,
    /// `HTTP`, `HTTP2`, `GRPC` or `TCP`.
    pub protocol: String,
    pub bind: IpAddr,
    /// Where the application listens.
    #[serde(rename = "defaultEndpoint")]
    pub default_endpoint: SocketAddr,
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub path: String,
}

const SPEC: Schema = Schema::new("Istio's Sidecar", &["workloadSelector", "ingress", "egress"]).refusing(&[
    (
        "outboundTrafficPolicy",
        "Tripline routes only to the hosts its config declares (REGISTRY_ONLY); remove it",
    ),
    (
        "inboundConnectionPool",
        "remove it: the inbound listeners do not limit connections to the application yet",
    ),
]);
const SELECTOR: Schema = Schema::new("Istio's WorkloadSelector", &["labels"]);
const EGRESS: Schema = Schema::new("Istio's IstioEgressListener", &["hosts"]).refusing(&[
    ("port", "an egress listener of its own port is not implemented yet; remove it: the hosts apply to the mesh listener"),
    ("bind", "an egress listener of its own address is not implemented yet; remove it"),
    ("captureMode", "remove it: the mesh listener takes what `tripline iptables` redirects"),
]);
const INGRESS: Schema =
    Schema::new("Istio's IstioIngressListener", &["port", "bind", "defaultEndpoint", "captureMode"]).refusing(&[
        ("tls", "terminate TLS from outside the mesh on a Gateway server; mesh callers get mutual TLS from PeerAuthentication"),
        ("connectionPool", "remove it: the inbound listeners do not limit connections to the application yet"),
    ]);
const PORT: Schema = Schema::new("Istio's SidecarPort", &["number", "protocol", "name"])
    .ignoring(&[("targetPort", "Istio ignores it on a Sidecar too; the listener binds `number`")]);
const PROTOCOLS: &[&str] = &["HTTP", "HTTP2", "GRPC", "TCP"];

/// Decodes a Sidecar's `spec`.
pub fn sidecar(cx: &mut Cx, spec: &Node) -> Option<Sidecar> {
    let f = cx.fields(spec, "spec", &SPEC)?;
    let mut ok = !["outboundTrafficPolicy", "inboundConnectionPool"].iter().any(|n| f.has(n));
    let selector = match f.value("workloadSelector") {
        Some((n, p)) => {
            let s = cx.fields(n, &p, &SELECTOR)?;
            let labels = s.value("labels").map(|(n, p)| cx.string_map(n, &p)).unwrap_or_default();
            Some(labels).filter(|l| !l.is_empty())
        }
        None => None,
    };
    let mut ingress = Vec::new();
    if let Some((n, p)) = f.value("ingress") {
        for (item, path) in cx.list(n, &p, "ingress listeners") {
            match ingress_listener(cx, item, path) {
                Some(i) => ingress.push(i),
                None => ok = false,
            }
        }
    }
    let mut egress = None;
    if let Some((n, p)) = f.value("egress") {
        let mut hosts = Vec::new();
        for (item, path) in cx.list(n, &p, "egress listeners") {
            let Some(e) = cx.fields(item, &path, &EGRESS) else {
                ok = false;
                continue;
            };
            if ["port", "bind", "captureMode"].iter().any(|f| e.has(f)) {
                ok = false;
                continue;
            }
            let Some((hn, hp)) = e.value("hosts") else {
                cx.required(&e, "hosts", "the services this sidecar sees, as `namespace/dnsName` (`./*`, `istio-system/*`, `*/payments.shop.svc.cluster.local`)");
                ok = false;
                continue;
            };
            for (h, pos, hpath) in cx.strings(hn, &hp) {
                match h.split_once('/') {
                    Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                        hosts.push(EgressHost { namespace: ns.to_string(), host: name.to_ascii_lowercase() })
                    }
                    _ => {
                        cx.report(crate::Severity::Error, pos, &hpath, format!("`{h}` is not `namespace/dnsName`: write `./*` (this namespace), `*/{h}` (any namespace) or `<namespace>/{h}`"));
                        ok = false;
                    }
                }
            }
        }
        egress = Some(hosts);
    }
    ok.then_some(Sidecar { selector, ingress, egress })
}

/// One `egress[].hosts` entry: `namespace/dnsName`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EgressHost {
    /// `.` (the Sidecar's own namespace), `*` (any), `~` (none) or a namespace.
    pub namespace: String,
    /// `*`, `*.suffix` or a name (lower-cased).
    pub host: String,
}

impl EgressHost {
    /// Whether a host declared in namespace `ns` is seen, for a Sidecar in `own`.
    pub fn sees(&self, ns: &str, own: &str, host: &str) -> bool {
        let namespace = match self.namespace.as_str() {
            "*" => true,
            "~" => false,
            "." => ns == own,
            n => ns == n,
        };
        let host = host.to_ascii_lowercase();
        namespace
            && match self.host.strip_prefix('*') {
                Some(suffix) => host.ends_with(suffix),
                None => host == self.host,
            }
    }
}

fn ingress_listener(cx: &mut Cx, node: &Node, path: String) -> Option<Ingress> {
    let f = cx.fields(node, &path, &INGRESS)?;
    if f.has("tls") || f.has("connectionPool") {
        return None;
    }
    let Some((pn, pp)) = f.value("port") else {
        cx.required(&f, "port", "{number, protocol, name}");
        return None;
    };
    let p = cx.fields(pn, &pp, &PORT)?;
    let Some((nn, np)) = p.value("number") else {
        cx.required(&p, "number", "the port callers connect to");
        return None;
    };
    let port = At::new(cx.port(nn, &np)?, nn, &np);
    let protocol = match p.value("protocol") {
        Some((n, np)) => {
            let proto = cx.string(n, &np)?.to_ascii_uppercase();
            if !PROTOCOLS.contains(&proto.as_str()) {
                let msg = format!("expected one of {}, found {}", PROTOCOLS.join(", "), n.describe());
                cx.error(n, &np, msg);
                return None;
            }
            proto
        }
        None => {
            cx.required(
                &p,
                "protocol",
                &format!("one of {} (Tripline does not sniff it)", PROTOCOLS.join(", ")),
            );
            return None;
        }
    };
    let bind = match f.value("bind") {
        Some((n, bp)) => match cx.string(n, &bp)?.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                cx.error(
                    n,
                    &bp,
                    format!("expected an IP address like 0.0.0.0 or 127.0.0.1, found {}", n.describe()),
                );
                return None;
            }
        },
        None => IpAddr::from([0, 0, 0, 0]),
    };
    if let Some((n, cp)) = f.value("captureMode") {
        if cx.one_of(n, &cp, &["DEFAULT", "NONE", "IPTABLES"], "")? == "IPTABLES" {
            cx.error(n, &cp, "`captureMode: IPTABLES` is not implemented yet: Tripline does not intercept traffic; use NONE (or DEFAULT), and the port is bound directly");
            return None;
        }
    }
    let Some((en, ep)) = f.value("defaultEndpoint") else {
        cx.required(&f, "defaultEndpoint", "where the application listens, `127.0.0.1:PORT` (Tripline does not intercept traffic, so there is no original destination to forward to)");
        return None;
    };
    let written = cx.string(en, &ep)?;
    let default_endpoint = match written.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) if written.starts_with("unix://") => {
            cx.error(
                en,
                &ep,
                "a Unix socket endpoint is not implemented yet: give the application's `127.0.0.1:PORT`",
            );
            return None;
        }
        Err(_) => {
            cx.error(
                en,
                &ep,
                format!(
                    "expected `IP:PORT` where the application listens (`127.0.0.1:8080`), found {}",
                    en.describe()
                ),
            );
            return None;
        }
    };
    Some(Ingress { port, protocol, bind, default_endpoint, pos: node.pos, path })
}
