//! TLS for the tests: a certificate authority made per test (rcgen), certificates it issues
//! written as PEM files for the proxy's config, a TLS client (rustls) that says which
//! certificate the proxy presented, and a TLS upstream that records who connected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use super::client::{BoxError, Conn};
use super::upstream::{handle, Upstream, UpstreamState};

/// A certificate authority, its PEM file, and where issued certificates are written.
pub struct Ca {
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: PathBuf,
}

/// An issued certificate: its files, and its DER for a test's own TLS configs.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Arc<PrivateKeyDer<'static>>,
}

fn san(name: &str) -> SanType {
    if let Ok(ip) = name.parse() {
        SanType::IpAddress(ip)
    } else if name.contains("://") {
        SanType::URI(name.try_into().unwrap())
    } else {
        SanType::DnsName(name.try_into().unwrap())
    }
}

impl Ca {
    /// A new CA named `name`, its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        std::fs::create_dir_all(dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { dir: dir.to_path_buf(), cert, key, pem }
    }

    /// A certificate for `names` (DNS names, IPs, URIs such as SPIFFE IDs), valid for server
    /// and client use, expiring on `not_after` (year, month, day), written to
    /// `<file>.pem` / `<file>-key.pem`.
    pub fn issue_until(&self, file: &str, names: &[&str], not_after: (i32, u8, u8)) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or(file));
        params.subject_alt_names = names.iter().map(|n| san(n)).collect();
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) =
            (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}-key.pem")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            chain: vec![cert.der().clone()],
            key_der: Arc::new(PrivateKeyDer::try_from(key.serialize_der()).unwrap()),
        }
    }

    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        self.issue_until(file, names, (2040, 1, 1))
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client TLS config trusting `ca`, offering `alpn`, presenting `client` if given.
pub fn client_config(ca: &Ca, alpn: &[&str], client: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots());
    let mut config = match client {
        Some(c) => builder.with_client_auth_cert(c.chain.clone(), c.key_der.clone_key()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to the proxy with SNI `sni` (verified against it).
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out")??;
    Ok(tls)
}

/// The leaf certificate the proxy presented.
pub fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("a server certificate")[0].clone().into_owned()
}

/// The ALPN protocol agreed.
pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<String> {
    stream.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
}

/// An HTTP connection over an established TLS stream: HTTP/2 if `h2` was agreed.
pub async fn http(stream: TlsStream<TcpStream>) -> Result<Conn, BoxError> {
    let h2 = alpn(&stream).as_deref() == Some("h2");
    let io = TokioIo::new(stream);
    Ok(if h2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Conn::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Conn::H1(sender)
    })
}

/// A TLS upstream (HTTP/1.1 or HTTP/2 by ALPN) answering as [`Upstream::http`] does, and the
/// first URI or DNS name of each client certificate it was shown (`-` for none).
pub struct TlsUpstream {
    pub upstream: Upstream,
    pub clients: Arc<Mutex<Vec<String>>>,
}

impl TlsUpstream {
    /// `cert` is what it presents; `client_ca`, if given, is required of clients.
    pub async fn start(id: &str, cert: &Issued, client_ca: Option<&Ca>) -> TlsUpstream {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                    .build()
                    .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(cert.chain.clone(), cert.key_der.clone_key()).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = UpstreamState::new(id, Duration::ZERO);
        let clients = Arc::new(Mutex::new(Vec::new()));
        let (st, seen) = (state.clone(), clients.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                let (acceptor, st, seen) = (acceptor.clone(), st.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let who = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| first_name(c))
                        .unwrap_or_else(|| "-".into());
                    seen.lock().unwrap().push(who);
                    let conn_id = st.opened();
                    let st2 = st.clone();
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        handle(st2.clone(), conn_id, peer, req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                    st.closed();
                });
            }
        });
        TlsUpstream { upstream: Upstream { addr, state, accept }, clients }
    }
}

/// A certificate's first URI SAN, else its first DNS SAN (what the tests name clients by).
fn first_name(cert: &CertificateDer<'_>) -> String {
    let info = tripline_config::certs::CertInfo::parse(cert).unwrap();
    info.uris.first().or(info.dns_names.first()).cloned().unwrap_or_default()
}

/// The Unix time a certificate expires at (for the expiry metric).
pub fn not_after(cert: &CertificateDer<'_>) -> i64 {
    tripline_config::certs::CertInfo::parse(cert).unwrap().not_after_unix()
}
