//! Request policies, one small tower layer each. The order they are stacked
//! in is written once, in [`crate::stack`].

pub mod timeout;
