//! The custom resources Tripline reads from the API server, and each object as the document
//! the config compiler decodes (what a file would hold: `apiVersion`, `kind`, `metadata`,
//! `spec`).

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{json, Value};

/// A kind of custom resource.
#[derive(Debug)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Kind {
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

const fn kind(group: &'static str, version: &'static str, kind: &'static str, plural: &'static str) -> Kind {
    Kind { group, version, kind, plural }
}

/// Every kind read: Istio's networking and security kinds Tripline implements (their `v1`,
/// served since Istio 1.22), Linkerd's ServiceProfile, and Tripline's own.
pub const KINDS: &[Kind] = &[
    kind("networking.istio.io", "v1", "ServiceEntry", "serviceentries"),
    kind("networking.istio.io", "v1", "DestinationRule", "destinationrules"),
    kind("networking.istio.io", "v1", "VirtualService", "virtualservices"),
    kind("networking.istio.io", "v1", "Gateway", "gateways"),
    kind("networking.istio.io", "v1", "Sidecar", "sidecars"),
    kind("security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"),
    kind("security.istio.io", "v1", "PeerAuthentication", "peerauthentications"),
    kind("linkerd.io", "v1alpha2", "ServiceProfile", "serviceprofiles"),
    kind("tripline.dev", "v1alpha1", "ResiliencePolicy", "resiliencepolicies"),
];

/// The document of `obj`: its kind and version from `kind` (a watch may leave them out), the
/// metadata a resource is read by (name, namespace, labels, annotations), and its `spec`.
pub fn document(kind: &Kind, obj: &DynamicObject) -> Value {
    let m = &obj.metadata;
    let mut metadata = json!({"name": m.name, "namespace": m.namespace});
    if let Some(labels) = m.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata["labels"] = json!(labels);
    }
    if let Some(annotations) = m.annotations.as_ref().filter(|a| !a.is_empty()) {
        // kubectl's copy of the last applied object repeats the spec: not a setting.
        let kept: std::collections::BTreeMap<_, _> = annotations
            .iter()
            .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
            .collect();
        if !kept.is_empty() {
            metadata["annotations"] = json!(kept);
        }
    }
    json!({
        "apiVersion": kind.api_version(),
        "kind": kind.kind,
        "metadata": metadata,
        "spec": obj.data.get("spec").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_becomes_the_document_a_file_would_hold() {
        let mut obj = DynamicObject::new("payments", &KINDS[1].api_resource()).within("shop");
        obj.metadata.labels = Some([("app".to_string(), "payments".to_string())].into());
        obj.metadata.annotations = Some(
            [("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{...}".to_string())].into(),
        );
        obj.metadata.resource_version = Some("42".into());
        obj.data = json!({"spec": {"host": "payments"}, "status": {"conditions": []}});
        let doc = document(&KINDS[1], &obj);
        assert_eq!(
            doc,
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "payments", "namespace": "shop", "labels": {"app": "payments"}},
                "spec": {"host": "payments"},
            })
        );
    }
}
