//! The vocabulary shared by inputs and actions.

use std::fmt;
use std::time::Duration;

use arbiter_gpu::GpuConfig;

/// A process id as the kernel reports it.
pub type Pid = i32;

/// A worker's age: assigned in spawn order, monotonic, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A worker's stable position 0..N-1, reused when a worker is replaced.
pub type Slot = usize;

/// The signals the arbiter receives or sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGHUP: reload.
    Hup,
    /// SIGINT: quick stop.
    Int,
    /// SIGQUIT: quick stop.
    Quit,
    /// SIGTERM: graceful stop.
    Term,
    /// SIGKILL: sent only.
    Kill,
    /// SIGABRT: the default abort signal for a hung worker.
    Abrt,
    /// SIGUSR1: reopen log files.
    Usr1,
    /// SIGUSR2: re-exec (upgrade).
    Usr2,
    /// SIGTTIN: one more worker.
    Ttin,
    /// SIGTTOU: one fewer worker.
    Ttou,
    /// SIGWINCH: stop the workers when daemonized.
    Winch,
    /// SIGCHLD: a child changed state; the shell reaps and reports exits.
    Chld,
}

impl Signal {
    /// The conventional upper-case name without the `SIG` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Abrt => "ABRT",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Ttin => "TTIN",
            Signal::Ttou => "TTOU",
            Signal::Winch => "WINCH",
            Signal::Chld => "CHLD",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// How a child ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called exit with this code.
    Exited(i32),
    /// A signal (by number) ended it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// SIGKILL's number on every Linux architecture.
    pub const SIGKILL: i32 = 9;

    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(code) => Some(code),
            ExitStatus::Signaled { .. } => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(code) => write!(f, "exited {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by signal {signal}")?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// When a worker counts as ready (DESIGN.md "Readiness and liveness").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadyMode {
    /// Only `READY=1` on the notify socket makes a worker ready.
    Notify,
    /// A worker is ready as soon as it has been exec'd.
    Exec,
    /// `Notify` for a command that has ever sent `READY=1`, `Exec` until then.
    #[default]
    Auto,
}

/// What a worker exiting with code 3 (boot error) or 4 (app load error) does to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootErrorPolicy {
    /// Stop every worker and exit with the worker's code, as gunicorn does.
    #[default]
    Halt,
    /// Treat it as a crash: respawn with a growing delay.
    Backoff,
}

/// How this master came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Started by a user or a service manager.
    #[default]
    Fresh,
    /// Exec'd by an older master's USR2; it promotes itself when that parent exits.
    UpgradeChild {
        /// The old master's pid.
        parent: Pid,
    },
}

