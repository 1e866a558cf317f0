//! Helpers shared by the integration tests: a CA, certified workloads and a
//! scratch directory that cleans up after itself.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sane_certs::{
    CaOptions, CertificateAuthority, CertifiedIdentity, SpiffeId, TrustDomain, WorkloadKey,
};

pub const TRUST_DOMAIN: &str = "mesh.test";

pub fn td() -> TrustDomain {
    TRUST_DOMAIN.parse().unwrap()
}

/// `spiffe://mesh.test/ns/<ns>/sa/<sa>`.
pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(td(), ns, sa).unwrap()
}

pub fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(&td(), CaOptions::default()).unwrap()
}

/// CAs for each of `trust_domains`, all signing with the key of one operator
/// root that names no trust domain (a company root shared by meshes).
pub fn shared_root_cas(trust_domains: &[&str]) -> Vec<CertificateAuthority> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Shared Root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = params.self_signed(&key).unwrap();
    trust_domains
        .iter()
        .map(|td| {
            CertificateAuthority::from_pem(
                &td.parse().unwrap(),
                &root.pem(),
                &key.serialize_pem(),
                CaOptions::default(),
            )
            .unwrap()
        })
        .collect()
}

/// The whole workload flow: key, CSR, signature, local pairing.
pub fn certify(ca: &CertificateAuthority, identity: &SpiffeId) -> CertifiedIdentity {
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_pem(identity).unwrap();
    let issued = ca.sign_csr(csr.as_bytes(), identity, None).unwrap();
    CertifiedIdentity::new(key, &issued.chain_pem).unwrap()
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let unique = format!(
            "sane-certs-{name}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
