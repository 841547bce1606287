//! TLS through the binary: Gateway servers that terminate TLS (SNI picks the certificate,
//! ALPN the protocol, client certificates checked against a CA and `subjectAltNames`),
//! certificates re-read when their files change, `httpsRedirect`, TLS originated to upstreams
//! (`DestinationRule.trafficPolicy.tls`), and TLS on a TCP listener. Every certificate comes
//! from a CA the test makes (rcgen); every peer is a real rustls client or server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::metrics::metric_sum;
use crate::support::tls::{self, Ca, Issued, TlsUpstream};
use crate::support::{config, eventually, free_port, get, Proxy, Upstream};

/// One Gateway server on `port` with `tls` (YAML flow mapping) for `hosts`.
fn tls_server(port: u16, name: &str, protocol: &str, hosts: &[&str], tls: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "  - port: {{number: {port}, name: {name}, protocol: {protocol}}}\n    bind: 127.0.0.1\n    hosts: [{}]\n    tls: {tls}\n",
        hosts.join(", ")
    )
}

fn gateway(servers: &[String]) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec:\n  servers:\n{}",
        servers.concat()
    )
}

fn simple_tls(cert: &Issued) -> String {
    format!(
        "{{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}",
        cert.cert.display(),
        cert.key.display()
    )
}

/// An HTTPS edge: `servers` on the Gateway, every host routed to `backend.local` at `up`.
fn https_edge(servers: &[String], up: SocketAddr) -> String {
    config::join(&[
        gateway(servers),
        config::virtual_service("backend", &["*"], "edge", &config::http_route("backend.local")),
        config::service_entry("backend.local", "HTTP", &[up]),
    ])
}

/// Runs curl with `args` and returns its stdout; `None` (the check skipped, and said so) when
/// curl is not installed, outside CI: CI installs it, and there its absence fails the test.
fn curl(args: &[&str]) -> Option<String> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(args);
    match cmd.output() {
        Ok(out) => {
            assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("curl not run ({e}): skipped outside CI");
            None
        }
        Err(e) => panic!("curl is needed under CI=true: {e}"),
    }
}

