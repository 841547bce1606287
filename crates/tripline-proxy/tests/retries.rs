//! Retry timing under paused time: a 429's retry waits exactly the upstream's `Retry-After`,
//! and a per-try timeout abandons an attempt exactly when it is due, then retries it on
//! another endpoint, or answers `504 upstream-timeout` when it was the last.

mod support;

use http::Method;
use support::client::send;
use support::config;
use support::in_process::ms;
use support::{Fault, Faulty, InProcess, Resp};

async fn get(proxy: &InProcess, path: &str) -> Resp {
    send(proxy.addr, Method::GET, "backend.local", path, &[], "").await.unwrap()
}

/// With `retryOn: retriable-status-codes,429`, a 429 with `Retry-After: 1` is retried 1 s
/// later to the millisecond (the upstream's wait wins over the backoff of at most 25 ms), and
/// not a moment sooner. (One endpoint, whose first answer only is the 429, so the retry goes
/// back to it; that it goes to another endpoint when there is one is the end-to-end test's.)
#[tokio::test(start_paused = true)]
async fn the_retry_of_a_429_waits_exactly_its_retry_after() {
    let up = Faulty::start("u1", Fault::Healthy).await;
    up.then(Fault::RateLimited { retry_after_secs: 1 });
    let route = "    retries: {attempts: 1, retryOn: \"retriable-status-codes,429\"}\n";
    let eps = [up.addr];
    let proxy = InProcess::start(|port| config::mesh(port, "HTTP", &eps, route, None, None)).await;
    let addr = proxy.addr;
    let call = tokio::spawn(async move { send(addr, Method::GET, "backend.local", "/", &[], "").await });
    proxy.run_until(ms(999)).await;
    assert_eq!(up.requests(), 1, "retried before Retry-After");
    let r = call.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.elapsed), (200, ms(1000)), "{r:?}");
    assert_eq!(r.json()["attempt"], 2);
    let arrivals: Vec<_> = up.seen().iter().map(|s| (proxy.time_of(s.at), s.attempt)).collect();
    assert_eq!(arrivals, [(ms(0), 1), (ms(1000), 2)]);
}

/// A 2 s endpoint and a fast one, `perTryTimeout: 200ms`: a request that meets the slow one
/// is abandoned at 200 ms and retried on the fast one after its backoff (1 ms at most here), so
/// the client has its 200 within [200, 201] ms instead of 2 s.
#[tokio::test(start_paused = true)]
async fn an_attempt_is_abandoned_at_its_per_try_timeout_and_retried_elsewhere() {
    let slow = Faulty::start("slow", Fault::Slow(ms(2000))).await;
    let fast = Faulty::start("fast", Fault::Healthy).await;
    let route = "    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: \"5xx,reset\", backoff: 1ms}\n";
    let dr = "    loadBalancer: {simple: ROUND_ROBIN}\n";
    let eps = [slow.addr, fast.addr];
    let proxy = InProcess::start(|port| config::mesh(port, "HTTP", &eps, route, Some(dr), None)).await;
    let mut answers = Vec::new();
    while slow.requests() < 2 {
        assert!(answers.len() < 8, "round robin never reached the slow endpoint twice");
        answers.push(get(&proxy, &format!("/{}", answers.len())).await);
    }
    for r in &answers {
        assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("fast")), "{r:?}");
        match r.json()["attempt"].as_u64() {
            Some(1) => assert_eq!(r.elapsed, ms(0)),
            _ => assert!(r.elapsed >= ms(200) && r.elapsed <= ms(201), "retried after {:?}", r.elapsed),
        }
    }
    let retried = answers.iter().filter(|r| r.json()["attempt"] == 2).count();
    assert_eq!(retried, 2, "each request that met the slow endpoint was retried once");
}

/// Only the slow endpoint: each of the two tries is abandoned at exactly 200 ms, and the client
/// gets `504 upstream-timeout` the moment the second is (the first's retry came after at most
/// 1 ms of backoff).
#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_on_the_last_attempt_is_504_upstream_timeout() {
    let slow = Faulty::start("slow", Fault::Slow(ms(2000))).await;
    let route = "    timeout: 5s\n    retries: {attempts: 1, perTryTimeout: 200ms, retryOn: \"5xx,reset\", backoff: 1ms}\n";
    let eps = [slow.addr];
    let proxy = InProcess::start(|port| config::mesh(port, "HTTP", &eps, route, None, None)).await;
    let r = get(&proxy, "/slow").await;
    assert_eq!((r.status.as_u16(), r.reason()), (504, Some("upstream-timeout")), "{r:?}");
    let tries: Vec<_> = slow.seen().iter().map(|s| proxy.time_of(s.at)).collect();
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[0], ms(0));
    assert!(tries[1] >= ms(200) && tries[1] <= ms(201), "second try at {:?}", tries[1]);
    assert_eq!(r.elapsed, tries[1] + ms(200), "answered when the last try timed out");
    assert_eq!(proxy.local_responses("upstream-timeout"), 1.0);
}

