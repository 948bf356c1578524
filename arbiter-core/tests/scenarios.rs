//! One scenario per behaviour of the arbiter, driven through the simulated world with exact
//! virtual times.

mod sim;

use std::time::Duration;

use arbiter_core::{
    Action, BootErrorPolicy, Command, Config, Event, ExitStatus, GpuConfig, Moment, Phase,
    ReadyMode, Reason, Refusal, Role, Signal, SupervisorNote, WorkerState, BACKOFF_CAP, REAP_GRACE,
    SCALE_SETTLE,
};
use sim::{at_ms, ms, secs, Behavior, World};

fn config(workers: usize) -> Config {
    Config {
        pidfile: true,
        ..sim::config(workers)
    }
}

fn signals(world: &World, pid: i32) -> Vec<(Moment, Signal, bool)> {
    world.signals_to(pid)
}

fn exited_with(world: &World, pid: i32) -> Option<ExitStatus> {
    world
        .events()
        .into_iter()
        .find_map(|(_, event)| match event {
            Event::WorkerExited {
                pid: exited,
                status,
                ..
            } if exited == pid => Some(status),
            _ => None,
        })
}

#[test]
fn boot_spawns_target_workers_in_slots_with_increasing_ids() {
    let mut world = World::new(config(3), Behavior::good());
    let spawns = world.spawns();
    assert_eq!(spawns.len(), 3);
    for (index, (at, id, slot, reason)) in spawns.iter().enumerate() {
        assert_eq!(*at, Moment::ZERO);
        assert_eq!(id.0, index as u64 + 1);
        assert_eq!(*slot, index);
        assert_eq!(*reason, Reason::Boot);
    }
    // A command that never sent READY=1 is ready on exec (auto mode): ready at once.
    assert_eq!(world.ready(), 3);
    assert!(world
        .log
        .iter()
        .any(|(_, a)| *a == Action::Notify(SupervisorNote::Ready)));
    assert_eq!(world.pidfiles.get("pidfile"), Some(&world.master_pid));
    world.drive(secs(60));
    assert_eq!(world.spawns().len(), 3, "good workers are never replaced");
}

