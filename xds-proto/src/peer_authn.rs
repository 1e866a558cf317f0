//! Peer authentication: whether the inbound side of the selected sidecars
//! requires mutual TLS (Istio `PeerAuthentication` semantics).
//!
//! A `PeerAuthentication` applies to the workloads of its namespace: all of
//! them when its `selector` is empty (namespace-wide), else those whose labels
//! carry every selector label (workload-level). One without a selector in the
//! mesh root namespace ([`MESH_ROOT_NAMESPACE`]) applies to the whole mesh.
//! A sidecar resolves its own mode from its namespace and labels
//! ([`resolve`]): the workload-level one beats the namespace's, which beats
//! the mesh's; `default` inherits the next level; port-level modes are read
//! from the workload-level one only (as Istio does). When several match at one
//! level, the first by name wins.

use crate::listener::TlsMode;
use crate::validate::{Errors, FieldPath};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// The namespace whose selector-less `PeerAuthentication` applies to every
/// workload of the mesh (Istio's root namespace).
pub const MESH_ROOT_NAMESPACE: &str = "istio-system";

/// The mutual TLS mode required on the inbound side of some workloads.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Name, unique within the namespace. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Namespace of the workloads it applies to; in [`MESH_ROOT_NAMESPACE`]
    /// and without a selector it applies to the whole mesh. Default:
    /// `default`.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Labels a workload (its sidecar's `node.labels`) must all carry.
    /// Default: none, every workload of the namespace.
    #[prost(btree_map = "string, string", tag = "3")]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `strict`, `permissive`, `disable`, or `default` to inherit the
    /// namespace's (then the mesh's) mode. Default: `default`.
    #[prost(enumeration = "TlsMode", tag = "4")]
    #[serde(
        serialize_with = "crate::serde_util::enum_ser::<TlsMode, _>",
        deserialize_with = "crate::serde_util::enum_de::<TlsMode, _>"
    )]
    pub mode: i32,
    /// Modes by workload port, e.g. `{8080: disable}`; only honoured with a
    /// `selector` (as Istio's `portLevelMtls`). Default: none.
    #[prost(btree_map = "uint32, enumeration(TlsMode)", tag = "5")]
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "ser_port_modes",
        deserialize_with = "de_port_modes"
    )]
    pub port_modes: BTreeMap<u32, i32>,
}

/// The mode a workload's sidecar resolved from every [`PeerAuthentication`]
/// it was given. `Default` means none of them set one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerTls {
    /// The mode of the workload's inbound listener.
    pub mode: TlsMode,
    /// Modes of single workload ports (from the workload-level resource).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u32, TlsMode>,
    /// `namespace/name` of the resources that decided, most specific first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

fn ser_port_modes<S: Serializer>(m: &BTreeMap<u32, i32>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(m.len()))?;
    for (port, mode) in m {
        match TlsMode::try_from(*mode) {
            Ok(mode) => map.serialize_entry(port, &mode)?,
            Err(_) => map.serialize_entry(port, mode)?,
        }
    }
    map.end()
}

fn de_port_modes<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, i32>, D::Error> {
    let m = BTreeMap::<u32, TlsMode>::deserialize(d)?;
    Ok(m.into_iter().map(|(p, m)| (p, m.into())).collect())
}

// === impl PeerAuthentication ===

impl PeerAuthentication {
    /// Validates this resource on its own; paths are relative to it, e.g.
    /// `port_modes.8080`.
    pub fn validate(&self) -> Result<(), crate::ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs);
        errs.finish()
    }

    /// The namespace, `default` when empty.
    pub fn namespace(&self) -> &str {
        crate::namespace_or_default(&self.namespace)
    }

    /// The mode (`Default` for an unknown number, which validation refuses).
    pub fn tls_mode(&self) -> TlsMode {
        TlsMode::try_from(self.mode).unwrap_or(TlsMode::Default)
    }

    /// True if it applies to every workload of its namespace (or of the mesh).
    pub fn is_namespace_wide(&self) -> bool {
        self.selector.is_empty()
    }

    /// True if its selector picks a workload with `labels` in `namespace`.
    fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace() == namespace
            && !self.selector.is_empty()
            && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.name(&path.field("name"), &self.name);
        if !self.namespace.is_empty() {
            errs.name(&path.field("namespace"), &self.namespace);
        }
        for (k, v) in &self.selector {
            if k.is_empty() || v.is_empty() {
                errs.push(
                    &path.field("selector").field(k),
                    "selector labels and values must not be empty",
                );
            }
        }
        errs.enum_value::<TlsMode>(&path.field("mode"), self.mode);
        for (port, mode) in &self.port_modes {
            let pp = path.field("port_modes").field(&port.to_string());
            errs.port(&pp, *port, false);
            errs.enum_value::<TlsMode>(&pp, *mode);
        }
        if !self.port_modes.is_empty() && self.selector.is_empty() {
            errs.push(
                &path.field("port_modes"),
                "port-level modes apply only with a selector (a workload-level resource)",
            );
        }
    }
}

