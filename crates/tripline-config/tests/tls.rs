//! TLS: Gateway `servers[].tls` (termination, `httpsRedirect`, several servers on one port),
//! DestinationRule `trafficPolicy.tls` (origination), `credentialName` against
//! `--credentials-dir`, and the files read at load: what the plan gets, and where each
//! mistake is pointed at.

mod common;

use std::path::{Path, PathBuf};

use common::{errors, ok, the_error};
use tripline_config::plan::{DownstreamTlsMode, ListenerProtocol, TlsVersions, UpstreamProtocol};
use tripline_config::{load, Diagnostic, LoadOptions, Loaded, Severity, Source};

/// A directory of certificate files made with rcgen, removed when dropped.
struct Certs(PathBuf);

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("tripline-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Certs(dir)
    }

    /// `<name>.crt` and `<name>.key` (`<dir>/<name>` may be `credential/tls`), for `names`,
    /// valid until `not_after` (year, month, day).
    fn issue(&self, name: &str, names: &[&str], not_after: (i32, u8, u8)) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (crt, pem) = (self.0.join(format!("{name}.crt")), self.0.join(format!("{name}.key")));
        std::fs::create_dir_all(crt.parent().unwrap()).unwrap();
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        (crt, pem)
    }

    /// A credential directory `<name>/` as `--credentials-dir` holds it.
    fn credential(&self, name: &str, with_ca: bool) {
        let (crt, key) = self.issue(&format!("{name}/x"), &["shop.example.com"], (2099, 1, 1));
        std::fs::rename(&crt, self.0.join(name).join("tls.crt")).unwrap();
        std::fs::rename(&key, self.0.join(name).join("tls.key")).unwrap();
        if with_ca {
            let (ca, _) = self.issue(&format!("{name}/ca"), &["ca.example.com"], (2099, 1, 1));
            std::fs::rename(ca, self.0.join(name).join("ca.crt")).unwrap();
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const UPSTREAM: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shop}
spec:
  hosts: [shop.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route: [{destination: {host: shop.local}}]
"#;

/// A Gateway `edge` with `servers` (YAML, indented under `servers:`), and the upstream.
fn gateway(servers: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec:\n  servers:\n{servers}---\n{UPSTREAM}")
}

/// One HTTPS server on port 18443 for `hosts`, with `tls` (YAML, a flow mapping).
fn https(hosts: &str, tls: &str) -> String {
    gateway(&format!(
        "  - port: {{number: 18443, name: https, protocol: HTTPS}}\n    hosts: {hosts}\n    tls: {tls}\n"
    ))
}

fn with_dir(dir: Option<&Path>) -> LoadOptions {
    LoadOptions { credentials_dir: dir.map(Path::to_path_buf), ..LoadOptions::default() }
}

fn loads(text: &str, opts: &LoadOptions) -> Loaded {
    load(&common::src(text), opts).unwrap_or_else(|d| panic!("{}", shown(&d)))
}

fn refused(text: &str, opts: &LoadOptions) -> Vec<String> {
    let d = load(&common::src(text), opts).expect_err("config must be refused");
    d.iter().filter(|d| d.severity == Severity::Error).map(ToString::to_string).collect()
}

/// The one error of `text`.
fn the_error_with(text: &str, opts: &LoadOptions) -> String {
    let e = refused(text, opts);
    assert_eq!(e.len(), 1, "{e:#?}");
    e[0].clone()
}

fn shown(d: &[Diagnostic]) -> String {
    d.iter().map(|d| format!("{d}\n")).collect()
}

fn files(cert: &Path, key: &Path) -> String {
    format!("serverCertificate: {}, privateKey: {}", cert.display(), key.display())
}

#[test]
fn a_simple_https_server_terminates_with_its_files_for_its_hosts() {
    let certs = Certs::new("simple");
    let (crt, key) = certs.issue("shop", &["shop.example.com"], (2099, 1, 1));
    let text = https(
        "[\"ns/shop.example.com\", \"*.shop.example.com\"]",
        &format!("{{mode: SIMPLE, {}}}", files(&crt, &key)),
    );
    let loaded = ok(&text);
    assert!(loaded.warnings.is_empty(), "{}", shown(&loaded.warnings));
    let l = &loaded.plan.listeners[0];
    assert_eq!((l.name.as_str(), l.protocol), ("edge/https", ListenerProtocol::Http));
    assert!(!l.https_redirect);
    let [t] = l.tls.as_slice() else { panic!("one TLS server: {:?}", l.tls) };
    assert_eq!(t.name, "edge/https");
    assert_eq!(t.hosts, ["shop.example.com", "*.shop.example.com"], "the namespace part is stripped");
    assert_eq!(t.mode, DownstreamTlsMode::Simple);
    assert_eq!((t.certificate.as_path(), t.private_key.as_path()), (crt.as_path(), key.as_path()));
    assert_eq!(t.ca_certificates, None);
    assert_eq!(t.versions, TlsVersions { tls12: true, tls13: true });
    assert!(t.cipher_suites.is_empty() && t.subject_alt_names.is_empty());
    assert_eq!(l.virtual_hosts.len(), 2, "the HTTP routes attach to the server's hosts");
}

#[test]
fn mutual_and_optional_mutual_servers_verify_clients_against_their_cas() {
    let certs = Certs::new("mutual");
    let (crt, key) = certs.issue("shop", &["shop.example.com"], (2099, 1, 1));
    let (ca, _) = certs.issue("ca", &["ca.example.com"], (2099, 1, 1));
    for (mode, want) in
        [("MUTUAL", DownstreamTlsMode::Mutual), ("OPTIONAL_MUTUAL", DownstreamTlsMode::OptionalMutual)]
    {
        let tls = format!(
            "{{mode: {mode}, {}, caCertificates: {}, subjectAltNames: [spiffe://td/ns/a/sa/b], minProtocolVersion: TLSV1_3, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]}}",
            files(&crt, &key),
            ca.display()
        );
        let loaded = ok(&https("[\"*\"]", &tls));
        let t = &loaded.plan.listeners[0].tls[0];
        assert_eq!(t.mode, want);
        assert_eq!(t.ca_certificates.as_deref(), Some(ca.as_path()));
        assert_eq!(t.subject_alt_names, ["spiffe://td/ns/a/sa/b"]);
        assert_eq!(t.versions, TlsVersions { tls12: false, tls13: true });
        assert_eq!(t.cipher_suites, ["ECDHE-RSA-AES128-GCM-SHA256"]);
        let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert!(
            w.len() == 1
                && w[0].contains("spec.servers[0].tls.cipherSuites: `cipherSuites` restrict TLS 1.2 only"),
            "{w:#?}"
        );
    }
    let text =
        https("[\"*\"]", &format!("{{mode: MUTUAL, {}, maxProtocolVersion: TLSV1_2}}", files(&crt, &key)));
    assert!(the_error(&text).ends_with("Gateway/edge: spec.servers[0].tls.caCertificates: `caCertificates` is required: expected a PEM file of the CAs client certificates must chain to (mode MUTUAL)"));
}

#[test]
fn a_tls_port_terminates_then_takes_tcp_routes() {
    let certs = Certs::new("tcp");
    let (crt, key) = certs.issue("db", &["db.example.com"], (2099, 1, 1));
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec:\n  servers:\n  - port: {{number: 18543, name: db, protocol: TLS}}\n    hosts: [db.example.com]\n    tls: {{mode: SIMPLE, {}}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: db}}\nspec:\n  hosts: [db.local]\n  ports: [{{number: 5432, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: db}}\nspec:\n  hosts: [\"*\"]\n  gateways: [edge]\n  tcp:\n  - route: [{{destination: {{host: db.local}}}}]\n",
        files(&crt, &key)
    );
    let loaded = ok(&text);
    let l = &loaded.plan.listeners[0];
    assert_eq!(l.protocol, ListenerProtocol::Tcp);
    assert_eq!(l.tls.len(), 1);
    assert_eq!(l.tcp_routes.len(), 1);
}

#[test]
fn https_redirect_is_a_plaintext_http_server_s_and_does_nothing_on_an_https_one() {
    let certs = Certs::new("redirect");
    let (crt, key) = certs.issue("shop", &["shop.example.com"], (2099, 1, 1));
    let servers = format!(
        "  - port: {{number: 18080, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n    tls: {{httpsRedirect: true}}\n  - port: {{number: 18443, name: https, protocol: HTTPS}}\n    hosts: [\"*\"]\n    tls: {{httpsRedirect: true, mode: SIMPLE, {}}}\n",
        files(&crt, &key)
    );
    let loaded = ok(&gateway(&servers));
    let [http, https] = loaded.plan.listeners.as_slice() else { panic!() };
    assert!(http.https_redirect && http.tls.is_empty());
    assert!(!https.https_redirect && https.tls.len() == 1);
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].starts_with("warning: mesh.yaml:11:26: Gateway/edge: spec.servers[1].tls.httpsRedirect: `httpsRedirect` does nothing on this HTTPS port"), "{}", w[0]);
}

