//! The worker protocol spoken by clients no one here wrote, and the metrics read by
//! Prometheus' own parsers.
//!
//! Three workers, each with one client library: a shell worker calling `systemd-notify`
//! (systemd's own tool), a Python worker with `sdnotify` (PyPI), and a Rust worker with the
//! `sd-notify` crate (`examples/sd_notify_worker.rs`, which also takes its ping interval from
//! `sd_notify::watchdog_enabled`). Each runs as `arbiter -w 2 --ready notify --timeout 2s`, and
//! is told by gate files when to act, so every step is seen from the master's side:
//!
//! 1. both workers run, and `/readyz` is 503 with `arbiter_workers_ready 0` (no `READY=1` yet);
//! 2. gate `ready`: the client sends `READY=1`; `/readyz` turns 200 with both workers ready;
//! 3. the client sends `WATCHDOG=1`: both workers show in the heartbeat histogram;
//! 4. gate `hang`: the pings stop; the master kills both for the heartbeat timeout (a timeout
//!    that only runs once a heartbeat was seen);
//! 5. `/metrics`, then, passes `promtool check metrics` (Debian's `prometheus` package; skipped
//!    when not installed) with no error or warning, and `prometheus_client`'s parser (PyPI),
//!    which must find every family; both are first shown text they must reject;
//! 6. TERM: exit 0, no process left.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::process::{find_in_path, secs, Master};

/// How long each step may take.
const STEP_LIMIT: Duration = Duration::from_secs(20);
/// Workers per arbiter.
const WORKERS: usize = 2;

/// The shell worker: `systemd-notify` for both messages.
const SHELL_WORKER: &str = r#"
while [ ! -e "$CLIENT_GATE/ready" ]; do sleep 0.02; done
systemd-notify --ready || exit 1
while [ ! -e "$CLIENT_GATE/hang" ]; do systemd-notify WATCHDOG=1 || exit 1; sleep 0.2; done
exec sleep 3600
"#;

/// The Python worker: `sdnotify` for both messages (with `debug=True` a failed send raises,
/// where the default would stay silent).
const PYTHON_WORKER: &str = r#"
import os, time, sdnotify
gate = os.environ["CLIENT_GATE"]
notifier = sdnotify.SystemdNotifier(debug=True)
while not os.path.exists(os.path.join(gate, "ready")):
    time.sleep(0.02)
notifier.notify("READY=1")
while not os.path.exists(os.path.join(gate, "hang")):
    notifier.notify("WATCHDOG=1")
    time.sleep(0.2)
time.sleep(3600)
"#;

/// Families `/metrics` must hold (as `prometheus_client` names them: counters without
/// `_total`).
const FAMILIES: &[&str] = &[
    "arbiter_workers_live",
    "arbiter_workers_target",
    "arbiter_workers_ready",
    "arbiter_generation",
    "arbiter_stopping",
    "arbiter_worker_spawns",
    "arbiter_worker_spawn_failures",
    "arbiter_worker_exits",
    "arbiter_slot_restarts",
    "arbiter_reloads",
    "arbiter_upgrades",
    "arbiter_worker_heartbeat_age_seconds",
    "arbiter_master_resident_memory_bytes",
    "arbiter_master_cpu_seconds",
    "arbiter_master_uptime_seconds",
    "arbiter_gpu_workers",
];

/// One client: its name (with version) and worker command.
struct Client {
    name: String,
    command: Vec<String>,
}

/// Runs every client; one report line each, or the first failure.
pub(super) fn run(
    arbiter: &Path,
    venv: &Path,
    scratch: &Path,
) -> Vec<(String, Result<String, String>)> {
    let mut results = Vec::new();
    if let Err(e) = fs::create_dir_all(scratch) {
        return vec![(
            "clients".to_owned(),
            Err(format!("{}: {e}", scratch.display())),
        )];
    }
    let clients = match clients(venv, scratch) {
        Ok(clients) => clients,
        Err(e) => return vec![("clients".to_owned(), Err(e))],
    };
    for client in clients {
        let dir = scratch.join(client.name.split_whitespace().next().unwrap_or("client"));
        let result = fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| check(arbiter, venv, &dir, &client));
        results.push((client.name, result));
    }
    results
}

