//! Config that would do something other than what it says is refused: every field Tripline
//! does not act on is an error naming it and what to do, unless ignoring it provably changes
//! nothing a request gets (then a warning saying why); settings that act on HTTP requests are
//! refused on a TCP route's cluster; a config without a listener is refused.

mod common;

use common::{errors, ok, src, the_error};
use tripline_config::gaps;
use tripline_config::{load, Diagnostic, LoadOptions, Severity};

/// With [`TCP`], a config with a place for one extra field in every mapping the audit covers:
/// `@NAME` lines are replaced by the field (or removed).
const HTTP: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  servers:
  - port:
      number: 18130
      name: http
      protocol: HTTP
      @PORT
    hosts: ["*"]
    tls:
      httpsRedirect: false
      @SERVER_TLS
    @SERVER
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {http: 18080}
    @ENDPOINT
  @SERVICE_ENTRY
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - match:
    - uri: {prefix: /api}
      @MATCH
    route:
    - destination: {host: backend.local}
      @DESTINATION
    retries:
      attempts: 2
      @RETRIES
    @ROUTE
  - route:
    - destination: {host: backend.local}
    fault:
      abort:
        httpStatus: 503
        percentage: {value: 0}
        @ABORT
  @VIRTUAL_SERVICE
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      @LOAD_BALANCER
    connectionPool:
      tcp:
        maxConnections: 10
        @TCP_POOL
      http:
        http2MaxRequests: 10
        @HTTP_POOL
    tls:
      mode: DISABLE
      @CLIENT_TLS
    @TRAFFIC_POLICY
  @DESTINATION_RULE
"#;

/// A TCP listener and route; `@L4_MATCH` is in its match.
const TCP: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tcp-edge}
spec:
  servers:
  - port: {number: 18131, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.local]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}, {address: 127.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: ["*"]
  gateways: [tcp-edge]
  tcp:
  - match:
    - port: 18131
      @L4_MATCH
    route:
    - destination: {host: db.local}
"#;

/// Where each list of `gaps` goes in the template, and the field path of that place.
const PLACES: &[(&str, &str, gaps::Refused, gaps::Ignored)] = &[
    ("@SERVER", "Gateway/edge: spec.servers[0]", gaps::SERVER, &[]),
    ("@SERVER_TLS", "Gateway/edge: spec.servers[0].tls", gaps::SERVER_TLS, &[]),
    ("@PORT", "Gateway/edge: spec.servers[0].port", &[], gaps::GATEWAY_PORT),
    ("@SERVICE_ENTRY", "ServiceEntry/backend: spec", gaps::SERVICE_ENTRY, &[]),
    ("@ENDPOINT", "ServiceEntry/backend: spec.endpoints[0]", gaps::WORKLOAD_ENTRY, &[]),
    ("@VIRTUAL_SERVICE", "VirtualService/backend: spec", gaps::VIRTUAL_SERVICE, &[]),
    ("@ROUTE", "VirtualService/backend: spec.http[0]", gaps::HTTP_ROUTE, &[]),
    ("@MATCH", "VirtualService/backend: spec.http[0].match[0]", gaps::MATCH, gaps::MATCH_IGNORED),
    ("@ABORT", "VirtualService/backend: spec.http[1].fault.abort", gaps::FAULT_ABORT, &[]),
    ("@RETRIES", "VirtualService/backend: spec.http[0].retries", &[], gaps::RETRIES_IGNORED),
    ("@L4_MATCH", "VirtualService/db: spec.tcp[0].match[0]", gaps::L4_MATCH, &[]),
    ("@DESTINATION_RULE", "DestinationRule/backend: spec", gaps::DESTINATION_RULE, &[]),
    ("@TRAFFIC_POLICY", "DestinationRule/backend: spec.trafficPolicy", gaps::TRAFFIC_POLICY, &[]),
    ("@CLIENT_TLS", "DestinationRule/backend: spec.trafficPolicy.tls", gaps::CLIENT_TLS, &[]),
    ("@LOAD_BALANCER", "DestinationRule/backend: spec.trafficPolicy.loadBalancer", gaps::LOAD_BALANCER, &[]),
    ("@TCP_POOL", "DestinationRule/backend: spec.trafficPolicy.connectionPool.tcp", gaps::TCP_POOL, &[]),
    ("@HTTP_POOL", "DestinationRule/backend: spec.trafficPolicy.connectionPool.http", gaps::HTTP_POOL, &[]),
];

/// The template ([`HTTP`] and [`TCP`]) with `line` at `place` (indented like the marker) and
/// the other markers gone.
fn with(place: &str, line: &str) -> String {
    fill(&format!("{HTTP}---\n{TCP}"), place, line)
}

fn fill(template: &str, place: &str, line: &str) -> String {
    template
        .lines()
        .filter_map(|l| match l.trim() {
            m if m == place => Some(format!("{}{line}", &l[..l.len() - l.trim_start().len()])),
            m if m.starts_with('@') => None,
            _ => Some(l.to_string()),
        })
        .map(|l| l + "\n")
        .collect()
}

/// [`TCP`] alone, without its marker.
fn tcp() -> String {
    fill(TCP, "", "")
}

/// A value each field accepts as far as Tripline reads it (most are not read at all).
fn value(field: &str) -> &'static str {
    match field {
        "retryRemoteLocalities" => "true",
        _ => "{}",
    }
}

