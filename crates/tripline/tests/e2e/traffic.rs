//! Route features through the binary (issue 18): header edits, rewrites, redirects, direct
//! responses and fault injection, as the upstream and the client see them.

use std::net::SocketAddr;
use std::time::Duration;

use crate::routing::one_service_per_upstream;
use crate::support::metrics::metric_sum;
use crate::support::{access_log_lines, get_with, Proxy, Upstream};

const HOST: &str = "shop.example.com";

/// Every edit a route can make, each checked where it lands: the path, authority and headers
/// the upstream was sent, the headers the client got back, and the answers a route gives
/// without an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_rewrites_redirects_and_direct_responses_land_where_they_should() {
    let ups = [Upstream::http("api").await, Upstream::http("regex").await];
    let port = crate::support::free_port();
    let routes = "  http:
  - match:
    - uri: {prefix: /api/}
    rewrite:
      uri: /v2/
      authority: backend.internal
    headers:
      request:
        set: {x-env: canary}
        add: {x-added: \"1\"}
        remove: [x-debug]
      response:
        set: {x-served-by: tripline}
        remove: [x-upstream-only]
    route:
    - destination: {host: api.local, port: {number: 80}}
      headers:
        request:
          set: {x-env: destination, x-dest: api}
        response:
          add: {x-dest: api}
  - match:
    - uri: {prefix: /svc/}
    rewrite:
      uriRegexRewrite: {match: \"^/svc/([^/]+)/(.*)$\", rewrite: \"/\\\\2/of/\\\\1\"}
    route:
    - destination: {host: regex.local, port: {number: 80}}
  - match:
    - uri: {prefix: /old}
    redirect: {uri: /new, redirectCode: 308}
  - match:
    - uri: {prefix: /moved}
    redirect: {authority: elsewhere.example.com, scheme: https}
  - match:
    - uri: {exact: /health}
    directResponse: {status: 200, body: {string: \"ok\\n\"}}
    headers:
      response:
        set: {cache-control: no-store}
  - match:
    - uri: {exact: /gone}
    directResponse: {status: 410, body: {bytes: Z29uZQ==}}
";
    let _proxy = Proxy::start(&one_service_per_upstream(port, &ups, "features", routes)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let r =
        get_with(addr, HOST, "/api/users?page=2", &[("x-debug", "1"), ("x-env", "prod"), ("x-added", "0")])
            .await
            .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["path"], "/v2/users?page=2", "the matched prefix is rewritten, the query kept");
    assert_eq!(seen["authority"], "backend.internal");
    assert_eq!(
        r.seen_header("x-env").as_deref(),
        Some("canary"),
        "the route's set wins over the destination's"
    );
    assert_eq!(r.seen_header("x-added").as_deref(), Some("0, 1"), "add appends");
    assert_eq!(r.seen_header("x-dest").as_deref(), Some("api"), "the destination's own edits");
    assert_eq!(r.seen_header("x-debug"), None, "removed");
    assert!(r.seen_header("x-forwarded-for").is_some(), "the proxy's own headers are still set");
    assert_eq!(r.header("x-served-by"), Some("tripline"));
    assert_eq!(r.header("x-dest"), Some("api"));

    let r = get_with(addr, HOST, "/svc/orders/list?x=1", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("regex")));
    assert_eq!(r.json()["path"], "/list/of/orders?x=1", "RE2's \\2 and \\1");

    let r = get_with(addr, HOST, "/old/cart?id=7", &[]).await.unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("http://shop.example.com/new?id=7"));
    assert_eq!((r.upstream(), r.reason()), (None, None), "answered by the route, not refused");
    let r = get_with(addr, &format!("{HOST}:{port}"), "/moved/x", &[]).await.unwrap();
    assert_eq!(r.status, 301, "Istio's default redirect code");
    assert_eq!(r.header("location"), Some("https://elsewhere.example.com/moved/x"));

    let r = get_with(addr, HOST, "/health", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok\n"));
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "response edits apply to the route's own answers"
    );
    let r = get_with(addr, HOST, "/gone", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (410, "gone"));
    assert_eq!(ups[0].requests() + ups[1].requests(), 2, "only the forwarded requests reached an upstream");
}

/// Sends `n` GETs to `path`, `batch` at a time, each on its own connection.
async fn many(addr: SocketAddr, path: &str, n: usize, batch: usize) -> Vec<crate::support::Resp> {
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(batch) {
        let mut calls = tokio::task::JoinSet::new();
        for _ in start..(start + batch).min(n) {
            let path = path.to_owned();
            calls.spawn(async move { get_with(addr, HOST, &path, &[]).await.map_err(|e| e.to_string()) });
        }
        while let Some(r) = calls.join_next().await {
            out.push(r.unwrap().unwrap());
        }
    }
    out
}

/// Within 3 sigma of `n * p` (binomial).
fn near(got: usize, n: usize, p: f64) -> bool {
    let (mean, sigma) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
    (got as f64 - mean).abs() <= 3.0 * sigma
}

/// `fault`: aborts in their share and marked, delays that add their time without eating the
/// route timeout, gRPC aborts a gRPC client can read, counted in metrics and the access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_their_share_of_requests() {
    let ups = [Upstream::http("pay").await];
    let port = crate::support::free_port();
    let routes = "  http:
  - match:
    - uri: {prefix: /abort}
    fault:
      abort: {httpStatus: 503, percentage: {value: 30}}
    route:
    - destination: {host: pay.local, port: {number: 80}}
  - match:
    - uri: {prefix: /delay}
    timeout: 300ms
    fault:
      delay: {fixedDelay: 400ms, percentage: {value: 50}}
    route:
    - destination: {host: pay.local, port: {number: 80}}
  - match:
    - uri: {prefix: /grpc}
    fault:
      abort: {grpcStatus: UNAVAILABLE}
    route:
    - destination: {host: pay.local, port: {number: 80}}
";
    let log = crate::support::proxy::unique_dir("fault-log").join("access.log");
    let yaml = one_service_per_upstream(port, &ups, "faults", routes);
    let proxy = Proxy::start_args(&yaml, &["--access-log", log.to_str().unwrap()]).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let n = 2000;
    let rs = many(addr, "/abort", n, 50).await;
    let aborted: Vec<_> = rs.iter().filter(|r| r.status == 503).collect();
    assert!(near(aborted.len(), n, 0.30), "{} of {n} aborted, expected 30%", aborted.len());
    assert!(aborted.iter().all(|r| r.reason() == Some("fault-abort") && r.upstream().is_none()));
    assert!(rs.iter().filter(|r| r.status != 503).all(|r| r.status == 200 && r.upstream() == Some("pay")));
    assert_eq!(ups[0].requests(), n - aborted.len(), "an aborted request never reaches the upstream");

    let n = 120;
    let rs = many(addr, "/delay", n, 60).await;
    assert!(rs.iter().all(|r| r.status == 200), "the 300ms route timeout starts after the 400ms delay");
    let delayed = rs.iter().filter(|r| r.elapsed >= Duration::from_millis(400)).count();
    assert!(near(delayed, n, 0.5), "{delayed} of {n} delayed, expected 50%");

    let r = get_with(addr, HOST, "/grpc", &[("content-type", "application/grpc")]).await.unwrap();
    assert_eq!(r.status, 200, "a gRPC error is a trailers-only 200");
    assert_eq!((r.header("grpc-status"), r.reason()), (Some("14"), Some("fault-abort")));

    let metrics = proxy.metrics().await;
    let counted = metric_sum(&metrics, "tripline_fault_injections_total", &[("fault", "abort")]);
    assert_eq!(counted as usize, aborted.len() + 1);
    let counted = metric_sum(&metrics, "tripline_fault_injections_total", &[("fault", "delay")]);
    assert_eq!(counted as usize, delayed);
    let lines = access_log_lines(&log, 2000 + 120 + 1).await;
    let faulted = |f: &str| lines.iter().filter(|l| l["fault"] == f).count();
    assert_eq!((faulted("abort"), faulted("delay")), (aborted.len() + 1, delayed));
}

