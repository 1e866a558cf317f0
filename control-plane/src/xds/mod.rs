//! The xDS server: Aggregated Discovery Service, both state of the world
//! (`StreamAggregatedResources`) and incremental (`DeltaAggregatedResources`),
//! over the `envoy.service.discovery.v3` protos.
//!
//! # Contract for proxies
//!
//! ## Types
//!
//! | type URL                                               | resource (`sane-xds-proto`) |
//! |--------------------------------------------------------|-----------------------------|
//! | `type.googleapis.com/sane.mesh.v1.Listener`            | `Listener` (always empty: listeners come from the proxy's bootstrap) |
//! | `type.googleapis.com/sane.mesh.v1.Service`             | `Service`                   |
//! | `type.googleapis.com/sane.mesh.v1.Endpoint`            | `Endpoint`                  |
//! | `type.googleapis.com/sane.mesh.v1.Route`               | `Route`                     |
//! | `type.googleapis.com/sane.mesh.v1.DestinationPolicy`   | `DestinationPolicy`         |
//! | `type.googleapis.com/sane.mesh.v1.AuthorizationPolicy` | `AuthorizationPolicy`       |
//! | `type.googleapis.com/sane.mesh.v1.Telemetry`           | `Telemetry`                 |
//! | `type.googleapis.com/sane.mesh.v1.PeerAuthentication`  | `PeerAuthentication` (its namespace's and the root namespace's) |
//!
//! Each resource is an `Any { type_url, value }` whose `value` is the
//! prost-encoded message.
//!
//! The same stream also serves the standard Envoy v3 types
//! (`envoy.config.listener.v3.Listener`, `envoy.config.route.v3.RouteConfiguration`,
//! `envoy.config.cluster.v3.Cluster`, `envoy.config.endpoint.v3.ClusterLoadAssignment`),
//! built from the same view for proxyless gRPC clients and Envoy: see
//! [`envoy`] for names and `docs/proxyless-grpc.md`. Other type URLs get one
//! empty response per stream and type (the first request; at most 16 types)
//! and a warning in the log.
//!
//! ## Resource names
//!
//! A resource's name is its registry key; the namespace is always explicit:
//!
//! * service, route, policy: `namespace/name` (`default/echo`);
//! * endpoint: `namespace/service/address:port` (`default/echo/10.0.0.7:15006`),
//!   where `port` is the endpoint's `proxy_port` if set, else its `port`;
//!   IPv6 addresses are bracketed.
//!
//! Empty `namespace` fields are filled with `default` before sending.
//!
//! ## Node
//!
//! The first request of every stream must carry `node` (later ones may omit
//! it; it is read once per stream):
//!
//! * `node.id` (required): unique per proxy instance, and one of the
//!   stream token's workload: `<service_account>.<namespace>` or
//!   `<service_account>.<namespace>~<instance>` (anything else:
//!   `PERMISSION_DENIED`). Shown in `GET /api/v1/proxies`, one row per
//!   stream.
//! * `node.metadata.namespace` (string, default `default`): the proxy's
//!   namespace; must be the token's.
//! * `node.metadata.services` (list of strings, or one comma-separated
//!   string; default none): extra services the proxy talks to, each `name`
//!   (in the proxy's namespace), `name.namespace` or `namespace/name`; `*`
//!   means every service exported to its namespace.
//! * `node.metadata.inbound` (list of `ip:port` strings, default none): the
//!   bound addresses of the proxy's inbound listeners; endpoints pointing at
//!   them are the proxy's own (see below).
//! * `node.metadata.workload` (string, default `node.cluster`): shown in the
//!   status table only.
//! * `node.metadata.token` (string): the workload token, read only when the
//!   stream has no `authorization` header (gRPC's xDS client cannot send
//!   one); see [`node_token`].
//! * `node.metadata.labels` (map of strings, default none): the workload's
//!   labels, which a Sidecar's `workloadSelector` matches (so do the labels
//!   of the endpoints the proxy serves).
//! * `node.user_agent_name` and version: shown in the status table.
//!
//! Every field is bounded ([`client_input`]); so is the whole request
//! ([`client_input::MAX_REQUEST_BYTES`]).
//!
//! From a proxy's bootstrap (`sane_xds_proto::Bootstrap`): `node.id` is
//! `node.id`, `namespace` is `node.namespace`, `workload` (or `node.cluster`)
//! is `node.workload`, `services` is `control_plane.services`.
//!
//! Other metadata fields are ignored. A malformed or oversized field ends
//! the stream with `INVALID_ARGUMENT` naming the field.
//!
//! ## What a proxy receives (its view)
//!
//! Only services exported to its namespace (`Service.export_to`; default
//! every namespace): all of its namespace, plus those it lists, plus —
//! transitively — every destination and mirror target of a route of a
//! service already in the view (so traffic split or mirrored to another
//! namespace works). Endpoints and destination policies: those of the
//! services in the view; routes: those whose destinations are all in the
//! view. Authorization policies: those of its namespace that target an
//! endpoint the proxy serves (one pointing at its `inbound` addresses, with
//! no identity or the token's), and it enforces all it gets; telemetry: its
//! namespace's. A Sidecar scope (Istio's `Sidecar`, see [`scope`]) keeps
//! of those services only the ones its egress hosts admit. See [`view`]. An
//! empty `resource_names` (or `*`) subscribes
//! to the whole view; explicit names narrow it.
//!
//! ## Protocol
//!
//! * Every response has a fresh nonce (`<stream>-<n>`) and a per-type version:
//!   a hash of the names and versions of everything the proxy holds for that
//!   type after applying it, stable across control-plane restarts. Delta
//!   resources carry their own version (a hash of their encoded bytes).
//! * ACK: a request with the latest nonce of its type and no `error_detail`.
//!   NACK: the same with `error_detail`; its `message` is recorded and shown in
//!   `GET /api/v1/proxies`, and the rejected version is not sent again (a new
//!   version is, when the content changes). Put the resource name and field
//!   path in the message.
//! * State of the world: requests with an older nonce are ignored; the first
//!   request of a type on each new stream is answered in full, unless its
//!   `version_info` already is the version it would be sent: then nothing is
//!   sent (the client resumes with what it holds, e.g. after failing over
//!   to another replica, whose versions are the same) and the next change
//!   is pushed as usual.
//! * Delta: see [`delta`] for subscriptions, `initial_resource_versions` and
//!   `removed_resources`.
//! * A new stream starts from the registry's latest state. Registry changes
//!   after that are coalesced ([`debounce`]) and then each stream gets
//!   only the types whose content in its view changed.

pub mod client_input;
pub mod debounce;
pub mod delta;
pub mod envoy;
pub mod node_token;
pub mod protocol;
pub mod scope;
pub mod server;
pub mod snapshot;
pub mod sotw;
pub mod type_url;
pub mod view;
pub mod wire;

#[cfg(test)]
pub(crate) mod test_support;

pub use debounce::DebounceConfig;
pub use server::AdsService;
pub use type_url::XdsType;
pub use view::{node_metadata, node_metadata_with_inbound, NodeSpec};