#[test]
fn https_servers_on_one_port_are_one_listener_chosen_by_sni() {
    let certs = Certs::new("shared");
    let (a_crt, a_key) = certs.issue("a", &["a.example.com"], (2099, 1, 1));
    let (b_crt, b_key) = certs.issue("b", &["b.example.com"], (2099, 1, 1));
    let server = |name: &str, host: &str, crt: &Path, key: &Path| {
        format!("  - port: {{number: 18443, name: {name}, protocol: HTTPS}}\n    hosts: [{host}]\n    tls: {{mode: SIMPLE, {}}}\n", files(crt, key))
    };
    let servers = server("https-a", "a.example.com", &a_crt, &a_key)
        + &server("https-b", "b.example.com", &b_crt, &b_key);
    let loaded = ok(&gateway(&servers));
    let [l] = loaded.plan.listeners.as_slice() else { panic!("one listener: {:?}", loaded.plan.listeners) };
    assert_eq!(l.name, "edge/https-a", "the first server's name");
    let names: Vec<(&str, &[String])> = l.tls.iter().map(|t| (t.name.as_str(), t.hosts.as_slice())).collect();
    assert_eq!(
        names,
        [
            ("edge/https-a", &["a.example.com".to_string()][..]),
            ("edge/https-b", &["b.example.com".to_string()][..])
        ]
    );
    let domains: Vec<String> = l.virtual_hosts.iter().map(|v| format!("{:?}", v.domains[0])).collect();
    assert_eq!(domains.len(), 2, "both servers' hosts are routed: {domains:?}");

    // Two Gateways on the port: each VirtualService takes the hosts of the Gateway it is bound to.
    let other = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: other}}\nspec:\n  servers:\n{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: b}}\nspec:\n  hosts: [\"*\"]\n  gateways: [other]\n  http:\n  - route: [{{destination: {{host: shop.local}}}}]\n",
        server("https-b", "b.example.com", &b_crt, &b_key)
    );
    let text = gateway(&server("https-a", "a.example.com", &a_crt, &a_key)) + &other;
    let loaded = ok(&text);
    let [l] = loaded.plan.listeners.as_slice() else { panic!() };
    assert_eq!(l.tls.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["edge/https-a", "other/https-b"]);
    let routes: Vec<(String, &str)> =
        l.virtual_hosts.iter().map(|v| (format!("{:?}", v.domains[0]), v.routes[0].name.as_str())).collect();
    assert_eq!(
        routes,
        [
            ("Exact(\"a.example.com\")".to_string(), "shop/http[0]"),
            ("Exact(\"b.example.com\")".to_string(), "b/http[0]")
        ]
    );

    // One SNI name, two servers.
    let servers = server("https-a", "a.example.com", &a_crt, &a_key)
        + &server("https-b", "A.example.com", &b_crt, &b_key);
    assert!(the_error(&gateway(&servers)).ends_with("mesh.yaml:10:13: Gateway/edge: spec.servers[1].hosts[0]: host `A.example.com` is already served on 0.0.0.0:18443 by `edge/https-a`: the client's SNI picks one server, and one certificate, per name"));

    // Plaintext and TLS on one port.
    let plain = "  - port: {number: 18443, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
    let e = the_error(&gateway(&(server("https-a", "a.example.com", &a_crt, &a_key) + plain)));
    assert!(e.contains("spec.servers[1].port.number: duplicate listener port: 0.0.0.0:18443 is already used by listener `edge/https-a`; only TLS servers"), "{e}");

    // What the servers ask of clients must be the same.
    let (ca, _) = certs.issue("ca", &["ca.example.com"], (2099, 1, 1));
    let mutual = format!(
        "  - port: {{number: 18443, name: https-b, protocol: HTTPS}}\n    hosts: [b.example.com]\n    tls: {{mode: MUTUAL, {}, caCertificates: {}}}\n",
        files(&b_crt, &b_key),
        ca.display()
    );
    let e = the_error(&gateway(&(server("https-a", "a.example.com", &a_crt, &a_key) + &mutual)));
    assert!(e.contains("spec.servers[1].port.number: 0.0.0.0:18443 is already used by listener `edge/https-a`: `edge/https-a` asks clients for no certificate (SIMPLE), and this server for a certificate (MUTUAL) chaining to"), "{e}");

    // HTTPS and TLS on one port.
    let tls = format!("  - port: {{number: 18443, name: tls-b, protocol: TLS}}\n    hosts: [b.example.com]\n    tls: {{mode: SIMPLE, {}}}\n", files(&b_crt, &b_key));
    let e = the_error(&gateway(&(server("https-a", "a.example.com", &a_crt, &a_key) + &tls)));
    assert!(
        e.contains("the servers sharing a port must all be HTTPS or all TLS, and `edge/https-a` is HTTPS"),
        "{e}"
    );
}

