//! The floors, measured in the same run as the masters: a small C program compiled with `cc`
//! into `target/bench-floor/` at bench time.
//!
//! - `floor spawn fork|vfork N PROGRAM ARGS...`: forks (or vforks) N children that exec
//!   PROGRAM, one after the other without waiting, then waits for all; prints the ms until
//!   the last fork returned, the ms until the last child was reaped, and how many failed.
//! - `floor signals QUIET_MS`: blocks SIGTTIN, reads it from a signalfd, prints `ready`, then
//!   counts the signals that arrive until QUIET_MS pass without one; prints the count. This is
//!   the most a process can see of a burst: the kernel merges a signal still pending.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::procfs;

const SOURCE: &str = r#"#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int spawn(int use_vfork, int n, char **cmd) {
    pid_t *pids = calloc(n, sizeof(pid_t));
    if (!pids) return 1;
    double t0 = now_ms();
    for (int i = 0; i < n; i++) {
        pid_t p = use_vfork ? vfork() : fork();
        if (p == 0) {
            execv(cmd[0], cmd);
            _exit(127);
        }
        if (p < 0) { perror("fork"); return 1; }
        pids[i] = p;
    }
    double t1 = now_ms();
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int st;
        if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st)) bad++;
    }
    double t2 = now_ms();
    printf("%.3f %.3f %d\n", t1 - t0, t2 - t0, bad);
    return 0;
}

static int signals(int quiet_ms) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTTIN);
    if (sigprocmask(SIG_BLOCK, &set, NULL)) { perror("sigprocmask"); return 1; }
    int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) { perror("signalfd"); return 1; }
    printf("ready\n");
    fflush(stdout);
    int count = 0;
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, count ? quiet_ms : 20000) <= 0) break;
        struct signalfd_siginfo si;
        while (read(fd, &si, sizeof si) == (ssize_t)sizeof si) count++;
    }
    printf("%d\n", count);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "spawn"))
        return spawn(!strcmp(argv[2], "vfork"), atoi(argv[3]), argv + 4);
    if (argc == 3 && !strcmp(argv[1], "signals"))
        return signals(atoi(argv[2]));
    fprintf(stderr, "usage: floor spawn fork|vfork N PROGRAM [ARGS...] | floor signals QUIET_MS\n");
    return 2;
}
"#;

/// The compiled floor program.
pub struct Floor {
    program: PathBuf,
}

/// One spawn floor measurement.
#[derive(Clone, Copy, Debug)]
pub struct SpawnTimes {
    /// Until the last fork (or vfork) returned in the parent.
    pub forked: Duration,
    /// Until the last child was reaped.
    pub reaped: Duration,
}

impl Floor {
    /// Compiles the program with `cc -O2` into `target/bench-floor/`.
    pub fn build() -> Result<Floor, String> {
        let dir = crate::common::root().join("target/bench-floor");
        fs::create_dir_all(&dir).map_err(|e| format!("{dir:?}: {e}"))?;
        let source = dir.join("floor.c");
        let program = dir.join("floor");
        fs::write(&source, SOURCE).map_err(|e| format!("{source:?}: {e}"))?;
        let output = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&program)
            .arg(&source)
            .output()
            .map_err(|e| format!("cc (needed for the floors): {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cc failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Floor { program })
    }

    /// N children of `command` forked (or vforked) one after another, all waited for.
    pub fn spawn(&self, vfork: bool, n: usize, command: &[&Path]) -> Result<SpawnTimes, String> {
        let mut c = Command::new(&self.program);
        c.arg("spawn")
            .arg(if vfork { "vfork" } else { "fork" })
            .arg(n.to_string())
            .args(command);
        let output = run_bounded(&mut c, Duration::from_secs(120))?;
        let fields: Vec<f64> = output
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        match fields[..] {
            [forked, reaped, 0.0] => Ok(SpawnTimes {
                forked: Duration::from_secs_f64(forked / 1e3),
                reaped: Duration::from_secs_f64(reaped / 1e3),
            }),
            _ => Err(format!("floor spawn: unexpected output {output:?}")),
        }
    }

    /// Sends `count` SIGTTIN `gap` apart to a signalfd reader; how many it counted.
    pub fn signals(&self, count: usize, gap: Duration) -> Result<usize, String> {
        let mut child = Command::new(&self.program)
            .args(["signals", "1500"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("floor signals: {e}"))?;
        let pid = child.id() as i32;
        let Some(stdout) = child.stdout.take() else {
            procfs::kill_tree(pid);
            return Err("floor signals: no stdout".into());
        };
        let mut lines = BufReader::new(stdout).lines();
        // The program waits at most 20 s for the first signal, so these reads are bounded.
        let ready = lines.next().and_then(Result::ok);
        if ready.as_deref() != Some("ready") {
            procfs::kill_tree(pid);
            let _ = child.wait();
            return Err(format!("floor signals: got {ready:?} instead of ready"));
        }
        super::scenarios::burst(pid, count, gap);
        let counted = lines.next().and_then(Result::ok);
        let _ = child.wait();
        counted
            .as_deref()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| format!("floor signals: no count ({counted:?})"))
    }
}

/// Runs `command`, killing it (by pid) if it takes longer than `limit`; its stdout.
fn run_bounded(command: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("{command:?}: {e}"))?;
    let pid = child.id() as i32;
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                procfs::kill_tree(pid);
                let _ = child.wait();
                return Err(format!("{command:?} took more than {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("{command:?}: {e}")),
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
