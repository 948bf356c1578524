//! Decisions about the master's own life, beside the workers': its pidfile, the service
//! manager's watchdog, HUP's configuration load, group kills and reaps, exit causes, target
//! changes, named deadlines, refusals, and the one-line form of every input and action. Each
//! is driven through the simulated world (or the bare arbiter) with exact virtual times.

mod sim;

use arbiter_core::{
    Action, Arbiter, BootErrorPolicy, Command, Config, Event, ExitCause, ExitStatus, Input, Moment,
    Phase, ReadyMode, Reason, Refusal, Role, Signal, SupervisorNote, Timer, WorkerId,
};
use sim::{at_ms, ms, secs, Behavior, World};

fn config(workers: usize) -> Config {
    Config {
        pidfile: true,
        ..sim::config(workers)
    }
}

/// Every action of the log, in order, without its moment.
fn actions(world: &World) -> Vec<Action> {
    world.log.iter().map(|(_, a)| a.clone()).collect()
}

fn position(actions: &[Action], pick: impl Fn(&Action) -> bool) -> Option<usize> {
    actions.iter().position(pick)
}

fn exit_causes(world: &World) -> Vec<(i32, ExitCause)> {
    world
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::WorkerExited { pid, cause, .. } => Some((pid, cause)),
            _ => None,
        })
        .collect()
}

// ----- the pidfile -----

#[test]
fn a_fresh_master_writes_its_pidfile_before_anything_is_spawned() {
    let mut arbiter = Arbiter::new(config(2), Role::Fresh, Moment::ZERO);
    assert_eq!(
        arbiter.poll_action(),
        Some(Action::WritePidfile {
            upgrade_child: false,
            reason: Reason::Boot
        })
    );
    assert_eq!(arbiter.poll_action(), None, "no spawn before the report");
    arbiter.handle_pidfile_written(Moment::ZERO);
    let spawns = std::iter::from_fn(|| arbiter.poll_action())
        .filter(|a| matches!(a, Action::Spawn { .. }))
        .count();
    assert_eq!(spawns, 2);
}

#[test]
fn a_pidfile_that_cannot_be_written_at_start_exits_1_with_nothing_spawned() {
    let mut arbiter = Arbiter::new(config(2), Role::Fresh, Moment::ZERO);
    assert!(matches!(
        arbiter.poll_action(),
        Some(Action::WritePidfile { .. })
    ));
    arbiter.handle_pidfile_failed("permission denied".into(), Moment::ZERO);
    let after: Vec<Action> = std::iter::from_fn(|| arbiter.poll_action()).collect();
    assert_eq!(
        after,
        [Action::Exit {
            code: 1,
            reason: Reason::PidfileFailure
        }],
        "an exit 1 and nothing else: no spawn, no stop of anything"
    );
    assert!(arbiter.has_exited());
    assert_eq!(arbiter.poll_timeout(), None);
}

#[test]
fn without_a_pidfile_the_first_actions_are_the_spawns() {
    let mut arbiter = Arbiter::new(
        Config {
            pidfile: false,
            ..config(2)
        },
        Role::Fresh,
        Moment::ZERO,
    );
    let first: Vec<Action> = std::iter::from_fn(|| arbiter.poll_action()).collect();
    assert!(matches!(first[0], Action::Spawn { .. }));
    assert!(!first
        .iter()
        .any(|a| matches!(a, Action::WritePidfile { .. } | Action::PromotePidfile)));
}

fn upgrade_child(behavior: Behavior) -> World {
    World::scripted(
        Config {
            ready: ReadyMode::Notify,
            ..config(2)
        },
        Role::UpgradeChild { parent: 42 },
        Box::new(move |_, _| behavior.clone()),
    )
}