fn clients(venv: &Path, scratch: &Path) -> Result<Vec<Client>, String> {
    let mut clients = Vec::new();
    match find_in_path("systemd-notify") {
        Some(tool) => {
            let version = first_line(Command::new(&tool).arg("--version"))?;
            clients.push(Client {
                name: format!("systemd-notify ({version})"),
                command: vec!["/bin/sh".into(), "-c".into(), SHELL_WORKER.into()],
            });
        }
        None => println!("systemd-notify: skipped: not installed"),
    }
    let script = scratch.join("sdnotify_worker.py");
    fs::write(&script, PYTHON_WORKER).map_err(|e| e.to_string())?;
    let python = venv.join("python");
    let version = first_line(Command::new(&python).args([
        "-c",
        "import importlib.metadata as m; print(m.version('sdnotify'))",
    ]))?;
    clients.push(Client {
        name: format!("python sdnotify {version}"),
        command: vec![python.display().to_string(), script.display().to_string()],
    });
    clients.push(Client {
        name: "rust sd-notify 0.5".to_owned(),
        command: vec![rust_worker()?.display().to_string()],
    });
    Ok(clients)
}

/// Builds `examples/sd_notify_worker.rs`; returns its path.
fn rust_worker() -> Result<PathBuf, String> {
    common::run(
        Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "xtask",
                "--example",
                "sd_notify_worker",
            ])
            .current_dir(common::root()),
    )?;
    let path = common::root().join("target/debug/examples/sd_notify_worker");
    path.is_file()
        .then_some(path)
        .ok_or_else(|| "the sd_notify_worker example was not built".into())
}

fn first_line(command: &mut Command) -> Result<String, String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or("?")
        .trim()
        .to_owned())
}

/// The steps of the module doc for one client.
fn check(arbiter: &Path, venv: &Path, dir: &Path, client: &Client) -> Result<String, String> {
    let port = common::free_port();
    let metrics = common::free_port();
    let gate = dir.join("gate");
    fs::create_dir_all(&gate).map_err(|e| e.to_string())?;
    let mut command = Command::new(arbiter);
    command
        .args([
            "-w",
            &WORKERS.to_string(),
            "--ready",
            "notify",
            "--timeout",
            "2s",
        ])
        .args([
            "--abort-grace",
            "0.5s",
            "--graceful-timeout",
            "5s",
            "--gpus",
            "0,1",
        ])
        .arg("-b")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--metrics-bind")
        .arg(format!("127.0.0.1:{metrics}"))
        .arg("-e")
        .arg(format!("CLIENT_GATE={}", gate.display()))
        .arg("--")
        .args(&client.command)
        .current_dir(dir);
    let mut master = Master::spawn(command, dir.join("master.log"))?;
    steps(&mut master, venv, &gate, metrics).map_err(|e| master.with_log(e))
}

fn steps(master: &mut Master, venv: &Path, gate: &Path, port: u16) -> Result<String, String> {
    let start = Instant::now();
    let first = master.wait_workers(|w| w.len() == WORKERS)?;
    let values = scrape(master, port, "both workers live, none ready", |m| {
        value(m, "arbiter_workers_live") == Some(WORKERS as f64)
    })?;
    let (status, _) = common::http_get(port, "/readyz", Duration::from_secs(5))?;
    if status != 503 || value(&values, "arbiter_workers_ready") != Some(0.0) {
        return Err(format!(
            "before any READY=1: /readyz {status}, arbiter_workers_ready {:?} (expected 503, 0)",
            value(&values, "arbiter_workers_ready")
        ));
    }

    touch(&gate.join("ready"))?;
    scrape(master, port, "both workers ready", |m| {
        value(m, "arbiter_workers_ready") == Some(WORKERS as f64)
    })?;
    let (status, _) = common::http_get(port, "/readyz", Duration::from_secs(5))?;
    if status != 200 {
        return Err(format!("after READY=1 from both workers: /readyz {status}"));
    }
    let ready = start.elapsed();
    scrape(master, port, "both workers heartbeating", |m| {
        value(m, "arbiter_worker_heartbeat_age_seconds_count") == Some(WORKERS as f64)
    })?;

    touch(&gate.join("hang"))?;
    let hung = Instant::now();
    scrape(
        master,
        port,
        "both workers killed for the heartbeat timeout",
        |m| {
            labelled(m, "arbiter_worker_exits_total", "cause=\"timeout\"")
                .is_some_and(|n| n >= WORKERS as f64)
        },
    )?;
    let killed = hung.elapsed();
    let now = master.wait_workers(|w| w.len() == WORKERS && w.is_disjoint(&first))?;

    let (_, text) = common::http_get(port, "/metrics", Duration::from_secs(5))?;
    let parsers = parse_metrics(venv, &text)?;

    master.track();
    let (status, stopped) = master.stop()?;
    if status.code() != Some(0) {
        return Err(format!("TERM: exit {status}, expected 0"));
    }
    let left = master.leftovers();
    if !left.is_empty() {
        return Err(format!("TERM: processes left: {left:?}"));
    }
    Ok(format!(
        "/readyz 503 until READY=1, then 200 ({} from the start); WATCHDOG=1 counted for both; \
         pings stopped -> both killed for the 2s timeout after {}, replaced by {now:?}; \
         /metrics: {parsers}; TERM: exit 0 in {}, no process left",
        secs(ready),
        secs(killed),
        secs(stopped)
    ))
}

