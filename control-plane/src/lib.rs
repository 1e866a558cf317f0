//! Sane Mesh control plane.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod error;
pub mod metrics;
pub mod registry;
pub mod resource;
pub mod status;
pub mod store;
pub mod xds;

pub use error::Error;
