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
