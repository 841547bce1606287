//! The admin API reflects what went through the proxy.

use std::net::SocketAddr;

use crate::support::config;
use crate::support::{free_port, get, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_clusters_metrics_and_config() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], None)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..3 {
        assert_eq!(get(addr, "backend.local", "/").await.unwrap().status, 200);
    }

    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
    assert_eq!(proxy.admin_get("/ready").await.status, 200);

    let clusters = proxy.admin_get("/clusters").await;
    assert_eq!(clusters.status, 200);
    let v = clusters.json();
    let list = v["clusters"].as_array().expect("clusters array");
    let cluster = list
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.contains("backend.local")))
        .unwrap_or_else(|| panic!("no backend.local cluster in {v}"));
    assert_eq!(cluster["name"], "outbound|80||backend.local");
    let endpoints = cluster["endpoints"].as_array().expect("endpoints array");
    let ep = endpoints
        .iter()
        .find(|e| e["address"] == up.addr.to_string())
        .unwrap_or_else(|| panic!("endpoint {} missing in {cluster}", up.addr));
    assert_eq!(ep["healthy"], true);
    assert!(ep["requests_total"].as_u64().unwrap_or(0) >= 3, "endpoint requests_total: {ep}");
    assert_eq!(cluster["active_requests"], 0);

    let m = proxy.metrics().await;
    let ok = crate::support::proxy::metric_sum(&m, "tripline_requests_total", &[("code", "200")]);
    assert!(ok >= 3.0, "tripline_requests_total{{code=\"200\"}} = {ok}\n{m}");
    assert!(m.contains("tripline_request_duration_seconds_bucket"), "no duration histogram in\n{m}");

    let dump = proxy.admin_get("/config_dump").await;
    assert_eq!(dump.status, 200);
    let text = dump.json().to_string();
    assert!(text.contains("backend.local"), "config_dump lacks the ServiceEntry host: {text}");
}

/// `--access-log PATH`: one JSON line per request; a request Tripline refused carries its
/// reason, a proxied one its upstream and attempt count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_with_the_reason() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let yaml = config::join(&[
        config::gateway("edge", port, "HTTP"),
        config::service_entry("backend.local", "HTTP", &[up.addr]),
        config::virtual_service("backend", &["backend.local"], "edge", &config::http_route("backend.local")),
    ]);
    let log = crate::support::proxy::unique_dir("access-log").join("access.log");
    let proxy = Proxy::start_args(&yaml, &["--access-log", log.to_str().unwrap()]).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(addr, "backend.local", "/ok").await.unwrap().status, 200);
    assert_eq!(get(addr, "elsewhere.local", "/nope").await.unwrap().status, 404);
    let head = crate::support::client::send(addr, http::Method::HEAD, "elsewhere.local", "/head", &[], "")
        .await
        .unwrap();
    assert_eq!(head.status, 404);

    let mut lines = Vec::new();
    crate::support::eventually("three access log lines", std::time::Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text.lines().map(str::to_owned).collect::<Vec<_>>();
        let n = lines.len();
        async move { n >= 3 }
    })
    .await;
    let parsed: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let ok = parsed.iter().find(|v| v["path"] == "/ok").expect("a line for /ok");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["reason"], serde_json::Value::Null);
    assert_eq!(ok["upstream"], up.addr.to_string());
    assert_eq!(ok["attempts"], 1);
    assert_eq!(ok["cluster"], "outbound|80||backend.local");
    assert_eq!(ok["response_end"], "complete");
    assert!(ok["bytes_sent"].as_u64().is_some_and(|n| n > 0), "{ok}");
    assert!(ok["request_id"].as_str().is_some_and(|id| id.len() == 36), "{ok}");
    let refused = parsed.iter().find(|v| v["path"] == "/nope").expect("a line for /nope");
    assert_eq!(refused["status"], 404);
    assert_eq!(refused["reason"], "no-route");
    assert_eq!(refused["response_end"], "complete");
    // A HEAD response has no body to send: not a cut, though hyper never reads it.
    let head = parsed.iter().find(|v| v["path"] == "/head").expect("a line for /head");
    assert_eq!(
        (head["response_end"].as_str(), head["bytes_sent"].as_u64()),
        (Some("complete"), Some(0)),
        "{head}"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.lines().any(|l| l == "tripline_access_log_dropped_total 0"),
        "no line was dropped, and the counter says so"
    );
}
