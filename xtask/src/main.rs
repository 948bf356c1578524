//! Workspace tasks: `cargo xtask integration`, `cargo xtask bench`.
fn main() {}
