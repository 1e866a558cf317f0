//! The xDS client's state machine, free of I/O.
//!
//! For each type it keeps what was last accepted (by resource name: the
//! bytes it came as and their digest, not the decoded resource), the
//! version and nonce to answer with, and whether the type was ever
//! accepted. A state-of-the-world response
//! repeats every resource of its type; each resource whose bytes are not
//! those of an accepted one is decoded and validated on its own (a resource
//! that fails names itself in the NACK), the others are kept as they are,
//! and what the response changes ([`Received`]) is applied to the accepted
//! set in place. Resources referring to a service the
//! proxy has not (yet) received are held back rather than rejected: the
//! control plane may send types in any order, and they become active when
//! the service arrives. The merged candidate is then compiled by the caller;
//! a compile error is a NACK too (naming the resource:
//! [`compile_nack_reason`]), and the last good config keeps serving.

use crate::error::StartError;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use sane_xds_proto::resources::qualify;
use sane_xds_proto::{
    AuthorizationPolicy, DestinationPolicy, Endpoint, Gateway, MeshResources, PeerAuthentication,
    Route, Service, Telemetry, TypeUrl,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasherDefault;

/// The types the proxy subscribes to, in the order it asks for them. A
/// sidecar is sent no `Gateway` (none selects it) and ignores any.
pub const SUBSCRIBED: [TypeUrl; 8] = [
    TypeUrl::Service,
    TypeUrl::Endpoint,
    TypeUrl::Route,
    TypeUrl::DestinationPolicy,
    TypeUrl::AuthorizationPolicy,
    TypeUrl::Telemetry,
    TypeUrl::PeerAuthentication,
    TypeUrl::Gateway,
];

/// A decoded resource of any subscribed type.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A service.
    Service(Service),
    /// An endpoint.
    Endpoint(Endpoint),
    /// A route.
    Route(Route),
    /// A destination policy.
    Policy(DestinationPolicy),
    /// An authorization policy.
    Authz(AuthorizationPolicy),
    /// Tracing and access-log settings.
    Telemetry(Telemetry),
    /// A mutual TLS mode of some workloads' inbound side.
    PeerAuthn(PeerAuthentication),
    /// An ingress gateway configuration (read by `sane-proxy gateway`).
    Gateway(Gateway),
}

#[derive(Debug, Default)]
struct TypeState {
    /// Version of the last accepted response.
    version: String,
    /// Accepted resources in name order, each with the digest of its
    /// encoding.
    accepted: Accepted,
    /// The digests of `accepted`'s encodings (one per resource: its name is
    /// read from its bytes, so two names never share bytes).
    digests: DigestSet,
    /// True once a response of this type was accepted.
    acked: bool,
}

/// A type's accepted resources, packed in name order: their names back to
/// back in one string, the bytes each came as (the `Any`'s value) back to
/// back in one buffer, and per resource its [`Digest`] and where its name
/// and bytes end. Three exactly sized allocations per type, rebuilt when
/// a response changes the type.
///
/// Only the candidate of a later push decodes them again (a decode of
/// bytes once validated gives the same resource); the compiled snapshot
/// holds what serves. Kept decoded, a sidecar's copy of 10 000 services
/// and endpoints was ≈ 10 MB of its heap
/// (`bench/results/memory-2026-12-06.md`, section 7).
#[derive(Debug, Default)]
struct Accepted {
    names: Box<str>,
    bytes: Box<[u8]>,
    entries: Box<[Entry]>,
}

/// Where one resource of [`Accepted`] ends, and its digest.
#[derive(Clone, Copy, Debug)]
struct Entry {
    digest: Digest,
    name_end: usize,
    bytes_end: usize,
}

/// One accepted (or about to be) resource, borrowed.
#[derive(Clone, Copy, Debug)]
struct Held<'a> {
    name: &'a str,
    bytes: &'a [u8],
    digest: Digest,
}

/// A new or changed resource of a response: decoded and validated, with
/// the bytes it came as (what [`Held`] keeps once it is accepted).
#[derive(Debug)]
struct Fresh {
    resource: Resource,
    bytes: Box<[u8]>,
    digest: Digest,
}

/// A 128-bit keyed digest of a resource's encoded bytes: two SipHash-1-3
/// keyed with random keys drawn per proxy ([`DigestKeys`]). A response
/// usually repeats almost every resource it held before; a resource whose
/// digest is that of an accepted one is the same bytes, so it is neither
/// decoded nor validated again (validation reads the resource alone). Two
/// different encodings meet with a chance of 2^-128 per pair (the keys are
/// secret to the process, so not even a hostile sender can aim for it),
/// and the digest costs 16 bytes per resource where the bytes themselves
/// would cost their length.
type Digest = u128;

/// A set of digests, hashed by their low 64 bits: they are keyed hashes
/// already.
type DigestSet = HashSet<Digest, BuildHasherDefault<DigestHasher>>;

