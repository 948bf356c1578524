//! `cargo xtask libmode-bench`: arbiter's library mode side by side with gunicorn
//! `--preload`, in one run, on the same machine: a master that loads a large read-only table
//! once (Rust: the `preload` example of arbiter-cli; Python: a bytes object built when the app
//! module is imported), then forks workers that share it copy-on-write.
//!
//! Two measurements, each on both servers:
//! - memory: with 4 workers (`--workers`), each worker's PSS, USS (private clean + dirty) and
//!   RSS from `/proc/PID/smaps_rollup`, after every worker has answered lookups in the table;
//! - crash to replacement serving: both servers at once with one worker each; SIGKILL a
//!   worker and time until a request is answered by a new pid (the connection waits in the
//!   listen backlog meanwhile), `--crashes` times each, alternating between the servers, each
//!   worker having lived more than a second so no crash-loop backoff applies.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use crate::common;

/// The task's usage.
pub const USAGE: &str = "\
usage: cargo xtask libmode-bench [--table-mib N] [--workers N] [--crashes N]

Runs arbiter's library-mode example (arbiter-cli/examples/preload.rs, a release build; once
with 4 KiB pages as Python has, once with --huge-pages) and gunicorn 27.0.1 --preload (sync
workers, pip-installed in target/xtask-venv) with the same preloaded table, and prints
per-worker PSS/USS/RSS and the time from SIGKILL of a worker to a request answered by its
replacement, side by side.

  --table-mib N   size of the preloaded table in MiB (default 200)
  --workers N     workers for the memory measurement (default 4)
  --crashes N     crashes timed per server (default 10)";

/// gunicorn's version, as in the other benchmarks.
const GUNICORN: &str = "gunicorn==27.0.1";

/// The task's options.
pub struct Options {
    table_mib: usize,
    workers: usize,
    crashes: usize,
}

/// Parses the task's arguments; `None` for `--help`.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut options = Options {
        table_mib: 200,
        workers: 4,
        crashes: 10,
    };
    let mut items = args.iter();
    while let Some(arg) = items.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            items
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--table-mib" => options.table_mib = value("--table-mib")?,
            "--workers" => options.workers = value("--workers")?,
            "--crashes" => options.crashes = value("--crashes")?,
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(Some(options))
}