fn shown(d: &[Diagnostic]) -> String {
    d.iter().map(|d| format!("{d}\n")).collect()
}

#[test]
fn the_template_alone_is_valid_and_quiet() {
    let loaded = ok(&with("", ""));
    assert!(loaded.warnings.is_empty(), "{}", shown(&loaded.warnings));
}

#[test]
fn every_refused_field_is_an_error_naming_its_path_and_what_to_do() {
    for &(place, at, refused, _) in PLACES {
        for &(field, fix) in refused {
            let text = with(place, &format!("{field}: {}", value(field)));
            let (resource, path) = at.split_once(": ").unwrap();
            let path = format!("{path}.{field}");
            let want = format!("{resource}: {path}: `{path}` is not implemented yet; {fix}");
            let errors = errors(&text);
            assert!(
                errors.iter().any(|e| e.to_string().ends_with(&want)),
                "{want}\nnot in:\n{}",
                shown(&errors)
            );
        }
    }
}

#[test]
fn every_ignored_field_is_a_warning_saying_why_it_is_harmless() {
    for &(place, at, _, ignored) in PLACES {
        for &(field, why) in ignored {
            let loaded = ok(&with(place, &format!("{field}: {}", value(field))));
            let (resource, path) = at.split_once(": ").unwrap();
            let path = format!("{path}.{field}");
            let want = format!("{resource}: {path}: `{path}` is ignored: {why}");
            let w = &loaded.warnings;
            assert!(w.len() == 1 && w[0].to_string().ends_with(&want), "{want}\nnot:\n{}", shown(w));
        }
    }
}

/// The issue's case: a match entry with only fields Tripline does not evaluate took every
/// request. Now it is an error at the field, with its line and column.
/// `queryParams`, `withoutHeaders`, `ignoreUriCase` and `scheme` are evaluated (issue 18): they
/// compile into the route's match.
#[test]
fn query_params_without_headers_and_ignore_uri_case_compile_into_the_match() {
    let text = with(
        "@MATCH",
        "queryParams: {debug: {exact: \"\"}, v: {prefix: \"2\"}}\n      withoutHeaders: {X-Canary: {exact: \"true\"}}\n      ignoreUriCase: true\n      scheme: {exact: http}",
    );
    let loaded = tripline_config::load(&common::src(&text), &tripline_config::LoadOptions::default())
        .unwrap_or_else(|d| panic!("{}", shown(&d)));
    let m = &loaded.plan.listeners[0].virtual_hosts[0].routes[0].matches[0];
    assert!(m.ignore_uri_case);
    assert!(matches!(&m.scheme, Some(tripline_config::plan::StringMatch::Exact(s)) if s == "http"));
    let names: Vec<&str> = m.query_params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["debug", "v"]);
    assert_eq!(m.without_headers.len(), 1);
    assert_eq!(m.without_headers[0].0, "x-canary", "header names are lower-cased");
    let e = the_error(&with("@MATCH", "queryParams: [debug]"));
    assert!(
        e.contains(
            "spec.http[0].match[0].queryParams: expected a mapping of query parameter names to matches"
        ),
        "{e}"
    );
}