/// The [`std::hash::Hasher`] of a [`DigestSet`]: a digest's low 64 bits.
#[derive(Debug, Default)]
struct DigestHasher(u64);

/// The keys of [`Digest`], drawn once per [`XdsState`].
#[derive(Debug, Default)]
struct DigestKeys([std::hash::RandomState; 2]);

/// Per-type state for one proxy's xDS session(s); survives reconnects.
#[derive(Debug, Default)]
pub struct XdsState {
    types: HashMap<TypeUrl, TypeState>,
    keys: DigestKeys,
}

/// A state-of-the-world response checked against what is accepted of its
/// type: what it adds or changes (decoded and validated) and what it no
/// longer holds. Resources it repeats byte for byte are not in it.
#[derive(Debug)]
pub struct Received {
    /// The response's type.
    pub type_url: TypeUrl,
    /// New or changed resources by name.
    changed: BTreeMap<String, Fresh>,
    /// Accepted resources the response no longer holds.
    removed: BTreeSet<String>,
}

/// What to do with a response.
#[derive(Debug)]
pub struct Decision {
    /// The request to send back (ACK or NACK).
    pub reply: DiscoveryRequest,
    /// Resources to apply, when accepted.
    pub apply: Option<MeshResources>,
}

// === impl XdsState ===

impl XdsState {
    /// The initial request for `type_url` on a new stream; `node` goes on
    /// the first one only.
    pub fn subscribe(&self, t: TypeUrl) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: t.as_str().to_string(),
            version_info: self
                .types
                .get(&t)
                .map(|s| s.version.clone())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    /// True once every subscribed type was accepted at least once.
    pub fn all_acked(&self) -> bool {
        SUBSCRIBED
            .iter()
            .all(|t| self.types.get(t).is_some_and(|s| s.acked))
    }

    /// True once a response of `t` was accepted.
    pub fn acked(&self, t: TypeUrl) -> bool {
        self.types.get(&t).is_some_and(|s| s.acked)
    }

    /// The version accepted for `t`.
    pub fn version(&self, t: TypeUrl) -> &str {
        self.types.get(&t).map_or("", |s| s.version.as_str())
    }

    /// The accepted resource of type `t` named `name` (decoded anew).
    pub fn get(&self, t: TypeUrl, name: &str) -> Option<Resource> {
        let held = self.types.get(&t)?.accepted.get(name)?;
        held.decode(t).ok()
    }

    /// How many resources of type `t` are accepted.
    pub fn len(&self, t: TypeUrl) -> usize {
        self.types.get(&t).map_or(0, |s| s.accepted.len())
    }

    /// Checks `resp` against what is accepted of its type: every resource
    /// whose bytes differ from all accepted ones is decoded and validated
    /// (the first failure is the NACK's reason, naming the resource and
    /// field), the others are kept as they are. Nothing is recorded until
    /// [`XdsState::accept`].
    pub fn receive(&self, resp: &DiscoveryResponse) -> Result<Received, String> {
        let t = TypeUrl::parse(&resp.type_url)
            .filter(|t| SUBSCRIBED.contains(t))
            .ok_or_else(|| format!("unsupported type {:?}", resp.type_url))?;
        let held = self.types.get(&t);
        let mut kept = DigestSet::with_capacity_and_hasher(
            held.map_or(0, |h| h.accepted.len()),
            Default::default(),
        );
        let mut changed = BTreeMap::new();
        for (i, any) in resp.resources.iter().enumerate() {
            check_type(t, any).map_err(|e| format!("resources[{i}]: {e}"))?;
            let digest = self.keys.digest(&any.value);
            if held.is_some_and(|h| h.digests.contains(&digest)) {
                kept.insert(digest);
                continue;
            }
            let r = decode(t, any).map_err(|e| format!("resources[{i}]: {e}"))?;
            let name = name_of(&r);
            validate(&r).map_err(|e| format!("{} {name}: {e}", kind(&r)))?;
            changed.insert(
                name,
                Fresh {
                    resource: r,
                    bytes: any.value.as_slice().into(),
                    digest,
                },
            );
        }
        let removed = match held {
            // Unless every accepted resource is repeated or replaced (the
            // two counts are of different resources), some are gone.
            Some(h) if kept.len() + replaced(h, &kept, &changed) < h.accepted.len() => h
                .accepted
                .iter()
                .filter(|old| !kept.contains(&old.digest) && !changed.contains_key(old.name))
                .map(|old| old.name.to_string())
                .collect(),
            _ => BTreeSet::new(),
        };
        Ok(Received {
            type_url: t,
            changed,
            removed,
        })
    }

