//! `deploy/systemd/`: the unit files checked by `systemd-analyze verify` and their service
//! lines run the way systemd would run them, under `systemd-socket-activate`.
//!
//! Verification works without a booted systemd: the units are copied to a scratch directory
//! with `ExecStart=`'s program pointed at the built binary (verify insists that it exists),
//! `MANPATH` names the generated man pages (verify runs `man` for `Documentation=`), and
//! verify's warnings count as failures (it exits 0 on an unknown key or a bad value). A copy
//! with a misspelt key must fail, so a verify that checks nothing is caught. systemd before 253
//! does not know `Type=notify-reload`: there, those two lines of the notify-reload variant are
//! left out of its copy, and the report says so.
//!
//! The exercise: `ExecStart=` (the worker replaced by the built-in one, `/run/app` by a scratch
//! directory) under `systemd-socket-activate -l` on the socket unit's address (a free port),
//! with `NOTIFY_SOCKET` ours and a 2 s watchdog instead of `WatchdogSec=`: the master (the
//! activator's pid, after its exec) sends `READY=1`, `WATCHDOG=1`; the unit's reload
//! (`ExecReload=`, or `ReloadSignal=` for notify-reload) gets `RELOADING=1` with a current
//! `MONOTONIC_USEC=`, then `READY=1` once N new workers run (the old ones then leave);
//! `arbiter upgrade --pidfile` ends the old master with exit 0 and the new one (reparented to
//! this task, a child subreaper, as it would be to systemd) sends `MAINPID=` with its pid, then
//! `WATCHDOG=1`; TERM to it alone (`KillMode=mixed`) gets `STOPPING=1` and exit 0 within
//! `TimeoutStopSec=`, no process left. systemd's own reaction to the hand-over (kept alive by
//! `ExitType=cgroup`) needs a booted systemd and is not checked.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use nix::sys::prctl::set_child_subreaper;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;

use super::notify::NotifyReceiver;
use crate::common;
use crate::process::{
    descendants, find_in_path, secs, signal, wait_gone, Http, Master, Proc, LINGER, SERVE_LIMIT,
};

/// The unit files, relative to the workspace root.
const DIR: &str = "deploy/systemd";
/// Where the units expect arbiter.
const INSTALLED: &str = "/usr/local/bin/arbiter";
/// The watchdog given to the exercised master (the units' 30 s would make a slow check).
const WATCHDOG: Duration = Duration::from_secs(2);

/// One unit file: its name and text.
struct Unit {
    name: String,
    text: String,
}

impl Unit {
    /// The last value of `key` in `[section]`.
    fn value(&self, section: &str, key: &str) -> Option<String> {
        let mut inside = false;
        let mut found = None;
        for line in self.text.lines().map(str::trim) {
            if line.starts_with('[') {
                inside = line == format!("[{section}]");
            } else if inside && !line.starts_with('#') && !line.starts_with(';') {
                if let Some((k, v)) = line.split_once('=') {
                    if k.trim() == key {
                        found = Some(v.trim().to_owned());
                    }
                }
            }
        }
        found
    }

    fn require(&self, section: &str, key: &str) -> Result<String, String> {
        self.value(section, key)
            .ok_or_else(|| format!("{}: no {key}= in [{section}]", self.name))
    }
}

/// Verifies every unit and exercises each service; returns one report line per step.
///
/// `man_path` holds `man1/arbiter.1`, so that verify finds the units' `Documentation=`.
pub(crate) fn check(
    arbiter: &Path,
    man_path: &Path,
    scratch: &Path,
) -> Result<Vec<String>, String> {
    let units = read_units()?;
    let mut lines = vec![verify(&units, arbiter, man_path, scratch)?];
    let Some(activate) = find_in_path("systemd-socket-activate") else {
        lines.push("exercise: skipped: systemd-socket-activate not installed".into());
        return Ok(lines);
    };
    let socket = units
        .iter()
        .find(|u| u.name.ends_with(".socket"))
        .ok_or("no socket unit")?;
    for service in units.iter().filter(|u| u.name.ends_with(".service")) {
        let line = exercise(service, socket, &activate, arbiter, scratch)
            .map_err(|e| format!("{}: {e}", service.name))?;
        lines.push(format!("{}: {line}", service.name));
    }
    Ok(lines)
}

fn read_units() -> Result<Vec<Unit>, String> {
    let dir = common::root().join(DIR);
    let mut units = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".service") || name.ends_with(".socket") {
            let text = fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
            units.push(Unit { name, text });
        }
    }
    units.sort_by(|a, b| a.name.cmp(&b.name));
    if !units.iter().any(|u| u.name.ends_with(".socket"))
        || units
            .iter()
            .filter(|u| u.name.ends_with(".service"))
            .count()
            < 2
    {
        return Err(format!("{DIR} should hold a socket and two services"));
    }
    Ok(units)
}

