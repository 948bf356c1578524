//! The master's single-threaded event loop: it feeds the core (signals, exits, notify
//! messages, heartbeats, deadlines) and carries out its actions (spawn, signal, group kill,
//! reap, pidfile, configuration load, re-exec, exit). It sleeps exactly until the core's
//! next deadline or an fd is readable. Decisions (when to write which pidfile, when to ping
//! the watchdog, what a reload or an exit means) are the core's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use arbiter_core::notify::LazySchedule;
use arbiter_core::{
    Action, Arbiter, Command, ExitStatus, Moment, Role, Signal, WorkerId, WorkerState,
};
use arbiter_sockets::Listener;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal as NixSignal;
use slog::{debug, error, info, warn, Logger};

use crate::config::{ReadyMode, Settings, Sources};
use crate::library::WorkerFn;
use crate::ops::{Ops, Order};
use crate::os::heartbeat::{self, Heartbeat, HeartbeatDir};
use crate::os::hooks;
use crate::os::identity::Identity;
use crate::os::limits;
use crate::os::notify::{Chattiness, Message, NotifyHub, Supervisor};
use crate::os::pidfile;
use crate::os::seam::{ChildStatus, Os, System};
use crate::os::spawn;
use crate::runtime::log::LogOutput;
pub use setup::StartError;
use setup::WorkerCommand;

mod actions;
mod function;
pub(crate) use function::refuse_worker_command;
pub mod log;
pub mod preflight;
mod reload;
pub mod setup;
mod slots;
#[cfg(test)]
mod tests;
mod trace;

use actions::set_title;

/// How long the master waits for its `on_starting` hook.
const ON_STARTING_LIMIT: Duration = Duration::from_secs(30);

/// While a run of actions holds the loop (a burst of spawns on a loaded machine can take
/// tens of seconds: every vfork waits for its child's exec), the notify sockets are read
/// between spawns anyway: the urgent ones when this long has passed since the loop last read
/// them (a `READY=1` is acted on soon), the lazy ones on their own schedule. Otherwise a
/// ready worker's queue fills (eleven messages), its later heartbeats are refused, and the
/// newest one queued is too old when its deadline is judged: a false timeout.
const BURST_EAGER_EVERY: Duration = Duration::from_millis(5);

/// A control answer or a metrics scrape shows the workers' heartbeats as of at most this long
/// ago (the heartbeat age histogram's finest bucket): bringing them up to date looks at every
/// worker, and a scrape used to do it twice (its accept and its request), so a scraper
/// polling every 20 ms during a boot of 10,000 workers cost the master 4 s of its 6 s of CPU.
const STATE_FRESH: Duration = Duration::from_millis(100);

/// The shell's view of one worker process.
struct WorkerProc {
    pid: i32,
    heartbeat: Heartbeat,
    /// While the worker has shown no heartbeat yet: when to look at its file next.
    probe_at: Option<Moment>,
    /// Tells, once it exited, whether its exec failed (none for a test double's spawn).
    exec: Option<spawn::ExecWatch>,
}

