//! The issue-2 example compiles to the expected plan; typical mistakes give the file, line,
//! column, path and what was expected; hostile input never panics.

use std::net::SocketAddr;
use std::time::Duration;

use tripline_config::plan::*;
mod common;

use common::{errors, ok, src, the_error};
use tripline_config::{load, LoadOptions, Severity};

const EXAMPLE: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  servers:
  - port: {number: 18130, name: http, protocol: HTTP}
    hosts: ["*"]
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
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route:
    - destination: {host: backend.local, port: {number: 80}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend.local
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool:
      tcp: {maxConnections: 100}
      http: {http1MaxPendingRequests: 100, http2MaxRequests: 1000}
"#;

#[test]
fn issue_2_example_compiles_to_the_expected_plan() {
    let loaded = ok(EXAMPLE);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let plan = loaded.plan;
    assert_eq!(plan.listeners.len(), 1, "no mesh listener when every VirtualService names a gateway");
    let l = &plan.listeners[0];
    assert_eq!(l.name, "edge/http");
    assert_eq!(l.bind, "0.0.0.0:18130".parse::<SocketAddr>().unwrap());
    assert_eq!(l.protocol, ListenerProtocol::Http);
    assert!(l.tcp_routes.is_empty());
    assert_eq!(l.virtual_hosts.len(), 1);
    assert_eq!(l.virtual_hosts[0].domains, vec![HostMatch::Any]);
    let r = &l.virtual_hosts[0].routes[0];
    assert_eq!(r.name, "backend/http[0]");
    assert!(r.matches.is_empty());
    assert_eq!(r.timeout, None);
    assert_eq!(r.destinations.len(), 1);
    assert_eq!(r.destinations[0].weight, 100);

    assert_eq!(plan.clusters.len(), 1);
    let c = &plan.clusters[r.destinations[0].cluster];
    assert_eq!(c.name, "outbound|80||backend.local");
    assert_eq!(plan.cluster_by_name("outbound|80||backend.local"), Some(0));
    assert_eq!((c.host.as_str(), c.port, c.subset.as_deref()), ("backend.local", 80, None));
    assert_eq!(c.protocol, UpstreamProtocol::Http1);
    let Discovery::Static(eps) = &c.discovery else { panic!("STATIC resolution") };
    assert_eq!(eps.len(), 1);
    assert_eq!(
        eps[0].address,
        "127.0.0.1:18080".parse::<SocketAddr>().unwrap(),
        "endpoint port comes from ports[http]"
    );
    assert_eq!(eps[0].weight, 1);
    assert_eq!(c.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(
        c.pool,
        PoolLimits {
            max_connections: 100,
            connect_timeout: Duration::from_secs(10),
            max_pending_requests: 100,
            max_requests: 1000,
            max_requests_per_connection: None,
            max_retries: UNLIMITED,
            idle_timeout: Duration::from_secs(3600),
        }
    );
    let dump = loaded.dump.text().to_string();
    for fragment in [
        r#""kind":"Gateway""#,
        r#""name":"edge""#,
        r#""bind":"0.0.0.0""#,
        r#""maxConnections":100"#,
        r#""outbound|80||backend.local""#,
    ] {
        assert!(dump.contains(fragment), "{fragment} in {dump}");
    }
}

const SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: checkout}
spec:
  hosts: [checkout]
  ports: [{number: 8080, name: grpc-api, protocol: GRPC, targetPort: 9090}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}, weight: 3}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: checkout}
spec:
  host: checkout
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 250ms}, http: {maxRetries: 3}}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: X-User, ringHash: {minimumRingSize: 2048}}}
      connectionPool: {tcp: {maxConnections: 5}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: checkout}
spec:
  hosts: [checkout, "*.shop.example.com"]
  http:
  - name: api
    match:
    - uri: {regex: "/v[0-9]+/cart"}
      headers: {X-Tier: {exact: gold}}
    timeout: 1.5s
    route:
    - destination: {host: checkout, subset: v1}
      weight: 90
    - destination: {host: checkout, subset: v2}
      weight: 10
"#;

