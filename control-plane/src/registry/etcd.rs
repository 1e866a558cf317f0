//! The registry on etcd (replicated control planes): writes are validated
//! here, committed as one etcd transaction guarded by the meta key's
//! revision, and published only by the watch, so every replica goes through
//! the same states in etcd's order.
//!
//! A write: take the published state (and the meta revision it reflects),
//! apply and validate the change as with the file store, then commit only
//! if the meta key is still at that revision. If another replica wrote
//! first, wait for the watch to bring its write in and start over (at most
//! [`MAX_ATTEMPTS`] times); an `If-Match` precondition is checked again on
//! the new state, so one of two conflicting writes gets a 409. A committed
//! write returns once the watch has published it here (read your writes), or
//! after [`PUBLISH_WAIT`] — it is committed either way.
//!
//! Endpoint leases are etcd leases: etcd removes the key when no replica
//! renewed it, and every replica's watch sees the removal. The lease sweeper
//! of the file store does not run.

use super::state::{entry_from_stored, to_stored_resource};
use super::{apply_op, Applied, Change, Outcome, Registry, State};
use crate::error::Error;
use crate::resource::Kind;
use crate::store::etcd::{Committed, EtcdOp, EtcdStore, WatchEnd, Watched};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// How often a write is validated again after losing to another replica.
pub(super) const MAX_ATTEMPTS: u32 = 20;

/// How long a committed write waits for the watch to publish it locally.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// The longest wait before the watch reconnects.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(2);

/// The etcd side of a [`Registry`].
#[derive(Debug)]
pub(super) struct EtcdBackend {
    store: Arc<EtcdStore>,
    /// One write at a time per replica: concurrent local writers would only
    /// defeat each other's revision guard.
    writes: Mutex<()>,
    /// Lease of each endpoint key that has one, as the watch reports them.
    leases: Mutex<HashMap<String, i64>>,
    /// Set when the meta key turned to a format this build does not know:
    /// writes are refused from then on (and nothing is overwritten).
    refused: Mutex<Option<Error>>,
}

// === impl Registry ===

impl Registry {
    /// A registry kept in etcd: loads every resource, then follows the store
    /// on the store's runtime until the registry is dropped.
    pub fn open_etcd(store: EtcdStore) -> Result<Arc<Registry>, Error> {
        let snapshot = store.load()?;
        let mut state = State::empty();
        let mut leases = HashMap::new();
        let mut revision = snapshot.meta_revision;
        for r in snapshot.resources {
            let mut e = entry_from_stored(r.stored, Path::new(&store.config().display()))?;
            e.version = u64::try_from(r.mod_revision).unwrap_or(0);
            if r.lease != 0 {
                leases.insert(e.resource.key(), r.lease);
            }
            revision = revision.max(r.mod_revision);
            state.insert(e);
        }
        state.revision = u64::try_from(revision).unwrap_or(0);
        state.meta_revision = snapshot.meta_revision;
        if let Err(errors) = state.validate() {
            tracing::error!(store = %store.config().display(), %errors, "the stored registry does not validate; serving it anyway");
        }
        let store = Arc::new(store);
        let mut registry = Registry::with_state(None, state);
        // Leases are etcd's: no local deadline, no sweeping here.
        registry.lock().leases = Default::default();
        registry.etcd = Some(EtcdBackend {
            store: store.clone(),
            writes: Mutex::new(()),
            leases: Mutex::new(leases),
            refused: Mutex::new(None),
        });
        let registry = Arc::new(registry);
        store.spawn(follow(Arc::downgrade(&registry), snapshot.revision + 1));
        Ok(registry)
    }

    /// The etcd store, if the registry is kept there.
    pub fn etcd(&self) -> Option<&Arc<EtcdStore>> {
        self.etcd.as_ref().map(|e| &e.store)
    }