/// Everything the master owns while it runs.
pub struct Runtime<O: Os = System> {
    /// The OS seam: signals, spawning, reaping, pidfiles, hooks, the clock.
    os: O,
    log: Logger,
    log_output: LogOutput,
    settings: Settings,
    sources: Sources,
    env_snapshot: BTreeMap<String, String>,
    /// The core; every input and action passes through its trace.
    core: trace::Core,
    listeners: Vec<Listener>,
    /// Per-slot listeners (`--reuse-port-per-slot`): the other slots' sockets of each TCP
    /// listener.
    slots: slots::SlotListeners,
    /// The workers' notify sockets.
    notify: NotifyHub,
    /// When the lazily read notify sockets are read next; `None` while they were quiet at
    /// the last look, and the loop polls them instead (the first message wakes it).
    lazy_notify_at: Option<Moment>,
    /// The period of the lazy rounds, adapted to how full the queues were.
    lazy_schedule: LazySchedule,
    /// When the loop last read the urgent notify sockets (or looked whether they held any).
    eager_read_at: Moment,
    /// When a control client or a metrics scrape last had the heartbeats brought up to date.
    state_read_at: Option<Moment>,
    supervisor: Option<Supervisor>,
    /// Holds the notify socket; removed on drop.
    runtime_dir: tempfile::TempDir,
    /// Where the workers' heartbeat files are made.
    heartbeats: HeartbeatDir,
    procs: HashMap<WorkerId, WorkerProc>,
    /// Workers that have shown no heartbeat yet, by when their file is looked at next.
    probes: BTreeSet<(Moment, WorkerId)>,
    command: WorkerCommand,
    /// The user and groups workers switch to (`--user`, `--group`).
    identity: Option<Identity>,
    master_env: Vec<(OsString, OsString)>,
    worker_env: setup::WorkerEnv,
    exe: PathBuf,
    argv: Vec<OsString>,
    /// Where arbiter was started: relative paths mean this, and a re-exec starts here.
    start_dir: PathBuf,
    /// Hooks running, by pid, reaped by the loop.
    hook_pids: HashMap<i32, &'static str>,
    /// Whether `when_ready` ran.
    ready_hook_fired: bool,
    pidfile: Option<PathBuf>,
    exit: Option<i32>,
    pending_signals: Vec<NixSignal>,
    /// Control socket, metrics endpoint, output capture.
    ops: Ops,
    /// The service manager's watchdog ping interval, for the core's config on each reload.
    watchdog: Option<Duration>,
    /// Library mode: the function every worker runs, forked without exec.
    function: Option<Rc<WorkerFn>>,
    /// A low fd number the next worker's heartbeat file is copied onto before its spawn
    /// (made at the first spawn), so the child keeps only fds that low (`os::spawn`).
    low_heartbeat: Option<std::os::fd::OwnedFd>,
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

impl Runtime<System> {
    /// Installs the signal handlers, binds, writes the pidfile, and boots the workers' core.
    pub fn start(start: Start) -> Result<Runtime, StartError> {
        Self::start_with(start, None)
    }

