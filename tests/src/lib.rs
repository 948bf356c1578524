//! Test support for arbiter's real-process integration tests (`tests/tests/integration`).
//!
//! Model: each test gets a [`Fixture`] (a fresh temp dir) and starts one or more [`Master`]s:
//! the built `arbiter` binary with stdout and stderr captured to files in that dir. Helpers
//! speak plain HTTP/1.1 over loopback ([`get`]), read the process tree from `/proc`
//! ([`children_of`], [`alive`]), send signals by pid ([`signal`]) and poll with deadlines
//! ([`wait_until`]); nothing sleeps for a fixed long time.
//!
//! Invariants: every process a test can reach is killed BY PID when its [`Master`] drops: the
//! master, every worker pid seen while it ran, and every descendant still alive. A pid is only
//! killed while its start time still matches the one recorded, so a reused pid is never hit.
//! Nothing is ever killed by name. Listeners are bound on 127.0.0.1 port 0 or under the temp
//! dir; the port is read from the `Listening at:` log line. A master's `TMPDIR` is the
//! fixture's `tmp/`, so what a killed master cannot remove (its runtime dir) goes with the
//! fixture.
//!
//! Limits: Linux only (`/proc`); the HTTP client handles `Content-Length` and
//! read-to-close bodies only, which is all the built-in worker sends.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The usual bound for something that should happen "soon" on a loaded 2-core machine: a
/// bound on a wait for a state, never the state asserted (a run at load average 20-190 saw
/// master starts and recycles take longer than 10 s).
pub const SOON: Duration = Duration::from_secs(30);

/// Errors of the test-support helpers.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    /// An I/O error while talking to a worker or reading a file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The HTTP response could not be parsed.
    #[error("bad http response: {0:?}")]
    BadResponse(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SupportError {
    let what = what.into();
    move |source| SupportError::Io { what, source }
}

/// The `arbiter` binary: `<target>/<profile>/arbiter` next to this test binary's `deps/`,
/// built with `cargo build --workspace --bin arbiter` when it is missing or older than a
/// source it is built from (the crates' `src/`, a manifest, `Cargo.lock`). `cargo test
/// --workspace` has just built it, so it is never built twice there; `cargo test -p
/// arbiter-tests` does not build it, and used to test whatever an older build left.
pub fn arbiter_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/debug/deps/integration-xxxx -> target/debug
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let bin = profile_dir.join("arbiter");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if built.is_none_or(|built| newest_source() > Some(built)) {
            cargo_build(profile_dir, &["--bin", "arbiter"]);
        }
        assert!(bin.exists(), "no arbiter binary at {}", bin.display());
        bin
    })
}

/// `cargo build -q --workspace TARGET...` in the profile of `profile_dir` (the workspace's
/// feature resolution, as under `cargo test --workspace`, so nothing is built twice).
fn cargo_build(profile_dir: &Path, target: &[&str]) {
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.args(["build", "-q", "--workspace"]).args(target);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build");
    assert!(
        status.success(),
        "cargo build --workspace {target:?} failed"
    );
}

