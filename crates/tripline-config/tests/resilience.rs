//! Resilience configuration: DestinationRule `outlierDetection` / `retryBudget`, VirtualService
//! `retries`, and the Tripline `ResiliencePolicy`, compiled into the engine's own configs.

use std::time::Duration;

use tripline_config::plan::*;
mod common;

use common::{ok, src, the_error};
use tripline_config::{load, LoadOptions};
use tripline_core::breaker::{BreakerConfig, Mode, RatioRule, SlowCallRule};
use tripline_core::budget::RetryBudgetConfig;
use tripline_core::classify::{grpc, Outcome};
use tripline_core::outlier::{
    CapRounding, Enforcing, FailurePercentageRule, LatencyRule, OutlierConfig, SuccessRateRule,
};

/// A host with two subsets and a route splitting across them; `{dr}` is appended to the
/// DestinationRule's spec, `{route}` to the route entry, `{extra}` after everything.
fn mesh(dr: &str, route: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: payments}}
spec:
  hosts: [payments.svc.cluster.local]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.0.0.1, labels: {{version: v1}}}}
  - {{address: 10.0.0.2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: payments}}
spec:
  host: payments.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
{dr}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: payments}}
spec:
  hosts: [payments.svc.cluster.local]
  http:
  - route:
    - {{destination: {{host: payments.svc.cluster.local, subset: v1}}, weight: 50}}
    - {{destination: {{host: payments.svc.cluster.local, subset: v2}}, weight: 50}}
{route}{extra}"#
    )
}

fn cluster<'p>(plan: &'p Plan, subset: &str) -> &'p ClusterPlan {
    let name = format!("outbound|80|{subset}|payments.svc.cluster.local");
    &plan.clusters[plan.cluster_by_name(&name).unwrap_or_else(|| panic!("no cluster {name}"))]
}

fn route(plan: &Plan) -> &RoutePlan {
    &plan.listeners[0].virtual_hosts[0].routes[0]
}

const FULL_POLICY: &str = r#"---
apiVersion: tripline.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: payments}
spec:
  target: {host: payments.svc.cluster.local, subset: v1}
  circuitBreaker:
    mode: DRY_RUN
    consecutiveFailures: 7
    failureRatio: {threshold: 0.4, minimumRequests: 30}
    slowCalls: {duration: 1s, threshold: 0.5, minimumRequests: 20}
    window: 20s
    windowBuckets: 20
    openDuration: 2s
    openDurationMultiplier: 3
    maxOpenDuration: 90s
    openJitter: 0.1
    halfOpen: {maxProbes: 4, successRatio: 0.75, probeTimeout: 3s}
  endpointCircuitBreaker:
    consecutiveFailures: 0
    failureRatio: {enabled: false}
  outlierDetection:
    consecutive5xxErrors: 3
    baseEjectionTime: 1m
    successRate: {minimumHosts: 4, requestVolume: 200, stdevFactor: 1.5}
    failurePercentage: {threshold: 90, minimumHosts: 3, requestVolume: 40}
    latency: {percentile: 0.99, factor: 4, minimumRequests: 60, minimumLatency: 100ms}
    maxEjectionTime: 5m
    maxEjectionTimeJitter: 2s
    ejectionCapRounding: CEIL
    enforcing: {successRate: 50, latency: 0}
    probe: {concurrency: 2, successes: 3}
  classification:
    failureStatuses: ["500-599", 429]
    gatewayStatuses: [502, 503, 504]
    grpcFailures: [UNAVAILABLE, deadline_exceeded, 13]
  retries:
    retryNonIdempotent: true
    backoff: {baseInterval: 50ms, maxInterval: 1s}
    maxReplayBytes: 1024
"#;

const DR_OUTLIER: &str = "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 9, interval: 5s}\n";

