//! TLS settings: Istio's `ServerTLSSettings` (a Gateway server's `tls`: terminating TLS, or
//! `httpsRedirect`) and `ClientTLSSettings` (a DestinationRule's `trafficPolicy.tls`:
//! originating TLS to the endpoints), decoded with positions, then resolved to files and
//! compiled into [`TlsServerPlan`] and [`UpstreamTlsPlan`].
//!
//! ```yaml
//! servers:
//! - port: {number: 443, name: https, protocol: HTTPS}   # TLS: terminated, then `tcp` routes
//!   hosts: [shop.example.com]
//!   tls:
//!     mode: SIMPLE                    # MUTUAL, OPTIONAL_MUTUAL
//!     credentialName: shop-cert       # <--credentials-dir>/shop-cert/{tls.crt,tls.key,ca.crt}
//!     # or serverCertificate / privateKey / caCertificates: PEM files
//! ```
//!
//! Why two steps: decoding reads only the document, which a reload may take unchanged from
//! the last load (see `documents.rs`), while the files are read at every load, since they
//! change without the config changing, and `credentialName` resolves against
//! `--credentials-dir` ([`crate::LoadOptions::credentials_dir`]). Reading them at load makes a
//! missing or malformed file an error at the field that names it, as any other config error,
//! rather than a listener that fails when the proxy applies the plan.
//!
//! `mode: PASSTHROUGH` is decoded here too (`ServerTls::passthrough`): nothing is terminated,
//! the proxy routes the connection by its SNI (VirtualService `tls` routes).
//!
//! `ISTIO_MUTUAL` (either side) uses the workload's own SVID from `--identity-dir` (see
//! [`crate::identity`]). Refused until implemented: `AUTO_PASSTHROUGH` (routing by
//! SNI-encoded cluster names), and the fields in [`gaps::SERVER_TLS`] and [`gaps::CLIENT_TLS`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::certs::{self, CertInfo};
use crate::decode::{Cx, Fields, Schema};
use crate::diag::Severity;
use crate::gaps;
use crate::model::At;
use crate::plan::{DownstreamTlsMode, TlsServerPlan, TlsVersions, UpstreamTlsPlan};
use crate::yaml::{Node, Pos};

/// A Gateway server's `tls`, as decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerTls {
    /// `httpsRedirect`: a plaintext HTTP server answers every request with a redirect to HTTPS.
    #[serde(rename = "httpsRedirect", skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// The termination settings, on an `HTTPS` or `TLS` port.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub terminate: Option<Termination>,
    /// `mode: PASSTHROUGH` (or no `mode` and no certificate, which Istio reads the same), on an
    /// `HTTPS` or `TLS` port: not terminated, routed by the SNI (`terminate` is `None`).
    #[serde(rename = "mode", skip_serializing_if = "std::ops::Not::not", serialize_with = "ser_passthrough")]
    pub passthrough: bool,
}

fn ser_passthrough<S: serde::Serializer>(_: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("PASSTHROUGH")
}

/// How a Gateway server terminates TLS: file paths and the credential name as written
/// (resolved at compile time).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    #[serde(serialize_with = "ser_server_mode")]
    pub mode: DownstreamTlsMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<At<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<At<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<At<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<At<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<String>,
    #[serde(skip)]
    pub versions: TlsVersions,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// `ISTIO_MUTUAL` (`mode` is then `MUTUAL` with the workload's own certificate and trust
    /// bundle), with where it was written.
    #[serde(skip)]
    pub istio_mutual: Option<(Pos, String)>,
}

/// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientMode {
    Disable,
    Simple,
    Mutual,
    /// MUTUAL with the workload's own SVID (`--identity-dir`).
    IstioMutual,
}

/// A DestinationRule's `trafficPolicy.tls` (top level or a subset's), as decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    pub mode: ClientMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<At<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<At<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<At<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<At<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// Where the `tls` mapping is (`spec.subsets[0].trafficPolicy.tls`).
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub path: String,
}

fn ser_server_mode<S: serde::Serializer>(m: &DownstreamTlsMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(server_mode_name(*m))
}