/// The systemd version, from `systemd-analyze --version` ("systemd 252 (252.38-1~deb12u1)").
fn systemd_version() -> Result<u32, String> {
    let output = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .map_err(|e| format!("systemd-analyze --version: {e}"))?;
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "cannot read the systemd version".to_owned())
}

/// `systemd-analyze verify` on scratch copies of every unit; then on a broken copy, which must
/// fail.
fn verify(
    units: &[Unit],
    arbiter: &Path,
    man_path: &Path,
    scratch: &Path,
) -> Result<String, String> {
    if find_in_path("systemd-analyze").is_none() {
        return Ok("verify: skipped: systemd-analyze not installed".into());
    }
    let version = systemd_version()?;
    let dir = scratch.join("units");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut paths = Vec::new();
    let mut notes = Vec::new();
    for unit in units {
        let mut text = unit.text.replace(INSTALLED, &arbiter.display().to_string());
        if version < 253 && text.contains("Type=notify-reload") {
            text = text
                .lines()
                .filter(|l| !l.starts_with("Type=notify-reload") && !l.starts_with("ReloadSignal="))
                .map(|l| format!("{l}\n"))
                .collect();
            notes.push(format!(
                "{}'s Type=notify-reload and ReloadSignal= not verified: systemd {version} \
                 predates them (253)",
                unit.name
            ));
        }
        let path = dir.join(&unit.name);
        fs::write(&path, text).map_err(|e| e.to_string())?;
        paths.push(path);
    }
    run_verify(&paths, man_path).map_err(|e| format!("systemd-analyze verify: {e}"))?;

    // A misspelt key only warns, with exit 0: the check must see it.
    let broken_dir = scratch.join("units-broken");
    fs::create_dir_all(&broken_dir).map_err(|e| e.to_string())?;
    let service = paths
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "service"))
        .ok_or("no service")?;
    let broken = broken_dir.join(service.file_name().expect("a file"));
    let text = fs::read_to_string(service).map_err(|e| e.to_string())?;
    fs::write(&broken, text.replace("KillMode=", "KilMode=")).map_err(|e| e.to_string())?;
    if run_verify(&[broken], man_path).is_ok() {
        return Err("systemd-analyze verify accepted a unit with a misspelt key".into());
    }
    let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    let mut line = format!(
        "verify (systemd {version}): {} clean, Documentation=man:arbiter(1) found in the \
         generated pages; a misspelt key is caught",
        names.join(", ")
    );
    for note in notes {
        line.push_str("; ");
        line.push_str(&note);
    }
    Ok(line)
}

/// `systemd-analyze verify PATHS` with the generated man pages on `MANPATH`: Ok when it exits
/// 0 and says nothing.
fn run_verify(paths: &[PathBuf], man_path: &Path) -> Result<(), String> {
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(paths)
        .env("MANPATH", man_path)
        .output()
        .map_err(|e| e.to_string())?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", output.status, said.trim()))
    }
}

/// Runs `service`'s `ExecStart=` the way systemd would, through the reload and the stop.
fn exercise(
    service: &Unit,
    socket: &Unit,
    activate: &Path,
    arbiter: &Path,
    scratch: &Path,
) -> Result<String, String> {
    let stem = service.name.trim_end_matches(".service");
    let work = scratch.join(stem);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let runtime = service.require("Service", "RuntimeDirectory")?;
    let runtime_dir = work.join("run");
    fs::create_dir_all(&runtime_dir).map_err(|e| e.to_string())?;

    let exec_start = service.require("Service", "ExecStart")?;
    if exec_start.contains(['"', '\'', '\\']) {
        return Err("ExecStart= with quoting: this check splits on whitespace only".into());
    }
    let argv = exec_argv(
        &exec_start,
        arbiter,
        &format!("/run/{runtime}"),
        &runtime_dir,
    )?;

    let listen = socket.require("Socket", "ListenStream")?;
    let (host, _) = listen
        .rsplit_once(':')
        .ok_or_else(|| format!("ListenStream={listen}: expected HOST:PORT"))?;
    if host != "127.0.0.1" {
        return Err(format!(
            "ListenStream={listen}: expected a loopback address"
        ));
    }
    let port = common::free_port();
    let mut notify = NotifyReceiver::bind(&work.join("notify.sock"))?;

    let mut command = Command::new(activate);
    command
        .arg("-l")
        .arg(format!("{host}:{port}"))
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.path().display()))
        .arg("-E")
        .arg(format!("WATCHDOG_USEC={}", WATCHDOG.as_micros()))
        .args(&argv)
        .current_dir(&work);
    let stop_limit = parse_seconds(&service.require("Service", "TimeoutStopSec")?)?;
    let pidfile = argv
        .iter()
        .position(|a| a == "--pidfile")
        .and_then(|i| argv.get(i + 1))
        .map(PathBuf::from)
        .ok_or("ExecStart= has no --pidfile (the upgrade needs it)")?;
    let mut master = Master::spawn(command, work.join("master.log"))?.with_stop_limit(stop_limit);
    // The upgrade's new master outlives its parent, the activator's pid: it is reparented here.
    set_child_subreaper(true).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let result = sequence(service, &mut master, &mut notify, port, arbiter, &pidfile);
    let _ = set_child_subreaper(false);
    result.map_err(|e| master.with_log(format!("{e}; notifications: {}", notify.summary())))
}

