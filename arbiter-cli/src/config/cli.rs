//! The command line: clap's definition, turned into a layer of raw values.

use std::ffi::OsString;
use std::path::PathBuf;

use super::error::Origin;
use super::raw::{Layer, Raw, Sourced};

/// The options of `arbiter` alone, for callers that parse an argv without subcommands
/// ([`super::load`]).
#[derive(Debug, clap::Parser)]
#[command(name = "arbiter", version, args_override_self = true)]
pub(crate) struct ServeCommand {
    #[command(flatten)]
    pub(crate) args: ServeArgs,
}

/// The options of `arbiter` / `arbiter serve`: every option is also a key of the `--config`
/// file and an `ARBITER_<KEY>` environment variable; the command line wins over both.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file [env: ARBITER_CONFIG]
    #[arg(short = 'c', long, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// Validate the configuration, print it resolved as TOML, and exit
    #[arg(long)]
    pub(crate) check_config: bool,
    /// Address to listen on: HOST:PORT, [V6]:PORT, unix:PATH, fd://N (repeatable) [default: 127.0.0.1:8000]
    #[arg(short, long, value_name = "ADDRESS", action = clap::ArgAction::Append)]
    bind: Vec<String>,
    /// Number of worker processes, 1 to 100000 [default: 1]
    #[arg(short, long, value_name = "N")]
    workers: Option<String>,
    /// Heartbeat timeout: seconds or 30s, 500ms, 1m; 0 disables [default: 30s]
    #[arg(short, long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Let the kernel take bare WATCHDOG=1 datagrams (an eBPF socket filter; needs CAP_BPF) [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    heartbeat_filter: Option<String>,
    /// Time a worker has to report READY=1; 0 disables [default: 60s]
    #[arg(long, value_name = "DURATION")]
    boot_timeout: Option<String>,
    /// Time workers get to exit on stop before they are killed [default: 30s]
    #[arg(long, value_name = "DURATION")]
    graceful_timeout: Option<String>,
    /// Time between the abort signal and KILL for a hung worker [default: 1s]
    #[arg(long, value_name = "DURATION")]
    abort_grace: Option<String>,
    /// On TERM or ctl stop: report not ready, keep serving this long, then stop [default: 0]
    #[arg(long, value_name = "DURATION")]
    shutdown_delay: Option<String>,
    /// Write the master's pid to this file
    #[arg(short, long, value_name = "PATH")]
    pidfile: Option<String>,
    /// Name shown in the process title
    #[arg(short, long, value_name = "NAME")]
    name: Option<String>,
    /// Set a variable in the workers' environment (repeatable)
    #[arg(short, long, value_name = "KEY=VALUE", action = clap::ArgAction::Append)]
    env: Vec<String>,
    /// Change to this directory before starting workers
    #[arg(long, value_name = "DIR")]
    chdir: Option<String>,
    /// Set SO_REUSEPORT on the listeners
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    reuse_port: Option<String>,
    /// One SO_REUSEPORT listener per worker slot for each TCP bind, held by the master
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    reuse_port_per_slot: Option<String>,
    /// Listen backlog, 1..=65535 [default: 2048]
    #[arg(long, value_name = "N")]
    backlog: Option<String>,
    /// File mode creation mask: 0o22, 022 (octal) or 18 [default: 0o022]
    #[arg(long, value_name = "MASK")]
    umask: Option<String>,
    /// Times a failed bind is retried, one second apart [default: 5]
    #[arg(long, value_name = "N")]
    bind_retries: Option<String>,
    /// trace, debug, info, warning, error or critical [default: info]
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log file; - for stderr [default: -]
    #[arg(long, value_name = "PATH")]
    log_file: Option<String>,
    /// text or json [default: text]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Colour worker lines by pid: auto (a terminal without NO_COLOR), always or never [default: auto]
    #[arg(long, value_name = "WHEN")]
    color: Option<String>,
    /// Directory for worker heartbeat files [default: $TMPDIR if set, else /dev/shm, else /tmp]
    #[arg(long, value_name = "DIR")]
    worker_tmp_dir: Option<String>,
    /// Run workers as this user (name or uid); the master keeps its own
    #[arg(short = 'u', long, value_name = "USER")]
    user: Option<String>,
    /// Run workers with this group (name or gid) [default: the user's primary group]
    #[arg(short = 'g', long, value_name = "GROUP")]
    group: Option<String>,
    /// On a worker's boot error (exit 3 or 4): halt or backoff [default: halt]
    #[arg(long, value_name = "POLICY")]
    on_boot_error: Option<String>,
    /// When a worker is ready: notify (READY=1), exec, or auto [default: auto]
    #[arg(long, value_name = "MODE")]
    ready: Option<String>,
    /// For workers that do not send READY=1: count them ready this long after exec [default: 0]
    #[arg(long, value_name = "DURATION")]
    ready_after: Option<String>,
    /// Signal sent to workers on a quick stop: QUIT, INT, TERM or KILL [default: QUIT]
    #[arg(long, value_name = "SIGNAL")]
    quick_signal: Option<String>,
    /// Forward USR1 to the workers after reopening the logs
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    forward_usr1: Option<String>,
    /// Workers spawned above N during a rolling reload or a recycle [default: 1]
    #[arg(long, value_name = "N")]
    max_surge: Option<String>,
    /// Recycle each worker at this age, replacement first, slots taking turns [default: 0, off]
    #[arg(long, value_name = "DURATION")]
    max_worker_age: Option<String>,
    /// How much earlier than --max-worker-age a worker may go, so slots take turns [default: half the age]
    #[arg(long, value_name = "DURATION")]
    max_worker_age_jitter: Option<String>,
    /// Recycle a worker whose process group's resident memory is above SIZE (512M, 2G) [default: 0, off]
    #[arg(long, value_name = "SIZE")]
    max_worker_memory: Option<String>,
    /// GPUs to spread workers over: auto, or ids such as 0,1,2 [env: ARBITER_GPUS, USE_GPUS]
    #[arg(long, value_name = "auto|IDS")]
    gpus: Option<String>,
    /// GPUs given to each worker [default: 1]
    #[arg(long, value_name = "N")]
    gpus_per_worker: Option<String>,
    /// Variable that carries a worker's GPU ids [default: CUDA_VISIBLE_DEVICES]
    #[arg(long, value_name = "NAME")]
    gpu_env: Option<String>,
    /// Detach and run in the background
    #[arg(short = 'D', long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    daemon: Option<String>,
    /// Control socket for `arbiter ctl` [default: PIDFILE.ctl, else $XDG_RUNTIME_DIR/arbiter.ctl]
    #[arg(long, value_name = "PATH")]
    control_socket: Option<String>,
    /// Serve Prometheus /metrics, /healthz and /readyz over HTTP at this address (HOST:PORT)
    #[arg(long, value_name = "ADDRESS")]
    metrics_bind: Option<String>,
    /// Send metrics to this statsd daemon over UDP (HOST:PORT)
    #[arg(long, value_name = "ADDRESS")]
    statsd_host: Option<String>,
    /// Prefix of the statsd metric names [default: arbiter]
    #[arg(long, value_name = "PREFIX")]
    statsd_prefix: Option<String>,
    /// Relay each line workers write to stdout and stderr through the arbiter's log
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    capture_output: Option<String>,
    /// Shell command run before the listeners are bound (waited for, 30 s at most)
    #[arg(long, value_name = "COMMAND")]
    on_starting: Option<String>,
    /// Shell command run once the first generation of workers is ready
    #[arg(long, value_name = "COMMAND")]
    when_ready: Option<String>,
    /// Shell command run on each reload (HUP or ctl reload), once the new configuration is in
    #[arg(long, value_name = "COMMAND")]
    on_reload: Option<String>,
    /// Shell command run when the target number of workers changes (ARBITER_HOOK_OLD, ARBITER_HOOK_NEW)
    #[arg(long, value_name = "COMMAND")]
    nworkers_changed: Option<String>,
    /// Shell command run after a worker exited (ARBITER_HOOK_WORKER_PID, _SLOT, _STATUS)
    #[arg(long, value_name = "COMMAND")]
    worker_exit: Option<String>,
    /// Shell command run just before the master exits (waited for, 5 s at most)
    #[arg(long, value_name = "COMMAND")]
    on_exit: Option<String>,
    /// The worker command, after --; none runs the built-in worker
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub(crate) command: Vec<OsString>,
}

