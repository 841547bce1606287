//! Tripline's Kubernetes source (`tripline run --kubernetes`): Services and their
//! EndpointSlices, and the mesh's custom resources (Istio's kinds Tripline reads and its own
//! ResiliencePolicy), watched on the API server with kube-rs reflectors and handed to the
//! config compiler as sources beside the files, so an object from the API server is
//! validated exactly as the same object in a file.
//!
//! - [`services`]: a Service with its EndpointSlices as the ServiceEntry Istio would see.
//! - [`objects`]: the custom resources read, and each object as a document.
//! - [`KubeSource`]: the watchers, the snapshot of what they hold ([`KubeSource::sources`]),
//!   and a signal when it changes ([`KubeSource::changed`]).
//! - `status`: the `Accepted` condition written on invalid objects
//!   ([`KubeSource::report_status`]).
//!
//! Each watcher lists, then watches, and re-lists when the API server says its version is
//! too old (410 Gone) or the connection is lost, with backoff: what it held stays in its
//! store meanwhile, so a proxy whose API server is gone keeps serving the last state it knew.
//! A store changes only once a re-list is complete, so a snapshot is never half a list.

#![forbid(unsafe_code)]

pub mod objects;
pub mod services;
mod status;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tripline_config::Source;

/// The prefix of every source name from the API server (`kubernetes:<namespace>/<kind>/<name>`):
/// diagnostics name the object, and an invalid one is told from a file's mistake by it.
pub const SOURCE_PREFIX: &str = "kubernetes:";

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only this namespace (`--namespace`); `None`: every namespace.
    pub namespace: Option<String>,
    /// Write the `Accepted` condition of invalid objects (`--report-status`).
    pub report_status: bool,
}

/// The watchers and what they hold.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    custom: Vec<(&'static objects::Kind, Store<DynamicObject>)>,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    status: Option<status::StatusWriter>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeSource {
    /// Connects (the kubeconfig `KUBECONFIG` or `~/.kube/config` names, else the pod's
    /// service account), starts the watchers and waits, up to `sync`, for their first lists:
    /// Services and EndpointSlices must be listed; a custom resource whose definition is not
    /// installed is read once it is.
    pub async fn start(opts: Options, sync: Duration) -> Result<KubeSource, String> {
        let client = Client::try_default().await.map_err(|e| {
            format!("cannot connect to the Kubernetes API server: {e} (set KUBECONFIG, or run in a pod with a service account)")
        })?;
        let changed = Arc::new(Notify::new());
        let ns = opts.namespace.as_deref();
        let mut tasks = Vec::new();
        let (services, w) = reflector::store();
        tasks.push(watch(api::<Service>(&client, ns), w, "Services".into(), changed.clone()));
        let (slices, w) = reflector::store();
        tasks.push(watch(api::<EndpointSlice>(&client, ns), w, "EndpointSlices".into(), changed.clone()));
        let mut custom = Vec::new();
        for kind in objects::KINDS {
            let resource = kind.api_resource();
            let w = reflector::store::Writer::new(resource.clone());
            let store = w.as_reader();
            tasks.push(watch(dynamic_api(&client, ns, &resource), w, kind.kind.to_string(), changed.clone()));
            custom.push((kind, store));
        }
        let status = opts
            .report_status
            .then(|| status::StatusWriter::new(client.clone(), tokio::runtime::Handle::current()));
        let source = KubeSource { services, slices, custom, changed, tasks, status };
        let required = async {
            source.services.wait_until_ready().await.ok();
            source.slices.wait_until_ready().await.ok();
        };
        if tokio::time::timeout(sync, required).await.is_err() {
            return Err(format!("the Kubernetes API server did not list Services and EndpointSlices within {sync:?}: is it reachable, and may this identity list and watch them?"));
        }
        // The definitions that are installed list as quickly as the Services did.
        let custom = source.custom.iter().map(|(kind, store)| async move {
            if tokio::time::timeout(Duration::from_secs(2), store.wait_until_ready()).await.is_err() {
                tracing::debug!(kind = kind.kind, group = kind.group, "not listed yet");
            }
        });
        futures_util::future::join_all(custom).await;
        Ok(source)
    }

    /// Everything the watchers hold, as sources for the config compiler: one ServiceEntry per
    /// Service, then each custom resource, oldest first within a kind (Istio keeps the oldest
    /// of two policies where only one applies).
    pub fn sources(&self) -> Vec<Source> {
        let mut by_service: BTreeMap<(String, String), Vec<Arc<EndpointSlice>>> = BTreeMap::new();
        for slice in self.slices.state() {
            let service = slice.metadata.labels.as_ref().and_then(|l| l.get(services::SERVICE_NAME_LABEL));
            if let (Some(service), Some(ns)) = (service, slice.metadata.namespace.as_ref()) {
                by_service.entry((ns.clone(), service.clone())).or_default().push(slice.clone());
            }
        }
        let mut svcs = self.services.state();
        svcs.sort_by_key(|a| key(&a.metadata));
        let mut out = Vec::new();
        for svc in svcs {
            let (ns, name) = key(&svc.metadata);
            let slices = by_service.get(&(ns.clone(), name.clone())).map(Vec::as_slice).unwrap_or(&[]);
            let slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
            if let Some(entry) = services::service_entry(&svc, &slices) {
                out.push(source(&ns, "Service", &name, &entry));
            }
        }
        for (kind, store) in &self.custom {
            let mut objs = store.state();
            objs.sort_by(|a, b| {
                let created = |o: &DynamicObject| o.metadata.creation_timestamp.clone().map(|t| t.0);
                created(a).cmp(&created(b)).then_with(|| key(&a.metadata).cmp(&key(&b.metadata)))
            });
            for obj in objs {
                let (ns, name) = key(&obj.metadata);
                out.push(source(&ns, kind.kind, &name, &objects::document(kind, &obj)));
            }
        }
        out
    }

    /// With [`Options::report_status`]: writes `Accepted: False` with its error on each object
    /// of `rejected` (source name → the first error found in it), and `Accepted: True` on
    /// those written invalid before that are valid now. Returns at once; the writes follow.
    pub fn report_status(&self, rejected: &BTreeMap<String, String>) {
        let Some(writer) = &self.status else { return };
        let mut targets = Vec::new();
        let mut present = std::collections::HashSet::new();
        for (kind, store) in &self.custom {
            for object in store.state() {
                let (ns, name) = key(&object.metadata);
                let source = source_name(&ns, kind.kind, &name);
                let error = rejected.get(&source).cloned();
                if error.is_some() || writer.marked_invalid(&source) {
                    targets.push(status::Target { source: source.clone(), kind, object, error });
                }
                present.insert(source);
            }
        }
        writer.retain(|s| present.contains(s));
        writer.report(targets);
    }

    /// Resolves once something the watchers hold has changed since the last call (a change
    /// while nobody waits is kept for the next call).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// How long a watcher waits before it tries the API server again: 250 ms, doubling to at most