/// `ExecStart=` as argv: the installed arbiter replaced by `arbiter`, the runtime directory by
/// `runtime_dir`, and the worker program (the first word after `--`) by the built-in worker.
fn exec_argv(
    exec_start: &str,
    arbiter: &Path,
    runtime: &str,
    runtime_dir: &Path,
) -> Result<Vec<String>, String> {
    let words: Vec<&str> = exec_start.split_whitespace().collect();
    if words.first() != Some(&INSTALLED) {
        return Err(format!(
            "ExecStart={exec_start}: expected {INSTALLED} first"
        ));
    }
    let arbiter = arbiter.display().to_string();
    let mut argv = vec![arbiter.clone()];
    let mut after_dashes = false;
    for word in &words[1..] {
        if after_dashes {
            // The worker's own arguments are the app's business; the built-in worker takes none.
            continue;
        }
        if *word == "--" {
            after_dashes = true;
            argv.extend(["--".to_owned(), arbiter.clone(), "worker".to_owned()]);
            continue;
        }
        argv.push(word.replace(runtime, &runtime_dir.display().to_string()));
    }
    if !after_dashes {
        return Err(format!(
            "ExecStart={exec_start}: expected a worker command after --"
        ));
    }
    Ok(argv)
}

/// The `-w N` / `--workers N` of `ExecStart=` (1 when absent, arbiter's default).
fn worker_count(exec_start: &str) -> Result<usize, String> {
    let words: Vec<&str> = exec_start
        .split_whitespace()
        .take_while(|w| *w != "--")
        .collect();
    match words.iter().position(|w| *w == "-w" || *w == "--workers") {
        None => Ok(1),
        Some(i) => words
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("ExecStart={exec_start}: bad worker count")),
    }
}

/// `40`, `40s` or `1min` as a duration (the forms the units use).
fn parse_seconds(value: &str) -> Result<Duration, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{value:?}: not a number of seconds"))
    };
    if let Some(minutes) = value.strip_suffix("min") {
        return Ok(Duration::from_secs(number(minutes)? * 60));
    }
    Ok(Duration::from_secs(number(value.trim_end_matches('s'))?))
}

/// CLOCK_MONOTONIC now, in microseconds (what `MONOTONIC_USEC=` is stamped with).
fn monotonic_usec() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
}

