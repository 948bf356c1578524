//! The built-in HTTP worker: what `arbiter worker [SWITCHES]` runs, and the reference
//! implementation of the worker protocol.
//!
//! Model: one thread, one epoll loop ([`server`]). It serves HTTP/1.1 with keep-alive and
//! pipelining on every inherited listener (fds 3..3+`LISTEN_FDS`, TCP or unix), sends
//! `READY=1`, `WATCHDOG=1` and `STOPPING=1` to `NOTIFY_SOCKET`, and bumps the ctime of the
//! `ARBITER_HEARTBEAT_FD` file. Routes: `/` (identity JSON), `/env/NAME`, `/sleep/MS`, `/hang`,
//! `/crash`, `/exit/N`. Signals: TERM stops gracefully (exit 0 once in-flight responses are
//! sent), INT and QUIT exit 0 at once, USR1 is ignored. With `--max-requests N` it sends
//! `X_ARBITER_RECYCLE=1` once after N requests and keeps serving until the master, its
//! replacement ready, sends TERM.
//!
//! Invariants: nothing is bound by the worker itself; it prints nothing but errors (prefixed
//! `arbiter worker: `) and never logs per request; exit 3 means it could not boot (no or bad
//! listeners, bad protocol variables), 2 bad switches, 1 a runtime failure.
//!
//! Limits: no chunked request bodies (501), heads up to 8 KiB, no TLS; `LISTEN_PID` is honoured
//! when set but not required.

/// HTTP/1.x request-head parsing, routing and responses (pure; public for fuzzing).
pub mod http;
mod listeners;
mod protocol;
mod server;
mod signals;

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::{Events, Poll};

use http::{Identity, RootResponses};
use protocol::{Heartbeat, Notifier, WorkerEnv};
use server::{Behaviour, Server};
use signals::{Signals, Stop};

/// Errors of the built-in worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// `LISTEN_FDS` is missing or zero.
    #[error("no listeners: set LISTEN_FDS")]
    NoListeners,
    /// `LISTEN_PID` names another process, so the listeners are not ours.
    #[error("no listeners: LISTEN_PID is {listen_pid}, not this worker's pid {pid}")]
    ForeignListeners {
        /// The value of `LISTEN_PID`.
        listen_pid: u64,
        /// This worker's pid.
        pid: u32,
    },
    /// A protocol variable does not hold what it should.
    #[error("invalid {name}: {value:?}")]
    BadVariable {
        /// The variable's name.
        name: &'static str,
        /// Its value.
        value: OsString,
    },
    /// An inherited descriptor is not what the protocol says it is.
    #[error("fd {fd} {reason}")]
    BadDescriptor {
        /// The descriptor number.
        fd: RawFd,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl WorkerError {
    /// The exit status: 3 (boot error) for a bad environment, 1 for a failing system call.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Io { .. } => 1,
            _ => 3,
        }
    }
}

/// The switches of `arbiter worker`.
#[derive(Debug, Parser)]
#[command(
    name = "arbiter worker",
    version,
    about = "The built-in HTTP worker: serves on inherited listeners (LISTEN_FDS) and speaks the worker protocol"
)]
pub struct Switches {
    /// Exit with CODE before becoming ready (3 simulates a boot error, 4 an app load error).
    #[arg(long, value_name = "CODE")]
    boot_exit: Option<u8>,
    /// Sleep this long before serving, like a slow application load.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    boot_delay: Option<Duration>,
    /// Serve at once, but send READY=1 only after this long.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    ready_delay: Option<Duration>,
    /// Hang (stop heartbeating and serving) after this long.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    hang_after: Option<Duration>,
    /// Exit 1 after this long.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    crash_after: Option<Duration>,
    /// Ignore TERM, so that only the master's KILL ends the worker.
    #[arg(long)]
    ignore_term: bool,
    /// Speak no protocol: no READY=1, no heartbeat, no WATCHDOG=1.
    #[arg(long)]
    silent: bool,
    /// After N requests, ask the master to replace this worker (X_ARBITER_RECYCLE=1 on
    /// NOTIFY_SOCKET) and keep serving until its TERM (gunicorn's max_requests, without the
    /// capacity dip).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_requests: Option<u64>,
    /// Add up to N to --max-requests, chosen from ARBITER_WORKER_ID, so workers started
    /// together do not all ask at once.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "max_requests")]
    max_requests_jitter: u64,
}

/// `max_requests` plus a share of `jitter` (0..=jitter) fixed by the worker's id (splitmix64),
/// so the same worker always gets the same limit and consecutive ids are spread.
fn request_limit(max_requests: u64, jitter: u64, worker_id: Option<u64>) -> u64 {
    if jitter == 0 {
        return max_requests;
    }
    let mut z = worker_id.unwrap_or(0).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    max_requests.saturating_add(z % jitter.saturating_add(1))
}

/// Parses a duration such as `250ms`, `1s` or `1m 30s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (try 250ms, 1s, 2m)"))
}

/// Runs the built-in worker with its switches; returns the exit status.
pub fn main(switches: &Switches) -> Result<u8, WorkerError> {
    run(switches)
}

/// What the worker takes from its environment and inherited descriptors.
struct Inherited {
    env: WorkerEnv,
    listeners: Vec<listeners::Listener>,
    heartbeat_file: Option<std::os::fd::OwnedFd>,
}

/// Takes the inherited descriptors. Runs before the worker opens any descriptor of its own, so
/// a number the protocol names cannot be one the worker created (a closed fd 3 would otherwise
/// be reused by the epoll instance and then "adopted").
fn inherit(silent: bool) -> Result<Inherited, WorkerError> {
    let env = WorkerEnv::parse(|name| std::env::var_os(name), std::process::id())?;
    let listeners = listeners::take_listeners(env.listen_fds)?;
    let heartbeat_file = match env.heartbeat_fd {
        Some(fd) if !silent => Some(listeners::take_heartbeat(fd, env.listen_fds)?),
        _ => None,
    };
    Ok(Inherited {
        env,
        listeners,
        heartbeat_file,
    })
}