    /// Checks `resp` ([`XdsState::receive`]) and returns, beside what it
    /// changes, the merged resources of every type to compile; the caller
    /// then calls [`XdsState::accept`] or [`XdsState::reject`] with the
    /// compile result.
    pub fn candidate(&self, resp: &DiscoveryResponse) -> Result<(Received, MeshResources), String> {
        let received = self.receive(resp)?;
        let candidate = self.merge(&received)?;
        Ok((received, candidate))
    }

    /// The resources of every type to compile once `received` is accepted:
    /// every accepted resource it leaves in place (of every type), decoded,
    /// then what it adds or changes.
    pub fn merge(&self, received: &Received) -> Result<MeshResources, String> {
        let t = received.type_url;
        let mut kept = Vec::new();
        for other in SUBSCRIBED {
            let Some(s) = self.types.get(&other) else {
                continue;
            };
            for held in s.accepted.iter() {
                if other == t && !received.keeps(held.name) {
                    continue;
                }
                kept.push(held.decode(other)?);
            }
        }
        let fresh = received.changed.values().map(|f| &f.resource);
        Ok(assemble(kept.iter().chain(fresh).collect()))
    }

    /// Records an accepted response (what `received` changes of its type)
    /// and builds its ACK.
    pub fn accept(&mut self, resp: &DiscoveryResponse, received: Received) -> DiscoveryRequest {
        let s = self.types.entry(received.type_url).or_default();
        if !received.is_unchanged() {
            let mut next: Vec<Held<'_>> = s
                .accepted
                .iter()
                .filter(|h| received.keeps(h.name))
                .collect();
            next.extend(received.changed.iter().map(|(name, f)| Held {
                name,
                bytes: &f.bytes,
                digest: f.digest,
            }));
            next.sort_unstable_by(|a, b| a.name.cmp(b.name));
            let accepted = Accepted::new(&next);
            let mut digests = DigestSet::with_capacity_and_hasher(next.len(), Default::default());
            digests.extend(next.iter().map(|h| h.digest));
            s.accepted = accepted;
            s.digests = digests;
        }
        s.version = resp.version_info.clone();
        s.acked = true;
        DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        }
    }

    /// Builds the NACK for a rejected response: the last accepted version,
    /// the response's nonce, and the reason.
    pub fn reject(&self, resp: &DiscoveryResponse, reason: String) -> DiscoveryRequest {
        let version = TypeUrl::parse(&resp.type_url)
            .map(|t| self.version(t).to_string())
            .unwrap_or_default();
        DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: version,
            response_nonce: resp.nonce.clone(),
            error_detail: Some(Status {
                code: 3, // INVALID_ARGUMENT
                message: reason,
                details: vec![],
            }),
            ..Default::default()
        }
    }
}

/// How many accepted resources of `h` are replaced by one of `changed`
/// (same name, other bytes) and not `kept` as well.
fn replaced(h: &TypeState, kept: &DigestSet, changed: &BTreeMap<String, Fresh>) -> usize {
    changed
        .keys()
        .filter_map(|name| h.accepted.get(name))
        .filter(|old| !kept.contains(&old.digest))
        .count()
}

// === impl Received ===

impl Received {
    /// True when the response holds exactly the accepted resources (byte
    /// for byte): accepting it changes nothing but the version.
    pub fn is_unchanged(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }

    /// The new or changed resources, by name.
    pub fn changed(&self) -> impl Iterator<Item = (&str, &Resource)> {
        self.changed
            .iter()
            .map(|(name, fresh)| (name.as_str(), &fresh.resource))
    }

    /// The names of the accepted resources the response no longer holds.
    pub fn removed(&self) -> impl Iterator<Item = &str> {
        self.removed.iter().map(String::as_str)
    }

    /// True when the accepted resource `name` stays as it is once this is
    /// accepted (neither changed nor removed).
    fn keeps(&self, name: &str) -> bool {
        !self.changed.contains_key(name) && !self.removed.contains(name)
    }
}

// === impl Accepted ===

impl Accepted {
    /// Packs `items` (in name order, names distinct).
    fn new(items: &[Held<'_>]) -> Self {
        let mut names = String::with_capacity(items.iter().map(|h| h.name.len()).sum());
        let mut bytes = Vec::with_capacity(items.iter().map(|h| h.bytes.len()).sum());
        let entries = items
            .iter()
            .map(|h| {
                names.push_str(h.name);
                bytes.extend_from_slice(h.bytes);
                Entry {
                    digest: h.digest,
                    name_end: names.len(),
                    bytes_end: bytes.len(),
                }
            })
            .collect();
        Self {
            names: names.into_boxed_str(),
            bytes: bytes.into_boxed_slice(),
            entries,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The `i`-th resource in name order.
    fn at(&self, i: usize) -> Held<'_> {
        let (name_start, bytes_start) = match i.checked_sub(1) {
            Some(p) => (self.entries[p].name_end, self.entries[p].bytes_end),
            None => (0, 0),
        };
        let e = self.entries[i];
        Held {
            name: &self.names[name_start..e.name_end],
            bytes: &self.bytes[bytes_start..e.bytes_end],
            digest: e.digest,
        }
    }

    fn iter(&self) -> impl Iterator<Item = Held<'_>> {
        (0..self.len()).map(|i| self.at(i))
    }

    /// The resource named `name` (a binary search).
    fn get(&self, name: &str) -> Option<Held<'_>> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let held = self.at(mid);
            match held.name.cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(held),
            }
        }
        None
    }
}