/// Runs the benchmark.
pub fn run(options: Options) -> Result<(), String> {
    common::run(
        Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "arbiter-cli",
                "--example",
                "preload",
            ])
            .current_dir(common::root()),
    )?;
    let preload = common::root().join("target/release/examples/preload");
    let venv = common::venv(&[GUNICORN])?;
    let scratch = tempfile::Builder::new()
        .prefix("libmode-bench.")
        .tempdir()
        .map_err(|e| e.to_string())?;
    fs::write(
        scratch.path().join("preload_app.py"),
        python_app(options.table_mib),
    )
    .map_err(|e| e.to_string())?;
    let servers = [
        Server::Arbiter {
            binary: preload.clone(),
            huge_pages: false,
        },
        Server::Arbiter {
            binary: preload.clone(),
            huge_pages: true,
        },
        Server::Gunicorn {
            binary: venv.join("gunicorn"),
            dir: scratch.path().to_path_buf(),
        },
    ];
    println!(
        "library mode vs gunicorn --preload: table {} MiB, {} workers (memory), {} crashes",
        options.table_mib, options.workers, options.crashes
    );
    let mut memory = Vec::new();
    for server in &servers {
        memory.push(measure_memory(server, &options)?);
    }
    let crashes = measure_crashes(&servers, &options)?;
    report(&servers, &memory, &crashes);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average during the run (1, 5, 15 min): {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// The gunicorn app: the table is built when the module is imported (in the master, with
/// `--preload`); `/` answers the pid, `/lookup/N` a byte of the table.
fn python_app(table_mib: usize) -> String {
    format!(
        r#"import os
TABLE = bytes(range(256)) * (({table_mib} << 20) // 256)

def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/lookup/"):
        i = int(path[len("/lookup/"):])
        body = "index={{}} value={{}} pid={{}}\n".format(i, TABLE[i], os.getpid())
    else:
        body = "pid={{}} table_mib={{}}\n".format(os.getpid(), len(TABLE) >> 20)
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
"#
    )
}

enum Server {
    Arbiter { binary: PathBuf, huge_pages: bool },
    Gunicorn { binary: PathBuf, dir: PathBuf },
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Arbiter {
                huge_pages: false, ..
            } => "arbiter library mode",
            Server::Arbiter {
                huge_pages: true, ..
            } => "arbiter, huge pages",
            Server::Gunicorn { .. } => "gunicorn --preload",
        }
    }

    fn start(&self, table_mib: usize, workers: usize, port: u16) -> Result<Running, String> {
        let bind = format!("127.0.0.1:{port}");
        let workers = workers.to_string();
        let mut command = match self {
            Server::Arbiter { binary, huge_pages } => {
                let mut command = Command::new(binary);
                if *huge_pages {
                    command.arg("--huge-pages");
                }
                command.args([
                    "--table-mib",
                    &table_mib.to_string(),
                    "-w",
                    &workers,
                    "-b",
                    &bind,
                    "--log-level",
                    "warning",
                ]);
                command
            }
            Server::Gunicorn { binary, dir } => {
                let mut command = Command::new(binary);
                command
                    .args([
                        "--preload",
                        "--no-control-socket",
                        "-w",
                        &workers,
                        "-b",
                        &bind,
                        "--log-level",
                        "warning",
                        "preload_app:app",
                    ])
                    .current_dir(dir);
                command
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|e| format!("{}: {e}", self.name()))?;
        Ok(Running { child, port })
    }
}

/// A server under test; killed with its process group when dropped.
struct Running {
    child: Child,
    port: u16,
}

impl Running {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn workers(&self) -> Vec<i32> {
        crate::bench::procfs::children(self.pid())
    }

    /// Waits until `n` workers exist and each has answered `/`.
    fn wait_workers(&self, n: usize, limit: Duration) -> Result<Vec<i32>, String> {
        let deadline = Instant::now() + limit;
        let mut answered = std::collections::BTreeSet::new();
        loop {
            let workers = self.workers();
            if workers.len() == n {
                if let Some(pid) = served_by(self.port, Duration::from_secs(2)) {
                    answered.insert(pid);
                }
                answered.retain(|pid| workers.contains(pid));
                if answered.len() == n {
                    return Ok(workers);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{n} workers not all serving after {limit:?} (workers {workers:?}, answered {answered:?})"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.pid();
        crate::bench::procfs::kill(pid, libc::SIGTERM);
        if crate::bench::procfs::wait_exit(pid, Duration::from_secs(10)).is_none() {
            crate::bench::procfs::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // Workers of a killed master die by their parent-death signal or with the group.
        crate::bench::procfs::kill(-pid, libc::SIGKILL);
    }
}

/// The pid in the body of `GET /` (`pid=N ...`).
fn served_by(port: u16, timeout: Duration) -> Option<i32> {
    let (status, body) = common::http_get(port, "/", timeout).ok()?;
    (status == 200).then_some(())?;
    body.split_whitespace()
        .find_map(|f| f.strip_prefix("pid="))?
        .parse()
        .ok()
}

/// KiB figures of one process, from `/proc/PID/smaps_rollup`.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    pss: u64,
    uss: u64,
    rss: u64,
}

fn smaps_rollup(pid: i32) -> Result<Memory, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("smaps_rollup of {pid}: {e}"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        pss: field("Pss:"),
        uss: field("Private_Clean:") + field("Private_Dirty:"),
        rss: field("Rss:"),
    })
}

struct MemoryResult {
    master: Memory,
    workers: Vec<Memory>,
}

fn measure_memory(server: &Server, options: &Options) -> Result<MemoryResult, String> {
    let running = server.start(options.table_mib, options.workers, common::free_port())?;
    let workers = running.wait_workers(options.workers, Duration::from_secs(120))?;
    // Every worker reads across the table (a lookup per MiB, spread over the workers).
    for mib in 0..options.table_mib {
        let path = format!("/lookup/{}", (mib << 20) + 12345);
        common::http_get(running.port, &path, Duration::from_secs(5))?;
    }
    let master = smaps_rollup(running.pid())?;
    let workers = workers
        .iter()
        .map(|&pid| smaps_rollup(pid))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MemoryResult { master, workers })
}

/// Both servers at once with one worker each, their crashes alternating, so a change in the
/// machine's load hits both alike.
fn measure_crashes(servers: &[Server], options: &Options) -> Result<Vec<Vec<Duration>>, String> {
    let running = servers
        .iter()
        .map(|server| server.start(options.table_mib, 1, common::free_port()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut workers = Vec::new();
    for server in &running {
        workers.push(server.wait_workers(1, Duration::from_secs(120))?[0]);
    }
    let mut times = vec![Vec::new(); servers.len()];
    for _ in 0..options.crashes {
        for (index, server) in running.iter().enumerate() {
            // Past arbiter's quick-death window (1 s), so the replacement is immediate.
            std::thread::sleep(Duration::from_millis(600));
            let killed_at = Instant::now();
            crate::bench::procfs::kill(workers[index], libc::SIGKILL);
            let deadline = killed_at + Duration::from_secs(30);
            loop {
                match served_by(server.port, Duration::from_secs(5)) {
                    Some(pid) if pid != workers[index] => {
                        times[index].push(killed_at.elapsed());
                        workers[index] = pid;
                        break;
                    }
                    _ if Instant::now() >= deadline => {
                        return Err(format!(
                            "{}: no replacement within 30 s",
                            servers[index].name()
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(times)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn report(servers: &[Server], memory: &[MemoryResult], crashes: &[Vec<Duration>]) {
    let mib = |kib: f64| kib / 1024.0;
    println!();
    println!(
        "{:<24} {:>14} {:>14} {:>14} {:>16} {:>16}",
        "per worker (median)", "PSS MiB", "USS MiB", "RSS MiB", "master PSS MiB", "total PSS MiB"
    );
    for (server, result) in servers.iter().zip(memory) {
        let of =
            |f: fn(&Memory) -> u64| median(result.workers.iter().map(|m| f(m) as f64).collect());
        let total = result.master.pss + result.workers.iter().map(|m| m.pss).sum::<u64>();
        println!(
            "{:<24} {:>14.1} {:>14.1} {:>14.1} {:>16.1} {:>16.1}",
            server.name(),
            mib(of(|m| m.pss)),
            mib(of(|m| m.uss)),
            mib(of(|m| m.rss)),
            mib(result.master.pss as f64),
            mib(total as f64)
        );
    }
    println!();
    println!(
        "{:<24} {:>14} {:>14} {:>14} {:>14}",
        "crash to serving", "median ms", "min ms", "max ms", "runs"
    );
    for (server, times) in servers.iter().zip(crashes) {
        let ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
        let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ms.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<24} {:>14.2} {:>14.2} {:>14.2} {:>14}",
            server.name(),
            median(ms.clone()),
            min,
            max,
            ms.len()
        );
    }
    let pss = |r: &MemoryResult| median(r.workers.iter().map(|m| m.pss as f64).collect());
    let uss = |r: &MemoryResult| median(r.workers.iter().map(|m| m.uss as f64).collect());
    let crash = |t: &[Duration]| median(t.iter().map(|d| d.as_secs_f64()).collect());
    if let (Some(theirs), Some(their_times)) = (memory.last(), crashes.last()) {
        println!();
        for ((server, ours), our_times) in servers.iter().zip(memory).zip(crashes) {
            if std::ptr::eq(ours, theirs) {
                continue;
            }
            println!(
                "{} / gunicorn: worker PSS {:.2}, worker USS {:.2}, crash to serving {:.2}",
                server.name(),
                pss(ours) / pss(theirs),
                uss(ours) / uss(theirs),
                crash(our_times) / crash(their_times)
            );
        }
    }
}