/// Two HTTPS servers share a port, each with its own certificate: the client's SNI picks it
/// (an SNI neither serves fails the handshake, counted by reason). ALPN decides HTTP/1.1 or
/// HTTP/2, the requests reach the upstream with `x-forwarded-proto: https`, and routing sees
/// the `https` scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let dir = crate::support::proxy::unique_dir("tls-sni");
    let ca = Ca::new(&dir, "edge");
    let a = ca.issue("a", &["a.example"]);
    let b = ca.issue_until("b", &["*.b.example"], (2039, 6, 1));
    let up = Upstream::http("u1").await;
    let port = free_port();
    let yaml = https_edge(
        &[
            tls_server(port, "https-a", "HTTPS", &["a.example"], &simple_tls(&a)),
            tls_server(port, "https-b", "HTTPS", &["*.b.example"], &simple_tls(&b)),
        ],
        up.addr,
    );
    let proxy = Proxy::start(&yaml).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let h1 = tls::connect(addr, "a.example", tls::client_config(&ca, &["http/1.1"], None)).await.unwrap();
    assert_eq!(tls::presented(&h1), a.chain[0], "a.example's certificate");
    assert_eq!(tls::alpn(&h1).as_deref(), Some("http/1.1"));
    let mut conn = tls::http(h1).await.unwrap();
    let r = conn.get("a.example", "/x").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen_header("x-forwarded-proto").as_deref(), Some("https"));

    let h2 = tls::connect(addr, "api.b.example", tls::client_config(&ca, &["h2", "http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(tls::presented(&h2), b.chain[0], "the wildcard server's certificate");
    assert_eq!(tls::alpn(&h2).as_deref(), Some("h2"));
    let mut conn = tls::http(h2).await.unwrap();
    let r = conn
        .call(
            conn.request(http::Method::GET, "api.b.example", "/y")
                .body(crate::support::client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.version), (200, http::Version::HTTP_2));
    assert_eq!(r.json()["version"], "HTTP/1.1", "the upstream is plain HTTP/1.1");

    // curl, as a user would: HTTP/1.1 and HTTP/2 by ALPN, verifying against the CA.
    let mut handshakes = 2.0;
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        if let Some(out) = curl(&[
            "-sS",
            flag,
            "--cacert",
            ca.pem.to_str().unwrap(),
            "--resolve",
            &format!("a.example:{port}:127.0.0.1"),
            "-w",
            " %{http_version} %{http_code}",
            &format!("https://a.example:{port}/curl"),
        ]) {
            assert!(out.ends_with(&format!(" {version} 200")), "curl {flag}: {out}");
            assert!(out.contains("\"path\":\"/curl\""), "curl {flag}: {out}");
            handshakes += 1.0;
        }
    }

    let unknown = tls::connect(addr, "c.example", tls::client_config(&ca, &[], None)).await;
    assert!(unknown.is_err(), "no server answers c.example");
    let plaintext = get(addr, "a.example", "/").await;
    assert!(
        plaintext.is_err() || plaintext.unwrap().status == 400,
        "plaintext HTTP on a TLS port gets nothing useful"
    );

    let m = proxy.metrics().await;
    assert_eq!(metric_sum(&m, "tripline_tls_handshakes_total", &[]), handshakes, "{m}");
    assert_eq!(metric_sum(&m, "tripline_tls_handshake_failures_total", &[("reason", "unknown-sni")]), 1.0);
    assert_eq!(
        metric_sum(
            &m,
            "tripline_tls_certificate_expiry_timestamp_seconds",
            &[("file", b.cert.to_str().unwrap())]
        ),
        tls::not_after(&b.chain[0]) as f64,
        "the expiry of each certificate in force"
    );
}

/// `MUTUAL` with `subjectAltNames`: no client certificate, one from another CA, and one from
/// the right CA naming another identity all fail the handshake; the right one gets through,
/// and an AuthorizationPolicy sees its SPIFFE identity as the principal. `OPTIONAL_MUTUAL`
/// lets a client without a certificate in, and the same policy denies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_checked_and_name_the_principal() {
    let dir = crate::support::proxy::unique_dir("tls-mutual");
    let ca = Ca::new(&dir, "mesh");
    let stranger_ca = Ca::new(&dir, "stranger");
    let server = ca.issue("server", &["api.example"]);
    let web = ca.issue("web", &["spiffe://cluster.local/ns/shop/sa/web"]);
    let batch = ca.issue("batch", &["spiffe://cluster.local/ns/shop/sa/batch"]);
    let forged = stranger_ca.issue("forged", &["spiffe://cluster.local/ns/shop/sa/web"]);
    let up = Upstream::http("u1").await;
    let (strict, optional) = (free_port(), free_port());
    let mutual = |mode: &str, sans: &str| {
        format!(
            "{{mode: {mode}, serverCertificate: {}, privateKey: {}, caCertificates: {}{sans}}}",
            server.cert.display(),
            server.key.display(),
            ca.pem.display()
        )
    };
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: web-only, namespace: istio-system}\nspec:\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}]\n".to_string();
    let yaml = config::join(&[
        https_edge(
            &[
                tls_server(
                    strict,
                    "strict",
                    "HTTPS",
                    &["*"],
                    &mutual("MUTUAL", ", subjectAltNames: [\"spiffe://cluster.local/ns/shop/sa/web\", \"spiffe://cluster.local/ns/shop/sa/batch\"]"),
                ),
                tls_server(optional, "optional", "HTTPS", &["*"], &mutual("OPTIONAL_MUTUAL", "")),
            ],
            up.addr,
        ),
        policy,
    ]);
    let log = dir.join("access.log");
    let proxy = Proxy::start_args(&yaml, &["--access-log", log.to_str().unwrap()]).await;
    let strict = SocketAddr::from(([127, 0, 0, 1], strict));
    let optional = SocketAddr::from(([127, 0, 0, 1], optional));

    // A TLS 1.3 client learns of a rejected certificate at its first read, not at connect.
    async fn status(addr: SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) -> Result<u16, String> {
        let stream = tls::connect(addr, "api.example", config).await.map_err(|e| e.to_string())?;
        let mut conn = tls::http(stream).await.map_err(|e| e.to_string())?;
        conn.get("api.example", "/").await.map(|r| r.status.as_u16()).map_err(|e| e.to_string())
    }
    assert!(status(strict, tls::client_config(&ca, &[], None)).await.is_err(), "no client certificate");
    assert!(
        status(strict, tls::client_config(&ca, &[], Some(&forged))).await.is_err(),
        "another CA's certificate"
    );
    let outsider = ca.issue("outsider", &["spiffe://cluster.local/ns/shop/sa/outsider"]);
    assert!(
        status(strict, tls::client_config(&ca, &[], Some(&outsider))).await.is_err(),
        "the right CA, an identity not in subjectAltNames"
    );
    let expired = ca.issue_until("expired", &["spiffe://cluster.local/ns/shop/sa/web"], (2020, 1, 1));
    assert!(
        status(strict, tls::client_config(&ca, &[], Some(&expired))).await.is_err(),
        "an expired certificate"
    );
    assert_eq!(status(strict, tls::client_config(&ca, &[], Some(&web))).await, Ok(200));
    assert_eq!(
        status(strict, tls::client_config(&ca, &[], Some(&batch))).await,
        Ok(403),
        "let in by subjectAltNames, denied by the policy"
    );

    assert_eq!(
        status(optional, tls::client_config(&ca, &[], None)).await,
        Ok(403),
        "no identity: the ALLOW policy denies"
    );
    assert_eq!(status(optional, tls::client_config(&ca, &[], Some(&web))).await, Ok(200));
    assert_eq!(up.requests(), 2);
    // Four requests got through the handshake: each logged with its SNI and the caller.
    let logged = crate::support::access_log_lines(&log, 4).await;
    let who: Vec<(u64, &str)> = logged
        .iter()
        .map(|l| (l["status"].as_u64().unwrap(), l["downstream_identity"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(
        who,
        [
            (200, "spiffe://cluster.local/ns/shop/sa/web"),
            (403, "spiffe://cluster.local/ns/shop/sa/batch"),
            (403, "-"),
            (200, "spiffe://cluster.local/ns/shop/sa/web")
        ]
    );
    assert!(logged.iter().all(|l| l["tls_sni"] == "api.example"), "{logged:?}");

    let m = proxy.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "tripline_tls_handshake_failures_total",
            &[("listener", "edge/strict"), ("reason", "client-certificate")]
        ),
        4.0,
        "{m}"
    );
}