#[test]
fn an_upgrade_child_writes_pidfile_2_only_once_its_workers_are_ready() {
    let mut world = upgrade_child(Behavior::slow_ready(secs(3)));
    world.drive(ms(2999));
    assert!(world.pidfiles.is_empty(), "no PIDFILE.2 while booting");
    world.drive(ms(1));
    assert_eq!(world.pidfiles.get("pidfile.2"), Some(&world.master_pid));
    assert!(!world.pidfiles.contains_key("pidfile"));
    let log = actions(&world);
    let write = position(&log, |a| {
        *a == Action::WritePidfile {
            upgrade_child: true,
            reason: Reason::UpgradeReady,
        }
    })
    .expect("PIDFILE.2 written");
    let ready = position(&log, |a| *a == Action::Notify(SupervisorNote::Ready)).expect("ready");
    assert!(write < ready, "PIDFILE.2 before READY=1");
    // Promotion renames it; a later reload's readiness writes nothing more.
    world.parent_exits();
    assert_eq!(world.pidfiles.get("pidfile"), Some(&world.master_pid));
    assert!(!world.pidfiles.contains_key("pidfile.2"));
    world.signal(Signal::Hup);
    world.drive(secs(20));
    let writes = world.actions(|a| matches!(a, Action::WritePidfile { .. }));
    assert_eq!(writes.len(), 1);
}

#[test]
fn an_upgrade_child_promoted_before_its_workers_are_ready_writes_the_pidfile_itself() {
    let mut world = upgrade_child(Behavior::slow_ready(secs(3)));
    world.drive(secs(1));
    world.parent_exits();
    assert!(world.actions(|a| *a == Action::PromotePidfile).is_empty());
    assert_eq!(
        world.actions(|a| matches!(a, Action::WritePidfile { .. })),
        [(
            at_ms(1000),
            Action::WritePidfile {
                upgrade_child: false,
                reason: Reason::Promoted
            }
        )]
    );
    world.drive(secs(10));
    assert_eq!(world.ready(), 2);
    assert_eq!(world.pidfiles.get("pidfile"), Some(&world.master_pid));
    assert!(
        !world.pidfiles.contains_key("pidfile.2"),
        "no PIDFILE.2 once promoted"
    );
}

#[test]
fn a_pidfile_failure_after_the_start_is_reported_and_the_master_keeps_running() {
    let mut world = upgrade_child(Behavior::slow_ready(secs(3)));
    world.pidfile_fails = true;
    world.drive(secs(5));
    assert!(world.events().iter().any(|(_, e)| *e
        == Event::PidfileFailed {
            upgrade_child: true,
            error: "permission denied".into()
        }));
    // Never a fake stop: no TERM, no exit, the workers keep serving.
    assert!(world.exit.is_none());
    assert_eq!(world.arbiter.phase(), Phase::Running);
    assert!(world
        .actions(|a| matches!(a, Action::Signal { .. }))
        .is_empty());
    // Promoted without a PIDFILE.2: the pidfile is written instead, and that fails too.
    world.parent_exits();
    assert!(
        world
            .actions(|a| matches!(
                a,
                Action::WritePidfile {
                    upgrade_child: false,
                    reason: Reason::Promoted
                }
            ))
            .len()
            == 1
    );
    let failures = world
        .events()
        .iter()
        .filter(|(_, e)| matches!(e, Event::PidfileFailed { .. }))
        .count();
    assert_eq!(failures, 2);
    world.drive(secs(60));
    assert!(world.exit.is_none());
    assert!(world.is_steady());
}

// ----- the service manager's watchdog -----

#[test]
fn the_watchdog_pings_at_once_then_every_interval_until_the_exit() {
    let mut world = World::new(
        Config {
            watchdog: Some(ms(500)),
            ..config(1)
        },
        Behavior::good(),
    );
    world.drive(ms(2100));
    let expected: Vec<Moment> = (0..=4).map(|n| at_ms(n * 500)).collect();
    assert_eq!(world.watchdog_pings(), expected);
    world.signal(Signal::Term);
    world.drive(secs(5));
    assert!(world.exit.is_some());
    let after_exit = world
        .watchdog_pings()
        .into_iter()
        .filter(|at| *at > world.exit.expect("exited").0)
        .count();
    assert_eq!(after_exit, 0);
}

#[test]
fn an_upgrade_child_pings_the_watchdog_only_once_promoted() {
    let mut world = World::scripted(
        Config {
            watchdog: Some(ms(500)),
            ..config(1)
        },
        Role::UpgradeChild { parent: 42 },
        Box::new(|_, _| Behavior::good()),
    );
    world.drive(secs(3));
    assert!(world.watchdog_pings().is_empty());
    world.parent_exits();
    world.drive(ms(1100));
    assert_eq!(
        world.watchdog_pings(),
        [at_ms(3000), at_ms(3500), at_ms(4000)]
    );
}

