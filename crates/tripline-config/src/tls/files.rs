//! Resolving and reading, at each load, the files the decoded TLS settings name: PEM files
//! relative to the config file that names them, `credentialName` directories of
//! `--credentials-dir`, and the workload's identity (`--identity-dir`) for `ISTIO_MUTUAL`,
//! giving [`TlsServerPlan`] and [`UpstreamTlsPlan`] or [`Finding`]s.
//!
//! Separate from `decode.rs` because the files change without the document changing: they
//! are read at every load (a missing or malformed file is then an error at the field that
//! names it), while the decoded settings may be kept from the last one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{server_mode_name, ClientMode, ClientTls, Termination};
use crate::certs::{self, CertInfo};
use crate::diag::Severity;
use crate::model::At;
use crate::plan::{DownstreamTlsMode, TlsServerPlan, UpstreamTlsPlan};
use crate::yaml::Pos;

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
