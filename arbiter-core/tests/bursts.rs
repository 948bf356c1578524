//! Bursts of scale signals: the target follows every TTIN and TTOU at once; the spawns wait
//! until the signals pause (`SCALE_SETTLE`), at most `SCALE_SETTLE_CAP` after the first.

mod sim;

use std::time::Duration;

use arbiter_core::{
    Action, Command, Event, ExitStatus, Moment, Reason, Signal, Timer, SCALE_SETTLE,
    SCALE_SETTLE_CAP,
};
use sim::{ms, secs, Behavior, World};

use sim::config;

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// The moments of the spawns after `since`.
fn spawns_after(world: &World, since: Moment) -> Vec<(Moment, Reason)> {
    world
        .spawns()
        .into_iter()
        .filter(|(at, ..)| *at > since)
        .map(|(at, _, _, reason)| (at, reason))
        .collect()
}

fn holds(world: &World) -> Vec<Moment> {
    world
        .events()
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::SpawnsHeld { .. }))
        .map(|(at, _)| at)
        .collect()
}

#[test]
fn a_burst_of_twenty_ttin_counts_every_one_and_spawns_once_it_pauses() {
    let mut world = World::new(config(2), Behavior::good());
    world.settle(secs(2));
    let before = world.now;
    let mut last = before;
    for i in 0..20 {
        world.signal(Signal::Ttin);
        last = world.now;
        assert_eq!(world.arbiter.target(), 3 + i, "every TTIN counts at once");
        assert!(
            spawns_after(&world, before).is_empty(),
            "nothing spawns during the burst"
        );
        assert_eq!(
            world.arbiter.next_deadline(),
            Some((last + SCALE_SETTLE, Timer::ScaleSettle))
        );
        world.drive(us(500));
    }
    world.drive(SCALE_SETTLE);
    let spawns = spawns_after(&world, before);
    assert_eq!(spawns.len(), 20);
    assert!(
        spawns
            .iter()
            .all(|&s| s == (last + SCALE_SETTLE, Reason::ScaleUp)),
        "{spawns:?}"
    );
    assert_eq!(holds(&world), [before], "one hold for the whole burst");
    let changes = world
        .events()
        .into_iter()
        .filter(|(at, e)| *at >= before && matches!(e, Event::TargetChanged { .. }))
        .count();
    assert_eq!(changes, 20, "one change of target per signal");
    world.settle(secs(2));
    assert_eq!(world.alive().len(), 22);
}

#[test]
fn a_steady_stream_of_ttin_spawns_at_the_cap_and_again_after_each_cap() {
    let mut world = World::new(config(1), Behavior::good());
    world.settle(secs(2));
    let first = world.now;
    // One TTIN every millisecond for three caps and a bit: it never pauses for SCALE_SETTLE.
    let every = ms(1);
    assert!(every < SCALE_SETTLE);
    let sent = (SCALE_SETTLE_CAP.as_millis() * 3 + 5) as usize;
    for _ in 0..sent {
        world.signal(Signal::Ttin);
        world.drive(every);
    }
    let spawns = spawns_after(&world, first);
    let moments: std::collections::BTreeSet<Moment> = spawns.iter().map(|s| s.0).collect();
    let rounds: Vec<Moment> = moments.into_iter().collect();
    assert!(rounds.len() >= 3, "a round at least every cap: {rounds:?}");
    assert_eq!(
        rounds[0],
        first + SCALE_SETTLE_CAP,
        "the first round waits the cap"
    );
    for pair in rounds.windows(2) {
        assert!(
            pair[1].saturating_since(pair[0]) <= SCALE_SETTLE_CAP + every,
            "{rounds:?}"
        );
    }
    world.drive(SCALE_SETTLE);
    assert_eq!(world.spawns().len(), 1 + sent, "every TTIN spawned once");
    world.settle(secs(2));
    assert_eq!(world.alive().len(), 1 + sent);
}

#[test]
fn ttin_and_ttou_in_one_burst_cancel_out_without_a_spawn_or_a_stop() {
    let mut world = World::new(config(2), Behavior::good());
    world.settle(secs(2));
    let before = world.now;
    for signal in [Signal::Ttin, Signal::Ttin, Signal::Ttou, Signal::Ttou] {
        world.signal(signal);
        world.drive(us(300));
    }
    assert_eq!(world.arbiter.target(), 2);
    world.drive(secs(1));
    assert!(spawns_after(&world, before).is_empty());
    let stops = world.actions(|a| matches!(a, Action::Signal { .. }));
    assert!(stops.is_empty(), "{stops:?}");
    assert!(world.is_steady());
}

#[test]
fn ttou_retires_at_once_during_a_burst() {
    let mut world = World::new(config(3), Behavior::good());
    world.settle(secs(2));
    let highest = world.pid_in(2);
    world.signal(Signal::Ttin);
    world.drive(us(500));
    world.signal(Signal::Ttou);
    world.signal(Signal::Ttou);
    let at = world.now;
    assert_eq!(world.arbiter.target(), 2);
    assert_eq!(world.signals_to(highest), [(at, Signal::Term, false)]);
    world.settle(secs(2));
    assert_eq!(world.alive().len(), 2);
}

