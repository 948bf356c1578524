//! Workspace tasks, run as `cargo xtask TASK`:
//!
//! - `integration`: arbiter with real servers no one here wrote (uvicorn, gunicorn, node).
//! - `bench`: benchmarks side by side with gunicorn, uWSGI and C floors.
//! - `deploy`: the container image's steps, the Kubernetes manifests and the systemd units of
//!   `deploy/`, checked and exercised without a cluster, an engine or a booted systemd.
//! - `dist`: the release binary, man pages and shell completions in `target/dist/`.
//! - `fuzz`: the libFuzzer targets of `fuzz/`, every parser the outside world reaches.
//! - `libmode-bench`: arbiter's library mode against gunicorn `--preload`: per-worker PSS
//!   with a preloaded table, and crash to replacement serving.
//! - `gpu-check`: on a machine with NVIDIA GPUs, workers that initialise CUDA each see exactly
//!   their own GPU (not part of CI; without `nvidia-smi` it says so and succeeds).
//!
//! Tasks install what they need themselves (a Python venv under `target/`), bind only to
//! loopback, and bound every wait. `cargo xtask TASK --help` prints a task's usage and exits 0;
//! bad arguments exit 2.

mod bench;
mod common;
mod deploy;
mod dist;
mod fuzz;
mod gpu_check;
mod integration;
mod libmode_bench;
mod process;

use std::process::ExitCode;

/// The usage of the whole binary.
const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  bench        benchmarks against gunicorn, uWSGI and C floors
  deploy       the files under deploy/ checked and exercised without a cluster or systemd
  dist         the release binary, man pages and shell completions in target/dist/
  fuzz         the libFuzzer targets of fuzz/
  gpu-check    on a machine with NVIDIA GPUs: each worker sees exactly its own GPU
  integration  arbiter with real servers (uvicorn, gunicorn, node) as its workers
  libmode-bench  library mode against gunicorn --preload: worker PSS, crash to serving

`cargo xtask <task> --help` prints the usage of one task.
";

const INTEGRATION_USAGE: &str = "\
usage: cargo xtask integration [GROUP...]

Runs the release arbiter with real servers no one here wrote as its workers, the worker
protocol spoken by other people's clients, and arbiter under systemd-socket-activate.
Installs its Python packages into target/xtask-venv. With GROUP names, runs only those
groups: peers, systemd, clients.
";

const DEPLOY_USAGE: &str = "\
usage: cargo xtask deploy

Checks and exercises the files under deploy/ without a cluster, a container engine or a booted
systemd. Takes no options.
";

const DIST_USAGE: &str = "\
usage: cargo xtask dist

Builds what a release ships into target/dist/ (the release binary, man pages, shell
completions) and checks them with the tools that read them. Takes no options.
";

const GPU_CHECK_USAGE: &str = "\
usage: cargo xtask gpu-check

On a machine with NVIDIA GPUs, runs arbiter --gpus auto with CUDA-initialising workers and
checks that each worker sees exactly its own GPU. Without nvidia-smi it says so and succeeds.
Takes no options.
";

/// How a task ended badly.
enum Failure {
    /// Bad arguments: exit 2.
    Usage(String),
    /// The task ran and failed: exit 1.
    Failed(String),
}

fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "-h" || a == "--help")
}

/// Prints `usage` for `--help`, fails on any other argument, else runs `task`.
fn without_arguments(
    name: &str,
    args: &[String],
    usage: &str,
    task: fn() -> Result<(), String>,
) -> Result<(), Failure> {
    if wants_help(args) {
        print!("{usage}");
        return Ok(());
    }
    match args.first() {
        None => task().map_err(Failure::Failed),
        Some(arg) => Err(Failure::Usage(format!(
            "{name} takes no arguments, got {arg:?}\n\n{usage}"
        ))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match task.as_str() {
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        // Each task module adds its arm here.
        "bench" => match bench::parse(rest) {
            Err(e) => Err(Failure::Usage(e)),
            Ok(None) => {
                print!("{}", bench::USAGE);
                Ok(())
            }
            Ok(Some(options)) => bench::run(options).map_err(Failure::Failed),
        },
        // Internal: the core simulation in a release build, for `bench`.
        "bench-core-sim" => bench::core_sim_task(rest).map_err(Failure::Failed),
        "deploy" => without_arguments(task, rest, DEPLOY_USAGE, deploy::run),
        "dist" => without_arguments(task, rest, DIST_USAGE, dist::run),
        "fuzz" => fuzz::run(rest).map_err(Failure::Failed),
        "gpu-check" => without_arguments(task, rest, GPU_CHECK_USAGE, gpu_check::run),
        "integration" if wants_help(rest) => {
            print!("{INTEGRATION_USAGE}");
            Ok(())
        }
        "integration" => integration::run(rest).map_err(Failure::Failed),
        "libmode-bench" => match libmode_bench::parse(rest) {
            Err(e) => Err(Failure::Usage(e)),
            Ok(None) => {
                println!("{}", libmode_bench::USAGE);
                Ok(())
            }
            Ok(Some(options)) => libmode_bench::run(options).map_err(Failure::Failed),
        },
        other => Err(Failure::Usage(format!("unknown task {other:?}\n\n{USAGE}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}
