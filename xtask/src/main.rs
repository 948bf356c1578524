//! Workspace tasks, run as `cargo xtask TASK`:
//!
//! - `integration`: arbiter with real servers no one here wrote (uvicorn, gunicorn, node).
//! - `bench`: benchmarks side by side with gunicorn.
//! - `deploy`: the container image's steps, the Kubernetes manifests and the systemd units of
//!   `deploy/`, checked and exercised without a cluster, an engine or a booted systemd.
//! - `dist`: the release binary, man pages and shell completions in `target/dist/`.
//! - `fuzz`: the libFuzzer targets of `fuzz/`, every parser the outside world reaches.
//! - `gpu-check`: on a machine with NVIDIA GPUs, workers that initialise CUDA each see exactly
//!   their own GPU (not part of CI; without `nvidia-smi` it says so and succeeds).
//!
//! Tasks install what they need themselves (a Python venv under `target/`), bind only to
//! loopback, and bound every wait.

mod bench;
mod common;
mod deploy;
mod dist;
mod fuzz;
mod gpu_check;
mod integration;
mod process;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprintln!("usage: cargo xtask <task>; tasks: {}", TASKS.join(", "));
        return ExitCode::from(2);
    };
    let result = match task.as_str() {
        // Each task module adds its arm here.
        "bench" => bench::run(&args[1..]),
        "deploy" => deploy::run(),
        "dist" => dist::run(),
        "fuzz" => fuzz::run(&args[1..]),
        "gpu-check" => gpu_check::run(),
        "integration" => integration::run(&args[1..]),
        other => Err(format!(
            "unknown task {other:?}; tasks: {}",
            TASKS.join(", ")
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The tasks this binary knows.
const TASKS: &[&str] = &[
    "bench",
    "deploy",
    "dist",
    "fuzz",
    "gpu-check",
    "integration",
];
