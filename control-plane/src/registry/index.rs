//! What a write can affect, looked up instead of scanned: which services
//! carry a qualified name, which list a virtual IP, and which resources refer
//! to a service. Kept beside the entries in every [`super::State`] (as
//! persistent maps, so copying a state stays cheap), so a write is validated
//! against the resources it touches and their references, never the whole
//! registry.

use crate::resource::{Kind, Resource};
use imbl::{OrdMap, OrdSet};
use sane_xds_proto::resources::qualify;
use std::net::IpAddr;

/// The indexes of one state.
#[derive(Clone, Debug, Default)]
pub(super) struct Index {
    /// Qualified name (`name.namespace`) → registry keys of the services
    /// carrying it (one, unless a write is about to be rejected).
    services: OrdMap<String, OrdSet<String>>,
    /// Virtual IP → registry keys of the services listing it.
    vips: OrdMap<IpAddr, OrdSet<String>>,
    /// Qualified service name → the resources referring to it.
    referrers: OrdMap<String, OrdSet<(Kind, String)>>,
}

// === impl Index ===

impl Index {
    /// Records what `resource`, stored at `key`, names.
    pub(super) fn add(&mut self, key: &str, resource: &Resource) {
        let kind = resource.kind();
        if let Resource::Service(s) = resource {
            add_to(&mut self.services, s.key(), key.to_string());
            for ip in vips(resource) {
                add_to(&mut self.vips, ip, key.to_string());
            }
        }
        for name in references(resource) {
            add_to(&mut self.referrers, name, (kind, key.to_string()));
        }
    }

    /// Forgets what [`Index::add`] recorded for the same arguments.
    pub(super) fn remove(&mut self, key: &str, resource: &Resource) {
        let kind = resource.kind();
        if let Resource::Service(s) = resource {
            remove_from(&mut self.services, &s.key(), &key.to_string());
            for ip in vips(resource) {
                remove_from(&mut self.vips, &ip, &key.to_string());
            }
        }
        for name in references(resource) {
            remove_from(&mut self.referrers, &name, &(kind, key.to_string()));
        }
    }

    /// Registry keys of the services whose qualified name is `name`.
    pub(super) fn services_named(&self, name: &str) -> impl Iterator<Item = &String> + '_ {
        self.services.get(name).into_iter().flat_map(|s| s.iter())
    }

    /// Registry keys of the services listing `ip`.
    pub(super) fn vip_owners(&self, ip: &IpAddr) -> impl Iterator<Item = &String> + '_ {
        self.vips.get(ip).into_iter().flat_map(|s| s.iter())
    }

    /// The resources referring to the service named `name`.
    pub(super) fn referrers(&self, name: &str) -> impl Iterator<Item = &(Kind, String)> + '_ {
        self.referrers.get(name).into_iter().flat_map(|s| s.iter())
    }
}

fn add_to<K: Ord + Clone, M: Ord + Clone>(map: &mut OrdMap<K, OrdSet<M>>, k: K, m: M) {
    match map.get_mut(&k) {
        Some(set) => {
            set.insert(m);
        }
        None => {
            map.insert(k, OrdSet::unit(m));
        }
    }
}

fn remove_from<K: Ord + Clone, M: Ord + Clone>(map: &mut OrdMap<K, OrdSet<M>>, k: &K, m: &M) {
    let now_empty = match map.get_mut(k) {
        Some(set) => {
            set.remove(m);
            set.is_empty()
        }
        None => false,
    };
    if now_empty {
        map.remove(k);
    }
}

/// The qualified service names `resource` refers to, exactly as
/// `MeshResources::validate` resolves them.
pub(super) fn references(resource: &Resource) -> Vec<String> {
    let named = |name: &str, ns: &str| (!name.is_empty()).then(|| qualify(name, ns));
    match resource {
        Resource::Endpoint(e) => named(&e.service, &e.namespace).into_iter().collect(),
        Resource::Route(r) => {
            let mut out: Vec<String> = named(&r.service, &r.namespace).into_iter().collect();
            for rule in &r.rules {
                let mirror = rule.mirror.as_ref().map(|m| m.service.as_str());
                let targets = rule.destinations.iter().map(|d| d.service.as_str());
                out.extend(targets.chain(mirror).filter_map(|s| named(s, &r.namespace)));
            }
            out.sort();
            out.dedup();
            out
        }
        Resource::Policy(p) => named(&p.service, &p.namespace).into_iter().collect(),
        // A policy must name a declared service (`validate_registry`).
        Resource::Authz(a) => named(&a.service, &a.namespace).into_iter().collect(),
        // A gateway's routes name services the gateway resolves itself.
        Resource::Service(_)
        | Resource::Telemetry(_)
        | Resource::PeerAuthn(_)
        | Resource::Gateway(_) => Vec::new(),
    }
}

/// The virtual IPs of a service (addresses that are not IPs are left to
/// the service's own validation).
pub(super) fn vips(resource: &Resource) -> Vec<IpAddr> {
    match resource {
        Resource::Service(s) => {
            let mut ips: Vec<IpAddr> = s.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            ips.sort();
            ips.dedup();
            ips
        }
        _ => Vec::new(),
    }
}

/// The qualified name of the service stored at registry key `namespace/name`.
pub(super) fn service_name_of_key(key: &str) -> String {
    match key.split_once('/') {
        Some((ns, name)) => format!("{name}.{ns}"),
        None => key.to_string(),
    }
}
