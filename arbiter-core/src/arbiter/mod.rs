//! The arbiter state machine.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use arbiter_gpu::Balancer;

use crate::action::{Action, Event, Reason, SupervisorNote};
use crate::time::Moment;
use crate::timers::Timers;
use crate::types::{
    BootErrorPolicy, Command, Config, ExitStatus, Pid, ReadyMode, Role, Signal, Slot, WorkerId,
};
use crate::worker::{Worker, WorkerState};

mod table;

/// A worker that dies sooner than this after its start (or before it was ready) died quickly.
pub const QUICK_DEATH: Duration = Duration::from_secs(1);
/// The first delay of a crash-looping slot; it doubles with each quick death.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The longest delay before respawning a crash-looping slot.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long a stop waits for reaps after the final KILL before it gives up on them.
pub const REAP_GRACE: Duration = Duration::from_secs(5);

/// The master's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Keeping the target number of workers.
    Running,
    /// Rolling a new generation in (HUP).
    Reloading,
    /// Stopping every worker, then exiting.
    Stopping {
        /// Whether the quick signal was sent.
        quick: bool,
    },
}

impl Phase {
    /// Lower-case name for status output.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Reloading => "reloading",
            Phase::Stopping { .. } => "stopping",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TimerKey {
    Worker(WorkerId),
    Backoff(Slot),
    StopFinal,
}

/// Per-slot bookkeeping.
#[derive(Debug, Clone, Default)]
struct SlotState {
    /// Workers (any state) in this slot.
    members: Vec<WorkerId>,
    /// Quick deaths in a row.
    quick_deaths: u32,
    /// No spawn before this.
    backoff_until: Option<Moment>,
    /// Unexpected exits of this slot's workers.
    restarts: u64,
    /// Whether a worker ever ran in this slot.
    used: bool,
    /// Queued in `Arbiter::dirty`: its caches below are out of date.
    dirty: bool,
    /// Cached: the slot is below the target and has a ready current-generation worker
    /// (counted in `Arbiter::ready_slots`).
    counted_ready: bool,
    /// Cached: its active workers of an old generation, or all of its active workers when the
    /// slot is at or above the target (counted in `Arbiter::old_active`).
    old_active: usize,
    /// Cached: active workers beyond the first (a reload's surge; counted in
    /// `Arbiter::surge_active`).
    surge_active: usize,
}

/// The sans-IO arbiter: everything gunicorn's `Arbiter` decides, without doing any of it.
///
/// Call order, as in quinn-proto: feed inputs with the `handle_*` methods, each stamped with
/// the current [`Moment`]; after each input drain [`Arbiter::poll_action`] until `None` and
/// carry the actions out in order (reporting spawn and re-exec results back at once); then
/// sleep until [`Arbiter::poll_timeout`] or an fd is readable, and call
/// [`Arbiter::handle_timeout`] when the deadline passes. After an [`Action::Exit`] the
/// arbiter ignores every input.
///
/// Invariants: no signal is ever emitted for a pid after its exit was reported; spawns
/// happen only while the table holds fewer than `workers + max_surge` processes; during a
/// reload an old worker is retired only once its slot has a ready new one.
#[derive(Debug)]
pub struct Arbiter {
    config: Config,
    phase: Phase,
    target: usize,
    generation: u64,
    next_id: u64,
    workers: BTreeMap<WorkerId, Worker>,
    by_pid: HashMap<Pid, WorkerId>,
    slots: Vec<SlotState>,
    /// Slots touched since the last `manage`, whose caches and wants must be refreshed.
    dirty: Vec<Slot>,
    /// The target or generation changed: every slot must be refreshed.
    all_dirty: bool,
    /// Slots below the target with no active worker and no backoff: spawn first.
    want_empty: BTreeSet<Slot>,
    /// Slots below the target whose active workers are all of an old generation.
    want_roll: BTreeSet<Slot>,
    /// Slots below the target with a ready current-generation worker.
    ready_slots: usize,
    /// Active workers of an old generation or in a slot at or above the target.
    old_active: usize,
    /// Active workers beyond the first in their slot (the reload surge).
    surge_active: usize,
    timers: Timers<TimerKey>,
    actions: VecDeque<Action>,
    notify_commands: HashSet<u64>,
    gpus: Option<Balancer>,
    reexec_pid: Option<Pid>,
    parent: Option<Pid>,
    announced_ready: bool,
    ever_spawned: bool,
    exit_code: i32,
    exit_reason: Reason,
    exited: bool,
}

impl Arbiter {
    /// A new arbiter; its first actions (pidfile, spawns) are ready to poll.
    pub fn new(config: Config, role: Role, now: Moment) -> Arbiter {
        let gpus = config
            .gpus
            .clone()
            .map(|gpu| Balancer::new(gpu, config.workers));
        let parent = match role {
            Role::Fresh => None,
            Role::UpgradeChild { parent } => Some(parent),
        };
        let mut arbiter = Arbiter {
            target: config.workers,
            config,
            phase: Phase::Running,
            generation: 0,
            next_id: 1,
            workers: BTreeMap::new(),
            by_pid: HashMap::new(),
            slots: Vec::new(),
            dirty: Vec::new(),
            all_dirty: true,
            want_empty: BTreeSet::new(),
            want_roll: BTreeSet::new(),
            ready_slots: 0,
            old_active: 0,
            surge_active: 0,
            timers: Timers::new(),
            actions: VecDeque::new(),
            notify_commands: HashSet::new(),
            gpus,
            reexec_pid: None,
            parent,
            announced_ready: false,
            ever_spawned: false,
            exit_code: 0,
            exit_reason: Reason::Shutdown,
            exited: false,
        };
        arbiter.push(Action::WritePidfile {
            upgrade_child: parent.is_some(),
        });
        arbiter.manage(now);
        arbiter
    }