/// A misspelt condition (`uir`, `exct`) would leave the match wider than written: an error,
/// with the suggestion, not a warning.
#[test]
fn a_misspelt_match_condition_is_an_error_with_a_suggestion() {
    let e = errors(&with("@MATCH", "methd: {exact: GET}"));
    assert_eq!(e.len(), 1, "{}", shown(&e));
    assert!(e[0].to_string().contains("spec.http[0].match[0].methd: unknown field `methd` (not part of Istio's HTTPMatchRequest; did you mean `method`?); a condition Tripline does not read would widen this match"), "{}", e[0]);
    let text = with("", "").replace("uri: {prefix: /api}", "uri: {prefx: /api}");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{}", shown(&e));
    assert!(e[0].to_string().contains("spec.http[0].match[0].uri.prefx: unknown field `prefx` (not part of Istio's StringMatch; did you mean `prefix`?)"), "{}", e[0]);
    // Elsewhere a typo is an error too: a route without the timeout it asked for.
    let e = errors(&with("@ROUTE", "timout: 1s"));
    assert_eq!(e.len(), 1, "{}", shown(&e));
    assert!(
        e[0].message.contains(
            "did you mean `timeout`?); Tripline does not act on it, so what it asks for would not happen"
        ),
        "{}",
        e[0]
    );
}

/// A route that answers by itself (redirect, directResponse) or delegates was dropped, and its
/// requests fell through to the next route: an error now.
#[test]
fn a_delegating_route_is_an_error_and_routes_that_answer_themselves_are_taken() {
    let with_route = |yaml: &str| {
        with("", "").replace(
            "  - route:\n    - destination: {host: backend.local}\n",
            &format!("  - {yaml}\n  - route:\n    - destination: {{host: backend.local}}\n"),
        )
    };
    let e = errors(&with_route("delegate: {name: other}"));
    assert_eq!(e.len(), 1, "{}", shown(&e));
    let want = "spec.http[1].delegate: `spec.http[1].delegate` is not implemented yet; ";
    assert!(e[0].to_string().contains(want), "{}", e[0]);
    for answer in ["redirect: {uri: /v2}", "directResponse: {status: 503}"] {
        let loaded = ok(&with_route(answer));
        let routes = &loaded.plan.listeners[0].virtual_hosts[0].routes;
        assert!(routes[1].features.answer.is_some() && routes[1].destinations.is_empty(), "{answer}");
    }
}

#[test]
fn export_to_needs_the_workload_s_namespace_to_narrow_and_names_namespaces() {
    let loaded = ok(&with("@SERVICE_ENTRY", "exportTo: [\"*\"]"));
    assert!(loaded.warnings.is_empty(), "{}", shown(&loaded.warnings));
    // A resource without a namespace is in the workload's: `.` keeps it.
    let loaded = ok(&with("@DESTINATION_RULE", "exportTo: [\".\"]"));
    assert!(loaded.warnings.is_empty(), "{}", shown(&loaded.warnings));
    let e = errors(&with("@DESTINATION_RULE", "exportTo: [billing]"));
    assert_eq!(e.len(), 1, "{}", shown(&e));
    assert!(e[0].to_string().contains("DestinationRule/backend: spec.exportTo: `exportTo` limits where this DestinationRule applies, and this proxy's namespace is not known: give --workload-namespace"), "{}", e[0]);
    let e = errors(&with("@DESTINATION_RULE", "exportTo: [\"Bad_NS\"]"));
    assert!(e[0].to_string().contains("spec.exportTo[0]: `Bad_NS` is not a namespace"), "{}", e[0]);
}

#[test]
fn upstream_protocol_choices_other_than_tripline_s_are_errors() {
    for ok_value in
        ["h2UpgradePolicy: DO_NOT_UPGRADE", "h2UpgradePolicy: DEFAULT", "useClientProtocol: false"]
    {
        let loaded = ok(&with("@HTTP_POOL", ok_value));
        assert!(loaded.warnings.is_empty(), "{ok_value}: {}", shown(&loaded.warnings));
    }
    for (bad, says) in [
        ("h2UpgradePolicy: UPGRADE", "h2UpgradePolicy: `UPGRADE` is not implemented yet"),
        ("useClientProtocol: true", "useClientProtocol: `useClientProtocol: true` is not implemented yet"),
    ] {
        let e = errors(&with("@HTTP_POOL", bad));
        assert!(e.len() == 1 && e[0].to_string().contains(says), "{bad}: {}", shown(&e));
    }
}

