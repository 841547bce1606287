//! Linkerd's ServiceProfile: its routes become the host's mesh routes (conditions, timeouts,
//! isRetryable), its responseClasses say what fails (retries and outlier detection), its
//! retryBudget bounds retries by rate; which profile applies, and where each mistake is
//! pointed at.

use std::time::Duration;

use tripline_config::plan::{RoutePlan, StringMatch};
use tripline_config::{load, Diagnostic, LoadOptions, Loaded, Severity, Source};
use tripline_core::classify::Outcome;

const HOST: &str = "payments.default.svc.cluster.local";

fn entry() -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: payments, namespace: default}}\nspec:\n  hosts: [{HOST}]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.0.1}}, {{address: 10.0.0.2}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: payments, namespace: default}}\nspec:\n  host: {HOST}\n  trafficPolicy: {{outlierDetection: {{consecutive5xxErrors: 3}}}}\n")
}

fn profile(namespace: &str, spec: &str) -> String {
    format!("---\napiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata:\n  name: {HOST}\n  namespace: {namespace}\nspec:\n{spec}")
}

fn sources(text: &str) -> Vec<Source> {
    vec![Source { name: "mesh.yaml".into(), text: text.into() }]
}

fn loaded(text: &str, opts: &LoadOptions) -> Loaded {
    match load(&sources(text), opts) {
        Ok(l) => l,
        Err(d) => panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    let d = load(&sources(text), &LoadOptions::default()).expect_err("config must be refused");
    d.into_iter().filter(|d| d.severity == Severity::Error).collect()
}

fn routes(l: &Loaded) -> &[RoutePlan] {
    &l.plan.listeners[0].virtual_hosts[0].routes
}

const ROUTES: &str = "  routes:
  - name: POST /charge
    condition: {method: POST, pathRegex: /charge}
    responseClasses:
    - condition: {status: {min: 503, max: 503}}
      isFailure: false
    - condition:
        any:
        - status: {min: 500, max: 599}
        - all: [{status: {min: 400}}, {not: {status: {max: 408}}}, {status: {max: 409}}]
      isFailure: true
    isRetryable: true
    timeout: 2s
  - name: reads
    condition:
      all:
      - method: GET
      - any: [{pathRegex: '/items/[^/]+'}, {pathRegex: /carts/.*}]
    responseClasses:
    - condition: {status: {min: 503, max: 503}}
      isFailure: false
    - condition:
        any: [{status: {min: 500}}, {status: {min: 409, max: 409}}]
      isFailure: true
  retryBudget: {retryRatio: 0.25, minRetriesPerSecond: 5, ttl: 20s}
";

#[test]
fn routes_conditions_timeouts_and_retries_become_the_host_s_mesh_routes() {
    let l = loaded(&format!("{}{}", entry(), profile("default", ROUTES)), &LoadOptions::default());
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);
    let r = routes(&l);
    let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [format!("{HOST}/POST /charge"), format!("{HOST}/reads"), format!("{HOST}/other requests")]
    );

    // POST /charge: method and whole-path regex; 2 s; retried whatever the method, on the
    // statuses its classes fail (5xx but 503, and 409), failed connections and resets.
    let charge = &r[0];
    assert_eq!(charge.matches.len(), 1);
    assert!(matches!(&charge.matches[0].method, Some(StringMatch::Exact(m)) if m == "POST"));
    let uri = charge.matches[0].uri.as_ref().unwrap();
    assert!(uri.matches("/charge") && !uri.matches("/charge/again") && !uri.matches("/x/charge"));
    assert_eq!(charge.timeout, Some(Duration::from_secs(2)));
    assert_eq!(charge.retry.attempts, 10);
    assert!(charge.retry.retry_non_idempotent, "isRetryable: the route may be retried, POST included");
    let on = charge.retry.retry_on;
    assert!(
        on.retriable_status_codes && on.connect_failure && on.reset && on.refused_stream && !on.server_error
    );
    let mut codes = charge.retry.status_codes.clone();
    codes.sort();
    let expected: Vec<u16> = [409].into_iter().chain(500..=502).chain(504..=599).collect();
    assert_eq!(codes, expected);

    // reads: `all` of a method and `any` of two paths is two match entries; Linkerd's default
    // timeout; not retryable: only what never reached the application.
    let reads = &r[1];
    assert_eq!(reads.matches.len(), 2);
    assert!(reads.matches.iter().all(|m| matches!(&m.method, Some(StringMatch::Exact(g)) if g == "GET")));
    assert!(reads.matches[0].uri.as_ref().unwrap().matches("/items/7"));
    assert!(reads.matches[1].uri.as_ref().unwrap().matches("/carts/7/lines"));
    assert_eq!(reads.timeout, Some(Duration::from_secs(10)));
    assert!(!reads.retry.retry_non_idempotent && !reads.retry.retry_on.retriable_status_codes);
    assert!(reads.retry.retry_on.connect_failure && !reads.retry.retry_on.server_error);

    // Every other request: to the host, no timeout.
    assert!(r[2].matches.is_empty());
    assert_eq!(r[2].timeout, None);

    // The cluster: the budget by rate, and outlier detection judging by the classes.
    let c = &l.plan.clusters[0].resilience;
    let rate = c.retry_budget.rate.expect("retryBudget");
    assert_eq!((rate.retry_ratio, rate.min_retries_per_second, rate.ttl), (0.25, 5, Duration::from_secs(20)));
    let classifier = &c.outlier.as_ref().expect("outlierDetection").classifier;
    assert!(!classifier.classify(&Outcome::Http(503)).failure, "503 is not a failure by the classes");
    assert!(classifier.classify(&Outcome::Http(409)).failure);
    assert!(classifier.classify(&Outcome::Http(500)).failure);
    assert!(!classifier.classify(&Outcome::Http(404)).failure);
}

