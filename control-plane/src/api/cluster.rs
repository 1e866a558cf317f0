//! Where the resource API's writes go when the registry is not the store:
//! in `--kubernetes` mode the cluster is (`crate::k8s::crd_store` implements
//! [`ClusterStore`] with `sane.mesh/v1` objects), and every replica sees a
//! write through its own watch, not through this replica's registry.
//!
//! The API only asks the store three things: may this kind be written here
//! at all, what version does the cluster hold of a resource (the `ETag`,
//! what `If-Match` compares with), and write or delete one resource under
//! an expected version. Validation against the registry stays the
//! store's job, so it can refuse exactly what its watch would.

use crate::error::Error;
use crate::registry::Outcome;
use crate::resource::{Kind, Resource};
use std::future::Future;
use std::pin::Pin;

/// A write's future (the trait is used as `dyn`).
pub type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<ClusterWrite, Error>> + Send + 'a>>;

/// The store behind the resource API's writes, when it is not the registry.
pub trait ClusterStore: Send + Sync + std::fmt::Debug {
    /// `None` when writes of `kind` go to the registry as usual; else
    /// whether they go to the cluster (`Ok`) or are refused here, with
    /// why (`Err`: answered 409).
    fn route(&self, kind: Kind) -> Option<Result<(), String>>;
    /// The cluster's version of a resource it holds, as last seen by this
    /// replica's watch.
    fn version(&self, kind: Kind, key: &str) -> Option<u64>;
    /// Creates or replaces `resource`; with `expect`, only if the cluster
    /// holds it at that version (0: must not exist), else
    /// [`Error::VersionConflict`].
    fn put(&self, resource: Resource, expect: Option<u64>) -> WriteFuture<'_>;
    /// Deletes a resource; with `expect`, only at that version.
    fn delete(&self, kind: Kind, key: String, expect: Option<u64>) -> WriteFuture<'_>;
}

/// What a cluster write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterWrite {
    /// Created, updated, unchanged or deleted.
    pub outcome: Outcome,
    /// The resource's version after the write (0 once deleted).
    pub version: u64,
    /// Whether this replica's registry reflected the write before the
    /// answer (its watch saw it in time).
    pub synced: bool,
}