#[test]
fn termination_mistakes_are_errors_at_their_field() {
    let certs = Certs::new("mistakes");
    let (crt, key) = certs.issue("shop", &["shop.example.com"], (2099, 1, 1));
    let f = files(&crt, &key);
    let opts = LoadOptions::default();
    for (tls, want) in [
        ("{mode: AUTO_PASSTHROUGH}".to_string(), "mesh.yaml:8:17: Gateway/edge: spec.servers[0].tls.mode: `AUTO_PASSTHROUGH` is not implemented: it routes by cluster names encoded in the SNI"),
        ("{mode: ISTIO_MUTUAL}".to_string(), "spec.servers[0].tls.mode: ISTIO_MUTUAL needs the workload's own identity: start Tripline with --identity-dir DIR"),
        ("{mode: SIMPLE}".to_string(), "spec.servers[0].tls.serverCertificate: `serverCertificate` is required: expected a PEM file of the server's certificate chain (or `credentialName`)"),
        (format!("{{mode: SIMPLE, {f}, credentialName: shop}}"), "spec.servers[0].tls.credentialName: `credentialName` and `serverCertificate`, `privateKey` both give the server's certificates: keep one"),
        (format!("{{mode: SIMPLE, {f}, minProtocolVersion: TLSV1_1}}"), "spec.servers[0].tls.minProtocolVersion: `TLSV1_1`: rustls does not speak TLS 1.0/1.1"),
        (format!("{{mode: SIMPLE, {f}, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}}"), "spec.servers[0].tls.maxProtocolVersion: maxProtocolVersion TLSV1_2 is below minProtocolVersion TLSV1_3: no TLS version is left"),
        (format!("{{mode: SIMPLE, {f}, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, AES128-SHA]}}"), "spec.servers[0].tls.cipherSuites[1]: unknown or unsupported cipher suite `AES128-SHA`: expected one of ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-ECDSA-CHACHA20-POLY1305, ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-RSA-CHACHA20-POLY1305"),
        (format!("{{mode: SIMPLE, {f}, credentialName: ../etc}}"), "spec.servers[0].tls.credentialName: `../etc` is not a Kubernetes Secret name"),
        (format!("{{mode: SIMPLE, {f}, caCrl: crl.pem}}"), "spec.servers[0].tls.caCrl: `spec.servers[0].tls.caCrl` is not implemented yet; remove it"),
    ] {
        let e = refused(&https("[\"*\"]", &tls), &opts);
        assert!(e.iter().any(|e| e.contains(want)), "{tls}: {want}\nnot in {e:#?}");
    }
    // A server without its `tls`.
    let text = gateway("  - port: {number: 18443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n");
    assert!(the_error_with(&text, &opts).ends_with("mesh.yaml:6:5: Gateway/edge: spec.servers[0].tls: `tls` is required: expected the certificate this HTTPS port terminates TLS with: {mode: SIMPLE, credentialName: NAME}, or {mode: SIMPLE, serverCertificate: PATH, privateKey: PATH}; or {mode: PASSTHROUGH} to route the connections by their SNI without terminating TLS"));
    // Termination on a plaintext port.
    for proto in ["HTTP", "GRPC", "TCP"] {
        let text = gateway(&format!("  - port: {{number: 18443, name: p, protocol: {proto}}}\n    hosts: [\"*\"]\n    tls: {{mode: SIMPLE, {f}}}\n"));
        let e = the_error_with(&text, &opts);
        assert!(e.contains(&format!("mesh.yaml:8:17: Gateway/edge: spec.servers[0].tls.mode: `tls` terminates TLS only on a port with protocol HTTPS or TLS, and this one is {proto}: use protocol HTTPS")), "{e}");
    }
    // A misspelt protocol is one error, not one more about `tls`.
    let text = gateway(&format!(
        "  - port: {{number: 18443, name: p, protocol: HTTPSS}}\n    hosts: [\"*\"]\n    tls: {{mode: SIMPLE, {f}}}\n"
    ));
    assert!(
        the_error_with(&text, &opts).contains("spec.servers[0].port.protocol: expected one of HTTP, HTTPS")
    );
    // A missing or malformed file: an error at the field that names it, saying why.
    let missing = certs.path("missing.crt");
    let text = https(
        "[\"*\"]",
        &format!("{{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}", missing.display(), crt.display()),
    );
    let e = refused(&text, &opts);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].contains(&format!(
            "spec.servers[0].tls.serverCertificate: {}: cannot read it",
            missing.display()
        )),
        "{}",
        e[0]
    );
    assert!(
        e[1].contains(&format!("spec.servers[0].tls.privateKey: {}: holds no private key", crt.display())),
        "{}",
        e[1]
    );
}

