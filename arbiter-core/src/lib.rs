//! `arbiter-core`: the pure, sans-IO state machine of a pre-fork process arbiter.
//!
//! It decides everything gunicorn's `Arbiter` decides (how many workers, which to spawn,
//! which to stop and with which signal, when a worker is hung, when a reload may retire an
//! old worker, when to exit and with which code) and does none of it: the shell feeds it
//! inputs stamped with a [`Moment`], drains [`Action`]s, and sleeps until
//! [`Arbiter::poll_timeout`]. The model is quinn-proto's `Connection`.
//!
//! Every input is an [`Input`] and every output an [`Action`]; both print as one line (with
//! the [`Reason`] of each decision and the [`Refusal`] of each declined input), so a shell can
//! trace them. Deadlines are named, one [`Timer`] per kind; the next wake-up is their minimum.
//!
//! Invariants: no syscalls, no clock, no logging, no `unsafe`; every decision carries a
//! [`Reason`]; deadlines are exact (no polling tick); no signal is emitted for a pid whose
//! exit was reported (the one group kill that comes with the report happens while the pid is
//! a zombie). Limits: the table is sized for tens of thousands of workers; an input costs
//! O(log N) per slot it changes (a change of target costs as much per slot it moves over; a
//! HUP or a stop costs O(N) once); the counts observers read (ready, active) and the slots
//! waiting for a spawn are kept, not counted ([`Arbiter::check_indexes`] recounts them).
//!
//! ```
//! use arbiter_core::{Action, Arbiter, Config, Moment, Role};
//! let mut arbiter = Arbiter::new(Config { workers: 2, ..Config::default() }, Role::Fresh, Moment::ZERO);
//! let mut spawns = 0;
//! while let Some(action) = arbiter.poll_action() {
//!     if let Action::Spawn { id, .. } = action {
//!         spawns += 1;
//!         arbiter.handle_spawned(id, 100 + spawns, Moment::ZERO);
//!     }
//! }
//! assert_eq!(spawns, 2);
//! ```
#![forbid(unsafe_code)]

mod action;
mod arbiter;
mod input;
pub mod notify;
mod time;
mod timers;
mod types;
mod worker;

/// The most workers one master runs: the target never rises above it (`--workers`, a scale
/// order and TTIN are refused beyond it). It is ten times the largest size measured, and far
/// below what would exhaust the master's memory for its tables.
pub const MAX_WORKERS: usize = 100_000;

pub use action::{Action, Event, ExitCause, Reason, Refusal, SupervisorNote};
pub use arbiter::{
    backoff_delay, Arbiter, Phase, BACKOFF_CAP, QUICK_DEATH, REAP_GRACE, SCALE_SETTLE,
    SCALE_SETTLE_CAP, SPAWN_ROUND, START_EXTENSION, START_EXTENSION_EVERY,
};
pub use arbiter_gpu::GpuConfig;
pub use input::Input;
pub use time::Moment;
pub use timers::Timer;
pub use types::{
    BootErrorPolicy, Command, Config, ExitStatus, Pid, ReadyMode, Role, Signal, Slot, WorkerId,
    SLOT_DRAIN, SLOT_DRAIN_POLL,
};
pub use worker::{Worker, WorkerState};
