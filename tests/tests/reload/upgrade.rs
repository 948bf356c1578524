//! Scenarios 2, 3 and 6: USR2 + TERM, `arbiter upgrade`, and a failed upgrade, under load.
//! Each test runs its own copy of the binary, so "the binary on disk" that an upgrade
//! re-resolves is the test's, not the shared build output.

use std::path::Path;
use std::time::{Duration, Instant};

use arbiter_tests::{wait_until, Fixture, Master, SOON};

use crate::load::Load;
use crate::{
    assert_clean, promoted, read_pid, record, run_upgrade, s, stop, wait_log_count, LOAD_LIMIT,
    THREADS,
};

/// Starts `PROGRAM -b 127.0.0.1:0 -w 2 -p PIDFILE` and waits until both workers serve.
fn serving(fx: &Fixture, program: &Path, pidfile: &Path) -> (Master, u16, Vec<i32>) {
    let args = ["-b", "127.0.0.1:0", "-w", "2", "-p", s(pidfile)];
    let mut master = fx.start_program("arbiter", program, &args, &[]);
    let port = master.port();
    arbiter_tests::wait_serving(port, SOON).unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()));
    let workers = master.wait_children(2, SOON);
    assert!(
        wait_until(SOON, || read_pid(pidfile) == Some(master.pid())),
        "no pidfile"
    );
    (master, port, workers)
}

/// Asserts the new generation serves: some load went to it, and each new worker answers.
fn assert_new_generation_serves(port: u16, new_workers: &[i32], served_by: &[i32]) {
    assert!(
        new_workers.iter().any(|p| served_by.contains(p)),
        "the load reached the new workers {new_workers:?}: served by {served_by:?}"
    );
    let answered = arbiter_tests::identities_of(port, new_workers, SOON);
    assert!(
        new_workers.iter().all(|p| answered.contains_key(p)),
        "every new worker answers: {new_workers:?} -> {answered:?}"
    );
}