    /// As [`Runtime::start`]; with `function`, in library mode: every worker is forked from
    /// this master without exec and runs `function` ([`crate::library`]).
    pub fn start_with(start: Start, function: Option<Rc<WorkerFn>>) -> Result<Runtime, StartError> {
        let os = System::new().map_err(|e| StartError::Runtime(format!("signal handlers: {e}")))?;
        Runtime::start_over(start, function, os)
    }
}

impl<O: Os> Runtime<O> {
    /// [`Runtime::start_with`] over the OS seam `os` (the real [`System`], or a test double).
    pub fn start_over(
        start: Start,
        function: Option<Rc<WorkerFn>>,
        mut os: O,
    ) -> Result<Runtime<O>, StartError> {
        let Start {
            mut settings,
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
        let start_dir = std::env::current_dir()
            .map_err(|e| StartError::Runtime(format!("current directory: {e}")))?;
        setup::absolutize(&mut settings, &start_dir);
        let setup::Prepared {
            command,
            gpus,
            identity,
        } = setup::prepare(&settings, &master_env)?;
        let command = function::worker_command(function.is_some(), &settings, command, &argv)?;
        // No bind configured and listeners passed in: serve on exactly those, whether systemd
        // passed them or an upgrading master did (which may have had them from systemd: the
        // default bind would replace systemd's socket by a socket of our own).
        let inherited_only = matches!(
            inherited.origin,
            Some(arbiter_sockets::Origin::Systemd | arbiter_sockets::Origin::Reexec)
        ) && !settings.bind_explicit;
        let specs = if inherited_only {
            Vec::new()
        } else {
            setup::bind_specs(&settings)?
        };
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
        let upgrade_child = matches!(role, Role::UpgradeChild { .. });
        preflight::check(&settings, &master_env, upgrade_child)?;
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
        .map_err(|e| {
            let path = settings
                .log_file
                .as_deref()
                .unwrap_or(std::path::Path::new("-"));
            StartError::Runtime(format!("--log-file {}: {e}", path.display()))
        })?
        .with_colour(settings.color, no_color(&master_env));
        let log = log_output.logger();
        info!(log, "Starting arbiter {}", env!("CARGO_PKG_VERSION"));
        if let Some(path) = sources.config_file() {
            info!(log, "Configuration: {}", path.display());
        }
        let watchdog = watchdog_interval(&master_env, inherited_parent(role));
        let born = Moment::from_origin(os.elapsed());
        let mut core_config = setup::core_config(&settings, command.key, gpus.clone());
        core_config.watchdog = watchdog;
        // A service manager waits for READY=1: a slow first boot extends its start timeout.
        core_config.extend_start = master_env.iter().any(|(k, _)| k == "NOTIFY_SOCKET");
        let mut core = Arbiter::new(core_config, role, born);
        let learned_notify = notify_keys.contains(&command.key);
        for key in notify_keys {
            core.learn_notify_command(key);
        }
        let mut core = trace::Core::new(core, log.clone(), log_output.traces());
        // A fresh master's pidfile comes first: one that cannot be written is a startup
        // failure before anything is bound or spawned; a later failure removes it.
        let mut written = WrittenPidfile(None);
        if core.awaits_pidfile() {
            if let (Some(Action::WritePidfile { .. }), Some(path)) =
                (core.poll_action(), &settings.pidfile)
            {
                match actions::write_pidfile(&mut os, path, &log) {
                    Ok(()) => {
                        written.0 = Some(path.clone());
                        core.handle_pidfile_written(born);
                    }
                    Err(e) => {
                        core.handle_pidfile_failed(e.to_string(), born);
                        return Err(StartError::Runtime(e.to_string()));
                    }
                }
            }
        }
        if let Some(command) = settings.hooks.on_starting.as_deref() {
            // gunicorn calls on_starting before the sockets exist; it is waited for.
            match hooks::start("on_starting", command, &master_env, &[]) {
                Ok(mut hook) => {
                    if hooks::wait(&mut hook, ON_STARTING_LIMIT).is_none() {
                        warn!(
                            log,
                            "on_starting hook still running after {ON_STARTING_LIMIT:?}"
                        );
                    }
                }
                Err(e) => error!(log, "Hook on_starting could not start: {e}"),
            }
        }
        // The control socket, metrics and statsd first: a failure there leaves no listener
        // bound (a failure below removes the control socket again when `ops` drops).
        let ops = Ops::open(&settings, &master_env, upgrade_child, &log)
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        let mut listeners =
            arbiter_sockets::resolve(&specs, inherited, &setup::bind_options(&settings))
                .map_err(|e| StartError::Runtime(e.to_string()))?;
        let mut slots = slots::SlotListeners::new(settings.reuse_port_per_slot, settings.backlog);
        slots.adopt(&mut listeners, &log);
        if settings.reuse_port_per_slot {
            let migrates = match arbiter_sockets::migrate_requests() {
                Some(true) => "1: a closing slot's queue moves to the others",
                Some(false) => {
                    "0: a slot scaled away is drained (1 s, then until its queue is empty) \
                     before its worker retires, and a connection still queued when its \
                     listener closes is reset"
                }
                None => "unknown",
            };
            info!(
                log,
                "Per-slot listeners: one SO_REUSEPORT socket per worker slot for each TCP \
                 bind; net.ipv4.tcp_migrate_req is {migrates}"
            );
        }
        // Until the runtime owns them: a start that fails from here on leaves no socket file.
        let mut listeners = BoundListeners {
            listeners: Some(listeners),
            unlink: arbiter_sockets::may_unlink(upgrade_child, settings.reuse_port),
        };
        for listener in listeners.get() {
            info!(log, "Listening at: {} ({})", listener, std::process::id());
        }
        info!(log, "Using worker: {}", command.display);
        open_files_for(&settings, &log);
        let supervised = master_env.iter().any(|(k, _)| k == "NOTIFY_SOCKET");
        let probed = settings.metrics_bind.is_some();
        if settings.ready == ReadyMode::Auto && !learned_notify && (supervised || probed) {
            let told = match (supervised, probed) {
                (true, true) => "READY=1 to the service manager and /readyz",
                (true, false) => "READY=1 to the service manager",
                _ => "/readyz",
            };
            info!(
                log,
                "Readiness: with --ready auto, first-generation workers count as ready once \
                 exec'd, so {told} can come before they serve; if they send READY=1, use \
                 --ready notify"
            );
        }
        if let Some(identity) = &identity {
            info!(log, "Workers run as {}", identity.display);
            give_unix_listeners(identity, listeners.get())
                .map_err(|e| StartError::Runtime(format!("giving the unix sockets: {e}")))?;
        }
        let runtime_dir = tempfile::Builder::new()
            .prefix("arbiter.")
            .tempdir_in(setup::runtime_parent(&master_env, identity.is_some()))
            .map_err(|e| StartError::Runtime(format!("runtime directory: {e}")))?;
        let chattiness = Chattiness {
            chatty_at: arbiter_core::notify::CHATTY_AT,
            quiet_at: arbiter_core::notify::QUIET_AT,
        };
        let notify = NotifyHub::new(runtime_dir.path(), settings.heartbeat_filter, chattiness)
            .map_err(|e| StartError::Runtime(format!("notify sockets: {e}")))?;
        match notify.filter_refused() {
            Some(why) => debug!(
                log,
                "Heartbeat filter off (bpf: {why}): bare WATCHDOG=1 datagrams are read by the \
                 master"
            ),
            None if notify.filtering() => debug!(log, "Heartbeat filter on"),
            None => {}
        }
        if let Some(identity) = &identity {
            // Each worker's notify socket is shared as it is made (see spawn_worker).
            identity
                .share_path(runtime_dir.path(), 0o710)
                .map_err(|e| StartError::Runtime(format!("runtime directory: {e}")))?;
        }
        let supervisor = master_env
            .iter()
            .find(|(k, _)| k == "NOTIFY_SOCKET")
            .and_then(|(_, v)| Supervisor::new(&v.to_string_lossy()).ok());
        if let Role::UpgradeChild { parent } = role {
            // SIGCHLD on the old master's death wakes the loop to promote this master.
            let _ = nix::sys::prctl::set_pdeathsig(NixSignal::SIGCHLD);
            info!(log, "Upgrade child of master {parent}");
        }
        let worker_env = setup::worker_base_env(&master_env, &settings, gpus.is_some());
        let heartbeat_dir = heartbeat::default_dir(settings.worker_tmp_dir.as_deref());
        let heartbeats = HeartbeatDir::new(&heartbeat_dir).map_err(|e| {
            StartError::Runtime(format!(
                "heartbeat directory in {}: {e}",
                heartbeat_dir.display()
            ))
        })?;
        let pidfile = settings.pidfile.clone();
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(&argv[0]));
        set_title(
            &settings,
            &command,
            matches!(role, Role::UpgradeChild { .. }),
        );
        // From here on the master removes its pidfile at its exit.
        written.0 = None;
        Ok(Runtime {
            os,
            log,
            log_output,
            settings,
            sources,
            env_snapshot,
            core,
            listeners: listeners.take(),
            slots,
            notify,
            lazy_notify_at: None,
            lazy_schedule: LazySchedule::default(),
            eager_read_at: born,
            state_read_at: None,
            supervisor,
            runtime_dir,
            heartbeats,
            procs: HashMap::new(),
            probes: BTreeSet::new(),
            command,
            identity,
            master_env,
            worker_env,
            exe,
            argv,
            start_dir,
            hook_pids: HashMap::new(),
            ready_hook_fired: false,
            pidfile,
            exit: None,
            pending_signals: Vec::new(),
            ops,
            watchdog,
            function,
            low_heartbeat: None,
        })
    }

