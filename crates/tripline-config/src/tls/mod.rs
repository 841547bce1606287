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
//! The two steps are two submodules, around the decoded types kept here ([`ServerTls`] and
//! its [`Termination`], [`ClientTls`]) and the plans described in plain words
//! ([`server_says`], [`upstream_says`]):
//! - `decode.rs`: the document's `tls` mappings decoded and checked ([`server`], [`client`]);
//! - `files.rs`: the files they name resolved and read at each load (`Files`).
//!
//! `mode: PASSTHROUGH` is decoded too (`ServerTls::passthrough`): nothing is terminated, the
//! proxy routes the connection by its SNI (VirtualService `tls` routes).
//!
//! `ISTIO_MUTUAL` (either side) uses the workload's own SVID from `--identity-dir` (see
//! [`crate::identity`]). Refused until implemented: `AUTO_PASSTHROUGH` (routing by
//! SNI-encoded cluster names), and the fields in [`gaps::SERVER_TLS`](crate::gaps::SERVER_TLS)
//! and [`gaps::CLIENT_TLS`](crate::gaps::CLIENT_TLS).

mod decode;
mod files;

use serde::Serialize;

use crate::certs::{self, CertInfo};
use crate::model::At;
use crate::plan::{DownstreamTlsMode, TlsServerPlan, TlsVersions, UpstreamTlsPlan};
use crate::yaml::Pos;

pub use decode::{client, server};
pub(crate) use files::{Files, Finding};

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
}
