//! Reading the PEM files a TLS setting names: certificate chains, private keys, CA bundles.
//!
//! The compiler reads them at load time, so a missing or malformed file is a config error at
//! the field that names it; the proxy reads them again (and whenever they change) to build its
//! TLS configs. What rustls does not expose about a certificate, its expiry and its subject
//! alternative names, is read here from the DER (x509-cert): the expiry for the
//! `tripline_tls_certificate_expiry_timestamp_seconds` metric and `/config_dump`, the names
//! for `subjectAltNames` checks and SPIFFE identities.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

/// Why a file could not be used, naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub path: PathBuf,
    pub problem: String,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for CertError {}

fn error(path: &Path, problem: impl Into<String>) -> CertError {
    CertError { path: path.to_path_buf(), problem: problem.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| error(path, format!("cannot read it: {e}")))
}

/// The certificates in a PEM file, in file order (for a chain: the leaf first). At least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| error(path, format!("not a valid PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(error(path, "holds no certificate (expected a `-----BEGIN CERTIFICATE-----` section)"));
    }
    for (i, c) in certs.iter().enumerate() {
        CertInfo::parse(c)
            .map_err(|e| error(path, format!("certificate {} is not valid X.509: {e}", i + 1)))?;
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            error(path, "holds no private key (expected a `-----BEGIN PRIVATE KEY-----` section)")
        }
        e => error(path, format!("not a valid PEM private key: {e}")),
    })
}

/// What Tripline reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
        let tbs = &cert.tbs_certificate;
        let mut info = CertInfo {
            subject: tbs.subject.to_string(),
            not_before: UNIX_EPOCH + tbs.validity.not_before.to_unix_duration(),
            not_after: UNIX_EPOCH + tbs.validity.not_after.to_unix_duration(),
            dns_names: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
        };
        let san = tbs.get::<SubjectAltName>().map_err(|e| format!("subjectAltName: {e}"))?;
        for name in san.map(|(_, s)| s.0).unwrap_or_default() {
            match name {
                GeneralName::DnsName(n) => info.dns_names.push(n.to_string()),
                GeneralName::UniformResourceIdentifier(u) => info.uris.push(u.to_string()),
                GeneralName::IpAddress(ip) => match ip.as_bytes().len() {
                    4 => info.ips.push(IpAddr::from(<[u8; 4]>::try_from(ip.as_bytes()).expect("4 bytes"))),
                    16 => info.ips.push(IpAddr::from(<[u8; 16]>::try_from(ip.as_bytes()).expect("16 bytes"))),
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(info)
    }

    /// Whether the certificate names `want` in its subject alternative names: a DNS name
    /// (case-insensitive, a `*.` wildcard in the certificate covering one label), a URI (a
    /// SPIFFE ID), or an IP address. This is Istio's `subjectAltNames` check.
    pub fn names(&self, want: &str) -> bool {
        if let Ok(ip) = want.parse::<IpAddr>() {
            return self.ips.contains(&ip);
        }
        if want.contains("://") {
            return self.uris.iter().any(|u| u == want);
        }
        self.dns_names.iter().any(|n| dns_matches(n, want))
    }

    /// The SPIFFE ID (`spiffe://...` URI SAN), if the certificate carries one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris.iter().map(String::as_str).find(|u| u.starts_with("spiffe://"))
    }

    /// Seconds since the Unix epoch of `not_after`, for the expiry metric.
    pub fn not_after_unix(&self) -> i64 {
        match self.not_after.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }
}

/// `2031-05-17T00:00:00Z`: a certificate date as RFC 3339 (UTC, whole seconds), for
/// diagnostics and `/config_dump`. Written by hand: a civil date from days since the epoch
/// (Howard Hinnant's algorithm) is all it takes, and no date crate is a dependency.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    };
    let (year, month, day, rem) = civil(secs);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `(year, month, day, seconds into the day)` of seconds since the epoch (UTC).
pub fn civil(secs: i64) -> (i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem)
}

/// A certificate's DNS name against a wanted name: equal ignoring case, or `*.rest` covering
/// exactly one label in front of `rest`.
fn dns_matches(cert_name: &str, want: &str) -> bool {
    if cert_name.eq_ignore_ascii_case(want) {
        return true;
    }
    match (cert_name.strip_prefix("*."), want.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && suffix.eq_ignore_ascii_case(rest),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(names: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for n in names {
            params.subject_alt_names.push(if let Ok(ip) = n.parse::<IpAddr>() {
                rcgen::SanType::IpAddress(ip)
            } else if n.contains("://") {
                rcgen::SanType::URI(rcgen::Ia5String::try_from(*n).unwrap())
            } else {
                rcgen::SanType::DnsName(rcgen::Ia5String::try_from(*n).unwrap())
            });
        }
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_expiry_and_every_kind_of_name() {
        let der =
            cert_with(&["api.example.com", "*.internal.example.com", "spiffe://td/ns/a/sa/b", "10.0.0.7"]);
        let info = CertInfo::parse(&der).unwrap();
        assert_eq!(info.not_after_unix(), 1_936_742_400, "2031-05-17T00:00:00Z");
        assert!(info.names("API.example.com"));
        assert!(info.names("db.internal.example.com"));
        assert!(!info.names("a.b.internal.example.com"), "a wildcard covers one label");
        assert!(!info.names("internal.example.com"));
        assert!(info.names("spiffe://td/ns/a/sa/b"));
        assert!(!info.names("spiffe://td/ns/a/sa/c"));
        assert!(info.names("10.0.0.7"));
        assert!(!info.names("10.0.0.8"));
        assert_eq!(info.spiffe_id(), Some("spiffe://td/ns/a/sa/b"));
    }

    #[test]
    fn dates_are_written_as_rfc_3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(1_936_742_400)),
            "2031-05-17T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3_723)),
            "2000-02-29T01:02:03Z"
        );
        assert_eq!(rfc3339(UNIX_EPOCH - std::time::Duration::from_secs(86_400)), "1969-12-31T00:00:00Z");
    }

    #[test]
    fn files_that_hold_the_wrong_thing_are_named_with_the_problem() {
        let dir = std::env::temp_dir().join(format!("tripline-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = read_certificates(&missing).unwrap_err();
        assert!(e.to_string().starts_with(&format!("{}: cannot read it", missing.display())), "{e}");

        let key_only = dir.join("key.pem");
        std::fs::write(&key_only, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let e = read_certificates(&key_only).unwrap_err();
        assert!(e.problem.contains("holds no certificate"), "{e}");
        assert!(read_private_key(&key_only).is_ok());

        let cert_only = dir.join("cert.pem");
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        std::fs::write(&cert_only, cert.pem()).unwrap();
        assert_eq!(read_certificates(&cert_only).unwrap().len(), 1);
        let e = read_private_key(&cert_only).unwrap_err();
        assert!(e.problem.contains("holds no private key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
