//! Long runs of spawns go out in rounds of at most `SPAWN_ROUND`, each ending with
//! `Timer::SpawnRound` due at once: the shell takes its signals, control requests and notify
//! messages between rounds, so a TERM in the middle of a large boot stops it promptly.

mod sim;

use arbiter_core::{Command, Event, ExitStatus, Moment, Reason, Signal, Timer, SPAWN_ROUND};
use proptest::prelude::*;
use sim::{ms, secs, Behavior, World};

use sim::config;

fn cuts(world: &World) -> Vec<(Moment, usize)> {
    world
        .events()
        .into_iter()
        .filter_map(|(at, e)| match e {
            Event::SpawnRoundCut { spawned } => Some((at, spawned)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_boot_of_a_hundred_spawns_in_rounds_of_the_bound_each_after_a_timer_due_at_once() {
    let workers = 100;
    let mut world = World::new(config(workers), Behavior::good());
    // The first round only, and the next one due at once.
    assert_eq!(world.spawns().len(), SPAWN_ROUND);
    assert_eq!(
        world.arbiter.next_deadline(),
        Some((Moment::ZERO, Timer::SpawnRound))
    );
    assert_eq!(cuts(&world), [(Moment::ZERO, SPAWN_ROUND)]);
    // Each timeout brings one more round.
    let mut rounds = 1;
    while world.spawns().len() < workers {
        let before = world.spawns().len();
        assert_eq!(
            world.arbiter.next_deadline().map(|(_, t)| t),
            Some(Timer::SpawnRound)
        );
        world.arbiter.handle_timeout(world.now);
        world.drain();
        let got = world.spawns().len() - before;
        assert!(got > 0 && got <= SPAWN_ROUND, "round of {got}");
        rounds += 1;
    }
    assert_eq!(rounds, workers.div_ceil(SPAWN_ROUND));
    assert_eq!(cuts(&world).len(), rounds - 1, "the last round is not cut");
    assert!(world.arbiter.due(world.now).all(|t| t != Timer::SpawnRound));
    assert!(world
        .spawns()
        .iter()
        .all(|(_, _, _, reason)| *reason == Reason::Boot));
    world.settle(secs(5));
    assert_eq!(world.alive().len(), workers);
}

#[test]
fn a_term_between_rounds_spawns_nothing_more_and_stops() {
    let mut world = World::new(config(300), Behavior::good());
    assert_eq!(world.spawns().len(), SPAWN_ROUND);
    world.signal(Signal::Term);
    assert!(world
        .arbiter
        .due(world.now + secs(60))
        .all(|t| t != Timer::SpawnRound));
    let done = world.drive_until(secs(20), |w| w.exit.is_some());
    assert!(done.is_some(), "no exit after TERM");
    assert_eq!(world.spawns().len(), SPAWN_ROUND, "no round after TERM");
    assert_eq!(world.exit.map(|(_, code, _)| code), Some(0));
    assert!(world.alive().is_empty());
}

#[test]
fn a_scale_order_between_rounds_is_taken_at_once_and_the_rounds_follow_it() {
    let mut world = World::new(config(100), Behavior::good());
    assert_eq!(world.spawns().len(), SPAWN_ROUND);
    // A lower target between rounds: the next rounds spawn only up to it.
    world.command(Command::Scale(40));
    assert_eq!(world.arbiter.target(), 40);
    world.settle(secs(5));
    assert_eq!(world.spawns().len(), 40);
    // A large scale order goes out in rounds too.
    let before = world.spawns().len();
    world.command(Command::Scale(140));
    assert_eq!(world.spawns().len() - before, SPAWN_ROUND);
    world.settle(secs(5));
    assert_eq!(world.alive().len(), 140);
}

#[test]
fn respawns_during_a_boot_wait_for_their_round() {
    // Every worker dies 1 ms after its spawn at first: the respawns mix with the boot's
    // rounds, and no input ever asks for more than a round.
    let mut world = World::scripted(
        config(80),
        arbiter_core::Role::Fresh,
        Box::new(|_, id| {
            if id.0 < 40 {
                Behavior::exits(ms(1), ExitStatus::Exited(1))
            } else {
                Behavior::good()
            }
        }),
    );
    world.settle(secs(60));
    assert_eq!(world.alive().len(), 80);
}

#[test]
fn a_settled_ttin_burst_of_a_hundred_spawns_in_rounds() {
    let mut world = World::new(config(2), Behavior::good());
    world.settle(secs(2));
    let before = world.spawns().len();
    for _ in 0..100 {
        world.signal(Signal::Ttin);
        world.drive(std::time::Duration::from_micros(500));
    }
    world.settle(secs(5));
    assert_eq!(world.spawns().len() - before, 100);
    assert_eq!(world.alive().len(), 102);
    assert!(cuts(&world).len() >= 3, "{:?}", cuts(&world));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any boot size, any scale orders and TTINs, a TERM at any moment: no input asks for more
    /// than a round of spawns (the world checks it after each), every round cut is followed
    /// by a round timer due at once, the table reaches its target, and a TERM stops spawning
    /// and ends in an exit 0 with no worker left.
    #[test]
    fn spawns_go_out_in_rounds_and_a_term_stops_them(
        workers in 1usize..200,
        orders in proptest::collection::vec((0usize..250, 0u64..5_000), 0..6),
        ttin in 0usize..80,
        term_after_us in 0u64..20_000,
    ) {
        let mut world = World::new(config(workers), Behavior::good());
        for (target, gap_us) in orders {
            world.command(Command::Scale(target.max(1)));
            if !cuts(&world).is_empty() && world.spawns().len() < world.arbiter.target() {
                let due = world.arbiter.next_deadline();
                prop_assert!(due.is_some_and(|(at, _)| at <= world.now), "{due:?}");
            }
            world.drive(std::time::Duration::from_micros(gap_us));
        }
        for _ in 0..ttin {
            world.signal(Signal::Ttin);
        }
        world.settle(secs(30));
        prop_assert_eq!(world.alive().len(), world.arbiter.target());
        // A fresh large boot, stopped at a random moment.
        let mut world = World::new(config(workers + 100), Behavior::good());
        world.drive(std::time::Duration::from_micros(term_after_us));
        world.signal(Signal::Term);
        let spawned = world.spawns().len();
        let done = world.drive_until(secs(20), |w| w.exit.is_some());
        prop_assert!(done.is_some());
        prop_assert_eq!(world.spawns().len(), spawned);
        prop_assert_eq!(world.exit.map(|(_, code, _)| code), Some(0));
        prop_assert!(world.alive().is_empty());
    }
}
