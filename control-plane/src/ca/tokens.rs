//! Workload bootstrap tokens: what a proxy shows the CA to prove which
//! workload it is.
//!
//! A token is 32 random bytes (hex) handed to the workload once, at issue.
//! Only its SHA-256 is stored, next to the namespace and service account it
//! stands for, in `workload-tokens.json` (mode 0600, written atomically). A
//! leaked store therefore cannot be used to get certificates.
//!
//! A token is named by its id: the first [`TOKEN_ID_LEN`] hex digits of its
//! hash, safe to show (it cannot be turned back into the token). Tokens are
//! listed and revoked by id; a revoked token is refused by the next CA
//! request and the next xDS stream, and open xDS streams that were opened
//! with it are ended ([`WorkloadTokens::revocations`]).
//!
//! Replicated control planes share their tokens through a
//! [`SharedTokenStore`] (etcd: `store::etcd::share_tokens`): issuing and
//! revoking write there first, and every replica applies what the store
//! reports ([`WorkloadTokens::apply_shared`]), so a token issued by one
//! replica is accepted, and a revocation enforced, by all.

use super::error::CaError as Error;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// File name of the token store inside the data directory.
pub const TOKENS_FILE: &str = "workload-tokens.json";

/// Hex digits of a token's hash that make its id (64 bits).
pub const TOKEN_ID_LEN: usize = 16;

/// The workload a token stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    /// Namespace of the workload.
    pub namespace: String,
    /// Service account of the workload.
    pub service_account: String,
}

/// What the store keeps per token (keyed by the token's hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TokenRecord {
    #[serde(flatten)]
    grant: TokenGrant,
    /// Unix seconds; 0 for tokens issued before it was recorded.
    #[serde(default)]
    created_at: u64,
}

/// One issued token as listed: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// The token's id ([`token_id`]).
    pub id: String,
    /// The workload it stands for.
    #[serde(flatten)]
    pub grant: TokenGrant,
    /// When it was issued (unix seconds; 0 if unknown).
    pub created_at: u64,
}

/// Issued tokens, by hash.
#[derive(Debug)]
pub struct WorkloadTokens {
    path: Option<PathBuf>,
    grants: Mutex<BTreeMap<String, TokenRecord>>,
    /// Bumped at every revocation, so open streams can check their token.
    revoked: watch::Sender<u64>,
    /// The store replicas share, when there is one.
    shared: std::sync::OnceLock<Box<dyn SharedTokenStore>>,
}

/// A store of token records shared by replicated control planes (hash →
/// JSON record, never the token itself).
pub trait SharedTokenStore: Send + Sync + std::fmt::Debug {
    /// Where it is, for messages.
    fn name(&self) -> String;
    /// Records one token (before it is handed out).
    fn put(&self, hash: &str, record: Vec<u8>) -> Result<(), String>;
    /// Removes one token (before the revocation is answered).
    fn delete(&self, hash: &str) -> Result<(), String>;
}

/// The id of `token`: a prefix of its SHA-256, as [`TokenInfo::id`].
pub fn token_id(token: &str) -> String {
    hash(token.trim())[..TOKEN_ID_LEN].to_string()
}