/// Istio's name of a server mode.
pub fn server_mode_name(m: DownstreamTlsMode) -> &'static str {
    match m {
        DownstreamTlsMode::Simple => "SIMPLE",
        DownstreamTlsMode::Mutual => "MUTUAL",
        DownstreamTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

/// The TLS 1.2 cipher suites rustls (with ring) offers, by the names Envoy and Istio use.
/// As in Envoy, `cipherSuites` restricts TLS 1.2 only; TLS 1.3's suites are always offered.
pub const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

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

// ---------------------------------------------------------------------------------------------
// Compiling: files resolved and read

/// A diagnostic found while compiling a TLS setting, at a position of its resource's document
/// (the compiler moves it to where the document now is).
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub severity: Severity,
    pub pos: Pos,
    pub path: String,
    pub message: String,
}

/// What a file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Holds {
    /// A certificate chain, leaf first: its expiry is checked.
    Chain,
    /// CA certificates.
    Authorities,
    Key,
}

/// Resolves the files TLS settings name and reads each once per load: a DestinationRule's
/// files serve every cluster of its host (each port and subset), and one certificate may serve
/// several servers.
pub(crate) struct Files<'a> {
    credentials_dir: Option<&'a Path>,
    identity_dir: Option<&'a Path>,
    /// The workload's identity, read at the first `ISTIO_MUTUAL`.
    identity: Option<Result<crate::identity::WorkloadIdentity, String>>,
    read: HashMap<(PathBuf, Holds), Result<Option<CertInfo>, String>>,
    now: SystemTime,
}

impl<'a> Files<'a> {
    pub(crate) fn new(credentials_dir: Option<&'a Path>, identity_dir: Option<&'a Path>) -> Self {
        Files { credentials_dir, identity_dir, identity: None, read: HashMap::new(), now: SystemTime::now() }
    }

    /// The workload's identity for an `ISTIO_MUTUAL` written at `at` (position, field path);
    /// an error there when there is none or it cannot be read.
    fn identity(
        &mut self,
        at: &(Pos, String),
        out: &mut Vec<Finding>,
    ) -> Option<crate::identity::WorkloadIdentity> {
        let found = self.identity.get_or_insert_with(|| match self.identity_dir {
            Some(dir) => crate::identity::find(dir),
            None => Err("ISTIO_MUTUAL needs the workload's own identity: start Tripline with --identity-dir DIR, a directory holding its X.509 SVID (svid.pem, svid_key.pem, svid_bundle.pem as SPIRE's spiffe-helper writes them, or tls.crt, tls.key, ca.crt)".to_string()),
        });
        match found {
            Ok(id) => Some(id.clone()),
            Err(e) => {
                out.push(Finding {
                    severity: Severity::Error,
                    pos: at.0,
                    path: at.1.clone(),
                    message: e.clone(),
                });
                None
            }
        }
    }

    /// A Gateway server's termination as the proxy runs it, named `name` (the server's
    /// listener name) for the SNI names `hosts`; `config_file` is the file that names the
    /// files (relative paths are relative to its directory). `None` after an error.
    pub(crate) fn server(
        &mut self,
        config_file: &str,
        t: &Termination,
        name: String,
        hosts: Vec<String>,
        out: &mut Vec<Finding>,
    ) -> Option<TlsServerPlan> {
        if let Some(at) = &t.istio_mutual {
            let id = self.identity(at, out)?;
            return Some(TlsServerPlan {
                name,
                hosts,
                mode: DownstreamTlsMode::Mutual,
                certificate: id.certificate,
                private_key: id.private_key,
                ca_certificates: Some(id.bundle),
                subject_alt_names: t.subject_alt_names.clone(),
                versions: t.versions,
                cipher_suites: t.cipher_suites.clone(),
            });
        }
        let (certificate, private_key, ca_certificates) = match &t.credential_name {
            Some(c) => {
                let own = self.credential(c, false, out)?;
                let ca = match t.mode {
                    DownstreamTlsMode::Simple => None,
                    mode => match credential_ca(&own, &c.value) {
                        Some(ca) => Some((ca, c)),
                        None => {
                            let msg = format!(
                                "credential `{}`: mode {} needs the CAs client certificates must chain to, and neither {} nor {} exists",
                                c.value,
                                server_mode_name(mode),
                                own.join("ca.crt").display(),
                                cacert_dir(&own, &c.value).join("ca.crt").display()
                            );
                            out.push(error(c, msg));
                            return None;
                        }
                    },
                };
                ((own.join("tls.crt"), c), (own.join("tls.key"), c), ca)
            }
            None => {
                let (cert, key) = (t.server_certificate.as_ref()?, t.private_key.as_ref()?);
                let ca = t.ca_certificates.as_ref().filter(|_| t.mode != DownstreamTlsMode::Simple);
                (
                    (resolve(config_file, &cert.value), cert),
                    (resolve(config_file, &key.value), key),
                    ca.map(|ca| (resolve(config_file, &ca.value), ca)),
                )
            }
        };
        let label = t.credential_name.as_ref().map(|c| c.value.as_str());
        let mut ok = self.check(&certificate.0, Holds::Chain, certificate.1, label, out);
        ok &= self.check(&private_key.0, Holds::Key, private_key.1, label, out);
        if let Some((path, at)) = &ca_certificates {
            ok &= self.check(path, Holds::Authorities, at, label, out);
        }
        ok.then(|| TlsServerPlan {
            name,
            hosts,
            mode: t.mode,
            certificate: certificate.0,
            private_key: private_key.0,
            ca_certificates: ca_certificates.map(|(p, _)| p),
            subject_alt_names: if t.mode == DownstreamTlsMode::Simple {
                Vec::new()
            } else {
                t.subject_alt_names.clone()
            },
            versions: t.versions,
            cipher_suites: t.cipher_suites.clone(),
        })
    }

