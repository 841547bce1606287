//! The workload's own identity: an X.509 SVID (SPIFFE Verifiable Identity Document) on disk,
//! for `ISTIO_MUTUAL` on both sides of a connection.
//!
//! `--identity-dir DIR` names a directory that one of the usual agents keeps up to date:
//!
//! | writer | certificate chain | key | trust bundle |
//! |---|---|---|---|
//! | SPIRE's `spiffe-helper` | `svid.pem` | `svid_key.pem` | `svid_bundle.pem` |
//! | cert-manager's csi-driver-spiffe | `tls.crt` | `tls.key` | `ca.crt` |
//! | Istio's file-mounted certificates | `cert-chain.pem` | `key.pem` | `root-cert.pem` |
//!
//! The leaf must carry a SPIFFE ID (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`): its trust
//! domain is what a peer without `subjectAltNames` must belong to. The files are read at every
//! load (so a bad directory is an error at the `ISTIO_MUTUAL` that needs it) and, once in force,
//! re-read by the proxy when they change, as every certificate file is: rotation is the agent
//! rewriting them.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::certs::{self, CertInfo};

/// The file names each writer uses: (chain, key, bundle).
const LAYOUTS: [(&str, &str, &str); 3] = [
    ("svid.pem", "svid_key.pem", "svid_bundle.pem"),
    ("tls.crt", "tls.key", "ca.crt"),
    ("cert-chain.pem", "key.pem", "root-cert.pem"),
];

/// A workload identity found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadIdentity {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// The trust bundle: the CAs of the mesh, which peers' certificates must chain to.
    pub bundle: PathBuf,
    /// `spiffe://cluster.local/ns/shop/sa/web`
    pub spiffe_id: String,
    /// `cluster.local`
    pub trust_domain: String,
}

/// Finds the SVID in `dir` and reads it. The error says what is missing or wrong, and names
/// the layouts looked for.
pub fn find(dir: &Path) -> Result<WorkloadIdentity, String> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Some((cert, key, bundle)) = LAYOUTS.iter().find(|(c, _, _)| dir.join(c).is_file()) else {
        let names: Vec<String> = LAYOUTS.iter().map(|(c, k, b)| format!("{c}, {k}, {b}")).collect();
        return Err(format!(
            "--identity-dir {}: no workload certificate there (looked for {})",
            dir.display(),
            names.join("; or ")
        ));
    };
    let (certificate, private_key, bundle) = (dir.join(cert), dir.join(key), dir.join(bundle));
    let chain = certs::read_certificates(&certificate).map_err(|e| e.to_string())?;
    certs::read_private_key(&private_key).map_err(|e| e.to_string())?;
    certs::read_certificates(&bundle).map_err(|e| e.to_string())?;
    let leaf = CertInfo::parse(&chain[0]).map_err(|e| format!("{}: {e}", certificate.display()))?;
    let spiffe_id = leaf.spiffe_id().map(str::to_owned).ok_or_else(|| {
        format!(
            "{}: the certificate carries no SPIFFE ID (a URI subject alternative name spiffe://<trust domain>/...): it is not a workload identity",
            certificate.display()
        )
    })?;
    let trust_domain = trust_domain(&spiffe_id)
        .ok_or_else(|| format!("{}: `{spiffe_id}` has no trust domain", certificate.display()))?
        .to_string();
    Ok(WorkloadIdentity { certificate, private_key, bundle, spiffe_id, trust_domain })
}

/// The trust domain of a SPIFFE ID: `cluster.local` of `spiffe://cluster.local/ns/a/sa/b`.
pub fn trust_domain(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    (!td.is_empty()).then_some(td)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Finding an SVID in each layout: tests/identity.rs.
    #[test]
    fn trust_domains() {
        assert_eq!(trust_domain("spiffe://cluster.local/ns/a/sa/b"), Some("cluster.local"));
        assert_eq!(trust_domain("spiffe://td"), Some("td"));
        assert_eq!(trust_domain("spiffe:///ns/a"), None);
        assert_eq!(trust_domain("https://td/ns/a"), None);
    }
}
