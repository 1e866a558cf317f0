//! Sane Mesh end-to-end support: the `sane-echo` test application, the test
//! harness that builds and runs the real binaries, and the local demo.
//!
//! * [`echo`]: the app the mesh carries traffic to (HTTP/1.1 + h2c, gRPC, TCP).
//! * [`harness`]: builds binaries once per process, runs them as [`Proc`]s,
//!   starts whole meshes ([`Mesh`], [`TwoHop`]) and gives tests clients and
//!   the one polling helper, [`eventually`].
//! * [`demo`]: the traffic loop behind `sane-demo`.
//!
//! Architecture invariant: nothing here is linked into the proxy or the
//! control plane; they are driven only through their binaries, config files,
//! signals and admin ports, exactly as an operator would.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod demo;
pub mod echo;
pub mod harness;

pub use harness::{eventually, Mesh, Proc, TwoHop};
