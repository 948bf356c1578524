//! A simulated world for the arbiter: a virtual clock and scripted worker processes.
//!
//! The world carries out every action the arbiter emits (spawn, signal, group kill, reap,
//! exit, pidfile, configuration, re-exec) against fake processes, and feeds their behaviour
//! back (readiness, heartbeats, exits) at exact virtual moments. It checks the arbiter's
//! safety invariants as it goes: it panics on a signal to a pid that exited or never existed,
//! on a spawn that overfills the table or comes before a fresh master's pidfile, on a hung
//! worker not killed exactly at the end of its abort grace, on a group kill of a child that
//! is not a zombie, and on a reported exit that is not reaped (or reaped twice).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use arbiter_core::{
    Action, Arbiter, Config, Event, ExitStatus, Moment, Pid, Reason, Role, Signal, Slot,
    SupervisorNote, WorkerId, WorkerState,
};

/// The configuration most simulations start from: `workers` workers, a 2 s heartbeat
/// timeout, a 5 s boot timeout, a 10 s graceful timeout and a 1 s abort grace.
pub fn config(workers: usize) -> Config {
    Config {
        workers,
        timeout: Some(secs(2)),
        boot_timeout: Some(secs(5)),
        graceful_timeout: secs(10),
        abort_grace: secs(1),
        ..Config::default()
    }
}

/// Milliseconds as a `Duration`.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Seconds as a `Duration`.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The moment `n` milliseconds after the origin.
pub fn at_ms(n: u64) -> Moment {
    Moment::from_origin(ms(n))
}

/// The signal numbers of Linux x86-64 / aarch64.
pub fn signo(signal: Signal) -> i32 {
    match signal {
        Signal::Hup => 1,
        Signal::Int => 2,
        Signal::Quit => 3,
        Signal::Abrt => 6,
        Signal::Kill => 9,
        Signal::Usr1 => 10,
        Signal::Usr2 => 12,
        Signal::Term => 15,
        Signal::Chld => 17,
        Signal::Ttin => 21,
        Signal::Ttou => 22,
        Signal::Winch => 28,
    }
}

/// How a scripted worker behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    /// Sends `READY=1` this long after its exec; `None`: never.
    pub ready_after: Option<Duration>,
    /// Heartbeats every interval from its exec on; `None`: never.
    pub heartbeat_every: Option<Duration>,
    /// Stops heartbeating (hangs) this long after its exec.
    pub hang_after: Option<Duration>,
    /// Ignores the abort signal, like a SIGSTOPped process: only KILL ends it.
    pub ignore_abort: bool,
    /// Exits by itself this long after its exec, with this status.
    pub exit_after: Option<(Duration, ExitStatus)>,
    /// Ignores TERM.
    pub ignore_term: bool,
    /// How long it takes to exit 0 after TERM.
    pub term_takes: Duration,
    /// Its fork or exec fails.
    pub spawn_fails: bool,
    /// KILL does not end it (uninterruptible sleep): it is never reaped.
    pub ignore_kill: bool,
    /// Children in its process group, unknown to the arbiter.
    pub children: usize,
    /// Its group's resident memory grows by this many bytes a second from 10 MB at exec.
    pub leaks_per_sec: u64,
    /// Asks to be recycled (`X_ARBITER_RECYCLE=1`) this long after its exec.
    pub asks_recycle_after: Option<Duration>,
}

impl Behavior {
    /// Ready after 100 ms, heartbeats every second, exits 50 ms after TERM.
    pub fn good() -> Behavior {
        Behavior {
            ready_after: Some(ms(100)),
            heartbeat_every: Some(secs(1)),
            hang_after: None,
            ignore_abort: false,
            exit_after: None,
            ignore_term: false,
            term_takes: ms(50),
            spawn_fails: false,
            ignore_kill: false,
            children: 0,
            leaks_per_sec: 0,
            asks_recycle_after: None,
        }
    }

