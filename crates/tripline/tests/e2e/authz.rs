//! AuthorizationPolicy through the binary: what a client is answered, what the upstream never
//! sees, the metric and the access log line; a TCP connection closed before any byte goes
//! upstream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::client::{get, send};
use crate::support::{config, free_port, Proxy, Upstream};

fn policy(name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}\n")
}

/// A DENY policy on `/admin`, and an ALLOW policy that takes GET and HEAD only: an admin path
/// and a POST are `403 rbac-denied` and never reach the upstream, whatever the path's
/// spelling; the rest passes. Each decision is counted by policy, and the access log names
/// the policy that denied. A dry-run DENY on `/cart` denies nothing and says what it would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_then_allow_policies_answer_403_before_the_upstream_sees_anything() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let yaml = config::join(&[
        config::simple(port, "HTTP", &[up.addr], None),
        policy("no-admin", "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin\", \"/admin/*\"]}}]}]"),
        policy("reads", "  selector: {matchLabels: {app: gateway}}\n  rules: [{to: [{operation: {methods: [GET, HEAD]}}]}]"),
        policy("cart-freeze", "  action: DENY\n  rules: [{to: [{operation: {paths: [/cart]}}]}]")
            .replace("namespace: shop}", "namespace: shop, annotations: {istio.io/dry-run: \"true\"}}"),
    ]);
    let log = crate::support::proxy::unique_dir("authz-log").join("access.log");
    let proxy = Proxy::start_args(
        &yaml,
        &[
            "--workload-namespace",
            "shop",
            "--workload-labels",
            "app=gateway",
            "--access-log",
            log.to_str().unwrap(),
        ],
    )
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let ok = get(addr, "backend.local", "/cart").await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(up.requests(), 1);
    for path in ["/admin", "/admin/users", "/public/../admin/users", "/%61dmin"] {
        let denied = get(addr, "backend.local", path).await.unwrap();
        assert_eq!(denied.status, 403, "{path}");
        assert_eq!(denied.reason(), Some("rbac-denied"), "{path}");
    }
    let post = send(addr, http::Method::POST, "backend.local", "/cart", &[], "x").await.unwrap();
    assert_eq!(
        (post.status.as_u16(), post.reason()),
        (403, Some("rbac-denied")),
        "no ALLOW policy takes a POST"
    );
    assert_eq!(up.requests(), 1, "nothing denied reached the upstream");

    let metric = |policy: &'static str, decision: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(
                    "tripline_authorization_decisions_total",
                    &[("policy", policy), ("decision", decision)],
                )
                .await
        }
    };
    assert_eq!(metric("shop/no-admin", "denied").await, 4.0);
    assert_eq!(metric("shop/reads", "allowed").await, 1.0);
    assert_eq!(metric("none", "denied").await, 1.0, "the POST: no ALLOW policy matched");
    assert_eq!(
        metric("shop/cart-freeze", "shadow_denied").await,
        2.0,
        "dry run: the GET and the POST of /cart"
    );
    assert_eq!(proxy.metric("tripline_local_responses_total", &[("reason", "rbac-denied")]).await, 5.0);

    let lines = crate::support::access_log_lines(&log, 6).await;
    let traversal = lines.iter().find(|v| v["path"] == "/public/../admin/users").expect("a line for it");
    assert_eq!(
        (&traversal["status"], &traversal["authz_denied"]),
        (&serde_json::json!(403), &serde_json::json!("shop/no-admin"))
    );
    let posted = lines.iter().find(|v| v["method"] == "POST").expect("a line for the POST");
    assert_eq!(posted["authz_denied"], "none");
    let allowed = lines.iter().find(|v| v["path"] == "/cart" && v["method"] == "GET").unwrap();
    assert_eq!(allowed["authz_denied"], serde_json::Value::Null);
    assert_eq!(
        allowed["authz_shadow_denied"], "shop/cart-freeze",
        "allowed, and the dry run says what it would do"
    );
}

/// On a TCP listener a denied connection is closed before anything is sent upstream; a DENY
/// rule's HTTP-only fields are left out there (it denies more), so a rule about `/admin` on
/// this port denies every connection to it, as in Istio. Without the policy the same bytes
/// are echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_tcp_connection_is_closed_before_the_upstream() {
    let up = Upstream::tcp_echo("t1").await;
    let port = free_port();
    let tcp = crate::tcp::tcp_config(port, up.addr, None);
    let deny = policy(
        "no-admin",
        &format!("  action: DENY\n  rules: [{{to: [{{operation: {{paths: [\"/admin\"], ports: [\"{port}\"]}}}}]}}]"),
    );
    let proxy =
        Proxy::start_args(&config::join(&[tcp.clone(), deny]), &["--workload-namespace", "shop"]).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    let n =
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed, not left open");
    assert!(matches!(n, Ok(0) | Err(_)), "closed without an answer: {n:?}");
    assert_eq!(up.connections(), 0, "the upstream never got the connection");
    assert_eq!(
        proxy
            .metric(
                "tripline_authorization_decisions_total",
                &[("policy", "shop/no-admin"), ("decision", "denied")]
            )
            .await,
        1.0
    );

    let other_port = policy(
        "no-admin",
        "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin\"], ports: [\"1\"]}}]}]",
    );
    proxy.write_file(&proxy.config, &config::join(&[tcp, other_port]));
    crate::support::eventually(
        "the connection is echoed once the policy names another port",
        Duration::from_secs(10),
        || async {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return false };
            if s.write_all(b"ping").await.is_err() {
                return false;
            }
            let mut buf = [0u8; 4];
            matches!(tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await, Ok(Ok(_)))
                && &buf == b"ping"
        },
    )
    .await;
}
