//! xDS resource decoding, as the proxy's xDS client does it: arbitrary bytes
//! as a protobuf `DiscoveryResponse` (the envoy-types envelope), its `Any`
//! resources decoded into the mesh types and validated one by one
//! (`XdsState::candidate`), and an accepted candidate compiled into a config
//! snapshot the way an ACK would apply it.
//!
//! Invariants: nothing panics; a rejected response yields a NACK naming a
//! reason.
#![no_main]

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sane_proxy::config::Snapshot;
use sane_proxy::xds::state::XdsState;
use sane_xds_proto::Bootstrap;

fuzz_target!(|data: &[u8]| {
    let Ok(resp) = DiscoveryResponse::decode(data) else {
        return;
    };
    let state = XdsState::default();
    match state.candidate(&resp) {
        Ok((_received, resources)) => {
            let bootstrap = Bootstrap {
                resources,
                ..Default::default()
            };
            let _ = Snapshot::compile(bootstrap, 1, None, "xds");
        }
        Err(reason) => {
            assert!(!reason.is_empty(), "a rejection without a reason");
            let nack = state.reject(&resp, reason);
            assert!(nack.error_detail.is_some(), "a NACK without error_detail");
        }
    }
});
