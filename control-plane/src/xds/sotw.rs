//! The state-of-the-world ADS state machine for one stream, free of I/O:
//! requests and view changes go in, responses and events come out.
//!
//! Per type it tracks the subscription, the last response (version and
//! nonce) and what the client said about it. Rules:
//! * the first request of a type on a stream is answered with the current
//!   state, unless its `version_info` is already that state's version: the
//!   client holds it (a proxy resuming after a reconnect, e.g. failing over
//!   to another replica: versions are content hashes, the same on every
//!   replica), so nothing is sent and the type counts as ACKed at that
//!   version (go-control-plane's rule too); the next change is pushed;
//! * a later request with an empty nonce starts the type over and is
//!   answered with the current state, whatever version it claims;
//! * a request whose `response_nonce` is not the latest for its type is stale
//!   and ignored entirely, subscription included (the client re-sends it);
//! * with the latest nonce, no `error_detail` is an ACK and `error_detail` a
//!   NACK; either way a changed subscription is answered at once;
//! * after a NACK the same version is not sent again; a new one is sent when
//!   the view changes;
//! * on a view change every requested type whose version changed is pushed;
//! * a type this server does not serve gets one empty response (see
//!   [`UnknownTypes`]), never an error.

use super::client_input::{shown, MAX_NACK_REASON_CHARS, MAX_TOKEN_CHARS};
use super::protocol::{Event, Nonces, Sent, Step, UnknownTypes};
use super::snapshot::{set_version, EncodedResource};
use super::type_url::XdsType;
use super::view::ProxyView;
use super::wire::{SotwResponse, TypeWire};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Which resources of a type a client wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// All of them (no names, or `*`).
    Wildcard,
    /// Only these names.
    Names(BTreeSet<String>),
}

/// State-of-the-world state for one stream.
#[derive(Debug)]
pub struct SotwStream {
    nonces: Nonces,
    types: HashMap<XdsType, SotwType>,
    unknown: UnknownTypes,
}

#[derive(Debug)]
struct SotwType {
    subscription: Subscription,
    /// Version and nonce of the latest response.
    version: String,
    nonce: String,
}

// === impl Subscription ===

impl Subscription {
    /// The subscription named by a request's `resource_names`.
    pub fn from_names(names: &[String]) -> Subscription {
        if names.is_empty() || names.iter().any(|n| n == "*") {
            Subscription::Wildcard
        } else {
            Subscription::Names(names.iter().cloned().collect())
        }
    }

    /// True if `name` is subscribed.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(n) => n.contains(name),
        }
    }
}

// === impl SotwStream ===

impl SotwStream {
    /// A fresh stream with id `stream` (used in nonces).
    pub fn new(stream: u64) -> SotwStream {
        SotwStream {
            nonces: Nonces::new(stream),
            types: HashMap::new(),
            unknown: UnknownTypes::default(),
        }
    }

    /// Handles one request.
    pub fn on_request(&mut self, req: &DiscoveryRequest, view: &ProxyView) -> Step<SotwResponse> {
        let Some(type_url) = XdsType::parse(&req.type_url) else {
            let (event, answer) = self.unknown.on_request(&req.type_url, &req.response_nonce);
            let mut step = Step::event(event);
            if answer {
                step.untracked.push(SotwResponse {
                    type_url: req.type_url.clone(),
                    nonce: self.nonces.next_nonce(),
                    ..Default::default()
                });
            }
            return step;
        };
        let subscription = Subscription::from_names(&req.resource_names);
        let Some(st) = self.types.get_mut(&type_url) else {
            let wire = selected(view, type_url, &subscription);
            if !req.version_info.is_empty() && req.version_info == wire.version {
                let (version, resources) = (wire.version.clone(), wire.resources.clone());
                return self.resume(type_url, subscription, version, resources);
            }
            return self.push_new(type_url, subscription, view);
        };
        if req.response_nonce.is_empty() {
            // The client starts this type over (e.g. it dropped its state).
            return self.push_new(type_url, subscription, view);
        }
        if req.response_nonce != st.nonce {
            return Step::event(Event::Stale {
                type_url,
                nonce: shown(&req.response_nonce, MAX_TOKEN_CHARS),
            });
        }
        let event = match &req.error_detail {
            Some(status) => Event::Nack {
                type_url,
                version: st.version.clone(),
                reason: shown(&status.message, MAX_NACK_REASON_CHARS),
            },
            None => Event::Ack {
                type_url,
                version: shown(&req.version_info, MAX_TOKEN_CHARS),
            },
        };
        let mut step = Step::event(event);
        if st.subscription != subscription {
            st.subscription = subscription;
            let (sent, resp) = self.respond(type_url, view);
            step.pushes.push((sent, resp));
        }
        step
    }

