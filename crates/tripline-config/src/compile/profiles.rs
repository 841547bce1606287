//! Linkerd's ServiceProfiles in the compiled config ([`crate::service_profile`]): which
//! profile applies to a host, its routes as the host's mesh routes, and its budget and
//! failure classes on the host's clusters.

use std::collections::HashMap;

use super::{covers, Ctx};
use crate::diag::Severity;
use crate::model::{Resource, VirtualService};
use crate::plan::ResiliencePlan;
use crate::service_profile::{ranges_text, ServiceProfile};

/// The profile that applies to each host (lower-cased, in full), as [`Ctx::profiles`] holds
/// them.
pub(super) type Profiles<'a> = HashMap<String, (&'a Resource, &'a ServiceProfile)>;

impl<'a> Ctx<'a> {
    /// Picks the profile of each host, as Linkerd does: the one in this workload's namespace
    /// (a client's own view of the service), else the one in the service's namespace, else
    /// the first loaded; the others are reported and left out. Returns the profiles whose
    /// routes become their host's mesh routes (those of hosts no VirtualService routes on
    /// the mesh), as VirtualServices for the route compiler.
    pub(super) fn pick_profiles(
        &mut self,
        profiles: &[(&'a Resource, &'a ServiceProfile)],
        services: &[(&'a Resource, &'a VirtualService)],
    ) -> Vec<(&'a Resource, VirtualService)> {
        let mut by_host: Profiles<'a> = HashMap::new();
        for &(r, p) in profiles {
            let host = self.canonical(r, &p.host);
            let Some(&(held, _)) = by_host.get(&host) else {
                by_host.insert(host, (r, p));
                continue;
            };
            let rank = |r: &Resource| {
                let ns = r.namespace.as_deref();
                if ns.is_some() && ns == self.opts.workload_namespace.as_deref() {
                    0
                } else if ns
                    .is_some_and(|ns| host == format!("{}.{ns}.svc.{}", host_name(&host), crate::KUBE_DOMAIN))
                {
                    1
                } else {
                    2
                }
            };
            let (kept, left) = if rank(r) < rank(held) { (r, held) } else { (held, r) };
            if std::ptr::eq(kept, r) {
                by_host.insert(host.clone(), (r, p));
            }
            let msg = format!(
                "left out: {} (namespace {}) is the ServiceProfile of `{host}` here (Linkerd's order: this workload's namespace, then the service's, then the first loaded)",
                kept.id(),
                kept.namespace.as_deref().unwrap_or("none")
            );
            self.report(left, Severity::Warning, left.decoded_pos(), "metadata.name", msg);
        }
        let mut routed = Vec::new();
        for (host, &(r, p)) in &by_host {
            self.check_classes(host, r, p);
            if self.service_entry(host).is_none() {
                // As a DestinationRule of an undeclared host: it applies once the host appears.
                let (severity, msg) = match self.assumed_kube_service(r, &p.host) {
                    Some(note) => (Severity::Note, note),
                    None => (Severity::Warning, format!("no ServiceEntry declares host `{}`: this profile applies once the host appears (add a ServiceEntry to route to it)", p.host)),
                };
                self.report(r, severity, p.host_pos, "metadata.name", msg);
                continue;
            }
            if p.routes.is_empty() {
                continue;
            }
            let by_service = services.iter().find(|(vr, vs)| {
                let on_mesh = vs.gateways.is_empty()
                    || vs.gateways.iter().any(|g| g.value.rsplit('/').next() == Some("mesh"));
                on_mesh && vs.hosts.iter().any(|h| covers(&self.canonical(vr, &h.value), host))
            });
            if let Some((vr, _)) = by_service {
                let at = p.routes.last().map_or(r.decoded_pos(), |o| o.pos);
                let msg = format!("{} routes `{host}` on the mesh: a host takes its routes from one place, so this profile's routes are not applied (its retryBudget and responseClasses are); remove `routes` here, or the VirtualService", vr.id());
                self.report(r, Severity::Error, at, "spec.routes", msg);
                continue;
            }
            let vs = VirtualService {
                export_to: None,
                hosts: vec![crate::model::At {
                    value: p.host.clone(),
                    pos: p.host_pos,
                    path: "metadata.name".into(),
                }],
                gateways: Vec::new(),
                http: p.routes.clone(),
                tcp: Vec::new(),
                tls: Vec::new(),
            };
            routed.push((r, vs));
        }
        routed.sort_by(|a, b| a.0.source.cmp(&b.0.source));
        self.profiles = by_host;
        routed
    }

    /// A ResiliencePolicy on the profile's host classifies failures itself: the two must
    /// agree, since both would judge the same endpoints.
    fn check_classes(&mut self, host: &str, r: &'a Resource, p: &'a ServiceProfile) {
        let Some(failures) = &p.failures else { return };
        let policies: Vec<_> = self
            .policy_by_target
            .iter()
            .filter(|((h, _), _)| h == host)
            .map(|(_, &i)| self.policies[i])
            .collect();
        for (pr, pol) in policies {
            let own = &pol.classification.classifier;
            if own.with_http_failures(&failures.value) != *own {
                let msg = format!(
                    "{} classifies this host's failures differently from these responseClasses (failing statuses {}): one judgement of the endpoints' health is needed; give the policy the same `classification.failureStatuses`, or remove one",
                    pr.id(),
                    ranges_text(&failures.value)
                );
                self.report(r, Severity::Error, failures.pos, &failures.path, msg);
            }
        }
    }

    /// The host's profile on one of its clusters: the budget by rate, and which statuses fail
    /// for outlier detection.
    pub(super) fn apply_profile(&self, host: &str, resilience: &mut ResiliencePlan) {
        let Some((_, p)) = self.profiles.get(&host.to_ascii_lowercase()) else { return };
        if let Some(b) = &p.retry_budget {
            resilience.retry_budget.rate = Some(b.config());
        }
        if let (Some(f), Some(o)) = (&p.failures, resilience.outlier.as_mut()) {
            o.classifier = o.classifier.with_http_failures(&f.value);
        }
    }
}

/// `payments` of `payments.default.svc.cluster.local`.
fn host_name(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}
