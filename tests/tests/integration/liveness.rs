//! Liveness: hung workers (stopped, or hanging on their own) and workers that never get ready.

use std::time::{Duration, Instant};

use arbiter_tests::{identities_of, signal, wait_gone, wait_until, Fixture, Master, SOON};

use crate::{bin, serving};

/// Waits for a replacement of `old` among the master's `n` children; its pid.
fn replacement(master: &mut Master, old: i32, n: usize) -> i32 {
    let mut now = Vec::new();
    assert!(
        wait_until(SOON, || {
            now = master.children();
            now.len() == n && !now.contains(&old)
        }),
        "{old} not replaced: {now:?}\n{}",
        master.stderr()
    );
    *now.iter().max().expect("a child")
}

#[test]
fn a_stopped_worker_is_killed_after_the_timeout_and_replaced() {
    let fx = Fixture::new();
    let (mut master, port) = serving(
        &fx,
        &["-w", "1", "--timeout", "1", "--abort-grace", "500ms"],
        1,
    );
    let victim = master.children()[0];
    let slot = identities_of(port, &[victim], SOON)[&victim].slot;
    // Let it heartbeat at least once, so the heartbeat timeout is armed.
    std::thread::sleep(Duration::from_millis(300));
    let stopped_at = Instant::now();
    signal(victim, libc::SIGSTOP).unwrap();
    let took = wait_gone(victim, SOON).expect("the stopped worker is killed");
    let log = master
        .wait_log(&format!("WORKER TIMEOUT (pid:{victim})"), SOON)
        .unwrap();
    // The deadline is the last heartbeat (at most a quarter of the timeout before the stop)
    // plus the timeout; a stopped process ignores the abort signal, so KILL ends it after the
    // abort grace.
    let elapsed = stopped_at.elapsed().max(took);
    assert!(
        elapsed >= Duration::from_millis(750 + 500 - 100),
        "killed too early: {elapsed:?}\n{log}"
    );
    assert!(
        elapsed <= Duration::from_millis(1000 + 500) + crate::slack(),
        "killed too late: {elapsed:?}\n{log}"
    );
    // A stopped process cannot act on the abort signal: KILL ends it.
    master
        .wait_log(&format!("Killing worker (pid:{victim}) with SIGKILL"), SOON)
        .unwrap();
    let new = replacement(&mut master, victim, 1);
    assert_eq!(identities_of(port, &[new], SOON)[&new].slot, slot);
}

#[test]
fn a_worker_hanging_by_itself_is_killed_and_replaced() {
    let fx = Fixture::new();
    let (mut master, port) = serving(
        &fx,
        &[
            "-w",
            "1",
            "--timeout",
            "1",
            "--abort-grace",
            "500ms",
            "--",
            bin(),
            "worker",
            "--hang-after",
            "500ms",
        ],
        1,
    );
    let victim = master.children()[0];
    let started = Instant::now();
    assert!(wait_gone(victim, SOON).is_some(), "{}", master.stderr());
    let elapsed = started.elapsed();
    master
        .wait_log(&format!("WORKER TIMEOUT (pid:{victim})"), SOON)
        .unwrap();
    // Hang at 0.5 s, timeout 1 s after the last beat, then at most the abort grace.
    assert!(
        elapsed >= Duration::from_millis(900),
        "too early: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(500 + 1000 + 500) + crate::slack(),
        "too late: {elapsed:?}"
    );
    // A hanging (not stopped) process dies of the abort signal before the KILL.
    master
        .wait_log(&format!("Worker (pid:{victim}) was sent SIGABRT"), SOON)
        .unwrap();
    let new = replacement(&mut master, victim, 1);
    // The replacement serves before it, too, hangs.
    let _ = identities_of(port, &[new], Duration::from_millis(400));
}

#[test]
fn a_worker_never_ready_under_notify_is_killed_at_the_boot_timeout_and_respawned() {
    let fx = Fixture::new();
    let mut master = fx.start(
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "-w",
            "1",
            "--ready",
            "notify",
            "--boot-timeout",
            "1",
            "--",
            bin(),
            "worker",
            "--silent",
        ],
    );
    master.port();
    let first = master.wait_children(1, SOON)[0];
    let started = Instant::now();
    let took = wait_gone(first, SOON).expect("killed at the boot timeout");
    let elapsed = started.elapsed().max(took);
    assert!(
        elapsed <= Duration::from_millis(1000) + crate::slack(),
        "{elapsed:?}"
    );
    master
        .wait_log(&format!("WORKER BOOT TIMEOUT (pid:{first})"), SOON)
        .unwrap();
    replacement(&mut master, first, 1);
}