// === impl Held ===

impl Held<'_> {
    /// The resource again, from the bytes it was accepted as (the error,
    /// which bytes that once decoded cannot meet, names it).
    fn decode(&self, t: TypeUrl) -> Result<Resource, String> {
        decode_bytes(t, self.bytes)
            .map_err(|e| format!("accepted {} {}: {e}", t.as_str(), self.name))
    }
}

// === impl DigestHasher ===

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is ever called (a `Digest`); anything else is
        // folded in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, digest: u128) {
        self.0 = digest as u64;
    }
}

// === impl DigestKeys ===

impl DigestKeys {
    fn digest(&self, bytes: &[u8]) -> Digest {
        use std::hash::BuildHasher;
        let [a, b] = &self.0;
        (u128::from(a.hash_one(bytes)) << 64) | u128::from(b.hash_one(bytes))
    }
}

/// Decodes one resource of type `t` and validates it; the error names the
/// resource (`service default/echo: ports[0].port: …`) once it could be
/// decoded.
pub fn decode_validated(t: TypeUrl, any: &Any) -> Result<Resource, String> {
    check_type(t, any)?;
    let r = decode(t, any)?;
    validate(&r).map_err(|e| format!("{} {}: {e}", kind(&r), name_of(&r)))?;
    Ok(r)
}

fn check_type(t: TypeUrl, any: &Any) -> Result<(), String> {
    if any.type_url != t.as_str() {
        return Err(format!(
            "type {:?} in a {} response",
            any.type_url,
            t.as_str()
        ));
    }
    Ok(())
}

fn decode(t: TypeUrl, any: &Any) -> Result<Resource, String> {
    decode_bytes(t, &any.value)
}

fn decode_bytes(t: TypeUrl, v: &[u8]) -> Result<Resource, String> {
    let err = |e: prost::DecodeError| format!("cannot decode: {e}");
    Ok(match t {
        TypeUrl::Service => Resource::Service(Service::decode(v).map_err(err)?),
        TypeUrl::Endpoint => Resource::Endpoint(Endpoint::decode(v).map_err(err)?),
        TypeUrl::Route => Resource::Route(Route::decode(v).map_err(err)?),
        TypeUrl::DestinationPolicy => Resource::Policy(DestinationPolicy::decode(v).map_err(err)?),
        TypeUrl::AuthorizationPolicy => {
            Resource::Authz(AuthorizationPolicy::decode(v).map_err(err)?)
        }
        TypeUrl::Telemetry => Resource::Telemetry(Telemetry::decode(v).map_err(err)?),
        TypeUrl::PeerAuthentication => {
            Resource::PeerAuthn(PeerAuthentication::decode(v).map_err(err)?)
        }
        TypeUrl::Gateway => Resource::Gateway(Gateway::decode(v).map_err(err)?),
        TypeUrl::Listener => return Err("listeners come from the bootstrap".into()),
    })
}

fn validate(r: &Resource) -> Result<(), sane_xds_proto::ValidationErrors> {
    match r {
        Resource::Service(s) => s.validate(),
        Resource::Endpoint(e) => e.validate(),
        Resource::Route(x) => x.validate(),
        Resource::Policy(p) => p.validate(),
        Resource::Authz(a) => a.validate(),
        Resource::Telemetry(t) => t.validate(),
        Resource::PeerAuthn(p) => p.validate(),
        Resource::Gateway(g) => g.validate_resource(),
    }
}

fn kind(r: &Resource) -> &'static str {
    match r {
        Resource::Service(_) => "service",
        Resource::Endpoint(_) => "endpoint",
        Resource::Route(_) => "route",
        Resource::Policy(_) => "policy",
        Resource::Authz(_) => "authorization_policy",
        Resource::Telemetry(_) => "telemetry",
        Resource::PeerAuthn(_) => "peer_authentication",
        Resource::Gateway(_) => "gateway",
    }
}