#[test]
fn hung_worker_gets_abort_at_exact_deadline_then_kill_after_grace() {
    // Heartbeats at 1, 2, 3 s, then stopped at 3.5 s: deadline 3 + 2 = 5 s, KILL at 6 s.
    let mut world = World::scripted(
        config(1),
        Role::Fresh,
        Box::new(|_, id| {
            if id.0 == 1 {
                Behavior::stopped(ms(3500))
            } else {
                Behavior::good()
            }
        }),
    );
    let pid = world.pid_in(0);
    world.drive(secs(10));
    assert_eq!(
        signals(&world, pid),
        vec![
            (at_ms(5000), Signal::Abrt, true),
            (at_ms(6000), Signal::Kill, true)
        ]
    );
    assert_eq!(
        exited_with(&world, pid),
        Some(ExitStatus::Signaled {
            signal: 9,
            core_dumped: false
        })
    );
    let reasons: Vec<Reason> = world
        .actions(|a| matches!(a, Action::Signal { .. }))
        .into_iter()
        .filter_map(|(_, a)| match a {
            Action::Signal { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [Reason::HeartbeatTimeout, Reason::AbortGraceOver]);
    // It was ready and lived for 5 s: replaced at once, while it is being aborted (the
    // table may hold target + max_surge workers).
    let spawns = world.spawns();
    assert_eq!(spawns.len(), 2);
    assert_eq!(spawns[1].0, at_ms(5000));
    assert_eq!(spawns[1].3, Reason::Respawn);
}

#[test]
fn hung_worker_that_dies_of_the_abort_signal_gets_no_kill() {
    let mut world = World::new(config(1), Behavior::hangs(ms(3500)));
    let pid = world.pid_in(0);
    world.drive(secs(10));
    assert_eq!(
        signals(&world, pid),
        vec![(at_ms(5000), Signal::Abrt, true)]
    );
    assert_eq!(
        exited_with(&world, pid),
        Some(ExitStatus::Signaled {
            signal: 6,
            core_dumped: true
        })
    );
    assert_eq!(world.spawns()[1].0, at_ms(5000));
}

#[test]
fn heartbeat_timeout_none_disables_the_heartbeat_deadline() {
    let mut world = World::new(
        Config {
            timeout: None,
            ..config(1)
        },
        Behavior::stopped(ms(1500)),
    );
    let pid = world.pid_in(0);
    world.drive(secs(3600));
    assert!(signals(&world, pid).is_empty());
    assert!(world.is_alive(pid));
    assert_eq!(world.arbiter.poll_timeout(), None, "no deadline at all");
}

#[test]
fn boot_timeout_aborts_a_worker_that_never_becomes_ready() {
    let mut world = World::new(
        Config {
            ready: ReadyMode::Notify,
            timeout: None,
            ..config(1)
        },
        Behavior::slow_ready(secs(8)),
    );
    let pid = world.pid_in(0);
    world.drive(ms(5999));
    assert_eq!(
        signals(&world, pid),
        vec![(at_ms(5000), Signal::Abrt, true)]
    );
    let abort_reason = world.actions(|a| matches!(a, Action::Signal { .. }))[0]
        .1
        .clone();
    assert!(matches!(
        abort_reason,
        Action::Signal {
            reason: Reason::BootTimeout,
            ..
        }
    ));
}

#[test]
fn boot_timeout_none_waits_for_a_slow_worker_forever() {
    let mut world = World::new(
        Config {
            ready: ReadyMode::Notify,
            boot_timeout: None,
            timeout: None,
            ..config(1)
        },
        Behavior::slow_ready(secs(600)),
    );
    let pid = world.pid_in(0);
    world.drive(secs(599));
    assert_eq!(world.ready(), 0);
    world.drive(secs(2));
    assert_eq!(world.ready(), 1);
    assert!(signals(&world, pid).is_empty());
}

#[test]
fn slow_worker_is_not_killed_by_the_heartbeat_timeout_while_booting() {
    // Heartbeats every second, READY=1 only at 4 s: within the 5 s boot timeout.
    let mut world = World::new(
        Config {
            ready: ReadyMode::Notify,
            ..config(1)
        },
        Behavior::slow_ready(secs(4)),
    );
    let pid = world.pid_in(0);
    world.drive(secs(30));
    assert!(signals(&world, pid).is_empty());
    assert_eq!(world.ready_in(0), Some(pid));
}

#[test]
fn worker_that_never_speaks_the_protocol_is_supervised_for_exit_only() {
    let mut world = World::new(config(2), Behavior::silent());
    world.drive(secs(3600));
    assert_eq!(world.spawns().len(), 2);
    assert_eq!(world.ready(), 2, "ready on exec");
    for pid in world.alive() {
        assert!(signals(&world, pid).is_empty());
    }
    assert_eq!(world.arbiter.poll_timeout(), None);
}

#[test]
fn crash_of_a_long_lived_worker_is_replaced_at_once() {
    let mut world = World::new(config(1), Behavior::crashes(secs(100)));
    world.drive(secs(150));
    let spawns = world.spawns();
    assert_eq!(spawns[1].0, at_ms(100_000));
    assert_eq!(spawns[1].3, Reason::Respawn);
    assert!(!world
        .events()
        .iter()
        .any(|(_, e)| matches!(e, Event::Backoff { .. })));
    assert_eq!(world.arbiter.slot_restarts(0), 1);
}

#[test]
fn crash_loop_is_respawned_with_growing_delay_at_least_1s_by_the_third() {
    let mut world = World::new(config(1), Behavior::crashes(ms(100)));
    world.drive(secs(300));
    let times: Vec<Moment> = world.spawns().iter().map(|s| s.0).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Each gap is 100 ms of life plus the delay after that quick death.
    let delays: Vec<Duration> = gaps.iter().map(|g| *g - ms(100)).collect();
    assert_eq!(delays[0], Duration::ZERO, "a first quick death: at once");
    assert!(delays[1] > Duration::ZERO);
    assert!(
        delays[2] >= secs(1),
        "at least 1 s by the third quick death"
    );
    for pair in delays.windows(2) {
        assert!(pair[1] >= pair[0], "delays never shrink: {delays:?}");
    }
    assert!(delays.iter().all(|d| *d <= BACKOFF_CAP));
    assert_eq!(*delays.last().expect("many"), BACKOFF_CAP);
    let backoffs = world
        .events()
        .iter()
        .filter(|(_, e)| matches!(e, Event::Backoff { slot: 0, .. }))
        .count();
    assert!(backoffs >= 5);
}

#[test]
fn crash_loop_delay_resets_once_a_worker_of_the_slot_stayed_up() {
    // Three quick deaths, then a worker that lives 10 s, then a quick death again.
    let mut world = World::scripted(
        config(1),
        Role::Fresh,
        Box::new(|_, id| match id.0 {
            1..=3 => Behavior::crashes(ms(100)),
            4 => Behavior::crashes(secs(10)),
            5 => Behavior::crashes(ms(100)),
            _ => Behavior::good(),
        }),
    );
    world.drive(secs(60));
    let spawns = world.spawns();
    assert_eq!(spawns.len(), 6);
    let died4 = spawns[3].0 + secs(10);
    assert_eq!(spawns[4].0, died4, "after a long life: at once");
    assert_eq!(
        spawns[5].0,
        died4 + ms(100),
        "the counter was reset: a first quick death again"
    );
}

#[test]
fn exit_code_3_halts_with_code_3_and_reason() {
    let mut world = World::new(config(2), Behavior::boot_error(3));
    world.drive(secs(60));
    let (at, code, reason) = world.exit.expect("halted");
    assert_eq!(code, 3);
    assert_eq!(reason, Reason::BootError);
    assert_eq!(reason.to_string(), "Worker failed to boot.");
    // Both workers exited 3 at 10 ms, so the stop is over right then.
    assert_eq!(at, at_ms(10));
    assert_eq!(world.spawns().len(), 2, "no respawn while halting");
}

#[test]
fn exit_code_4_halts_with_code_4_and_reason() {
    let mut world = World::scripted(
        config(2),
        Role::Fresh,
        Box::new(|slot, _| {
            if slot == 0 {
                Behavior::boot_error(4)
            } else {
                Behavior::good()
            }
        }),
    );
    world.drive(secs(60));
    let (at, code, reason) = world.exit.expect("halted");
    assert_eq!((code, reason), (4, Reason::AppLoadError));
    assert_eq!(reason.to_string(), "App failed to load.");
    // The good worker got TERM at 10 ms and took 50 ms to exit.
    assert_eq!(at, at_ms(60));
    assert!(world
        .log
        .iter()
        .any(|(_, a)| matches!(a, Action::CloseListeners { .. })));
}

#[test]
fn backoff_policy_respawns_with_growing_delay_capped_at_30s() {
    let mut world = World::new(
        Config {
            on_boot_error: BootErrorPolicy::Backoff,
            ..config(1)
        },
        Behavior::boot_error(3),
    );
    world.drive(secs(400));
    assert!(world.exit.is_none(), "backoff never halts");
    let times: Vec<Moment> = world.spawns().iter().map(|s| s.0).collect();
    let delays: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0] - ms(10)).collect();
    assert!(delays.len() > 10);
    assert!(delays[2] >= secs(1));
    for pair in delays.windows(2) {
        assert!(pair[1] >= pair[0]);
    }
    assert_eq!(*delays.last().expect("many"), secs(30));
    assert!(delays.iter().all(|d| *d <= secs(30)));
}

