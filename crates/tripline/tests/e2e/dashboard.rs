//! The admin dashboard in a real browser: Debian's Chromium, driven by playwright-core
//! (`crates/tripline/tests/dashboard/check.mjs`), loads `/` while traffic runs and an
//! endpoint's breaker is open, and must show it open, with the cluster's figures, without a
//! script error, and fit a phone's width. `.ci/run` installs Chromium and playwright-core;
//! outside CI without them the test says it was skipped (under `CI=true` that fails).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::support::config::mesh;
use crate::support::faulty::{Fault, Faulty};
use crate::support::{eventually, free_port, get, Proxy};

const CLUSTER: &str = "outbound|80||backend.local";

/// Why the browser test cannot run here, if it cannot.
fn missing(dir: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::process::Command::new("node").arg("--version").output().is_err() {
        return Some("node".into());
    }
    if !Path::new(&chromium).exists() {
        return Some(format!("Chromium ({chromium})"));
    }
    if !dir.join("node_modules/playwright-core").exists() {
        return Some(format!("playwright-core (npm install in {})", dir.display()));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_an_open_breaker_in_a_real_browser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard");
    if let Some(what) = missing(&dir) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the dashboard test needs {what} under CI=true"
        );
        // Straight to the process's stderr: the harness shows `eprintln!` only for failures.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("skipped the dashboard test: no {what}\n"),
        );
        return;
    }
    let bad = Faulty::start("bad", Fault::Status(500)).await;
    let good = Faulty::start("good", Fault::Healthy).await;
    let port = free_port();
    let policy = "  endpointCircuitBreaker: {consecutiveFailures: 3, openDuration: 5m}\n";
    let proxy = Proxy::start(&mesh(port, "HTTP", &[bad.addr, good.addr], "", None, Some(policy))).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    eventually("the failing endpoint's breaker opens", Duration::from_secs(10), || async {
        let _ = get(addr, "backend.local", "/").await;
        proxy.admin_get("/breakers").await.text().contains("\"state\": \"open\"")
    })
    .await;
    // Traffic while the page is open: its rates and percentiles have something to show.
    let traffic = tokio::spawn(async move {
        for _ in 0..2000 {
            let _ = get(addr, "backend.local", "/").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let page = format!("http://{}/", proxy.admin);
    let shot = crate::support::proxy::unique_dir("dashboard").join("dashboard.png");
    let bad_addr = bad.addr.to_string();
    let args = [
        dir.join("check.mjs").display().to_string(),
        page,
        CLUSTER.into(),
        bad_addr,
        shot.display().to_string(),
    ];
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new("node").args(&args).output().unwrap())
            .await
            .unwrap();
    traffic.abort();
    assert!(
        out.status.success(),
        "the dashboard check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "a screenshot was taken");
}