    /// Never speaks the protocol: no `READY=1`, no heartbeat.
    pub fn silent() -> Behavior {
        Behavior {
            ready_after: None,
            heartbeat_every: None,
            ..Behavior::good()
        }
    }

    /// Good, then stops heartbeating after `after`.
    pub fn hangs(after: Duration) -> Behavior {
        Behavior {
            hang_after: Some(after),
            ..Behavior::good()
        }
    }

    /// Hangs after `after` and ignores the abort signal (SIGSTOPped).
    pub fn stopped(after: Duration) -> Behavior {
        Behavior {
            ignore_abort: true,
            ..Behavior::hangs(after)
        }
    }

    /// Good until it exits with `status` after `after`.
    pub fn exits(after: Duration, status: ExitStatus) -> Behavior {
        Behavior {
            exit_after: Some((after, status)),
            ..Behavior::good()
        }
    }

    /// Crashes (exit 1) after `after`.
    pub fn crashes(after: Duration) -> Behavior {
        Behavior::exits(after, ExitStatus::Exited(1))
    }

    /// Exits with `code` at boot (10 ms in), before it is ready.
    pub fn boot_error(code: i32) -> Behavior {
        Behavior {
            ready_after: None,
            ..Behavior::exits(ms(10), ExitStatus::Exited(code))
        }
    }

    /// Ready only after `delay`.
    pub fn slow_ready(delay: Duration) -> Behavior {
        Behavior {
            ready_after: Some(delay),
            ..Behavior::good()
        }
    }

    /// Good, but its memory grows by `per_sec` bytes a second.
    pub fn leaks(per_sec: u64) -> Behavior {
        Behavior {
            leaks_per_sec: per_sec,
            ..Behavior::good()
        }
    }

    /// Good, and asks to be recycled `after` its exec (as `--max-requests` does).
    pub fn asks_recycle(after: Duration) -> Behavior {
        Behavior {
            asks_recycle_after: Some(after),
            ..Behavior::good()
        }
    }

    /// Good, but ignores TERM.
    pub fn ignores_term() -> Behavior {
        Behavior {
            ignore_term: true,
            ..Behavior::good()
        }
    }
}

/// A fake process.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Its pid.
    pub pid: Pid,
    /// The arbiter's id for it.
    pub id: WorkerId,
    /// Its slot.
    pub slot: Slot,
    /// What it does.
    pub behavior: Behavior,
    /// When it was exec'd.
    pub started: Moment,
    /// When it died and how, once it did.
    pub died: Option<(Moment, ExitStatus)>,
    /// Its scheduled death, if any.
    pub pending_exit: Option<(Moment, ExitStatus)>,
    /// When it got the abort signal.
    pub aborted_at: Option<Moment>,
    /// When it got KILL.
    pub killed_at: Option<Moment>,
    /// When it got TERM first.
    pub termed_at: Option<Moment>,
    /// Every signal it received, with the time.
    pub signals: Vec<(Moment, Signal, bool)>,
    /// Pids of its group's children.
    pub children: Vec<Pid>,
    /// Whether it sent `READY=1`.
    pub sent_ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Happening {
    Ready(Pid),
    AskRecycle(Pid),
    Heartbeat(Pid),
    Exit(Pid),
}

/// Chooses a behaviour for each spawn.
pub type Script = Box<dyn FnMut(Slot, WorkerId) -> Behavior>;

