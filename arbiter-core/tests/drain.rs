//! The drain before a graceful stop (`shutdown_delay`): not ready at once, still serving with
//! every listener open for the delay, then the stop as without one; a second stop order cuts
//! it short. Driven through the simulated world with exact virtual times.

mod sim;

use arbiter_core::{
    Action, Command, Config, Event, ExitStatus, Phase, Refusal, Signal, SupervisorNote,
};
use sim::{at_ms, ms, secs, Behavior, World};

fn config(workers: usize) -> Config {
    Config {
        pidfile: true,
        shutdown_delay: secs(5),
        ..sim::config(workers)
    }
}

/// When each action picked happened.
fn moments(world: &World, pick: impl Fn(&Action) -> bool) -> Vec<arbiter_core::Moment> {
    world.actions(pick).into_iter().map(|(at, _)| at).collect()
}

fn stopping_notes(world: &World) -> Vec<arbiter_core::Moment> {
    moments(world, |a| *a == Action::Notify(SupervisorNote::Stopping))
}

fn closes(world: &World) -> Vec<arbiter_core::Moment> {
    moments(world, |a| matches!(a, Action::CloseListeners { .. }))
}

fn terms(world: &World) -> Vec<arbiter_core::Moment> {
    moments(world, |a| {
        matches!(
            a,
            Action::Signal {
                signal: Signal::Term,
                ..
            }
        )
    })
}

#[test]
fn term_reports_not_ready_at_once_and_keeps_serving_for_the_delay() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Term);
    assert_eq!(
        world.arbiter.phase(),
        Phase::Draining { until: at_ms(6000) }
    );
    assert!(world.arbiter.stop_requested());
    assert_eq!(stopping_notes(&world), [at_ms(1000)]);
    assert!(world
        .events()
        .contains(&(at_ms(1000), Event::DrainStarted { delay: secs(5) })));
    // Serving: the listeners stay open and no worker is told anything until the delay ends.
    world.drive(ms(4999));
    assert!(closes(&world).is_empty());
    assert!(terms(&world).is_empty());
    assert_eq!(world.alive().len(), 2);
    world.drive(secs(30));
    assert_eq!(closes(&world), [at_ms(6000)]);
    assert_eq!(terms(&world), [at_ms(6000), at_ms(6000)]);
    // STOPPING=1 was said once, when the drain began.
    assert_eq!(stopping_notes(&world), [at_ms(1000)]);
    assert!(world
        .events()
        .contains(&(at_ms(6000), Event::DrainOver { early: false })));
    let (at, code, _) = world.exit.expect("stopped");
    assert_eq!((at, code), (at_ms(6050), 0));
}

#[test]
fn a_worker_that_dies_while_draining_is_replaced() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Term);
    let pid = world.pid_in(0);
    world.drive(secs(1));
    world.kill_now(pid, ExitStatus::Exited(1));
    world.drive(ms(500));
    assert!(world.ready_in(0).is_some_and(|new| new != pid));
    assert_eq!(world.alive().len(), 2);
    world.drive(secs(30));
    assert_eq!(world.exit.expect("stopped").1, 0);
}

#[test]
fn a_second_term_cuts_the_drain_short() {
    let mut world = World::new(config(1), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Term);
    world.drive(secs(2));
    world.signal(Signal::Term);
    assert!(matches!(
        world.arbiter.phase(),
        Phase::Stopping { quick: false }
    ));
    assert_eq!(closes(&world), [at_ms(3000)]);
    assert_eq!(terms(&world), [at_ms(3000)]);
    assert_eq!(stopping_notes(&world), [at_ms(1000)]);
    assert!(world
        .events()
        .contains(&(at_ms(3000), Event::DrainOver { early: true })));
    world.drive(secs(30));
    assert_eq!(world.exit.expect("stopped").0, at_ms(3050));
    // The drain's deadline went with it: nothing fired at 6 s.
    assert_eq!(closes(&world), [at_ms(3000)]);
}

