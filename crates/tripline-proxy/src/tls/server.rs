//! Terminating a Gateway server's TLS: the servers sharing a port, chosen by the client's SNI
//! before the handshake goes on (rustls's lazy acceptor reads the ClientHello first), each
//! with its own certificate, client-certificate policy, versions and cipher suites.
//!
//! Session resumption: TLS 1.3 tickets (and TLS 1.2 session tickets) from one ticketer for the
//! process ([`Registry::ticketer`]; ring's rotates its key every six hours), kept across
//! certificate and config reloads, so neither costs every client a full handshake.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::{Acceptor, ProducesTickets, ServerConfig, WebPkiClientVerifier};
use rustls::RootCertStore;
use tokio_rustls::LazyConfigAcceptor;
use tripline_config::certs::{self, CertInfo};
use tripline_config::plan::{DownstreamTlsMode, TlsServerPlan};

use super::files::{Built, Credential, Expiry, Registry, Reload};
use super::TlsInfo;
use crate::net_io::TcpIo;

/// A TLS connection from a client, over the deferred-write socket.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpIo>;

/// ALPN protocol ids.
pub const H2: &[u8] = b"h2";
pub const HTTP11: &[u8] = b"http/1.1";

/// What a listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` and `http/1.1` (HTTP listeners).
    Http,
    /// `h2` only (HTTP2 / GRPC listeners).
    H2Only,
    /// Nothing (TCP listeners).
    None,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http => vec![H2.to_vec(), HTTP11.to_vec()],
            Alpn::H2Only => vec![H2.to_vec()],
            Alpn::None => Vec::new(),
        }
    }
}

/// One Gateway server on a TLS port.
struct Server {
    hosts: Vec<String>,
    credential: Arc<Credential<ServerConfig>>,
}

/// A listener's TLS termination.
#[derive(Default)]
pub struct ServerTls {
    servers: Vec<Server>,
}

/// Why a client's handshake failed (the client's doing, never an upstream's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No server on this port answers the SNI it sent.
    UnknownSni,
    /// Its certificate was missing, not trusted, or names no allowed identity.
    ClientCertificate,
    /// No version or cipher suite in common, or not TLS at all.
    Protocol,
    /// It closed or reset the connection during the handshake, or stalled it past the
    /// request-head timeout.
    Disconnected,
}

/// A listener's handshakes: completed, and failed by reason (kept across reloads, with the
/// listener).
#[derive(Debug, Default)]
pub struct TlsStats {
    pub handshakes: std::sync::atomic::AtomicU64,
    pub failures: [std::sync::atomic::AtomicU64; 4],
}

impl TlsStats {
    pub fn handshake(&self) {
        self.handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn failed(&self, why: HandshakeFailure) {
        self.failures[why as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 4] = [
        HandshakeFailure::UnknownSni,
        HandshakeFailure::ClientCertificate,
        HandshakeFailure::Protocol,
        HandshakeFailure::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownSni => "unknown-sni",
            HandshakeFailure::ClientCertificate => "client-certificate",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Disconnected => "client-disconnected",
        }
    }

    fn of(e: &std::io::Error) -> HandshakeFailure {
        use std::io::ErrorKind as K;
        if matches!(e.kind(), K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted) {
            return HandshakeFailure::Disconnected;
        }
        let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
                HandshakeFailure::ClientCertificate
            }
            _ => HandshakeFailure::Protocol,
        }
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<_> = self.servers.iter().map(|s| &s.hosts).collect();
        f.debug_struct("ServerTls").field("servers", &hosts).finish()
    }
}

impl ServerTls {
    /// Reads every server's files; an error names the server and the file. The credentials
    /// join `registry`, so that changed files are read again.
    pub fn build(plans: &[TlsServerPlan], alpn: Alpn, registry: &Registry) -> Result<ServerTls, String> {
        let ticketer = registry.ticketer()?;
        let mut servers = Vec::with_capacity(plans.len());
        for plan in plans {
            let paths: Vec<PathBuf> =
                [Some(&plan.certificate), Some(&plan.private_key), plan.ca_certificates.as_ref()]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
            let build = {
                let (plan, ticketer) = (plan.clone(), ticketer.clone());
                move || server_config(&plan, alpn, &ticketer)
            };
            let credential = Credential::new(plan.name.clone(), paths, build)
                .map_err(|e| format!("listener {}: {e}", plan.name))?;
            let credential = Arc::new(credential);
            let dynamic: Arc<dyn Reload> = credential.clone();
            registry.register(&dynamic);
            servers.push(Server { hosts: plan.hosts.clone(), credential });
        }
        Ok(ServerTls { servers })
    }

