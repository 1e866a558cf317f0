//! The incremental (delta) ADS state machine for one stream, free of I/O.
//!
//! Per type it tracks the subscription (wildcard and/or explicit names) and
//! the version of every resource the client holds. Rules:
//! * the first request of a type with no names subscribes to the wildcard
//!   (legacy form); `*` subscribes to and unsubscribes from it explicitly;
//! * `initial_resource_versions` of the first request seed what the client
//!   holds, so unchanged resources are not resent after a reconnect, and
//!   ones that disappeared meanwhile are reported in `removed_resources`;
//! * subscription changes are applied even when the nonce is stale (a delta
//!   client never repeats them); the nonce only decides ACK / NACK: latest
//!   nonce and no `error_detail` is an ACK, with `error_detail` a NACK;
//! * a response carries only resources whose version differs from what the
//!   client holds, plus `removed_resources` for subscribed ones that left
//!   its view; unsubscribed names are simply forgotten;
//! * the first request of a type is always answered (even with nothing), so
//!   a client can tell "nothing there" from "no answer yet";
//! * after a NACK nothing is resent until the content changes;
//! * a type this server does not serve gets one empty response (see
//!   [`UnknownTypes`]), never an error.

use super::client_input::{shown, MAX_NACK_REASON_CHARS, MAX_TOKEN_CHARS};
use super::protocol::{Event, Nonces, Sent, Step, UnknownTypes};
use super::snapshot::{set_version, EncodedResource, ResourceMap};
use super::type_url::XdsType;
use super::view::ProxyView;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Delta state for one stream.
#[derive(Debug)]
pub struct DeltaStream {
    nonces: Nonces,
    types: HashMap<XdsType, DeltaType>,
    unknown: UnknownTypes,
}

#[derive(Debug, Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds.
    known: Known,
    /// Version and nonce of the latest response.
    version: String,
    nonce: String,
}

/// What a client holds of one type.
#[derive(Debug)]
enum Known {
    /// The version of each resource, by name.
    Names(BTreeMap<String, String>),
    /// Exactly the resources of the type in this view: what a wildcard
    /// subscription was last brought to. The next view's response is then a
    /// walk of the two sorted maps (most entries the same `Arc`), and no
    /// name or version is copied per stream.
    View(Arc<ProxyView>),
}

// === impl Known ===

impl Default for Known {
    fn default() -> Self {
        Known::Names(BTreeMap::new())
    }
}

impl Known {
    /// The held versions by name (a view is copied out once).
    fn names(&mut self, type_url: XdsType) -> &mut BTreeMap<String, String> {
        if let Known::View(view) = self {
            let map = view
                .of_type(type_url)
                .values()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect();
            *self = Known::Names(map);
        }
        match self {
            Known::Names(map) => map,
            Known::View(_) => unreachable!("replaced above"),
        }
    }
}

// === impl DeltaStream ===

impl DeltaStream {
    /// A fresh stream with id `stream` (used in nonces).
    pub fn new(stream: u64) -> DeltaStream {
        DeltaStream {
            nonces: Nonces::new(stream),
            types: HashMap::new(),
            unknown: UnknownTypes::default(),
        }
    }

