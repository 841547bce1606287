//! `tripline validate`: every seed config parses (exit 0), parses with warnings (exit 1) or is
//! diagnosed (exit 2); never a panic. A broken file gets `file:line:column` diagnostics, in
//! text or, with `--output json`, as JSON. `--explain HOST` is compared with a golden file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::config;
use crate::support::proxy::{binary, run_bounded, unique_dir};

const TIMEOUT: Duration = Duration::from_secs(20);

use crate::support::seeds_dir::seeds_dir;

fn has_location(stderr: &str, file: &str) -> bool {
    // `<file>:<line>:<column>:`
    stderr.lines().any(|l| {
        l.find(file).is_some_and(|at| {
            let rest = &l[at + file.len()..];
            let mut parts = rest.splitn(4, ':');
            parts.next() == Some("")
                && parts.next().is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                && parts.next().is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        })
    })
}

#[test]
fn validate_every_seed_is_accepted_or_diagnosed() {
    let Some(dir) = seeds_dir() else { return };
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "expected the seed configs in {}", dir.display());
    let mut problems = Vec::new();
    let mut report = Vec::new();
    for seed in &seeds {
        let name = seed.file_name().unwrap().to_string_lossy().into_owned();
        let (code, _out, err) = run_bounded(Command::new(binary()).arg("validate").arg(seed), TIMEOUT);
        report.push(format!("{name}: exit {code:?}"));
        if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
            problems.push(format!("{name}: panic\n{err}"));
        }
        match code {
            Some(0) => {}
            Some(c @ (1 | 2)) => {
                if !has_location(&err, &name) {
                    problems
                        .push(format!("{name}: exit {c} without a `{name}:line:column:` diagnostic:\n{err}"));
                }
            }
            other => problems.push(format!("{name}: exit {other:?}\n{err}")),
        }
    }
    eprintln!("validate results: {report:#?}");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn validate_accepts_a_good_config() {
    let dir = unique_dir("validate-good");
    let path = dir.join("good.yaml");
    let ep = "127.0.0.1:18080".parse().unwrap();
    std::fs::write(
        &path,
        config::simple(18130, "HTTP", &[ep], Some("    loadBalancer: {simple: LEAST_REQUEST}\n")),
    )
    .unwrap();
    let (code, out, err) = run_bounded(Command::new(binary()).arg("validate").arg(&path), TIMEOUT);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validate_points_at_the_broken_line() {
    let dir = unique_dir("validate-bad");
    let path = dir.join("broken.yaml");
    // Line 7: a port number that is not a number.
    let yaml = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: edge
spec:
  servers:
  - port: {number: not-a-port, name: http, protocol: HTTP}
    hosts: [\"*\"]
";
    std::fs::write(&path, yaml).unwrap();
    let (code, out, err) = run_bounded(Command::new(binary()).arg("validate").arg(&path), TIMEOUT);
    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(has_location(&err, "broken.yaml"), "no broken.yaml:line:column: diagnostic in:\n{err}");
    assert!(err.contains("broken.yaml:7:"), "the diagnostic should point at line 7:\n{err}");

    // An unknown destination host is an error too (exit 2), also with a location.
    let path2 = dir.join("unknown-host.yaml");
    std::fs::write(
        &path2,
        config::join(&[
            config::gateway("edge", 18130, "HTTP"),
            config::virtual_service("vs", &["*"], "edge", &config::http_route("nowhere.local")),
        ]),
    )
    .unwrap();
    let (code, out, err) = run_bounded(Command::new(binary()).arg("validate").arg(&path2), TIMEOUT);
    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(has_location(&err, "unknown-host.yaml"), "{err}");

    // `tripline run` refuses to start on it the same way: exit 2, the same diagnostic.
    let admin = format!("127.0.0.1:{}", crate::support::free_port());
    let (code, out, err) =
        run_bounded(Command::new(binary()).args(["run", "--admin", &admin, "-c"]).arg(&path), TIMEOUT);
    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("broken.yaml:7:"), "run should point at line 7 too:\n{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Warnings alone exit 1 (2 under `--strict`), so CI can tell "review this" from "this will not
/// run"; `--output json` gives the same findings as one JSON document on stdout.
#[test]
fn warnings_exit_1_and_json_gives_each_finding_its_place() {
    let dir = unique_dir("validate-warn");
    let path = dir.join("rules.yaml");
    // A DestinationRule for a host no ServiceEntry declares, in a file without a listener:
    // both are warnings (the file may be run beside others that declare them).
    let yaml = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: inventory
spec:
  host: inventory.local
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10}}
";
    std::fs::write(&path, yaml).unwrap();
    let validate =
        |extra: &[&str]| run_bounded(Command::new(binary()).arg("validate").args(extra).arg(&path), TIMEOUT);
    let (code, out, err) = validate(&[]);
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(has_location(&err, "rules.yaml"), "{err}");
    assert!(out.starts_with("valid: 0 listener(s)"), "{out}");
    let (code, _, err) = validate(&["--strict"]);
    assert_eq!(code, Some(2), "{err}");

    let (code, out, err) = validate(&["--output", "json"]);
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.is_empty(), "json output keeps stderr empty: {err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (j["valid"].as_bool(), j["errors"].as_u64(), j["exit"].as_u64()),
        (Some(true), Some(0), Some(1))
    );
    let diags = j["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(j["warnings"].as_u64(), Some(diags.len() as u64));
    let host = diags
        .iter()
        .find(|d| d["path"].as_str().is_some_and(|p| p.ends_with("spec.host")))
        .unwrap_or_else(|| panic!("a finding at spec.host in {out}"));
    assert_eq!(host["severity"], "warning");
    assert!(host["file"].as_str().is_some_and(|f| f.ends_with("rules.yaml")), "{host}");
    assert_eq!((host["line"].as_u64(), host["column"].as_u64()), (Some(6), Some(9)), "{host}");

    // Errors: exit 2, and the JSON says invalid.
    std::fs::write(&path, yaml.replace("maxConnections: 10", "maxConnections: many")).unwrap();
    let (code, out, _) = validate(&["--output", "json"]);
    assert_eq!(code, Some(2), "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["valid"], false);
    assert!(j["errors"].as_u64().is_some_and(|n| n >= 1), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The config of the `--explain` golden test: the brief's payments example, copied from the
/// seed configs (see the comments in its files), and a ServiceEntry with 4 endpoints.
fn explain_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/explain-payments")
}

/// `validate --explain HOST` in the fixtures directory (so that no machine path can appear).
fn explain(host: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(binary());
    cmd.current_dir(explain_fixtures()).args(["validate", "--explain", host]).args(extra).arg(".");
    run_bounded(&mut cmd, TIMEOUT)
}

/// What `--explain` prints for the brief's payments example, word for word, against
/// `tests/golden/explain-payments.txt`. After a deliberate change of what it says, regenerate
/// the golden file and review its diff:
///
/// ```sh
/// TRIPLINE_BLESS=1 cargo test -p tripline --test e2e validate_explain
/// ```
#[test]
fn validate_explain_payments_matches_the_golden_file() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/explain-payments.txt");
    let (code, out, err) = explain("payments.svc.cluster.local", &[]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    if std::env::var_os("TRIPLINE_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&golden, &out).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        return;
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
    assert!(
        out == want,
        "`validate --explain` differs from {} (TRIPLINE_BLESS=1 rewrites it):\n--- want\n{want}\n--- got\n{out}",
        golden.display()
    );
}

/// A host no route serves is an error (exit 2) that lists the hosts served; with `--output
/// json` the explanation, or that error, is under `"explain"`.
#[test]
fn validate_explain_of_an_unknown_host_exits_2_and_json_carries_the_explanation() {
    let (code, out, err) = explain("orders.svc.cluster.local", &[]);
    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(
            "no route serves host orders.svc.cluster.local; hosts served: payments.svc.cluster.local"
        ),
        "{err}"
    );

    let (code, out, err) = explain("orders.svc.cluster.local", &["--output", "json"]);
    assert_eq!(code, Some(2), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(j["exit"], 2);
    assert!(j["explain"]["error"].as_str().is_some_and(|e| e.starts_with("no route serves host")), "{out}");

    let (code, out, err) = explain("Payments.svc.cluster.local:80", &["--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let route = &j["explain"]["routes"][0];
    assert_eq!(j["explain"]["host"], "payments.svc.cluster.local", "the port is not part of the host");
    assert_eq!(route["route"], "payments-fault/http[0]");
    assert_eq!(
        route["from"],
        serde_json::json!({"resource": "VirtualService/payments-fault", "path": "spec.http[0]"})
    );
    let cluster = &route["clusters"][0];
    let cap = cluster["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["topic"] == "ejection cap"))
        .unwrap_or_else(|| panic!("an ejection cap in {cluster}"));
    assert_eq!(cap["says"], "with 4 endpoints at most 2 can be ejected at once (50% of 4 is 2)");
    assert_eq!(
        cap["from"][0],
        serde_json::json!({
            "what": "maxEjectionPercent",
            "resource": "DestinationRule/payments-cb",
            "path": "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        })
    );
}

/// The AuthorizationPolicies a request meets before any route are part of what `--explain`
/// says about a host, in the order they run, in text and in JSON.
#[test]
fn validate_explain_says_which_authorization_policies_run_first() {
    let dir = unique_dir("explain-authz");
    let policies = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin}\nspec:\n  action: DENY\n  rules: [{from: [{source: {notIpBlocks: [10.0.0.0/8]}}], to: [{operation: {paths: [\"/admin*\"], methods: [POST]}}]}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mesh-only, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  rules: [{from: [{source: {principals: [\"*\"]}}]}]\n";
    let path = dir.join("mesh.yaml");
    std::fs::write(
        &path,
        format!("{}{policies}", config::simple(18_999, "HTTP", &["127.0.0.1:1".parse().unwrap()], None)),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(binary());
        cmd.args(["validate", "--explain", "backend.local"]).args(extra).arg(&path);
        run_bounded(&mut cmd, TIMEOUT)
    };
    let (code, out, err) = run(&[]);
    assert_eq!(code, Some(1), "the principals field is warned about: stdout:\n{out}\nstderr:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[1], "authorization, before any route (every request of this proxy; DENY first)",
        "only a dry-run ALLOW: nothing is denied for want of one: {out}"
    );
    assert_eq!(lines[2], "  DENY: no-admin denies requests from peer address not in [10.0.0.0/8], to method in [POST] and path in [/admin*]", "{out}");
    assert_eq!(lines[3], "  ALLOW: mesh-only allows requests from principal in [(any value)] (dry run: counted and logged, never enforced)", "{out}");
    let (_, out, err) = run(&["--output", "json"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    assert_eq!(j["explain"]["authorization"][0]["topic"], "DENY", "{out}");
    assert_eq!(j["explain"]["authorization"].as_array().map(Vec::len), Some(2), "{out}");
}
