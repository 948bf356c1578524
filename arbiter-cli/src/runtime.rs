//! The master's single-threaded event loop: it feeds the core (signals, exits, notify
//! messages, heartbeats, deadlines) and carries out its actions (spawn, signal, pidfile,
//! re-exec, exit). It sleeps exactly until the core's next deadline or an fd is readable.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arbiter_core::{
    Action, Arbiter, Command, Event, ExitStatus, Moment, Reason, Role, Signal, SupervisorNote,
    WorkerId,
};
use arbiter_signals::SignalPipe;
use arbiter_sockets::{HandoffPlan, Listener, PidEnvSlot};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use slog::{debug, error, info, warn, Logger};

use crate::config::{self, Settings, Sources};
use crate::control::{Ops, Order};
use crate::heartbeat::{self, Heartbeat};
use crate::log::LogOutput;
use crate::notify::{NotifySocket, Supervisor};
use crate::pidfile;
use crate::setup::{self, env_entry, StartError, WorkerCommand};
use crate::spawn::{self, MasterSpawn, WorkerSpawn};

/// The shell's view of one worker process.
struct WorkerProc {
    pid: i32,
    heartbeat: Heartbeat,
    /// While the worker has shown no heartbeat yet: when to look at its file next.
    probe_at: Option<Moment>,
    /// Tells, once it exited, whether its exec failed.
    exec: spawn::ExecWatch,
}

/// Everything the master owns while it runs.
pub struct Master {
    log: Logger,
    log_output: LogOutput,
    settings: Settings,
    sources: Sources,
    env_snapshot: BTreeMap<String, String>,
    core: Arbiter,
    origin: Instant,
    listeners: Vec<Listener>,
    signals: SignalPipe,
    notify: NotifySocket,
    supervisor: Option<Supervisor>,
    _runtime_dir: tempfile::TempDir,
    heartbeat_dir: PathBuf,
    procs: HashMap<WorkerId, WorkerProc>,
    command: WorkerCommand,
    master_env: Vec<(OsString, OsString)>,
    worker_env: Vec<(OsString, OsString)>,
    exe: PathBuf,
    argv: Vec<OsString>,
    pidfile: Option<PathBuf>,
    exit: Option<i32>,
    pending_signals: Vec<NixSignal>,
    /// Control socket, metrics endpoint, output capture.
    ops: Ops,
    /// The service manager's watchdog: ping interval and next ping.
    watchdog: Option<(Duration, Moment)>,
    /// An upgrade child's `PIDFILE.2`, held back until its workers are ready.
    upgrade_pidfile_pending: bool,
}

/// What `main` hands over: settings, the sources for HUP, the inherited listeners, and the
/// process facts captured before anything changed them.
pub struct Start {
    /// Resolved settings.
    pub settings: Settings,
    /// For HUP.
    pub sources: Sources,
    /// The environment as a map (for config reloads).
    pub env_snapshot: BTreeMap<String, String>,
    /// Listeners inherited from a re-exec or systemd.
    pub inherited: arbiter_sockets::Inherited,
    /// The master's environment (inheritance variables already removed).
    pub master_env: Vec<(OsString, OsString)>,
    /// The original argv.
    pub argv: Vec<OsString>,
}

