//! Routing by host, path (exact, prefix, regex) and header; no route → 404 no-route.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::config;
use crate::support::{free_port, get_with, Conn, Proto, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host() {
    let a = Upstream::http("a").await;
    let b = Upstream::http("b").await;
    let port = free_port();
    let yaml = config::join(&[
        config::gateway("edge", port, "HTTP"),
        config::service_entry("a.local", "HTTP", &[a.addr]),
        config::service_entry("b.local", "HTTP", &[b.addr]),
        config::virtual_service("vs-a", &["a.example.com"], "edge", &config::http_route("a.local")),
        config::virtual_service("vs-b", &["b.example.com"], "edge", &config::http_route("b.local")),
    ]);
    let _proxy = Proxy::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    for proto in [Proto::H1, Proto::H2] {
        let mut conn = Conn::connect(addr, proto).await.unwrap();
        // Host with the listener's port (what curl sends) routes like the bare host.
        let with_port = format!("b.example.com:{port}");
        for (host, want) in [("a.example.com", "a"), ("b.example.com", "b"), (with_port.as_str(), "b")] {
            let r = conn.get(host, "/x").await.unwrap();
            assert_eq!(r.status, 200, "{proto:?} host {host}: {}", r.text());
            assert_eq!(r.upstream(), Some(want), "{proto:?} host {host}");
        }
        let r = conn.get("c.example.com", "/x").await.unwrap();
        assert_eq!(r.status, 404, "{proto:?}: unknown host");
        assert_eq!(r.reason(), Some("no-route"), "{proto:?}: unknown host");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_path_and_header() {
    let ups = [
        Upstream::http("exact").await,
        Upstream::http("prefix").await,
        Upstream::http("regex").await,
        Upstream::http("gold").await,
    ];
    let port = free_port();
    let routes = "  http:
  - match:
    - headers:
        x-tier: {exact: gold}
    route:
    - destination: {host: gold.local, port: {number: 80}}
  - match:
    - uri: {exact: /exact}
    route:
    - destination: {host: exact.local, port: {number: 80}}
  - match:
    - uri: {prefix: /api/}
    route:
    - destination: {host: prefix.local, port: {number: 80}}
  - match:
    - uri: {regex: \"/v[0-9]+/items\"}
    route:
    - destination: {host: regex.local, port: {number: 80}}
";
    let _proxy = Proxy::start(&one_service_per_upstream(port, &ups, "paths", routes)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let cases: &[Case] = &[
        ("/exact", &[], Some("exact")),
        ("/exact?q=1", &[], Some("exact")),
        ("/exact/more", &[], None),
        ("/api/users", &[], Some("prefix")),
        ("/api/", &[], Some("prefix")),
        ("/apiary", &[], None),
        ("/v2/items", &[], Some("regex")),
        ("/v10/items", &[], Some("regex")),
        ("/vx/items", &[], None),
        ("/anything", &[("x-tier", "gold")], Some("gold")),
        ("/exact", &[("x-tier", "gold")], Some("gold")),
        ("/anything", &[("x-tier", "silver")], None),
        ("/anything", &[("x-tier", "gold-plated")], None),
        ("/", &[], None),
    ];
    expect_routes(addr, cases).await;
}

/// A path, request headers, and the upstream that should answer (`None`: 404 `no-route`).
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);

/// A Gateway on `port`, a ServiceEntry `<id>.local` for each upstream, and a VirtualService
/// `name` with `routes` for every host.
pub(crate) fn one_service_per_upstream(port: u16, ups: &[Upstream], name: &str, routes: &str) -> String {
    let mut docs = vec![config::gateway("edge", port, "HTTP")];
    for u in ups {
        docs.push(config::service_entry(&format!("{}.local", u.id()), "HTTP", &[u.addr]));
    }
    docs.push(config::virtual_service(name, &["*"], "edge", routes));
    config::join(&docs)
}

async fn expect_routes(addr: SocketAddr, cases: &[Case<'_>]) {
    for (path, headers, want) in cases {
        let r = get_with(addr, "shop.example.com", path, headers).await.unwrap();
        match want {
            Some(id) => {
                assert_eq!(r.status, 200, "{path} {headers:?}: {}", r.text());
                assert_eq!(r.upstream(), Some(*id), "{path} {headers:?}");
            }
            None => {
                assert_eq!(r.status, 404, "{path} {headers:?} should match no route");
                assert_eq!(r.reason(), Some("no-route"), "{path} {headers:?}");
                assert_eq!(r.upstream(), None);
            }
        }
    }
}

/// `queryParams`, `withoutHeaders` and `ignoreUriCase` (issue 18), through the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_query_params_without_headers_and_uri_case() {
    let ups = [
        Upstream::http("query").await,
        Upstream::http("stable").await,
        Upstream::http("nocase").await,
        Upstream::http("secure").await,
    ];
    let port = free_port();
    let routes = "  http:
  - match:
    - scheme: {exact: https}
    route:
    - destination: {host: secure.local, port: {number: 80}}
  - match:
    - queryParams:
        debug: {exact: \"\"}
        version: {regex: \"v[0-9]+\"}
    route:
    - destination: {host: query.local, port: {number: 80}}
  - match:
    - uri: {prefix: /Shop/}
      ignoreUriCase: true
    route:
    - destination: {host: nocase.local, port: {number: 80}}
  - match:
    - withoutHeaders:
        x-canary: {exact: \"true\"}
    route:
    - destination: {host: stable.local, port: {number: 80}}
";
    let _proxy = Proxy::start(&one_service_per_upstream(port, &ups, "kinds", routes)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let cases: &[Case] = &[
        ("/x?debug&version=v2", &[], Some("query")),
        ("/x?version=v10&debug=1", &[], Some("query")),
        // One parameter missing or not matching: the next routes decide.
        ("/x?version=v2", &[], Some("stable")),
        ("/x?debug&version=2", &[("x-canary", "true")], None),
        ("/SHOP/cart", &[("x-canary", "true")], Some("nocase")),
        ("/shop/cart", &[], Some("nocase")),
        ("/shopping", &[("x-canary", "true")], None),
        ("/anything", &[("x-canary", "false")], Some("stable")),
        ("/anything", &[], Some("stable")),
        ("/anything", &[("x-canary", "true")], None),
    ];
    expect_routes(addr, cases).await;
    // `scheme`: an absolute-form target's (plain requests are `http`, as the cases above show).
    let answer = raw(
        addr,
        b"GET https://shop.example.com/x HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream_json(&answer)["id"], "secure", "{answer}");
}

/// `method` and `authority` matches (the authority without its port, as Istio matches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_method_and_authority() {
    let ups = [Upstream::http("writes").await, Upstream::http("admin").await, Upstream::http("reads").await];
    let port = free_port();
    let routes = "  http:
  - match:
    - method: {regex: \"POST|PUT\"}
    route:
    - destination: {host: writes.local, port: {number: 80}}
  - match:
    - authority: {prefix: admin.}
    route:
    - destination: {host: admin.local, port: {number: 80}}
  - route:
    - destination: {host: reads.local, port: {number: 80}}
";
    let _proxy = Proxy::start(&one_service_per_upstream(port, &ups, "methods", routes)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for (method, host, want) in [
        (http::Method::POST, "shop.example.com", "writes"),
        (http::Method::PUT, "admin.example.com", "writes"),
        (http::Method::GET, "admin.example.com", "admin"),
        (http::Method::DELETE, "shop.example.com", "reads"),
        (http::Method::GET, "shop.example.com", "reads"),
    ] {
        let r = crate::support::client::send(addr, method.clone(), host, "/", &[], "").await.unwrap();
        assert_eq!(r.upstream(), Some(want), "{method} {host}");
    }
}

/// `resolution: DNS`: endpoint addresses are names, resolved when the config is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_resolution_endpoints_are_resolved() {
    let up = crate::support::Upstream::http("dns").await;
    let port = crate::support::free_port();
    let se = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: by-name}}\nspec:\n  hosts: [backend.local]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n  endpoints:\n  - address: localhost\n    ports: {{http: {}}}\n",
        up.addr.port()
    );
    let yaml = crate::support::config::join(&[
        crate::support::config::gateway("edge", port, "HTTP"),
        se,
        crate::support::config::virtual_service(
            "backend",
            &["*"],
            "edge",
            &crate::support::config::http_route("backend.local"),
        ),
    ]);
    let proxy = crate::support::Proxy::start(&yaml).await;
    let r = crate::support::get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "backend.local", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", proxy.logs());
    let clusters = proxy.admin_get("/clusters").await.json();
    let eps = clusters["clusters"][0]["endpoints"].as_array().unwrap().clone();
    assert!(
        eps.iter().any(|e| e["address"] == up.addr.to_string()),
        "localhost must resolve to the upstream's address: {eps:?}"
    );
}

/// `resolution: DNS` names are looked up again every `--dns-refresh`: when a name's address
/// changes, traffic follows it; when the name stops resolving, its last answer stays in use.
///
/// The resolver is the real one (getaddrinfo through /etc/hosts), with answers the test
/// controls: the proxy runs in a mount namespace of its own (`unshare`, which needs root; skipped with a
/// message where mount namespaces are not allowed) where
/// /etc/hosts is a file the test rewrites and /etc/nsswitch.conf consults only that file, so a
/// name taken out of it fails at once instead of going to a DNS server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_are_looked_up_again_and_keep_their_last_answer() {
    // Needs mount namespaces (root, or CAP_SYS_ADMIN): probe them the way the proxy is started.
    let probe =
        std::process::Command::new("unshare").args(["--mount", "--propagation", "private", "true"]).output();
    if let Some(why) = match &probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => Some(e.to_string()),
    } {
        eprintln!("SKIPPED dns_names_are_looked_up_again_and_keep_their_last_answer: unshare --mount: {why}");
        return;
    }
    // Two upstreams on the same port at two loopback addresses: the two answers the name gets.
    let first = Upstream::http_at("first", "127.0.0.2:0".parse().unwrap()).await;
    let second = Upstream::http_at("second", SocketAddr::from(([127, 0, 0, 3], first.addr.port()))).await;
    let dir = crate::support::proxy::unique_dir("dns");
    let hosts = dir.join("hosts");
    let nsswitch = dir.join("nsswitch.conf");
    let name = "backend.tripline.test";
    // Rewritten in place (truncate and write), never replaced: the bind mount is of this inode.
    let answer = |addr: Option<&str>| {
        let line = addr.map(|a| format!("{a} {name}\n")).unwrap_or_default();
        std::fs::write(&hosts, format!("127.0.0.1 localhost\n{line}")).unwrap();
    };
    answer(Some("127.0.0.2"));
    std::fs::write(&nsswitch, "hosts: files\n").unwrap();
    let script =
        "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/nsswitch.conf && shift 2 && exec \"$@\"";
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        hosts.to_str().unwrap(),
        nsswitch.to_str().unwrap(),
    ];

    let port = free_port();
    let se = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: by-name}}\nspec:\n  hosts: [backend.local]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n  endpoints:\n  - address: {name}\n    ports: {{http: {}}}\n",
        first.addr.port()
    );
    let yaml = config::join(&[
        config::gateway("edge", port, "HTTP"),
        se,
        config::virtual_service("backend", &["*"], "edge", &config::http_route("backend.local")),
    ]);
    let proxy = Proxy::start_wrapped(&yaml, &["--dns-refresh", "100ms"], &wrapper).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let served_by = || async move {
        get_with(addr, "backend.local", "/", &[]).await.ok().and_then(|r| r.upstream().map(str::to_owned))
    };
    assert_eq!(served_by().await.as_deref(), Some("first"), "{}", proxy.logs());

    // The name moves: within a few refreshes every request goes to the new address.
    answer(Some("127.0.0.3"));
    crate::support::eventually(
        "requests to follow the name to 127.0.0.3",
        Duration::from_secs(10),
        || async { served_by().await.as_deref() == Some("second") },
    )
    .await;
    let first_served = first.requests();

    // The name stops resolving: the failure is logged, and the last answer stays in use.
    // (Earlier rewrites may have failed a lookup too: the file is empty for a moment.)
    let failures = || proxy.stderr().matches("DNS resolution failed").count();
    let failed_before = failures();
    answer(None);
    crate::support::eventually("two more failed lookups in the log", Duration::from_secs(10), || async {
        failures() >= failed_before + 2
    })
    .await;
    for _ in 0..10 {
        assert_eq!(served_by().await.as_deref(), Some("second"), "{}", proxy.logs());
    }
    let cluster = proxy.cluster("outbound|80||backend.local").await;
    let endpoints: Vec<&str> =
        cluster["endpoints"].as_array().unwrap().iter().filter_map(|e| e["address"].as_str()).collect();
    assert_eq!(endpoints, [second.addr.to_string()], "{cluster}");
    assert_eq!(first.requests(), first_served, "nothing goes back to the old address");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `request` on a fresh connection and reads until the proxy closes it (at most 5 s).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON an upstream of `support::Upstream` answered, from a raw HTTP/1.1 answer.
fn upstream_json(answer: &str) -> serde_json::Value {
    serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// One authority decides both where a request goes and what the upstream is told: an
/// absolute-form target routes by its authority and the upstream gets that as `Host`, not the
/// client's `Host` (RFC 9112 §3.2.2); an HTTP/2 `host` that contradicts `:authority` is a 400.
/// A trailing dot names the same host. CONNECT and authority-form targets are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authority_decides_the_route_and_the_host_the_upstream_gets() {
    let internal = Upstream::http("internal").await;
    let public = Upstream::http("public").await;
    let port = free_port();
    let yaml = config::join(&[
        config::gateway("edge", port, "HTTP"),
        config::service_entry("internal.svc", "HTTP", &[internal.addr]),
        config::service_entry("public.svc", "HTTP", &[public.addr]),
        config::virtual_service(
            "vs-internal",
            &["internal.local"],
            "edge",
            &config::http_route("internal.svc"),
        ),
        config::virtual_service("vs-public", &["backend.local"], "edge", &config::http_route("public.svc")),
    ]);
    let _proxy = Proxy::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let answer = raw(
        addr,
        b"GET http://internal.local/x HTTP/1.1\r\nhost: backend.local\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let json = upstream_json(&answer);
    assert_eq!(json["id"], "internal", "routed by the target's authority: {json}");
    assert_eq!(json["authority"], "internal.local", "and told the same authority: {json}");
    assert_eq!(json["path"], "/x", "origin form upstream: {json}");

    // The fully qualified spelling routes like the bare name.
    let answer = raw(addr, b"GET /dot HTTP/1.1\r\nhost: internal.local.\r\nconnection: close\r\n\r\n").await;
    assert_eq!(upstream_json(&answer)["id"], "internal", "{answer}");

    // HTTP/2: `:authority` and a different `host`.
    let mut conn = Conn::connect(addr, Proto::H2).await.unwrap();
    let req = conn
        .request(http::Method::GET, "internal.local", "/h2")
        .header("host", "backend.local")
        .body(crate::support::client::empty())
        .unwrap();
    let r = conn.call(req).await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.reason(), Some("bad-request"));

    for (request, status, reason) in [
        (
            &b"CONNECT internal.local:443 HTTP/1.1\r\nhost: internal.local:443\r\n\r\n"[..],
            "405",
            "connect-not-supported",
        ),
        (&b"GET internal.local:80 HTTP/1.1\r\nhost: internal.local\r\n\r\n"[..], "400", "bad-request"),
        (
            &b"GET http://user@internal.local/ HTTP/1.1\r\nhost: internal.local\r\n\r\n"[..],
            "400",
            "bad-request",
        ),
    ] {
        let answer = raw(addr, request).await;
        let what = String::from_utf8_lossy(request).lines().next().unwrap_or_default().to_owned();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {answer}");
        assert!(answer.contains(&format!("x-tripline-reason: {reason}")), "{what}: {answer}");
    }
    assert_eq!(public.requests(), 0, "nothing reached the upstream the client's Host named");
    assert_eq!(internal.requests(), 2);
}
