//! Config decoding and validation: arbitrary bytes as a proxy bootstrap file
//! (what `sane-proxy --config` reads and a SIGHUP reloads) and as a
//! `MeshResources` document (the resource kinds the control plane accepts).
//!
//! Invariants: decoding (size, nesting and aliases bounded first),
//! `validate()` and compiling never panic, and a
//! config that validates compiles or is rejected with an error (never a
//! panic); a valid bootstrap survives a YAML round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sane_proxy::config::Snapshot;
use sane_xds_proto::yaml::{self, YamlLimits};
use sane_xds_proto::{Bootstrap, MeshResources};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Read the way the proxy reads its file: bounded before serde_yaml loads it.
    let limits = YamlLimits::default();
    if let Ok(bootstrap) = yaml::from_str::<Bootstrap>(text, &limits) {
        if bootstrap.validate().is_ok() {
            let again = serde_yaml::to_string(&bootstrap).expect("a bootstrap serializes");
            let back: Bootstrap = serde_yaml::from_str(&again).expect("its YAML reads back");
            assert_eq!(back, bootstrap, "YAML round trip changed the config");
            let _ = Snapshot::compile(bootstrap, 1, None, "fuzz");
        }
    }
    if let Ok(resources) = yaml::from_str::<MeshResources>(text, &limits) {
        if resources.validate().is_ok() {
            let bootstrap = Bootstrap {
                resources,
                ..Default::default()
            };
            let _ = Snapshot::compile(bootstrap, 1, None, "fuzz");
        }
    }
});
