//! The masters under test, started the same way: arbiter with one of three worker kinds (its
//! built-in worker, the heartbeating Python worker `scripts/py_worker.py`, or `sleep`),
//! gunicorn's sync worker and uWSGI (`--master --processes N`), both serving the same WSGI app
//! (`py_worker:app`). Each [`Master`] is a guard: dropping it kills the master and every
//! descendant by pid, and reaps them.
//!
//! Readiness is each system's own: for arbiter, its `arbiter_workers_ready` metric with
//! `--ready notify` (a worker counts once the master has acted on its `READY=1`; `sleep`
//! runs with `--ready exec` and counts once exec'd);
//! for gunicorn, its `post_worker_init` hook (the app is loaded, the worker enters its loop);
//! for uWSGI, its post-fork hook. The two hooks send the worker's pid to a unix datagram
//! socket of this xtask, read by a thread.

use std::collections::HashSet;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::procfs;

/// The gunicorn configuration file: its `post_worker_init` hook announces a ready worker.
const GUNICORN_CONF: &str = r#"def post_worker_init(worker):
    import py_worker
    py_worker.announce_ready()
"#;

/// What arbiter runs as its workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `arbiter worker`, the built-in Rust worker (heartbeats through its file).
    Builtin,
    /// `python scripts/py_worker.py`: `WATCHDOG=1` once a second and a file bump.
    Python,
    /// `sleep infinity`: never speaks the protocol (ready once exec'd).
    Sleep,
}

/// Which master, with which workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// arbiter, release build.
    Arbiter(Kind),
    /// gunicorn, sync worker, `py_worker:app`.
    Gunicorn,
    /// uWSGI 2.0, `--master --processes N --http-socket`, `py_worker:app`.
    Uwsgi,
}

impl System {
    /// The column name in the report.
    pub fn label(self) -> &'static str {
        match self {
            System::Arbiter(Kind::Builtin) => "arbiter (built-in)",
            System::Arbiter(Kind::Python) => "arbiter (Python)",
            System::Arbiter(Kind::Sleep) => "arbiter (sleep)",
            System::Gunicorn => "gunicorn",
            System::Uwsgi => "uWSGI",
        }
    }
}

/// How the two heartbeats of the Python worker are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// `WATCHDOG=1` and the file bump (what sd_notify clients with a gunicorn past do).
    Both,
    /// Only `WATCHDOG=1` datagrams.
    Datagram,
}

/// Where the programs and the scratch files are.
pub struct Bench {
    /// The release arbiter binary.
    pub arbiter: PathBuf,
    /// The venv's `bin` directory (gunicorn, python).
    pub venv_bin: PathBuf,
    /// `scripts/` of the workspace (`py_worker.py`).
    pub scripts: PathBuf,
    /// uWSGI, when installed (with its python3 plugin).
    pub uwsgi: Option<PathBuf>,
    /// Scratch directory: pidfiles, logs, sockets.
    pub dir: PathBuf,
    runs: std::cell::Cell<u32>,
}

/// How to start a master.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Workers.
    pub workers: usize,
    /// Heartbeat timeout in seconds (arbiter and gunicorn `--timeout`, uWSGI `--harakiri`).
    pub timeout_s: u32,
    /// Workers take about a second to load (built-in: `--boot-delay 1s`; Python: the app
    /// sleeps a second at import).
    pub slow_boot: bool,
    /// How the Python worker heartbeats.
    pub beat: Beat,
    /// Where Python workers write their notify statistics and ready times.
    pub stats_dir: Option<PathBuf>,
    /// arbiter serves `/metrics` (off for USR2: the new master cannot bind the old one's
    /// metrics address, so readiness is read with `arbiter ctl status --json` instead).
    pub metrics: bool,
    /// arbiter runs with `--reuse-port-per-slot` (one listener per worker slot).
    pub per_slot: bool,
    /// arbiter runs with its heartbeat filter (the default; taken where the master may load
    /// eBPF, as root); off: `--heartbeat-filter=false`, as for a master without `CAP_BPF`.
    pub heartbeat_filter: bool,
}

