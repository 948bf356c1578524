//! The arbiter state machine: its inputs and the decisions they lead to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use arbiter_gpu::Balancer;

use crate::action::{Action, Event, ExitCause, Reason, Refusal, SupervisorNote};
use crate::input::Input;
use crate::time::Moment;
use crate::timers::{Timer, Timers};
use crate::types::{
    BootErrorPolicy, Command, Config, ExitStatus, Pid, ReadyMode, Role, Signal, Slot, WorkerId,
};
use crate::worker::{Worker, WorkerState};

mod check;
mod settle;
mod table;

pub use settle::{SCALE_SETTLE, SCALE_SETTLE_CAP, SPAWN_ROUND};

/// A worker that dies sooner than this after its start (or before it was ready) died quickly.
pub const QUICK_DEATH: Duration = Duration::from_secs(1);
/// The first delay of a crash-looping slot; it doubles with each quick death.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The longest delay before respawning a crash-looping slot.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long a stop waits for reaps after the final KILL before it gives up on them.
pub const REAP_GRACE: Duration = Duration::from_secs(5);
/// While the first generation boots under a service manager: how often its start timeout is
/// extended, and by how much at most each time (so a master whose loop hangs is timed out
/// that long after its last extension).
pub const START_EXTENSION_EVERY: Duration = Duration::from_secs(10);
/// See [`START_EXTENSION_EVERY`].
pub const START_EXTENSION: Duration = Duration::from_secs(30);

/// The master's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Keeping the target number of workers.
    Running,
    /// Rolling a new generation in (HUP).
    Reloading,
    /// A graceful stop was ordered with a `shutdown_delay`: not ready (`STOPPING=1` sent),
    /// still serving with every listener open, workers kept (and replaced) as while running,
    /// until the delay is over; then `Stopping`.
    Draining {
        /// When the stop begins.
        until: Moment,
    },
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
            Phase::Draining { .. } => "draining",
            Phase::Stopping { .. } => "stopping",
        }
    }
}

/// Which pidfile action the shell is carrying out (its report says how it went).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PidfileOp {
    Main,
    Upgrade,
    Promote,
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
/// Call order, as in quinn-proto: feed inputs with [`Arbiter::handle`] (or the `handle_*`
/// shorthands), each stamped with the current [`Moment`]; after each input drain
/// [`Arbiter::poll_action`] until `None` and carry the actions out in order (reporting
/// spawn, pidfile, configuration and re-exec results back at once); then sleep until
/// [`Arbiter::poll_timeout`] or an fd is readable, and call [`Arbiter::handle_timeout`] when
/// the deadline passes. A child's exit is reported while it is still a zombie (peeked with
/// `WNOWAIT`): the actions that follow kill its process group ([`Action::KillGroup`]) and
/// then reap it ([`Action::Reap`]). After an [`Action::Exit`] the arbiter ignores every input
/// (exits still get their `Reap`).
///
/// Invariants: no [`Action::Signal`] is ever emitted for a pid after its exit was reported;
/// nothing is spawned before a fresh master's pidfile is written; spawns happen only while
/// the table holds fewer than `workers + max_surge` processes; during a reload, and when a
/// worker is recycled (by age, memory or its own request), an old worker is retired only once
/// its slot has a ready new one; while a burst of TTIN or TTOU settles (until
/// [`SCALE_SETTLE`] passes without one, at most [`SCALE_SETTLE_CAP`] after its first),
/// nothing is spawned.
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
    /// The generation changed (or the arbiter is new): every slot must be refreshed.
    all_dirty: bool,
    /// The target moved over the slots `lo..hi` since the last `manage` (TTIN, TTOU, scale,
    /// WINCH): only those slots change sides of it, so only they are refreshed, and only
    /// those at or above the new target can hold active workers to retire.
    retarget: Option<(Slot, Slot)>,
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
    /// Workers in the `Ready` state.
    ready: usize,
    /// Workers in an active state (not being stopped).
    active: usize,
    timers: Timers<Timer>,
    actions: VecDeque<Action>,
    notify_commands: HashSet<u64>,
    gpus: Option<Balancer>,
    reexec_pid: Option<Pid>,
    parent: Option<Pid>,
    announced_ready: bool,
    /// While the first generation boots under a service manager: extend its start timeout
    /// until then (`Config::extend_start`).
    extend_start_until: Option<Moment>,
    ever_spawned: bool,
    /// A fresh master's pidfile is being written: nothing is spawned until it is.
    awaiting_pidfile: bool,
    /// The pidfile action whose report is due.
    pidfile_op: Option<PidfileOp>,
    /// `PIDFILE.2` was asked for (once, when the upgrade child's workers were first ready).
    upgrade_pidfile_asked: bool,
    /// `PIDFILE.2` holds our pid.
    upgrade_pidfile_written: bool,
    /// While a burst of TTIN or TTOU settles: when its first signal came (spawns wait).
    scale_burst: Option<Moment>,
    /// A round of spawns was cut at [`SPAWN_ROUND`]: the rest wait for [`Timer::SpawnRound`].
    spawn_round: bool,
    exit_code: i32,
    exit_reason: Reason,
    exited: bool,
    /// Per-slot listeners: the slots the shell was last told to hold and to steer to.
    slot_listeners: (usize, usize),
    /// Per-slot listeners: the drain of the slots above a lowered target, while it lasts.
    slot_drain: Option<SlotDrain>,
}