/// `mirror` and `mirrors[]`: the mirror gets copies of its share of requests, body and all,
/// with `-shadow` on the host; the client only ever sees the primary's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_copies_of_their_share_with_the_shadow_host() {
    let ups = [Upstream::http("orders").await, Upstream::http("shadow").await];
    let port = crate::support::free_port();
    let routes = "  http:
  - match:
    - uri: {prefix: /copy}
    route:
    - destination: {host: orders.local, port: {number: 80}}
    mirror: {host: shadow.local, port: {number: 80}}
  - match:
    - uri: {prefix: /half}
    route:
    - destination: {host: orders.local, port: {number: 80}}
    mirrors:
    - destination: {host: shadow.local, port: {number: 80}}
      percentage: {value: 50}
";
    let proxy = Proxy::start(&one_service_per_upstream(port, &ups, "mirrors", routes)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (orders, shadow) = (&ups[0], &ups[1]);

    let body = vec![b'm'; 200 * 1024];
    let r = crate::support::client::send(addr, http::Method::POST, HOST, "/copy", &[], body).await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.upstream()),
        (200, Some("orders")),
        "the client gets the primary's answer"
    );
    assert_eq!(r.json()["body_len"], 200 * 1024);
    crate::support::eventually("the copy", Duration::from_secs(5), || async { shadow.requests() == 1 }).await;
    crate::support::eventually("the copy's body", Duration::from_secs(5), || async {
        shadow.state.body_bytes.load(std::sync::atomic::Ordering::SeqCst) == 200 * 1024
    })
    .await;
    assert_eq!(shadow.authorities(), [format!("{HOST}-shadow")]);

    let n = 400;
    let rs = many(addr, "/half", n, 50).await;
    assert!(rs.iter().all(|r| r.status == 200 && r.upstream() == Some("orders")));
    assert_eq!(orders.requests(), n + 1);
    let metrics = proxy.metrics().await;
    let sent = metric_sum(&metrics, "tripline_mirror_requests_total", &[("result", "sent")]) as usize - 1;
    assert!(near(sent, n, 0.5), "{sent} of {n} mirrored, expected 50%");
    crate::support::eventually("every copy", Duration::from_secs(5), || async {
        shadow.requests() == 1 + sent
    })
    .await;
}