impl Spec {
    /// `workers` quick-booting workers with a 30 s timeout (the masters' default).
    pub fn workers(workers: usize) -> Spec {
        Spec {
            workers,
            timeout_s: 30,
            slow_boot: false,
            beat: Beat::Both,
            stats_dir: None,
            metrics: true,
            per_slot: false,
            heartbeat_filter: true,
        }
    }
}

impl Bench {
    /// Writes the gunicorn configuration into `dir`.
    pub fn new(
        arbiter: PathBuf,
        venv_bin: PathBuf,
        uwsgi: Option<PathBuf>,
        dir: PathBuf,
    ) -> Result<Bench, String> {
        fs::write(dir.join("gunicorn_bench.py"), GUNICORN_CONF)
            .map_err(|e| format!("write gunicorn conf: {e}"))?;
        let scripts = crate::common::root().join("scripts");
        if !scripts.join("py_worker.py").exists() {
            return Err("scripts/py_worker.py is missing".into());
        }
        Ok(Bench {
            arbiter,
            venv_bin,
            scripts,
            uwsgi,
            dir,
            runs: std::cell::Cell::new(0),
        })
    }

    /// The Python interpreter of the venv (the one gunicorn runs on).
    pub fn python(&self) -> PathBuf {
        self.venv_bin.join("python")
    }

    /// The Python worker script.
    pub fn py_worker(&self) -> PathBuf {
        self.scripts.join("py_worker.py")
    }

    /// Whether `system` can run here (uWSGI may be missing).
    pub fn available(&self, system: System) -> bool {
        system != System::Uwsgi || self.uwsgi.is_some()
    }

    /// Starts `system` on a fresh loopback port.
    pub fn start(&self, system: System, spec: &Spec) -> Result<Master, String> {
        let run = self.runs.get() + 1;
        self.runs.set(run);
        let port = crate::common::free_port();
        let pidfile = self.dir.join(format!("run{run}.pid"));
        let log = self.dir.join(format!("run{run}.log"));
        let bind = format!("127.0.0.1:{port}");
        let workers = spec.workers.to_string();
        let timeout = spec.timeout_s.to_string();
        let mut metrics_port = None;
        let mut collector = None;
        let mut command = match system {
            System::Arbiter(kind) => {
                let mut c = Command::new(&self.arbiter);
                c.args(["-b", &bind, "-w", &workers, "--timeout", &timeout])
                    .args(["--log-level", "warning", "--pidfile"])
                    .arg(&pidfile);
                if spec.metrics {
                    let metrics = crate::common::free_port();
                    metrics_port = Some(metrics);
                    c.args(["--metrics-bind", &format!("127.0.0.1:{metrics}")]);
                }
                if spec.per_slot {
                    c.arg("--reuse-port-per-slot");
                }
                if !spec.heartbeat_filter {
                    c.arg("--heartbeat-filter=false");
                }
                // `auto` would count the first workers ready at exec, before any READY=1.
                if kind != Kind::Sleep {
                    c.args(["--ready", "notify"]);
                }
                match kind {
                    Kind::Builtin if spec.slow_boot => {
                        c.arg("--")
                            .arg(&self.arbiter)
                            .args(["worker", "--boot-delay", "1s"]);
                    }
                    Kind::Builtin => {}
                    Kind::Python => {
                        c.arg("--").arg(self.python()).arg(self.py_worker());
                    }
                    Kind::Sleep => {
                        c.args(["--ready", "exec", "--", "sleep", "infinity"]);
                    }
                }
                c
            }
            System::Gunicorn => {
                let ready = ReadyCollector::bind(&self.dir.join(format!("run{run}.ready")))?;
                let mut c = Command::new(self.venv_bin.join("gunicorn"));
                c.args(["--no-control-socket", "-b", &bind, "-w", &workers])
                    .args(["--timeout", &timeout, "--log-level", "warning"])
                    .args(["--worker-tmp-dir", "/dev/shm", "--pid"])
                    .arg(&pidfile)
                    .arg("--pythonpath")
                    .arg(&self.scripts)
                    .arg("-c")
                    .arg(self.dir.join("gunicorn_bench.py"))
                    .arg("py_worker:app")
                    .env("BENCH_READY_SOCKET", &ready.path);
                collector = Some(ready);
                c
            }
            System::Uwsgi => {
                let uwsgi = self.uwsgi.as_ref().ok_or("uWSGI is not installed")?;
                let ready = ReadyCollector::bind(&self.dir.join(format!("run{run}.ready")))?;
                let mut c = Command::new(uwsgi);
                c.args(["--plugin", "python3", "--master", "--processes", &workers])
                    .args([
                        "--http-socket",
                        &bind,
                        "--die-on-term",
                        "--harakiri",
                        &timeout,
                    ])
                    .args(["--listen", "2048", "--disable-logging", "--pythonpath"])
                    .arg(&self.scripts)
                    .args(["--module", "py_worker:app", "--pidfile"])
                    .arg(&pidfile)
                    .env("BENCH_READY_SOCKET", &ready.path);
                collector = Some(ready);
                c
            }
        };
        for variable in [
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
        ] {
            command.env_remove(variable);
        }
        command
            .env("BENCH_BOOT_DELAY", if spec.slow_boot { "1" } else { "0" })
            .env(
                "BENCH_BEAT",
                match spec.beat {
                    Beat::Both => "both",
                    Beat::Datagram => "datagram",
                },
            );
        if let Some(dir) = &spec.stats_dir {
            command.env("BENCH_STATS_DIR", dir);
        }
        let log_file = fs::File::create(&log).map_err(|e| format!("create log: {e}"))?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .current_dir(&self.dir)
            .spawn()
            .map_err(|e| format!("start {}: {e}", system.label()))?;
        Ok(Master {
            arbiter: self.arbiter.clone(),
            system,
            pid: child.id() as i32,
            port,
            metrics_port,
            collector,
            started,
            pidfile,
            log,
            others: Vec::new(),
            reaped: false,
        })
    }
}