#[test]
fn mesh_listener_subsets_weights_and_policy_overrides() {
    let plan = ok(SUBSETS).plan;
    assert_eq!(plan.listeners.len(), 1);
    let mesh = &plan.listeners[0];
    assert_eq!(
        (mesh.name.as_str(), mesh.bind, mesh.protocol),
        ("mesh", LoadOptions::default().mesh_bind, ListenerProtocol::Http)
    );
    let domains: Vec<&HostMatch> = mesh.virtual_hosts.iter().flat_map(|v| &v.domains).collect();
    assert_eq!(
        domains,
        [&HostMatch::Exact("checkout".into()), &HostMatch::Suffix(".shop.example.com".into())],
        "exact first"
    );
    let route = &mesh.virtual_hosts[0].routes[0];
    assert_eq!(route.name, "checkout/api", "named routes are `<virtualService>/<name>`");
    assert_eq!(route.timeout, Some(Duration::from_millis(1500)));
    let m = &route.matches[0];
    assert!(m.uri.as_ref().unwrap().matches("/v2/cart"));
    assert!(!m.uri.as_ref().unwrap().matches("/v2/cart/x"), "Istio regexes match the whole path");
    assert_eq!(m.headers[0].0, "x-tier");
    let weights: Vec<(String, u32)> =
        route.destinations.iter().map(|w| (plan.clusters[w.cluster].name.clone(), w.weight)).collect();
    assert_eq!(
        weights,
        [("outbound|8080|v1|checkout".to_string(), 90), ("outbound|8080|v2|checkout".to_string(), 10)]
    );

    let v1 = &plan.clusters[0];
    let v2 = &plan.clusters[1];
    assert_eq!(v1.protocol, UpstreamProtocol::Http2, "GRPC port is h2c upstream");
    let Discovery::Static(eps) = &v2.discovery else { panic!() };
    assert_eq!(eps.len(), 1, "subset labels filter the endpoints");
    assert_eq!(
        eps[0].address,
        "10.0.0.2:9090".parse::<SocketAddr>().unwrap(),
        "targetPort when the endpoint names no port"
    );
    assert_eq!(eps[0].weight, 3);
    assert_eq!(v1.load_balancer, LoadBalancer::LeastRequest, "Istio's default");
    assert_eq!(
        v2.load_balancer,
        LoadBalancer::RingHash { key: HashKey::Header("x-user".into()), minimum_ring_size: 2048 }
    );
    assert_eq!((v1.pool.max_connections, v2.pool.max_connections), (10, 5), "subset overrides the top level");
    assert_eq!(v2.pool.connect_timeout, Duration::from_millis(250), "field by field: the rest is inherited");
    assert_eq!(v2.pool.max_retries, 3);
}

#[test]
fn gateway_hosts_tcp_listeners_and_dns() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 8443, name: h2, protocol: HTTP2}
    hosts: ["ns/*.example.com"]
    bind: 127.0.0.1
  - port: {number: 5432, name: db, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.upstream.test, db.upstream.test]
  ports: [{number: 80, name: http, targetPort: 8080}, {number: 5432, name: tcp-pg}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["*", "a.example.com"]
  gateways: [ns/gw]
  http:
  - route: [{destination: {host: api.upstream.test, port: {number: 80}}}]
  tcp:
  - route: [{destination: {host: db.upstream.test, port: {number: 5432}}}]
"#;
    let plan = ok(yaml).plan;
    assert_eq!(plan.listeners.len(), 2);
    let h2 = &plan.listeners[0];
    assert_eq!((h2.name.as_str(), h2.protocol), ("gw/h2", ListenerProtocol::Http2));
    assert_eq!(h2.bind, "127.0.0.1:8443".parse::<SocketAddr>().unwrap());
    let domains: Vec<&HostMatch> = h2.virtual_hosts.iter().flat_map(|v| &v.domains).collect();
    assert_eq!(
        domains,
        [&HostMatch::Exact("a.example.com".into()), &HostMatch::Suffix(".example.com".into())]
    );
    let tcp = &plan.listeners[1];
    assert_eq!(tcp.protocol, ListenerProtocol::Tcp);
    let c = &plan.clusters[tcp.tcp_routes[0].destinations[0].cluster];
    assert_eq!(c.protocol, UpstreamProtocol::Tcp, "protocol from the `tcp-` port name");
    let Discovery::Dns { targets, refresh } = &c.discovery else { panic!() };
    assert_eq!(*refresh, LoadOptions::default().dns_refresh);
    assert_eq!(
        targets.iter().map(|t| (t.hostname.as_str(), t.port)).collect::<Vec<_>>(),
        [("db.upstream.test", 5432)],
        "without endpoints, db's cluster resolves db's host only, not every host of the entry"
    );
    let h = &plan.clusters[h2.virtual_hosts[0].routes[0].destinations[0].cluster];
    let Discovery::Dns { targets, .. } = &h.discovery else { panic!() };
    assert_eq!(
        targets.iter().map(|t| (t.hostname.as_str(), t.port)).collect::<Vec<_>>(),
        [("api.upstream.test", 8080)],
        "and api's cluster resolves api's host only, on the port's targetPort"
    );
}

