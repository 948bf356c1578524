//! Recycling (by age, by memory, at a worker's request) through the simulated world: the
//! replacement comes first, ready capacity never drops below the target, slots take turns,
//! and a recycled exit is never a crash. The world itself panics on a recycle that retires a
//! worker before its slot has a ready replacement.

mod sim;

use std::collections::HashMap;
use std::time::Duration;

use arbiter_core::{
    Action, Config, Event, ExitCause, Moment, Pid, ReadyMode, Reason, Signal, WorkerState,
};
use sim::{ms, secs, Behavior, World};

/// The base simulation with longer timeouts: a 5 s heartbeat and a 10 s boot timeout.
fn config(workers: usize) -> Config {
    Config {
        timeout: Some(secs(5)),
        boot_timeout: Some(secs(10)),
        ..sim::config(workers)
    }
}

/// Every `Recycling` event: (moment, pid, slot, reason).
fn recyclings(world: &World) -> Vec<(Moment, Pid, usize, Reason)> {
    world
        .events()
        .into_iter()
        .filter_map(|(at, event)| match event {
            Event::Recycling {
                pid, slot, reason, ..
            } => Some((at, pid, slot, reason)),
            _ => None,
        })
        .collect()
}

/// Every worker exit: (pid, expected, cause).
fn exits(world: &World) -> Vec<(Pid, bool, ExitCause)> {
    world
        .events()
        .into_iter()
        .filter_map(|(_, event)| match event {
            Event::WorkerExited {
                pid,
                expected,
                cause,
                ..
            } => Some((pid, expected, cause)),
            _ => None,
        })
        .collect()
}

/// Steps through `duration`, calling `check` after every step.
fn step_through(world: &mut World, duration: Duration, mut check: impl FnMut(&World)) {
    let end = world.now + duration;
    let mut steps = 0;
    while let Some(next) = world.next_moment().filter(|at| *at <= end) {
        world.step_to(next);
        check(world);
        steps += 1;
        assert!(steps < 1_000_000, "runaway simulation");
    }
}

/// Slots with more than one worker in the table (one of them recycling).
fn doubled_slots(world: &World) -> usize {
    let mut per_slot: HashMap<usize, usize> = HashMap::new();
    for worker in world.arbiter.workers() {
        *per_slot.entry(worker.slot).or_default() += 1;
    }
    per_slot.values().filter(|n| **n > 1).count()
}

/// Checks what every recycling scenario must show: recycled exits are expected, of cause
/// `recycled`, and never counted as restarts or crash-loop backoffs.
fn assert_recycled_exits_are_not_crashes(world: &World, target: usize) {
    let recycled: Vec<_> = exits(world)
        .into_iter()
        .filter(|(_, _, cause)| *cause == ExitCause::Recycled)
        .collect();
    assert!(!recycled.is_empty(), "nothing was recycled");
    assert!(recycled.iter().all(|(_, expected, _)| *expected));
    assert!(exits(world).iter().all(|(_, expected, _)| *expected));
    for slot in 0..target {
        assert_eq!(world.arbiter.slot_restarts(slot), 0, "slot {slot} restarts");
    }
    let backoffs = world
        .events()
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::Backoff { .. }))
        .count();
    assert_eq!(backoffs, 0, "a recycled exit backed a slot off");
}

#[test]
fn age_recycling_keeps_ready_capacity_at_the_target() {
    let target = 4;
    let mut world = World::new(
        Config {
            max_worker_age: Some(secs(60)),
            max_surge: 1,
            ..config(target)
        },
        Behavior::slow_ready(secs(2)),
    );
    world.settle(secs(10));
    let mut lowest = usize::MAX;
    step_through(&mut world, secs(600), |world| {
        lowest = lowest.min(world.ready());
    });
    assert_eq!(lowest, target, "ready capacity dipped");
    // Ten minutes of one-minute lives: every slot recycled about ten times.
    let recycled = recyclings(&world);
    assert!(recycled.len() >= 9 * target, "{} recycles", recycled.len());
    assert!(recycled.iter().all(|r| r.3 == Reason::RecycleAge));
    let spawns = world.spawns();
    assert!(spawns[target..].iter().all(|s| s.3 == Reason::RecycleAge));
    assert_recycled_exits_are_not_crashes(&world, target);
    // Each old worker got TERM only once its replacement was ready (the world checks the
    // table; here: from the outside, the TERM follows a READY of the same slot).
    for (at, pid, _, _) in recycled.iter().filter(|r| r.0 + secs(5) < world.now) {
        let term = world.signals_to(*pid);
        assert_eq!(term.len(), 1, "signals to {pid}: {term:?}");
        assert!(
            term[0].0 >= *at + secs(2),
            "retired before the replacement booted"
        );
    }
}