impl ServeArgs {
    /// The options given on the command line, as raw values tagged with their flag.
    pub(crate) fn layer(&self) -> Layer {
        let mut layer = Layer::new();
        let mut put = |key: &'static str, flag: &'static str, raw: Option<Raw>| {
            if let Some(raw) = raw {
                let origin = Origin::Flag(flag);
                layer.insert(key, Sourced { raw, origin });
            }
        };
        let one = |value: &Option<String>| value.clone().map(Raw::Str);
        let many = |values: &Vec<String>| {
            (!values.is_empty()).then(|| Raw::List(values.iter().cloned().map(Raw::Str).collect()))
        };
        put("bind", "--bind", many(&self.bind));
        put("workers", "--workers", one(&self.workers));
        put("timeout", "--timeout", one(&self.timeout));
        put(
            "heartbeat_filter",
            "--heartbeat-filter",
            one(&self.heartbeat_filter),
        );
        put("boot_timeout", "--boot-timeout", one(&self.boot_timeout));
        put(
            "graceful_timeout",
            "--graceful-timeout",
            one(&self.graceful_timeout),
        );
        put("abort_grace", "--abort-grace", one(&self.abort_grace));
        put(
            "shutdown_delay",
            "--shutdown-delay",
            one(&self.shutdown_delay),
        );
        put("pidfile", "--pidfile", one(&self.pidfile));
        put("name", "--name", one(&self.name));
        put("env", "--env", many(&self.env));
        put("chdir", "--chdir", one(&self.chdir));
        put("reuse_port", "--reuse-port", one(&self.reuse_port));
        put(
            "reuse_port_per_slot",
            "--reuse-port-per-slot",
            one(&self.reuse_port_per_slot),
        );
        put("backlog", "--backlog", one(&self.backlog));
        put("umask", "--umask", one(&self.umask));
        put("bind_retries", "--bind-retries", one(&self.bind_retries));
        put("log_level", "--log-level", one(&self.log_level));
        put("log_file", "--log-file", one(&self.log_file));
        put("log_format", "--log-format", one(&self.log_format));
        put("color", "--color", one(&self.color));
        put(
            "worker_tmp_dir",
            "--worker-tmp-dir",
            one(&self.worker_tmp_dir),
        );
        put("user", "--user", one(&self.user));
        put("group", "--group", one(&self.group));
        put("on_boot_error", "--on-boot-error", one(&self.on_boot_error));
        put("ready", "--ready", one(&self.ready));
        put("ready_after", "--ready-after", one(&self.ready_after));
        put("quick_signal", "--quick-signal", one(&self.quick_signal));
        put("forward_usr1", "--forward-usr1", one(&self.forward_usr1));
        put("max_surge", "--max-surge", one(&self.max_surge));
        put(
            "max_worker_age",
            "--max-worker-age",
            one(&self.max_worker_age),
        );
        put(
            "max_worker_age_jitter",
            "--max-worker-age-jitter",
            one(&self.max_worker_age_jitter),
        );
        put(
            "max_worker_memory",
            "--max-worker-memory",
            one(&self.max_worker_memory),
        );
        put("gpus", "--gpus", one(&self.gpus));
        put(
            "gpus_per_worker",
            "--gpus-per-worker",
            one(&self.gpus_per_worker),
        );
        put("gpu_env", "--gpu-env", one(&self.gpu_env));
        put("daemon", "--daemon", one(&self.daemon));
        put(
            "control_socket",
            "--control-socket",
            one(&self.control_socket),
        );
        put("metrics_bind", "--metrics-bind", one(&self.metrics_bind));
        put("statsd_host", "--statsd-host", one(&self.statsd_host));
        put("statsd_prefix", "--statsd-prefix", one(&self.statsd_prefix));
        put(
            "capture_output",
            "--capture-output",
            one(&self.capture_output),
        );
        put("on_starting", "--on-starting", one(&self.on_starting));
        put("when_ready", "--when-ready", one(&self.when_ready));
        put("on_reload", "--on-reload", one(&self.on_reload));
        put(
            "nworkers_changed",
            "--nworkers-changed",
            one(&self.nworkers_changed),
        );
        put("worker_exit", "--worker-exit", one(&self.worker_exit));
        put("on_exit", "--on-exit", one(&self.on_exit));
        layer
    }
}
