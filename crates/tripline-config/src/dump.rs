//! `/config_dump`: the effective resources and the plan of a loaded configuration, written as
//! JSON text on the first request for it rather than at every load.
//!
//! Why lazily: for 10,000 services of 10 endpoints the text is 79 MB and took 0.6–0.8 s to
//! write, a third of a reload, for an endpoint that almost nobody requests.
//!
//! What is kept until then is the configuration's sources (17 MB of YAML there), and the text
//! is written from them by loading them again: the load is a function of its sources and
//! options, so it yields the resources and the plan that were put in force. Keeping the
//! decoded resources and the plan instead took 170 MiB for those 10,000 services (1.7 KB
//! per endpoint, against the 4 KiB per endpoint the whole process is allowed), and keeping
//! the text took 79 MB.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::{compile, model, plan, LoadOptions, Source};

/// What `/config_dump` shows for one loaded configuration. Cheap to clone: every clone shares
/// the sources, and the text once written.
#[derive(Clone)]
pub struct ConfigDump(Arc<Inner>);

struct Inner {
    sources: Vec<Source>,
    opts: LoadOptions,
    text: OnceLock<Arc<str>>,
}

impl ConfigDump {
    /// The dump of the configuration that `sources` and `opts` load to (without errors).
    pub(crate) fn new(sources: &[Source], opts: &LoadOptions) -> Self {
        ConfigDump(Arc::new(Inner { sources: sources.to_vec(), opts: opts.clone(), text: OnceLock::new() }))
    }

    /// The JSON text, `{"plan": ..., "resources": [...]}`: written by the first call, which
    /// loads the sources again (about 2 s for 100,000 endpoints: call it off any event loop),
    /// and shared by the others. Callers that arrive while it is being written wait for it.
    pub fn text(&self) -> Arc<str> {
        self.0.text.get_or_init(|| self.write()).clone()
    }

    /// Whether [`ConfigDump::text`] has been written already (then it returns at once).
    pub fn is_written(&self) -> bool {
        self.0.text.get().is_some()
    }

    fn write(&self) -> Arc<str> {
        match crate::compiled(&self.0.sources, &self.0.opts, None) {
            Ok((resources, plan, _)) => render(&resources, &plan),
            // These sources loaded without an error once, and a load depends on nothing else.
            Err(diags) => {
                let errors: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                serde_json::json!({ "error": "the configuration no longer loads", "diagnostics": errors })
                    .to_string()
                    .into()
            }
        }
    }
}

impl fmt::Debug for ConfigDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigDump")
            .field("sources", &self.0.sources.len())
            .field("written", &self.is_written())
            .finish()
    }
}

/// Each resource as read (defaults applied where Tripline applies them), the effective policy
/// of every DestinationRule subset, the plan, and (when it names any) the certificate files'
/// subjects and validity (`certificateFiles`). Written straight to text: only one resource at a time is ever a
/// `serde_json::Value`.
fn render(resources: &[Arc<model::Resource>], plan: &plan::Plan) -> Arc<str> {
    #[derive(serde::Serialize)]
    struct Dump<'a> {
        plan: &'a plan::Plan,
        resources: Resources<'a>,
        /// Named apart from the proxy's `certificates` (the certificates in force, which
        /// `/config_dump` puts first).
        #[serde(rename = "certificateFiles", skip_serializing_if = "serde_json::Map::is_empty")]
        certificates: serde_json::Map<String, serde_json::Value>,
    }
    struct Resources<'a>(&'a [Arc<model::Resource>]);
    impl serde::Serialize for Resources<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|r| resource(r)))
        }
    }
    let dump = Dump { plan, resources: Resources(resources), certificates: certificates(plan) };
    serde_json::to_string(&dump).unwrap_or_default().into()
}

/// Every certificate file the plan names (listeners' chains and CAs, clusters' client chains
/// and CAs; never a key) → what each of its certificates is: subject, names and validity
/// (RFC 3339), as the file reads now (the proxy reads it again whenever it changes).
fn certificates(plan: &plan::Plan) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let servers = plan.listeners.iter().flat_map(|l| &l.tls);
    let server_files = servers.flat_map(|t| [Some(&t.certificate), t.ca_certificates.as_ref()]);
    let clusters = plan.clusters.iter().filter_map(|c| c.tls.as_ref());
    let client_files = clusters.flat_map(|t| [t.client_certificate.as_ref(), t.ca_certificates.as_ref()]);
    let mut out = serde_json::Map::new();
    for path in server_files.chain(client_files).flatten() {
        let key = path.display().to_string();
        if out.contains_key(&key) {
            continue;
        }
        let shown = match crate::certs::read_certificates(path) {
            Ok(chain) => json!(chain
                .iter()
                .filter_map(|c| crate::certs::CertInfo::parse(c).ok())
                .map(|info| json!({
                    "subject": info.subject,
                    "dnsNames": info.dns_names,
                    "uris": info.uris,
                    "ips": info.ips,
                    "notBefore": crate::certs::rfc3339(info.not_before),
                    "notAfter": crate::certs::rfc3339(info.not_after),
                }))
                .collect::<Vec<_>>()),
            Err(e) => json!({ "error": e.problem }),
        };
        out.insert(key, shown);
    }
    out
}

