//! `cargo xtask bench`: arbiter side by side with gunicorn (sync worker) and uWSGI 2.0, with
//! the floors of the same machine measured in the same run (fork+exec and a signalfd reader
//! in C, compiled at bench time). arbiter runs with two worker kinds: its built-in worker and
//! the heartbeating Python worker `scripts/py_worker.py`, which gunicorn and uWSGI serve as a
//! WSGI app. Medians with min and max, ratios arbiter / other. Writes `BENCHMARKS.md` and
//! `bench.svg`.
//!
//! Everything binds to 127.0.0.1 on free ports, every wait is bounded, and every process is
//! killed by pid through drop guards (xtask is the subreaper of what it starts, so a USR2
//! master whose parent exits is still ours to kill and reap).

mod coresim;
mod floor;
mod load;
pub(crate) mod procfs;
mod report;
mod reuseport;
mod scale;
mod scenarios;
mod servers;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use report::{Better, Figure, Section};

/// The usage text of `cargo xtask bench --help`.
pub const USAGE: &str = "\
usage: cargo xtask bench [--quick] [--only LIST] [--skip LIST] [--no-10k] [--out DIR] [--no-install]

Benchmarks arbiter (built-in and Python workers) against gunicorn, uWSGI and C floors, in one
run, on loopback only. A full run (no --quick, --only or --skip) writes docs/BENCHMARKS.md and
docs/bench.svg; any other run writes target/bench/ unless --out says where. The tables are
also printed on stdout.

options:
  --quick        smoke run: fewer repetitions, smaller sizes, a 3 s idle window, no 10,000
  --only LIST    run only these scenarios (comma-separated names, see below)
  --skip LIST    run all but these scenarios
  --no-10k       the scale scenario stops at 1,000 workers
  --out DIR      write BENCHMARKS.md and bench.svg into DIR
  --no-install   do not apt-get install uWSGI when it is missing (it is then reported as not
                 installed)
  -h, --help     print this help

scenarios: floor, boot, spawn, idle, ttin, hang, stop, reload, overhead, scale, core
  floor     32 x fork+exec and vfork+exec of /bin/true and of Python, from C
  boot      boot to every worker ready, N = 2, 8, 32, against the floors
  spawn     N sleep workers spawned against fork+exec and vfork+exec, N = 32, 1000
  idle      idle master with N = 8, 64, 256, 1000 heartbeating workers: wake-ups, CPU, RSS,
            false timeouts, READY=1 latency, notify queue, graceful stop
  ttin      20 SIGTTIN 0.5 ms apart, against a C signalfd reader
  hang      hung request (GET /hang) with a 2 s timeout, and crash respawn
  stop      graceful stop of 8 idle workers
  reload    HUP and USR2 under load with a slow-loading app
  overhead  throughput behind the master against plain SO_REUSEPORT workers
  scale     1,000 and 10,000 sleep and built-in workers; the limits met
  core      arbiter-core alone: 100,000 workers through 1,000,000 inputs, invariants checked
";

/// Every scenario, in run order.
const SCENARIOS: &[&str] = &[
    "floor", "core", "boot", "spawn", "ttin", "hang", "stop", "reload", "overhead", "idle", "scale",
];

/// How much to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Repetitions of each run.
    pub reps: usize,
    /// Repetitions of the HUP and USR2 runs (6 s each) and of the hung request.
    pub reload_reps: usize,
    /// Worker counts for the boot scenario.
    pub boot_sizes: Vec<usize>,
    /// Worker counts for the spawning scenario.
    pub spawn_sizes: Vec<usize>,
    /// Worker counts for the idle scenario, with repetitions for each.
    pub idle_sizes: Vec<(usize, usize)>,
    /// The idle window.
    pub idle: Duration,
    /// Worker counts for the scale scenario.
    pub scale_sizes: Vec<usize>,
    /// Seconds of wrk / load per overhead run.
    pub overhead_secs: u64,
    /// Workers and inputs of the core simulation.
    pub core: (usize, u64),
}

/// The parsed options of `cargo xtask bench`.
#[derive(Debug)]
pub struct Options {
    quick: bool,
    only: Option<Vec<String>>,
    skip: Vec<String>,
    no_10k: bool,
    out: Option<PathBuf>,
    install: bool,
}