    fn now(&self) -> Moment {
        Moment::from_origin(self.os.elapsed())
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
            self.ops.next_deadline(),
            self.lazy_notify_at,
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
        // Quiet lazy notify sockets are polled, so their first message wakes the loop; once
        // they carry messages they are read on a schedule instead.
        let poll_lazy = self.lazy_notify_at.is_none();
        let (signals_ready, eager_ready, lazy_ready, ops_events) = {
            let mut fds = vec![PollFd::new(self.notify.eager_fd(), PollFlags::POLLIN)];
            if poll_lazy {
                fds.push(PollFd::new(self.notify.lazy_fd(), PollFlags::POLLIN));
            }
            let signals_at = fds.len();
            let signal_fd = self.os.signal_fd();
            fds.extend(signal_fd.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
            let ops_from = fds.len();
            let interest = self.ops.interest();
            fds.extend(
                interest
                    .into_iter()
                    .map(|(fd, flags)| PollFd::new(fd, flags)),
            );
            let _ = poll(&mut fds, timeout);
            let readable = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let ops_events: Vec<PollFlags> = fds[ops_from..]
                .iter()
                .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
                .collect();
            (
                ops_from > signals_at && readable(&fds[signals_at]),
                readable(&fds[0]),
                poll_lazy && readable(&fds[1]),
                ops_events,
            )
        };
        if signals_ready {
            self.feed_signals();
        }
        let now = self.now();
        self.eager_read_at = now;
        if eager_ready {
            self.read_eager_notify();
        }
        // Before deadlines are judged, what the lazy sockets hold is read too.
        let core_due = self.core.poll_timeout().is_some_and(|at| at <= now);
        if lazy_ready || core_due || self.lazy_notify_at.is_some_and(|at| at <= now) {
            self.read_lazy_notify();
        }
        if ops_events.iter().any(|r| !r.is_empty()) {
            self.feed_ops(&ops_events);
        }
        self.check_promotion();
        let now = self.now();
        if self.next_probe().is_some_and(|at| at <= now) {
            self.probe_heartbeats(now);
        }
        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.refresh_due_heartbeats(now);
            self.core.handle_timeout(now);
        }
    }