#[test]
fn a_full_policy_compiles_into_exactly_these_engine_configs() {
    let loaded = ok(&mesh(DR_OUTLIER, "", FULL_POLICY));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let v1 = cluster(&loaded.plan, "v1");
    assert_eq!(v1.resilience.policy.as_deref(), Some("payments"));
    let breaker = v1.resilience.breaker.clone().expect("circuitBreaker");
    let classifier = breaker.classifier.clone();
    assert_eq!(
        breaker,
        BreakerConfig {
            mode: Mode::DryRun,
            consecutive_failures: Some(7),
            failure_ratio: Some(RatioRule { ratio: 0.4, min_requests: 30 }),
            slow_calls: Some(SlowCallRule {
                threshold: Duration::from_secs(1),
                ratio: 0.5,
                min_requests: 20
            }),
            window: Duration::from_secs(20),
            window_buckets: 20,
            open_duration: Duration::from_secs(2),
            open_multiplier: 3.0,
            max_open_duration: Duration::from_secs(90),
            open_jitter: 0.1,
            probes: 4,
            probe_success_ratio: 0.75,
            probe_timeout: Duration::from_secs(3),
            classifier: classifier.clone(),
        }
    );
    assert_eq!(
        v1.resilience.endpoint_breaker,
        Some(BreakerConfig {
            consecutive_failures: None,
            failure_ratio: None,
            classifier: classifier.clone(),
            ..BreakerConfig::default()
        }),
        "0 and enabled: false turn rules off; the rest is the engine default"
    );
    // The classification the user wrote is what the engine applies.
    let class = |o| classifier.classify(&o);
    assert!(class(Outcome::Http(500)).failure && !class(Outcome::Http(500)).gateway_error);
    assert!(class(Outcome::Http(503)).gateway_error);
    assert!(!class(Outcome::Http(404)).failure);
    assert!(class(Outcome::Grpc(grpc::INTERNAL)).failure, "13 is INTERNAL");
    assert!(class(Outcome::Grpc(grpc::DEADLINE_EXCEEDED)).gateway_error, "names in any case");
    assert!(!class(Outcome::Grpc(grpc::UNKNOWN)).failure, "the list replaces the default");

    assert_eq!(
        v1.resilience.outlier,
        Some(OutlierConfig {
            // The DestinationRule wins for the Istio fields it sets...
            consecutive_5xx_errors: Some(9),
            interval: Duration::from_secs(5),
            // ...the policy fills the ones it leaves out...
            base_ejection_time: Duration::from_secs(60),
            // ...and the extras come from the policy.
            success_rate: Some(SuccessRateRule { minimum_hosts: 4, request_volume: 200, stdev_factor: 1.5 }),
            failure_percentage: Some(FailurePercentageRule {
                threshold: 90,
                minimum_hosts: 3,
                request_volume: 40
            }),
            latency: Some(LatencyRule {
                percentile: 0.99,
                factor: 4.0,
                minimum_hosts: 3,
                request_volume: 60,
                min_latency: Duration::from_millis(100),
            }),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::from_secs(2),
            cap_rounding: CapRounding::Ceil,
            enforcing: Enforcing { success_rate: 50, latency: 0, ..Enforcing::default() },
            probe_concurrency: 2,
            probe_successes: 3,
            classifier,
            ..OutlierConfig::default()
        })
    );

    // v2 has no policy: the DestinationRule's outlier detection with engine defaults, no breaker.
    let v2 = cluster(&loaded.plan, "v2");
    assert_eq!(v2.resilience.policy, None);
    assert!(v2.resilience.breaker.is_none() && v2.resilience.endpoint_breaker.is_none());
    assert_eq!(
        v2.resilience.outlier,
        Some(OutlierConfig {
            consecutive_5xx_errors: Some(9),
            interval: Duration::from_secs(5),
            ..OutlierConfig::default()
        })
    );

    // The route splits over v1 (opts in, longer backoff, small buffer) and v2 (defaults):
    // the safest setting of each wins.
    let r = route(&loaded.plan);
    assert!(!r.retry.retry_non_idempotent, "only when every destination opts in");
    assert_eq!(r.retry.backoff_base, Duration::from_millis(50));
    assert_eq!(r.retry.backoff_max, Duration::from_secs(1));
    assert_eq!(r.retry.max_replay_bytes, 1024);

    let dump = loaded.dump.text().to_string();
    for fragment in [
        r#""kind":"ResiliencePolicy""#,
        r#""apiVersion":"tripline.dev/v1alpha1""#,
        r#""mode":"DRY_RUN""#,
        r#""ejectionCapRounding":"CEIL""#,
        r#""failureStatuses":["500-599",429]"#,
        r#""grpcFailures":["UNAVAILABLE","DEADLINE_EXCEEDED","INTERNAL"]"#,
        r#""halfOpen":{"maxProbes":4,"probeTimeout":"3s","successRatio":0.75}"#,
    ] {
        assert!(dump.contains(fragment), "{fragment} in {dump}");
    }
}