    /// Handles a new view: pushes every requested type whose content changed.
    pub fn on_view(&mut self, view: &ProxyView) -> Step<SotwResponse> {
        let mut step = Step::default();
        for type_url in XdsType::ALL {
            let Some(st) = self.types.get(&type_url) else {
                continue;
            };
            // A wildcard's version is the view's (computed once per view):
            // no per-stream walk of the type's resources to learn it.
            if selected(view, type_url, &st.subscription).version != st.version {
                step.pushes.push(self.respond(type_url, view));
            }
        }
        step
    }

    /// The version last sent for each requested type.
    pub fn sent_versions(&self) -> impl Iterator<Item = (XdsType, &str)> + '_ {
        self.types.iter().map(|(t, st)| (*t, st.version.as_str()))
    }

    fn push_new(
        &mut self,
        type_url: XdsType,
        subscription: Subscription,
        view: &ProxyView,
    ) -> Step<SotwResponse> {
        self.types.insert(
            type_url,
            SotwType {
                subscription,
                version: String::new(),
                nonce: String::new(),
            },
        );
        let mut step = Step::default();
        step.pushes.push(self.respond(type_url, view));
        step
    }

    /// The client's first request of `type_url` names the version it would
    /// be sent: track the type at that version (no nonce yet: any request
    /// but one with a fresh nonce is stale) and send nothing.
    fn resume(
        &mut self,
        type_url: XdsType,
        subscription: Subscription,
        version: String,
        resources: Arc<[Arc<EncodedResource>]>,
    ) -> Step<SotwResponse> {
        self.types.insert(
            type_url,
            SotwType {
                subscription,
                version: version.clone(),
                nonce: String::new(),
            },
        );
        let mut step = Step::default();
        step.resumed.push(Sent {
            type_url,
            version,
            nonce: String::new(),
            resources,
        });
        step
    }

    fn respond(&mut self, type_url: XdsType, view: &ProxyView) -> (Sent, SotwResponse) {
        let nonce = self.nonces.next_nonce();
        let Some(st) = self.types.get_mut(&type_url) else {
            unreachable!("respond is only called for tracked types")
        };
        let wire = selected(view, type_url, &st.subscription);
        st.version = wire.version.clone();
        st.nonce = nonce.clone();
        let sent = Sent {
            type_url,
            version: wire.version.clone(),
            nonce: nonce.clone(),
            resources: wire.resources.clone(),
        };
        let resp = SotwResponse {
            version_info: wire.version.clone(),
            type_url: type_url.as_str().to_string(),
            nonce,
            body: Some(wire),
        };
        (sent, resp)
    }
}