    fn read_eager_notify(&mut self) {
        let mut messages = Vec::new();
        self.notify.read_eager(&mut messages);
        self.feed_notify(messages);
    }

    /// Between the actions of a long run (see [`BURST_EAGER_EVERY`]): reads the notify
    /// sockets that are due, as the loop would have.
    pub(super) fn read_notify_in_burst(&mut self) {
        let now = self.now();
        if now.saturating_since(self.eager_read_at) >= BURST_EAGER_EVERY {
            self.eager_read_at = now;
            self.read_eager_notify();
        }
        // Quiet lazy sockets (no round scheduled) are read at the first message, as the
        // loop's poll would.
        if self.lazy_notify_at.is_none_or(|at| at <= now) {
            self.read_lazy_notify();
        }
    }

    /// Reads every notify socket not read at once, and schedules the next round as the
    /// core's [`LazySchedule`] says: in a period while they carry messages, else when the
    /// first arrives. A deadline due, a status request or a metrics scrape reads them too, so
    /// nothing is judged or shown on stale messages.
    fn read_lazy_notify(&mut self) {
        let mut messages = Vec::new();
        let round = self.notify.read_lazy(&mut messages);
        self.feed_notify(messages);
        let now = self.now();
        self.lazy_notify_at = self.lazy_schedule.after_round(round.read, round.most, now);
    }

    /// Control clients, metrics scrapes and captured output; carries out the orders.
    fn feed_ops(&mut self, events: &[PollFlags]) {
        let now = self.now();
        let stale = self
            .state_read_at
            .is_none_or(|at| now.saturating_since(at) >= STATE_FRESH);
        if self.ops.reads_state(events) && stale {
            // Heartbeat files and lazy notify sockets are otherwise read only when due.
            self.read_lazy_notify();
            self.refresh_heartbeats(now);
            self.state_read_at = Some(now);
        }
        let orders = self.ops.handle(events, &self.core, &self.log, now);
        for order in orders {
            info!(self.log, "Control: {order:?}");
            let now = self.now();
            match order {
                Order::Reload => self.core.handle_command(Command::Reload, now),
                Order::Scale(n) => self.core.handle_command(Command::Scale(n), now),
                Order::Stop { quick } => self.core.handle_command(Command::Stop { quick }, now),
                Order::KillWorker(pid) => self.core.handle_command(Command::KillWorker(pid), now),
            }
            self.execute_actions();
        }
    }

    fn feed_signals(&mut self) {
        let mut signals = std::mem::take(&mut self.pending_signals);
        if let Err(e) = self.os.drain_signals(&mut signals) {
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
            self.core.handle_signal(core_signal, now);
            // Carry out each signal's actions before the next one, in arrival order.
            self.execute_actions();
        }
        self.pending_signals = signals;
    }

    /// Reaps every exited child. Each exit is peeked at first (`WNOWAIT`) and fed to the core
    /// while the child is a zombie: its pid, which is also its process group id, cannot be
    /// reused, so the core's group kill is race-free; the core's `Reap` then reaps it.
    pub(crate) fn reap(&mut self, now: Moment) {
        while let Some(exit) = self.os.peek_exit() {
            let status = match exit.status {
                ChildStatus::Exited(code) => ExitStatus::Exited(code),
                ChildStatus::Signaled {
                    signal,
                    core_dumped,
                } => ExitStatus::Signaled {
                    signal,
                    core_dumped,
                },
            };
            let pid = exit.pid;
            if let Some(name) = self.hook_pids.remove(&pid) {
                // Hooks are the shell's own children, not the core's.
                self.os.reap(pid);
                match status {
                    ExitStatus::Exited(0) => debug!(self.log, "Hook {name} done"),
                    other => warn!(self.log, "Hook {name} (pid:{pid}) failed: {other}"),
                }
                continue;
            }
            self.core.handle_exit(pid, status, now);
            // The group kill, then the reap (every exit gets one), then what the exit leads to.
            self.execute_actions();
        }
    }

