//! Durable storage of the registry: a snapshot plus a write-ahead log, in a
//! data directory that one control plane owns.
//!
//! The directory holds:
//! - `lock` — `flock`ed by the running control plane, holding its pid
//!   ([`lock`]): a second control plane on the directory refuses to start.
//! - `state.json` — the snapshot: every resource at one revision, as JSON
//!   ([`StoredState`], format [`FORMAT_VERSION`]), human-readable and
//!   diffable.
//! - `wal-<generation>.log` — the write-ahead log ([`log`]): one record per
//!   registry write, holding only what the write changed. A write is appended
//!   and fsynced (concurrent writes share one fsync) before the registry
//!   publishes it, so its cost is the size of the change, not the registry's.
//!
//! When the log outgrows the snapshot (and [`DEFAULT_COMPACT_MIN_BYTES`]),
//! the writer moves on to the next generation and a background thread writes
//! a new snapshot — to a temporary file of its own, fsynced, renamed over
//! `state.json`, directory fsynced — then deletes the older log files.
//!
//! Recovery ([`Store::recover`]) reads the snapshot, then every log record
//! of a later revision, in order. A record cut short by a crash at the end
//! of a log is dropped (it was never acknowledged); damage anywhere else, a
//! skipped revision, or a format version this build does not know refuses
//! the start, naming the file, and nothing is overwritten. Once recovered,
//! the state is written as a new snapshot and the old logs are removed.

pub mod etcd;
pub mod etcd_shared;
mod lock;
mod log;

pub use self::lock::LOCK_FILE;
pub use self::log::{Ticket, LOG_VERSION};

use self::lock::DirLock;
use self::log::Log;
use crate::error::Error;
use crate::resource::Kind;
use sane_xds_proto::{
    AuthorizationPolicy, DestinationPolicy, Endpoint, Gateway, PeerAuthentication, Route, Service,
    Telemetry,
};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Version of the snapshot format, bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// File name of the snapshot inside the data directory.
pub const SNAPSHOT_FILE: &str = "state.json";

/// The log is compacted into a new snapshot once it holds at least this
/// many bytes and at least as many as the last snapshot: 4 MiB.
pub const DEFAULT_COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// Where the registry state lives on disk. Holds the directory's lock until
/// dropped; dropping waits for a running compaction.
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    compaction: Mutex<Option<JoinHandle<()>>>,
}

/// What the compaction thread needs too.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    snapshot: PathBuf,
    log: Log,
    /// Gives every temporary snapshot file its own name.
    next_tmp: AtomicU64,
    compact_min_bytes: AtomicU64,
    /// Size of the last snapshot written or read.
    snapshot_bytes: AtomicU64,
    compacting: AtomicBool,
    // Last: released after everything else is done.
    _lock: DirLock,
}