/// A mirror that never answers: the primary's requests (with bodies) are not slowed, and the
/// copies in flight to it stay within the mirror cluster's limit, the rest dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_mirror_never_slows_the_primary_and_its_copies_are_bounded() {
    let primary = Upstream::http("primary").await;
    // Accepts connections (the kernel does, into the backlog) and never reads or answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = crate::support::free_port();
    let yaml = crate::support::config::join(&[
        crate::support::config::gateway("edge", port, "HTTP"),
        crate::support::config::service_entry("primary.local", "HTTP", &[primary.addr]),
        crate::support::config::service_entry("hang.local", "HTTP", &[hang.local_addr().unwrap()]),
        crate::support::config::service_entry("hang-body.local", "HTTP", &[hang.local_addr().unwrap()]),
        crate::support::config::destination_rule(
            "hang.local",
            "    connectionPool: {http: {http2MaxRequests: 4}}\n",
        ),
        crate::support::config::virtual_service(
            "vs",
            &["*"],
            "edge",
            "  http:
  - match: [{uri: {prefix: /post}}]
    route:
    - destination: {host: primary.local}
    mirror: {host: hang-body.local}
  - route:
    - destination: {host: primary.local}
    mirror: {host: hang.local}
",
        ),
    ]);
    let proxy = Proxy::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    for i in 0..20 {
        let r = get_with(addr, HOST, "/get", &[]).await.unwrap();
        assert_eq!(r.status, 200, "request {i}");
        assert!(r.elapsed < Duration::from_secs(2), "request {i} waited for its mirror: {:?}", r.elapsed);
    }
    let metrics = proxy.metrics().await;
    let count = |result| {
        let labels = [("cluster", "outbound|80||hang.local"), ("result", result)];
        metric_sum(&metrics, "tripline_mirror_requests_total", &labels)
    };
    assert_eq!((count("sent"), count("dropped")), (4.0, 16.0), "4 copies hang, the rest are dropped");

    // A body bigger than the copy's lag and the socket buffers: the copy is cut off, the
    // primary gets every byte.
    for _ in 0..3 {
        let body = vec![b'b'; 4 * 1024 * 1024];
        let r =
            crate::support::client::send(addr, http::Method::POST, HOST, "/post", &[], body).await.unwrap();
        assert_eq!((r.status.as_u16(), r.json()["body_len"].as_u64()), (200, Some(4 * 1024 * 1024)));
        assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);
    }
    drop(hang);
}

use crate::support::seeds_dir;

