//! Errors of the certificate authority service.

/// What can go wrong setting up or running the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The workload token store could not be read or written.
    #[error("workload token store {path}: {reason}")]
    TokenStore {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A CA file could not be read.
    #[error("reading {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// Loading, generating or using the CA key and certificate failed.
    #[error("certificate authority: {0}")]
    Authority(#[from] sane_certs::Error),
}