#[test]
fn a_profile_without_routes_leaves_routing_alone_and_brings_its_budget() {
    let vs = format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: payments, namespace: default}}\nspec:\n  hosts: [{HOST}]\n  http:\n  - timeout: 3s\n    route: [{{destination: {{host: {HOST}}}}}]\n");
    let text = format!("{}{vs}{}", entry(), profile("default", "  retryBudget: {retryRatio: 0.1}\n"));
    let l = loaded(&text, &LoadOptions::default());
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);
    assert_eq!(routes(&l).len(), 1);
    assert_eq!(routes(&l)[0].timeout, Some(Duration::from_secs(3)));
    let rate = l.plan.clusters[0].resilience.retry_budget.rate.unwrap();
    assert_eq!((rate.retry_ratio, rate.min_retries_per_second, rate.ttl), (0.1, 10, Duration::from_secs(10)));

    // Routes in both places: one must go.
    let text = format!("{}{vs}{}", entry(), profile("default", ROUTES));
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(
        (e[0].line, e[0].path.as_str()),
        (33, "ServiceProfile/payments.default.svc.cluster.local: spec.routes")
    );
    assert!(
        e[0].message
            .starts_with("VirtualService/payments routes `payments.default.svc.cluster.local` on the mesh"),
        "{}",
        e[0]
    );
}

#[test]
fn the_profile_in_the_workload_s_namespace_wins_then_the_service_s() {
    let mine = profile("shop", "  routes:\n  - name: mine\n    condition: {method: GET}\n");
    let theirs = profile("default", "  routes:\n  - name: theirs\n    condition: {method: GET}\n");
    let elsewhere = profile("other", "  routes:\n  - name: elsewhere\n    condition: {method: GET}\n");
    let pick = |text: String, ns: Option<&str>| {
        let opts = LoadOptions { workload_namespace: ns.map(String::from), ..LoadOptions::default() };
        let l = loaded(&text, &opts);
        let left_out: Vec<String> = l.warnings.iter().map(|w| w.path.clone()).collect();
        (routes(&l)[0].name.clone(), left_out.len())
    };
    let all = format!("{}{elsewhere}{theirs}{mine}", entry());
    assert_eq!(pick(all.clone(), Some("shop")), (format!("{HOST}/mine"), 2));
    assert_eq!(pick(all, Some("web")), (format!("{HOST}/theirs"), 2));
    assert_eq!(pick(format!("{}{elsewhere}{mine}", entry()), None), (format!("{HOST}/elsewhere"), 1));
}