    // ----- outputs -----

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Arbiter::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Moment> {
        if self.exited {
            return None;
        }
        self.timers.next()
    }

    // ----- observers -----

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The target number of workers.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The reload generation now wanted.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every worker, oldest first.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// The worker with this pid.
    pub fn worker_by_pid(&self, pid: Pid) -> Option<&Worker> {
        self.by_pid.get(&pid).and_then(|id| self.workers.get(id))
    }

    /// Unexpected exits so far of the workers of `slot`.
    pub fn slot_restarts(&self, slot: Slot) -> u64 {
        self.slots.get(slot).map_or(0, |s| s.restarts)
    }

    /// Ready workers that are not being stopped.
    pub fn ready_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.state == WorkerState::Ready)
            .count()
    }

    /// The pid of the new master this one re-exec'd, while it runs.
    pub fn reexec_pid(&self) -> Option<Pid> {
        self.reexec_pid
    }

    /// The old master's pid, while this master is a not-yet-promoted upgrade child.
    pub fn parent_master(&self) -> Option<Pid> {
        self.parent
    }

    /// Whether an upgrade is under way in either direction.
    pub fn is_upgrading(&self) -> bool {
        self.reexec_pid.is_some() || self.parent.is_some()
    }

    /// Live holders per GPU, when balancing.
    pub fn gpu_load(&self) -> Option<Vec<(String, usize)>> {
        self.gpus.as_ref().map(Balancer::load)
    }

    /// The command keys known to speak the notify protocol (for `ReadyMode::Auto`).
    pub fn notify_commands(&self) -> impl Iterator<Item = u64> + '_ {
        self.notify_commands.iter().copied()
    }

    /// Remembers that the command `key` speaks the notify protocol (an upgrade child learns
    /// this from the master that started it, so its first workers are readiness-gated too).
    /// Call it before the first spawn is confirmed.
    pub fn learn_notify_command(&mut self, key: u64) {
        self.notify_commands.insert(key);
    }

    /// Whether the arbiter has emitted its exit.
    pub fn has_exited(&self) -> bool {
        self.exited
    }

    // ----- inputs -----

    /// A signal reached the master.
    pub fn handle_signal(&mut self, signal: Signal, now: Moment) {
        if self.exited {
            return;
        }
        match signal {
            Signal::Hup => {
                let config = self.config.clone();
                self.handle_reload(config, now);
                return;
            }
            Signal::Term => self.begin_stop(false, Reason::Shutdown, 0, now),
            Signal::Int | Signal::Quit => self.begin_stop(true, Reason::QuickShutdown, 0, now),
            Signal::Ttin => {
                if !self.is_stopping() {
                    self.set_target(self.target + 1);
                }
            }
            Signal::Ttou => {
                if !self.is_stopping() && self.target > 1 {
                    self.set_target(self.target - 1);
                }
            }
            Signal::Usr1 => {
                self.push(Action::ReopenLogs);
                if self.config.forward_usr1 {
                    let targets: Vec<WorkerId> = self.workers.keys().copied().collect();
                    for id in targets {
                        self.send(id, Signal::Usr1, false, Reason::ReopenLogs);
                    }
                }
            }
            Signal::Usr2 => self.upgrade(),
            Signal::Winch => {
                if self.config.daemonized {
                    if !self.is_stopping() {
                        self.target = 0;
                        self.all_dirty = true;
                        if let Some(gpus) = self.gpus.as_mut() {
                            gpus.set_workers(0);
                        }
                    }
                } else {
                    self.event(Event::SignalIgnored {
                        signal,
                        why: "SIGWINCH ignored. Not daemonized",
                    });
                }
            }
            Signal::Chld | Signal::Kill | Signal::Abrt => {}
        }
        self.manage(now);
    }

    /// HUP with a (re-read) configuration: start a rolling reload.
    pub fn handle_reload(&mut self, config: Config, now: Moment) {
        if self.exited || self.is_stopping() {
            return;
        }
        if config.gpus != self.config.gpus {
            self.gpus = config
                .gpus
                .clone()
                .map(|gpu| Balancer::new(gpu, config.workers));
        } else if let Some(gpus) = self.gpus.as_mut() {
            gpus.set_workers(config.workers);
        }
        self.target = config.workers;
        self.config = config;
        self.generation += 1;
        self.all_dirty = true;
        self.phase = Phase::Reloading;
        self.push(Action::Notify(SupervisorNote::Reloading));
        self.event(Event::ReloadStarted {
            generation: self.generation,
        });
        // A HUP during a roll restarts it: workers of an earlier roll that are not ready yet
        // add no capacity where their slot still has a ready worker, so they go now.
        let doomed: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Spawning | WorkerState::Booting))
            .filter(|w| self.slot_has_ready(w.slot))
            .map(|w| w.id)
            .collect();
        for id in doomed {
            self.retire(id, Reason::Reload, now);
        }
        self.manage(now);
    }

    /// A control command.
    pub fn handle_command(&mut self, command: Command, now: Moment) {
        if self.exited {
            return;
        }
        match command {
            Command::Scale(n) => {
                if !self.is_stopping() {
                    self.set_target(n.max(1));
                }
            }
            Command::Stop { quick } => {
                let reason = if quick {
                    Reason::QuickShutdown
                } else {
                    Reason::Shutdown
                };
                self.begin_stop(quick, reason, 0, now);
            }
            Command::KillWorker(pid) => {
                if let Some(&id) = self.by_pid.get(&pid) {
                    if self.workers[&id].state.is_active() {
                        self.retire(id, Reason::Requested, now);
                    }
                }
            }
        }
        self.manage(now);
    }

    /// The worker `id` was forked and exec'd as `pid`.
    pub fn handle_spawned(&mut self, id: WorkerId, pid: Pid, now: Moment) {
        let awaits_ready = match self.config.ready {
            ReadyMode::Notify => true,
            ReadyMode::Exec => false,
            ReadyMode::Auto => {
                let key = self.workers.get(&id).map(|w| w.command_key);
                key.is_some_and(|key| self.notify_commands.contains(&key))
            }
        };
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        self.ever_spawned = true;
        worker.pid = Some(pid);
        worker.spawned_at = now;
        worker.awaits_ready = awaits_ready;
        self.by_pid.insert(pid, id);
        match worker.state {
            WorkerState::Spawning => {
                worker.state = WorkerState::Booting;
                if !awaits_ready && self.config.ready_after.is_zero() {
                    self.mark_ready(id, now);
                }
            }
            WorkerState::Retiring => {
                // Asked to stop before its pid was known: tell it now.
                let signal = self.stop_signal();
                self.send(id, signal, false, Reason::Shutdown);
            }
            _ => {}
        }
        self.rearm(id);
        self.manage(now);
    }

    /// The worker `id` could not be started (fork or exec failed).
    pub fn handle_spawn_failed(&mut self, id: WorkerId, error: String, now: Moment) {
        let Some(worker) = self.remove_worker(id) else {
            return;
        };
        self.event(Event::SpawnFailed {
            slot: worker.slot,
            error,
        });
        if !self.ever_spawned {
            self.begin_stop(false, Reason::SpawnFailure, 1, now);
        } else {
            self.quick_death(worker.slot, now);
        }
        self.manage(now);
    }

    /// A child exited (reaped by the shell).
    pub fn handle_exit(&mut self, pid: Pid, status: ExitStatus, now: Moment) {
        if self.exited {
            return;
        }
        if self.reexec_pid == Some(pid) {
            self.reexec_pid = None;
            self.event(Event::ReexecExited { pid, status });
            return;
        }
        let Some(&id) = self.by_pid.get(&pid) else {
            self.event(Event::OrphanReaped { pid, status });
            return;
        };
        let Some(worker) = self.remove_worker(id) else {
            return;
        };
        let expected = !worker.state.is_active();
        self.event(Event::WorkerExited {
            id,
            pid,
            slot: worker.slot,
            status,
            expected,
        });
        if !self.is_stopping() && !expected {
            self.unexpected_exit(&worker, status, now);
        }
        self.manage(now);
    }

    /// The worker (by pid) sent `READY=1`.
    pub fn handle_ready(&mut self, pid: Pid, now: Moment) {
        let Some(&id) = self.by_pid.get(&pid) else {
            return;
        };
        let worker = &self.workers[&id];
        self.notify_commands.insert(worker.command_key);
        if worker.state == WorkerState::Booting {
            self.mark_ready(id, now);
            self.rearm(id);
            self.manage(now);
        }
    }

    /// The worker (by pid) showed a sign of life at `at` (heartbeat file bump or `WATCHDOG=1`).
    pub fn handle_heartbeat(&mut self, pid: Pid, at: Moment) {
        let Some(&id) = self.by_pid.get(&pid) else {
            return;
        };
        let worker = self.workers.get_mut(&id).expect("by_pid and workers agree");
        if !worker.state.is_active() || worker.last_heartbeat.is_some_and(|last| last >= at) {
            return;
        }
        worker.last_heartbeat = Some(at);
        self.rearm(id);
    }

    /// The worker (by pid) sent `STATUS=...`.
    pub fn handle_status(&mut self, pid: Pid, text: String) {
        if let Some(&id) = self.by_pid.get(&pid) {
            if let Some(worker) = self.workers.get_mut(&id) {
                worker.status = Some(text);
            }
        }
    }

    /// The new master from USR2 was forked as `pid`.
    pub fn handle_reexec_spawned(&mut self, pid: Pid) {
        self.reexec_pid = Some(pid);
    }

    /// The new master from USR2 could not be started; a later USR2 may try again.
    pub fn handle_reexec_failed(&mut self) {
        self.reexec_pid = None;
    }

    /// This master's parent master (it is an upgrade child) exited: promote.
    pub fn handle_parent_exited(&mut self, _now: Moment) {
        if self.exited || self.parent.take().is_none() {
            return;
        }
        self.event(Event::Promoted);
        self.push(Action::PromotePidfile);
        self.push(Action::Notify(SupervisorNote::MainPid));
    }

    /// A deadline from [`Arbiter::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Moment) {
        if self.exited {
            return;
        }
        while let Some(key) = self.timers.pop_due(now) {
            match key {
                TimerKey::Worker(id) => self.worker_due(id, now),
                TimerKey::Backoff(slot) => {
                    self.slots[slot].backoff_until = None;
                    self.touch(slot);
                }
                TimerKey::StopFinal => {
                    self.finish_exit();
                    return;
                }
            }
        }
        self.manage(now);
    }

    // ----- decisions -----

    fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    fn stop_signal(&self) -> Signal {
        match self.phase {
            Phase::Stopping { quick: true } => self.config.quick_signal,
            _ => Signal::Term,
        }
    }

    fn set_target(&mut self, target: usize) {
        self.target = target;
        self.all_dirty = true;
        if let Some(gpus) = self.gpus.as_mut() {
            gpus.set_workers(target);
        }
    }

    fn upgrade(&mut self) {
        if self.reexec_pid.is_some() {
            self.event(Event::UpgradeRefused {
                why: "USR2 signal ignored. Child exists.",
            });
        } else if self.parent.is_some() {
            self.event(Event::UpgradeRefused {
                why: "USR2 signal ignored. Parent exists.",
            });
        } else if self.is_stopping() {
            self.event(Event::UpgradeRefused {
                why: "USR2 signal ignored. Stopping.",
            });
        } else {
            self.push(Action::ReExec);
        }
    }

    fn begin_stop(&mut self, quick: bool, reason: Reason, code: i32, now: Moment) {
        if let Phase::Stopping { quick: was_quick } = self.phase {
            if quick && !was_quick {
                self.phase = Phase::Stopping { quick: true };
                let retiring: Vec<WorkerId> = self
                    .workers
                    .values()
                    .filter(|w| w.state == WorkerState::Retiring && w.pid.is_some())
                    .map(|w| w.id)
                    .collect();
                for id in retiring {
                    self.send(id, self.config.quick_signal, false, reason);
                }
            }
            return;
        }
        self.phase = Phase::Stopping { quick };
        self.exit_code = code;
        self.exit_reason = reason;
        self.push(Action::Notify(SupervisorNote::Stopping));
        self.push(Action::CloseListeners {
            unlink: !self.is_upgrading(),
        });
        for slot in &mut self.slots {
            slot.backoff_until = None;
        }
        let slots = self.slots.len();
        for slot in 0..slots {
            self.timers.set(TimerKey::Backoff(slot), None);
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        let deadline = now + self.config.graceful_timeout;
        for id in ids {
            let worker = &self.workers[&id];
            match worker.state {
                WorkerState::Spawning | WorkerState::Booting | WorkerState::Ready => {
                    self.retire(id, reason, now)
                }
                WorkerState::Retiring => {
                    let kill_at = worker.kill_at.map_or(deadline, |at| at.min(deadline));
                    let worker = self.workers.get_mut(&id).expect("listed");
                    worker.kill_at = Some(kill_at);
                    if quick {
                        self.send(id, self.config.quick_signal, false, reason);
                    }
                    self.rearm(id);
                }
                WorkerState::Aborted | WorkerState::Killed => {}
            }
        }
        let final_at = deadline + self.config.abort_grace + REAP_GRACE;
        self.timers.set(TimerKey::StopFinal, Some(final_at));
    }

    fn unexpected_exit(&mut self, worker: &Worker, status: ExitStatus, now: Moment) {
        let slot = worker.slot;
        self.slots[slot].restarts += 1;
        let boot_error = match status.code() {
            Some(3) => Some(Reason::BootError),
            Some(4) => Some(Reason::AppLoadError),
            _ => None,
        };
        if let Some(reason) = boot_error {
            if self.config.on_boot_error == BootErrorPolicy::Halt {
                let code = status.code().unwrap_or(1);
                self.begin_stop(false, reason, code, now);
                return;
            }
        }
        let lived = now.saturating_since(worker.spawned_at);
        if boot_error.is_some() || worker.ready_at.is_none() || lived < QUICK_DEATH {
            self.quick_death(slot, now);
        } else {
            self.slots[slot].quick_deaths = 0;
        }
    }

    fn quick_death(&mut self, slot: Slot, now: Moment) {
        let state = &mut self.slots[slot];
        state.quick_deaths = state.quick_deaths.saturating_add(1);
        let delay = backoff_delay(state.quick_deaths);
        if delay.is_zero() {
            return;
        }
        let until = now + delay;
        state.backoff_until = Some(until);
        self.touch(slot);
        self.timers.set(TimerKey::Backoff(slot), Some(until));
        self.event(Event::Backoff { slot, delay });
    }

    fn worker_due(&mut self, id: WorkerId, now: Moment) {
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        match worker.state {
            WorkerState::Booting | WorkerState::Ready => {
                let boot_due = self.boot_deadline(worker).is_some_and(|at| at <= now);
                let heartbeat_due = self.heartbeat_deadline(worker).is_some_and(|at| at <= now);
                let ready_due = self.exec_ready_deadline(worker).is_some_and(|at| at <= now);
                if ready_due && !heartbeat_due {
                    self.mark_ready(id, now);
                    self.rearm(id);
                } else if boot_due {
                    self.abort(id, Reason::BootTimeout, now);
                } else if heartbeat_due {
                    self.abort(id, Reason::HeartbeatTimeout, now);
                } else {
                    self.rearm(id);
                }
            }
            WorkerState::Retiring | WorkerState::Aborted => {
                if worker.kill_at.is_some_and(|at| at <= now) {
                    let reason = match (worker.state, self.phase) {
                        (WorkerState::Aborted, _) => Reason::AbortGraceOver,
                        (_, Phase::Stopping { .. }) => Reason::GraceOver,
                        _ => Reason::RetireGraceOver,
                    };
                    self.send(id, Signal::Kill, true, reason);
                    let worker = self.workers.get_mut(&id).expect("checked");
                    worker.state = WorkerState::Killed;
                    worker.kill_at = None;
                } else {
                    self.rearm(id);
                }
            }
            WorkerState::Spawning | WorkerState::Killed => {}
        }
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    fn event(&mut self, event: Event) {
        self.push(Action::Event(event));
    }
}

/// The delay before respawning a slot after `quick_deaths` quick deaths in a row: none for
/// the first, then 0.5 s, 1 s, 2 s, ... up to [`BACKOFF_CAP`].
pub fn backoff_delay(quick_deaths: u32) -> Duration {
    if quick_deaths <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (quick_deaths - 1).min(16);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_at_least_a_second_by_the_third_and_caps() {
        assert_eq!(backoff_delay(1), Duration::ZERO);
        assert_eq!(backoff_delay(2), Duration::from_millis(500));
        assert!(backoff_delay(3) >= Duration::from_secs(1));
        assert_eq!(backoff_delay(40), BACKOFF_CAP);
    }
}