/// A unix datagram socket that collects the pids of ready workers (gunicorn and uWSGI hooks).
struct ReadyCollector {
    path: PathBuf,
    pids: Arc<Mutex<HashSet<u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadyCollector {
    fn bind(path: &Path) -> Result<ReadyCollector, String> {
        let _ = fs::remove_file(path);
        let socket = UnixDatagram::bind(path).map_err(|e| format!("bind {path:?}: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let pids = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pids, stop) = (Arc::clone(&pids), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buffer = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buffer) {
                        let text = String::from_utf8_lossy(&buffer[..n]);
                        if let (Ok(pid), Ok(mut seen)) = (text.trim().parse(), pids.lock()) {
                            seen.insert(pid);
                        }
                    }
                }
            })
        };
        Ok(ReadyCollector {
            path: path.to_path_buf(),
            pids,
            stop,
            thread: Some(thread),
        })
    }

    fn count(&self) -> usize {
        self.pids.lock().map(|p| p.len()).unwrap_or(0)
    }
}

impl Drop for ReadyCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// A running master: killed with its whole tree, by pid, when dropped.
pub struct Master {
    arbiter: PathBuf,
    /// What it is.
    pub system: System,
    /// The master's pid (our child).
    pub pid: i32,
    /// Its loopback port.
    pub port: u16,
    /// arbiter's metrics port.
    pub metrics_port: Option<u16>,
    collector: Option<ReadyCollector>,
    /// Just before it was spawned.
    pub started: Instant,
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

    /// The text of its log.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// An error naming what failed, with the master's log tail.
    pub fn fail(&self, what: &str) -> String {
        format!(
            "{what} ({} master {}); log:\n{}",
            self.system.label(),
            self.pid,
            self.log_tail()
        )
    }

