//! One immutable revision of the registry: every resource, who owns it, and
//! its lease length. Writers build a new `State` from the old one; readers
//! hold an `Arc<State>` and never see a half-applied write.
//!
//! The entries and their [`Index`] are persistent maps (`imbl`): copying a
//! state shares every node, and a write copies only the O(log n) nodes on
//! the paths it changes. So the cost of a write is the size of the change,
//! whatever the size of the registry.

use super::index::{self, Index};
use super::MAX_LEASE_TTL;
use crate::error::{Error, Rejected, RejectedField};
use crate::resource::{Kind, Resource};
use crate::store::{LogOp, LogRecord, Stored, StoredResource, StoredState, FORMAT_VERSION};
use imbl::OrdMap;
use sane_xds_proto::resources::qualify;
use sane_xds_proto::{namespace_or_default, FieldError, MeshResources};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Who wrote a resource. A resource written by a file can only be changed by
/// that file, so an API edit cannot be silently undone by the next reload.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// The HTTP API (and `sanectl`).
    Api,
    /// A YAML file of the config directory.
    File(PathBuf),
    /// The Kubernetes source (`--kubernetes`): Services, EndpointSlices,
    /// Pods and `sane.mesh` custom resources of the cluster.
    Kubernetes,
    /// The Istio and Gateway API objects the control plane stores
    /// (`crate::istio::store`): what they produced changes only with them.
    Istio,
}

/// A stored resource and its bookkeeping.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The resource, namespace normalized.
    pub resource: Resource,
    /// Who wrote it.
    pub origin: Origin,
    /// Lease length of an endpoint registered with a TTL.
    pub ttl: Option<Duration>,
    /// Resource version: the registry revision that last changed it (in
    /// etcd, its key's `mod_revision`). What `If-Match` compares with.
    pub version: u64,
}

/// The registry at one revision.
#[derive(Clone, Debug)]
pub struct State {
    /// Revision: incremented by every write that changes something.
    pub revision: u64,
    /// When this revision was written (for convergence time).
    pub written_at: Instant,
    /// etcd: `mod_revision` of the meta key every write puts, which a write
    /// compares to commit (0 with the file store).
    pub(super) meta_revision: i64,
    /// Entries by key, one map per kind, in [`Kind::ALL`] order.
    entries: [OrdMap<String, Arc<Entry>>; KINDS],
    index: Index,
}

const KINDS: usize = Kind::ALL.len();

// === impl Origin ===

impl Origin {
    /// Parses the stored form (`api`, `file:<path>`, `kubernetes`, `istio`).
    pub fn parse(s: &str) -> Option<Origin> {
        if s == "api" {
            Some(Origin::Api)
        } else if s == "kubernetes" {
            Some(Origin::Kubernetes)
        } else if s == "istio" {
            Some(Origin::Istio)
        } else {
            s.strip_prefix("file:")
                .map(|p| Origin::File(PathBuf::from(p)))
        }
    }

    /// The file, for file-owned resources.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Origin::File(p) => Some(p),
            Origin::Api | Origin::Kubernetes | Origin::Istio => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Api => f.write_str("api"),
            Origin::File(p) => write!(f, "file:{}", p.display()),
            Origin::Kubernetes => f.write_str("kubernetes"),
            Origin::Istio => f.write_str("istio"),
        }
    }
}

// === impl Entry ===

/// The same value, whatever its version.
impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.resource == other.resource && self.origin == other.origin && self.ttl == other.ttl
    }
}

// === impl State ===

impl State {
    /// An empty registry at revision 0.
    pub fn empty() -> State {
        State {
            revision: 0,
            written_at: Instant::now(),
            meta_revision: 0,
            entries: Default::default(),
            index: Index::default(),
        }
    }

    fn slot(kind: Kind) -> usize {
        // `Kind::ALL` lists the kinds in declaration order.
        kind as usize
    }

    /// The entry of `kind` at `key`.
    pub fn get(&self, kind: Kind, key: &str) -> Option<&Entry> {
        self.entries[State::slot(kind)].get(key).map(|e| &**e)
    }

    /// The lease length of endpoint `key`: `NotFound` without such an
    /// endpoint, `NoLease` when it was registered without a TTL.
    pub fn endpoint_ttl(&self, key: &str) -> Result<Duration, Error> {
        let entry = self
            .get(Kind::Endpoint, key)
            .ok_or_else(|| Error::NotFound {
                kind: Kind::Endpoint,
                key: key.to_string(),
            })?;
        entry.ttl.ok_or_else(|| Error::NoLease {
            key: key.to_string(),
        })
    }

