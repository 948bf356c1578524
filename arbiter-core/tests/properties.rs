//! Property tests: random event sequences through the simulated world, with the arbiter's
//! invariants checked after every step (the world itself panics on a signal to an exited or
//! unknown pid, on a spawn that overfills the table, and on a hung worker not killed exactly
//! at the end of its abort grace, on a group kill of a child that is not a zombie, on an exit
//! never reaped, and on a spawn before a fresh master's pidfile).

mod sim;

use arbiter_core::{
    Action, Command, Config, Event, ExitCause, ExitStatus, GpuConfig, Moment, Phase, Pid,
    ReadyMode, Role, Signal, SupervisorNote, WorkerState, REAP_GRACE, START_EXTENSION_EVERY,
};
use proptest::prelude::*;
use sim::{ms, secs, Behavior, World};
use std::time::Duration;

const DEVICES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Tick(u64),
    Crash(usize, i32),
    CrashBySignal(usize),
    Hang(usize, bool),
    Ready(usize),
    Signal(Signal),
    Orphan(i32),
    ReexecExit,
    ParentExit,
    BadConfig,
    PidfileBreaks,
    Scale(usize),
    KillWorker(usize),
    AskRecycle(usize),
    Memory(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..5_000).prop_map(Op::Tick),
        2 => (0usize..16, prop_oneof![Just(0), Just(1), Just(3), Just(4)])
            .prop_map(|(i, c)| Op::Crash(i, c)),
        1 => (0usize..16).prop_map(Op::CrashBySignal),
        1 => (0usize..16, any::<bool>()).prop_map(|(i, s)| Op::Hang(i, s)),
        1 => (0usize..16).prop_map(Op::Ready),
        3 => prop_oneof![
            Just(Signal::Hup),
            Just(Signal::Ttin),
            Just(Signal::Ttou),
            Just(Signal::Usr1),
            Just(Signal::Usr2),
            Just(Signal::Winch),
            Just(Signal::Chld),
        ]
        .prop_map(Op::Signal),
        1 => prop_oneof![Just(0), Just(3), Just(4)].prop_map(Op::Orphan),
        1 => Just(Op::ReexecExit),
        1 => Just(Op::ParentExit),
        1 => Just(Op::BadConfig),
        1 => Just(Op::PidfileBreaks),
        1 => (0usize..9).prop_map(Op::Scale),
        1 => (0usize..16).prop_map(Op::KillWorker),
        1 => (0usize..16).prop_map(Op::AskRecycle),
        1 => (0usize..16, 0u64..200_000_000).prop_map(|(i, b)| Op::Memory(i, b)),
    ]
}

fn behavior() -> impl Strategy<Value = Behavior> {
    prop_oneof![
        4 => Just(Behavior::good()),
        1 => Just(Behavior::silent()),
        1 => (100u64..10_000).prop_map(|t| Behavior::hangs(ms(t))),
        1 => (100u64..10_000).prop_map(|t| Behavior::stopped(ms(t))),
        1 => (10u64..5_000).prop_map(|t| Behavior::crashes(ms(t))),
        1 => prop_oneof![Just(3), Just(4)].prop_map(Behavior::boot_error),
        1 => (1u64..8_000).prop_map(|t| Behavior::slow_ready(ms(t))),
        1 => Just(Behavior::ignores_term()),
        1 => (100_000u64..10_000_000).prop_map(Behavior::leaks),
        1 => (100u64..10_000).prop_map(|t| Behavior::asks_recycle(ms(t))),
    ]
}