/// One resource for the dump, with its `effectivePolicy` if it is a DestinationRule.
fn resource(r: &model::Resource) -> serde_json::Value {
    use serde_json::json;
    let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
    if let model::Spec::DestinationRule(dr) = &r.spec {
        let mut effective = serde_json::Map::new();
        let tls_mode = |sub: Option<&model::TrafficPolicy>| {
            compile::effective_tls(Some(&dr.traffic_policy), sub)
                .map_or(crate::tls::ClientMode::Disable, |t| t.mode)
        };
        let (lb, pool) = compile::effective_policy(&dr.traffic_policy, None);
        effective.insert(
            String::new(),
            json!({"loadBalancer": lb, "connectionPool": pool, "tls": {"mode": tls_mode(None)}}),
        );
        for s in &dr.subsets {
            let sub = Some(&s.traffic_policy);
            let (lb, pool) = compile::effective_policy(&dr.traffic_policy, sub);
            let tls = json!({"mode": tls_mode(sub)});
            effective.insert(
                s.name.value.clone(),
                json!({"loadBalancer": lb, "connectionPool": pool, "tls": tls}),
            );
        }
        v["effectivePolicy"] = serde_json::Value::Object(effective);
    }
    v
}

#[cfg(test)]
mod tests {
    //! The text is written on the first request, not by the load, and it is the JSON that
    //! the load used to write: the plan, and every resource with its effective policy.

    use std::sync::Arc;

    use serde_json::{json, Value};

    use crate::{load, LoadOptions, Loaded, Source};

    const MESH: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  servers:
  - port: {number: 18130, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: checkout}
spec:
  hosts: [checkout]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: checkout}
spec:
  host: checkout
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 250ms}}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 5}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: checkout}
spec:
  hosts: [checkout]
  gateways: [edge]
  http:
  - route:
    - destination: {host: checkout, subset: v2}
"#;

    fn loaded() -> Loaded {
        load(&[Source { name: "mesh.yaml".into(), text: MESH.into() }], &LoadOptions::default())
            .expect("valid")
    }

    #[test]
    fn the_dump_is_written_on_the_first_request_and_then_shared() {
        let loaded = loaded();
        assert!(!loaded.dump.is_written(), "a load writes no dump");
        let copy = loaded.dump.clone();
        let text = loaded.dump.text();
        assert!(copy.is_written(), "clones share the text");
        assert!(Arc::ptr_eq(&text, &copy.text()), "written once");
    }

    #[test]
    fn the_dump_holds_the_plan_and_every_resource_with_its_effective_policy() {
        let loaded = loaded();
        let dump: Value = serde_json::from_str(&loaded.dump.text()).expect("JSON");
        let keys: Vec<&String> = dump.as_object().expect("an object").keys().collect();
        assert_eq!(keys, ["plan", "resources"]);
        assert_eq!(dump["plan"], serde_json::to_value(&loaded.plan).unwrap(), "the plan in force");

        let resources = dump["resources"].as_array().expect("resources");
        let ids: Vec<(&str, &str, &str)> = resources
            .iter()
            .map(|r| {
                (r["kind"].as_str().unwrap(), r["name"].as_str().unwrap(), r["source"].as_str().unwrap())
            })
            .collect();
        assert_eq!(
            ids,
            [
                ("Gateway", "edge", "mesh.yaml:1"),
                ("ServiceEntry", "checkout", "mesh.yaml:9"),
                ("DestinationRule", "checkout", "mesh.yaml:20"),
                ("VirtualService", "checkout", "mesh.yaml:33"),
            ],
            "in file order, with where each was read"
        );
        let effective = &resources[2]["effectivePolicy"];
        assert_eq!(effective.as_object().unwrap().len(), 2, "the top level and the one subset: {effective}");
        assert_eq!(effective[""]["connectionPool"]["max_connections"], json!(10));
        assert_eq!(effective["v2"]["connectionPool"]["max_connections"], json!(5), "the subset's own");
        assert_eq!(
            effective["v2"]["connectionPool"]["connect_timeout"],
            effective[""]["connectionPool"]["connect_timeout"]
        );
        assert!(
            resources.iter().all(|r| r.get("file").is_none() && r.get("pos").is_none()),
            "no internal fields"
        );
    }
}