/// Rotating a certificate: a new pair written over the files is served to new clients within
/// seconds while a connection made before keeps working; a broken file written next keeps
/// the last good certificate in force, and is counted and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_and_a_broken_one_keeps_the_last_good_one() {
    let dir = crate::support::proxy::unique_dir("tls-rotate");
    let ca = Ca::new(&dir, "edge");
    let first = ca.issue_until("served", &["api.example"], (2035, 1, 1));
    let up = Upstream::http("u1").await;
    let port = free_port();
    let proxy = Proxy::start(&https_edge(
        &[tls_server(port, "https", "HTTPS", &["*"], &simple_tls(&first))],
        up.addr,
    ))
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = tls::client_config(&ca, &[], None);
    let before = tls::connect(addr, "api.example", config.clone()).await.unwrap();
    assert_eq!(tls::presented(&before), first.chain[0]);
    let mut kept = tls::http(before).await.unwrap();
    assert_eq!(kept.get("api.example", "/").await.unwrap().status, 200);

    // Load through the rotation: a new connection per request (each a handshake), bounded in
    // count and time; every one must succeed, with the old certificate or the new one.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (stop, config) = (stop.clone(), config.clone());
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let started = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && ok < 5_000
                && started.elapsed() < Duration::from_secs(20)
            {
                let result = async {
                    let s = tls::connect(addr, "api.example", config.clone()).await?;
                    tls::http(s).await?.get("api.example", "/").await
                }
                .await;
                match result {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status)),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }
    });

    // Same file names: the new pair replaces the old one (the certificate first, then the
    // key: a watcher may see the new certificate with the old key in between, which must
    // keep the old pair in force).
    let second = ca.issue_until("served", &["api.example"], (2036, 1, 1));
    // Each look is a full handshake with a fresh client: a resumed session carries the
    // certificate it was first made with, not the one served now.
    eventually("the new certificate is served", Duration::from_secs(10), || {
        let config = tls::client_config(&ca, &[], None);
        let want = second.chain[0].clone();
        async move {
            match tls::connect(addr, "api.example", config).await {
                Ok(s) => tls::presented(&s) == want,
                Err(_) => false,
            }
        }
    })
    .await;
    assert_eq!(kept.get("api.example", "/").await.unwrap().status, 200, "the old connection still serves");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 0);

    std::fs::write(&second.key, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        .unwrap();
    eventually("the broken file is counted", Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        metric_sum(&m, "tripline_tls_reloads_total", &[("result", "failed")]) >= 1.0
    })
    .await;
    let after = tls::connect(addr, "api.example", tls::client_config(&ca, &[], None)).await.unwrap();
    assert_eq!(tls::presented(&after), second.chain[0], "the last good certificate stays in force");
    let m = proxy.metrics().await;
    // One good rotation (a second `ok` if the watcher saw the certificate before its key).
    let reloaded = metric_sum(&m, "tripline_tls_reloads_total", &[("result", "ok")]);
    assert!((1.0..=2.0).contains(&reloaded), "{m}");
    assert_eq!(
        metric_sum(&m, "tripline_tls_certificate_expiry_timestamp_seconds", &[("role", "certificate")]),
        tls::not_after(&second.chain[0]) as f64
    );
    assert!(proxy.logs().contains("the previous certificate stays in force"), "{}", proxy.logs());
    let dump = proxy.admin_get("/config_dump").await;
    let certs = dump.json()["certificates"].clone();
    let served =
        certs.as_array().expect("the certificates in force").iter().find(|c| c["role"] == "certificate");
    assert_eq!(
        served.map(|c| c["not_after_unix"].clone()),
        Some(tls::not_after(&second.chain[0]).into()),
        "{certs}"
    );
    assert!(!dump.text().contains("PRIVATE KEY"), "never a key");
}