    /// A cluster's TLS origination (`t.mode` is not DISABLE); `default_names` are the
    /// ServiceEntry's `subjectAltNames`, checked when `t` names none. `None` after an error.
    pub(crate) fn client<'t>(
        &mut self,
        config_file: &str,
        t: &'t ClientTls,
        default_names: &[String],
        out: &mut Vec<Finding>,
    ) -> Option<UpstreamTlsPlan> {
        let names = if t.subject_alt_names.is_empty() { default_names } else { &t.subject_alt_names };
        if t.mode == ClientMode::IstioMutual {
            let id = self.identity(&(t.pos, format!("{}.mode", t.path)), out)?;
            return Some(UpstreamTlsPlan {
                mutual: true,
                sni: t.sni.clone(),
                subject_alt_names: names.to_vec(),
                ca_certificates: Some(id.bundle),
                client_certificate: Some(id.certificate),
                private_key: Some(id.private_key),
                insecure_skip_verify: false,
                trust_domain: names.is_empty().then_some(id.trust_domain),
            });
        }
        let mutual = t.mode == ClientMode::Mutual;
        let label = t.credential_name.as_ref().map(|c| c.value.as_str());
        let (cert, key, ca) = match &t.credential_name {
            Some(c) => {
                let own = self.credential(c, !mutual, out)?;
                let ca = credential_ca(&own, &c.value).map(|ca| (ca, c));
                match mutual {
                    true => (Some((own.join("tls.crt"), c)), Some((own.join("tls.key"), c)), ca),
                    false => (None, None, ca),
                }
            }
            None => {
                let at = |f: Option<&'t At<String>>| f.map(|a| (resolve(config_file, &a.value), a));
                let (cert, key) = match mutual {
                    true => (at(t.client_certificate.as_ref()), at(t.private_key.as_ref())),
                    false => (None, None),
                };
                (cert, key, at(t.ca_certificates.as_ref()))
            }
        };
        let mut ok = true;
        for (file, holds) in [(&cert, Holds::Chain), (&key, Holds::Key), (&ca, Holds::Authorities)] {
            if let Some((path, at)) = file {
                ok &= self.check(path, holds, at, label, out);
            }
        }
        ok.then(|| UpstreamTlsPlan {
            mutual,
            sni: t.sni.clone(),
            subject_alt_names: names.to_vec(),
            ca_certificates: ca.map(|(p, _)| p),
            client_certificate: cert.map(|(p, _)| p),
            private_key: key.map(|(p, _)| p),
            insecure_skip_verify: t.insecure_skip_verify,
            trust_domain: None,
        })
    }

    /// The directory of credential `c`. `ca_only`: a `<name>-cacert` directory alone will do
    /// (the client side of SIMPLE needs only the CAs).
    fn credential(&self, c: &At<String>, ca_only: bool, out: &mut Vec<Finding>) -> Option<PathBuf> {
        let Some(dir) = self.credentials_dir else {
            out.push(error(c, "credentialName needs --credentials-dir DIR (a directory of <name>/tls.crt, tls.key, ca.crt) until Kubernetes Secrets are read"));
            return None;
        };
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let own = dir.join(&c.value);
        if own.is_dir() || (ca_only && cacert_dir(&own, &c.value).is_dir()) {
            return Some(own);
        }
        let msg = format!(
            "credential `{}`: {} is not a directory (--credentials-dir {} holds one directory per credential, with tls.crt, tls.key and ca.crt)",
            c.value,
            own.display(),
            dir.display()
        );
        out.push(error(c, msg));
        None
    }

    /// Reads `path` once per load for what it must hold; a problem is an error at `at`, an
    /// expired (or not yet valid) leaf certificate a warning there.
    fn check(
        &mut self,
        path: &Path,
        holds: Holds,
        at: &At<String>,
        credential: Option<&str>,
        out: &mut Vec<Finding>,
    ) -> bool {
        let read = self.read.entry((path.to_path_buf(), holds)).or_insert_with(|| read(path, holds));
        let prefix = credential.map(|c| format!("credential `{c}`: ")).unwrap_or_default();
        match read {
            Err(why) => {
                out.push(error(at, format!("{prefix}{why}")));
                false
            }
            Ok(Some(leaf)) => {
                let when = if leaf.not_after < self.now {
                    Some(format!("expired on {}", certs::rfc3339(leaf.not_after)))
                } else if leaf.not_before > self.now {
                    Some(format!("is not valid before {}", certs::rfc3339(leaf.not_before)))
                } else {
                    None
                };
                if let Some(when) = when {
                    let msg = format!("{prefix}{}: the certificate ({}) {when}: TLS peers refuse it until the file is replaced", path.display(), leaf.subject);
                    out.push(Finding {
                        severity: Severity::Warning,
                        pos: at.pos,
                        path: at.path.to_string(),
                        message: msg,
                    });
                }
                true
            }
            Ok(None) => true,
        }
    }
}

