//! One immutable revision of the registry: every resource, who owns it, and
//! its lease length. Writers build a new `State` from the old one; readers
//! hold an `Arc<State>` and never see a half-applied write.

use crate::error::{Error, Rejected, RejectedField};
use crate::resource::{Kind, Resource};
use crate::store::{Stored, StoredState, FORMAT_VERSION};
use sane_xds_proto::{FieldError, MeshResources};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
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
}

/// A stored resource and its bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The resource, namespace normalized.
    pub resource: Resource,
    /// Who wrote it.
    pub origin: Origin,
    /// Lease length of an endpoint registered with a TTL.
    pub ttl: Option<Duration>,
}

/// The registry at one revision.
#[derive(Clone, Debug)]
pub struct State {
    /// Revision: incremented by every write that changes something.
    pub revision: u64,
    /// When this revision was written (for convergence time).
    pub written_at: Instant,
    entries: BTreeMap<(Kind, String), Entry>,
}

// === impl Origin ===

impl Origin {
    /// Parses the stored form (`api`, `file:<path>`, `kubernetes`).
    pub fn parse(s: &str) -> Option<Origin> {
        if s == "api" {
            Some(Origin::Api)
        } else if s == "kubernetes" {
            Some(Origin::Kubernetes)
        } else {
            s.strip_prefix("file:")
                .map(|p| Origin::File(PathBuf::from(p)))
        }
    }

    /// The file, for file-owned resources.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Origin::File(p) => Some(p),
            Origin::Api | Origin::Kubernetes => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Api => f.write_str("api"),
            Origin::File(p) => write!(f, "file:{}", p.display()),
            Origin::Kubernetes => f.write_str("kubernetes"),
        }
    }
}

// === impl State ===

impl State {
    /// An empty registry at revision 0.
    pub fn empty() -> State {
        State {
            revision: 0,
            written_at: Instant::now(),
            entries: BTreeMap::new(),
        }
    }

    /// The entry of `kind` at `key`.
    pub fn get(&self, kind: Kind, key: &str) -> Option<&Entry> {
        self.entries.get(&(kind, key.to_string()))
    }

    /// Every entry of `kind`, ordered by key.
    pub fn list(&self, kind: Kind) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.entries
            .range((kind, String::new())..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|((_, key), e)| (key.as_str(), e))
    }

    /// Every entry, by kind in dependency order, then by key.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, &str, &Entry)> + '_ {
        self.entries
            .iter()
            .map(|((k, key), e)| (*k, key.as_str(), e))
    }

    /// Number of stored resources.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn insert(&mut self, entry: Entry) -> Option<Entry> {
        let k = (entry.resource.kind(), entry.resource.key());
        self.entries.insert(k, entry)
    }

    pub(super) fn remove(&mut self, kind: Kind, key: &str) -> Option<Entry> {
        self.entries.remove(&(kind, key.to_string()))
    }

    /// All resources as one document (no listeners), ordered by key.
    pub fn to_mesh(&self) -> MeshResources {
        let mut mesh = MeshResources::default();
        for e in self.entries.values() {
            e.resource.push_into(&mut mesh);
        }
        mesh
    }

    /// Validates the whole registry; paths name resources by key.
    pub fn validate(&self) -> Result<(), Rejected> {
        let Err(errs) = self.to_mesh().validate_registry() else {
            return Ok(());
        };
        let mut keys: HashMap<Kind, Vec<&str>> = HashMap::new();
        for (kind, key, _) in self.iter() {
            keys.entry(kind).or_default().push(key);
        }
        let fields = errs.0.into_iter().map(|f| keyed_field(f, &keys)).collect();
        Err(Rejected { fields })
    }

    /// The on-disk form.
    pub fn to_stored(&self) -> StoredState {
        let mut out = StoredState {
            format: FORMAT_VERSION,
            revision: self.revision,
            ..Default::default()
        };
        for e in self.entries.values() {
            let origin = e.origin.to_string();
            let ttl_ms = e.ttl.map(|t| t.as_millis() as u64);
            match &e.resource {
                Resource::Service(r) => out.services.push(stored(origin, ttl_ms, r)),
                Resource::Endpoint(r) => out.endpoints.push(stored(origin, ttl_ms, r)),
                Resource::Route(r) => out.routes.push(stored(origin, ttl_ms, r)),
                Resource::Policy(r) => out.policies.push(stored(origin, ttl_ms, r)),
                Resource::Authz(r) => out.authorization_policies.push(stored(origin, ttl_ms, r)),
                Resource::Telemetry(r) => out.telemetry.push(stored(origin, ttl_ms, r)),
            }
        }
        out
    }

    /// Rebuilds a state from its on-disk form and checks it is valid.
    pub fn from_stored(stored: StoredState, path: &Path) -> Result<State, Error> {
        let mut state = State::empty();
        state.revision = stored.revision;
        let bad_origin = |o: &str| Error::StateInvalid {
            path: path.to_path_buf(),
            source: Rejected::single(
                "origin",
                format!("{o:?} is not `api`, `file:<path>` or `kubernetes`"),
            ),
        };
        let mut add = |origin: String, ttl_ms: Option<u64>, mut resource: Resource| {
            let origin = Origin::parse(&origin).ok_or_else(|| bad_origin(&origin))?;
            resource.normalize();
            state.insert(Entry {
                resource,
                origin,
                ttl: ttl_ms.map(Duration::from_millis),
            });
            Ok::<_, Error>(())
        };
        for s in stored.services {
            add(s.origin, s.ttl_ms, Resource::Service(s.resource))?;
        }
        for s in stored.endpoints {
            add(s.origin, s.ttl_ms, Resource::Endpoint(s.resource))?;
        }
        for s in stored.routes {
            add(s.origin, s.ttl_ms, Resource::Route(s.resource))?;
        }
        for s in stored.policies {
            add(s.origin, s.ttl_ms, Resource::Policy(s.resource))?;
        }
        for s in stored.authorization_policies {
            add(s.origin, s.ttl_ms, Resource::Authz(s.resource))?;
        }
        for s in stored.telemetry {
            add(s.origin, s.ttl_ms, Resource::Telemetry(s.resource))?;
        }
        state.validate().map_err(|source| Error::StateInvalid {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(state)
    }
}

fn stored<T: Clone>(origin: String, ttl_ms: Option<u64>, r: &T) -> Stored<T> {
    Stored {
        origin,
        ttl_ms,
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
