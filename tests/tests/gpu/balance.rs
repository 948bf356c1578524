//! The steady balance and how it survives crashes, heartbeat timeouts and TTIN/TTOU.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arbiter_tests::{identities_of, signal, wait_gone, wait_until, Fixture, SOON};

use crate::{
    assert_balanced, bin, cap, expected, load, placements, record, settle, start, Placed, Rng,
    CUDA, EXIT,
};

const THREE: &[&str] = &["0", "1", "2"];

/// Checks one observation while workers come and go: distinct slots, each worker on its
/// slot's devices, no device over `limit`.
fn assert_observation(placed: &[Placed], limit: usize, context: &str) {
    let mut slots: Vec<usize> = placed.iter().map(|p| p.slot).collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(
        slots.len(),
        placed.len(),
        "{context}: a slot twice: {placed:?}"
    );
    for worker in placed {
        assert_eq!(
            worker.gpus,
            expected(THREE, 1, worker.slot),
            "{context}: {worker:?}"
        );
    }
    let load = load(placed);
    assert!(
        load.values().all(|&n| n <= limit),
        "{context}: load {load:?} over {limit}"
    );
}

#[test]
fn seven_workers_over_three_gpus_give_3_2_2_in_env_and_over_http() {
    let fx = Fixture::new();
    let (mut master, port) = start(
        &fx,
        &["-w", "7", "--gpus", "0,1,2", "--log-format", "json"],
        &[],
    );
    let settled = settle(&mut master, CUDA, 7);
    let load = assert_balanced(&settled, THREE, 1, "7 over 3");
    assert_eq!(
        load,
        BTreeMap::from([("0".into(), 3), ("1".into(), 2), ("2".into(), 2)])
    );
    record("7 workers, --gpus 0,1,2", &load);
    // The worker's own view (GET / reports the variable it was given) agrees.
    let pids: Vec<i32> = settled.values().map(|p| p.pid).collect();
    let seen = identities_of(port, &pids, Duration::from_secs(20));
    for worker in settled.values() {
        let identity = seen
            .get(&worker.pid)
            .unwrap_or_else(|| panic!("{} did not answer: {seen:?}", worker.pid));
        assert_eq!(identity.slot, worker.slot);
        assert_eq!(
            identity.gpu.as_deref(),
            Some(worker.gpus.join(",").as_str())
        );
    }
    // So does the (JSON) log: each "Booting worker" record names the pid's GPUs and slot.
    let booted = booted_from_json_log(&master.stderr());
    for worker in settled.values() {
        assert_eq!(
            booted.get(&worker.pid),
            Some(&(worker.slot, worker.gpus.join(","))),
            "the log shows {worker:?}:\n{}",
            master.stderr()
        );
    }
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    master.assert_no_process_left();
}

/// `pid -> (slot, gpus)` from the `Booting worker` records of a JSON log.
fn booted_from_json_log(log: &str) -> BTreeMap<i32, (usize, String)> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|record| {
            let msg = record["msg"].as_str()?;
            let pid = msg
                .strip_prefix("Booting worker with pid: ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let slot = record["slot"].as_str()?.parse().ok()?;
            Some((pid, (slot, record["gpus"].as_str()?.to_owned())))
        })
        .collect()
}

#[test]
fn the_text_log_shows_each_workers_gpus() {
    let fx = Fixture::new();
    let (mut master, _) = start(&fx, &["-w", "3", "--gpus", "0,1,2"], &[]);
    let settled = settle(&mut master, CUDA, 3);
    let log = master.stderr();
    for worker in settled.values() {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("Booting worker with pid: {}", worker.pid)))
            .unwrap_or_else(|| panic!("no boot line for {worker:?}:\n{log}"));
        assert!(
            line.contains(&format!("gpus={}", worker.gpus.join(",")))
                || line.contains(&format!("gpus: {}", worker.gpus.join(","))),
            "{line:?} names the GPUs of {worker:?}"
        );
    }
}

