//! The admin API reflects what went through the proxy.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::client::spawn_gets;
use crate::support::config;
use crate::support::proxy::metric_sum;
use crate::support::{eventually, free_port, get, Proxy, Upstream};

const CLUSTER: &str = "outbound|80||backend.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_clusters_metrics_and_config() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let tp = "    connectionPool:\n      tcp: {maxConnections: 7, connectTimeout: 2s}\n      http: {http1MaxPendingRequests: 9, http2MaxRequests: 11}\n";
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], Some(tp))).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..3 {
        assert_eq!(get(addr, "backend.local", "/").await.unwrap().status, 200);
    }

    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
    assert_eq!(proxy.admin_get("/ready").await.status, 200);

    let cluster = proxy.cluster(CLUSTER).await;
    let endpoints = cluster["endpoints"].as_array().expect("endpoints array");
    let ep = endpoints
        .iter()
        .find(|e| e["address"] == up.addr.to_string())
        .unwrap_or_else(|| panic!("endpoint {} missing in {cluster}", up.addr));
    assert_eq!(ep["healthy"], true);
    assert_eq!(ep["requests_total"], 3, "endpoint requests_total: {ep}");
    assert_eq!(cluster["requests_total"], 3, "{cluster}");
    assert_eq!(cluster["active_requests"], 0);
    let limits = &cluster["limits"];
    assert_eq!(
        (&limits["max_connections"], &limits["max_pending_requests"], &limits["max_requests"]),
        (&7.into(), &9.into(), &11.into()),
        "{cluster}"
    );

    let m = proxy.metrics().await;
    let ok = metric_sum(&m, "tripline_requests_total", &[("cluster", CLUSTER), ("code", "200")]);
    assert_eq!(ok, 3.0, "tripline_requests_total{{code=\"200\"}}\n{m}");
    // Each request's duration is observed once, for its cluster, in a bucket.
    let count = metric_sum(&m, "tripline_request_duration_seconds_count", &[("cluster", CLUSTER)]);
    let inf =
        metric_sum(&m, "tripline_request_duration_seconds_bucket", &[("cluster", CLUSTER), ("le", "+Inf")]);
    let fast =
        metric_sum(&m, "tripline_request_duration_seconds_bucket", &[("cluster", CLUSTER), ("le", "1.0")]);
    assert_eq!((count, inf, fast), (3.0, 3.0, 3.0), "three quick requests in the histogram\n{m}");
    // And per endpoint: its attempts, failures and attempt durations.
    let ep = up.addr.to_string();
    let labels = [("cluster", CLUSTER), ("endpoint", ep.as_str())];
    let per_endpoint = (
        metric_sum(&m, "tripline_endpoint_attempts_total", &labels),
        metric_sum(&m, "tripline_endpoint_failures_total", &labels),
        metric_sum(&m, "tripline_endpoint_attempt_duration_seconds_count", &labels),
        metric_sum(&m, "tripline_metrics_endpoints_omitted", &[]),
    );
    assert_eq!(per_endpoint, (3.0, 0.0, 3.0, 0.0), "per-endpoint series\n{m}");

    // The effective config: the listener where it is bound, the cluster with its endpoint and
    // the connectionPool limits as configured, and the DestinationRule as written.
    let dump = proxy.admin_get("/config_dump").await;
    assert_eq!(dump.status, 200);
    let dump = dump.json();
    let listeners = dump["plan"]["listeners"].as_array().expect("plan.listeners");
    assert!(
        listeners.iter().any(|l| l["name"] == "edge/http" && l["bind"] == addr.to_string()),
        "no listener edge/http on {addr}: {listeners:?}"
    );
    let clusters = dump["plan"]["clusters"].as_array().expect("plan.clusters");
    let c = clusters.iter().find(|c| c["name"] == CLUSTER).unwrap_or_else(|| panic!("{clusters:?}"));
    assert_eq!(c["discovery"]["Static"][0]["address"], up.addr.to_string(), "{c}");
    let pool = &c["pool"];
    assert_eq!(
        (&pool["max_connections"], &pool["max_pending_requests"], &pool["max_requests"]),
        (&7.into(), &9.into(), &11.into()),
        "{c}"
    );
    assert_eq!(pool["connect_timeout"], "2s", "durations as written in Istio config: {c}");
    let resources = dump["resources"].as_array().expect("resources");
    let dr = resources.iter().find(|r| r["kind"] == "DestinationRule").expect("the DestinationRule");
    let effective = &dr["effectivePolicy"][""]["connectionPool"];
    assert_eq!(effective["max_connections"], 7, "{dr}");
    // As written: Istio's shape, the limits under `tcp` and `http`.
    let written = &dr["spec"]["trafficPolicy"]["connectionPool"];
    assert_eq!(
        (&written["tcp"]["maxConnections"], &written["tcp"]["connectTimeout"]),
        (&7.into(), &"2s".into()),
        "{dr}"
    );
    assert_eq!(
        (&written["http"]["http1MaxPendingRequests"], &written["http"]["http2MaxRequests"]),
        (&9.into(), &11.into()),
        "{dr}"
    );
    let source = dr["source"].as_str().unwrap_or_default();
    assert!(source.contains("mesh.yaml:"), "the DestinationRule's file and line: {dr}");
}