/// What a file holds, or why it cannot be used: the leaf's details for a chain.
fn read(path: &Path, holds: Holds) -> Result<Option<CertInfo>, String> {
    match holds {
        Holds::Key => certs::read_private_key(path).map(|_| None).map_err(|e| e.to_string()),
        Holds::Authorities => certs::read_certificates(path).map(|_| None).map_err(|e| e.to_string()),
        Holds::Chain => {
            let chain = certs::read_certificates(path).map_err(|e| e.to_string())?;
            // `read_certificates` parsed every certificate already.
            Ok(chain.first().and_then(|leaf| CertInfo::parse(leaf).ok()))
        }
    }
}

fn error(at: &At<String>, message: impl Into<String>) -> Finding {
    Finding { severity: Severity::Error, pos: at.pos, path: at.path.to_string(), message: message.into() }
}

/// `written` as an absolute path: relative to the directory of `config_file`, the file that
/// names it (so a config directory can be moved with its certificates).
fn resolve(config_file: &str, written: &str) -> PathBuf {
    let p = Path::new(written);
    let p = match Path::new(config_file).parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    };
    std::path::absolute(&p).unwrap_or(p)
}

/// `<dir>/<name>-cacert`: Istio also takes a credential's CAs from a Secret of that name.
fn cacert_dir(own: &Path, name: &str) -> PathBuf {
    own.with_file_name(format!("{name}-cacert"))
}