#[test]
fn a_crash_during_a_burst_is_respawned_when_the_burst_settles() {
    let mut world = World::new(config(2), Behavior::good());
    world.settle(secs(2));
    let before = world.now;
    world.signal(Signal::Ttin);
    world.drive(us(500));
    let victim = world.pid_in(0);
    world.kill_now(
        victim,
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        },
    );
    let crashed = world.now;
    world.drive(SCALE_SETTLE);
    let spawns = spawns_after(&world, before);
    let settled = before + SCALE_SETTLE;
    assert!(settled < crashed + SCALE_SETTLE);
    assert_eq!(spawns.len(), 2, "{spawns:?}");
    assert!(spawns.iter().all(|s| s.0 == settled), "{spawns:?}");
    assert!(spawns.contains(&(settled, Reason::Respawn)), "{spawns:?}");
    world.settle(secs(2));
}

#[test]
fn a_scale_command_is_not_held() {
    let mut world = World::new(config(2), Behavior::good());
    world.settle(secs(2));
    let at = world.now;
    world.command(Command::Scale(4));
    let spawns = world.spawns();
    assert_eq!(spawns.len(), 4);
    assert_eq!((spawns[3].0, spawns[3].3), (at, Reason::ScaleUp));
    assert!(holds(&world).is_empty());
}

#[test]
fn a_stop_during_a_burst_spawns_nothing_and_ends_the_hold() {
    let mut world = World::new(config(2), Behavior::good());
    world.settle(secs(2));
    let before = world.now;
    world.signal(Signal::Ttin);
    world.signal(Signal::Ttin);
    world.signal(Signal::Term);
    assert!(world
        .arbiter
        .due(world.now + SCALE_SETTLE_CAP)
        .all(|t| t != Timer::ScaleSettle));
    world.drive(secs(20));
    assert!(spawns_after(&world, before).is_empty());
    assert_eq!(world.exit.map(|(_, code, _)| code), Some(0));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any stream of TTIN and TTOU with any gaps: every signal moves the target at once (one
    /// up, or one down to a floor of one); nothing spawns while the signals that changed the
    /// target have not paused for SCALE_SETTLE (and their burst is younger than
    /// SCALE_SETTLE_CAP); and the table ends at the target. (A spawn may come after a
    /// burst's end rather than at it: while retiring workers fill the table to its surge
    /// limit, it waits for one of their exits.)
    #[test]
    fn every_scale_signal_counts_and_nothing_spawns_during_a_burst(
        stream in proptest::collection::vec((proptest::bool::ANY, 0u64..8_000), 1..60)
    ) {
        let mut world = World::new(config(2), Behavior::good());
        world.settle(secs(2));
        let start = world.log.len();
        let mut target = 2usize;
        // The burst under way: when it began, when its last signal came, and where in the
        // action log it began (a spawn logged at the same moment but before a burst's first
        // signal, by the previous burst's settle, is not part of it); the bursts so far.
        let mut burst: Option<(Moment, Moment, usize)> = None;
        let mut held = Vec::new();
        for (up, gap_us) in stream {
            if let Some((first, last, from)) = burst {
                let settles = (last + SCALE_SETTLE).min(first + SCALE_SETTLE_CAP);
                if world.now >= settles {
                    held.push((from, settles));
                    burst = None;
                }
            }
            let (signal, next) = if up {
                (Signal::Ttin, target + 1)
            } else {
                (Signal::Ttou, (target - 1).max(1))
            };
            let from = world.log.len();
            world.signal(signal);
            proptest::prop_assert_eq!(world.arbiter.target(), next);
            // A TTOU refused at the floor changes nothing: no burst begins or goes on.
            if next != target {
                burst = Some(match burst {
                    Some((first, _, begun)) => (first, world.now, begun),
                    None => (world.now, world.now, from),
                });
            }
            target = next;
            world.drive(us(gap_us));
        }
        if let Some((first, last, from)) = burst {
            held.push((from, (last + SCALE_SETTLE).min(first + SCALE_SETTLE_CAP)));
        }
        world.drive(SCALE_SETTLE_CAP);
        for (index, (at, action)) in world.log.iter().enumerate().skip(start) {
            let Action::Spawn { reason, .. } = action else {
                continue;
            };
            // A slot emptied by a TTOU and wanted again by a later TTIN is respawned.
            proptest::prop_assert!(matches!(reason, Reason::ScaleUp | Reason::Respawn));
            proptest::prop_assert!(
                !held.iter().any(|&(from, settles)| from <= index && *at < settles),
                "a spawn at {:?} during a burst {:?}", at, held
            );
        }
        world.settle(secs(5));
        proptest::prop_assert_eq!(world.alive().len(), target);
    }
}