// ----- HUP -----

#[test]
fn hup_asks_the_shell_for_the_configuration_and_a_rejected_one_keeps_the_running_one() {
    let mut world = World::new(config(2), Behavior::good());
    world.settle(secs(5));
    world.config = Err("bind: address in use".into());
    world.signal(Signal::Hup);
    let loads = world.actions(|a| {
        *a == Action::LoadConfig {
            reason: Reason::Reload,
        }
    });
    assert_eq!(loads.len(), 1);
    assert!(world.events().iter().any(|(_, e)| *e
        == Event::ConfigRejected {
            error: "bind: address in use".into()
        }));
    assert_eq!(world.arbiter.generation(), 0);
    assert_eq!(world.arbiter.phase(), Phase::Running);
    world.drive(secs(5));
    assert_eq!(world.spawns().len(), 2, "nothing rolled");
    // The control socket's reload goes the same way.
    world.config = Ok(config(2));
    world.command(Command::Reload);
    assert_eq!(world.arbiter.generation(), 1);
    world.settle(secs(10));
}

#[test]
fn hup_scaling_and_kill_worker_while_stopping_are_refused_without_loading_anything() {
    let mut world = World::new(config(2), Behavior::ignores_term());
    world.drive(secs(1));
    let pid = world
        .arbiter
        .workers()
        .find_map(|w| w.pid)
        .expect("a worker");
    world.signal(Signal::Term);
    world.signal(Signal::Hup);
    world.signal(Signal::Ttin);
    world.command(Command::Scale(5));
    world.command(Command::Reload);
    world.command(Command::KillWorker(pid));
    assert!(world
        .actions(|a| matches!(a, Action::LoadConfig { .. }))
        .is_empty());
    let refusals: Vec<Event> = world
        .events()
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| {
            matches!(
                e,
                Event::SignalRefused { .. } | Event::CommandRefused { .. }
            )
        })
        .collect();
    assert_eq!(
        refusals,
        [
            Event::SignalRefused {
                signal: Signal::Hup,
                why: Refusal::Stopping
            },
            Event::SignalRefused {
                signal: Signal::Ttin,
                why: Refusal::Stopping
            },
            Event::CommandRefused {
                command: Command::Scale(5),
                why: Refusal::Stopping
            },
            Event::CommandRefused {
                command: Command::Reload,
                why: Refusal::Stopping
            },
            Event::CommandRefused {
                command: Command::KillWorker(pid),
                why: Refusal::Stopping
            },
        ]
    );
    assert_eq!(refusals[0].to_string(), "SIGHUP ignored. Stopping.");
    assert_eq!(world.arbiter.target(), 2);
}

#[test]
fn usr2_while_stopping_and_kill_worker_of_a_stranger_are_refused_as_variants() {
    let mut world = World::new(config(1), Behavior::good());
    world.command(Command::KillWorker(99_999));
    world.signal(Signal::Term);
    world.signal(Signal::Usr2);
    let refusals: Vec<Event> = world
        .events()
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| {
            matches!(
                e,
                Event::SignalRefused { .. } | Event::CommandRefused { .. }
            )
        })
        .collect();
    assert_eq!(
        refusals,
        [
            Event::CommandRefused {
                command: Command::KillWorker(99_999),
                why: Refusal::NoSuchWorker
            },
            Event::SignalRefused {
                signal: Signal::Usr2,
                why: Refusal::Stopping
            },
        ]
    );
    assert_eq!(refusals[1].to_string(), "USR2 signal ignored. Stopping.");
    assert!(world.actions(|a| *a == Action::ReExec).is_empty());
}