/// `tls.httpsRedirect` on a plaintext server: every request is sent to the same URL over
/// https, before any route (the upstream sees nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_sends_plaintext_clients_to_https() {
    let up = Upstream::http("u1").await;
    let port = free_port();
    let server = format!(
        "  - port: {{number: {port}, name: http, protocol: HTTP}}\n    bind: 127.0.0.1\n    hosts: [\"*\"]\n    tls: {{httpsRedirect: true}}\n"
    );
    let _proxy = Proxy::start(&https_edge(&[server], up.addr)).await;
    let r = get(SocketAddr::from(([127, 0, 0, 1], port)), "shop.example:8080", "/cart?id=7").await.unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://shop.example/cart?id=7"));
    assert_eq!(up.requests(), 0);
}

/// `DestinationRule` TLS to the endpoints: `MUTUAL` presents the client certificate and checks
/// the upstream against the CA (HTTP/1.1 and HTTP/2 by ALPN); an upstream whose certificate
/// names nothing in `subjectAltNames`, or comes from a CA not trusted, is a connect failure
/// (503, counted), never a request sent in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rule_tls_originates_mutual_tls_and_checks_the_upstream() {
    let dir = crate::support::proxy::unique_dir("tls-upstream");
    let ca = Ca::new(&dir, "mesh");
    let up_cert = ca.issue("upstream", &["backend.local", "spiffe://cluster.local/ns/shop/sa/backend"]);
    let client = ca.issue("client", &["spiffe://cluster.local/ns/shop/sa/gateway"]);
    let upstream = TlsUpstream::start("tls-up", &up_cert, Some(&ca)).await;
    let (h1_port, h2_port, wrong_port) = (free_port(), free_port(), free_port());
    let dr = |host: &str, extra: &str| {
        config::destination_rule(
            host,
            &format!(
                "    tls: {{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {}{extra}}}\n",
                client.cert.display(),
                client.key.display(),
                ca.pem.display()
            ),
        )
    };
    let listener = |port: u16, name: &str, host: &str| {
        config::join(&[
            config::gateway(name, port, "HTTP"),
            config::virtual_service(name, &["*"], name, &config::http_route(host)),
        ])
    };
    let yaml = config::join(&[
        config::service_entry("backend.local", "HTTP", &[upstream.upstream.addr]),
        config::service_entry("grpc.local", "HTTP2", &[upstream.upstream.addr]),
        config::service_entry("wrong.local", "HTTP", &[upstream.upstream.addr]),
        dr("backend.local", ""),
        dr(
            "grpc.local",
            ", sni: backend.local, subjectAltNames: [\"spiffe://cluster.local/ns/shop/sa/backend\"]",
        ),
        dr(
            "wrong.local",
            ", sni: backend.local, subjectAltNames: [\"spiffe://cluster.local/ns/shop/sa/payments\"]",
        ),
        listener(h1_port, "h1", "backend.local"),
        listener(h2_port, "h2", "grpc.local"),
        listener(wrong_port, "wrong", "wrong.local"),
    ]);
    let proxy = Proxy::start(&yaml).await;

    let r = get(SocketAddr::from(([127, 0, 0, 1], h1_port)), "backend.local", "/a").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "HTTP/1.1");
    let r = get(SocketAddr::from(([127, 0, 0, 1], h2_port)), "grpc.local", "/b").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "HTTP/2.0", "ALPN h2 to an HTTP2 port");
    let seen = upstream.clients.lock().unwrap().clone();
    assert!(seen.iter().all(|c| c == "spiffe://cluster.local/ns/shop/sa/gateway"), "{seen:?}");

    let r = get(SocketAddr::from(([127, 0, 0, 1], wrong_port)), "wrong.local", "/c").await.unwrap();
    assert_eq!((r.status.as_u16(), r.reason()), (503, Some("upstream-connect-failure")));
    assert_eq!(upstream.upstream.requests(), 2, "nothing reached an upstream that failed the check");
    let m = proxy.metrics().await;
    let failures = metric_sum(
        &m,
        "tripline_upstream_tls_handshake_failures_total",
        &[("cluster", "outbound|80||wrong.local")],
    );
    assert!(failures >= 1.0, "{m}");
}