impl Master {
    /// Binds, writes the pidfile, installs signal handlers, and boots the workers' core.
    pub fn start(start: Start) -> Result<Master, StartError> {
        let Start {
            settings,
            sources,
            env_snapshot,
            inherited,
            mut master_env,
            argv,
        } = start;
        // What the master that exec'd this one knew; not passed on to anyone.
        let notify_keys = master_env
            .iter()
            .find(|(k, _)| k == setup::NOTIFY_KEYS_VAR)
            .map(|(_, v)| setup::parse_notify_keys(&v.to_string_lossy()))
            .unwrap_or_default();
        master_env.retain(|(k, _)| k != setup::NOTIFY_KEYS_VAR);
        let path_var = master_env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let command = setup::worker_command(&settings.command, path_var)?;
        // Socket-activated with no bind configured: serve on what systemd passed.
        let systemd_only =
            inherited.origin == Some(arbiter_sockets::Origin::Systemd) && !settings.bind_explicit;
        let specs = if systemd_only {
            Vec::new()
        } else {
            setup::bind_specs(&settings)?
        };
        let own_visible = master_env
            .iter()
            .find(|(k, _)| k.as_bytes() == settings.gpu_env.as_bytes())
            .map(|(_, v)| v.to_string_lossy().into_owned());
        let gpus = setup::gpu_config(&settings, own_visible.as_deref())?;
        if let Some(dir) = &settings.chdir {
            std::env::set_current_dir(dir)
                .map_err(|e| StartError::Usage(format!("--chdir {}: {e}", dir.display())))?;
        }
        let role = match inherited.old_master {
            Some(parent) => Role::UpgradeChild {
                parent: parent as i32,
            },
            None => Role::Fresh,
        };
        if let (Some(path), Role::Fresh) = (&settings.pidfile, role) {
            if let Some(pid) = pidfile::read_pid(path) {
                if pid as u32 != std::process::id() && pidfile::is_live_arbiter(pid) {
                    return Err(StartError::Runtime(format!(
                        "already running as PID {pid} (pidfile {})",
                        path.display()
                    )));
                }
            }
        }
        let log_output = LogOutput::open(
            settings.log_file.as_deref(),
            settings.log_format,
            settings.log_level,
        )
        .map_err(|e| StartError::Runtime(format!("--log-file: {e}")))?;
        let log = log_output.logger();
        info!(log, "Starting arbiter {}", env!("CARGO_PKG_VERSION"));
        if let Some(path) = sources.config_file() {
            info!(log, "Configuration: {}", path.display());
        }
        let listeners =
            arbiter_sockets::resolve(&specs, inherited, &setup::bind_options(&settings))
                .map_err(|e| StartError::Runtime(e.to_string()))?;
        for listener in &listeners {
            info!(log, "Listening at: {} ({})", listener, std::process::id());
        }
        info!(log, "Using worker: {}", command.display);
        let runtime_dir = tempfile::Builder::new()
            .prefix("arbiter.")
            .tempdir_in(setup::runtime_parent(&master_env))
            .map_err(|e| StartError::Runtime(format!("runtime directory: {e}")))?;
        let notify = NotifySocket::bind(&runtime_dir.path().join("notify"))
            .map_err(|e| StartError::Runtime(format!("notify socket: {e}")))?;
        let supervisor = master_env
            .iter()
            .find(|(k, _)| k == "NOTIFY_SOCKET")
            .and_then(|(_, v)| Supervisor::new(&v.to_string_lossy()).ok());
        let watchdog = watchdog_interval(&master_env, inherited_parent(role))
            .map(|interval| (interval, Moment::ZERO));
        let signals = SignalPipe::install()
            .map_err(|e| StartError::Runtime(format!("signal handlers: {e}")))?;
        if let Role::UpgradeChild { parent } = role {
            // SIGCHLD on the old master's death wakes the loop to promote this master.
            let _ = nix::sys::prctl::set_pdeathsig(NixSignal::SIGCHLD);
            info!(log, "Upgrade child of master {parent}");
        }
        let worker_env = setup::worker_base_env(&master_env, &settings, gpus.is_some());
        let heartbeat_dir = heartbeat::default_dir(settings.worker_tmp_dir.as_deref());
        let pidfile = settings.pidfile.clone();
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(&argv[0]));
        set_title(
            &settings,
            &command,
            matches!(role, Role::UpgradeChild { .. }),
        );
        let upgrade_child = matches!(role, Role::UpgradeChild { .. });
        let ops = Ops::open(&settings, &master_env, upgrade_child, &log)
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        let origin = Instant::now();
        let mut core = Arbiter::new(
            setup::core_config(&settings, command.key, gpus),
            role,
            Moment::ZERO,
        );
        for key in notify_keys {
            core.learn_notify_command(key);
        }
        Ok(Master {
            log,
            log_output,
            settings,
            sources,
            env_snapshot,
            core,
            origin,
            listeners,
            signals,
            notify,
            supervisor,
            _runtime_dir: runtime_dir,
            heartbeat_dir,
            procs: HashMap::new(),
            command,
            master_env,
            worker_env,
            exe,
            argv,
            pidfile,
            exit: None,
            pending_signals: Vec::new(),
            ops,
            watchdog,
            upgrade_pidfile_pending: false,
        })
    }

    fn now(&self) -> Moment {
        Moment::from_origin(self.origin.elapsed())
    }

    /// Runs until the core exits; returns the exit code.
    pub fn run(mut self) -> i32 {
        loop {
            self.execute_actions();
            if let Some(code) = self.exit {
                return code;
            }
            self.wait_and_feed();
        }
    }

    /// Sleeps until a deadline or an fd, then feeds what happened to the core.
    fn wait_and_feed(&mut self) {
        let now = self.now();
        // Actions of the last round are carried out: answer the control orders they finished.
        self.ops.settle(&self.core, now);
        let deadline = [
            self.core.poll_timeout(),
            self.next_probe(),
            self.next_watchdog(),
            self.ops.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(at) => {
                // Round up to the next millisecond so a wake-up is never early.
                let wait = at.saturating_since(now);
                let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let (signals_ready, notify_ready, ops_events) = {
            let mut fds = vec![
                PollFd::new(self.signals.fd(), PollFlags::POLLIN),
                PollFd::new(self.notify.fd(), PollFlags::POLLIN),
            ];
            let interest = self.ops.interest();
            fds.extend(
                interest
                    .into_iter()
                    .map(|(fd, flags)| PollFd::new(fd, flags)),
            );
            let _ = poll(&mut fds, timeout);
            let readable = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let ops_events: Vec<PollFlags> = fds[2..]
                .iter()
                .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
                .collect();
            (readable(&fds[0]), readable(&fds[1]), ops_events)
        };
        if signals_ready {
            self.feed_signals();
        }
        if notify_ready {
            self.feed_notify();
        }
        if ops_events.iter().any(|r| !r.is_empty()) {
            self.feed_ops(&ops_events);
        }
        self.check_promotion();
        let now = self.now();
        if self.next_watchdog().is_some_and(|at| at <= now) {
            self.ping_watchdog(now);
        }
        if self.next_probe().is_some_and(|at| at <= now) {
            self.probe_heartbeats(now);
        }
        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.refresh_heartbeats(now);
            self.core.handle_timeout(now);
        }
    }

    /// Control clients, metrics scrapes and captured output; carries out the orders.
    fn feed_ops(&mut self, events: &[PollFlags]) {
        let now = self.now();
        if self.ops.reads_state(events) {
            // Heartbeat files are otherwise read only when a deadline is due.
            self.refresh_heartbeats(now);
        }
        let orders = self.ops.handle(events, &self.core, &self.log, now);
        for order in orders {
            info!(self.log, "Control: {order:?}");
            let now = self.now();
            match order {
                Order::Reload => self.reload(now),
                Order::Scale(n) => self.core.handle_command(Command::Scale(n), now),
                Order::Stop { quick } => self.core.handle_command(Command::Stop { quick }, now),
                Order::KillWorker(pid) => self.core.handle_command(Command::KillWorker(pid), now),
            }
            self.execute_actions();
        }
    }

    fn feed_signals(&mut self) {
        let mut signals = std::mem::take(&mut self.pending_signals);
        if let Err(e) = self.signals.drain(&mut signals) {
            error!(self.log, "reading the signal pipe: {e}");
        }
        for signal in signals.drain(..) {
            let now = self.now();
            if signal == NixSignal::SIGCHLD {
                self.reap(now);
                continue;
            }
            let Some(core_signal) = core_signal(signal) else {
                continue;
            };
            info!(
                self.log,
                "Handling signal: {}",
                core_signal.name().to_lowercase()
            );
            match core_signal {
                Signal::Hup => self.reload(now),
                other => self.core.handle_signal(other, now),
            }
            // Carry out each signal's actions before the next one, in arrival order.
            self.execute_actions();
        }
        self.pending_signals = signals;
    }

    fn reap(&mut self, now: Moment) {
        let exit_of = |status| match status {
            WaitStatus::Exited(pid, code) => Some((pid, ExitStatus::Exited(code))),
            WaitStatus::Signaled(pid, signal, core_dumped) => Some((
                pid,
                ExitStatus::Signaled {
                    signal: signal as i32,
                    core_dumped,
                },
            )),
            _ => None,
        };
        loop {
            // Look before reaping: while the exited worker is a zombie its pid, which is also
            // its process group id, cannot be reused, so killing the group is race-free.
            let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let pid = match waitid(Id::All, peek) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => match exit_of(status) {
                    Some((pid, _)) => pid,
                    None => continue,
                },
            };
            if let Some(worker) = self.core.worker_by_pid(pid.as_raw()) {
                if let Some(proc) = self.procs.remove(&worker.id) {
                    if let Some(error) = proc.exec.failure() {
                        error!(
                            self.log,
                            "cannot execute {}: {error}",
                            self.command.program.to_string_lossy()
                        );
                    }
                }
                // What the worker started stays in its group and would keep serving on the
                // inherited listeners (a SIGKILLed gunicorn master's workers do): end it now.
                let _ = kill(Pid::from_raw(-pid.as_raw()), NixSignal::SIGKILL);
            }
            let Some((pid, status)) = waitpid(pid, Some(WaitPidFlag::WNOHANG))
                .ok()
                .and_then(exit_of)
            else {
                continue;
            };
            self.core.handle_exit(pid.as_raw(), status, now);
        }
    }

    fn feed_notify(&mut self) {
        let mut messages = Vec::new();
        self.notify.drain(&mut messages);
        let now = self.now();
        for message in messages {
            let Some(pid) = self.worker_pid_for(message.pid) else {
                debug!(self.log, "notify message from unknown pid {}", message.pid);
                continue;
            };
            if let Some(status) = message.status {
                self.core.handle_status(pid, status);
            }
            if message.watchdog {
                self.core.handle_heartbeat(pid, now);
            }
            if message.ready {
                self.core.handle_ready(pid, now);
            }
            if message.stopping {
                debug!(self.log, "Worker (pid:{pid}) is stopping");
            }
        }
    }

    /// The worker a notify sender belongs to: itself, or its process group's leader.
    fn worker_pid_for(&self, sender: i32) -> Option<i32> {
        if self.core.worker_by_pid(sender).is_some() {
            return Some(sender);
        }
        let group = nix::unistd::getpgid(Some(Pid::from_raw(sender)))
            .ok()?
            .as_raw();
        self.core.worker_by_pid(group).map(|_| group)
    }

    fn check_promotion(&mut self) {
        if let Some(parent) = self.core.parent_master() {
            if nix::unistd::getppid().as_raw() != parent {
                let now = self.now();
                self.core.handle_parent_exited(now);
            }
        }
    }

    /// The next `WATCHDOG=1` to the service manager; only the main (promoted) master pings.
    fn next_watchdog(&self) -> Option<Moment> {
        let (_, next) = self.watchdog?;
        self.core.parent_master().is_none().then_some(next)
    }

    fn ping_watchdog(&mut self, now: Moment) {
        if let Some((interval, next)) = self.watchdog.as_mut() {
            *next = now + *interval;
            if let Some(supervisor) = &self.supervisor {
                if let Err(e) = supervisor.send("WATCHDOG=1") {
                    debug!(self.log, "watchdog ping failed: {e}");
                }
            }
        }
    }

    fn next_probe(&self) -> Option<Moment> {
        self.procs.values().filter_map(|p| p.probe_at).min()
    }

    /// Looks at the heartbeat files of workers that have not heartbeated yet.
    /// One wake-up looks at every file still unseen, not only the due ones, so probes of
    /// workers spawned together are batched.
    fn probe_heartbeats(&mut self, now: Moment) {
        let period = self.settings.timeout.unwrap_or(Duration::from_secs(1));
        for proc in self.procs.values_mut() {
            let Some(probe_at) = proc.probe_at else {
                continue;
            };
            match proc.heartbeat.check(now) {
                Some(at) => {
                    proc.probe_at = None;
                    self.core.handle_heartbeat(proc.pid, at);
                }
                None if probe_at <= now => proc.probe_at = Some(now + period),
                None => {}
            }
        }
    }

    /// Before deadlines are judged: every heartbeat file bumped since the last look.
    fn refresh_heartbeats(&mut self, now: Moment) {
        for proc in self.procs.values_mut() {
            if let Some(at) = proc.heartbeat.check(now) {
                proc.probe_at = None;
                self.core.handle_heartbeat(proc.pid, at);
            }
        }
    }

    fn reload(&mut self, now: Moment) {
        let applied = config::reload(&self.sources, &self.env_snapshot)
            .map_err(|e| e.to_string())
            .and_then(|new| self.apply_settings(new).map_err(|e| e.to_string()));
        match applied {
            Ok(config) => self.core.handle_reload(config, now),
            Err(why) => {
                // The master never exits over a bad reload: it says so and keeps its config.
                error!(
                    self.log,
                    "reload failed, keeping the running configuration: {why}"
                );
                eprintln!("arbiter: reload failed, keeping the running configuration: {why}");
                self.ops.on_reload_failed(&why, now);
            }
        }
    }

    /// Validates new settings and swaps them in (binds first, then everything else).
    fn apply_settings(&mut self, new: Settings) -> Result<arbiter_core::Config, StartError> {
        let path_var = self
            .master_env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let command = setup::worker_command(&new.command, path_var)?;
        let own_visible = self
            .master_env
            .iter()
            .find(|(k, _)| k.as_bytes() == new.gpu_env.as_bytes())
            .map(|(_, v)| v.to_string_lossy().into_owned());
        let gpus = setup::gpu_config(&new, own_visible.as_deref())?;
        if new.bind != self.settings.bind {
            let specs = setup::bind_specs(&new)?;
            let mut kept: Vec<Option<Listener>> = std::mem::take(&mut self.listeners)
                .into_iter()
                .map(Some)
                .collect();
            // (listener, newly bound by this reload)
            let mut fresh: Vec<(Listener, bool)> = Vec::new();
            let mut failure = None;
            for spec in &specs {
                let existing = kept
                    .iter_mut()
                    .find(|l| l.as_ref().and_then(|l| l.spec()).is_some_and(|s| s == spec));
                if let Some(slot) = existing {
                    fresh.push((slot.take().expect("found"), false));
                    continue;
                }
                match arbiter_sockets::bind(spec, &setup::bind_options(&new)) {
                    Ok(bound) => fresh.extend(bound.into_iter().map(|l| (l, true))),
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(e) = failure {
                // Keep serving on the old set; close only what this attempt bound.
                let mut restored = Vec::new();
                for (listener, newly) in fresh {
                    if newly {
                        listener.close(true);
                    } else {
                        restored.push(listener);
                    }
                }
                restored.extend(kept.into_iter().flatten());
                self.listeners = restored;
                return Err(StartError::Runtime(format!("new bind failed: {e}")));
            }
            for (listener, newly) in &fresh {
                if *newly {
                    info!(
                        self.log,
                        "Listening at: {} ({})",
                        listener,
                        std::process::id()
                    );
                }
            }
            let unlink = self.unlink_allowed(true);
            for listener in kept.into_iter().flatten() {
                info!(self.log, "Closing listener {}", listener);
                listener.close(unlink);
            }
            self.listeners = fresh.into_iter().map(|(l, _)| l).collect();
        }
        self.worker_env = setup::worker_base_env(&self.master_env, &new, gpus.is_some());
        self.heartbeat_dir = heartbeat::default_dir(new.worker_tmp_dir.as_deref());
        if new.log_level != self.settings.log_level
            || new.log_format != self.settings.log_format
            || new.log_file != self.settings.log_file
        {
            match LogOutput::open(new.log_file.as_deref(), new.log_format, new.log_level) {
                Ok(output) => {
                    self.log = output.logger();
                    self.log_output = output;
                }
                Err(e) => warn!(self.log, "keeping the old log file: {e}"),
            }
        }
        let config = setup::core_config(&new, command.key, gpus);
        self.command = command;
        self.settings = new;
        Ok(config)
    }

    fn unlink_allowed(&self, core_allows: bool) -> bool {
        core_allows
            && arbiter_sockets::may_unlink(self.core.is_upgrading(), self.settings.reuse_port)
    }

    // ----- actions -----

    fn execute_actions(&mut self) {
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
                            "gpus" => gpus.join(","), "reason" => reason.to_string());
                        self.core.handle_spawned(id, pid, now);
                    }
                    Err(e) => {
                        self.procs.remove(&id);
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
                match reason {
                    Reason::HeartbeatTimeout => error!(self.log, "WORKER TIMEOUT (pid:{pid})"),
                    Reason::BootTimeout => error!(self.log, "WORKER BOOT TIMEOUT (pid:{pid})"),
                    _ if signal == Signal::Kill => {
                        warn!(
                            self.log,
                            "Killing worker (pid:{pid}) with SIGKILL: {reason}"
                        )
                    }
                    _ => debug!(self.log, "Sending {signal} to worker (pid:{pid}): {reason}"),
                }
                self.ops.on_signal(pid, reason);
                let target = if group { -pid } else { pid };
                if let Some(nix_signal) = nix_signal(signal) {
                    let _ = kill(Pid::from_raw(target), nix_signal);
                }
            }
            Action::CloseListeners { unlink } => {
                let unlink = self.unlink_allowed(unlink);
                arbiter_sockets::close_listeners(std::mem::take(&mut self.listeners), unlink);
            }
            // An upgrade child writes PIDFILE.2 only once its workers are ready, so the file's
            // appearance tells `arbiter upgrade` (and scripts) that the new generation serves.
            Action::WritePidfile {
                upgrade_child: true,
            } => self.upgrade_pidfile_pending = true,
            Action::WritePidfile {
                upgrade_child: false,
            } => self.write_pidfile(false),
            Action::PromotePidfile => self.promote(),
            Action::ReExec => self.reexec(),
            Action::ReopenLogs => {
                if let Err(e) = self.log_output.reopen() {
                    error!(self.log, "reopening the log file: {e}");
                }
            }
            Action::Notify(note) => {
                if note == SupervisorNote::Ready && self.upgrade_pidfile_pending {
                    self.upgrade_pidfile_pending = false;
                    if self.core.parent_master().is_some() {
                        self.write_pidfile(true);
                    }
                }
                self.tell_supervisor(note)
            }
            Action::Event(event) => {
                self.ops.on_event(&event, &self.log);
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
        let heartbeat = Heartbeat::create(&self.heartbeat_dir).map_err(spawn::SpawnError::Fork)?;
        let listeners: Vec<&Listener> = self.listeners.iter().collect();
        let plan = HandoffPlan::new(&listeners, &[heartbeat.file().as_raw_fd()])
            .map_err(|e| spawn::SpawnError::Fork(std::io::Error::other(e.to_string())))?;
        let heartbeat_fd = plan.extra_fd_targets().start;
        let mut env = Vec::with_capacity(self.worker_env.len() + 10);
        for (key, value) in &self.worker_env {
            env.push(env_entry(key.as_bytes(), value.as_bytes())?);
        }
        let mut add = |key: &str, value: &str| -> Result<(), spawn::SpawnError> {
            env.push(env_entry(key.as_bytes(), value.as_bytes())?);
            Ok(())
        };
        add("NOTIFY_SOCKET", &self.notify.path().to_string_lossy())?;
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
        let (pid, exec) = spawn::spawn_worker(WorkerSpawn {
            program: &self.command.program,
            argv: &self.command.argv,
            env,
            plan,
            watchdog_pid,
            signals: &self.signals,
            stdout_fd: output_fds.map(|fds| fds.0),
            stderr_fd: output_fds.map(|fds| fds.1),
        })?;
        self.ops.on_spawned(pid, slot, pipes);
        let probe_at = self.settings.timeout.map(|t| self.now() + t);
        self.procs.insert(
            id,
            WorkerProc {
                pid,
                heartbeat,
                probe_at,
                exec,
            },
        );
        Ok(pid)
    }

    fn write_pidfile(&mut self, upgrade_child: bool) {
        let Some(path) = self.pidfile.clone() else {
            return;
        };
        let path = if upgrade_child {
            pidfile::upgrade_path(&path)
        } else {
            path
        };
        match pidfile::create(&path, std::process::id()) {
            Ok(pidfile::Previous::Stale(old)) => {
                warn!(
                    self.log,
                    "Replacing stale pidfile {} (held {old:?})",
                    path.display()
                )
            }
            Ok(pidfile::Previous::None) => {}
            Err(e) => {
                error!(self.log, "{e}");
                eprintln!("arbiter: error: {e}");
                // Without its pidfile the master cannot be found: stop cleanly.
                let now = self.now();
                self.pidfile = None;
                self.core.handle_signal(Signal::Term, now);
            }
        }
    }

    fn promote(&mut self) {
        info!(self.log, "Master has been promoted.");
        if self.upgrade_pidfile_pending {
            // Promoted before its workers were ready: there is no PIDFILE.2 to rename.
            self.upgrade_pidfile_pending = false;
            self.write_pidfile(false);
        } else if let Some(path) = &self.pidfile {
            let from = pidfile::upgrade_path(path);
            if let Err(e) = pidfile::rename(&from, path, std::process::id()) {
                error!(self.log, "renaming the pidfile: {e}");
            }
        }
        set_title(&self.settings, &self.command, false);
    }

    fn remove_pidfile(&self) {
        let Some(path) = &self.pidfile else {
            return;
        };
        let ours = std::process::id();
        if !pidfile::remove_if_ours(path, ours) {
            pidfile::remove_if_ours(&pidfile::upgrade_path(path), ours);
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
            for (key, value) in arbiter_sockets::reexec_env(&self.listeners) {
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
            let fds: Vec<i32> = self.listeners.iter().map(|l| l.fd().as_raw_fd()).collect();
            spawn::spawn_master(MasterSpawn {
                program: &program,
                argv: &argv,
                env: &env,
                listener_fds: &fds,
                signals: &self.signals,
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
                self.ops.on_upgrade_failed();
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
        };
        if let Err(e) = supervisor.send(&message) {
            debug!(self.log, "notify to the service manager failed: {e}");
        }
    }

    fn log_event(&self, event: Event) {
        let log = &self.log;
        match event {
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
            Event::UpgradeRefused { why } => warn!(log, "{why}"),
            Event::Promoted => {}
            Event::SignalIgnored { why, .. } => info!(log, "{why}"),
            Event::SpawnFailed { slot, error } => {
                error!(log, "Cannot start worker in slot {slot}: {error}")
            }
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // Listeners are closed by the core's CloseListeners; anything left (an error path)
        // is closed without unlinking.
        arbiter_sockets::close_listeners(std::mem::take(&mut self.listeners), false);
    }
}

/// The old master's pid for an upgrade child.
fn inherited_parent(role: Role) -> Option<i32> {
    match role {
        Role::Fresh => None,
        Role::UpgradeChild { parent } => Some(parent),
    }
}

/// Half the service manager's watchdog timeout (`WATCHDOG_USEC`), when it is meant for this
/// process (`WATCHDOG_PID` absent, ours, or, for an upgrade child that will be promoted, the
/// old master's).
fn watchdog_interval(master_env: &[(OsString, OsString)], parent: Option<i32>) -> Option<Duration> {
    let var = |name: &str| {
        master_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    };
    let usec: u64 = var("WATCHDOG_USEC")?
        .trim()
        .parse()
        .ok()
        .filter(|u| *u > 0)?;
    if let Some(pid) = var("WATCHDOG_PID") {
        let pid: i32 = pid.trim().parse().ok()?;
        if pid != std::process::id() as i32 && Some(pid) != parent {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

fn core_signal(signal: NixSignal) -> Option<Signal> {
    Some(match signal {
        NixSignal::SIGHUP => Signal::Hup,
        NixSignal::SIGINT => Signal::Int,
        NixSignal::SIGQUIT => Signal::Quit,
        NixSignal::SIGTERM => Signal::Term,
        NixSignal::SIGTTIN => Signal::Ttin,
        NixSignal::SIGTTOU => Signal::Ttou,
        NixSignal::SIGUSR1 => Signal::Usr1,
        NixSignal::SIGUSR2 => Signal::Usr2,
        NixSignal::SIGWINCH => Signal::Winch,
        NixSignal::SIGCHLD => Signal::Chld,
        _ => return None,
    })
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

/// The process title: `master [NAME]` (`master.2 [NAME]` for a not-yet-promoted upgrade
/// child); NAME is `--name`, else the worker program's file name.
fn set_title(settings: &Settings, command: &WorkerCommand, upgrade: bool) {
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
    crate::title::set(&format!("{master} [{name}]"));
}