#[test]
fn a_host_wide_policy_applies_to_every_subset_and_opts_routes_in() {
    let policy = "---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: all}\nspec:\n  target: {host: payments.svc.cluster.local}\n  circuitBreaker: {}\n  retries: {retryNonIdempotent: true}\n";
    let loaded = ok(&mesh("", "", policy));
    for subset in ["v1", "v2"] {
        let c = cluster(&loaded.plan, subset);
        assert_eq!(c.resilience.policy.as_deref(), Some("all"));
        assert_eq!(c.resilience.breaker, Some(BreakerConfig::default()), "`{{}}` is the engine default");
        assert_eq!(c.resilience.outlier, None, "no outlierDetection anywhere: none");
    }
    let r = route(&loaded.plan);
    assert!(r.retry.retry_non_idempotent);
    assert_eq!(
        r.retry,
        RetryPlan { retry_non_idempotent: true, ..RetryPlan::default() },
        "everything else is Istio's default retry policy"
    );
    // A policy naming a subset replaces the host-wide one for that subset.
    let specific = format!("{policy}---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: v2-only}}\nspec:\n  target: {{host: payments.svc.cluster.local, subset: v2}}\n");
    let loaded = ok(&mesh("", "", &specific));
    assert_eq!(cluster(&loaded.plan, "v1").resilience.policy.as_deref(), Some("all"));
    let v2 = cluster(&loaded.plan, "v2");
    assert_eq!(v2.resilience.policy.as_deref(), Some("v2-only"));
    assert!(v2.resilience.breaker.is_none());
    assert!(!route(&loaded.plan).retry.retry_non_idempotent);
}

#[test]
fn nothing_configured_gives_the_documented_defaults() {
    let loaded = ok(&mesh("", "", ""));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = cluster(&loaded.plan, "v1");
    assert_eq!(c.resilience.outlier, None, "Istio: no outlier detection unless configured");
    assert_eq!(c.resilience.breaker, None);
    assert_eq!(
        c.resilience.retry_budget,
        RetryBudgetConfig { percent: 20.0, min_retry_concurrency: 3, max_retries: u32::MAX, rate: None }
    );
    let r = route(&loaded.plan);
    assert_eq!(r.retry, RetryPlan::default());
    assert_eq!(r.retry.attempts, 2);
    assert!(r.retry.retry_on.connect_failure && r.retry.retry_on.refused_stream);
    assert!(r.retry.retry_on.grpc_unavailable && r.retry.retry_on.grpc_cancelled);
    assert!(r.retry.retry_on.retriable_status_codes && !r.retry.retry_on.server_error);
    assert_eq!(r.retry.status_codes, [503]);
}

#[test]
fn outlier_detection_subset_overrides_field_by_field_and_zero_disables() {
    let dr = "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 4, consecutiveGatewayErrors: 2, maxEjectionPercent: 50, minHealthPercent: 30}\n    connectionPool: {http: {maxRetries: 7}}\n    retryBudget: {percent: {value: 25}, minRetryConcurrency: 5}\n";
    let text = mesh(dr, "", "").replace(
        "  - {name: v2, labels: {version: v2}}",
        "  - name: v2\n    labels: {version: v2}\n    trafficPolicy:\n      outlierDetection: {consecutive5xxErrors: 0, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}\n      retryBudget: {percent: 40}",
    );
    let loaded = ok(&text);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let v1 = cluster(&loaded.plan, "v1");
    let o1 = v1.resilience.outlier.as_ref().unwrap();
    assert_eq!((o1.consecutive_5xx_errors, o1.consecutive_gateway_errors), (Some(4), Some(2)));
    assert_eq!((o1.max_ejection_percent, o1.min_health_percent), (50, 30));
    assert_eq!(
        v1.resilience.retry_budget,
        RetryBudgetConfig { percent: 25.0, min_retry_concurrency: 5, max_retries: 7, rate: None }
    );
    let v2 = cluster(&loaded.plan, "v2");
    let o2 = v2.resilience.outlier.as_ref().unwrap();
    assert_eq!(o2.consecutive_5xx_errors, None, "0 disables the detector");
    assert_eq!(o2.consecutive_gateway_errors, Some(2), "inherited from the top level");
    assert!(o2.split_external_local_origin_errors);
    assert_eq!(o2.consecutive_local_origin_failures, Some(2));
    assert_eq!(o2.max_ejection_percent, 50);
    assert_eq!(
        v2.resilience.retry_budget,
        RetryBudgetConfig { percent: 40.0, min_retry_concurrency: 5, max_retries: 7, rate: None },
        "a plain number works too; the rest is inherited"
    );
}

