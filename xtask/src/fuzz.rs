//! `cargo xtask fuzz [--seconds N] [--jobs J] [TARGET...]`: runs the libFuzzer targets of
//! `fuzz/` (every one, or those named) for N seconds each, J at a time, and prints a table:
//! executions, coverage (libFuzzer's `cov` and `ft`), corpus size, peak RSS, crashes.
//!
//! Builds with `cargo fuzz build -s none -a` (no sanitizer, so it works on stable; debug
//! assertions and overflow checks on), installs cargo-fuzz from crates.io when it is missing,
//! runs each binary on `fuzz/corpus/TARGET` (grown, not committed) and `fuzz/seeds/TARGET`
//! (committed), and writes each log to `target/fuzz-logs/TARGET.log`. A crash, a timeout or
//! running out of memory fails the task, naming the input libFuzzer saved under
//! `fuzz/artifacts/TARGET/`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{root, run as run_command};

const USAGE: &str = "usage: cargo xtask fuzz [--seconds N] [--jobs J] [TARGET...]
  Runs the fuzz targets in fuzz/ (all of them unless named) for N seconds each (default 20),
  J at a time (default 1), and prints executions, coverage and crashes per target.
  --list prints the targets.";

/// Inputs longer than libFuzzer's default of 4096 bytes, for parsers whose limits lie beyond it
/// (the worker's and the metrics server's 8 KiB request heads, the notify socket's 4 KiB
/// receive buffer).
const MAX_LEN: &[(&str, usize)] = &[
    ("http_worker", 20_000),
    ("metrics_request", 12_000),
    ("notify", 5_000),
];

/// Seconds one input may take before libFuzzer calls it a hang: far beyond any parser's time,
/// and beyond the stalls of a loaded 2-core machine (16 s seen with every core busy).
const INPUT_TIMEOUT_S: u64 = 60;

struct Options {
    seconds: u64,
    jobs: usize,
    list: bool,
    targets: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut options = Options {
        seconds: 20,
        jobs: 1,
        list: false,
        targets: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|value| value.parse().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name} needs a positive number\n{USAGE}"))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--seconds" => options.seconds = number("--seconds")?,
            "--jobs" => options.jobs = number("--jobs")? as usize,
            "--list" => options.list = true,
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}\n{USAGE}")),
            target => options.targets.push(target.to_owned()),
        }
    }
    Ok(Some(options))
}

