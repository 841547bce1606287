//! `tripline validate`: loads a config as `run` would, without binding anything, and says what
//! it found, for a person (text on stderr and a summary line) or for a CI tool (`--output
//! json` on stdout). The exit code is the verdict: 0 clean, 1 warnings only, 2 errors (or
//! warnings under `--strict`), as `istioctl analyze` and linters do, so a pipeline can tell
//! "review this" from "this will not run".
//!
//! `--explain HOST` adds what the routes to HOST do and where each value came from (see
//! [`crate::explain`]); a HOST no route serves is an error (exit 2), since a CI job that asks
//! about a host expects it to be routed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tripline_config::{Diagnostic, Severity};

use crate::explain::Explanation;

#[derive(Args)]
pub struct ValidateArgs {
    /// Config files or directories.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Treat warnings as errors (exit 2).
    #[arg(long)]
    strict: bool,
    /// `text`: diagnostics on stderr and a summary line on stdout; `json`: one JSON document on
    /// stdout (the diagnostics with their file, line, column and field path, and the counts).
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    output: Output,
    /// Explain every route that serves HOST (or sends traffic to it): its match, split,
    /// timeouts, retries and their budget, breakers and outlier detection, in plain words, with
    /// the resource and field each value came from (`--output json`: under `"explain"`).
    #[arg(long, value_name = "HOST")]
    explain: Option<String>,
    /// Check the files against the Kubernetes API server's Services and mesh resources (the
    /// kubeconfig KUBECONFIG names): a host is then a Service that exists, or an error.
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: read this namespace only.
    #[arg(long, value_name = "NAMESPACE", requires = "kubernetes")]
    namespace: Option<String>,
    #[command(flatten)]
    workload: crate::WorkloadArgs,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// What a validation found: the diagnostics, and what the config holds when it loaded.
struct Findings {
    diagnostics: Vec<Diagnostic>,
    /// Listeners and clusters, when the config loaded.
    loaded: Option<(usize, usize)>,
    /// With `--explain`, once the config loaded: the routes to the host, or why there are none.
    explained: Option<Result<Explanation, String>>,
}

impl Findings {
    fn count(&self, severity: Severity) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == severity).count()
    }

    /// 0 clean, 1 warnings only, 2 errors or (strict) warnings, or a host to explain that no
    /// route serves.
    fn exit_code(&self, strict: bool) -> u8 {
        if matches!(self.explained, Some(Err(_))) {
            return 2;
        }
        match (self.count(Severity::Error), self.count(Severity::Warning)) {
            (0, 0) => 0,
            (0, _) if !strict => 1,
            _ => 2,
        }
    }

    fn json(&self, strict: bool) -> serde_json::Value {
        let diagnostics: Vec<_> = self
            .diagnostics
            .iter()
            .map(|d| {
                serde_json::json!({
                    "severity": match d.severity { Severity::Note => "note", Severity::Warning => "warning", Severity::Error => "error" },
                    "file": d.file,
                    "line": d.line,
                    "column": d.column,
                    "path": d.path,
                    "message": d.message,
                })
            })
            .collect();
        let mut j = serde_json::json!({
            "valid": self.loaded.is_some(),
            "exit": self.exit_code(strict),
            "errors": self.count(Severity::Error),
            "warnings": self.count(Severity::Warning),
            "listeners": self.loaded.map(|(l, _)| l),
            "clusters": self.loaded.map(|(_, c)| c),
            "diagnostics": diagnostics,
        });
        if let Some(explained) = &self.explained {
            j["explain"] = match explained {
                Ok(e) => e.json(),
                Err(why) => serde_json::json!({ "error": why }),
            };
        }
        j
    }
}

/// What the API server holds, as sources beside the files (`--kubernetes`), or why it cannot
/// be read.
fn from_cluster(namespace: Option<String>) -> Result<Vec<tripline_config::Source>, String> {
    let rt = crate::run::runtime().map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let options = tripline_kube::Options { namespace, report_status: false };
        let kube = tripline_kube::KubeSource::start(options, std::time::Duration::from_secs(30)).await?;
        Ok(kube.sources())
    })
}

