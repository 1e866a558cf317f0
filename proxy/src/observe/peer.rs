//! Peer metadata: the Istio labels of one side of a request (workload,
//! namespace, `app`, `version`, canonical service and revision). The local
//! side's are built once per node config from `node` (its `labels`); the
//! other side's arrive in one header from the peer's sidecar and are parsed
//! once per distinct value (see [`super::LabelCache`]). Every value is
//! bounded (1-63 characters of `A-Za-z0-9._-`, else `unknown`), so a peer
//! cannot blow up label cardinality with arbitrary text.
//!
//! Header value: `workload;namespace;app;version;canonical_service;canonical_revision`.
//! A value without `;` is a workload name alone (what sidecars sent
//! before the other fields existed).

use http::HeaderValue;
use sane_xds_proto::Node;
use std::sync::Arc;

/// One side's Istio labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerMeta {
    /// `source_workload` / `destination_workload`.
    pub(crate) workload: Arc<str>,
    /// `*_workload_namespace`.
    pub(crate) namespace: Arc<str>,
    /// `*_app`.
    pub(crate) app: Arc<str>,
    /// `*_version`.
    pub(crate) version: Arc<str>,
    /// `*_canonical_service`.
    pub(crate) canonical_service: Arc<str>,
    /// `*_canonical_revision`.
    pub(crate) canonical_revision: Arc<str>,
}

const UNKNOWN: &str = "unknown";

// === impl PeerMeta ===

impl PeerMeta {
    /// Every label `unknown` (a caller without mutual TLS, a destination
    /// that did not say).
    pub(crate) fn unknown() -> PeerMeta {
        let u: Arc<str> = UNKNOWN.into();
        PeerMeta {
            workload: u.clone(),
            namespace: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u,
        }
    }

    /// The local workload's labels, from its node (Istio's defaults: the
    /// canonical service falls back to the app, then the workload; the
    /// canonical revision to the version, then `latest`).
    pub(crate) fn local(node: &Node) -> PeerMeta {
        let get = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| node.labels.get(*k).map(String::as_str).filter(|v| valid(v)))
        };
        let workload = Some(node.workload.as_str()).filter(|w| workload_name(w));
        let app = get(&["app", "app.kubernetes.io/name"]);
        let version = get(&["version", "app.kubernetes.io/version"]);
        let canonical_service = get(&["service.istio.io/canonical-name"])
            .or(app)
            .or(workload)
            .unwrap_or(UNKNOWN);
        let canonical_revision = get(&["service.istio.io/canonical-revision"])
            .or(version)
            .unwrap_or("latest");
        PeerMeta {
            workload: workload.unwrap_or(UNKNOWN).into(),
            namespace: sane_xds_proto::namespace_or_default(&node.namespace).into(),
            app: app.unwrap_or(UNKNOWN).into(),
            version: version.unwrap_or(UNKNOWN).into(),
            canonical_service: canonical_service.into(),
            canonical_revision: canonical_revision.into(),
        }
    }

    /// The header value sent to the peer's sidecar.
    pub(crate) fn header(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{};{};{};{};{};{}",
            self.workload,
            self.namespace,
            self.app,
            self.version,
            self.canonical_service,
            self.canonical_revision
        ))
        .ok()
    }

    /// A peer's header value; any field that is not a valid label is
    /// `unknown`.
    pub(crate) fn parse(v: &HeaderValue) -> PeerMeta {
        let mut meta = PeerMeta::unknown();
        let Ok(text) = v.to_str() else {
            return meta;
        };
        let mut fields = text.split(';');
        if let Some(w) = fields.next().filter(|w| workload_name(w)) {
            meta.workload = w.into();
        }
        let slots = [
            &mut meta.namespace,
            &mut meta.app,
            &mut meta.version,
            &mut meta.canonical_service,
            &mut meta.canonical_revision,
        ];
        for (slot, value) in slots.into_iter().zip(fields.by_ref()) {
            if valid(value) {
                *slot = value.into();
            }
        }
        if fields.next().is_some() {
            // More fields than this version knows: trust none of it.
            return PeerMeta::unknown();
        }
        meta
    }
}

/// A label value: 1-63 characters of `A-Za-z0-9._-`.
fn valid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// A workload name: 1-63 characters of `a-z0-9.-` (a Kubernetes name).
pub(crate) fn workload_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_local_side_follows_istio_defaults_and_round_trips() {
        let node = Node {
            workload: "reviews-v2".into(),
            labels: BTreeMap::from([
                ("app".to_string(), "reviews".to_string()),
                ("version".to_string(), "v2".to_string()),
            ]),
            ..Default::default()
        };
        let meta = PeerMeta::local(&node);
        assert_eq!(&*meta.namespace, "default");
        assert_eq!(&*meta.canonical_service, "reviews");
        assert_eq!(&*meta.canonical_revision, "v2");
        assert_eq!(PeerMeta::parse(&meta.header().unwrap()), meta);

        let bare = PeerMeta::local(&Node {
            workload: "web".into(),
            ..Default::default()
        });
        assert_eq!(&*bare.app, "unknown");
        assert_eq!(&*bare.canonical_service, "web");
        assert_eq!(&*bare.canonical_revision, "latest");
    }

    #[test]
    fn a_peer_header_is_bounded() {
        let legacy = PeerMeta::parse(&HeaderValue::from_static("web-1"));
        assert_eq!(&*legacy.workload, "web-1");
        assert_eq!(&*legacy.app, "unknown");
        let bad = PeerMeta::parse(&HeaderValue::from_static("UPPER;ns;a b;v1;;x"));
        assert_eq!(&*bad.workload, "unknown");
        assert_eq!(&*bad.namespace, "ns");
        assert_eq!(&*bad.app, "unknown");
        assert_eq!(&*bad.version, "v1");
        assert_eq!(&*bad.canonical_service, "unknown");
        let long = "x".repeat(64);
        assert_eq!(
            &*PeerMeta::parse(&HeaderValue::from_str(&format!("w;{long}")).unwrap()).namespace,
            "unknown"
        );
        assert_eq!(
            PeerMeta::parse(&HeaderValue::from_static("a;b;c;d;e;f;g")),
            PeerMeta::unknown()
        );
    }
}
