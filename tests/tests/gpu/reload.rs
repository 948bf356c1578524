//! HUP rolls (a replacement lands on its slot's devices, the surge bounded) and USR2
//! upgrades (the new master starts from a clean balance).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arbiter_tests::{wait_gone, wait_until, Fixture, SOON};

use crate::{
    assert_balanced, bin, cap, expected, load, placements, record, settle, settle_of, start, CUDA,
    EXIT,
};

const THREE: &[&str] = &["0", "1", "2"];

/// Rolls 7 readiness-gated workers over 3 GPUs with `--max-surge surge`, observing the
/// process tree all along; returns the highest per-GPU load and worker count seen.
fn roll(surge: usize) -> (usize, usize) {
    let fx = Fixture::new();
    let surge_text = surge.to_string();
    let args = [
        "-w",
        "7",
        "--gpus",
        "0,1,2",
        "--max-surge",
        &surge_text,
        // Readiness-gated from the first boot (`auto` would treat the first generation, which
        // has not said READY=1 yet, as exec-ready and roll it ungated).
        "--ready",
        "notify",
        "--log-level",
        "debug",
        "--",
        bin(),
        "worker",
        "--ready-delay",
        "300ms",
    ];
    let (mut master, _) = start(&fx, &args, &[]);
    master.wait_log_count("is ready", 7, SOON).unwrap();
    let before = settle(&mut master, CUDA, 7);
    let old: BTreeSet<i32> = before.values().map(|w| w.pid).collect();
    let limit = cap(7, 1, 3) + surge;
    master.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut max_load, mut max_workers, mut observations) = (0, 0, 0);
    loop {
        let placed = placements(&mut master, CUDA);
        observations += 1;
        for worker in &placed {
            assert_eq!(
                worker.gpus,
                expected(THREE, 1, worker.slot),
                "during the roll: {worker:?}"
            );
        }
        let load = load(&placed);
        let highest = load.values().copied().max().unwrap_or(0);
        assert!(
            highest <= limit,
            "during the roll: load {load:?} over cap + surge = {limit}: {placed:?}"
        );
        max_load = max_load.max(highest);
        max_workers = max_workers.max(placed.len());
        let done = placed.len() == 7 && placed.iter().all(|w| !old.contains(&w.pid));
        if done && master.stderr().contains("Reload finished") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the roll did not finish: {placed:?}\n{}",
            master.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The master's own account of the surge: its log, in order, from the HUP on (a loaded
    // machine left the sampling above 1 or 2 looks at the whole roll, none of them mid-surge).
    let logged = most_workers_logged(&master.stderr(), 7);
    println!(
        "roll with max_surge {surge}: {observations} observations, \
         highest per-GPU load {max_load}, most workers {max_workers} seen, {logged} logged"
    );
    let max_workers = max_workers.max(logged);
    let after = settle(&mut master, CUDA, 7);
    let load = assert_balanced(&after, THREE, 1, "after the roll");
    record(
        &format!("7 over 0,1,2 after a HUP roll (max_surge {surge})"),
        &load,
    );
    for (slot, worker) in &after {
        assert_eq!(
            worker.gpus, before[slot].gpus,
            "slot {slot} kept its devices"
        );
        assert!(!old.contains(&worker.pid), "slot {slot} was replaced");
    }
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    master.assert_no_process_left();
    (max_load, max_workers)
}

/// The most workers alive at once after the HUP by the master's log (`n` before it): each
/// `Booting worker` is one more, each `Worker exiting` (logged as it is reaped) one less.
fn most_workers_logged(log: &str, n: usize) -> usize {
    let after_hup = log.split("Handling signal: hup").nth(1).unwrap_or_default();
    let (mut live, mut most) = (n, n);
    for line in after_hup.lines() {
        if line.contains("Booting worker with pid") {
            live += 1;
            most = most.max(live);
        } else if line.contains("Worker exiting (pid:") {
            live = live.saturating_sub(1);
        }
    }
    most
}

#[test]
fn a_hup_roll_keeps_each_slot_on_its_gpu_and_the_surge_bounded() {
    let (max_load, max_workers) = roll(1);
    assert!(max_workers > 7, "the roll was observed while it surged");
    assert!(max_load <= 4);
}

#[test]
fn a_hup_roll_with_max_surge_2_stays_within_cap_plus_2() {
    let (max_load, max_workers) = roll(2);
    assert!(max_workers > 7, "the roll was observed while it surged");
    assert!(max_workers <= 9, "at most 2 extra workers");
    assert!(max_load <= 5);
}

#[test]
fn a_usr2_upgrade_starts_the_new_master_from_a_clean_balance() {
    let fx = Fixture::new();
    let pidfile = fx.join("a.pid");
    let upgrade = fx.join("a.pid.2");
    let (mut master, _) = start(
        &fx,
        &[
            "-w",
            "7",
            "--gpus",
            "0,1,2",
            "-p",
            pidfile.to_str().unwrap(),
        ],
        &[],
    );
    // Disturb the old master first: crashes and a resize it will not pass on.
    settle(&mut master, CUDA, 7);
    master.signal(libc::SIGTTIN);
    master
        .wait_log("Handling signal: ttin", SOON)
        .unwrap_or_else(|e| panic!("{e}"));
    let old = settle(&mut master, CUDA, 8);
    for slot in [0, 4] {
        arbiter_tests::signal(old[&slot].pid, libc::SIGKILL).unwrap();
    }
    let old = settle(&mut master, CUDA, 8);
    assert_balanced(&old, THREE, 1, "old master at 8");
    master.signal(libc::SIGUSR2);
    let mut new_master = 0;
    assert!(
        wait_until(SOON, || {
            new_master = std::fs::read_to_string(&upgrade)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            new_master > 0
        }),
        "no {}\n{}",
        upgrade.display(),
        master.stderr()
    );
    master.track(new_master);
    let log = || std::fs::read_to_string(fx.join("arbiter.stderr")).unwrap_or_default();
    // The new master's own workers, as its configuration says (7), balanced from scratch.
    let fresh = settle_of(new_master, CUDA, 7, SOON, log);
    master.track_tree();
    let load = assert_balanced(&fresh, THREE, 1, "new master");
    record("7 over 0,1,2 under the new master after USR2", &load);
    assert_eq!(
        load,
        BTreeMap::from([("0".into(), 3), ("1".into(), 2), ("2".into(), 2)])
    );
    // The old master's workers are untouched until it is told to go.
    let old_now = placements(&mut master, CUDA);
    assert_eq!(old_now.len(), 8, "{old_now:?}");
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    // The new master writes this after the old one is gone: poll the file itself.
    assert!(
        wait_until(SOON, || log().contains("Master has been promoted.")),
        "{}",
        log()
    );
    let promoted = settle_of(new_master, CUDA, 7, SOON, log);
    assert_eq!(promoted, fresh, "promotion moves no worker");
    master.track_tree();
    arbiter_tests::signal(new_master, libc::SIGTERM).unwrap();
    assert!(wait_gone(new_master, EXIT).is_some(), "{}", log());
    assert!(wait_until(SOON, || master.alive_tracked().is_empty()));
}