/// Runs the task with its arguments (after `fuzz`).
pub fn run(args: &[String]) -> Result<(), String> {
    let Some(options) = parse_args(args)? else {
        return Ok(());
    };
    ensure_cargo_fuzz()?;
    let known = list_targets()?;
    if options.list {
        println!("{}", known.join("\n"));
        return Ok(());
    }
    for target in &options.targets {
        if !known.contains(target) {
            return Err(format!(
                "no fuzz target {target:?}; targets: {}",
                known.join(", ")
            ));
        }
    }
    let targets = match options.targets.is_empty() {
        true => known,
        false => options.targets.clone(),
    };
    run_command(cargo_fuzz().args(["build", "-s", "none", "-a"]))?;
    let binaries = binary_dir()?;
    let logs = root().join("target/fuzz-logs");
    fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;

    println!(
        "fuzzing {} target(s), {} s each, {} at a time; logs in target/fuzz-logs/",
        targets.len(),
        options.seconds,
        options.jobs
    );
    let mut waiting: Vec<&String> = targets.iter().rev().collect();
    let mut running: Vec<Running> = Vec::new();
    let mut results: Vec<Outcome> = Vec::new();
    while !waiting.is_empty() || !running.is_empty() {
        while running.len() < options.jobs {
            let Some(target) = waiting.pop() else { break };
            running.push(Running::start(&binaries, &logs, target, options.seconds)?);
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for mut job in running {
            match job.poll(options.seconds)? {
                Some(outcome) => {
                    println!("{}", outcome.row());
                    results.push(outcome);
                }
                None => still.push(job),
            }
        }
        running = still;
    }

    results.sort_by(|a, b| a.target.cmp(&b.target));
    println!("\n{}", Outcome::header());
    for outcome in &results {
        println!("{}", outcome.row());
    }
    let failed: Vec<&Outcome> = results.iter().filter(|o| o.failure.is_some()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    for outcome in &failed {
        let log = fs::read_to_string(&outcome.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("\n== {} ({}):", outcome.target, outcome.log.display());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
    Err(failed
        .iter()
        .map(|o| format!("{}: {}", o.target, o.failure.as_deref().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("; "))
}

fn cargo_fuzz() -> Command {
    let mut command = Command::new(env!("CARGO"));
    command.arg("fuzz").current_dir(root());
    command
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    let installed = cargo_fuzz()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        println!("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        run_command(Command::new(env!("CARGO")).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn list_targets() -> Result<Vec<String>, String> {
    let output = cargo_fuzz()
        .arg("list")
        .output()
        .map_err(|e| format!("cargo fuzz list: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo fuzz list: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Where `cargo fuzz build` puts the binaries: `fuzz/target/HOST/release/`.
fn binary_dir() -> Result<PathBuf, String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let host = text
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .ok_or("rustc -vV names no host")?;
    Ok(root().join("fuzz/target").join(host).join("release"))
}

struct Running {
    target: String,
    child: Child,
    started: Instant,
    log: PathBuf,
}

impl Running {
    fn start(binaries: &Path, logs: &Path, target: &str, seconds: u64) -> Result<Running, String> {
        let fuzz = root().join("fuzz");
        let corpus = fuzz.join("corpus").join(target);
        let seeds = fuzz.join("seeds").join(target);
        let artifacts = fuzz.join("artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let log = logs.join(format!("{target}.log"));
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let max_len = MAX_LEN
            .iter()
            .find(|(name, _)| *name == target)
            .map_or(4096, |(_, len)| *len);
        let mut command = Command::new(binaries.join(target));
        command
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={max_len}"))
            .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
            .arg("-rss_limit_mb=1024")
            .arg("-print_final_stats=1")
            .arg(&corpus);
        if seeds.is_dir() {
            command.arg(&seeds);
        }
        let child = command
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{target}: {e} (was it built?)"))?;
        Ok(Running {
            target: target.to_owned(),
            child,
            started: Instant::now(),
            log,
        })
    }

    /// The outcome once the run is over; kills a run that overstays its time by far.
    fn poll(&mut self, seconds: u64) -> Result<Option<Outcome>, String> {
        let status = match self.child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => Some(status),
            None if self.started.elapsed() > Duration::from_secs(seconds * 2 + 120) => {
                let _ = self.child.kill();
                self.child.wait().ok();
                None
            }
            None => return Ok(None),
        };
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let mut outcome = Outcome::from_log(&self.target, &log, self.started.elapsed());
        outcome.log = self.log.clone();
        outcome.failure = match status {
            Some(status) if status.success() => None,
            Some(status) => Some(match saved_input(&log) {
                Some(input) => format!("{status}, input saved as {input}"),
                None => format!("{status}"),
            }),
            None => Some("did not stop; killed".to_owned()),
        };
        Ok(Some(outcome))
    }
}

/// What one run reached, from libFuzzer's log.
struct Outcome {
    target: String,
    seconds: f64,
    executions: u64,
    cov: u64,
    ft: u64,
    corpus: String,
    rss_mb: u64,
    failure: Option<String>,
    log: PathBuf,
}

impl Outcome {
    fn from_log(target: &str, log: &str, elapsed: Duration) -> Outcome {
        let stat = |name: &str| -> u64 {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        // The last status line: `#N  DONE  cov: C ft: F corp: K/SIZE ...`.
        let status = log
            .lines()
            .rev()
            .find(|l| l.starts_with('#') && l.contains(" cov: "))
            .unwrap_or("");
        let field = |name: &str| -> Option<&str> {
            let mut words = status.split_whitespace();
            words.find(|w| *w == name)?;
            words.next()
        };
        let number = |name: &str| field(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        let executions = match stat("number_of_executed_units") {
            0 => status
                .split_whitespace()
                .next()
                .and_then(|w| w.trim_start_matches('#').parse().ok())
                .unwrap_or(0),
            n => n,
        };
        Outcome {
            target: target.to_owned(),
            seconds: elapsed.as_secs_f64(),
            executions,
            cov: number("cov:"),
            ft: number("ft:"),
            corpus: field("corp:").unwrap_or("-").to_owned(),
            rss_mb: stat("peak_rss_mb"),
            failure: None,
            log: PathBuf::new(),
        }
    }

    fn header() -> String {
        format!(
            "{:<18} {:>8} {:>12} {:>7} {:>7} {:>12} {:>7}  result",
            "target", "seconds", "executions", "cov", "ft", "corpus", "rss MB"
        )
    }

    fn row(&self) -> String {
        format!(
            "{:<18} {:>8.0} {:>12} {:>7} {:>7} {:>12} {:>7}  {}",
            self.target,
            self.seconds,
            self.executions,
            self.cov,
            self.ft,
            self.corpus,
            self.rss_mb,
            self.failure.as_deref().unwrap_or("ok")
        )
    }
}

/// The input libFuzzer saved for a failure (`Test unit written to PATH`).
fn saved_input(log: &str) -> Option<String> {
    log.lines()
        .find_map(|l| l.split_once("Test unit written to "))
        .map(|(_, path)| path.trim().to_owned())
}