#[test]
fn mode_left_out_is_simple_with_a_warning_since_istio_reads_it_as_passthrough() {
    let certs = Certs::new("nomode");
    let (crt, key) = certs.issue("shop", &["shop.example.com"], (2099, 1, 1));
    let loaded = ok(&https("[\"*\"]", &format!("{{{}}}", files(&crt, &key))));
    assert_eq!(loaded.plan.listeners[0].tls[0].mode, DownstreamTlsMode::Simple);
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.len() == 1
            && w[0].contains("spec.servers[0].tls: `mode` is not set, which Istio reads as PASSTHROUGH"),
        "{w:#?}"
    );
}

#[test]
fn an_expired_certificate_is_a_warning_with_its_date() {
    let certs = Certs::new("expired");
    let (crt, key) = certs.issue("old", &["old.example.com"], (2020, 1, 1));
    let loaded = ok(&https("[\"*\"]", &format!("{{mode: SIMPLE, {}}}", files(&crt, &key))));
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains(&format!(
            "mesh.yaml:8:44: Gateway/edge: spec.servers[0].tls.serverCertificate: {}: the certificate (",
            crt.display()
        )) && w[0]
            .contains(") expired on 2020-01-01T00:00:00Z: TLS peers refuse it until the file is replaced"),
        "{}",
        w[0]
    );
}

#[test]
fn relative_files_are_read_from_the_config_file_s_directory() {
    let certs = Certs::new("relative");
    certs.issue("certs/shop", &["shop.example.com"], (2099, 1, 1));
    let text =
        https("[\"*\"]", "{mode: SIMPLE, serverCertificate: certs/shop.crt, privateKey: ./certs/shop.key}");
    let source = Source { name: certs.path("mesh.yaml").display().to_string(), text };
    let loaded = load(&[source], &LoadOptions::default()).unwrap_or_else(|d| panic!("{}", shown(&d)));
    let t = &loaded.plan.listeners[0].tls[0];
    assert_eq!(t.certificate, certs.path("certs/shop.crt"));
    assert!(t.private_key.is_absolute() && t.private_key.ends_with("certs/shop.key"), "{:?}", t.private_key);
}

#[test]
fn credential_names_are_directories_of_the_credentials_dir() {
    let certs = Certs::new("credentials");
    certs.credential("shop-cert", false);
    let simple = https("[\"*\"]", "{mode: SIMPLE, credentialName: shop-cert}");
    assert!(the_error_with(&simple, &with_dir(None)).ends_with("mesh.yaml:8:41: Gateway/edge: spec.servers[0].tls.credentialName: credentialName needs --credentials-dir DIR (a directory of <name>/tls.crt, tls.key, ca.crt) until Kubernetes Secrets are read"));

    let loaded = loads(&simple, &with_dir(Some(&certs.0)));
    let t = &loaded.plan.listeners[0].tls[0];
    assert_eq!(t.certificate, certs.path("shop-cert/tls.crt"));
    assert_eq!(t.private_key, certs.path("shop-cert/tls.key"));
    assert_eq!(t.ca_certificates, None);

    // MUTUAL takes the CAs from the credential's ca.crt, else from `<name>-cacert/ca.crt`.
    let mutual = https("[\"*\"]", "{mode: MUTUAL, credentialName: shop-cert}");
    let e = the_error_with(&mutual, &with_dir(Some(&certs.0)));
    assert!(e.contains(&format!("spec.servers[0].tls.credentialName: credential `shop-cert`: mode MUTUAL needs the CAs client certificates must chain to, and neither {} nor {} exists", certs.path("shop-cert/ca.crt").display(), certs.path("shop-cert-cacert/ca.crt").display())), "{e}");
    let (ca, _) = certs.issue("shop-cert-cacert/x", &["ca.example.com"], (2099, 1, 1));
    std::fs::rename(ca, certs.path("shop-cert-cacert/ca.crt")).unwrap();
    let loaded = loads(&mutual, &with_dir(Some(&certs.0)));
    assert_eq!(loaded.plan.listeners[0].tls[0].ca_certificates, Some(certs.path("shop-cert-cacert/ca.crt")));
    certs.credential("both", true);
    let loaded = loads(&https("[\"*\"]", "{mode: MUTUAL, credentialName: both}"), &with_dir(Some(&certs.0)));
    assert_eq!(loaded.plan.listeners[0].tls[0].ca_certificates, Some(certs.path("both/ca.crt")));

    // A credential that is not there, or lacks a file.
    let e =
        the_error_with(&https("[\"*\"]", "{mode: SIMPLE, credentialName: nope}"), &with_dir(Some(&certs.0)));
    assert!(
        e.contains(&format!(
            "credentialName: credential `nope`: {} is not a directory",
            certs.path("nope").display()
        )),
        "{e}"
    );
    std::fs::remove_file(certs.path("both/tls.key")).unwrap();
    let e =
        the_error_with(&https("[\"*\"]", "{mode: SIMPLE, credentialName: both}"), &with_dir(Some(&certs.0)));
    assert!(
        e.contains(&format!(
            "credentialName: credential `both`: {}: cannot read it",
            certs.path("both/tls.key").display()
        )),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// DestinationRule tls

/// The upstream with a DestinationRule whose `trafficPolicy` and subsets are `rule` (YAML
/// under `spec:`), routed from the mesh listener to subset `v1` and to the host.
fn upstream_rule(rule: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pay}}
spec:
  hosts: [pay.example.com]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, labels: {{v: "1"}}}}]
  subjectAltNames: [pay.internal]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pay}}