#[test]
fn age_recycling_is_staggered_so_no_two_slots_recycle_together() {
    let target = 4;
    let age = secs(60);
    // A surge of four would let every slot recycle at once: only the stagger separates them.
    let mut world = World::new(
        Config {
            max_worker_age: Some(age),
            max_surge: target,
            ..config(target)
        },
        Behavior::slow_ready(secs(2)),
    );
    world.settle(secs(10));
    let mut most = 0;
    step_through(&mut world, secs(1200), |world| {
        most = most.max(doubled_slots(world));
        assert!(
            world.ready() >= target,
            "ready capacity dipped at {:?}",
            world.now
        );
    });
    assert_eq!(most, 1, "two slots recycled together");
    let recycled = recyclings(&world);
    // The default stagger is half the age: slot turns at least age / 2 / N apart.
    for pair in recycled.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= age / 2 / target as u32,
            "recycles {pair:?} {gap:?} apart"
        );
    }
    // A worker never outlives the age, and lives at least age minus the stagger.
    for (at, pid, _, _) in &recycled {
        let lived = *at - world.procs[pid].started;
        assert!(lived <= age && lived > age / 2, "pid {pid} lived {lived:?}");
    }
    // Once a slot's worker was replaced by recycling, its replacements live exactly the age.
    let mut last_by_slot: HashMap<usize, Moment> = HashMap::new();
    let mut exact = 0;
    for (at, _, slot, _) in &recycled {
        if let Some(previous) = last_by_slot.insert(*slot, *at) {
            assert_eq!(*at - previous, age, "slot {slot} drifted");
            exact += 1;
        }
    }
    assert!(exact >= 3 * target, "{exact} steady recycles");
    assert_recycled_exits_are_not_crashes(&world, target);
}

#[test]
fn zero_jitter_recycles_each_worker_exactly_at_its_age() {
    let age = secs(30);
    let mut world = World::new(
        Config {
            max_worker_age: Some(age),
            max_worker_age_jitter: Some(Duration::ZERO),
            ..config(2)
        },
        Behavior::good(),
    );
    world.settle(secs(5));
    world.drive(secs(100));
    let recycled = recyclings(&world);
    assert!(recycled.len() >= 6);
    for (at, pid, _, _) in recycled {
        assert_eq!(at - world.procs[&pid].started, age);
    }
}

#[test]
fn a_worker_over_the_memory_limit_is_recycled_within_one_sample() {
    let target = 3;
    let every = secs(2);
    // 10 MB at exec, 1 MB a second more: over 50 MB after 40 s.
    let mut world = World::new(
        Config {
            max_worker_memory: Some(50_000_000),
            memory_sample_every: every,
            max_surge: 1,
            ..config(target)
        },
        Behavior {
            ready_after: Some(secs(1)),
            ..Behavior::leaks(1_000_000)
        },
    );
    world.settle(secs(5));
    let mut lowest = usize::MAX;
    step_through(&mut world, secs(200), |world| {
        lowest = lowest.min(world.ready());
    });
    assert_eq!(lowest, target, "ready capacity dipped");
    let recycled = recyclings(&world);
    assert!(recycled.len() >= 3 * target, "{} recycles", recycled.len());
    for (at, pid, _, reason) in &recycled {
        assert_eq!(*reason, Reason::RecycleMemory);
        let lived = *at - world.procs[pid].started;
        assert!(
            lived > secs(40) && lived <= secs(40) + every,
            "lived {lived:?}"
        );
    }
    assert_recycled_exits_are_not_crashes(&world, target);
    // The cost is bounded by the sample deadline, not by the wake-ups: one sample every
    // interval, each listing the running workers.
    let samples = world.actions(|a| matches!(a, Action::SampleMemory { .. }));
    let elapsed = world.now.since_origin().as_secs() / every.as_secs();
    assert!(
        samples.len() as u64 <= elapsed + 1,
        "{} samples",
        samples.len()
    );
    assert!(
        samples.len() as u64 >= elapsed - 1,
        "{} samples",
        samples.len()
    );
    for pair in samples.windows(2) {
        assert_eq!(pair[1].0 - pair[0].0, every);
    }
}

