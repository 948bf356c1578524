//! The floors, measured in the same run as the masters: a small C program compiled with `cc`
//! into `target/bench-floor/` at bench time.
//!
//! - `floor spawn fork|vfork N PROGRAM ARGS...`: forks (or vforks) N children that exec
//!   PROGRAM, one after the other without waiting, then waits for all; prints the ms until
//!   the last fork returned, the ms until the last child was reaped, and how many failed.
//! - `floor datagrams DIR N PERIOD_MS WINDOW_MS`: N unix datagram sockets in DIR, each sent
//!   `WATCHDOG=1` once a second by a child (one socket of its own per target, as N workers);
//!   the program drains them every PERIOD_MS with one `epoll_wait` and one `recvmmsg` per
//!   socket holding messages (receive stamps on, as arbiter reads them). Prints its own CPU ms
//!   over the window, its wake-ups per second and the datagrams read: the least a master that
//!   reads its workers' heartbeat datagrams can spend.
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
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static double cpu_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
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

/* N datagram sockets bound in DIR; a child sends WATCHDOG=1 to each once a second, from a
   socket of its own per target (as N workers would); the parent drains them every PERIOD_MS
   with one epoll_wait and one recvmmsg (receive stamps on) per socket holding messages.
   Prints its own CPU ms per WINDOW_MS, its wake-ups per second, and the datagrams read. */
static int datagrams(const char *dir, int n, int period_ms, int window_ms) {
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl)) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    int *fds = calloc(n, sizeof(int));
    struct sockaddr_un *addrs = calloc(n, sizeof *addrs);
    struct epoll_event *events = calloc(n, sizeof *events);
    if (!fds || !addrs || !events) return 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < n; i++) {
        addrs[i].sun_family = AF_UNIX;
        snprintf(addrs[i].sun_path, sizeof addrs[i].sun_path, "%s/d%d", dir, i);
        unlink(addrs[i].sun_path);
        fds[i] = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fds[i] < 0 || setsockopt(fds[i], SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one)
            || bind(fds[i], (struct sockaddr *)&addrs[i], sizeof addrs[i])) { perror("socket"); return 1; }
        struct epoll_event e = { .events = EPOLLIN, .data.u32 = i };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e)) { perror("epoll_ctl"); return 1; }
    }
    pid_t parent = getpid();
    pid_t sender = fork();
    if (sender < 0) { perror("fork"); return 1; }
    if (sender == 0) {
        /* Ends with the reader, however it ends. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(0);
        for (int i = 0; i < n; i++) close(fds[i]);
        int *out = calloc(n, sizeof(int));
        for (int i = 0; i < n; i++) out[i] = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        for (double next = now_ms();; next += 1000) {
            for (int i = 0; i < n; i++)
                sendto(out[i], "WATCHDOG=1", 10, 0, (struct sockaddr *)&addrs[i], sizeof addrs[i]);
            double wait = next + 1000 - now_ms();
            if (wait > 0) usleep((useconds_t)(wait * 1000));
        }
    }
    enum { BATCH = 16 };
    static char buffers[BATCH][4096], control[BATCH][64];
    struct mmsghdr headers[BATCH];
    struct iovec iov[BATCH];
    long long read_total = 0, wakes = 0;
    double t0 = 0, c0 = 0;
    /* Rounds for 2 s to settle (the masters get as long), then the window starts right after
       a round and ends with the first round past it; the CPU is scaled to the window. */
    for (double start = now_ms(), at = start + period_ms;; at += period_ms) {
        double wait = at - now_ms();
        if (wait > 0) usleep((useconds_t)(wait * 1000));
        wakes++;
        int k = epoll_wait(ep, events, n, 0);
        for (int j = 0; j < k; j++) {
            for (int x = 0; x < BATCH; x++) {
                iov[x].iov_base = buffers[x];
                iov[x].iov_len = sizeof buffers[x];
                memset(&headers[x], 0, sizeof headers[x]);
                headers[x].msg_hdr.msg_iov = &iov[x];
                headers[x].msg_hdr.msg_iovlen = 1;
                headers[x].msg_hdr.msg_control = control[x];
                headers[x].msg_hdr.msg_controllen = sizeof control[x];
            }
            int got = recvmmsg(fds[events[j].data.u32], headers, BATCH, MSG_DONTWAIT, NULL);
            if (got > 0) read_total += got;
        }
        if (!t0 && now_ms() - start >= 2000) {
            t0 = now_ms();
            c0 = cpu_ms();
            read_total = 0;
            wakes = 0;
        } else if (t0 && now_ms() - t0 >= window_ms) {
            break;
        }
    }
    double took = now_ms() - t0, cpu = (cpu_ms() - c0) * window_ms / took;
    kill(sender, SIGKILL);
    waitpid(sender, NULL, 0);
    for (int i = 0; i < n; i++) unlink(addrs[i].sun_path);
    printf("%.3f %.3f %lld\n", cpu, wakes * 1000.0 / took, read_total);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "spawn"))
        return spawn(!strcmp(argv[2], "vfork"), atoi(argv[3]), argv + 4);
    if (argc == 3 && !strcmp(argv[1], "signals"))
        return signals(atoi(argv[2]));
    if (argc == 6 && !strcmp(argv[1], "datagrams"))
        return datagrams(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: floor spawn fork|vfork N PROGRAM [ARGS...] | floor signals QUIET_MS"
                    " | floor datagrams DIR N PERIOD_MS WINDOW_MS\n");
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

/// One datagram floor measurement.
#[derive(Clone, Copy, Debug)]
pub struct DatagramFloor {
    /// The reader's CPU over the window.
    pub cpu_ms: f64,
    /// Its wake-ups per second.
    pub wakeups_per_s: f64,
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

    /// N sockets sent a datagram each once a second, drained every `period`, over `window`.
    pub fn datagrams(
        &self,
        n: usize,
        period: Duration,
        window: Duration,
    ) -> Result<DatagramFloor, String> {
        // Where arbiter binds its notify sockets: $TMPDIR, else /dev/shm, else /tmp.
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|d| d.is_dir()))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let dir = tempfile::Builder::new()
            .prefix("floor")
            .tempdir_in(&base)
            .map_err(|e| format!("{base:?}: {e}"))?;
        let mut c = Command::new(&self.program);
        c.arg("datagrams")
            .arg(dir.path())
            .arg(n.to_string())
            .arg(period.as_millis().to_string())
            .arg(window.as_millis().to_string());
        let output = run_bounded(&mut c, window + Duration::from_secs(60))?;
        let fields: Vec<f64> = output
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        match fields[..] {
            [cpu_ms, wakeups_per_s, read] if read > 0.0 => Ok(DatagramFloor {
                cpu_ms,
                wakeups_per_s,
            }),
            _ => Err(format!("floor datagrams: unexpected output {output:?}")),
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