#[test]
fn orphan_exit_never_halts() {
    let mut world = World::new(config(1), Behavior::good());
    world.drive(secs(1));
    world.orphan_exit(99_999, ExitStatus::Exited(3));
    world.orphan_exit(99_998, ExitStatus::Exited(4));
    world.drive(secs(10));
    assert!(world.exit.is_none());
    assert_eq!(world.arbiter.phase(), Phase::Running);
    assert!(world.events().iter().any(|(_, e)| *e
        == Event::OrphanReaped {
            pid: 99_999,
            status: ExitStatus::Exited(3)
        }));
    assert_eq!(world.spawns().len(), 1);
}

#[test]
fn death_by_signal_is_reported_with_the_signal() {
    let mut world = World::new(config(1), Behavior::good());
    world.drive(secs(5));
    let pid = world.pid_in(0);
    let segv = ExitStatus::Signaled {
        signal: 11,
        core_dumped: true,
    };
    world.kill_now(pid, segv);
    let event = world.events().into_iter().find_map(|(_, e)| match e {
        Event::WorkerExited {
            pid: p,
            status,
            expected,
            ..
        } if p == pid => Some((status, expected)),
        _ => None,
    });
    assert_eq!(event, Some((segv, false)));
    assert_eq!(world.spawns().len(), 2);
}

