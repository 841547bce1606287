//! Tripline configuration: Istio networking resources (`Gateway`, `ServiceEntry`,
//! `VirtualService`, `DestinationRule`) and Tripline kinds ([`policy`]: `ResiliencePolicy`), read from multi-document YAML with
//! file/line/column/field-path diagnostics, validated, and compiled into a [`plan::Plan`].

#![forbid(unsafe_code)]

pub mod authz;
pub mod certs;
pub mod compile;
pub mod decode;
pub mod diag;
mod documents;
pub mod dump;
pub mod explain;
pub mod fallback;
pub mod gaps;
pub mod identity;
mod lint;
pub mod model;
pub mod peer_authn;
pub mod plan;
pub mod policy;
pub mod rate_limit;
mod resource;
pub mod route_features;
pub mod service_profile;
pub mod sidecar;
pub mod tls;
pub mod yaml;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use diag::{Diagnostic, Severity};
pub use documents::DocumentCache;

/// Knobs that come from the command line rather than from YAML.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the `mesh` listener (VirtualServices that name no gateway) binds.
    pub mesh_bind: SocketAddr,
    /// How often `resolution: DNS` names are re-resolved.
    pub dns_refresh: Duration,
    /// Whether a configuration without a listener is an error (`run` and reloads: it would
    /// accept nothing) or a warning (`validate`, which checks files one at a time too, such as
    /// a file of DestinationRules). An empty configuration is an error either way.
    pub listeners_required: bool,
    /// The labels and namespace of the workload this proxy runs for (`--workload-labels`,
    /// `--workload-namespace`): a match's `sourceLabels` / `sourceNamespace` are checked
    /// against them.
    pub workload_labels: std::collections::BTreeMap<String, String>,
    pub workload_namespace: Option<String>,
    /// `--credentials-dir`: where a TLS setting's `credentialName: NAME` is read from, the
    /// directory `NAME/` with the Kubernetes Secret's keys as files (`tls.crt`, `tls.key`,
    /// `ca.crt`; see [`tls`]). `None`: a `credentialName` is an error.
    pub credentials_dir: Option<PathBuf>,
    /// `--identity-dir`: the workload's own X.509 SVID (see [`identity`]), which `ISTIO_MUTUAL`
    /// presents and whose trust bundle it checks peers against. `None`: `ISTIO_MUTUAL` is an
    /// error.
    pub identity_dir: Option<PathBuf>,
    /// `--kubernetes`: the hosts come from the API server's Services, and as Istio's sidecar
    /// the mesh listener routes to every one of them, VirtualService or not.
    pub kubernetes: bool,
    /// `validate` without `--kubernetes`: a host written as a Kubernetes service (`checkout`,
    /// `checkout.shop`, `*.svc.cluster.local`) that nothing declares is taken to be one, with a
    /// note, instead of an unknown host (an error).
    pub assume_kubernetes_services: bool,
    /// `--inbound-capture`: where `tripline iptables` redirects inbound TCP; the Sidecar
    /// ingress ports are then reached through it instead of binding their own ports.
    pub inbound_capture: Option<SocketAddr>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            mesh_bind: SocketAddr::from(([127, 0, 0, 1], 15001)),
            dns_refresh: Duration::from_secs(30),
            listeners_required: true,
            workload_labels: std::collections::BTreeMap::new(),
            workload_namespace: None,
            credentials_dir: None,
            identity_dir: None,
            kubernetes: false,
            assume_kubernetes_services: false,
            inbound_capture: None,
        }
    }
}

/// The cluster's DNS domain: a Kubernetes service is `<name>.<namespace>.svc.cluster.local`.
pub const KUBE_DOMAIN: &str = "cluster.local";

/// A successfully compiled configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub plan: plan::Plan,
    /// Non-fatal findings: unsupported fields, suspicious values.
    pub warnings: Vec<Diagnostic>,
    /// The effective resources (defaults applied) and the plan, for `/config_dump`: written
    /// as JSON text only when first asked for (see [`dump`]).
    pub dump: dump::ConfigDump,
}

/// A YAML source: a name for diagnostics (usually the file path) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Reads files and directories (every `*.yaml` / `*.yml` inside, sorted) into sources.
pub fn read_sources(paths: &[PathBuf]) -> Result<Vec<Source>, Vec<Diagnostic>> {
    let mut sources = Vec::new();
    let mut diags = Vec::new();
    let unreadable = |path: &std::path::Path, e: std::io::Error| Diagnostic {
        severity: Severity::Error,
        file: path.display().to_string(),
        line: 0,
        column: 0,
        path: "(file)".into(),
        message: format!("cannot read: {e}"),
    };
    for path in paths {
        if path.is_dir() {
            let entries = match std::fs::read_dir(path) {
                Ok(entries) => entries,
                Err(e) => {
                    diags.push(unreadable(path, e));
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file() && matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: path.display().to_string(),
                    line: 0,
                    column: 0,
                    path: "(directory)".into(),
                    message: "no *.yaml or *.yml file in this directory".into(),
                });
            }
            for f in files {
                match std::fs::read_to_string(&f) {
                    Ok(text) => sources.push(Source { name: f.display().to_string(), text }),
                    Err(e) => diags.push(unreadable(&f, e)),
                }
            }
        } else {
            match std::fs::read_to_string(path) {
                Ok(text) => sources.push(Source { name: path.display().to_string(), text }),
                Err(e) => diags.push(unreadable(path, e)),
            }
        }
    }
    if diags.is_empty() {
        Ok(sources)
    } else {
        Err(diags)
    }
}