spec:
  host: pay.example.com
{rule}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pay}}
spec:
  hosts: [pay.example.com]
  http:
  - match: [{{uri: {{prefix: /v1}}}}]
    route: [{{destination: {{host: pay.example.com, subset: v1}}}}]
  - route: [{{destination: {{host: pay.example.com}}}}]
"#
    )
}

#[test]
fn a_subset_s_tls_replaces_the_top_level_one() {
    let certs = Certs::new("upstream");
    let (crt, key) = certs.issue("client", &["client.example.com"], (2099, 1, 1));
    let (ca, _) = certs.issue("ca", &["ca.example.com"], (2099, 1, 1));
    let rule = format!(
        "  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: {}, sni: pay.example.com}}\n  subsets:\n  - name: v1\n    labels: {{v: \"1\"}}\n    trafficPolicy:\n      tls: {{mode: MUTUAL, clientCertificate: {}, privateKey: {}, subjectAltNames: [v1.pay.internal]}}\n",
        ca.display(),
        crt.display(),
        key.display()
    );
    let loaded = ok(&upstream_rule(&rule));
    assert!(loaded.warnings.is_empty(), "{}", shown(&loaded.warnings));
    let plan = &loaded.plan;
    let cluster = |name: &str| &plan.clusters[plan.cluster_by_name(name).expect(name)];
    let v1 = cluster("outbound|443|v1|pay.example.com");
    assert_eq!(v1.protocol, UpstreamProtocol::Http1, "HTTPS is HTTP/1.1 inside TLS");
    let t = v1.tls.as_ref().expect("the subset's tls");
    assert!(t.mutual);
    assert_eq!(
        (t.client_certificate.as_deref(), t.private_key.as_deref()),
        (Some(crt.as_path()), Some(key.as_path()))
    );
    assert_eq!(t.ca_certificates, None, "replaced whole, not field by field: the system's roots");
    assert_eq!(t.sni, None);
    assert_eq!(t.subject_alt_names, ["v1.pay.internal"]);
    let top = cluster("outbound|443||pay.example.com").tls.as_ref().expect("the top level's tls");
    assert!(!top.mutual && top.client_certificate.is_none());
    assert_eq!(top.ca_certificates.as_deref(), Some(ca.as_path()));
    assert_eq!(top.sni.as_deref(), Some("pay.example.com"));
    assert_eq!(top.subject_alt_names, ["pay.internal"], "the ServiceEntry's subjectAltNames are the default");

    // `validate --explain` finds where each cluster's TLS was written.
    let explained =
        tripline_config::explain::load(&common::src(&upstream_rule(&rule)), &LoadOptions::default())
            .unwrap_or_else(|d| panic!("{}", shown(&d)));
    let plan = &explained.loaded.plan;
    let origin = |name: &str| {
        let c = &plan.clusters[plan.cluster_by_name(name).expect(name)];
        explained.provenance.cluster(c).expect("reproduced").tls().to_string()
    };
    assert_eq!(
        origin("outbound|443|v1|pay.example.com"),
        "DestinationRule/pay spec.subsets[0].trafficPolicy.tls"
    );
    assert_eq!(origin("outbound|443||pay.example.com"), "DestinationRule/pay spec.trafficPolicy.tls");

    // A subset's DISABLE turns TLS off for it: then HTTP to an HTTPS port is refused.
    let rule = "  trafficPolicy:\n    tls: {mode: SIMPLE}\n  subsets:\n  - name: v1\n    labels: {v: \"1\"}\n    trafficPolicy: {tls: {mode: DISABLE}}\n";
    let e = the_error(&upstream_rule(rule));
    assert!(e.contains("VirtualService/pay: spec.http[0].route[0].destination.host: port 443 of `pay.example.com` is HTTPS (ServiceEntry/pay), and an HTTP route would send it plaintext HTTP: add a DestinationRule for `pay.example.com` with `trafficPolicy.tls.mode: SIMPLE` to originate TLS"), "{e}");
}