/// An endpoint that answers `429` with `Retry-After: 2` gets nothing more for 2 s, to the
/// millisecond: round robin sends everything to the other endpoint meanwhile (the client of
/// the 429 gets it: `429` is not in the route's `retryOn`), and /breakers says how long is
/// left. Then it is back in the rotation. With only held endpoints, the holds are ignored.
#[tokio::test(start_paused = true)]
async fn an_endpoint_that_asks_for_time_with_retry_after_gets_it() {
    let a = Faulty::start("a", Fault::Healthy).await;
    let b = Faulty::start("b", Fault::Healthy).await;
    a.then(Fault::RateLimited { retry_after_secs: 2 });
    let dr = "    loadBalancer: {simple: ROUND_ROBIN}\n";
    let eps = [a.addr, b.addr];
    let proxy = InProcess::start(|port| config::mesh(port, "HTTP", &eps, "", Some(dr), None)).await;
    let mut answers = Vec::new();
    while a.requests() == 0 {
        assert!(answers.len() < 4, "round robin never reached a");
        answers.push(get(&proxy, "/").await);
    }
    let limited = answers.last().unwrap();
    assert_eq!((limited.status.as_u16(), limited.elapsed), (429, ms(0)), "{limited:?}");
    let held_at = a.seen()[0].at;
    let ep = proxy.breaker_endpoint(a.addr);
    assert_eq!((ep["available"].as_bool(), ep["held_for_ms"].as_u64()), (Some(false), Some(2000)), "{ep}");
    // 19 requests over the next 1.9 s: all to b.
    for i in 1..20 {
        proxy.run_until(proxy.time_of(held_at) + ms(100 * i)).await;
        let r = get(&proxy, "/").await;
        assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("b")), "at {} ms: {r:?}", 100 * i);
    }
    assert_eq!(a.requests(), 1, "nothing reached a within its Retry-After");
    proxy.run_until(proxy.time_of(held_at) + ms(2000)).await;
    let back: Vec<_> = [get(&proxy, "/").await, get(&proxy, "/").await]
        .iter()
        .map(|r| r.upstream().map(str::to_owned))
        .collect();
    assert!(back.contains(&Some("a".to_owned())), "a is back in the rotation at 2 s: {back:?}");

    // Both held: the holds are ignored, and the requests are served.
    a.then(Fault::RateLimited { retry_after_secs: 5 });
    b.then(Fault::RateLimited { retry_after_secs: 5 });
    let mut statuses = Vec::new();
    while statuses.iter().filter(|s| **s == 429).count() < 2 {
        assert!(statuses.len() < 6, "{statuses:?}");
        statuses.push(get(&proxy, "/").await.status.as_u16());
    }
    let r = get(&proxy, "/").await;
    assert_eq!(r.status.as_u16(), 200, "served by a held endpoint rather than refused: {r:?}");
}

/// With a second endpoint, the retry of a 429 goes there after its backoff alone: the
/// `Retry-After` was the first endpoint's, which is held meanwhile.
#[tokio::test(start_paused = true)]
async fn the_retry_of_a_429_goes_elsewhere_without_waiting_its_retry_after() {
    let a = Faulty::start("a", Fault::Healthy).await;
    let b = Faulty::start("b", Fault::Healthy).await;
    a.then(Fault::RateLimited { retry_after_secs: 5 });
    let route = "    retries: {attempts: 1, retryOn: \"retriable-status-codes,429\", backoff: 1ms}\n";
    let dr = "    loadBalancer: {simple: ROUND_ROBIN}\n";
    let eps = [a.addr, b.addr];
    let proxy = InProcess::start(|port| config::mesh(port, "HTTP", &eps, route, Some(dr), None)).await;
    let mut answers = Vec::new();
    while a.requests() == 0 {
        assert!(answers.len() < 4, "round robin never reached a");
        answers.push(get(&proxy, "/").await);
    }
    let r = answers.last().unwrap();
    assert_eq!((r.status.as_u16(), r.upstream()), (200, Some("b")), "{r:?}");
    assert_eq!(r.json()["attempt"], 2);
    assert!(r.elapsed <= ms(1), "retried after its backoff, not 5 s: {:?}", r.elapsed);
}