// ------------------------------------------------------------------------------------------
// Mistakes users make, and what they see.

fn with_vs(vs_tail: &str) -> String {
    format!("{EXAMPLE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: typo}}\nspec:\n{vs_tail}")
}

#[test]
/// A misspelt field would leave its setting unapplied (here the request limit), which changes
/// what requests get: an error, with the spelling it probably meant.
fn typo_in_a_field_is_an_error_with_a_suggestion() {
    let text = EXAMPLE.replace("http2MaxRequests", "http2MaxRequest");
    assert_eq!(
        the_error(&text),
        "error: mesh.yaml:39:44: DestinationRule/backend: spec.trafficPolicy.connectionPool.http.http2MaxRequest: unknown field `http2MaxRequest` (not part of Istio's ConnectionPoolSettings.HTTPSettings; did you mean `http2MaxRequests`?); Tripline does not act on it, so what it asks for would not happen: correct or remove it"
    );
}

/// The DestinationRule of EXAMPLE load-balanced by `consistentHash`, given in flow style.
fn with_consistent_hash(hash: &str) -> String {
    EXAMPLE.replace(
        "loadBalancer: {simple: LEAST_REQUEST}",
        &format!("loadBalancer: {{consistentHash: {hash}}}"),
    )
}

#[test]
fn a_cookie_with_ttl_is_one_tripline_creates() {
    let text = with_consistent_hash(
        "{httpCookie: {name: route, ttl: 1h, path: /app, attributes: [{name: SameSite, value: Lax}, {name: Secure}]}}",
    );
    let loaded = ok(&text);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let generate = Some(NewCookie {
        max_age: Some(Duration::from_secs(3600)),
        path: Some("/app".into()),
        attributes: vec![("SameSite".into(), Some("Lax".into())), ("Secure".into(), None)],
    });
    assert_eq!(
        loaded.plan.clusters[0].load_balancer,
        LoadBalancer::RingHash {
            key: HashKey::Cookie { name: "route".into(), generate },
            minimum_ring_size: 1024
        }
    );

    // `ttl: 0s`: a session cookie. Without `ttl`, Tripline hashes only a cookie the client
    // sends, and says that `path` alone does nothing.
    let session = ok(&with_consistent_hash("{httpCookie: {name: route, ttl: 0s}}"));
    let LoadBalancer::RingHash { key: HashKey::Cookie { generate: Some(g), .. }, .. } =
        &session.plan.clusters[0].load_balancer
    else {
        panic!("{:?}", session.plan.clusters[0].load_balancer)
    };
    assert_eq!(g.max_age, None);
    let no_ttl = ok(&with_consistent_hash("{httpCookie: {name: route, path: /}}"));
    let warnings: Vec<String> = no_ttl.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("consistentHash.httpCookie.path:") && warnings[0].contains("without `ttl`"),
        "{}",
        warnings[0]
    );
}

#[test]
fn a_cookie_that_would_break_the_set_cookie_header_is_refused() {
    let e = the_error(&with_consistent_hash("{httpCookie: {name: \"my route\", ttl: 1h}}"));
    assert!(e.contains("consistentHash.httpCookie.name:") && e.contains("expected a cookie name"), "{e}");
    let e =
        the_error(&with_consistent_hash("{httpCookie: {name: route, ttl: 1h, path: \"/; Domain=evil\"}}"));
    assert!(e.contains("consistentHash.httpCookie.path:") && e.contains("without `;`"), "{e}");
    let e =
        the_error(&with_consistent_hash("{httpCookie: {name: route, ttl: 1h, attributes: [{value: Lax}]}}"));
    assert!(e.contains("httpCookie.attributes[0].name:") && e.contains("is required"), "{e}");
    // An attribute Tripline writes itself would appear twice.
    let e = the_error(&with_consistent_hash(
        "{httpCookie: {name: route, ttl: 1h, attributes: [{name: SameSite, value: Lax}, {name: max-age, value: '5'}]}}",
    ));
    assert!(e.contains("httpCookie.attributes[1].name:") && e.contains("set from `ttl`"), "{e}");
    // A cookie Tripline only reads need not be one it could write.
    ok(&with_consistent_hash("{httpCookie: {name: \"session:id\"}}"));
}

