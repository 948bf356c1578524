//! `arbiter upgrade`: the whole USR2 dance against a running arbiter, with an exit code that
//! says whether it worked.
//!
//! USR2 to the master named by the pidfile; wait until the new master writes `PIDFILE.2`
//! (it does so only once its workers are ready); TERM the old master; wait until the new one
//! has promoted itself (`PIDFILE` holds its pid). On failure or timeout the new master, if
//! one started, is stopped and the old one keeps serving.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::os::pidfile;
use crate::Failure;

/// Upgrade a running arbiter to the binary now on disk, without dropping a connection.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The running arbiter's pidfile.
    #[arg(short, long, env = "ARBITER_PIDFILE", value_name = "PATH")]
    pidfile: PathBuf,
    /// How long the new master may take until its workers are ready.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// How long the old master may take to stop after TERM.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stop_timeout: Duration,
}

/// Runs `arbiter upgrade`: prints a summary line on success; a failure (exit 1) names why.
pub fn run(args: &Args) -> Result<u8, Failure> {
    let message =
        upgrade(args).map_err(|why| Failure::new(format!("arbiter upgrade: {why}"), 1))?;
    println!("{message}");
    Ok(0)
}

fn upgrade(args: &Args) -> Result<String, String> {
    let started = Instant::now();
    let path = &args.pidfile;
    let old = pidfile::read_pid(path)
        .filter(|pid| pidfile::is_live_arbiter(*pid))
        .ok_or_else(|| format!("no arbiter is running (pidfile {})", path.display()))?;
    let upgrade_path = pidfile::upgrade_path(path);
    if let Some(other) = pidfile::read_pid(&upgrade_path).filter(|p| pidfile::is_live_arbiter(*p)) {
        return Err(format!(
            "an upgrade is already under way (new master {other})"
        ));
    }
    if new_master_of(old).is_some() {
        return Err(format!(
            "an upgrade is already under way (master {old} has a new master)"
        ));
    }
    send(old, Signal::SIGUSR2)?;
    let new = wait_until_ready(old, &upgrade_path, args.ready_timeout)?;
    let ready_after = started.elapsed();
    send(old, Signal::SIGTERM)?;
    wait_for(args.stop_timeout, || !alive(old)).map_err(|_| {
        format!(
            "the old master {old} did not stop within {:?}; both are running",
            args.stop_timeout
        )
    })?;
    wait_for(Duration::from_secs(10), || {
        pidfile::read_pid(path) == Some(new)
    })
    .map_err(|_| {
        format!(
            "the new master {new} did not promote itself ({} does not hold its pid)",
            path.display()
        )
    })?;
    Ok(format!(
        "upgraded: master {old} -> {new}; new workers ready after {:.2} s, done in {:.2} s",
        ready_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ))
}

/// How long the old master may take to fork the new one before the upgrade counts as failed.
const NO_CHILD_LIMIT: Duration = Duration::from_secs(5);

/// Waits for `PIDFILE.2` to name a live new master; stops the new master on failure.
fn wait_until_ready(old: i32, upgrade_path: &Path, limit: Duration) -> Result<i32, String> {
    let started = Instant::now();
    let deadline = started + limit;
    let mut seen: Option<i32> = None;
    loop {
        if let Some(new) = pidfile::read_pid(upgrade_path).filter(|p| *p != old && alive(*p)) {
            return Ok(new);
        }
        match new_master_of(old) {
            Some(pid) => seen = Some(pid),
            None if seen.is_some() => {
                return Err(format!(
                    "the new master {} exited before its workers were ready; master {old} keeps serving (see its log)",
                    seen.unwrap_or_default()
                ));
            }
            None if Instant::now() >= started + NO_CHILD_LIMIT => {
                return Err(format!(
                    "master {old} started no new master (is the binary still on disk? see its log); it keeps serving"
                ));
            }
            None => {}
        }
        if !alive(old) {
            return Err(format!("the old master {old} exited during the upgrade"));
        }
        if Instant::now() >= deadline {
            if let Some(new) = seen.or_else(|| new_master_of(old)) {
                let _ = send(new, Signal::SIGTERM);
                let _ = wait_for(Duration::from_secs(30), || !alive(new));
            }
            return Err(format!(
                "the new master was not ready within {limit:?}; it was stopped and master {old} keeps serving"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child of `old` that is a new master: titled `master.2 [...]`, or, before it has got
/// that far in its start (a loaded machine can take seconds), exec'd with
/// `ARBITER_MASTER_PID=old` in its environment, which only the re-exec gives it.
fn new_master_of(old: i32) -> Option<i32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let marker = format!("ARBITER_MASTER_PID={old}");
    entries.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = &stat[stat.rfind(')')? + 1..];
        let ppid: i32 = after.split_whitespace().nth(1)?.parse().ok()?;
        if ppid != old {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        if cmdline.starts_with(b"master.2 [") {
            return Some(pid);
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .any(|entry| entry == marker.as_bytes())
            .then_some(pid)
    })
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    kill(Pid::from_raw(pid), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rfind(')')
                    .map(|i| stat[i + 1..].trim_start().starts_with('Z'))
            })
            .is_some_and(|zombie| !zombie)
}

fn send(pid: i32, signal: Signal) -> Result<(), String> {
    kill(Pid::from_raw(pid), signal).map_err(|e| format!("cannot send {signal} to {pid}: {e}"))
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