    fn feed_notify(&mut self, mut messages: Vec<(u64, Message)>) {
        let now = self.now();
        for i in 0..messages.len() {
            let key = messages[i].0;
            // A socket's messages read together come one after another: of their heartbeats
            // only the newest is fed (a lazy round reads about four per worker).
            let newer_beat = messages[i + 1..]
                .iter()
                .take_while(|(k, _)| *k == key)
                .any(|(_, m)| m.watchdog);
            let message = &mut messages[i].1;
            let only_a_beat =
                !(message.ready || message.recycle || message.stopping) && message.status.is_none();
            if newer_beat && only_a_beat {
                continue;
            }
            let id = WorkerId(key);
            let Some(pid) = self.procs.get(&id).map(|p| p.pid) else {
                continue;
            };
            if let Some(status) = message.status.take() {
                self.core.handle_status(pid, status);
            }
            if message.watchdog && !newer_beat {
                let at = message.age.map_or(now, |age| moment_before(now, age));
                self.core.handle_heartbeat(pid, at);
                // A first sign of life: its heartbeat file is looked at when a deadline
                // is due, no longer probed for one.
                self.set_probe(id, None);
            }
            if message.ready {
                self.core.handle_ready(pid, now);
                self.sync_urgency(id, pid);
            }
            if message.recycle {
                self.core.handle_recycle_request(pid, now);
            }
            if message.stopping {
                debug!(self.log, "Worker (pid:{pid}) is stopping"; log::WORKER_PID => pid);
            }
        }
    }

    /// A worker's notify socket is read at once while its `READY=1` is awaited.
    pub(super) fn sync_urgency(&mut self, id: WorkerId, pid: i32) {
        let booting = self
            .core
            .worker_by_pid(pid)
            .is_some_and(|w| matches!(w.state, WorkerState::Spawning | WorkerState::Booting));
        self.notify.set_urgent(id.0, booting);
    }

    fn check_promotion(&mut self) {
        if let Some(parent) = self.core.parent_master() {
            if self.os.parent_pid() != parent {
                let now = self.now();
                self.core.handle_parent_exited(now);
            }
        }
    }

    fn next_probe(&self) -> Option<Moment> {
        self.probes.first().map(|(at, _)| *at)
    }

    /// Sets (or with `None`, ends) the probing of a worker's heartbeat file.
    pub(super) fn set_probe(&mut self, id: WorkerId, at: Option<Moment>) {
        let Some(proc) = self.procs.get_mut(&id) else {
            return;
        };
        if let Some(old) = std::mem::replace(&mut proc.probe_at, at) {
            self.probes.remove(&(old, id));
        }
        if let Some(at) = at {
            self.probes.insert((at, id));
        }
    }

    /// Looks at the heartbeat files of workers that have not heartbeated yet and are due, and
    /// of those due within a quarter period: probes of workers spawned together fall into one
    /// wake-up, and a wake-up looks only at those (ten thousand workers that never heartbeat
    /// are not all looked at whenever one of them is due).
    fn probe_heartbeats(&mut self, now: Moment) {
        let period = self.settings.timeout.unwrap_or(Duration::from_secs(1));
        let horizon = now + period / 4;
        let due: Vec<WorkerId> = self
            .probes
            .iter()
            .take_while(|(at, _)| *at <= horizon)
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            match self.look_at_heartbeat(id, now) {
                true => self.set_probe(id, None),
                false => self.set_probe(id, Some(now + period)),
            }
        }
    }

    /// Before deadlines are judged: the heartbeats (files and the filter's table) of the
    /// workers the core names ([`Arbiter::heartbeats_to_refresh`]); the rest can wait for
    /// their own deadlines.
    fn refresh_due_heartbeats(&mut self, now: Moment) {
        let due = self.core.heartbeats_to_refresh(now);
        if due.is_empty() {
            return;
        }
        self.notify.load_beats();
        for id in due {
            self.look_at_heartbeat(id, now);
        }
    }