    /// arbiter's `/metrics` text.
    pub fn metrics(&self) -> Option<String> {
        let port = self.metrics_port?;
        match crate::common::http_get(port, "/metrics", Duration::from_secs(2)) {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// One unlabelled (or exactly labelled) sample of arbiter's metrics.
    pub fn metric(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// How many workers are ready, by the system's own marker.
    pub fn ready_count(&self) -> Option<usize> {
        match (&self.collector, self.metrics_port) {
            (Some(collector), _) => Some(collector.count()),
            (None, Some(_)) => {
                Some(Self::metric(&self.metrics()?, "arbiter_workers_ready")? as usize)
            }
            (None, None) => self.ctl_ready(),
        }
    }

    /// The master's ready count from `arbiter ctl status --json` (`"master":{...,"ready":N}`).
    fn ctl_ready(&self) -> Option<usize> {
        let output = Command::new(&self.arbiter)
            .args(["ctl", "--pidfile"])
            .arg(&self.pidfile)
            .args(["status", "--json"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let master = &text[text.find("\"master\"")?..];
        let rest = &master[master.find("\"ready\":")? + 8..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// Polls until `n` workers are ready; the time since the master was spawned. Fails after
    /// `limit`, or once neither the ready count nor the live children have moved for 30 s (a
    /// limit was hit, or the master stalled).
    pub fn wait_ready(&self, n: usize, limit: Duration) -> Result<Duration, String> {
        // Metrics are served by the master itself: poll them less often at large sizes.
        let pause = match (&self.collector, self.metrics_port, n) {
            (Some(_), _, _) => Duration::from_micros(500),
            (None, None, _) => Duration::from_millis(10),
            (None, Some(_), 0..=64) => Duration::from_millis(2),
            (None, Some(_), _) => Duration::from_millis(20),
        };
        let begin = Instant::now();
        let (mut last, mut children, mut moved) = (0, 0, Instant::now());
        let mut answered = false;
        loop {
            let count = self.ready_count();
            answered |= count.is_some();
            let ready = count.unwrap_or(0);
            if ready >= n {
                return Ok(self.started.elapsed());
            }
            if ready != last {
                (last, moved) = (ready, Instant::now());
            }
            let failure = if procfs::is_dead(self.pid) {
                Some(format!("master died with {ready} of {n} ready"))
            } else if begin.elapsed() > limit {
                Some(format!("only {ready} of {n} ready within {limit:?}"))
            } else if moved.elapsed() > Duration::from_secs(30) {
                // No readiness for 30 s: still spawning, or stuck?
                let now = self.workers().len();
                if now != children {
                    (children, moved) = (now, Instant::now());
                    None
                } else {
                    Some(format!("stalled at {ready} of {n} ready for 30 s"))
                }
            } else {
                None
            };
            if let Some(why) = failure {
                let live = self.workers().len();
                let metrics = match (&self.collector, answered) {
                    (Some(_), _) => "",
                    (None, true) => ", metrics answered",
                    (None, false) => ", metrics never answered",
                };
                return Err(self.fail(&format!("{why} ({live} live children{metrics})")));
            }
            std::thread::sleep(pause);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    /// `scripts/py_worker.py` serving `listener` as its fd 3, notifying `notify_path`.
    fn start_py_worker(listener: &TcpListener, notify_path: &Path) -> std::process::Child {
        let fd = listener.as_raw_fd();
        let script = crate::common::root().join("scripts/py_worker.py");
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID")
            .env("NOTIFY_SOCKET", notify_path)
            .env("BENCH_BEAT_INTERVAL", "0.2")
            .stdin(Stdio::null());
        // SAFETY: the closure runs between fork and exec and calls only dup2 and fcntl, which
        // are async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, 3) != 3 || libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn().unwrap()
    }

    /// A notify socket in `dir` that waits at most 10 s for a message.
    fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
        let path = dir.join("notify");
        let notify = UnixDatagram::bind(&path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (notify, path)
    }

    /// The Python worker speaks the protocol: READY=1, then WATCHDOG=1 about once a second,
    /// serves `GET /` on fd 3 with its pid, and on TERM sends STOPPING=1 and exits.
    #[test]
    fn the_python_worker_speaks_the_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let (notify, notify_path) = notify_socket(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut child = start_py_worker(&listener, &notify_path);
        let pid = child.id() as i32;
        let mut messages = Vec::new();
        let mut buffer = [0u8; 256];
        while messages.iter().filter(|m| *m == "WATCHDOG=1").count() < 3 {
            let Ok(n) = notify.recv(&mut buffer) else {
                procfs::kill_tree(pid);
                let _ = child.wait();
                panic!("no notify message within 10 s; got {messages:?}");
            };
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        assert_eq!(messages[..2], ["WATCHDOG=1", "READY=1"], "{messages:?}");
        let (status, body) = crate::common::http_get(port, "/", Duration::from_secs(5)).unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            super::super::load::pid_in(&body),
            Some(pid as u32),
            "{body}"
        );
        procfs::kill(pid, libc::SIGTERM);
        let mut stopping = false;
        while let Ok(n) = notify.recv(&mut buffer) {
            if &buffer[..n] == b"STOPPING=1" {
                stopping = true;
                break;
            }
        }
        let exited = procfs::wait_exit(pid, Duration::from_secs(10));
        if exited.is_none() {
            procfs::kill_tree(pid);
        }
        let _ = child.try_wait();
        assert!(stopping, "no STOPPING=1 after TERM");
        assert!(exited.is_some(), "did not exit within 10 s of TERM");
    }

    /// A worker that is killed (by its pid) and reaped if a test ends before it exited.
    struct Worker(std::process::Child);

    impl Drop for Worker {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    /// Sends `GET /` on `stream` and reads one response; `Ok(None)` when the connection was
    /// closed before any byte of it came back (what a client retries), `Err` when it broke
    /// off in the middle or was reset.
    fn exchange(stream: &mut std::net::TcpStream) -> Result<Option<String>, String> {
        use std::io::{Read, Write};
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&response).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
                if body.len() >= length {
                    return Ok(Some(text));
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) if response.is_empty() => return Ok(None),
                Ok(0) => return Err(format!("closed after {text:?}")),
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read after {text:?}: {e}")),
            }
        }
    }

    /// TERM stops the Python worker the way a sync worker stops: a connection it accepted
    /// before the TERM whose request comes after it is answered (with `Connection: close`),
    /// not reset; an idle keep-alive connection is closed cleanly (no byte of a response, so
    /// a client retries) or its next request is answered; a connection still in the shared
    /// accept queue is left there for the other workers; and it exits 0 once none is left.
    #[test]
    fn the_python_worker_stops_between_requests_on_term() {
        use std::net::TcpStream;
        let dir = tempfile::tempdir().unwrap();
        let (notify, notify_path) = notify_socket(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut worker = Worker(start_py_worker(&listener, &notify_path));
        let pid = worker.0.id() as i32;
        let mut buffer = [0u8; 256];
        let mut ready = false;
        while !ready {
            let n = notify.recv(&mut buffer).expect("no READY=1 within 10 s");
            ready = &buffer[..n] == b"READY=1";
        }
        let connect = || TcpStream::connect(("127.0.0.1", port)).unwrap();
        // `kept`: served once and idle; `idle`: the same, never used again.
        let mut kept = connect();
        let first = exchange(&mut kept)
            .unwrap()
            .expect("no answer on a fresh worker");
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.contains("Connection: keep-alive"), "{first}");
        let mut idle = connect();
        assert!(exchange(&mut idle).unwrap().is_some());
        // `quiet` is accepted and sends nothing before the TERM: the worker accepts in queue
        // order, so once the connection behind it was answered, it holds `quiet` too.
        let mut quiet = connect();
        let mut behind = connect();
        assert!(exchange(&mut behind).unwrap().is_some());
        procfs::kill(pid, libc::SIGTERM);
        let mut stopping = false;
        while !stopping {
            let n = notify
                .recv(&mut buffer)
                .expect("no STOPPING=1 within 10 s of TERM");
            stopping = &buffer[..n] == b"STOPPING=1";
        }
        // Queued after the TERM: the stopping worker must leave it to the others.
        let _queued = connect();
        let answer = exchange(&mut quiet).expect("a request on a connection accepted before TERM");
        let answer = answer.expect("a connection accepted before TERM closed unanswered");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
        // Within the grace it is answered; past it (a loaded machine), closed before any byte.
        let answer = exchange(&mut kept).expect("an idle keep-alive connection broke off or reset");
        if let Some(answer) = answer {
            assert!(answer.contains("Connection: close"), "{answer}");
        }
        let mut status = None;
        let limit = Instant::now() + Duration::from_secs(10);
        while status.is_none() && Instant::now() < limit {
            status = worker.0.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = status.expect("still running 10 s after TERM with no request in hand");
        assert_eq!(status.code(), Some(0), "{status:?}");
        let mut rest = Vec::new();
        use std::io::Read;
        assert_eq!(idle.read_to_end(&mut rest).map_err(|e| e.kind()), Ok(0));
        listener.set_nonblocking(true).unwrap();
        assert!(
            listener.accept().is_ok(),
            "the connection queued after TERM was taken by the stopping worker"
        );
    }
}
