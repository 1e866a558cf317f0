//! The registry: every service, endpoint, route and policy of the mesh, at a
//! monotonically increasing revision.
//!
//! Writes are transactions ([`Change`]s of [`Op`]s). A transaction is applied
//! to a copy of the current [`State`], the whole result is validated with
//! `MeshResources::validate_registry` (so a route or authorization policy
//! naming an unknown service, or deleting a
//! service a route still uses, is rejected), written to the [`Store`], and only
//! then published. Any failure leaves the registry exactly as it was.
//!
//! Readers get an `Arc<State>` from [`Registry::snapshot`] or follow changes
//! with [`Registry::subscribe`]. Endpoint leases (TTL renewed by heartbeat)
//! are swept by [`Registry::run_lease_sweeper`] on tokio time, so tests can
//! pause and advance the clock.

mod lease;
mod state;

pub use state::{Entry, Origin, State};

use crate::error::{Error, Rejected};
use crate::resource::{Kind, Resource};
use crate::store::Store;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The registry shared by the API, the file source and the xDS server.
#[derive(Debug)]
pub struct Registry {
    /// Serializes writers and holds lease deadlines.
    inner: Mutex<Leases>,
    store: Option<Store>,
    current: watch::Sender<Arc<State>>,
    /// Wakes the lease sweeper when a deadline was added or moved.
    lease_changed: Notify,
}

/// Lease deadlines by endpoint key. Not persisted: after a restart every
/// lease starts over with its full TTL.
#[derive(Debug, Default)]
struct Leases {
    deadlines: BTreeMap<String, Instant>,
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

    /// A registry persisted in `store`, reloaded from it if it holds state.
    pub fn open(store: Store) -> Result<Registry, Error> {
        let state = match store.load()? {
            Some(stored) => State::from_stored(stored, store.path())?,
            None => State::empty(),
        };
        Ok(Registry::with_state(Some(store), state))
    }

