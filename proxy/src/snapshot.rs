//! The compiled configuration the data path reads: one immutable
//! [`Snapshot`] (route table, clusters, original-destination table,
//! authorization policies, telemetry settings, the inbound listeners'
//! workload ports and mutual TLS modes) and the [`ConfigStore`] that holds the current one.
//!
//! Only data types and the read side live here, below every module that
//! reads a snapshot per request or connection. Building one (`Snapshot::compile`)
//! and swapping it in (`ConfigStore::apply`, `reload`, …) is `crate::config`,
//! which imports the per-module compilers; nothing on the data path imports
//! `config`.

use crate::cluster::Cluster;
use crate::original_dst::OriginalDstTable;
use crate::policy::authz::AuthzPolicies;
use crate::route::table::RouteTable;
use crate::trace::TelemetrySettings;
use crate::workload_port::InboundTarget;
use arc_swap::ArcSwap;
use sane_xds_proto::yaml::YamlLimits;
use sane_xds_proto::{Bootstrap, EncodedList, Endpoint, MeshResources, PeerTls, Service};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One compiled, immutable configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every applied config.
    pub version: u64,
    /// The configuration this snapshot was compiled from, but for its
    /// services and endpoints: its `resources.services` and
    /// `resources.endpoints` are empty, those two lists are in `catalog`
    /// (compiled, nothing on the data path reads them). [`Snapshot::config`]
    /// is the whole configuration.
    pub bootstrap: Arc<Bootstrap>,
    /// The services and endpoints of the configuration, encoded.
    pub catalog: Arc<Catalog>,
    /// HTTP routing table (outbound).
    pub routes: RouteTable,
    /// Target cluster of each outbound TCP listener, by listener name.
    pub tcp_targets: HashMap<String, Arc<Cluster>>,
    /// Local workload of each inbound listener, by listener name.
    pub inbound: HashMap<String, Arc<InboundTarget>>,
    /// Every cluster, for load counters and the admin API.
    pub clusters: Vec<Arc<Cluster>>,
    /// Service and endpoint addresses, for transparently intercepted
    /// connections.
    pub transparent: OriginalDstTable,
    /// The authorization policies this proxy enforces on inbound requests
    /// and connections: every one the control plane sent (it sends each
    /// sidecar exactly those that target its endpoints), or, from the file
    /// alone, those whose `service` is `node.workload` (see [`PolicySource`]).
    pub authz: Arc<AuthzPolicies>,
    /// Tracing and access-log settings of this node (the same `Arc` as the
    /// previous snapshot's while they do not change).
    pub telemetry: Arc<TelemetrySettings>,
    /// This node's mutual TLS modes resolved from the `PeerAuthentication`s
    /// it was given (its namespace and labels; see
    /// [`sane_xds_proto::resolve_peer_tls`]); the inbound targets apply them
    /// where the bootstrap leaves `tls_mode: default`.
    pub peer_tls: PeerTls,
}

/// A config's services and endpoints, the two lists that grow with the
/// mesh, held in their protobuf encoding once a snapshot is compiled from
/// them: only `/config_dump` and a merge with a new file read them again.
/// Decoded, a service with one port and its endpoint with an identity are
/// ≈ 550 bytes (two structs of 144–160 bytes and six strings); encoded,
/// ≈ 100 (section 6 of `bench/results/memory-2026-12-06.md`).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    services: EncodedList<Service>,
    endpoints: EncodedList<Endpoint>,
}

/// A config as the store keeps it: the snapshot's two halves (see
/// [`Snapshot::bootstrap`] and [`Snapshot::catalog`]).
#[derive(Clone, Debug)]
pub(crate) struct HeldConfig {
    pub(crate) bootstrap: Arc<Bootstrap>,
    pub(crate) catalog: Arc<Catalog>,
}

/// Where the authorization policies of a config come from, which decides
/// which of them the proxy enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// The bootstrap file alone: the proxy has no endpoints of its own, so
    /// it enforces the policies whose `service` is its `node.workload` (in
    /// `node.namespace`) and that have no `selector`.
    File,
    /// The control plane, which knows which endpoints point at this proxy
    /// and sends it exactly the policies that target them: all are enforced.
    ControlPlane,
}

