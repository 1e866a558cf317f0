//! `Listener`: an HTTP API listener (gRFC A27), the form gRPC clients
//! resolve `xds:///NAME` through: an `HttpConnectionManager` taking its
//! routes from RDS over the same ADS stream, with the fault filter (applied
//! per route) and the router filter last, as gRPC requires.

use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter::ConfigType, HttpConnectionManager,
    HttpFilter, Rds,
};
use envoy_types::util::pack_any;

/// Name of the fault filter; routes configure it in `typed_per_filter_config`.
pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// Name of the router filter.
const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// The API listener `name`, routed by `RouteConfiguration` `route_config`.
pub(super) fn api_listener(name: &str, route_config: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_string(),
        })),
        http_filters: vec![
            filter(FAULT_FILTER, pack_any(HttpFault::default())),
            filter(ROUTER_FILTER, pack_any(Router::default())),
        ],
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        }),
        ..Default::default()
    }
}

/// "Over the ADS stream this resource came on", v3.
pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3.into(),
        ..Default::default()
    }
}

fn filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}