    /// The server for an SNI: an exact host, else the longest `*.suffix` covering it, else
    /// `*`. A client that sends no SNI gets the `*` server, or the first one.
    fn pick(&self, sni: Option<&str>) -> Option<&Server> {
        let Some(sni) = sni else {
            return self.servers.iter().find(|s| s.hosts.iter().any(|h| h == "*")).or(self.servers.first());
        };
        let mut best: Option<(&Server, usize)> = None;
        for s in &self.servers {
            for h in &s.hosts {
                let score = if h.eq_ignore_ascii_case(sni) {
                    usize::MAX
                } else if h == "*" {
                    0
                } else if let Some(suffix) = h.strip_prefix('*') {
                    let covers = sni.len() > suffix.len()
                        && sni[sni.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
                    if !covers {
                        continue;
                    }
                    suffix.len()
                } else {
                    continue;
                };
                if best.is_none_or(|(_, b)| score > b) {
                    best = Some((s, score));
                }
            }
        }
        best.map(|(s, _)| s)
    }

    /// Runs the handshake on an accepted connection.
    pub async fn accept(&self, io: TcpIo) -> Result<(ServerStream, TlsInfo), HandshakeFailure> {
        let start =
            LazyConfigAcceptor::new(Acceptor::default(), io).await.map_err(|e| HandshakeFailure::of(&e))?;
        let sni = start.client_hello().server_name().map(str::to_owned);
        let server = self.pick(sni.as_deref()).ok_or(HandshakeFailure::UnknownSni)?;
        let stream =
            start.into_stream(server.credential.config()).await.map_err(|e| HandshakeFailure::of(&e))?;
        let info = TlsInfo::of(sni, stream.get_ref().1.peer_certificates());
        Ok((stream, info))
    }

    /// The expiry of every certificate the listener's servers present or trust.
    pub fn expiries(&self) -> Vec<Expiry> {
        self.servers.iter().flat_map(|s| s.credential.expiries()).collect()
    }
}

/// The rustls config of one server, from its files.
fn server_config(
    plan: &TlsServerPlan,
    alpn: Alpn,
    ticketer: &Arc<dyn ProducesTickets>,
) -> Result<Built<ServerConfig>, String> {
    let chain = certs::read_certificates(&plan.certificate).map_err(|e| e.to_string())?;
    let key = certs::read_private_key(&plan.private_key).map_err(|e| e.to_string())?;
    let mut expiries = vec![leaf_expiry(&plan.name, "certificate", &plan.certificate, &chain)];
    let provider = super::provider(&plan.cipher_suites);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&super::versions(plan.versions))
        .map_err(|e| format!("{}: {e}", plan.name))?;
    let builder = match (plan.mode, &plan.ca_certificates) {
        (DownstreamTlsMode::Simple, _) => builder.with_no_client_auth(),
        (_, None) => return Err(format!("{}: client certificates need caCertificates", plan.name)),
        (mode, Some(ca)) => {
            let (roots, ca_expiry) = roots(&plan.name, ca)?;
            expiries.extend(ca_expiry);
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if mode == DownstreamTlsMode::OptionalMutual {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| format!("{}: {}: {e}", plan.name, ca.display()))?;
            if plan.subject_alt_names.is_empty() {
                builder.with_client_cert_verifier(verifier)
            } else {
                let wanted = plan.subject_alt_names.clone();
                builder.with_client_cert_verifier(Arc::new(super::verify::ClientSans {
                    inner: verifier,
                    wanted,
                }))
            }
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{} and {} do not make a certificate: {e}",
            plan.certificate.display(),
            plan.private_key.display()
        )
    })?;
    config.alpn_protocols = alpn.protocols();
    config.ticketer = ticketer.clone();
    Ok(Built { config: Arc::new(config), expiries })
}

/// The expiry of a chain's leaf.
pub fn leaf_expiry(
    owner: &str,
    role: &'static str,
    file: &std::path::Path,
    chain: &[rustls_pki_types::CertificateDer<'_>],
) -> Expiry {
    let not_after = chain.first().and_then(|c| CertInfo::parse(c).ok()).map_or(0, |i| i.not_after_unix());
    Expiry { owner: owner.to_string(), role, file: file.to_path_buf(), not_after }
}

/// A CA bundle as trust anchors, and the expiry of its first CA to expire.
pub fn roots(owner: &str, ca: &std::path::Path) -> Result<(RootCertStore, Option<Expiry>), String> {
    let cas = certs::read_certificates(ca).map_err(|e| e.to_string())?;
    let first_to_expire =
        cas.iter().filter_map(|c| CertInfo::parse(c).ok()).map(|i| i.not_after_unix()).min();
    let mut roots = RootCertStore::empty();
    for c in cas {
        roots.add(c).map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    let expiry = first_to_expire.map(|not_after| Expiry {
        owner: owner.to_string(),
        role: "ca",
        file: ca.to_path_buf(),
        not_after,
    });
    Ok((roots, expiry))
}