/// A credential's CA file: its own `ca.crt`, else the `<name>-cacert` one's.
fn credential_ca(own: &Path, name: &str) -> Option<PathBuf> {
    [own.join("ca.crt"), cacert_dir(own, name).join("ca.crt")].into_iter().find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Described in plain words

/// A listener's TLS server in plain words, for `validate --explain`: mode, SNI names,
/// certificate file and its expiry (read now; never anything from the key).
pub fn server_says(t: &TlsServerPlan) -> String {
    let expiry = certs::read_certificates(&t.certificate)
        .ok()
        .and_then(|chain| CertInfo::parse(chain.first()?).ok())
        .map(|leaf| format!(", expires {}", certs::rfc3339(leaf.not_after)))
        .unwrap_or_default();
    let mut says = format!(
        "{} TLS for {}: certificate {}{expiry}",
        server_mode_name(t.mode),
        t.hosts.join(", "),
        t.certificate.display()
    );
    if let Some(ca) = &t.ca_certificates {
        says += &format!("; client certificates chain to {}", ca.display());
    }
    says
}

/// A cluster's TLS origination in plain words, for `validate --explain`.
pub fn upstream_says(t: &UpstreamTlsPlan) -> String {
    let mut says = String::from(if t.mutual { "MUTUAL TLS" } else { "SIMPLE TLS" });
    if let Some(sni) = &t.sni {
        says += &format!(", SNI {sni}");
    }
    if t.insecure_skip_verify {
        says += ", the upstream's certificate NOT verified";
    } else {
        match &t.ca_certificates {
            Some(ca) => says += &format!(", verified against {}", ca.display()),
            None => says += ", verified against the system's roots",
        }
        if !t.subject_alt_names.is_empty() {
            says += &format!(" naming {}", t.subject_alt_names.join(" or "));
        }
        if let Some(td) = &t.trust_domain {
            says += &format!(" naming a SPIFFE ID of trust domain {td} (ISTIO_MUTUAL)");
        }
    }
    if let Some(cert) = &t.client_certificate {
        says += &format!(", client certificate {}", cert.display());
    }
    says
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_files_are_relative_to_the_config_file_that_names_them() {
        let abs = resolve("/etc/tripline/mesh.yaml", "certs/tls.crt");
        assert_eq!(abs, Path::new("/etc/tripline/certs/tls.crt"));
        assert_eq!(resolve("/etc/tripline/mesh.yaml", "/abs/tls.crt"), Path::new("/abs/tls.crt"));
        assert!(resolve("mesh.yaml", "tls.crt").is_absolute(), "made absolute against the working directory");
    }

    #[test]
    fn plans_are_described_in_plain_words_with_the_certificate_s_expiry() {
        let dir = std::env::temp_dir().join(format!("tripline-tls-says-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        let server = TlsServerPlan {
            name: "edge/https".into(),
            hosts: vec!["shop.example.com".into(), "*.shop.example.com".into()],
            mode: DownstreamTlsMode::Mutual,
            certificate: dir.join("tls.crt"),
            private_key: dir.join("tls.key"),
            ca_certificates: Some(dir.join("ca.crt")),
            subject_alt_names: Vec::new(),
            versions: TlsVersions::default(),
            cipher_suites: Vec::new(),
        };
        assert_eq!(
            server_says(&server),
            format!(
                "MUTUAL TLS for shop.example.com, *.shop.example.com: certificate {}, expires 2031-05-17T00:00:00Z; client certificates chain to {}",
                dir.join("tls.crt").display(),
                dir.join("ca.crt").display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let upstream = UpstreamTlsPlan {
            mutual: false,
            sni: Some("pay.example.com".into()),
            subject_alt_names: vec!["pay.internal".into()],
            ca_certificates: None,
            client_certificate: None,
            private_key: None,
            insecure_skip_verify: false,
            trust_domain: None,
        };
        assert_eq!(
            upstream_says(&upstream),
            "SIMPLE TLS, SNI pay.example.com, verified against the system's roots naming pay.internal"
        );
        let insecure = UpstreamTlsPlan { insecure_skip_verify: true, ..upstream };
        assert_eq!(
            upstream_says(&insecure),
            "SIMPLE TLS, SNI pay.example.com, the upstream's certificate NOT verified"
        );
    }

    #[test]
    fn a_credential_s_cas_come_from_its_own_ca_crt_else_the_cacert_one() {
        let dir = std::env::temp_dir().join(format!("tripline-tls-ca-{}", std::process::id()));
        let own = dir.join("gw");
        std::fs::create_dir_all(dir.join("gw-cacert")).unwrap();
        std::fs::create_dir_all(&own).unwrap();
        assert_eq!(credential_ca(&own, "gw"), None);
        std::fs::write(dir.join("gw-cacert/ca.crt"), "x").unwrap();
        assert_eq!(credential_ca(&own, "gw"), Some(dir.join("gw-cacert/ca.crt")));
        std::fs::write(own.join("ca.crt"), "x").unwrap();
        assert_eq!(credential_ca(&own, "gw"), Some(own.join("ca.crt")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
