//! `cargo xtask integration`: the release arbiter with real servers no one here wrote
//! (uvicorn, gunicorn, node) as its workers, and under `systemd-socket-activate`.
//!
//! For each server: start `arbiter -w 2`, wait until it serves, make 50 requests, find the two
//! workers among the master's children in `/proc`, SIGKILL one and see it replaced (and its own
//! children gone), HUP and see both replaced, TERM and see exit 0 within the graceful timeout
//! with no process left. Every wait is bounded, all traffic goes to 127.0.0.1 or a unix path in
//! a scratch directory, and every process seen is killed by pid (checked by start time) when a
//! step fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common;

/// Workers each arbiter runs.
const WORKERS: usize = 2;
/// Requests made after each step.
const REQUESTS: usize = 50;
/// How long a server may take to serve (first start, replacement, reload).
const SERVE_LIMIT: Duration = Duration::from_secs(30);
/// The graceful timeout given to arbiter; TERM must end the master within it.
const GRACEFUL: Duration = Duration::from_secs(10);
/// Slack over the graceful timeout for the master's own exit to be observed.
const EXIT_SLACK: Duration = Duration::from_secs(2);
/// How long processes may linger after they should be gone (reparented orphans exiting).
const LINGER: Duration = Duration::from_secs(2);
/// Timeout of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// An app with both interfaces: `app` (ASGI, for uvicorn) and `wsgi` (for gunicorn).
const APP_PY: &str = r#"
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"#;

