//! The destination breaker under paused time: it opens on the configured count of failures,
//! refuses (503 `breaker-open`, `Retry-After`, nothing reaches the upstream) until its open
//! duration is over to the millisecond, then lets exactly `maxProbes` requests through at once,
//! and closes when they succeed.

mod support;

use http::Method;
use support::client::send;
use support::config;
use support::in_process::ms;
use support::{Fault, Faulty, InProcess, Resp};

async fn get(proxy: &InProcess, path: &str) -> Resp {
    send(proxy.addr, Method::GET, "backend.local", path, &[], "").await.unwrap()
}

/// A refusal by the open (or half-open, full) breaker: answered at once, never upstream.
fn assert_refused(r: &Resp, retry_after: &str) {
    assert_eq!((r.status.as_u16(), r.reason()), (503, Some("breaker-open")), "{r:?}");
    assert_eq!(r.header("retry-after"), Some(retry_after), "{r:?}");
    assert_eq!(r.elapsed, ms(0), "a refusal is immediate");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_refuses_until_its_open_duration_then_admits_max_probes() {
    let up = Faulty::start("u1", Fault::Status(500)).await;
    let policy = "  circuitBreaker:\n    consecutiveFailures: 3\n    failureRatio: {enabled: false}\n    openDuration: 1s\n    openJitter: 0\n    halfOpen: {maxProbes: 2, successRatio: 1.0, probeTimeout: 3s}\n";
    let route = "    retries: {attempts: 0}\n";
    let eps = [up.addr];
    let proxy = InProcess::start(|port| config::mesh(port, "HTTP", &eps, route, None, Some(policy))).await;

    // Open at the third failure, at time 0.
    for i in 0..3 {
        assert_eq!(get(&proxy, &format!("/fail/{i}")).await.status, 500);
    }
    assert_refused(&get(&proxy, "/refused").await, "1");
    let b = proxy.breakers();
    assert_eq!(
        (b["breaker"]["state"].as_str(), b["breaker"]["open_for_ms"].as_i64()),
        (Some("open"), Some(1000))
    );
    let opening = &b["breaker"]["history"][0];
    assert_eq!((&opening["to"], &opening["reason"]), (&"open".into(), &"consecutive-failures".into()));
    assert!(opening["evidence"].as_str().unwrap().contains("3 consecutive"), "{opening}");

    // A millisecond before the open duration is over: still refused, told to come back in a
    // second (whole seconds, rounded up), and nothing reaches the upstream.
    proxy.run_until(ms(999)).await;
    assert_refused(&get(&proxy, "/still-refused").await, "1");
    assert_eq!(proxy.breakers()["breaker"]["open_for_ms"], 1);
    assert_eq!(up.requests(), 3, "an open breaker let a request through");

    // The housekeeping tick at 1 s moves it to half-open without any traffic.
    proxy.run_until(ms(1001)).await;
    let b = proxy.breakers();
    assert_eq!(
        (b["breaker"]["state"].as_str(), b["breaker"]["since_ms_ago"].as_i64()),
        (Some("half-open"), Some(1))
    );

    // Recovered but slow (300 ms), so the probes overlap: of ten requests at once, exactly
    // two go through; the other eight are refused at once until a probe slot frees
    // (`Retry-After`: the probe timeout).
    up.set(Fault::Slow(ms(300)));
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                send(addr, Method::GET, "backend.local", &format!("/probe/{i}"), &[], "").await
            })
        })
        .collect();
    let mut served = Vec::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        match r.status.as_u16() {
            200 => served.push(r),
            _ => assert_refused(&r, "3"),
        }
    }
    assert_eq!(served.len(), 2, "maxProbes 2");
    assert!(served.iter().all(|r| r.elapsed == ms(300)), "{served:?}");
    assert_eq!((up.requests(), up.max_active()), (5, 2));

    // Both probes succeeded at 1.301 s: closed then, and traffic flows.
    assert_eq!(proxy.now(), ms(1301));
    let b = proxy.breakers();
    let closing = &b["breaker"]["history"][0];
    assert_eq!(
        (b["breaker"]["state"].as_str(), closing["reason"].as_str()),
        (Some("closed"), Some("probes-succeeded"))
    );
    assert_eq!(closing["ms_ago"], 0, "{b}");
    up.set(Fault::Healthy);
    for i in 0..10 {
        assert_eq!(get(&proxy, &format!("/after/{i}")).await.status, 200);
    }
    let opened =
        proxy.metric("tripline_breaker_transitions_total", &[("cluster", support::CLUSTER), ("to", "open")]);
    assert_eq!(opened, 1.0);
    assert_eq!(proxy.local_responses("breaker-open"), 10.0, "2 while open, 8 while half-open");
}

/// The next hops are Triplines, one answering for itself (`503` with `x-tripline-reason`),
/// the other passing on its upstream's 500 after its own retries (`x-tripline-upstream-failed`):
/// their decisions, not failures here. With an endpoint breaker and outlier detection that
/// act on two failures and `retryOn: 5xx`, ten requests reach the hops exactly ten times (no
/// retry multiplies them), eject nothing, open no breaker, and reach the client as the hops
/// answered.
#[tokio::test(start_paused = true)]
async fn a_next_hop_s_own_answers_are_neither_failures_nor_retried() {
    let hop = Faulty::start("hop", Fault::NextHopRefusal).await;
    let other = Faulty::start("other", Fault::NextHopPassedOn).await;
    let route = "    retries: {attempts: 2, retryOn: 5xx}\n";
    let dr = "    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n";
    let policy = "  circuitBreaker: {consecutiveFailures: 2, openDuration: 30s}\n  endpointCircuitBreaker: {consecutiveFailures: 2, openDuration: 30s}\n";
    let eps = [hop.addr, other.addr];
    let proxy =
        InProcess::start(|port| config::mesh(port, "HTTP", &eps, route, Some(dr), Some(policy))).await;
    for i in 0..10 {
        let r = send(proxy.addr, Method::GET, "backend.local", &format!("/{i}"), &[], "").await.unwrap();
        let seen = (r.status.as_u16(), r.header("x-tripline-reason"), r.header("x-tripline-upstream-failed"));
        assert!(matches!(seen, (503, Some("breaker-open"), None) | (500, None, Some("3"))), "{r:?}");
    }
    assert_eq!(hop.requests() + other.requests(), 10, "not retried");
    for ep in eps {
        assert_eq!(proxy.outlier_state(ep), "healthy");
    }
    assert_eq!(proxy.breakers()["breaker"]["state"], "closed", "{}", proxy.breakers());
}

/// An upstream's own 500, passed on once the retries are spent, says how many attempts were
/// made (for a Tripline one hop up, and for whoever reads the response); a 200 does not.
#[tokio::test(start_paused = true)]
async fn an_upstream_error_passed_on_says_how_many_attempts_it_took() {
    let up = Faulty::start("up", Fault::Status(500)).await;
    let route = "    retries: {attempts: 2, retryOn: 5xx, backoff: 1ms}\n";
    let eps = [up.addr];
    let proxy = InProcess::start(|port| config::mesh(port, "HTTP", &eps, route, None, None)).await;
    let r = get(&proxy, "/").await;
    assert_eq!((r.status.as_u16(), r.header("x-tripline-upstream-failed")), (500, Some("3")), "{r:?}");
    assert_eq!(up.requests(), 3);
    up.set(Fault::Healthy);
    let r = get(&proxy, "/").await;
    assert_eq!((r.status.as_u16(), r.header("x-tripline-upstream-failed")), (200, None), "{r:?}");
}