/// Ready, watchdog, reload, upgrade, stop.
fn sequence(
    service: &Unit,
    master: &mut Master,
    notify: &mut NotifyReceiver,
    port: u16,
    arbiter: &Path,
    pidfile: &Path,
) -> Result<String, String> {
    let stop_limit = parse_seconds(&service.require("Service", "TimeoutStopSec")?)?;
    let http = Http::Tcp(port);
    // The activator execs arbiter on the first connection: the probe is that connection.
    let serving = master.wait_serving(&http)?;
    let pid = master.pid();
    let from_master = |n: &super::notify::Notification| n.pid == pid;
    notify.wait_for(SERVE_LIMIT, "READY=1 from the master", |n| {
        from_master(n) && n.get("READY") == Some("1")
    })?;
    notify.wait_for(WATCHDOG * 2, "WATCHDOG=1 from the master", |n| {
        from_master(n) && n.get("WATCHDOG") == Some("1")
    })?;
    let count = worker_count(&service.require("Service", "ExecStart")?)?;
    let workers = master.wait_workers(|w| w.len() == count)?;

    // The reload, as the unit asks systemd to do it.
    let before = monotonic_usec();
    let how = match service.value("Service", "ExecReload") {
        Some(exec_reload) => {
            let line = exec_reload.replace("$MAINPID", &pid.to_string());
            let words: Vec<&str> = line.split_whitespace().collect();
            common::run(Command::new(words[0]).args(&words[1..]))?;
            format!("ExecReload={exec_reload}")
        }
        None => {
            let signal = service
                .value("Service", "ReloadSignal")
                .unwrap_or_else(|| "SIGHUP".to_owned());
            if signal != "SIGHUP" {
                return Err(format!("ReloadSignal={signal}: arbiter reloads on SIGHUP"));
            }
            master.signal(Signal::SIGHUP)?;
            format!("ReloadSignal={signal}")
        }
    };
    let start = Instant::now();
    let reloading = notify.wait_for(SERVE_LIMIT, "RELOADING=1 from the master", |n| {
        from_master(n) && n.get("RELOADING") == Some("1")
    })?;
    let stamp: u64 = reloading
        .get("MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .ok_or("RELOADING=1 without a MONOTONIC_USEC=")?;
    let after = monotonic_usec();
    if stamp < before || stamp > after {
        return Err(format!(
            "MONOTONIC_USEC={stamp} is not between the reload ({before}) and its answer ({after})"
        ));
    }
    notify.wait_for(SERVE_LIMIT, "READY=1 after the reload", |n| {
        from_master(n) && n.get("READY") == Some("1")
    })?;
    let reloaded = start.elapsed();
    // READY=1 means the new generation serves: all its workers exist (the last old one may
    // still be finishing its requests).
    let now = master.workers();
    let fresh = now.difference(&workers).count();
    if fresh < count {
        return Err(format!(
            "READY=1 after the reload with {fresh} new workers of {count}: before {workers:?}, \
             now {now:?}"
        ));
    }
    master.wait_workers(|w| w.len() == count && w.is_disjoint(&workers))?;
    master.wait_serving(&http)?;
    master.track();

    // The upgrade: the old master hands over with MAINPID= of the new one (never STOPPING=1,
    // which would stop the service), and the new master announces MAINPID= and takes over.
    let old_pid = master.pid();
    let mark = notify.log.len();
    let start = Instant::now();
    let output = Command::new(arbiter)
        .args([
            "upgrade",
            "--ready-timeout",
            "20s",
            "--stop-timeout",
            "20s",
            "--pidfile",
        ])
        .arg(pidfile)
        .output()
        .map_err(|e| format!("arbiter upgrade: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "arbiter upgrade: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let (status, _) = master.wait_exit()?;
    if status.code() != Some(0) {
        return Err(format!(
            "upgrade: the old master exited {status}, expected 0"
        ));
    }
    let text = fs::read_to_string(pidfile).map_err(|e| format!("{}: {e}", pidfile.display()))?;
    let new_pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{}: {text:?} is not a pid", pidfile.display()))?;
    let mut successor = Successor::adopt(new_pid);
    let announced = new_pid.to_string();
    notify.wait_for(SERVE_LIMIT, "MAINPID= from the new master", |n| {
        n.pid == new_pid && n.get("MAINPID") == Some(announced.as_str())
    })?;
    let upgraded = start.elapsed();
    let from_old = &notify.log[mark..];
    if !from_old
        .iter()
        .any(|n| n.pid == old_pid && n.get("MAINPID") == Some(announced.as_str()))
    {
        return Err(format!(
            "the old master {old_pid} did not hand over with MAINPID={new_pid}: {}",
            notify.summary()
        ));
    }
    if from_old
        .iter()
        .any(|n| n.pid == old_pid && n.get("STOPPING").is_some())
    {
        return Err(format!(
            "the old master {old_pid} sent STOPPING=1 during the upgrade, which stops the \
             service: {}",
            notify.summary()
        ));
    }
    notify.wait_for(WATCHDOG * 2, "WATCHDOG=1 from the new master", |n| {
        n.pid == new_pid && n.get("WATCHDOG") == Some("1")
    })?;
    wait_serving(port)?;

    // The stop, of the service's main process now: TERM to it alone (KillMode=mixed).
    let start = Instant::now();
    signal(new_pid, Signal::SIGTERM)?;
    notify.wait_for(stop_limit, "STOPPING=1 from the new master", |n| {
        n.pid == new_pid && n.get("STOPPING") == Some("1")
    })?;
    let status = successor.wait_exit(stop_limit)?;
    let stopped = start.elapsed();
    if status != 0 {
        return Err(format!("TERM: the new master exited {status}, expected 0"));
    }
    let left = successor.leftovers();
    if !left.is_empty() {
        return Err(format!("TERM: processes left: {left:?}"));
    }
    Ok(format!(
        "serving in {}; READY=1 and WATCHDOG=1 from the master; {how}: RELOADING=1 with a \
         current MONOTONIC_USEC, READY=1 {} later with {count} new workers, the old ones then \
         gone; arbiter upgrade: the old master handed over (MAINPID={new_pid}, no STOPPING=1) and \
         exited 0, MAINPID={new_pid} from the new one \
         {} after the upgrade began, then its WATCHDOG=1; TERM: STOPPING=1, exit 0 in {}, no \
         process left",
        secs(serving),
        secs(reloaded),
        secs(upgraded),
        secs(stopped),
    ))
}

/// Waits until `GET /` on the port answers 200.
fn wait_serving(port: u16) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let last = common::http_get(port, "/", Duration::from_millis(500));
        if matches!(last, Ok((200, _))) {
            return Ok(());
        }
        if start.elapsed() > SERVE_LIMIT {
            return Err(format!("not serving within {SERVE_LIMIT:?}: {last:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The new master of an upgrade, reparented to this task (a child subreaper): reaped here, and
/// killed by pid with everything under it when dropped before it exited.
struct Successor {
    pid: i32,
    seen: BTreeSet<Proc>,
    exited: bool,
}

impl Successor {
    fn adopt(pid: i32) -> Self {
        let mut seen = descendants(pid);
        if let Some(entry) = crate::process::stat(pid) {
            seen.insert(Proc {
                pid,
                start: entry.start,
            });
        }
        Successor {
            pid,
            seen,
            exited: false,
        }
    }

    /// Reaps it within `limit`; its exit code (128 + N for a signal).
    fn wait_exit(&mut self, limit: Duration) -> Result<i32, String> {
        let start = Instant::now();
        loop {
            self.seen.extend(descendants(self.pid));
            match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    self.exited = true;
                    return Ok(code);
                }
                Ok(WaitStatus::Signaled(_, signal, _)) => {
                    self.exited = true;
                    return Ok(128 + signal as i32);
                }
                Ok(_) => {}
                Err(e) => return Err(format!("waitpid {}: {e} (not reparented here?)", self.pid)),
            }
            if start.elapsed() > limit {
                return Err(format!("the new master did not exit within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn leftovers(&self) -> Vec<i32> {
        wait_gone(&self.seen, LINGER)
            .iter()
            .map(|p| p.pid)
            .collect()
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        for proc in &self.seen {
            if proc.alive() {
                let _ = nix::sys::signal::kill(Pid::from_raw(proc.pid), Signal::SIGKILL);
            }
        }
        if !self.exited {
            let _ = waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(text: &str) -> Unit {
        Unit {
            name: "t.service".into(),
            text: text.into(),
        }
    }

    #[test]
    fn values_come_from_their_section_last_one_wins_comments_skipped() {
        let u = unit("[Unit]\nType=x\n[Service]\n# Type=y\nType=notify\nType=simple\n");
        assert_eq!(u.value("Service", "Type").as_deref(), Some("simple"));
        assert_eq!(u.value("Unit", "Type").as_deref(), Some("x"));
        assert_eq!(u.value("Install", "Type"), None);
    }

    #[test]
    fn exec_start_maps_the_binary_runtime_dir_and_worker() {
        let argv = exec_argv(
            "/usr/local/bin/arbiter -w 4 --pidfile /run/app/app.pid -- /srv/app/worker --x",
            Path::new("/b/arbiter"),
            "/run/app",
            Path::new("/s/run"),
        )
        .expect("maps");
        assert_eq!(
            argv,
            [
                "/b/arbiter",
                "-w",
                "4",
                "--pidfile",
                "/s/run/app.pid",
                "--",
                "/b/arbiter",
                "worker"
            ]
        );
        assert!(exec_argv(
            "/bin/other -w 1 -- x",
            Path::new("/b"),
            "/run/app",
            Path::new("/s")
        )
        .is_err());
        assert!(exec_argv(
            "/usr/local/bin/arbiter -w 1",
            Path::new("/b"),
            "/run/app",
            Path::new("/s")
        )
        .is_err());
    }

    #[test]
    fn worker_count_before_the_worker_command() {
        assert_eq!(worker_count("/a -w 4 -- w -w 9"), Ok(4));
        assert_eq!(worker_count("/a --workers 2 --"), Ok(2));
        assert_eq!(worker_count("/a -- w -w 9"), Ok(1));
        assert!(worker_count("/a -w x --").is_err());
    }

    #[test]
    fn timeouts_in_the_units_forms() {
        assert_eq!(parse_seconds("40"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_seconds("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_seconds("2min"), Ok(Duration::from_secs(120)));
        assert!(parse_seconds("soon").is_err());
    }
}
