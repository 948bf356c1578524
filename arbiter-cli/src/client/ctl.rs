//! `arbiter ctl`: talks to a running arbiter over its control socket.
//!
//! The socket is `--control-socket PATH` (or `ARBITER_CONTROL_SOCKET`), else `PIDFILE.ctl`
//! for `--pidfile PATH` (or `ARBITER_PIDFILE`), else `$XDG_RUNTIME_DIR/arbiter.ctl`. Exit
//! codes: 0 done, 1 the arbiter answered with a failure, 2 bad usage, 3 no answer (cannot
//! connect: is arbiter running? or the connection broke or timed out).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::protocol::path;
use crate::protocol::{Request, StatusReport};
use crate::Failure;

/// Ask a running arbiter questions and give it orders.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 done, 1 the arbiter answered with a failure, 2 bad usage, \
                  3 no answer (not running, connection lost, or --timeout)."
)]
pub struct Args {
    /// The control socket [default: PIDFILE.ctl, else $XDG_RUNTIME_DIR/arbiter.ctl]
    #[arg(short = 's', long, env = "ARBITER_CONTROL_SOCKET", value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// The running arbiter's pidfile (its socket is PATH.ctl)
    #[arg(short, long, env = "ARBITER_PIDFILE", value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// Print the raw JSON answer
    #[arg(id = "ctl_json", long = "json", global = true)]
    json: bool,
    /// How long to wait for the answer
    #[arg(id = "ctl_timeout", long = "timeout", value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: CtlCommand,
}

/// What `arbiter ctl` asks for.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// The master and every worker, as a table
    Status,
    /// Set the number of workers; returns when that many are ready
    Scale {
        /// The new number of workers (at least 1)
        workers: usize,
    },
    /// Re-read the configuration and roll the workers; returns when the roll completes
    Reload,
    /// Stop the arbiter; returns when it has exited
    Stop {
        /// Quick stop (the quick signal instead of TERM)
        #[arg(long)]
        quick: bool,
    },
    /// Stop one worker; returns when it has exited and been replaced
    KillWorker {
        /// The worker's pid
        pid: i32,
    },
}

/// Runs `arbiter ctl`: sends one request and prints the answer. `Ok` carries the exit code
/// for an answer (0 done, 1 the arbiter reported a failure); `Err` a usage error (2) or no
/// answer (3).
pub fn run(args: &Args) -> Result<u8, Failure> {
    let Some(socket) = args
        .control_socket
        .clone()
        .or_else(|| path::default_path(args.pidfile.as_deref(), |k| std::env::var_os(k)))
    else {
        return Err(Failure::new(
            "arbiter ctl: no control socket: give --control-socket or --pidfile",
            2,
        ));
    };
    let request = match &args.command {
        CtlCommand::Status => Request::Status,
        CtlCommand::Scale { workers } => Request::Scale { workers: *workers },
        CtlCommand::Reload => Request::Reload,
        CtlCommand::Stop { quick } => Request::Stop { quick: *quick },
        CtlCommand::KillWorker { pid } => Request::KillWorker { pid: *pid },
    };
    let (line, mut rest) = exchange(&socket, &request, args.timeout)
        .map_err(|why| Failure::new(format!("arbiter ctl: {why}"), 3))?;
    let code = report(&request, &line, args.json);
    if code == 0 && matches!(request, Request::Stop { .. }) {
        // The master closes the connection when it exits.
        let mut sink = Vec::new();
        if std::io::Read::read_to_end(&mut rest, &mut sink).is_err() {
            return Err(Failure::new(
                format!("arbiter ctl: no exit seen within {:?}", args.timeout),
                3,
            ));
        }
        if !args.json {
            println!("stopped");
        }
    }
    Ok(code)
}

/// Sends the request, reads the answer line; returns it and the reader for what follows.
fn exchange(
    socket: &std::path::Path,
    request: &Request,
    timeout: Duration,
) -> Result<(String, BufReader<UnixStream>), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to {}: {e}: is arbiter running?",
            socket.display()
        )
    })?;
    let limit = (!timeout.is_zero()).then_some(timeout);
    let _ = stream.set_read_timeout(limit);
    let _ = stream.set_write_timeout(limit);
    stream
        .write_all(request.to_line().as_bytes())
        .map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("the arbiter closed the connection without answering".into()),
        Ok(_) => Ok((line, reader)),
        Err(e) => Err(format!("no answer: {e}")),
    }
}

