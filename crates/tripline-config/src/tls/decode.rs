//! Decoding a Gateway server's `tls` ([`server`]) and a DestinationRule's `trafficPolicy.tls`
//! ([`client`]) from the YAML: Istio's schemas, the fields checked one by one, and the errors
//! and warnings at the field that causes them.
//!
//! Separate from `files.rs` because it reads only the document (no file, no
//! `--credentials-dir`), so what it decodes can be kept across reloads with the document it
//! came from; the files it names are resolved and read at each load there.

use super::{server_mode_name, ClientMode, ClientTls, ServerTls, Termination, CIPHER_SUITES};
use crate::decode::{Cx, Fields, Schema};
use crate::diag::Severity;
use crate::gaps;
use crate::model::At;
use crate::plan::{DownstreamTlsMode, TlsVersions};
use crate::yaml::Node;

/// The fields of a server's `tls` that set up termination (all but `httpsRedirect`).
const TERMINATION: &[&str] = &[
    "mode",
    "serverCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "subjectAltNames",
    "minProtocolVersion",
    "maxProtocolVersion",
    "cipherSuites",
];

const SERVER_TLS: Schema = Schema::new(
    "Istio's ServerTLSSettings",
    &[
        "httpsRedirect",
        "mode",
        "serverCertificate",
        "privateKey",
        "caCertificates",
        "credentialName",
        "subjectAltNames",
        "minProtocolVersion",
        "maxProtocolVersion",
        "cipherSuites",
    ],
)
.refusing(gaps::SERVER_TLS);

const CLIENT_TLS: Schema = Schema::new(
    "Istio's ClientTLSSettings",
    &[
        "mode",
        "clientCertificate",
        "privateKey",
        "caCertificates",
        "credentialName",
        "subjectAltNames",
        "sni",
        "insecureSkipVerify",
    ],
)
.refusing(gaps::CLIENT_TLS);

/// Why `AUTO_PASSTHROUGH` is refused (`PASSTHROUGH` is taken before [`termination`]).
const AUTO_PASSTHROUGH: &str = "it routes by cluster names encoded in the SNI (`outbound_.PORT_.SUBSET_.HOST`, as Istio's east-west gateways do), which Tripline's clusters do not answer to: use `mode: PASSTHROUGH` and route the SNI names with a VirtualService's `tls` routes";
/// Certificate fields given with `ISTIO_MUTUAL`, which uses the workload's own.
fn istio_mutual_files(cx: &mut Cx, f: &Fields<'_>, fields: &[&str]) -> bool {
    let mut ok = true;
    for field in fields {
        if let Some((n, p)) = f.value(field) {
            cx.error(n, &p, format!("`{field}` cannot be given with mode ISTIO_MUTUAL, which uses the workload's own certificate and trust bundle (--identity-dir): remove it, or use MUTUAL"));
            ok = false;
        }
    }
    ok
}