#[test]
fn istio_kinds_tripline_does_not_read_are_errors_and_foreign_ones_warnings() {
    let doc = |api: &str, kind: &str| {
        format!("{}\n---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{}}\n", with("", ""))
    };
    for (api, kind) in [
        ("networking.istio.io/v1", "WorkloadEntry"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("security.istio.io/v1", "RequestAuthentication"),
        ("networking.istio.io/v1", "VirtualSevice"),
    ] {
        let e = errors(&doc(api, kind));
        assert_eq!(e.len(), 1, "{}", shown(&e));
        assert!(
            e[0].to_string().contains(&format!(
                "kind: kind `{kind}` ({api}) is not implemented yet; remove it from Tripline's config"
            )),
            "{}",
            e[0]
        );
    }
    for (api, kind) in
        [("telemetry.istio.io/v1", "Telemetry"), ("v1", "Service"), ("linkerd.io/v1alpha2", "Server")]
    {
        let loaded = ok(&doc(api, kind));
        assert!(
            loaded.warnings[0].message.contains("is not supported by Tripline and is ignored"),
            "{}",
            shown(&loaded.warnings)
        );
    }
}

/// Two DestinationRules for one host, or one host in two ServiceEntries: only the first was
/// applied, so the second one's limits or endpoints silently did nothing.
#[test]
fn a_second_rule_or_entry_for_a_host_is_an_error() {
    let second_rule = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: again}\nspec:\n  host: backend.local\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}\n";
    let e = errors(&format!("{}\n{second_rule}", with("", "")));
    assert_eq!(e.len(), 1, "{}", shown(&e));
    assert!(e[0].to_string().contains("DestinationRule/again: spec.host: DestinationRule/backend already applies to host `backend.local` (mesh.yaml:"), "{}", e[0]);
    assert!(e[0]
        .message
        .ends_with("merge the two into one DestinationRule (Tripline applies one per host and namespace)"));
    let second_entry = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: again}\nspec:\n  hosts: [backend.local]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1}]\n";
    let e = errors(&format!("{}\n{second_entry}", with("", "")));
    assert_eq!(e.len(), 1, "{}", shown(&e));
    assert!(e[0].to_string().contains("ServiceEntry/again: spec.hosts[0]: host `backend.local` is already declared by ServiceEntry/backend: declare each host in one ServiceEntry"), "{}", e[0]);
}

// ---------------------------------------------------------------------------------------------
// TCP routes and their clusters

fn tcp_with_rule(traffic_policy: &str) -> String {
    format!("{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: db}}\nspec:\n  host: db.local\n  trafficPolicy:\n{traffic_policy}", tcp())
}

#[test]
fn a_tcp_cluster_takes_its_pool_limits_and_outlier_detection() {
    let loaded = ok(&tcp_with_rule(
        "    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 1s}}\n    outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 30s}\n    loadBalancer: {consistentHash: {useSourceIp: true}}\n",
    ));
    assert!(loaded.warnings.is_empty(), "{}", shown(&loaded.warnings));
    let c = &loaded.plan.clusters[0];
    assert_eq!(c.pool.max_connections, 10);
    assert_eq!(c.resilience.outlier.as_ref().unwrap().consecutive_5xx_errors, Some(2));
}

#[test]
fn settings_that_act_on_http_requests_are_errors_on_a_tcp_cluster() {
    let text = tcp_with_rule(
        "    connectionPool:\n      tcp: {maxConnections: 10}\n      http: {http1MaxPendingRequests: 5, maxRetries: 3}\n    retryBudget: {percent: 10}\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n",
    );
    let e: Vec<String> = errors(&text).iter().map(ToString::to_string).collect();
    let tail = "acts on HTTP requests only, and `outbound|5432||db.local` is the cluster of a `tcp` route: remove it, or send the TCP traffic to a host of its own";
    let expected = [
        "mesh.yaml:40:37: DestinationRule/db: spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
        "mesh.yaml:38:14: DestinationRule/db: spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests",
        "mesh.yaml:38:42: DestinationRule/db: spec.trafficPolicy.connectionPool.http.maxRetries",
        "mesh.yaml:39:18: DestinationRule/db: spec.trafficPolicy.retryBudget",
    ];
    assert_eq!(e.len(), expected.len(), "{e:#?}");
    for want in expected {
        let path = want.rsplit(": ").next().unwrap();
        assert!(
            e.iter().any(|e| e.contains(want) && e.contains(&format!("`{path}` {tail}"))),
            "{want}\nnot in {e:#?}"
        );
    }
}

