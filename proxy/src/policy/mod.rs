//! Request policies, one small tower layer each. The order they are stacked
//! in is written once, in [`crate::stack`].
//!
//! Policies are generic: the route stage puts what applies to a request
//! (the matched rule's [`RulePolicies`], the destination's breaker and retry
//! budget) in its extensions, and each layer acts on what it finds there.

pub mod circuit_breaker;
pub mod replay;
pub mod retry;
pub mod timeout;
