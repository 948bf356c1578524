//! Recycling under load: by age (`--max-worker-age`), by memory (`--max-worker-memory`, a
//! worker whose process group holds more than the limit), and at the built-in worker's own
//! request (`--max-requests`). Each keeps a keep-alive load on the workers across several
//! recycles and asserts no failed request, that each recycle said why in the log, and that
//! the exits were counted as `recycled`, never as crashes.

use std::time::{Duration, Instant};

use arbiter_tests::{get, wait_until, Fixture, Master, SOON};

use crate::load::Load;
use crate::{assert_clean, bin, record, wait_log_count, THREADS};

/// How long a scenario may take to see its recycles.
const RECYCLES_WITHIN: Duration = Duration::from_secs(60);

fn metrics_port(master: &mut Master) -> u16 {
    let log = master
        .wait_log("Metrics at: http://127.0.0.1:", SOON)
        .unwrap_or_else(|e| panic!("{e}"));
    let rest = log.split("Metrics at: http://127.0.0.1:").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// The value of one exposition line such as `arbiter_worker_exits_total{cause="recycled"}`.
fn metric(port: u16, series: &str) -> f64 {
    let body = get(port, "/metrics").expect("a scrape").body;
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{body}"))
}

/// Runs `args` (two workers, a metrics endpoint) under load until `recycles` workers were
/// recycled with `why` in the log; asserts no failed request, exits counted as recycled and
/// none as a crash, and a clean stop.
fn recycle_under_load(scenario: &str, args: &[&str], why: &str, recycles: usize) {
    let fx = Fixture::new();
    let mut full = vec![
        "-b",
        "127.0.0.1:0",
        "-w",
        "2",
        "--ready",
        "notify",
        "--metrics-bind",
        "127.0.0.1:0",
        "--log-level",
        "debug",
    ];
    full.extend_from_slice(args);
    let mut master = fx.start("arbiter", &full);
    let port = master.port();
    let probes = metrics_port(&mut master);
    wait_log_count(&mut master, "is ready", 2, SOON);
    let load = Load::start(port, THREADS, RECYCLES_WITHIN + SOON);
    let started = Instant::now();
    wait_log_count(&mut master, why, recycles, RECYCLES_WITHIN);
    let log = wait_log_count(&mut master, "Worker recycled (pid: ", recycles, SOON);
    let took = started.elapsed();
    let report = load.finish();
    record(
        scenario,
        &report,
        &format!("{recycles} recycles in {:.1} s", took.as_secs_f64()),
    );
    assert_clean(&report, &log);
    // Every exit so far was a recycle: counted so, none as a crash or a restart.
    let counted = wait_until(SOON, || {
        metric(probes, "arbiter_worker_exits_total{cause=\"recycled\"}") >= recycles as f64
    });
    assert!(counted, "recycled exits not counted\n{log}");
    for cause in ["crash", "signal", "timeout"] {
        let series = format!("arbiter_worker_exits_total{{cause=\"{cause}\"}}");
        assert_eq!(metric(probes, &series), 0.0, "{series}\n{log}");
    }
    assert!(!log.contains("crash-looping"), "{log}");
    master.signal(libc::SIGTERM);
    assert_eq!(
        master.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        master.stderr()
    );
    master.assert_no_process_left();
}

#[test]
fn age_recycling_under_load_fails_no_request() {
    // Lives of 1.5 to 3 s, each replacement ready 300 ms after its exec.
    let worker = [bin(), "worker", "--ready-delay", "300ms"];
    let mut args = vec!["--max-worker-age", "3s", "--"];
    args.extend(worker);
    recycle_under_load("recycle by age 3s", &args, "recycle: max worker age", 4);
}

#[test]
fn memory_recycling_under_load_fails_no_request() {
    // A worker whose group holds about 64 MiB within a second of its start: a child in its
    // process group buffers 64 MiB (tail keeps a line without a newline whole) and holds it.
    let script = format!(
        "(head -c 64M /dev/zero; exec sleep 600) | tail >/dev/null & exec {} worker --ready-delay 300ms",
        bin()
    );
    let args = [
        "--max-worker-memory",
        "32M",
        "--",
        "/bin/sh",
        "-c",
        script.as_str(),
    ];
    recycle_under_load(
        "recycle by memory 32M",
        &args,
        "recycle: max worker memory",
        3,
    );
}

#[test]
fn max_requests_recycling_of_the_built_in_worker_fails_no_request() {
    let args = [
        "--",
        bin(),
        "worker",
        "--ready-delay",
        "300ms",
        "--max-requests",
        "2000",
        "--max-requests-jitter",
        "500",
    ];
    recycle_under_load(
        "recycle at 2000 requests",
        &args,
        "recycle: the worker asked for it",
        4,
    );
}

#[test]
fn a_bad_recycling_value_is_one_line_and_exit_2_with_nothing_started() {
    let fx = Fixture::new();
    for (args, expected) in [
        (
            ["--max-worker-memory", "12X"],
            "arbiter: --max-worker-memory \"12X\": unknown unit; use K, M, G or T (powers of 1024)",
        ),
        (
            ["--max-worker-age", "soon"],
            "arbiter: --max-worker-age \"soon\": invalid duration",
        ),
    ] {
        let mut full = vec!["-b", "127.0.0.1:0"];
        full.extend(args);
        full.extend(["--", bin(), "worker"]);
        let (code, _, stderr) = arbiter_tests::run(&fx, "arbiter", &full, SOON);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(expected), "{stderr}");
        assert!(!stderr.contains("Booting worker"), "{stderr}");
    }
}