#[test]
fn a_prefixed_cookie_browsers_would_drop_is_warned_about() {
    let warning = |cookie: &str| {
        let loaded = ok(&with_consistent_hash(&format!("{{httpCookie: {cookie}}}")));
        loaded.warnings.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    let w = warning("{name: __Host-route, ttl: 1h, path: /}");
    assert!(w.len() == 1 && w[0].contains("httpCookie.name:") && w[0].contains("`{name: Secure}`"), "{w:#?}");
    let w = warning("{name: __Host-route, ttl: 1h, attributes: [{name: Secure}]}");
    assert!(w.len() == 1 && w[0].contains("without `path: /`"), "{w:#?}");
    let w = warning("{name: __Secure-route, ttl: 1h, attributes: [{name: Secure}]}");
    assert!(w.is_empty(), "{w:#?}");
    let w = warning("{name: __Host-route, ttl: 1h, path: /, attributes: [{name: Secure}]}");
    assert!(w.is_empty(), "{w:#?}");
}

#[test]
fn bad_duration() {
    let text = with_vs("  hosts: [x.test]\n  http:\n  - timeout: 10 seconds\n    route: [{destination: {host: backend.local}}]\n");
    assert_eq!(
        the_error(&text),
        "error: mesh.yaml:47:14: VirtualService/typo: spec.http[0].timeout: expected a duration like 1.5s or 250ms, found `10 seconds` (unknown unit; use ns, us, ms, s, m or h)"
    );
    let negative = with_vs(
        "  hosts: [x.test]\n  http:\n  - timeout: -1s\n    route: [{destination: {host: backend.local}}]\n",
    );
    assert!(the_error(&negative)
        .contains("spec.http[0].timeout: expected a duration like 1.5s or 250ms, found `-1s` (negative)"));
    let zero =
        EXAMPLE.replace("tcp: {maxConnections: 100}", "tcp: {maxConnections: 100, connectTimeout: 0s}");
    assert!(the_error(&zero)
        .contains("spec.trafficPolicy.connectionPool.tcp.connectTimeout: expected a positive duration"));
}

#[test]
fn unknown_subset() {
    let text = with_vs(
        "  hosts: [x.test]\n  http:\n  - route:\n    - destination: {host: backend.local, subset: canary}\n",
    );
    assert_eq!(
        the_error(&text),
        "error: mesh.yaml:48:50: VirtualService/typo: spec.http[0].route[0].destination.subset: unknown subset `canary` of host `backend.local`: DestinationRule/backend defines subsets: none"
    );
}

#[test]
fn wrong_type() {
    let text = EXAMPLE.replace("tcp: {maxConnections: 100}", "tcp: {maxConnections: [100]}");
    assert_eq!(
        the_error(&text),
        "error: mesh.yaml:38:29: DestinationRule/backend: spec.trafficPolicy.connectionPool.tcp.maxConnections: expected an integer between 0 and 2147483647, found a list"
    );
    let text = EXAMPLE.replace(
        "hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry",
        "hosts: \"*\"\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry",
    );
    assert!(the_error(&text).contains(
        "mesh.yaml:7:12: Gateway/edge: spec.servers[0].hosts: expected a list of strings, found `*`"
    ));
}

#[test]
fn an_endpoint_port_that_is_not_a_number_says_a_port_number_is_expected() {
    for (value, found) in [("{x: 1}", "a mapping"), ("[1]", "a list"), ("abc", "`abc`"), ("0", "`0`")] {
        let text = EXAMPLE.replace("ports: {http: 18080}", &format!("ports: {{http: {value}}}"));
        assert_eq!(
            the_error(&text),
            format!("error: mesh.yaml:18:19: ServiceEntry/backend: spec.endpoints[0].ports.http: expected a port number between 1 and 65535, found {found}"),
            "ports: {{http: {value}}}"
        );
    }
}

#[test]
fn enum_values_say_what_is_accepted() {
    let text = EXAMPLE.replace("LEAST_REQUEST", "LEAST_REQUESTS");
    assert!(the_error(&text).ends_with(
        "spec.trafficPolicy.loadBalancer.simple: expected one of ROUND_ROBIN, LEAST_REQUEST, RANDOM, found `LEAST_REQUESTS`"
    ));
    let text = EXAMPLE.replace("LEAST_REQUEST", "LEAST_CONN");
    assert_eq!(
        ok(&text).plan.clusters[0].load_balancer,
        LoadBalancer::LeastRequest,
        "LEAST_CONN is an alias"
    );
    let text = EXAMPLE.replace("protocol: HTTP}\n    hosts", "protocol: HTTPS}\n    hosts");
    assert!(
        the_error(&text).contains("mesh.yaml:6:5: Gateway/edge: spec.servers[0].tls: `tls` is required: expected the certificate this HTTPS port terminates TLS with"),
        "HTTPS without tls: {}",
        the_error(&text)
    );
    let text = EXAMPLE.replace("protocol: HTTP}\n    hosts", "protocol: HTTP3}\n    hosts");
    assert!(the_error(&text).contains(
        "spec.servers[0].port.protocol: expected one of HTTP, HTTPS, HTTP2, GRPC, TCP, TLS, found `HTTP3`"
    ));
}

#[test]
fn reference_errors() {
    let text = with_vs("  hosts: [x.test]\n  gateways: [edge2]\n  http:\n  - route: [{destination: {host: backend.local}}]\n");
    assert!(the_error(&text)
        .contains("mesh.yaml:46:14: VirtualService/typo: spec.gateways[0]: unknown gateway `edge2`"));
    let text = with_vs(
        "  hosts: [x.test]\n  http:\n  - route: [{destination: {host: backend.local, port: {number: 81}}}]\n",
    );
    assert!(the_error(&text).contains("ServiceEntry/backend has no port 81 (its ports: 80)"));
    let text = with_vs("  hosts: [x.test]\n  http:\n  - route:\n    - {destination: {host: backend.local}, weight: 60}\n    - {destination: {host: backend.local}, weight: 30}\n");
    assert!(the_error(&text)
        .contains("spec.http[0].route: the weights of the 2 destinations (60 + 30) sum to 90: expected 100"));
    let text = with_vs("  hosts: [x.test]\n  http:\n  - match: [{uri: {regex: \"/(a\"}}]\n    route: [{destination: {host: backend.local}}]\n");
    assert!(the_error(&text).contains("spec.http[0].match[0].uri.regex: invalid regex"));
    let text = format!("{EXAMPLE}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge2}}\nspec:\n  servers:\n  - port: {{number: 18130, name: other, protocol: TCP}}\n    hosts: [\"*\"]\n");
    let e = errors(&text);
    assert!(e[0].to_string().contains("Gateway/edge2: spec.servers[0].port.number: duplicate listener port: 0.0.0.0:18130 is already used by listener `edge/http`"), "{e:#?}");
}

#[test]
fn malformed_yaml_has_its_position() {
    let e = the_error("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: x\nspec: {}\n");
    assert!(e.starts_with("error: mesh.yaml:4:"), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");
}

#[test]
fn unknown_api_version_of_a_known_kind_is_an_error_not_silence() {
    let text =
        EXAMPLE.replacen("networking.istio.io/v1\nkind: Gateway", "networking.istio.io/v2\nkind: Gateway", 1);
    let e = errors(&text);
    assert!(
        e[0].to_string().contains(
            "mesh.yaml:1:13: Gateway/edge: apiVersion: unsupported apiVersion `networking.istio.io/v2`"
        ),
        "{e:#?}"
    );
}

#[test]
fn hostile_input_never_panics() {
    let nasty = [
        String::new(),
        "---\n---\n".into(),
        "~".into(),
        "[1, 2]".into(),
        "kind: [VirtualService]".into(),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: []\nspec: 3".into(),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {http: {route: 1}}".into(),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: h, trafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 99999999999999999999999}}}}}".into(),
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a}\nspec: {servers: [{port: {number: 1e400, protocol: HTTP}, hosts: [\"*\"]}]}".into(),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hosts: [h], resolution: STATIC, ports: [{number: 1, name: p}], endpoints: [{address: '::1', ports: {p: 99999}}]}".into(),
        "a: &a [*a]".into(),
        "x: &x {y: 1}\n<<: *x\nkind: Gateway\napiVersion: networking.istio.io/v1\nmetadata: {name: &n n}\nspec: {servers: *n}".into(),
        "{".repeat(100),
        "- ".repeat(5000) + "x",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [\"\u{1F600}\"], http: [{timeout: \"1\u{00B5}\", route: [{destination: {host: \"\u{1F600}\", port: {number: 0}}, weight: -5}]}]}".into(),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [h], http: [{match: [{uri: {regex: \"(((((((((((a{1000}){1000}){1000}\"}}], route: [{destination: {host: h}}]}]}".into(),
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: a}}\nspec: {{host: h, trafficPolicy: {{connectionPool: {{http: {{idleTimeout: \"{}h\"}}}}}}}}", "9".repeat(400)),
    ];
    for text in &nasty {
        let result = std::panic::catch_unwind(|| load(&src(text), &LoadOptions::default()));
        let result = result.unwrap_or_else(|_| panic!("panicked on {text:?}"));
        if let Err(diags) = result {
            assert!(diags.iter().any(|d| d.severity == Severity::Error));
            assert!(diags.iter().all(|d| !d.message.is_empty() && !d.path.is_empty()), "{diags:#?}");
        }
    }
}

#[test]
fn wrong_types_everywhere_in_the_example_never_panic_and_always_explain() {
    // Replace every scalar value of the example, one at a time, with values of the wrong type.
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        for bad in ["[]", "{}", "-1", "99999999999999999999", "\"\"", "null", "true"] {
            let Some(colon) = line.rfind(": ") else { continue };
            let mut mutated = lines.clone();
            let replaced = format!("{}: {bad}", &line[..colon]);
            if line.trim_end().ends_with('}') || line.trim_end().ends_with(']') {
                continue;
            }
            mutated[i] = &replaced;
            let text = mutated.join("\n");
            let result = std::panic::catch_unwind(|| load(&src(&text), &LoadOptions::default()));
            assert!(result.is_ok(), "panicked on line {i} = {bad}");
        }
    }
}

/// A Gateway is the edge unless Istio's `gatewayTopology.numTrustedProxies` (the
/// `proxy.istio.io/config` annotation) says proxies stand in front of it; the mesh listener's
/// client is the sidecar's application, always trusted.
#[test]
fn gateways_trust_their_clients_only_behind_trusted_proxies() {
    let edge = ok(EXAMPLE);
    assert!(!edge.plan.listeners[0].trust_client, "a Gateway is the edge by default");
    let behind = EXAMPLE.replace(
        "metadata: {name: edge}",
        "metadata:\n  name: edge\n  annotations:\n    proxy.istio.io/config: '{\"gatewayTopology\": {\"numTrustedProxies\": 1}}'",
    );
    let loaded = ok(&behind);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(loaded.plan.listeners[0].trust_client);
    let mesh = ok(&EXAMPLE.replace("  gateways: [edge]\n", ""));
    let listener = mesh.plan.listeners.iter().find(|l| l.name == "mesh").expect("the mesh listener");
    assert!(listener.trust_client);

    let annotated = |config: &str| {
        EXAMPLE.replace(
            "metadata: {name: edge}",
            &format!("metadata:\n  name: edge\n  annotations:\n    proxy.istio.io/config: '{config}'"),
        )
    };
    assert_eq!(
        the_error(&annotated("{\"gatewayTopology\": {\"forwardClientCertDetails\": \"SANITIZE\"}}")),
        "error: mesh.yaml:6:28: Gateway/edge: metadata.annotations.proxy.istio.io/config: `gatewayTopology.forwardClientCertDetails` in `proxy.istio.io/config` is not implemented yet; remove it (Tripline reads only numTrustedProxies)"
    );
    assert!(the_error(&annotated("{\"gatewayTopology\": {\"numTrustedProxies\": -1}}"))
        .contains("must be a whole number"));
    let other = ok(&annotated("{\"concurrency\": 2}"));
    assert!(
        other.warnings[0].message.contains("`concurrency` in `proxy.istio.io/config` is ignored"),
        "{:?}",
        other.warnings
    );
}

/// Hosts are looked up through indexes (a scan per lookup made loading 10,000 services take
/// 20 s): lookups ignore case, a host declared twice is found and both later declarations are
/// errors, a wildcard DestinationRule covers hosts without their own, and a resource
/// defined twice is an error naming the first.
#[test]
fn host_lookups_ignore_case_and_the_first_declaration_wins() {
    let more = r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow}
spec:
  hosts: [BACKEND.local, other.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.2, ports: {http: 18081}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shadow}
spec:
  host: Backend.Local
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 7}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all-local}
spec:
  host: "*.local"
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 9}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other}
spec:
  hosts: [other.test]
  gateways: [edge]
  http:
  - route: [{destination: {host: Other.Local}}]
"#;
    // Declared twice (ignoring case): errors naming the first declaration.
    let e: Vec<String> = errors(&format!("{EXAMPLE}{more}")).iter().map(|d| d.to_string()).collect();
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e.iter().any(|m| m.contains("ServiceEntry/shadow: spec.hosts[0]: host `BACKEND.local` is already declared by ServiceEntry/backend")), "{e:#?}");
    assert!(e.iter().any(|m| m.contains("DestinationRule/shadow: spec.host: DestinationRule/backend already applies to host `Backend.Local`")), "{e:#?}");
    // Without the duplicates: case-insensitive lookups, and the wildcard rule for the rest.
    let single = more.replace("hosts: [BACKEND.local, other.local]", "hosts: [other.local]");
    let single = single.replace(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: shadow}\nspec:\n  host: Backend.Local\n  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 7}}\n",
        "",
    );
    let loaded = ok(&format!("{EXAMPLE}{single}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let plan = &loaded.plan;
    let backend = &plan.clusters[plan.cluster_by_name("outbound|80||backend.local").unwrap()];
    assert_eq!(backend.pool.max_connections, 100, "its own DestinationRule, not the wildcard");
    let other = &plan.clusters[plan.cluster_by_name("outbound|80||Other.Local").unwrap()];
    let Discovery::Static(eps) = &other.discovery else { panic!("STATIC resolution") };
    assert_eq!(eps[0].address, "127.0.0.2:18081".parse::<SocketAddr>().unwrap());
    assert_eq!(other.pool.max_connections, 9, "the wildcard DestinationRule's");

    let twice = format!("{EXAMPLE}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec:\n  servers:\n  - port: {{number: 18131, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n");
    assert!(the_error(&twice)
        .contains("Gateway/edge: metadata.name: duplicate Gateway/edge: already defined at mesh.yaml:1"));
}

/// Documents are decoded as they are parsed; a syntax error further down the file still
/// reports only itself, as when the whole file was parsed first.
#[test]
fn a_syntax_error_later_in_a_file_is_its_only_diagnostic() {
    let text = format!("{EXAMPLE}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec: {{servers: 7}}\n---\nkind: [unclosed\n");
    let e = the_error(&text);
    assert!(e.starts_with("error: mesh.yaml:") && e.contains("invalid YAML"), "{e}");
}

/// `tripline validate`'s findings about configs that load but may not do what they say (issue
/// 18): each a warning at the route, with what will happen.
#[test]
fn findings_a_config_that_loads_may_not_do_what_it_says() {
    let warnings =
        |tail: &str| -> Vec<String> { ok(&with_vs(tail)).warnings.iter().map(|w| w.to_string()).collect() };
    // A catch-all before other routes: they are never taken.
    let w = warnings("  hosts: [x.test]\n  http:\n  - route: [{destination: {host: backend.local}}]\n  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: backend.local}}]\n");
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].starts_with("warning: mesh.yaml:48:5:"), "{w:#?}");
    assert!(w[0].contains("VirtualService/typo: spec.http[1]: this route is never taken: `spec.http[0]` before it matches every request"), "{w:#?}");
    // The same routes the other way round: nothing to say.
    let w = warnings("  hosts: [x.test]\n  http:\n  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: backend.local}}]\n  - route: [{destination: {host: backend.local}}]\n");
    assert!(w.is_empty(), "{w:#?}");
    // Retries whose per-try timeouts outlast the route timeout.
    let w = warnings("  hosts: [x.test]\n  http:\n  - route: [{destination: {host: backend.local}}]\n    timeout: 1s\n    retries: {attempts: 3, perTryTimeout: 500ms}\n");
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("mesh.yaml:49:43: VirtualService/typo: spec.http[0].retries.perTryTimeout: perTryTimeout 500ms × 3 retries = 1500ms is longer than the route timeout 1s"), "{w:#?}");
    // Retries on a route that only takes POSTs.
    let w = warnings("  hosts: [x.test]\n  http:\n  - match: [{method: {exact: POST}}]\n    route: [{destination: {host: backend.local}}]\n    retries: {attempts: 2}\n");
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("spec.http[0].retries: this route takes only POST requests and has 2 retries"),
        "{w:#?}"
    );
}