    pub(super) fn apply_etcd(
        &self,
        etcd: &EtcdBackend,
        changes: Vec<Change>,
    ) -> Result<Applied, Error> {
        let _serial = etcd.writes.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..MAX_ATTEMPTS {
            if let Some(e) = &*etcd.refused.lock().unwrap_or_else(|e| e.into_inner()) {
                return Err(match e {
                    Error::StoreFormat {
                        store,
                        key,
                        found,
                        supported,
                    } => Error::StoreFormat {
                        store: store.clone(),
                        key: key.clone(),
                        found: found.clone(),
                        supported: *supported,
                    },
                    other => Error::StoreUnavailable {
                        store: etcd.store.config().display(),
                        reason: other.to_string(),
                    },
                });
            }
            let base = self.snapshot();
            let mut next = (*base).clone();
            let mut outcomes = Vec::new();
            let mut touched = BTreeSet::new();
            let mut ignored_leases = Vec::new();
            for change in changes.iter().cloned() {
                for op in change.ops {
                    let Some((kind, key, outcome)) = apply_op(
                        &mut next,
                        &change.origin,
                        op,
                        Instant::now(),
                        &mut ignored_leases,
                    )?
                    else {
                        continue;
                    };
                    touched.insert((kind, key.clone()));
                    outcomes.push((kind, key, outcome));
                }
            }
            if outcomes.iter().all(|(_, _, o)| *o == Outcome::Unchanged) {
                // Registering an endpoint again renews its lease.
                for (kind, key, _) in &outcomes {
                    if *kind == Kind::Endpoint
                        && next.get(*kind, key).is_some_and(|e| e.ttl.is_some())
                    {
                        etcd.heartbeat(&next, key)?;
                    }
                }
                return Ok(Applied {
                    revision: base.revision,
                    outcomes,
                });
            }
            next.validate_change(&touched).map_err(Error::Rejected)?;
            let mut ops = Vec::new();
            for (kind, key) in &touched {
                match (base.get(*kind, key), next.get(*kind, key)) {
                    (Some(a), Some(b)) if a == b => {}
                    (_, Some(b)) => ops.push(EtcdOp::Put {
                        kind: *kind,
                        key: key.clone(),
                        value: Box::new(to_stored_resource(b)),
                        ttl: b.ttl,
                    }),
                    (Some(_), None) => ops.push(EtcdOp::Delete {
                        kind: *kind,
                        key: key.clone(),
                    }),
                    (None, None) => {}
                }
            }
            match etcd.store.commit(base.meta_revision, ops)? {
                Committed::At(revision) => {
                    let rev = u64::try_from(revision).unwrap_or(0);
                    if !self.wait_for(etcd, move |s| s.revision >= rev) {
                        tracing::warn!(
                            revision,
                            "committed, but the watch has not brought the write in yet"
                        );
                    }
                    return Ok(Applied {
                        revision: rev,
                        outcomes,
                    });
                }
                Committed::Stale(meta) => {
                    tracing::debug!(meta, "another replica wrote first; validating again");
                    self.wait_for(etcd, move |s| s.meta_revision >= meta);
                }
            }
        }
        Err(Error::StoreContention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Waits (blocking) until the published state satisfies `done`, at most
    /// [`PUBLISH_WAIT`]; false on timeout.
    fn wait_for(
        &self,
        etcd: &EtcdBackend,
        done: impl Fn(&State) -> bool + Send + Sync + 'static,
    ) -> bool {
        let mut rx = self.subscribe();
        etcd.store
            .block_on(async move {
                tokio::time::timeout(PUBLISH_WAIT, rx.wait_for(|s| done(s)))
                    .await
                    .is_ok_and(|r| r.is_ok())
            })
            .unwrap_or(false)
    }

    /// Applies one batch of watched changes and publishes the result.
    fn apply_watched(&self, etcd: &EtcdBackend, batch: Vec<Watched>) {
        let mut w = self.lock();
        let base = self.snapshot();
        let mut next = (*base).clone();
        let mut changed = false;
        let mut revision = i64::try_from(next.revision).unwrap_or(i64::MAX);
        let mut leases = etcd.leases.lock().unwrap_or_else(|e| e.into_inner());
        for ev in batch {
            match ev {
                Watched::Meta {
                    mod_revision,
                    unknown_format,
                } => {
                    next.meta_revision = next.meta_revision.max(mod_revision);
                    revision = revision.max(mod_revision);
                    changed = true;
                    if let Some(found) = unknown_format {
                        let err = etcd.store.format_error(found);
                        tracing::error!(error = %err, "refusing writes from now on");
                        *etcd.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
                    }
                }
                Watched::Put {
                    kind,
                    key,
                    value,
                    mod_revision,
                    lease,
                } => {
                    revision = revision.max(mod_revision);
                    let Some(value) = value else { continue };
                    let entry = match entry_from_stored(*value, Path::new(&key)) {
                        Ok(mut e) => {
                            e.version = u64::try_from(mod_revision).unwrap_or(0);
                            e
                        }
                        Err(error) => {
                            tracing::error!(%kind, %key, %error, "ignoring a stored resource");
                            continue;
                        }
                    };
                    if lease != 0 {
                        leases.insert(key.clone(), lease);
                    } else {
                        leases.remove(&key);
                    }
                    changed |= next.apply_watched(kind, &key, Some(entry));
                }
                Watched::Delete {
                    kind,
                    key,
                    revision: at,
                } => {
                    revision = revision.max(at);
                    leases.remove(&key);
                    if next.apply_watched(kind, &key, None) {
                        if kind == Kind::Endpoint {
                            tracing::info!(endpoint = %key, "endpoint removed (deleted, or its lease ended)");
                        }
                        changed = true;
                    }
                }
            }
        }
        drop(leases);
        if !changed {
            return;
        }
        next.revision = u64::try_from(revision).unwrap_or(next.revision);
        next.written_at = Instant::now();
        let next = Arc::new(next);
        w.head = next.clone();
        self.current.send_replace(next);
    }

    /// Replaces the state with a full read (after the watch fell behind
    /// etcd's compaction); returns the revision to watch from.
    fn reload(&self, etcd: &EtcdBackend) -> Result<i64, Error> {
        let snapshot = etcd.store.load()?;
        let base = self.snapshot();
        let mut batch = Vec::new();
        let mut present = BTreeSet::new();
        for r in snapshot.resources {
            let kind = r.stored.kind();
            let key = match entry_from_stored(r.stored.clone(), Path::new("")) {
                Ok(e) => e.resource.key(),
                Err(_) => continue,
            };
            present.insert((kind, key.clone()));
            batch.push(Watched::Put {
                kind,
                key,
                value: Some(Box::new(r.stored)),
                mod_revision: r.mod_revision,
                lease: r.lease,
            });
        }
        for (kind, key, _) in base.iter() {
            if !present.contains(&(kind, key.to_string())) {
                batch.push(Watched::Delete {
                    kind,
                    key: key.to_string(),
                    revision: snapshot.revision,
                });
            }
        }
        batch.push(Watched::Meta {
            mod_revision: snapshot.meta_revision,
            unknown_format: None,
        });
        self.apply_watched(etcd, batch);
        Ok(snapshot.revision + 1)
    }
}

// === impl EtcdBackend ===

impl EtcdBackend {
    /// Renews the etcd lease of an endpoint; returns its TTL.
    pub(super) fn heartbeat(&self, state: &State, key: &str) -> Result<Duration, Error> {
        let ttl = state.endpoint_ttl(key)?;
        let lease = self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied();
        let Some(lease) = lease else {
            return Err(Error::NoLease {
                key: key.to_string(),
            });
        };
        if self.store.keep_alive(lease)? <= 0 {
            // It ended meanwhile; the watch removes the endpoint.
            return Err(Error::NotFound {
                kind: Kind::Endpoint,
                key: key.to_string(),
            });
        }
        Ok(ttl)
    }
}

/// Follows etcd from `from` for as long as the registry lives, reconnecting
/// with backoff; a replica that lost etcd keeps serving its last state.
async fn follow(registry: Weak<Registry>, mut from: i64) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(watcher) = registry
            .upgrade()
            .and_then(|r| r.etcd.as_ref().map(|e| e.store.watcher()))
        else {
            return;
        };
        let next_from = std::sync::atomic::AtomicI64::new(from);
        let ended = watcher
            .watch(from, |batch| {
                let Some(registry) = registry.upgrade() else {
                    return false;
                };
                let Some(etcd) = registry.etcd.as_ref() else {
                    return false;
                };
                let newest = batch
                    .iter()
                    .map(|w| match w {
                        Watched::Put { mod_revision, .. } | Watched::Meta { mod_revision, .. } => {
                            *mod_revision
                        }
                        Watched::Delete { revision, .. } => *revision,
                    })
                    .max()
                    .unwrap_or(0);
                registry.apply_watched(etcd, batch);
                next_from.fetch_max(newest + 1, std::sync::atomic::Ordering::Relaxed);
                backoff = Duration::from_millis(50);
                true
            })
            .await;
        from = next_from.load(std::sync::atomic::Ordering::Relaxed);
        match ended {
            Ok(()) => return,
            Err(WatchEnd::Compacted(at)) => {
                tracing::warn!(
                    from,
                    compacted = at,
                    "etcd compacted past the watch; reading everything again"
                );
                let Some(r) = registry.upgrade() else { return };
                let Some(etcd) = r.etcd.as_ref() else { return };
                match r.reload(etcd) {
                    Ok(f) => from = f,
                    Err(error) => tracing::warn!(%error, "reloading from etcd failed; retrying"),
                }
            }
            Err(WatchEnd::Failed(reason)) => {
                tracing::warn!(%reason, from, "lost the etcd watch; serving the last state and reconnecting in {backoff:?}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
    }
}
