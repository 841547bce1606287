//! An X.509 SVID written to a temporary directory, as the tests of `--identity-dir` need one.

#![allow(dead_code)] // each test uses what it needs

use std::path::PathBuf;

/// An SVID directory in SPIRE's helper's layout, removed when dropped.
pub struct Svid(pub PathBuf);

impl Svid {
    pub fn new(tag: &str, spiffe_id: &str) -> Svid {
        Svid::written(tag, Some(spiffe_id), ("svid.pem", "svid_key.pem", "svid_bundle.pem"))
    }

    /// `uri`: the leaf's URI SAN, if any; `names`: the chain, key and bundle files.
    pub fn written(tag: &str, uri: Option<&str>, names: (&str, &str, &str)) -> Svid {
        let dir = std::env::temp_dir().join(format!("tripline-svid-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(uri) = uri {
            leaf.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(names.0), leaf.pem()).unwrap();
        std::fs::write(dir.join(names.1), key.serialize_pem()).unwrap();
        std::fs::write(dir.join(names.2), ca.pem()).unwrap();
        Svid(dir)
    }
}

impl Drop for Svid {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