    /// Every entry of `kind`, ordered by key.
    pub fn list(&self, kind: Kind) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.entries[State::slot(kind)]
            .iter()
            .map(|(key, e)| (key.as_str(), &**e))
    }

    /// Every entry, by kind in dependency order, then by key.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, &str, &Entry)> + '_ {
        Kind::ALL
            .into_iter()
            .flat_map(move |kind| self.list(kind).map(move |(key, e)| (kind, key, e)))
    }

    /// The routes whose `service` is the service named `service`
    /// (qualified, `name.namespace`), looked up in the index: what directs
    /// that service, without scanning every route.
    pub fn routes_of<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        self.index
            .referrers(service)
            .filter(|(kind, _)| *kind == Kind::Route)
            .filter_map(move |(_, key)| Some((key.as_str(), self.get(Kind::Route, key)?)))
            .filter(move |(_, e)| match &e.resource {
                Resource::Route(r) => {
                    qualify(&r.service, namespace_or_default(&r.namespace)) == service
                }
                _ => false,
            })
    }

    /// Number of stored resources.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|m| m.len()).sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(|m| m.is_empty())
    }

    pub(super) fn insert(&mut self, entry: Entry) -> Option<Arc<Entry>> {
        let kind = entry.resource.kind();
        let key = entry.resource.key();
        let entry = Arc::new(entry);
        let old = self.entries[State::slot(kind)].insert(key.clone(), entry.clone());
        if let Some(old) = &old {
            self.index.remove(&key, &old.resource);
        }
        self.index.add(&key, &entry.resource);
        old
    }

    pub(super) fn remove(&mut self, kind: Kind, key: &str) -> Option<Arc<Entry>> {
        let old = self.entries[State::slot(kind)].remove(key);
        if let Some(old) = &old {
            self.index.remove(key, &old.resource);
        }
        old
    }

    /// Gives every touched entry that differs from `base` the version
    /// `revision`.
    pub(super) fn stamp(
        &mut self,
        base: &State,
        touched: &BTreeSet<(Kind, String)>,
        revision: u64,
    ) {
        for (kind, key) in touched {
            let slot = State::slot(*kind);
            let Some(e) = self.entries[slot].get(key) else {
                continue;
            };
            if base.entries[slot]
                .get(key)
                .is_some_and(|b| Arc::ptr_eq(b, e))
            {
                continue;
            }
            let mut e = (**e).clone();
            e.version = revision;
            self.entries[slot].insert(key.clone(), Arc::new(e));
        }
    }

    /// Replaces or removes one entry as etcd reported it; true if that
    /// changed anything.
    pub(super) fn apply_watched(&mut self, kind: Kind, key: &str, entry: Option<Entry>) -> bool {
        match entry {
            Some(e) => {
                if self
                    .get(kind, key)
                    .is_some_and(|old| old.version == e.version && *old == e)
                {
                    return false;
                }
                self.insert(e);
                true
            }
            None => self.remove(kind, key).is_some(),
        }
    }

    /// All resources as one document (no listeners), ordered by key.
    pub fn to_mesh(&self) -> MeshResources {
        let mut mesh = MeshResources::default();
        for (_, _, e) in self.iter() {
            e.resource.push_into(&mut mesh);
        }
        mesh
    }

    /// Validates the whole registry; paths name resources by key.
    pub fn validate(&self) -> Result<(), Rejected> {
        let keys: Vec<(Kind, &str)> = self.iter().map(|(k, key, _)| (k, key)).collect();
        self.validate_keys(&keys)
    }

    /// Validates what a write touched (`touched`, by kind and key, as they
    /// are now) together with everything it can affect: the services the
    /// touched resources refer to, services sharing a name or a virtual IP
    /// with a touched service, and the referrers of a removed service. The
    /// registry before the write was valid, so this finds exactly the errors
    /// [`State::validate`] would, at the cost of the change.
    pub(super) fn validate_change(
        &self,
        touched: &BTreeSet<(Kind, String)>,
    ) -> Result<(), Rejected> {
        let mut include: BTreeSet<(Kind, String)> = BTreeSet::new();
        for (kind, key) in touched {
            let entry = self.get(*kind, key);
            if entry.is_some() {
                include.insert((*kind, key.clone()));
            }
            match kind {
                Kind::Service => {
                    let name = index::service_name_of_key(key);
                    for k in self.index.services_named(&name) {
                        include.insert((Kind::Service, k.clone()));
                    }
                    match entry {
                        None => include.extend(self.index.referrers(&name).cloned()),
                        Some(e) => {
                            for ip in index::vips(&e.resource) {
                                for k in self.index.vip_owners(&ip) {
                                    include.insert((Kind::Service, k.clone()));
                                }
                            }
                        }
                    }
                }
                // Telemetry names are checked for duplicates across
                // namespaces; there is about one per namespace.
                Kind::Telemetry => include.extend(
                    self.list(Kind::Telemetry)
                        .map(|(k, _)| (Kind::Telemetry, k.to_string())),
                ),
                _ => {}
            }
        }
        // The services every included resource refers to, so references
        // that resolve do.
        let mut context = Vec::new();
        for (kind, key) in &include {
            let Some(e) = self.get(*kind, key) else {
                continue;
            };
            for name in index::references(&e.resource) {
                context.extend(
                    self.index
                        .services_named(&name)
                        .map(|k| (Kind::Service, k.clone())),
                );
            }
        }
        include.extend(context);
        let keys: Vec<(Kind, &str)> = include.iter().map(|(k, key)| (*k, key.as_str())).collect();
        self.validate_keys(&keys)
    }

    /// Validates the entries at `keys` (ordered by kind) as one document.
    fn validate_keys(&self, keys: &[(Kind, &str)]) -> Result<(), Rejected> {
        let mut mesh = MeshResources::default();
        let mut by_kind: HashMap<Kind, Vec<&str>> = HashMap::new();
        for (kind, key) in keys {
            if let Some(e) = self.get(*kind, key) {
                e.resource.push_into(&mut mesh);
                by_kind.entry(*kind).or_default().push(key);
            }
        }
        // The registry holds every service: a policy must name one of them.
        let Err(errs) = mesh.validate_registry() else {
            return Ok(());
        };
        let fields = errs
            .0
            .into_iter()
            .map(|f| keyed_field(f, &by_kind))
            .collect();
        Err(Rejected { fields })
    }

    /// The log record taking `base` to this state, for the keys a write
    /// touched.
    pub(super) fn log_record(&self, base: &State, touched: &BTreeSet<(Kind, String)>) -> LogRecord {
        let mut ops = Vec::new();
        for (kind, key) in touched {
            let slot = State::slot(*kind);
            match (base.entries[slot].get(key), self.entries[slot].get(key)) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) || a == b => {}
                (_, Some(b)) => ops.push(LogOp::Put(to_stored_resource(b))),
                (Some(_), None) => ops.push(LogOp::Delete {
                    kind: *kind,
                    key: key.clone(),
                }),
                (None, None) => {}
            }
        }
        LogRecord {
            revision: self.revision,
            ops,
        }
    }

    /// Applies a logged write (validated when it was made; the recovered
    /// state is validated as a whole once every record is replayed).
    pub(super) fn replay(&mut self, record: LogRecord, path: &Path) -> Result<(), Error> {
        for op in record.ops {
            match op {
                LogOp::Put(r) => {
                    let mut e = entry_from_stored(r, path)?;
                    if e.version == 0 {
                        e.version = record.revision;
                    }
                    self.insert(e);
                }
                LogOp::Delete { kind, key } => {
                    self.remove(kind, &key);
                }
            }
        }
        self.revision = record.revision;
        Ok(())
    }

    /// The on-disk form.
    pub fn to_stored(&self) -> StoredState {
        let mut out = StoredState {
            format: FORMAT_VERSION,
            revision: self.revision,
            ..Default::default()
        };
        for (_, _, e) in self.iter() {
            out.push(to_stored_resource(e));
        }
        out
    }

    /// Rebuilds a state from its on-disk form and checks it is valid.
    pub fn from_stored(stored: StoredState, path: &Path) -> Result<State, Error> {
        let state = State::from_stored_unchecked(stored, path)?;
        state.validate().map_err(|source| Error::StateInvalid {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(state)
    }

    /// [`State::from_stored`] without the validation (done by the caller
    /// once the log is replayed on top).
    pub(super) fn from_stored_unchecked(stored: StoredState, path: &Path) -> Result<State, Error> {
        let mut state = State::empty();
        state.revision = stored.revision;
        for r in stored.into_resources() {
            let mut e = entry_from_stored(r, path)?;
            if e.version == 0 {
                e.version = state.revision;
            }
            state.insert(e);
        }
        Ok(state)
    }
}

pub(super) fn to_stored_resource(e: &Entry) -> StoredResource {
    let origin = e.origin.to_string();
    let version = e.version;
    let ttl_ms = e
        .ttl
        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    match &e.resource {
        Resource::Service(r) => StoredResource::Service(stored(origin, ttl_ms, version, r)),
        Resource::Endpoint(r) => StoredResource::Endpoint(stored(origin, ttl_ms, version, r)),
        Resource::Route(r) => StoredResource::Route(stored(origin, ttl_ms, version, r)),
        Resource::Policy(r) => StoredResource::Policy(stored(origin, ttl_ms, version, r)),
        Resource::Authz(r) => {
            StoredResource::AuthorizationPolicy(stored(origin, ttl_ms, version, r))
        }
        Resource::Telemetry(r) => StoredResource::Telemetry(stored(origin, ttl_ms, version, r)),
        Resource::PeerAuthn(r) => {
            StoredResource::PeerAuthentication(stored(origin, ttl_ms, version, r))
        }
        Resource::Gateway(r) => StoredResource::Gateway(stored(origin, ttl_ms, version, r)),
    }
}

pub(super) fn entry_from_stored(r: StoredResource, path: &Path) -> Result<Entry, Error> {
    let (origin, ttl_ms, version, mut resource) = match r {
        StoredResource::Service(s) => {
            (s.origin, s.ttl_ms, s.version, Resource::Service(s.resource))
        }
        StoredResource::Endpoint(s) => (
            s.origin,
            s.ttl_ms,
            s.version,
            Resource::Endpoint(s.resource),
        ),
        StoredResource::Route(s) => (s.origin, s.ttl_ms, s.version, Resource::Route(s.resource)),
        StoredResource::Policy(s) => (s.origin, s.ttl_ms, s.version, Resource::Policy(s.resource)),
        StoredResource::AuthorizationPolicy(s) => {
            (s.origin, s.ttl_ms, s.version, Resource::Authz(s.resource))
        }
        StoredResource::Telemetry(s) => (
            s.origin,
            s.ttl_ms,
            s.version,
            Resource::Telemetry(s.resource),
        ),
        StoredResource::PeerAuthentication(s) => (
            s.origin,
            s.ttl_ms,
            s.version,
            Resource::PeerAuthn(s.resource),
        ),
        StoredResource::Gateway(s) => {
            (s.origin, s.ttl_ms, s.version, Resource::Gateway(s.resource))
        }
    };
    let origin = Origin::parse(&origin).ok_or_else(|| Error::StateInvalid {
        path: path.to_path_buf(),
        source: Rejected::single(
            "origin",
            format!("{origin:?} is not `api`, `file:<path>`, `kubernetes` or `istio`"),
        ),
    })?;
    resource.normalize();
    // Files written before the limit existed may hold longer leases: they
    // are shortened to the limit rather than refused.
    let ttl = ttl_ms.map(|ms| Duration::from_millis(ms).min(MAX_LEASE_TTL));
    Ok(Entry {
        resource,
        origin,
        ttl,
        version,
    })
}

fn stored<T: Clone>(origin: String, ttl_ms: Option<u64>, version: u64, r: &T) -> Stored<T> {
    Stored {
        origin,
        ttl_ms,
        version,
        resource: r.clone(),
    }
}

/// Rewrites `routes[3].rules[0]` into `routes[default/split].rules[0]`.
fn keyed_field(f: FieldError, keys: &HashMap<Kind, Vec<&str>>) -> RejectedField {
    let unkeyed = |f: FieldError| RejectedField {
        kind: None,
        key: None,
        path: f.path,
        message: f.message,
    };
    let Some(open) = f.path.find('[') else {
        return unkeyed(f);
    };
    let Some(close) = f.path[open..].find(']').map(|c| c + open) else {
        return unkeyed(f);
    };
    let list = &f.path[..open];
    let kind = Kind::ALL.into_iter().find(|k| k.plural() == list);
    let index = f.path[open + 1..close].parse::<usize>().ok();
    let (Some(kind), Some(index)) = (kind, index) else {
        return unkeyed(f);
    };
    let Some(key) = keys.get(&kind).and_then(|v| v.get(index)) else {
        return unkeyed(f);
    };
    RejectedField {
        kind: Some(kind),
        key: Some(key.to_string()),
        path: format!("{list}[{key}]{}", &f.path[close + 1..]),
        message: f.message,
    }
}