/// The old master of an upgrade stops while its successor runs: it tells the service manager
/// the successor is the main process now, and never `STOPPING=1`, which would stop the
/// service; a master stopping with no successor says `STOPPING=1`.
#[test]
fn an_upgraded_master_hands_over_at_stop_instead_of_stopping_the_service() {
    let mut world = World::new(config(1), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Usr2);
    let successor = world.reexec.expect("the new master was spawned");
    world.signal(Signal::Term);
    world.drive(secs(1));
    let notes: Vec<SupervisorNote> = world
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Notify(note) => Some(note.clone()),
            _ => None,
        })
        .collect();
    assert!(
        notes.contains(&SupervisorNote::HandOver(successor)),
        "{notes:?}"
    );
    assert!(!notes.contains(&SupervisorNote::Stopping), "{notes:?}");
    assert_eq!(world.exit.map(|(_, code, _)| code), Some(0));

    let mut alone = World::new(config(1), Behavior::good());
    alone.drive(secs(1));
    alone.signal(Signal::Term);
    alone.drive(secs(1));
    let stopping = alone.actions(|a| *a == Action::Notify(SupervisorNote::Stopping));
    assert_eq!(stopping.len(), 1);
}

// ----- exits: causes, group kills, reaps -----

#[test]
fn every_worker_exit_carries_its_cause() {
    let segv = ExitStatus::Signaled {
        signal: 11,
        core_dumped: true,
    };
    // Slot 0 crashes with a code, slot 1 dies of SIGSEGV, slot 2 hangs, slot 3 exits 3.
    let mut world = World::scripted(
        Config {
            on_boot_error: BootErrorPolicy::Backoff,
            ..config(4)
        },
        Role::Fresh,
        Box::new(move |slot, id| match (slot, id.0) {
            (0, 1) => Behavior::crashes(secs(3)),
            (1, 2) => Behavior::exits(secs(3), segv),
            (2, 3) => Behavior::stopped(ms(1500)),
            (3, 4) => Behavior::boot_error(3),
            _ => Behavior::good(),
        }),
    );
    let first: Vec<i32> = (0..4).map(|slot| world.pid_in(slot)).collect();
    world.drive(secs(10));
    let causes = exit_causes(&world);
    assert!(causes.contains(&(first[0], ExitCause::Crash)), "{causes:?}");
    assert!(
        causes.contains(&(first[1], ExitCause::Signal)),
        "{causes:?}"
    );
    assert!(
        causes.contains(&(first[2], ExitCause::Timeout)),
        "{causes:?}"
    );
    assert!(
        causes.contains(&(first[3], ExitCause::BootFailure)),
        "{causes:?}"
    );
    // A cull, then the stop.
    world.settle(secs(30));
    let high = world.pid_in(3);
    world.signal(Signal::Ttou);
    world.drive(secs(1));
    assert!(exit_causes(&world).contains(&(high, ExitCause::Culled)));
    let rest: Vec<i32> = world.alive();
    world.signal(Signal::Term);
    world.drive(secs(1));
    for pid in rest {
        assert!(exit_causes(&world).contains(&(pid, ExitCause::Stopped)));
    }
}

#[test]
fn a_forwarded_usr1_does_not_make_a_later_crash_a_cull() {
    let mut world = World::new(
        Config {
            forward_usr1: true,
            ..config(1)
        },
        Behavior::good(),
    );
    world.drive(secs(2));
    let pid = world.pid_in(0);
    world.signal(Signal::Usr1);
    world.kill_now(pid, ExitStatus::Exited(1));
    assert_eq!(exit_causes(&world), [(pid, ExitCause::Crash)]);
}

#[test]
fn exit_causes_follow_the_stop_reason_then_the_status() {
    // Moved from the shell's metrics, which derived the cause itself.
    assert_eq!(ExitCause::of(None, ExitStatus::Exited(1)), ExitCause::Crash);
    assert_eq!(
        ExitCause::of(None, ExitStatus::Exited(3)),
        ExitCause::BootFailure
    );
    let killed = ExitStatus::Signaled {
        signal: 9,
        core_dumped: false,
    };
    assert_eq!(ExitCause::of(None, killed), ExitCause::Signal);
    assert_eq!(
        ExitCause::of(Some(Reason::BootTimeout), killed),
        ExitCause::Timeout
    );
    assert_eq!(
        ExitCause::of(Some(Reason::Cull), ExitStatus::Exited(0)),
        ExitCause::Culled
    );
    assert_eq!(
        ExitCause::of(Some(Reason::Shutdown), ExitStatus::Exited(0)),
        ExitCause::Stopped
    );
    for reason in [
        Reason::RecycleAge,
        Reason::RecycleMemory,
        Reason::RecycleRequested,
    ] {
        assert_eq!(
            ExitCause::of(Some(reason), ExitStatus::Exited(0)),
            ExitCause::Recycled
        );
    }
    let names: Vec<&str> = ExitCause::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "crash",
            "signal",
            "timeout",
            "boot_failure",
            "culled",
            "stopped",
            "recycled"
        ]
    );
}

