//! The sidecar's inbound listeners: the ports of the `Sidecar` that applies to this workload
//! ([`crate::sidecar`]), each with the mutual TLS its PeerAuthentication asks for
//! ([`crate::peer_authn`]).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{Ctx, DEFAULT_LOAD_BALANCER};
use crate::diag::Severity;
use crate::model::Resource;
use crate::peer_authn::{self, Applicable, Level, MtlsMode, PeerAuthentication};
use crate::plan::{
    ClusterPlan, Discovery, DownstreamTlsMode, EndpointPlan, HostMatch, ListenerPlan, ListenerProtocol,
    PoolLimits, ResiliencePlan, RetryPlan, RoutePlan, TcpRoutePlan, TlsServerPlan, TlsVersions,
    UpstreamProtocol, VirtualHostPlan, WeightedCluster,
};
use crate::sidecar::{Ingress, Sidecar};
use crate::tls::Termination;

/// The inbound capture listener (`--inbound-capture`), which hands each connection to the
/// ingress port it was for.
fn capture_listener(bind: SocketAddr) -> ListenerPlan {
    ListenerPlan {
        inbound_capture: true,
        ..ListenerPlan::new("inbound-capture", bind, ListenerProtocol::Tcp)
    }
}

/// A resource with the name it is shown by (`<namespace>/<name>`).
fn shown(r: &Resource) -> String {
    match &r.namespace {
        Some(ns) => format!("{ns}/{}", r.name),
        None => r.name.clone(),
    }
}

impl<'a> Ctx<'a> {
    /// The inbound listeners of the Sidecar that applies, with their clusters; `binds` holds
    /// the addresses the other listeners took.
    pub(super) fn inbound(
        &mut self,
        sidecar: Option<(&'a Resource, &'a Sidecar)>,
        peers: &[(&'a Resource, &'a PeerAuthentication)],
        binds: &mut HashMap<SocketAddr, String>,
    ) -> Vec<ListenerPlan> {
        let names: Vec<String> = peers.iter().map(|(r, _)| shown(r)).collect();
        let mut applicable = Vec::new();
        for (index, (&(r, p), name)) in peers.iter().zip(&names).enumerate() {
            match self.scope(r, p.selector.as_ref(), "spec.selector") {
                Ok(Some(Level::Workload)) if r.namespace.as_deref() == Some(crate::authz::ROOT_NAMESPACE) => {
                    let msg = "a PeerAuthentication with a selector in the root namespace applies to no workload (Istio ignores it): move it to the workload's namespace, or remove the selector to make it mesh-wide";
                    self.report(r, Severity::Warning, r.pos, "spec.selector", msg);
                }
                Ok(Some(level)) => applicable.push(Applicable { index, name, level, policy: p }),
                Ok(None) => {}
                Err((path, msg)) => self.report(r, Severity::Error, r.pos, path, msg),
            }
        }
        let composed = peer_authn::compose(&applicable);
        for (a, first) in &composed.shadowed {
            let (r, _) = peers[a.index];
            let msg = format!("PeerAuthentication `{first}` applies at the same level and was loaded first, so this one is not used (Istio keeps the oldest): merge them");
            self.report(r, Severity::Warning, r.pos, "metadata.name", msg);
        }
        let mut out = Vec::new();
        if let Some(bind) = self.opts.inbound_capture {
            if let Some(other) = binds.insert(bind, "inbound-capture".into()) {
                let msg = format!("--inbound-capture {bind} is already used by listener `{other}`");
                self.diags.push(crate::Diagnostic {
                    severity: Severity::Error,
                    file: "(command line)".into(),
                    line: 0,
                    column: 0,
                    path: "--inbound-capture".into(),
                    message: msg,
                });
            }
            out.push(capture_listener(bind));
        }
        let Some((sidecar_res, sidecar)) = sidecar else {
            for a in &applicable {
                let (r, _) = peers[a.index];
                let msg = "PeerAuthentication sets the mutual TLS of the sidecar's inbound listeners (a Sidecar's `ingress`), and this workload has none: it changes nothing here (a Gateway server's TLS is its own `tls`)";
                self.report(r, Severity::Warning, r.pos, "spec", msg);
            }
            return out;
        };
        for (index, port, at) in composed.port_levels() {
            if !sidecar.ingress.iter().any(|i| i.port.value == port) {
                let (r, _) = peers[index];
                let ports: Vec<String> = sidecar.ingress.iter().map(|i| i.port.value.to_string()).collect();
                let msg = format!("port {port} is none of this workload's inbound ports ({}): this setting applies to no connection", ports.join(", "));
                self.report(r, Severity::Warning, at.pos, &at.path, msg);
            }
        }
        for ingress in &sidecar.ingress {
            let bind = SocketAddr::new(ingress.bind, ingress.port.value);
            if let Some(other) = binds.get(&bind) {
                let msg = format!("duplicate listener port: {bind} is already used by listener `{other}`");
                self.report(sidecar_res, Severity::Error, ingress.port.pos, &ingress.port.path, msg);
                continue;
            }
            let name = format!("inbound|{}", ingress.port.value);
            binds.insert(bind, name.clone());
            let decided = composed.mode(ingress.port.value);
            let tls = match decided.mode {
                MtlsMode::Strict | MtlsMode::Permissive => {
                    let deciding = composed.deciding(ingress.port.value);
                    let at = match deciding {
                        Some((_, m)) => (m.pos, m.path.clone()),
                        None => (ingress.pos, ingress.path.clone()),
                    };
                    let by = deciding.map(|(a, _)| peers[a.index].0);
                    let permissive_without_identity =
                        decided.mode == MtlsMode::Permissive && self.opts.identity_dir.is_none();
                    if permissive_without_identity {
                        if let Some(r) = by {
                            let msg = format!("PERMISSIVE on inbound port {}: without --identity-dir the sidecar has no certificate, so it takes plaintext only and mesh callers using mutual TLS cannot connect", ingress.port.value);
                            self.report(r, Severity::Warning, at.0, &at.1, msg);
                        }
                        None
                    } else {
                        match self.mesh_termination(by.unwrap_or(sidecar_res), at, &name) {
                            Some(t) => Some(t),
                            None => continue,
                        }
                    }
                }
                MtlsMode::Disable | MtlsMode::Unset => None,
            };
            let plaintext_too = decided.mode == MtlsMode::Permissive && tls.is_some();
            out.push(self.inbound_listener(ingress, name, bind, tls, plaintext_too, decided));
        }
        out
    }