/// When the newest source of the `arbiter` binary was changed.
fn newest_source() -> Option<std::time::SystemTime> {
    fn walk(path: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Ok(modified) = meta.modified() {
            *newest = (*newest).max(Some(modified));
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut newest = None;
    walk(&root.join("Cargo.lock"), &mut newest);
    walk(&root.join("Cargo.toml"), &mut newest);
    for krate in [
        "arbiter-core",
        "arbiter-signals",
        "arbiter-sockets",
        "arbiter-gpu",
        "arbiter-cli",
    ] {
        walk(&root.join(krate).join("src"), &mut newest);
        walk(&root.join(krate).join("Cargo.toml"), &mut newest);
    }
    newest
}

/// The example `name` of `package` (`<target>/<profile>/examples/NAME`), built first with
/// `cargo build --workspace --example NAME`: a no-op under `cargo test --workspace`, which
/// builds the examples with these features already (`-p PACKAGE` resolved them for that
/// package alone, a second build of it and its dependencies after every change).
pub fn example_bin(_package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    cargo_build(profile_dir, &["--example", name]);
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "no example binary at {}", bin.display());
    bin
}

/// The fixture's subdir that its masters get as `TMPDIR`.
const TMP: &str = "tmp";

/// Variables of the tests' environment never passed to a master: they configure it
/// (`USE_GPUS`), name a runtime dir or control socket shared by every test
/// (`XDG_RUNTIME_DIR`), or speak for a service manager that did not start it.
const INHERITED_NEVER: &[&str] = &[
    "USE_GPUS",
    "XDG_RUNTIME_DIR",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// A test's temp dir; removed on drop.
pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A fresh temp dir.
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("arbiter-it-")
            .tempdir()
            .expect("temp dir");
        // The masters' temp dir (see `start_program`) is a `/tmp` of the fixture's own:
        // world-writable and sticky, reachable by workers run as another user (`--user`).
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711))
            .expect("fixture dir mode");
        let tmp = dir.path().join(TMP);
        fs::create_dir(&tmp).expect("fixture tmp dir");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).expect("tmp dir mode");
        Fixture { dir }
    }

    /// The temp dir the masters started here get as `TMPDIR`.
    pub fn tmp(&self) -> PathBuf {
        self.join(TMP)
    }

    /// The dir's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the dir.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to `name` in the dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.join(name);
        fs::write(&path, contents).expect("writing a fixture file");
        path
    }

    /// Starts `arbiter ARGS...` with its output captured to `NAME.stdout` / `NAME.stderr`.
    pub fn start(&self, name: &str, args: &[&str]) -> Master {
        self.start_with(name, args, &[])
    }

    /// Like [`Fixture::start`], with extra environment variables.
    pub fn start_with(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Master {
        self.start_program(name, arbiter_bin(), args, env)
    }

    /// Copies the `arbiter` binary into the dir (as `name`) and returns the copy's path, so
    /// that a test can delete or replace "the binary on disk" (an upgrade re-resolves it)
    /// without touching the shared build output.
    pub fn copy_arbiter(&self, name: &str) -> PathBuf {
        let path = self.join(name);
        fs::copy(arbiter_bin(), &path).expect("copying the arbiter binary");
        path
    }

    /// Like [`Fixture::start_with`], running `program` (an `arbiter` binary, e.g. a copy made
    /// by [`Fixture::copy_arbiter`]) instead of the built one.
    pub fn start_program(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Master {
        let stdout = self.join(&format!("{name}.stdout"));
        let stderr = self.join(&format!("{name}.stderr"));
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"));
        // The tests' own environment must not configure the arbiter under test, nor give it
        // a place shared with other tests: a master's runtime dir (its notify sockets) goes
        // under `TMPDIR` or `XDG_RUNTIME_DIR`, and one killed by a test (or by `Master`'s
        // drop) cannot remove it; under the fixture it goes with the fixture. The default
        // control socket (`$XDG_RUNTIME_DIR/arbiter.ctl`) would be one path for every test.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("ARBITER_") || INHERITED_NEVER.contains(&&*name) {
                command.env_remove(&key);
            }
        }
        command.env("TMPDIR", self.tmp());
        command.envs(env.iter().copied());
        let child = command.spawn().expect("spawning arbiter");
        let pid = child.id() as i32;
        let mut master = Master {
            child: Some(child),
            pid,
            stdout,
            stderr,
            seen: BTreeMap::new(),
            status: None,
        };
        master.track(pid);
        master
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// A running `arbiter` master and everything it spawned; killed by pid on drop.
pub struct Master {
    child: Option<Child>,
    pid: i32,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Every pid seen in this master's tree, with its start time.
    seen: BTreeMap<i32, u64>,
    status: Option<ExitStatus>,
}

impl Master {
    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// What it wrote on stderr (its log, by default) so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// What it wrote on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Records `pid` (with its start time) so that drop kills it if it is still the same process.
    pub fn track(&mut self, pid: i32) {
        if let Some(stat) = proc_stat(pid) {
            self.seen.entry(pid).or_insert(stat.start_time);
        }
    }

    /// Records the whole process tree under the master and under every recorded pid still
    /// alive (a new master outlives the old one after an upgrade); returns the master's tree.
    pub fn track_tree(&mut self) -> Vec<i32> {
        let table = process_table();
        let tree = descendants_in(&table, self.pid);
        let roots: Vec<i32> = self
            .seen
            .iter()
            .filter(|(&pid, &start)| {
                pid != self.pid && table.get(&pid).is_some_and(|s| s.start_time == start)
            })
            .map(|(&pid, _)| pid)
            .collect();
        let mut all = tree.clone();
        for root in roots {
            all.extend(descendants_in(&table, root));
        }
        for pid in all {
            if let Some(stat) = table.get(&pid) {
                self.seen.entry(pid).or_insert(stat.start_time);
            }
        }
        tree
    }

    /// Polls the log until `needle` appears, up to `bound`; the log text on success.
    pub fn wait_log(&mut self, needle: &str, bound: Duration) -> Result<String, String> {
        self.wait_log_count(needle, 1, bound)
    }

    /// Polls the log until `needle` appears at least `count` times, up to `bound`.
    pub fn wait_log_count(
        &mut self,
        needle: &str,
        count: usize,
        bound: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + bound;
        loop {
            self.track_tree();
            let log = self.stderr();
            if log.matches(needle).count() >= count {
                return Ok(log);
            }
            if Instant::now() >= deadline || self.exited() {
                // One last look: the line may have been written just before the exit.
                let log = self.stderr();
                if log.matches(needle).count() >= count {
                    return Ok(log);
                }
                return Err(format!(
                    "{needle:?} x{count} not in the log after {bound:?}:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The TCP port of the first `Listening at: http://127.0.0.1:PORT` line; panics after `SOON`.
    pub fn port(&mut self) -> u16 {
        let log = self
            .wait_log("Listening at: http://", SOON)
            .unwrap_or_else(|e| panic!("{e}"));
        listening_port(&log).unwrap_or_else(|| panic!("no port in the log:\n{log}"))
    }

    /// The live children of the master (its workers, and a new master during an upgrade).
    pub fn children(&mut self) -> Vec<i32> {
        let children = children_of(self.pid);
        for &pid in &children {
            self.track(pid);
        }
        children
    }

    /// Waits until the master has exactly `n` live children, all of which answer nothing in
    /// particular; returns them sorted.
    pub fn wait_children(&mut self, n: usize, bound: Duration) -> Vec<i32> {
        let mut last = Vec::new();
        let ok = wait_until(bound, || {
            last = self.children();
            last.len() == n
        });
        assert!(
            ok,
            "expected {n} children of the master, have {last:?}\nlog:\n{}",
            self.stderr()
        );
        last.sort_unstable();
        last
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig).expect("signalling the master");
    }

    /// Whether the master has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        self.try_status().is_some()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait().ok().flatten();
            }
        }
        self.status
    }

    /// Waits up to `bound` for the master to exit; its exit status, or `None` if it still runs.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        self.track_tree();
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Keep collecting worker pids while it winds down.
            self.track_tree();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit and returns the exit code; panics with the log if it does not exit
    /// within `bound` or dies of a signal.
    pub fn exit_code(&mut self, bound: Duration) -> i32 {
        match self.wait_exit(bound) {
            Some(status) => status.code().unwrap_or_else(|| {
                panic!(
                    "master died of signal {:?}\nlog:\n{}",
                    status.signal(),
                    self.stderr()
                )
            }),
            None => panic!(
                "master still running after {bound:?}\nlog:\n{}",
                self.stderr()
            ),
        }
    }

    /// Every pid recorded in this master's tree that is still the same live process.
    pub fn alive_tracked(&self) -> Vec<i32> {
        self.seen
            .iter()
            .filter(|(&pid, &start)| same_process(pid, start))
            .map(|(&pid, _)| pid)
            .collect()
    }

    /// Asserts that the master is gone and none of the pids ever seen in its tree survives.
    pub fn assert_no_process_left(&mut self) {
        let ok = wait_until(SOON, || self.exited() && self.alive_tracked().is_empty());
        assert!(
            ok,
            "processes left behind: {:?}\nlog:\n{}",
            self.alive_tracked(),
            self.stderr()
        );
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.track_tree();
        // Stop the master first so it cannot spawn replacements while the rest is killed.
        if self.try_status().is_none() {
            let _ = signal(self.pid, libc::SIGKILL);
        }
        for (&pid, &start) in &self.seen {
            if pid != self.pid && same_process(pid, start) {
                let _ = signal(pid, libc::SIGKILL);
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// The port in the first `Listening at: http://HOST:PORT` line of `log`.
pub fn listening_port(log: &str) -> Option<u16> {
    let rest = log.split("Listening at: http://").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, lossily decoded.
    pub body: String,
}

/// One `GET path` on 127.0.0.1:`port` with `Connection: close`, bounded by 5 s of I/O silence.
pub fn get(port: u16, path: &str) -> Result<Response, SupportError> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(io_err(format!("connecting to {addr}")))?;
    request(&mut stream, path)
}

/// One `GET path` on the unix socket at `socket`.
pub fn get_unix(socket: &Path, path: &str) -> Result<Response, SupportError> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(io_err(format!("connecting to {}", socket.display())))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err("setting a timeout"))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(io_err("sending the request"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(io_err("reading the response"))?;
    parse_response(&raw)
}

fn request(stream: &mut TcpStream, path: &str) -> Result<Response, SupportError> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err("setting a timeout"))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(io_err("sending the request"))?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(io_err("reading the response"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Response, SupportError> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| SupportError::BadResponse(text.clone()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SupportError::BadResponse(text.clone()))?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let body = match length {
        Some(n) if body.len() >= n => body[..n].to_string(),
        Some(_) => return Err(SupportError::BadResponse(text.clone())),
        None => body.to_string(),
    };
    Ok(Response { status, body })
}

/// What the built-in worker's `/` says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its pid.
    pub pid: i32,
    /// Its worker id (age).
    pub id: u64,
    /// Its slot.
    pub slot: usize,
    /// Its GPU ids, if any.
    pub gpu: Option<String>,
}

/// `GET /` from the built-in worker, parsed.
pub fn identity(port: u16) -> Result<Identity, SupportError> {
    let response = get(port, "/")?;
    let bad = || SupportError::BadResponse(response.body.clone());
    if response.status != 200 {
        return Err(bad());
    }
    let json: serde_json::Value = serde_json::from_str(&response.body).map_err(|_| bad())?;
    Ok(Identity {
        pid: json["pid"].as_i64().ok_or_else(bad)? as i32,
        id: json["id"].as_u64().ok_or_else(bad)?,
        slot: json["slot"].as_u64().ok_or_else(bad)? as usize,
        gpu: match &json["gpu"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        },
    })
}

/// Polls `/` until it answers 200, up to `bound`.
pub fn wait_serving(port: u16, bound: Duration) -> Result<Identity, String> {
    let deadline = Instant::now() + bound;
    loop {
        match identity(port) {
            Ok(identity) => return Ok(identity),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("port {port} not serving after {bound:?}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Asks `/` until every pid in `pids` has answered (up to `bound`); the identities seen, by pid.
pub fn identities_of(port: u16, pids: &[i32], bound: Duration) -> BTreeMap<i32, Identity> {
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline && !pids.iter().all(|pid| seen.contains_key(pid)) {
        if let Ok(identity) = identity(port) {
            seen.insert(identity.pid, identity);
        }
    }
    seen
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) -> io::Result<()> {
    assert!(pid > 0, "refusing to signal pid {pid}");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; pid > 0 names one
    // process, never a group or everything.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the tests need from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter (`R`, `S`, `T`, `Z`, ...).
    pub state: char,
    /// The parent pid.
    pub ppid: i32,
    /// The start time in clock ticks since boot: with the pid, a process's identity.
    pub start_time: u64,
}

/// `/proc/PID/stat`, if the process exists.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` is a live process (a zombie counts as gone: it has exited).
pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|stat| stat.state != 'Z' && stat.state != 'X')
}

/// The subset of `pids` that is alive.
pub fn pids_alive(pids: &[i32]) -> Vec<i32> {
    pids.iter().copied().filter(|&pid| alive(pid)).collect()
}

fn same_process(pid: i32, start_time: u64) -> bool {
    proc_stat(pid)
        .is_some_and(|stat| stat.start_time == start_time && stat.state != 'Z' && stat.state != 'X')
}

/// Every live process (zombies excluded), by pid, from one pass over `/proc`.
pub fn process_table() -> BTreeMap<i32, ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .filter(|(_, stat)| stat.state != 'Z' && stat.state != 'X')
        .collect()
}

/// The live children of `pid`, found through the ppid field of every `/proc/*/stat`.
pub fn children_of(pid: i32) -> Vec<i32> {
    process_table()
        .into_iter()
        .filter(|(_, stat)| stat.ppid == pid)
        .map(|(child, _)| child)
        .collect()
}

/// Every live descendant of `pid` (not `pid` itself).
pub fn descendants(pid: i32) -> Vec<i32> {
    descendants_in(&process_table(), pid)
}

fn descendants_in(table: &BTreeMap<i32, ProcStat>, pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        for (&child, stat) in table {
            if stat.ppid == parent && !out.contains(&child) {
                out.push(child);
                queue.push(child);
            }
        }
    }
    out
}

/// Polls `condition` every 20 ms until it holds or `bound` passes; whether it held.
pub fn wait_until(bound: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid in a pidfile, if it holds one.
pub fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends USR2 to `master` and waits up to `bound` until `upgrade` (its `PIDFILE.2`) names a
/// live new master; tracks it and the tree (so the test's guard kills them) and returns its
/// pid.
pub fn usr2_child(master: &mut Master, upgrade: &Path, bound: Duration) -> i32 {
    let old = master.pid();
    master.signal(libc::SIGUSR2);
    let mut new = 0;
    assert!(
        wait_until(bound, || {
            new = read_pid(upgrade).unwrap_or(0);
            new > 0 && new != old && alive(new)
        }),
        "no {}\n{}",
        upgrade.display(),
        master.stderr()
    );
    master.track(new);
    master.track_tree();
    new
}

/// Waits up to `bound` for `pid` to be gone; how long it took, or `None`.
pub fn wait_gone(pid: i32, bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    let deadline = start + bound;
    loop {
        if !alive(pid) {
            return Some(start.elapsed());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client that loops `GET /` on a port from a thread until stopped, counting failures.
pub struct ClientLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The worker pids that answered so far, shared with the loop's thread.
    served: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<i32>>>,
    handle: Option<std::thread::JoinHandle<LoopReport>>,
}

/// What a [`ClientLoop`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoopReport {
    /// Requests answered 200.
    pub ok: usize,
    /// Failed requests, with why.
    pub failures: Vec<String>,
    /// The distinct worker pids that answered.
    pub pids: std::collections::BTreeSet<i32>,
}

impl ClientLoop {
    /// Starts the loop.
    pub fn start(port: u16) -> ClientLoop {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let served = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let shared = served.clone();
        let handle = std::thread::spawn(move || {
            let mut report = LoopReport::default();
            while !flag.load(Ordering::Relaxed) {
                match identity(port) {
                    Ok(identity) => {
                        report.ok += 1;
                        if report.pids.insert(identity.pid) {
                            shared
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(identity.pid);
                        }
                    }
                    Err(e) => report.failures.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            report
        });
        ClientLoop {
            stop,
            served,
            handle: Some(handle),
        }
    }

    /// Waits up to `bound` until one of `pids` has answered the loop; whether one did.
    pub fn wait_served_by_any(&self, pids: &[i32], bound: Duration) -> bool {
        wait_until(bound, || {
            let served = self.served.lock().unwrap_or_else(|e| e.into_inner());
            pids.iter().any(|pid| served.contains(pid))
        })
    }

    /// Stops the loop and returns what it saw.
    pub fn finish(mut self) -> LoopReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .expect("finish once")
            .join()
            .expect("client loop thread")
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `arbiter ARGS` to completion with a bound (killing it by pid past the bound); its
/// exit code, stdout and stderr.
pub fn run(fixture: &Fixture, name: &str, args: &[&str], bound: Duration) -> (i32, String, String) {
    let mut master = fixture.start(name, args);
    let code = master.exit_code(bound);
    master.assert_no_process_left();
    (code, master.stdout(), master.stderr())
}

/// The environment `pid` was exec'd with, from `/proc/PID/environ` (lossily decoded); `None`
/// if the process is gone or unreadable. A child forked but not yet exec'd shows its
/// parent's environment.
pub fn environ(pid: i32) -> Option<BTreeMap<String, String>> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|entry| !entry.is_empty())
            .filter_map(|entry| {
                let text = String::from_utf8_lossy(entry);
                let (key, value) = text.split_once('=')?;
                Some((key.to_owned(), value.to_owned()))
            })
            .collect(),
    )
}