/// Runs every check; fails if any failed (after running the others).
pub fn run() -> Result<(), String> {
    let arbiter = common::arbiter_release()?;
    let venv = common::venv(&["uvicorn", "gunicorn>=23"])?;
    let scratch = Scratch::new()?;
    fs::write(scratch.path().join("app.py"), APP_PY).map_err(|e| format!("app.py: {e}"))?;

    let peers = peers(&venv)?;
    let mut failed = Vec::new();
    for peer in &peers {
        match check_peer(&arbiter, scratch.path(), peer) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                println!("{} {}: FAILED: {e}", peer.name, peer.version);
                failed.push(peer.name);
            }
        }
    }
    match find_in_path("systemd-socket-activate") {
        None => println!("systemd: skipped: systemd-socket-activate not installed"),
        Some(activate) => {
            for (name, check) in [
                ("systemd tcp", check_systemd_tcp as SystemdCheck),
                ("systemd unix", check_systemd_unix),
            ] {
                match check(&activate, &arbiter, scratch.path()) {
                    Ok(line) => println!("{name}: {line}"),
                    Err(e) => {
                        println!("{name}: FAILED: {e}");
                        failed.push(name);
                    }
                }
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

/// One systemd socket-activation check: (tool, arbiter, scratch dir) -> report line.
type SystemdCheck = fn(&Path, &Path, &Path) -> Result<String, String>;

/// A server run as arbiter's worker command.
struct Peer {
    name: &'static str,
    version: String,
    command: Vec<String>,
}

/// uvicorn and gunicorn from the venv, node from PATH; checks gunicorn is at least 23.
fn peers(venv: &Path) -> Result<Vec<Peer>, String> {
    let uvicorn = venv.join("uvicorn").display().to_string();
    let gunicorn = venv.join("gunicorn").display().to_string();
    // "Running uvicorn 0.54.0 with CPython 3.11.7 on Linux"
    let uvicorn_version = version_output(&uvicorn, "--version")?
        .split_whitespace()
        .nth(2)
        .unwrap_or("?")
        .to_owned();
    // "gunicorn (version 27.0.1)"
    let gunicorn_version = version_output(&gunicorn, "--version")?
        .rsplit(' ')
        .next()
        .unwrap_or("?")
        .trim_end_matches(')')
        .to_owned();
    let major: u32 = gunicorn_version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("cannot read gunicorn's version from {gunicorn_version:?}"))?;
    if major < 23 {
        return Err(format!(
            "gunicorn {gunicorn_version} is too old: 23 or later is needed (LISTEN_PID, --no-control-socket)"
        ));
    }
    let node_version = version_output("node", "--version")?;
    let strings = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    Ok(vec![
        Peer {
            name: "uvicorn",
            version: uvicorn_version,
            command: strings(&[&uvicorn, "--fd", "3", "--log-level", "warning", "app:app"]),
        },
        Peer {
            name: "gunicorn",
            version: gunicorn_version,
            command: strings(&[&gunicorn, "--no-control-socket", "-w", "2", "app:wsgi"]),
        },
        Peer {
            name: "node",
            version: node_version,
            command: strings(&[
                "node",
                "-e",
                // Node dies on TERM unless told otherwise; closing the server lets the
                // requests in flight finish, as arbiter's graceful stop expects.
                "const s=require('http').createServer((q,r)=>r.end('ok')).listen({fd:3});\
                 process.on('SIGTERM',()=>s.close())",
            ]),
        },
    ])
}

/// The first line a program prints for `flag` (stdout, else stderr).
fn version_output(program: &str, flag: &str) -> Result<String, String> {
    let output = Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {flag}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{program} {flag}: {}", output.status));
    }
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// Starts arbiter with `peer` as its workers and runs the whole sequence; returns the report.
fn check_peer(arbiter: &Path, scratch: &Path, peer: &Peer) -> Result<String, String> {
    let port = common::free_port();
    let mut command = Command::new(arbiter);
    command
        .args([
            "-w",
            &WORKERS.to_string(),
            "-b",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--chdir")
        .arg(scratch)
        .args(["--graceful-timeout", &format!("{}s", GRACEFUL.as_secs())])
        .arg("--")
        .args(&peer.command);
    let mut master = Master::spawn(command, scratch.join(format!("{}.log", peer.name)))?;
    let report = exercise(&mut master, &Http::Tcp(port), "ok");
    let report = report.map_err(|e| master.with_log(e))?;
    Ok(format!("{} {}: {report}", peer.name, peer.version))
}

/// Serve, 50 requests, two workers, SIGKILL one, HUP, TERM.
fn exercise(master: &mut Master, http: &Http, body: &str) -> Result<String, String> {
    let serving = master.wait_serving(http)?;
    requests(http, body)?;
    let workers = master.wait_workers(|w| w.len() == WORKERS)?;

    // A killed worker is replaced, and whatever it started goes with it.
    let victim = *workers.iter().next().expect("two workers");
    let victim_tree = descendants(victim);
    master.track();
    let start = Instant::now();
    signal(victim, Signal::SIGKILL)?;
    master.wait_workers(|w| w.len() == WORKERS && !w.contains(&victim))?;
    master.wait_serving(http)?;
    let replaced = start.elapsed();
    // Checked before more requests: a stray still holding the listener would answer them.
    let stray: Vec<i32> = wait_gone(&victim_tree, LINGER)
        .iter()
        .map(|p| p.pid)
        .collect();
    if !stray.is_empty() {
        return Err(format!(
            "worker {victim} was SIGKILLed, but processes it started are still running \
             after {LINGER:?}: {stray:?}"
        ));
    }
    requests(http, body)?;

    // HUP replaces every worker; requests keep flowing while it rolls.
    let old = master.wait_workers(|w| w.len() == WORKERS)?;
    master.track();
    let start = Instant::now();
    master.signal(Signal::SIGHUP)?;
    let (mut during, mut failed_during) = (0, 0);
    let deadline = start + SERVE_LIMIT;
    loop {
        master.check_running()?;
        let now = master.workers();
        if now.len() == WORKERS && now.is_disjoint(&old) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "HUP: workers not replaced within {SERVE_LIMIT:?}: before {old:?}, now {now:?}"
            ));
        }
        during += 1;
        if !matches!(http.get(REQUEST_TIMEOUT), Ok((200, ref b)) if b == body) {
            failed_during += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    master.wait_serving(http)?;
    let reloaded = start.elapsed();
    requests(http, body)?;
    master.track();

    let (status, stopped) = master.stop()?;
    if status.code() != Some(0) {
        return Err(format!(
            "TERM: master exited with {status}, expected exit 0"
        ));
    }
    let left = master.leftovers();
    if !left.is_empty() {
        return Err(format!(
            "TERM: processes left after the master exited: {left:?}"
        ));
    }
    Ok(format!(
        "serving in {}; {REQUESTS}/{REQUESTS} ok; workers {workers:?}; SIGKILLed worker replaced \
         and serving in {}; HUP replaced both in {} ({failed_during} of {during} requests \
         failed during the roll); TERM: exit 0 in {}, no process left",
        secs(serving),
        secs(replaced),
        secs(reloaded),
        secs(stopped),
    ))
}

/// `systemd-socket-activate -l 127.0.0.1:PORT arbiter -w 2`: serves on systemd's socket.
fn check_systemd_tcp(activate: &Path, arbiter: &Path, scratch: &Path) -> Result<String, String> {
    let port = common::free_port();
    let http = Http::Tcp(port);
    let mut master = systemd_master(
        activate,
        &format!("127.0.0.1:{port}"),
        arbiter,
        scratch,
        "systemd-tcp",
    )?;
    systemd_sequence(&mut master, &http).map_err(|e| master.with_log(e))
}

/// `systemd-socket-activate -l PATH arbiter -w 2`: serves; the socket file outlives the stop.
fn check_systemd_unix(activate: &Path, arbiter: &Path, scratch: &Path) -> Result<String, String> {
    let path = scratch.join("activated.sock");
    let http = Http::Unix(path.clone());
    let mut master = systemd_master(
        activate,
        &path.display().to_string(),
        arbiter,
        scratch,
        "systemd-unix",
    )?;
    let line = systemd_sequence(&mut master, &http).map_err(|e| master.with_log(e))?;
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(format!("{line}; socket file kept")),
        Ok(_) => Err(format!("{} is no longer a socket", path.display())),
        Err(e) => Err(master.with_log(format!(
            "the systemd-owned socket {} was removed: {e}",
            path.display()
        ))),
    }
}

/// Starts arbiter (built-in worker, no `--bind`) under `systemd-socket-activate -l listen`.
fn systemd_master(
    activate: &Path,
    listen: &str,
    arbiter: &Path,
    scratch: &Path,
    log_name: &str,
) -> Result<Master, String> {
    let mut command = Command::new(activate);
    command
        .args(["-l", listen])
        .arg(arbiter)
        .args(["-w", &WORKERS.to_string()])
        .args(["--graceful-timeout", &format!("{}s", GRACEFUL.as_secs())])
        .current_dir(scratch);
    Master::spawn(command, scratch.join(format!("{log_name}.log")))
}

/// Serve, 50 requests, two workers, TERM (the master is the activator's pid, after its exec).
fn systemd_sequence(master: &mut Master, http: &Http) -> Result<String, String> {
    let serving = master.wait_serving(http)?;
    for i in 0..REQUESTS {
        match http.get(REQUEST_TIMEOUT) {
            Ok((200, _)) => {}
            other => return Err(format!("request {}: {other:?}", i + 1)),
        }
    }
    master.wait_workers(|w| w.len() == WORKERS)?;
    master.track();
    let (status, stopped) = master.stop()?;
    if status.code() != Some(0) {
        return Err(format!(
            "TERM: master exited with {status}, expected exit 0"
        ));
    }
    let left = master.leftovers();
    if !left.is_empty() {
        return Err(format!(
            "TERM: processes left after the master exited: {left:?}"
        ));
    }
    Ok(format!(
        "serving in {}; {REQUESTS}/{REQUESTS} ok; TERM: exit 0 in {}, no process left",
        secs(serving),
        secs(stopped)
    ))
}

/// `REQUESTS` requests, each 200 with `body`.
fn requests(http: &Http, body: &str) -> Result<(), String> {
    for i in 0..REQUESTS {
        match http.get(REQUEST_TIMEOUT) {
            Ok((200, ref b)) if b == body => {}
            other => {
                return Err(format!(
                    "request {} of {REQUESTS}: expected 200 {body:?}, got {other:?}",
                    i + 1
                ))
            }
        }
    }
    Ok(())
}

/// Where requests go.
enum Http {
    /// 127.0.0.1:port.
    Tcp(u16),
    /// A unix stream socket.
    Unix(PathBuf),
}

impl Http {
    /// One `GET /`; (status, body).
    fn get(&self, timeout: Duration) -> Result<(u16, String), String> {
        match self {
            Http::Tcp(port) => common::http_get(*port, "/", timeout),
            Http::Unix(path) => unix_get(path, timeout),
        }
    }
}

/// `GET /` with `Connection: close` over a unix socket; (status, body).
fn unix_get(path: &Path, timeout: Duration) -> Result<(u16, String), String> {
    let mut stream =
        UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    common::parse_response(&response)
}

/// A started master (arbiter, or the activator that execs it) and every process seen under it.
/// Dropping it kills the master and each process seen, by pid.
struct Master {
    child: Child,
    log: PathBuf,
    seen: BTreeSet<Proc>,
    exited: Option<ExitStatus>,
}

impl Master {
    /// Spawns `command` with its output in `log`, without inherited activation variables.
    fn spawn(mut command: Command, log: PathBuf) -> Result<Self, String> {
        let out = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("ARBITER_")
                || key_text.starts_with("LISTEN_")
                || key_text == "NOTIFY_SOCKET"
                || key_text.starts_with("WATCHDOG_")
            {
                command.env_remove(&key);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{command:?}: {e}"))?;
        Ok(Master {
            child,
            log,
            seen: BTreeSet::new(),
            exited: None,
        })
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Fails if the master has exited.
    fn check_running(&mut self) -> Result<(), String> {
        if let Some(status) = self.exited {
            return Err(format!("the master exited: {status}"));
        }
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.exited = Some(status);
                Err(format!("the master exited: {status}"))
            }
            Err(e) => Err(format!("waiting for the master: {e}")),
        }
    }

    /// The master's direct children (its workers).
    fn workers(&self) -> BTreeSet<i32> {
        let pid = self.pid();
        process_table()
            .into_iter()
            .filter(|(_, entry)| entry.ppid == pid && entry.state != 'Z')
            .map(|(child, _)| child)
            .collect()
    }

    /// Remembers every current descendant, to check and clean up later.
    fn track(&mut self) {
        self.seen.extend(descendants(self.pid()));
    }

    /// Sends `signal` to the master.
    fn signal(&self, signal_to_send: Signal) -> Result<(), String> {
        signal(self.pid(), signal_to_send)
    }

    /// Waits until the worker set satisfies `done`; returns it.
    fn wait_workers(
        &mut self,
        done: impl Fn(&BTreeSet<i32>) -> bool,
    ) -> Result<BTreeSet<i32>, String> {
        let start = Instant::now();
        loop {
            self.check_running()?;
            let workers = self.workers();
            if done(&workers) {
                self.track();
                return Ok(workers);
            }
            if start.elapsed() > SERVE_LIMIT {
                return Err(format!(
                    "workers not as expected within {SERVE_LIMIT:?}: master's children {workers:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `GET /` answers 200; returns how long it took.
    fn wait_serving(&mut self, http: &Http) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            self.check_running()?;
            let last = http.get(Duration::from_millis(500));
            if let Ok((200, _)) = last {
                return Ok(start.elapsed());
            }
            if start.elapsed() > SERVE_LIMIT {
                return Err(format!(
                    "not serving within {SERVE_LIMIT:?}; last answer: {last:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// TERM, then waits up to the graceful timeout (plus slack) for the exit.
    fn stop(&mut self) -> Result<(ExitStatus, Duration), String> {
        self.check_running()?;
        self.track();
        let start = Instant::now();
        self.signal(Signal::SIGTERM)?;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    return Ok((status, start.elapsed()));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for the master: {e}")),
            }
            if start.elapsed() > GRACEFUL + EXIT_SLACK {
                return Err(format!(
                    "TERM: the master did not exit within the graceful timeout ({GRACEFUL:?})"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Processes seen under the master that are still alive once `LINGER` has passed.
    fn leftovers(&self) -> Vec<i32> {
        wait_gone(&self.seen, LINGER)
            .iter()
            .map(|p| p.pid)
            .collect()
    }

    /// `message` followed by the end of the master's log.
    fn with_log(&self, message: String) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "{message}\n--- last lines of {} ---\n{tail}\n---",
            self.log.display()
        )
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            self.track();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for proc in &self.seen {
            if proc.alive() {
                let _ = kill(Pid::from_raw(proc.pid), Signal::SIGKILL);
            }
        }
    }
}

/// Sends `signal_to_send` to `pid`.
fn signal(pid: i32, signal_to_send: Signal) -> Result<(), String> {
    kill(Pid::from_raw(pid), signal_to_send)
        .map_err(|e| format!("kill {pid} {signal_to_send}: {e}"))
}

/// A process, named by pid and start time so that a reused pid is not mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Proc {
    pid: i32,
    start: u64,
}

impl Proc {
    /// Whether this very process still runs (a zombie counts as gone).
    fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|entry| entry.start == self.start && entry.state != 'Z')
    }
}

/// The fields of `/proc/PID/stat` used here.
#[derive(Clone, Copy, Debug)]
struct StatEntry {
    state: char,
    ppid: i32,
    start: u64,
}

/// Parses `/proc/PID/stat`; `None` once the process is gone.
fn stat(pid: i32) -> Option<StatEntry> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses the text of a `/proc/PID/stat` file.
fn parse_stat(text: &str) -> Option<StatEntry> {
    // The command name is in parentheses and may itself hold spaces and parentheses.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(StatEntry {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every process now: pid -> its stat fields.
fn process_table() -> BTreeMap<i32, StatEntry> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// `root`'s living descendants (not `root` itself).
fn descendants(root: i32) -> BTreeSet<Proc> {
    let table = process_table();
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (&pid, entry) in &table {
            if entry.ppid == parent && entry.state != 'Z' {
                found.insert(Proc {
                    pid,
                    start: entry.start,
                });
                frontier.push(pid);
            }
        }
    }
    found
}

/// Waits up to `limit` for every process in `procs` to be gone; returns those still alive.
fn wait_gone(procs: &BTreeSet<Proc>, limit: Duration) -> Vec<Proc> {
    let start = Instant::now();
    loop {
        let alive: Vec<Proc> = procs.iter().copied().filter(Proc::alive).collect();
        if alive.is_empty() || start.elapsed() > limit {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first `name` in `PATH` that is a file.
fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Seconds with two decimals.
fn secs(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

/// A scratch directory for the app, logs and unix sockets; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("arbiter-xtask-integration-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let text = "4242 (a) b (c) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let entry = parse_stat(text).expect("parses");
        assert_eq!(entry.state, 'S');
        assert_eq!(entry.ppid, 17);
        assert_eq!(entry.start, 987654);
        assert!(parse_stat("4242 (truncated) S").is_none());
    }

    #[test]
    fn own_stat_names_the_parent() {
        let entry = stat(std::process::id() as i32).expect("own stat");
        assert_eq!(entry.ppid as u32, std::os::unix::process::parent_id());
    }

    #[test]
    fn children_are_found_then_gone_and_pid_reuse_is_not_alive() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id() as i32;
        let found: Vec<Proc> = descendants(std::process::id() as i32)
            .into_iter()
            .filter(|p| p.pid == pid)
            .collect();
        let result = (|| {
            let [proc] = found[..] else {
                return Err(format!("child {pid} not among descendants: {found:?}"));
            };
            if !proc.alive() {
                return Err("running child not alive".to_owned());
            }
            let impostor = Proc {
                pid,
                start: proc.start + 1,
            };
            if impostor.alive() {
                return Err("a different start time counted as the same process".to_owned());
            }
            Ok(proc)
        })();
        let _ = child.kill();
        let _ = child.wait();
        let proc = result.unwrap();
        assert!(!proc.alive(), "reaped child still alive");
        assert!(wait_gone(&BTreeSet::from([proc]), Duration::from_millis(100)).is_empty());
    }

    #[test]
    fn unix_get_reads_status_and_body() {
        let dir = Scratch::new().expect("scratch");
        let path = dir.path().join("http.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).expect("read");
            assert!(request[..n].starts_with(b"GET / HTTP/1.1\r\n"));
            stream
                .write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
                .expect("write");
        });
        let answer = unix_get(&path, Duration::from_secs(5));
        server.join().expect("server thread");
        assert_eq!(answer, Ok((503, "busy".to_owned())));
    }
}