#[test]
fn breakers_retries_and_latency_ejection_of_a_policy_are_errors_on_a_tcp_cluster() {
    let policy = "---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: db}\nspec:\n  target: {host: db.local}\n  circuitBreaker: {consecutiveFailures: 5}\n  endpointCircuitBreaker: {consecutiveFailures: 3}\n  retries: {retryNonIdempotent: true}\n  outlierDetection: {consecutiveLocalOriginFailures: 2, latency: {factor: 3}}\n  classification: {connectFailureIsFailure: true}\n";
    let e: Vec<String> = errors(&format!("{}{policy}", tcp())).iter().map(ToString::to_string).collect();
    let paths = [
        "spec.circuitBreaker",
        "spec.endpointCircuitBreaker",
        "spec.retries",
        "spec.outlierDetection.latency",
    ];
    assert_eq!(e.len(), paths.len(), "{e:#?}");
    for p in paths {
        assert!(
            e.iter()
                .any(|e| e.contains(&format!("ResiliencePolicy/db: {p}: `{p}` acts on HTTP requests only"))),
            "{p}\nnot in {e:#?}"
        );
    }
    // What a TCP cluster does take from a policy loads.
    let policy = "---\napiVersion: tripline.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: db}\nspec:\n  target: {host: db.local}\n  outlierDetection: {consecutiveLocalOriginFailures: 2, splitExternalLocalOriginErrors: true, probe: {concurrency: 1}}\n  classification: {timeoutIsFailure: false}\n";
    let loaded = ok(&format!("{}{policy}", tcp()));
    assert!(loaded.warnings.is_empty(), "{}", shown(&loaded.warnings));
}

#[test]
fn a_tcp_route_after_one_that_takes_every_connection_is_a_warning() {
    let catch_all = tcp().replace("  - match:\n    - port: 18131\n    route:", "  - route:");
    let second = format!("{catch_all}  - route:\n    - destination: {{host: db.local}}\n");
    let w: Vec<String> = ok(&second).warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("VirtualService/db: spec.tcp[1]: this `tcp` route is never taken on listener `tcp-edge/tcp`: `db/tcp[0]` before it takes every connection"), "{w:#?}");
    let other = format!("{catch_all}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: db2}}\nspec:\n  hosts: [\"*\"]\n  gateways: [tcp-edge]\n  tcp:\n  - match: [{{destinationSubnets: [10.0.0.0/8]}}]\n    route:\n    - destination: {{host: db.local}}\n");
    let w: Vec<String> = ok(&other).warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.len() == 1 && w[0].contains("VirtualService/db2: spec.tcp[0]: this `tcp` route is never taken"),
        "{w:#?}"
    );
}

#[test]
fn tcp_routes_are_taken_in_order_by_destination_subnet() {
    let text = format!(
        "{}  - match: [{{destinationSubnets: [\"127.0.0.2/32\", \"fd00::/8\"]}}, {{destinationSubnets: [10.1.0.0/16]}}]\n    route:\n    - destination: {{host: db.local}}\n",
        tcp().replace("  - match:\n    - port: 18131\n", "  - match:\n    - destinationSubnets: [127.0.0.0/8]\n")
    );
    let loaded = ok(&text);
    let routes = &loaded.plan.listeners[0].tcp_routes;
    assert_eq!(routes.len(), 2);
    let shown: Vec<Vec<String>> = routes[1]
        .matches
        .iter()
        .map(|m| m.iter().map(|c| format!("{}/{}", c.addr, c.prefix)).collect())
        .collect();
    assert_eq!(shown, [vec!["127.0.0.2/32", "fd00::/8"], vec!["10.1.0.0/16"]]);
    let e = errors(&tcp().replace("    - port: 18131\n", "    - destinationSubnets: [10.0.0.0/33]\n"));
    assert!(
        e[0].to_string().contains(
            "spec.tcp[0].match[0].destinationSubnets[0]: `10.0.0.0/33`: the prefix length is 0 to 32"
        ),
        "{}",
        shown_first(&e)
    );
}

