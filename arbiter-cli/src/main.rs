//! The `arbiter` binary (under construction).
fn main() {}