fn config_strategy() -> impl Strategy<Value = Config> {
    (
        1usize..8,
        1usize..3,
        any::<bool>(),
        prop_oneof![
            Just(ReadyMode::Auto),
            Just(ReadyMode::Notify),
            Just(ReadyMode::Exec)
        ],
        prop_oneof![
            Just(arbiter_core::BootErrorPolicy::Halt),
            Just(arbiter_core::BootErrorPolicy::Backoff)
        ],
        prop_oneof![Just(None), (500u64..5_000).prop_map(|t| Some(ms(t)))],
        prop_oneof![Just(None), (500u64..10_000).prop_map(|t| Some(ms(t)))],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(None), (200u64..3_000).prop_map(|t| Some(ms(t)))],
        prop_oneof![Just(Duration::ZERO), (100u64..2_000).prop_map(ms)],
        (
            (any::<bool>(), any::<bool>()),
            (
                prop_oneof![Just(None), (1_000u64..20_000).prop_map(|t| Some(ms(t)))],
                prop_oneof![Just(None), Just(Some(0)), (0u64..20_000).prop_map(Some)],
                prop_oneof![Just(None), (20_000_000u64..100_000_000).prop_map(Some)],
            ),
        ),
    )
        .prop_map(
            |(
                workers,
                max_surge,
                gpus,
                ready,
                on_boot_error,
                timeout,
                boot_timeout,
                daemon,
                pidfile,
                watchdog,
                shutdown_delay,
                ((extend_start, slot_listeners), (max_worker_age, jitter, max_worker_memory)),
            )| {
                Config {
                    slot_listeners,
                    max_worker_age,
                    max_worker_age_jitter: jitter.map(ms),
                    max_worker_memory,
                    memory_sample_every: ms(700),
                    pidfile,
                    watchdog,
                    shutdown_delay,
                    extend_start,
                    workers,
                    max_surge,
                    ready,
                    on_boot_error,
                    timeout,
                    boot_timeout,
                    graceful_timeout: secs(3),
                    abort_grace: ms(700),
                    daemonized: daemon,
                    gpus: gpus.then(|| {
                        GpuConfig::new(
                            (0..DEVICES).map(|d| d.to_string()).collect(),
                            1,
                            "CUDA_VISIBLE_DEVICES",
                        )
                        .expect("valid")
                    }),
                    ..Config::default()
                }
            },
        )
}

fn live_worker(world: &World, index: usize) -> Option<Pid> {
    let pids: Vec<Pid> = world
        .arbiter
        .workers()
        .filter_map(|w| w.pid)
        .filter(|pid| world.is_alive(*pid))
        .collect();
    (!pids.is_empty()).then(|| pids[index % pids.len()])
}

fn apply(world: &mut World, op: &Op) {
    match *op {
        Op::Tick(t) => world.drive(ms(t)),
        Op::Crash(i, code) => {
            if let Some(pid) = live_worker(world, i) {
                world.kill_now(pid, ExitStatus::Exited(code));
            }
        }
        Op::CrashBySignal(i) => {
            if let Some(pid) = live_worker(world, i) {
                let status = ExitStatus::Signaled {
                    signal: 11,
                    core_dumped: true,
                };
                world.kill_now(pid, status);
            }
        }
        Op::Hang(i, stopped) => {
            if let Some(pid) = live_worker(world, i) {
                world.hang(pid, stopped);
            }
        }
        Op::Ready(i) => {
            if let Some(pid) = live_worker(world, i) {
                world.send_ready(pid);
            }
        }
        Op::Signal(signal) => world.signal(signal),
        Op::Orphan(code) => world.orphan_exit(1_000_000 + code, ExitStatus::Exited(code)),
        Op::ReexecExit => {
            if world.reexec.is_some() {
                world.reexec_exits(ExitStatus::Exited(0));
            }
        }
        Op::ParentExit => world.parent_exits(),
        Op::BadConfig => {
            let good = std::mem::replace(&mut world.config, Err("invalid".into()));
            world.signal(Signal::Hup);
            world.config = good;
        }
        Op::PidfileBreaks => world.pidfile_fails = true,
        Op::Scale(n) => world.command(Command::Scale(n)),
        Op::KillWorker(i) => {
            if let Some(pid) = live_worker(world, i) {
                world.command(Command::KillWorker(pid));
            }
        }
        Op::AskRecycle(i) => {
            if let Some(pid) = live_worker(world, i) {
                world.arbiter.handle_recycle_request(pid, world.now);
                world.drain();
            }
        }
        Op::Memory(i, bytes) => {
            if let Some(pid) = live_worker(world, i) {
                world.arbiter.handle_memory(pid, bytes, world.now);
                world.drain();
            }
        }
    }
}