#[test]
fn deprecated_consecutive_errors_warns_and_still_applies() {
    let dr = "  trafficPolicy:\n    outlierDetection: {consecutiveErrors: 6}\n";
    let loaded = ok(&mesh(dr, "", ""));
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
    assert!(loaded.warnings[0]
        .to_string()
        .contains("spec.trafficPolicy.outlierDetection.consecutiveErrors: `consecutiveErrors` is deprecated: use `consecutive5xxErrors`"));
    assert_eq!(
        cluster(&loaded.plan, "v1").resilience.outlier.as_ref().unwrap().consecutive_5xx_errors,
        Some(6)
    );
}

#[test]
fn retries_become_the_route_retry_plan() {
    let route_yaml = "    timeout: 3s\n    retries: {attempts: 4, perTryTimeout: 500ms, retryOn: \"5xx,reset, 503,504,unavailable,retriable-4xx\", backoff: 100ms}\n";
    let loaded = ok(&mesh("", route_yaml, ""));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let r = route(&loaded.plan);
    assert_eq!(r.retry.attempts, 4);
    assert_eq!(r.retry.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        r.retry.retry_on,
        RetryOn {
            server_error: true,
            reset: true,
            retriable_status_codes: true,
            grpc_unavailable: true,
            retriable_4xx: true,
            ..RetryOn::default()
        },
        "numeric codes turn on retriable-status-codes, as in Istio"
    );
    assert_eq!(r.retry.status_codes, [503, 504]);
    assert_eq!(r.retry.backoff_base, Duration::from_millis(100), "Istio's retries.backoff is the base");
    assert_eq!(r.retry.backoff_max, Duration::from_millis(250));

    let off = ok(&mesh("", "    retries: {attempts: 0}\n", ""));
    assert_eq!(route(&off.plan).retry.attempts, 0, "attempts: 0 disables retries");
}

#[test]
fn unknown_retry_on_word_is_an_error_pointing_at_the_word() {
    let text = mesh("", "    retries:\n      attempts: 2\n      retryOn: 5xx,gateway-eror\n", "");
    let e = the_error(&text);
    assert!(
        e.starts_with("error: mesh.yaml:32:20: VirtualService/payments: spec.http[0].retries.retryOn: unknown retryOn condition `gateway-eror`: expected status codes (e.g. 503) or 5xx, gateway-error, reset, connect-failure, refused-stream, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable"),
        "{e}"
    );
    let text = mesh("", "    retries: {retryOn: \"503,703\"}\n", "");
    let e = the_error(&text);
    assert!(
        e.contains("mesh.yaml:30:29: VirtualService/payments: spec.http[0].retries.retryOn: retryOn status code 703 is out of range"),
        "{e}"
    );
}

#[test]
fn retry_warnings_for_what_cannot_work_or_is_not_applied() {
    let route_yaml = "    timeout: 1s\n    retries: {attempts: 2, perTryTimeout: 2s, retryOn: \"reset-before-request,connect-failure\", retryRemoteLocalities: true}\n";
    let loaded = ok(&mesh("", route_yaml, ""));
    let shown: Vec<String> = loaded.warnings.iter().map(|d| d.to_string()).collect();
    assert_eq!(shown.len(), 3, "{shown:#?}");
    assert!(shown.iter().any(|w| w.contains(
        "spec.http[0].retries.perTryTimeout: perTryTimeout 2s is longer than the route timeout 1s"
    )));
    assert!(shown.iter().any(|w| w.contains(
        "retryOn condition `reset-before-request` is Envoy-specific and is ignored: Tripline always sends a request again"
    )));
    assert!(shown.iter().any(|w| w.contains(
        "spec.http[0].retries.retryRemoteLocalities: `spec.http[0].retries.retryRemoteLocalities` is ignored: Tripline has no localities"
    )));
    assert!(route(&loaded.plan).retry.retry_on.connect_failure);
}

/// Retry settings Tripline would not honour change which requests are retried: errors.
#[test]
fn retry_settings_that_would_change_retries_are_refused() {
    let route_yaml = "    retries: {attempts: 2, retryOn: \"connect-failure,envoy-ratelimited\"}\n";
    assert!(the_error(&mesh("", route_yaml, "")).contains(
        "spec.http[0].retries.retryOn: retryOn condition `envoy-ratelimited` is not implemented yet; remove it"
    ));
    let route_yaml = "    retries: {attempts: 2, retryIgnorePreviousHosts: false}\n";
    assert!(the_error(&mesh("", route_yaml, "")).contains(
        "spec.http[0].retries.retryIgnorePreviousHosts: `retryIgnorePreviousHosts: false` is not implemented yet"
    ));
}

