//! A slow first boot under a service manager (`Config::extend_start`): while the first
//! generation boots, the master keeps extending the manager's start timeout
//! (`EXTEND_TIMEOUT_USEC=`) every period, never past the boot timeout (plus the abort grace
//! and a period) after its start, and never once it is ready or stopping. Driven through the
//! simulated world with exact virtual times.

mod sim;

use std::time::Duration;

use arbiter_core::{
    Action, Config, Moment, ReadyMode, Role, Signal, SupervisorNote, START_EXTENSION,
    START_EXTENSION_EVERY,
};
use sim::{at_ms, secs, Behavior, World};

fn config(boot: u64) -> Config {
    Config {
        boot_timeout: Some(secs(boot)),
        ready: ReadyMode::Notify,
        extend_start: true,
        ..sim::config(2)
    }
}

/// Every extension sent: when, and by how much.
fn extensions(world: &World) -> Vec<(Moment, Duration)> {
    world
        .log
        .iter()
        .filter_map(|(at, a)| match a {
            Action::Notify(SupervisorNote::ExtendTimeout(by)) => Some((*at, *by)),
            _ => None,
        })
        .collect()
}

fn ready_notes(world: &World) -> Vec<Moment> {
    world
        .actions(|a| *a == Action::Notify(SupervisorNote::Ready))
        .into_iter()
        .map(|(at, _)| at)
        .collect()
}

#[test]
fn a_slow_first_boot_extends_the_start_timeout_every_period_until_ready() {
    let mut world = World::new(config(120), Behavior::slow_ready(secs(45)));
    world.drive(secs(200));
    assert_eq!(ready_notes(&world), [at_ms(45_000)]);
    let expected: Vec<(Moment, Duration)> = (0..5)
        .map(|i| (at_ms(i * 10_000), START_EXTENSION))
        .collect();
    assert_eq!(extensions(&world), expected);
    assert_eq!(START_EXTENSION_EVERY, secs(10));
    // Every extension reaches past the next one: the manager never times out in between.
    assert!(START_EXTENSION > START_EXTENSION_EVERY);
}

#[test]
fn the_extensions_end_at_the_boot_timeout_past_the_start() {
    // Never ready: extensions up to boot timeout + abort grace + a period (31 s), no further.
    let mut world = World::new(config(20), Behavior::silent());
    world.drive(secs(120));
    assert!(ready_notes(&world).is_empty());
    assert_eq!(
        extensions(&world),
        [
            (at_ms(0), secs(30)),
            (at_ms(10_000), secs(21)),
            (at_ms(20_000), secs(11)),
            (at_ms(30_000), secs(1)),
        ]
    );
    for (at, by) in extensions(&world) {
        assert!(at + by <= at_ms(31_000));
    }
}

#[test]
fn workers_ready_at_exec_need_no_extension() {
    let mut world = World::new(
        Config {
            ready: ReadyMode::Exec,
            ..config(60)
        },
        Behavior::good(),
    );
    world.drive(secs(60));
    assert_eq!(ready_notes(&world), [at_ms(0)]);
    assert!(extensions(&world).is_empty(), "{:?}", extensions(&world));
}

#[test]
fn a_stop_during_the_boot_ends_the_extensions() {
    let mut world = World::new(config(120), Behavior::slow_ready(secs(45)));
    world.drive(secs(15));
    world.signal(Signal::Term);
    world.drive(secs(60));
    assert_eq!(
        extensions(&world),
        [
            (at_ms(0), START_EXTENSION),
            (at_ms(10_000), START_EXTENSION)
        ]
    );
}

#[test]
fn no_extension_without_a_manager_a_boot_timeout_or_as_an_upgrade_child() {
    let cases = [
        (
            Config {
                extend_start: false,
                ..config(60)
            },
            Role::Fresh,
        ),
        (
            Config {
                boot_timeout: None,
                ..config(60)
            },
            Role::Fresh,
        ),
        (config(60), Role::UpgradeChild { parent: 7 }),
    ];
    for (config, role) in cases {
        let slow = Behavior::slow_ready(secs(45));
        let mut world = World::scripted(config, role, Box::new(move |_, _| slow.clone()));
        world.drive(secs(60));
        assert!(extensions(&world).is_empty(), "{:?}", extensions(&world));
    }
}
