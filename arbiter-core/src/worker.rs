//! The worker table's rows.

use crate::action::Reason;
use crate::time::Moment;
use crate::types::{Pid, Slot, WorkerId};

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// A spawn was requested; no pid yet.
    Spawning,
    /// Running, not ready yet.
    Booting,
    /// Ready: counts as serving capacity.
    Ready,
    /// Asked to stop (TERM or the quick signal); KILL at its deadline.
    Retiring,
    /// Sent the abort signal after a timeout; KILL at its deadline.
    Aborted,
    /// Sent KILL; waiting to be reaped.
    Killed,
}

impl WorkerState {
    /// Whether the worker is meant to keep running (not being stopped).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            WorkerState::Spawning | WorkerState::Booting | WorkerState::Ready
        )
    }

    /// Lower-case name for status output.
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Spawning => "spawning",
            WorkerState::Booting => "booting",
            WorkerState::Ready => "ready",
            WorkerState::Retiring => "retiring",
            WorkerState::Aborted => "aborted",
            WorkerState::Killed => "killed",
        }
    }
}

/// One worker process as the arbiter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    /// Its age, never reused.
    pub id: WorkerId,
    /// Its stable slot.
    pub slot: Slot,
    /// The reload generation it belongs to.
    pub generation: u64,
    /// Its pid, once spawned.
    pub pid: Option<Pid>,
    /// Where it is in its life.
    pub state: WorkerState,
    /// When the spawn was requested, then when it was exec'd.
    pub spawned_at: Moment,
    /// When it became ready.
    pub ready_at: Option<Moment>,
    /// Its latest sign of life on the protocol (heartbeat file or `WATCHDOG=1`).
    pub last_heartbeat: Option<Moment>,
    /// Whether readiness waits for `READY=1`.
    pub awaits_ready: bool,
    /// The command line identity it was spawned with.
    pub command_key: u64,
    /// Its GPUs.
    pub gpus: Vec<String>,
    /// The last `STATUS=` text it sent.
    pub status: Option<String>,
    /// When it is killed if still there (retiring or aborted).
    pub kill_at: Option<Moment>,
    /// Why it is being stopped, if it is.
    pub stop_reason: Option<Reason>,
    /// Why it is being recycled, once it is: its slot gets a replacement, and it is retired
    /// once that replacement is ready.
    pub recycle: Option<Reason>,
    /// When it reaches its maximum age (fixed at its exec, on its slot's schedule).
    pub recycle_at: Option<Moment>,
    /// A recycle asked for and not started yet: it starts once the worker is its slot's
    /// ready current worker (a replacement first finishes replacing).
    pub recycle_pending: Option<Reason>,
}