#[test]
fn an_https_service_entry_port_needs_tls_from_a_rule_for_http_routes_only() {
    let text = upstream_rule("  subsets: [{name: v1, labels: {v: \"1\"}}]\n");
    let e: Vec<String> = errors(&text).iter().map(ToString::to_string).collect();
    assert_eq!(e.len(), 2, "each route: {e:#?}");
    assert!(e[1].contains("mesh.yaml:27:34: VirtualService/pay: spec.http[1].route[0].destination.host: port 443 of `pay.example.com` is HTTPS"), "{}", e[1]);

    // A `tcp` route passes the client's TLS through untouched.
    let tcp = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  servers: [{port: {number: 18443, name: tls, protocol: TCP}, hosts: [\"*\"]}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: pay}\nspec:\n  hosts: [pay.example.com]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: pay}\nspec:\n  hosts: [\"*\"]\n  gateways: [edge]\n  tcp: [{route: [{destination: {host: pay.example.com}}]}]\n";
    let loaded = ok(tcp);
    let c = &loaded.plan.clusters[0];
    assert_eq!((c.protocol, c.tls.is_none()), (UpstreamProtocol::Tcp, true));
    // With a rule's tls, a TCP route's cluster originates TLS.
    let rule = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: pay}\nspec:\n  host: pay.example.com\n  trafficPolicy: {tls: {mode: SIMPLE}}\n";
    let loaded = ok(&format!("{tcp}{rule}"));
    assert!(loaded.plan.clusters[0].tls.is_some());
}

#[test]
fn client_tls_mistakes_and_warnings_are_at_their_field() {
    let opts = LoadOptions::default();
    let with = |tls: &str| {
        upstream_rule(&format!(
            "  trafficPolicy:\n    tls: {tls}\n  subsets: [{{name: v1, labels: {{v: \"1\"}}}}]\n"
        ))
    };
    let loaded = loads(&with("{mode: SIMPLE, insecureSkipVerify: true}"), &opts);
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w, ["warning: mesh.yaml:17:45: DestinationRule/pay: spec.trafficPolicy.tls.insecureSkipVerify: the upstream's certificate is not verified: anyone on the path can impersonate it"]);
    assert!(loaded.plan.clusters.iter().all(|c| c.tls.as_ref().is_some_and(|t| t.insecure_skip_verify)));
    for (tls, want) in [
        ("{mode: ISTIO_MUTUAL}", "DestinationRule/pay: spec.trafficPolicy.tls.mode: ISTIO_MUTUAL needs the workload's own identity: start Tripline with --identity-dir DIR"),
        ("{mode: MUTUAL, privateKey: key.pem}", "spec.trafficPolicy.tls.clientCertificate: `clientCertificate` is required: expected a PEM file of the client certificate chain (mode MUTUAL; or `credentialName`)"),
        ("{sni: pay.example.com}", "spec.trafficPolicy.tls.mode: `mode` is required: expected SIMPLE or MUTUAL (without it Istio disables TLS, and these settings would do nothing)"),
        ("{mode: SIMPLE, sni: \"not a name\"}", "spec.trafficPolicy.tls.sni: `not a name` is not a TLS server name"),
        ("{mode: SIMPLE, caCrl: crl.pem}", "spec.trafficPolicy.tls.caCrl: `spec.trafficPolicy.tls.caCrl` is not implemented yet; remove it"),
        ("{mode: SIMPLE, credentialName: pay}", "spec.trafficPolicy.tls.credentialName: credentialName needs --credentials-dir DIR"),
        ("{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}", "spec.trafficPolicy.tls.caCertificates: /nonexistent/ca.pem: cannot read it"),
    ] {
        let e = refused(&with(tls), &opts);
        assert!(e.len() == 1 && e[0].contains(want), "{tls}: {want}\nnot in {e:#?}");
    }
}

#[test]
fn a_client_credential_gives_the_client_certificate_and_optional_cas() {
    let certs = Certs::new("client-credential");
    certs.credential("pay-client", false);
    let rule = "  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: pay-client}\n  subsets: [{name: v1, labels: {v: \"1\"}}]\n";
    let loaded = loads(&upstream_rule(rule), &with_dir(Some(&certs.0)));
    let t = loaded.plan.clusters[0].tls.as_ref().unwrap();
    assert_eq!(t.client_certificate, Some(certs.path("pay-client/tls.crt")));
    assert_eq!(t.private_key, Some(certs.path("pay-client/tls.key")));
    assert_eq!(t.ca_certificates, None, "no ca.crt: the system's roots");
    // SIMPLE takes only the CAs, and a `<name>-cacert` credential alone will do.
    let (ca, _) = certs.issue("pay-cacert/x", &["ca.example.com"], (2099, 1, 1));
    std::fs::rename(ca, certs.path("pay-cacert/ca.crt")).unwrap();
    let rule = "  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: pay}\n  subsets: [{name: v1, labels: {v: \"1\"}}]\n";
    let loaded = loads(&upstream_rule(rule), &with_dir(Some(&certs.0)));
    let t = loaded.plan.clusters[0].tls.as_ref().unwrap();
    assert_eq!(
        (t.ca_certificates.clone(), t.client_certificate.clone()),
        (Some(certs.path("pay-cacert/ca.crt")), None)
    );
}

#[test]
fn the_dump_shows_tls_and_the_certificates_dates_but_no_key() {
    let certs = Certs::new("dump");
    let (crt, key) = certs.issue("shop", &["shop.example.com"], (2031, 5, 17));
    let text = https("[\"*\"]", &format!("{{mode: SIMPLE, {}}}", files(&crt, &key)));
    let loaded = ok(&text);
    let dump: serde_json::Value = serde_json::from_str(&loaded.dump.text()).unwrap();
    let tls = &dump["plan"]["listeners"][0]["tls"][0];
    assert_eq!(tls["mode"], "Simple");
    assert_eq!(tls["certificate"], crt.display().to_string());
    let shown = &dump["certificateFiles"][crt.display().to_string()][0];
    assert_eq!(shown["notAfter"], "2031-05-17T00:00:00Z");
    assert_eq!(shown["dnsNames"], serde_json::json!(["shop.example.com"]));
    let server = &dump["resources"][0]["spec"]["servers"][0]["tls"];
    assert_eq!(server["mode"], "SIMPLE", "the resource as written: {server}");
    let key_text = std::fs::read_to_string(&key).unwrap();
    let body = key_text.lines().nth(1).unwrap();
    assert!(!loaded.dump.text().contains(body), "never the key's contents");
}

// ---------------------------------------------------------------------------------------------
// PASSTHROUGH and VirtualService tls routes

/// Two TLS upstreams, `db.internal` and `web.internal` (port 443, protocol TLS).
const TLS_UPSTREAMS: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\nspec:\n  hosts: [db.internal]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web}\nspec:\n  hosts: [web.internal]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.2}]\n";

/// Gateway `edge` with `servers` (YAML under `servers:`), the TLS upstreams, and
/// VirtualService `edge-routes` whose spec after `spec:` is `vs` (indented two spaces).
fn passthrough(servers: &str, vs: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec:\n  servers:\n{servers}---\n{TLS_UPSTREAMS}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge-routes}}\nspec:\n{vs}")
}

/// One server on port 18443 with `protocol`, `hosts` and `tls`.
fn server(protocol: &str, hosts: &str, tls: &str) -> String {
    format!(
        "  - port: {{number: 18443, name: {}, protocol: {protocol}}}\n    hosts: {hosts}\n    tls: {tls}\n",
        protocol.to_ascii_lowercase()
    )
}

/// A VirtualService's `tls` routes: `db.example.com` to db.internal, the rest of
/// `*.example.com` to web.internal.
const TLS_ROUTES: &str = "  hosts: [\"*.example.com\"]\n  gateways: [edge]\n  tls:\n  - match: [{sniHosts: [db.example.com], port: 18443}]\n    route: [{destination: {host: db.internal, port: {number: 443}}}]\n  - match: [{sniHosts: [\"*.example.com\"]}]\n    route: [{destination: {host: web.internal}}]\n";

