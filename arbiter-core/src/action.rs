//! What the core asks the shell to do, and why; what it refuses, and why.

use std::fmt;
use std::time::Duration;

use crate::types::{Command, ExitStatus, Pid, Signal, Slot, WorkerId};

/// Why the core decided something. The shell logs it; the core never logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first workers of this master (and its pidfile).
    Boot,
    /// Replacing a worker that exited.
    Respawn,
    /// A larger target (TTIN).
    ScaleUp,
    /// More workers than the target (TTOU, a lower target).
    Cull,
    /// No heartbeat within the timeout.
    HeartbeatTimeout,
    /// No `READY=1` within the boot timeout.
    BootTimeout,
    /// The abort signal did not end the worker within the abort grace.
    AbortGraceOver,
    /// A retired worker outlived the graceful timeout.
    RetireGraceOver,
    /// Rolling reload (HUP): a new generation replaces the old one.
    Reload,
    /// Graceful stop (TERM).
    Shutdown,
    /// Quick stop (INT, QUIT).
    QuickShutdown,
    /// Workers still alive when the stop's graceful timeout ran out.
    GraceOver,
    /// A worker exited with code 3.
    BootError,
    /// A worker exited with code 4.
    AppLoadError,
    /// The worker command could not be run at all.
    SpawnFailure,
    /// WINCH while daemonized: stop all workers.
    Winch,
    /// USR1: reopen logs (and forward when configured).
    ReopenLogs,
    /// USR2: re-exec a new master.
    Upgrade,
    /// An explicit order (`ctl scale`, `ctl kill-worker`).
    Requested,
    /// A worker exited: what it started is still in its process group and would keep
    /// serving on the inherited listeners, so the group is killed with it.
    WorkerExited,
    /// An upgrade child's workers are ready: `PIDFILE.2` tells `arbiter upgrade` so.
    UpgradeReady,
    /// The old master exited: this master is the master now.
    Promoted,
    /// The pidfile could not be written at start: a master nobody can find must not run.
    PidfileFailure,
    /// A worker reached its (staggered) maximum age: it is replaced, then retired.
    RecycleAge,
    /// A worker's process group used more memory than allowed: it is replaced, then retired.
    RecycleMemory,
    /// A worker asked to be replaced (`X_ARBITER_RECYCLE=1`, as the built-in worker's
    /// `--max-requests` does): it is replaced, then retired.
    RecycleRequested,
    /// The memory limit is enforced by sampling every worker's group at a fixed interval.
    MemoryLimit,
}

impl Reason {
    /// Whether this is a planned replacement of one worker (recycling).
    pub fn is_recycle(self) -> bool {
        matches!(
            self,
            Reason::RecycleAge | Reason::RecycleMemory | Reason::RecycleRequested
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Boot => "boot",
            Reason::Respawn => "respawn",
            Reason::ScaleUp => "scale up",
            Reason::Cull => "cull",
            Reason::HeartbeatTimeout => "heartbeat timeout",
            Reason::BootTimeout => "boot timeout",
            Reason::AbortGraceOver => "abort grace over",
            Reason::RetireGraceOver => "retire grace over",
            Reason::Reload => "reload",
            Reason::Shutdown => "shutdown",
            Reason::QuickShutdown => "quick shutdown",
            Reason::GraceOver => "graceful timeout over",
            Reason::BootError => "Worker failed to boot.",
            Reason::AppLoadError => "App failed to load.",
            Reason::SpawnFailure => "worker command could not be run",
            Reason::Winch => "winch",
            Reason::ReopenLogs => "reopen logs",
            Reason::Upgrade => "upgrade",
            Reason::Requested => "requested",
            Reason::WorkerExited => "worker exited",
            Reason::UpgradeReady => "upgrade ready",
            Reason::Promoted => "promoted",
            Reason::PidfileFailure => "the pidfile could not be written",
            Reason::RecycleAge => "recycle: max worker age",
            Reason::RecycleMemory => "recycle: max worker memory",
            Reason::RecycleRequested => "recycle: the worker asked for it",
            Reason::MemoryLimit => "max worker memory",
        })
    }
}