/// The resources of `type_url` in `view` that `sub` selects, with their
/// version: a wildcard's are the view's, encoded once for every stream
/// holding it.
fn selected(view: &ProxyView, type_url: XdsType, sub: &Subscription) -> Arc<TypeWire> {
    match sub {
        Subscription::Wildcard => view.wire(type_url),
        Subscription::Names(_) => {
            let resources: Arc<[_]> = view
                .of_type(type_url)
                .values()
                .filter(|r| sub.contains(&r.name))
                .cloned()
                .collect();
            Arc::new(TypeWire::new(set_version(resources.iter()), resources))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Kind;
    use crate::xds::test_support::{names_of, view_of, view_without};
    use envoy_types::pb::google::rpc::Status;
    use sane_xds_proto::TypeUrl;

    fn req(
        type_url: impl Into<XdsType>,
        version: &str,
        nonce: &str,
        names: &[&str],
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into().as_str().to_string(),
            version_info: version.to_string(),
            response_nonce: nonce.to_string(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn nack(type_url: impl Into<XdsType>, nonce: &str, reason: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: reason.into(),
                ..Default::default()
            }),
            ..req(type_url, "", nonce, &[])
        }
    }

    #[test]
    fn initial_ack_and_stale_nonce() {
        let view = view_of("shop");
        let mut s = SotwStream::new(7);
        let step = s.on_request(&req(TypeUrl::Service, "", "", &[]), &view);
        assert!(step.events.is_empty());
        let (sent, resp) = &step.pushes[0];
        assert_eq!(resp.nonce, "7-1");
        assert_eq!(resp.version_info, sent.version);
        assert_eq!(
            names_of(resp),
            ["billing/pay", "inventory/backend", "shop/web"]
        );

        // ACK: nothing to send.
        let step = s.on_request(&req(TypeUrl::Service, &sent.version, "7-1", &[]), &view);
        assert_eq!(
            step.events,
            [Event::Ack {
                type_url: TypeUrl::Service.into(),
                version: sent.version.clone()
            }]
        );
        assert!(step.pushes.is_empty());

        // A second type gets its own nonce; a request carrying another type's
        // or an old nonce is stale, and its subscription change is ignored.
        let step = s.on_request(&req(TypeUrl::Endpoint, "", "", &[]), &view);
        assert_eq!(step.pushes[0].1.nonce, "7-2");
        let step = s.on_request(&req(TypeUrl::Service, "", "7-2", &["shop/web"]), &view);
        assert!(matches!(step.events[0], Event::Stale { .. }));
        assert!(step.pushes.is_empty());

        // The same view again sends nothing.
        assert!(s.on_view(&view).pushes.is_empty());
    }

    #[test]
    fn subscription_narrows_and_changes_are_answered() {
        let view = view_of("shop");
        let mut s = SotwStream::new(1);
        let step = s.on_request(
            &req(
                TypeUrl::Endpoint,
                "",
                "",
                &["shop/web/10.0.0.1:8080", "nope"],
            ),
            &view,
        );
        let (sent, resp) = &step.pushes[0];
        assert_eq!(names_of(resp), ["shop/web/10.0.0.1:8080"]);
        // ACK with a new subscription: answered immediately, new version.
        let step = s.on_request(
            &req(TypeUrl::Endpoint, &sent.version, &resp.nonce, &["*"]),
            &view,
        );
        assert_eq!(step.pushes.len(), 1);
        assert_eq!(step.pushes[0].1.resources().len(), 3);
        assert_ne!(step.pushes[0].0.version, sent.version);
    }

    #[test]
    fn nack_is_recorded_and_the_version_not_resent() {
        let view = view_of("shop");
        let mut s = SotwStream::new(1);
        let step = s.on_request(&req(TypeUrl::Route, "", "", &[]), &view);
        let (sent, resp) = &step.pushes[0];
        let step = s.on_request(
            &nack(TypeUrl::Route, &resp.nonce, "routes[0]: bad regex"),
            &view,
        );
        assert_eq!(
            step.events,
            [Event::Nack {
                type_url: TypeUrl::Route.into(),
                version: sent.version.clone(),
                reason: "routes[0]: bad regex".into()
            }]
        );
        assert!(step.pushes.is_empty());
        // Same content: still not resent.
        assert!(s.on_view(&view).pushes.is_empty());
        // Changed content: a new version goes out.
        let changed = view_without("shop", Kind::Route, "shop/web");
        let step = s.on_view(&changed);
        assert_eq!(step.pushes.len(), 1);
        assert!(step.pushes[0].1.resources().is_empty());
        assert_ne!(step.pushes[0].0.version, sent.version);
    }

    #[test]
    fn a_client_resuming_with_the_current_version_is_not_sent_it_again() {
        let view = view_of("shop");
        let mut first = SotwStream::new(1);
        let version = first
            .on_request(&req(TypeUrl::Route, "", "", &[]), &view)
            .pushes[0]
            .0
            .version
            .clone();
        // A new stream (another replica: versions are content hashes) and
        // the client holds this version: nothing is sent, the type counts
        // as sent and ACKed at it.
        let mut second = SotwStream::new(2);
        let step = second.on_request(&req(TypeUrl::Route, &version, "", &[]), &view);
        assert!(step.pushes.is_empty() && step.events.is_empty());
        assert_eq!(step.resumed.len(), 1);
        assert_eq!(step.resumed[0].version, version);
        let held = step.resumed[0].resources.len();
        assert!(held > 0);
        assert!(second.on_view(&view).pushes.is_empty());
        // A request with an old stream's nonce is stale here.
        let step = second.on_request(&req(TypeUrl::Route, &version, "1-1", &[]), &view);
        assert!(matches!(step.events[0], Event::Stale { .. }));
        // The next change is pushed, and its ACK recorded.
        let changed = view_without("shop", Kind::Route, "shop/web");
        let step = second.on_view(&changed);
        assert_eq!(step.pushes.len(), 1);
        assert_eq!(step.pushes[0].1.nonce, "2-1");
        assert_eq!(step.pushes[0].1.resources().len(), held - 1);
        let v2 = step.pushes[0].0.version.clone();
        let step = second.on_request(&req(TypeUrl::Route, &v2, "2-1", &[]), &changed);
        assert_eq!(
            step.events,
            [Event::Ack {
                type_url: TypeUrl::Route.into(),
                version: v2
            }]
        );
        // A version the stream would not send (older, or a narrower
        // subscription's) gets the current state in full.
        let mut third = SotwStream::new(3);
        let step = third.on_request(&req(TypeUrl::Route, &version, "", &[]), &changed);
        assert_eq!(step.pushes.len(), 1);
        assert!(step.resumed.is_empty());
        let step = third.on_request(&req(TypeUrl::Endpoint, &version, "", &["x"]), &view);
        assert_eq!(step.pushes.len(), 1);
    }

    #[test]
    fn reconnect_gets_current_state_and_unknown_types_are_reported() {
        let view = view_of("shop");
        let mut first = SotwStream::new(1);
        let version = first
            .on_request(&req(TypeUrl::Service, "", "", &[]), &view)
            .pushes[0]
            .0
            .version
            .clone();
        // A new stream: the client claims another version and an old nonce,
        // and gets the full state with a fresh nonce.
        let mut second = SotwStream::new(2);
        let step = second.on_request(
            &req(TypeUrl::Service, &format!("{version}x"), "1-1", &[]),
            &view,
        );
        assert_eq!(step.pushes[0].1.nonce, "2-1");
        assert_eq!(step.pushes[0].1.resources().len(), 3);
        let mut unknown = req(TypeUrl::Service, "", "", &[]);
        unknown.type_url = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into();
        let step = second.on_request(&unknown, &view);
        assert!(matches!(step.events[0], Event::UnknownType { .. }));
        // Answered once, empty; its ACK is not answered again.
        assert!(step.pushes.is_empty());
        assert_eq!(step.untracked.len(), 1);
        assert!(step.untracked[0].resources().is_empty());
        assert_eq!(step.untracked[0].type_url, unknown.type_url);
        unknown.response_nonce = step.untracked[0].nonce.clone();
        let step = second.on_request(&unknown, &view);
        assert!(matches!(step.events[0], Event::UnknownType { .. }));
        assert!(step.untracked.is_empty() && step.pushes.is_empty());
        // A flood of made-up types is answered for the first few only.
        let answered: usize = (0..100)
            .map(|i| {
                let mut r = req(TypeUrl::Service, "", "", &[]);
                r.type_url = format!("type.googleapis.com/made.up.T{i}");
                second.on_request(&r, &view).untracked.len()
            })
            .sum();
        assert_eq!(answered, crate::xds::protocol::MAX_UNKNOWN_TYPES - 1);
        // Listeners are served, empty.
        let step = second.on_request(&req(TypeUrl::Listener, "", "", &[]), &view);
        assert!(step.pushes[0].1.resources().is_empty());
    }
}
