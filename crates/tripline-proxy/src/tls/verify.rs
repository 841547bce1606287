//! Istio's `subjectAltNames` on top of rustls's chain verification: the peer's certificate
//! must chain to the configured CAs (webpki, as rustls does it) *and* name one of the listed
//! identities. Checked during the handshake, so a peer that fails gets a TLS alert
//! (`bad_certificate`) rather than a connection closed without a word.
//!
//! On the client side the list replaces the host-name check, as in Istio: an upstream named by
//! a SPIFFE ID (a URI, which is no DNS name) can then be verified at all.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tripline_config::certs::CertInfo;

/// Whether `leaf` names one of `wanted` (DNS, URI or IP subject alternative name).
fn names_one_of(leaf: &CertificateDer<'_>, wanted: &[String]) -> Result<(), Error> {
    let info = CertInfo::parse(leaf).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if wanted.iter().any(|w| info.names(w)) {
        Ok(())
    } else {
        Err(Error::InvalidCertificate(CertificateError::NotValidForName))
    }
}

/// Whether `leaf`'s SPIFFE ID is in trust domain `td`.
fn in_trust_domain(leaf: &CertificateDer<'_>, td: &str) -> Result<(), Error> {
    let info = CertInfo::parse(leaf).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    match info.spiffe_id().and_then(tripline_config::identity::trust_domain) {
        Some(found) if found == td => Ok(()),
        _ => Err(Error::InvalidCertificate(CertificateError::NotValidForName)),
    }
}

/// A client-certificate verifier that adds the `subjectAltNames` check.
#[derive(Debug)]
pub struct ClientSans {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub wanted: Vec<String>,
}

impl ClientCertVerifier for ClientSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        names_one_of(end_entity, &self.wanted)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How an upstream's certificate is checked.
#[derive(Debug)]
pub enum ServerCheck {
    /// The chain ends at `roots` and names one of these (`subjectAltNames`).
    Names(Vec<String>),
    /// The chain ends at `roots` and carries a SPIFFE ID of this trust domain (`ISTIO_MUTUAL`
    /// without `subjectAltNames`).
    TrustDomain(String),
    /// `insecureSkipVerify`: nothing is checked but the handshake signature.
    Nothing,
}

/// The upstream verifier used when `subjectAltNames` or `insecureSkipVerify` is set (otherwise
/// rustls's own WebPKI verifier checks the SNI, as any HTTPS client does).
#[derive(Debug)]
pub struct UpstreamVerifier {
    pub roots: Arc<RootCertStore>,
    pub provider: Arc<CryptoProvider>,
    pub check: ServerCheck,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let chain = || {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )
        };
        match &self.check {
            ServerCheck::Nothing => {}
            ServerCheck::Names(wanted) => {
                chain()?;
                names_one_of(end_entity, wanted)?;
            }
            ServerCheck::TrustDomain(td) => {
                chain()?;
                in_trust_domain(end_entity, td)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
