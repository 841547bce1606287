//! Linkerd's ServiceProfile through the binary: the brief's profile (a route's timeout, no
//! retries of failed responses), and a retryable route whose response classes say what fails
//! and whose retry budget by rate bounds the retries the upstream sees.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;

use crate::support::client::send;
use crate::support::config::service_entry;
use crate::support::faulty::{Fault, Faulty};
use crate::support::metrics::metric_sum;
use crate::support::{free_port, Proxy};
use crate::traffic::seed_with;

const HOST: &str = "payments.default.svc.cluster.local";

async fn post(addr: SocketAddr, path: &str) -> crate::support::Resp {
    send(addr, Method::POST, HOST, path, &[], "{}").await.unwrap()
}

/// `payments-serviceprofile.yaml`: `POST /charge` ends after 2 s, and its 5xx are not retried
/// (the route is not `isRetryable`); other requests take the route for everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brief_s_profile_times_out_charges_and_does_not_retry_them() {
    let payments = Faulty::start("payments", Fault::Status(500)).await;
    let Some((_proxy, addr)) =
        seed_with("payments-serviceprofile.yaml", &service_entry(HOST, "HTTP", &[payments.addr])).await
    else {
        return;
    };
    let r = post(addr, "/charge").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(payments.requests(), 1, "a failed charge is not retried: the route is not isRetryable");

    payments.set(Fault::SlowStatus { status: 200, delay: Duration::from_secs(5) });
    let r = post(addr, "/charge").await;
    assert_eq!((r.status.as_u16(), r.reason()), (504, Some("route-timeout")), "{}", r.text());
    assert!(r.elapsed >= Duration::from_secs(2), "the route's 2s: {:?}", r.elapsed);

    payments.set(Fault::Healthy);
    let r = post(addr, "/refund").await;
    assert_eq!(r.status, 200, "other requests still reach the service: {}", r.text());
}

/// A retryable route: 503 is not a failure by its classes (not retried); a 500 is retried,
/// POST included; and with `retryRatio: 0.5` and no reserve, the upstream sees at most one
/// retry per two requests, however many fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_route_retries_what_its_classes_fail_within_the_budget() {
    let payments = Faulty::start("payments", Fault::Status(503)).await;
    let port = free_port();
    let profile = format!(
        "---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {{name: {HOST}, namespace: default}}
spec:
  routes:
  - name: charge
    condition: {{method: POST, pathRegex: /charge}}
    isRetryable: true
    responseClasses:
    - condition: {{status: {{min: 503, max: 503}}}}
      isFailure: false
  retryBudget: {{retryRatio: 0.5, minRetriesPerSecond: 0, ttl: 60s}}
"
    );
    let yaml = format!("{}{profile}", service_entry(HOST, "HTTP", &[payments.addr]));
    let mesh = format!("127.0.0.1:{port}");
    let proxy = Proxy::start_args(&yaml, &["--mesh-bind", &mesh]).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // Request 1: a 503 is not a failure here, so it is passed back as it is.
    let r = post(addr, "/charge").await;
    assert_eq!((r.status.as_u16(), payments.requests()), (503, 1), "{}", r.text());
    // Request 2: 500, then 200: the POST is retried (two requests earn one retry).
    payments.set(Fault::Healthy);
    payments.then(Fault::Status(500));
    let r = post(addr, "/charge").await;
    assert_eq!((r.status.as_u16(), payments.requests()), (200, 3), "{}", r.text());
    // Requests 3 to 12 all fail: 12 requests earn 6 retries, one is spent, so 5 more.
    payments.set(Fault::Status(500));
    for _ in 0..10 {
        assert_eq!(post(addr, "/charge").await.status, 500);
    }
    assert_eq!(payments.requests(), 3 + 10 + 5, "retries bounded by retryRatio × requests");
    let cluster = format!("outbound|80||{HOST}");
    let m = proxy.metrics().await;
    assert_eq!(
        metric_sum(&m, "tripline_retries_total", &[("cluster", &cluster), ("result", "attempted")]),
        6.0
    );
    assert_eq!(
        metric_sum(&m, "tripline_retries_total", &[("cluster", &cluster), ("result", "refused_budget")]),
        10.0
    );
}
