//! Carrying out the core's actions: spawning, signalling, group kills and reaps, pidfiles,
//! configuration loads, re-exec, notes to the service manager, and the log lines and hooks
//! of its events.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use arbiter_core::{
    Action, Event, ExitCause, ExitStatus, Reason, Signal, SupervisorNote, WorkerId,
};
use arbiter_sockets::{HandoffPlan, Listener, PidEnvSlot};
use nix::sys::signal::Signal as NixSignal;
use slog::{debug, error, info, warn, Logger};

use crate::config::{Hooks, Settings};
use crate::ops::capture::WorkerPipes;
use crate::os::hooks;
use crate::os::pidfile;
use crate::os::spawn::{self, MasterSpawn, WorkerSpawn};
use crate::runtime::log::WORKER_PID;
use crate::runtime::setup::{self, env_entry, WorkerCommand};

use super::{Heartbeat, Runtime, WorkerProc};
use crate::os::seam::Os;

/// How long the master waits for its `on_exit` hook.
const ON_EXIT_LIMIT: Duration = Duration::from_secs(5);

impl<O: Os> Runtime<O> {
    /// Starts the hook `name` if one is configured, without waiting; the loop reaps it.
    pub(super) fn fire_hook(&mut self, name: &'static str, vars: &[(&str, String)]) {
        let Some(command) = hook_command(&self.settings.hooks, name) else {
            return;
        };
        match self.os.start_hook(name, command, &self.master_env, vars) {
            Ok(pid) => {
                debug!(self.log, "Hook {name} started (pid:{pid})");
                self.hook_pids.insert(pid, name);
            }
            Err(e) => error!(self.log, "Hook {name} could not start: {e}"),
        }
    }

    /// Starts the hook `name` if one is configured, to be waited for (`on_exit`).
    fn start_waited_hook(&self, name: &'static str, vars: &[(&str, String)]) -> Option<Child> {
        let command = hook_command(&self.settings.hooks, name)?;
        match hooks::start(name, command, &self.master_env, vars) {
            Ok(child) => {
                debug!(self.log, "Hook {name} started (pid:{})", child.id());
                Some(child)
            }
            Err(e) => {
                error!(self.log, "Hook {name} could not start: {e}");
                None
            }
        }
    }

