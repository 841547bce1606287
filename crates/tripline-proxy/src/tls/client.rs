//! Originating TLS to a cluster's endpoints (`DestinationRule.trafficPolicy.tls`): `SIMPLE`
//! and `MUTUAL`, with the SNI, the trust anchors (the configured CAs, or the system's), and
//! the server identity check Istio defines (`subjectAltNames`, else the SNI as a host name).
//!
//! One rustls config per cluster, so its session cache is shared by all of the cluster's
//! connections: a new pooled connection to an endpoint resumes instead of a full handshake.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tripline_config::certs;
use tripline_config::plan::UpstreamTlsPlan;

use super::files::{Built, Credential, Registry, Reload};
use super::server::{leaf_expiry, roots};
use super::verify::{ServerCheck, UpstreamVerifier};
use crate::net_io::TcpIo;

/// A TLS connection to an endpoint, over the deferred-write socket.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpIo>;

/// A cluster's TLS origination.
pub struct UpstreamTls {
    credential: Arc<Credential<ClientConfig>>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// `alpn`: what the cluster's protocol speaks (`h2`, `http/1.1`, nothing for TCP).
    pub fn build(
        cluster: &str,
        host: &str,
        plan: &UpstreamTlsPlan,
        alpn: &[&[u8]],
        registry: &Registry,
    ) -> Result<UpstreamTls, String> {
        let name = plan.sni.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| format!("cluster {cluster}: `{name}` is not a valid TLS server name"))?;
        let paths: Vec<PathBuf> =
            [plan.ca_certificates.as_ref(), plan.client_certificate.as_ref(), plan.private_key.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
        let build = {
            let (cluster, plan) = (cluster.to_string(), plan.clone());
            let alpn: Vec<Vec<u8>> = alpn.iter().map(|a| a.to_vec()).collect();
            move || client_config(&cluster, &plan, &alpn)
        };
        let credential = Arc::new(
            Credential::new(cluster.to_string(), paths, build)
                .map_err(|e| format!("cluster {cluster}: {e}"))?,
        );
        let dynamic: Arc<dyn Reload> = credential.clone();
        registry.register(&dynamic);
        Ok(UpstreamTls { credential, server_name })
    }

    /// The handshake on a connected socket.
    pub async fn connect(&self, io: TcpIo) -> std::io::Result<ClientStream> {
        tokio_rustls::TlsConnector::from(self.credential.config()).connect(self.server_name.clone(), io).await
    }
}

/// The system's trust anchors, read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's CA certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, "system CA certificates loaded");
            Arc::new(roots)
        })
        .clone()
}

fn client_config(
    cluster: &str,
    plan: &UpstreamTlsPlan,
    alpn: &[Vec<u8>],
) -> Result<Built<ClientConfig>, String> {
    let mut expiries = Vec::new();
    let roots = match &plan.ca_certificates {
        Some(ca) => {
            let (roots, expiry) = roots(cluster, ca)?;
            expiries.extend(expiry);
            Arc::new(roots)
        }
        None => system_roots(),
    };
    let provider = super::provider(&[]);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let check = match (&plan.trust_domain, plan.subject_alt_names.is_empty()) {
        _ if plan.insecure_skip_verify => Some(ServerCheck::Nothing),
        (_, false) => Some(ServerCheck::Names(plan.subject_alt_names.clone())),
        (Some(td), true) => Some(ServerCheck::TrustDomain(td.clone())),
        (None, true) => None,
    };
    let builder = if let Some(check) = check {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(UpstreamVerifier {
            roots,
            provider,
            check,
        }))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match (&plan.client_certificate, &plan.private_key) {
        (Some(cert), Some(key)) => {
            let chain = certs::read_certificates(cert).map_err(|e| e.to_string())?;
            expiries.push(leaf_expiry(cluster, "certificate", cert, &chain));
            let key_der = certs::read_private_key(key).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!("{} and {} do not make a certificate: {e}", cert.display(), key.display())
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.to_vec();
    Ok(Built { config: Arc::new(config), expiries })
}