    /// Narrows what the sidecar's outbound side sees to its Sidecar's `egress` hosts, as Istio
    /// scopes a sidecar's config: the ServiceEntries whose hosts, and the VirtualServices and
    /// DestinationRules whose hosts (in the namespace each is written in) no egress host
    /// names, are not applied.
    pub(super) fn scope_to_egress(
        &mut self,
        (sidecar_res, sidecar): (&'a Resource, &'a Sidecar),
        services: &mut Vec<(&'a Resource, &'a crate::model::VirtualService)>,
        rules: &mut Vec<(&'a Resource, &'a crate::model::DestinationRule)>,
    ) {
        let Some(egress) = &sidecar.egress else { return };
        let workload = self.opts.workload_namespace.clone().unwrap_or_default();
        let ns_of = |r: &Resource| r.namespace.clone().unwrap_or_else(|| workload.clone());
        let own = ns_of(sidecar_res);
        let seen = |r: &Resource, host: &str| {
            let ns = ns_of(r);
            let full = super::kube_expansion(&host.to_ascii_lowercase(), Some(&ns))
                .unwrap_or_else(|| host.to_string());
            egress.iter().any(|e| e.sees(&ns, &own, &full) || e.sees(&ns, &own, host))
        };
        self.service_entries.retain(|(r, se)| se.hosts.iter().any(|h| seen(r, &h.value)));
        services.retain(|(r, vs)| vs.hosts.iter().any(|h| seen(r, &h.value)));
        rules.retain(|(r, dr)| seen(r, &dr.host.value));
    }

    /// The Sidecar of the narrowest level that applies (the first loaded of equals); the
    /// others that apply are reported as unused.
    pub(super) fn pick_sidecar(
        &mut self,
        sidecars: &[(&'a Resource, &'a Sidecar)],
    ) -> Option<(&'a Resource, &'a Sidecar)> {
        let mut found = Vec::new();
        for &(r, s) in sidecars {
            match self.scope(r, s.selector.as_ref(), "spec.workloadSelector") {
                Ok(Some(Level::Workload)) if r.namespace.as_deref() == Some(crate::authz::ROOT_NAMESPACE) => {
                    let msg = "a Sidecar with a workloadSelector in the root namespace applies to no workload (Istio refuses it): move it to the workload's namespace, or remove the selector to make it the mesh's default";
                    self.report(r, Severity::Warning, r.pos, "spec.workloadSelector", msg);
                }
                Ok(Some(level)) => found.push((level, r, s)),
                Ok(None) => {}
                Err((path, msg)) => self.report(r, Severity::Error, r.pos, path, msg),
            }
        }
        let narrowest = found.iter().map(|f| f.0).max()?;
        let chosen = found.iter().position(|f| f.0 == narrowest)?;
        let (_, chosen_res, chosen_sidecar) = found[chosen];
        for &(level, r, _) in found.iter().enumerate().filter(|(i, _)| *i != chosen).map(|(_, f)| f) {
            let how = if level == narrowest {
                "at the same level and was loaded first"
            } else {
                "more specifically"
            };
            let msg = format!("Sidecar `{}` applies to this workload {how}, so this one is not used (one Sidecar applies to a workload)", shown(chosen_res));
            self.report(r, Severity::Warning, r.pos, "metadata.name", msg);
        }
        Some((chosen_res, chosen_sidecar))
    }

