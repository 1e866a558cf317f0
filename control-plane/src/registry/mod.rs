//! The registry: every service, endpoint, route and policy of the mesh, at a
//! monotonically increasing revision.
//!
//! Writes are transactions ([`Change`]s of [`Op`]s). A transaction is applied
//! to a copy of the latest [`State`] (cheap: the maps are persistent), what
//! it touched is validated with `MeshResources::validate` together with
//! everything it can affect (so a route or authorization policy naming an unknown service, or
//! deleting a service a route or policy still uses, is rejected: see [`State`]'s `validate_change`),
//! logged to the [`Store`], and only once the log is on disk published.
//! Any failure leaves the registry exactly as it was.
//!
//! Concurrent writers are serialized while they apply and append, then wait
//! for the fsync together (group commit), and the states they made are
//! published in revision order. A write whose result is already the current
//! value returns only once the write that made it is durable.
//!
//! Readers get an `Arc<State>` from [`Registry::snapshot`] or follow changes
//! with [`Registry::subscribe`]. Endpoint leases (TTL renewed by heartbeat,
//! at most [`MAX_LEASE_TTL`]) are swept by [`Registry::run_lease_sweeper`] on
//! tokio time, so tests can pause and advance the clock.

mod etcd;
mod index;
mod lease;
mod state;

pub use lease::MAX_LEASE_TTL;
pub use state::{Entry, Origin, State};

use crate::error::{Error, Rejected};
use crate::resource::{Kind, Resource};
use crate::store::{Store, Ticket};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The registry shared by the API, the file source and the xDS server.
#[derive(Debug)]
pub struct Registry {
    /// Serializes writers; holds the latest state and lease deadlines.
    inner: Mutex<Writer>,
    store: Option<Store>,
    /// The etcd backend (replicas): writes are etcd transactions, and the
    /// published state is what its watch reports ([`etcd`]).
    etcd: Option<etcd::EtcdBackend>,
    /// The published state: durable.
    current: watch::Sender<Arc<State>>,
    /// Wakes the lease sweeper when a deadline was added or moved.
    lease_changed: Notify,
}

/// What writers share, under [`Registry::inner`].
#[derive(Debug)]
struct Writer {
    leases: Leases,
    /// The latest state, including writes still waiting for their fsync.
    head: Arc<State>,
    /// States logged but not yet durable, with their log tickets, oldest
    /// first.
    unsynced: VecDeque<(Ticket, Arc<State>)>,
}

/// Lease deadlines by endpoint key. Not persisted: after a restart every
/// lease starts over with its full TTL.
#[derive(Debug, Default)]
struct Leases {
    deadlines: HashMap<String, Instant>,
    /// The same, ordered by deadline: the sweeper's next wake-up and the due
    /// leases are found without a scan.
    by_deadline: BTreeSet<(Instant, String)>,
}

/// One operation of a write.
// Ops live for one write; boxing the resource would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Op {
    /// Create or replace a resource; `ttl` (endpoints only) gives it a lease.
    Put {
        /// The resource.
        resource: Resource,
        /// Lease length; `None` registers it permanently.
        ttl: Option<Duration>,
    },
    /// Remove a resource.
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its key.
        key: String,
    },
    /// A precondition: the write fails with [`Error::VersionConflict`]
    /// unless the resource is at `version` (0: does not exist) when this
    /// operation is reached (`If-Match`, `resource_version`).
    Expect {
        /// Its kind.
        kind: Kind,
        /// Its key.
        key: String,
        /// The resource version the writer read.
        version: u64,
    },
}

/// The operations one source performs in one write.
#[derive(Clone, Debug)]
pub struct Change {
    /// Who performs them; decides what they may touch.
    pub origin: Origin,
    /// The operations, applied in order.
    pub ops: Vec<Op>,
}

/// What a write did to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did not exist before.
    Created,
    /// It was replaced by a different value.
    Updated,
    /// It was replaced by the same value (a lease was renewed, if any).
    Unchanged,
    /// It was removed.
    Deleted,
}

/// The result of a successful write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The registry revision after the write.
    pub revision: u64,
    /// What happened to each resource, in operation order.
    pub outcomes: Vec<(Kind, String, Outcome)>,
}

// === impl Registry ===

impl Registry {
    /// A registry kept only in memory (tests, or `--data-dir` unset).
    pub fn in_memory() -> Registry {
        Registry::with_state(None, State::empty())
    }