fn shown_first(e: &[Diagnostic]) -> String {
    e.first().map(ToString::to_string).unwrap_or_default()
}

/// A `tcp` route no TCP listener serves (the mesh listener is HTTP) takes no connection: a
/// warning that says so, and the HTTP-only settings of its cluster are not its business.
#[test]
fn a_tcp_route_no_tcp_listener_serves_is_a_warning() {
    let text = tcp_with_rule("    connectionPool: {http: {maxRetries: 3}}\n")
        .replace("  gateways: [tcp-edge]\n", "");
    let loaded = ok(&text);
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].contains("mesh.yaml:24:5: VirtualService/db: spec.tcp[0]: no TCP listener serves this `tcp` route, so it receives no connection (the mesh listener serves HTTP only)"), "{w:#?}");
    assert!(
        w[1].contains("listener `tcp-edge/tcp` (0.0.0.0:18131): no VirtualService gives it a `tcp` route"),
        "{w:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A config without a listener

fn load_err(sources: &[tripline_config::Source]) -> Vec<Diagnostic> {
    load(sources, &LoadOptions::default()).expect_err("refused")
}

#[test]
fn an_empty_config_is_an_error_at_the_start_of_its_file() {
    for text in ["", "\n\n", "# nothing here yet\n", "---\n"] {
        let e = load_err(&src(text));
        assert_eq!(e.len(), 1, "{text:?}: {}", shown(&e));
        assert_eq!(
            e[0].to_string(),
            "error: mesh.yaml:1:1: (config): the configuration is empty (no YAML document); Tripline would accept no connection, so it refuses to run on it (a reload keeps the running config): add a Gateway with a server, or a VirtualService for the mesh listener",
            "{text:?}"
        );
    }
}

#[test]
fn a_config_without_a_listener_is_an_error() {
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec: {host: x.local}\n";
    let e: Vec<Diagnostic> =
        load_err(&src(rule)).into_iter().filter(|d| d.severity == Severity::Error).collect();
    assert_eq!(e.len(), 1, "{}", shown(&e));
    assert!(e[0].to_string().starts_with("error: mesh.yaml:1:1: (config): the configuration has no listener: no Gateway server, and no VirtualService without `gateways` (the mesh listener)"), "{}", e[0]);
    // `validate` checks such a file on its own: a warning there, which --strict makes fatal.
    let lenient = LoadOptions { listeners_required: false, ..LoadOptions::default() };
    let loaded = load(&src(rule), &lenient).expect("validate accepts a file of rules alone");
    assert!(
        loaded.warnings.iter().any(|w| w
            .to_string()
            .starts_with("warning: mesh.yaml:1:1: (config): the configuration has no listener")),
        "{:?}",
        loaded.warnings
    );
    assert!(load(&src(""), &lenient).is_err(), "an empty configuration is an error for validate too");
    // A file being rewritten next to one that still holds the listener: the config is whole.
    let sources = vec![
        tripline_config::Source { name: "empty.yaml".into(), text: String::new() },
        tripline_config::Source { name: "mesh.yaml".into(), text: with("", "") },
    ];
    assert!(load(&sources, &LoadOptions::default()).is_ok());
}

/// docs/configuration.md tells users which fields are refused and which ignored: it must name
/// every one of them.
#[test]
fn the_configuration_docs_name_every_refused_and_ignored_field() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md")).unwrap();
    let section = docs.split("## Fields Tripline does not act on yet").nth(1).expect("the section");
    let docs = section.split("\n## ").next().unwrap();
    let mut missing = Vec::new();
    let retry_on: Vec<&str> =
        gaps::RETRY_ON_IGNORED.iter().chain(gaps::RETRY_ON_REFUSED).map(|(w, _)| *w).collect();
    for &(_, _, refused, ignored) in PLACES {
        for (field, _) in refused.iter().chain(ignored) {
            if !docs.contains(&format!("`{field}`")) {
                missing.push(*field);
            }
        }
    }
    missing.extend(retry_on.into_iter().filter(|w| !docs.contains(&format!("`{w}`"))));
    assert!(missing.is_empty(), "docs/configuration.md does not name: {missing:?}");
}