/// The drain of the slots above a lowered target ([`Config::slot_listeners`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotDrain {
    /// The target it drains towards (a new target starts a new drain).
    pub(super) target: usize,
    /// When it began.
    pub(super) began: Moment,
    /// A queue count was asked for and not reported yet.
    pub(super) asked: bool,
    /// The queues were found empty (or the drain ran out of time): retire now.
    pub(super) done: bool,
}

impl Arbiter {
    /// A new arbiter; its first actions are ready to poll: a fresh master's pidfile (when it
    /// keeps one; its spawns follow the report), or its spawns.
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
            retarget: None,
            want_empty: BTreeSet::new(),
            want_roll: BTreeSet::new(),
            ready_slots: 0,
            old_active: 0,
            surge_active: 0,
            ready: 0,
            active: 0,
            timers: Timers::new(),
            actions: VecDeque::new(),
            notify_commands: HashSet::new(),
            gpus,
            reexec_pid: None,
            parent,
            announced_ready: false,
            extend_start_until: None,
            ever_spawned: false,
            awaiting_pidfile: false,
            pidfile_op: None,
            upgrade_pidfile_asked: false,
            upgrade_pidfile_written: false,
            scale_burst: None,
            spawn_round: false,
            exit_code: 0,
            exit_reason: Reason::Shutdown,
            exited: false,
            slot_listeners: (0, 0),
            slot_drain: None,
        };
        if arbiter.config.pidfile && parent.is_none() {
            // An upgrade child's PIDFILE.2 waits for its workers (see `notify_ready`).
            arbiter.awaiting_pidfile = true;
            arbiter.pidfile_op = Some(PidfileOp::Main);
            arbiter.push(Action::WritePidfile {
                upgrade_child: false,
                reason: Reason::Boot,
            });
        }
        if parent.is_none() {
            // The first ping goes out at once.
            let first = arbiter.config.watchdog.map(|_| now);
            arbiter.timers.set(Timer::Watchdog, first);
        }
        if let (true, None, Some(boot)) = (
            arbiter.config.extend_start,
            parent,
            arbiter.config.boot_timeout,
        ) {
            // The manager's TimeoutStartSec= is unknown here, and an extension never shortens
            // it: the first goes out at once (unless the workers are ready by then).
            let until = now + boot + arbiter.config.abort_grace + START_EXTENSION_EVERY;
            arbiter.extend_start_until = Some(until);
            arbiter.timers.set(Timer::ExtendStart, Some(now));
        }
        arbiter.arm_memory_sample(now);
        arbiter.manage(now);
        arbiter
    }

    // ----- outputs -----

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Arbiter::handle_timeout`] must be called next, if ever: the earliest of the
    /// named deadlines.
    pub fn poll_timeout(&self) -> Option<Moment> {
        if self.exited {
            return None;
        }
        self.timers.next()
    }

    /// The earliest deadline and which one it is, for a trace of wake-ups.
    pub fn next_deadline(&self) -> Option<(Moment, Timer)> {
        if self.exited {
            return None;
        }
        self.timers.first()
    }

    /// The deadlines due at `now`, earliest first: what [`Arbiter::handle_timeout`] is about
    /// to judge. A shell brings only their inputs up to date first (the heartbeat files of the
    /// workers whose [`Timer::Heartbeat`] is due), so a wake-up costs what is due, not one
    /// look per worker.
    pub fn due(&self, now: Moment) -> impl Iterator<Item = Timer> + '_ {
        let exited = self.exited;
        self.timers.due(now).filter(move |_| !exited)
    }

    /// The workers whose heartbeats a shell brings up to date before judging at `now`: none
    /// unless a heartbeat deadline is due; then every worker whose heartbeat deadline falls
    /// within half a timeout of `now`. One wake-up so moves every deadline it can, and workers
    /// beating at their own phases, each seen only at its deadline (heartbeat files, a kernel
    /// table of stamps), do not wake the master one by one.
    pub fn heartbeats_to_refresh(&self, now: Moment) -> Vec<WorkerId> {
        let heartbeat = |timer: Timer| match timer {
            Timer::Heartbeat(id) => Some(id),
            _ => None,
        };
        if !self.due(now).any(|timer| heartbeat(timer).is_some()) {
            return Vec::new();
        }
        let horizon = now + self.config.timeout.unwrap_or_default() / 2;
        self.due(horizon).filter_map(heartbeat).collect()
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

    /// Ready workers that are not being stopped (kept as the table changes, not counted).
    pub fn ready_count(&self) -> usize {
        self.ready
    }

    /// Workers meant to keep running: spawning, booting or ready (kept, not counted).
    pub fn active_count(&self) -> usize {
        self.active
    }

    /// Workers in the table, whatever their state (those being stopped included).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
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

    /// Whether a fresh master's pidfile write is outstanding. While it is, its
    /// [`Action::WritePidfile`] is the only action queued, and nothing is spawned before its
    /// report: a shell may carry it out before it binds anything.
    pub fn awaits_pidfile(&self) -> bool {
        self.awaiting_pidfile
    }

    /// Whether the arbiter has emitted its exit.
    pub fn has_exited(&self) -> bool {
        self.exited
    }

    // ----- inputs -----

    /// Any input: the one entry the `handle_*` shorthands below lead to. A shell that traces
    /// prints `input` (one line) before handing it over.
    pub fn handle(&mut self, input: Input, now: Moment) {
        match input {
            Input::Signal(signal) => self.handle_signal(signal, now),
            Input::Command(command) => self.handle_command(command, now),
            Input::Reload(config) => self.handle_reload(*config, now),
            Input::ConfigFailed { error } => self.handle_config_failed(error, now),
            Input::Spawned { id, pid } => self.handle_spawned(id, pid, now),
            Input::SpawnFailed { id, error } => self.handle_spawn_failed(id, error, now),
            Input::Exited { pid, status } => self.handle_exit(pid, status, now),
            Input::Ready { pid } => self.handle_ready(pid, now),
            Input::Heartbeat { pid, at } => self.handle_heartbeat(pid, at),
            Input::Memory { pid, bytes } => self.handle_memory(pid, bytes, now),
            Input::RecycleRequested { pid } => self.handle_recycle_request(pid, now),
            Input::Status { pid, text } => self.handle_status(pid, text),
            Input::ReexecSpawned { pid } => self.handle_reexec_spawned(pid),
            Input::ReexecFailed => self.handle_reexec_failed(),
            Input::ParentExited => self.handle_parent_exited(now),
            Input::PidfileWritten => self.handle_pidfile_written(now),
            Input::PidfileFailed { error } => self.handle_pidfile_failed(error, now),
            Input::SlotQueues { queued } => self.handle_slot_queues(queued, now),
            Input::Timeout => self.handle_timeout(now),
        }
    }

    /// A signal reached the master. HUP asks the shell for the configuration
    /// ([`Action::LoadConfig`]); the roll starts when it comes back ([`Arbiter::handle_reload`]).
    pub fn handle_signal(&mut self, signal: Signal, now: Moment) {
        if self.exited {
            return;
        }
        let stopping = self.stop_requested();
        match (signal, stopping) {
            (Signal::Term, _) => self.order_stop(false, now),
            (Signal::Int | Signal::Quit, _) => self.order_stop(true, now),
            (Signal::Usr1, _) => {
                self.push(Action::ReopenLogs);
                if self.config.forward_usr1 {
                    let targets: Vec<WorkerId> = self.workers.keys().copied().collect();
                    for id in targets {
                        self.send(id, Signal::Usr1, false, Reason::ReopenLogs);
                    }
                }
            }
            (Signal::Usr2, _) => self.upgrade(),
            (Signal::Hup | Signal::Ttin | Signal::Ttou | Signal::Winch, true) => {
                self.refuse_signal(signal, Refusal::Stopping)
            }
            (Signal::Hup, false) => self.push(Action::LoadConfig {
                reason: Reason::Reload,
            }),
            (Signal::Ttin, false) if self.target < crate::MAX_WORKERS => {
                self.scale_by_signal(self.target + 1, Reason::ScaleUp, now)
            }
            (Signal::Ttin, false) => self.refuse_signal(signal, Refusal::AtCeiling),
            (Signal::Ttou, false) if self.target > 1 => {
                self.scale_by_signal(self.target - 1, Reason::Cull, now)
            }
            (Signal::Ttou, false) => self.refuse_signal(signal, Refusal::AtFloor),
            (Signal::Winch, false) if self.config.daemonized => self.set_target(0, Reason::Winch),
            (Signal::Winch, false) => self.refuse_signal(signal, Refusal::NotDaemonized),
            (Signal::Chld | Signal::Kill | Signal::Abrt, _) => {
                self.refuse_signal(signal, Refusal::NotAnOrder)
            }
        }
        self.manage(now);
    }

    /// The configuration re-read for a reload (HUP, `Command::Reload`), validated by the
    /// shell: start a rolling reload. `pidfile` keeps its value from the start.
    pub fn handle_reload(&mut self, mut config: Config, now: Moment) {
        if self.exited || self.stop_requested() {
            return;
        }
        config.pidfile = self.config.pidfile;
        if config.gpus != self.config.gpus {
            self.gpus = config
                .gpus
                .clone()
                .map(|gpu| Balancer::new(gpu, config.workers));
        } else if let Some(gpus) = self.gpus.as_mut() {
            gpus.set_workers(config.workers);
        }
        if config.watchdog != self.config.watchdog && self.parent.is_none() {
            self.timers
                .set(Timer::Watchdog, config.watchdog.map(|every| now + every));
        }
        if config.workers != self.target {
            self.event(Event::TargetChanged {
                from: self.target,
                to: config.workers,
                reason: Reason::Reload,
            });
        }
        self.target = config.workers;
        let sampling = (config.max_worker_memory, config.memory_sample_every);
        let resample = sampling
            != (
                self.config.max_worker_memory,
                self.config.memory_sample_every,
            );
        self.config = config;
        if resample {
            self.arm_memory_sample(now);
        }
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

    /// The configuration re-read for a reload could not be used: the running one stays.
    pub fn handle_config_failed(&mut self, error: String, _now: Moment) {
        if self.exited {
            return;
        }
        self.event(Event::ConfigRejected { error });
    }

    /// A control command.
    pub fn handle_command(&mut self, command: Command, now: Moment) {
        if self.exited {
            return;
        }
        let stopping = self.stop_requested();
        match (command, stopping) {
            (Command::Stop { quick }, _) => self.order_stop(quick, now),
            (command, true) => self.refuse_command(command, Refusal::Stopping),
            (Command::Scale(0), false) => self.refuse_command(Command::Scale(0), Refusal::AtFloor),
            (Command::Scale(n), false) if n > crate::MAX_WORKERS => {
                self.refuse_command(Command::Scale(n), Refusal::AtCeiling)
            }
            (Command::Scale(n), false) => self.set_target(n, Reason::Requested),
            (Command::Reload, false) => self.push(Action::LoadConfig {
                reason: Reason::Reload,
            }),
            (Command::KillWorker(pid), false) => {
                let running = self
                    .by_pid
                    .get(&pid)
                    .copied()
                    .filter(|id| self.workers[id].state.is_active());
                match running {
                    Some(id) => self.retire(id, Reason::Requested, now),
                    None => self.refuse_command(Command::KillWorker(pid), Refusal::NoSuchWorker),
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
        let (state, stop_reason) = (worker.state, worker.stop_reason);
        let (slot, generation) = (worker.slot, worker.generation);
        let recycle_at = self.age_deadline(&self.workers[&id]);
        self.workers.get_mut(&id).expect("checked").recycle_at = recycle_at;
        self.by_pid.insert(pid, id);
        self.event(Event::WorkerSpawned {
            id,
            pid,
            slot,
            generation,
        });
        match state {
            WorkerState::Spawning => {
                self.set_state(id, WorkerState::Booting);
                if !awaits_ready && self.config.ready_after.is_zero() {
                    self.mark_ready(id, now);
                }
            }
            WorkerState::Retiring => {
                // Asked to stop before its pid was known: tell it now.
                let signal = self.stop_signal();
                let reason = stop_reason.unwrap_or(Reason::Shutdown);
                self.send(id, signal, false, reason);
            }
            _ => {}
        }
        self.arm(id);
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

    /// A child exited. Report it while the child is still a zombie (peeked at with
    /// `WNOWAIT`, not reaped): a worker's process group is killed first
    /// ([`Action::KillGroup`]), then the child is reaped ([`Action::Reap`]).
    pub fn handle_exit(&mut self, pid: Pid, status: ExitStatus, now: Moment) {
        if self.exited {
            self.push(Action::Reap { pid });
            return;
        }
        if self.reexec_pid == Some(pid) {
            self.reexec_pid = None;
            self.push(Action::Reap { pid });
            self.event(Event::ReexecExited { pid, status });
            return;
        }
        let Some(&id) = self.by_pid.get(&pid) else {
            self.push(Action::Reap { pid });
            self.event(Event::OrphanReaped { pid, status });
            return;
        };
        // What the worker started stays in its group and would keep serving on the inherited
        // listeners (a SIGKILLed gunicorn master's workers do): it goes with the worker.
        self.push(Action::KillGroup {
            id,
            pid,
            reason: Reason::WorkerExited,
        });
        self.push(Action::Reap { pid });
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
            cause: ExitCause::of(worker.stop_reason, status),
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
            self.arm(id);
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
        let deadline = self.heartbeat_deadline(&self.workers[&id]);
        self.timers.set(Timer::Heartbeat(id), deadline);
    }

    /// The resident memory of the worker's (by pid) process group, sampled for
    /// [`Action::SampleMemory`]: above `max_worker_memory`, the worker is recycled.
    pub fn handle_memory(&mut self, pid: Pid, bytes: u64, now: Moment) {
        let over = self
            .config
            .max_worker_memory
            .is_some_and(|limit| bytes > limit);
        if let (true, Some(&id)) = (over, self.by_pid.get(&pid)) {
            self.ask_recycle(id, Reason::RecycleMemory);
            self.manage(now);
        }
    }

    /// The worker (by pid) asked to be replaced (`X_ARBITER_RECYCLE=1`): it is recycled.
    pub fn handle_recycle_request(&mut self, pid: Pid, now: Moment) {
        if let Some(&id) = self.by_pid.get(&pid) {
            self.ask_recycle(id, Reason::RecycleRequested);
            self.manage(now);
        }
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
        if !self.exited {
            self.event(Event::ReexecFailed);
        }
    }

    /// This master's parent master (it is an upgrade child) exited: promote. `PIDFILE.2` is
    /// renamed if it was written, else the pidfile is written now; the watchdog pings start.
    pub fn handle_parent_exited(&mut self, now: Moment) {
        if self.exited || self.parent.take().is_none() {
            return;
        }
        self.event(Event::Promoted);
        if self.config.pidfile {
            if self.upgrade_pidfile_written {
                self.pidfile_op = Some(PidfileOp::Promote);
                self.push(Action::PromotePidfile);
            } else {
                self.pidfile_op = Some(PidfileOp::Main);
                self.push(Action::WritePidfile {
                    upgrade_child: false,
                    reason: Reason::Promoted,
                });
            }
        }
        self.push(Action::Notify(SupervisorNote::MainPid));
        if let Some(every) = self.config.watchdog {
            self.push(Action::Notify(SupervisorNote::Watchdog));
            self.timers.set(Timer::Watchdog, Some(now + every));
        }
    }

    /// The last [`Action::WritePidfile`] or [`Action::PromotePidfile`] was carried out.
    pub fn handle_pidfile_written(&mut self, now: Moment) {
        match self.pidfile_op.take() {
            Some(PidfileOp::Upgrade) => self.upgrade_pidfile_written = true,
            Some(PidfileOp::Promote) => self.upgrade_pidfile_written = false,
            Some(PidfileOp::Main) | None => {}
        }
        if self.awaiting_pidfile {
            self.awaiting_pidfile = false;
            self.manage(now);
        }
    }

    /// The last [`Action::WritePidfile`] or [`Action::PromotePidfile`] failed. At start
    /// (nothing spawned yet) the master exits 1; later the failure is reported
    /// ([`Event::PidfileFailed`]) and the master keeps running.
    pub fn handle_pidfile_failed(&mut self, error: String, _now: Moment) {
        if self.exited {
            return;
        }
        let op = self.pidfile_op.take();
        if self.awaiting_pidfile {
            self.awaiting_pidfile = false;
            self.exit_code = 1;
            self.exit_reason = Reason::PidfileFailure;
            self.finish_exit();
            return;
        }
        self.event(Event::PidfileFailed {
            upgrade_child: matches!(op, Some(PidfileOp::Upgrade | PidfileOp::Promote)),
            error,
        });
    }

    /// How many of the draining slots' queues hold connections, as a
    /// [`Action::CheckSlotQueues`] asked: none (or the drain is `graceful_timeout` old): their
    /// workers are retired; else it is asked again in [`crate::SLOT_DRAIN_POLL`].
    pub fn handle_slot_queues(&mut self, queued: u64, now: Moment) {
        if self.exited {
            return;
        }
        let grace = self.config.graceful_timeout;
        let Some(drain) = self.slot_drain.as_mut().filter(|d| d.asked) else {
            return;
        };
        drain.asked = false;
        if queued == 0 || now >= drain.began + grace {
            drain.done = true;
            self.all_dirty = true;
        } else {
            let next = now + crate::types::SLOT_DRAIN_POLL;
            self.timers.set(Timer::SlotDrain, Some(next));
        }
        self.manage(now);
    }

    /// A deadline from [`Arbiter::poll_timeout`] passed: every timer due fires, in order.
    pub fn handle_timeout(&mut self, now: Moment) {
        if self.exited {
            return;
        }
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Boot(id) => self.expire(id, Reason::BootTimeout, now),
                Timer::Heartbeat(id) => self.expire(id, Reason::HeartbeatTimeout, now),
                Timer::ReadyAfter(id) => {
                    if self.workers.get(&id).map(|w| w.state) == Some(WorkerState::Booting) {
                        self.mark_ready(id, now);
                        self.arm(id);
                    }
                }
                Timer::Kill(id) => self.kill_due(id),
                Timer::Recycle(id) => self.ask_recycle(id, Reason::RecycleAge),
                Timer::MemorySample => {
                    let pids: Vec<Pid> = self
                        .workers
                        .values()
                        .filter(|w| w.state.is_active())
                        .filter_map(|w| w.pid)
                        .collect();
                    if !pids.is_empty() {
                        self.push(Action::SampleMemory {
                            pids,
                            reason: Reason::MemoryLimit,
                        });
                    }
                    self.arm_memory_sample(now);
                }
                Timer::Backoff(slot) => {
                    self.slots[slot].backoff_until = None;
                    self.touch(slot);
                }
                Timer::ScaleSettle => self.end_scale_burst(),
                Timer::SpawnRound => self.spawn_round = false,
                Timer::Watchdog => {
                    self.push(Action::Notify(SupervisorNote::Watchdog));
                    let next = self.config.watchdog.map(|every| now + every);
                    self.timers.set(Timer::Watchdog, next);
                }
                Timer::ExtendStart => self.extend_start(now),
                Timer::Drain => {
                    self.event(Event::DrainOver { early: false });
                    self.begin_stop(false, Reason::Shutdown, 0, now);
                }
                Timer::SlotDrain => {
                    let (from, to) = (self.target, self.slot_listeners.0);
                    if let Some(drain) = self.slot_drain.as_mut().filter(|d| !d.done) {
                        if from < to {
                            drain.asked = true;
                            self.push(Action::CheckSlotQueues { from, to });
                        } else {
                            // The draining slots' workers are gone already.
                            drain.done = true;
                            self.all_dirty = true;
                        }
                    }
                }
                Timer::Stop => {
                    self.finish_exit();
                    return;
                }
            }
        }
        self.manage(now);
    }

    // ----- decisions -----

    /// Workers are being stopped (not while draining: then they still serve).
    fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// While the first generation boots under a service manager: `EXTEND_TIMEOUT_USEC=` up
    /// to the extension's end, and the next one a period later.
    fn extend_start(&mut self, now: Moment) {
        let Some(until) = self.extend_start_until else {
            return;
        };
        if self.announced_ready || self.stop_requested() || now >= until {
            self.end_start_extension();
            return;
        }
        let by = until.saturating_since(now).min(START_EXTENSION);
        self.push(Action::Notify(SupervisorNote::ExtendTimeout(by)));
        self.timers
            .set(Timer::ExtendStart, Some(now + START_EXTENSION_EVERY));
    }

    /// The first generation is ready, or a stop was ordered: no more start extensions.
    pub(super) fn end_start_extension(&mut self) {
        self.extend_start_until = None;
        self.timers.set(Timer::ExtendStart, None);
    }

    /// A stop was ordered: draining or stopping. Orders that would change the workers
    /// (HUP, TTIN, TTOU, WINCH, USR2, scale, reload) are refused from then on.
    pub fn stop_requested(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. } | Phase::Stopping { .. })
    }

    /// TERM, INT, QUIT or `Command::Stop`. A graceful one with a `shutdown_delay` drains
    /// first (not while an upgrade is under way: the other master serves the same
    /// listeners, so nothing needs to be told). A stop order during the drain, graceful or
    /// quick, ends it at once.
    fn order_stop(&mut self, quick: bool, now: Moment) {
        let reason = if quick {
            Reason::QuickShutdown
        } else {
            Reason::Shutdown
        };
        match self.phase {
            Phase::Draining { .. } => {
                self.event(Event::DrainOver { early: true });
                self.begin_stop(quick, reason, 0, now);
            }
            Phase::Running | Phase::Reloading
                if !quick && !self.config.shutdown_delay.is_zero() && !self.is_upgrading() =>
            {
                let delay = self.config.shutdown_delay;
                let until = now + delay;
                self.phase = Phase::Draining { until };
                self.end_start_extension();
                self.push(Action::Notify(SupervisorNote::Stopping));
                self.event(Event::DrainStarted { delay });
                self.timers.set(Timer::Drain, Some(until));
                self.timers.set(Timer::MemorySample, None);
            }
            _ => self.begin_stop(quick, reason, 0, now),
        }
    }

    fn stop_signal(&self) -> Signal {
        match self.phase {
            Phase::Stopping { quick: true } => self.config.quick_signal,
            _ => Signal::Term,
        }
    }

    fn set_target(&mut self, target: usize, reason: Reason) {
        if target == self.target {
            return;
        }
        self.event(Event::TargetChanged {
            from: self.target,
            to: target,
            reason,
        });
        let (lo, hi) = (self.target.min(target), self.target.max(target));
        self.retarget = Some(match self.retarget {
            Some((from, to)) => (from.min(lo), to.max(hi)),
            None => (lo, hi),
        });
        self.target = target;
        if let Some(gpus) = self.gpus.as_mut() {
            gpus.set_workers(target);
        }
    }

    fn refuse_signal(&mut self, signal: Signal, why: Refusal) {
        self.event(Event::SignalRefused { signal, why });
    }

    fn refuse_command(&mut self, command: Command, why: Refusal) {
        self.event(Event::CommandRefused { command, why });
    }

    fn upgrade(&mut self) {
        let refusal = if self.reexec_pid.is_some() {
            Some(Refusal::ChildExists)
        } else if self.parent.is_some() {
            Some(Refusal::ParentExists)
        } else if self.stop_requested() {
            Some(Refusal::Stopping)
        } else {
            None
        };
        match refusal {
            Some(why) => self.refuse_signal(Signal::Usr2, why),
            None => self.push(Action::ReExec),
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
        let drained = matches!(self.phase, Phase::Draining { .. });
        self.timers.set(Timer::Drain, None);
        self.phase = Phase::Stopping { quick };
        self.exit_code = code;
        self.exit_reason = reason;
        self.end_start_extension();
        if let Some(successor) = self.reexec_pid {
            // An upgrade hands over: the service goes on under the new master.
            self.push(Action::Notify(SupervisorNote::HandOver(successor)));
        } else if !drained {
            // A drain told the service manager when it began.
            self.push(Action::Notify(SupervisorNote::Stopping));
        }
        self.push(Action::CloseListeners {
            unlink: !self.is_upgrading(),
        });
        for slot in &mut self.slots {
            slot.backoff_until = None;
        }
        let slots = self.slots.len();
        for slot in 0..slots {
            self.timers.set(Timer::Backoff(slot), None);
        }
        self.timers.set(Timer::MemorySample, None);
        self.end_scale_burst();
        self.end_spawn_round();
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
                    self.arm(id);
                }
                WorkerState::Aborted | WorkerState::Killed => {}
            }
        }
        let final_at = deadline + self.config.abort_grace + REAP_GRACE;
        self.timers.set(Timer::Stop, Some(final_at));
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
        self.timers.set(Timer::Backoff(slot), Some(until));
        self.event(Event::Backoff { slot, delay });
    }

    /// A boot or heartbeat deadline passed: abort the worker if it still runs.
    fn expire(&mut self, id: WorkerId, reason: Reason, now: Moment) {
        let live = self
            .workers
            .get(&id)
            .is_some_and(|w| matches!(w.state, WorkerState::Booting | WorkerState::Ready));
        if live {
            self.abort(id, reason, now);
        }
    }

    /// Asks for a running worker to be recycled: its slot will roll as in a reload (a
    /// replacement spawned within `max_surge`, the worker retired once that one is ready).
    /// The mark is set by `manage` once the worker is its slot's ready current worker (see
    /// `start_recycle`), so a replacement that is asked before it is ready (or before it has
    /// replaced its predecessor) first finishes replacing. Nothing once a stop was ordered
    /// (draining or stopping), or for a worker already being recycled or stopped.
    fn ask_recycle(&mut self, id: WorkerId, reason: Reason) {
        let stop_requested = self.stop_requested();
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if stop_requested || !worker.state.is_active() || worker.recycle.is_some() {
            return;
        }
        worker.recycle_pending.get_or_insert(reason);
        let slot = worker.slot;
        self.touch(slot);
    }

    /// Marks the slot's ready current worker `id` as recycling if that was asked for.
    pub(super) fn start_recycle(&mut self, id: WorkerId) {
        if self.stop_requested() {
            return;
        }
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        let Some(reason) = worker.recycle_pending.take() else {
            return;
        };
        worker.recycle = Some(reason);
        let (slot, pid) = (worker.slot, worker.pid);
        self.timers.set(Timer::Recycle(id), None);
        self.touch(slot);
        if let Some(pid) = pid {
            self.event(Event::Recycling {
                id,
                pid,
                slot,
                reason,
            });
        }
    }

    /// The next memory sample, while a memory limit is set and no stop was ordered.
    fn arm_memory_sample(&mut self, now: Moment) {
        let next = self
            .config
            .max_worker_memory
            .filter(|_| !self.stop_requested())
            .map(|_| {
                now + self
                    .config
                    .memory_sample_every
                    .max(Duration::from_millis(10))
            });
        self.timers.set(Timer::MemorySample, next);
    }

    /// A kill deadline passed: KILL the group of a worker still retiring or aborted.
    fn kill_due(&mut self, id: WorkerId) {
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        let reason = match (worker.state, self.phase) {
            (WorkerState::Aborted, _) => Reason::AbortGraceOver,
            (WorkerState::Retiring, Phase::Stopping { .. }) => Reason::GraceOver,
            (WorkerState::Retiring, _) => Reason::RetireGraceOver,
            _ => return,
        };
        self.send(id, Signal::Kill, true, reason);
        self.set_state(id, WorkerState::Killed);
        self.workers.get_mut(&id).expect("checked").kill_at = None;
        self.arm(id);
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