    /// Handles one request.
    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        view: &Arc<ProxyView>,
    ) -> Step<DeltaDiscoveryResponse> {
        let Some(type_url) = XdsType::parse(&req.type_url) else {
            let (event, answer) = self.unknown.on_request(&req.type_url, &req.response_nonce);
            let mut step = Step::event(event);
            if answer {
                step.untracked.push(DeltaDiscoveryResponse {
                    type_url: req.type_url.clone(),
                    nonce: self.nonces.next_nonce(),
                    ..Default::default()
                });
            }
            return step;
        };
        let mut step = Step::default();
        let first = !self.types.contains_key(&type_url);
        let st = self.types.entry(type_url).or_default();
        if first {
            st.wildcard = req.resource_names_subscribe.is_empty();
            st.known = Known::Names(
                req.initial_resource_versions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
        } else if !req.response_nonce.is_empty() {
            let event = if req.response_nonce != st.nonce {
                Event::Stale {
                    type_url,
                    nonce: shown(&req.response_nonce, MAX_TOKEN_CHARS),
                }
            } else if let Some(status) = &req.error_detail {
                Event::Nack {
                    type_url,
                    version: st.version.clone(),
                    reason: shown(&status.message, MAX_NACK_REASON_CHARS),
                }
            } else {
                Event::Ack {
                    type_url,
                    version: st.version.clone(),
                }
            };
            step.events.push(event);
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(name);
            }
        }
        if !st.wildcard {
            let names = &st.names;
            let known = match &mut st.known {
                Known::Names(map) => map,
                held @ Known::View(_) => held.names(type_url),
            };
            known.retain(|k, _| names.contains(k));
        }
        if let Some(push) = self.diff(type_url, view, first) {
            step.pushes.push(push);
        }
        step
    }

    /// Handles a new view: sends what changed for every requested type.
    pub fn on_view(&mut self, view: &Arc<ProxyView>) -> Step<DeltaDiscoveryResponse> {
        let mut step = Step::default();
        for type_url in XdsType::ALL {
            if self.types.contains_key(&type_url) {
                step.pushes.extend(self.diff(type_url, view, false));
            }
        }
        step
    }

    /// Builds the response bringing the client from what it holds to what it
    /// should hold; `None` if they agree (unless `always`).
    fn diff(
        &mut self,
        type_url: XdsType,
        view: &Arc<ProxyView>,
        always: bool,
    ) -> Option<(Sent, DeltaDiscoveryResponse)> {
        let st = self.types.get_mut(&type_url)?;
        let in_view = view.of_type(type_url);
        let (changed, removed, version, resources) = match &st.known {
            // The common case, a wildcard client holding the previous view:
            // nothing is hashed or copied unless it changed.
            Known::View(held) if st.wildcard => {
                let wire = view.wire(type_url);
                let same = Arc::ptr_eq(held, view) || held.wire(type_url).version == wire.version;
                if same && !always {
                    st.known = Known::View(view.clone());
                    return None;
                }
                let (changed, removed) = walk(held.of_type(type_url), in_view);
                (
                    changed,
                    removed,
                    wire.version.clone(),
                    wire.resources.clone(),
                )
            }
            _ => {
                let known = st.known.names(type_url);
                let desired: Arc<[Arc<EncodedResource>]> = in_view
                    .values()
                    .filter(|r| st.wildcard || st.names.contains(&r.name))
                    .cloned()
                    .collect();
                let changed: Vec<Arc<EncodedResource>> = desired
                    .iter()
                    .filter(|r| known.get(&r.name) != Some(&r.version))
                    .cloned()
                    .collect();
                // By lookup in the view (keyed by name): a scan of `desired`
                // per held name cost |held| × |desired| per type and stream.
                let removed: Vec<String> = known
                    .keys()
                    .filter(|k| {
                        !in_view
                            .get(k.as_str())
                            .is_some_and(|r| st.wildcard || st.names.contains(&r.name))
                    })
                    .cloned()
                    .collect();
                let version = set_version(desired.iter());
                (changed, removed, version, desired)
            }
        };
        if changed.is_empty() && removed.is_empty() && !always {
            if st.wildcard {
                st.known = Known::View(view.clone());
            }
            return None;
        }
        let nonce = self.nonces.next_nonce();
        st.known = if st.wildcard {
            Known::View(view.clone())
        } else {
            Known::Names(
                resources
                    .iter()
                    .map(|r| (r.name.clone(), r.version.clone()))
                    .collect(),
            )
        };
        st.version = version.clone();
        st.nonce = nonce.clone();
        let resp = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources: changed
                .iter()
                .map(|r| WireResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.as_str().to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
            ..Default::default()
        };
        let sent = Sent {
            type_url,
            version,
            nonce,
            resources,
        };
        Some((sent, resp))
    }
}