fn check(
    paths: &[PathBuf],
    explain: Option<&str>,
    workload: &crate::WorkloadArgs,
    kubernetes: Option<Option<String>>,
) -> Findings {
    let mut sources = match tripline_config::read_sources(paths) {
        Ok(sources) => sources,
        Err(diagnostics) => return Findings { diagnostics, loaded: None, explained: None },
    };
    if let Some(namespace) = kubernetes.clone() {
        match from_cluster(namespace) {
            Ok(more) => sources.extend(more),
            Err(why) => {
                let d = Diagnostic {
                    severity: Severity::Error,
                    file: "(kubernetes)".into(),
                    line: 0,
                    column: 0,
                    path: "--kubernetes".into(),
                    message: why,
                };
                return Findings { diagnostics: vec![d], loaded: None, explained: None };
            }
        }
    }
    // A file of DestinationRules alone has no listener: a warning here, an error for run.
    // Without a cluster to ask, a host written as a Kubernetes service is taken to be one.
    let mut opts = tripline_config::LoadOptions {
        listeners_required: false,
        assume_kubernetes_services: kubernetes.is_none(),
        kubernetes: kubernetes.is_some(),
        ..Default::default()
    };
    workload.apply(&mut opts);
    let result = match explain {
        // The plan and the resources it came from, from one compile.
        Some(host) => tripline_config::explain::load(&sources, &opts).map(|e| {
            let explained = crate::explain::explain(&e.loaded.plan, &e.provenance, host);
            (e.loaded, Some(explained))
        }),
        None => tripline_config::load(&sources, &opts).map(|loaded| (loaded, None)),
    };
    match result {
        Ok((loaded, explained)) => {
            let mut diagnostics = loaded.warnings;
            // What only building the TLS configs finds (a certificate and a key that are not
            // a pair): `run` would refuse to start.
            let failed = tripline_proxy::tls::check(&loaded.plan);
            let counts = (loaded.plan.listeners.len(), loaded.plan.clusters.len());
            let loaded = failed.is_empty().then_some(counts);
            diagnostics.extend(failed.into_iter().map(|(file, owner, message)| Diagnostic {
                severity: Severity::Error,
                file: file.display().to_string(),
                line: 0,
                column: 0,
                path: owner,
                message,
            }));
            Findings { loaded, diagnostics, explained }
        }
        Err(diagnostics) => Findings { diagnostics, loaded: None, explained: None },
    }
}

pub fn run(args: ValidateArgs) -> ExitCode {
    let kubernetes = args.kubernetes.then(|| args.namespace.clone());
    let findings = check(&args.paths, args.explain.as_deref(), &args.workload, kubernetes);
    let code = findings.exit_code(args.strict);
    match args.output {
        Output::Json => println!("{}", findings.json(args.strict)),
        Output::Text => {
            for d in &findings.diagnostics {
                eprintln!("{d}");
            }
            match &findings.explained {
                Some(Ok(explanation)) => print!("{}", explanation.text()),
                Some(Err(why)) => eprintln!("{why}"),
                None => {}
            }
            let warnings = findings.count(Severity::Warning);
            match findings.loaded {
                Some((listeners, clusters)) => {
                    println!("valid: {listeners} listener(s), {clusters} cluster(s), {warnings} warning(s)")
                }
                None => eprintln!("invalid: {} error(s)", findings.count(Severity::Error)),
            }
        }
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(severity: Severity) -> Diagnostic {
        Diagnostic {
            severity,
            file: "mesh.yaml".into(),
            line: 7,
            column: 3,
            path: "VirtualService/vs: spec.http[0]".into(),
            message: "something".into(),
        }
    }

    #[test]
    fn the_exit_code_tells_clean_from_warnings_from_errors() {
        let clean = Findings { diagnostics: vec![], loaded: Some((1, 1)), explained: None };
        let warned =
            Findings { diagnostics: vec![diag(Severity::Warning)], loaded: Some((1, 1)), explained: None };
        let failed = Findings {
            diagnostics: vec![diag(Severity::Warning), diag(Severity::Error)],
            loaded: None,
            explained: None,
        };
        assert_eq!([clean.exit_code(false), warned.exit_code(false), failed.exit_code(false)], [0, 1, 2]);
        assert_eq!([clean.exit_code(true), warned.exit_code(true), failed.exit_code(true)], [0, 2, 2]);
    }

    #[test]
    fn json_names_every_diagnostic_with_its_place() {
        let failed = Findings {
            diagnostics: vec![diag(Severity::Warning), diag(Severity::Error)],
            loaded: None,
            explained: None,
        };
        let j = failed.json(false);
        assert_eq!(j["valid"], false);
        assert_eq!(
            (j["errors"].as_u64(), j["warnings"].as_u64(), j["exit"].as_u64()),
            (Some(1), Some(1), Some(2))
        );
        assert_eq!(j["listeners"], serde_json::Value::Null);
        let d = &j["diagnostics"][1];
        assert_eq!(d["severity"], "error");
        assert_eq!(
            (d["file"].as_str(), d["line"].as_u64(), d["column"].as_u64()),
            (Some("mesh.yaml"), Some(7), Some(3))
        );
        assert_eq!(d["path"], "VirtualService/vs: spec.http[0]");
    }
}
