//! The validated, typed settings of one arbiter run, and their TOML rendering.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::size::ByteSize;

/// Everything the arbiter needs to run, resolved from command line, environment, file and
/// defaults, and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The configuration file read (`--config`, `ARBITER_CONFIG`), made absolute.
    pub config_file: Option<PathBuf>,
    /// Addresses to listen on, as written (parsed later as bind specs); never empty.
    pub bind: Vec<String>,
    /// Whether a layer (command line, environment, file) set `bind`. When none did and the
    /// arbiter was socket-activated, it serves on the sockets systemd passed instead.
    pub bind_explicit: bool,
    /// Number of worker processes, 1 to 100000 (`arbiter_core::MAX_WORKERS`).
    pub workers: usize,
    /// Heartbeat timeout; `None` when disabled.
    pub timeout: Option<Duration>,
    /// Attach the heartbeat filter to the workers' notify sockets where the kernel allows it
    /// (`CAP_BPF`): their bare `WATCHDOG=1` datagrams are then taken by the kernel, never
    /// queued or read. Fixed at start (a reload keeps it).
    pub heartbeat_filter: bool,
    /// Time a worker has to report `READY=1`; `None` when disabled.
    pub boot_timeout: Option<Duration>,
    /// Time workers get to exit after a stop signal before they are killed.
    pub graceful_timeout: Duration,
    /// Time between the abort signal and KILL for a hung worker.
    pub abort_grace: Duration,
    /// On a graceful stop: how long to report not ready while still serving before the
    /// listeners close (zero: none).
    pub shutdown_delay: Duration,
    /// Where to write the master's pid.
    pub pidfile: Option<PathBuf>,
    /// Name shown in the process title.
    pub name: Option<String>,
    /// Variables set in every worker's environment, in order, keys unique.
    pub env: Vec<(String, String)>,
    /// Directory to change to before loading workers.
    pub chdir: Option<PathBuf>,
    /// Set `SO_REUSEPORT` on the listeners.
    pub reuse_port: bool,
    /// One `SO_REUSEPORT` listener per worker slot for each TCP bind, held by the master: a
    /// slot's accept queue outlives its worker. Fixed at start (a reload keeps it).
    pub reuse_port_per_slot: bool,
    /// Listen backlog, 1..=65535.
    pub backlog: i32,
    /// File mode creation mask of the master and workers, at most 0o777.
    pub umask: u32,
    /// How many times a failed bind is retried (one second apart).
    pub bind_retries: u32,
    /// Lowest level logged.
    pub log_level: LogLevel,
    /// Log file; `None` means stderr.
    pub log_file: Option<PathBuf>,
    /// Log record format.
    pub log_format: LogFormat,
    /// When text log lines about a worker are coloured by that worker's pid.
    pub color: ColorChoice,
    /// Directory for heartbeat files; `None` means `$TMPDIR` if set, else `/dev/shm`, else `/tmp`.
    pub worker_tmp_dir: Option<PathBuf>,
    /// The user workers run as (a name or a number); `None` keeps the master's.
    pub user: Option<String>,
    /// The group workers run as (a name or a number); `None` means the user's primary group,
    /// or the master's group without a user.
    pub group: Option<String>,
    /// What to do when a worker exits with 3 (boot error) or 4 (app load error).
    pub on_boot_error: BootErrorPolicy,
    /// When a worker counts as ready.
    pub ready: ReadyMode,
    /// For workers whose `READY=1` is not awaited: how long after exec they count as ready.
    pub ready_after: Duration,
    /// Signal sent to workers on a quick stop (INT, QUIT).
    pub quick_signal: QuickSignal,
    /// Forward USR1 to workers after reopening the logs.
    pub forward_usr1: bool,
    /// Workers spawned above `workers` during a rolling reload or a recycle, at least 1.
    pub max_surge: usize,
    /// Recycle a worker at this age (staggered per slot); `None`: never.
    pub max_worker_age: Option<Duration>,
    /// How much earlier than `max_worker_age` a worker may be recycled so that the slots take
    /// turns; `None`: half of `max_worker_age`; zero: no stagger.
    pub max_worker_age_jitter: Option<Duration>,
    /// Recycle a worker whose process group's resident memory is above this; `None`: never.
    pub max_worker_memory: Option<ByteSize>,
    /// GPUs to spread workers over; `None` means no GPU assignment.
    pub gpus: Option<GpuSelection>,
    /// GPUs given to each worker, at least 1 (ignored without `gpus`).
    pub gpus_per_worker: usize,
    /// Environment variable that carries a worker's GPU ids.
    pub gpu_env: String,
    /// Detach from the terminal and run in the background.
    pub daemon: bool,
    /// `--check-config`: validate, print, exit.
    pub check_config: bool,
    /// The control socket for `arbiter ctl`; `None` means the default next to the pidfile.
    pub control_socket: Option<PathBuf>,
    /// Where to serve Prometheus metrics and the health probes; `None` means not served.
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// The statsd daemon (`HOST:PORT`) to push metrics to; `None` means none.
    pub statsd_host: Option<String>,
    /// The prefix of statsd metric names.
    pub statsd_prefix: String,
    /// Relay workers' stdout and stderr lines through the log instead of letting them inherit.
    pub capture_output: bool,
    /// Server hooks: shell commands run at points of the master's life.
    pub hooks: Hooks,
    /// The worker command; empty means the built-in worker.
    pub command: Vec<OsString>,
}

