//! Serving: boot, replacement of dead workers, TTIN/TTOU, GPU spreading.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arbiter_tests::{identities_of, signal, wait_gone, wait_until, Fixture, SOON};

use crate::serving;

#[test]
fn three_workers_boot_and_serve_from_slots_0_to_2() {
    let fx = Fixture::new();
    let (mut master, port) = serving(&fx, &["-w", "3"], 3);
    let pids = master.children();
    let seen = identities_of(port, &pids, SOON);
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<_>>(),
        pids.iter().copied().collect::<BTreeSet<_>>(),
        "every worker answers"
    );
    let slots: BTreeSet<usize> = seen.values().map(|i| i.slot).collect();
    assert_eq!(slots, BTreeSet::from([0, 1, 2]));
    let ids: BTreeSet<u64> = seen.values().map(|i| i.id).collect();
    assert_eq!(ids.len(), 3, "distinct ids: {seen:?}");
}

#[test]
fn a_killed_worker_is_replaced_in_the_same_slot_with_a_new_id() {
    let fx = Fixture::new();
    let (mut master, port) = serving(&fx, &["-w", "2"], 2);
    let pids = master.children();
    let before = identities_of(port, &pids, SOON);
    assert_eq!(before.len(), 2, "{before:?}");
    let victim = before.values().next().cloned().expect("a worker");
    signal(victim.pid, libc::SIGKILL).expect("kill");
    assert!(wait_gone(victim.pid, SOON).is_some());
    let mut after = Vec::new();
    assert!(
        wait_until(SOON, || {
            after = master.children();
            after.len() == 2 && !after.contains(&victim.pid)
        }),
        "no replacement: {after:?}\n{}",
        master.stderr()
    );
    let new_pid = *after.iter().find(|p| !pids.contains(p)).expect("a new pid");
    let now = identities_of(port, &[new_pid], SOON);
    let replacement = now.get(&new_pid).expect("the replacement answers");
    assert_eq!(replacement.slot, victim.slot);
    assert!(replacement.id > before.values().map(|i| i.id).max().unwrap());
    master
        .wait_log(
            &format!("Worker (pid:{}) was sent SIGKILL", victim.pid),
            SOON,
        )
        .unwrap();
}

#[test]
fn ttin_and_ttou_change_the_worker_count_with_a_floor_of_one() {
    let fx = Fixture::new();
    let (mut master, port) = serving(&fx, &["-w", "1"], 1);
    master.signal(libc::SIGTTIN);
    master.wait_children(2, SOON);
    master.signal(libc::SIGTTIN);
    let three = master.wait_children(3, SOON);
    let slots: BTreeSet<usize> = identities_of(port, &three, SOON)
        .values()
        .map(|i| i.slot)
        .collect();
    assert_eq!(slots, BTreeSet::from([0, 1, 2]));
    for sent in 1..=3 {
        master.signal(libc::SIGTTOU);
        // One at a time: the kernel merges a signal still pending (a 50 ms pause was not
        // enough for a master left unscheduled on a loaded machine).
        master
            .wait_log_count("Handling signal: ttou", sent, SOON)
            .unwrap();
    }
    master.wait_children(1, SOON);
    // One more TTOU must not go below one worker.
    master.signal(libc::SIGTTOU);
    master
        .wait_log_count("Handling signal: ttou", 4, SOON)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let left = master.wait_children(1, SOON);
    assert_eq!(identities_of(port, &left, SOON).len(), 1);
}

#[test]
fn gpus_are_spread_3_2_2_and_a_replacement_keeps_its_gpu() {
    let fx = Fixture::new();
    let (mut master, port) = serving(&fx, &["-w", "7", "--gpus", "0,1,2"], 7);
    let pids = master.children();
    let seen = identities_of(port, &pids, Duration::from_secs(20));
    assert_eq!(seen.len(), 7, "every worker answers: {seen:?}");
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for identity in seen.values() {
        *load
            .entry(identity.gpu.clone().expect("a gpu"))
            .or_default() += 1;
    }
    assert_eq!(
        load,
        BTreeMap::from([("0".into(), 3), ("1".into(), 2), ("2".into(), 2)])
    );
    let victim = seen.values().next().cloned().unwrap();
    signal(victim.pid, libc::SIGKILL).unwrap();
    let mut after = Vec::new();
    assert!(wait_until(SOON, || {
        after = master.children();
        after.len() == 7 && !after.contains(&victim.pid)
    }));
    let new_pid = *after.iter().find(|p| !pids.contains(p)).unwrap();
    let replacement = identities_of(port, &[new_pid], SOON)
        .remove(&new_pid)
        .expect("the replacement answers");
    assert_eq!(replacement.slot, victim.slot);
    assert_eq!(replacement.gpu, victim.gpu);
}

#[test]
fn the_master_runs_a_single_thread() {
    // DESIGN: no second thread may exist in the master at a moment it forks; it never has one.
    let fx = Fixture::new();
    let (mut master, _) = serving(&fx, &["-w", "3", "--metrics-bind", "127.0.0.1:0"], 3);
    master.signal(libc::SIGTTIN);
    master.wait_children(4, SOON);
    let threads = std::fs::read_dir(format!("/proc/{}/task", master.pid()))
        .unwrap()
        .count();
    assert_eq!(threads, 1, "threads in the master");
}
