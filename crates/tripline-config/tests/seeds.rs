//! Every seed config from the product brief, loaded one by one: which load cleanly, and the
//! exact problems `tripline validate` reports for the others.

use std::path::Path;
use std::time::Duration;

use tripline_config::plan::{RetryOn, RoutePlan};
use tripline_config::{load, read_sources, Diagnostic, LoadOptions, Loaded, Severity, Source};

mod seeds_dir;
use seeds_dir::seeds_dir;

/// `(severity, line:column, path, message fragment)` of every diagnostic.
fn outcome(dir: &Path, file: &str) -> (bool, Vec<(Severity, String, String, String)>) {
    let sources = read_sources(&[dir.join(file)]).expect("seed is readable");
    // As `tripline validate` loads them: a seed of DestinationRules alone has no listener.
    let opts = LoadOptions { listeners_required: false, ..LoadOptions::default() };
    let (ok, diags): (bool, Vec<Diagnostic>) = match load(&sources, &opts) {
        Ok(l) => (true, l.warnings),
        Err(d) => (false, d),
    };
    for d in &diags {
        assert!(d.file.ends_with(file), "{d}");
        assert!(d.line > 0 && d.column > 0, "every seed diagnostic has a place: {d}");
    }
    (
        ok,
        diags
            .into_iter()
            .map(|d| (d.severity, format!("{}:{}", d.line, d.column), d.path, d.message))
            .collect(),
    )
}

/// Asserts the diagnostics equal `expected` (message compared by fragment). Without the seeds
/// (a bare clone), says so and checks nothing.
fn check(file: &str, loads: bool, expected: &[(Severity, &str, &str, &str)]) {
    let Some(dir) = seeds_dir() else { return };
    let (ok, got) = outcome(&dir, file);
    let shown = format!("{file}: {got:#?}");
    assert_eq!(ok, loads, "{shown}");
    assert_eq!(got.len(), expected.len(), "{shown}");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g.0, e.0, "{shown}");
        assert_eq!(g.1, e.1, "{shown}");
        assert_eq!(g.2, e.2, "{shown}");
        assert!(g.3.contains(e.3), "expected `{}` in `{}`", e.3, g.3);
    }
}

use Severity::{Error as E, Warning as W};

const NO_SE: &str = "no ServiceEntry declares host";
/// A seed with no Gateway and no VirtualService: alone, it is a config without a listener,
/// which `validate` accepts with a warning (`run` refuses it).
const NO_LISTENER: (Severity, &str, &str, &str) = (
    W,
    "1:1",
    "(config)",
    "the configuration has no listener: no Gateway server, and no VirtualService without `gateways` (the mesh listener); `tripline run` refuses a configuration that accepts no connection",
);

#[test]
fn every_seed_file_is_covered_here() {
    let Some(dir) = seeds_dir() else { return };
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "alerts.yaml",
            "bulkhead-demo.yaml",
            "checkout-canary.yaml",
            "inventory-cb.yaml",
            "inventory-fallback.yaml",
            "media-header-routing.yaml",
            "order-mirror.yaml",
            "orders-retries.yaml",
            "payment-service-retries.yaml",
            "payments-cb-high-traffic.yaml",
            "payments-cb.yaml",
            "payments-fault.yaml",
            "payments-serviceprofile.yaml",
        ],
        "a new seed needs its expectation below"
    );
}

#[test]
fn prometheus_rules_are_ignored_with_a_warning() {
    check(
        "alerts.yaml",
        true,
        &[(W, "4:1", "document 1", "looks like a Prometheus rule file (`groups:`)"), NO_LISTENER],
    );
}

#[test]
fn linkerd_service_profile_waits_for_its_host_alone_and_applies_with_it() {
    check(
        "payments-serviceprofile.yaml",
        true,
        &[
            (
                W,
                "8:9",
                "ServiceProfile/payments.default.svc.cluster.local: metadata.name",
                "no ServiceEntry declares host `payments.default.svc.cluster.local`: this profile applies once the host appears",
            ),
            NO_LISTENER,
        ],
    );
    // With its host declared, the profile is the host's routes, timeout and budget.
    let host = "payments.default.svc.cluster.local";
    let Some(mut sources) =
        seeds_dir().map(|d| read_sources(&[d.join("payments-serviceprofile.yaml")]).unwrap())
    else {
        return;
    };
    let text = format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 80, name: http}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.0.1}}]\n");
    sources.push(Source { name: "extra.yaml".into(), text });
    let loaded = load(&sources, &LoadOptions::default()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let routes = &loaded.plan.listeners[0].virtual_hosts[0].routes;
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, [format!("{host}/POST /charge"), format!("{host}/other requests")]);
    assert_eq!(routes[0].timeout, Some(Duration::from_secs(2)));
    let on = routes[0].retry.retry_on;
    assert!(
        on.connect_failure && on.refused_stream && !on.server_error && !on.reset,
        "not isRetryable: {on:?}"
    );
    let budget = loaded.plan.clusters[0].resilience.retry_budget.rate.expect("the retryBudget applies");
    assert_eq!(
        (budget.retry_ratio, budget.min_retries_per_second, budget.ttl),
        (0.2, 10, Duration::from_secs(10))
    );
}