#[test]
fn usr2_then_term_under_load() {
    let fx = Fixture::new();
    let _guard = crate::CopyGuard::new(fx.path());
    let program = fx.copy_arbiter("arbiter");
    let pidfile = fx.join("app.pid");
    let upgrade = fx.join("app.pid.2");
    let (mut master, port, old_workers) = serving(&fx, &program, &pidfile);
    let old = master.pid();
    let load = Load::start(port, crate::THREADS, LOAD_LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let new = arbiter_tests::usr2_child(&mut master, &upgrade, SOON);
    let ready = started.elapsed();
    master.signal(libc::SIGTERM);
    assert_eq!(
        master.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        master.stderr()
    );
    let (promoted_pid, new_workers) = promoted(&mut master, &pidfile, old, 2);
    assert_eq!(promoted_pid, new, "PIDFILE holds the new master");
    let done = started.elapsed();
    let log = wait_log_count(&mut master, "Master has been promoted.", 1, SOON);
    assert!(!upgrade.exists(), "{} renamed away", upgrade.display());
    // Until the new generation has served the load (a fixed pause raced a loaded machine).
    load.wait_served_by_any(&new_workers, SOON);
    let report = load.finish();
    record(
        "usr2+term",
        &report,
        &format!(
            "USR2 -> PIDFILE.2 {:.2} s, -> promoted {:.2} s",
            ready.as_secs_f64(),
            done.as_secs_f64()
        ),
    );
    assert_clean(&report, &log);
    let served_by: Vec<i32> = report.pids.iter().copied().collect();
    assert_new_generation_serves(port, &new_workers, &served_by);
    assert!(arbiter_tests::pids_alive(&old_workers).is_empty());
    stop(&mut master, new);
    assert!(!pidfile.exists(), "the new master removes its pidfile");
}

#[test]
fn arbiter_upgrade_under_load() {
    let fx = Fixture::new();
    let _guard = crate::CopyGuard::new(fx.path());
    let program = fx.copy_arbiter("arbiter");
    let pidfile = fx.join("app.pid");
    let (mut master, port, old_workers) = serving(&fx, &program, &pidfile);
    let old = master.pid();
    let load = Load::start(port, THREADS, LOAD_LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    let run = run_upgrade(&program, &pidfile, Duration::from_secs(45));
    master.track_tree();
    assert_eq!(run.code, 0, "{run:?}\n{}", master.stderr());
    assert!(run.stdout.contains("upgraded"), "{run:?}");
    assert_eq!(master.exit_code(SOON), 0, "the old master stopped cleanly");
    let (new, new_workers) = promoted(&mut master, &pidfile, old, 2);
    // Until the new generation has served the load (a fixed pause raced a loaded machine).
    load.wait_served_by_any(&new_workers, SOON);
    let report = load.finish();
    record(
        "arbiter upgrade",
        &report,
        &format!(
            "upgrade exit 0 in {:.2} s: {}",
            run.took.as_secs_f64(),
            run.stdout.trim()
        ),
    );
    assert_clean(&report, &master.stderr());
    let served_by: Vec<i32> = report.pids.iter().copied().collect();
    assert_new_generation_serves(port, &new_workers, &served_by);
    assert!(arbiter_tests::pids_alive(&old_workers).is_empty());
    // The control socket moved with the promotion: `arbiter ctl -p PIDFILE` reaches the new
    // master.
    let ctl = std::process::Command::new(&program)
        .args(["ctl", "--pidfile", s(&pidfile), "status", "--json"])
        .env_remove("ARBITER_PIDFILE")
        .env_remove("ARBITER_CONTROL_SOCKET")
        .output()
        .expect("arbiter ctl");
    assert!(ctl.status.success(), "{ctl:?}");
    let status: serde_json::Value = serde_json::from_slice(&ctl.stdout).expect("json");
    assert_eq!(status["master"]["pid"], new, "{status}");
    stop(&mut master, new);
}

#[test]
fn failed_upgrade_keeps_the_old_master_serving() {
    let fx = Fixture::new();
    let _guard = crate::CopyGuard::new(fx.path());
    let program = fx.copy_arbiter("arbiter");
    let pidfile = fx.join("app.pid");
    let (mut master, port, old_workers) = serving(&fx, &program, &pidfile);
    let old = master.pid();
    std::fs::remove_file(&program).expect("deleting the copy");
    let load = Load::start(port, THREADS, LOAD_LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    // The copy is gone: run `upgrade` from the shared build.
    // A bound against a hang only: past the client's 20 s --ready-timeout.
    let run = run_upgrade(
        arbiter_tests::arbiter_bin(),
        &pidfile,
        Duration::from_secs(60),
    );
    master.track_tree();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.finish();
    record(
        "failed upgrade (binary deleted)",
        &report,
        &format!(
            "upgrade exit {} in {:.2} s: {}",
            run.code,
            run.took.as_secs_f64(),
            run.stderr.trim()
        ),
    );
    assert_eq!(run.code, 1, "{run:?}\n{}", master.stderr());
    // The failure is found by the client's no-new-master rule, not by waiting out its
    // --ready-timeout: its message says which rule fired (how fast is the benchmark's
    // business; a loaded machine took 12 s).
    assert!(
        run.stderr.contains("started no new master")
            && !run.stderr.contains("was not ready within"),
        "a failed upgrade is reported by the no-new-master rule, not the ready timeout: {run:?}"
    );
    assert!(
        run.stderr.contains("arbiter upgrade:") && run.stderr.contains("keeps serving"),
        "a clear message: {run:?}"
    );
    assert!(!master.exited(), "the old master runs\n{}", master.stderr());
    assert_eq!(read_pid(&pidfile), Some(old), "the pidfile still names it");
    assert_eq!(
        master.wait_children(2, SOON),
        old_workers,
        "its workers were not touched"
    );
    assert_clean(&report, &master.stderr());
    // With the binary back, the next upgrade works.
    std::fs::copy(arbiter_tests::arbiter_bin(), &program).expect("restoring the copy");
    let load = Load::start(port, THREADS, LOAD_LIMIT);
    let run = run_upgrade(&program, &pidfile, Duration::from_secs(45));
    master.track_tree();
    assert_eq!(run.code, 0, "{run:?}\n{}", master.stderr());
    assert_eq!(master.exit_code(SOON), 0);
    let (new, new_workers) = promoted(&mut master, &pidfile, old, 2);
    let report = load.finish();
    record(
        "upgrade after restoring the binary",
        &report,
        &format!(
            "upgrade exit 0 in {:.2} s: {}",
            run.took.as_secs_f64(),
            run.stdout.trim()
        ),
    );
    assert_clean(&report, &master.stderr());
    let served_by: Vec<i32> = report.pids.iter().copied().collect();
    assert_new_generation_serves(port, &new_workers, &served_by);
    stop(&mut master, new);
}
