//! The resilience engine end to end: the real binary in front of real faulty upstreams
//! (always 5xx, failing 30%, slow, refusing connections, resetting mid-response, 429 with
//! Retry-After). What a user notices: the bad endpoint is ejected after the configured count
//! and gets no traffic while ejected; it is let back through probes; clients see no more
//! errors than the policy allows; a POST that reached an upstream is never retried; a breaker
//! fails fast and closes through bounded probes; a healthy burst never trips anything.
//!
//! Intervals are short (outlier interval 1s, ejection 1s, breaker open 1s) and every loop is
//! bounded in count and time. These are smoke tests of the real binary, without timed
//! assertions beyond "not sooner than"; when things happen, to the millisecond, is checked under
//! paused time in `crates/tripline-proxy/tests/` (outlier, breakers, retries).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::support::client::{full, send};
use crate::support::config;
use crate::support::faulty::{refusing_addr, Fault, Faulty};
use crate::support::{eventually, free_port, Conn, Proto, Proxy, Resp};

const CLUSTER: &str = "outbound|80||backend.local";
/// [`CLUSTER`] as a query parameter value.
const CLUSTER_Q: &str = "outbound%7C80%7C%7Cbackend.local";
/// How long any state change may take to show (ejection, half-open, return).
const WAIT: Duration = Duration::from_secs(8);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Gateway on `port` → `backend.local` (HTTP/1.1, the given endpoints): see [`config::mesh`].
fn mesh(port: u16, endpoints: &[SocketAddr], route: &str, dr: Option<&str>, policy: Option<&str>) -> String {
    config::mesh(port, "HTTP", endpoints, route, dr, policy)
}

/// Outlier detection with short times: eject after `n` consecutive 5xx, 1s sweeps, 1s
/// base ejection, at most `max_pct`% ejected.
fn outlier(n: u32, max_pct: u32) -> String {
    format!(
        "    outlierDetection: {{consecutive5xxErrors: {n}, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: {max_pct}}}\n"
    )
}

/// `n` healthy upstreams, `g1`..`gn`.
async fn healthy(n: usize) -> Vec<Faulty> {
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        out.push(Faulty::start(&format!("g{i}"), Fault::Healthy).await);
    }
    out
}

/// One request on a fresh connection; `Err` when the client got no complete response.
async fn call(port: u16, method: Method, path: &str) -> Result<Resp, String> {
    let body = if method == Method::GET { "" } else { "payload" };
    send(addr(port), method, "backend.local", path, &[], body).await.map_err(|e| e.to_string())
}

/// POSTs over HTTP/1.1 and HTTP/2 in turn until `bad` has seen four (at least eight, at most
/// 60). Both protocols, because a body that came over HTTP/2 must be known complete once its
/// declared length was sent upstream, or it could not be replayed.
async fn posts_until_four_reach(port: u16, bad: &Faulty) -> Vec<Result<Resp, String>> {
    let mut posts = Vec::new();
    while (bad.count_method("POST") < 4 || posts.len() < 8) && posts.len() < 60 {
        let path = format!("/pay/{}", posts.len());
        if posts.len() % 2 == 0 {
            posts.push(call(port, Method::POST, &path).await);
        } else {
            posts.push(call_h2(port, Method::POST, &path).await);
        }
    }
    posts
}

/// `call` over HTTP/2 (h2c).
async fn call_h2(port: u16, method: Method, path: &str) -> Result<Resp, String> {
    let mut conn = Conn::connect(addr(port), Proto::H2).await.map_err(|e| e.to_string())?;
    let req = conn.request(method, "backend.local", path).body(full("payload")).map_err(|e| e.to_string())?;
    conn.call(req).await.map_err(|e| e.to_string())
}

async fn get(port: u16, path: &str) -> Result<Resp, String> {
    call(port, Method::GET, path).await
}

/// `n` requests at once, each on its own connection.
async fn concurrent(port: u16, n: usize, method: Method) -> Vec<Result<Resp, String>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let m = method.clone();
            tokio::spawn(async move { call(port, m, &format!("/c/{i}")).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// `total` requests with at most `in_flight` at once.
async fn bounded_burst(port: u16, total: usize, in_flight: usize) -> Vec<Result<Resp, String>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let tasks: Vec<_> = (0..total)
        .map(|i| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.unwrap();
                get(port, &format!("/burst/{i}")).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(total);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn describe(r: &Result<Resp, String>) -> String {
    match r {
        Ok(r) => format!("{} {:?} from {:?} in {:?}", r.status, r.reason(), r.upstream(), r.elapsed),
        Err(e) => format!("error: {e}"),
    }
}

fn not_ok(rs: &[Result<Resp, String>]) -> Vec<String> {
    rs.iter().filter(|r| !matches!(r, Ok(r) if r.status == 200)).map(describe).collect()
}

/// The endpoint `ep` of [`CLUSTER`] in `/clusters`.
async fn endpoint(proxy: &Proxy, ep: SocketAddr) -> Value {
    let v = proxy.admin_get("/clusters").await.json();
    let cluster = v["clusters"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == CLUSTER))
        .unwrap_or_else(|| panic!("no cluster {CLUSTER} in /clusters: {v}"))
        .clone();
    cluster["endpoints"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["address"] == ep.to_string()))
        .unwrap_or_else(|| panic!("no endpoint {ep} in {cluster}"))
        .clone()
}

/// `"healthy"`, `"ejected"` or `"probing"` for `ep` in `/clusters`.
async fn outlier_state(proxy: &Proxy, ep: SocketAddr) -> String {
    endpoint(proxy, ep).await["outlier"].as_str().unwrap_or("<missing>").to_owned()
}

/// [`CLUSTER`] in `/breakers`.
async fn breakers(proxy: &Proxy) -> Value {
    let r = proxy.admin_get("/breakers").await;
    assert_eq!(r.status, 200, "GET /breakers: {}\n{}", r.text(), proxy.logs());
    let v = r.json();
    v["clusters"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["cluster"] == CLUSTER))
        .unwrap_or_else(|| panic!("no cluster {CLUSTER} in /breakers: {v}"))
        .clone()
}

