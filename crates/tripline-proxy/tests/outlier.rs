//! Outlier detection under paused time: an endpoint is ejected after exactly its configured
//! count of failures, gets no request until `baseEjectionTime` is over to the millisecond, is
//! then probed by exactly one request, re-ejected for twice as long when the probe fails, and
//! back in rotation when a probe succeeds. Clients never see the failures (retries), and
//! clients that hang up never count against anyone.

mod support;

use http::Method;
use support::client::send;
use support::config;
use support::in_process::ms;
use support::{Fault, Faulty, InProcess, Resp};

/// `n` requests one after another on new connections; every client must get a 200.
async fn gets(proxy: &InProcess, n: usize) -> Vec<Resp> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = send(proxy.addr, Method::GET, "backend.local", &format!("/{i}"), &[], "").await.unwrap();
        assert_eq!(r.status, 200, "request {i} at {:?}: {r:?}", proxy.now());
        out.push(r);
    }
    out
}

/// GETs until `bad` has seen `count` requests (at most 20 more); all answered 200.
async fn gets_until(proxy: &InProcess, bad: &Faulty, count: usize) {
    for _ in 0..20 {
        if bad.requests() >= count {
            return;
        }
        gets(proxy, 1).await;
    }
    panic!("{} requests reached the endpoint at {:?}, not {count}", bad.requests(), proxy.now());
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_is_probed_exactly_when_its_ejection_ends() {
    let good = Faulty::start("good", Fault::Healthy).await;
    let bad = Faulty::start("bad", Fault::Status(500)).await;
    let route = "    retries: {attempts: 2, retryOn: 5xx}\n";
    let dr = "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 50}\n";
    let eps = [bad.addr, good.addr];
    let proxy = InProcess::start(|port| config::mesh(port, "HTTP", &eps, route, Some(dr), None)).await;

    // Ejected at the third failure. (Each failure's retry waits its backoff, up to 25 ms of
    // virtual time, so the ejection's time is read off the upstream's log.)
    gets_until(&proxy, &bad, 3).await;
    assert_eq!(proxy.outlier_state(bad.addr), "ejected");
    let ejected = proxy.time_of(bad.seen()[2].at);
    let ejection = &proxy.breakers()["outlier"]["events"][0];
    assert_eq!((&ejection["to"], &ejection["detector"]), (&"ejected".into(), &"consecutive-5xx".into()));
    let ms_ago = ejection["ms_ago"].as_u64().unwrap();
    assert_eq!(ms(ms_ago), proxy.now() - ejected, "ejected when the third failure came back");

    // A millisecond before the ejection ends: nothing reaches it.
    proxy.run_until(ejected + ms(999)).await;
    gets(&proxy, 10).await;
    assert_eq!(bad.requests(), 3, "an ejected endpoint got traffic");
    assert_eq!(proxy.breaker_endpoint(bad.addr)["outlier"]["ejected_for_ms"], 1);

    // At 1 s exactly, one request probes it; the probe fails and it is ejected again, for
    // twice as long (its second ejection).
    proxy.run_until(ejected + ms(1000)).await;
    gets_until(&proxy, &bad, 4).await;
    let probed = proxy.time_of(bad.seen()[3].at);
    assert_eq!(probed, ejected + ms(1000));
    assert_eq!(proxy.outlier_state(bad.addr), "ejected");
    let ep = proxy.breaker_endpoint(bad.addr);
    assert_eq!(ep["outlier"]["times_ejected"], 2);
    assert_eq!(ms(ep["outlier"]["ejected_for_ms"].as_u64().unwrap()), probed + ms(2000) - proxy.now());
    gets(&proxy, 10).await;
    assert_eq!(bad.requests(), 4, "one probe only");

    // Fixed: still ejected a millisecond before the 2 s are over; probed then, and back.
    bad.set(Fault::Healthy);
    proxy.run_until(probed + ms(1999)).await;
    gets(&proxy, 10).await;
    assert_eq!(bad.requests(), 4, "traffic before the second ejection ended");
    proxy.run_until(probed + ms(2000)).await;
    gets_until(&proxy, &bad, 5).await;
    assert_eq!(proxy.time_of(bad.seen()[4].at), probed + ms(2000));
    assert_eq!(proxy.outlier_state(bad.addr), "healthy");
    let served: Vec<Resp> = gets(&proxy, 10).await;
    let by_bad = served.iter().filter(|r| r.upstream() == Some("bad")).count();
    assert_eq!(by_bad, 5, "round robin over both again: {served:?}");
}

/// Clients that hang up while their request is at the upstream say nothing about the
/// upstream: no breaker opens, nothing is ejected, nothing is counted, and the next request
/// is served. Each hang-up is seen by the proxy at once; the upstream's answer, 400 ms after
/// each request, finds no one, and that is not a failure either.
#[tokio::test(start_paused = true)]
async fn clients_hanging_up_never_trip_anything() {
    use tokio::io::AsyncWriteExt;
    let up = Faulty::start("slow", Fault::Slow(ms(400))).await;
    let policy = "  endpointCircuitBreaker: {consecutiveFailures: 2, openDuration: 30s}\n  circuitBreaker: {consecutiveFailures: 2, openDuration: 30s}\n";
    let dr = "    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}\n";
    let eps = [up.addr];
    let proxy = InProcess::start(|port| config::mesh(port, "HTTP", &eps, "", Some(dr), Some(policy))).await;
    for i in 0..10 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /hang-up HTTP/1.1\r\nHost: backend.local\r\n\r\n").await.unwrap();
        proxy.run_until(ms(100 * i + 50)).await;
        assert_eq!(up.requests(), i as usize + 1, "the request reached the upstream");
        assert_eq!(proxy.cluster()["active_requests"], 1);
        drop(s);
        proxy.run_until(ms(100 * i + 51)).await;
        assert_eq!(proxy.cluster()["active_requests"], 0, "the hang-up was noticed at once");
    }
    // Past every answer the upstream would have given.
    proxy.run_until(ms(2000)).await;
    let b = proxy.breakers();
    let ep = &b["endpoints"][0];
    assert_eq!(b["breaker"]["state"], "closed", "{b}");
    assert_eq!(b["breaker"]["consecutive_failures"], 0, "{b}");
    assert_eq!(ep["breaker"]["state"], "closed", "{b}");
    assert_eq!(ep["breaker"]["consecutive_failures"], 0, "{b}");
    assert_eq!(ep["outlier"]["health"], "healthy", "{b}");
    assert_eq!(ep["outlier"]["consecutive_5xx"], 0, "{b}");
    let r = send(proxy.addr, Method::GET, "backend.local", "/after", &[], "").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.elapsed, ms(400));
}
