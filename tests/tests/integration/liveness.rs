//! Liveness: hung workers (stopped, or hanging on their own) and workers that never get ready.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbiter_tests::{alive, environ, identities_of, signal, wait_gone, wait_until, Fixture};
use arbiter_tests::{Master, SOON};

use crate::{bin, serving};

/// How much earlier than the file's ctime the master may date a heartbeat: it dates the bump
/// on the monotonic clock it read when its loop woke, a moment before it looks at the file.
const DATING: Duration = Duration::from_millis(50);

/// A worker of the master that has exec'd the worker program (its environment names the
/// heartbeat fd), with that fd and the file's ctime then.
fn worker_with_heartbeat(master: &mut Master) -> (i32, String, SystemTime) {
    let mut found = None;
    assert!(
        wait_until(SOON, || {
            found = master.children().into_iter().find_map(|pid| {
                let fd = environ(pid)?.remove("ARBITER_HEARTBEAT_FD")?;
                let ctime = heartbeat_ctime(pid, &fd)?;
                Some((pid, fd, ctime))
            });
            found.is_some()
        }),
        "no worker with a heartbeat file\n{}",
        master.stderr()
    );
    found.expect("found above")
}

/// The ctime of `pid`'s heartbeat file (fd `fd`) while the process holds it: the moment of its
/// last heartbeat, as the master reads it.
fn heartbeat_ctime(pid: i32, fd: &str) -> Option<SystemTime> {
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let since_epoch = Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().max(0) as u32);
    Some(UNIX_EPOCH + since_epoch)
}

/// Watches `pid`'s heartbeat file (its ctime was `seen` last) until the process is gone (up
/// to `SOON`): how long after its last heartbeat it was seen gone, and the moment it was seen
/// gone. The master kills at a
/// timeout after that last heartbeat, so this measure holds however late the worker ran
/// before it stopped beating (a pause measured from the test's own moments did not: on a
/// loaded machine the last beat could come well before them).
fn gone_after_last_heartbeat(pid: i32, fd: &str, seen: SystemTime) -> (Duration, Instant) {
    let deadline = Instant::now() + SOON;
    let mut last = seen;
    loop {
        if let Some(ctime) = heartbeat_ctime(pid, fd) {
            last = last.max(ctime);
        }
        if !alive(pid) {
            let after = SystemTime::now().duration_since(last).unwrap_or_default();
            return (after, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "worker {pid} still alive after {SOON:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

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
    let (victim, fd, first) = worker_with_heartbeat(&mut master);
    let slot = identities_of(port, &[victim], SOON)[&victim].slot;
    // Until it has heartbeated once, so the heartbeat timeout is armed.
    let mut beat = first;
    assert!(
        wait_until(SOON, || {
            beat = heartbeat_ctime(victim, &fd).unwrap_or(beat);
            beat != first
        }),
        "no heartbeat from {victim}\n{}",
        master.stderr()
    );
    let stopped_at = Instant::now();
    signal(victim, libc::SIGSTOP).unwrap();
    let (after_beat, gone_at) = gone_after_last_heartbeat(victim, &fd, beat);
    let log = master
        .wait_log(&format!("WORKER TIMEOUT (pid:{victim})"), SOON)
        .unwrap();
    // The deadline is the last heartbeat plus the timeout; a stopped process ignores the
    // abort signal, so KILL ends it after the abort grace.
    assert!(
        after_beat >= Duration::from_millis(1000 + 500) - DATING,
        "killed too early: {after_beat:?} after its last heartbeat\n{log}"
    );
    // The last heartbeat came before the stop. Killed at the configured 1 s timeout, not at
    // the default 30 s: the bound is half the default, not a speed target (how soon after its
    // deadline a hung worker dies is the bench's "hung: worker dead, past its deadline";
    // `1.5 s + slack` measured the machine's load).
    let elapsed = gone_at - stopped_at;
    assert!(
        elapsed < Duration::from_secs(15),
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
    // Not `serving`: on a loaded machine a worker can hang before it answers a first request.
    let mut master = fx.start(
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
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
    );
    let port = master.port();
    let started = Instant::now();
    let (victim, fd, seen) = worker_with_heartbeat(&mut master);
    let (after_beat, gone_at) = gone_after_last_heartbeat(victim, &fd, seen);
    let elapsed = gone_at - started;
    master
        .wait_log(&format!("WORKER TIMEOUT (pid:{victim})"), SOON)
        .unwrap();
    // Timeout 1 s after the last beat; hang at 0.5 s, so gone by then plus at most the abort
    // grace.
    assert!(
        after_beat >= Duration::from_millis(1000) - DATING,
        "too early: {after_beat:?} after its last heartbeat"
    );
    // Killed at the configured 1 s timeout, not at the default 30 s: half the default, not a
    // speed target (the bench's "hung: worker dead, past its deadline" measures how soon;
    // `2 s + slack` measured the machine's load).
    assert!(elapsed < Duration::from_secs(15), "too late: {elapsed:?}");
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
    // Killed by the 1 s boot timeout, not by the 30 s heartbeat timeout nor the 60 s default
    // boot timeout: the bound is half the nearest of those, not a speed target (`1 s + slack`
    // measured the machine's load).
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    master
        .wait_log(&format!("WORKER BOOT TIMEOUT (pid:{first})"), SOON)
        .unwrap();
    replacement(&mut master, first, 1);
}