async fn breaker_state(proxy: &Proxy) -> String {
    breakers(proxy).await["breaker"]["state"].as_str().unwrap_or("<none>").to_owned()
}

/// Sends GETs one after another until `done` holds (checked after each), at most `max`
/// requests and [`WAIT`]; returns every response. Panics if `done` never holds.
async fn get_until<F, Fut>(
    proxy: &Proxy,
    port: u16,
    what: &str,
    max: usize,
    mut done: F,
) -> Vec<Result<Resp, String>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < max && start.elapsed() < WAIT {
        out.push(get(port, &format!("/seq/{}", out.len())).await);
        if done().await {
            return out;
        }
    }
    panic!(
        "{what}: not reached after {} requests in {:?}; responses: {:?}\n{}",
        out.len(),
        start.elapsed(),
        out.iter().map(describe).collect::<Vec<_>>(),
        proxy.logs()
    );
}

/// 1. An always-500 endpoint among three healthy ones is ejected after exactly 3 failures,
/// and once fixed is probed back into rotation. With `retryOn: 5xx`, no client ever sees an
/// error. (A smoke test of the real binary; that nothing reaches it while ejected, and that
/// exactly one probe does when the ejection is over, to the millisecond, is
/// `crates/tripline-proxy/tests/outlier.rs`, under paused time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_500_endpoint_is_ejected_then_probed_back() {
    let good = healthy(3).await;
    let bad = Faulty::start("bad", Fault::Status(500)).await;
    let eps = [good[0].addr, good[1].addr, good[2].addr, bad.addr];
    let port = free_port();
    let route = "    retries: {attempts: 2, retryOn: 5xx}\n";
    let proxy = Proxy::start(&mesh(port, &eps, route, Some(&outlier(3, 50)), None)).await;
    let mut all = Vec::new();

    // Ejected after exactly 3 failures.
    let rs = get_until(&proxy, port, "bad endpoint ejected", 200, || async {
        outlier_state(&proxy, bad.addr).await == "ejected"
    })
    .await;
    all.extend(rs);
    assert_eq!(bad.requests(), 3, "consecutive5xxErrors: 3 but the endpoint got {} requests", bad.requests());
    assert_eq!(endpoint(&proxy, bad.addr).await["healthy"], false);
    let ejections = proxy.metric("tripline_outlier_ejections_total", &[("cluster", CLUSTER)]).await;
    assert!(ejections >= 1.0, "tripline_outlier_ejections_total = {ejections}\n{}", proxy.metrics().await);
    let ev = breakers(&proxy).await;
    let events = ev["outlier"]["events"].to_string();
    assert!(events.contains("consecutive-5xx"), "no consecutive-5xx ejection event in /breakers: {ev}");

    // Fixed: a probe succeeds and it is back in rotation.
    bad.set(Fault::Healthy);
    let start = Instant::now();
    while outlier_state(&proxy, bad.addr).await != "healthy" && start.elapsed() < WAIT {
        all.extend(concurrent(port, 4, Method::GET).await);
    }
    assert_eq!(
        outlier_state(&proxy, bad.addr).await,
        "healthy",
        "not let back after it was fixed\n{}",
        proxy.logs()
    );
    let before = bad.requests();
    all.extend(concurrent(port, 40, Method::GET).await);
    assert!(bad.requests() >= before + 4, "returned endpoint got {} of 40 requests", bad.requests() - before);
    assert_eq!(not_ok(&all), Vec::<String>::new(), "clients saw errors despite retries");
}

/// An endpoint failing 30% of the time (seeded) among three healthy ones: with retries on
/// 5xx (to another endpoint), no client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_failing_30_percent_is_hidden_by_retries() {
    let good = healthy(3).await;
    let flaky = Faulty::start("flaky", Fault::FailPercent { percent: 30, seed: 7 }).await;
    let eps = [good[0].addr, good[1].addr, good[2].addr, flaky.addr];
    let port = free_port();
    let route = "    retries: {attempts: 2, retryOn: 5xx}\n";
    // Ejection is not what this test is about: a threshold of 20 consecutive failures keeps the
    // flaky endpoint in rotation (3 in a row happens at 30% and would eject it for the rest of
    // this short test, depending on arrival order), so every one of its failures must be hidden
    // by a retry.
    let proxy = Proxy::start(&mesh(port, &eps, route, Some(&outlier(20, 50)), None)).await;
    let mut all = Vec::new();
    for _ in 0..10 {
        all.extend(concurrent(port, 10, Method::GET).await);
    }
    assert!(flaky.requests() >= 10, "the flaky endpoint got only {} requests", flaky.requests());
    assert_eq!(not_ok(&all), Vec::<String>::new());
    let attempted =
        proxy.metric("tripline_retries_total", &[("cluster", CLUSTER), ("result", "attempted")]).await;
    let succeeded =
        proxy.metric("tripline_retries_total", &[("cluster", CLUSTER), ("result", "succeeded")]).await;
    assert!(attempted >= 1.0 && succeeded >= 1.0, "retries attempted {attempted}, succeeded {succeeded}");
}

