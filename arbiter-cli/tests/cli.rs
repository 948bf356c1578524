//! The `arbiter` binary's command line, run as a user would. Being an integration test of
//! `arbiter-cli`, it also makes `cargo test --workspace` build the binary that the real-process
//! tests of `arbiter-tests` run.

use std::process::Command;

fn arbiter(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(args)
        .env_remove("ARBITER_WORKERS")
        .env_remove("ARBITER_CONFIG")
        .output()
        .expect("running arbiter")
}

#[test]
fn help_exits_0_and_lists_the_options() {
    let out = arbiter(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--workers"), "{text}");
    assert!(text.contains("--bind"), "{text}");
}

#[test]
fn zero_workers_is_a_one_line_usage_error() {
    let out = arbiter(&["--workers", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    assert!(text.contains("--workers"), "{text}");
    assert!(out.stdout.is_empty());
}