    pub(super) fn execute_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            self.execute(action);
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Spawn {
                id,
                slot,
                generation,
                gpus,
                reason,
            } => {
                let now = self.now();
                match self.spawn_worker(id, slot, &gpus) {
                    Ok(pid) => {
                        // gunicorn's words, plus the assignment when GPUs are balanced.
                        let placement = if gpus.is_empty() {
                            String::new()
                        } else {
                            format!(" (slot {slot}, gpus: {})", gpus.join(","))
                        };
                        info!(self.log, "Booting worker with pid: {pid}{placement}";
                            "slot" => slot, "id" => id.0, "generation" => generation,
                            "gpus" => gpus.join(","), "reason" => reason.to_string(),
                            WORKER_PID => pid);
                        self.core.handle_spawned(id, pid, now);
                        self.sync_urgency(id, pid);
                        self.read_notify_in_burst();
                    }
                    Err(e) => {
                        self.set_probe(id, None);
                        self.procs.remove(&id);
                        self.notify.close(id.0);
                        self.core.handle_spawn_failed(id, e.to_string(), now);
                    }
                }
            }
            Action::Signal {
                pid,
                signal,
                group,
                reason,
                ..
            } => {
                let log = self.log.new(slog::o!(WORKER_PID => pid));
                match reason {
                    Reason::HeartbeatTimeout => error!(log, "WORKER TIMEOUT (pid:{pid})"),
                    Reason::BootTimeout => error!(log, "WORKER BOOT TIMEOUT (pid:{pid})"),
                    _ if signal == Signal::Kill => {
                        warn!(log, "Killing worker (pid:{pid}) with SIGKILL: {reason}")
                    }
                    _ => debug!(log, "Sending {signal} to worker (pid:{pid}): {reason}"),
                }
                let target = if group { -pid } else { pid };
                if let Some(nix_signal) = nix_signal(signal) {
                    let _ = self.os.signal(target, nix_signal);
                }
            }
            Action::KillGroup { pid, .. } => {
                // The worker is a zombie still: its group id cannot have been reused.
                let _ = self.os.signal(-pid, NixSignal::SIGKILL);
            }
            Action::Reap { pid } => {
                self.os.reap(pid);
            }
            Action::SampleMemory { pids, .. } => {
                let resident = self.os.group_resident(&pids);
                let now = self.now();
                for pid in pids {
                    if let Some(&bytes) = resident.get(&pid) {
                        self.core.handle_memory(pid, bytes, now);
                    }
                }
            }
            Action::LoadConfig { .. } => {
                let now = self.now();
                self.reload(now);
            }
            Action::SlotListeners { open, steer, .. } => {
                self.slots.hold(&self.listeners, open, steer, &self.log);
            }
            Action::CheckSlotQueues { from, to } => {
                let queued = self.slots.queued(&self.listeners, from, to);
                let now = self.now();
                self.core.handle_slot_queues(queued, now);
            }
            Action::CloseListeners { unlink } => {
                let unlink = self.unlink_allowed(unlink);
                self.slots.close_all();
                arbiter_sockets::close_listeners(std::mem::take(&mut self.listeners), unlink);
            }
            Action::WritePidfile { upgrade_child, .. } => {
                let result = match &self.pidfile {
                    Some(path) if upgrade_child => {
                        write_pidfile(&mut self.os, &pidfile::upgrade_path(path), &self.log)
                    }
                    Some(path) => write_pidfile(&mut self.os, path, &self.log),
                    None => Ok(()),
                };
                self.report_pidfile(result.map_err(|e| e.to_string()));
            }
            Action::PromotePidfile => {
                let result = match &self.pidfile {
                    Some(path) => {
                        let from = pidfile::upgrade_path(path);
                        self.os
                            .rename_pidfile(&from, path, std::process::id())
                            .map_err(|e| format!("renaming {}: {e}", from.display()))
                    }
                    None => Ok(()),
                };
                self.report_pidfile(result);
            }
            Action::ReExec => self.reexec(),
            Action::ReopenLogs => {
                if let Err(e) = self.log_output.reopen() {
                    error!(self.log, "reopening the log file: {e}");
                }
            }
            Action::Notify(note) => {
                if note == SupervisorNote::Ready && !self.ready_hook_fired {
                    self.ready_hook_fired = true;
                    self.fire_hook("when_ready", &[]);
                }
                self.tell_supervisor(note)
            }
            Action::Event(event) => {
                self.follow_event(&event);
                let now = self.now();
                self.ops.on_event(&event, &self.log, now);
                self.log_event(event)
            }
            Action::Exit { code, reason } => {
                info!(self.log, "Shutting down: Master");
                if code != 0 || !matches!(reason, Reason::Shutdown | Reason::QuickShutdown) {
                    info!(self.log, "Reason: {reason}");
                }
                if code != 0 {
                    eprintln!("arbiter: {reason}");
                }
                self.remove_pidfile();
                self.ops.finish(&self.log);
                let vars = [("ARBITER_HOOK_EXIT_CODE", code.to_string())];
                if let Some(mut hook) = self.start_waited_hook("on_exit", &vars) {
                    if hooks::wait(&mut hook, ON_EXIT_LIMIT).is_none() {
                        warn!(
                            self.log,
                            "on_exit hook still running after {ON_EXIT_LIMIT:?}"
                        );
                    }
                }
                self.exit = Some(code);
            }
        }
    }

    fn spawn_worker(
        &mut self,
        id: WorkerId,
        slot: usize,
        gpus: &[String],
    ) -> Result<i32, spawn::SpawnError> {
        if self.function.is_some() {
            return self.spawn_function(id, slot, gpus);
        }
        let heartbeat = self
            .heartbeats
            .create(id.0)
            .map_err(spawn::SpawnError::Fork)?;
        let heartbeat_file = heartbeat.file().ok_or_else(|| {
            spawn::SpawnError::Fork(std::io::Error::other("heartbeat file closed"))
        })?;
        if let Some(identity) = &self.identity {
            // The worker bumps its heartbeat with fchmod, which only the file's owner may do.
            identity
                .give_file(heartbeat_file)
                .map_err(spawn::SpawnError::Prepare)?;
        }
        self.slots
            .ensure(&self.listeners, slot + 1)
            .map_err(|e| spawn::SpawnError::Fork(std::io::Error::other(e.to_string())))?;
        // The heartbeat file was opened at the lowest free number, above every worker's
        // notify socket: the worker gets a copy at a low number kept for it, so the child can
        // leave the master's other fds behind without copying them (`os::spawn`).
        let low = match self.low_heartbeat.as_mut() {
            Some(low) => {
                rustix::io::dup3(heartbeat_file, low, rustix::io::DupFlags::CLOEXEC)
                    .map_err(|e| spawn::SpawnError::Fork(e.into()))?;
                &*low
            }
            None => &*self.low_heartbeat.insert(
                rustix::io::fcntl_dupfd_cloexec(heartbeat_file, 0)
                    .map_err(|e| spawn::SpawnError::Fork(e.into()))?,
            ),
        };
        let listeners: Vec<&Listener> = self.slots.for_slot(&self.listeners, slot);
        let plan = HandoffPlan::new(&listeners, &[low.as_fd()])
            .map_err(|e| spawn::SpawnError::Fork(std::io::Error::other(e.to_string())))?;
        let heartbeat_fd = plan.extra_fd_targets().start;
        let base_env = self.worker_env.entries()?;
        let mut env = Vec::with_capacity(10);
        let mut add = |key: &str, value: &str| -> Result<(), spawn::SpawnError> {
            env.push(env_entry(key.as_bytes(), value.as_bytes())?);
            Ok(())
        };
        let notify_path = self.notify.open(id.0).map_err(spawn::SpawnError::Fork)?;
        if let Some(identity) = &self.identity {
            // The worker's group may send there, not rename or remove it.
            identity
                .share_path(&notify_path, 0o660)
                .map_err(spawn::SpawnError::Fork)?;
        }
        add("NOTIFY_SOCKET", &notify_path.to_string_lossy())?;
        add("ARBITER_HEARTBEAT_FD", &heartbeat_fd.to_string())?;
        add("ARBITER_WORKER_ID", &id.0.to_string())?;
        add("ARBITER_WORKER_SLOT", &slot.to_string())?;
        add(
            "SERVER_SOFTWARE",
            concat!("arbiter/", env!("CARGO_PKG_VERSION")),
        )?;
        if self.settings.gpus.is_some() {
            add(&self.settings.gpu_env, &gpus.join(","))?;
            add("ARBITER_GPU_ENV", &self.settings.gpu_env)?;
        }
        let watchdog_pid = match self.settings.timeout {
            Some(timeout) => {
                add("WATCHDOG_USEC", &timeout.as_micros().to_string())?;
                Some(PidEnvSlot::new("WATCHDOG_PID"))
            }
            None => None,
        };
        let pipes = self.ops.worker_pipes().map_err(spawn::SpawnError::Fork)?;
        let output_fds = pipes.as_ref().map(|p| p.child_fds());
        let (pid, exec) = self.os.spawn_worker(WorkerSpawn {
            program: &self.command.program,
            argv: &self.command.argv,
            base_env,
            env,
            plan,
            watchdog_pid,
            stdout_fd: output_fds.map(|fds| fds.0),
            stderr_fd: output_fds.map(|fds| fds.1),
            identity: self.identity.as_ref(),
        })?;
        self.track_spawned(id, slot, pid, heartbeat, exec, pipes);
        Ok(pid)
    }

    /// The shell's bookkeeping of a worker it just started, exec'd or forked alike (library
    /// mode): its output capture, its heartbeat file and its first-heartbeat probe.
    pub(super) fn track_spawned(
        &mut self,
        id: WorkerId,
        slot: usize,
        pid: i32,
        mut heartbeat: Heartbeat,
        exec: Option<spawn::ExecWatch>,
        pipes: Option<WorkerPipes>,
    ) {
        self.ops.capture_output(pid, slot, pipes);
        // The worker has its own fd on the file: the master looks at it by name.
        heartbeat.release();
        let probe_at = self.settings.timeout.map(|t| self.now() + t);
        self.procs.insert(
            id,
            WorkerProc {
                pid,
                heartbeat,
                probe_at: None,
                exec,
            },
        );
        self.set_probe(id, probe_at);
    }

    fn report_pidfile(&mut self, result: Result<(), String>) {
        let now = self.now();
        match result {
            Ok(()) => self.core.handle_pidfile_written(now),
            Err(e) => self.core.handle_pidfile_failed(e, now),
        }
    }

    /// What the shell itself does on an event: its own bookkeeping and the hooks.
    fn follow_event(&mut self, event: &Event) {
        match event {
            Event::WorkerExited {
                id,
                pid,
                slot,
                status,
                ..
            } => {
                self.set_probe(*id, None);
                self.notify.close(id.0);
                if let Some(proc) = self.procs.remove(id) {
                    if let Some(error) = proc.exec.as_ref().and_then(|exec| exec.failure()) {
                        error!(
                            self.log,
                            "cannot execute {}: {error}",
                            self.command.program.to_string_lossy();
                            WORKER_PID => *pid
                        );
                    }
                }
                let vars = [
                    ("ARBITER_HOOK_WORKER_PID", pid.to_string()),
                    ("ARBITER_HOOK_WORKER_SLOT", slot.to_string()),
                    ("ARBITER_HOOK_WORKER_STATUS", describe(*status)),
                ];
                self.fire_hook("worker_exit", &vars);
            }
            Event::TargetChanged { from, to, .. } => {
                let vars = [
                    ("ARBITER_HOOK_OLD", from.to_string()),
                    ("ARBITER_HOOK_NEW", to.to_string()),
                ];
                self.fire_hook("nworkers_changed", &vars);
            }
            Event::ReloadStarted { .. } => self.fire_hook("on_reload", &[]),
            Event::ConfigRejected { error } => {
                // The master never exits over a bad reload: it says so and keeps its config.
                eprintln!("arbiter: reload failed, keeping the running configuration: {error}");
            }
            Event::Promoted => {
                info!(self.log, "Master has been promoted.");
                set_title(&self.settings, &self.command, false);
            }
            _ => {}
        }
    }

    fn remove_pidfile(&mut self) {
        let Some(path) = &self.pidfile else {
            return;
        };
        let ours = std::process::id();
        if !self.os.remove_pidfile(path, ours) {
            self.os.remove_pidfile(&pidfile::upgrade_path(path), ours);
        }
    }

    fn reexec(&mut self) {
        let result = (|| -> Result<i32, String> {
            // Re-resolve the binary so a replaced file on disk is picked up.
            let exe =
                std::fs::canonicalize(self.exe.to_string_lossy().trim_end_matches(" (deleted)"))
                    .map_err(|e| format!("{}: {e}", self.exe.display()))?;
            let program = CString::new(exe.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
            let argv = self
                .argv
                .iter()
                .map(|a| CString::new(a.as_bytes()).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            let mut env = Vec::new();
            for (key, value) in &self.master_env {
                env.push(env_entry(key.as_bytes(), value.as_bytes()).map_err(|e| e.to_string())?);
            }
            // Slot 0's listeners first, in bind order, then each group's other slots in slot
            // order: the new master finds them by address in that order.
            let inherited: Vec<&Listener> = self
                .listeners
                .iter()
                .chain(self.slots.all(&self.listeners))
                .collect();
            for (key, value) in arbiter_sockets::reexec_env(inherited.iter().copied()) {
                env.push(env_entry(key.as_bytes(), value.as_bytes()).map_err(|e| e.to_string())?);
            }
            let keys: Vec<String> = self
                .core
                .notify_commands()
                .map(|k| format!("{k:x}"))
                .collect();
            if !keys.is_empty() {
                let value = keys.join(",");
                env.push(
                    env_entry(setup::NOTIFY_KEYS_VAR.as_bytes(), value.as_bytes())
                        .map_err(|e| e.to_string())?,
                );
            }
            let fds: Vec<BorrowedFd<'_>> = inherited.iter().map(|l| l.fd()).collect();
            let cwd =
                CString::new(self.start_dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
            self.os
                .spawn_master(MasterSpawn {
                    program: &program,
                    argv: &argv,
                    env: &env,
                    listener_fds: &fds,
                    cwd: &cwd,
                })
                .map_err(|e| e.to_string())
        })();
        match result {
            Ok(pid) => {
                info!(self.log, "Upgrading: started new master (pid:{pid})");
                self.core.handle_reexec_spawned(pid);
            }
            Err(e) => {
                error!(self.log, "Upgrade failed, keeping this master: {e}");
                self.core.handle_reexec_failed();
            }
        }
    }

    fn tell_supervisor(&self, note: SupervisorNote) {
        let Some(supervisor) = &self.supervisor else {
            return;
        };
        let message = match note {
            SupervisorNote::Ready => "READY=1".to_owned(),
            SupervisorNote::Reloading => {
                let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                    .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
                    .unwrap_or(0);
                format!("RELOADING=1\nMONOTONIC_USEC={usec}")
            }
            SupervisorNote::Stopping => "STOPPING=1".to_owned(),
            SupervisorNote::Status(text) => format!("STATUS={text}"),
            SupervisorNote::MainPid => format!("MAINPID={}", std::process::id()),
            SupervisorNote::HandOver(pid) => format!("MAINPID={pid}"),
            SupervisorNote::Watchdog => "WATCHDOG=1".to_owned(),
            extend @ SupervisorNote::ExtendTimeout(_) => extend.to_string(),
        };
        if let Err(e) = supervisor.send(&message) {
            debug!(self.log, "notify to the service manager failed: {e}");
        }
    }

    fn log_event(&self, event: Event) {
        let log = &match &event {
            Event::WorkerExited { pid, .. }
            | Event::WorkerReady { pid, .. }
            | Event::Recycling { pid, .. } => self.log.new(slog::o!(WORKER_PID => *pid)),
            _ => self.log.clone(),
        };
        match event {
            Event::WorkerExited {
                pid,
                slot,
                cause: ExitCause::Recycled,
                status,
                ..
            } => info!(log, "Worker recycled (pid: {pid}): {status}";
                "slot" => slot, "cause" => ExitCause::Recycled.name()),
            Event::WorkerExited {
                pid,
                status,
                expected,
                slot,
                ..
            } => match status {
                ExitStatus::Exited(0) => info!(log, "Worker exiting (pid: {pid})"; "slot" => slot),
                ExitStatus::Exited(code) => {
                    error!(log, "Worker (pid:{pid}) exited with code {code}"; "slot" => slot)
                }
                ExitStatus::Signaled { signal, .. }
                    if signal == ExitStatus::SIGKILL && !expected =>
                {
                    error!(log, "Worker (pid:{pid}) was sent SIGKILL! Perhaps out of memory?"; "slot" => slot)
                }
                ExitStatus::Signaled { signal, .. } => {
                    let name = NixSignal::try_from(signal)
                        .map(|s| s.as_str())
                        .unwrap_or("?");
                    if expected {
                        info!(log, "Worker (pid:{pid}) was sent {name}"; "slot" => slot)
                    } else {
                        error!(log, "Worker (pid:{pid}) was sent {name}!"; "slot" => slot)
                    }
                }
            },
            Event::WorkerReady { pid, .. } => debug!(log, "Worker (pid:{pid}) is ready"),
            Event::Recycling {
                pid, slot, reason, ..
            } => info!(log, "Recycling worker (pid:{pid}): {reason}; its replacement starts first";
                "slot" => slot, "reason" => reason.to_string()),
            Event::Backoff { slot, delay } => warn!(
                log,
                "Worker slot {slot} is crash-looping: next start in {:.1} s",
                delay.as_secs_f64()
            ),
            Event::OrphanReaped { pid, .. } => debug!(log, "Reaped orphan (pid:{pid})"),
            Event::ReloadStarted { generation } => info!(log, "Reloading: generation {generation}"),
            Event::ReloadFinished { generation } => {
                info!(log, "Reload finished: generation {generation} serving")
            }
            Event::ReexecExited { pid, status } => {
                warn!(log, "New master (pid:{pid}) exited: {status:?}")
            }
            refused @ Event::SignalRefused {
                signal: Signal::Usr2,
                ..
            } => warn!(log, "{refused}"),
            refused @ (Event::SignalRefused { .. } | Event::CommandRefused { .. }) => {
                info!(log, "{refused}")
            }
            Event::TargetChanged { from, to, reason } => {
                info!(log, "Workers: {from} -> {to} ({reason})")
            }
            Event::SpawnsHeld { quiet, at_most } => debug!(
                log,
                "Spawns wait until the scale signals pause for {quiet:?} (at most {at_most:?})"
            ),
            Event::SpawnRoundCut { spawned } => debug!(
                log,
                "{spawned} spawns this round; the rest after the loop takes its inputs"
            ),
            Event::ConfigRejected { error } => error!(
                log,
                "reload failed, keeping the running configuration: {error}"
            ),
            // Logged by the shell where it happens ("Booting worker with pid", "Upgrade
            // failed"); observers count them.
            Event::WorkerSpawned { .. } | Event::ReexecFailed => {}
            Event::Promoted => {}
            Event::DrainStarted { delay } => info!(
                log,
                "Draining for {}: not ready, still serving (TERM again to stop now)",
                humantime::format_duration(delay)
            ),
            Event::DrainOver { early: false } => info!(log, "Drain over"),
            Event::DrainOver { early: true } => info!(log, "Drain cut short"),
            Event::SpawnFailed { slot, error } => {
                error!(log, "Cannot start worker in slot {slot}: {error}")
            }
            Event::PidfileFailed { error, .. } => error!(log, "{error}"),
        }
    }
}

fn nix_signal(signal: Signal) -> Option<NixSignal> {
    Some(match signal {
        Signal::Hup => NixSignal::SIGHUP,
        Signal::Int => NixSignal::SIGINT,
        Signal::Quit => NixSignal::SIGQUIT,
        Signal::Term => NixSignal::SIGTERM,
        Signal::Kill => NixSignal::SIGKILL,
        Signal::Abrt => NixSignal::SIGABRT,
        Signal::Usr1 => NixSignal::SIGUSR1,
        Signal::Usr2 => NixSignal::SIGUSR2,
        Signal::Ttin => NixSignal::SIGTTIN,
        Signal::Ttou => NixSignal::SIGTTOU,
        Signal::Winch => NixSignal::SIGWINCH,
        Signal::Chld => return None,
    })
}

/// Writes the pidfile at `path` (atomically, refusing a live arbiter's, replacing a stale one).
pub(super) fn write_pidfile(
    os: &mut impl Os,
    path: &Path,
    log: &Logger,
) -> Result<(), pidfile::PidfileError> {
    match os.write_pidfile(path, std::process::id())? {
        pidfile::Previous::Stale(old) => warn!(
            log,
            "Replacing stale pidfile {} (held {old:?})",
            path.display()
        ),
        pidfile::Previous::None => {}
    }
    Ok(())
}

/// The process title: `master [NAME]` (`master.2 [NAME]` for a not-yet-promoted upgrade
/// child); NAME is `--name`, else the worker program's file name.
pub(super) fn set_title(settings: &Settings, command: &WorkerCommand, upgrade: bool) {
    let name = settings.name.clone().unwrap_or_else(|| {
        command
            .display
            .split_whitespace()
            .next()
            .map_or("arbiter".into(), |p| {
                Path::new(p)
                    .file_name()
                    .map_or(p.to_owned(), |n| n.to_string_lossy().into_owned())
            })
    });
    let master = if upgrade { "master.2" } else { "master" };
    crate::os::title::set(&format!("{master} [{name}]"));
}

/// The command of the hook `name`, if configured.
pub(super) fn hook_command<'a>(hooks: &'a Hooks, name: &str) -> Option<&'a str> {
    match name {
        "on_starting" => hooks.on_starting.as_deref(),
        "when_ready" => hooks.when_ready.as_deref(),
        "on_reload" => hooks.on_reload.as_deref(),
        "nworkers_changed" => hooks.nworkers_changed.as_deref(),
        "worker_exit" => hooks.worker_exit.as_deref(),
        "on_exit" => hooks.on_exit.as_deref(),
        _ => None,
    }
}

/// `exited 3`, `killed by SIGKILL`: a worker's end, for hooks.
fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(code) => format!("exited {code}"),
        ExitStatus::Signaled { signal, .. } => {
            let name = NixSignal::try_from(signal)
                .map(|s| s.as_str())
                .unwrap_or("?");
            format!("killed by {name}")
        }
    }
}