/// 2. A closed port among two healthy endpoints: connect failures are retried on another
/// endpoint (Istio's default retry policy covers connect-failure), so clients see 200; with
/// `splitExternalLocalOriginErrors` the endpoint is ejected after 2 local-origin failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_elsewhere_then_ejected() {
    let good = healthy(2).await;
    let dead = refusing_addr();
    let port = free_port();
    let dr = "    outlierDetection: {splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2, consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}\n";
    let proxy = Proxy::start(&mesh(port, &[good[0].addr, good[1].addr, dead], "", Some(dr), None)).await;
    let rs = get_until(&proxy, port, "refusing endpoint ejected", 100, || async {
        outlier_state(&proxy, dead).await == "ejected"
    })
    .await;
    assert_eq!(not_ok(&rs), Vec::<String>::new(), "connect failures reached clients");
    let b = breakers(&proxy).await;
    let events = b["outlier"]["events"].as_array().cloned().unwrap_or_default();
    let ejection = events
        .iter()
        .find(|e| e["to"] == "ejected")
        .unwrap_or_else(|| panic!("no ejection event in /breakers: {b}"));
    assert_eq!(ejection["endpoint"], dead.to_string(), "{b}");
    assert_eq!(ejection["detector"], "consecutive-local-origin", "{b}");
    assert!(
        ejection["evidence"].as_str().unwrap_or("").starts_with("2 consecutive"),
        "evidence: {}",
        ejection["evidence"]
    );
    let retried =
        proxy.metric("tripline_retries_total", &[("cluster", CLUSTER), ("result", "attempted")]).await;
    assert!(retried >= 2.0, "2 connect failures but {retried} retries");
    // Each client request reached exactly one healthy upstream.
    assert_eq!(good[0].requests() + good[1].requests(), rs.len(), "a request was duplicated or lost");
}

/// 3a. A POST answered 503 by the upstream (over HTTP/1.1 or HTTP/2) is not retried (Istio's default policy retries
/// 503, but the POST was sent): the upstream sees each POST once, the client gets the 503.
/// A GET to the same 503 endpoint is retried on the other one, with `x-tripline-attempt: 2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_that_reached_an_upstream_is_never_retried_but_get_is() {
    let bad = Faulty::start("bad", Fault::Status(503)).await;
    let good = Faulty::start("good", Fault::Healthy).await;
    let port = free_port();
    let _proxy = Proxy::start(&mesh(port, &[bad.addr, good.addr], "", None, None)).await;

    let posts = posts_until_four_reach(port, &bad).await;
    let to_bad = bad.count_method("POST");
    assert!(to_bad >= 3, "the 503 endpoint got only {to_bad} of {} POSTs", posts.len());
    assert_eq!(to_bad + good.count_method("POST"), posts.len(), "a POST reached the upstreams twice");
    let all_first: Vec<u32> = bad.seen().iter().chain(good.seen().iter()).map(|s| s.attempt).collect();
    assert!(all_first.iter().all(|&a| a == 1), "POST attempts seen upstream: {all_first:?}");
    let client_503 = posts.iter().filter(|r| matches!(r, Ok(r) if r.status == 503)).count();
    assert_eq!(client_503, to_bad, "{:?}", posts.iter().map(describe).collect::<Vec<_>>());
    for r in posts.iter().flatten().filter(|r| r.status == 503) {
        assert_eq!(r.upstream(), Some("bad"), "the client must get the upstream's own 503");
    }

    let mut gets = Vec::new();
    while bad.count_method("GET") < 3 && gets.len() < 60 {
        gets.push(get(port, &format!("/read/{}", gets.len())).await);
    }
    let bad_gets = bad.count_method("GET");
    assert!(bad_gets >= 3, "the 503 endpoint got only {bad_gets} GETs");
    assert_eq!(not_ok(&gets), Vec::<String>::new(), "GETs are retried on the healthy endpoint");
    let second: Vec<_> = good.seen().into_iter().filter(|s| s.method == "GET" && s.attempt == 2).collect();
    assert_eq!(second.len(), bad_gets, "each GET answered 503 is retried once, on the other endpoint");
    let retried = gets.iter().flatten().filter(|r| r.json()["attempt"] == 2).count();
    assert_eq!(retried, bad_gets);
}