#[test]
fn ttin_adds_a_worker_and_ttou_retires_the_highest_slot_with_a_floor_of_one() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Ttin);
    let signalled = world.now;
    assert_eq!(world.arbiter.target(), 3, "the target changes at once");
    assert_eq!(
        world.spawns().len(),
        2,
        "its spawn waits for the burst to settle"
    );
    world.drive(secs(1));
    let spawns = world.spawns();
    assert_eq!(spawns.len(), 3);
    assert_eq!(
        (spawns[2].0, spawns[2].2, spawns[2].3),
        (signalled + SCALE_SETTLE, 2, Reason::ScaleUp)
    );
    let slot2 = world.pid_in(2);
    world.signal(Signal::Ttou);
    assert_eq!(world.arbiter.target(), 2);
    assert_eq!(
        signals(&world, slot2),
        vec![(world.now, Signal::Term, false)]
    );
    world.signal(Signal::Ttou);
    world.signal(Signal::Ttou);
    world.signal(Signal::Ttou);
    assert_eq!(world.arbiter.target(), 1, "floor of one");
    world.drive(secs(1));
    assert_eq!(world.alive().len(), 1);
    assert_eq!(world.arbiter.workers().next().expect("one").slot, 0);
}

#[test]
fn winch_stops_every_worker_when_daemonized_and_is_ignored_otherwise() {
    let mut world = World::new(config(2), Behavior::good());
    world.signal(Signal::Winch);
    let refusal = Event::SignalRefused {
        signal: Signal::Winch,
        why: Refusal::NotDaemonized,
    };
    assert!(world.events().iter().any(|(_, e)| *e == refusal));
    assert_eq!(refusal.to_string(), "SIGWINCH ignored. Not daemonized");
    world.drive(secs(1));
    assert_eq!(world.alive().len(), 2);

    let mut world = World::new(
        Config {
            daemonized: true,
            ..config(2)
        },
        Behavior::good(),
    );
    world.drive(secs(1));
    world.signal(Signal::Winch);
    world.drive(secs(1));
    assert!(world.alive().is_empty());
    assert!(world.exit.is_none(), "the master stays");
    assert_eq!(world.spawns().len(), 2);
}

#[test]
fn stop_finishes_the_moment_the_last_worker_is_reaped() {
    let mut world = World::scripted(
        config(3),
        Role::Fresh,
        Box::new(|slot, _| Behavior {
            term_takes: ms(100 * (slot as u64 + 1)),
            ..Behavior::good()
        }),
    );
    world.drive(secs(2));
    world.signal(Signal::Term);
    let stop = world.now;
    world.drive(secs(60));
    let (at, code, reason) = world.exit.expect("stopped");
    assert_eq!(at, stop + ms(300));
    assert_eq!((code, reason), (0, Reason::Shutdown));
    assert!(world.alive().is_empty());
}

#[test]
fn graceful_stop_kills_workers_that_ignore_term_at_the_graceful_deadline() {
    let mut world = World::new(config(2), Behavior::ignores_term());
    world.drive(secs(2));
    world.signal(Signal::Term);
    world.drive(secs(60));
    for pid in world.procs.keys().copied().collect::<Vec<_>>() {
        assert_eq!(
            signals(&world, pid),
            vec![
                (at_ms(2000), Signal::Term, false),
                (at_ms(12_000), Signal::Kill, true)
            ]
        );
    }
    assert_eq!(world.exit.expect("stopped").0, at_ms(12_000));
}

#[test]
fn quick_stop_sends_the_quick_signal_and_term_then_int_escalates() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    world.signal(Signal::Int);
    world.drive(Duration::ZERO);
    let (at, code, reason) = world.exit.expect("quick workers exit at once");
    assert_eq!((at, code, reason), (at_ms(1000), 0, Reason::QuickShutdown));

    let mut world = World::new(config(1), Behavior::ignores_term());
    world.drive(secs(1));
    let pid = world.pid_in(0);
    world.signal(Signal::Term);
    world.drive(secs(1));
    world.signal(Signal::Quit);
    world.drive(Duration::ZERO);
    assert_eq!(
        signals(&world, pid),
        vec![
            (at_ms(1000), Signal::Term, false),
            (at_ms(2000), Signal::Quit, false)
        ]
    );
    assert_eq!(world.exit.expect("stopped").0, at_ms(2000));
}