/// A `TLS` server in `SIMPLE` mode terminates TLS and proxies the bytes as TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_terminates_and_proxies_tcp() {
    let dir = crate::support::proxy::unique_dir("tls-tcp");
    let ca = Ca::new(&dir, "edge");
    let cert = ca.issue("db", &["db.example"]);
    let echo = Upstream::tcp_echo("echo").await;
    let port = free_port();
    let yaml = config::join(&[
        gateway(&[tls_server(port, "tls", "TLS", &["db.example"], &simple_tls(&cert))]),
        config::virtual_service("db", &["db.example"], "edge", &config::tcp_route("db.local")),
        config::service_entry("db.local", "TCP", &[echo.addr]),
    ]);
    let _proxy = Proxy::start(&yaml).await;
    let mut s = tls::connect(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "db.example",
        tls::client_config(&ca, &[], None),
    )
    .await
    .unwrap();
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "ping<EOF:4>");
}

/// `validate --explain` says how a listener terminates TLS (mode, hosts, certificate and its
/// expiry, the CA client certificates must chain to) and how a cluster originates it.
#[test]
fn validate_explain_says_how_tls_is_terminated_and_originated() {
    let dir = crate::support::proxy::unique_dir("tls-explain");
    let ca = Ca::new(&dir, "mesh");
    let server = ca.issue_until("server", &["api.example"], (2037, 3, 4));
    let client = ca.issue("client", &["spiffe://cluster.local/ns/shop/sa/gateway"]);
    let tls = format!(
        "{{mode: MUTUAL, serverCertificate: {}, privateKey: {}, caCertificates: {}}}",
        server.cert.display(),
        server.key.display(),
        ca.pem.display()
    );
    let yaml = config::join(&[
        https_edge(&[tls_server(free_port(), "https", "HTTPS", &["api.example"], &tls)], "127.0.0.1:9".parse().unwrap()),
        config::destination_rule(
            "backend.local",
            &format!(
                "    tls: {{mode: MUTUAL, sni: backend.internal, clientCertificate: {}, privateKey: {}, caCertificates: {}}}\n",
                client.cert.display(),
                client.key.display(),
                ca.pem.display()
            ),
        ),
    ]);
    let file = dir.join("tls.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = std::process::Command::new(crate::support::proxy::binary());
    cmd.args(["validate", "--explain", "api.example"]).arg(&file);
    let (code, out, err) = crate::support::proxy::run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "  tls: MUTUAL TLS for api.example: certificate {}, expires 2037-03-04T00:00:00Z; client certificates chain to {}",
            server.cert.display(),
            ca.pem.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "tls: MUTUAL TLS, SNI backend.internal, verified against {}",
            ca.pem.display()
        )),
        "{out}"
    );
    assert!(out.contains("(DestinationRule/backend-local spec.trafficPolicy.tls)"), "{out}");
}