/// 3b. A POST whose connection was refused never reached an upstream, so it is retried on
/// another endpoint: each POST reaches the healthy endpoint exactly once, some on attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_to_a_refused_connection_is_retried_on_another_endpoint() {
    let good = Faulty::start("good", Fault::Healthy).await;
    let dead = refusing_addr();
    let port = free_port();
    let _proxy = Proxy::start(&mesh(port, &[dead, good.addr], "", None, None)).await;
    let mut posts = Vec::new();
    let retried = |g: &Faulty| g.seen().iter().filter(|s| s.attempt == 2).count();
    while retried(&good) < 3 && posts.len() < 60 {
        posts.push(call(port, Method::POST, &format!("/pay/{}", posts.len())).await);
    }
    assert!(retried(&good) >= 3, "no POST was retried after a refused connection");
    assert_eq!(not_ok(&posts), Vec::<String>::new());
    assert_eq!(good.count_method("POST"), posts.len(), "each POST reaches the upstream exactly once");
}

/// 4. Destination breaker: 3 consecutive 500s open it; then requests are refused with 503
/// `breaker-open` and Retry-After, without reaching the upstream; once the upstream has
/// recovered, the breaker closes through its half-open probes, and `/breakers` shows the
/// history with its evidence. (A smoke test of the real binary; the open duration to the
/// millisecond and `maxProbes` at once are `crates/tripline-proxy/tests/breakers.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_breaker_opens_fails_fast_and_closes_through_probes() {
    let up = Faulty::start("u1", Fault::Status(500)).await;
    let port = free_port();
    let policy = "  circuitBreaker:\n    consecutiveFailures: 3\n    failureRatio: {enabled: false}\n    openDuration: 1s\n    openJitter: 0\n    halfOpen: {maxProbes: 2, successRatio: 1.0, probeTimeout: 3s}\n";
    let route = "    retries: {attempts: 0}\n";
    let proxy = Proxy::start(&mesh(port, &[up.addr], route, None, Some(policy))).await;

    for i in 0..3 {
        let r = get(port, &format!("/fail/{i}")).await.unwrap();
        assert_eq!(r.status, 500);
    }
    let r = get(port, "/refused").await.unwrap();
    assert_eq!((r.status.as_u16(), r.reason()), (503, Some("breaker-open")), "{:?}", r.headers);
    let retry_after: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after} for a 1s open duration");
    let refused = concurrent(port, 10, Method::GET).await;
    for r in &refused {
        assert!(matches!(r, Ok(r) if r.reason() == Some("breaker-open")), "{}", describe(r));
    }
    assert_eq!(up.requests(), 3, "an open breaker let requests through");
    let b = breakers(&proxy).await;
    assert_eq!(b["breaker"]["state"], "open", "{b}");
    let opening = b["breaker"]["history"]
        .as_array()
        .and_then(|h| h.iter().find(|t| t["to"] == "open").cloned())
        .unwrap_or_else(|| panic!("no transition to open in {b}"));
    assert_eq!(opening["reason"], "consecutive-failures");
    assert!(opening["evidence"].as_str().unwrap_or("").contains("3 consecutive"), "evidence {opening}");
    let counted = proxy.metric("tripline_local_responses_total", &[("reason", "breaker-open")]).await;
    assert!(counted >= 11.0, "tripline_local_responses_total{{reason=breaker-open}} = {counted}");

    // Recovered: half-open after the open duration, the probes succeed and it closes.
    up.set(Fault::Healthy);
    eventually("half-open after the open duration", WAIT, || async {
        breaker_state(&proxy).await == "half-open"
    })
    .await;
    get_until(&proxy, port, "closed after the probes succeeded", 20, || async {
        breaker_state(&proxy).await == "closed"
    })
    .await;
    let b = breakers(&proxy).await;
    let closing = b["breaker"]["history"]
        .as_array()
        .and_then(|h| h.iter().find(|t| t["to"] == "closed").cloned())
        .unwrap_or_else(|| panic!("no transition to closed in {b}"));
    assert_eq!(closing["reason"], "probes-succeeded", "{b}");
    assert_eq!(not_ok(&concurrent(port, 10, Method::GET).await), Vec::<String>::new());
    let trips =
        proxy.metric("tripline_breaker_transitions_total", &[("cluster", CLUSTER), ("to", "open")]).await;
    assert_eq!(trips, 1.0, "tripline_breaker_transitions_total{{to=open}}");
}

/// 5. A healthy cluster with a breaker, endpoint breakers and outlier detection, under a burst
/// 10 times its normal concurrency: no refusal, no trip, no ejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_cluster_under_a_10x_burst_never_trips() {
    let ups = [
        Faulty::start("u1", Fault::Slow(Duration::from_millis(5))).await,
        Faulty::start("u2", Fault::Slow(Duration::from_millis(5))).await,
        Faulty::start("u3", Fault::Slow(Duration::from_millis(5))).await,
    ];
    let eps: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let port = free_port();
    let breaker = "consecutiveFailures: 3\n    failureRatio: {threshold: 0.1, minimumRequests: 20}\n    slowCalls: {duration: 1s, threshold: 0.5, minimumRequests: 20}\n    window: 10s\n    openDuration: 1s\n";
    let policy = format!("  circuitBreaker:\n    {breaker}  endpointCircuitBreaker:\n    {breaker}");
    let proxy = Proxy::start(&mesh(port, &eps, "", Some(&outlier(3, 50)), Some(&policy))).await;

    let normal = bounded_burst(port, 50, 5).await;
    let burst = bounded_burst(port, 500, 50).await;
    assert_eq!(not_ok(&normal), Vec::<String>::new());
    assert_eq!(not_ok(&burst), Vec::<String>::new(), "the healthy burst saw refusals");
    let max = ups.iter().map(|u| u.max_active()).sum::<usize>();
    assert!(max >= 10, "the burst never reached the upstreams concurrently ({max} at most)");

    let b = breakers(&proxy).await;
    assert_eq!(b["breaker"]["state"], "closed", "{b}");
    assert_eq!(b["breaker"]["history"].as_array().map(Vec::len), Some(0), "{b}");
    for ep in b["endpoints"].as_array().unwrap() {
        assert_eq!(ep["breaker"]["state"], "closed", "{ep}");
        assert_eq!(ep["outlier"]["health"], "healthy", "{ep}");
    }
    let m = proxy.metrics().await;
    use crate::support::proxy::metric_sum;
    assert_eq!(metric_sum(&m, "tripline_breaker_transitions_total", &[]), 0.0);
    assert_eq!(metric_sum(&m, "tripline_outlier_ejections_total", &[]), 0.0);
    assert_eq!(metric_sum(&m, "tripline_local_responses_total", &[]), 0.0);
}

