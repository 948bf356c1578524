//! The annotated arbiter (seed version 4, `--log-level trace`): every input the runtime feeds
//! the core and every action the core hands back, one `TRACE` line each, with its reason.
//!
//! Model: [`Core`] is the only way the runtime reaches the core's inputs and actions. It
//! derefs to the [`Arbiter`] for reading (phase, workers, deadlines) but not for writing, so
//! every input (the `handle_*` shorthands all lead to [`Core::handle`]) and every
//! [`Core::poll_action`] result passes through here, and the trace is the core's own
//! `Display` of its inputs and actions, never a line written per call site. A line about a
//! worker carries its pid ([`WORKER_PID`]) and so takes the worker's colour.
//!
//! Invariants: tracing never changes what is fed or returned; with tracing off nothing is
//! formatted. Two annotations come from the core's observers rather than the input or action
//! itself: the deadline a timeout is for, and, for a reload's retirement of an old worker, the
//! ready new worker of its slot that allows it.

use std::ops::Deref;

use arbiter_core::{
    Action, Arbiter, Command, Config, Event, ExitStatus, Input, Moment, Pid, Reason, Signal,
    WorkerId, WorkerState,
};
use slog::{trace, Logger};

use super::log::WORKER_PID;

/// The core, with every input and action traced.
pub struct Core {
    arbiter: Arbiter,
    log: Logger,
    enabled: bool,
    /// The last exit fed that was a worker's, so its `Reap` is coloured as the worker.
    exited_worker: Option<Pid>,
}

impl Deref for Core {
    type Target = Arbiter;

    fn deref(&self) -> &Arbiter {
        &self.arbiter
    }
}

impl Core {
    /// Wraps `arbiter`; traces to `log` when `enabled` (the log level is `trace`).
    pub fn new(arbiter: Arbiter, log: Logger, enabled: bool) -> Core {
        if enabled {
            trace!(log, "start: {} workers", arbiter.target());
        }
        Core {
            arbiter,
            log,
            enabled,
            exited_worker: None,
        }
    }

    /// After a reload replaced the logger.
    pub fn set_log(&mut self, log: Logger, enabled: bool) {
        self.log = log;
        self.enabled = enabled;
    }

    /// Any input, traced, then handed to the core.
    pub fn handle(&mut self, input: Input, now: Moment) {
        if let Input::Exited { pid, .. } = input {
            self.exited_worker = self.arbiter.worker_by_pid(pid).map(|_| pid);
        }
        if self.enabled {
            let due = match input {
                Input::Timeout => self
                    .arbiter
                    .next_deadline()
                    .map(|(_, timer)| format!(" ({timer})")),
                _ => None,
            };
            let due = due.unwrap_or_default();
            trace!(self.log, "input: {input}{due}"; WORKER_PID => input_pid(&input));
        }
        self.arbiter.handle(input, now);
    }

    /// The next action, traced.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.arbiter.poll_action()?;
        if self.enabled {
            let why = self.roll_step(&action).unwrap_or_default();
            let pid = match action {
                Action::Reap { pid } => self.exited_worker.filter(|w| *w == pid),
                _ => action_pid(&action),
            };
            trace!(self.log, "action: {action}{why}"; WORKER_PID => pid);
        }
        Some(action)
    }

    /// For a reload's (or a recycle's) retirement of an old worker: the ready new worker of
    /// its slot that allows it (the roll's rule), from the core's table.
    fn roll_step(&self, action: &Action) -> Option<String> {
        let Action::Signal { id, reason, .. } = action else {
            return None;
        };
        if *reason != Reason::Reload && !reason.is_recycle() {
            return None;
        }
        let slot = self.arbiter.workers().find(|w| w.id == *id)?.slot;
        let generation = self.arbiter.generation();
        let new = self.arbiter.workers().find(|w| {
            w.slot == slot
                && w.id != *id
                && w.generation == generation
                && w.state == WorkerState::Ready
                && w.recycle.is_none()
        })?;
        Some(format!(
            ", slot {slot} has ready worker {} of generation {generation}",
            new.id
        ))
    }

    // The core's shorthands, each leading to `handle` (time is ignored by the core for the
    // inputs whose shorthand takes none).

    /// [`Input::Signal`].
    pub fn handle_signal(&mut self, signal: Signal, now: Moment) {
        self.handle(Input::Signal(signal), now);
    }

    /// [`Input::Reload`].
    pub fn handle_reload(&mut self, config: Config, now: Moment) {
        self.handle(Input::Reload(Box::new(config)), now);
    }

    /// [`Input::ConfigFailed`].
    pub fn handle_config_failed(&mut self, error: String, now: Moment) {
        self.handle(Input::ConfigFailed { error }, now);
    }

    /// [`Input::Command`].
    pub fn handle_command(&mut self, command: Command, now: Moment) {
        self.handle(Input::Command(command), now);
    }

    /// [`Input::Spawned`].
    pub fn handle_spawned(&mut self, id: WorkerId, pid: Pid, now: Moment) {
        self.handle(Input::Spawned { id, pid }, now);
    }

    /// [`Input::SpawnFailed`].
    pub fn handle_spawn_failed(&mut self, id: WorkerId, error: String, now: Moment) {
        self.handle(Input::SpawnFailed { id, error }, now);
    }

    /// [`Input::Exited`].
    pub fn handle_exit(&mut self, pid: Pid, status: ExitStatus, now: Moment) {
        self.handle(Input::Exited { pid, status }, now);
    }

    /// [`Input::Ready`].
    pub fn handle_ready(&mut self, pid: Pid, now: Moment) {
        self.handle(Input::Ready { pid }, now);
    }

    /// [`Input::Heartbeat`].
    pub fn handle_heartbeat(&mut self, pid: Pid, at: Moment) {
        self.handle(Input::Heartbeat { pid, at }, at);
    }

    /// [`Input::Memory`].
    pub fn handle_memory(&mut self, pid: Pid, bytes: u64, now: Moment) {
        self.handle(Input::Memory { pid, bytes }, now);
    }

    /// [`Input::RecycleRequested`].
    pub fn handle_recycle_request(&mut self, pid: Pid, now: Moment) {
        self.handle(Input::RecycleRequested { pid }, now);
    }

    /// [`Input::Status`].
    pub fn handle_status(&mut self, pid: Pid, text: String) {
        self.handle(Input::Status { pid, text }, Moment::ZERO);
    }

    /// [`Input::ReexecSpawned`].
    pub fn handle_reexec_spawned(&mut self, pid: Pid) {
        self.handle(Input::ReexecSpawned { pid }, Moment::ZERO);
    }

    /// [`Input::ReexecFailed`].
    pub fn handle_reexec_failed(&mut self) {
        self.handle(Input::ReexecFailed, Moment::ZERO);
    }

    /// [`Input::ParentExited`].
    pub fn handle_parent_exited(&mut self, now: Moment) {
        self.handle(Input::ParentExited, now);
    }

    /// [`Input::PidfileWritten`].
    pub fn handle_pidfile_written(&mut self, now: Moment) {
        self.handle(Input::PidfileWritten, now);
    }

    /// [`Input::PidfileFailed`].
    pub fn handle_pidfile_failed(&mut self, error: String, now: Moment) {
        self.handle(Input::PidfileFailed { error }, now);
    }

    /// [`Input::SlotQueues`].
    pub fn handle_slot_queues(&mut self, queued: u64, now: Moment) {
        self.handle(Input::SlotQueues { queued }, now);
    }

    /// [`Input::Timeout`].
    pub fn handle_timeout(&mut self, now: Moment) {
        self.handle(Input::Timeout, now);
    }
}