#[test]
fn two_policies_for_the_same_cluster_are_an_error_naming_both() {
    let p = |name: &str| {
        format!("---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: {name}}}\nspec:\n  target: {{host: payments.svc.cluster.local, subset: v1}}\n  circuitBreaker: {{}}\n")
    };
    let text = mesh("", "", &(p("first") + &p("second")));
    assert_eq!(
        the_error(&text),
        "error: mesh.yaml:42:18: ResiliencePolicy/second: spec.target.host: ResiliencePolicy/first and ResiliencePolicy/second both target subset `v1` of host `payments.svc.cluster.local` (mesh.yaml:31): merge them into one ResiliencePolicy"
    );
}

#[test]
fn invalid_values_name_the_field_and_what_is_expected() {
    let policy = |body: &str| {
        mesh("", "", &format!("---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: p}}\nspec:\n  target: {{host: payments.svc.cluster.local}}\n{body}"))
    };
    assert_eq!(
        the_error(&policy("  circuitBreaker:\n    failureRatio: {threshold: 1.5}\n")),
        "error: mesh.yaml:37:31: ResiliencePolicy/p: spec.circuitBreaker.failureRatio.threshold: expected a ratio greater than 0 and at most 1 (e.g. 0.5 for 50%), found `1.5`"
    );
    let cases = [
        ("  circuitBreaker: {halfOpen: {successRatio: 0}}\n", "spec.circuitBreaker.halfOpen.successRatio: expected a ratio greater than 0"),
        ("  circuitBreaker: {halfOpen: {maxProbes: 65}}\n", "spec.circuitBreaker.halfOpen.maxProbes: expected an integer between 1 and 64, found `65`"),
        ("  circuitBreaker: {openDuration: 0s}\n", "spec.circuitBreaker.openDuration: expected a positive duration"),
        ("  circuitBreaker: {mode: ENFORCE}\n", "spec.circuitBreaker.mode: expected one of ENFORCING, DRY_RUN, found `ENFORCE`"),
        ("  circuitBreaker: {openDuration: 10s, maxOpenDuration: 5s}\n", "spec.circuitBreaker.maxOpenDuration: maxOpenDuration (5s) is shorter than openDuration (10s)"),
        ("  circuitBreaker: {slowCalls: {threshold: 0.5}}\n", "spec.circuitBreaker.slowCalls.duration: `duration` is required"),
        ("  outlierDetection: {failurePercentage: {threshold: 101}}\n", "spec.outlierDetection.failurePercentage.threshold: expected an integer between 0 and 100, found `101`"),
        ("  outlierDetection: {enforcing: {latency: -1}}\n", "spec.outlierDetection.enforcing.latency: expected an integer between 0 and 100"),
        ("  outlierDetection: {probe: {concurrency: 0}}\n", "spec.outlierDetection.probe.concurrency: expected an integer between 1 and 64, found `0`"),
        ("  outlierDetection: {latency: {percentile: 99}}\n", "spec.outlierDetection.latency.percentile: expected a ratio greater than 0 and at most 1"),
        ("  outlierDetection: {ejectionCapRounding: ROUND}\n", "expected one of FLOOR, CEIL, AT_LEAST_ONE, found `ROUND`"),
        ("  outlierDetection: {maxEjectionPercent: 120}\n", "spec.outlierDetection.maxEjectionPercent: expected an integer between 0 and 100"),
        ("  classification: {failureStatuses: [\"599-500\"]}\n", "spec.classification.failureStatuses[0]: expected an HTTP status (e.g. 503) or a range (e.g. \"500-599\")"),
        ("  classification: {grpcFailures: [UNAVAILBLE]}\n", "spec.classification.grpcFailures[0]: unknown gRPC status `UNAVAILBLE`: expected one of CANCELLED,"),
        ("  retries: {backoff: {baseInterval: 1s, maxInterval: 100ms}}\n", "spec.retries.backoff.maxInterval: maxInterval (100ms) is shorter than baseInterval (1s)"),
        ("  retries: {maxReplayBytes: -1}\n", "spec.retries.maxReplayBytes: expected an integer between 0 and 67108864"),
    ];
    for (body, expected) in cases {
        let e = the_error(&policy(body));
        assert!(e.contains(expected), "{body}: expected `{expected}` in `{e}`");
        assert!(e.starts_with("error: mesh.yaml:") && e.contains("ResiliencePolicy/p: "), "{e}");
    }
}