/// Checks the invariants that hold after every input.
fn check(world: &World, config: &Config) {
    // The counts observers read are kept exactly.
    let table = world.arbiter.workers();
    let (mut ready, mut active) = (0, 0);
    for worker in table {
        ready += usize::from(worker.state == WorkerState::Ready);
        active += usize::from(worker.state.is_active());
    }
    assert_eq!(world.arbiter.ready_count(), ready, "ready count");
    assert_eq!(world.arbiter.active_count(), active, "active count");
    // So are the indexes that make each input cheap.
    if let Err(drift) = world.arbiter.check_indexes() {
        panic!("{drift}");
    }
    // PIDFILE.2 is written at the first READY=1 of this master, just before it.
    let first_ready = world
        .log
        .iter()
        .position(|(_, a)| *a == Action::Notify(SupervisorNote::Ready));
    let upgrade_write = world.log.iter().position(|(_, a)| {
        matches!(
            a,
            Action::WritePidfile {
                upgrade_child: true,
                ..
            }
        )
    });
    if let Some(write) = upgrade_write {
        assert_eq!(first_ready, Some(write + 1), "PIDFILE.2 and READY=1");
    }
    // Once a stop is ordered the service manager hears STOPPING=1 once and never READY=1
    // again; while the master drains, its listeners stay open.
    let notes: Vec<&SupervisorNote> = world
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Notify(note) => Some(note),
            _ => None,
        })
        .collect();
    if let Some(stop) = notes.iter().position(|n| **n == SupervisorNote::Stopping) {
        assert!(
            !notes[stop..].contains(&&SupervisorNote::Ready),
            "READY=1 after STOPPING=1: {notes:?}"
        );
        let stops = notes
            .iter()
            .filter(|n| ***n == SupervisorNote::Stopping)
            .count();
        assert_eq!(stops, 1, "{notes:?}");
    }
    // The start timeout is extended only before the first READY=1 and any STOPPING=1, and
    // never past boot timeout + abort grace + a period after the start.
    let end = notes
        .iter()
        .position(|n| matches!(n, SupervisorNote::Ready | SupervisorNote::Stopping))
        .unwrap_or(notes.len());
    assert!(
        !notes[end..]
            .iter()
            .any(|n| matches!(n, SupervisorNote::ExtendTimeout(_))),
        "EXTEND_TIMEOUT_USEC after READY=1 or STOPPING=1: {notes:?}"
    );
    for (at, action) in &world.log {
        if let Action::Notify(SupervisorNote::ExtendTimeout(by)) = action {
            let boot = config
                .boot_timeout
                .expect("extended only with a boot timeout");
            let limit = boot + config.abort_grace + START_EXTENSION_EVERY;
            assert!(at.since_origin() + *by <= limit, "{at:?} + {by:?}");
        }
    }
    if matches!(world.arbiter.phase(), Phase::Draining { .. }) {
        assert!(
            !world
                .log
                .iter()
                .any(|(_, a)| matches!(a, Action::CloseListeners { .. })),
            "listeners closed while draining"
        );
    }
    // A pidfile failure after the start (every one here) never stops the master.
    if let Some((_, _, reason)) = world.exit {
        assert_ne!(reason, arbiter_core::Reason::PidfileFailure);
    }
    // The watchdog pings exactly every interval while this master is the main one.
    if let Some(every) = config.watchdog {
        let pings = world.watchdog_pings();
        for pair in pings.windows(2) {
            assert_eq!(pair[1] - pair[0], every, "pings {pings:?}");
        }
    }
    // Recycled exits are expected (never a crash, never a backoff), recycling starts only
    // while the master runs, and the memory is sampled only under a limit, one interval apart.
    let mut stopping = false;
    let mut last_sample: Option<Moment> = None;
    for (at, action) in &world.log {
        match action {
            Action::Notify(SupervisorNote::Stopping) => stopping = true,
            Action::Event(Event::Recycling { .. }) => assert!(!stopping, "recycling at {at:?}"),
            Action::Event(Event::WorkerExited {
                cause: ExitCause::Recycled,
                expected,
                ..
            }) => assert!(*expected, "an unexpected recycled exit at {at:?}"),
            Action::SampleMemory { .. } => {
                assert!(config.max_worker_memory.is_some(), "a sample with no limit");
                assert!(!stopping, "a sample while stopping");
                if let Some(last) = last_sample.replace(*at) {
                    assert!(
                        *at - last >= config.memory_sample_every,
                        "samples {last:?} {at:?}"
                    );
                }
            }
            _ => {}
        }
    }
    if let Some((_, code, _)) = world.exit {
        if code == 3 || code == 4 {
            assert!(
                world.exit_codes_seen.contains(&code),
                "exit {code} without a worker that exited {code}"
            );
        }
    }
    let Some(load) = world.arbiter.gpu_load() else {
        return;
    };
    let target = world.arbiter.target();
    let surge = config.max_surge.max(1);
    let cap = target.div_ceil(DEVICES);
    // The balancer's counters match the table exactly: released on every exit.
    let held: usize = load.iter().map(|(_, n)| n).sum();
    assert_eq!(held, world.arbiter.workers().count(), "GPU counters drift");
    for (device, _) in &load {
        let active = world
            .arbiter
            .workers()
            .filter(|w| w.state.is_active() && w.gpus.contains(device))
            .count();
        assert!(
            active <= cap + surge,
            "device {device}: {active} active holders, cap {cap} + surge {surge}"
        );
    }
    if world.is_steady() && target > 0 {
        let counts: Vec<usize> = load.iter().map(|(_, n)| *n).collect();
        let (min, max) = (
            *counts.iter().min().expect("devices"),
            *counts.iter().max().expect("devices"),
        );
        assert!(max - min <= 1, "unbalanced when steady: {counts:?}");
        assert!(
            max <= cap,
            "above the cap when steady: {counts:?} cap {cap}"
        );
    }
}