    fn with_state(store: Option<Store>, state: State) -> Registry {
        let now = Instant::now();
        let deadlines = state
            .list(Kind::Endpoint)
            .filter_map(|(key, e)| e.ttl.map(|ttl| (key.to_string(), now + ttl)))
            .collect();
        Registry {
            inner: Mutex::new(Leases { deadlines }),
            store,
            current: watch::Sender::new(Arc::new(state)),
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

    /// Applies one change; see [`Registry::apply_all`].
    pub fn apply(&self, change: Change) -> Result<Applied, Error> {
        self.apply_all(vec![change])
    }

    /// Applies several changes as one all-or-nothing write: validated as a
    /// whole, persisted, then published as a single new revision (none if
    /// nothing changed). This performs blocking file I/O; call it from
    /// `spawn_blocking` in async code.
    pub fn apply_all(&self, changes: Vec<Change>) -> Result<Applied, Error> {
        let mut leases = self.lock();
        self.apply_locked(&mut leases, changes)
    }

    fn apply_locked(&self, leases: &mut Leases, changes: Vec<Change>) -> Result<Applied, Error> {
        let now = Instant::now();
        let old = self.snapshot();
        let mut next = (*old).clone();
        let mut outcomes = Vec::new();
        let mut lease_updates: Vec<(String, Option<Instant>)> = Vec::new();
        for change in changes {
            for op in change.ops {
                let (kind, key, outcome) =
                    apply_op(&mut next, &change.origin, op, now, &mut lease_updates)?;
                outcomes.push((kind, key, outcome));
            }
        }
        let changed = outcomes.iter().any(|(_, _, o)| *o != Outcome::Unchanged);
        if changed {
            next.validate().map_err(Error::Rejected)?;
            next.revision = old.revision + 1;
            next.written_at = now;
            if let Some(store) = &self.store {
                store.save(&next.to_stored())?;
            }
            self.current.send_replace(Arc::new(next));
        }
        for (key, deadline) in lease_updates {
            match deadline {
                Some(d) => leases.deadlines.insert(key, d),
                None => leases.deadlines.remove(&key),
            };
        }
        self.lease_changed.notify_one();
        Ok(Applied {
            revision: self.revision(),
            outcomes,
        })
    }

    /// Renews the lease of an endpoint; returns its length.
    pub fn heartbeat(&self, key: &str) -> Result<Duration, Error> {
        let mut leases = self.lock();
        let state = self.snapshot();
        let entry = state
            .get(Kind::Endpoint, key)
            .ok_or_else(|| Error::NotFound {
                kind: Kind::Endpoint,
                key: key.to_string(),
            })?;
        let ttl = entry.ttl.ok_or_else(|| Error::NoLease {
            key: key.to_string(),
        })?;
        leases
            .deadlines
            .insert(key.to_string(), Instant::now() + ttl);
        Ok(ttl)
    }

    /// Time left on an endpoint's lease, if it has one.
    pub fn lease_remaining(&self, key: &str) -> Option<Duration> {
        let leases = self.lock();
        leases
            .deadlines
            .get(key)
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Leases> {
        // A panic while holding the lock cannot leave `Leases` inconsistent
        // in a way that matters more than stopping the control plane would.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn apply_op(
    next: &mut State,
    origin: &Origin,
    op: Op,
    now: Instant,
    lease_updates: &mut Vec<(String, Option<Instant>)>,
) -> Result<(Kind, String, Outcome), Error> {
    match op {
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
            let prev = next.get(kind, &key);
            check_owner(prev, origin, kind, &key)?;
            let entry = Entry {
                resource,
                origin: origin.clone(),
                ttl,
            };
            let outcome = match prev {
                None => Outcome::Created,
                Some(p) if *p == entry => Outcome::Unchanged,
                Some(_) => Outcome::Updated,
            };
            if kind == Kind::Endpoint {
                lease_updates.push((key.clone(), ttl.map(|t| now + t)));
            }
            next.insert(entry);
            Ok((kind, key, outcome))
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
            Ok((kind, key, Outcome::Deleted))
        }
    }
}

/// A resource owned by a file (or by Kubernetes) may only be changed by that
/// owner; API-owned ones may be taken over by either (they are declared
/// sources of truth).
fn check_owner(prev: Option<&Entry>, origin: &Origin, kind: Kind, key: &str) -> Result<(), Error> {
    match prev {
        Some(Entry {
            origin: owner @ (Origin::File(_) | Origin::Kubernetes),
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
    use crate::store::Store;
    use sane_xds_proto::{Route, RouteRule, Service, ServicePort, WeightedDestination};

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

    #[tokio::test]
    async fn store_is_reloaded_and_untouched_by_failed_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let reg = Registry::open(Store::open(dir.path()).unwrap()).unwrap();
            reg.apply(put(vec![service("echo"), route("split", "echo", 2)]))
                .unwrap();
            reg.apply(put(vec![route("bad", "nope", 1)])).unwrap_err();
        }
        let before = std::fs::read(dir.path().join("state.json")).unwrap();
        let reg = Registry::open(Store::open(dir.path()).unwrap()).unwrap();
        assert_eq!(reg.revision(), 1);
        let snap = reg.snapshot();
        assert_eq!(snap.len(), 2);
        assert!(snap.get(Kind::Route, "default/split").is_some());
        // A rejected write leaves the file byte-for-byte as it was.
        reg.apply(put(vec![route("bad", "nope", 1)])).unwrap_err();
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            before
        );
    }

    #[tokio::test]
    async fn failed_persist_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(Store::open(dir.path()).unwrap()).unwrap();
        // Make the temp file path a directory, so creating it fails.
        std::fs::create_dir(dir.path().join("state.json.tmp")).unwrap();
        let err = reg.apply(put(vec![service("echo")])).unwrap_err();
        assert!(matches!(err, Error::StateWrite { .. }), "{err}");
        assert_eq!(reg.revision(), 0);
        assert!(reg.snapshot().is_empty());
    }
}