fn touch(path: &Path) -> Result<(), String> {
    fs::write(path, b"").map_err(|e| format!("{}: {e}", path.display()))
}

/// The samples of an exposition text: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    samples.get(name).copied()
}

fn labelled(samples: &BTreeMap<String, f64>, name: &str, labels: &str) -> Option<f64> {
    samples.get(&format!("{name}{{{labels}}}")).copied()
}

/// Scrapes `/metrics` until `done` holds (bounded); returns the last samples.
fn scrape(
    master: &mut Master,
    port: u16,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> Result<BTreeMap<String, f64>, String> {
    let start = Instant::now();
    loop {
        master.check_running()?;
        let last = common::http_get(port, "/metrics", Duration::from_secs(2))
            .map(|(_, body)| samples(&body));
        if let Ok(samples) = &last {
            if done(samples) {
                return Ok(samples.clone());
            }
        }
        if start.elapsed() > STEP_LIMIT {
            return Err(format!(
                "not {what} within {STEP_LIMIT:?}; last scrape: {last:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `promtool check metrics` and `prometheus_client`'s parser on `text`; each must first
/// reject a bad exposition.
fn parse_metrics(venv: &Path, text: &str) -> Result<String, String> {
    let mut report = Vec::new();
    match find_in_path("promtool") {
        None => report.push("promtool skipped (not installed)".to_owned()),
        Some(promtool) => {
            let bad = "# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n";
            if promtool_check(&promtool, bad)?.is_empty() {
                return Err(
                    "promtool check metrics found nothing wrong with a counter named \
                            without _total"
                        .into(),
                );
            }
            let said = promtool_check(&promtool, text)?;
            if !said.is_empty() {
                return Err(format!("promtool check metrics: {said}\n{text}"));
            }
            let version = first_line(Command::new(&promtool).arg("--version"))?;
            report.push(format!(
                "promtool ({version}) check metrics: no error or warning"
            ));
        }
    }
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        families = list(parse(sys.stdin.read()))\n\
        print(' '.join(f.name for f in families))\n";
    let families = python(venv, script, text)?;
    if python(venv, script, "arbiter_workers_live{ 2\n").is_ok() {
        return Err("prometheus_client parsed a malformed sample".into());
    }
    let names: Vec<&str> = families.split_whitespace().collect();
    let missing: Vec<&&str> = FAMILIES.iter().filter(|f| !names.contains(f)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "prometheus_client found no {missing:?} in /metrics: {names:?}"
        ));
    }
    report.push(format!(
        "prometheus_client parses all {} families",
        names.len()
    ));
    Ok(report.join("; "))
}

/// promtool's complaints about `text` (empty when none); an error when it cannot run.
fn promtool_check(promtool: &Path, text: &str) -> Result<String, String> {
    let output = with_stdin(Command::new(promtool).args(["check", "metrics"]), text)?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match (output.status.success(), said.trim().is_empty()) {
        (true, true) => Ok(String::new()),
        (_, false) => Ok(said.trim().to_owned()),
        (false, true) => Ok(format!("{} with no message", output.status)),
    }
}

/// Runs `script` with the venv's python, `input` on stdin; its stdout, or an error.
fn python(venv: &Path, script: &str, input: &str) -> Result<String, String> {
    let output = with_stdin(
        Command::new(venv.join("python")).args(["-c", script]),
        input,
    )?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn with_stdin(command: &mut Command, input: &str) -> Result<std::process::Output, String> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{command:?}: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    child.wait_with_output().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_by_name_and_labels() {
        let text = "# HELP a A.\n# TYPE a gauge\na 2\nb_total{cause=\"timeout\"} 3\n\
                    h_bucket{le=\"+Inf\"} 1\n";
        let s = samples(text);
        assert_eq!(value(&s, "a"), Some(2.0));
        assert_eq!(labelled(&s, "b_total", "cause=\"timeout\""), Some(3.0));
        assert_eq!(labelled(&s, "h_bucket", "le=\"+Inf\""), Some(1.0));
        assert_eq!(value(&s, "missing"), None);
    }
}