/// What [`Store::recover`] found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The snapshot, if there is one.
    pub snapshot: Option<StoredState>,
    /// Log records of later revisions than the snapshot's, in order, each
    /// exactly one revision after the one before.
    pub records: Vec<LogRecord>,
    /// Log files found (compacted away by [`Store::start`]).
    log_files: Vec<(u64, PathBuf)>,
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
    /// Peer authentications (mutual TLS modes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<Stored<PeerAuthentication>>,
    /// Ingress gateway configurations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Stored<Gateway>>,
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
    /// Its resource version: the revision that last changed it. Omitted by
    /// older writers (then the revision of the snapshot or record holding
    /// it) and in etcd (where it is the key's `mod_revision`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    /// The resource.
    pub resource: T,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One resource of any kind, as logged: `{"service": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StoredResource {
    /// A service.
    Service(Stored<Service>),
    /// An endpoint.
    Endpoint(Stored<Endpoint>),
    /// A route.
    Route(Stored<Route>),
    /// A destination policy.
    Policy(Stored<DestinationPolicy>),
    /// An authorization policy.
    AuthorizationPolicy(Stored<AuthorizationPolicy>),
    /// Telemetry settings.
    Telemetry(Stored<Telemetry>),
    /// A peer authentication.
    PeerAuthentication(Stored<PeerAuthentication>),
    /// An ingress gateway configuration.
    Gateway(Stored<Gateway>),
}

/// One change of a logged write.
// Ops live for one write; boxing the resource would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LogOp {
    /// The resource's value after the write.
    Put(StoredResource),
    /// The resource was removed.
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its key.
        key: String,
    },
}

/// One registry write, as logged: the revision it made and what changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRecord {
    /// The registry revision after the write.
    pub revision: u64,
    /// Every resource it created, changed or removed.
    pub ops: Vec<LogOp>,
}

/// Only the version of a snapshot, read before the rest, so a file of
/// another version is refused as such rather than as a parse error.
#[derive(Deserialize)]
struct FormatProbe {
    format: serde_json::Value,
}

// === impl StoredResource ===

impl StoredResource {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            StoredResource::Service(_) => Kind::Service,
            StoredResource::Endpoint(_) => Kind::Endpoint,
            StoredResource::Route(_) => Kind::Route,
            StoredResource::Policy(_) => Kind::Policy,
            StoredResource::AuthorizationPolicy(_) => Kind::Authz,
            StoredResource::Telemetry(_) => Kind::Telemetry,
            StoredResource::PeerAuthentication(_) => Kind::PeerAuthn,
            StoredResource::Gateway(_) => Kind::Gateway,
        }
    }
}

// === impl StoredState ===

impl StoredState {
    /// Every resource, by kind.
    pub fn into_resources(self) -> impl Iterator<Item = StoredResource> {
        let StoredState {
            services,
            endpoints,
            routes,
            policies,
            authorization_policies,
            telemetry,
            peer_authentications,
            gateways,
            ..
        } = self;
        (services.into_iter().map(StoredResource::Service))
            .chain(endpoints.into_iter().map(StoredResource::Endpoint))
            .chain(routes.into_iter().map(StoredResource::Route))
            .chain(policies.into_iter().map(StoredResource::Policy))
            .chain(
                authorization_policies
                    .into_iter()
                    .map(StoredResource::AuthorizationPolicy),
            )
            .chain(telemetry.into_iter().map(StoredResource::Telemetry))
            .chain(
                peer_authentications
                    .into_iter()
                    .map(StoredResource::PeerAuthentication),
            )
            .chain(gateways.into_iter().map(StoredResource::Gateway))
    }

    /// Adds a resource to the list of its kind.
    pub fn push(&mut self, r: StoredResource) {
        match r {
            StoredResource::Service(s) => self.services.push(s),
            StoredResource::Endpoint(s) => self.endpoints.push(s),
            StoredResource::Route(s) => self.routes.push(s),
            StoredResource::Policy(s) => self.policies.push(s),
            StoredResource::AuthorizationPolicy(s) => self.authorization_policies.push(s),
            StoredResource::Telemetry(s) => self.telemetry.push(s),
            StoredResource::PeerAuthentication(s) => self.peer_authentications.push(s),
            StoredResource::Gateway(s) => self.gateways.push(s),
        }
    }
}

// === impl Store ===

impl Store {
    /// Locks `dir` (created if missing) for this process and clears
    /// temporary files a crash left behind. Fails, naming the holder's pid,
    /// if another control plane has it. Reads nothing yet: see
    /// [`Store::recover`].
    pub fn open(dir: &Path) -> Result<Store, Error> {
        fs::create_dir_all(dir).map_err(|source| Error::StateWrite {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = DirLock::acquire(dir)?;
        // Only the lock holder writes here, so any temporary file is stale.
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".state.json.") || name == "state.json.tmp" {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Store {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                snapshot: dir.join(SNAPSHOT_FILE),
                log: Log::new(dir),
                next_tmp: AtomicU64::new(0),
                compact_min_bytes: AtomicU64::new(DEFAULT_COMPACT_MIN_BYTES),
                snapshot_bytes: AtomicU64::new(0),
                compacting: AtomicBool::new(false),
                _lock: lock,
            }),
            compaction: Mutex::new(None),
        })
    }

    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.shared.snapshot
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Compacts once the log holds `bytes` (and as many as the snapshot);
    /// default [`DEFAULT_COMPACT_MIN_BYTES`].
    pub fn set_compact_min_bytes(&self, bytes: u64) {
        self.shared
            .compact_min_bytes
            .store(bytes, Ordering::Relaxed);
    }

    /// Reads the snapshot file; `None` if there is none yet. A file of
    /// another format version is refused, naming file and version.
    pub fn load(&self) -> Result<Option<StoredState>, Error> {
        self.shared.load()
    }

    /// Reads the snapshot and the log records after it. A torn last record
    /// is cut off the file; see the module docs for what is refused.
    pub fn recover(&self) -> Result<Recovered, Error> {
        let snapshot = self.load()?;
        let mut revision = snapshot.as_ref().map_or(0, |s| s.revision);
        let mut log_files = Vec::new();
        let entries = fs::read_dir(self.dir()).map_err(|source| Error::StateRead {
            path: self.dir().to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(generation) = Log::generation_of(&name.to_string_lossy()) {
                log_files.push((generation, entry.path()));
            }
        }
        log_files.sort();
        let mut records = Vec::new();
        for (_, path) in &log_files {
            let read = log::read(path)?;
            if read.torn > 0 {
                tracing::warn!(path = %path.display(), bytes = read.torn,
                    "dropping a log record cut short by a crash (it was never acknowledged)");
            }
            for record in read.records {
                if record.revision <= revision {
                    // Already in the snapshot (a crash between writing it
                    // and deleting the log).
                    continue;
                }
                if record.revision != revision + 1 {
                    return Err(Error::StateCorrupt {
                        path: path.clone(),
                        offset: 0,
                        reason: format!("revision {} follows revision {revision}", record.revision),
                    });
                }
                revision = record.revision;
                records.push(record);
            }
        }
        Ok(Recovered {
            snapshot,
            records,
            log_files,
        })
    }

    /// Starts logging after [`Store::recover`]: if any log was found, first
    /// writes `state()` (the recovered registry) as the new snapshot and
    /// removes those logs.
    pub fn start(
        &self,
        recovered: &Recovered,
        state: impl FnOnce() -> StoredState,
    ) -> Result<(), Error> {
        let last = recovered.log_files.last().map_or(0, |(g, _)| *g);
        if !recovered.log_files.is_empty() {
            self.shared.write_snapshot(&state())?;
            for (_, path) in &recovered.log_files {
                let _ = fs::remove_file(path);
            }
        }
        self.shared.log.start(last + 1)
    }

    /// Appends one write to the log; durable once [`Store::sync`] of the
    /// ticket returned.
    pub fn append(&self, record: &LogRecord) -> Result<Ticket, Error> {
        self.shared.log.append(record)
    }

    /// Waits until every write up to `ticket` is on disk (sharing one fsync
    /// with concurrent callers).
    pub fn sync(&self, ticket: Ticket) -> Result<(), Error> {
        self.shared.log.sync(ticket)
    }

    /// The last ticket on disk.
    pub fn synced(&self) -> Ticket {
        self.shared.log.synced()
    }

    /// True when the log has outgrown the snapshot and no compaction runs.
    pub fn compaction_due(&self) -> bool {
        let s = &self.shared;
        let min = s.compact_min_bytes.load(Ordering::Relaxed);
        let threshold = min.max(s.snapshot_bytes.load(Ordering::Relaxed));
        !s.compacting.load(Ordering::Acquire) && s.log.len() >= threshold
    }

    /// Compacts: makes the log durable and continues it in a new file (the
    /// caller keeps appends out meanwhile, and `state` must then be the
    /// registry with every logged write); then, on a background thread,
    /// writes `state()` as the snapshot and deletes the older logs. A failed
    /// snapshot only leaves the logs in place, to be compacted later.
    pub fn compact(
        &self,
        state: impl FnOnce() -> StoredState + Send + 'static,
    ) -> Result<(), Error> {
        let s = &self.shared;
        if s.compacting.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let old_generation = match s.log.rotate() {
            Ok(g) => g,
            Err(e) => {
                s.compacting.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("state-compaction".into())
            .spawn(move || {
                match shared.write_snapshot(&state()) {
                    Ok(()) => shared.remove_logs_through(old_generation),
                    Err(error) => {
                        tracing::warn!(%error, "compacting the state log failed; keeping the log")
                    }
                }
                shared.compacting.store(false, Ordering::Release);
            });
        let mut slot = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
        match thread {
            Ok(handle) => {
                if let Some(previous) = slot.replace(handle) {
                    // It had finished: `compacting` was false.
                    let _ = previous.join();
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start the compaction thread");
                s.compacting.store(false, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Waits for a running compaction to finish.
    pub fn wait_for_compaction(&self) {
        let handle = self
            .compaction
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Replaces the snapshot atomically with `state` (tests, tools; the
    /// registry writes through the log).
    pub fn save(&self, state: &StoredState) -> Result<(), Error> {
        self.shared.write_snapshot(state)
    }

    /// Test hook: makes every later append fail, as a full disk would.
    #[cfg(test)]
    pub(crate) fn break_log_for_test(&self) {
        self.shared.log.break_for_test();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The compaction writes into the directory: it must end before the
        // lock is released to a next owner.
        self.wait_for_compaction();
    }
}

// === impl Shared ===

impl Shared {
    fn load(&self) -> Result<Option<StoredState>, Error> {
        let path = &self.snapshot;
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::StateRead {
                    path: path.clone(),
                    source,
                })
            }
        };
        let parse_err = |source| Error::StateParse {
            path: path.clone(),
            source,
        };
        let probe: FormatProbe = serde_json::from_slice(&bytes).map_err(parse_err)?;
        if probe.format != FORMAT_VERSION {
            return Err(Error::StateFormat {
                path: path.clone(),
                found: probe.format.to_string(),
                supported: FORMAT_VERSION,
            });
        }
        let state = serde_json::from_slice(&bytes).map_err(parse_err)?;
        self.snapshot_bytes
            .store(bytes.len() as u64, Ordering::Relaxed);
        Ok(Some(state))
    }

    /// Writes `state` to a temporary file of its own, fsyncs it, renames it
    /// over the snapshot and fsyncs the directory: after a crash the
    /// snapshot is either the old or the new one, never a mix.
    fn write_snapshot(&self, state: &StoredState) -> Result<(), Error> {
        // Serializing plain data into a Vec cannot fail.
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{SNAPSHOT_FILE}.{}-{n}.tmp", std::process::id()));
        let tmp_err = |source| Error::StateWrite {
            path: tmp.clone(),
            source,
        };
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(tmp_err)?;
            f.write_all(&bytes).map_err(tmp_err)?;
            f.sync_all().map_err(tmp_err)?;
            fs::rename(&tmp, &self.snapshot).map_err(|source| Error::StateWrite {
                path: self.snapshot.clone(),
                source,
            })
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        sync_dir(&self.dir).map_err(|source| Error::StateWrite {
            path: self.dir.clone(),
            source,
        })?;
        self.snapshot_bytes
            .store(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn remove_logs_through(&self, generation: u64) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if Log::generation_of(&name.to_string_lossy()).is_some_and(|g| g <= generation) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Persists renames and new files in `dir`.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
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
            version: 0,
            resource: Service {
                name: "echo".into(),
                ..Default::default()
            },
        });
        store.save(&state).unwrap();
        state.revision = 4;
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state));
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn stale_temporary_files_are_cleared_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("state.json.tmp"), b"{").unwrap();
        fs::write(dir.path().join(".state.json.1-0.tmp"), b"{").unwrap();
        let _store = Store::open(dir.path()).unwrap();
        assert!(!dir.path().join("state.json.tmp").exists());
        assert!(!dir.path().join(".state.json.1-0.tmp").exists());
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