/// A certificate with another certificate's key reads fine as files; `validate` builds the TLS
/// configs as `run` would and refuses it, naming the files, instead of `run` failing later.
#[test]
fn validate_refuses_a_certificate_with_another_certificate_s_key() {
    let dir = crate::support::proxy::unique_dir("tls-key-mismatch");
    let ca = Ca::new(&dir, "mesh");
    let (server, other) = (ca.issue("server", &["api.example"]), ca.issue("other", &["other.example"]));
    let tls = format!(
        "{{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}",
        server.cert.display(),
        other.key.display()
    );
    let yaml = https_edge(
        &[tls_server(free_port(), "https", "HTTPS", &["api.example"], &tls)],
        "127.0.0.1:9".parse().unwrap(),
    );
    let file = dir.join("tls.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = std::process::Command::new(crate::support::proxy::binary());
    cmd.arg("validate").arg(&file);
    let (code, out, err) = crate::support::proxy::run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(
        err.contains(&format!("{}", server.cert.display())) && err.contains("listener edge/https"),
        "{err}"
    );
    assert!(err.contains("do not make a certificate"), "{err}");
    assert!(err.contains("invalid: 1 error(s)"), "{err}");
}

/// `minProtocolVersion` and `cipherSuites` as a client sees them: a TLS 1.2-only client cannot
/// connect to a TLS 1.3-only server (counted as a protocol failure), a TLS 1.2 client offering
/// only a suite the server left out cannot either; and a second connection from the same
/// client resumes its session (a ticket) instead of a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_cipher_suites_and_resumption() {
    let dir = crate::support::proxy::unique_dir("tls-versions");
    let ca = Ca::new(&dir, "edge");
    let cert = ca.issue("api", &["api.example"]);
    let up = Upstream::http("u1").await;
    let (modern, tls12) = (free_port(), free_port());
    let files = format!("serverCertificate: {}, privateKey: {}", cert.cert.display(), cert.key.display());
    let yaml = https_edge(
        &[
            tls_server(modern, "modern", "HTTPS", &["*"], &format!("{{mode: SIMPLE, {files}, minProtocolVersion: TLSV1_3}}")),
            tls_server(
                tls12,
                "tls12",
                "HTTPS",
                &["*"],
                &format!("{{mode: SIMPLE, {files}, maxProtocolVersion: TLSV1_2, cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]}}"),
            ),
        ],
        up.addr,
    );
    let proxy = Proxy::start(&yaml).await;
    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let client = |versions: &[&'static rustls::SupportedProtocolVersion],
                  suites: Option<rustls::CipherSuite>| {
        #[allow(deprecated)]
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(only) = suites {
            provider.cipher_suites.retain(|s| s.suite() == only);
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
        std::sync::Arc::new(config)
    };
    let v12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    assert!(
        tls::connect(at(modern), "api.example", client(v12, None)).await.is_err(),
        "TLS 1.2 to a TLS 1.3-only server"
    );
    let chacha = Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256);
    assert!(
        tls::connect(at(tls12), "api.example", client(v12, chacha)).await.is_err(),
        "a suite the server left out"
    );
    let aes256 = Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);
    let ok = tls::connect(at(tls12), "api.example", client(v12, aes256)).await.unwrap();
    assert_eq!(ok.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));

    let config = tls::client_config(&ca, &["http/1.1"], None);
    let first = tls::connect(at(modern), "api.example", config.clone()).await.unwrap();
    assert_eq!(first.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Full));
    // TLS 1.3 tickets arrive after the handshake: one request reads them.
    let mut conn = tls::http(first).await.unwrap();
    assert_eq!(conn.get("api.example", "/").await.unwrap().status, 200);
    let second = tls::connect(at(modern), "api.example", config.clone()).await.unwrap();
    assert_eq!(second.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    let mut conn = tls::http(second).await.unwrap();
    assert_eq!(conn.get("api.example", "/").await.unwrap().status, 200);
    // A config reload builds every TLS config anew; the tickets issued before still resume.
    let before = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    proxy.write_config(&yaml.replace("metadata: {name: backend}", "metadata: {name: backend-v2}"));
    proxy.wait_reload("success", before, Duration::from_secs(10)).await;
    let third = tls::connect(at(modern), "api.example", config).await.unwrap();
    assert_eq!(third.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "after a reload");

    let m = proxy.metrics().await;
    assert_eq!(
        metric_sum(&m, "tripline_tls_handshake_failures_total", &[("reason", "protocol")]),
        2.0,
        "{m}"
    );
}

/// A workload identity directory in `layout` (SPIRE's helper: svid.pem...; csi-driver-spiffe:
/// tls.crt...) holding `id`'s certificate, key and `ca`'s bundle.
fn identity_dir(
    dir: &std::path::Path,
    ca: &Ca,
    id: &Issued,
    layout: (&str, &str, &str),
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(&id.cert, dir.join(layout.0)).unwrap();
    std::fs::copy(&id.key, dir.join(layout.1)).unwrap();
    std::fs::copy(&ca.pem, dir.join(layout.2)).unwrap();
    dir.to_path_buf()
}