/// A brief's seed beside a file of ours (the ServiceEntries and DestinationRules for its
/// hosts), served by the binary on a mesh listener; `None` outside CI without the seeds.
pub(crate) async fn seed_with(seed: &str, ours: &str) -> Option<(Proxy, SocketAddr)> {
    let seed = seeds_dir::seeds_dir()?.join(seed);
    let dir = crate::support::proxy::unique_dir("seed");
    let extra = dir.join("hosts.yaml");
    std::fs::write(&extra, ours).unwrap();
    let port = crate::support::free_port();
    let mesh = format!("127.0.0.1:{port}");
    let proxy = Proxy::start_paths(&[seed.as_path(), extra.as_path()], &["--mesh-bind", &mesh]).await;
    Some((proxy, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// The brief's `payments-fault.yaml`: 10% of payments requests are answered 500 by the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brief_s_payments_fault_aborts_ten_percent() {
    let payments = Upstream::http("payments").await;
    let host = "payments.svc.cluster.local";
    let se = crate::support::config::service_entry(host, "HTTP", &[payments.addr]);
    let Some((_proxy, addr)) = seed_with("payments-fault.yaml", &se).await else { return };
    let n = 1000;
    let mut aborted = 0;
    for start in (0..n).step_by(50) {
        let mut calls = tokio::task::JoinSet::new();
        for _ in start..start + 50 {
            calls.spawn(async move { get_with(addr, host, "/pay", &[]).await.map_err(|e| e.to_string()) });
        }
        while let Some(r) = calls.join_next().await {
            let r = r.unwrap().unwrap();
            match r.status.as_u16() {
                500 => {
                    assert_eq!((r.reason(), r.upstream()), (Some("fault-abort"), None));
                    aborted += 1;
                }
                status => assert_eq!((status, r.upstream()), (200, Some("payments"))),
            }
        }
    }
    assert!(near(aborted, n, 0.10), "{aborted} of {n} aborted, expected 10%");
    assert_eq!(payments.requests(), n - aborted);
}

/// The brief's `order-mirror.yaml`: every request to `order` goes to v1, a copy to v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brief_s_order_mirror_copies_v1_traffic_to_v2() {
    let (v1, v2) = (Upstream::http("v1").await, Upstream::http("v2").await);
    let ours = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: order}}
spec:
  hosts: [order]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: order}}
spec:
  host: order
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
",
        v1.addr.port(),
        v2.addr.port()
    );
    let Some((_proxy, addr)) = seed_with("order-mirror.yaml", &ours).await else { return };
    for _ in 0..20 {
        let r = get_with(addr, "order", "/orders", &[]).await.unwrap();
        assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("v1")));
    }
    crate::support::eventually("20 copies at v2", Duration::from_secs(5), || async { v2.requests() == 20 })
        .await;
    assert_eq!(v1.requests(), 20);
    assert!(v2.authorities().iter().all(|a| a == "order-shadow"), "{:?}", v2.authorities());
}