/// The worker an input is about, for its colour.
fn input_pid(input: &Input) -> Option<Pid> {
    match *input {
        Input::Spawned { pid, .. }
        | Input::Exited { pid, .. }
        | Input::Ready { pid }
        | Input::Heartbeat { pid, .. }
        | Input::Status { pid, .. }
        | Input::Command(Command::KillWorker(pid)) => Some(pid),
        _ => None,
    }
}

/// The worker an action is about, for its colour.
fn action_pid(action: &Action) -> Option<Pid> {
    match action {
        Action::Signal { pid, .. } | Action::KillGroup { pid, .. } => Some(*pid),
        Action::Event(Event::WorkerExited { pid, .. } | Event::WorkerReady { pid, .. }) => {
            Some(*pid)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ColorChoice, LogFormat, LogLevel};
    use crate::runtime::log::LogOutput;
    use arbiter_core::Role;

    /// Drives a wrapped core; returns the log written at `level`.
    fn drive(level: LogLevel) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let output = LogOutput::open(Some(&path), LogFormat::Text, level)
            .unwrap()
            .with_colour(ColorChoice::Always, false);
        let config = arbiter_core::Config {
            workers: 1,
            ..arbiter_core::Config::default()
        };
        let arbiter = Arbiter::new(config, Role::Fresh, Moment::ZERO);
        let mut core = Core::new(arbiter, output.logger(), output.traces());
        let mut next_pid = 100;
        let mut run = |core: &mut Core| {
            while let Some(action) = core.poll_action() {
                if let Action::Spawn { id, .. } = action {
                    next_pid += 1;
                    core.handle_spawned(id, next_pid, Moment::ZERO);
                }
            }
        };
        run(&mut core);
        core.handle_signal(Signal::Ttin, Moment::ZERO);
        run(&mut core);
        // The spawn waits until the burst of scale signals has settled.
        core.handle_timeout(Moment::ZERO + arbiter_core::SCALE_SETTLE);
        run(&mut core);
        core.handle_exit(102, ExitStatus::Exited(0), Moment::ZERO);
        run(&mut core);
        std::fs::read_to_string(&path).unwrap()
    }

    #[test]
    fn every_input_and_action_is_one_trace_line_and_worker_lines_are_coloured() {
        let log = drive(LogLevel::Trace);
        let lines: Vec<&str> = log.lines().collect();
        let find = |needle: &str| {
            *lines
                .iter()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
        };
        find("[TRACE] start: 1 workers");
        find("[TRACE] action: spawn worker 1 in slot 0, generation 0: boot");
        find("[TRACE] input: signal SIGTTIN");
        find("[TRACE] action: event: target 1 -> 2: scale up");
        find(&format!(
            "[TRACE] action: event: spawns wait until the scale signals pause for {:?}",
            arbiter_core::SCALE_SETTLE
        ));
        find("[TRACE] input: deadline passed (end of a burst of scale signals)");
        find("[TRACE] action: spawn worker 2 in slot 1, generation 0: scale up");
        // Lines about worker 2 (pid 102) are in its colour, pid 102 % 5 = 2: blue.
        for needle in [
            "[TRACE] input: worker 2 spawned as pid 102",
            "[TRACE] input: pid 102 exited 0",
            "[TRACE] action: reap 102",
        ] {
            let line = find(needle);
            assert!(line.starts_with("\x1b[34m"), "{line:?}");
        }
        assert!(!find("input: signal SIGTTIN").contains('\x1b'));
    }

    #[test]
    fn nothing_is_traced_below_the_trace_level() {
        assert!(!drive(LogLevel::Debug).contains("TRACE"));
    }
}