#[test]
fn policy_targets_must_exist() {
    let policy = |target: &str| {
        mesh("", "", &format!("---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: p}}\nspec:\n  target: {target}\n"))
    };
    assert_eq!(
        the_error(&policy("{host: payment.svc.cluster.local}")),
        "error: mesh.yaml:35:18: ResiliencePolicy/p: spec.target.host: unknown host `payment.svc.cluster.local`: no ServiceEntry declares it (IST0101: referenced host not found); add a ServiceEntry with `hosts: [payment.svc.cluster.local]`, its ports and endpoints"
    );
    assert_eq!(
        the_error(&policy("{host: payments.svc.cluster.local, subset: v3}")),
        "error: mesh.yaml:35:54: ResiliencePolicy/p: spec.target.subset: unknown subset `v3` of host `payments.svc.cluster.local`: DestinationRule/payments defines subsets: v1, v2"
    );
    assert!(the_error(&policy("{subset: v1}")).contains("spec.target.host: `host` is required"));
}

#[test]
fn kinds_and_versions_of_the_tripline_group() {
    let doc = |api: &str, kind: &str| {
        mesh("", "", &format!("---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: p}}\nspec:\n  target: {{host: payments.svc.cluster.local}}\n"))
    };
    assert!(the_error(&doc("tripline.dev/v1alpha1", "ResiliencePolicies"))
        .contains("kind: unknown Tripline kind `ResiliencePolicies`: expected one of ResiliencePolicy"));
    assert!(the_error(&doc("tripline.dev/v1", "ResiliencePolicy")).contains(
        "apiVersion: unsupported apiVersion `tripline.dev/v1`: expected one of tripline.dev/v1alpha1"
    ));
    // In another group it would be dropped, and its breakers with it: an error.
    assert!(the_error(&doc("networking.istio.io/v1", "ResiliencePolicy")).contains(
        "apiVersion: `ResiliencePolicy` is a Tripline kind: use apiVersion: tripline.dev/v1alpha1 (found `networking.istio.io/v1`)"
    ));
    let loaded = ok(&doc("tripline.dev/v1alpha1", "ResiliencePolicy"));
    assert!(loaded.warnings.is_empty(), "a policy with only a target is valid: {:#?}", loaded.warnings);
    assert_eq!(cluster(&loaded.plan, "v1").resilience.policy.as_deref(), Some("p"));
}