/// The resource's name, as the control plane names it.
pub fn name_of(r: &Resource) -> String {
    let ns = |n: &str| sane_xds_proto::namespace_or_default(n).to_string();
    match r {
        Resource::Service(s) => format!("{}/{}", ns(&s.namespace), s.name),
        Resource::Route(x) => format!("{}/{}", ns(&x.namespace), x.name),
        Resource::Policy(p) => format!("{}/{}", ns(&p.namespace), p.name),
        Resource::Authz(a) => format!("{}/{}", ns(&a.namespace), a.name),
        Resource::Telemetry(t) => format!("{}/{}", ns(&t.namespace), t.name),
        Resource::PeerAuthn(p) => format!("{}/{}", ns(&p.namespace), p.name),
        Resource::Gateway(g) => format!("{}/{}", ns(&g.namespace), g.name),
        Resource::Endpoint(e) => {
            let port = if e.proxy_port != 0 {
                e.proxy_port
            } else {
                e.port
            };
            let addr = if e.address.contains(':') {
                format!("[{}]", e.address)
            } else {
                e.address.clone()
            };
            format!("{}/{}/{addr}:{port}", ns(&e.namespace), e.service)
        }
    }
}

/// The NACK message for a candidate that validated but failed to compile
/// (a regex, a destination port): the error names the field by its index in
/// the merged resources (`resources.routes[3]...`), which means nothing to
/// the control plane, so the message starts with the resource's name, as a
/// validation NACK does (`route default/web: ...`).
pub fn compile_nack_reason(e: &StartError, candidate: &MeshResources) -> String {
    let text = e.to_string();
    let StartError::Compile { field, .. } = e else {
        return text;
    };
    match resource_at(field, candidate) {
        Some(r) => format!("{} {}: {text}", kind(&r), name_of(&r)),
        None => text,
    }
}

/// The resource a compile error's field path (`resources.<kind>[<i>]...`)
/// points at. Listeners come from the bootstrap file, not from xDS.
fn resource_at(field: &str, candidate: &MeshResources) -> Option<Resource> {
    let (kind, rest) = field.strip_prefix("resources.")?.split_once('[')?;
    let i: usize = rest.split_once(']')?.0.parse().ok()?;
    match kind {
        "services" => candidate.services.get(i).cloned().map(Resource::Service),
        "endpoints" => candidate.endpoints.get(i).cloned().map(Resource::Endpoint),
        "routes" => candidate.routes.get(i).cloned().map(Resource::Route),
        "policies" => candidate.policies.get(i).cloned().map(Resource::Policy),
        "authorization_policies" => candidate
            .authorization_policies
            .get(i)
            .cloned()
            .map(Resource::Authz),
        "telemetry" => candidate.telemetry.get(i).cloned().map(Resource::Telemetry),
        "peer_authentications" => candidate
            .peer_authentications
            .get(i)
            .cloned()
            .map(Resource::PeerAuthn),
        "gateways" => candidate.gateways.get(i).cloned().map(Resource::Gateway),
        _ => None,
    }
}