#[test]
fn mistakes_are_pointed_at() {
    let cases: &[(&str, u32, &str, &str)] = &[
        (
            "  routes:\n  - name: r\n    condition: {not: {method: GET}}\n",
            25,
            "spec.routes[0].condition.not",
            "is not implemented yet; Tripline's route matches cannot negate",
        ),
        ("  routes:\n  - name: r\n    condition: {}\n", 25, "spec.routes[0].condition", "an empty condition"),
        (
            "  routes:\n  - name: r\n    condition: {all: [{pathRegex: /a}, {pathRegex: /b}]}\n",
            25,
            "spec.routes[0].condition.all[1]",
            "two `pathRegex` that must both hold",
        ),
        ("  routes:\n  - name: r\n    condition: {pathRegex: '('}\n", 25, "spec.routes[0].condition.pathRegex", "invalid regex"),
        ("  routes:\n  - condition: {method: GET}\n", 24, "spec.routes[0].name", "`name` is required"),
        ("  retryBudget: {ttl: 2m}\n", 23, "spec.retryBudget.ttl", "between 1s and 60s"),
        ("  retryBudget: {retryRatio: -1}\n", 23, "spec.retryBudget.retryRatio", ""),
        ("  dstOverrides: [{authority: x, weight: 1}]\n", 23, "spec.dstOverrides", "VirtualService's route weights"),
        (
            "  routes:\n  - name: r\n    condition: {method: GET}\n    responseClasses: [{condition: {status: {min: 500, max: 400}}}]\n",
            26,
            "spec.routes[0].responseClasses[0].condition.status",
            "min 500 is above max 400",
        ),
        (
            "  routes:\n  - name: a\n    condition: {method: GET}\n    responseClasses: [{condition: {status: {min: 500}}, isFailure: true}]\n  - name: b\n    condition: {method: PUT}\n    responseClasses: [{condition: {status: {min: 400}}, isFailure: true}]\n",
            29,
            "spec.routes[1].responseClasses",
            "fail statuses 400-599 where route `a`'s fail 500-599",
        ),
    ];
    for (spec, line, path, fragment) in cases {
        let e = errors(&format!("{}{}", entry(), profile("default", spec)));
        assert_eq!(e.len(), 1, "{spec}: {e:#?}");
        let want = format!("ServiceProfile/{HOST}: {path}");
        assert_eq!((e[0].line as u32, e[0].path.as_str()), (*line, want.as_str()), "{spec}: {}", e[0]);
        assert!(e[0].message.contains(fragment), "{spec}: {}", e[0]);
    }
}

#[test]
fn a_resilience_policy_that_classifies_otherwise_is_an_error() {
    let policy = format!("---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: payments, namespace: default}}\nspec:\n  target: {{host: {HOST}}}\n  classification: {{failureStatuses: ['500-599', '429']}}\n");
    let spec = "  routes:\n  - name: a\n    condition: {method: GET}\n    responseClasses: [{condition: {status: {min: 500}}, isFailure: true}]\n";
    let e = errors(&format!("{}{policy}{}", entry(), profile("default", spec)));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].message.starts_with("ResiliencePolicy/payments classifies this host's failures differently"),
        "{}",
        e[0]
    );
    // The same statuses: fine.
    let spec =
        spec.replace("min: 500}", "min: 429, max: 429}}, isFailure: true}, {condition: {status: {min: 500}");
    let l = loaded(&format!("{}{policy}{}", entry(), profile("default", &spec)), &LoadOptions::default());
    assert!(l.warnings.is_empty(), "{:#?}", l.warnings);
}