/// While a slow upstream holds requests, the gauges in /metrics and /clusters show them (two
/// at the upstream on the two connections allowed, two waiting for one), and go back to zero
/// once they are done. Each connection serves one request (`maxRequestsPerConnection: 1`), so
/// no idle connection stays open after the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_show_requests_held_by_a_slow_upstream_and_return_to_zero() {
    // Long enough that the three reads below all fall while the first two are held, on a
    // busy machine too.
    const HOLD: Duration = Duration::from_secs(3);
    let up = Upstream::http_delayed("slow", HOLD).await;
    let port = free_port();
    let tp = "    connectionPool:\n      tcp: {maxConnections: 2, connectTimeout: 5s}\n      http: {http1MaxPendingRequests: 10, maxRequestsPerConnection: 1}\n";
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], Some(tp))).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let requests = spawn_gets(addr, "backend.local", "/held", 4);
    eventually("2 requests at the upstream and 2 waiting", Duration::from_secs(3), || async {
        up.active() == 2
            && proxy.metric("tripline_upstream_pending_requests", &[("cluster", CLUSTER)]).await == 2.0
    })
    .await;

    // (active, pending, connections): every admitted request is active, waiting or not.
    let m = proxy.metrics().await;
    let held = gauges(&m);
    assert_eq!(held, [4.0, 2.0, 2.0], "(active, pending, connections) in /metrics\n{m}");
    let cluster = proxy.cluster(CLUSTER).await;
    let shown =
        ["active_requests", "pending_requests", "connections"].map(|k| cluster[k].as_f64().unwrap_or(-1.0));
    assert_eq!(shown, held, "/clusters disagrees with /metrics: {cluster}");
    assert_eq!(cluster["endpoints"][0]["connections"], 2, "{cluster}");

    for r in requests {
        let r = r.await.unwrap().expect("held request");
        assert_eq!((r.status.as_u16(), r.reason()), (200, None));
    }
    eventually("the gauges back at zero", Duration::from_secs(3), || async {
        let cluster = proxy.cluster(CLUSTER).await;
        let shown = ["active_requests", "pending_requests", "connections"].map(|k| cluster[k].as_f64());
        gauges(&proxy.metrics().await) == [0.0; 3] && shown == [Some(0.0); 3]
    })
    .await;
    // All four took the upstream's three seconds or more: none lands in a bucket below.
    let m = proxy.metrics().await;
    let bucket = |le: &str| {
        metric_sum(&m, "tripline_request_duration_seconds_bucket", &[("cluster", CLUSTER), ("le", le)])
    };
    let count = metric_sum(&m, "tripline_request_duration_seconds_count", &[("cluster", CLUSTER)]);
    let sum = metric_sum(&m, "tripline_request_duration_seconds_sum", &[("cluster", CLUSTER)]);
    assert_eq!((count, bucket("0.5"), bucket("+Inf")), (4.0, 0.0, 4.0), "\n{m}");
    assert!(sum >= 4.0 * HOLD.as_secs_f64(), "four requests of {HOLD:?} or more sum to {sum} s");
}