fn run(config: Config, behaviors: Vec<Behavior>, ops: Vec<Op>, upgrade_child: bool) {
    let role = if upgrade_child {
        Role::UpgradeChild { parent: 7 }
    } else {
        Role::Fresh
    };
    let script = behaviors.clone();
    let mut world = World::scripted(
        config.clone(),
        role,
        Box::new(move |_, id| script[id.0 as usize % script.len()].clone()),
    );
    check(&world, &config);
    for op in &ops {
        apply(&mut world, op);
        check(&world, &config);
    }
    // Every stop terminates within its bound.
    world.signal(Signal::Term);
    let bound =
        config.shutdown_delay + config.graceful_timeout + config.abort_grace + REAP_GRACE + ms(1);
    let done = world.drive_until(bound, |w| w.exit.is_some());
    assert!(done.is_some(), "no exit within {bound:?} of TERM");
    check(&world, &config);
    assert!(world.arbiter.has_exited());
    assert_eq!(world.arbiter.poll_timeout(), None);
    // Every worker here dies of KILL, so the stop ended with an empty table, not by giving up.
    assert_eq!(world.arbiter.workers().count(), 0);
    assert!(world.alive().is_empty(), "a worker outlived its master");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_keep_the_invariants(
        config in config_strategy(),
        behaviors in proptest::collection::vec(behavior(), 1..6),
        ops in proptest::collection::vec(op(), 0..60),
        upgrade_child in proptest::bool::weighted(0.2),
    ) {
        run(config, behaviors, ops, upgrade_child);
    }

    #[test]
    fn good_workers_settle_balanced_after_any_scaling(
        workers in 1usize..10,
        changes in proptest::collection::vec(prop_oneof![Just(Signal::Ttin), Just(Signal::Ttou), Just(Signal::Hup)], 0..12),
    ) {
        let config = Config {
            workers,
            gpus: Some(GpuConfig::new((0..DEVICES).map(|d| d.to_string()).collect(), 1, "CUDA_VISIBLE_DEVICES").expect("valid")),
            ..Config::default()
        };
        let mut world = World::new(config.clone(), Behavior::good());
        for signal in changes {
            world.signal(signal);
            world.drive(ms(30));
            check(&world, &config);
        }
        world.settle(secs(120));
        check(&world, &config);
        let load: Vec<usize> = world.arbiter.gpu_load().expect("gpus").into_iter().map(|(_, n)| n).collect();
        let target = world.arbiter.target();
        prop_assert_eq!(load.iter().sum::<usize>(), target);
        prop_assert!(load.iter().all(|n| *n <= target.div_ceil(DEVICES)));
    }
}