/// What the core decides with. Durations of `None` disable that timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Target number of workers.
    pub workers: usize,
    /// Heartbeat timeout, applied from a worker's first heartbeat on.
    pub timeout: Option<Duration>,
    /// How long a worker may take to send `READY=1` when readiness is awaited.
    pub boot_timeout: Option<Duration>,
    /// How long stopping workers get before KILL.
    pub graceful_timeout: Duration,
    /// Time between the abort signal and KILL for a hung worker.
    pub abort_grace: Duration,
    /// The signal sent to a hung worker first.
    pub abort_signal: Signal,
    /// The signal sent to workers on a quick stop (INT / QUIT).
    pub quick_signal: Signal,
    /// Readiness rule.
    pub ready: ReadyMode,
    /// For a worker whose `READY=1` is not awaited: how long after its exec it counts as
    /// ready (zero: at once).
    pub ready_after: Duration,
    /// What exit codes 3 and 4 do.
    pub on_boot_error: BootErrorPolicy,
    /// Workers allowed above `workers` during a rolling reload (at least 1).
    pub max_surge: usize,
    /// Whether the master runs as a daemon (WINCH stops the workers only then).
    pub daemonized: bool,
    /// Whether USR1 is forwarded to every worker.
    pub forward_usr1: bool,
    /// An identity for the worker command line, so `ReadyMode::Auto` can remember which
    /// commands speak the notify protocol.
    pub command_key: u64,
    /// GPU balancing, if enabled.
    pub gpus: Option<GpuConfig>,
    /// Whether the master keeps a pidfile. Fixed at start: a reload does not change it.
    pub pidfile: bool,
    /// How often to send `WATCHDOG=1` to the service manager (half its `WATCHDOG_USEC`), if
    /// it asked for pings. Only the main master pings: an upgrade child starts at promotion.
    pub watchdog: Option<Duration>,
    /// On a graceful stop (TERM, `Command::Stop`): how long to report not ready while still
    /// serving with every listener open before the stop begins (zero: stop at once). A
    /// second stop order, or a quick one, cuts it short; skipped while an upgrade is under
    /// way, where the other master serves on the same listeners.
    pub shutdown_delay: Duration,
    /// The master's service manager waits for its `READY=1` (`NOTIFY_SOCKET` was set for it):
    /// while the first generation boots, keep extending the manager's start timeout
    /// (`EXTEND_TIMEOUT_USEC=`), up to `boot_timeout` (plus the abort grace and a period)
    /// after the start. Nothing without a boot timeout, nor for an upgrade child.
    pub extend_start: bool,
    /// Recycle a worker once it is this old (replacement first, as a reload does).
    pub max_worker_age: Option<Duration>,
    /// The stagger of age recycling: a worker is recycled between `max_worker_age` minus
    /// this and `max_worker_age` after its exec, on its slot's own schedule, so two slots never
    /// recycle together. `None`: half of `max_worker_age`; zero: no stagger.
    pub max_worker_age_jitter: Option<Duration>,
    /// Recycle a worker whose process group's resident memory is above this many bytes.
    pub max_worker_memory: Option<u64>,
    /// How often the shell samples the workers' memory ([`crate::Action::SampleMemory`])
    /// while `max_worker_memory` is set.
    pub memory_sample_every: Duration,
    /// Each slot has its own listeners (per-slot `SO_REUSEPORT` sockets held by the shell):
    /// the core says which slots the shell holds listeners for and which get new connections
    /// ([`crate::Action::SlotListeners`]), and a slot taken away by a lower target first gets
    /// no new connection for [`SLOT_DRAIN`], then until its queue is found empty, while its
    /// worker still serves (and drains the slot's queue), before the worker is retired (at
    /// once with GPU balancing, which keeps a device at its cap plus the surge).
    pub slot_listeners: bool,
}

/// How long a slot taken away by a lower target keeps its worker serving, with no new
/// connection steered to it, before the worker is retired: the worker accepts what its queue
/// still holds (and handshakes begun before the steering change land meanwhile). The worker
/// is retired only once the slots' queues are found empty ([`crate::Action::CheckSlotQueues`],
/// asked again every [`SLOT_DRAIN_POLL`]), or at the latest `graceful_timeout` after the
/// drain began.
pub const SLOT_DRAIN: Duration = Duration::from_secs(1);

/// How often a drain past [`SLOT_DRAIN`] asks again whether the queues are empty.
pub const SLOT_DRAIN_POLL: Duration = Duration::from_millis(50);

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 1,
            timeout: Some(Duration::from_secs(30)),
            boot_timeout: Some(Duration::from_secs(60)),
            graceful_timeout: Duration::from_secs(30),
            abort_grace: Duration::from_secs(1),
            abort_signal: Signal::Abrt,
            quick_signal: Signal::Quit,
            ready: ReadyMode::Auto,
            ready_after: Duration::ZERO,
            on_boot_error: BootErrorPolicy::Halt,
            max_surge: 1,
            daemonized: false,
            forward_usr1: false,
            command_key: 0,
            gpus: None,
            pidfile: false,
            watchdog: None,
            shutdown_delay: Duration::ZERO,
            extend_start: false,
            max_worker_age: None,
            max_worker_age_jitter: None,
            max_worker_memory: None,
            memory_sample_every: Duration::from_secs(2),
            slot_listeners: false,
        }
    }
}

/// Orders a user or tool can give the master besides signals (the control socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Set the target number of workers: 1 to [`MAX_WORKERS`](crate::MAX_WORKERS); 0 and
    /// more than that are refused. Every order but `Stop` is refused while stopping.
    Scale(usize),
    /// Stop gracefully, or quickly.
    Stop {
        /// Quick stop (the quick signal instead of TERM).
        quick: bool,
    },
    /// Retire one worker by pid as a cull does (TERM, KILL after the graceful timeout); its
    /// slot gets a replacement. Refused for a pid that is not a running worker, and while
    /// stopping (every worker is being stopped then).
    KillWorker(Pid),
    /// Re-read the configuration and roll the workers, as HUP does.
    Reload,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Scale(n) => write!(f, "scale {n}"),
            Command::Stop { quick: false } => f.write_str("stop"),
            Command::Stop { quick: true } => f.write_str("stop --quick"),
            Command::KillWorker(pid) => write!(f, "kill-worker {pid}"),
            Command::Reload => f.write_str("reload"),
        }
    }
}