#[test]
fn an_exited_workers_group_is_killed_while_it_is_a_zombie_then_it_is_reaped() {
    // A worker that crashes by itself, leaving two children in its group.
    let mut world = World::scripted(
        config(1),
        Role::Fresh,
        Box::new(|_, id| {
            if id.0 == 1 {
                Behavior {
                    children: 2,
                    ..Behavior::crashes(secs(2))
                }
            } else {
                Behavior::good()
            }
        }),
    );
    let first = world.procs.values().next().expect("spawned").clone();
    world.drive(secs(3));
    // The world panics on a group kill of a reaped pid and on an exit never reaped.
    assert_eq!(world.group_kills, [first.pid]);
    let log = actions(&world);
    let kill = position(&log, |a| {
        *a == Action::KillGroup {
            id: WorkerId(1),
            pid: first.pid,
            reason: Reason::WorkerExited,
        }
    })
    .expect("group killed");
    let reap = position(&log, |a| *a == Action::Reap { pid: first.pid }).expect("reaped");
    assert!(kill < reap, "the group kill comes before the reap");
    for child in &first.children {
        assert!(!world.children.contains(child), "the group went with it");
        assert!(log.contains(&Action::Reap { pid: *child }));
        assert!(
            !log.iter()
                .any(|a| matches!(a, Action::KillGroup { pid, .. } if pid == child)),
            "an orphan's group is not the master's to kill"
        );
    }
    // No signal (as opposed to the group kill) ever went to the exited pid.
    assert!(world.signals_to(first.pid).is_empty());
}

#[test]
fn exits_reported_after_the_master_exited_are_still_reaped() {
    let mut world = World::new(config(1), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Term);
    world.drive(secs(1));
    assert!(world.exit.is_some());
    world.orphan_exit(77_777, ExitStatus::Exited(0));
    assert_eq!(
        world.log.last().map(|(_, a)| a.clone()),
        Some(Action::Reap { pid: 77_777 })
    );
}

// ----- the target -----

#[test]
fn target_changes_are_events_with_their_reasons() {
    let mut world = World::new(
        Config {
            daemonized: true,
            ..config(2)
        },
        Behavior::good(),
    );
    world.drive(secs(1));
    world.signal(Signal::Ttin);
    world.signal(Signal::Ttou);
    world.command(Command::Scale(4));
    world.command(Command::Scale(4));
    world.reload(Config {
        daemonized: true,
        ..config(1)
    });
    world.signal(Signal::Ttou);
    world.signal(Signal::Winch);
    let changes: Vec<(usize, usize, Reason)> = world
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::TargetChanged { from, to, reason } => Some((from, to, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        [
            (2, 3, Reason::ScaleUp),
            (3, 2, Reason::Cull),
            (2, 4, Reason::Requested),
            (4, 1, Reason::Reload),
            (1, 0, Reason::Winch),
        ],
        "a scale to the same target changes nothing"
    );
    assert!(world.events().iter().any(|(_, e)| *e
        == Event::SignalRefused {
            signal: Signal::Ttou,
            why: Refusal::AtFloor
        }));
}

#[test]
fn a_scale_order_to_0_is_refused_at_the_floor() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    world.command(Command::Scale(0));
    assert!(world.events().iter().any(|(_, e)| *e
        == Event::CommandRefused {
            command: Command::Scale(0),
            why: Refusal::AtFloor
        }));
    assert!(
        !world
            .events()
            .iter()
            .any(|(_, e)| matches!(e, Event::TargetChanged { .. })),
        "the target stays at 2"
    );
    assert_eq!(world.arbiter.target(), 2);
}

#[test]
fn the_target_never_rises_above_the_most_workers_a_master_runs() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    world.command(Command::Scale(arbiter_core::MAX_WORKERS + 1));
    assert!(world.events().iter().any(|(_, e)| *e
        == Event::CommandRefused {
            command: Command::Scale(arbiter_core::MAX_WORKERS + 1),
            why: Refusal::AtCeiling
        }));
    let highest = world
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::TargetChanged { to, .. } => Some(to),
            _ => None,
        })
        .max();
    assert_eq!(highest, None, "the target stays at 2");
}