/// A `maxEjectionPercent` that ejects every endpoint of the cluster at once, or none: a warning
/// where it was written, the subset's when the subset sets it.
#[test]
fn an_ejection_cap_of_everybody_or_nobody_is_a_finding_where_it_was_written() {
    let endpoints = "  - address: 127.0.0.1\n    ports: {http: 18080}\n  - address: 127.0.0.2\n    ports: {http: 18080}\n    labels: {version: v2}\n  - address: 127.0.0.3\n    ports: {http: 18080}\n";
    let text = EXAMPLE.replace("  - address: 127.0.0.1\n    ports: {http: 18080}\n", endpoints).replace(
        "    loadBalancer: {simple: LEAST_REQUEST}\n",
        "    loadBalancer: {simple: LEAST_REQUEST}\n    outlierDetection: {consecutive5xxErrors: 3, maxEjectionPercent: 100}\n",
    );
    let w: Vec<String> = ok(&text).warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("DestinationRule/backend: spec.trafficPolicy.outlierDetection.maxEjectionPercent: maxEjectionPercent 100 lets all 3 endpoints be ejected at once"),
        "{w:#?}"
    );
    let line = text.lines().position(|l| l.contains("maxEjectionPercent")).unwrap() + 1;
    assert!(w[0].starts_with(&format!("warning: mesh.yaml:{line}:")), "{w:#?}");
    // With panic mode to fall back on, or a cap that leaves some endpoints, nothing to say.
    let calm = text.replace("maxEjectionPercent: 100}", "maxEjectionPercent: 100, minHealthPercent: 50}");
    assert!(ok(&calm).warnings.is_empty());
    assert!(ok(&text.replace("maxEjectionPercent: 100", "maxEjectionPercent: 34")).warnings.is_empty());
    let none = text.replace("maxEjectionPercent: 100", "maxEjectionPercent: 0");
    let w: Vec<String> = ok(&none).warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.len() == 1 && w[0].contains("maxEjectionPercent 0 of 3 endpoint(s) ejects none of them"),
        "{w:#?}"
    );
}