/// A Gateway server's `tls`, checked against the server's `protocol` (`None` when that did not
/// decode). On `HTTPS` and `TLS` ports it must terminate (Istio requires a `tls` there, which
/// the caller checks); elsewhere it may only say `httpsRedirect`. `None` after an error.
pub fn server(cx: &mut Cx, node: &Node, path: &str, protocol: Option<&str>) -> Option<ServerTls> {
    let f = cx.fields(node, path, &SERVER_TLS)?;
    let https_redirect = match f.value("httpsRedirect") {
        Some((n, p)) => cx.bool(n, &p)?,
        None => false,
    };
    // A protocol that did not decode has its own error: read `tls` as what it looks like.
    let encrypted = match protocol {
        Some(p) => matches!(p, "HTTPS" | "TLS"),
        None => TERMINATION.iter().any(|k| f.has(k)),
    };
    if !encrypted {
        if let Some((n, p)) = TERMINATION.iter().find_map(|k| f.value(k)) {
            let proto = protocol.unwrap_or_default();
            cx.error(n, &p, format!("`tls` terminates TLS only on a port with protocol HTTPS or TLS, and this one is {proto}: use protocol HTTPS (TLS, then HTTP routes) or TLS (TLS, then `tcp` routes); on a plaintext port `tls` takes only `httpsRedirect`"));
            return None;
        }
        if https_redirect && protocol == Some("TCP") {
            if let Some((n, p)) = f.value("httpsRedirect") {
                cx.warn(n, &p, "`httpsRedirect` does nothing on a TCP port: it redirects HTTP requests, on an HTTP server");
            }
        }
        return Some(ServerTls { https_redirect, terminate: None, passthrough: false });
    }
    if let (true, Some((n, p))) = (https_redirect, f.value("httpsRedirect")) {
        let proto = protocol.unwrap_or_default();
        cx.warn(n, &p, format!("`httpsRedirect` does nothing on this {proto} port, whose clients use TLS already: put it on the plaintext HTTP server (port 80) that should send clients here"));
    }
    if passthrough(cx, &f) {
        return Some(ServerTls { https_redirect, terminate: None, passthrough: true });
    }
    let terminate = termination(cx, &f)?;
    Some(ServerTls { https_redirect, terminate: Some(terminate), passthrough: false })
}

/// Whether a server's `tls` passes TLS through: `mode: PASSTHROUGH`, or no `mode` and no
/// certificate (Istio's default mode is PASSTHROUGH; with a certificate, [`termination`]
/// reads it as SIMPLE). The termination fields it has are ignored: a warning at each.
fn passthrough(cx: &mut Cx, f: &Fields<'_>) -> bool {
    match f.value("mode") {
        Some((n, _)) if n.as_scalar() == Some("PASSTHROUGH") => {}
        None if !f.has("serverCertificate") && !f.has("credentialName") => {
            cx.warn(f.node, f.path, "`mode` is not set, which Istio reads as PASSTHROUGH: TLS is not terminated, and the connection is routed by its SNI, still encrypted, by a VirtualService's `tls` routes; write `mode: PASSTHROUGH` to say so, or `mode: SIMPLE` with a certificate to terminate TLS here");
        }
        _ => return false,
    }
    for field in TERMINATION.iter().filter(|k| **k != "mode") {
        if let Some((n, p)) = f.value(field) {
            cx.warn(n, &p, format!("`{field}` is ignored with mode PASSTHROUGH, which does not terminate TLS (the upstream does, with its own certificate): remove it, or use mode SIMPLE to terminate here"));
        }
    }
    true
}

