//! Routing by host, path (exact, prefix, regex) and header; no route → 404 no-route.

use std::net::SocketAddr;

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
    let mut docs = vec![config::gateway("edge", port, "HTTP")];
    for u in &ups {
        docs.push(config::service_entry(&format!("{}.local", u.id()), "HTTP", &[u.addr]));
    }
    docs.push(config::virtual_service("paths", &["*"], "edge", routes));
    let _proxy = Proxy::start(&config::join(&docs)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
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