#[test]
fn stop_gives_up_after_reap_grace_when_a_killed_worker_is_never_reaped() {
    // A worker in uninterruptible sleep: KILL does not end it, so no reap ever comes.
    let mut world = World::new(
        config(1),
        Behavior {
            ignore_kill: true,
            ..Behavior::ignores_term()
        },
    );
    world.drive(secs(1));
    world.signal(Signal::Term);
    world.drive(secs(60));
    let pid = world.procs.keys().next().copied().expect("one");
    assert_eq!(world.procs[&pid].killed_at, Some(at_ms(11_000)));
    let limit = at_ms(1000) + secs(10) + secs(1) + REAP_GRACE;
    assert_eq!(world.exit.expect("gave up").0, limit);
}

#[test]
fn hup_retires_old_worker_only_after_new_one_is_ready() {
    let mut world = World::new(config(2), Behavior::slow_ready(secs(3)));
    // Once a worker has sent READY=1, auto readiness awaits it from every new worker.
    world.drive(secs(5));
    world.settle(secs(10));
    let old: Vec<i32> = world.alive();
    let hup = world.now;
    world.signal(Signal::Hup);
    assert_eq!(world.arbiter.phase(), Phase::Reloading);
    world.drive(secs(20));
    for pid in &old {
        let term = signals(&world, *pid)[0];
        assert_eq!(term.1, Signal::Term);
        // The first new worker is ready at hup + 3 s (READY=1 is awaited now).
        assert!(term.0 >= hup + secs(3), "retired at {:?}", term.0);
    }
    assert_eq!(world.arbiter.phase(), Phase::Running);
    assert!(world
        .events()
        .iter()
        .any(|(_, e)| *e == Event::ReloadFinished { generation: 1 }));
    assert!(world.arbiter.workers().all(|w| w.generation == 1));
}

#[test]
fn ready_capacity_never_drops_below_target_during_roll() {
    let target = 4;
    let mut world = World::new(
        Config {
            max_surge: 1,
            ..config(target)
        },
        Behavior::slow_ready(secs(2)),
    );
    world.drive(secs(5));
    world.settle(secs(10));
    world.signal(Signal::Hup);
    let mut steps = 0;
    while world.arbiter.phase() == Phase::Reloading {
        let next = world.next_moment().expect("something is due");
        world.step_to(next);
        assert!(
            world.ready() >= target,
            "ready capacity {} at {:?}",
            world.ready(),
            world.now
        );
        steps += 1;
        assert!(steps < 10_000);
    }
    world.settle(secs(10));
    // One at a time: four spawns of generation 1 at least 2 s apart.
    let reload_spawns: Vec<Moment> = world
        .spawns()
        .iter()
        .filter(|s| s.3 == Reason::Reload)
        .map(|s| s.0)
        .collect();
    assert_eq!(reload_spawns.len(), target);
    assert!(reload_spawns.windows(2).all(|w| w[1] - w[0] >= secs(2)));
}

#[test]
fn hup_during_reload_restarts_the_roll_and_ends_with_the_newest_generation() {
    let mut world = World::new(config(3), Behavior::slow_ready(secs(2)));
    world.drive(secs(5));
    world.settle(secs(10));
    world.signal(Signal::Hup);
    world.drive(ms(2500));
    world.signal(Signal::Hup);
    world.drive(ms(500));
    world.signal(Signal::Hup);
    assert_eq!(world.arbiter.generation(), 3);
    world.settle(secs(60));
    assert!(world.arbiter.workers().all(|w| w.generation == 3));
    assert_eq!(world.arbiter.phase(), Phase::Running);
    assert_eq!(world.alive().len(), 3);
}

#[test]
fn reload_with_fewer_workers_culls_the_high_slots() {
    let mut world = World::new(config(3), Behavior::good());
    world.settle(secs(10));
    world.reload(config(1));
    world.settle(secs(10));
    assert_eq!(world.alive().len(), 1);
    assert_eq!(world.arbiter.workers().next().expect("one").slot, 0);
}

#[test]
fn usr2_reexecs_and_is_refused_while_child_exists() {
    let mut world = World::new(config(1), Behavior::good());
    world.signal(Signal::Usr2);
    assert!(world.reexec.is_some());
    world.signal(Signal::Usr2);
    let reexecs = world.actions(|a| *a == Action::ReExec).len();
    assert_eq!(reexecs, 1);
    let refusal = Event::SignalRefused {
        signal: Signal::Usr2,
        why: Refusal::ChildExists,
    };
    assert!(world.events().iter().any(|(_, e)| *e == refusal));
    assert_eq!(refusal.to_string(), "USR2 signal ignored. Child exists.");
    // The child's exit is recognised: no orphan, no worker exit, USR2 works again.
    let child = world.reexec.expect("child");
    world.reexec_exits(ExitStatus::Exited(1));
    assert!(world.events().iter().any(|(_, e)| *e
        == Event::ReexecExited {
            pid: child,
            status: ExitStatus::Exited(1)
        }));
    assert_eq!(world.arbiter.reexec_pid(), None);
    world.signal(Signal::Usr2);
    assert_eq!(world.actions(|a| *a == Action::ReExec).len(), 2);
}

