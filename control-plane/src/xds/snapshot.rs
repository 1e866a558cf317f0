//! The registry encoded for the wire: each resource packed once into an
//! `Any` with a content version, shared by every stream through `Arc`s.

use super::scope::Scopes;
use crate::registry::State;
use crate::resource::{Kind, Resource};
use envoy_types::pb::google::protobuf::Any;
use sane_xds_proto::TypeUrl;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::time::Instant;

/// Resources of one type by name (the registry key).
pub type ResourceMap = BTreeMap<String, Arc<EncodedResource>>;

/// One resource, ready to send.
#[derive(Debug, PartialEq)]
pub struct EncodedResource {
    /// The resource name on the wire: its registry key.
    pub name: String,
    /// Hash of the encoded bytes: changes exactly when the resource does.
    pub version: String,
    /// The packed resource.
    pub any: Any,
    /// The resource itself (for status pages and view filtering).
    pub resource: Resource,
    /// Qualified key (`name.namespace`) of the service it belongs to.
    pub service: String,
    /// For routes: qualified keys of every destination and mirror service.
    pub destinations: Vec<String>,
}

/// The whole registry at one revision, encoded.
#[derive(Debug, Clone)]
pub struct XdsSnapshot {
    /// The registry revision.
    pub revision: u64,
    /// When the first write of this revision's batch happened.
    pub written_at: Instant,
    /// The resources and their index: shared (not copied) by the
    /// snapshots of one revision under other scopes.
    encoded: Arc<Encoded>,
    /// The Sidecar scopes views are limited by ([`super::scope`]).
    pub scopes: Arc<Scopes>,
}

/// What one registry revision encodes to.
#[derive(Debug)]
struct Encoded {
    types: HashMap<TypeUrl, ResourceMap>,
    /// Endpoint names by IP: which endpoints may point at a proxy's inbound
    /// listener, found per stream by lookup rather than by a scan of every
    /// endpoint.
    endpoint_ips: HashMap<IpAddr, Vec<String>>,
}

/// Hex of the first 8 bytes of a SHA-256: short, and stable across
/// processes and versions (unlike `DefaultHasher`).
pub(crate) fn short_hash(h: Sha256) -> String {
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The version of a set of resources: a hash over names and versions.
pub fn set_version<'a>(resources: impl IntoIterator<Item = &'a Arc<EncodedResource>>) -> String {
    let mut h = Sha256::new();
    for r in resources {
        h.update(r.name.as_bytes());
        h.update([0]);
        h.update(r.version.as_bytes());
        h.update([0]);
    }
    short_hash(h)
}

// === impl EncodedResource ===

impl EncodedResource {
    /// Encodes `resource` stored under `name`.
    pub fn new(name: String, resource: Resource) -> EncodedResource {
        let bytes = resource.encode();
        let version = short_hash(Sha256::new_with_prefix(&bytes));
        let destinations = match &resource {
            Resource::Route(r) => r
                .rules
                .iter()
                .flat_map(|rule| {
                    let mirror = rule.mirror.as_ref().map(|m| &m.service);
                    rule.destinations.iter().map(|d| &d.service).chain(mirror)
                })
                .filter(|s| !s.is_empty())
                .map(|s| sane_xds_proto::resources::qualify(s, &r.namespace))
                .collect(),
            _ => Vec::new(),
        };
        EncodedResource {
            name,
            version,
            any: Any {
                type_url: resource.kind().type_url().as_str().to_string(),
                value: bytes,
            },
            service: resource.service_ref(),
            destinations,
            resource,
        }
    }
}

// === impl XdsSnapshot ===

impl XdsSnapshot {
    /// Encodes `state`, reusing the encodings of `prev` for unchanged
    /// resources; the scopes are `prev`'s.
    pub fn build(state: &State, written_at: Instant, prev: Option<&XdsSnapshot>) -> XdsSnapshot {
        let mut types: HashMap<TypeUrl, ResourceMap> = HashMap::new();
        for (kind, key, entry) in state.iter() {
            let t = kind.type_url();
            let reused = prev
                .and_then(|p| p.resources(t).get(key))
                .filter(|r| r.resource == entry.resource)
                .cloned();
            let encoded = reused.unwrap_or_else(|| {
                Arc::new(EncodedResource::new(
                    key.to_string(),
                    entry.resource.clone(),
                ))
            });
            types.entry(t).or_default().insert(key.to_string(), encoded);
        }
        let mut endpoint_ips: HashMap<IpAddr, Vec<String>> = HashMap::new();
        for (name, r) in types.get(&TypeUrl::Endpoint).into_iter().flatten() {
            if let Resource::Endpoint(e) = &r.resource {
                if let Some(ip) = e.ip() {
                    endpoint_ips
                        .entry(ip.to_canonical())
                        .or_default()
                        .push(name.clone());
                }
            }
        }
        XdsSnapshot {
            revision: state.revision,
            written_at,
            encoded: Arc::new(Encoded {
                types,
                endpoint_ips,
            }),
            scopes: prev.map(|p| p.scopes.clone()).unwrap_or_default(),
        }
    }

    /// The same resources (shared, not copied) under other Sidecar scopes.
    pub fn with_scopes(&self, scopes: Arc<Scopes>) -> XdsSnapshot {
        XdsSnapshot {
            revision: self.revision,
            written_at: self.written_at,
            encoded: self.encoded.clone(),
            scopes,
        }
    }

    /// True if this snapshot holds something `revision` and scope
    /// `generation` (a view's) do not: a later registry revision or a
    /// later set of scopes.
    pub fn is_newer_than(&self, revision: u64, generation: u64) -> bool {
        self.revision > revision || self.scopes.generation > generation
    }

    /// Names of the endpoints whose address is `ip` (canonical form).
    pub fn endpoints_at(&self, ip: IpAddr) -> &[String] {
        self.encoded
            .endpoint_ips
            .get(&ip)
            .map_or(&[], Vec::as_slice)
    }

    /// Every resource of type `t` (listeners: none).
    pub fn resources(&self, t: TypeUrl) -> &ResourceMap {
        static EMPTY: ResourceMap = BTreeMap::new();
        self.encoded.types.get(&t).unwrap_or(&EMPTY)
    }

    /// Every resource of `kind`.
    pub fn of_kind(&self, kind: Kind) -> &ResourceMap {
        self.resources(kind.type_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_scopes_share_the_encoded_resources() {
        let snap = crate::xds::test_support::snapshot();
        let scoped = snap.with_scopes(Arc::new(Scopes {
            generation: 7,
            scopes: Vec::new(),
        }));
        assert!(Arc::ptr_eq(&snap.encoded, &scoped.encoded));
        assert_eq!(scoped.revision, snap.revision);
        assert_eq!(scoped.scopes.generation, 7);
        assert!(!scoped.resources(TypeUrl::Service).is_empty());
    }
}