/// The current snapshot, swappable without locks on the read path.
///
/// Two sources feed it: the bootstrap file and, when a control plane is
/// configured, the resources it pushed. Each apply merges the newest of both
/// (control-plane services, endpoints, routes and policies replace the file's;
/// listeners always come from the file) and compiles the result; writers are
/// serialized by the `sources` lock, readers never wait.
#[derive(Debug)]
pub struct ConfigStore {
    pub(crate) current: ArcSwap<Snapshot>,
    pub(crate) path: Option<PathBuf>,
    pub(crate) sources: Mutex<Sources>,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Bounds of the config file (size, nesting, aliases).
    pub(crate) yaml_limits: Mutex<YamlLimits>,
    /// Held for a whole file reload (read, parse, apply), so two reloads
    /// cannot apply out of order.
    pub(crate) reloading: Mutex<()>,
}

#[derive(Debug)]
pub(crate) struct Sources {
    /// The file's config (the current snapshot's own while no control
    /// plane has pushed resources).
    pub(crate) file: HeldConfig,
    /// The last config applied with the control plane's resources (the
    /// current snapshot's own): its resources are those resources, merged
    /// again with the file when the file changes.
    pub(crate) dynamic: Option<HeldConfig>,
}

/// The service key (`name.namespace`) of the local workload, as inbound
/// metrics and authorization policies name it: `node.workload` (or
/// `inbound`) in `node.namespace`.
pub fn local_service_key(node: &sane_xds_proto::Node) -> String {
    let workload = if node.workload.is_empty() {
        "inbound"
    } else {
        &node.workload
    };
    format!(
        "{workload}.{}",
        sane_xds_proto::namespace_or_default(&node.namespace)
    )
}

// === impl Snapshot ===

impl Snapshot {
    /// The whole configuration this snapshot was compiled from (its
    /// services and endpoints decoded again).
    pub fn config(&self) -> Bootstrap {
        let mut b = (*self.bootstrap).clone();
        self.catalog.restore(&mut b.resources);
        b
    }

    pub(crate) fn held(&self) -> HeldConfig {
        HeldConfig {
            bootstrap: self.bootstrap.clone(),
            catalog: self.catalog.clone(),
        }
    }
}

// === impl Catalog ===

impl Catalog {
    /// Moves the services and endpoints of `res` out, encoded (the two
    /// lists are left empty).
    pub fn take(res: &mut MeshResources) -> Self {
        let services = std::mem::take(&mut res.services);
        let endpoints = std::mem::take(&mut res.endpoints);
        Self {
            services: EncodedList::new(&services),
            endpoints: EncodedList::new(&endpoints),
        }
    }

    /// Puts the services and endpoints back into `res`, decoded.
    pub fn restore(&self, res: &mut MeshResources) {
        res.services = self.services.decode();
        res.endpoints = self.endpoints.decode();
    }

    /// How many services it holds.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// How many endpoints it holds.
    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }
}

// === impl HeldConfig ===

impl HeldConfig {
    /// Holds `b`: its services and endpoints encoded.
    pub(crate) fn new(mut b: Bootstrap) -> Self {
        let catalog = Catalog::take(&mut b.resources);
        Self {
            bootstrap: Arc::new(b),
            catalog: Arc::new(catalog),
        }
    }

    /// The resources, services and endpoints decoded again.
    pub(crate) fn resources(&self) -> MeshResources {
        let mut res = self.bootstrap.resources.clone();
        self.catalog.restore(&mut res);
        res
    }
}

// === impl ConfigStore ===

// The read side (and the constructor); the write side is in `crate::config`.
impl ConfigStore {
    /// A store serving `snapshot`, reloading from `path` if given.
    pub fn new(snapshot: Snapshot, path: Option<PathBuf>) -> Self {
        let file = snapshot.held();
        Self {
            current: ArcSwap::from_pointee(snapshot),
            path,
            sources: Mutex::new(Sources {
                file,
                dynamic: None,
            }),
            last_error: Mutex::new(None),
            yaml_limits: Mutex::new(YamlLimits::default()),
            reloading: Mutex::new(()),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The reason the last reload failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("not poisoned").clone()
    }

    /// The config file, if the store reloads from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}