/// The termination fields of a server's `tls`.
fn termination(cx: &mut Cx, f: &Fields<'_>) -> Option<Termination> {
    let mut ok = true;
    let mut istio_mutual = None;
    let mode = match f.value("mode") {
        Some((n, p)) => {
            const MODES: &[&str] =
                &["SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "PASSTHROUGH", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL"];
            match cx.one_of(n, &p, MODES, "")?.as_str() {
                "SIMPLE" => Some(DownstreamTlsMode::Simple),
                "MUTUAL" => Some(DownstreamTlsMode::Mutual),
                "OPTIONAL_MUTUAL" => Some(DownstreamTlsMode::OptionalMutual),
                "ISTIO_MUTUAL" => {
                    let fields = ["serverCertificate", "privateKey", "caCertificates", "credentialName"];
                    if !istio_mutual_files(cx, f, &fields) {
                        return None;
                    }
                    istio_mutual = Some((n.pos, p.clone()));
                    Some(DownstreamTlsMode::Mutual)
                }
                _ => {
                    cx.error(n, &p, format!("`AUTO_PASSTHROUGH` is not implemented: {AUTO_PASSTHROUGH}"));
                    return None;
                }
            }
        }
        None => None,
    };
    let server_certificate = file(cx, f, "serverCertificate", &mut ok);
    let private_key = file(cx, f, "privateKey", &mut ok);
    let ca_certificates = file(cx, f, "caCertificates", &mut ok);
    let credential_name = credential_name(cx, f, &mut ok);
    let mode = match mode {
        Some(m) => m,
        // Istio's default is PASSTHROUGH; with a certificate, terminating is what is meant.
        None if server_certificate.is_some() || credential_name.is_some() => {
            cx.warn(f.node, f.path, "`mode` is not set, which Istio reads as PASSTHROUGH (the connection routed by its SNI, still encrypted) and Tripline as SIMPLE (TLS terminated with this certificate): write `mode: SIMPLE` so that both read it the same");
            DownstreamTlsMode::Simple
        }
        // Without a certificate it is passthrough (see `passthrough`): here the certificate
        // written is in error, reported already.
        None => return None,
    };
    let files = [
        ("serverCertificate", &server_certificate),
        ("privateKey", &private_key),
        ("caCertificates", &ca_certificates),
    ];
    if istio_mutual.is_some() {
        // The workload's own certificate: nothing is required here.
    } else if let Some(c) = &credential_name {
        ok &= one_source(cx, c, &files, "server");
    } else {
        if server_certificate.is_none() {
            cx.required(
                f,
                "serverCertificate",
                "a PEM file of the server's certificate chain (or `credentialName`)",
            );
            ok = false;
        }
        if private_key.is_none() {
            cx.required(f, "privateKey", "a PEM file of the certificate's private key (or `credentialName`)");
            ok = false;
        }
        if mode != DownstreamTlsMode::Simple && ca_certificates.is_none() {
            let what = format!(
                "a PEM file of the CAs client certificates must chain to (mode {})",
                server_mode_name(mode)
            );
            cx.required(f, "caCertificates", &what);
            ok = false;
        }
    }
    if mode == DownstreamTlsMode::Simple {
        for field in ["caCertificates", "subjectAltNames"] {
            if let Some((n, p)) =
                f.value(field).filter(|_| credential_name.is_none() || field != "caCertificates")
            {
                cx.warn(n, &p, format!("`{field}` is ignored with mode SIMPLE, which asks clients for no certificate: use MUTUAL or OPTIONAL_MUTUAL to verify clients"));
            }
        }
    }
    let subject_alt_names = strings(cx, f, "subjectAltNames");
    let (versions, min_protocol_version, max_protocol_version) = versions(cx, f, &mut ok);
    let cipher_suites = cipher_suites(cx, f, versions, &mut ok);
    ok.then_some(Termination {
        mode,
        server_certificate,
        private_key,
        ca_certificates,
        credential_name,
        subject_alt_names,
        min_protocol_version,
        max_protocol_version,
        versions,
        cipher_suites,
        istio_mutual,
    })
}