/// Parses the task's arguments (after `bench`); `None` for `--help`.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut options = Options {
        quick: false,
        only: None,
        skip: Vec::new(),
        no_10k: false,
        out: None,
        install: true,
    };
    let list = |value: Option<&String>, flag: &str| -> Result<Vec<String>, String> {
        let value = value.ok_or_else(|| format!("{flag} needs a comma-separated list"))?;
        let names: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
        for name in &names {
            if !SCENARIOS.contains(&name.as_str()) {
                return Err(format!(
                    "{flag}: unknown scenario {name:?}; scenarios: {}",
                    SCENARIOS.join(", ")
                ));
            }
        }
        Ok(names)
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--quick" => options.quick = true,
            "--only" => options.only = Some(list(it.next(), "--only")?),
            "--skip" => options.skip = list(it.next(), "--skip")?,
            "--no-10k" => options.no_10k = true,
            "--no-install" => options.install = false,
            "--out" => {
                let dir = it.next().ok_or("--out needs a directory")?;
                options.out = Some(PathBuf::from(dir));
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(Some(options))
}

fn plan(options: &Options) -> Plan {
    if options.quick {
        Plan {
            reps: 2,
            reload_reps: 1,
            boot_sizes: vec![2, 8],
            spawn_sizes: vec![32],
            idle_sizes: vec![(8, 1), (64, 1)],
            idle: Duration::from_secs(3),
            scale_sizes: vec![1000],
            overhead_secs: 2,
            core: (10_000, 100_000),
        }
    } else {
        Plan {
            reps: 5,
            reload_reps: 3,
            boot_sizes: vec![2, 8, 32],
            spawn_sizes: vec![32, 1000],
            idle_sizes: vec![(8, 2), (64, 1), (256, 1), (1000, 1)],
            idle: Duration::from_secs(10),
            scale_sizes: if options.no_10k {
                vec![1000]
            } else {
                vec![1000, 10_000]
            },
            overhead_secs: 5,
            core: (100_000, 1_000_000),
        }
    }
}

/// Runs the benchmarks.
pub fn run(options: Options) -> Result<(), String> {
    let plan = plan(&options);
    let selected: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| {
            options
                .only
                .as_ref()
                .is_none_or(|o| o.iter().any(|x| x == s))
        })
        .filter(|s| !options.skip.iter().any(|x| x == s))
        .collect();
    let full = !options.quick && options.only.is_none() && options.skip.is_empty();
    let started = Instant::now();
    let load_before = load_average();
    let machine_before = machine_busy_secs();
    procfs::become_subreaper();
    let needs_servers = selected.iter().any(|s| !matches!(*s, "core"));
    let mut sections = Vec::new();
    let mut facts_tools = Vec::new();
    if needs_servers {
        let arbiter = crate::common::arbiter_release()?;
        let venv_bin = crate::common::venv(&["gunicorn"])?;
        let uwsgi = uwsgi(options.install);
        let floor = floor::Floor::build()?;
        let scratch = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let bench = servers::Bench::new(
            arbiter.clone(),
            venv_bin.clone(),
            uwsgi,
            scratch.path().into(),
        )?;
        facts_tools = tool_facts(&bench);
        for &name in &selected {
            let t = Instant::now();
            eprintln!("bench: {name}...");
            let section = match name {
                "floor" => scenarios::floors(&bench, &floor, &plan)?,
                "core" => core(&plan)?,
                "boot" => scenarios::boot(&bench, &floor, &plan)?,
                "spawn" => scenarios::spawning(&bench, &floor, &plan)?,
                "ttin" => scenarios::ttin(&bench, &floor, &plan)?,
                "hang" => scenarios::hung_and_crash(&bench, &plan)?,
                "stop" => scenarios::graceful(&bench, &plan)?,
                "reload" => scenarios::reloads(&bench, &plan)?,
                "overhead" => scenarios::overhead(&bench, &plan)?,
                "idle" => scale::idle(&bench, &floor, &plan)?,
                "scale" => scale::scale(&bench, &floor, &plan)?,
                other => return Err(format!("no scenario {other:?}")),
            };
            eprintln!("bench: {name} done in {:.1}s", t.elapsed().as_secs_f64());
            print!("{}", report::section_markdown(&section));
            sections.push(section);
        }
    } else {
        let section = core(&plan)?;
        print!("{}", report::section_markdown(&section));
        sections.push(section);
    }
    let secs = started.elapsed().as_secs_f64();
    let command = rerun_command(&options);
    let conditions = Conditions {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_start: load_before,
        load_end: load_average(),
        wall_secs: secs,
        machine_cpu_secs: machine_before
            .zip(machine_busy_secs())
            .map(|(before, after)| (after - before).max(0.0)),
        bench_cpu_secs: own_cpu_secs(),
    };
    let facts = machine_facts(&facts_tools, &command, &conditions);
    let dir = match (&options.out, full) {
        (Some(dir), _) => dir.clone(),
        (None, true) => crate::common::root().join("docs"),
        (None, false) => crate::common::root().join("target/bench"),
    };
    fs::create_dir_all(&dir).map_err(|e| format!("{dir:?}: {e}"))?;
    // Log tails quote paths: name the workspace's files relative to it, not by this machine.
    let root = format!("{}/", crate::common::root().display());
    let markdown = document(&conditions, &facts, &sections).replace(&root, "");
    fs::write(dir.join("BENCHMARKS.md"), markdown).map_err(|e| format!("BENCHMARKS.md: {e}"))?;
    fs::write(dir.join("bench.svg"), report::svg(&sections))
        .map_err(|e| format!("bench.svg: {e}"))?;
    eprintln!(
        "bench: wrote {} and bench.svg in {secs:.0}s",
        dir.join("BENCHMARKS.md").display()
    );
    Ok(())
}