/// `corsPolicy`: the proxy answers an allowed preflight itself; an actual request from an
/// allowed origin gets the CORS headers on the upstream's response; other origins get none,
/// and their preflights go on to the upstream (`FORWARD`) or are answered bare (`IGNORE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_and_allowed_origins_get_the_headers() {
    let ups = [Upstream::http("web").await];
    let port = crate::support::free_port();
    let routes = "  http:
  - match: [{uri: {prefix: /strict}}]
    corsPolicy:
      allowOrigins: [{exact: \"https://shop.example.com\"}]
      unmatchedPreflights: IGNORE
    route:
    - destination: {host: web.local, port: {number: 80}}
  - corsPolicy:
      allowOrigins: [{exact: \"https://shop.example.com\"}, {regex: \"https://.*[.]partner[.]com\"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-upstream-id]
      maxAge: 10m
      allowCredentials: true
    route:
    - destination: {host: web.local, port: {number: 80}}
";
    let _proxy = Proxy::start(&one_service_per_upstream(port, &ups, "cors", routes)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let preflight = |origin: &'static str, path: &'static str| async move {
        let headers = [("origin", origin), ("access-control-request-method", "POST")];
        crate::support::client::send(addr, http::Method::OPTIONS, HOST, path, &headers, "").await.unwrap()
    };

    let r = preflight("https://a.partner.com", "/api").await;
    assert_eq!((r.status.as_u16(), r.upstream()), (200, None), "answered by the proxy");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://a.partner.com"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("x-token"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));

    let r = get_with(addr, HOST, "/api", &[("origin", "https://shop.example.com")]).await.unwrap();
    assert_eq!(r.upstream(), Some("web"));
    assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example.com"));
    assert_eq!(r.header("access-control-expose-headers"), Some("x-upstream-id"));
    assert_eq!(r.header("vary"), Some("Origin"));

    let r = get_with(addr, HOST, "/api", &[("origin", "https://evil.example")]).await.unwrap();
    assert_eq!((r.upstream(), r.header("access-control-allow-origin")), (Some("web"), None));
    let r = preflight("https://evil.example", "/api").await;
    assert_eq!(r.upstream(), Some("web"), "FORWARD: an unmatched preflight goes to the upstream");
    let r = preflight("https://evil.example", "/strict").await;
    assert_eq!(
        (r.status.as_u16(), r.upstream(), r.header("access-control-allow-origin")),
        (200, None, None),
        "IGNORE"
    );
    assert_eq!(ups[0].requests(), 3);
}

/// A ResiliencePolicy on route `vs/<route>` with `rate_limit` (the `rateLimit` body).
fn rate_limit_policy(name: &str, route: &str, rate_limit: &str) -> String {
    format!(
        "apiVersion: tripline.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: {name}}}
spec:
  target: {{virtualService: limits, route: {route}}}
  rateLimit:
{rate_limit}"
    )
}

/// `rateLimit`: a route's bucket admits its configured rate (within 5%) whatever worker a
/// request lands on; refusals are 429 `rate-limited` with `Retry-After`; keyed descriptors
/// give each key its own bucket; shadow mode only counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_admit_the_configured_rate_across_workers() {
    let ups = [Upstream::http("api").await];
    let port = crate::support::free_port();
    let routes = "  http:
  - name: per-user
    match: [{uri: {prefix: /user}}]
    route: [{destination: {host: api.local, port: {number: 80}}}]
  - name: shadow
    match: [{uri: {prefix: /shadow}}]
    route: [{destination: {host: api.local, port: {number: 80}}}]
  - name: api
    route: [{destination: {host: api.local, port: {number: 80}}}]
";
    let yaml = crate::support::config::join(&[
        one_service_per_upstream(port, &ups, "limits", routes),
        rate_limit_policy(
            "api-limit",
            "api",
            "    tokenBucket: {maxTokens: 10, tokensPerFill: 100, fillInterval: 1s}\n    responseHeaders: true\n",
        ),
        rate_limit_policy(
            "per-user",
            "per-user",
            "    descriptors:\n    - key: {header: x-user}\n      tokenBucket: {maxTokens: 2, tokensPerFill: 1, fillInterval: 1m}\n",
        ),
        rate_limit_policy(
            "shadow",
            "shadow",
            "    tokenBucket: {maxTokens: 1, tokensPerFill: 1, fillInterval: 1m}\n    shadow: true\n",
        ),
    ]);
    let proxy = Proxy::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // About 300 requests a second for 3 s against 100 a second (burst 10), from 6 clients, each
    // on its own connection (spread over the proxy's two workers).
    let started = std::time::Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..6 {
        clients.spawn(async move {
            let mut conn = crate::support::Conn::connect(addr, crate::support::Proto::H1).await.unwrap();
            let (mut admitted, mut limited) = (0usize, 0usize);
            while started.elapsed() < Duration::from_secs(3) {
                let r = conn.get(HOST, "/api").await.unwrap();
                match r.status.as_u16() {
                    200 => admitted += 1,
                    429 => {
                        assert_eq!(r.reason(), Some("rate-limited"));
                        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                        assert!((1..=1).contains(&retry), "a token comes back within 10ms: {retry}");
                        limited += 1;
                    }
                    other => panic!("unexpected {other}: {}", r.text()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (admitted, limited)
        });
    }
    let (mut admitted, mut limited) = (0, 0);
    while let Some(r) = clients.join_next().await {
        let (a, l) = r.unwrap();
        (admitted, limited) = (admitted + a, limited + l);
    }
    let expected = 10.0 + 100.0 * started.elapsed().as_secs_f64();
    let off = (admitted as f64 - expected).abs() / expected;
    assert!(
        off <= 0.05,
        "{admitted} admitted, expected {expected:.0} ({:.1}% off); {limited} limited",
        off * 100.0
    );
    assert!(limited > admitted, "the clients asked for about 3x the rate: {limited} limited");

    let r = get_with(addr, HOST, "/api", &[]).await.unwrap();
    assert_eq!(r.header("x-ratelimit-limit"), Some("10"), "{:?}", r.headers);
    assert!(r.header("x-ratelimit-remaining").is_some() && r.header("x-ratelimit-reset").is_some());

    for (user, want) in [("ann", 200), ("ann", 200), ("ann", 429), ("bob", 200)] {
        let r = get_with(addr, HOST, "/user", &[("x-user", user)]).await.unwrap();
        assert_eq!(r.status, want, "{user}");
    }
    assert_eq!(get_with(addr, HOST, "/user", &[]).await.unwrap().status, 200, "no x-user: not limited by it");
    for _ in 0..3 {
        assert_eq!(get_with(addr, HOST, "/shadow", &[]).await.unwrap().status, 200, "shadow mode admits");
    }

    let metrics = proxy.metrics().await;
    let decisions = |policy, decision| {
        metric_sum(
            &metrics,
            "tripline_rate_limit_decisions_total",
            &[("policy", policy), ("decision", decision)],
        )
    };
    assert_eq!(decisions("api-limit", "limited") as usize, limited);
    assert_eq!(decisions("per-user", "limited"), 1.0);
    assert_eq!((decisions("shadow", "shadow_limited"), decisions("shadow", "limited")), (2.0, 0.0));
}

/// A ResiliencePolicy named `name` on route `fb/<route>` with `body` (indented two spaces).
fn route_policy(name: &str, route: &str, body: &str) -> String {
    format!(
        "apiVersion: tripline.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: {name}}}
spec:
  target: {{virtualService: fb, route: {route}}}
{body}"
    )
}

/// `fallback`: when the route's destination refuses a request (its breaker is open, it has no
/// healthy endpoint, its pool is full), the request goes to the fallback destination, or gets
/// the fallback response, marked `fallback-<cause>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_take_requests_the_destination_refuses() {
    let (flaky, spare) = (Upstream::http("flaky").await, Upstream::http("spare").await);
    let slow = Upstream::http_delayed("slow", Duration::from_millis(600)).await;
    let port = crate::support::free_port();
    let yaml = crate::support::config::join(&[
        crate::support::config::gateway("edge", port, "HTTP"),
        crate::support::config::service_entry("flaky.local", "HTTP", &[flaky.addr]),
        crate::support::config::service_entry("spare.local", "HTTP", &[spare.addr]),
        crate::support::config::service_entry("slow.local", "HTTP", &[slow.addr]),
        crate::support::config::service_entry("empty.local", "HTTP", &[]),
        crate::support::config::destination_rule("slow.local", "    connectionPool: {http: {http2MaxRequests: 1}}\n"),
        crate::support::config::virtual_service(
            "fb",
            &["*"],
            "edge",
            "  http:
  - name: breaker
    match: [{uri: {prefix: /status/}}]
    route: [{destination: {host: flaky.local}}]
    retries: {attempts: 0}
  - name: empty
    match: [{uri: {prefix: /empty}}]
    route: [{destination: {host: empty.local}}]
  - name: overflow
    route: [{destination: {host: slow.local}}]
",
        ),
        route_policy(
            "breaker",
            "breaker",
            "  circuitBreaker: {consecutiveFailures: 1, openDuration: 60s}\n  fallback: {destination: {host: spare.local}}\n",
        ),
        route_policy(
            "empty",
            "empty",
            "  fallback:\n    on: [noHealthyUpstream]\n    response: {status: 200, headers: {content-type: application/json}, body: '{\"items\": []}'}\n",
        ),
        route_policy("overflow", "overflow", "  fallback: {on: [overflow], destination: {host: spare.local}}\n"),
    ]);
    let proxy = Proxy::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let r = get_with(addr, HOST, "/status/500", &[]).await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.upstream(), r.reason()),
        (500, Some("flaky"), None),
        "the failure that opens the breaker"
    );
    let r = get_with(addr, HOST, "/status/201", &[]).await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.upstream()),
        (201, Some("spare")),
        "the open breaker sends it to the fallback"
    );
    assert_eq!(r.reason(), Some("fallback-breaker-open"));
    assert_eq!(r.json()["path"], "/status/201", "the request as the client sent it");
    assert_eq!(flaky.requests(), 1);

    let r = get_with(addr, HOST, "/empty", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "{\"items\": []}"));
    assert_eq!(
        (r.reason(), r.header("content-type")),
        (Some("fallback-no-healthy-upstream"), Some("application/json"))
    );

    let first = tokio::spawn(async move { get_with(addr, HOST, "/slow", &[]).await.unwrap() });
    crate::support::eventually("the slow request in flight", Duration::from_secs(5), || async {
        slow.active() == 1
    })
    .await;
    let r = get_with(addr, HOST, "/x", &[]).await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.upstream(), r.reason()),
        (200, Some("spare"), Some("fallback-overflow"))
    );
    let r = first.await.unwrap();
    assert_eq!((r.status.as_u16(), r.upstream(), r.reason()), (200, Some("slow"), None));

    let metrics = proxy.metrics().await;
    for cause in ["breaker-open", "no-healthy-upstream", "overflow"] {
        assert_eq!(metric_sum(&metrics, "tripline_fallbacks_total", &[("cause", cause)]), 1.0, "{cause}");
    }
}

