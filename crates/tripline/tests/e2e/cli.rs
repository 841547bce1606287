//! The command line as a user meets it: `--log-level` / `TRIPLINE_LOG` values, and
//! `tripline demo` (its printed config and a short run).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::support::proxy::{binary, run_bounded, unique_dir};
use crate::support::{config, free_port, Proxy};

const TIMEOUT: Duration = Duration::from_secs(30);
const LEVELS: &str = "error, warn, info, debug, trace, off";

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A log level that is not one (a typo, or a word tracing would take for a target name and so
/// log nothing at all) is a usage error, from the flag and from the environment alike.
#[test]
fn a_bad_log_level_is_a_usage_error_that_lists_the_levels() {
    for (flag, env) in [(Some("debugg"), None), (Some("warn,,"), None), (None, Some("verbose"))] {
        let mut cmd = Command::new(binary());
        cmd.args(["run", "-c", "does-not-matter.yaml"]).env_remove("TRIPLINE_LOG");
        if let Some(v) = flag {
            cmd.args(["--log-level", v]);
        }
        if let Some(v) = env {
            cmd.env("TRIPLINE_LOG", v);
        }
        let (code, out, err) = run_bounded(&mut cmd, TIMEOUT);
        let value = flag.or(env).unwrap();
        assert_eq!(code, Some(2), "{value:?}: stdout:\n{out}\nstderr:\n{err}");
        assert!(err.contains(&format!("invalid value '{value}' for '--log-level")), "{value:?}: {err}");
        assert!(err.contains(LEVELS), "{value:?}: the message lists the levels: {err}");
    }
}

/// A filter of directives whose bare words are levels is accepted and logs as it says, also
/// with a space after the comma (tracing's own parser would reject ` tripline::run=info`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_with_a_target_directive_starts_and_logs() {
    let yaml = config::simple(free_port(), "HTTP", &[loopback(free_port())], None);
    let proxy =
        Proxy::start_args(&yaml, &["--workers", "1", "--log-level", "warn, tripline::run=info"]).await;
    // `tripline::run=info`: the ready line (written as /ready turns 200, so polled for).
    crate::support::eventually("the ready line in the log", Duration::from_secs(5), || async {
        proxy.stderr().contains("tripline ready")
    })
    .await;
    let log = proxy.stderr();
    assert!(!log.contains("listening"), "tripline_proxy's info lines are below `warn`:\n{log}");
}

/// `demo --print-config` prints a config `tripline validate` accepts, with `--listen` in it.
#[test]
fn demo_print_config_validates() {
    let listen = loopback(free_port());
    let (code, out, err) = run_bounded(
        Command::new(binary()).args(["demo", "--print-config", "--listen", &listen.to_string()]),
        TIMEOUT,
    );
    assert_eq!(code, Some(0), "stderr:\n{err}");
    assert!(!out.contains("{LISTEN_") && !out.contains("{PORT_"), "placeholders left:\n{out}");
    assert!(out.contains(&format!("number: {}", listen.port())), "--listen's port in the config:\n{out}");
    let dir = unique_dir("cli-demo-config");
    let path = dir.join("demo.yaml");
    std::fs::write(&path, &out).unwrap();
    let (code, vout, verr) = run_bounded(Command::new(binary()).arg("validate").arg(&path), TIMEOUT);
    assert_eq!(code, Some(0), "validate of the printed config:\n{vout}\n{verr}\nconfig:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tripline demo --duration` runs on the given addresses, says where they are, prints a
/// summary (the client's counts and the `tripline stat` table) and exits 0 on its own. Its output goes to pipes here: no colour escapes.
#[test]
fn demo_runs_for_its_duration_and_prints_a_summary() {
    let (listen, admin) = (loopback(free_port()), loopback(free_port()));
    let (code, out, err) = run_bounded(
        Command::new(binary())
            .args(["demo", "--listen", &listen.to_string(), "--admin", &admin.to_string()])
            .args(["--rps", "20", "--duration", "5s", "--log-level", "info"])
            .env_remove("TRIPLINE_LOG"),
        TIMEOUT,
    );
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("http://{listen}/")), "the listener URL:\n{out}");
    assert!(out.contains(&format!("http://{admin}/clusters")), "the admin URL:\n{out}");
    let summary =
        out.lines().find(|l| l.starts_with("client: ")).unwrap_or_else(|| panic!("no summary:\n{out}"));
    assert!(summary.contains(" ok, "), "{summary}");
    // The `tripline stat` table under it: the header, then the cluster and its endpoints.
    assert!(out.lines().any(|l| l.starts_with("CLUSTER / ENDPOINT") && l.contains("SUCCESS")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("  steady ")), "{out}");
    assert!(err.contains("INFO"), "log lines were written:\n{err}");
    assert!(!out.contains('\x1b') && !err.contains('\x1b'), "ANSI escapes in a pipe:\n{err}");
}

/// `tripline lab`: `list` names every scenario; an unknown name is a usage error listing
/// them; a short run of one scenario drives this binary and leaves the report (the table, the
/// JSON with its series, and the plot), its exit status saying whether the checks passed.
/// Whether they pass is CI's separate lab step, run alone: here other tests share the two
/// cores, and a check on timing (ejected within 1 s) is not this test's to make.
#[test]
fn lab_lists_refuses_unknown_scenarios_and_reports_a_run() {
    let (code, out, err) = run_bounded(Command::new(binary()).args(["lab", "list"]), TIMEOUT);
    assert_eq!(code, Some(0), "{err}");
    for name in ["healthy-spike", "hard-failure", "recovery", "total-failure", "ejection-cap"] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
    let dir = unique_dir("cli-lab");
    let out_dir = dir.to_str().unwrap();
    let (code, _, err) =
        run_bounded(Command::new(binary()).args(["lab", "run", "no-such", "--out", out_dir]), TIMEOUT);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no scenario `no-such`") && err.contains("total-failure"), "{err}");

    let (code, out, err) = run_bounded(
        Command::new(binary()).args(["lab", "run", "hard-failure", "--short", "--out", out_dir]),
        Duration::from_secs(60),
    );
    assert!(matches!(code, Some(0 | 1)), "stdout:\n{out}\nstderr:\n{err}");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| hard-failure | ejected within 1 s |"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["passed"], code == Some(0), "the exit status says whether the checks passed: {json}");
    let sent = json["scenarios"][0]["series"]["client_sent_per_s"].as_array().unwrap();
    assert!(sent.iter().any(|v| v.as_f64() == Some(200.0)), "200 requests a second: {sent:?}");
    let svg = std::fs::read_to_string(dir.join("hard-failure/tripline.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 3 + 5 + 2 + 2, "a line per series");
    let _ = std::fs::remove_dir_all(&dir);
}