/// The world: the arbiter, a virtual clock, and the processes.
pub struct World {
    /// The arbiter under test.
    pub arbiter: Arbiter,
    /// The virtual clock.
    pub now: Moment,
    /// Every process ever spawned, by pid.
    pub procs: BTreeMap<Pid, Proc>,
    /// Pids of group children, alive.
    pub children: BTreeSet<Pid>,
    /// Pids whose exit was reported to the arbiter.
    pub reaped: BTreeSet<Pid>,
    /// Pids whose exit was reported and that are not reaped yet (zombies).
    pub zombies: BTreeSet<Pid>,
    /// Pids whose process group was killed after their exit, in order.
    pub group_kills: Vec<Pid>,
    /// Every action, with the moment it was carried out.
    pub log: Vec<(Moment, Action)>,
    /// The exit, once the arbiter emitted it.
    pub exit: Option<(Moment, i32, Reason)>,
    /// Pidfiles by name (`pidfile` and `pidfile.2`) and the pid they hold.
    pub pidfiles: BTreeMap<String, Pid>,
    /// Our own pid, for pidfiles.
    pub master_pid: Pid,
    /// The re-exec'd master, while it runs.
    pub reexec: Option<Pid>,
    /// Whether the next re-exec fails.
    pub reexec_fails: bool,
    /// Whether pidfile writes and renames fail.
    pub pidfile_fails: bool,
    /// What a count of the draining slots' queues finds (per-slot listeners).
    pub slot_queued: u64,
    /// What a configuration load (HUP) returns: the configuration, or an error.
    pub config: Result<Config, String>,
    /// Exit codes that workers exited with, ever.
    pub exit_codes_seen: BTreeSet<i32>,
    /// Whether the master started fresh (not as an upgrade child).
    fresh: bool,
    /// Whether at least one spawn was requested while at the table limit.
    script: Script,
    agenda: BTreeSet<(Moment, u64, Happening)>,
    seq: u64,
    next_pid: Pid,
    max_surge: usize,
    abort_grace: Duration,
    abort_signal: Signal,
}

impl World {
    /// A world whose every worker behaves as `behavior`.
    pub fn new(config: Config, behavior: Behavior) -> World {
        World::scripted(config, Role::Fresh, Box::new(move |_, _| behavior.clone()))
    }

    /// A world whose workers behave as `script` says.
    pub fn scripted(config: Config, role: Role, script: Script) -> World {
        let max_surge = config.max_surge.max(1);
        let abort_grace = config.abort_grace;
        let abort_signal = config.abort_signal;
        let arbiter = Arbiter::new(config.clone(), role, Moment::ZERO);
        let mut world = World {
            arbiter,
            now: Moment::ZERO,
            procs: BTreeMap::new(),
            children: BTreeSet::new(),
            reaped: BTreeSet::new(),
            zombies: BTreeSet::new(),
            group_kills: Vec::new(),
            log: Vec::new(),
            exit: None,
            pidfiles: BTreeMap::new(),
            master_pid: 1,
            reexec: None,
            reexec_fails: false,
            pidfile_fails: false,
            slot_queued: 0,
            config: Ok(config),
            fresh: role == Role::Fresh,
            exit_codes_seen: BTreeSet::new(),
            script,
            agenda: BTreeSet::new(),
            seq: 0,
            next_pid: 100,
            max_surge,
            abort_grace,
            abort_signal,
        };
        world.drain();
        world
    }

    // ----- inputs from outside -----

    /// A signal reaches the master now.
    pub fn signal(&mut self, signal: Signal) {
        self.arbiter.handle_signal(signal, self.now);
        self.drain();
    }

    /// HUP with a new configuration: the configuration load it asks for returns `config`.
    pub fn reload(&mut self, config: Config) {
        self.config = Ok(config);
        self.signal(Signal::Hup);
    }

    /// A control command now.
    pub fn command(&mut self, command: arbiter_core::Command) {
        self.arbiter.handle_command(command, self.now);
        self.drain();
    }

    /// An unknown child (an orphan) is reaped now.
    pub fn orphan_exit(&mut self, pid: Pid, status: ExitStatus) {
        self.report_exit(pid, status);
    }

    /// The re-exec'd master exits now.
    pub fn reexec_exits(&mut self, status: ExitStatus) {
        let pid = self.reexec.take().expect("a re-exec'd master runs");
        self.report_exit(pid, status);
    }