/// 6. Retry budget: 40 concurrent requests to endpoints that all answer 503 (slowly), with
/// `attempts: 2` but a budget of 1 retry in flight: most retries are refused by the budget and
/// the upstreams see far fewer than the 120 requests a retry storm would send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_stops_a_retry_storm() {
    let fault = Fault::SlowStatus { status: 503, delay: Duration::from_millis(200) };
    let ups = [Faulty::start("u1", fault).await, Faulty::start("u2", fault).await];
    let port = free_port();
    let dr = "    retryBudget: {percent: {value: 1}, minRetryConcurrency: 1}\n";
    let route = "    retries: {attempts: 2, retryOn: 5xx}\n";
    let proxy = Proxy::start(&mesh(port, &[ups[0].addr, ups[1].addr], route, Some(dr), None)).await;
    let rs = concurrent(port, 40, Method::GET).await;
    for r in &rs {
        assert!(matches!(r, Ok(r) if r.status == 503 && r.upstream().is_some()), "{}", describe(r));
    }
    let refused =
        proxy.metric("tripline_retries_total", &[("cluster", CLUSTER), ("result", "refused_budget")]).await;
    let attempted =
        proxy.metric("tripline_retries_total", &[("cluster", CLUSTER), ("result", "attempted")]).await;
    let total = ups[0].requests() + ups[1].requests();
    assert!(refused > 0.0, "no retry refused by the budget ({attempted} attempted)");
    assert!(total < 80, "upstreams saw {total} requests for 40 client requests");
    assert_eq!(total as f64, 40.0 + attempted, "upstream requests = requests + retries attempted");
}

/// 7a. 429 is rate limiting, not failure: many 429s neither eject the endpoint nor open the
/// breaker, and the client gets the upstream's 429 with its Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_429_is_not_a_failure() {
    let up = Faulty::start("limited", Fault::RateLimited { retry_after_secs: 1 }).await;
    let port = free_port();
    let dr = "    outlierDetection: {consecutive5xxErrors: 2, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}\n";
    let policy = "  circuitBreaker: {consecutiveFailures: 2, openDuration: 1s}\n";
    let proxy = Proxy::start(&mesh(port, &[up.addr], "", Some(dr), Some(policy))).await;
    for i in 0..8 {
        let r = get(port, &format!("/limited/{i}")).await.unwrap();
        assert_eq!(r.status, 429, "request {i}: {:?} {:?}", r.reason(), r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.upstream(), Some("limited"));
    }
    assert_eq!(up.requests(), 8, "429 is not retried by default and nothing is refused");
    assert_eq!(outlier_state(&proxy, up.addr).await, "healthy");
    assert_eq!(breaker_state(&proxy).await, "closed");
}

/// 7b. With `retryOn: retriable-status-codes,429`, the retry of a 429 goes to the other
/// endpoint at once: the Retry-After (5 s) was the first endpoint's, which gets nothing more
/// meanwhile. (The exact times, and the wait when no other endpoint is left, are
/// `crates/tripline-proxy/tests/retries.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_429_goes_elsewhere_and_the_endpoint_is_left_alone() {
    let limited = Faulty::start("limited", Fault::RateLimited { retry_after_secs: 5 }).await;
    let good = Faulty::start("good", Fault::Healthy).await;
    let port = free_port();
    let route = "    retries: {attempts: 1, retryOn: \"retriable-status-codes,429\"}\n";
    let _proxy = Proxy::start(&mesh(port, &[limited.addr, good.addr], route, None, None)).await;
    let mut rs = Vec::new();
    while limited.requests() == 0 && rs.len() < 20 {
        rs.push(get(port, &format!("/r/{}", rs.len())).await);
    }
    assert_eq!(limited.requests(), 1, "the rate-limited endpoint got no request");
    let last = rs.last().unwrap().as_ref().expect("a response");
    assert_eq!(last.status, 200, "{}", describe(&rs[rs.len() - 1]));
    assert_eq!(last.json()["attempt"], 2);
    let first = limited.seen()[0].at;
    let retry = good.seen().iter().find(|s| s.attempt == 2).map(|s| s.at).expect("the retry");
    let waited = retry.duration_since(first);
    assert!(waited < Duration::from_secs(1), "retried {waited:?} after a 429 with Retry-After: 5");
    for i in 0..10 {
        let r = get(port, &format!("/after/{i}")).await.unwrap();
        assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("good")), "request {i} after the 429");
    }
    assert_eq!(limited.requests(), 1, "the endpoint that asked for 5 s got nothing more");
}