#[test]
fn no_memory_limit_means_no_samples_and_a_reload_can_turn_them_off() {
    let mut world = World::new(config(2), Behavior::leaks(1_000_000_000));
    world.drive(secs(30));
    assert!(world
        .actions(|a| matches!(a, Action::SampleMemory { .. }))
        .is_empty());
    assert!(recyclings(&world).is_empty());
    let limited = Config {
        max_worker_memory: Some(1 << 40),
        ..config(2)
    };
    world.reload(limited);
    world.settle(secs(10));
    world.drive(secs(10));
    let before = world
        .actions(|a| matches!(a, Action::SampleMemory { .. }))
        .len();
    assert!(before >= 4, "{before} samples");
    world.reload(config(2));
    world.settle(secs(10));
    world.drive(secs(30));
    let after = world
        .actions(|a| matches!(a, Action::SampleMemory { .. }))
        .len();
    assert_eq!(before, after);
}

#[test]
fn a_worker_that_asks_is_replaced_first_then_retired() {
    let target = 2;
    let mut world = World::new(
        Config {
            max_surge: 1,
            ..config(target)
        },
        Behavior {
            ready_after: Some(secs(1)),
            ..Behavior::asks_recycle(secs(20))
        },
    );
    world.settle(secs(5));
    let mut lowest = usize::MAX;
    step_through(&mut world, secs(100), |world| {
        lowest = lowest.min(world.ready());
    });
    assert_eq!(lowest, target);
    let recycled = recyclings(&world);
    assert!(recycled.len() >= 4 * target, "{} recycles", recycled.len());
    assert!(recycled.iter().all(|r| r.3 == Reason::RecycleRequested));
    assert_recycled_exits_are_not_crashes(&world, target);
    // A second request while the first is under way changes nothing.
    let pid = world.pid_in(0);
    world.arbiter.handle_recycle_request(pid, world.now);
    world.drain();
    let spawns = world.spawns().len();
    world.arbiter.handle_recycle_request(pid, world.now);
    world.drain();
    assert_eq!(world.spawns().len(), spawns);
}

#[test]
fn a_replacement_that_never_gets_ready_leaves_the_old_worker_serving() {
    let mut calls = 0;
    let mut world = World::scripted(
        Config {
            max_worker_age: Some(secs(30)),
            ..config(1)
        },
        arbiter_core::Role::Fresh,
        Box::new(move |_, _| {
            calls += 1;
            if calls == 1 {
                Behavior::good()
            } else {
                Behavior::boot_error(1)
            }
        }),
    );
    world.settle(secs(5));
    let first = world.pid_in(0);
    world.drive(secs(120));
    // The replacements crash at boot (and back off); the first worker still serves.
    assert!(world.is_alive(first));
    assert_eq!(world.ready_in(0), Some(first));
    assert!(world.signals_to(first).is_empty());
    assert_eq!(recyclings(&world).len(), 1);
}

#[test]
fn nothing_is_recycled_once_the_master_stops() {
    let mut world = World::new(
        Config {
            max_worker_memory: Some(1),
            ..config(2)
        },
        Behavior::good(),
    );
    world.drive(ms(500));
    world.signal(Signal::Term);
    let spawns = world.spawns().len();
    for pid in world.alive() {
        world.arbiter.handle_recycle_request(pid, world.now);
        world.arbiter.handle_memory(pid, u64::MAX, world.now);
        world.drain();
    }
    world.drive(secs(20));
    assert_eq!(world.spawns().len(), spawns);
    assert!(world.exit.is_some());
    assert!(world
        .arbiter
        .workers()
        .all(|w| w.state != WorkerState::Ready));
}

