//! Per-slot listeners (`Config::slot_listeners`): the core tells the shell which slots hold
//! listeners and which get new connections; a slot taken away by a lower target is steered
//! away at once, its worker keeps serving for `SLOT_DRAIN`, then retires, and the slot's
//! listener closes only once that worker is gone. Driven through the simulated world (which
//! also checks that no slot is closed while its worker lives).

mod sim;

use arbiter_core::{Action, Command, Config, ExitStatus, Moment, Reason, Signal, SLOT_DRAIN};
use sim::{at_ms, ms, secs, Behavior, World};

fn config(workers: usize) -> Config {
    Config {
        slot_listeners: true,
        ..sim::config(workers)
    }
}

fn holds(world: &World) -> Vec<(Moment, usize, usize)> {
    world
        .actions(|a| matches!(a, Action::SlotListeners { .. }))
        .into_iter()
        .map(|(at, action)| match action {
            Action::SlotListeners { open, steer, .. } => (at, open, steer),
            _ => unreachable!(),
        })
        .collect()
}

fn term_at(world: &World, slot: usize) -> Option<Moment> {
    world
        .procs
        .values()
        .filter(|p| p.slot == slot)
        .find_map(|p| p.termed_at)
}

#[test]
fn off_by_default_and_no_action_without_it() {
    let mut world = World::new(
        Config {
            slot_listeners: false,
            ..config(3)
        },
        Behavior::good(),
    );
    world.drive(secs(1));
    world.signal(Signal::Ttou);
    world.drive(secs(3));
    assert!(holds(&world).is_empty());
    // Without per-slot listeners a cull retires at once.
    assert_eq!(term_at(&world, 2), Some(at_ms(1000)));
}

#[test]
fn the_first_workers_get_one_listener_each() {
    let mut world = World::new(config(3), Behavior::good());
    world.drive(secs(1));
    assert_eq!(holds(&world), [(at_ms(0), 3, 3)]);
    let reasons: Vec<Reason> = world
        .actions(|a| matches!(a, Action::SlotListeners { .. }))
        .into_iter()
        .map(|(_, a)| match a {
            Action::SlotListeners { reason, .. } => reason,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(reasons, [Reason::Boot]);
}

#[test]
fn a_slot_scaled_away_is_steered_away_drains_then_retires_then_closes() {
    let mut world = World::new(config(3), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Ttou);
    // Steered away at once; its worker still serves.
    assert_eq!(holds(&world).last(), Some(&(at_ms(1000), 3, 2)));
    assert_eq!(term_at(&world, 2), None);
    world.drive(SLOT_DRAIN - ms(1));
    assert_eq!(term_at(&world, 2), None, "still draining");
    world.drive(secs(2));
    assert_eq!(term_at(&world, 2), Some(at_ms(1000) + SLOT_DRAIN));
    // Closed once the worker (50 ms to exit after TERM) is gone.
    assert_eq!(
        holds(&world).last(),
        Some(&(at_ms(1000) + SLOT_DRAIN + ms(50), 2, 2))
    );
    assert_eq!(term_at(&world, 0), None);
    assert_eq!(term_at(&world, 1), None);
}

#[test]
fn a_scale_up_during_the_drain_keeps_the_worker_and_its_listener() {
    let mut world = World::new(config(3), Behavior::good());
    world.drive(secs(1));
    let pid = world.pid_in(2);
    world.signal(Signal::Ttou);
    world.drive(ms(300));
    world.signal(Signal::Ttin);
    world.drive(secs(3));
    assert_eq!(term_at(&world, 2), None, "slot 2 is wanted again");
    assert!(world.is_alive(pid));
    let last: Vec<(usize, usize)> = holds(&world).iter().map(|h| (h.1, h.2)).collect();
    assert_eq!(last, [(3, 3), (3, 2), (3, 3)]);
}

#[test]
fn a_second_lower_target_drains_its_slot_in_full() {
    let mut world = World::new(config(4), Behavior::good());
    world.drive(secs(1));
    world.command(Command::Scale(3));
    world.drive(ms(600));
    world.command(Command::Scale(2));
    world.drive(secs(3));
    let second = at_ms(1600);
    assert_eq!(term_at(&world, 3), Some(second + SLOT_DRAIN));
    assert_eq!(term_at(&world, 2), Some(second + SLOT_DRAIN));
    let last: Vec<(usize, usize)> = holds(&world).iter().map(|h| (h.1, h.2)).collect();
    assert_eq!(last, [(4, 4), (4, 3), (4, 2), (2, 2)]);
}

#[test]
fn a_dead_worker_keeps_its_slot_listener_for_its_replacement() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    let pid = world.pid_in(1);
    world.kill_now(
        pid,
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        },
    );
    world.drive(secs(1));
    assert_ne!(world.pid_in(1), pid, "respawned in its slot");
    assert_eq!(
        holds(&world),
        [(at_ms(0), 2, 2)],
        "nothing closed or steered"
    );
}

#[test]
fn a_stop_during_the_drain_stops_everything_at_once() {
    let mut world = World::new(config(3), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Ttou);
    world.drive(ms(200));
    world.signal(Signal::Term);
    for slot in 0..3 {
        assert_eq!(term_at(&world, slot), Some(at_ms(1200)), "slot {slot}");
    }
    world.drive(secs(3));
    assert!(world.exit.is_some());
    assert_eq!(holds(&world).len(), 2, "no listener change while stopping");
}

#[test]
fn with_gpus_a_slot_scaled_away_is_not_drained() {
    let gpus =
        arbiter_core::GpuConfig::new(vec!["0".into(), "1".into()], 1, "CUDA_VISIBLE_DEVICES")
            .expect("valid");
    let mut world = World::new(
        Config {
            gpus: Some(gpus),
            ..config(2)
        },
        Behavior::good(),
    );
    world.drive(secs(1));
    world.signal(Signal::Ttou);
    // Steered away and retired at once: the device is at its cap again.
    assert_eq!(holds(&world).last(), Some(&(at_ms(1000), 2, 1)));
    assert_eq!(term_at(&world, 1), Some(at_ms(1000)));
    world.drive(secs(1));
    assert_eq!(holds(&world).last(), Some(&(at_ms(1050), 1, 1)));
}

#[test]
fn a_slot_whose_queue_still_holds_connections_keeps_its_worker_until_it_is_empty() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    world.slot_queued = 3;
    world.signal(Signal::Ttou);
    world.drive(secs(2));
    assert_eq!(term_at(&world, 1), None, "its queue is not empty");
    let checks = world
        .actions(|a| matches!(a, Action::CheckSlotQueues { from: 1, to: 2 }))
        .len();
    assert!(
        checks > 10,
        "asked every {:?}: {checks}",
        arbiter_core::SLOT_DRAIN_POLL
    );
    world.slot_queued = 0;
    let emptied = world.now;
    world.drive(secs(1));
    let termed = term_at(&world, 1).expect("retired once empty");
    assert!(
        termed > emptied && termed <= emptied + arbiter_core::SLOT_DRAIN_POLL,
        "{termed:?} {emptied:?}"
    );
}

#[test]
fn a_queue_that_never_empties_ends_the_drain_at_the_graceful_timeout() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    world.slot_queued = 1;
    world.signal(Signal::Ttou);
    world.drive(secs(12));
    // config(): graceful_timeout 10 s, counted from the drain's start.
    let termed = term_at(&world, 1).expect("retired at the limit");
    assert!(
        termed >= at_ms(11_000) && termed <= at_ms(11_000) + arbiter_core::SLOT_DRAIN_POLL,
        "{termed:?}"
    );
}
