//! Edge protections, each a small unit-tested module: per-IP connection
//! limit (at accept), then per request, outermost first: forwarding headers
//! (so everything below sees the client's address), the rate limit (sheds
//! before any work), the body limit. Header size and header read timeout
//! are HTTP server settings applied in [`super::server`].

pub mod body_limit;
pub mod conn_limit;
pub mod forwarded;
pub mod rate_limit;

pub use body_limit::BodyLimitLayer;
pub use conn_limit::{ConnGuard, ConnLimiter};
pub use forwarded::{ClientAddr, ForwardedLayer};
pub use rate_limit::{RateLimitLayer, TokenBucket};