/// A match's `port` on the mesh listener is the port the client addressed (its authority's),
/// and `sourceLabels` / `sourceNamespace` are checked against `--workload-labels` and
/// `--workload-namespace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_addressed_port_and_by_the_workload_s_labels() {
    let (a, b, c) =
        (Upstream::http("p8080").await, Upstream::http("canary").await, Upstream::http("rest").await);
    let port = crate::support::free_port();
    let mut docs: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|u| crate::support::config::service_entry(&format!("{}.local", u.id()), "HTTP", &[u.addr]))
        .collect();
    docs.push(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-routes}
spec:
  hosts: [\"*\"]
  http:
  - match: [{port: 8080}]
    route: [{destination: {host: p8080.local}}]
  - match: [{sourceLabels: {app: web, track: canary}, sourceNamespace: shop}]
    route: [{destination: {host: canary.local}}]
  - route: [{destination: {host: rest.local}}]
"
        .to_string(),
    );
    let mesh = format!("127.0.0.1:{port}");
    let start = |labels: &'static str| {
        let (yaml, mesh) = (crate::support::config::join(&docs), mesh.clone());
        async move {
            let args = ["--mesh-bind", &mesh, "--workload-labels", labels, "--workload-namespace", "shop"];
            Proxy::start_args(&yaml, &args).await
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let proxy = start("app=web,track=canary,version=v2").await;
    for (host, want) in [("orders:8080", "p8080"), ("orders", "canary"), ("orders:9090", "canary")] {
        let r = get_with(addr, host, "/", &[]).await.unwrap();
        assert_eq!(r.upstream(), Some(want), "Host: {host}");
    }
    drop(proxy);
    let _proxy = start("app=web,track=stable").await;
    let r = get_with(addr, "orders", "/", &[]).await.unwrap();
    assert_eq!(r.upstream(), Some("rest"), "another workload's requests skip the sourceLabels route");
}

