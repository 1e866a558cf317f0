//! sanectl placeholder.
fn main() {}
