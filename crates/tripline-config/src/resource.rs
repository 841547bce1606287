//! The Kubernetes envelope of a document (`apiVersion`, `kind`, `metadata`, `spec`): which
//! kinds Tripline reads, and a clear warning for every document it does not.

use crate::decode::{Cx, Schema};
use crate::diag::{Diagnostic, Severity};
use crate::model::{
    self, Resource, Spec, API_VERSIONS, KINDS, SECURITY_API_VERSIONS, TRIPLINE_API_VERSIONS, TRIPLINE_KINDS,
};
use crate::yaml::{Document, Kind};

/// Istio's annotation for an AuthorizationPolicy evaluated but not enforced (see
/// [`crate::authz`]).
const DRY_RUN: &str = "istio.io/dry-run";

const ENVELOPE: Schema =
    Schema::new("a Kubernetes resource", &["apiVersion", "kind", "metadata", "spec", "status"]);
const METADATA: Schema = Schema::new(
    "Kubernetes metadata",
    &[
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "ownerReferences",
        "finalizers",
        "generateName",
        "selfLink",
    ],
);

/// Decodes one document into a resource Tripline reads, or reports why it is skipped.
pub fn decode(file: &str, doc: &Document, diags: &mut Vec<Diagnostic>) -> Option<Resource> {
    let root = &doc.root;
    let label = format!("document {}", doc.index + 1);
    let mut cx = Cx { file, resource: label.clone(), diags };
    if !matches!(root.kind, Kind::Map(_)) {
        cx.error(
            root,
            "",
            format!(
                "expected a resource (a mapping with apiVersion, kind, metadata and spec), found {}",
                root.describe()
            ),
        );
        return None;
    }
    let kind = root.get("kind").and_then(|k| k.as_scalar()).map(str::to_string);
    let api = root.get("apiVersion").and_then(|k| k.as_scalar()).map(str::to_string);
    let Some(kind) = kind.filter(|k| !k.is_empty()) else {
        let msg = if root.get("groups").is_some() {
            "no `kind`: this looks like a Prometheus rule file (`groups:`), not a mesh resource; it is ignored".to_string()
        } else {
            "no `kind`: not a Kubernetes resource; it is ignored".to_string()
        };
        cx.report(Severity::Warning, root.pos, "", msg);
        return None;
    };
    let api = api.unwrap_or_default();
    let kind_node = root.get("kind").unwrap_or(root);
    cx.resource = format!(
        "{kind}/{}",
        root.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_scalar()).unwrap_or("?")
    );
    let istio = api.starts_with("networking.istio.io/");
    // Tripline's own group: a wrong kind or version there is a mistake, never someone else's
    // resource, so it is an error.
    let tripline = api.starts_with("tripline.dev/");
    if tripline && !TRIPLINE_KINDS.contains(&kind.as_str()) {
        let msg = format!("unknown Tripline kind `{kind}`: expected one of {}", TRIPLINE_KINDS.join(", "));
        cx.error(kind_node, "kind", msg);
        return None;
    }
    if !tripline && TRIPLINE_KINDS.contains(&kind.as_str()) {
        let api_node = root.get("apiVersion").unwrap_or(root);
        let found = if api.is_empty() { "none".to_string() } else { format!("`{api}`") };
        let msg = format!(
            "`{kind}` is a Tripline kind: use apiVersion: {} (found {found})",
            TRIPLINE_API_VERSIONS[0]
        );
        cx.error(api_node, "apiVersion", msg);
        return None;
    }
    let security = api.starts_with("security.istio.io/")
        && matches!(kind.as_str(), "AuthorizationPolicy" | "PeerAuthentication");
    let linkerd = api.starts_with("linkerd.io/") && kind == "ServiceProfile";
    if !tripline && !security && !linkerd && (!KINDS.contains(&kind.as_str()) || !istio) {
        let shown = if api.is_empty() { String::new() } else { format!(" ({api})") };
        const READS: &str = "Tripline reads Gateway, ServiceEntry, VirtualService, DestinationRule and Sidecar of networking.istio.io, AuthorizationPolicy and PeerAuthentication of security.istio.io, ServiceProfile of linkerd.io, and ResiliencePolicy of tripline.dev";
        let group = api.split_once('/').map_or(api.as_str(), |(g, _)| g);
        // Istio's own kinds (Sidecar, EnvoyFilter, AuthorizationPolicy, ...) say what this
        // proxy's traffic gets: ignoring one would change it. Telemetry only observes.
        if group.ends_with(".istio.io") && group != "telemetry.istio.io" {
            let msg = format!("kind `{kind}`{shown} is not implemented yet; remove it from Tripline's config: ignoring it would change what requests get ({READS})");
            cx.error(kind_node, "kind", msg);
        } else {
            let msg = format!("kind `{kind}`{shown} is not supported by Tripline and is ignored ({READS})");
            cx.warn(kind_node, "kind", msg);
        }
        return None;
    }
    let versions = if tripline {
        TRIPLINE_API_VERSIONS
    } else if security {
        SECURITY_API_VERSIONS
    } else if linkerd {
        crate::service_profile::API_VERSIONS
    } else {
        API_VERSIONS
    };
    if !versions.contains(&api.as_str()) {
        let api_node = root.get("apiVersion").unwrap_or(root);
        cx.error(
            api_node,
            "apiVersion",
            format!("unsupported apiVersion `{api}`: expected one of {}", versions.join(", ")),
        );
        return None;
    }
    let f = cx.fields(root, "", &ENVELOPE)?;
    let Some((meta, meta_path)) = f.value("metadata") else {
        cx.required(&f, "metadata", "{name, namespace}");
        return None;
    };
    let m = cx.fields(meta, &meta_path, &METADATA)?;
    let name = match m.value("name") {
        Some((n, p)) => cx.name(n, &p)?,
        None => {
            cx.required(&m, "name", "a resource name");
            return None;
        }
    };
    let namespace = match m.value("namespace") {
        Some((n, p)) => Some(cx.name(n, &p)?),
        None => None,
    };
    cx.resource = format!("{kind}/{name}");
    let Some((spec_node, _)) = f.value("spec") else {
        cx.required(&f, "spec", format!("the {kind} spec").as_str());
        return None;
    };
    let spec = match kind.as_str() {
        "Gateway" => {
            let mut g = model::gateway(&mut cx, spec_node)?;
            let annotations = m.value("annotations");
            if let Some((node, path)) = annotations.as_ref().and_then(|(a, p)| {
                a.get(model::PROXY_CONFIG_ANNOTATION)
                    .map(|n| (n, format!("{p}.{}", model::PROXY_CONFIG_ANNOTATION)))
            }) {
                g.trusted_proxies = model::gateway_topology(&mut cx, node, &path);
            }
            Spec::Gateway(g)
        }
        "ServiceEntry" => Spec::ServiceEntry(model::service_entry(&mut cx, spec_node)?),
        "VirtualService" => Spec::VirtualService(model::virtual_service(&mut cx, spec_node)?),
        "DestinationRule" => Spec::DestinationRule(Box::new(model::destination_rule(&mut cx, spec_node)?)),
        "AuthorizationPolicy" => {
            let annotation = m
                .value("annotations")
                .and_then(|(a, p)| a.get(DRY_RUN).map(|n| (n.clone(), format!("{p}.{DRY_RUN}"))));
            let dry_run = match annotation {
                None => false,
                Some((node, path)) => match node.as_scalar() {
                    Some("true") => true,
                    Some("false") => false,
                    _ => {
                        cx.error(&node, &path, format!("`{DRY_RUN}` is \"true\" (evaluate the policy, count and log what it would do, enforce nothing) or \"false\"; found {}", node.describe()));
                        return None;
                    }
                },
            };
            Spec::AuthorizationPolicy(Box::new(crate::authz::authorization_policy(
                &mut cx, spec_node, dry_run,
            )?))
        }
        "PeerAuthentication" => {
            Spec::PeerAuthentication(crate::peer_authn::peer_authentication(&mut cx, spec_node)?)
        }
        "Sidecar" => Spec::Sidecar(crate::sidecar::sidecar(&mut cx, spec_node)?),
        "ServiceProfile" => {
            let at = m.value("name").map_or(root.pos, |(n, _)| n.pos);
            Spec::ServiceProfile(Box::new(crate::service_profile::service_profile(
                &mut cx, spec_node, &name, at,
            )?))
        }
        _ => Spec::ResiliencePolicy(Box::new(crate::policy::resilience_policy(&mut cx, spec_node, &name)?)),
    };
    Some(Resource {
        kind,
        api_version: api,
        name,
        namespace,
        source: format!("{file}:{}", root.pos.line),
        file: file.to_string(),
        pos: root.pos,
        decoded_at_line: root.pos.line,
        spec,
    })
}