/// Why the core declined an input. The variants are the refusals; [`Event::SignalRefused`]
/// and [`Event::CommandRefused`] print them in gunicorn's words where it has some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// USR2 while the new master of an earlier USR2 still runs.
    ChildExists,
    /// USR2 while this master is an upgrade child not yet promoted.
    ParentExists,
    /// The master is stopping: HUP, TTIN, TTOU, WINCH, USR2 and every control command but
    /// `Stop` are refused.
    Stopping,
    /// WINCH while not daemonized.
    NotDaemonized,
    /// TTOU at one worker, or a scale order to 0: the target never drops below one.
    AtFloor,
    /// TTIN or a scale order at [`MAX_WORKERS`](crate::MAX_WORKERS): the target never rises
    /// above it.
    AtCeiling,
    /// `KillWorker` for a pid that is not a running worker.
    NoSuchWorker,
    /// A signal the master only sends (KILL, ABRT), or CHLD, whose exits come one by one.
    NotAnOrder,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::ChildExists => "Child exists.",
            Refusal::ParentExists => "Parent exists.",
            Refusal::Stopping => "Stopping.",
            Refusal::NotDaemonized => "Not daemonized",
            Refusal::AtFloor => "At one worker.",
            Refusal::AtCeiling => "At the most workers a master runs.",
            Refusal::NoSuchWorker => "No such running worker.",
            Refusal::NotAnOrder => "Not an order to the master.",
        })
    }
}

/// Why a worker exited, as the `cause` label of the exit metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitCause {
    /// An unexpected exit with a code.
    Crash,
    /// An unexpected death by a signal (an OOM kill, a segfault).
    Signal,
    /// Aborted, then perhaps killed, for a heartbeat or boot timeout.
    Timeout,
    /// An unexpected exit with code 3 or 4.
    BootFailure,
    /// Retired while the master runs: a lower target, a reload, `ctl kill-worker`.
    Culled,
    /// Stopped with the master (or by WINCH).
    Stopped,
    /// Retired once its replacement was ready: its age, its memory, or its own request.
    Recycled,
}

impl ExitCause {
    /// Every cause, so each series can exist from the start.
    pub const ALL: [ExitCause; 7] = [
        ExitCause::Crash,
        ExitCause::Signal,
        ExitCause::Timeout,
        ExitCause::BootFailure,
        ExitCause::Culled,
        ExitCause::Stopped,
        ExitCause::Recycled,
    ];