#[test]
fn usr2_refused_while_not_yet_promoted() {
    let mut world = World::scripted(
        config(1),
        Role::UpgradeChild { parent: 42 },
        Box::new(|_, _| Behavior::good()),
    );
    assert_eq!(world.pidfiles.get("pidfile.2"), Some(&world.master_pid));
    assert!(!world.pidfiles.contains_key("pidfile"));
    world.signal(Signal::Usr2);
    assert!(world.actions(|a| *a == Action::ReExec).is_empty());
    let refusal = Event::SignalRefused {
        signal: Signal::Usr2,
        why: Refusal::ParentExists,
    };
    assert!(world.events().iter().any(|(_, e)| *e == refusal));
    assert_eq!(refusal.to_string(), "USR2 signal ignored. Parent exists.");
}

#[test]
fn promotion_renames_pidfile() {
    let mut world = World::scripted(
        config(1),
        Role::UpgradeChild { parent: 42 },
        Box::new(|_, _| Behavior::good()),
    );
    world.drive(secs(1));
    world.parent_exits();
    assert_eq!(world.pidfiles.get("pidfile"), Some(&world.master_pid));
    assert!(!world.pidfiles.contains_key("pidfile.2"));
    assert!(world.events().iter().any(|(_, e)| *e == Event::Promoted));
    assert_eq!(world.arbiter.parent_master(), None);
    // A second report changes nothing; USR2 works now.
    world.parent_exits();
    assert_eq!(world.actions(|a| *a == Action::PromotePidfile).len(), 1);
    world.signal(Signal::Usr2);
    assert_eq!(world.actions(|a| *a == Action::ReExec).len(), 1);
}

#[test]
fn stop_during_upgrade_keeps_unix_socket_files() {
    let mut world = World::new(config(1), Behavior::good());
    world.signal(Signal::Usr2);
    world.signal(Signal::Term);
    assert!(world
        .log
        .iter()
        .any(|(_, a)| *a == Action::CloseListeners { unlink: false }));
}

#[test]
fn seven_workers_over_three_gpus_are_3_2_2() {
    let gpus = GpuConfig::new(
        vec!["0".into(), "1".into(), "2".into()],
        1,
        "CUDA_VISIBLE_DEVICES",
    )
    .expect("valid");
    let mut world = World::new(
        Config {
            gpus: Some(gpus),
            ..config(7)
        },
        Behavior::good(),
    );
    world.settle(secs(5));
    let load: Vec<usize> = world
        .arbiter
        .gpu_load()
        .expect("balancing")
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(load, [3, 2, 2]);
    let by_slot = world.spawn_gpus();
    assert_eq!(by_slot[3], (3, vec!["0".to_string()]));
    // A crash releases, the respawn of the same slot reacquires the same GPU.
    let pid = world.pid_in(4);
    world.kill_now(pid, ExitStatus::Exited(1));
    let last = world.spawn_gpus().pop().expect("respawn");
    assert_eq!(last, (4, vec!["1".to_string()]));
    world.settle(secs(5));
    let load: Vec<usize> = world
        .arbiter
        .gpu_load()
        .expect("balancing")
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(load, [3, 2, 2], "no drift after a crash");
}

#[test]
fn gpus_are_released_on_every_exit_path() {
    let gpus =
        GpuConfig::new(vec!["a".into(), "b".into()], 1, "CUDA_VISIBLE_DEVICES").expect("valid");
    let mut world = World::new(
        Config {
            gpus: Some(gpus),
            ..config(2)
        },
        Behavior::stopped(secs(3)),
    );
    world.drive(secs(20));
    let loaded: usize = world
        .arbiter
        .gpu_load()
        .expect("balancing")
        .into_iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(loaded, world.arbiter.workers().count());
    world.signal(Signal::Term);
    world.drive(secs(30));
    let loaded: usize = world
        .arbiter
        .gpu_load()
        .expect("balancing")
        .into_iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(loaded, 0);
}

