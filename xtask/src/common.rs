//! What every task needs: the workspace root, a release build of arbiter, a Python venv
//! under `target/`, free loopback ports, and bounded HTTP probes.
#![allow(dead_code)] // each task uses a different part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

/// Runs a command to completion, failing with its name on a non-zero exit.
pub fn run(command: &mut Command) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("{command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {status}"))
    }
}

/// Builds the arbiter binary in release mode with the locked dependencies (the container
/// image's build command) and returns its path.
pub fn arbiter_release() -> Result<PathBuf, String> {
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "-p", "arbiter-cli"])
        .current_dir(root()))?;
    let path = root().join("target/release/arbiter");
    path.exists()
        .then_some(path)
        .ok_or_else(|| "target/release/arbiter missing after build".into())
}

/// A Python venv under `target/xtask-venv` with `packages` installed (pip, from PyPI). A
/// package pinned with `NAME==VERSION` is reinstalled when another version is there.
/// Returns the venv's `bin` directory.
pub fn venv(packages: &[&str]) -> Result<PathBuf, String> {
    let dir = root().join("target/xtask-venv");
    let bin = dir.join("bin");
    if !bin.join("python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let name = p.split(['=', '<', '>', '[']).next().unwrap_or(p);
            let shown = Command::new(bin.join("python"))
                .args(["-m", "pip", "show", name])
                .output();
            let Ok(shown) = shown else {
                return true;
            };
            if !shown.status.success() {
                return true;
            }
            match p.split_once("==") {
                None => false,
                Some((_, pinned)) => !String::from_utf8_lossy(&shown.stdout)
                    .lines()
                    .any(|l| l.strip_prefix("Version: ") == Some(pinned)),
            }
        })
        .collect();
    if !missing.is_empty() {
        run(Command::new(bin.join("python"))
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(&missing))?;
    }
    Ok(bin)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// One `GET path` on 127.0.0.1:port with `Connection: close`; returns (status, body).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)
        .map_err(|e| format!("connect {port}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read {port}: {e}"))?;
    parse_response(&response)
}

/// The status and body of a complete HTTP/1.x response.
pub fn parse_response(response: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET /` until it answers 200 or `limit` passes; returns how long it took.
pub fn wait_for_http(port: u16, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(port, "/", Duration::from_millis(500)) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!("port {port} did not serve within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
