//! The built-in HTTP worker (under construction).

use std::ffi::OsString;
use std::process::ExitCode;

/// Runs the built-in worker with the switches that follow `arbiter worker`.
pub fn main(_args: Vec<OsString>) -> ExitCode {
    ExitCode::from(3)
}