/// A pool's `maxRetries` below the retry budget's floor: the floor never holds.
#[test]
fn max_retries_below_the_retry_budget_floor_is_a_finding_at_the_field() {
    let text = EXAMPLE.replace("http2MaxRequests: 1000}", "http2MaxRequests: 1000, maxRetries: 2}");
    let w: Vec<String> = ok(&text).warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    let line = text.lines().position(|l| l.contains("maxRetries")).unwrap() + 1;
    assert!(
        w[0].starts_with(&format!("warning: mesh.yaml:{line}:")) && w[0].contains("DestinationRule/backend: spec.trafficPolicy.connectionPool.http.maxRetries: maxRetries 2 is below the retry budget's floor (minRetryConcurrency 3, the default)"),
        "{w:#?}"
    );
    let lowered =
        text.replace("    loadBalancer:", "    retryBudget: {minRetryConcurrency: 2}\n    loadBalancer:");
    assert!(ok(&lowered).warnings.is_empty(), "{:#?}", ok(&lowered).warnings);
}

/// The field serves every cluster of its host (here two subsets, each a cluster): one finding.
#[test]
fn max_retries_below_the_floor_is_one_finding_for_all_the_hosts_clusters() {
    let text = EXAMPLE
        .replace("http2MaxRequests: 1000}", "http2MaxRequests: 1000, maxRetries: 2}")
        .replace(
            "    - destination: {host: backend.local, port: {number: 80}}",
            "    - destination: {host: backend.local, port: {number: 80}, subset: a}\n      weight: 50\n    - destination: {host: backend.local, port: {number: 80}, subset: b}\n      weight: 50",
        )
        + "  subsets:\n  - {name: a, labels: {v: a}}\n  - {name: b, labels: {v: b}}\n";
    let loaded = ok(&text);
    assert!(loaded.plan.clusters.len() >= 2, "{:#?}", loaded.plan.clusters);
    let w: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.iter().filter(|w| w.contains("below the retry budget's floor")).count(), 1, "{w:#?}");
}