/// `cargo xtask bench-core-sim WORKERS INPUTS` (internal): runs the simulation in this
/// process and prints its report on one line, for [`core`] to read from a release build.
pub fn core_sim_task(args: &[String]) -> Result<(), String> {
    let number = |i: usize| -> Result<u64, String> {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| "usage: cargo xtask bench-core-sim WORKERS INPUTS".to_owned())
    };
    let sim = coresim::run(number(0)? as usize, number(1)?)?;
    println!(
        "{} {} {} {} {} {} {} {} {}",
        sim.target_change.as_secs_f64(),
        sim.inputs,
        sim.actions,
        sim.elapsed.as_secs_f64(),
        sim.cpu.as_secs_f64(),
        sim.virtual_time.as_secs_f64(),
        sim.crashes,
        sim.hangs_caught,
        sim.checks
    );
    Ok(())
}

/// The simulation, in a release build of xtask (`cargo xtask` itself is a debug build, which
/// would measure the debug build of the core).
fn core_sim_release(workers: usize, inputs: u64) -> Result<coresim::SimReport, String> {
    if !cfg!(debug_assertions) {
        return coresim::run(workers, inputs);
    }
    let output = Command::new(env!("CARGO"))
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "xtask",
            "--",
            "bench-core-sim",
        ])
        .args([workers.to_string(), inputs.to_string()])
        .current_dir(crate::common::root())
        .output()
        .map_err(|e| format!("cargo run --release -p xtask: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "core simulation failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let fields: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match fields[..] {
        [target_change, inputs, actions, elapsed, cpu, virtual_time, crashes, hangs, checks] => {
            Ok(coresim::SimReport {
                target_change: Duration::from_secs_f64(target_change),
                inputs: inputs as u64,
                actions: actions as u64,
                elapsed: Duration::from_secs_f64(elapsed),
                cpu: Duration::from_secs_f64(cpu),
                virtual_time: Duration::from_secs_f64(virtual_time),
                hangs_caught: hangs as u64,
                crashes: crashes as u64,
                checks: checks as u64,
            })
        }
        _ => Err(format!("core simulation: unexpected output {text:?}")),
    }
}

/// The core simulation as a section.
fn core(plan: &Plan) -> Result<Section, String> {
    let (workers, inputs) = plan.core;
    let sim = core_sim_release(workers, inputs)?;
    let mut cpu = Figure::new(
        format!("{workers} workers through {inputs} inputs: CPU time"),
        "s",
        Better::Lower,
    )
    .charted();
    cpu.push(0, sim.cpu.as_secs_f64());
    cpu.push(1, 10.0);
    let mut wall = Figure::new("the same: wall time (shared machine)", "s", Better::Lower);
    wall.push(0, sim.elapsed.as_secs_f64());
    wall.push(1, 10.0);
    let mut rate = Figure::new("inputs per CPU second", "inputs/s", Better::Higher);
    rate.push(0, sim.inputs as f64 / sim.cpu.as_secs_f64().max(1e-9));
    rate.push(1, inputs as f64 / 10.0);
    let mut change = Figure::new(
        format!("one TTIN or TTOU at {workers} workers: CPU time"),
        "ms",
        Better::Lower,
    );
    change.push(0, sim.target_change.as_secs_f64() * 1e3);
    change.note(1, "—");
    Ok(Section {
        title: "The core alone: a simulation".into(),
        method: format!(
            "`arbiter-core` (release build) driven through its public API on a virtual clock \
             by a simulated world (`xtask/src/bench/coresim.rs`), single-threaded: {workers} workers that \
             send `READY=1` and heartbeat every 3 s under a 5 s timeout; crashes (4 in \
             10,000 steps), hangs (2 in 10,000) and TTIN or TTOU (2 in 10,000; the price of one \
             change of target is also measured apart, as the mean of 5 TTIN + 5 TTOU at the \
             end) at random; a TERM at the end. It fed {} inputs and drained {} \
             actions over {:.0} s of virtual time ({} crashes, {} hung workers aborted), and \
             made {} invariant checks, all passed: no signal to a pid that is not live, no \
             worker id spawned twice, the core's table agrees with the world and never \
             counts more ready than live, its kept counts and indexes (spawn queues, ready and \
             active counts, pid index, deadlines) agree with a recount of its table, no heartbeat timeout for a worker that heartbeated \
             within the timeout, every hung worker aborted within two steps of its deadline, \
             and the stop ends with exit code 0 and no worker left. The goal column is the \
             issue's target: under 10 s on one core.",
            sim.inputs,
            sim.actions,
            sim.virtual_time.as_secs_f64(),
            sim.crashes,
            sim.hangs_caught,
            sim.checks
        ),
        columns: vec!["arbiter-core".into(), "goal".into()],
        ratios: vec![(0, 1)],
        figures: vec![cpu, wall, rate, change],
    })
}

/// uWSGI with its python3 plugin: found, or installed from Debian packages, or `None`.
fn uwsgi(install: bool) -> Option<PathBuf> {
    let found = || {
        let binary = ["/usr/bin/uwsgi", "/usr/bin/uwsgi-core"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())?;
        Path::new("/usr/lib/uwsgi/plugins/python3_plugin.so")
            .exists()
            .then_some(binary)
    };
    if let Some(binary) = found() {
        return Some(binary);
    }
    if !install {
        eprintln!("bench: uWSGI is not installed (--no-install): its columns say so");
        return None;
    }
    eprintln!("bench: installing uWSGI (apt-get install uwsgi-core uwsgi-plugin-python3)...");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = apt(&["update", "-q"])
        && apt(&["install", "-y", "-q", "uwsgi-core", "uwsgi-plugin-python3"]);
    if !installed {
        eprintln!("bench: uWSGI could not be installed: its columns say not installed");
    }
    found()
}

fn output(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_owned()
        })
        .unwrap_or_else(|e| format!("({}: {e})", program.display()))
}