    /// The workload's own certificate terminating mutual TLS from mesh callers (as a Gateway
    /// server's `ISTIO_MUTUAL`), reported against `at` in `r` when the identity cannot be read.
    fn mesh_termination(
        &mut self,
        r: &Resource,
        at: (crate::yaml::Pos, String),
        name: &str,
    ) -> Option<TlsServerPlan> {
        let t = Termination {
            mode: DownstreamTlsMode::Mutual,
            server_certificate: None,
            private_key: None,
            ca_certificates: None,
            credential_name: None,
            subject_alt_names: Vec::new(),
            min_protocol_version: None,
            max_protocol_version: None,
            versions: TlsVersions::default(),
            cipher_suites: Vec::new(),
            istio_mutual: Some(at),
        };
        let mut findings = Vec::new();
        let plan = self.tls_files.server(&r.file, &t, name.to_string(), vec!["*".into()], &mut findings);
        self.report_tls(r, findings);
        plan
    }

    /// The listener of one ingress port and the cluster of its application.
    fn inbound_listener(
        &mut self,
        ingress: &Ingress,
        name: String,
        bind: SocketAddr,
        tls: Option<TlsServerPlan>,
        plaintext_too: bool,
        decided: peer_authn::Decided,
    ) -> ListenerPlan {
        let (protocol, upstream) = match ingress.protocol.as_str() {
            "TCP" => (ListenerProtocol::Tcp, UpstreamProtocol::Tcp),
            "HTTP" => (ListenerProtocol::Http, UpstreamProtocol::Http1),
            _ => (ListenerProtocol::Http2, UpstreamProtocol::Http2),
        };
        let cluster_name = format!("inbound|{}||", ingress.port.value);
        let app = ingress.default_endpoint;
        self.cluster_policies.push(None);
        let id = self.clusters.len();
        self.clusters.push(ClusterPlan {
            name: cluster_name.clone(),
            host: app.ip().to_string(),
            port: app.port(),
            subset: None,
            protocol: upstream,
            discovery: Discovery::Static(vec![EndpointPlan {
                address: app,
                weight: 1,
                labels: Default::default(),
            }]),
            load_balancer: DEFAULT_LOAD_BALANCER,
            pool: PoolLimits::default(),
            resilience: ResiliencePlan::default(),
            tls: None,
        });
        self.cluster_ids.insert(cluster_name, id);
        let to = vec![WeightedCluster { cluster: id, weight: 100, headers: Default::default() }];
        let (virtual_hosts, tcp_routes) = if protocol == ListenerProtocol::Tcp {
            (
                Vec::new(),
                vec![TcpRoutePlan {
                    name: name.clone(),
                    matches: Vec::new(),
                    sni_hosts: Vec::new(),
                    destinations: to,
                }],
            )
        } else {
            // The application answers for itself: no retries, timeout or breaker here (the
            // caller's sidecar has its own), as Istio's inbound.
            let route = RoutePlan {
                name: name.clone(),
                matches: Vec::new(),
                destinations: to,
                timeout: None,
                retry: RetryPlan { attempts: 0, ..RetryPlan::default() },
                breaker: None,
                policy: None,
                features: Default::default(),
            };
            (vec![VirtualHostPlan { domains: vec![HostMatch::Any], routes: vec![route] }], Vec::new())
        };
        // The callers are mesh peers: their request ids and forwarded protocol go on (the
        // default's `trust_client`).
        ListenerPlan {
            virtual_hosts,
            tcp_routes,
            tls: tls.into_iter().collect(),
            plaintext_too,
            mtls: Some(decided),
            captured: self.opts.inbound_capture.is_some(),
            ..ListenerPlan::new(name, bind, protocol)
        }
    }
}