/// tripline_upstream_{active_requests, pending_requests, connections} of [`CLUSTER`].
fn gauges(metrics: &str) -> [f64; 3] {
    [
        "tripline_upstream_active_requests",
        "tripline_upstream_pending_requests",
        "tripline_upstream_connections",
    ]
    .map(|name| metric_sum(metrics, name, &[("cluster", CLUSTER)]))
}

/// A Gateway on `port` routing `backend.local` to `up`.
fn edge_to_backend(port: u16, up: &Upstream) -> String {
    config::join(&[
        config::gateway("edge", port, "HTTP"),
        config::service_entry("backend.local", "HTTP", &[up.addr]),
        config::virtual_service("backend", &["backend.local"], "edge", &config::http_route("backend.local")),
    ])
}

/// `--access-log PATH`: one JSON line per request; a request Tripline refused carries its
/// reason, a proxied one its upstream and attempt count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_with_the_reason() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let yaml = edge_to_backend(port, &up);
    let log = crate::support::proxy::unique_dir("access-log").join("access.log");
    let proxy = Proxy::start_args(&yaml, &["--access-log", log.to_str().unwrap()]).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(addr, "backend.local", "/ok").await.unwrap().status, 200);
    assert_eq!(get(addr, "elsewhere.local", "/nope").await.unwrap().status, 404);
    let head = crate::support::client::send(addr, http::Method::HEAD, "elsewhere.local", "/head", &[], "")
        .await
        .unwrap();
    assert_eq!(head.status, 404);
    // Refused before routing, for header fields over --max-request-headers-kb (60 KiB).
    let big = "a".repeat(61 * 1024);
    let refused = crate::support::client::send(
        addr,
        http::Method::GET,
        "backend.local",
        "/big",
        &[("x-big", &big)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 431);
    assert_eq!(refused.reason(), Some("request-headers-too-large"));

    let parsed = crate::support::access_log_lines(&log, 4).await;
    let big = parsed.iter().find(|v| v["path"] == "/big").expect("a line for /big");
    assert_eq!(
        (&big["status"], &big["reason"]),
        (&serde_json::json!(431), &serde_json::json!("request-headers-too-large"))
    );
    assert_eq!(big["authority"], "backend.local");
    let counted =
        proxy.metric("tripline_local_responses_total", &[("reason", "request-headers-too-large")]).await;
    assert_eq!(counted, 1.0);
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

/// `--access-log-format` (Envoy's default text format, or a format string),
/// `--access-log-sample` (successes sampled, errors never), and SIGUSR1 opening the file again
/// after logrotate renamed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_text_formats_sampling_and_reopening_on_sigusr1() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let yaml = edge_to_backend(port, &up);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = crate::support::proxy::unique_dir("access-log-text");
    let log = dir.join("access.log");
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let lines_in = |path: std::path::PathBuf, n: usize| async move {
        eventually("the access log lines", Duration::from_secs(5), || {
            let path = path.clone();
            async move { std::fs::read_to_string(&path).unwrap_or_default().lines().count() >= n }
        })
        .await;
    };

    // Envoy's default format: a POST with a body, a trace id and a user agent.
    let proxy =
        Proxy::start_args(&yaml, &["--access-log", log.to_str().unwrap(), "--access-log-format", "text"])
            .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = crate::support::client::send(
        addr,
        http::Method::POST,
        "backend.local",
        "/orders?id=7",
        &[("user-agent", "e2e/1"), ("traceparent", traceparent), ("x-request-id", "rid-1")],
        "hello",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    lines_in(log.clone(), 1).await;
    let line = read(&log);
    let line = line.lines().next().unwrap();
    let (ts, rest) = line.split_once("] ").unwrap();
    assert!(ts.starts_with("[20") && ts.ends_with('Z'), "{line}");
    let fields: Vec<&str> = rest.split(' ').collect();
    assert_eq!(
        &fields[..8],
        ["\"POST", "/orders?id=7", "HTTP/1.1\"", "200", "-", "5", fields[6], fields[7]],
        "{line}"
    );
    assert!(fields[6].parse::<u64>().unwrap() > 0, "bytes sent: {line}");
    assert!(
        rest.ends_with(&format!("\"-\" \"e2e/1\" \"rid-1\" \"backend.local\" \"{}\"", up.addr)),
        "{line}"
    );
    drop(proxy);

    // A format string, and one successful request in ten thousand: only the error is logged.
    let log2 = dir.join("sampled.log");
    let format = "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)% %TRACE_ID% %UPSTREAM_CLUSTER%";
    let args = [
        "--access-log",
        log2.to_str().unwrap(),
        "--access-log-format",
        format,
        "--access-log-sample",
        "0.0001",
    ];
    let proxy = Proxy::start_args(&yaml, &args).await;
    for _ in 0..20 {
        assert_eq!(get(addr, "backend.local", "/fine").await.unwrap().status, 200);
    }
    assert_eq!(get(addr, "nowhere.local", "/missing").await.unwrap().status, 404);
    lines_in(log2.clone(), 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read(&log2), "404 NR /missing - -\n", "the error alone");

    // Rotated: renamed away, the proxy keeps writing to the renamed file until SIGUSR1.
    let rotated = dir.join("sampled.log.1");
    std::fs::rename(&log2, &rotated).unwrap();
    assert_eq!(get(addr, "nowhere.local", "/after-rename").await.unwrap().status, 404);
    lines_in(rotated.clone(), 2).await;
    let kill = std::process::Command::new("kill").args(["-USR1", &proxy.pid().to_string()]).status().unwrap();
    assert!(kill.success());
    eventually("the proxy says it opened the log again", Duration::from_secs(5), || async {
        proxy.logs().contains("access log opened again")
    })
    .await;
    assert_eq!(get(addr, "nowhere.local", "/after-reopen").await.unwrap().status, 404);
    lines_in(log2.clone(), 1).await;
    assert_eq!(read(&log2), "404 NR /after-reopen - -\n");
    assert_eq!(read(&rotated).lines().count(), 2);
}

/// Sends `request` to `addr` on a new connection and returns the answer (read until the
/// admin closes, at most 5 s).
async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A web page can reach the admin port (it listens on loopback, where the browser is): one
/// whose name rebinds to 127.0.0.1 must not read it (its `Host` is its own name), and no page
/// may force a breaker open (a cross-origin or form POST). curl, which sends neither, may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_cannot_read_the_admin_api_or_trip_breakers() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let policy = "---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: b}\nspec:\n  target: {host: backend.local}\n  circuitBreaker: {consecutiveFailures: 5}\n";
    let proxy = Proxy::start(&format!("{}{policy}", config::simple(port, "HTTP", &[up.addr], None))).await;
    let admin = proxy.admin;
    let force = "POST /breakers/force-open?cluster=outbound%7C80%7C%7Cbackend.local HTTP/1.1\r\nconnection: close\r\n";

    let rebound =
        raw(admin, "GET /config_dump HTTP/1.1\r\nhost: evil.example:15000\r\nconnection: close\r\n\r\n")
            .await;
    assert!(rebound.starts_with("HTTP/1.1 403 "), "{rebound}");
    assert!(!rebound.contains("backend.local"), "nothing of the config leaks: {rebound}");
    for (extra, status) in [
        ("host: evil.example\r\n", "403"),
        (&*format!("host: {admin}\r\norigin: http://evil.example\r\n"), "403"),
        (&*format!("host: {admin}\r\nsec-fetch-site: cross-site\r\n"), "403"),
        (
            &*format!(
                "host: {admin}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 0\r\n"
            ),
            "415",
        ),
    ] {
        let answer = raw(admin, &format!("{force}{extra}\r\n")).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{extra:?}: {answer}");
    }
    assert_eq!(proxy.cluster(CLUSTER).await["endpoints"][0]["healthy"], true);
    let b = proxy.admin_get("/breakers").await.json();
    assert_eq!(b["clusters"][0]["breaker"]["state"], "closed", "no page forced it open: {b}");

    let curl = raw(admin, &format!("{force}host: {admin}\r\nuser-agent: curl/8.5.0\r\n\r\n")).await;
    assert!(curl.starts_with("HTTP/1.1 200 "), "{curl}");
    let b = proxy.admin_get("/breakers").await.json();
    assert_eq!(b["clusters"][0]["breaker"]["state"], "forced-open", "{b}");
}

