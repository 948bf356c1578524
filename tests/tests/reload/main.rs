//! Reload and upgrade under load (issue 5): HUP, USR2 + TERM, `arbiter upgrade`, a changed
//! bind, a soak of many upgrades and reloads, a failed upgrade, systemd socket activation and
//! the notify protocol towards a service manager, recycling (age, memory, max requests), and a
//! Kubernetes pod's life (`pod`: probes, deletion, a rolling update). Each scenario runs a
//! keep-alive load ([`load::Load`], or in `pod` a connection per request) across the change and asserts no failed request; each prints its numbers
//! (`cargo test --test reload -- --nocapture`) and appends a line to
//! `target/reload-results.txt`.

mod bind;
mod boot;
mod drain;
mod hup;
mod load;
mod notify;
mod pod;
mod recycle;
mod slots;
mod soak;
mod systemd;
mod upgrade;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use arbiter_tests::read_pid;
use arbiter_tests::{wait_until, Master, SOON};

use load::LoadReport;

/// The load threads per scenario.
pub const THREADS: usize = 4;
/// The hard limit of any one load run.
pub const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// The `arbiter` binary as a string, for `-- ARBITER worker ...` command lines.
pub fn bin() -> &'static str {
    arbiter_tests::arbiter_bin().to_str().expect("utf-8 path")
}

/// `path` as a `&str`.
pub fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Logs one scenario's numbers and appends them to `target/reload-results.txt`.
pub fn record(scenario: &str, report: &LoadReport, took: &str) {
    let line = format!("{scenario}: {} | {took}", report.summary());
    eprintln!("[reload] {line}");
    for sample in &report.samples {
        eprintln!("[reload]   {scenario} error: {sample}");
    }
    let target = arbiter_tests::arbiter_bin()
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/arbiter");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target.join("reload-results.txt"))
    {
        // One write per line: appends from parallel tests do not interleave.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// Asserts a load run saw no error and served something; `log` is shown on failure.
pub fn assert_clean(report: &LoadReport, log: &str) {
    assert_eq!(
        report.error_count(),
        0,
        "failed requests: {}\nsamples: {:#?}\nlog:\n{log}",
        report.summary(),
        report.samples
    );
    assert!(report.served > 0, "nothing served: {}", report.summary());
}

/// Polls the master's log file (shared by every generation of masters after upgrades, and
/// still read after the first master exits) until `needle` appears `count` times.
pub fn wait_log_count(master: &mut Master, needle: &str, count: usize, bound: Duration) -> String {
    let mut log = String::new();
    let ok = wait_until(bound, || {
        master.track_tree();
        log = master.stderr();
        log.matches(needle).count() >= count
    });
    assert!(
        ok,
        "{needle:?} x{count} not in the log after {bound:?}:\n{log}"
    );
    log
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// Whether a connect to 127.0.0.1:`port` is refused.
pub fn refused(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    matches!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Open fds of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// What a finished `arbiter upgrade` run printed.
#[derive(Debug)]
pub struct UpgradeRun {
    /// The exit code (`-1` when killed past the bound).
    pub code: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// How long it ran.
    pub took: Duration,
}

/// Runs `PROGRAM upgrade --pidfile PIDFILE` with `bound`; killed by pid past it.
pub fn run_upgrade(program: &Path, pidfile: &Path, bound: Duration) -> UpgradeRun {
    let dir = pidfile.parent().expect("pidfile in a dir");
    let out = tempfile::tempfile_in(dir).expect("stdout file");
    let err = tempfile::tempfile_in(dir).expect("stderr file");
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(["upgrade", "--pidfile", s(pidfile)])
        .args(["--ready-timeout", "20s", "--stop-timeout", "20s"])
        .env_remove("ARBITER_PIDFILE")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .expect("spawning arbiter upgrade");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let read = |mut file: std::fs::File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let _ = file.seek(std::io::SeekFrom::Start(0));
        let _ = file.read_to_string(&mut text);
        text
    };
    UpgradeRun {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: read(out),
        stderr: read(err),
        took,
    }
}

/// After an upgrade: waits until `pidfile` names a live master other than `old` with
/// `workers` children, tracks it (so the test's guard kills it) and returns it with its
/// workers.
pub fn promoted(master: &mut Master, pidfile: &Path, old: i32, workers: usize) -> (i32, Vec<i32>) {
    let mut new = 0;
    let mut children = Vec::new();
    let ok = wait_until(SOON, || {
        new = read_pid(pidfile).unwrap_or(0);
        if new <= 0 || new == old || !arbiter_tests::alive(new) {
            return false;
        }
        master.track(new);
        master.track_tree();
        children = arbiter_tests::children_of(new);
        children.len() == workers
    });
    assert!(
        ok,
        "no promoted master with {workers} workers in {} (holds {new}, children {children:?})\n{}",
        pidfile.display(),
        master.stderr()
    );
    children.sort_unstable();
    (new, children)
}

/// Stops a master that is not the test's child (a promoted one) and waits for it.
pub fn stop(master: &mut Master, pid: i32) {
    master.track_tree();
    arbiter_tests::signal(pid, libc::SIGTERM).expect("TERM to the master");
    assert!(
        arbiter_tests::wait_gone(pid, Duration::from_secs(15)).is_some(),
        "master {pid} did not stop\n{}",
        master.stderr()
    );
    assert!(
        wait_until(SOON, || master.alive_tracked().is_empty()),
        "left behind: {:?}",
        master.alive_tracked()
    );
}

/// Kills, by pid, every process still running a binary from a test's own dir (its private
/// copy of `arbiter`): masters promoted by upgrades that the test never saw, their workers.
/// The exe path under the test's temp dir is what makes a process the test's own.
pub struct CopyGuard {
    dir: std::path::PathBuf,
}

impl CopyGuard {
    /// Guards processes whose executable lies under `dir`.
    pub fn new(dir: &Path) -> CopyGuard {
        CopyGuard {
            dir: dir.to_path_buf(),
        }
    }

    /// The live processes running a binary from the dir.
    pub fn survivors(&self) -> Vec<i32> {
        arbiter_tests::process_table()
            .into_keys()
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.starts_with(&self.dir))
            })
            .collect()
    }
}

impl Drop for CopyGuard {
    fn drop(&mut self) {
        for _ in 0..3 {
            let left = self.survivors();
            if left.is_empty() {
                return;
            }
            for pid in left {
                let _ = arbiter_tests::signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
