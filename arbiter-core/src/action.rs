//! What the core asks the shell to do, and why.

use std::fmt;
use std::time::Duration;

use crate::types::{ExitStatus, Pid, Signal, Slot, WorkerId};

/// Why the core decided something. The shell logs it; the core never logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first workers of this master.
    Boot,
    /// Replacing a worker that exited.
    Respawn,
    /// A larger target (TTIN, `ctl scale`).
    ScaleUp,
    /// More workers than the target (TTOU, `ctl scale`).
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
    /// An explicit order (`ctl kill-worker`).
    Requested,
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
        })
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
    },
    /// A worker became ready.
    WorkerReady {
        /// The worker.
        id: WorkerId,
        /// Its pid.
        pid: Pid,
    },
    /// A slot is held back after repeated quick deaths.
    Backoff {
        /// The slot.
        slot: Slot,
        /// How long before its next spawn.
        delay: Duration,
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
    /// The re-exec'd master (USR2) exited.
    ReexecExited {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: ExitStatus,
    },
    /// USR2 was refused.
    UpgradeRefused {
        /// Why, in the seed's words.
        why: &'static str,
    },
    /// This master's parent master exited: it is the master now.
    Promoted,
    /// A signal was ignored.
    SignalIgnored {
        /// The signal.
        signal: Signal,
        /// Why.
        why: &'static str,
    },
    /// The worker command could not be run.
    SpawnFailed {
        /// The slot it was for.
        slot: Slot,
        /// What the shell reported.
        error: String,
    },
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
    /// Send a signal to a worker (`group`: to its whole process group).
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
    /// Close the listening sockets (a stop began). `unlink` is false while an upgrade is
    /// under way in either direction; the shell adds its own rules (systemd, reuse-port).
    CloseListeners {
        /// Whether unix socket files may be unlinked.
        unlink: bool,
    },
    /// Write the pidfile (`upgrade_child`: at `PIDFILE.2`).
    WritePidfile {
        /// This master is a not-yet-promoted upgrade child.
        upgrade_child: bool,
    },
    /// Rename `PIDFILE.2` to `PIDFILE` (promotion).
    PromotePidfile,
    /// Fork and exec a new master with the listeners; report `handle_reexec_spawned` or
    /// `handle_reexec_failed`.
    ReExec,
    /// Reopen log files.
    ReopenLogs,
    /// Tell the service manager.
    Notify(SupervisorNote),
    /// Log this.
    Event(Event),
    /// Exit the master with this code. The last action.
    Exit {
        /// The exit code.
        code: i32,
        /// Why.
        reason: Reason,
    },
}
