//! `cargo xtask deploy`: the files under `deploy/` checked and exercised here, without a
//! cluster, a container engine or a booted systemd.
//!
//! - the container image ([`docker`]): the Dockerfile's build command and entrypoint run as
//!   the image would run them, as PID 1 of a pid namespace under the image's user.
//! - Kubernetes ([`kubernetes`]): the manifests validated offline against the API schemas and
//!   checked against arbiter's flags (probes, grace period, drain, GPUs, `--check-config`).
//! - systemd ([`systemd`]): `systemd-analyze verify` on the units; their `ExecStart=` run under
//!   `systemd-socket-activate` with this task as the notify socket's receiver.
//!
//! Every process is started through [`crate::process::Master`] (killed by pid when a step
//! fails), binds only loopback or paths in a scratch directory, and every wait is bounded.

mod docker;
mod kubernetes;
mod notify;
mod systemd;

use crate::process::Scratch;

/// Runs every check; fails if any failed (after running the others).
pub fn run() -> Result<(), String> {
    let dist = crate::dist::build()?;
    let man_path = dist.man_dir.parent().expect("man/man1");
    let scratch = Scratch::new("deploy")?;
    let mut failed = Vec::new();
    match docker::check(&scratch.path().join("docker")) {
        Ok(lines) => lines.iter().for_each(|l| println!("docker: {l}")),
        Err(e) => {
            println!("docker: FAILED: {e}");
            failed.push("docker");
        }
    }
    match systemd::check(&dist.binary, man_path, &scratch.path().join("systemd")) {
        Ok(lines) => lines.iter().for_each(|l| println!("systemd: {l}")),
        Err(e) => {
            println!("systemd: FAILED: {e}");
            failed.push("systemd");
        }
    }
    let kubernetes = docker::user().and_then(|(uid, _)| {
        kubernetes::check(&dist.binary, uid, &scratch.path().join("kubernetes"))
    });
    match kubernetes {
        Ok(lines) => lines.iter().for_each(|l| println!("kubernetes: {l}")),
        Err(e) => {
            println!("kubernetes: FAILED: {e}");
            failed.push("kubernetes");
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}