    /// Reports the exit of `pid`, a zombie until the arbiter's `Reap` for it.
    fn report_exit(&mut self, pid: Pid, status: ExitStatus) {
        self.reaped.insert(pid);
        assert!(self.zombies.insert(pid), "exit of {pid} reported twice");
        self.arbiter.handle_exit(pid, status, self.now);
        self.drain();
    }

    /// The parent master (of an upgrade child) exits now.
    pub fn parent_exits(&mut self) {
        self.arbiter.handle_parent_exited(self.now);
        self.drain();
    }

    /// Makes the worker `pid` crash now with `status`.
    pub fn kill_now(&mut self, pid: Pid, status: ExitStatus) {
        self.schedule_exit(pid, self.now, status);
        self.step_agenda_at_now();
    }

    /// Makes the worker `pid` hang from now on (no more heartbeats).
    pub fn hang(&mut self, pid: Pid, ignore_abort: bool) {
        let now = self.now;
        if let Some(proc_) = self.procs.get_mut(&pid) {
            let since = now.saturating_since(proc_.started);
            proc_.behavior.hang_after = Some(since);
            proc_.behavior.ignore_abort = ignore_abort;
        }
    }

    /// Makes the worker `pid` send `READY=1` now.
    pub fn send_ready(&mut self, pid: Pid) {
        if self.is_alive(pid) {
            self.procs.get_mut(&pid).expect("alive").sent_ready = true;
            self.arbiter.handle_ready(pid, self.now);
            self.drain();
        }
    }

    // ----- driving -----