    /// The cause of an exit: the reason the master stopped the worker, if it did, else
    /// what its status says.
    pub fn of(stop_reason: Option<Reason>, status: ExitStatus) -> ExitCause {
        match stop_reason {
            Some(Reason::HeartbeatTimeout | Reason::BootTimeout | Reason::AbortGraceOver) => {
                ExitCause::Timeout
            }
            Some(Reason::Shutdown | Reason::QuickShutdown | Reason::GraceOver | Reason::Winch) => {
                ExitCause::Stopped
            }
            Some(reason) if reason.is_recycle() => ExitCause::Recycled,
            Some(_) => ExitCause::Culled,
            None => match status {
                ExitStatus::Exited(3 | 4) => ExitCause::BootFailure,
                ExitStatus::Exited(_) => ExitCause::Crash,
                ExitStatus::Signaled { .. } => ExitCause::Signal,
            },
        }
    }

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            ExitCause::Crash => "crash",
            ExitCause::Signal => "signal",
            ExitCause::Timeout => "timeout",
            ExitCause::BootFailure => "boot_failure",
            ExitCause::Culled => "culled",
            ExitCause::Stopped => "stopped",
            ExitCause::Recycled => "recycled",
        }
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A message for the service manager above the master (sd_notify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorNote {
    /// `READY=1`: the target number of workers is ready.
    Ready,
    /// `RELOADING=1`: a rolling reload began.
    Reloading,
    /// `STOPPING=1`.
    Stopping,
    /// `STATUS=...`.
    Status(String),
    /// `MAINPID=`: this master was promoted after an upgrade.
    MainPid,
    /// `MAINPID=` with the pid of this master's upgrade child: it stops while its successor
    /// runs, so the service manager follows the successor (and this master sends no
    /// `STOPPING=1`, which would stop the whole service).
    HandOver(Pid),
    /// `WATCHDOG=1`: the master's loop is alive (every [`crate::Config::watchdog`]).
    Watchdog,
    /// `EXTEND_TIMEOUT_USEC=`: the first generation still boots; the service manager's start
    /// timeout must not expire within this much from now.
    ExtendTimeout(Duration),
}

impl fmt::Display for SupervisorNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorNote::Ready => f.write_str("READY=1"),
            SupervisorNote::Reloading => f.write_str("RELOADING=1"),
            SupervisorNote::Stopping => f.write_str("STOPPING=1"),
            SupervisorNote::Status(text) => write!(f, "STATUS={}", text.escape_debug()),
            SupervisorNote::MainPid => f.write_str("MAINPID"),
            SupervisorNote::HandOver(pid) => write!(f, "MAINPID={pid}"),
            SupervisorNote::Watchdog => f.write_str("WATCHDOG=1"),
            SupervisorNote::ExtendTimeout(by) => {
                write!(f, "EXTEND_TIMEOUT_USEC={}", by.as_micros())
            }
        }
    }
}