fn run(switches: &Switches) -> Result<u8, WorkerError> {
    // Errors of the environment are reported after --boot-delay and --boot-exit, which
    // simulate an application that fails (or takes its time) whatever its environment.
    let inherited = inherit(switches.silent);
    let signals = Signals::block(switches.ignore_term)?;
    let mut poll = Poll::new().map_err(|source| WorkerError::Io {
        what: "epoll create",
        source,
    })?;
    server::register_signals(&poll, &signals)?;
    if let Some(delay) = switches.boot_delay {
        if boot_wait(&mut poll, &signals, delay)? {
            return Ok(0);
        }
    }
    if let Some(code) = switches.boot_exit {
        return Ok(code);
    }
    let Inherited {
        env,
        listeners,
        heartbeat_file,
    } = inherited?;
    let notifier = match &env.notify_socket {
        Some(target) if !switches.silent => Some(Notifier::new(target)?),
        _ => None,
    };
    let heartbeat = Heartbeat::new(heartbeat_file, env.watchdog && notifier.is_some());
    let identity = Identity {
        pid: std::process::id(),
        id: env.worker_id,
        slot: env.slot,
        gpu: env.gpu.clone(),
    };
    let behaviour = Behaviour {
        ready_delay: switches.ready_delay,
        hang_after: switches.hang_after,
        crash_after: switches.crash_after,
        max_requests: switches
            .max_requests
            .map(|n| request_limit(n, switches.max_requests_jitter, env.worker_id)),
    };
    Server::new(
        poll,
        signals,
        listeners,
        RootResponses::new(&identity),
        notifier,
        heartbeat,
        env.heartbeat_interval,
        &behaviour,
    )?
    .run()
}

/// Sleeps `delay` while still answering signals; true when a signal asks to stop.
fn boot_wait(poll: &mut Poll, signals: &Signals, delay: Duration) -> Result<bool, WorkerError> {
    // A delay too long to represent means forever.
    let deadline = Instant::now().checked_add(delay);
    let mut events = Events::with_capacity(4);
    loop {
        let timeout = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(false),
            },
            None => None,
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(WorkerError::Io {
                    what: "epoll wait",
                    source,
                })
            }
        }
        if !events.is_empty() && signals.drain()? != Stop::None {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod switch_tests {
    use super::*;

    fn switches(args: &[&str]) -> Result<Switches, clap::Error> {
        Switches::try_parse_from(std::iter::once("arbiter worker").chain(args.iter().copied()))
    }

    #[test]
    fn durations_use_humantime() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        let error = parse_duration("soon").unwrap_err();
        assert!(error.contains("try 250ms"), "{error}");
        assert!(parse_duration("5").is_err(), "a unit is required");
    }

    #[test]
    fn switches_parse() {
        let parsed = switches(&[
            "--boot-exit",
            "4",
            "--boot-delay",
            "1s",
            "--ready-delay",
            "300ms",
            "--hang-after",
            "2s",
            "--crash-after",
            "3s",
            "--ignore-term",
            "--silent",
        ])
        .unwrap();
        assert_eq!(parsed.boot_exit, Some(4));
        assert_eq!(parsed.boot_delay, Some(Duration::from_secs(1)));
        assert_eq!(parsed.ready_delay, Some(Duration::from_millis(300)));
        assert_eq!(parsed.hang_after, Some(Duration::from_secs(2)));
        assert_eq!(parsed.crash_after, Some(Duration::from_secs(3)));
        assert!(parsed.ignore_term && parsed.silent);
        let plain = switches(&[]).unwrap();
        assert!(plain.boot_exit.is_none() && !plain.silent && !plain.ignore_term);
        assert!(switches(&["--boot-exit", "300"]).is_err());
        let recycled = switches(&["--max-requests", "100", "--max-requests-jitter", "10"]).unwrap();
        assert_eq!(recycled.max_requests, Some(100));
        assert_eq!(recycled.max_requests_jitter, 10);
        assert!(switches(&["--max-requests", "0"]).is_err());
        assert!(
            switches(&["--max-requests-jitter", "5"]).is_err(),
            "jitter alone"
        );
        assert!(switches(&["--ready-delay", "soon"]).is_err());
        assert_eq!(
            switches(&["--bogus"]).unwrap_err().exit_code(),
            2,
            "usage errors exit 2"
        );
    }

    #[test]
    fn request_limits_spread_over_the_jitter_and_are_fixed_per_worker() {
        assert_eq!(request_limit(100, 0, Some(7)), 100);
        let limits: Vec<u64> = (1..=200)
            .map(|id| request_limit(100, 10, Some(id)))
            .collect();
        assert!(limits.iter().all(|n| (100..=110).contains(n)), "{limits:?}");
        let distinct: std::collections::BTreeSet<u64> = limits.iter().copied().collect();
        assert_eq!(distinct.len(), 11, "every share of the jitter is used");
        assert_eq!(
            request_limit(100, 10, Some(42)),
            request_limit(100, 10, Some(42))
        );
        assert_eq!(request_limit(u64::MAX, u64::MAX, Some(1)), u64::MAX);
    }

    #[test]
    fn environment_errors_are_boot_errors() {
        assert_eq!(WorkerError::NoListeners.exit_code(), 3);
        let io = WorkerError::Io {
            what: "epoll wait",
            source: std::io::Error::from_raw_os_error(nix::errno::Errno::EBADF as i32),
        };
        assert_eq!(io.exit_code(), 1);
    }
}