/// The 1, 5 and 15 minute load averages, if `/proc/loadavg` reads.
fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// CPU seconds the whole machine has spent busy since boot (all cores; `/proc/stat`: every
/// state but idle and iowait; guest time is already inside user time).
fn machine_busy_secs() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|&(state, _)| state != 3 && state != 4)
        .map(|(_, &t)| t)
        .sum();
    // SAFETY: sysconf takes an integer name and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 / hz as f64)
}

/// CPU seconds of this process and of every process it started and reaped (xtask is their
/// subreaper, so orphaned grandchildren count too).
fn own_cpu_secs() -> Option<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let secs = |who| {
        getrusage(who).ok().map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
    };
    Some(secs(UsageWho::RUSAGE_SELF)? + secs(UsageWho::RUSAGE_CHILDREN)?)
}

/// Other processes' average use of the machine above which a run counts as shared: a tenth
/// of its cores (more than the machine's own daemons take; a build beside the run takes one
/// core or more).
const SHARED_FRACTION: f64 = 0.1;

/// What the machine did while the benchmark ran, for the header of the report.
#[derive(Clone, Debug, PartialEq)]
struct Conditions {
    /// Cores the benchmark could run on.
    cores: usize,
    /// Load averages (1, 5, 15 min) before the first scenario and after the last.
    load_start: Option<[f64; 3]>,
    load_end: Option<[f64; 3]>,
    /// The run's wall time.
    wall_secs: f64,
    /// CPU seconds the whole machine spent busy over the run (`/proc/stat`).
    machine_cpu_secs: Option<f64>,
    /// CPU seconds of the benchmark and everything it started (`getrusage`).
    bench_cpu_secs: Option<f64>,
}

