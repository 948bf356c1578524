//! The `arbiter` binary: a pre-fork process arbiter.
//!
//! `main` maps a `Result` to an exit code and nothing else; `arbiter worker ...` runs the
//! built-in HTTP worker, which the master execs when no worker command is given.

#[allow(dead_code)] // wired into main as the event loop lands
mod config;
mod worker;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a == "worker").unwrap_or(false) {
        return worker::main(args[2..].to_vec());
    }
    eprintln!("arbiter: the master is under construction");
    ExitCode::from(1)
}