    /// Before the workers' state is shown: every heartbeat since the last look.
    fn refresh_heartbeats(&mut self, now: Moment) {
        self.notify.load_beats();
        let ids: Vec<WorkerId> = self.procs.keys().copied().collect();
        for id in ids {
            if self.look_at_heartbeat(id, now) {
                self.set_probe(id, None);
            }
        }
    }

    /// Feeds a bump of the worker's heartbeat file since the last look, and its newest
    /// heartbeat taken by the filter as of the last load; whether there was either.
    fn look_at_heartbeat(&mut self, id: WorkerId, now: Moment) -> bool {
        let Some(proc) = self.procs.get_mut(&id) else {
            return false;
        };
        let pid = proc.pid;
        let bumped = proc.heartbeat.check();
        let filtered = self.notify.beat_age(id.0);
        for age in [bumped, filtered].into_iter().flatten() {
            self.core.handle_heartbeat(pid, moment_before(now, age));
        }
        bumped.is_some() || filtered.is_some()
    }
}

impl<O: Os> Drop for Runtime<O> {
    fn drop(&mut self) {
        // Listeners are closed by the core's CloseListeners; anything left (an error path)
        // is closed without unlinking.
        self.slots.close_all();
        arbiter_sockets::close_listeners(std::mem::take(&mut self.listeners), false);
    }
}

/// A pidfile written at the start, removed if the start fails after it.
struct WrittenPidfile(Option<PathBuf>);

impl Drop for WrittenPidfile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            pidfile::remove_if_ours(path, std::process::id());
        }
    }
}

/// Listeners bound by a start that has not finished: closed (unix paths unlinked by the
/// usual rules) if it fails.
struct BoundListeners {
    listeners: Option<Vec<Listener>>,
    unlink: bool,
}

impl BoundListeners {
    fn get(&self) -> &[Listener] {
        self.listeners.as_deref().unwrap_or_default()
    }

    /// The start succeeded: the runtime owns them now.
    fn take(&mut self) -> Vec<Listener> {
        self.listeners.take().unwrap_or_default()
    }
}

impl Drop for BoundListeners {
    fn drop(&mut self) {
        if let Some(listeners) = self.listeners.take() {
            arbiter_sockets::close_listeners(listeners, self.unlink);
        }
    }
}

/// Gives the unix socket files this master bound to the workers' user, as gunicorn does.
fn give_unix_listeners(identity: &Identity, listeners: &[Listener]) -> std::io::Result<()> {
    for listener in listeners {
        let ours = matches!(
            listener.origin(),
            arbiter_sockets::Origin::Bound | arbiter_sockets::Origin::Reexec
        );
        if let (true, arbiter_sockets::LocalAddr::Unix(path)) = (ours, listener.local_addr()) {
            if !path.as_os_str().is_empty() {
                identity.give_path(path)?;
            }
        }
    }
    Ok(())
}

/// Raises the open-file limit for the workers asked for, and says so when it stays too low.
fn open_files_for(settings: &Settings, log: &Logger) {
    // Its notify socket (the heartbeat file is looked at by name), and the capture pipes.
    let per_worker = if settings.capture_output { 3 } else { 1 };
    let need = settings.workers as u64 * per_worker + limits::RESERVED;
    let files = limits::raise_open_files(need);
    if files.now < need {
        warn!(
            log,
            "Open-file limit (RLIMIT_NOFILE) is {}: about {} workers fit, {} asked for; raise it (ulimit -n, LimitNOFILE=)",
            files.now,
            limits::workers_within(files.now, per_worker),
            settings.workers
        );
    } else if files.now != files.was {
        debug!(
            log,
            "Open-file limit raised from {} to {}", files.was, files.now
        );
    }
}

/// Whether `NO_COLOR` asks for no colour: set and not empty (no-color.org).
pub(super) fn no_color(master_env: &[(OsString, OsString)]) -> bool {
    master_env
        .iter()
        .any(|(k, v)| k == "NO_COLOR" && !v.is_empty())
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

/// The moment `age` before `now` (never before the origin).
fn moment_before(now: Moment, age: Duration) -> Moment {
    Moment::from_origin(now.since_origin().saturating_sub(age))
}