#[test]
fn fifty_random_crashes_leave_the_balance_and_every_slot_on_its_gpu() {
    let fx = Fixture::new();
    let (mut master, _) = start(&fx, &["-w", "7", "--gpus", "0,1,2"], &[]);
    let before = settle(&mut master, CUDA, 7);
    let mut rng = Rng::seeded();
    let mut first_seen: BTreeMap<i32, Instant> = BTreeMap::new();
    let mut kills_per_slot: BTreeMap<usize, usize> = BTreeMap::new();
    // A worker that lived over a second is a long-lived one: its death is replaced at once,
    // without the crash-loop backoff.
    let old_enough = Duration::from_millis(1200);
    // Fifty kills, each after a bounded wait for a worker that is old enough: the bound is
    // on each step's state, not on how fast a loaded machine gets through all fifty.
    for kills in 0..50 {
        let mut victim = None;
        wait_until(SOON * 3, || {
            let placed = placements(&mut master, CUDA);
            assert_observation(&placed, cap(7, 1, 3), &format!("after {kills} kills"));
            let now = Instant::now();
            for worker in &placed {
                first_seen.entry(worker.pid).or_insert(now);
            }
            let eligible: Vec<&Placed> = placed
                .iter()
                .filter(|p| now.duration_since(first_seen[&p.pid]) >= old_enough)
                .collect();
            if eligible.is_empty() {
                return false;
            }
            victim = Some(eligible[rng.below(eligible.len())].clone());
            true
        });
        let victim = victim.unwrap_or_else(|| {
            panic!(
                "after {kills} kills, no worker lived {old_enough:?} within {:?}\n{}",
                SOON * 3,
                master.stderr()
            )
        });
        signal(victim.pid, libc::SIGKILL).expect("killing a worker");
        *kills_per_slot.entry(victim.slot).or_default() += 1;
        assert!(
            wait_gone(victim.pid, SOON).is_some(),
            "{victim:?} survived KILL"
        );
    }
    println!("kills per slot: {kills_per_slot:?}");
    let after = settle(&mut master, CUDA, 7);
    let load = assert_balanced(&after, THREE, 1, "after 50 crashes");
    record("7 workers over 0,1,2 after 50 crashes", &load);
    for (slot, worker) in &after {
        assert_eq!(worker.gpus, before[slot].gpus, "slot {slot} kept its GPU");
    }
    assert!(
        !master.stderr().contains("crash-looping"),
        "no crash-loop backoff for long-lived workers\n{}",
        master.stderr()
    );
}

#[test]
fn heartbeat_timeouts_respawn_each_slot_on_its_gpu() {
    let fx = Fixture::new();
    let hang = [
        "-w",
        "3",
        "--gpus",
        "0,1,2",
        "-t",
        "1",
        "--abort-grace",
        "200ms",
        "--",
        bin(),
        "worker",
        "--hang-after",
        "1200ms",
    ];
    let (mut master, _) = start(&fx, &hang, &[]);
    let before = settle(&mut master, CUDA, 3);
    // A bound against a hang only, generous for a loaded machine: each cycle is a boot, 1.2 s
    // of work, the 1 s timeout and the abort grace, twice per slot (about 6 s when idle).
    let deadline = Instant::now() + SOON * 6;
    // Every slot times out at least twice (six in all), and each slot's first worker among
    // them: under load the slots fall out of phase, and six timeouts may come from two.
    let timed_out = |log: &str, pid: i32| log.contains(&format!("WORKER TIMEOUT (pid:{pid})"));
    loop {
        let log = master.stderr();
        if log.matches("WORKER TIMEOUT").count() >= 6
            && before.values().all(|w| timed_out(&log, w.pid))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "too few timeouts\n{}",
            master.stderr()
        );
        let placed = placements(&mut master, CUDA);
        assert_observation(&placed, 1, "during timeouts");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The workers keep hanging and being replaced, so a moment with all three exec'd at once
    // is short on a loaded machine: a wider bound than `settle`'s for that moment to come.
    master.track_tree();
    let (pid, log) = (master.pid(), master.stderr());
    let after = crate::settle_of(pid, CUDA, 3, SOON * 3, || log.clone());
    master.track_tree();
    let load = assert_balanced(&after, THREE, 1, "after timeouts");
    record("3 workers over 0,1,2 after heartbeat timeouts", &load);
    assert!(
        after.values().all(|w| before[&w.slot].pid != w.pid),
        "before {before:?}\nafter {after:?}\n{}",
        master.stderr()
    );
}

#[test]
fn ttin_and_ttou_keep_the_balance_and_never_move_a_running_worker() {
    let fx = Fixture::new();
    let (mut master, _) = start(&fx, &["-w", "7", "--gpus", "0,1,2"], &[]);
    let mut current = settle(&mut master, CUDA, 7);
    let mut sent: BTreeMap<&str, usize> = BTreeMap::new();
    for (sig, name, times, target) in [
        (libc::SIGTTIN, "ttin", 2, 9),
        (libc::SIGTTOU, "ttou", 4, 5),
        (libc::SIGTTIN, "ttin", 3, 8),
        (libc::SIGTTOU, "ttou", 7, 1),
        (libc::SIGTTIN, "ttin", 3, 4),
    ] {
        for _ in 0..times {
            master.signal(sig);
            let count = sent.entry(name).or_default();
            *count += 1;
            // One at a time: the kernel merges a signal still pending.
            master
                .wait_log_count(&format!("Handling signal: {name}"), *count, SOON)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let now = settle(&mut master, CUDA, target);
        let context = format!("{name} x{times} -> {target}");
        let load = assert_balanced(&now, THREE, 1, &context);
        record(&format!("TTIN/TTOU -> {target} workers"), &load);
        for (slot, worker) in &now {
            if let Some(old) = current.get(slot) {
                assert_eq!(worker, old, "{context}: slot {slot} was moved or restarted");
            }
        }
        current = now;
    }
}
