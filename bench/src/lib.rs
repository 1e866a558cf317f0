//! Sane Mesh benchmarks: the side-by-side data-plane benchmark behind
//! `bench/run` (direct traffic, the sane sidecar pair, an nginx pair and a
//! haproxy pair, each two hops with mutual TLS between them), its
//! statistics and report, and (in `benches/`) criterion micro-benchmarks of
//! the proxy's hot paths.
//!
//! The library holds what is worth unit-testing (summaries and ratios,
//! `/proc` parsing, the load generators' report parsers); `main.rs` runs
//! the processes.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod etcd;
pub mod fleet_registry;
pub mod load;
pub mod procfs;
pub mod report;
pub mod stats;
pub mod topology;