/// Two Tripline proxies with `ISTIO_MUTUAL` between them and nothing else: each presents its
/// SVID from `--identity-dir` (two agents' file layouts), the client checks the server's
/// SPIFFE ID is of its trust domain, and the server's AuthorizationPolicy sees the caller's
/// principal: the allowed caller gets through, another workload of the mesh is denied (403
/// from the server, passed back), and a workload of another trust domain cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mutual_between_two_proxies_carries_the_callers_identity() {
    let dir = crate::support::proxy::unique_dir("tls-istio-mutual");
    let mesh = Ca::new(&dir, "mesh");
    let other = Ca::new(&dir, "other-mesh");
    let spire = ("svid.pem", "svid_key.pem", "svid_bundle.pem");
    let csi = ("tls.crt", "tls.key", "ca.crt");
    let server_id = identity_dir(
        &dir.join("id-server"),
        &mesh,
        &mesh.issue("server", &["spiffe://cluster.local/ns/shop/sa/backend"]),
        csi,
    );
    let web_id = identity_dir(
        &dir.join("id-web"),
        &mesh,
        &mesh.issue("web", &["spiffe://cluster.local/ns/shop/sa/web"]),
        spire,
    );
    let batch_id = identity_dir(
        &dir.join("id-batch"),
        &mesh,
        &mesh.issue("batch", &["spiffe://cluster.local/ns/shop/sa/batch"]),
        spire,
    );
    let foreign_id = identity_dir(
        &dir.join("id-foreign"),
        &other,
        &other.issue("foreign", &["spiffe://other.org/ns/shop/sa/web"]),
        spire,
    );

    let up = Upstream::http("app").await;
    let server_port = free_port();
    let server_yaml = config::join(&[
        https_edge(&[tls_server(server_port, "mtls", "HTTPS", &["*"], "{mode: ISTIO_MUTUAL}")], up.addr),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: web-only, namespace: istio-system}\nspec:\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}]\n".to_string(),
    ]);
    let _server = Proxy::start_args(&server_yaml, &["--identity-dir", server_id.to_str().unwrap()]).await;

    // A server of the mesh's CA whose SPIFFE ID is of another trust domain: not the mesh.
    let impostor_id = identity_dir(
        &dir.join("id-impostor"),
        &mesh,
        &mesh.issue("impostor", &["spiffe://evil.org/ns/shop/sa/backend"]),
        csi,
    );
    let impostor_port = free_port();
    let impostor_yaml =
        https_edge(&[tls_server(impostor_port, "mtls", "HTTPS", &["*"], "{mode: ISTIO_MUTUAL}")], up.addr);
    let _impostor =
        Proxy::start_args(&impostor_yaml, &["--identity-dir", impostor_id.to_str().unwrap()]).await;

    let client = |id: std::path::PathBuf, server_port: u16| {
        let port = free_port();
        let yaml = config::join(&[
            config::gateway("edge", port, "HTTP"),
            config::virtual_service("backend", &["*"], "edge", &config::http_route("backend.shop")),
            config::service_entry("backend.shop", "HTTP", &[SocketAddr::from(([127, 0, 0, 1], server_port))]),
            config::destination_rule("backend.shop", "    tls: {mode: ISTIO_MUTUAL}\n"),
        ]);
        async move {
            (
                Proxy::start_args(&yaml, &["--identity-dir", id.to_str().unwrap()]).await,
                SocketAddr::from(([127, 0, 0, 1], port)),
            )
        }
    };
    let (_web, web) = client(web_id.clone(), server_port).await;
    let (_batch, batch) = client(batch_id, server_port).await;
    let (_foreign, foreign) = client(foreign_id, server_port).await;
    let (_fooled, fooled) = client(web_id, impostor_port).await;

    let r = get(web, "backend.shop", "/orders").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen_header("x-forwarded-proto").as_deref(), Some("https"));
    let r = get(batch, "backend.shop", "/orders").await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.reason()),
        (403, Some("rbac-denied")),
        "the server's policy, passed back"
    );
    let r = get(foreign, "backend.shop", "/orders").await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.reason()),
        (503, Some("upstream-connect-failure")),
        "another trust domain"
    );
    let r = get(fooled, "backend.shop", "/orders").await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.reason()),
        (503, Some("upstream-connect-failure")),
        "a server signed by the mesh's CA but not of its trust domain"
    );
    assert_eq!(up.requests(), 1);
}