// ----- deadlines -----

#[test]
fn each_kind_of_deadline_has_its_own_name() {
    // Booting, READY=1 awaited: the boot deadline.
    let mut world = World::new(
        Config {
            ready: ReadyMode::Notify,
            ..config(1)
        },
        Behavior::slow_ready(secs(3)),
    );
    let id = WorkerId(1);
    assert_eq!(
        world.arbiter.next_deadline(),
        Some((at_ms(5000), Timer::Boot(id)))
    );
    // A heartbeat at 1 s: its deadline (3 s) comes before the boot deadline (5 s).
    world.drive(secs(1));
    assert_eq!(
        world.arbiter.next_deadline(),
        Some((at_ms(3000), Timer::Heartbeat(id)))
    );
    world.settle(secs(10));
    // Retiring: the kill deadline.
    world.signal(Signal::Term);
    let (at, timer) = world.arbiter.next_deadline().expect("a deadline");
    assert_eq!(timer, Timer::Kill(WorkerId(1)));
    assert_eq!(at, world.now + secs(10));

    // Exec-ready after a delay: the ready-after deadline.
    let world = World::new(
        Config {
            ready: ReadyMode::Exec,
            ready_after: secs(2),
            timeout: None,
            ..config(1)
        },
        Behavior::silent(),
    );
    assert_eq!(
        world.arbiter.next_deadline(),
        Some((at_ms(2000), Timer::ReadyAfter(WorkerId(1))))
    );

    // A crash loop: the backoff deadline of its slot.
    let mut world = World::new(
        Config {
            timeout: None,
            ..config(1)
        },
        Behavior::crashes(ms(100)),
    );
    world.drive(ms(250));
    assert_eq!(
        world.arbiter.next_deadline(),
        Some((at_ms(700), Timer::Backoff(0)))
    );

    // A stop whose last worker is never reaped: after its KILL, the stop deadline.
    let mut world = World::new(
        Config {
            timeout: None,
            ..config(1)
        },
        Behavior {
            ignore_kill: true,
            ..Behavior::ignores_term()
        },
    );
    world.drive(secs(1));
    world.signal(Signal::Term);
    world.drive(secs(10));
    assert_eq!(
        world.arbiter.next_deadline(),
        Some((
            at_ms(1000) + secs(10) + secs(1) + arbiter_core::REAP_GRACE,
            Timer::Stop
        ))
    );
}

// ----- counts -----

#[test]
fn ready_and_active_counts_follow_the_table_through_a_roll() {
    let mut world = World::new(config(4), Behavior::slow_ready(secs(1)));
    world.drive(secs(3));
    world.settle(secs(10));
    world.signal(Signal::Hup);
    for _ in 0..10_000 {
        let Some(next) = world.next_moment() else {
            break;
        };
        if world.arbiter.phase() != Phase::Reloading {
            break;
        }
        world.step_to(next);
        let active = world
            .arbiter
            .workers()
            .filter(|w| w.state.is_active())
            .count();
        assert_eq!(world.arbiter.ready_count(), world.ready());
        assert_eq!(world.arbiter.active_count(), active);
        assert_eq!(
            world.arbiter.worker_count(),
            world.arbiter.workers().count()
        );
    }
    assert_eq!(world.arbiter.phase(), Phase::Running);
}

// ----- one line each -----

