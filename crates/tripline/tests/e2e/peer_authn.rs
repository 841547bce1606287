//! The sidecar's inbound listeners (`Sidecar` `ingress`) through the binary, with the mutual
//! TLS their PeerAuthentication asks for: a STRICT port takes mesh callers only (another
//! Tripline with `ISTIO_MUTUAL`, its identity passed to the application in
//! `x-forwarded-client-cert`), a DISABLE port plaintext only, a PERMISSIVE port either, on
//! HTTP and TCP. Certificates come from a CA the test makes; the callers are real rustls
//! clients, plain sockets and another Tripline process.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::metrics::metric_sum;
use crate::support::tls::{self, Ca};
use crate::support::{config, free_port, get, get_with, Proxy, Upstream};

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ingress(port: u16, protocol: &str, app: SocketAddr) -> String {
    format!("  - port: {{number: {port}, protocol: {protocol}, name: p{port}}}\n    bind: 127.0.0.1\n    defaultEndpoint: {app}\n")
}

/// Bytes through a TCP port and back from the echo application, whatever the stream.
async fn echoed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await.unwrap().unwrap();
    back
}

/// One workload, `backend` in namespace `shop`, whose namespace is STRICT and whose own policy
/// makes one HTTP port DISABLE and one HTTP and one TCP port PERMISSIVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_authentication_decides_who_may_connect_to_each_inbound_port() {
    let dir = crate::support::proxy::unique_dir("peer-authn");
    let mesh = Ca::new(&dir, "mesh");
    let server = mesh.issue("backend", &["spiffe://cluster.local/ns/shop/sa/backend", "backend.shop"]);
    let web = mesh.issue("web", &["spiffe://cluster.local/ns/shop/sa/web"]);
    let id_dir = |name: &str, id: &tls::Issued| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&id.cert, d.join("tls.crt")).unwrap();
        std::fs::copy(&id.key, d.join("tls.key")).unwrap();
        std::fs::copy(&mesh.pem, d.join("ca.crt")).unwrap();
        d
    };
    let app = Upstream::http("app").await;
    let echo = Upstream::tcp_echo("db").await;
    let (strict, disabled, permissive, tcp) = (free_port(), free_port(), free_port(), free_port());
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: backend, namespace: shop}}\nspec:\n  ingress:\n{}{}{}{}\
         ---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: shop}}\nspec:\n  mtls: {{mode: STRICT}}\n\
         ---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: backend, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: backend}}}}\n  portLevelMtls:\n    {disabled}: {{mode: DISABLE}}\n    {permissive}: {{mode: PERMISSIVE}}\n    {tcp}: {{mode: PERMISSIVE}}\n",
        ingress(strict, "HTTP", app.addr),
        ingress(disabled, "HTTP", app.addr),
        ingress(permissive, "HTTP", app.addr),
        ingress(tcp, "TCP", echo.addr),
    );
    let server_id = id_dir("id-backend", &server);
    let workload = [
        "--workload-namespace",
        "shop",
        "--workload-labels",
        "app=backend,version=v1",
        "--identity-dir",
        server_id.to_str().unwrap(),
    ];
    let proxy = Proxy::start_args(&yaml, &workload).await;

    // A mesh caller: another Tripline whose DestinationRule says ISTIO_MUTUAL.
    let caller_port = free_port();
    let caller_yaml = config::join(&[
        config::gateway("edge", caller_port, "HTTP"),
        config::virtual_service("backend", &["*"], "edge", &config::http_route("backend.shop")),
        config::service_entry("backend.shop", "HTTP", &[at(strict)]),
        config::destination_rule("backend.shop", "    tls: {mode: ISTIO_MUTUAL}\n"),
    ]);
    let web_id = id_dir("id-web", &web);
    let _caller = Proxy::start_args(&caller_yaml, &["--identity-dir", web_id.to_str().unwrap()]).await;
    let forged = [("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/admin/sa/root")];

    // STRICT: the mesh caller gets through, and the application learns who it is (the
    // caller's own x-forwarded-client-cert claim replaced); a plaintext caller is closed.
    let r = get_with(at(caller_port), "backend.shop", "/orders", &forged).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.seen_header("x-forwarded-client-cert").as_deref(),
        Some("URI=spiffe://cluster.local/ns/shop/sa/web")
    );
    assert!(get(at(strict), "backend.shop", "/orders").await.is_err(), "plaintext to a STRICT port");

    // DISABLE: plaintext, and nobody may claim an identity to the application.
    let r = get_with(at(disabled), "backend.shop", "/", &forged).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen_header("x-forwarded-client-cert"), None);
    let mtls = tls::client_config(&mesh, &["http/1.1"], Some(&web));
    let refused = async { tls::http(tls::connect(at(disabled), "backend.shop", mtls.clone()).await?).await };
    assert!(refused.await.is_err(), "a TLS client on a DISABLE port");

    // PERMISSIVE: plaintext and mutual TLS on one port; TLS without a client certificate is not
    // mutual TLS and is refused.
    let r = get_with(at(permissive), "backend.shop", "/", &forged).await.unwrap();
    assert_eq!((r.status.as_u16(), r.seen_header("x-forwarded-client-cert")), (200, None));
    assert_eq!(r.seen_header("x-forwarded-proto").as_deref(), Some("http"));
    let mut conn =
        tls::http(tls::connect(at(permissive), "backend.shop", mtls.clone()).await.unwrap()).await.unwrap();
    let r = conn.get_with("backend.shop", "/", &forged).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.seen_header("x-forwarded-client-cert").as_deref(),
        Some("URI=spiffe://cluster.local/ns/shop/sa/web")
    );
    let anonymous = tls::client_config(&mesh, &["http/1.1"], None);
    let without_cert = async {
        let mut c = tls::http(tls::connect(at(permissive), "backend.shop", anonymous).await?).await?;
        c.get("backend.shop", "/").await
    };
    assert!(without_cert.await.is_err(), "TLS without a client certificate");

    // A PERMISSIVE TCP port: plaintext bytes and mutual TLS, both to the application.
    let plain = tokio::net::TcpStream::connect(at(tcp)).await.unwrap();
    assert_eq!(echoed(plain, b"plaintext").await, b"plaintext");
    let encrypted =
        tls::connect(at(tcp), "backend.shop", tls::client_config(&mesh, &[], Some(&web))).await.unwrap();
    assert_eq!(echoed(encrypted, b"over mutual TLS").await, b"over mutual TLS");

    let m = proxy.metrics().await;
    let failed = |reason| metric_sum(&m, "tripline_tls_handshake_failures_total", &[("reason", reason)]);
    assert!(failed("protocol") >= 1.0, "the plaintext caller of the STRICT port: {m}");
    assert!(failed("client-certificate") >= 1.0, "the caller without a certificate: {m}");
    assert_eq!(app.requests(), 4, "no refused caller reached the application");
}
