//! The `Accepted` condition on the custom resources Tripline reads (`--report-status`): an
//! invalid object gets `Accepted: False` with the first error (file, line, field and what to
//! do) in its `status.conditions`, where `kubectl get -o yaml` and `kubectl wait` see it; once
//! valid again it gets `Accepted: True`. Objects never found invalid are not written.
//!
//! Why opt-in: every proxy of a mesh reads the same objects, and a fleet writing the same
//! status would be a stampede of identical writes (Istio leaves status to istiod for the same
//! reason). One writer is enough: the gateway Deployment of the Helm chart turns it on.
//!
//! Writes are a merge patch of `status.conditions` on the status subresource, keeping the
//! conditions of other types as the object has them; they only happen when what the object
//! should say changes (another generation, another message), and run on their own task, so a
//! slow or failing API server never holds up a config load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use crate::objects::Kind;

/// The condition type written.
pub const CONDITION: &str = "Accepted";

/// Longest message written (an API server takes more, but a condition is read by people).
const MAX_MESSAGE: usize = 2048;

/// What was last written for one object.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    generation: Option<i64>,
    /// `None`: accepted.
    error: Option<String>,
}

/// Writes the conditions; shared by the loads that call [`StatusWriter::report`].
pub(crate) struct StatusWriter {
    client: Client,
    runtime: tokio::runtime::Handle,
    /// By source name (`kubernetes:<ns>/<Kind>/<name>`): objects written `Accepted: False`
    /// and not yet written `True` again.
    written: Arc<Mutex<HashMap<String, Written>>>,
}

/// One object to write.
pub(crate) struct Target {
    pub source: String,
    pub kind: &'static Kind,
    pub object: Arc<DynamicObject>,
    /// `None`: it is accepted now.
    pub error: Option<String>,
}

impl StatusWriter {
    pub(crate) fn new(client: Client, runtime: tokio::runtime::Handle) -> StatusWriter {
        StatusWriter { client, runtime, written: Arc::default() }
    }

    /// Whether `source` was last written `Accepted: False`.
    pub(crate) fn marked_invalid(&self, source: &str) -> bool {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).contains_key(source)
    }

    /// Forgets the objects that are gone.
    pub(crate) fn retain(&self, present: impl Fn(&str) -> bool) {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| present(k));
    }

    /// Writes what changed among `targets` (each an object now invalid, or one marked invalid
    /// before and accepted now), in the background.
    pub(crate) fn report(&self, targets: Vec<Target>) {
        let mut patches = Vec::new();
        {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            for t in targets {
                let now = Written { generation: t.object.metadata.generation, error: t.error.clone() };
                match (&t.error, written.get(&t.source)) {
                    (Some(_), Some(w)) if *w == now => continue,
                    (None, None) => continue,
                    (Some(_), _) => written.insert(t.source.clone(), now.clone()),
                    (None, Some(_)) => written.remove(&t.source),
                };
                let (Some(ns), Some(name)) =
                    (t.object.metadata.namespace.clone(), t.object.metadata.name.clone())
                else {
                    continue;
                };
                let conditions = conditions(&t.object, &now);
                patches.push((t.kind, ns, name, conditions));
            }
        }
        if patches.is_empty() {
            return;
        }
        let client = self.client.clone();
        self.runtime.spawn(async move {
            for (kind, ns, name, conditions) in patches {
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &kind.api_resource());
                let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
                if let Err(e) = api.patch_status(&name, &PatchParams::default(), &patch).await {
                    tracing::warn!(kind = kind.kind, namespace = ns, name, error = %e, "cannot write the object's status (does the CustomResourceDefinition have a status subresource, and may this identity patch it?)");
                }
            }
        });
    }
}

/// The object's conditions with Tripline's `Accepted` set to what `w` says; the others kept.
fn conditions(obj: &DynamicObject, w: &Written) -> Vec<Value> {
    let mut out: Vec<Value> = obj.data["status"]["conditions"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["type"] != CONDITION).cloned().collect())
        .unwrap_or_default();
    let previous =
        obj.data["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == CONDITION));
    let status = if w.error.is_some() { "False" } else { "True" };
    // The time moves only when the status does (Kubernetes' convention).
    let since = match previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap_or(Value::Null),
    };
    let (reason, message) = match &w.error {
        Some(e) => ("Invalid", truncate(e)),
        None => ("Accepted", "applied by Tripline".to_string()),
    };
    let mut c = json!({
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    });
    if let Some(g) = obj.metadata.generation {
        c["observedGeneration"] = json!(g);
    }
    out.push(c);
    out
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accepted_condition_replaces_its_own_and_keeps_the_others() {
        let mut obj = DynamicObject::new("r", &crate::objects::KINDS[2].api_resource()).within("shop");
        obj.metadata.generation = Some(3);
        obj.data = json!({"status": {"conditions": [
            {"type": "Reconciled", "status": "True"},
            {"type": "Accepted", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]}});
        let still = conditions(&obj, &Written { generation: Some(3), error: Some("bad".into()) });
        assert_eq!(still[0], json!({"type": "Reconciled", "status": "True"}));
        assert_eq!(
            still[1],
            json!({"type": "Accepted", "status": "False", "reason": "Invalid", "message": "bad", "observedGeneration": 3, "lastTransitionTime": "2026-01-01T00:00:00Z"}),
            "the same status keeps its transition time"
        );
        let fixed = conditions(&obj, &Written { generation: Some(4), error: None });
        assert_eq!(
            (fixed[1]["status"].as_str(), fixed[1]["reason"].as_str()),
            (Some("True"), Some("Accepted"))
        );
        assert_ne!(fixed[1]["lastTransitionTime"], "2026-01-01T00:00:00Z", "a new status, a new time");
        assert_eq!(truncate(&"é".repeat(2000)).len(), 2048 + 3);
    }
}