#[test]
fn every_input_and_action_prints_as_one_line_with_its_reason() {
    let mut world = World::scripted(
        Config {
            watchdog: Some(secs(1)),
            forward_usr1: true,
            ..config(3)
        },
        Role::Fresh,
        Box::new(|slot, id| match (slot, id.0) {
            (0, 1) => Behavior {
                children: 1,
                ..Behavior::stopped(ms(1500))
            },
            (1, 2) => Behavior::crashes(ms(100)),
            _ => Behavior::good(),
        }),
    );
    world.drive(secs(5));
    world.signal(Signal::Usr1);
    world.signal(Signal::Usr2);
    world.signal(Signal::Usr2);
    world.signal(Signal::Ttin);
    world.reload(config(2));
    world.drive(secs(5));
    world.signal(Signal::Term);
    world.drive(secs(20));
    assert!(world.exit.is_some());
    for (_, action) in &world.log {
        let line = action.to_string();
        assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
        let reason = match action {
            Action::Spawn { reason, .. }
            | Action::Signal { reason, .. }
            | Action::KillGroup { reason, .. }
            | Action::LoadConfig { reason }
            | Action::WritePidfile { reason, .. }
            | Action::Exit { reason, .. } => Some(reason),
            _ => None,
        };
        if let Some(reason) = reason {
            assert!(line.ends_with(&reason.to_string()), "{line:?}");
        }
    }
    let inputs = [
        Input::Signal(Signal::Hup),
        Input::Command(Command::KillWorker(5)),
        Input::Reload(Box::new(config(2))),
        Input::ConfigFailed {
            error: "bad\nvalue".into(),
        },
        Input::Spawned {
            id: WorkerId(1),
            pid: 5,
        },
        Input::SpawnFailed {
            id: WorkerId(1),
            error: "ENOENT".into(),
        },
        Input::Exited {
            pid: 5,
            status: ExitStatus::Exited(0),
        },
        Input::Ready { pid: 5 },
        Input::Heartbeat {
            pid: 5,
            at: at_ms(1),
        },
        Input::Status {
            pid: 5,
            text: "two\nlines".into(),
        },
        Input::ReexecSpawned { pid: 6 },
        Input::ReexecFailed,
        Input::ParentExited,
        Input::PidfileWritten,
        Input::PidfileFailed {
            error: "EACCES".into(),
        },
        Input::Timeout,
    ];
    for input in inputs {
        let line = input.to_string();
        assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
    }
    let timers = [
        Timer::Boot(WorkerId(1)),
        Timer::Heartbeat(WorkerId(1)),
        Timer::ReadyAfter(WorkerId(1)),
        Timer::Kill(WorkerId(1)),
        Timer::Backoff(0),
        Timer::Watchdog,
        Timer::Stop,
    ];
    let names: std::collections::BTreeSet<String> = timers.iter().map(|t| t.to_string()).collect();
    assert_eq!(names.len(), timers.len(), "each deadline has its own name");
}

#[test]
fn handle_takes_every_input_as_the_shorthands_do() {
    let mut by_input = Arbiter::new(config(1), Role::Fresh, Moment::ZERO);
    let mut by_method = Arbiter::new(config(1), Role::Fresh, Moment::ZERO);
    let drain = |a: &mut Arbiter| std::iter::from_fn(|| a.poll_action()).collect::<Vec<_>>();
    assert_eq!(drain(&mut by_input), drain(&mut by_method));
    by_input.handle(Input::PidfileWritten, Moment::ZERO);
    by_method.handle_pidfile_written(Moment::ZERO);
    assert_eq!(drain(&mut by_input), drain(&mut by_method));
    by_input.handle(
        Input::Spawned {
            id: WorkerId(1),
            pid: 10,
        },
        Moment::ZERO,
    );
    by_method.handle_spawned(WorkerId(1), 10, Moment::ZERO);
    assert_eq!(drain(&mut by_input), drain(&mut by_method));
    by_input.handle(Input::Signal(Signal::Term), at_ms(5));
    by_method.handle_signal(Signal::Term, at_ms(5));
    assert_eq!(drain(&mut by_input), drain(&mut by_method));
    by_input.handle(
        Input::Exited {
            pid: 10,
            status: ExitStatus::Exited(0),
        },
        at_ms(6),
    );
    by_method.handle_exit(10, ExitStatus::Exited(0), at_ms(6));
    let last = drain(&mut by_input);
    assert_eq!(last, drain(&mut by_method));
    assert_eq!(
        last.last(),
        Some(&Action::Exit {
            code: 0,
            reason: Reason::Shutdown
        })
    );
}