    /// The next moment something happens: an arbiter deadline or a world event.
    pub fn next_moment(&self) -> Option<Moment> {
        let world = self.agenda.first().map(|(at, _, _)| *at);
        match (world, self.arbiter.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Steps from event to event for `duration`; the clock ends exactly `duration` later.
    pub fn drive(&mut self, duration: Duration) {
        let end = self.now + duration;
        while let Some(next) = self.next_moment() {
            if next > end {
                break;
            }
            self.step_to(next);
        }
        self.now = end;
    }

    /// Steps until `done` holds (checked after each step) or the clock would pass `bound`
    /// from now; returns the moment it held.
    pub fn drive_until(
        &mut self,
        bound: Duration,
        mut done: impl FnMut(&World) -> bool,
    ) -> Option<Moment> {
        if done(self) {
            return Some(self.now);
        }
        let end = self.now + bound;
        while let Some(next) = self.next_moment() {
            if next > end {
                break;
            }
            self.step_to(next);
            if done(self) {
                return Some(self.now);
            }
        }
        self.now = end;
        None
    }

    /// Advances to `at` and handles everything due then.
    pub fn step_to(&mut self, at: Moment) {
        assert!(at >= self.now, "time never goes back");
        self.now = at;
        self.step_agenda_at_now();
        if self
            .arbiter
            .poll_timeout()
            .is_some_and(|due| due <= self.now)
        {
            self.arbiter.handle_timeout(self.now);
            self.drain();
        }
        self.check_abort_graces();
    }

    fn step_agenda_at_now(&mut self) {
        while let Some(&(at, seq, happening)) = self.agenda.first() {
            if at > self.now {
                break;
            }
            self.agenda.remove(&(at, seq, happening));
            self.happen(happening);
        }
    }

    fn happen(&mut self, happening: Happening) {
        let now = self.now;
        match happening {
            Happening::Ready(pid) => {
                if self.is_alive(pid) && !self.is_hung(pid) {
                    self.procs.get_mut(&pid).expect("alive").sent_ready = true;
                    self.arbiter.handle_ready(pid, now);
                    self.drain();
                }
            }
            Happening::AskRecycle(pid) => {
                if self.is_alive(pid) && !self.is_hung(pid) {
                    self.arbiter.handle_recycle_request(pid, now);
                    self.drain();
                }
            }
            Happening::Heartbeat(pid) => {
                if self.is_alive(pid) && !self.is_hung(pid) {
                    self.arbiter.handle_heartbeat(pid, now);
                    self.drain();
                    let every = self.procs[&pid].behavior.heartbeat_every;
                    if let Some(every) = every {
                        self.schedule(now + every, Happening::Heartbeat(pid));
                    }
                }
            }
            Happening::Exit(pid) => {
                if self.children.remove(&pid) {
                    // A group child: the arbiter sees it as an orphan.
                    let status = ExitStatus::Signaled {
                        signal: 9,
                        core_dumped: false,
                    };
                    self.report_exit(pid, status);
                    return;
                }
                let Some(proc_) = self.procs.get_mut(&pid) else {
                    return;
                };
                let Some((due, status)) = proc_.pending_exit else {
                    return;
                };
                if due != now || proc_.died.is_some() {
                    return;
                }
                proc_.died = Some((now, status));
                proc_.pending_exit = None;
                if let Some(code) = status.code() {
                    self.exit_codes_seen.insert(code);
                }
                self.report_exit(pid, status);
            }
        }
    }

    fn schedule(&mut self, at: Moment, happening: Happening) {
        self.seq += 1;
        self.agenda.insert((at, self.seq, happening));
    }

    /// Schedules the death of `pid` at `at` unless it dies sooner anyway.
    fn schedule_exit(&mut self, pid: Pid, at: Moment, status: ExitStatus) {
        let Some(proc_) = self.procs.get_mut(&pid) else {
            return;
        };
        if proc_.died.is_some() || proc_.pending_exit.is_some_and(|(due, _)| due <= at) {
            return;
        }
        proc_.pending_exit = Some((at, status));
        self.schedule(at, Happening::Exit(pid));
    }

    // ----- actions -----

    /// Carries out every pending action.
    pub fn drain(&mut self) {
        let mut spawns = 0;
        while let Some(action) = self.arbiter.poll_action() {
            spawns += usize::from(matches!(action, Action::Spawn { .. }));
            self.log.push((self.now, action.clone()));
            self.execute(action);
        }
        // A long run of spawns goes out in rounds, the shell's loop turning between them.
        assert!(
            spawns <= arbiter_core::SPAWN_ROUND,
            "{spawns} spawns without a turn of the loop"
        );
        assert!(
            self.zombies.is_empty(),
            "exits reported but never reaped: {:?}",
            self.zombies
        );
    }

    /// Every `WATCHDOG=1` sent to the service manager.
    pub fn watchdog_pings(&self) -> Vec<Moment> {
        self.log
            .iter()
            .filter(|(_, a)| *a == Action::Notify(SupervisorNote::Watchdog))
            .map(|(at, _)| *at)
            .collect()
    }

    fn execute(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::Spawn { id, slot, .. } => {
                let table = self.arbiter.workers().count();
                let limit = self.arbiter.target() + self.max_surge;
                assert!(
                    table <= limit,
                    "spawn of {id} with {table} workers in the table, limit {limit}"
                );
                assert!(!self.arbiter.has_exited(), "spawn after exit");
                if self.fresh && self.arbiter.config().pidfile {
                    assert!(
                        self.pidfiles.contains_key("pidfile"),
                        "spawn of {id} before the pidfile"
                    );
                }
                let behavior = (self.script)(slot, id);
                if behavior.spawn_fails {
                    self.arbiter
                        .handle_spawn_failed(id, "no such file".into(), now);
                    return;
                }
                self.next_pid += 1;
                let pid = self.next_pid;
                let mut children = Vec::new();
                for _ in 0..behavior.children {
                    self.next_pid += 1;
                    children.push(self.next_pid);
                    self.children.insert(self.next_pid);
                }
                self.procs.insert(
                    pid,
                    Proc {
                        pid,
                        id,
                        slot,
                        behavior: behavior.clone(),
                        started: now,
                        died: None,
                        pending_exit: None,
                        aborted_at: None,
                        killed_at: None,
                        termed_at: None,
                        signals: Vec::new(),
                        children,
                        sent_ready: false,
                    },
                );
                if let Some(after) = behavior.ready_after {
                    self.schedule(now + after, Happening::Ready(pid));
                }
                if let Some(every) = behavior.heartbeat_every {
                    self.schedule(now + every, Happening::Heartbeat(pid));
                }
                if let Some(after) = behavior.asks_recycle_after {
                    self.schedule(now + after, Happening::AskRecycle(pid));
                }
                if let Some((after, status)) = behavior.exit_after {
                    self.schedule_exit(pid, now + after, status);
                }
                self.arbiter.handle_spawned(id, pid, now);
            }
            Action::Signal {
                id,
                pid,
                signal,
                group,
                reason,
            } => {
                if reason.is_recycle() {
                    self.check_recycle_retires_behind_a_ready_replacement(id);
                }
                self.deliver(id, pid, signal, group)
            }
            Action::SampleMemory { pids, .. } => {
                for pid in pids {
                    assert!(!self.reaped.contains(&pid), "memory sample of exited {pid}");
                    let bytes = self.memory_of(pid);
                    self.arbiter.handle_memory(pid, bytes, now);
                }
            }
            Action::KillGroup { pid, .. } => {
                assert!(
                    self.zombies.contains(&pid),
                    "group kill of {pid}, which is not a zombie"
                );
                self.group_kills.push(pid);
                let children = self.procs.get(&pid).map(|p| p.children.clone());
                for child in children.unwrap_or_default() {
                    if self.children.contains(&child) {
                        self.schedule(now, Happening::Exit(child));
                    }
                }
            }
            Action::Reap { pid } => {
                assert!(self.zombies.remove(&pid), "reap of {pid}, not a zombie");
            }
            Action::LoadConfig { .. } => match self.config.clone() {
                Ok(config) => {
                    self.max_surge = config.max_surge.max(1);
                    self.abort_grace = config.abort_grace;
                    self.abort_signal = config.abort_signal;
                    self.arbiter.handle_reload(config, now);
                }
                Err(error) => self.arbiter.handle_config_failed(error, now),
            },
            Action::Exit { code, reason } => {
                assert!(self.exit.is_none(), "a second exit");
                self.exit = Some((now, code, reason));
            }
            Action::WritePidfile { upgrade_child, .. } => {
                if self.pidfile_fails {
                    self.arbiter
                        .handle_pidfile_failed("permission denied".into(), now);
                    return;
                }
                let name = if upgrade_child {
                    "pidfile.2"
                } else {
                    "pidfile"
                };
                self.pidfiles.insert(name.into(), self.master_pid);
                self.arbiter.handle_pidfile_written(now);
            }
            Action::PromotePidfile => {
                if self.pidfile_fails {
                    self.arbiter
                        .handle_pidfile_failed("permission denied".into(), now);
                    return;
                }
                let pid = self
                    .pidfiles
                    .remove("pidfile.2")
                    .expect("promotion renames an existing pidfile.2");
                self.pidfiles.insert("pidfile".into(), pid);
                self.arbiter.handle_pidfile_written(now);
            }
            Action::ReExec => {
                if self.reexec_fails {
                    self.arbiter.handle_reexec_failed();
                } else {
                    self.next_pid += 1;
                    self.reexec = Some(self.next_pid);
                    self.arbiter.handle_reexec_spawned(self.next_pid);
                }
            }
            Action::SlotListeners { open, steer, .. } => {
                // The shell may close a slot's listener only once nothing serves from it.
                assert!(steer <= open, "steering to slots that have no listener");
                for proc_ in self.procs.values() {
                    let live = !self.reaped.contains(&proc_.pid);
                    assert!(
                        !live || proc_.slot < open,
                        "slot {} closed while its worker {} lives",
                        proc_.slot,
                        proc_.pid
                    );
                }
            }
            Action::CheckSlotQueues { from, to } => {
                assert!(from < to, "a check of no slot");
                let queued = self.slot_queued;
                self.arbiter.handle_slot_queues(queued, self.now);
            }
            Action::CloseListeners { .. }
            | Action::ReopenLogs
            | Action::Notify(_)
            | Action::Event(_) => {}
        }
    }

    fn deliver(&mut self, id: WorkerId, pid: Pid, signal: Signal, group: bool) {
        let now = self.now;
        assert!(
            !self.reaped.contains(&pid),
            "signal {signal} to pid {pid} whose exit was already reported"
        );
        let abort_signal = self.abort_signal;
        let abort_grace = self.abort_grace;
        let proc_ = self
            .procs
            .get_mut(&pid)
            .unwrap_or_else(|| panic!("signal {signal} to unknown pid {pid}"));
        assert_eq!(proc_.id, id, "signal's id matches its pid");
        assert!(proc_.died.is_none(), "signal to a dead pid {pid}");
        proc_.signals.push((now, signal, group));
        let behavior = proc_.behavior.clone();
        if signal == Signal::Kill {
            if let Some(aborted) = proc_.aborted_at {
                assert_eq!(
                    now,
                    aborted + abort_grace,
                    "KILL of an aborted worker exactly at the end of its abort grace"
                );
            }
            proc_.killed_at.get_or_insert(now);
            if behavior.ignore_kill {
                return;
            }
            let children = if group {
                proc_.children.clone()
            } else {
                Vec::new()
            };
            self.schedule_exit(
                pid,
                now,
                ExitStatus::Signaled {
                    signal: 9,
                    core_dumped: false,
                },
            );
            for child in children {
                if self.children.contains(&child) {
                    self.schedule(now, Happening::Exit(child));
                }
            }
            return;
        }
        if signal == abort_signal {
            proc_.aborted_at.get_or_insert(now);
            if !behavior.ignore_abort {
                let status = ExitStatus::Signaled {
                    signal: signo(signal),
                    core_dumped: signal == Signal::Abrt,
                };
                self.schedule_exit(pid, now, status);
            }
            return;
        }
        match signal {
            Signal::Term => {
                proc_.termed_at.get_or_insert(now);
                if !behavior.ignore_term && !self.is_hung(pid) {
                    let at = now + behavior.term_takes;
                    self.schedule_exit(pid, at, ExitStatus::Exited(0));
                }
            }
            Signal::Quit | Signal::Int if !self.is_hung(pid) => {
                self.schedule_exit(pid, now, ExitStatus::Exited(0));
            }
            _ => {}
        }
    }

    /// Panics unless the slot of `id` (retired for recycling) has another worker that is
    /// ready: the replacement comes first (it may be asked to recycle in turn at once).
    fn check_recycle_retires_behind_a_ready_replacement(&self, id: WorkerId) {
        let retired = self.arbiter.workers().find(|w| w.id == id);
        let slot = retired.expect("retired worker in the table").slot;
        let replaced = self
            .arbiter
            .workers()
            .any(|w| w.id != id && w.slot == slot && w.state == WorkerState::Ready);
        assert!(
            replaced,
            "worker {id} retired for recycling at {:?} before its replacement was ready",
            self.now
        );
    }

    /// The resident memory of the group of `pid` now (10 MB at exec, then its leak).
    pub fn memory_of(&self, pid: Pid) -> u64 {
        let proc_ = &self.procs[&pid];
        let lived = self.now.saturating_since(proc_.started).as_secs_f64();
        10_000_000 + (proc_.behavior.leaks_per_sec as f64 * lived) as u64
    }

    /// Panics if an aborted worker outlived its abort grace without KILL.
    fn check_abort_graces(&self) {
        for proc_ in self.procs.values() {
            if let (None, Some(aborted), None) = (proc_.died, proc_.aborted_at, proc_.killed_at) {
                assert!(
                    self.now <= aborted + self.abort_grace,
                    "pid {} aborted at {:?} still alive at {:?} without KILL",
                    proc_.pid,
                    aborted,
                    self.now
                );
            }
        }
    }

    // ----- observations -----

    /// Whether `pid` is a live worker process.
    pub fn is_alive(&self, pid: Pid) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.died.is_none())
    }

    /// Whether `pid` has stopped heartbeating by now.
    pub fn is_hung(&self, pid: Pid) -> bool {
        self.procs.get(&pid).is_some_and(|p| {
            p.behavior
                .hang_after
                .is_some_and(|after| self.now >= p.started + after)
        })
    }

    /// Live worker pids, oldest first.
    pub fn alive(&self) -> Vec<Pid> {
        self.procs
            .values()
            .filter(|p| p.died.is_none())
            .map(|p| p.pid)
            .collect()
    }

    /// The live worker in `slot` the arbiter has as ready, if any.
    pub fn ready_in(&self, slot: Slot) -> Option<Pid> {
        self.arbiter
            .workers()
            .find(|w| w.slot == slot && w.state == WorkerState::Ready)
            .and_then(|w| w.pid)
    }

    /// Ready workers by the arbiter's table.
    pub fn ready(&self) -> usize {
        self.arbiter
            .workers()
            .filter(|w| w.state == WorkerState::Ready)
            .count()
    }

    /// The pid of the oldest live worker in `slot`.
    pub fn pid_in(&self, slot: Slot) -> Pid {
        self.arbiter
            .workers()
            .find(|w| w.slot == slot && w.pid.is_some())
            .and_then(|w| w.pid)
            .unwrap_or_else(|| panic!("no worker in slot {slot}"))
    }

    /// Every signal sent to `pid`, with its moment and group flag.
    pub fn signals_to(&self, pid: Pid) -> Vec<(Moment, Signal, bool)> {
        self.procs[&pid].signals.clone()
    }

    /// Every spawn: (moment, id, slot, reason).
    pub fn spawns(&self) -> Vec<(Moment, WorkerId, Slot, Reason)> {
        self.log
            .iter()
            .filter_map(|(at, action)| match action {
                Action::Spawn {
                    id, slot, reason, ..
                } => Some((*at, *id, *slot, *reason)),
                _ => None,
            })
            .collect()
    }

    /// Every spawn action with its GPUs: (slot, gpus).
    pub fn spawn_gpus(&self) -> Vec<(Slot, Vec<String>)> {
        self.log
            .iter()
            .filter_map(|(_, action)| match action {
                Action::Spawn { slot, gpus, .. } => Some((*slot, gpus.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every event, with its moment.
    pub fn events(&self) -> Vec<(Moment, Event)> {
        self.log
            .iter()
            .filter_map(|(at, action)| match action {
                Action::Event(event) => Some((*at, event.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every action matching `pick`, with its moment.
    pub fn actions(&self, pick: impl Fn(&Action) -> bool) -> Vec<(Moment, Action)> {
        self.log
            .iter()
            .filter(|(_, action)| pick(action))
            .cloned()
            .collect()
    }

    /// Live processes per slot, from the world's side.
    pub fn alive_by_slot(&self) -> HashMap<Slot, usize> {
        let mut count = HashMap::new();
        for proc_ in self.procs.values().filter(|p| p.died.is_none()) {
            *count.entry(proc_.slot).or_insert(0) += 1;
        }
        count
    }

    /// Drives until every slot 0..target has a ready worker of the current generation and
    /// nothing else is in the table, or panics after `bound`.
    pub fn settle(&mut self, bound: Duration) {
        let settled = self.drive_until(bound, |w| w.is_steady());
        assert!(settled.is_some(), "not steady after {bound:?}");
    }

    /// Every slot 0..target holds exactly one worker, ready and of the current generation.
    pub fn is_steady(&self) -> bool {
        let target = self.arbiter.target();
        let generation = self.arbiter.generation();
        let workers: Vec<_> = self.arbiter.workers().collect();
        workers.len() == target
            && workers
                .iter()
                .all(|w| w.state == WorkerState::Ready && w.generation == generation)
            && (0..target).all(|slot| workers.iter().any(|w| w.slot == slot))
    }
}