/// Which GPUs the workers are spread over.
/// gunicorn's server hooks as shell commands (`/bin/sh -c`), run by the master with
/// `ARBITER_HOOK` (the hook's name) and `ARBITER_PID` in their environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    /// Run before the listeners are bound (waited for, 30 s at most).
    pub on_starting: Option<String>,
    /// Run once the first generation of workers is ready.
    pub when_ready: Option<String>,
    /// Run on each reload (HUP or ctl reload), once the new configuration is in.
    pub on_reload: Option<String>,
    /// Run when the target number of workers changes (ARBITER_HOOK_OLD, ARBITER_HOOK_NEW).
    pub nworkers_changed: Option<String>,
    /// Run after a worker exited (ARBITER_HOOK_WORKER_PID, _SLOT, _STATUS).
    pub worker_exit: Option<String>,
    /// Run just before the master exits (waited for, 5 s at most).
    pub on_exit: Option<String>,
}

/// Which GPUs the workers are spread over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    /// Every GPU the machine has, discovered at start.
    Auto,
    /// These device ids, in order; non-empty, no duplicates.
    List(Vec<String>),
}

/// Defines a closed set of names with parsing and printing.
macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every accepted name, in order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The configuration name of this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Parses a name, ignoring ASCII case.
            pub fn from_name(name: &str) -> Option<Self> {
                $(if name.eq_ignore_ascii_case($text) {
                    return Some($name::$variant);
                })+
                None
            }
        }
    };
}

named_enum! {
    /// Lowest severity that is logged.
    LogLevel {
        /// Every input the core receives and every action it takes, with its reason.
        Trace = "trace",
        /// Everything else, including each decision's details.
        Debug = "debug",
        /// Normal operation.
        Info = "info",
        /// Something unexpected that the arbiter handled.
        Warning = "warning",
        /// Something failed.
        Error = "error",
        /// The arbiter cannot go on.
        Critical = "critical",
    }
}

named_enum! {
    /// How log records are written.
    LogFormat {
        /// One human-readable line per record.
        Text = "text",
        /// One JSON object per line.
        Json = "json",
    }
}

named_enum! {
    /// Whether text log lines about a worker carry that worker's colour.
    ColorChoice {
        /// Only when the log goes to a terminal and `NO_COLOR` is unset.
        Auto = "auto",
        /// Always (text logs; JSON never has colour codes).
        Always = "always",
        /// Never.
        Never = "never",
    }
}

named_enum! {
    /// What a worker's boot failure (exit 3 or 4) does to the master.
    BootErrorPolicy {
        /// Stop the master with the worker's exit code.
        Halt = "halt",
        /// Keep respawning, with the crash-loop delay.
        Backoff = "backoff",
    }
}

named_enum! {
    /// When a spawned worker counts as ready.
    ReadyMode {
        /// When it sends `READY=1`.
        Notify = "notify",
        /// As soon as it has been exec'd.
        Exec = "exec",
        /// `exec` until a worker of this command has ever sent `READY=1`, then `notify`.
        Auto = "auto",
    }
}