fn routes(l: &tripline_config::plan::ListenerPlan) -> Vec<(String, Vec<String>)> {
    l.tcp_routes.iter().map(|t| (t.name.clone(), t.sni_hosts.clone())).collect()
}

#[test]
fn a_passthrough_server_routes_by_sni_with_tls_routes() {
    for protocol in ["TLS", "HTTPS"] {
        let loaded = ok(&passthrough(&server(protocol, "[\"*\"]", "{mode: PASSTHROUGH}"), TLS_ROUTES));
        assert!(loaded.warnings.is_empty(), "{protocol}: {}", shown(&loaded.warnings));
        let [l] = loaded.plan.listeners.as_slice() else { panic!("{:?}", loaded.plan.listeners) };
        assert_eq!(l.protocol, ListenerProtocol::Tcp, "{protocol} PASSTHROUGH is a TCP listener");
        assert!(l.passthrough && l.tls.is_empty() && l.virtual_hosts.is_empty());
        assert_eq!(
            routes(l),
            [
                ("edge-routes/tls[0]".to_string(), vec!["db.example.com".to_string()]),
                ("edge-routes/tls[1]".to_string(), vec!["*.example.com".to_string()])
            ]
        );
        let cluster = |i: usize| loaded.plan.clusters[l.tcp_routes[i].destinations[0].cluster].name.clone();
        assert_eq!(
            (cluster(0), cluster(1)),
            ("outbound|443||db.internal".into(), "outbound|443||web.internal".into())
        );
        let c = &loaded.plan.clusters[l.tcp_routes[0].destinations[0].cluster];
        assert_eq!(
            (c.protocol, c.tls.is_none()),
            (UpstreamProtocol::Tcp, true),
            "the client's TLS goes through as is"
        );
    }

    // The SNI names are narrowed to the server's hosts; an entry's port and gateways are
    // checked where it is attached; entries with the same subnets are one plan.
    let vs = "  hosts: [\"*.example.com\", a.example]\n  gateways: [edge]\n  tls:\n  - match:\n    - {sniHosts: [\"*.example.com\"]}\n    - {sniHosts: [a.example], port: 9999}\n    - {sniHosts: [a.example], destinationSubnets: [10.0.0.0/8]}\n    - {sniHosts: [\"*.example.com\"], destinationSubnets: [10.0.0.0/8]}\n    route: [{destination: {host: db.internal}}]\n";
    let loaded =
        ok(&passthrough(&server("TLS", "[\"ns/db.example.com\", \"a.example\"]", "{mode: PASSTHROUGH}"), vs));
    let l = &loaded.plan.listeners[0];
    let plans: Vec<(Vec<String>, usize)> =
        l.tcp_routes.iter().map(|t| (t.sni_hosts.clone(), t.matches.len())).collect();
    assert_eq!(
        plans,
        [
            (vec!["db.example.com".to_string()], 0),
            (vec!["a.example".to_string(), "db.example.com".to_string()], 1)
        ],
        "{:?}",
        l.tcp_routes
    );
    assert!(l.tcp_routes.iter().all(|t| t.name == "edge-routes/tls[0]"));

    // `mode` left out without a certificate: PASSTHROUGH, as in Istio, said in a warning.
    let loaded = ok(&passthrough(&server("TLS", "[\"*\"]", "{minProtocolVersion: TLSV1_2}"), TLS_ROUTES));
    assert!(loaded.plan.listeners[0].passthrough);
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].contains("mesh.yaml:8:10: Gateway/edge: spec.servers[0].tls: `mode` is not set, which Istio reads as PASSTHROUGH: TLS is not terminated"), "{}", w[0]);
    assert!(w[1].contains("spec.servers[0].tls.minProtocolVersion: `minProtocolVersion` is ignored with mode PASSTHROUGH, which does not terminate TLS"), "{}", w[1]);

    // The dump shows the server's mode and the routes as written.
    let dump: serde_json::Value = serde_json::from_str(
        &ok(&passthrough(&server("TLS", "[\"*\"]", "{mode: PASSTHROUGH}"), TLS_ROUTES)).dump.text(),
    )
    .unwrap();
    assert_eq!(dump["resources"][0]["spec"]["servers"][0]["tls"]["mode"], "PASSTHROUGH");
    assert_eq!(dump["plan"]["listeners"][0]["passthrough"], true);
    assert_eq!(
        dump["plan"]["listeners"][0]["tcp_routes"][0]["sni_hosts"],
        serde_json::json!(["db.example.com"])
    );
    let vs = dump["resources"].as_array().unwrap().iter().find(|r| r["kind"] == "VirtualService").unwrap();
    assert_eq!(vs["spec"]["tls"][0]["match"][0]["sniHosts"], serde_json::json!(["db.example.com"]), "{vs}");
}