impl Conditions {
    /// CPU seconds of the other processes over the run: the machine's less the benchmark's.
    fn others_cpu_secs(&self) -> Option<f64> {
        Some((self.machine_cpu_secs? - self.bench_cpu_secs?).max(0.0))
    }

    /// The other processes' average use, in cores.
    fn others_cores(&self) -> Option<f64> {
        Some(self.others_cpu_secs()? / self.wall_secs.max(1e-9))
    }
}

fn loads(load: Option<[f64; 3]>) -> String {
    load.map_or("unknown".into(), |[a, b, c]| {
        format!("{a:.2} {b:.2} {c:.2}")
    })
}

/// The header's paragraph on how loaded the machine was: loaded or quiet at the start by
/// its 1-minute load average against the cores, shared during the run by the CPU time that
/// other processes took, and where a high load at the end came from.
fn conditions_paragraph(c: &Conditions) -> String {
    let cores = c.cores;
    let start = c.load_start.map(|l| l[0]);
    let end = c.load_end.map(|l| l[0]);
    let at_start = match start {
        Some(load) if load > cores as f64 => format!(
            "**The machine was loaded at the start**: its load average was {load:.2} on \
             {cores} cores before the first scenario, from other work sharing it."
        ),
        Some(load) => format!(
            "The machine was quiet at the start: its load average was {load:.2} on {cores} \
             cores before the first scenario."
        ),
        None => format!(
            "The load average at the start could not be read (the machine has {cores} cores)."
        ),
    };
    let shared_above = SHARED_FRACTION * cores as f64;
    let during = match (c.others_cores(), c.others_cpu_secs(), c.machine_cpu_secs) {
        (Some(others), Some(others_secs), Some(machine)) => {
            let share = format!(
                "processes other than this benchmark used {others:.2} cores on average \
                 ({others_secs:.0} of the {machine:.0} CPU-seconds the machine spent busy in \
                 {:.0} s)",
                c.wall_secs
            );
            if others > shared_above {
                format!(
                    " **It was shared during the run**: {share}, so absolute numbers are \
                     noisy."
                )
            } else {
                format!(" During the run {share}: it was not shared.")
            }
        }
        _ => " How much of the machine other processes used during the run could not be \
         measured."
            .to_owned(),
    };
    let at_end = match (end, c.others_cores()) {
        (Some(load), Some(others)) if load > cores as f64 && others <= shared_above => {
            format!(
                " The load average of {load:.2} at the end is the benchmark's own (its last \
                 scenario's workers and masters)."
            )
        }
        (Some(load), _) if load > cores as f64 => format!(
            " The load average was {load:.2} at the end, from the benchmark's workers and the \
             other processes together."
        ),
        (Some(load), _) => format!(" The load average was {load:.2} at the end."),
        (None, _) => String::new(),
    };
    format!(
        "{at_start}{during}{at_end} Runs alternate between the systems, and the ratios are \
         what to read."
    )
}

fn tool_facts(bench: &servers::Bench) -> Vec<String> {
    let arbiter = output(&bench.arbiter, &["--version"]);
    let gunicorn = output(&bench.venv_bin.join("gunicorn"), &["--version"]);
    let python = output(&bench.python(), &["--version"]);
    let uwsgi = match &bench.uwsgi {
        Some(path) => format!(
            "{} (`--master --processes N --http-socket`, python3 plugin, Debian's Python)",
            output(path, &["--version"])
        ),
        None => "not installed".into(),
    };
    let wrk = output(Path::new("wrk"), &["--version"]);
    let wrk = wrk
        .lines()
        .next()
        .filter(|l| !l.starts_with('('))
        .unwrap_or("not installed")
        .to_owned();
    let cc = output(Path::new("cc"), &["--version"]);
    vec![
        format!("- arbiter: {arbiter} (release build)"),
        format!("- gunicorn: {gunicorn} (sync worker), {python}"),
        format!("- uWSGI: {uwsgi}"),
        format!("- Python worker: `scripts/py_worker.py` on {python}"),
        format!(
            "- C compiler (floors): {}",
            cc.lines().next().unwrap_or("?")
        ),
        format!("- wrk: {wrk}"),
    ]
}

