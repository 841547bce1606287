//! Tripline's metrics as operators use them: a real Prometheus (Debian's `prometheus`, which
//! `.ci/run` installs for `promtool`) scrapes a running proxy while one endpoint fails, and
//! evaluates the shipped alert rules (`deploy/prometheus/tripline-alerts.yaml`) on the real
//! series: each of the brief's alerts goes pending for the cluster it is about, and every
//! query of the shipped Grafana dashboard runs. Outside CI without
//! `prometheus` the test says it was skipped; under `CI=true` that is a failure.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::faulty::{Fault, Faulty};
use crate::support::{config, eventually, free_port, get, Proxy};

fn cluster(host: &str) -> String {
    format!("outbound|80||{host}")
}

/// A Prometheus on loopback scraping `target` every second with the shipped rules, killed
/// when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: SocketAddr) -> Option<Prometheus> {
        if Command::new("prometheus").arg("--version").output().is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "prometheus is needed under CI=true (apt-get install prometheus)"
            );
            // Straight to the process's stderr: the harness shows `eprintln!` only for failures.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("skipped the Prometheus test: no prometheus (apt-get install prometheus)\n"),
            );
            return None;
        }
        let dir = crate::support::proxy::unique_dir("prometheus");
        let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus/tripline-alerts.yaml");
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{rules}]\nscrape_configs:\n- job_name: tripline\n  static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        Some(Prometheus { child, addr, _dir: dir })
    }

    /// The result vector of an instant query (empty while Prometheus is starting).
    async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        self.try_query(q).await.unwrap_or_default()
    }

    /// The result vector of an instant query, or Prometheus' error.
    async fn try_query(&self, q: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let r = get(self.addr, "localhost", &path).await.map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap_or_default();
        match v["status"].as_str() {
            Some("success") => Ok(v["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Err(format!("{}: {}", r.status, r.text())),
        }
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_tripline_and_the_brief_s_alerts_go_pending_while_an_endpoint_fails() {
    // `ejecting`: one of its two endpoints fails and is ejected. `failing`: its one endpoint
    // answers 500 to a third of its requests, and nothing ejects it.
    let good = Faulty::start("good", Fault::Healthy).await;
    let bad = Faulty::start("bad", Fault::Status(500)).await;
    let flaky = Faulty::start("flaky", Fault::FailPercent { percent: 33, seed: 7 }).await;
    let port = free_port();
    let yaml = config::join(&[
        config::gateway("edge", port, "HTTP"),
        config::service_entry("ejecting.local", "HTTP", &[good.addr, bad.addr]),
        config::service_entry("failing.local", "HTTP", &[flaky.addr]),
        config::virtual_service("ejecting", &["ejecting.local"], "edge", &config::http_route("ejecting.local")),
        config::virtual_service("failing", &["failing.local"], "edge", &config::http_route("failing.local")),
        config::destination_rule(
            "ejecting.local",
            "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 5m, maxEjectionPercent: 100}\n",
        ),
    ]);
    let proxy = Proxy::start_args(
        &yaml,
        &["--istio-metrics", "--workload-labels", "app=edge", "--workload-namespace", "shop"],
    )
    .await;
    let Some(prom) = Prometheus::start(proxy.admin) else { return };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (ejecting, failing) = (cluster("ejecting.local"), cluster("failing.local"));

    // Scraped before any failure, as a proxy is: its 5xx series are there at zero.
    eventually("Prometheus scrapes the proxy", Duration::from_secs(30), || async {
        prom.query(&format!("tripline_responses_total{{cluster=\"{failing}\",class=\"5xx\"}}")).await.len()
            == 1
    })
    .await;
    let traffic = tokio::spawn(async move {
        for _ in 0..3000 {
            let _ = get(addr, "ejecting.local", "/").await;
            let _ = get(addr, "failing.local", "/").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    for (alert, c) in [("TriplineEndpointsEjected", &ejecting), ("TriplineHigh5xxRate", &failing)] {
        let q = format!("ALERTS{{alertname=\"{alert}\",alertstate=\"pending\"}}");
        eventually(&format!("{alert} is pending for {c}"), Duration::from_secs(30), || async {
            prom.query(&q).await.iter().any(|s| s["metric"]["cluster"] == c.as_str())
        })
        .await;
    }
    // And what they measure, as the rules compute it.
    let ejected = prom
        .query(&format!("sum by (cluster) (tripline_outlier_ejections_active{{cluster=\"{ejecting}\"}}) / sum by (cluster) (tripline_cluster_endpoints{{cluster=\"{ejecting}\"}})"))
        .await;
    assert_eq!(ejected[0]["value"][1], "0.5", "one of two endpoints ejected: {ejected:?}");

    // `--istio-metrics`: the brief's own alert expression, on Istio's names, unchanged
    // (../shared/examples/seeds/alerts.yaml, ServiceMesh5xxRate).
    let brief = "sum(rate(istio_requests_total{response_code=~\"5..\"}[5m])) by (destination_service) / sum(rate(istio_requests_total[5m])) by (destination_service) > 0.02";
    eventually("the brief's Istio 5xx query finds failing.local", Duration::from_secs(30), || async {
        prom.query(brief).await.iter().any(|s| s["metric"]["destination_service"] == "failing.local")
    })
    .await;
    let labels =
        prom.query("istio_requests_total{destination_service=\"failing.local\",response_code=\"500\"}").await;
    let m = &labels[0]["metric"];
    assert_eq!(
        (&m["reporter"], &m["source_workload"], &m["source_workload_namespace"], &m["response_flags"]),
        (&"source".into(), &"edge".into(), &"shop".into(), &"-".into()),
        "{labels:?}"
    );
    let p99 = prom
        .query("histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{destination_service=\"failing.local\"}[1m])))")
        .await;
    assert!(
        p99[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|ms| ms > 0.0 && ms < 1000.0),
        "{p99:?}"
    );

    // Every query of the shipped Grafana dashboard runs on these series, and the panels an
    // operator looks at first show the failing cluster.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/tripline.json"))
            .unwrap(),
    )
    .unwrap();
    let mut shown = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr =
                target["expr"].as_str().unwrap().replace("$cluster", ".*").replace("$__rate_interval", "1m");
            let result = prom
                .try_query(&expr)
                .await
                .unwrap_or_else(|e| panic!("panel {}: {expr}: {e}", panel["title"]));
            if result.iter().any(|s| s["metric"]["cluster"] == failing.as_str()) {
                shown.push(panel["title"].as_str().unwrap().to_string());
            }
        }
    }
    for title in ["Requests per second", "5xx ratio", "Latency p50 / p99"] {
        assert!(
            shown.iter().any(|s| s.starts_with(title)),
            "panel {title} shows nothing for {failing}: {shown:?}"
        );
    }
    traffic.abort();
}

/// `istio_tcp_*` for a TCP route: connections and bytes each way, counted when a connection
/// closes; Tripline's own refusals carry Envoy's flag in `istio_requests_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_tcp_metrics_count_connections_and_bytes_each_way() {
    use tokio::io::AsyncWriteExt;
    let echo = crate::support::Upstream::tcp_echo("echo").await;
    let port = free_port();
    let proxy = Proxy::start_args(&crate::tcp::tcp_config(port, echo.addr, None), &["--istio-metrics"]).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"twelve bytes").await.unwrap();
    assert_eq!(crate::tcp::read_exact_timeout(&mut s, 12).await, b"twelve bytes");
    // The echo server answers the half-close with `<EOF:12>`, then closes.
    s.shutdown().await.unwrap();
    assert_eq!(crate::tcp::read_exact_timeout(&mut s, 8).await, b"<EOF:12>");
    drop(s);
    let labels = [("destination_service", "echo.local"), ("reporter", "source"), ("request_protocol", "tcp")];
    eventually("the connection is counted closed", Duration::from_secs(5), || async {
        proxy.metric("istio_tcp_connections_closed_total", &labels).await == 1.0
    })
    .await;
    assert_eq!(proxy.metric("istio_tcp_connections_opened_total", &labels).await, 1.0);
    assert_eq!(proxy.metric("istio_tcp_received_bytes_total", &labels).await, 12.0);
    assert_eq!(proxy.metric("istio_tcp_sent_bytes_total", &labels).await, 20.0);
    assert_eq!(
        proxy.metric("istio_tcp_connections_opened_total", &[("source_workload", "unknown")]).await,
        1.0,
        "no --workload-labels: unknown, as Istio says"
    );
}