/// Half-sent admin requests cannot use up the file descriptors the data plane accepts with:
/// the admin API keeps at most 64 connections open. The proxy runs with an open-file limit of
/// 256 (soft and hard), and 300 admin connections each send half a request head and wait
/// (the head timeout, 30 s, is longer than a client call may take here: without the cap the
/// data plane's `accept` fails with "Too many open files" until it passes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_admin_requests_cannot_starve_the_data_plane() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::http("u1").await;
    let port = free_port();
    let yaml = config::simple(port, "HTTP", &[up.addr], None);
    let proxy = Proxy::start_wrapped(&yaml, &[], &["prlimit", "--nofile=256:256", "--"]).await;
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
        let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHo").await;
        held.push(s);
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for i in 0..20 {
        let r = get(addr, "backend.local", &format!("/during/{i}")).await;
        assert!(matches!(&r, Ok(r) if r.status == 200), "request {i} while the admin port is flooded: {r:?}");
    }
    assert!(!proxy.stderr().contains("Too many open files"), "{}", proxy.logs());
    drop(held);
    eventually("the admin API answers again", Duration::from_secs(10), || {
        let admin = proxy.admin;
        async move { crate::support::client::get(admin, "localhost", "/ready").await.is_ok() }
    })
    .await;
    let refused = proxy.metric("tripline_admin_connections_refused_total", &[]).await;
    assert!(refused >= 200.0, "connections past the cap were closed at once: {refused}");
}