/// Builds the resource set, holding back what refers to unknown services.
fn assemble(all: Vec<&Resource>) -> MeshResources {
    let services: HashSet<String> = all
        .iter()
        .filter_map(|r| match r {
            Resource::Service(s) => Some(s.key()),
            _ => None,
        })
        .collect();
    let known = |name: &str, ns: &str| services.contains(&qualify(name, ns));
    let mut out = MeshResources::default();
    for r in all {
        match r {
            Resource::Service(s) => out.services.push(s.clone()),
            Resource::Endpoint(e) if known(&e.service, &e.namespace) => {
                out.endpoints.push(e.clone())
            }
            Resource::Route(x)
                if known(&x.service, &x.namespace)
                    && x.rules.iter().all(|rule| {
                        rule.destinations
                            .iter()
                            .all(|d| known(&d.service, &x.namespace))
                    }) =>
            {
                out.routes.push(x.clone())
            }
            Resource::Policy(p) if known(&p.service, &p.namespace) => out.policies.push(p.clone()),
            // Its target is the workload enforcing it, which need not be a
            // service this proxy sees: never held back.
            Resource::Authz(a) => out.authorization_policies.push(a.clone()),
            Resource::Telemetry(t) => out.telemetry.push(t.clone()),
            Resource::PeerAuthn(p) => out.peer_authentications.push(p.clone()),
            // Its routes' services are checked when the gateway compiles
            // its table: never held back.
            Resource::Gateway(g) => out.gateways.push(g.clone()),
            other => tracing::debug!(
                resource = %name_of(other),
                "held back until the service it refers to arrives"
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sane_xds_proto::ServicePort;

    fn any<M: Message>(t: TypeUrl, m: &M) -> Any {
        Any {
            type_url: t.as_str().into(),
            value: m.encode_to_vec(),
        }
    }

    fn resp(t: TypeUrl, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            type_url: t.as_str().into(),
            version_info: version.into(),
            nonce: nonce.into(),
            resources,
            ..Default::default()
        }
    }

    fn echo() -> Service {
        Service {
            name: "echo".into(),
            ports: vec![ServicePort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            service: "echo".into(),
            address: "10.0.0.1".into(),
            port: 8080,
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_before_services_are_held_not_rejected() {
        let mut st = XdsState::default();
        let r = resp(
            TypeUrl::Endpoint,
            "e1",
            "n1",
            vec![any(TypeUrl::Endpoint, &endpoint())],
        );
        let (got, candidate) = st.candidate(&r).unwrap();
        assert!(candidate.endpoints.is_empty());
        let ack = st.accept(&r, got);
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("e1", "n1")
        );
        assert!(ack.error_detail.is_none());

        let r = resp(
            TypeUrl::Service,
            "s1",
            "n2",
            vec![any(TypeUrl::Service, &echo())],
        );
        let (_, candidate) = st.candidate(&r).unwrap();
        assert_eq!(candidate.endpoints.len(), 1, "held endpoint becomes active");
        assert!(!st.all_acked());
    }

    #[test]
    fn accepted_resources_are_kept_as_their_bytes_and_merge_as_accepted() {
        // Two services (one of them twice: the last one wins) and an
        // endpoint: the state holds each as the bytes it came as, and a
        // later push of another type merges exactly what was accepted.
        let named = |name: &str, port: u32| Service {
            name: name.into(),
            ports: vec![ServicePort {
                port,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut st = XdsState::default();
        let services = resp(
            TypeUrl::Service,
            "s1",
            "n1",
            vec![
                any(TypeUrl::Service, &named("zeta", 80)),
                any(TypeUrl::Service, &echo()),
                any(TypeUrl::Service, &named("zeta", 81)),
            ],
        );
        let (got, _) = st.candidate(&services).unwrap();
        st.accept(&services, got);
        let endpoints = resp(
            TypeUrl::Endpoint,
            "e1",
            "n2",
            vec![any(TypeUrl::Endpoint, &endpoint())],
        );
        let (got, _) = st.candidate(&endpoints).unwrap();
        st.accept(&endpoints, got);

        let held = &st.types[&TypeUrl::Service].accepted;
        assert_eq!(held.len(), 2);
        let names: Vec<&str> = held.iter().map(|h| h.name).collect();
        assert_eq!(names, ["default/echo", "default/zeta"]);
        assert_eq!(
            held.get("default/zeta").unwrap().bytes,
            &named("zeta", 81).encode_to_vec()[..]
        );
        assert_eq!(
            held.get("default/echo").unwrap().bytes,
            &echo().encode_to_vec()[..]
        );
        assert!(held.get("default/alpha").is_none() && held.get("default/zz").is_none());
        assert_eq!(
            st.get(TypeUrl::Service, "default/zeta"),
            Some(Resource::Service(named("zeta", 81)))
        );

        let routes = resp(TypeUrl::Route, "r1", "n3", vec![]);
        let (_, candidate) = st.candidate(&routes).unwrap();
        assert_eq!(candidate.services, vec![echo(), named("zeta", 81)]);
        assert_eq!(candidate.endpoints, vec![endpoint()]);
        assert_eq!(st.version(TypeUrl::Service), "s1");
    }

    #[test]
    fn invalid_resource_is_nacked_with_its_name_and_field() {
        let mut st = XdsState::default();
        let good = resp(
            TypeUrl::Service,
            "s1",
            "n1",
            vec![any(TypeUrl::Service, &echo())],
        );
        let (got, _) = st.candidate(&good).unwrap();
        st.accept(&good, got);
        let mut bad = echo();
        bad.ports[0].port = 0;
        let r = resp(
            TypeUrl::Service,
            "s2",
            "n2",
            vec![any(TypeUrl::Service, &bad)],
        );
        let reason = st.candidate(&r).unwrap_err();
        assert_eq!(
            reason,
            "service default/echo: ports[0].port: 0 is not a valid port (1-65535)"
        );
        let nack = st.reject(&r, reason);
        assert_eq!(
            nack.version_info, "s1",
            "NACK carries the last good version"
        );
        assert_eq!(nack.response_nonce, "n2");
        assert!(nack.error_detail.unwrap().message.contains("ports[0].port"));
    }

    #[test]
    fn peer_authentications_are_accepted_and_a_bad_one_nacked_by_field() {
        let st = XdsState::default();
        let mut p = PeerAuthentication {
            name: "ratings".into(),
            namespace: "shop".into(),
            selector: [("app".to_string(), "ratings".to_string())].into(),
            mode: sane_xds_proto::TlsMode::Strict.into(),
            ..Default::default()
        };
        p.port_modes
            .insert(9080, sane_xds_proto::TlsMode::Disable.into());
        let t = TypeUrl::PeerAuthentication;
        let (_, candidate) = st.candidate(&resp(t, "1", "n1", vec![any(t, &p)])).unwrap();
        assert_eq!(candidate.peer_authentications, [p.clone()]);
        p.port_modes.insert(0, 9);
        let reason = st
            .candidate(&resp(t, "2", "n2", vec![any(t, &p)]))
            .unwrap_err();
        assert!(
            reason.starts_with(
                "peer_authentication shop/ratings: port_modes.0: 0 is not a valid port"
            ),
            "{reason}"
        );
        assert!(
            reason.contains("port_modes.0: 9 is not a known value"),
            "{reason}"
        );
    }

    #[test]
    fn gateways_are_delivered_whole_and_an_invalid_one_is_nacked_by_name() {
        let st = XdsState::default();
        let gw = Gateway {
            name: "public".into(),
            namespace: "istio-system".into(),
            selector: [("istio".to_string(), "ingressgateway".to_string())].into(),
            ..Default::default()
        };
        let r = resp(
            TypeUrl::Gateway,
            "g1",
            "n1",
            vec![any(TypeUrl::Gateway, &gw)],
        );
        let (got, candidate) = st.candidate(&r).unwrap();
        assert_eq!(got.type_url, TypeUrl::Gateway);
        assert_eq!(
            got.changed().map(|(name, _)| name).collect::<Vec<_>>(),
            ["istio-system/public"]
        );
        // Never held back: its routes' services are the gateway's to resolve.
        assert_eq!(candidate.gateways, std::slice::from_ref(&gw));
        let mut bad = gw;
        bad.selector.clear();
        let r = resp(
            TypeUrl::Gateway,
            "g2",
            "n2",
            vec![any(TypeUrl::Gateway, &bad)],
        );
        let reason = st.candidate(&r).unwrap_err();
        assert!(
            reason.starts_with("gateway istio-system/public: selector: at least one label"),
            "{reason}"
        );
    }

    #[test]
    fn garbage_and_wrong_types_are_nacked() {
        let st = XdsState::default();
        let r = resp(
            TypeUrl::Service,
            "s1",
            "n1",
            vec![Any {
                type_url: TypeUrl::Service.as_str().into(),
                value: vec![0xff, 0xff, 0xff],
            }],
        );
        assert!(st
            .candidate(&r)
            .unwrap_err()
            .starts_with("resources[0]: cannot decode"));
        let r = resp(
            TypeUrl::Service,
            "s1",
            "n1",
            vec![any(TypeUrl::Endpoint, &endpoint())],
        );
        assert!(st
            .candidate(&r)
            .unwrap_err()
            .contains("in a type.googleapis.com/sane.mesh.v1.Service response"));
    }

    #[test]
    fn compile_errors_are_nacked_with_the_resource_name() {
        let route = Route {
            name: "canary".into(),
            namespace: "shop".into(),
            service: "echo".into(),
            ..Default::default()
        };
        let candidate = MeshResources {
            routes: vec![route],
            ..Default::default()
        };
        let compile = |field: &str| StartError::Compile {
            path: "xds Route".into(),
            field: field.into(),
            reason: "invalid regex \"[a-\"".into(),
        };
        let reason = compile_nack_reason(
            &compile("resources.routes[0].rules[0].matches[0].headers[0].value"),
            &candidate,
        );
        assert_eq!(
            reason,
            "route shop/canary: invalid config xds Route: \
             resources.routes[0].rules[0].matches[0].headers[0].value: invalid regex \"[a-\""
        );
        // A listener (from the file) or an index out of range: unchanged.
        for field in ["resources.listeners[0].service_port", "resources.routes[7]"] {
            let e = compile(field);
            assert_eq!(compile_nack_reason(&e, &candidate), e.to_string());
        }
    }

    fn endpoint_at(address: &str, weight: u32) -> Endpoint {
        Endpoint {
            address: address.into(),
            weight,
            ..endpoint()
        }
    }

    fn endpoints(version: &str, list: &[Endpoint]) -> DiscoveryResponse {
        let t = TypeUrl::Endpoint;
        resp(
            t,
            version,
            version,
            list.iter().map(|e| any(t, e)).collect(),
        )
    }

    fn accepted_endpoints(st: &XdsState) -> Vec<(String, u32)> {
        let t = TypeUrl::Endpoint;
        let s = st.types.get(&t).unwrap();
        assert_eq!(s.digests.len(), s.accepted.len(), "one digest per resource");
        s.accepted
            .iter()
            .map(|held| match held.decode(t).unwrap() {
                Resource::Endpoint(e) => (held.name.to_string(), e.weight),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_response_is_applied_as_what_it_changes_and_repeated_bytes_are_not_decoded_again() {
        let mut st = XdsState::default();
        let (a, b, c) = (
            endpoint_at("10.0.0.1", 1),
            endpoint_at("10.0.0.2", 1),
            endpoint_at("10.0.0.3", 1),
        );
        let first = endpoints("1", &[a.clone(), b.clone(), c.clone()]);
        let (got, _) = st.candidate(&first).unwrap();
        assert_eq!(got.changed().count(), 3, "nothing held yet: all decoded");
        st.accept(&first, got);

        // a repeated, b changed (same name, new weight), c gone, d new.
        let (b2, d) = (endpoint_at("10.0.0.2", 7), endpoint_at("10.0.0.4", 1));
        let second = endpoints("2", &[a.clone(), b2.clone(), d.clone()]);
        let st_echo = resp(
            TypeUrl::Service,
            "s",
            "s",
            vec![any(TypeUrl::Service, &echo())],
        );
        let (got, _) = st.candidate(&st_echo).unwrap();
        st.accept(&st_echo, got);
        let (got, candidate) = st.candidate(&second).unwrap();
        assert_eq!(
            got.changed().map(|(n, _)| n).collect::<Vec<_>>(),
            ["default/echo/10.0.0.2:8080", "default/echo/10.0.0.4:8080"],
            "only the changed and the new resource are decoded"
        );
        assert_eq!(
            got.removed().collect::<Vec<_>>(),
            ["default/echo/10.0.0.3:8080"]
        );
        assert!(!got.is_unchanged());
        // The candidate holds exactly the response's set.
        let mut merged = candidate.endpoints.clone();
        merged.sort_by(|x, y| x.address.cmp(&y.address));
        assert_eq!(merged, [a.clone(), b2.clone(), d.clone()]);
        let ack = st.accept(&second, got);
        assert_eq!(ack.version_info, "2");
        assert_eq!(
            accepted_endpoints(&st),
            [
                ("default/echo/10.0.0.1:8080".to_string(), 1),
                ("default/echo/10.0.0.2:8080".to_string(), 7),
                ("default/echo/10.0.0.4:8080".to_string(), 1),
            ]
        );

        // The same set again (a new version, in another order): nothing to
        // decode, nothing to apply.
        let third = endpoints("3", &[d.clone(), b2.clone(), a.clone()]);
        let (got, candidate) = st.candidate(&third).unwrap();
        assert!(got.is_unchanged());
        assert_eq!(candidate.endpoints.len(), 3);
        st.accept(&third, got);
        assert_eq!(st.version(TypeUrl::Endpoint), "3");
        assert_eq!(accepted_endpoints(&st).len(), 3);

        // b2's bytes are back under a again: a changes, b2 stays.
        let (got, _) = st
            .candidate(&endpoints("4", &[b2.clone(), d.clone()]))
            .unwrap();
        assert_eq!(
            got.removed().collect::<Vec<_>>(),
            ["default/echo/10.0.0.1:8080"]
        );
        assert_eq!(got.changed().count(), 0);

        // An empty response removes everything.
        let (got, candidate) = st.candidate(&endpoints("5", &[])).unwrap();
        assert_eq!(got.removed().count(), 3);
        assert!(candidate.endpoints.is_empty());
        st.accept(&endpoints("5", &[]), got);
        assert!(accepted_endpoints(&st).is_empty());
    }

    #[test]
    fn a_rejected_response_changes_nothing_and_repeated_bytes_of_another_type_are_nacked() {
        let mut st = XdsState::default();
        let good = endpoints("1", &[endpoint_at("10.0.0.1", 1)]);
        let (got, _) = st.candidate(&good).unwrap();
        st.accept(&good, got);
        // The accepted endpoint repeated, beside an invalid one: NACKed by
        // the invalid one's name and field, and nothing recorded.
        let bad = endpoint_at("10.0.0.x", 1);
        let r = endpoints("2", &[endpoint_at("10.0.0.1", 1), bad]);
        let reason = st.candidate(&r).unwrap_err();
        assert_eq!(
            reason,
            "endpoint default/echo/10.0.0.x:8080: address: \"10.0.0.x\" is not an IP address"
        );
        st.reject(&r, reason);
        assert_eq!(st.version(TypeUrl::Endpoint), "1");
        assert_eq!(accepted_endpoints(&st).len(), 1);
        // The same bytes under another type's URL are still refused.
        let mut wrong = any(TypeUrl::Endpoint, &endpoint_at("10.0.0.1", 1));
        wrong.type_url = TypeUrl::Route.as_str().into();
        let r = resp(TypeUrl::Endpoint, "3", "3", vec![wrong]);
        assert!(st
            .candidate(&r)
            .unwrap_err()
            .starts_with("resources[0]: type \"type.googleapis.com/sane.mesh.v1.Route\""));
    }

    #[test]
    fn ready_after_every_type_is_acked() {
        let mut st = XdsState::default();
        for (i, t) in SUBSCRIBED.into_iter().enumerate() {
            assert!(!st.all_acked());
            let r = resp(t, "v", &format!("n{i}"), vec![]);
            let (got, _) = st.candidate(&r).unwrap();
            st.accept(&r, got);
        }
        assert!(st.all_acked());
        assert_eq!(st.subscribe(TypeUrl::Route).version_info, "v");
    }
}