/// Prints the answer; returns the exit code.
fn report(request: &Request, line: &str, json: bool) -> u8 {
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(value) => value,
        Err(e) => {
            eprintln!("arbiter ctl: unreadable answer ({e}): {}", line.trim_end());
            return 3;
        }
    };
    let ok = value["ok"].as_bool().unwrap_or(false);
    if json {
        println!("{}", line.trim_end());
    } else if !ok {
        let error = value["error"].as_str().unwrap_or("unknown error");
        eprintln!("arbiter ctl: {error}");
    } else {
        match request {
            Request::Status => match serde_json::from_value::<StatusReport>(value.clone()) {
                Ok(status) => print!("{}", status_table(&status)),
                Err(e) => {
                    eprintln!("arbiter ctl: unreadable status ({e})");
                    return 3;
                }
            },
            Request::Scale { workers } => println!("{workers} workers ready"),
            Request::Reload => println!("reloaded: generation {} serving", value["generation"]),
            Request::Stop { .. } => println!("stopping"),
            Request::KillWorker { pid } => match value["replacement"].as_i64() {
                Some(new) => println!("worker {pid} exited; replaced by {new}"),
                None => println!("worker {pid} exited"),
            },
        }
    }
    if ok {
        0
    } else {
        1
    }
}

/// The status as a table for people.
fn status_table(status: &StatusReport) -> String {
    let m = &status.master;
    let mut out = format!(
        "master {}  uptime {}  phase {}  generation {}  workers {}/{} live, {} ready\n",
        m.pid,
        seconds(m.uptime_s),
        m.phase,
        m.generation,
        m.live,
        m.target,
        m.ready
    );
    let rows: Vec<[String; 10]> = status
        .workers
        .iter()
        .map(|w| {
            [
                w.pid.map_or("-".into(), |p| p.to_string()),
                w.id.to_string(),
                w.slot.to_string(),
                if w.gpus.is_empty() {
                    "-".into()
                } else {
                    w.gpus.join(",")
                },
                match &w.recycling {
                    // Still serving; its replacement is on the way.
                    Some(why) => format!("{}:recycle-{why}", w.state),
                    None => w.state.clone(),
                },
                seconds(w.age_s),
                w.heartbeat_age_s.map_or("-".into(), seconds),
                if w.ready { "yes" } else { "no" }.into(),
                w.restarts.to_string(),
                w.rss_bytes.map_or("-".into(), mib),
            ]
        })
        .collect();
    let header = [
        "PID",
        "ID",
        "SLOT",
        "GPUS",
        "PHASE",
        "AGE",
        "HEARTBEAT",
        "READY",
        "RESTARTS",
        "RSS",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MasterStatus, WorkerStatus};

    #[test]
    fn the_table_has_a_header_and_one_aligned_row_per_worker() {
        let status = StatusReport {
            ok: true,
            master: MasterStatus {
                pid: 10,
                uptime_s: 75.0,
                phase: "running".into(),
                generation: 2,
                target: 2,
                live: 1,
                ready: 1,
            },
            workers: vec![WorkerStatus {
                pid: Some(4242),
                id: 7,
                slot: 1,
                generation: 2,
                gpus: vec!["0".into()],
                state: "ready".into(),
                age_s: 3.25,
                heartbeat_age_s: None,
                ready: true,
                restarts: 3,
                rss_bytes: Some(3 * 1024 * 1024),
                recycling: None,
            }],
        };
        let table = status_table(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].contains("master 10") && lines[0].contains("uptime 1m15s"));
        assert!(lines[1].starts_with("PID "));
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cells,
            ["4242", "7", "1", "0", "ready", "3.2s", "-", "yes", "3", "3.0M"]
        );
        assert_eq!(lines[1].find("SLOT"), lines[2].find(" 1 ").map(|i| i + 1));
        let mut recycling = status.clone();
        recycling.workers[0].recycling = Some("memory".into());
        let table = status_table(&recycling);
        let cells: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(cells[4], "ready:recycle-memory");
        // The field is left out of the JSON when not recycling, and read back either way.
        let json = serde_json::to_string(&status.workers[0]).unwrap();
        assert!(!json.contains("recycling"), "{json}");
        let back: WorkerStatus =
            serde_json::from_str(&serde_json::to_string(&recycling.workers[0]).unwrap()).unwrap();
        assert_eq!(back.recycling.as_deref(), Some("memory"));
    }

    #[test]
    fn failures_exit_1_and_successes_0() {
        assert_eq!(
            report(&Request::Reload, r#"{"ok":false,"error":"x"}"#, true),
            1
        );
        assert_eq!(
            report(&Request::Reload, r#"{"ok":true,"generation":1}"#, true),
            0
        );
        assert_eq!(report(&Request::Reload, "garbage", true), 3);
    }
}