    /// A registry persisted in `store`, recovered from its snapshot and log
    /// (then compacted into a new snapshot).
    pub fn open(store: Store) -> Result<Registry, Error> {
        let mut recovered = store.recover()?;
        let mut state = match recovered.snapshot.take() {
            Some(stored) => State::from_stored_unchecked(stored, store.path())?,
            None => State::empty(),
        };
        let records = std::mem::take(&mut recovered.records);
        let replayed = records.len();
        for record in records {
            state.replay(record, store.dir())?;
        }
        state.validate().map_err(|source| Error::StateInvalid {
            path: store.dir().to_path_buf(),
            source,
        })?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                revision = state.revision,
                "replayed the state log"
            );
        }
        store.start(&recovered, || state.to_stored())?;
        Ok(Registry::with_state(Some(store), state))
    }

    fn with_state(store: Option<Store>, state: State) -> Registry {
        let now = Instant::now();
        let mut leases = Leases::default();
        for (key, e) in state.list(Kind::Endpoint) {
            if let Some(ttl) = e.ttl {
                leases.set(key, Some(lease_deadline(now, ttl)));
            }
        }
        let state = Arc::new(state);
        Registry {
            inner: Mutex::new(Writer {
                leases,
                head: state.clone(),
                unsynced: VecDeque::new(),
            }),
            store,
            etcd: None,
            current: watch::Sender::new(state),
            lease_changed: Notify::new(),
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> Arc<State> {
        self.current.borrow().clone()
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.current.borrow().revision
    }

    /// Follows the state: the receiver sees every published revision (or the
    /// latest of several published in quick succession).
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.current.subscribe()
    }

    /// The store, if the registry is persisted.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Applies one change; see [`Registry::apply_all`].
    pub fn apply(&self, change: Change) -> Result<Applied, Error> {
        self.apply_all(vec![change])
    }

    /// Applies several changes as one all-or-nothing write: validated,
    /// logged, then published as a single new revision (none if nothing
    /// changed) once the log is on disk. This performs blocking file I/O;
    /// call it from `spawn_blocking` in async code.
    pub fn apply_all(&self, changes: Vec<Change>) -> Result<Applied, Error> {
        if let Some(etcd) = &self.etcd {
            return self.apply_etcd(etcd, changes);
        }
        let (applied, ticket) = {
            let mut w = self.lock();
            self.apply_locked(&mut w, changes)?
        };
        self.commit(ticket)?;
        Ok(applied)
    }

    /// Applies `changes` to the latest state and logs the result; returns
    /// the ticket to wait for before the write counts as done.
    fn apply_locked(
        &self,
        w: &mut Writer,
        changes: Vec<Change>,
    ) -> Result<(Applied, Option<Ticket>), Error> {
        let now = Instant::now();
        let base = w.head.clone();
        let mut next = (*base).clone();
        let mut outcomes = Vec::new();
        let mut touched = BTreeSet::new();
        let mut lease_updates: Vec<(String, Option<Instant>)> = Vec::new();
        for change in changes {
            for op in change.ops {
                let Some((kind, key, outcome)) =
                    apply_op(&mut next, &change.origin, op, now, &mut lease_updates)?
                else {
                    continue;
                };
                touched.insert((kind, key.clone()));
                outcomes.push((kind, key, outcome));
            }
        }
        let changed = outcomes.iter().any(|(_, _, o)| *o != Outcome::Unchanged);
        let ticket = if changed {
            next.validate_change(&touched).map_err(Error::Rejected)?;
            next.revision = base.revision + 1;
            next.stamp(&base, &touched, next.revision);
            next.written_at = now;
            let next = Arc::new(next);
            let ticket = match &self.store {
                Some(store) => {
                    let ticket = store.append(&next.log_record(&base, &touched))?;
                    w.unsynced.push_back((ticket, next.clone()));
                    Some(ticket)
                }
                None => {
                    self.current.send_replace(next.clone());
                    None
                }
            };
            w.head = next;
            ticket
        } else {
            // Unchanged, but perhaps only by a write not yet durable.
            w.unsynced.back().map(|(t, _)| *t)
        };
        if !lease_updates.is_empty() {
            for (key, deadline) in lease_updates {
                w.leases.set(&key, deadline);
            }
            self.lease_changed.notify_one();
        }
        let applied = Applied {
            revision: w.head.revision,
            outcomes,
        };
        Ok((applied, ticket))
    }

    /// Waits for the log to hold `ticket`, then publishes every durable
    /// state in order; compacts the log when it is due.
    fn commit(&self, ticket: Option<Ticket>) -> Result<(), Error> {
        let (Some(store), Some(ticket)) = (&self.store, ticket) else {
            return Ok(());
        };
        if let Err(e) = store.sync(ticket) {
            // The log is failed for good (see `Store::sync`): drop the
            // states that never became durable.
            let mut w = self.lock();
            w.head = self.snapshot();
            w.unsynced.clear();
            return Err(e);
        }
        let mut w = self.lock();
        let synced = store.synced();
        let mut newest = None;
        while w.unsynced.front().is_some_and(|(t, _)| *t <= synced) {
            newest = w.unsynced.pop_front();
        }
        if let Some((_, state)) = newest {
            self.current.send_replace(state);
        }
        if store.compaction_due() {
            // Appends wait meanwhile (one fsync and a file creation); the
            // snapshot itself is written in the background.
            let head = w.head.clone();
            match store.compact(move || head.to_stored()) {
                Ok(()) => {
                    // The log was made durable up to the head.
                    if let Some((_, state)) = w.unsynced.drain(..).next_back() {
                        self.current.send_replace(state);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot compact the state log"),
            }
        }
        Ok(())
    }

    /// Renews the lease of an endpoint; returns its length.
    pub fn heartbeat(&self, key: &str) -> Result<Duration, Error> {
        if let Some(etcd) = &self.etcd {
            return etcd.heartbeat(&self.snapshot(), key);
        }
        let mut w = self.lock();
        let state = self.snapshot();
        let ttl = state.endpoint_ttl(key)?;
        w.leases.set(key, Some(lease_deadline(Instant::now(), ttl)));
        Ok(ttl)
    }

    /// Time left on an endpoint's lease, if it has one.
    pub fn lease_remaining(&self, key: &str) -> Option<Duration> {
        let w = self.lock();
        w.leases
            .deadlines
            .get(key)
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave `Writer` inconsistent
        // in a way that matters more than stopping the control plane would.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl Leases ===

impl Leases {
    /// Sets (or with `None` removes) the deadline of `key`.
    fn set(&mut self, key: &str, deadline: Option<Instant>) {
        if let Some(old) = self.deadlines.remove(key) {
            self.by_deadline.remove(&(old, key.to_string()));
        }
        if let Some(d) = deadline {
            self.deadlines.insert(key.to_string(), d);
            self.by_deadline.insert((d, key.to_string()));
        }
    }
}

/// When a lease of `ttl` taken at `now` ends. TTLs are bounded by
/// [`MAX_LEASE_TTL`]; the saturation only keeps a bug from panicking.
fn lease_deadline(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl).unwrap_or_else(|| now + MAX_LEASE_TTL)
}

/// Applies one operation to `next`; `None` for a precondition that held.
fn apply_op(
    next: &mut State,
    origin: &Origin,
    op: Op,
    now: Instant,
    lease_updates: &mut Vec<(String, Option<Instant>)>,
) -> Result<Option<(Kind, String, Outcome)>, Error> {
    match op {
        Op::Expect { kind, key, version } => {
            let found = next.get(kind, &key).map_or(0, |e| e.version);
            if found != version {
                return Err(Error::VersionConflict {
                    kind,
                    key,
                    expected: version,
                    found,
                });
            }
            Ok(None)
        }
        Op::Put { mut resource, ttl } => {
            resource.normalize();
            let kind = resource.kind();
            let key = resource.key();
            if ttl.is_some() && kind != Kind::Endpoint {
                let msg = "only endpoints can be registered with a lease";
                return Err(Error::Rejected(Rejected::single("ttl", msg)));
            }
            if ttl == Some(Duration::ZERO) {
                return Err(Error::Rejected(Rejected::single("ttl", "must be above 0")));
            }
            if let Some(t) = ttl.filter(|t| *t > MAX_LEASE_TTL) {
                return Err(Error::Rejected(Rejected::single(
                    "ttl",
                    format!(
                        "{} is above the maximum of {}",
                        humantime::format_duration(t),
                        humantime::format_duration(MAX_LEASE_TTL)
                    ),
                )));
            }
            let prev = next.get(kind, &key);
            check_owner(prev, origin, kind, &key)?;
            let entry = Entry {
                resource,
                origin: origin.clone(),
                ttl,
                // Stamped with the write's revision once it is known.
                version: 0,
            };
            let outcome = match prev {
                None => Outcome::Created,
                Some(p) if *p == entry => Outcome::Unchanged,
                Some(_) => Outcome::Updated,
            };
            if kind == Kind::Endpoint {
                lease_updates.push((key.clone(), ttl.map(|t| lease_deadline(now, t))));
            }
            if outcome != Outcome::Unchanged {
                next.insert(entry);
            }
            Ok(Some((kind, key, outcome)))
        }
        Op::Delete { kind, key } => {
            let prev = next.get(kind, &key);
            if prev.is_none() {
                return Err(Error::NotFound { kind, key });
            }
            check_owner(prev, origin, kind, &key)?;
            next.remove(kind, &key);
            if kind == Kind::Endpoint {
                lease_updates.push((key.clone(), None));
            }
            Ok(Some((kind, key, Outcome::Deleted)))
        }
    }
}

/// A resource owned by a file (or by Kubernetes, or produced by a stored
/// Istio object) may only be changed by that owner; API-owned ones may be taken over by either (they are declared
/// sources of truth).
fn check_owner(prev: Option<&Entry>, origin: &Origin, kind: Kind, key: &str) -> Result<(), Error> {
    match prev {
        Some(Entry {
            origin: owner @ (Origin::File(_) | Origin::Kubernetes | Origin::Istio),
            ..
        }) if owner != origin => Err(Error::Conflict {
            kind,
            key: key.to_string(),
            owner: owner.to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, SNAPSHOT_FILE};
    use sane_xds_proto::{Route, RouteRule, Service, ServicePort, WeightedDestination};
    use std::collections::BTreeMap;
    use std::fs;

    pub(crate) fn service(name: &str) -> Resource {
        Resource::Service(Service {
            name: name.into(),
            ports: vec![ServicePort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    pub(crate) fn route(name: &str, to: &str, weight: u32) -> Resource {
        Resource::Route(Route {
            name: name.into(),
            service: to.into(),
            rules: vec![RouteRule {
                destinations: vec![
                    WeightedDestination {
                        service: to.into(),
                        weight,
                        ..Default::default()
                    },
                    WeightedDestination {
                        service: to.into(),
                        weight: 1,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    pub(crate) fn put(resources: Vec<Resource>) -> Change {
        Change {
            origin: Origin::Api,
            ops: resources
                .into_iter()
                .map(|resource| Op::Put {
                    resource,
                    ttl: None,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn writes_are_validated_as_a_whole_and_all_or_nothing() {
        let reg = Registry::in_memory();
        let applied = reg.apply(put(vec![service("echo")])).unwrap();
        assert_eq!(applied.revision, 1);

        // A good service plus a route to an unknown one: nothing is stored.
        let err = reg
            .apply(put(vec![service("other"), route("r", "missing", 1)]))
            .unwrap_err();
        let Error::Rejected(rej) = err else {
            panic!("{err}")
        };
        assert!(rej.has_unknown_reference(), "{rej}");
        assert!(
            rej.to_string().contains("routes[default/r].service"),
            "{rej}"
        );
        assert_eq!(reg.revision(), 1);
        assert!(reg.snapshot().get(Kind::Service, "default/other").is_none());

        // Field paths name the resource by key.
        let err = reg.apply(put(vec![route("split", "echo", 0)])).unwrap_err();
        assert!(
            err.to_string().contains(
                "routes[default/split].rules[0].destinations[0].weight: 0 must be at least 1"
            ),
            "{err}"
        );

        // Deleting a service a route uses is rejected.
        reg.apply(put(vec![route("split", "echo", 3)])).unwrap();
        let del = Change {
            origin: Origin::Api,
            ops: vec![Op::Delete {
                kind: Kind::Service,
                key: "default/echo".into(),
            }],
        };
        assert!(matches!(reg.apply(del), Err(Error::Rejected(_))));
        assert_eq!(reg.revision(), 2);

        // Same value again: unchanged, no new revision.
        let applied = reg.apply(put(vec![service("echo")])).unwrap();
        assert_eq!(applied.outcomes[0].2, Outcome::Unchanged);
        assert_eq!(applied.revision, 2);
    }

    #[tokio::test]
    async fn file_owned_resources_are_protected() {
        let reg = Registry::in_memory();
        let file = Origin::File("/etc/mesh/a.yaml".into());
        reg.apply(Change {
            origin: file.clone(),
            ops: vec![Op::Put {
                resource: service("echo"),
                ttl: None,
            }],
        })
        .unwrap();
        let err = reg.apply(put(vec![service("echo")])).unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("file:/etc/mesh/a.yaml"), "{err}");
    }

    /// Every file of the data directory but the lock, with its bytes.
    fn files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != crate::store::LOCK_FILE)
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect()
    }

    fn open(dir: &std::path::Path) -> Registry {
        Registry::open(Store::open(dir).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn store_is_reloaded_and_untouched_by_failed_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let reg = open(dir.path());
            reg.apply(put(vec![service("echo"), route("split", "echo", 2)]))
                .unwrap();
            reg.apply(put(vec![route("bad", "nope", 1)])).unwrap_err();
        }
        let reg = open(dir.path());
        assert_eq!(reg.revision(), 1);
        let snap = reg.snapshot();
        assert_eq!(snap.len(), 2);
        assert!(snap.get(Kind::Route, "default/split").is_some());
        // A rejected write leaves every file byte-for-byte as it was.
        let before = files(dir.path());
        reg.apply(put(vec![route("bad", "nope", 1)])).unwrap_err();
        assert_eq!(files(dir.path()), before);
    }

    #[tokio::test]
    async fn failed_persist_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        reg.store().unwrap().break_log_for_test();
        let err = reg.apply(put(vec![service("echo")])).unwrap_err();
        assert!(matches!(err, Error::StateWrite { .. }), "{err}");
        assert_eq!(reg.revision(), 0);
        assert!(reg.snapshot().is_empty());
        drop(reg);
        assert!(open(dir.path()).snapshot().is_empty());
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_a_crash_and_a_torn_last_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let reg = open(dir.path());
            reg.apply(put(vec![service("a")])).unwrap();
            reg.apply(put(vec![service("b")])).unwrap();
            reg.apply(put(vec![service("c")])).unwrap();
            // Dropped without any shutdown step: what is on disk is what a
            // crash would leave.
        }
        let log = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .expect("a log file");
        // A crash in the middle of appending the third write: cut it short.
        let bytes = std::fs::read(&log).unwrap();
        std::fs::write(&log, &bytes[..bytes.len() - 10]).unwrap();
        let reg = open(dir.path());
        assert_eq!(reg.revision(), 2);
        let snap = reg.snapshot();
        assert!(snap.get(Kind::Service, "default/a").is_some());
        assert!(snap.get(Kind::Service, "default/b").is_some());
        assert!(snap.get(Kind::Service, "default/c").is_none());
        // Recovery compacted into a snapshot; writing goes on from there.
        assert!(dir.path().join("state.json").exists());
        assert!(!log.exists());
        reg.apply(put(vec![service("d")])).unwrap();
        drop(reg);
        let reg = open(dir.path());
        assert_eq!(reg.revision(), 3);
        assert!(reg.snapshot().get(Kind::Service, "default/d").is_some());
    }

    #[tokio::test]
    async fn the_log_is_compacted_into_the_snapshot_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        {
            let reg = open(dir.path());
            let store = reg.store().unwrap();
            store.set_compact_min_bytes(1024);
            for i in 0..40 {
                reg.apply(put(vec![service(&format!("s{i}"))])).unwrap();
            }
            store.wait_for_compaction();
            let logs = files(dir.path())
                .into_keys()
                .filter(|n| n.ends_with(".log"))
                .count();
            assert_eq!(logs, 1, "older logs are deleted");
            assert!(dir.path().join("state.json").exists());
            // Deletes are logged too.
            let del = Change {
                origin: Origin::Api,
                ops: vec![Op::Delete {
                    kind: Kind::Service,
                    key: "default/s0".into(),
                }],
            };
            reg.apply(del).unwrap();
        }
        let reg = open(dir.path());
        assert_eq!(reg.revision(), 41);
        assert_eq!(reg.snapshot().len(), 39);
        assert!(reg.snapshot().get(Kind::Service, "default/s0").is_none());
        // No temporary file is left behind.
        assert!(files(dir.path()).keys().all(|n| !n.ends_with(".tmp")));
    }

    #[tokio::test]
    async fn changes_are_checked_against_what_they_affect() {
        let reg = Registry::in_memory();
        let mut web = service("web");
        if let Resource::Service(s) = &mut web {
            s.addresses = vec!["10.96.0.1".into()];
        }
        reg.apply(put(vec![web])).unwrap();
        // A second service on the same virtual IP.
        let mut api = service("api");
        if let Resource::Service(s) = &mut api {
            s.addresses = vec!["10.96.0.1".into()];
        }
        let err = reg.apply(put(vec![api])).unwrap_err().to_string();
        // (Whole-registry validation names the later one by key, as here.)
        assert!(
            err.contains("services[default/web].addresses[0]: 10.96.0.1 is already"),
            "{err}"
        );
        // Two services with one qualified name (`a.b` in `c`, `a` in `b.c`).
        let mut dotted = service("a.b");
        if let Resource::Service(s) = &mut dotted {
            s.namespace = "c".into();
        }
        reg.apply(put(vec![dotted])).unwrap();
        let mut twin = service("a");
        if let Resource::Service(s) = &mut twin {
            s.namespace = "b.c".into();
        }
        let err = reg.apply(put(vec![twin])).unwrap_err().to_string();
        assert!(err.contains("declared twice"), "{err}");
        // A route whose second destination is removed: the route is named.
        reg.apply(put(vec![service("one"), service("two")]))
            .unwrap();
        let mut r = route("r", "one", 1);
        if let Resource::Route(route) = &mut r {
            route.rules[0].destinations[1].service = "two".into();
        }
        reg.apply(put(vec![r])).unwrap();
        let del = |name: &str| Change {
            origin: Origin::Api,
            ops: vec![Op::Delete {
                kind: Kind::Service,
                key: format!("default/{name}"),
            }],
        };
        let err = reg.apply(del("two")).unwrap_err().to_string();
        assert!(
            err.contains("routes[default/r].rules[0].destinations[1].service"),
            "{err}"
        );
        // Removing the route and the service in one write is fine.
        let mut both = del("two");
        both.ops.insert(
            0,
            Op::Delete {
                kind: Kind::Route,
                key: "default/r".into(),
            },
        );
        reg.apply(both).unwrap();
        // The incremental checks agree with validating everything.
        reg.snapshot().validate().unwrap();
    }

    #[tokio::test]
    async fn expected_versions_guard_writes_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let expect = |version| Op::Expect {
            kind: Kind::Route,
            key: "default/r".into(),
            version,
        };
        let guarded = |version, weight| Change {
            origin: Origin::Api,
            ops: vec![
                expect(version),
                Op::Put {
                    resource: route("r", "echo", weight),
                    ttl: None,
                },
            ],
        };
        let version = {
            let reg = open(dir.path());
            reg.apply(put(vec![service("echo")])).unwrap();
            // 0: must not exist yet.
            reg.apply(guarded(0, 1)).unwrap();
            let err = reg.apply(guarded(0, 2)).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::VersionConflict {
                        expected: 0,
                        found: 2,
                        ..
                    }
                ),
                "{err}"
            );
            let v = reg
                .snapshot()
                .get(Kind::Route, "default/r")
                .unwrap()
                .version;
            assert_eq!(v, 2, "the revision of the write that made it");
            reg.apply(guarded(v, 3)).unwrap();
            // The version read before that write is stale now.
            let err = reg.apply(guarded(v, 4)).unwrap_err().to_string();
            assert!(err.contains("at resource version 3, not 2"), "{err}");
            // An unrelated write leaves the route's version alone.
            reg.apply(put(vec![service("other")])).unwrap();
            reg.snapshot()
                .get(Kind::Route, "default/r")
                .unwrap()
                .version
        };
        assert_eq!(version, 3);
        let reg = open(dir.path());
        assert_eq!(
            reg.snapshot()
                .get(Kind::Route, "default/r")
                .unwrap()
                .version,
            3
        );
        reg.apply(guarded(3, 5)).unwrap();
    }

    #[tokio::test]
    async fn leases_are_bounded() {
        let reg = Registry::in_memory();
        reg.apply(put(vec![service("echo")])).unwrap();
        let ep = Resource::Endpoint(sane_xds_proto::Endpoint {
            service: "echo".into(),
            address: "10.0.0.1".into(),
            port: 80,
            ..Default::default()
        });
        for ttl in [MAX_LEASE_TTL + Duration::from_millis(1), Duration::MAX] {
            let err = reg
                .apply(Change {
                    origin: Origin::Api,
                    ops: vec![Op::Put {
                        resource: ep.clone(),
                        ttl: Some(ttl),
                    }],
                })
                .unwrap_err();
            assert!(err.to_string().starts_with("ttl: "), "{err}");
        }
    }

    #[test]
    fn unknown_format_is_refused_naming_file_and_version_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let written = br#"{"format": 2, "revision": 9, "shards": []}"#;
        fs::write(dir.path().join(SNAPSHOT_FILE), written).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = crate::registry::Registry::open(store).unwrap_err();
        assert!(matches!(err, Error::StateFormat { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("state.json"), "{text}");
        assert!(text.contains("format version 2"), "{text}");
        assert_eq!(fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap(), written);
    }
}
