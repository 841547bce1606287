//! TLS with rustls (ring as the crypto provider; docs/benchmarks.md "TLS provider" has the
//! measurement): terminating a Gateway server's TLS ([`server`]), originating TLS to an
//! upstream ([`client`]), the certificate checks Istio's `subjectAltNames` add ([`verify`]),
//! and certificate files re-read when they change ([`files`]).
//!
//! TLS runs over the same socket type as plaintext ([`crate::net_io::TcpIo`], with its
//! deferred writes), and the servers above it are the same generic code: a TLS connection is
//! the plaintext fast path with rustls in between, not a slow path beside it.

pub mod client;
pub mod files;
pub mod server;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::SupportedProtocolVersion;
use tripline_config::certs::CertInfo;
use tripline_config::plan::TlsVersions;

/// What a TLS connection's handshake settled, for routing, authorization and the access log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The client certificate's identity: its SPIFFE ID, else its first URI or DNS name.
    pub peer_identity: Option<String>,
    /// `x-forwarded-client-cert` for the requests of this connection, from the client
    /// certificate (`URI=<SPIFFE ID or URI>`, or `DNS=<name>`), made once per connection.
    pub xfcc: Option<http::HeaderValue>,
}

impl TlsInfo {
    fn of(sni: Option<String>, peer: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> TlsInfo {
        let leaf = peer.and_then(|chain| chain.first()).and_then(|c| CertInfo::parse(c).ok());
        let peer_identity = leaf.and_then(|info| {
            info.spiffe_id()
                .map(str::to_owned)
                .or_else(|| info.uris.first().cloned())
                .or_else(|| info.dns_names.first().cloned())
        });
        let xfcc = peer_identity.as_deref().and_then(|id| {
            let field = if id.contains("://") { "URI" } else { "DNS" };
            http::HeaderValue::try_from(format!("{field}={id}")).ok()
        });
        TlsInfo { sni, peer_identity, xfcc }
    }
}

/// Builds every TLS setting of `plan` as `run` would, without serving anything, and says
/// what fails: what only building finds, such as a certificate and a key that are not a pair.
/// `validate` reports each as an error at the certificate file: `(file, listener or cluster,
/// why)`.
pub fn check(plan: &tripline_config::plan::Plan) -> Vec<(std::path::PathBuf, String, String)> {
    use tripline_config::plan::ListenerProtocol;
    let registry = files::Registry::default();
    let mut failed = Vec::new();
    for l in plan.listeners.iter().filter(|l| !l.tls.is_empty()) {
        let alpn = match l.protocol {
            ListenerProtocol::Http => server::Alpn::Http,
            ListenerProtocol::Http2 => server::Alpn::H2Only,
            ListenerProtocol::Tcp => server::Alpn::None,
        };
        if let Err(e) = server::ServerTls::build(&l.tls, alpn, &registry) {
            failed.push((l.tls[0].certificate.clone(), format!("listener {}", l.name), e));
        }
    }
    for c in &plan.clusters {
        let Some(t) = &c.tls else { continue };
        if let Err(e) = client::UpstreamTls::build(&c.name, &c.host, t, &[], &registry) {
            let file = t.client_certificate.clone().or_else(|| t.ca_certificates.clone()).unwrap_or_default();
            failed.push((file, format!("cluster {}", c.name), e));
        }
    }
    failed
}

/// The crypto provider: ring, with the TLS 1.2 cipher suites cut down to `names` (Envoy's
/// names, as Istio's `cipherSuites` uses them; the compiler checked them) when there are any.
/// TLS 1.3's suites are always all offered, as in Envoy.
///
/// Why ring: on the benchmark machine its AES-GCM moves application data 2.2 times cheaper
/// than aws-lc-rs's and a small request round trip 1.2 times cheaper, which every request
/// pays; aws-lc-rs's handshakes are 1.2-1.3 times cheaper, which only a new connection pays.
/// It builds in half the time. (docs/benchmarks.md, "TLS provider".) rustls 0.23.48 marks
/// ring's default provider deprecated for lacking post-quantum key exchange, and its default
/// key-exchange order puts P-384 first (6 times slower handshakes than X25519 here): the
/// order is set here, X25519 first.
#[allow(deprecated)]
pub fn provider(names: &[String]) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.kx_groups = vec![
        rustls::crypto::ring::kx_group::X25519,
        rustls::crypto::ring::kx_group::SECP256R1,
        rustls::crypto::ring::kx_group::SECP384R1,
    ];
    if !names.is_empty() {
        p.cipher_suites.retain(|s| match s {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => {
                names.iter().any(|n| envoy_name(s.suite()).is_some_and(|e| e.eq_ignore_ascii_case(n)))
            }
        });
    }
    Arc::new(p)
}

/// Envoy's (OpenSSL's) name of a TLS 1.2 suite rustls offers.
fn envoy_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as C;
    Some(match suite {
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// `minProtocolVersion` / `maxProtocolVersion` as rustls takes them.
pub fn versions(v: TlsVersions) -> Vec<&'static SupportedProtocolVersion> {
    let mut out = Vec::with_capacity(2);
    if v.tls13 {
        out.push(&rustls::version::TLS13);
    }
    if v.tls12 {
        out.push(&rustls::version::TLS12);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)] // see `provider`
    fn cipher_suites_cut_tls_1_2_only_and_every_name_is_known() {
        let all = rustls::crypto::ring::default_provider();
        for s in &all.cipher_suites {
            if let rustls::SupportedCipherSuite::Tls12(_) = s {
                assert!(envoy_name(s.suite()).is_some(), "{:?} has an Envoy name", s.suite());
            }
        }
        let cut = provider(&["ECDHE-RSA-AES128-GCM-SHA256".into()]);
        let tls12: Vec<_> = cut
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .map(|s| s.suite())
            .collect();
        assert_eq!(tls12, [rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]);
        let tls13 = cut.cipher_suites.iter().filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)));
        assert_eq!(tls13.count(), 3, "TLS 1.3's suites stay");
        assert_eq!(cut.kx_groups[0].name(), rustls::NamedGroup::X25519, "X25519 first");
    }
}
