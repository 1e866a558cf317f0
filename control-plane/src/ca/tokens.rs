//! Workload bootstrap tokens: what a proxy shows the CA to prove which
//! workload it is.
//!
//! A token is 32 random bytes (hex) handed to the workload once, at issue.
//! Only its SHA-256 is stored, next to the namespace and service account it
//! stands for, in `workload-tokens.json` (mode 0600, written atomically). A
//! leaked store therefore cannot be used to get certificates.

use super::error::CaError as Error;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the token store inside the data directory.
pub const TOKENS_FILE: &str = "workload-tokens.json";

/// The workload a token stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    /// Namespace of the workload.
    pub namespace: String,
    /// Service account of the workload.
    pub service_account: String,
}

/// Issued tokens, by hash.
#[derive(Debug, Default)]
pub struct WorkloadTokens {
    path: Option<PathBuf>,
    grants: Mutex<BTreeMap<String, TokenGrant>>,
}

// === impl WorkloadTokens ===

impl WorkloadTokens {
    /// Loads the store from `dir` (created empty if missing), or keeps it in
    /// memory when `dir` is `None`.
    pub fn load(dir: Option<&Path>) -> Result<Self, Error> {
        let Some(dir) = dir else {
            return Ok(Self::default());
        };
        let path = dir.join(TOKENS_FILE);
        let grants = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::TokenStore {
                path: path.display().to_string(),
                reason: format!("invalid token store: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(Error::TokenStore {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        Ok(Self {
            path: Some(path),
            grants: Mutex::new(grants),
        })
    }

    /// Issues a new token for `grant` and returns it; only its hash is kept.
    pub fn issue(&self, grant: TokenGrant) -> Result<String, Error> {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut grants = self.grants.lock().expect("not poisoned");
        let mut next = grants.clone();
        next.insert(hash(&token), grant);
        self.persist(&next)?;
        *grants = next;
        Ok(token)
    }

    /// The workload `token` stands for, if it was issued here.
    pub fn authenticate(&self, token: &str) -> Option<TokenGrant> {
        self.grants
            .lock()
            .expect("not poisoned")
            .get(&hash(token.trim()))
            .cloned()
    }

    /// Number of issued tokens.
    pub fn len(&self) -> usize {
        self.grants.lock().expect("not poisoned").len()
    }

    /// True if no token was issued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn persist(&self, grants: &BTreeMap<String, TokenGrant>) -> Result<(), Error> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |e: std::io::Error| Error::TokenStore {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(grants).expect("serializable");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(())
    }
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn issued_tokens_authenticate_and_survive_reload_as_hashes_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkloadTokens::load(Some(dir.path())).unwrap();
        let grant = TokenGrant {
            namespace: "prod".into(),
            service_account: "web".into(),
        };
        let token = store.issue(grant.clone()).unwrap();
        assert_eq!(store.authenticate(&token), Some(grant.clone()));
        assert_eq!(store.authenticate("nope"), None);
        let file = dir.path().join(TOKENS_FILE);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&token), "the token itself is never stored");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let reloaded = WorkloadTokens::load(Some(dir.path())).unwrap();
        assert_eq!(reloaded.authenticate(&token), Some(grant));
    }
}