#[test]
fn int_or_quit_skips_the_drain_and_stops_quickly() {
    for quick in [Signal::Int, Signal::Quit] {
        let mut world = World::new(config(1), Behavior::good());
        world.drive(secs(1));
        world.signal(Signal::Term);
        world.drive(secs(1));
        world.signal(quick);
        assert!(matches!(
            world.arbiter.phase(),
            Phase::Stopping { quick: true }
        ));
        let pid = world.pid_in(0);
        assert_eq!(world.signals_to(pid)[0], (at_ms(2000), Signal::Quit, false));
        // Without a drain first, INT or QUIT never drains.
        let mut world = World::new(config(1), Behavior::good());
        world.drive(secs(1));
        world.signal(quick);
        assert!(matches!(
            world.arbiter.phase(),
            Phase::Stopping { quick: true }
        ));
        assert_eq!(closes(&world), [at_ms(1000)]);
    }
}

#[test]
fn ctl_stop_drains_like_term_and_a_second_one_cuts_it_short() {
    let mut world = World::new(config(1), Behavior::good());
    world.drive(secs(1));
    world.command(Command::Stop { quick: false });
    assert!(matches!(world.arbiter.phase(), Phase::Draining { .. }));
    assert!(closes(&world).is_empty());
    world.drive(secs(1));
    world.command(Command::Stop { quick: false });
    assert_eq!(closes(&world), [at_ms(2000)]);
    let mut world = World::new(config(1), Behavior::good());
    world.drive(secs(1));
    world.command(Command::Stop { quick: true });
    assert_eq!(closes(&world), [at_ms(1000)]);
}

#[test]
fn orders_that_change_the_workers_are_refused_while_draining() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Term);
    for signal in [Signal::Hup, Signal::Ttin, Signal::Ttou, Signal::Usr2] {
        world.signal(signal);
        assert!(
            world.events().iter().any(|(_, e)| *e
                == Event::SignalRefused {
                    signal,
                    why: Refusal::Stopping
                }),
            "{signal:?} not refused"
        );
    }
    world.command(Command::Scale(4));
    assert_eq!(world.arbiter.target(), 2);
    assert!(!world.log.iter().any(|(_, a)| matches!(a, Action::ReExec)));
    assert!(!world
        .log
        .iter()
        .any(|(_, a)| matches!(a, Action::LoadConfig { .. })));
}

#[test]
fn no_ready_is_announced_while_draining() {
    // TERM while the first generation boots: its READY=1 must not follow STOPPING=1.
    let mut world = World::new(
        Config {
            ready: arbiter_core::ReadyMode::Notify,
            ..config(1)
        },
        Behavior::slow_ready(secs(2)),
    );
    world.drive(secs(1));
    world.signal(Signal::Term);
    world.drive(secs(3));
    assert_eq!(world.ready(), 1, "the worker is ready and serving");
    assert!(!world
        .log
        .iter()
        .any(|(_, a)| *a == Action::Notify(SupervisorNote::Ready)));
}

#[test]
fn no_drain_while_an_upgrade_is_under_way() {
    let mut world = World::new(config(1), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Usr2);
    world.signal(Signal::Term);
    assert!(matches!(world.arbiter.phase(), Phase::Stopping { .. }));
    assert_eq!(closes(&world), [at_ms(1000)]);
}

#[test]
fn without_a_delay_term_stops_at_once() {
    let mut world = World::new(
        Config {
            shutdown_delay: std::time::Duration::ZERO,
            ..config(1)
        },
        Behavior::good(),
    );
    world.drive(secs(1));
    world.signal(Signal::Term);
    assert!(matches!(world.arbiter.phase(), Phase::Stopping { .. }));
    assert_eq!(closes(&world), [at_ms(1000)]);
    assert_eq!(stopping_notes(&world), [at_ms(1000)]);
}