/// 2 s, each wait cut by a random part of up to half (so that a fleet of proxies does not come
/// back in step). kube's default waits up to 30 s: a proxy would then take that long to see
/// the changes made once the API server is back.
struct Reconnect {
    attempt: u32,
    seed: u64,
}

impl Reconnect {
    fn new() -> Reconnect {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
        Reconnect { attempt: 0, seed: seed | 1 }
    }
}

impl Iterator for Reconnect {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let full = Duration::from_millis(250 << self.attempt.min(3));
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let cut = full.as_millis() as u64 / 2 * (self.seed % 1000) / 1000;
        Some(full - Duration::from_millis(cut))
    }
}

impl kube::runtime::utils::Backoff for Reconnect {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A 404 on the first list: the API server does not serve the kind.
fn not_installed(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404)
}

fn key(meta: &kube::api::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

fn source(namespace: &str, kind: &str, name: &str, doc: &serde_json::Value) -> Source {
    // Pretty-printed, so that a diagnostic's line says which field.
    let text = serde_json::to_string_pretty(doc).unwrap_or_default();
    Source { name: source_name(namespace, kind, name), text }
}

fn source_name(namespace: &str, kind: &str, name: &str) -> String {
    format!("{SOURCE_PREFIX}{namespace}/{kind}/{name}")
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn dynamic_api(
    client: &Client,
    namespace: Option<&str>,
    resource: &kube::api::ApiResource,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// Runs one watcher into `writer`'s store until dropped, signalling `changed` after every
/// change (a complete re-list counts once). Failures are logged when they start and end; the
/// store keeps its objects meanwhile.
fn watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    what: String,
    changed: Arc<Notify>,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).backoff(Reconnect::new()).reflect(writer);
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                // A list starting: nothing is known yet (it may still fail).
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => {
                    if failing {
                        tracing::info!(what, "watching the Kubernetes API server again");
                        failing = false;
                    }
                    changed.notify_one();
                }
                Err(e) if !failing => {
                    failing = true;
                    if not_installed(&e) {
                        tracing::info!(what, "not served by the API server (its CustomResourceDefinition is not installed): read once it is");
                    } else {
                        tracing::warn!(what, error = %e, "lost the Kubernetes API server: serving the last state it gave, retrying");
                    }
                }
                Err(e) => tracing::debug!(what, error = %e, "still retrying the Kubernetes API server"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn reconnect_waits_grow_to_two_seconds_with_jitter_and_start_over_after_a_success() {
        let mut b = Reconnect::new();
        let waits: Vec<Duration> = (&mut b).take(8).collect();
        let full = [250, 500, 1000, 2000, 2000, 2000, 2000, 2000].map(Duration::from_millis);
        for (w, f) in waits.iter().zip(full) {
            assert!(*w <= f && *w >= f / 2, "{w:?} not within [{:?}, {f:?}]", f / 2);
        }
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(250));
    }
}