/// 8a. An endpoint resetting mid-response: the response head was already forwarded, so those
/// clients see a broken response; after 2 of them (consecutive5xxErrors: 2) it is ejected and
/// nobody else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_response_endpoint_is_ejected_after_the_configured_count() {
    let good = healthy(2).await;
    let bad = Faulty::start("reset", Fault::ResetMidResponse).await;
    let port = free_port();
    let dr = "    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}\n";
    let proxy = Proxy::start(&mesh(port, &[good[0].addr, good[1].addr, bad.addr], "", Some(dr), None)).await;
    let mut all = Vec::new();
    for i in 0..40 {
        let r = get(port, &format!("/r/{i}")).await;
        let broken = !matches!(&r, Ok(r) if r.status == 200);
        all.push(r);
        if broken {
            // Let the proxy record the broken attempt before the next request.
            eventually("the broken attempt recorded", Duration::from_secs(2), || async {
                endpoint(&proxy, bad.addr).await["active_requests"] == 0
            })
            .await;
        }
    }
    let broken = not_ok(&all);
    assert_eq!(broken.len(), 2, "clients that saw a broken response: {broken:?}");
    assert_eq!(bad.requests(), 2);
    assert_eq!(outlier_state(&proxy, bad.addr).await, "ejected");
}

/// 8b. A slow endpoint (2s) with `perTryTimeout: 200ms`: the attempt is abandoned and retried
/// on the fast endpoint, so the client gets the fast one's 200. (When, to the millisecond:
/// `crates/tripline-proxy/tests/retries.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoint_is_abandoned_at_per_try_timeout_and_retried() {
    let slow = Faulty::start("slow", Fault::Slow(Duration::from_secs(2))).await;
    let fast = Faulty::start("fast", Fault::Healthy).await;
    let port = free_port();
    let route = "    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: \"5xx,reset\"}\n";
    let _proxy = Proxy::start(&mesh(port, &[slow.addr, fast.addr], route, None, None)).await;
    let mut rs = Vec::new();
    while slow.requests() < 2 && rs.len() < 30 {
        rs.push(get(port, &format!("/s/{}", rs.len())).await);
    }
    assert!(slow.requests() >= 2, "the slow endpoint got {} requests", slow.requests());
    assert_eq!(not_ok(&rs), Vec::<String>::new());
    let retried: Vec<&Resp> = rs.iter().flatten().filter(|r| r.json()["attempt"] == 2).collect();
    assert_eq!(retried.len(), slow.requests());
    for r in retried {
        assert_eq!(r.upstream(), Some("fast"));
        assert!(r.elapsed >= Duration::from_millis(200), "retried request took {:?}", r.elapsed);
    }
}

/// 8c. Only the slow endpoint: every attempt hits the per-try timeout and the client gets
/// 504 `upstream-timeout`, not before attempts × perTryTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_on_the_last_attempt_is_504_upstream_timeout() {
    let slow = Faulty::start("slow", Fault::Slow(Duration::from_secs(2))).await;
    let port = free_port();
    let route = "    timeout: 5s\n    retries: {attempts: 1, perTryTimeout: 200ms, retryOn: \"5xx,reset\"}\n";
    let proxy = Proxy::start(&mesh(port, &[slow.addr], route, None, None)).await;
    let r = get(port, "/slow").await.expect("a response");
    assert_eq!((r.status.as_u16(), r.reason()), (504, Some("upstream-timeout")), "{}", r.text());
    assert!(r.elapsed >= Duration::from_millis(400), "2 tries of 200ms answered after {:?}", r.elapsed);
    assert_eq!(slow.requests(), 2);
    let counted = proxy.metric("tripline_local_responses_total", &[("reason", "upstream-timeout")]).await;
    assert!(counted >= 1.0);
}

