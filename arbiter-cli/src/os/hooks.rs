//! gunicorn's server hooks (`on_starting`, `when_ready`, `on_reload`, `nworkers_changed`,
//! `worker_exit`, `on_exit`) as shell commands, for workers in any language.
//!
//! A hook runs as `/bin/sh -c COMMAND` with the master's environment plus `ARBITER_HOOK` (its
//! name), `ARBITER_PID` (the master) and the hook's own `ARBITER_HOOK_*` variables. std's
//! `Command` starts no thread. The master never blocks on a hook, except `on_starting` and
//! `on_exit`, which it waits for within a bound; the others are reaped by the master's loop.

use std::ffi::OsString;
use std::io;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Starts the hook `name`.
pub fn start(
    name: &str,
    command: &str,
    env: &[(OsString, OsString)],
    vars: &[(&str, String)],
) -> io::Result<Child> {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("ARBITER_HOOK", name)
        .env("ARBITER_PID", std::process::id().to_string())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .spawn()
}

/// Waits for a hook at most `limit`; `None` if it is still running then (it is left to run).
pub fn wait(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_sees_its_name_the_master_pid_and_its_variables() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let command = format!(
            "echo \"$ARBITER_HOOK $ARBITER_PID $ARBITER_HOOK_NEW $KEPT\" > {}",
            out.display()
        );
        let env = [(OsString::from("KEPT"), OsString::from("yes"))];
        let mut child = start(
            "nworkers_changed",
            &command,
            &env,
            &[("ARBITER_HOOK_NEW", "3".into())],
        )
        .unwrap();
        let status = wait(&mut child, Duration::from_secs(10)).expect("finished");
        assert!(status.success());
        let line = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            line.trim(),
            format!("nworkers_changed {} 3 yes", std::process::id())
        );
    }

    #[test]
    fn waiting_is_bounded() {
        let mut child = start("on_exit", "sleep 60", &[], &[]).unwrap();
        let started = Instant::now();
        assert!(wait(&mut child, Duration::from_millis(100)).is_none());
        // It gave up at its bound rather than waiting for the hook: less than half the hook's
        // 60 s (a 2 s bound measured the machine's load).
        let took = started.elapsed();
        assert!(took < Duration::from_secs(30), "{took:?}");
        let _ = child.kill();
        let _ = child.wait();
    }
}
