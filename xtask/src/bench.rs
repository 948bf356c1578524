//! `cargo xtask bench [--quick]`: arbiter side by side with gunicorn (sync worker), runs
//! alternating, medians with min and max, ratios arbiter / gunicorn. Writes
//! `docs/BENCHMARKS.md` and `docs/bench.svg`.
//!
//! Everything binds to 127.0.0.1 on free ports, every wait is bounded, and every process is
//! killed by pid through drop guards (xtask is the subreaper of what it starts, so a USR2
//! master whose parent exits is still ours to kill and reap). `--quick` is a smoke run: fewer
//! repetitions, smaller worker counts, shorter windows; it writes the same files.

mod load;
mod procfs;
mod report;
mod reuseport;
mod scenarios;
mod servers;

use std::fs;
use std::process::Command;
use std::time::Instant;

use report::Section;
use scenarios::Plan;

/// Runs the benchmarks with the task's arguments (after `bench`).
pub fn run(args: &[String]) -> Result<(), String> {
    let quick = match args {
        [] => false,
        [flag] if flag == "--quick" => true,
        _ => return Err(format!("usage: cargo xtask bench [--quick]; got {args:?}")),
    };
    let plan = if quick {
        Plan {
            reps: 2,
            boot_sizes: vec![2, 8],
            footprint: vec![(8, 1), (32, 1)],
            idle: std::time::Duration::from_secs(3),
            floor_spawns: 50,
            overhead_secs: 2,
        }
    } else {
        Plan {
            reps: 5,
            boot_sizes: vec![2, 8, 32],
            footprint: vec![(8, 2), (64, 2), (256, 1)],
            idle: std::time::Duration::from_secs(10),
            floor_spawns: 200,
            overhead_secs: 5,
        }
    };
    let started = Instant::now();
    procfs::become_subreaper();
    let arbiter = crate::common::arbiter_release()?;
    let venv_bin = crate::common::venv(&["gunicorn"])?;
    let scratch = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let bench = servers::Bench::new(arbiter.clone(), venv_bin.clone(), scratch.path().into())?;

    type Scenario = fn(&servers::Bench, &Plan) -> Result<Section, String>;
    let scenarios: [(&str, Scenario); 8] = [
        ("floor", |_, plan| scenarios::floor(plan)),
        ("boot", scenarios::boot),
        ("footprint", scenarios::footprint),
        ("hung worker and crash", scenarios::hung_and_crash),
        ("TTIN burst", scenarios::ttin),
        ("graceful stop", scenarios::graceful),
        ("HUP and USR2 under load", scenarios::reloads),
        ("overhead", scenarios::overhead),
    ];
    let mut sections = Vec::new();
    for (name, scenario) in scenarios {
        let t = Instant::now();
        eprintln!("bench: {name}...");
        sections.push(scenario(&bench, &plan)?);
        eprintln!("bench: {name} done in {:.1}s", t.elapsed().as_secs_f64());
    }
    let facts = machine_facts(&arbiter, &venv_bin, quick, started.elapsed().as_secs_f64());
    let docs = crate::common::root().join("docs");
    fs::create_dir_all(&docs).map_err(|e| format!("docs/: {e}"))?;
    let markdown = document(&facts, &sections);
    fs::write(docs.join("BENCHMARKS.md"), markdown).map_err(|e| format!("BENCHMARKS.md: {e}"))?;
    fs::write(docs.join("bench.svg"), report::svg(&sections))
        .map_err(|e| format!("bench.svg: {e}"))?;
    eprintln!(
        "bench: wrote docs/BENCHMARKS.md and docs/bench.svg in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    for figure in sections.iter().flat_map(|s| &s.figures) {
        if let Some(ratio) = figure.ratio() {
            let behind = figure.a_ahead() == Some(false);
            eprintln!(
                "  {:<55} ratio {ratio:>8.3}{}",
                figure.name,
                if behind { "  (behind)" } else { "" }
            );
        }
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> String {
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
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

fn machine_facts(
    arbiter: &std::path::Path,
    venv: &std::path::Path,
    quick: bool,
    secs: f64,
) -> String {
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
    let arbiter = arbiter.to_string_lossy();
    let gunicorn = venv.join("gunicorn");
    let python = venv.join("python");
    let wrk = output("wrk", &["--version"]);
    let wrk = wrk.lines().next().unwrap_or("not installed");
    [
        format!("- date: {}", output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
        format!("- CPU: {cpu}; nproc: {}", output("nproc", &[])),
        format!("- memory: {memory}"),
        format!("- kernel: {}", output("uname", &["-sr"])),
        format!(
            "- arbiter: {} (release build)",
            output(&arbiter, &["--version"])
        ),
        format!(
            "- gunicorn: {} (sync worker), {}",
            output(&gunicorn.to_string_lossy(), &["--version"]),
            output(&python.to_string_lossy(), &["--version"])
        ),
        format!("- wrk: {wrk}"),
        format!(
            "- run: `cargo xtask bench{}`, {secs:.0} s in all",
            if quick { " --quick" } else { "" }
        ),
    ]
    .join("\n")
}

fn document(facts: &str, sections: &[Section]) -> String {
    let behind: Vec<String> = sections
        .iter()
        .filter(|s| s.b_name == "gunicorn")
        .flat_map(|s| &s.figures)
        .filter(|f| f.a_ahead() == Some(false))
        .map(|f| format!("*{}*", f.name))
        .collect();
    let behind = if behind.is_empty() {
        "In this run arbiter is ahead of (or level with) gunicorn on every figure.".to_owned()
    } else {
        format!(
            "In this run arbiter is behind gunicorn on: {}.",
            behind.join(", ")
        )
    };
    format!(
        "# Benchmarks: arbiter and gunicorn side by side\n\n\
         Generated by `cargo xtask bench` (see `xtask/src/bench.rs`); do not edit by hand.\n\n\
         ![arbiter / gunicorn ratios](bench.svg)\n\n\
         Each figure is the median of the repetitions, with min and max and the number of \
         samples; *ratio* is median(arbiter) / median(gunicorn) (for the overhead: arbiter / \
         baseline), marked *(behind)* where arbiter is not ahead. Runs of the two alternate, \
         every process binds 127.0.0.1 only, and every one is killed by pid at the end of \
         its run.\n\n\
         **The machine was shared** with other engineers' builds and tests while this ran: \
         absolute numbers are noisy, which is why runs alternate and the ratios are what to \
         read. {behind}\n\n\
         ## Machine\n\n{facts}\n\n{}",
        report::markdown(sections)
    )
}