/// What changed from `held` to `now` (both sorted by name): resources new
/// or of another version, and the names gone. Unchanged resources are
/// usually the same `Arc` (snapshots reuse unchanged encodings).
fn walk(held: &ResourceMap, now: &ResourceMap) -> (Vec<Arc<EncodedResource>>, Vec<String>) {
    use std::cmp::Ordering;
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (held.values().peekable(), now.values().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(h), None) => {
                removed.push(h.name.clone());
                a.next();
            }
            (None, Some(n)) => {
                changed.push((*n).clone());
                b.next();
            }
            (Some(h), Some(n)) => match h.name.cmp(&n.name) {
                Ordering::Less => {
                    removed.push(h.name.clone());
                    a.next();
                }
                Ordering::Greater => {
                    changed.push((*n).clone());
                    b.next();
                }
                Ordering::Equal => {
                    if !Arc::ptr_eq(h, n) && h.version != n.version {
                        changed.push((*n).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    (changed, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Kind;
    use crate::xds::test_support::{view_of, view_without};
    use envoy_types::pb::google::rpc::Status;
    use sane_xds_proto::TypeUrl;

    fn req(
        type_url: impl Into<XdsType>,
        nonce: &str,
        sub: &[&str],
        unsub: &[&str],
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into().as_str().to_string(),
            response_nonce: nonce.to_string(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
        resp.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn wildcard_then_removal_and_ack() {
        let view = view_of("shop");
        let mut d = DeltaStream::new(3);
        let step = d.on_request(&req(TypeUrl::Service, "", &[], &[]), &view);
        let (sent, resp) = &step.pushes[0];
        assert_eq!(
            names(resp),
            ["billing/pay", "inventory/backend", "shop/web"]
        );
        assert_eq!(resp.nonce, "3-1");
        assert_eq!(sent.resources.len(), 3);

        let step = d.on_request(&req(TypeUrl::Service, "3-1", &[], &[]), &view);
        assert_eq!(
            step.events,
            [Event::Ack {
                type_url: TypeUrl::Service.into(),
                version: sent.version.clone()
            }]
        );
        assert!(step.pushes.is_empty());

        // A route disappears: only the removal is sent for routes.
        let step = d.on_request(&req(TypeUrl::Route, "", &[], &[]), &view);
        assert_eq!(names(&step.pushes[0].1), ["shop/web"]);
        let after = view_without("shop", Kind::Route, "shop/web");
        let step = d.on_view(&after);
        // Services changed too: backend left the view with the route.
        let by_type: HashMap<&str, &DeltaDiscoveryResponse> = step
            .pushes
            .iter()
            .map(|(_, r)| (r.type_url.as_str(), r))
            .collect();
        let routes = by_type[TypeUrl::Route.as_str()];
        assert!(routes.resources.is_empty());
        assert_eq!(routes.removed_resources, ["shop/web"]);
        let services = by_type[TypeUrl::Service.as_str()];
        assert_eq!(services.removed_resources, ["inventory/backend"]);
        assert!(services.resources.is_empty());
    }

    #[test]
    fn explicit_subscribe_unsubscribe_and_stale_nonce() {
        let view = view_of("shop");
        let mut d = DeltaStream::new(1);
        let step = d.on_request(
            &req(TypeUrl::Endpoint, "", &["shop/web/10.0.0.1:8080"], &[]),
            &view,
        );
        assert_eq!(names(&step.pushes[0].1), ["shop/web/10.0.0.1:8080"]);

        // Subscribing with a stale nonce still takes effect.
        let step = d.on_request(
            &req(
                TypeUrl::Endpoint,
                "0-9",
                &["billing/pay/10.0.0.4:8080"],
                &[],
            ),
            &view,
        );
        assert!(matches!(step.events[0], Event::Stale { .. }));
        assert_eq!(names(&step.pushes[0].1), ["billing/pay/10.0.0.4:8080"]);

        // Unsubscribing sends nothing (no removal notice) ...
        let step = d.on_request(
            &req(TypeUrl::Endpoint, "", &[], &["shop/web/10.0.0.1:8080"]),
            &view,
        );
        assert!(step.pushes.is_empty());
        // ... and resubscribing sends it again.
        let step = d.on_request(
            &req(TypeUrl::Endpoint, "", &["shop/web/10.0.0.1:8080"], &[]),
            &view,
        );
        assert_eq!(names(&step.pushes[0].1), ["shop/web/10.0.0.1:8080"]);

        // `*` switches to wildcard: the rest arrives.
        let step = d.on_request(&req(TypeUrl::Endpoint, "", &["*"], &[]), &view);
        assert_eq!(
            names(&step.pushes[0].1),
            ["inventory/backend/10.0.0.2:8080"]
        );
    }

    #[test]
    fn initial_versions_skip_unchanged_and_report_gone() {
        let view = view_of("shop");
        let mut first = DeltaStream::new(1);
        let step = first.on_request(&req(TypeUrl::Service, "", &[], &[]), &view);
        let resp = &step.pushes[0].1;
        let mut initial: HashMap<String, String> = resp
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        initial.insert("shop/web".into(), "stale-version".into());
        initial.insert("shop/gone".into(), "x".into());

        let mut again = DeltaStream::new(2);
        let mut r = req(TypeUrl::Service, "", &[], &[]);
        r.initial_resource_versions = initial;
        let step = again.on_request(&r, &view);
        let resp = &step.pushes[0].1;
        assert_eq!(names(resp), ["shop/web"]);
        assert_eq!(resp.removed_resources, ["shop/gone"]);
    }

    #[test]
    fn nack_is_reported_and_nothing_resent() {
        let view = view_of("shop");
        let mut d = DeltaStream::new(1);
        let step = d.on_request(&req(TypeUrl::Route, "", &[], &[]), &view);
        let version = step.pushes[0].0.version.clone();
        let mut n = req(TypeUrl::Route, "1-1", &[], &[]);
        n.error_detail = Some(Status {
            message: "shop/web: rules[0]: bad".into(),
            ..Default::default()
        });
        let step = d.on_request(&n, &view);
        assert_eq!(
            step.events,
            [Event::Nack {
                type_url: TypeUrl::Route.into(),
                version,
                reason: "shop/web: rules[0]: bad".into()
            }]
        );
        assert!(step.pushes.is_empty());
        assert!(d.on_view(&view).pushes.is_empty());
        // An empty first answer is still sent for types with nothing in view.
        let step = d.on_request(&req(TypeUrl::DestinationPolicy, "", &[], &[]), &view);
        assert_eq!(step.pushes.len(), 1);
        assert!(step.pushes[0].1.resources.is_empty());
    }
}