named_enum! {
    /// The signal sent to workers on a quick stop.
    QuickSignal {
        /// SIGQUIT (gunicorn's choice; core-dumps programs without a handler).
        Quit = "QUIT",
        /// SIGINT.
        Int = "INT",
        /// SIGTERM.
        Term = "TERM",
        /// SIGKILL.
        Kill = "KILL",
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            config_file: None,
            bind: vec!["127.0.0.1:8000".to_owned()],
            bind_explicit: false,
            workers: 1,
            timeout: Some(Duration::from_secs(30)),
            heartbeat_filter: true,
            boot_timeout: Some(Duration::from_secs(60)),
            graceful_timeout: Duration::from_secs(30),
            abort_grace: Duration::from_secs(1),
            shutdown_delay: Duration::ZERO,
            pidfile: None,
            name: None,
            env: Vec::new(),
            chdir: None,
            reuse_port: false,
            reuse_port_per_slot: false,
            backlog: 2048,
            umask: 0o022,
            bind_retries: 5,
            log_level: LogLevel::Info,
            log_file: None,
            log_format: LogFormat::Text,
            color: ColorChoice::Auto,
            worker_tmp_dir: None,
            user: None,
            group: None,
            on_boot_error: BootErrorPolicy::Halt,
            ready: ReadyMode::Auto,
            ready_after: Duration::ZERO,
            quick_signal: QuickSignal::Quit,
            forward_usr1: false,
            max_surge: 1,
            max_worker_age: None,
            max_worker_age_jitter: None,
            max_worker_memory: None,
            gpus: None,
            gpus_per_worker: 1,
            gpu_env: "CUDA_VISIBLE_DEVICES".to_owned(),
            daemon: false,
            check_config: false,
            control_socket: None,
            metrics_bind: None,
            statsd_host: None,
            statsd_prefix: "arbiter".to_owned(),
            capture_output: false,
            hooks: Hooks::default(),
            command: Vec::new(),
        }
    }
}

impl Settings {
    /// The readiness rule these settings give, in one line (`--check-config` prints it).
    pub fn readiness_rule(&self) -> String {
        let boot = match self.boot_timeout {
            Some(limit) => format!(
                "within the boot timeout ({})",
                humantime::format_duration(limit)
            ),
            None => "with no boot timeout".to_owned(),
        };
        let exec = match self.ready_after.is_zero() {
            true => "once exec'd".to_owned(),
            false => format!(
                "{} after its exec",
                humantime::format_duration(self.ready_after)
            ),
        };
        match self.ready {
            ReadyMode::Notify => format!("a worker is ready when it sends READY=1, {boot}"),
            ReadyMode::Exec => format!("a worker is ready {exec}; READY=1 is not awaited"),
            ReadyMode::Auto => format!(
                "a worker is ready {exec} until a worker of its command has sent READY=1, from \
                 then on when it sends READY=1 ({boot}); so first-generation workers count as \
                 ready at exec: if they send READY=1, set ready = \"notify\""
            ),
        }
    }