/// 9. The operator's levers: force-open refuses with 503 `breaker-open` without reaching the
/// upstream; reset lets traffic flow; force-closed keeps a failing destination open to
/// traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_force_open_force_closed_and_reset() {
    let up = Faulty::start("u1", Fault::Healthy).await;
    let port = free_port();
    let policy = "  circuitBreaker: {consecutiveFailures: 2, openDuration: 1s}\n";
    let route = "    retries: {attempts: 0}\n";
    let proxy = Proxy::start(&mesh(port, &[up.addr], route, None, Some(policy))).await;
    assert_eq!(get(port, "/before").await.unwrap().status, 200);

    let r = proxy.admin_post(&format!("/breakers/force-open?cluster={CLUSTER_Q}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(port, "/forced").await.unwrap();
    assert_eq!((r.status.as_u16(), r.reason()), (503, Some("breaker-open")));
    assert!(r.header("retry-after").is_some(), "no Retry-After on breaker-open");
    assert_eq!(up.requests(), 1, "a forced-open breaker let a request through");
    assert_eq!(breaker_state(&proxy).await, "forced-open");
    let b = breakers(&proxy).await;
    let forced =
        b["breaker"]["history"].as_array().and_then(|h| h.iter().find(|t| t["to"] == "forced-open").cloned());
    assert_eq!(forced.map(|t| t["reason"].clone()), Some(Value::from("forced")), "{b}");

    let r = proxy.admin_post(&format!("/breakers/reset?cluster={CLUSTER_Q}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(breaker_state(&proxy).await, "closed");
    assert_eq!(get(port, "/after-reset").await.unwrap().status, 200);

    // Forced closed: failures do not open it.
    let r = proxy.admin_post(&format!("/breakers/force-closed?cluster={CLUSTER_Q}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    up.set(Fault::Status(500));
    for i in 0..5 {
        let r = get(port, &format!("/failing/{i}")).await.unwrap();
        assert_eq!((r.status.as_u16(), r.upstream()), (500, Some("u1")));
    }
    assert_eq!(breaker_state(&proxy).await, "forced-closed");

    // Unknown clusters are a clear 400, not a silent no-op.
    let r = proxy.admin_post("/breakers/force-open?cluster=nope").await;
    assert_eq!(r.status, 400, "{}", r.text());
}

/// 3c. The opt-in: a ResiliencePolicy with `retries.retryNonIdempotent: true` lets a POST
/// answered 503 be retried on the other endpoint (the control for 3a: the same setup, one
/// line of policy apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_only_when_the_policy_opts_in() {
    let bad = Faulty::start("bad", Fault::Status(503)).await;
    let good = Faulty::start("good", Fault::Healthy).await;
    let port = free_port();
    let policy = "  retries: {retryNonIdempotent: true}\n";
    let _proxy = Proxy::start(&mesh(port, &[bad.addr, good.addr], "", None, Some(policy))).await;
    let posts = posts_until_four_reach(port, &bad).await;
    let to_bad = bad.count_method("POST");
    assert!(to_bad >= 3, "the 503 endpoint got only {to_bad} POSTs");
    assert_eq!(not_ok(&posts), Vec::<String>::new(), "opted-in POSTs are retried on the healthy endpoint");
    let second = good.seen().iter().filter(|s| s.method == "POST" && s.attempt == 2).count();
    assert_eq!(second, to_bad);
}

/// A ResiliencePolicy that targets a route: the route's breaker sees every request of that
/// route, opens after its failures, refuses with breaker-open without reaching the upstream,
/// and an operator can reset it by route name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_breaker_opens_refuses_and_resets_by_name() {
    let up = Faulty::start("bad", Fault::Status(500)).await;
    let port = free_port();
    let route = "    name: checkout\n    retries: {attempts: 0}\n";
    let mut yaml = mesh(port, &[up.addr], route, None, None);
    yaml.push_str(
        "---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: checkout-route}\nspec:\n  target: {virtualService: backend, route: checkout}\n  circuitBreaker: {consecutiveFailures: 2, openDuration: 30s}\n",
    );
    let proxy = Proxy::start(&yaml).await;
    for _ in 0..2 {
        assert_eq!(get(port, "/pay").await.unwrap().status, 500);
    }
    let refused = get(port, "/pay").await.unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("x-tripline-reason"), Some("breaker-open"));
    assert!(refused.header("retry-after").is_some());
    assert_eq!(up.requests(), 2, "a refused request never reaches the upstream");
    let breakers: Value = serde_json::from_str(&proxy.admin_get("/breakers").await.text()).unwrap();
    assert_eq!(breakers["routes"][0]["route"], "backend/checkout", "{breakers}");
    assert_eq!(breakers["routes"][0]["breaker"]["state"], "open", "{breakers}");
    let reset = proxy.admin_post("/breakers/reset?route=backend%2Fcheckout").await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    up.set(Fault::Healthy);
    assert_eq!(get(port, "/pay").await.unwrap().status, 200);
    assert_eq!(
        proxy
            .metric("tripline_route_breaker_state", &[("route", "backend/checkout"), ("state", "closed")])
            .await,
        1.0
    );
}

/// An h2c upstream that resets its first `refuse` streams with REFUSED_STREAM (RFC 9113 §8.7:
/// "not processed"), then answers `200 ok`. Built on the `h2` crate: hyper's server cannot
/// choose the reset code. Returns its address and how many streams it received.
async fn refusing_h2_upstream(refuse: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = streams.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if seen.fetch_add(1, SeqCst) < refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let head = http::Response::builder().status(200).body(()).unwrap();
                    if let Ok(mut body) = respond.send_response(head, false) {
                        let _ = body.send_data(bytes::Bytes::from_static(b"ok"), true);
                    }
                }
            });
        }
    });
    (addr, streams)
}

fn h2_mesh(port: u16, upstream: SocketAddr, route: &str) -> String {
    let routes = format!(
        "  http:\n  - route:\n    - destination: {{host: backend.local, port: {{number: 80}}}}\n{route}"
    );
    config::join(&[
        config::gateway("edge", port, "HTTP"),
        config::service_entry("backend.local", "HTTP2", &[upstream]),
        config::virtual_service("backend", &["*"], "edge", &routes),
    ])
}

