//! The two masters under test, started the same way: arbiter with its built-in worker, and
//! gunicorn's sync worker with a trivial WSGI app that answers `{"pid":N}` like the built-in
//! worker does. Each [`Master`] is a guard: dropping it kills the master and every descendant
//! by pid, and reaps them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::procfs;

/// The WSGI app of the gunicorn side. `BENCH_BOOT_DELAY` makes its import slow, like an
/// application that takes its time to load (every worker imports it: no `--preload`).
const APP: &str = r#"import os, time
_delay = float(os.environ.get("BENCH_BOOT_DELAY", "0"))
if _delay:
    time.sleep(_delay)

def app(environ, start_response):
    body = ('{"pid":%d}\n' % os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"#;

/// Which master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// arbiter, built-in worker, release build.
    Arbiter,
    /// gunicorn, sync worker.
    Gunicorn,
}

impl System {
    /// Both, in the order runs alternate.
    pub const BOTH: [System; 2] = [System::Arbiter, System::Gunicorn];
}

/// Where the programs and the scratch files are.
pub struct Bench {
    /// The release arbiter binary.
    pub arbiter: PathBuf,
    /// The venv's `bin` directory (gunicorn, python).
    pub venv_bin: PathBuf,
    /// Scratch directory: the app module, pidfiles, logs.
    pub dir: PathBuf,
    runs: std::cell::Cell<u32>,
}

/// How to start a master.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Workers.
    pub workers: usize,
    /// Heartbeat timeout in seconds (both masters take `--timeout`).
    pub timeout_s: u32,
    /// Workers take about a second to load (arbiter: `--boot-delay 1s`; gunicorn: the app
    /// sleeps a second at import).
    pub slow_boot: bool,
}

impl Spec {
    /// `workers` quick-booting workers with a 30 s timeout (both masters' default).
    pub fn workers(workers: usize) -> Spec {
        Spec {
            workers,
            timeout_s: 30,
            slow_boot: false,
        }
    }
}

impl Bench {
    /// Writes the app module into `dir`.
    pub fn new(arbiter: PathBuf, venv_bin: PathBuf, dir: PathBuf) -> Result<Bench, String> {
        fs::write(dir.join("benchapp.py"), APP).map_err(|e| format!("write app: {e}"))?;
        Ok(Bench {
            arbiter,
            venv_bin,
            dir,
            runs: std::cell::Cell::new(0),
        })
    }

    /// Starts `system` on a fresh loopback port.
    pub fn start(&self, system: System, spec: Spec) -> Result<Master, String> {
        let run = self.runs.get() + 1;
        self.runs.set(run);
        let port = crate::common::free_port();
        let pidfile = self.dir.join(format!("run{run}.pid"));
        let log = self.dir.join(format!("run{run}.log"));
        let bind = format!("127.0.0.1:{port}");
        let workers = spec.workers.to_string();
        let timeout = spec.timeout_s.to_string();
        let mut command = match system {
            System::Arbiter => {
                let mut c = Command::new(&self.arbiter);
                c.args(["-b", &bind, "-w", &workers, "--timeout", &timeout])
                    .args(["--log-level", "warning", "--pidfile"])
                    .arg(&pidfile);
                if spec.slow_boot {
                    c.arg("--")
                        .arg(&self.arbiter)
                        .args(["worker", "--boot-delay", "1s"]);
                }
                c
            }
            System::Gunicorn => {
                let mut c = Command::new(self.venv_bin.join("gunicorn"));
                c.args(["--no-control-socket", "-b", &bind, "-w", &workers])
                    .args(["--timeout", &timeout, "--log-level", "warning"])
                    .args(["--worker-tmp-dir", "/dev/shm", "--pid"])
                    .arg(&pidfile)
                    .arg("--chdir")
                    .arg(&self.dir)
                    .arg("benchapp:app")
                    .env("BENCH_BOOT_DELAY", if spec.slow_boot { "1" } else { "0" });
                c
            }
        };
        let log_file = fs::File::create(&log).map_err(|e| format!("create log: {e}"))?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .current_dir(&self.dir)
            .spawn()
            .map_err(|e| format!("start {system:?}: {e}"))?;
        Ok(Master {
            pid: child.id() as i32,
            port,
            pidfile,
            log,
            others: Vec::new(),
            reaped: false,
        })
    }
}

/// A running master: killed with its whole tree, by pid, when dropped.
pub struct Master {
    /// The master's pid (our child).
    pub pid: i32,
    /// Its loopback port.
    pub port: u16,
    /// Its pidfile (the USR2 child writes `PIDFILE.2`).
    pub pidfile: PathBuf,
    log: PathBuf,
    /// Other masters to clean up with this one (a USR2 child).
    others: Vec<i32>,
    /// The master has exited and was reaped: its pid may belong to someone else now.
    reaped: bool,
}

impl Master {
    /// Its live worker processes (direct children).
    pub fn workers(&self) -> Vec<i32> {
        procfs::children(self.pid)
    }

    /// Sends `signal` to the master.
    pub fn signal(&self, signal: i32) {
        procfs::kill(self.pid, signal);
    }

    /// Waits until the master exits (and reaps it); how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let took = procfs::wait_exit(self.pid, limit)?;
        self.reaped = true;
        Some(took)
    }

    /// Also kill `pid` (and its tree) when this guard drops.
    pub fn adopt(&mut self, pid: i32) {
        self.others.push(pid);
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// An error naming what failed, with the master's log tail.
    pub fn fail(&self, what: &str) -> String {
        format!("{what} (master {}); log:\n{}", self.pid, self.log_tail())
    }

    /// Polls `GET /` until `n` distinct worker pids have answered, within `limit`.
    pub fn wait_distinct(&self, n: usize, limit: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut seen = std::collections::HashSet::new();
        while seen.len() < n {
            if start.elapsed() > limit {
                return Err(self.fail(&format!(
                    "only {} of {n} workers answered within {limit:?}",
                    seen.len()
                )));
            }
            match crate::common::http_get(self.port, "/", Duration::from_secs(1)) {
                Ok((200, body)) => {
                    if let Some(pid) = super::load::pid_in(&body) {
                        seen.insert(pid);
                    }
                }
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        Ok(start.elapsed())
    }

    /// The pid of a worker that answers `GET /`, within `limit`.
    pub fn answering_pid(&self, limit: Duration) -> Result<u32, String> {
        self.answer_not_from(0, limit).map(|(pid, _)| pid)
    }

    /// Polls `GET /` until a worker other than `old` answers; its pid and the time taken.
    pub fn answer_not_from(&self, old: u32, limit: Duration) -> Result<(u32, Duration), String> {
        let start = Instant::now();
        loop {
            if let Ok((200, body)) =
                crate::common::http_get(self.port, "/", Duration::from_millis(500))
            {
                if let Some(pid) = super::load::pid_in(&body).filter(|&p| p != old) {
                    return Ok((pid, start.elapsed()));
                }
            }
            if start.elapsed() > limit {
                return Err(self.fail(&format!("no worker but {old} answered within {limit:?}")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until the master has `n` live children, within `limit`.
    pub fn wait_children(&self, n: usize, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while self.workers().len() < n {
            if start.elapsed() > limit {
                return Err(self.fail(&format!(
                    "{} of {n} workers started within {limit:?}",
                    self.workers().len()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Reads a pid from `path` (a pidfile), if it holds one.
    pub fn read_pid(path: &Path) -> Option<i32> {
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        for &pid in &self.others {
            procfs::kill_tree(pid);
        }
        if !self.reaped {
            procfs::kill_tree(self.pid);
        }
        procfs::reap_any();
    }
}