    /// The resolved configuration as a TOML configuration file: every key, one per line; an
    /// unset optional key is a comment. Read back with `--config`, it gives these settings.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if let Some(path) = &self.config_file {
            let _ = writeln!(out, "# resolved with {path:?}");
        }
        let mut line = |key: &str, value: Option<String>, unset: &str| {
            // Writing to a String cannot fail.
            let _ = match value {
                Some(value) => writeln!(out, "{key} = {value}"),
                None => writeln!(out, "# {key} is not set: {unset}"),
            };
        };
        let bind = list(self.bind.iter().map(String::as_str));
        if self.bind_explicit {
            line("bind", Some(bind), "");
        } else {
            let unset = format!("{bind}, or the sockets systemd passed when socket-activated");
            line("bind", None, &unset);
        }
        line("workers", Some(self.workers.to_string()), "");
        line("timeout", Some(duration_opt(self.timeout)), "");
        line(
            "heartbeat_filter",
            Some(self.heartbeat_filter.to_string()),
            "",
        );
        line("boot_timeout", Some(duration_opt(self.boot_timeout)), "");
        line(
            "graceful_timeout",
            Some(duration(self.graceful_timeout)),
            "",
        );
        line("abort_grace", Some(duration(self.abort_grace)), "");
        line("shutdown_delay", Some(duration(self.shutdown_delay)), "");
        line(
            "pidfile",
            self.pidfile.as_deref().map(path_str),
            "no pidfile",
        );
        line(
            "name",
            self.name.as_deref().map(quote),
            "the default process title",
        );
        let pairs: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line("env", Some(list(pairs.iter().map(String::as_str))), "");
        line(
            "chdir",
            self.chdir.as_deref().map(path_str),
            "the current directory",
        );
        line("reuse_port", Some(self.reuse_port.to_string()), "");
        line(
            "reuse_port_per_slot",
            Some(self.reuse_port_per_slot.to_string()),
            "",
        );
        line("backlog", Some(self.backlog.to_string()), "");
        line("umask", Some(format!("0o{:03o}", self.umask)), "");
        line("bind_retries", Some(self.bind_retries.to_string()), "");
        line("log_level", Some(quote(self.log_level.as_str())), "");
        line(
            "log_file",
            self.log_file.as_deref().map(path_str),
            "logs go to stderr",
        );
        line("log_format", Some(quote(self.log_format.as_str())), "");
        line("color", Some(quote(self.color.as_str())), "");
        line(
            "worker_tmp_dir",
            self.worker_tmp_dir.as_deref().map(path_str),
            "$TMPDIR if set, else /dev/shm, else /tmp",
        );
        line(
            "user",
            self.user.as_deref().map(quote),
            "workers run as the master's user",
        );
        line(
            "group",
            self.group.as_deref().map(quote),
            "the user's primary group, else the master's",
        );
        line(
            "on_boot_error",
            Some(quote(self.on_boot_error.as_str())),
            "",
        );
        line("ready", Some(quote(self.ready.as_str())), "");
        line("ready_after", Some(duration(self.ready_after)), "");
        line("quick_signal", Some(quote(self.quick_signal.as_str())), "");
        line("forward_usr1", Some(self.forward_usr1.to_string()), "");
        line("max_surge", Some(self.max_surge.to_string()), "");
        line(
            "max_worker_age",
            self.max_worker_age.map(duration),
            "workers are not recycled by age",
        );
        line(
            "max_worker_age_jitter",
            self.max_worker_age_jitter.map(duration),
            "half of max_worker_age",
        );
        line(
            "max_worker_memory",
            self.max_worker_memory.map(|size| quote(&size.to_string())),
            "workers are not recycled by memory",
        );
        let gpus = self.gpus.as_ref().map(|gpus| match gpus {
            GpuSelection::Auto => quote("auto"),
            GpuSelection::List(ids) => list(ids.iter().map(String::as_str)),
        });
        line("gpus", gpus, "no GPU assignment");
        line(
            "gpus_per_worker",
            Some(self.gpus_per_worker.to_string()),
            "",
        );
        line("gpu_env", Some(quote(&self.gpu_env)), "");
        line("daemon", Some(self.daemon.to_string()), "");
        line(
            "control_socket",
            self.control_socket.as_deref().map(path_str),
            "PIDFILE.ctl, else $XDG_RUNTIME_DIR/arbiter.ctl",
        );
        line(
            "metrics_bind",
            self.metrics_bind.map(|addr| quote(&addr.to_string())),
            "no metrics endpoint",
        );
        line(
            "statsd_host",
            self.statsd_host.as_deref().map(quote),
            "no statsd",
        );
        line("statsd_prefix", Some(quote(&self.statsd_prefix)), "");
        line("capture_output", Some(self.capture_output.to_string()), "");
        line(
            "on_starting",
            self.hooks.on_starting.as_deref().map(quote),
            "no hook",
        );
        line(
            "when_ready",
            self.hooks.when_ready.as_deref().map(quote),
            "no hook",
        );
        line(
            "on_reload",
            self.hooks.on_reload.as_deref().map(quote),
            "no hook",
        );
        line(
            "nworkers_changed",
            self.hooks.nworkers_changed.as_deref().map(quote),
            "no hook",
        );
        line(
            "worker_exit",
            self.hooks.worker_exit.as_deref().map(quote),
            "no hook",
        );
        line(
            "on_exit",
            self.hooks.on_exit.as_deref().map(quote),
            "no hook",
        );
        let command: Vec<String> = self
            .command
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        line(
            "command",
            Some(list(command.iter().map(String::as_str))),
            "",
        );
        // The rule `ready` and `ready_after` give, right after them.
        let rule = format!("# readiness: {}\n", self.readiness_rule());
        let at = out
            .find("\nready_after = ")
            .and_then(|start| out[start + 1..].find('\n').map(|end| start + end + 2))
            .unwrap_or(out.len());
        out.insert_str(at, &rule);
        out
    }
}

fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn path_str(path: &std::path::Path) -> String {
    quote(&path.to_string_lossy())
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(quote).collect();
    format!("[{}]", items.join(", "))
}

fn duration(value: Duration) -> String {
    if value.is_zero() {
        "0".to_owned()
    } else {
        quote(&humantime::format_duration(value).to_string())
    }
}

fn duration_opt(value: Option<Duration>) -> String {
    value.map_or_else(|| "0".to_owned(), duration)
}