/// 9. An HTTP/2 upstream refuses a POST's stream (REFUSED_STREAM: it did no work on it). With
/// `retryOn: refused-stream`, or `5xx` (which covers resets), the POST goes again, body and
/// all, although it is not idempotent: it was not processed. The client gets the 200. With
/// retries off, the client gets `upstream-reset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_stream_is_retried_even_for_a_post() {
    for (route, status, reason, streams_seen) in [
        ("    retries: {attempts: 2, retryOn: refused-stream}\n", 200, None, 2),
        ("    retries: {attempts: 2, retryOn: 5xx}\n", 200, None, 2),
        ("    retries: {attempts: 0}\n", 502, Some("upstream-reset"), 1),
    ] {
        let (up, streams) = refusing_h2_upstream(1).await;
        let port = free_port();
        let _proxy = Proxy::start(&h2_mesh(port, up, route)).await;
        let r = send(addr(port), Method::POST, "backend.local", "/pay", &[], "payload").await.unwrap();
        assert_eq!((r.status.as_u16(), r.reason()), (status, reason), "{route}");
        assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), streams_seen, "{route}");
    }
}

/// An HTTP/2 upstream sends all of a response's declared length, then holds its END_STREAM
/// back for 10 s. An HTTP/1.1 client has its whole response at once (hyper stops at the
/// length and drops the body), and that is a complete response, logged as such right then,
/// not a client that went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_complete_by_its_length_is_complete_before_the_stream_ends() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-length", "5")
                            .body(())
                            .unwrap();
                        let Ok(mut body) = respond.send_response(head, false) else { return };
                        let _ = body.send_data(bytes::Bytes::from_static(b"hello"), false);
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        let _ = body.send_data(bytes::Bytes::new(), true);
                    });
                }
            });
        }
    });
    let port = free_port();
    let log = crate::support::proxy::unique_dir("length-log").join("access.log");
    let _proxy = Proxy::start_args(&h2_mesh(port, up, ""), &["--access-log", log.to_str().unwrap()]).await;
    let r = send(addr(port), Method::GET, "backend.local", "/", &[], "").await.unwrap();
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello"[..]));
    let line = crate::support::access_log_lines(&log, 1).await.remove(0);
    assert_eq!(
        (line["response_end"].as_str(), line["bytes_sent"].as_u64()),
        (Some("complete"), Some(5)),
        "{line}"
    );
    assert!(line["duration_ms"].as_f64().unwrap() < 5000.0, "logged when the last byte went out: {line}");
}

/// DRY_RUN breakers only record: an endpoint breaker that "opens" in dry run leaves its
/// endpoint in the rotation, a dry-run destination breaker does not suppress retries, clients
/// never see breaker-open or no-healthy-upstream, and what the breakers would have refused is
/// shown in /breakers and in metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_breakers_record_and_never_change_traffic() {
    let bad = Faulty::start("bad", Fault::Status(503)).await;
    let good = Faulty::start("good", Fault::Healthy).await;
    let port = free_port();
    let policy = "  circuitBreaker: {mode: DRY_RUN, consecutiveFailures: 2, openDuration: 60s}\n  endpointCircuitBreaker: {mode: DRY_RUN, consecutiveFailures: 2, openDuration: 60s}\n";
    let route = "    retries: {attempts: 2, retryOn: 5xx}\n";
    let yaml = mesh(port, &[bad.addr, good.addr], route, None, Some(policy));
    let proxy = Proxy::start(&yaml).await;
    // Both endpoints fail for a moment: the destination breaker "opens" too.
    good.set(Fault::Status(503));
    for i in 0..3 {
        let r = get(port, &format!("/down/{i}")).await.unwrap();
        assert_eq!(r.status, 503, "the upstreams' own 503, not a refusal: {r:?}");
        assert_eq!(r.reason(), None, "{r:?}");
    }
    assert_eq!(breakers(&proxy).await["breaker"]["state"], "open");
    good.set(Fault::Healthy);
    let mut results = Vec::new();
    for i in 0..40 {
        results.push(get(port, &format!("/dry/{i}")).await);
    }
    assert!(not_ok(&results).is_empty(), "every request served by retries: {:?}", not_ok(&results));
    // The bad endpoint stayed in the rotation after its breaker "opened".
    assert!(bad.requests() >= 10, "the bad endpoint kept getting traffic: {} requests", bad.requests());

    let b = breakers(&proxy).await;
    let dest = &b["breaker"];
    assert_eq!(dest["mode"], "dry-run", "{b}");
    assert!(dest["dry_run_rejections"].as_u64().unwrap() >= 40, "every request after it opened: {dest}");
    let bad_ep =
        b["endpoints"].as_array().unwrap().iter().find(|e| e["address"] == bad.addr.to_string()).unwrap();
    assert_eq!(bad_ep["breaker"]["state"], "open", "{bad_ep}");
    assert_eq!(bad_ep["available"], true, "dry run never takes an endpoint out: {bad_ep}");
    let would = bad_ep["breaker"]["dry_run_rejections"].as_u64().unwrap();
    assert!(would >= 5, "the bad endpoint's breaker would have refused {would}");
    let bad_id = bad.addr.to_string();
    let metric = proxy
        .metric("tripline_breaker_dry_run_rejections_total", &[("cluster", CLUSTER), ("endpoint", &bad_id)])
        .await;
    assert_eq!(metric, would as f64, "exported as counted");
    let suppressed = proxy.metric("tripline_retries_total", &[("result", "suppressed_breaker")]).await;
    assert_eq!(suppressed, 0.0, "a dry-run breaker suppresses no retry");
}