#[test]
fn destination_rules_alone_wait_for_their_host_and_have_no_listener() {
    check(
        "bulkhead-demo.yaml",
        true,
        &[
            (
                W,
                "6:9",
                "DestinationRule/bulkhead-demo: spec.host",
                "no ServiceEntry declares host `backend.svc.cluster.local`",
            ),
            NO_LISTENER,
        ],
    );
    check(
        "payments-cb.yaml",
        true,
        &[(W, "6:9", "DestinationRule/payments-cb: spec.host", NO_SE), NO_LISTENER],
    );
    check(
        "inventory-cb.yaml",
        true,
        &[
            (
                W,
                "6:9",
                "DestinationRule/inventory-cb: spec.host",
                "no ServiceEntry declares host `inventory`",
            ),
            NO_LISTENER,
        ],
    );
}

#[test]
/// The article's Envoy-only field: "validate should say so (unknown field), not drop it
/// silently". An error, as every unknown field is: its author expects an enforcement
/// percentage Tripline would not apply.
fn envoy_only_outlier_field_is_an_unknown_field_error() {
    check(
        "payments-cb-high-traffic.yaml",
        false,
        &[
            (
                E,
                "16:7",
                "DestinationRule/payments-cb: spec.trafficPolicy.outlierDetection.enforcingConsecutive5xxErrors",
                "unknown field `enforcingConsecutive5xxErrors` (not part of Istio's OutlierDetection; Envoy's enforcing percentages go in a Tripline ResiliencePolicy)",
            ),
            (W, "9:9", "DestinationRule/payments-cb: spec.host", NO_SE),
        ],
    );
}

#[test]
fn canary_to_an_undeclared_host_is_an_error_naming_it() {
    let unknown = "unknown host `checkout`: no ServiceEntry declares it (IST0101";
    check(
        "checkout-canary.yaml",
        false,
        &[
            (E, "11:15", "VirtualService/checkout: spec.http[0].route[0].destination.host", unknown),
            (E, "15:15", "VirtualService/checkout: spec.http[0].route[1].destination.host", unknown),
        ],
    );
}

/// The brief's "fallback" is a 100% abort in front of a route: applied as Istio applies it,
/// and called out as making the route's destination unreachable.
#[test]
fn abort_fault_as_fallback_warns_that_the_route_is_unreachable() {
    check(
        "inventory-fallback.yaml",
        false,
        &[
            (
                W,
                "19:11",
                "VirtualService/inventory-fallback: spec.http[0].fault.abort",
                "the route destination `inventory-fallback.svc.cluster.local` is unreachable: `fault.abort` answers 100% of matching requests with HTTP 503 before routing",
            ),
            (
                E,
                "22:15",
                "VirtualService/inventory-fallback: spec.http[0].route[0].destination.host",
                "unknown host `inventory-fallback.svc.cluster.local`",
            ),
        ],
    );
}

#[test]
fn a_ten_percent_fault_is_not_flagged_as_unreachable() {
    check(
        "payments-fault.yaml",
        false,
        &[(
            E,
            "16:15",
            "VirtualService/payments-fault: spec.http[0].route[0].destination.host",
            "unknown host `payments.svc.cluster.local`",
        )],
    );
}

/// Mirroring is applied; the seed names a host no ServiceEntry declares.
#[test]
fn a_mirror_to_an_undeclared_host_is_an_error_like_the_route() {
    check(
        "order-mirror.yaml",
        false,
        &[
            (
                E,
                "11:15",
                "VirtualService/order: spec.http[0].route[0].destination.host",
                "unknown host `order`",
            ),
            (E, "14:13", "VirtualService/order: spec.http[0].mirror.host", "unknown host `order`"),
        ],
    );
}