/// A DestinationRule's `trafficPolicy.tls`. `None` after an error.
pub fn client(cx: &mut Cx, node: &Node, path: &str) -> Option<ClientTls> {
    let f = cx.fields(node, path, &CLIENT_TLS)?;
    let mut ok = true;
    let mode = match f.value("mode") {
        Some((n, p)) => {
            match cx.one_of(n, &p, &["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"], "")?.as_str() {
                "DISABLE" => ClientMode::Disable,
                "SIMPLE" => ClientMode::Simple,
                "MUTUAL" => ClientMode::Mutual,
                _ => {
                    let fields = ["clientCertificate", "privateKey", "caCertificates", "credentialName"];
                    if !istio_mutual_files(cx, &f, &fields) {
                        return None;
                    }
                    ClientMode::IstioMutual
                }
            }
        }
        // Istio's default is DISABLE, and then the other fields do nothing.
        None if CLIENT_TLS.known.iter().any(|k| f.has(k)) => {
            cx.required(
                &f,
                "mode",
                "SIMPLE or MUTUAL (without it Istio disables TLS, and these settings would do nothing)",
            );
            return None;
        }
        None => ClientMode::Disable,
    };
    let client_certificate = file(cx, &f, "clientCertificate", &mut ok);
    let private_key = file(cx, &f, "privateKey", &mut ok);
    let ca_certificates = file(cx, &f, "caCertificates", &mut ok);
    let credential_name = credential_name(cx, &f, &mut ok);
    let subject_alt_names = strings(cx, &f, "subjectAltNames");
    let sni = match f.value("sni") {
        Some((n, p)) => match cx.name(n, &p) {
            Some(s) if rustls_pki_types::ServerName::try_from(s.as_str()).is_ok() => Some(s),
            Some(s) => {
                cx.error(
                    n,
                    &p,
                    format!("`{s}` is not a TLS server name: expected a DNS name or an IP address"),
                );
                ok = false;
                None
            }
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let insecure_skip_verify = match f.value("insecureSkipVerify") {
        Some((n, p)) => match cx.bool(n, &p) {
            Some(v) => v,
            None => {
                ok = false;
                false
            }
        },
        None => false,
    };
    match mode {
        ClientMode::Disable => {
            let set = CLIENT_TLS.known.iter().filter(|k| **k != "mode").find_map(|k| Some((k, f.value(k)?)));
            if let Some((field, (n, p))) = set {
                cx.warn(
                    n,
                    &p,
                    format!(
                        "`{field}` is ignored with mode DISABLE: connections to the endpoints are plaintext"
                    ),
                );
            }
        }
        ClientMode::Simple => {
            for field in ["clientCertificate", "privateKey"] {
                if let Some((n, p)) = f.value(field) {
                    cx.warn(n, &p, format!("`{field}` is ignored with mode SIMPLE, which sends no client certificate: use MUTUAL to send it"));
                }
            }
        }
        ClientMode::Mutual | ClientMode::IstioMutual => {}
    }
    if mode != ClientMode::Disable && mode != ClientMode::IstioMutual {
        let files = [
            ("clientCertificate", &client_certificate),
            ("privateKey", &private_key),
            ("caCertificates", &ca_certificates),
        ];
        if let Some(c) = &credential_name {
            ok &= one_source(cx, c, &files, "client");
        } else if mode == ClientMode::Mutual {
            for (field, what) in [
                (
                    "clientCertificate",
                    "a PEM file of the client certificate chain (mode MUTUAL; or `credentialName`)",
                ),
                (
                    "privateKey",
                    "a PEM file of the client certificate's private key (mode MUTUAL; or `credentialName`)",
                ),
            ] {
                if !f.has(field) {
                    cx.required(&f, field, what);
                    ok = false;
                }
            }
        }
        if let (true, Some((n, p))) = (insecure_skip_verify, f.value("insecureSkipVerify")) {
            cx.warn(
                n,
                &p,
                "the upstream's certificate is not verified: anyone on the path can impersonate it",
            );
        }
    }
    ok.then(|| ClientTls {
        mode,
        client_certificate,
        private_key,
        ca_certificates,
        credential_name,
        subject_alt_names,
        sni,
        insecure_skip_verify,
        pos: node.pos,
        path: path.to_string(),
    })
}

/// `credentialName` and the file fields are two ways to give one side's certificates: both
/// is an error at `credentialName`. False when both are given.
fn one_source(
    cx: &mut Cx,
    credential: &At<String>,
    files: &[(&str, &Option<At<String>>)],
    side: &str,
) -> bool {
    let both: Vec<&str> = files.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k).collect();
    if !both.is_empty() {
        let msg = format!("`credentialName` and `{}` both give the {side}'s certificates: keep one (the credential holds tls.crt, tls.key and ca.crt)", both.join("`, `"));
        cx.report(Severity::Error, credential.pos, &credential.path, msg);
    }
    both.is_empty()
}

/// A field naming a file: a non-empty string, with where it was written.
fn file(cx: &mut Cx, f: &Fields<'_>, field: &str, ok: &mut bool) -> Option<At<String>> {
    let (n, p) = f.value(field)?;
    let s = cx.name(n, &p);
    *ok &= s.is_some();
    Some(At::new(s?, n, &p))
}

/// `credentialName`: a Kubernetes Secret name, which names a directory of
/// `--credentials-dir`; anything that could step out of it is refused.
fn credential_name(cx: &mut Cx, f: &Fields<'_>, ok: &mut bool) -> Option<At<String>> {
    let (n, p) = f.value("credentialName")?;
    let Some(name) = cx.name(n, &p) else {
        *ok = false;
        return None;
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label) {
        cx.error(n, &p, format!("`{name}` is not a Kubernetes Secret name (lowercase letters, digits, `-` and `.`): it names the directory of --credentials-dir that holds tls.crt, tls.key and ca.crt"));
        *ok = false;
        return None;
    }
    Some(At::new(name, n, &p))
}

fn strings(cx: &mut Cx, f: &Fields<'_>, field: &str) -> Vec<String> {
    f.value(field)
        .map(|(n, p)| cx.strings(n, &p).into_iter().map(|(s, _, _)| s).collect())
        .unwrap_or_default()
}

/// `minProtocolVersion` and `maxProtocolVersion` (as written, for the dump), and what they
/// leave on.
fn versions(cx: &mut Cx, f: &Fields<'_>, ok: &mut bool) -> (TlsVersions, Option<String>, Option<String>) {
    const VERSIONS: &[&str] = &["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"];
    let mut read = |field: &str| -> (Option<u8>, Option<String>) {
        let Some((n, p)) = f.value(field) else { return (None, None) };
        let Some(v) = cx.one_of(n, &p, VERSIONS, "") else {
            *ok = false;
            return (None, None);
        };
        let number = match v.as_str() {
            "TLSV1_2" => Some(12),
            "TLSV1_3" => Some(13),
            "TLSV1_0" | "TLSV1_1" => {
                cx.error(n, &p, format!("`{v}`: rustls does not speak TLS 1.0/1.1 (deprecated by RFC 8996): use TLSV1_2 or TLSV1_3"));
                *ok = false;
                None
            }
            _ => None,
        };
        (number, Some(v))
    };
    let (min, min_text) = read("minProtocolVersion");
    let (max, max_text) = read("maxProtocolVersion");
    let (low, high) = (min.unwrap_or(12), max.unwrap_or(13));
    if low > high {
        if let Some((n, p)) = f.value("maxProtocolVersion") {
            let (min, max) =
                (min_text.as_deref().unwrap_or_default(), max_text.as_deref().unwrap_or_default());
            cx.error(
                n,
                &p,
                format!("maxProtocolVersion {max} is below minProtocolVersion {min}: no TLS version is left"),
            );
            *ok = false;
        }
    }
    (TlsVersions { tls12: low <= 12 && high >= 12, tls13: high >= 13 }, min_text, max_text)
}

/// `cipherSuites`: each one of [`CIPHER_SUITES`].
fn cipher_suites(cx: &mut Cx, f: &Fields<'_>, versions: TlsVersions, ok: &mut bool) -> Vec<String> {
    let Some((n, p)) = f.value("cipherSuites") else { return Vec::new() };
    let mut out = Vec::new();
    for (name, pos, path) in cx.strings(n, &p) {
        if CIPHER_SUITES.contains(&name.as_str()) {
            if !out.contains(&name) {
                out.push(name);
            }
        } else {
            let msg = format!("unknown or unsupported cipher suite `{name}`: expected one of {} (TLS 1.2 suites; TLS 1.3's are always offered)", CIPHER_SUITES.join(", "));
            cx.report(Severity::Error, pos, &path, msg);
            *ok = false;
        }
    }
    if !versions.tls12 && !out.is_empty() {
        cx.warn(n, &p, "`cipherSuites` restrict TLS 1.2 only (as in Envoy), and the protocol versions leave only TLS 1.3: they change nothing");
    }
    out
}