impl Default for WorkloadTokens {
    fn default() -> Self {
        Self {
            path: None,
            grants: Mutex::default(),
            revoked: watch::Sender::new(0),
            shared: std::sync::OnceLock::new(),
        }
    }
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
            ..Self::default()
        })
    }

    /// Issues a new token for `grant` and returns it; only its hash is kept.
    pub fn issue(&self, grant: TokenGrant) -> Result<String, Error> {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = TokenRecord { grant, created_at };
        if let Some(shared) = self.shared.get() {
            let bytes = serde_json::to_vec(&record).expect("serializable");
            shared
                .put(&hash(&token), bytes)
                .map_err(|reason| Error::TokenStore {
                    path: shared.name(),
                    reason,
                })?;
        }
        let mut grants = self.grants.lock().expect("not poisoned");
        let mut next = grants.clone();
        next.insert(hash(&token), record);
        self.persist(&next)?;
        *grants = next;
        Ok(token)
    }

    /// The workload `token` stands for, if it was issued here (and not
    /// revoked since).
    pub fn authenticate(&self, token: &str) -> Option<TokenGrant> {
        self.grants
            .lock()
            .expect("not poisoned")
            .get(&hash(token.trim()))
            .map(|r| r.grant.clone())
    }

    /// Every issued token, by id.
    pub fn list(&self) -> Vec<TokenInfo> {
        self.grants
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(hash, r)| TokenInfo {
                id: hash[..TOKEN_ID_LEN].to_string(),
                grant: r.grant.clone(),
                created_at: r.created_at,
            })
            .collect()
    }

    /// Revokes the token with id `id` (persisted before it takes effect):
    /// what it stood for, or `None` if no token has that id. Several
    /// tokens sharing the id (a 1 in 2^64 chance) are all revoked.
    pub fn revoke(&self, id: &str) -> Result<Option<TokenGrant>, Error> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() != TOKEN_ID_LEN {
            return Ok(None);
        }
        let mut grants = self.grants.lock().expect("not poisoned");
        let mut next = grants.clone();
        let mut revoked = None;
        next.retain(|hash, r| {
            let hit = hash.starts_with(&id);
            if hit {
                revoked = Some(r.grant.clone());
            }
            !hit
        });
        if revoked.is_none() {
            return Ok(None);
        }
        if let Some(shared) = self.shared.get() {
            for h in grants.keys().filter(|h| h.starts_with(&id)) {
                shared.delete(h).map_err(|reason| Error::TokenStore {
                    path: shared.name(),
                    reason,
                })?;
            }
        }
        self.persist(&next)?;
        *grants = next;
        drop(grants);
        self.revoked.send_modify(|n| *n += 1);
        Ok(revoked)
    }

    /// Shares tokens with other replicas through `shared` from now on.
    pub fn set_shared(&self, shared: Box<dyn SharedTokenStore>) {
        let _ = self.shared.set(shared);
    }

    /// Every token as `(hash, JSON record)`: what a shared store is seeded
    /// with.
    pub fn records(&self) -> Vec<(String, Vec<u8>)> {
        self.grants
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(h, r)| (h.clone(), serde_json::to_vec(r).expect("serializable")))
            .collect()
    }

    /// Applies what the shared store reports: `Some(record)` issued (by any
    /// replica), `None` revoked. A record that does not parse is refused.
    pub fn apply_shared(&self, hash: &str, record: Option<&[u8]>) -> Result<(), Error> {
        let mut grants = self.grants.lock().expect("not poisoned");
        let mut next = grants.clone();
        let removed = match record {
            Some(bytes) => {
                let r: TokenRecord =
                    serde_json::from_slice(bytes).map_err(|e| Error::TokenStore {
                        path: self.shared.get().map_or_else(String::new, |s| s.name()),
                        reason: format!(
                            "token record {}: {e}",
                            &hash[..hash.len().min(TOKEN_ID_LEN)]
                        ),
                    })?;
                if next.get(hash) == Some(&r) {
                    return Ok(());
                }
                next.insert(hash.to_string(), r);
                false
            }
            None => {
                if next.remove(hash).is_none() {
                    return Ok(());
                }
                true
            }
        };
        // The shared store is the truth; the local file is only a cache,
        // so a failure to write it does not keep the token out.
        if let Err(error) = self.persist(&next) {
            tracing::warn!(%error, "cannot cache a shared workload token locally");
        }
        *grants = next;
        drop(grants);
        if removed {
            self.revoked.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Changes at every revocation: a holder of an authenticated token
    /// re-checks it with [`WorkloadTokens::authenticate`] then.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revoked.subscribe()
    }

    /// Number of issued tokens.
    pub fn len(&self) -> usize {
        self.grants.lock().expect("not poisoned").len()
    }

    /// True if no token was issued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn persist(&self, grants: &BTreeMap<String, TokenRecord>) -> Result<(), Error> {
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

    #[test]
    fn tokens_are_listed_by_id_and_revoked_durably() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkloadTokens::load(Some(dir.path())).unwrap();
        let grant = |sa: &str| TokenGrant {
            namespace: "prod".into(),
            service_account: sa.into(),
        };
        let web = store.issue(grant("web")).unwrap();
        let api = store.issue(grant("api")).unwrap();
        let listed = store.list();
        assert_eq!(listed.len(), 2);
        let web_info = listed.iter().find(|t| t.id == token_id(&web)).unwrap();
        assert_eq!(web_info.grant, grant("web"));
        assert!(web_info.created_at > 0);
        let shown = serde_json::to_string(&listed).unwrap();
        assert!(!shown.contains(&web) && !shown.contains(&api), "{shown}");

        let revocations = store.revocations();
        assert_eq!(store.revoke("0123456789abcdef").unwrap(), None);
        assert_eq!(store.revoke("short").unwrap(), None);
        assert!(!revocations.has_changed().unwrap());
        assert_eq!(store.revoke(&token_id(&web)).unwrap(), Some(grant("web")));
        assert!(revocations.has_changed().unwrap());
        assert_eq!(store.authenticate(&web), None);
        assert_eq!(store.authenticate(&api), Some(grant("api")));
        let reloaded = WorkloadTokens::load(Some(dir.path())).unwrap();
        assert_eq!(
            reloaded.authenticate(&web),
            None,
            "revocation survives a restart"
        );
        assert_eq!(reloaded.list().len(), 1);
    }

    #[test]
    fn tokens_from_the_shared_store_authenticate_and_their_removal_revokes() {
        let dir = tempfile::tempdir().unwrap();
        // A data dir that is not there: the local cache cannot be written,
        // the shared token counts all the same.
        let store = WorkloadTokens::load(Some(&dir.path().join("missing"))).unwrap();
        let record = br#"{"namespace": "prod", "service_account": "web", "created_at": 7}"#;
        store.apply_shared(&hash("t1"), Some(record)).unwrap();
        assert_eq!(store.authenticate("t1").unwrap().service_account, "web");
        let revocations = store.revocations();
        store.apply_shared(&hash("t1"), None).unwrap();
        assert_eq!(store.authenticate("t1"), None);
        assert!(revocations.has_changed().unwrap());
        assert!(store.apply_shared(&hash("t2"), Some(b"nope")).is_err());
    }

    #[test]
    fn stores_written_before_created_at_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let old = format!(
            r#"{{"{}": {{"namespace": "prod", "service_account": "web"}}}}"#,
            hash("t0")
        );
        std::fs::write(dir.path().join(TOKENS_FILE), old).unwrap();
        let store = WorkloadTokens::load(Some(dir.path())).unwrap();
        assert_eq!(store.authenticate("t0").unwrap().service_account, "web");
        assert_eq!(store.list()[0].created_at, 0);
    }
}