/// Parses, validates and compiles. `Err` carries every error found (and the warnings).
///
/// A configuration without a listener is an error: it would accept no connection, and what
/// yields one is almost always a file caught empty or half written by an editor, which a
/// reload must not put in force.
pub fn load(sources: &[Source], opts: &LoadOptions) -> Result<Loaded, Vec<Diagnostic>> {
    let (_, plan, warnings) = compiled(sources, opts, None)?;
    Ok(Loaded { plan, warnings, dump: dump::ConfigDump::new(sources, opts) })
}

/// [`load`], taking the documents that did not change since the last load from `cache` (and
/// leaving this load's there for the next): what a reload does. The result is the same as
/// [`load`]'s, diagnostics and their positions included.
pub fn load_reusing(
    sources: &[Source],
    opts: &LoadOptions,
    cache: &mut DocumentCache,
) -> Result<Loaded, Vec<Diagnostic>> {
    let (_, plan, warnings) = compiled(sources, opts, Some(cache))?;
    Ok(Loaded { plan, warnings, dump: dump::ConfigDump::new(sources, opts) })
}

/// What [`compiled`] gives: the decoded resources, the plan and the warnings.
type Compiled = (Vec<Arc<model::Resource>>, plan::Plan, Vec<Diagnostic>);

/// [`load`]'s work: the decoded resources, the plan and the warnings, or every error.
fn compiled(
    sources: &[Source],
    opts: &LoadOptions,
    mut cache: Option<&mut DocumentCache>,
) -> Result<Compiled, Vec<Diagnostic>> {
    let reuse = cache.as_deref_mut().map(documents::Reuse::from);
    let mut diags = Vec::new();
    let mut resources: Vec<Arc<model::Resource>> = Vec::new();
    let mut documents = 0;
    // (kind, namespace, name) → index in `resources`: a scan per document was quadratic, 40%
    // of loading 10,000 services.
    let mut seen: std::collections::HashMap<(String, Option<String>, String), usize> =
        std::collections::HashMap::new();
    for source in sources {
        // A file with a syntax error reports only that: what its documents said before it is
        // discarded.
        let decoded = match documents::decode(source, reuse.as_ref()) {
            Ok(decoded) => decoded,
            Err(e) => {
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: source.name.clone(),
                    line: e.pos.line,
                    column: e.pos.col,
                    path: "(YAML)".into(),
                    message: format!("invalid YAML: {}", e.message),
                });
                continue;
            }
        };
        documents += decoded.documents;
        let mut file_diags = decoded.diags.into_iter();
        let mut taken = 0;
        for (r, diags_before) in decoded.resources {
            diags.extend(file_diags.by_ref().take(diags_before - taken));
            taken = diags_before;
            let key = (r.kind.clone(), r.namespace.clone(), r.name.clone());
            if let Some(first) = seen.get(&key).map(|&i| &resources[i]) {
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: r.file.clone(),
                    line: r.pos.line,
                    column: r.pos.col,
                    path: format!("{}: metadata.name", r.id()),
                    message: format!("duplicate {}: already defined at {}", r.id(), first.source),
                });
                continue;
            }
            seen.insert(key, resources.len());
            resources.push(r);
        }
        diags.extend(file_diags);
    }
    let plan = compile::compile(&resources, opts, &mut diags);
    if let (Some(reuse), Some(cache)) = (reuse, cache) {
        reuse.finish(cache);
    }
    let has_errors = |d: &[Diagnostic]| d.iter().any(|d| d.severity == Severity::Error);
    // Only when nothing else is wrong: a listener lost to another error is that error's.
    if plan.listeners.is_empty() && !has_errors(&diags) {
        diags.push(no_listener(sources, documents, opts.listeners_required));
    }
    if has_errors(&diags) {
        return Err(diags);
    }
    Ok((resources, plan, diags))
}

/// A configuration without a listener, at the start of its first file: an error when
/// `required` or when the configuration is empty, else a warning (see
/// [`LoadOptions::listeners_required`]).
fn no_listener(sources: &[Source], documents: usize, required: bool) -> Diagnostic {
    let empty = documents == 0;
    let what = if empty {
        "the configuration is empty (no YAML document)"
    } else {
        "the configuration has no listener: no Gateway server, and no VirtualService without `gateways` (the mesh listener)"
    };
    let (severity, message) = if required || empty {
        (
            Severity::Error,
            format!(
                "{what}; Tripline would accept no connection, so it refuses to run on it (a reload keeps the running config): add a Gateway with a server, or a VirtualService for the mesh listener"
            ),
        )
    } else {
        (
            Severity::Warning,
            format!(
                "{what}; `tripline run` refuses a configuration that accepts no connection: run (and validate) these files together with the ones that define the listeners"
            ),
        )
    };
    Diagnostic {
        severity,
        file: sources.first().map_or_else(|| "(config)".to_string(), |s| s.name.clone()),
        line: 1,
        column: 1,
        path: "(config)".into(),
        message,
    }
}