#[test]
fn wrong_types_everywhere_in_a_policy_never_panic_and_always_explain() {
    let text = mesh(DR_OUTLIER, "", FULL_POLICY);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.starts_with("kind: ResiliencePolicy")).unwrap();
    for i in start..lines.len() {
        let line = lines[i];
        let Some(colon) = line.find(": ") else { continue };
        for bad in ["[]", "{}", "-1", "99999999999999999999", "\"\"", "null", "true", "1e400", "0"] {
            let mut mutated = lines.clone();
            let replaced = format!("{}: {bad}", &line[..colon]);
            mutated[i] = &replaced;
            let text = mutated.join("\n");
            let result = std::panic::catch_unwind(|| load(&src(&text), &LoadOptions::default()));
            let result = result.unwrap_or_else(|_| panic!("panicked on line {i} = {bad}"));
            if let Err(diags) = result {
                assert!(diags.iter().all(|d| d.line > 0 && !d.path.is_empty()), "{diags:#?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Route targets: `target: {virtualService, route}`.

/// `mesh` with two routes: http[0] named `primary` (split over v1 and v2) and http[1], unnamed,
/// to v1; `{extra}` after everything (its first line is line 34).
fn two_routes(extra: &str) -> String {
    let second = "    name: primary\n    match: [{uri: {prefix: /pay}}]\n  - route:\n    - {destination: {host: payments.svc.cluster.local, subset: v1}}\n";
    mesh("", second, extra)
}

fn routes(plan: &Plan) -> &[RoutePlan] {
    &plan.listeners[0].virtual_hosts[0].routes
}

/// A policy document named `name` (its `target:` is on line 39 when it comes first).
fn policy_doc(name: &str, target: &str, body: &str) -> String {
    format!("---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: {name}}}\nspec:\n  target: {target}\n{body}")
}

const ROUTE_BODY: &str = "  circuitBreaker: {consecutiveFailures: 3, openDuration: 2s, halfOpen: {maxProbes: 2}}\n  classification: {failureStatuses: [\"500-599\", 429]}\n  retries: {retryNonIdempotent: true, backoff: {baseInterval: 40ms, maxInterval: 400ms}, maxReplayBytes: 2048}\n";

/// The destination policy on v1: its own breaker and retry settings.
fn v1_policy() -> String {
    policy_doc(
        "v1",
        "{host: payments.svc.cluster.local, subset: v1}",
        "  circuitBreaker: {consecutiveFailures: 9}\n  retries: {backoff: {baseInterval: 100ms, maxInterval: 2s}, maxReplayBytes: 512}\n",
    )
}

#[test]
fn a_route_policy_by_name_compiles_into_the_route_breaker_and_overrides_destination_retries() {
    let text = two_routes(
        &(policy_doc("checkout-route", "{virtualService: payments, route: primary}", ROUTE_BODY)
            + &v1_policy()),
    );
    let loaded = ok(&text);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let rs = routes(&loaded.plan);
    assert_eq!(rs.len(), 2);
    let (primary, second) = (&rs[0], &rs[1]);
    assert_eq!(primary.name, "payments/primary", "named routes are `<virtualService>/<name>`");
    assert_eq!(second.name, "payments/http[1]");
    assert_eq!(primary.policy.as_deref(), Some("checkout-route"));
    let breaker = primary.breaker.clone().expect("the route breaker");
    assert_eq!(
        breaker,
        BreakerConfig {
            consecutive_failures: Some(3),
            open_duration: Duration::from_secs(2),
            probes: 2,
            classifier: breaker.classifier.clone(),
            ..BreakerConfig::default()
        }
    );
    let class = |o| breaker.classifier.classify(&o);
    assert!(class(Outcome::Http(429)).failure, "the policy's classification feeds the route breaker");
    assert!(class(Outcome::Http(503)).failure && !class(Outcome::Http(404)).failure);
    // Built exactly like a destination breaker from the same circuitBreaker and classification.
    let same_on_host = mesh("", "", &policy_doc("h", "{host: payments.svc.cluster.local}", ROUTE_BODY));
    assert_eq!(cluster(&ok(&same_on_host).plan, "v2").resilience.breaker, Some(breaker.clone()));
    // The route's own retries win over v1's policy (the route also goes to v1).
    assert_eq!(
        primary.retry,
        RetryPlan {
            retry_non_idempotent: true,
            backoff_base: Duration::from_millis(40),
            backoff_max: Duration::from_millis(400),
            max_replay_bytes: 2048,
            ..RetryPlan::default()
        }
    );
    // The other route keeps no breaker and v1's retry settings.
    assert_eq!((second.breaker.as_ref(), second.policy.as_deref()), (None, None));
    assert_eq!(
        (second.retry.backoff_base, second.retry.backoff_max, second.retry.max_replay_bytes),
        (Duration::from_millis(100), Duration::from_secs(2), 512)
    );
    // The clusters keep their own: v1's breaker, none on v2.
    let v1 = cluster(&loaded.plan, "v1");
    assert_eq!(v1.resilience.policy.as_deref(), Some("v1"));
    assert_eq!(v1.resilience.breaker.as_ref().and_then(|b| b.consecutive_failures), Some(9));
    assert_eq!(cluster(&loaded.plan, "v2").resilience.policy, None);

    let dump = loaded.dump.text().to_string();
    assert!(dump.contains(r#""target":{"route":"primary","virtualService":"payments"}"#), "{dump}");
    assert!(dump.contains(r#""target":{"host":"payments.svc.cluster.local","subset":"v1"}"#), "{dump}");
}

#[test]
fn a_route_policy_by_index_and_without_retries_keeps_destination_retries() {
    let text = two_routes(
        &(policy_doc("second", "{virtualService: payments, route: \"http[1]\"}", "  circuitBreaker: {}\n")
            + &v1_policy()),
    );
    let loaded = ok(&text);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let rs = routes(&loaded.plan);
    assert_eq!((rs[0].breaker.as_ref(), rs[0].policy.as_deref()), (None, None));
    assert_eq!(rs[1].name, "payments/http[1]");
    assert_eq!(rs[1].policy.as_deref(), Some("second"));
    assert_eq!(rs[1].breaker, Some(BreakerConfig::default()), "`{{}}` is the engine default");
    assert_eq!(rs[1].retry.max_replay_bytes, 512, "no `retries` in the route policy: v1's apply");
    let dump = loaded.dump.text().to_string();
    assert!(dump.contains(r#""target":{"route":"http[1]","virtualService":"payments"}"#), "{dump}");

    // `http[0]` reaches a named route too; its plan name stays `<vs>/<name>`.
    let loaded = ok(&two_routes(&policy_doc(
        "first",
        "{virtualService: payments, route: \"http[0]\"}",
        "  circuitBreaker: {}\n",
    )));
    let r0 = &routes(&loaded.plan)[0];
    assert_eq!((r0.name.as_str(), r0.policy.as_deref()), ("payments/primary", Some("first")));
    assert!(r0.breaker.is_some());
}

#[test]
fn route_target_errors_point_at_the_place_and_say_what_is_accepted() {
    let one = |target: &str, body: &str| the_error(&two_routes(&policy_doc("p", target, body)));
    let forms = "expected either {host, subset} (a destination; subset optional) or {virtualService, route} (one http route of a VirtualService, by its `name` or as `http[<index>]`)";
    assert_eq!(
        one("{host: payments.svc.cluster.local, virtualService: payments, route: primary}", ""),
        format!("error: mesh.yaml:39:11: ResiliencePolicy/p: spec.target: a target has one form: `host` (destination form) cannot be mixed with `virtualService` and `route` (route form); {forms}")
    );
    assert_eq!(
        one("{}", ""),
        format!("error: mesh.yaml:39:11: ResiliencePolicy/p: spec.target: empty target: {forms}")
    );
    assert_eq!(
        one("{virtualService: payments}", ""),
        "error: mesh.yaml:39:11: ResiliencePolicy/p: spec.target.route: `route` is required: expected the route: its `name` or `http[<index>]`"
    );
    assert_eq!(
        one("{virtualService: payment, route: primary}", ""),
        "error: mesh.yaml:39:28: ResiliencePolicy/p: spec.target.virtualService: unknown VirtualService `payment` (defined: payments)"
    );
    assert_eq!(
        one("{virtualService: payments, route: primay}", ""),
        "error: mesh.yaml:39:45: ResiliencePolicy/p: spec.target.route: VirtualService/payments has no route `primay`: its http routes: `primary` (http[0]), http[1]"
    );
    assert_eq!(
        one("{virtualService: payments, route: \"http[2]\"}", ""),
        "error: mesh.yaml:39:45: ResiliencePolicy/p: spec.target.route: VirtualService/payments has no route `http[2]`: its http routes: `primary` (http[0]), http[1]"
    );
    assert_eq!(
        one("{virtualService: payments, route: primary}", "  endpointCircuitBreaker: {consecutiveFailures: 3}\n"),
        "error: mesh.yaml:40:27: ResiliencePolicy/p: spec.endpointCircuitBreaker: `endpointCircuitBreaker` applies to hosts; target the host instead (a policy whose target is a route accepts circuitBreaker, classification and retries)"
    );
    assert!(one("{virtualService: payments, route: primary}", "  outlierDetection: {consecutive5xxErrors: 3}\n")
        .starts_with("error: mesh.yaml:40:21: ResiliencePolicy/p: spec.outlierDetection: `outlierDetection` applies to hosts; target the host instead"));

    // Two policies on one route (by name and by index): an error naming both.
    let both = policy_doc("first", "{virtualService: payments, route: primary}", "  circuitBreaker: {}\n")
        + &policy_doc("second", "{virtualService: payments, route: \"http[0]\"}", "  circuitBreaker: {}\n");
    assert_eq!(
        the_error(&two_routes(&both)),
        "error: mesh.yaml:46:45: ResiliencePolicy/second: spec.target.route: ResiliencePolicy/first and ResiliencePolicy/second both target route `primary` (http[0]) of VirtualService/payments (mesh.yaml:35): merge them into one ResiliencePolicy"
    );
}

#[test]
fn a_route_policy_cannot_target_an_ambiguous_name_and_unnamed_routes_keep_their_index() {
    // Two routes with the same name would share one route breaker.
    let text = two_routes(&policy_doc("p", "{virtualService: payments, route: primary}", ""))
        .replace("  - route:\n    - {destination: {host: payments.svc.cluster.local, subset: v1}}\n", "  - name: primary\n    route:\n    - {destination: {host: payments.svc.cluster.local, subset: v1}}\n");
    let e = the_error(&text);
    assert!(e.contains("spec.target.route: VirtualService/payments has several routes named `primary` (http[0], http[1])"), "{e}");
    // Without a policy nothing changes for unnamed routes.
    let loaded = ok(&mesh("", "", ""));
    assert_eq!(route(&loaded.plan).name, "payments/http[0]");
    assert_eq!((route(&loaded.plan).breaker.as_ref(), route(&loaded.plan).policy.as_deref()), (None, None));
}
