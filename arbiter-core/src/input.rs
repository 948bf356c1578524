//! Every input the arbiter takes, as data: [`crate::Arbiter::handle`] takes one, and each
//! prints as one line, so a shell can trace what it feeds the core next to the actions it
//! gets back.

use std::fmt;

use crate::time::Moment;
use crate::types::{Command, Config, ExitStatus, Pid, Signal, WorkerId};

/// One input to the arbiter; the `handle_*` methods are shorthands for these.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A signal reached the master.
    Signal(Signal),
    /// A control command.
    Command(Command),
    /// The configuration re-read for a reload ([`crate::Action::LoadConfig`]), valid.
    Reload(Box<Config>),
    /// The configuration re-read for a reload could not be used.
    ConfigFailed {
        /// Why.
        error: String,
    },
    /// The worker `id` was forked and exec'd as `pid`.
    Spawned {
        /// The worker.
        id: WorkerId,
        /// Its pid.
        pid: Pid,
    },
    /// The worker `id` could not be started.
    SpawnFailed {
        /// The worker.
        id: WorkerId,
        /// Why.
        error: String,
    },
    /// A child exited; it is still a zombie until the [`crate::Action::Reap`] for it.
    Exited {
        /// The child.
        pid: Pid,
        /// How it ended.
        status: ExitStatus,
    },
    /// A worker (by pid) sent `READY=1`.
    Ready {
        /// The worker.
        pid: Pid,
    },
    /// A worker (by pid) showed a sign of life at `at`.
    Heartbeat {
        /// The worker.
        pid: Pid,
        /// When (a heartbeat file's change time may be earlier than now).
        at: Moment,
    },
    /// The resident memory of a worker's process group (by the worker's pid), sampled for
    /// [`crate::Action::SampleMemory`].
    Memory {
        /// The worker.
        pid: Pid,
        /// Bytes resident, summed over its process group.
        bytes: u64,
    },
    /// A worker (by pid) asked to be replaced (`X_ARBITER_RECYCLE=1`).
    RecycleRequested {
        /// The worker.
        pid: Pid,
    },
    /// A worker (by pid) sent `STATUS=...`.
    Status {
        /// The worker.
        pid: Pid,
        /// The text.
        text: String,
    },
    /// The new master of a USR2 was forked as `pid`.
    ReexecSpawned {
        /// Its pid.
        pid: Pid,
    },
    /// The new master of a USR2 could not be started.
    ReexecFailed,
    /// This master's parent master (it is an upgrade child) exited.
    ParentExited,
    /// The last pidfile action succeeded.
    PidfileWritten,
    /// The last pidfile action failed.
    PidfileFailed {
        /// Why.
        error: String,
    },
    /// Whether connections wait in the accept queues of the slots a
    /// [`crate::Action::CheckSlotQueues`] named: 0 when every one is empty, else how many of
    /// them hold connections (the shell polls each listener, which is O(1)).
    SlotQueues {
        /// Queues holding connections, all those slots together.
        queued: u64,
    },
    /// A deadline from [`crate::Arbiter::poll_timeout`] passed.
    Timeout,
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Signal(signal) => write!(f, "signal {signal}"),
            Input::Command(command) => write!(f, "command {command}"),
            Input::Reload(config) => write!(f, "configuration loaded: {} workers", config.workers),
            Input::ConfigFailed { error } => {
                write!(f, "configuration failed: {}", error.escape_debug())
            }
            Input::Spawned { id, pid } => write!(f, "worker {id} spawned as pid {pid}"),
            Input::SpawnFailed { id, error } => {
                write!(f, "worker {id} failed to spawn: {}", error.escape_debug())
            }
            Input::Exited { pid, status } => write!(f, "pid {pid} {status}"),
            Input::Ready { pid } => write!(f, "pid {pid} sent READY=1"),
            Input::Heartbeat { pid, at } => {
                write!(f, "pid {pid} heartbeat at {:?}", at.since_origin())
            }
            Input::Memory { pid, bytes } => write!(f, "pid {pid} group resident {bytes} bytes"),
            Input::RecycleRequested { pid } => write!(f, "pid {pid} sent X_ARBITER_RECYCLE=1"),
            Input::Status { pid, text } => write!(f, "pid {pid} status {}", text.escape_debug()),
            Input::ReexecSpawned { pid } => write!(f, "new master spawned as pid {pid}"),
            Input::ReexecFailed => f.write_str("new master failed to start"),
            Input::ParentExited => f.write_str("parent master exited"),
            Input::PidfileWritten => f.write_str("pidfile done"),
            Input::PidfileFailed { error } => {
                write!(f, "pidfile failed: {}", error.escape_debug())
            }
            Input::SlotQueues { queued } => {
                write!(f, "{queued} draining slot queue(s) hold connections")
            }
            Input::Timeout => f.write_str("deadline passed"),
        }
    }
}