/// Something that happened, for the log and for observers; no action is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A worker exited (and was removed from the table).
    WorkerExited {
        /// The worker.
        id: WorkerId,
        /// Its pid.
        pid: Pid,
        /// Its slot.
        slot: Slot,
        /// How it ended.
        status: ExitStatus,
        /// Whether the master expected it (retired, stopped, killed for a timeout).
        expected: bool,
        /// Why it ended.
        cause: ExitCause,
    },
    /// A worker was forked (and exec'd) with this pid.
    WorkerSpawned {
        /// The worker.
        id: WorkerId,
        /// Its pid.
        pid: Pid,
        /// Its slot.
        slot: Slot,
        /// Its generation.
        generation: u64,
    },
    /// A worker became ready.
    WorkerReady {
        /// The worker.
        id: WorkerId,
        /// Its pid.
        pid: Pid,
    },
    /// A worker is to be recycled: its slot gets a replacement first, and the worker is
    /// retired once that one is ready.
    Recycling {
        /// The worker.
        id: WorkerId,
        /// Its pid.
        pid: Pid,
        /// Its slot.
        slot: Slot,
        /// Why: its age, its memory, or its own request.
        reason: Reason,
    },
    /// A slot is held back after repeated quick deaths.
    Backoff {
        /// The slot.
        slot: Slot,
        /// How long before its next spawn.
        delay: Duration,
    },
    /// A burst of TTIN or TTOU began: the spawns it leads to wait until the signals pause
    /// for `quiet`, at most `at_most` after this one, so that the master takes each signal
    /// of the burst instead of spawning between them (the kernel merges a signal that comes
    /// while one of its kind is still pending).
    SpawnsHeld {
        /// How long without another scale signal ends the burst.
        quiet: Duration,
        /// The longest the spawns wait.
        at_most: Duration,
    },
    /// A run of spawns was cut after `spawned` of them ([`crate::SPAWN_ROUND`]): the rest go
    /// out in the next round, after the shell has turned its loop once (signals, control and
    /// metrics requests, notify sockets are taken between rounds).
    SpawnRoundCut {
        /// How many spawns this round asked for.
        spawned: usize,
    },
    /// The target number of workers changed (gunicorn's `nworkers_changed`).
    TargetChanged {
        /// The old target.
        from: usize,
        /// The new target.
        to: usize,
        /// Why: scale up (TTIN), cull (TTOU), requested (`ctl scale`), reload, winch.
        reason: Reason,
    },
    /// A child the master does not know (an orphan, when running as PID 1) was reaped.
    OrphanReaped {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: ExitStatus,
    },
    /// A rolling reload began.
    ReloadStarted {
        /// The new generation.
        generation: u64,
    },
    /// Every worker is of the current generation again.
    ReloadFinished {
        /// The generation now serving.
        generation: u64,
    },
    /// The configuration re-read for a reload was invalid; the running one is kept.
    ConfigRejected {
        /// What the shell reported.
        error: String,
    },
    /// The re-exec'd master (USR2) exited.
    ReexecExited {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: ExitStatus,
    },
    /// The new master of an upgrade (USR2) could not be started; this master goes on.
    ReexecFailed,
    /// This master's parent master exited: it is the master now.
    Promoted,
    /// A graceful stop began with a drain: the master reports not ready and keeps serving
    /// with every listener open for `delay` (`shutdown_delay`), then stops.
    DrainStarted {
        /// How long.
        delay: Duration,
    },
    /// The drain is over and the stop begins: at its end, or `early`, cut short by another
    /// stop order (a second TERM, INT, QUIT, `ctl stop`).
    DrainOver {
        /// Cut short.
        early: bool,
    },
    /// A signal was declined.
    SignalRefused {
        /// The signal.
        signal: Signal,
        /// Why.
        why: Refusal,
    },
    /// A control command was declined.
    CommandRefused {
        /// The command.
        command: Command,
        /// Why.
        why: Refusal,
    },
    /// The worker command could not be run.
    SpawnFailed {
        /// The slot it was for.
        slot: Slot,
        /// What the shell reported.
        error: String,
    },
    /// A pidfile write or rename after the start failed; the master keeps running.
    PidfileFailed {
        /// Whether it was `PIDFILE.2` (or its promotion).
        upgrade_child: bool,
        /// What the shell reported.
        error: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::WorkerExited {
                id,
                pid,
                slot,
                status,
                expected,
                cause,
            } => {
                let expected = if *expected { "expected" } else { "unexpected" };
                write!(
                    f,
                    "worker {id} (pid {pid}, slot {slot}) {status}: {cause}, {expected}"
                )
            }
            Event::WorkerSpawned {
                id,
                pid,
                slot,
                generation,
            } => write!(
                f,
                "worker {id} (pid {pid}) spawned in slot {slot}, generation {generation}"
            ),
            Event::WorkerReady { id, pid } => write!(f, "worker {id} (pid {pid}) is ready"),
            Event::Recycling {
                id,
                pid,
                slot,
                reason,
            } => write!(
                f,
                "worker {id} (pid {pid}, slot {slot}) is replaced before it retires: {reason}"
            ),
            Event::Backoff { slot, delay } => {
                write!(f, "slot {slot} backs off for {delay:?}")
            }
            Event::SpawnsHeld { quiet, at_most } => write!(
                f,
                "spawns wait until the scale signals pause for {quiet:?} (at most {at_most:?})"
            ),
            Event::SpawnRoundCut { spawned } => write!(
                f,
                "{spawned} spawns this round; the rest after the loop takes its inputs"
            ),
            Event::TargetChanged { from, to, reason } => {
                write!(f, "target {from} -> {to}: {reason}")
            }
            Event::OrphanReaped { pid, status } => write!(f, "orphan {pid} reaped: {status}"),
            Event::ReloadStarted { generation } => write!(f, "reload to generation {generation}"),
            Event::ReloadFinished { generation } => {
                write!(f, "reload finished: generation {generation} serving")
            }
            Event::ConfigRejected { error } => {
                write!(f, "configuration rejected: {}", error.escape_debug())
            }
            Event::ReexecExited { pid, status } => write!(f, "new master {pid} {status}"),
            Event::ReexecFailed => f.write_str("the new master could not be started"),
            Event::Promoted => f.write_str("promoted"),
            Event::DrainStarted { delay } => {
                write!(f, "draining for {delay:?}: not ready, still serving")
            }
            Event::DrainOver { early: false } => f.write_str("drain over: stopping"),
            Event::DrainOver { early: true } => {
                f.write_str("drain cut short by another stop order: stopping")
            }
            // gunicorn's words: "USR2 signal ignored. Child exists.", "SIGWINCH ignored. Not
            // daemonized".
            Event::SignalRefused {
                signal: Signal::Usr2,
                why,
            } => write!(f, "USR2 signal ignored. {why}"),
            Event::SignalRefused { signal, why } => write!(f, "{signal} ignored. {why}"),
            Event::CommandRefused { command, why } => write!(f, "{command} refused. {why}"),
            Event::SpawnFailed { slot, error } => {
                write!(f, "spawn in slot {slot} failed: {}", error.escape_debug())
            }
            Event::PidfileFailed {
                upgrade_child,
                error,
            } => {
                let which = if *upgrade_child {
                    "PIDFILE.2"
                } else {
                    "PIDFILE"
                };
                write!(f, "{which} failed: {}", error.escape_debug())
            }
        }
    }
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fork and exec a worker, then report `handle_spawned` or `handle_spawn_failed`.
    Spawn {
        /// Its id.
        id: WorkerId,
        /// Its slot.
        slot: Slot,
        /// Its generation (reload count).
        generation: u64,
        /// The GPUs of its slot (empty without GPU balancing).
        gpus: Vec<String>,
        /// Why.
        reason: Reason,
    },
    /// Send a signal to a live worker (`group`: to its whole process group).
    Signal {
        /// The worker.
        id: WorkerId,
        /// Its pid (also its process group id).
        pid: Pid,
        /// The signal.
        signal: Signal,
        /// Whether to signal the process group rather than the process.
        group: bool,
        /// Why.
        reason: Reason,
    },
    /// SIGKILL the process group of a worker whose exit was just reported. The worker is
    /// still a zombie (the shell peeked at its exit without reaping), so its pid, which is
    /// also the group's id, cannot have been reused: the kill is race-free. Always followed
    /// by the [`Action::Reap`] of the same pid.
    KillGroup {
        /// The worker.
        id: WorkerId,
        /// Its pid and process group id.
        pid: Pid,
        /// Why ([`Reason::WorkerExited`]).
        reason: Reason,
    },
    /// Reap the child whose exit was reported (`waitpid`). Every reported exit gets one,
    /// after any [`Action::KillGroup`] for it, even after [`Action::Exit`].
    Reap {
        /// The child.
        pid: Pid,
    },
    /// Per-slot listeners ([`crate::Config::slot_listeners`]): hold listeners for slots
    /// `0..open` (create the missing ones in slot order, close those above from the top,
    /// since the kernel renumbers a reuse-port group when a middle socket closes), and steer
    /// new connections to slots `0..steer` only. A slot is closed only once no worker of it
    /// is left.
    SlotListeners {
        /// Slots with listeners.
        open: usize,
        /// Slots that get new connections (at most `open`).
        steer: usize,
        /// Why: a target change, a drained slot, the first workers.
        reason: Reason,
    },
    /// Per-slot listeners: look whether connections wait in the accept queues of slots
    /// `from..to` (draining, no new connection steered to them) and report how many queues
    /// hold some with [`crate::Arbiter::handle_slot_queues`].
    CheckSlotQueues {
        /// The first draining slot.
        from: usize,
        /// One past the last.
        to: usize,
    },
    /// Close the listening sockets (a stop began). `unlink` is false while an upgrade is
    /// under way in either direction; the shell adds its own rules (systemd, reuse-port).
    CloseListeners {
        /// Whether unix socket files may be unlinked.
        unlink: bool,
    },
    /// Re-read and validate the configuration (binding any new address), then report
    /// `handle_reload` with it or `handle_config_failed`.
    LoadConfig {
        /// Why ([`Reason::Reload`]).
        reason: Reason,
    },
    /// Write the pidfile (`upgrade_child`: at `PIDFILE.2`), then report
    /// `handle_pidfile_written` or `handle_pidfile_failed`.
    WritePidfile {
        /// Write `PIDFILE.2`: this master is a not-yet-promoted upgrade child.
        upgrade_child: bool,
        /// Why: boot (a fresh master, before anything is spawned), upgrade ready (an
        /// upgrade child's workers are ready), promoted (before `PIDFILE.2` was written).
        reason: Reason,
    },
    /// Rename `PIDFILE.2` to `PIDFILE` (promotion), then report `handle_pidfile_written` or
    /// `handle_pidfile_failed`.
    PromotePidfile,
    /// Fork and exec a new master with the listeners; report `handle_reexec_spawned` or
    /// `handle_reexec_failed`.
    ReExec,
    /// Reopen log files.
    ReopenLogs,
    /// Measure the resident memory of each of these workers' process groups and report it
    /// with `handle_memory` (every `memory_sample_every` while a memory limit is set).
    SampleMemory {
        /// The running workers' pids (each also its process group id).
        pids: Vec<Pid>,
        /// Why ([`Reason::MemoryLimit`]).
        reason: Reason,
    },
    /// Tell the service manager.
    Notify(SupervisorNote),
    /// Log this.
    Event(Event),
    /// Exit the master with this code. The last action (only [`Action::Reap`]s may follow).
    Exit {
        /// The exit code.
        code: i32,
        /// Why.
        reason: Reason,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Spawn {
                id,
                slot,
                generation,
                gpus,
                reason,
            } => {
                write!(
                    f,
                    "spawn worker {id} in slot {slot}, generation {generation}"
                )?;
                if !gpus.is_empty() {
                    write!(f, ", gpus {}", gpus.join(","))?;
                }
                write!(f, ": {reason}")
            }
            Action::Signal {
                id,
                pid,
                signal,
                group,
                reason,
            } => {
                let to = if *group { "group of worker" } else { "worker" };
                write!(f, "send {signal} to {to} {id} (pid {pid}): {reason}")
            }
            Action::KillGroup { id, pid, reason } => {
                write!(f, "kill the group of worker {id} (pid {pid}): {reason}")
            }
            Action::Reap { pid } => write!(f, "reap {pid}"),
            Action::SlotListeners {
                open,
                steer,
                reason,
            } => write!(
                f,
                "hold listeners for slots 0..{open}, new connections to 0..{steer}: {reason}"
            ),
            Action::CheckSlotQueues { from, to } => {
                write!(f, "count the connections queued on slots {from}..{to}")
            }
            Action::CloseListeners { unlink } => {
                let how = if *unlink { "unlinking" } else { "keeping" };
                write!(f, "close listeners, {how} socket files")
            }
            Action::LoadConfig { reason } => write!(f, "load the configuration: {reason}"),
            Action::WritePidfile {
                upgrade_child,
                reason,
            } => {
                let which = if *upgrade_child {
                    "PIDFILE.2"
                } else {
                    "PIDFILE"
                };
                write!(f, "write {which}: {reason}")
            }
            Action::PromotePidfile => {
                write!(f, "rename PIDFILE.2 to PIDFILE: {}", Reason::Promoted)
            }
            Action::ReExec => write!(f, "re-exec a new master: {}", Reason::Upgrade),
            Action::ReopenLogs => write!(f, "reopen logs: {}", Reason::ReopenLogs),
            Action::SampleMemory { pids, reason } => {
                write!(f, "sample the memory of {} workers: {reason}", pids.len())
            }
            Action::Notify(note) => write!(f, "notify the service manager: {note}"),
            Action::Event(event) => write!(f, "event: {event}"),
            Action::Exit { code, reason } => write!(f, "exit {code}: {reason}"),
        }
    }
}