#[test]
fn undeclared_hosts_are_errors() {
    check(
        "orders-retries.yaml",
        false,
        &[
            // 1 s × 3 retries against a 2 s route timeout: issue 18's `validate` finding.
            (
                W,
                "15:22",
                "VirtualService/orders: spec.http[0].retries.perTryTimeout",
                "perTryTimeout 1s × 3 retries = 3s is longer than the route timeout 2s",
            ),
            (
                E,
                "11:15",
                "VirtualService/orders: spec.http[0].route[0].destination.host",
                "unknown host `orders.svc.cluster.local`",
            ),
        ],
    );
    check(
        "payment-service-retries.yaml",
        false,
        &[(
            E,
            "11:15",
            "VirtualService/payment-service: spec.http[0].route[0].destination.host",
            "unknown host `payment`",
        )],
    );
    check(
        "media-header-routing.yaml",
        false,
        &[
            (
                E,
                "15:15",
                "VirtualService/media: spec.http[0].route[0].destination.host",
                "unknown host `media`",
            ),
            (
                E,
                "23:15",
                "VirtualService/media: spec.http[1].route[0].destination.host",
                "unknown host `media`",
            ),
        ],
    );
}

#[test]
fn all_seeds_together_in_one_directory_report_the_union_and_never_panic() {
    let Some(dir) = seeds_dir() else { return };
    let sources = read_sources(&[dir]).unwrap();
    assert_eq!(sources.len(), 13);
    let diags = load(&sources, &LoadOptions::default()).unwrap_err();
    let errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
    // Ten unknown hosts (one a mirror's), the two DestinationRules named `payments-cb` (a duplicate) and the
    // Envoy-only outlier field; the VirtualServices' mesh listener means no "no listener".
    assert_eq!(errors, 12, "{diags:#?}");
}

/// The seed plus a ServiceEntry and a VirtualService for its host, so that it gets a cluster;
/// `None` without the seeds (a bare clone).
fn with_host(seed: &str, host: &str, extra: &str) -> Option<Result<Loaded, Vec<Diagnostic>>> {
    let mut sources = read_sources(&[seeds_dir()?.join(seed)]).expect("seed is readable");
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 80, name: http}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.0.1}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [{host}]\n  http:\n  - route: [{{destination: {{host: {host}}}}}]\n{extra}"
    );
    sources.push(Source { name: "extra.yaml".into(), text });
    Some(load(&sources, &LoadOptions::default()))
}

#[test]
fn payments_cb_outlier_detection_now_applies_with_istio_defaults_for_the_rest() {
    let Some(loaded) = with_host("payments-cb.yaml", "payments.svc.cluster.local", "") else { return };
    let loaded = loaded.unwrap();
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = &loaded.plan.clusters[0];
    let o = c.resilience.outlier.as_ref().expect("outlierDetection is applied");
    assert_eq!(o.consecutive_5xx_errors, Some(5));
    assert_eq!(o.interval, Duration::from_secs(10));
    assert_eq!(o.base_ejection_time, Duration::from_secs(30));
    assert_eq!(o.max_ejection_percent, 50);
    assert_eq!(o.consecutive_gateway_errors, None, "not set: off, as in Istio");
    assert_eq!(o.min_health_percent, 0, "Istio's default: no panic threshold");
    assert!(c.resilience.breaker.is_none(), "no ResiliencePolicy, no breaker");
    assert_eq!(c.resilience.policy, None);
    assert_eq!(c.pool.max_connections, 100);
}

#[test]
fn retry_seeds_compile_into_route_retry_policies() {
    let Some(loaded) = with_host("orders-retries.yaml", "orders.svc.cluster.local", "") else { return };
    let loaded = loaded.unwrap();
    let routes: Vec<&RoutePlan> =
        loaded.plan.listeners.iter().flat_map(|l| &l.virtual_hosts).flat_map(|v| &v.routes).collect();
    let r = routes.iter().find(|r| r.name == "orders/http[0]").unwrap();
    assert_eq!(r.retry.attempts, 3);
    assert_eq!(r.retry.per_try_timeout, Some(Duration::from_secs(1)));
    assert_eq!(
        r.retry.retry_on,
        RetryOn { gateway_error: true, connect_failure: true, refused_stream: true, ..RetryOn::default() }
    );
    assert!(r.retry.status_codes.is_empty());
    assert!(!r.retry.retry_non_idempotent);
}