#[test]
fn a_hup_during_a_recycle_rolls_on_without_a_dip_and_ends_with_the_new_generation() {
    let target = 3;
    let mut world = World::new(
        Config {
            max_worker_age: Some(secs(20)),
            ..config(target)
        },
        Behavior::slow_ready(secs(2)),
    );
    world.settle(secs(10));
    // Until the first recycle is under way (its replacement booting).
    let started = world.drive_until(secs(30), |w| doubled_slots(w) == 1);
    assert!(started.is_some(), "no recycle began");
    world.signal(Signal::Hup);
    let mut lowest = usize::MAX;
    step_through(&mut world, secs(15), |world| {
        lowest = lowest.min(world.ready());
    });
    assert_eq!(lowest, target, "ready capacity dipped");
    assert!(world.arbiter.workers().all(|w| w.generation == 1));
    assert!(world
        .events()
        .iter()
        .any(|(_, e)| *e == Event::ReloadFinished { generation: 1 }));
    assert!(exits(&world).iter().all(|(_, expected, _)| *expected));
}

#[test]
fn a_replacement_over_the_limit_while_booting_is_recycled_once_ready_and_nothing_sticks() {
    let target = 2;
    // Over 50 MB after 2 s, ready only after 3 s: every replacement is over the limit before
    // it is ready. It must first replace its predecessor, then be recycled in turn.
    let mut world = World::new(
        Config {
            max_worker_memory: Some(50_000_000),
            memory_sample_every: ms(500),
            max_surge: 1,
            ..config(target)
        },
        Behavior {
            ready_after: Some(secs(3)),
            ..Behavior::leaks(20_000_000)
        },
    );
    world.settle(secs(10));
    let mut lowest = usize::MAX;
    let mut most = 0;
    step_through(&mut world, secs(120), |world| {
        lowest = lowest.min(world.ready());
        most = most.max(world.arbiter.workers().count());
    });
    assert_eq!(lowest, target, "ready capacity dipped");
    assert!(most <= target + 1, "{most} workers at once");
    // About one recycle per slot every 3.5 s: it never gets stuck.
    let recycled = recyclings(&world);
    assert!(recycled.len() >= 20, "{} recycles", recycled.len());
    let last = recycled.last().expect("recycles").0;
    assert!(world.now - last < secs(10), "stuck since {last:?}");
    assert_recycled_exits_are_not_crashes(&world, target);
}

#[test]
fn a_request_or_an_age_reached_while_booting_takes_effect_once_ready() {
    // It asks 500 ms after its exec, long before it is ready (2 s).
    let mut world = World::new(
        Config {
            max_surge: 1,
            ready: ReadyMode::Notify,
            ..config(1)
        },
        Behavior {
            ready_after: Some(secs(2)),
            ..Behavior::asks_recycle(ms(500))
        },
    );
    world.drive(secs(25));
    let recycled = recyclings(&world);
    assert!(recycled.len() >= 5, "{} recycles", recycled.len());
    for (at, pid, _, reason) in &recycled {
        assert_eq!(*reason, Reason::RecycleRequested);
        assert_eq!(*at - world.procs[pid].started, secs(2), "at its READY=1");
    }
    // An age shorter than the boot: recycled as soon as it is ready, never stuck.
    let mut world = World::new(
        Config {
            max_worker_age: Some(secs(2)),
            max_worker_age_jitter: Some(Duration::ZERO),
            ready: ReadyMode::Notify,
            ..config(2)
        },
        Behavior::slow_ready(secs(3)),
    );
    world.drive(secs(4));
    let mut lowest = usize::MAX;
    step_through(&mut world, secs(60), |world| {
        lowest = lowest.min(world.ready());
    });
    assert_eq!(lowest, 2);
    let recycled = recyclings(&world);
    assert!(recycled.len() >= 10, "{} recycles", recycled.len());
    for (at, pid, _, _) in &recycled {
        assert_eq!(*at - world.procs[pid].started, secs(3), "at its READY=1");
    }
}