/// `tls.mode: PASSTHROUGH`: the proxy terminates nothing. The SNI of the client's ClientHello
/// picks a VirtualService `tls` route (`a.example` to one TLS upstream, `*.b.example` to the
/// other), and the client's TLS session is with that upstream: it sees the upstream's own
/// certificate and talks HTTP to it through the proxy. An SNI no route takes, and a plaintext
/// client, are closed and counted as `no-route`; an AuthorizationPolicy reads the SNI as
/// `connection.sni`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_the_still_encrypted_connection_by_its_sni() {
    let dir = crate::support::proxy::unique_dir("tls-passthrough");
    let ca = Ca::new(&dir, "upstreams");
    let a_cert = ca.issue("pass-a", &["a.example"]);
    let b_cert = ca.issue("pass-b", &["*.b.example"]);
    let a = TlsUpstream::start("pass-a", &a_cert, None).await;
    let b = TlsUpstream::start("pass-b", &b_cert, None).await;
    let port = free_port();
    let routes = "  tls:\n  - match: [{sniHosts: [a.example]}]\n    route: [{destination: {host: a.local, port: {number: 80}}}]\n  - match: [{sniHosts: [\"*.b.example\"]}]\n    route: [{destination: {host: b.local, port: {number: 80}}}]\n";
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-denied, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - when: [{key: connection.sni, values: [denied.b.example]}]\n".to_string();
    let yaml = config::join(&[
        gateway(&[tls_server(port, "pass", "TLS", &["*"], "{mode: PASSTHROUGH}")]),
        config::virtual_service("pass", &["a.example", "*.b.example"], "edge", routes),
        config::service_entry("a.local", "TLS", &[a.upstream.addr]),
        config::service_entry("b.local", "TLS", &[b.upstream.addr]),
        deny,
    ]);
    let proxy = Proxy::start_args(&yaml, &["--header-timeout", "500ms"]).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = tls::client_config(&ca, &["http/1.1"], None);

    for (sni, cert, id) in [("a.example", &a_cert, "pass-a"), ("x.b.example", &b_cert, "pass-b")] {
        let stream = tls::connect(addr, sni, config.clone()).await.unwrap();
        assert_eq!(tls::presented(&stream), cert.chain[0], "{sni}: the upstream's own certificate");
        let mut conn = tls::http(stream).await.unwrap();
        let r = conn.get(sni, "/through").await.unwrap();
        assert_eq!((r.status.as_u16(), r.upstream()), (200, Some(id)), "{sni}: {}", r.text());
        assert_eq!(r.seen_header("x-forwarded-proto"), None, "the proxy never saw the request");
    }
    assert_eq!((a.upstream.requests(), b.upstream.requests()), (1, 1));

    // An SNI no route takes (`b.example` is not under `*.b.example`), and a client whose bytes
    // are not TLS: closed before any upstream.
    for sni in ["c.example", "b.example"] {
        assert!(tls::connect(addr, sni, config.clone()).await.is_err(), "{sni}");
    }
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nhost: a.example\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed without an answer: {read:?} {got:?}");
    // The DENY policy reads the SNI.
    assert!(tls::connect(addr, "denied.b.example", config.clone()).await.is_err(), "denied by its SNI");
    // A client that stops in the middle of its ClientHello is closed at the request-head
    // timeout (500 ms here), and is no routing refusal.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[22, 3, 1, 0, 200, 1, 0]).await.unwrap();
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut [0u8; 16])).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(400), "at the timeout: {:?}", started.elapsed());
    assert_eq!((a.upstream.requests(), b.upstream.requests()), (1, 1), "nothing else reached them");

    let m = proxy.metrics().await;
    assert_eq!(metric_sum(&m, "tripline_local_responses_total", &[("reason", "no-route")]), 3.0, "{m}");
    assert_eq!(metric_sum(&m, "tripline_local_responses_total", &[("reason", "rbac-denied")]), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "tripline_tls_handshakes_total", &[]), 0.0, "the proxy terminated nothing");

    // `validate --explain` finds the route by the SNI names it takes.
    let file = dir.join("passthrough.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let mut cmd = std::process::Command::new(crate::support::proxy::binary());
    cmd.args(["validate", "--explain", "x.b.example"]).arg(&file);
    let (code, out, err) = crate::support::proxy::run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("PASSTHROUGH: TLS is not terminated"), "{out}");
    assert!(out.contains("takes connections whose TLS SNI is *.b.example"), "{out}");
    assert!(out.contains("pass/tls[1]"), "{out}");
}
