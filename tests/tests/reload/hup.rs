//! Scenario 1: HUP under load with workers that take about a second to become ready.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arbiter_tests::{wait_until, Fixture, SOON};

use crate::load::Load;
use crate::{assert_clean, bin, record, wait_log_count, LOAD_LIMIT, THREADS};

/// Starts `-w 2 --ready notify` workers with `worker_switches`, puts load on them, HUPs, and waits until
/// both workers are new; asserts no failed request and that the new workers served.
fn hup_under_load(scenario: &str, worker_switches: &[&str]) {
    let fx = Fixture::new();
    // `--ready notify`: the first workers' readiness is awaited too, so "is ready" below
    // means READY=1 was sent (with `auto`, the first generation counts as ready at exec).
    let mut args = vec!["-b", "127.0.0.1:0", "-w", "2", "--ready", "notify"];
    args.extend(["--log-level", "debug", "--", bin(), "worker"]);
    args.extend_from_slice(worker_switches);
    let mut master = fx.start("arbiter", &args);
    let port = master.port();
    // Both must have said READY=1, so the roll is readiness-gated.
    wait_log_count(&mut master, "is ready", 2, SOON);
    let old: BTreeSet<i32> = master.wait_children(2, SOON).into_iter().collect();
    let load = Load::start(port, THREADS, LOAD_LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    let hup = Instant::now();
    master.signal(libc::SIGHUP);
    let mut now = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            now = master.children();
            now.len() == 2 && now.iter().all(|p| !old.contains(p))
        }),
        "old workers left: {old:?} -> {now:?}\n{}",
        master.stderr()
    );
    let rolled = hup.elapsed();
    let log = wait_log_count(&mut master, "Reload finished", 1, SOON);
    let finished = hup.elapsed();
    // Keep the load on until the new generation has served it (a fixed pause raced a loaded
    // machine); the assertion below reports it if it never does.
    load.wait_served_by_any(&now, SOON);
    let report = load.finish();
    record(
        scenario,
        &report,
        &format!(
            "HUP -> all workers new {:.2} s, 'Reload finished' seen at {:.2} s",
            rolled.as_secs_f64(),
            finished.as_secs_f64()
        ),
    );
    assert_clean(&report, &log);
    assert!(
        now.iter().any(|p| report.pids.contains(p)),
        "the new workers served the load: new {now:?}, served by {:?}",
        report.pids
    );
    let answered = arbiter_tests::identities_of(port, &now, SOON);
    assert!(
        now.iter().all(|p| answered.contains_key(p)),
        "every new worker answers: {now:?} -> {answered:?}"
    );
    assert!(
        rolled >= Duration::from_millis(900),
        "workers that take ~1 s to be ready cannot all be replaced in {rolled:?}"
    );
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
fn hup_under_load_with_slow_ready_workers() {
    hup_under_load("hup --ready-delay 1s", &["--ready-delay", "1s"]);
}

#[test]
fn hup_under_load_with_slow_booting_workers() {
    hup_under_load("hup --boot-delay 1s", &["--boot-delay", "1s"]);
}