#[test]
fn due_lists_only_the_deadlines_a_wake_up_judges() {
    // Two workers heartbeating at different phases: at the first one's deadline only its
    // heartbeat is due, so a shell re-reads one heartbeat file, not every worker's.
    let mut world = World::scripted(
        config(2),
        Role::Fresh,
        Box::new(|slot, _| Behavior {
            heartbeat_every: Some(ms(1000 + 300 * slot as u64)),
            ..Behavior::stopped(ms(1500))
        }),
    );
    world.drive(ms(1400));
    // Slot 0 beat at 1.0 s (deadline 3.0 s), slot 1 at 1.3 s (deadline 3.3 s).
    assert_eq!(world.arbiter.due(at_ms(2999)).count(), 0);
    assert_eq!(
        world.arbiter.due(at_ms(3000)).collect::<Vec<_>>(),
        [Timer::Heartbeat(WorkerId(1))]
    );
    assert_eq!(
        world.arbiter.due(at_ms(3300)).collect::<Vec<_>>(),
        [Timer::Heartbeat(WorkerId(1)), Timer::Heartbeat(WorkerId(2))]
    );
    world.signal(Signal::Term);
    world.drive(secs(30));
    assert!(world.exit.is_some());
    assert_eq!(
        world.arbiter.due(at_ms(u64::MAX / 2)).count(),
        0,
        "none after the exit"
    );
}

// ----- what observers follow -----

#[test]
fn each_spawn_and_a_failed_reexec_are_events_observers_can_count() {
    let mut arbiter = Arbiter::new(
        Config {
            pidfile: false,
            ..config(2)
        },
        Role::Fresh,
        Moment::ZERO,
    );
    let mut spawned = Vec::new();
    let mut pid = 100;
    while let Some(action) = arbiter.poll_action() {
        match action {
            Action::Spawn { id, slot, .. } => {
                pid += 1;
                arbiter.handle_spawned(id, pid, Moment::ZERO);
                spawned.push((id, pid, slot));
            }
            Action::Event(Event::WorkerSpawned {
                id,
                pid,
                slot,
                generation,
            }) => {
                assert_eq!(generation, 0);
                assert!(spawned.contains(&(id, pid, slot)), "{id} {pid} {slot}");
                spawned.retain(|s| *s != (id, pid, slot));
            }
            _ => {}
        }
    }
    assert!(spawned.is_empty(), "every spawn was an event: {spawned:?}");
    arbiter.handle_signal(Signal::Usr2, Moment::ZERO);
    let reexec = std::iter::from_fn(|| arbiter.poll_action()).any(|a| a == Action::ReExec);
    assert!(reexec, "USR2 asks for a re-exec");
    arbiter.handle_reexec_failed();
    let events: Vec<Action> = std::iter::from_fn(|| arbiter.poll_action()).collect();
    assert_eq!(events, vec![Action::Event(Event::ReexecFailed)]);
    // The failure is over: a second USR2 is not refused as "an upgrade is under way".
    arbiter.handle_signal(Signal::Usr2, Moment::ZERO);
    assert!(std::iter::from_fn(|| arbiter.poll_action()).any(|a| a == Action::ReExec));
}

// ----- heartbeats to bring up to date -----

/// Before judging, a shell brings up to date the heartbeats the core names: none while no
/// heartbeat deadline is due, then every worker whose deadline falls within half a timeout
/// (2 s here), so one wake-up moves them all.
#[test]
fn heartbeats_to_refresh_are_none_until_one_is_due_then_all_due_within_half_a_timeout() {
    let mut arbiter = Arbiter::new(sim::config(3), Role::Fresh, Moment::ZERO);
    let mut ids = Vec::new();
    while let Some(action) = arbiter.poll_action() {
        if let Action::Spawn { id, .. } = action {
            ids.push(id);
        }
    }
    assert_eq!(ids.len(), 3);
    for (i, &id) in ids.iter().enumerate() {
        let pid = 100 + i as i32;
        arbiter.handle_spawned(id, pid, Moment::ZERO);
        arbiter.handle_ready(pid, Moment::ZERO);
    }
    // Deadlines at 2 s, 2.6 s and 3.5 s.
    for (pid, beat) in [(100, 0), (101, 600), (102, 1500)] {
        arbiter.handle_heartbeat(pid, at_ms(beat));
    }
    assert!(arbiter.heartbeats_to_refresh(at_ms(1999)).is_empty());
    assert_eq!(
        arbiter.heartbeats_to_refresh(at_ms(2000)),
        ids[..2].to_vec()
    );
    assert_eq!(arbiter.heartbeats_to_refresh(at_ms(2600)), ids.to_vec());
}