/// `route[]` weights: over 2,000 requests each destination gets its share within 3 points,
/// across hosts and across subsets of one host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_splits_hold_over_two_thousand_requests() {
    let (v1, v2, other) =
        (Upstream::http("v1").await, Upstream::http("v2").await, Upstream::http("other").await);
    let port = crate::support::free_port();
    let yaml = crate::support::config::join(&[
        crate::support::config::gateway("edge", port, "HTTP"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: checkout}}
spec:
  hosts: [checkout.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: checkout}}
spec:
  host: checkout.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
",
            v1.addr.port(),
            v2.addr.port()
        ),
        crate::support::config::service_entry("other.local", "HTTP", &[other.addr]),
        crate::support::config::virtual_service(
            "split",
            &["*"],
            "edge",
            "  http:
  - route:
    - {destination: {host: checkout.local, subset: v1}, weight: 60}
    - {destination: {host: checkout.local, subset: v2}, weight: 25}
    - {destination: {host: other.local}, weight: 15}
",
        ),
    ]);
    let _proxy = Proxy::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let n = 2000;
    let rs = many(addr, "/", n, 50).await;
    for (id, share) in [("v1", 0.60), ("v2", 0.25), ("other", 0.15)] {
        let got = rs.iter().filter(|r| r.upstream() == Some(id)).count();
        let points = (got as f64 / n as f64 - share).abs() * 100.0;
        assert!(points <= 3.0, "{id}: {got} of {n}, expected {:.0}% ({points:.1} points off)", share * 100.0);
    }
    assert!(rs.iter().all(|r| r.status == 200));
}