#[test]
fn group_kill_takes_the_workers_children_and_they_are_reaped_as_orphans() {
    let mut world = World::new(
        config(1),
        Behavior {
            children: 2,
            ..Behavior::stopped(secs(3))
        },
    );
    world.drive(secs(7));
    let first = world.procs.values().next().expect("spawned").clone();
    assert_eq!(first.killed_at, Some(at_ms(5000)));
    for child in &first.children {
        assert!(!world.children.contains(child), "the whole group died");
    }
    let orphans = world
        .events()
        .iter()
        .filter(|(_, e)| matches!(e, Event::OrphanReaped { .. }))
        .count();
    assert!(orphans >= 2);
    assert!(world.exit.is_none());
}

#[test]
fn spawn_failure_before_any_worker_ran_exits_1() {
    let mut world = World::new(
        config(2),
        Behavior {
            spawn_fails: true,
            ..Behavior::good()
        },
    );
    world.drive(secs(1));
    let (_, code, reason) = world.exit.expect("exits");
    assert_eq!((code, reason), (1, Reason::SpawnFailure));
}

#[test]
fn kill_worker_command_retires_and_replaces_one_worker() {
    let mut world = World::new(config(2), Behavior::good());
    world.drive(secs(1));
    let pid = world.pid_in(1);
    world.command(Command::KillWorker(pid));
    world.drive(secs(1));
    assert_eq!(signals(&world, pid)[0].1, Signal::Term);
    assert!(!world.is_alive(pid));
    assert_eq!(world.alive().len(), 2);
    assert!(world
        .arbiter
        .workers()
        .all(|w| w.state == WorkerState::Ready));
}

#[test]
fn a_signal_is_never_sent_after_the_exit_was_reported() {
    // A worker that exits on its own at the very moment its KILL is due.
    let mut world = World::new(
        config(1),
        Behavior {
            exit_after: Some((secs(6), ExitStatus::Exited(0))),
            ..Behavior::stopped(ms(3500))
        },
    );
    world.drive(secs(20));
    let first = world.procs.keys().next().copied().expect("one");
    assert_eq!(
        signals(&world, first),
        vec![(at_ms(5000), Signal::Abrt, true)]
    );
}

#[test]
fn with_gpus_a_hung_workers_replacement_waits_for_its_reap() {
    // The same hang as above, with GPU balancing: the replacement is spawned only once the
    // hung worker (still holding the slot's device memory) is reaped after its KILL at 6 s.
    let gpus = GpuConfig::new(vec!["0".into()], 1, "CUDA_VISIBLE_DEVICES").expect("valid");
    let mut world = World::scripted(
        Config {
            gpus: Some(gpus),
            ..config(1)
        },
        Role::Fresh,
        Box::new(|_, id| {
            if id.0 == 1 {
                Behavior::stopped(ms(3500))
            } else {
                Behavior::good()
            }
        }),
    );
    let pid = world.pid_in(0);
    world.drive(secs(10));
    assert_eq!(
        signals(&world, pid),
        vec![
            (at_ms(5000), Signal::Abrt, true),
            (at_ms(6000), Signal::Kill, true)
        ]
    );
    let spawns = world.spawns();
    assert_eq!(spawns.len(), 2);
    assert!(spawns[1].0 >= at_ms(6000), "respawned at {:?}", spawns[1].0);
    assert_eq!(spawns[1].3, Reason::Respawn);
}

#[test]
fn ready_after_delays_the_readiness_of_workers_that_never_send_ready() {
    // Plain workers (no READY=1) with ready_after 2 s: a HUP retires each old worker only
    // 2 s after its replacement was exec'd.
    let mut world = World::new(
        Config {
            ready: ReadyMode::Exec,
            ready_after: secs(2),
            timeout: None,
            ..config(2)
        },
        Behavior::silent(),
    );
    world.settle(secs(10));
    assert_eq!(world.arbiter.ready_count(), 2);
    let old: Vec<i32> = world.alive();
    let hup = world.now;
    world.signal(Signal::Hup);
    world.drive(secs(20));
    for pid in &old {
        let term = signals(&world, *pid)[0];
        assert_eq!(term.1, Signal::Term);
        assert!(term.0 >= hup + secs(2), "retired at {:?}", term.0);
    }
    assert_eq!(world.arbiter.phase(), Phase::Running);
}