/// The mutual TLS settings of a workload in `namespace` whose sidecar carries
/// `labels`, from `all` the resources it was given (see the module docs for
/// the precedence).
pub fn resolve<'a>(
    all: impl IntoIterator<Item = &'a PeerAuthentication>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> PeerTls {
    let namespace = crate::namespace_or_default(namespace);
    let mut sorted: Vec<&PeerAuthentication> = all.into_iter().collect();
    sorted.sort_by(|a, b| (a.namespace(), &a.name).cmp(&(b.namespace(), &b.name)));
    let workload = sorted.iter().find(|p| p.selects(namespace, labels));
    let ns = sorted
        .iter()
        .find(|p| p.namespace() == namespace && p.is_namespace_wide());
    let mesh = sorted
        .iter()
        .find(|p| p.namespace() == MESH_ROOT_NAMESPACE && p.is_namespace_wide());
    let mut out = PeerTls::default();
    for p in [workload, ns, mesh].into_iter().flatten() {
        if p.tls_mode() != TlsMode::Default {
            out.mode = p.tls_mode();
            out.from.push(format!("{}/{}", p.namespace(), p.name));
            break;
        }
    }
    if let Some(w) = workload {
        for (port, mode) in &w.port_modes {
            match TlsMode::try_from(*mode) {
                Ok(TlsMode::Default) | Err(_) => {}
                Ok(m) => {
                    out.ports.insert(*port, m);
                }
            }
        }
        let key = format!("{}/{}", w.namespace(), w.name);
        if !out.ports.is_empty() && !out.from.contains(&key) {
            out.from.insert(0, key);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa(ns: &str, name: &str, selector: &[(&str, &str)], mode: TlsMode) -> PeerAuthentication {
        PeerAuthentication {
            name: name.into(),
            namespace: ns.into(),
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mode: mode.into(),
            port_modes: BTreeMap::new(),
        }
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    }

    #[test]
    fn workload_beats_namespace_beats_mesh_and_default_inherits() {
        let mut ratings = pa("shop", "ratings", &[("app", "ratings")], TlsMode::Disable);
        ratings.port_modes.insert(9080, TlsMode::Permissive.into());
        let all = vec![
            pa(MESH_ROOT_NAMESPACE, "mesh", &[], TlsMode::Strict),
            pa("shop", "ns", &[], TlsMode::Permissive),
            ratings,
            pa("shop", "reviews", &[("app", "reviews")], TlsMode::Default),
        ];
        let r = resolve(&all, "shop", &labels("ratings"));
        assert_eq!(r.mode, TlsMode::Disable);
        assert_eq!(r.ports, [(9080, TlsMode::Permissive)].into());
        assert_eq!(r.from, ["shop/ratings"]);
        // UNSET at the workload level inherits the namespace's mode.
        let r = resolve(&all, "shop", &labels("reviews"));
        assert_eq!(
            (r.mode, r.from.clone()),
            (TlsMode::Permissive, vec!["shop/ns".to_string()])
        );
        assert!(r.ports.is_empty());
        // Another namespace gets the mesh's.
        assert_eq!(
            resolve(&all, "web", &labels("ratings")).mode,
            TlsMode::Strict
        );
        // Nothing at all: Default (the proxy's own default holds).
        assert_eq!(resolve(&[], "web", &labels("x")), PeerTls::default());
        // A selector in the root namespace selects only root-namespace workloads.
        let root_sel = vec![pa(
            MESH_ROOT_NAMESPACE,
            "w",
            &[("app", "x")],
            TlsMode::Disable,
        )];
        assert_eq!(
            resolve(&root_sel, "web", &labels("x")).mode,
            TlsMode::Default
        );
    }

    #[test]
    fn port_modes_come_from_the_workload_level_only() {
        let mut ns = pa("shop", "ns", &[], TlsMode::Strict);
        // Refused by validation; resolution ignores it anyway.
        ns.port_modes.insert(80, TlsMode::Disable.into());
        let r = resolve(&[ns], "shop", &labels("a"));
        assert_eq!(r.mode, TlsMode::Strict);
        assert!(r.ports.is_empty());
    }

    #[test]
    fn the_first_by_name_wins_within_a_level() {
        let all = [
            pa("shop", "b", &[], TlsMode::Disable),
            pa("shop", "a", &[], TlsMode::Strict),
        ];
        assert_eq!(resolve(&all, "shop", &labels("x")).mode, TlsMode::Strict);
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = pa("shop", "p", &[], TlsMode::Strict);
        p.mode = 9;
        p.port_modes.insert(70000, 7);
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains("mode: 9 is not a known value"), "{err}");
        assert!(
            err.contains("port_modes.70000: 70000 is not a valid port (1-65535)"),
            "{err}"
        );
        assert!(
            err.contains("port_modes.70000: 7 is not a known value"),
            "{err}"
        );
        assert!(
            err.contains("port_modes: port-level modes apply only with a selector"),
            "{err}"
        );
    }

    #[test]
    fn yaml_reads_names_and_refuses_bad_modes() {
        let p: PeerAuthentication = crate::yaml::from_str(
            "name: p\nnamespace: shop\nselector: {app: web}\nmode: strict\nport_modes: {8080: disable}\n",
            &Default::default(),
        )
        .unwrap();
        assert_eq!(p.tls_mode(), TlsMode::Strict);
        assert_eq!(p.port_modes, [(8080, i32::from(TlsMode::Disable))].into());
        p.validate().unwrap();
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back["port_modes"]["8080"], "disable");
        let again: PeerAuthentication = serde_json::from_value(back).unwrap();
        assert_eq!(again, p);
        let err = crate::yaml::from_str::<PeerAuthentication>(
            "name: p\nmode: sometimes\n",
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sometimes"), "{err}");
    }
}