fn rerun_command(options: &Options) -> String {
    let mut command = "cargo xtask bench".to_owned();
    if options.quick {
        command.push_str(" --quick");
    }
    if let Some(only) = &options.only {
        command.push_str(&format!(" --only {}", only.join(",")));
    }
    if !options.skip.is_empty() {
        command.push_str(&format!(" --skip {}", options.skip.join(",")));
    }
    if options.no_10k {
        command.push_str(" --no-10k");
    }
    command
}

fn machine_facts(tools: &[String], command: &str, conditions: &Conditions) -> String {
    let secs = conditions.wall_secs;
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let mut lines = vec![
        format!(
            "- date: {}",
            output(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"])
        ),
        format!("- CPU: {cpu}; nproc: {}", output(Path::new("nproc"), &[])),
        format!("- memory: {memory}"),
        format!("- kernel: {}", output(Path::new("uname"), &["-sr"])),
        format!(
            "- load average (1, 5, 15 min): {} at the start, {} at the end",
            loads(conditions.load_start),
            loads(conditions.load_end)
        ),
    ];
    if let (Some(machine), Some(bench), Some(others)) = (
        conditions.machine_cpu_secs,
        conditions.bench_cpu_secs,
        conditions.others_cpu_secs(),
    ) {
        lines.push(format!(
            "- CPU time over the run: {machine:.0} s busy on the machine, of which this \
             benchmark and what it started {bench:.0} s, other processes {others:.0} s"
        ));
    }
    lines.extend(tools.iter().cloned());
    lines.push(format!("- run: `{command}`, {secs:.0} s in all"));
    lines.join("\n")
}

fn document(conditions: &Conditions, facts: &str, sections: &[Section]) -> String {
    let conditions = conditions_paragraph(conditions);
    let behind: Vec<String> = sections.iter().flat_map(Section::behind).collect();
    let behind = if behind.is_empty() {
        "In this run arbiter is ahead of (or level with) gunicorn, uWSGI and the floors on \
         every figure."
            .to_owned()
    } else {
        format!("In this run arbiter is behind on: {}.", behind.join(", "))
    };
    let rerun: String = SCENARIOS
        .iter()
        .map(|s| format!("- `cargo xtask bench --only {s}`\n"))
        .collect();
    format!(
        "# Benchmarks: arbiter, gunicorn and uWSGI side by side\n\n\
         Generated by `cargo xtask bench` (see `xtask/src/bench.rs`); do not edit by hand. \
         `cargo xtask bench --help` lists the options.\n\n\
         ![ratios](bench.svg)\n\n\
         arbiter runs with two worker kinds: its built-in Rust worker, and \
         `scripts/py_worker.py`, a standard-library Python worker that speaks the protocol \
         the way sd_notify clients do (`READY=1`, then `WATCHDOG=1` once a second and a bump \
         of its heartbeat file). gunicorn (sync worker) and uWSGI serve the very same app \
         logic as a WSGI callable. Each figure is the median of the repetitions, with min, \
         max and the number of samples; a ratio is median / median, marked *(behind)* where \
         arbiter is not ahead. Floors (fork+exec, a signalfd reader) come from a C program \
         compiled at bench time and are measured in the same run. Every process binds \
         127.0.0.1 only and is killed by pid at the end of its run.\n\n\
         {conditions} {behind}\n\n\
         ## Machine\n\n{facts}\n\n\
         ## Rerunning one scenario\n\n{rerun}\n\
         (add `--quick` for a smoke run; a partial run writes `target/bench/BENCHMARKS.md`)\n\n{}",
        report::markdown(sections)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn help_is_not_an_error_and_bad_names_are() {
        assert!(parse(&strings(&["--help"])).unwrap().is_none());
        assert!(parse(&strings(&["--quick", "-h"])).unwrap().is_none());
        let options = parse(&strings(&["--only", "idle,ttin"])).unwrap().unwrap();
        assert_eq!(options.only, Some(strings(&["idle", "ttin"])));
        assert!(parse(&strings(&["--only", "idle,nope"]))
            .unwrap_err()
            .contains("unknown scenario \"nope\""));
        assert!(parse(&strings(&["--only"])).is_err());
        assert!(parse(&strings(&["--fast"])).is_err());
    }

    #[test]
    fn every_scenario_is_in_the_usage() {
        for name in SCENARIOS {
            assert!(USAGE.contains(&format!("\n  {name} ")), "{name}");
        }
    }

    fn conditions(start: f64, end: f64, machine: f64, bench: f64) -> Conditions {
        Conditions {
            cores: 2,
            load_start: Some([start, 0.4, 3.75]),
            load_end: Some([end, 91.0, 47.0]),
            wall_secs: 1000.0,
            machine_cpu_secs: Some(machine),
            bench_cpu_secs: Some(bench),
        }
    }

    /// A quiet start and a high end load that the benchmark's own processes made (the full
    /// run of 1 December: 0.74 at the start, 46.86 at the end after 10,000 workers).
    #[test]
    fn a_quiet_start_is_called_quiet_and_the_end_load_the_benchmarks_own() {
        let text = conditions_paragraph(&conditions(0.74, 46.86, 1500.0, 1450.0));
        assert_eq!(
            text,
            "The machine was quiet at the start: its load average was 0.74 on 2 cores before \
             the first scenario. During the run processes other than this benchmark used 0.05 \
             cores on average (50 of the 1500 CPU-seconds the machine spent busy in 1000 s): \
             it was not shared. The load average of 46.86 at the end is the benchmark's own \
             (its last scenario's workers and masters). Runs alternate between the systems, \
             and the ratios are what to read."
        );
        assert!(!text.contains("loaded"), "{text}");
    }

    #[test]
    fn a_start_load_above_the_cores_is_called_loaded() {
        let text = conditions_paragraph(&conditions(4.89, 1.5, 1500.0, 1450.0));
        assert!(
            text.starts_with(
                "**The machine was loaded at the start**: its load average was 4.89 on 2 \
                 cores before the first scenario, from other work sharing it."
            ),
            "{text}"
        );
        assert!(text.contains("it was not shared"), "{text}");
        assert!(
            text.contains("The load average was 1.50 at the end."),
            "{text}"
        );
    }

    #[test]
    fn other_processes_busy_during_a_quiet_start_make_the_run_shared() {
        // Others took 600 CPU-seconds in 1000 s: 0.6 cores, above a tenth of 2.
        let text = conditions_paragraph(&conditions(0.5, 19.65, 1800.0, 1200.0));
        assert!(
            text.starts_with("The machine was quiet at the start"),
            "{text}"
        );
        assert!(
            text.contains(
                "**It was shared during the run**: processes other than this benchmark used \
                 0.60 cores on average (600 of the 1800 CPU-seconds"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "The load average was 19.65 at the end, from the benchmark's workers and the \
                 other processes together."
            ),
            "{text}"
        );
    }

    #[test]
    fn unreadable_figures_are_said_so() {
        let text = conditions_paragraph(&Conditions {
            load_start: None,
            load_end: None,
            machine_cpu_secs: None,
            ..conditions(0.0, 0.0, 0.0, 0.0)
        });
        assert!(text.contains("could not be read"), "{text}");
        assert!(text.contains("could not be measured"), "{text}");
        assert!(
            !text.contains("quiet") && !text.contains("loaded"),
            "{text}"
        );
    }

    #[test]
    fn the_busy_time_and_own_time_read() {
        let machine = machine_busy_secs().expect("/proc/stat");
        let own = own_cpu_secs().expect("getrusage");
        assert!(machine > 0.0 && own >= 0.0, "{machine} {own}");
        let load = load_average().expect("/proc/loadavg");
        assert!(load.iter().all(|l| *l >= 0.0), "{load:?}");
    }

    #[test]
    fn the_core_simulation_keeps_its_invariants_small() {
        let sim = coresim::run(500, 20_000).unwrap();
        assert!(sim.inputs >= 20_000);
        assert!(sim.checks > 0);
    }
}
