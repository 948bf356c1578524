//! `cargo xtask integration`: the release arbiter with real servers no one here wrote
//! (uvicorn, gunicorn, node) as its workers, under `systemd-socket-activate`, and with the
//! worker protocol spoken and the metrics parsed by other people's clients ([`clients`]).
//!
//! For each server: start `arbiter -w 2`, wait until it serves, make 50 requests, find the two
//! workers among the master's children in `/proc`, SIGKILL one and see it replaced (and its own
//! children gone), HUP and see both replaced, TERM and see exit 0 within the graceful timeout
//! with no process left. Every wait is bounded, all traffic goes to 127.0.0.1 or a unix path in
//! a scratch directory, and every process seen is killed by pid (checked by start time) when a
//! step fails.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

mod clients;

use crate::common;
use crate::process::{
    descendants, find_in_path, secs, signal, wait_gone, Http, Master, Scratch, LINGER, SERVE_LIMIT,
};

/// Workers each arbiter runs.
const WORKERS: usize = 2;
/// Requests made after each step.
const REQUESTS: usize = 50;
/// The graceful timeout given to arbiter; TERM must end the master within it (the
/// [`Master`]'s default stop limit adds 2 s of slack).
const GRACEFUL: Duration = Duration::from_secs(10);
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

/// The groups of checks, in order; `cargo xtask integration GROUP...` runs only those named.
const GROUPS: &[&str] = &["peers", "systemd", "clients"];

/// Runs every check (or the groups named in `only`); fails if any failed (after running the
/// others).
pub fn run(only: &[String]) -> Result<(), String> {
    if let Some(unknown) = only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        return Err(format!(
            "unknown group {unknown:?}; groups: {}",
            GROUPS.join(", ")
        ));
    }
    let wanted = |group: &str| only.is_empty() || only.iter().any(|g| g == group);
    let arbiter = common::arbiter_release()?;
    let venv = common::venv(&[
        "uvicorn",
        "gunicorn>=23",
        "sdnotify==0.3.2",
        "prometheus-client==0.26.0",
    ])?;
    let scratch = Scratch::new("integration")?;
    fs::write(scratch.path().join("app.py"), APP_PY).map_err(|e| format!("app.py: {e}"))?;

    let peers = if wanted("peers") {
        peers(&venv)?
    } else {
        Vec::new()
    };
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
    match find_in_path("systemd-socket-activate").filter(|_| wanted("systemd")) {
        None if wanted("systemd") => {
            println!("systemd: skipped: systemd-socket-activate not installed")
        }
        None => {}
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
    let clients = if wanted("clients") {
        clients::run(&arbiter, &venv, &scratch.path().join("clients"))
    } else {
        Vec::new()
    };
    for (name, result) in clients {
        match result {
            Ok(line) => println!("{name}: {line}"),
            Err(e) => {
                println!("{name}: FAILED: {e}");
                failed.push("protocol clients");
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