/// An admin connection gets `--header-timeout` for its request head, as client connections do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_admin_request_is_closed_at_the_head_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::http("u1").await;
    let proxy = Proxy::start_args(
        &config::simple(free_port(), "HTTP", &[up.addr], None),
        &["--header-timeout", "1s"],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    s.write_all(b"GET /ready HTTP/1.1\r\nHo").await.unwrap();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "closed (or answered 408) at the head timeout: {read:?}");
}

/// With `--admin-token-file`, forcing a breaker open wants the token: without it or with a
/// wrong one the answer is 401 with a Bearer challenge and nothing changes; reading stays
/// open. Rewriting the file rotates the token with no restart. A token file that is missing
/// or too short stops the proxy at start, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_guards_what_changes_state_and_rotates_with_its_file() {
    use crate::support::proxy::{binary, run_bounded, unique_dir};
    let up = Upstream::http("u1").await;
    let port = free_port();
    let policy = "---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: b}\nspec:\n  target: {host: backend.local}\n  circuitBreaker: {consecutiveFailures: 5}\n";
    let yaml = format!("{}{policy}", config::simple(port, "HTTP", &[up.addr], None));
    let dir = unique_dir("admin-token");
    let token_file = dir.join("token");
    let first = "9f3c2a7e5b1d4c8a6e0f2b4d6a8c0e1f";
    std::fs::write(&token_file, format!("{first}\n")).unwrap();
    let proxy = Proxy::start_args(&yaml, &["--admin-token-file", token_file.to_str().unwrap()]).await;
    let admin = proxy.admin;
    let post = |action: &str, auth: &str| {
        format!("POST /breakers/{action}?cluster=outbound%7C80%7C%7Cbackend.local HTTP/1.1\r\nhost: {admin}\r\n{auth}connection: close\r\n\r\n")
    };
    let state =
        || async { proxy.admin_get("/breakers").await.json()["clusters"][0]["breaker"]["state"].clone() };

    for auth in
        ["", "authorization: Bearer wrong-token-wrong-token-wrong-tok\r\n", "authorization: Basic YTpi\r\n"]
    {
        let answer = raw(admin, &post("force-open", auth)).await;
        assert!(answer.starts_with("HTTP/1.1 401 "), "{auth:?}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("www-authenticate: bearer realm=\"tripline-admin\""),
            "{answer}"
        );
        assert_eq!(state().await, "closed", "{auth:?} changed nothing");
    }
    let answer = raw(admin, &post("force-open", &format!("authorization: Bearer {first}\r\n"))).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(state().await, "forced-open");

    let second = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    std::fs::write(&token_file, second).unwrap();
    let old = raw(admin, &post("reset", &format!("authorization: Bearer {first}\r\n"))).await;
    assert!(old.starts_with("HTTP/1.1 401 "), "the old token no longer works: {old}");
    assert_eq!(state().await, "forced-open");
    let new = raw(admin, &post("reset", &format!("authorization: bearer {second}\r\n"))).await;
    assert!(new.starts_with("HTTP/1.1 200 "), "{new}");
    assert_eq!(state().await, "closed");
    drop(proxy);

    for (contents, says) in [(None, "cannot read"), (Some("too-short\n"), "use at least 32")] {
        let path = dir.join("bad-token");
        let _ = std::fs::remove_file(&path);
        if let Some(c) = contents {
            std::fs::write(&path, c).unwrap();
        }
        let config = dir.join("mesh.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let admin_port = free_port().to_string();
        let (code, _, err) = run_bounded(
            std::process::Command::new(binary()).args(["run", "-c"]).arg(&config).args([
                "--admin",
                &format!("127.0.0.1:{admin_port}"),
                "--admin-token-file",
                path.to_str().unwrap(),
            ]),
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("--admin-token-file") && err.contains("bad-token") && err.contains(says),
            "{err}"
        );
    }
}

