//! Processes a task starts and watches: a [`Master`] (arbiter, or a program that execs it)
//! with every process seen under it killed by pid when it drops, the `/proc` process table
//! ([`descendants`], [`Proc`] named by pid and start time), loopback and unix HTTP probes, and a
//! [`Scratch`] directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common;

/// How long a server may take to serve (first start, replacement, reload).
pub(crate) const SERVE_LIMIT: Duration = Duration::from_secs(30);
/// How long processes may linger after they should be gone (reparented orphans exiting).
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// The stop limit of a [`Master`] unless told otherwise: a 10 s graceful timeout plus 2 s of
/// slack for the master's own exit to be observed.
pub(crate) const STOP_LIMIT: Duration = Duration::from_secs(12);

/// Where requests go.
pub(crate) enum Http {
    /// 127.0.0.1:port.
    Tcp(u16),
    /// A unix stream socket.
    Unix(PathBuf),
}

impl Http {
    /// One `GET /`; (status, body).
    pub(crate) fn get(&self, timeout: Duration) -> Result<(u16, String), String> {
        match self {
            Http::Tcp(port) => common::http_get(*port, "/", timeout),
            Http::Unix(path) => unix_get(path, timeout),
        }
    }
}

/// `GET /` with `Connection: close` over a unix socket; (status, body).
pub(crate) fn unix_get(path: &Path, timeout: Duration) -> Result<(u16, String), String> {
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
pub(crate) struct Master {
    child: Child,
    log: PathBuf,
    seen: BTreeSet<Proc>,
    exited: Option<ExitStatus>,
    stop_limit: Duration,
}

impl Master {
    /// Spawns `command` with its output in `log`, without inherited activation variables.
    pub(crate) fn spawn(mut command: Command, log: PathBuf) -> Result<Self, String> {
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
            stop_limit: STOP_LIMIT,
        })
    }

    /// How long [`Master::stop`] waits for the exit after TERM.
    pub(crate) fn with_stop_limit(mut self, limit: Duration) -> Self {
        self.stop_limit = limit;
        self
    }

    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Fails if the master has exited.
    pub(crate) fn check_running(&mut self) -> Result<(), String> {
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
    pub(crate) fn workers(&self) -> BTreeSet<i32> {
        let pid = self.pid();
        process_table()
            .into_iter()
            .filter(|(_, entry)| entry.ppid == pid && entry.state != 'Z')
            .map(|(child, _)| child)
            .collect()
    }

    /// Remembers every current descendant, to check and clean up later.
    pub(crate) fn track(&mut self) {
        self.seen.extend(descendants(self.pid()));
    }

    /// Sends `signal` to the master.
    pub(crate) fn signal(&self, signal_to_send: Signal) -> Result<(), String> {
        signal(self.pid(), signal_to_send)
    }

    /// Waits until the worker set satisfies `done`; returns it.
    pub(crate) fn wait_workers(
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
    pub(crate) fn wait_serving(&mut self, http: &Http) -> Result<Duration, String> {
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

    /// TERM, then waits up to the stop limit (the graceful timeout plus slack) for the exit.
    pub(crate) fn stop(&mut self) -> Result<(ExitStatus, Duration), String> {
        self.check_running()?;
        self.track();
        self.signal(Signal::SIGTERM)?;
        self.wait_exit()
    }

    /// Waits up to the stop limit for the exit of the started process (a stop signal was sent
    /// to it or to the process it runs); returns its status and how long it took.
    pub(crate) fn wait_exit(&mut self) -> Result<(ExitStatus, Duration), String> {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    return Ok((status, start.elapsed()));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for the master: {e}")),
            }
            if start.elapsed() > self.stop_limit {
                return Err(format!(
                    "the master did not exit within {:?} of its stop signal",
                    self.stop_limit
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Processes seen under the master that are still alive once `LINGER` has passed.
    pub(crate) fn leftovers(&self) -> Vec<i32> {
        wait_gone(&self.seen, LINGER)
            .iter()
            .map(|p| p.pid)
            .collect()
    }

    /// `message` followed by the end of the master's log.
    pub(crate) fn with_log(&self, message: String) -> String {
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
pub(crate) fn signal(pid: i32, signal_to_send: Signal) -> Result<(), String> {
    kill(Pid::from_raw(pid), signal_to_send)
        .map_err(|e| format!("kill {pid} {signal_to_send}: {e}"))
}

/// A process, named by pid and start time so that a reused pid is not mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Proc {
    pub(crate) pid: i32,
    pub(crate) start: u64,
}

impl Proc {
    /// Whether this very process still runs (a zombie counts as gone).
    pub(crate) fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|entry| entry.start == self.start && entry.state != 'Z')
    }
}

/// The fields of `/proc/PID/stat` used here.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StatEntry {
    pub(crate) state: char,
    pub(crate) ppid: i32,
    pub(crate) start: u64,
}

/// Parses `/proc/PID/stat`; `None` once the process is gone.
pub(crate) fn stat(pid: i32) -> Option<StatEntry> {
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
pub(crate) fn process_table() -> BTreeMap<i32, StatEntry> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// `root`'s living descendants (not `root` itself).
pub(crate) fn descendants(root: i32) -> BTreeSet<Proc> {
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
pub(crate) fn wait_gone(procs: &BTreeSet<Proc>, limit: Duration) -> Vec<Proc> {
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
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Seconds with two decimals.
pub(crate) fn secs(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

/// A scratch directory for the app, logs and unix sockets; removed on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(purpose: &str) -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("arbiter-xtask-{purpose}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }

    pub(crate) fn path(&self) -> &Path {
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
        let dir = Scratch::new("process-test").expect("scratch");
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
