//! Registering one metric family into the registry the caller owns.
//!
//! A leaf: modules whose metric sets [`crate::telemetry::Metrics`] gathers
//! (the listeners' limits, the inbound's port refusals, the gateway) register
//! their families with it, below `telemetry`.

use prometheus::{IntCounterVec, Opts, Registry};

/// A counter family, registered in `registry`.
pub fn register_counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}