/// `/metrics` speaks OpenMetrics to a scraper that asks for it, as Prometheus does, and the
/// Prometheus text format to everyone else, with the same samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_when_asked_and_prometheus_text_otherwise() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[up.addr], None)).await;
    let admin = proxy.admin;
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let scrape = |accept: &str| {
        let accept = if accept.is_empty() { String::new() } else { format!("accept: {accept}\r\n") };
        let request = format!("GET /metrics HTTP/1.1\r\nhost: {admin}\r\n{accept}connection: close\r\n\r\n");
        async move { raw(admin, &request).await }
    };
    let om = scrape(prometheus).await;
    assert!(om.contains("content-type: application/openmetrics-text; version=1.0.0"), "{om}");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(om.contains("# TYPE tripline_local_responses counter"), "{om}");
    let text = scrape("").await;
    assert!(text.contains("content-type: text/plain; version=0.0.4"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(text.contains("# TYPE tripline_local_responses_total counter"), "{text}");
    let samples = |s: &str| s.lines().filter(|l| l.starts_with("tripline_")).count();
    assert_eq!(samples(&om), samples(&text));
}

/// `tripline stat` against a running proxy: the rows are the interval's traffic, the failing
/// endpoint's success rate 0%, the healthy one's 100%, the cluster's in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_shows_each_endpoint_s_success_rate_over_the_interval() {
    use crate::support::faulty::{Fault, Faulty};
    let good = Faulty::start("good", Fault::Healthy).await;
    let bad = Faulty::start("bad", Fault::Status(500)).await;
    let port = free_port();
    let lb = "    loadBalancer: {simple: ROUND_ROBIN}\n";
    let proxy = Proxy::start(&config::simple(port, "HTTP", &[good.addr, bad.addr], Some(lb))).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Traffic before the interval: it must not count.
    for _ in 0..10 {
        let _ = get(addr, "backend.local", "/").await;
    }
    let admin = proxy.admin.to_string();
    let stat = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::support::binary())
            .args(["stat", "--admin", &admin, "--interval", "1500ms"])
            .output()
            .unwrap()
    });
    // Traffic during it (the first snapshot is taken at once).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        let _ = get(addr, "backend.local", "/").await;
    }
    let out = stat.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let row = |name: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{text}"))
            .to_string()
    };
    assert!(row(&good.addr.to_string()).contains("100.00%"), "{text}");
    assert!(row(&bad.addr.to_string()).contains(" 0.00%"), "{text}");
    assert!(row(CLUSTER).contains("50.00%"), "round robin: half the requests failed:\n{text}");
    assert!(!text.contains('\x1b'), "no escapes into a pipe");
    // A wrong address: a clear error, exit 1.
    let out = std::process::Command::new(crate::support::binary())
        .args(["stat", "--admin", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `tripline run` there?"));
}