#[test]
fn tls_route_mistakes_are_errors_at_their_field() {
    let pass = server("TLS", "[\"*\"]", "{mode: PASSTHROUGH}");
    let route = "    route: [{destination: {host: db.internal}}]\n";
    for (tls, want) in [
        (
            format!("  - match: [{{sniHosts: [db.other.com]}}]\n{route}"),
            "VirtualService/edge-routes: spec.tls[0].match[0].sniHosts[0]: SNI host `db.other.com` is not within the VirtualService's hosts (*.example.com): Istio requires",
        ),
        (
            format!("  - match: [{{port: 18443}}]\n{route}"),
            "VirtualService/edge-routes: spec.tls[0].match[0].sniHosts: `sniHosts` is required: expected the SNI names this entry takes",
        ),
        (format!("  - match: [{{sniHosts: []}}]\n{route}"), "spec.tls[0].match[0].sniHosts: expected at least one SNI name"),
        (format!("  - match: [{{sniHosts: [\"db example.com\"]}}]\n{route}"), "spec.tls[0].match[0].sniHosts[0]: `db example.com` is not an SNI name"),
        (format!("  - match: [{{sniHosts: [\"db.*.example.com\"]}}]\n{route}"), "spec.tls[0].match[0].sniHosts[0]: `db.*.example.com` is not an SNI name"),
        (format!("  - {}", route.trim_start()), "VirtualService/edge-routes: spec.tls[0].match: `match` is required: expected match entries with `sniHosts`"),
        ("  - match: [{sniHosts: [db.example.com]}]\n".to_string(), "spec.tls[0].route: `route` is required"),
        (format!("  - match: [{{sniHosts: [db.example.com], sourceSubnet: 10.0.0.0/8}}]\n{route}"), "spec.tls[0].match[0].sourceSubnet: unknown field"),
    ] {
        let vs = format!("  hosts: [\"*.example.com\"]\n  gateways: [edge]\n  tls:\n{tls}");
        let e: Vec<String> = errors(&passthrough(&pass, &vs)).iter().map(ToString::to_string).collect();
        assert!(e.iter().any(|e| e.contains(want)), "{tls}: {want}\nnot in {e:#?}");
    }

    // `tls` routes where no listener passes TLS through: the Gateway's server is TCP, or the
    // VirtualService is bound to the mesh listener only.
    let tcp = "  - port: {number: 18443, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n";
    let e = the_error(&passthrough(tcp, TLS_ROUTES));
    assert!(e.ends_with("mesh.yaml:34:5: VirtualService/edge-routes: spec.tls[0]: `tls` routes take still-encrypted connections by their SNI on a Gateway server with `tls.mode: PASSTHROUGH`, and no server of gateway(s) edge has `tls.mode: PASSTHROUGH`, so these routes would take no connection: bind the VirtualService (`gateways`) to a Gateway with a server of protocol TLS (or HTTPS) and `tls: {mode: PASSTHROUGH}`, or remove `tls`"), "{e}");
    let mesh = TLS_ROUTES.replace("  gateways: [edge]\n", "");
    let e = the_error(&passthrough(&pass, &mesh));
    assert!(e.contains("spec.tls[0]: `tls` routes take still-encrypted connections by their SNI on a Gateway server with `tls.mode: PASSTHROUGH`, and it is bound to the mesh listener only, which serves HTTP"), "{e}");
}

#[test]
fn passthrough_servers_warn_at_certificates_and_share_a_port_only_with_each_other() {
    let certs = Certs::new("passthrough");
    let (crt, key) = certs.issue("shop", &["shop.example.com"], (2099, 1, 1));
    // Certificates on a PASSTHROUGH server would be ignored: a warning at each.
    let tls = format!("{{mode: PASSTHROUGH, {}}}", files(&crt, &key));
    let loaded = ok(&passthrough(&server("TLS", "[\"*\"]", &tls), TLS_ROUTES));
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].contains("spec.servers[0].tls.serverCertificate: `serverCertificate` is ignored with mode PASSTHROUGH, which does not terminate TLS (the upstream does, with its own certificate): remove it, or use mode SIMPLE to terminate here"), "{}", w[0]);
    assert!(
        w[1].contains("spec.servers[0].tls.privateKey: `privateKey` is ignored with mode PASSTHROUGH"),
        "{}",
        w[1]
    );
    assert!(loaded.plan.listeners[0].tls.is_empty());

    // A terminating server and a PASSTHROUGH one on one port, either way round.
    let simple = server("TLS", "[a.example.com]", &format!("{{mode: SIMPLE, {}}}", files(&crt, &key)));
    let pass = server("TLS", "[b.example.com]", "{mode: PASSTHROUGH}");
    let e = the_error(&passthrough(&(simple.clone() + &pass), TLS_ROUTES));
    assert!(e.contains("Gateway/edge: spec.servers[1].port.number: 0.0.0.0:18443 is already used by listener `edge/tls`: it does not pass TLS through, and this server does (PASSTHROUGH); a PASSTHROUGH server shares its port only with other PASSTHROUGH servers"), "{e}");
    let e = the_error(&passthrough(&(pass.clone() + &simple), TLS_ROUTES));
    assert!(e.contains("spec.servers[1].port.number: 0.0.0.0:18443 is already used by listener `edge/tls`: it passes TLS through (PASSTHROUGH), and this server does not;"), "{e}");
    let plain = "  - port: {number: 18443, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n";
    let e = the_error(&passthrough(&(pass.clone() + plain), TLS_ROUTES));
    assert!(
        e.contains("spec.servers[1].port.number: 0.0.0.0:18443 is already used by listener `edge/tls`"),
        "{e}"
    );

    // Two PASSTHROUGH servers share it: one listener, the SNI names of both servers.
    let a = server("TLS", "[db.example.com]", "{mode: PASSTHROUGH}");
    let loaded = ok(&passthrough(&(a + &pass), TLS_ROUTES));
    let [l] = loaded.plan.listeners.as_slice() else { panic!("{:?}", loaded.plan.listeners) };
    assert_eq!(
        routes(l),
        [
            ("edge-routes/tls[0]".to_string(), vec!["db.example.com".to_string()]),
            (
                "edge-routes/tls[1]".to_string(),
                vec!["db.example.com".to_string(), "b.example.com".to_string()]
            )
        ]
    );

    // A route none of whose names the servers serve takes no connection: a warning.
    let loaded = ok(&passthrough(&server("TLS", "[b.example.com]", "{mode: PASSTHROUGH}"), TLS_ROUTES));
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("VirtualService/edge-routes: spec.tls[0]: this `tls` route takes no connection: none of its match entries applies on the PASSTHROUGH listeners `edge-routes` is bound to"), "{}", w[0]);
    assert_eq!(routes(&loaded.plan.listeners[0]).len(), 1);

    // A PASSTHROUGH listener no VirtualService routes: a warning.
    let loaded = ok(&passthrough(
        &pass,
        "  hosts: [\"*\"]\n  gateways: [edge]\n  tcp: [{route: [{destination: {host: db.internal}}]}]\n",
    ));
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(w.iter().any(|w| w.contains("listener `edge/tls` (0.0.0.0:18443): no VirtualService gives it a `tls` route: connections are closed")), "{w:#?}");
}
