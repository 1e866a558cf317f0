//! Durable storage of the registry: one JSON snapshot file, replaced
//! atomically on every write.
//!
//! A write goes to `state.json.tmp`, is fsynced, renamed over `state.json`,
//! and the directory is fsynced, so after a crash the file holds either the
//! old or the new state, never a mix. A JSON file (rather than an embedded
//! database) keeps the state human-readable and diffable, and the registry is
//! small enough (thousands of resources) that rewriting it whole is cheap.

use crate::error::Error;
use sane_xds_proto::{AuthorizationPolicy, DestinationPolicy, Endpoint, Route, Service, Telemetry};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the file format, bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// Where the registry state lives on disk.
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
    tmp: PathBuf,
}

/// The registry as written to disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredState {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// The registry revision when this was written.
    pub revision: u64,
    /// Services.
    #[serde(default)]
    pub services: Vec<Stored<Service>>,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<Stored<Endpoint>>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Stored<Route>>,
    /// Destination policies.
    #[serde(default)]
    pub policies: Vec<Stored<DestinationPolicy>>,
    /// Authorization policies.
    #[serde(default)]
    pub authorization_policies: Vec<Stored<AuthorizationPolicy>>,
    /// Telemetry settings.
    #[serde(default)]
    pub telemetry: Vec<Stored<Telemetry>>,
}

/// One stored resource and its bookkeeping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored<T> {
    /// Who wrote it: `api` or `file:<path>`.
    pub origin: String,
    /// Lease length in milliseconds for endpoints registered with a TTL.
    /// After a restart the lease starts over with its full length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The resource.
    pub resource: T,
}

// === impl Store ===

impl Store {
    /// A store keeping `state.json` in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Store, Error> {
        let path = dir.join("state.json");
        fs::create_dir_all(dir).map_err(|source| Error::StateWrite {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Store {
            tmp: dir.join("state.json.tmp"),
            path,
        })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state file; `None` if there is none yet.
    pub fn load(&self) -> Result<Option<StoredState>, Error> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::StateRead {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::StateParse {
                path: self.path.clone(),
                source,
            })
    }

    /// Replaces the state file atomically with `state`.
    pub fn save(&self, state: &StoredState) -> Result<(), Error> {
        // Serializing plain data into a Vec cannot fail.
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        let tmp_err = |source| Error::StateWrite {
            path: self.tmp.clone(),
            source,
        };
        let mut f = fs::File::create(&self.tmp).map_err(tmp_err)?;
        f.write_all(&bytes).map_err(tmp_err)?;
        f.sync_all().map_err(tmp_err)?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(|source| Error::StateWrite {
            path: self.path.clone(),
            source,
        })?;
        // Persist the rename itself.
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_replaces_and_load_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let mut state = StoredState {
            format: FORMAT_VERSION,
            revision: 3,
            ..Default::default()
        };
        state.services.push(Stored {
            origin: "api".into(),
            ttl_ms: None,
            resource: Service {
                name: "echo".into(),
                ..Default::default()
            },
        });
        store.save(&state).unwrap();
        state.revision = 4;
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state));
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.path(), b"{\"format\": 1, \"revision\": ").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
