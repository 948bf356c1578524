//! Operating a running master: the control socket (`arbiter ctl`), the metrics and probe
//! endpoint, and worker output capture, bundled as [`Ops`] for the event loop.
//!
//! Model: every fd here is non-blocking and polled by the master's single `poll()`; nothing
//! starts a thread. The loop asks [`Ops::interest`] for fds, hands back what poll reported to
//! [`Ops::handle`], carries out the returned [`Order`]s through the core, feeds the core's
//! events back ([`Ops::on_event`]), and calls [`Ops::settle`]
//! after each round of actions, so an order is answered only when it has taken effect.
//! Invariants: a slow or silent client costs one fd and never delays the loop; the socket is
//! 0600, refused on an unsafe path, and unlinked at exit only while it is still ours.

pub mod capture;
pub mod conns;
pub mod control;
pub mod metrics;
pub mod socket;
pub mod statsd;

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use arbiter_core::{Arbiter, Event, Moment, Phase, Pid, Reason, Signal};
use nix::poll::PollFlags;
use slog::{info, warn, Logger};

use self::capture::{Capture, WorkerPipes};
use self::metrics::{Counters, MetricsServer};
use self::statsd::Statsd;
use crate::config::Settings;
use crate::protocol;
use control::ControlServer;
pub use control::Order;

/// Why the control socket or the metrics listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket path is unsafe or taken.
    #[error("control socket {}: refused: {why}", path.display())]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Binding the socket failed.
    #[error("control socket {}: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The statsd host cannot be resolved or connected to.
    #[error("--statsd-host {host}: {source}")]
    Statsd {
        /// The host as given.
        host: String,
        /// The error.
        source: std::io::Error,
    },
    /// Binding the metrics address failed.
    #[error("--metrics-bind {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Where a master binds its control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPath {
    /// The path bound now (`PATH.2` for an upgrade child).
    pub bind_at: PathBuf,
    /// Where an upgrade child moves it when promoted.
    pub final_path: Option<PathBuf>,
    /// Configured explicitly: a socket that cannot be bound stops the start.
    pub explicit: bool,
}

/// The control socket a master with these settings binds, if any.
pub fn control_socket(
    settings: &Settings,
    env: &[(OsString, OsString)],
    upgrade_child: bool,
) -> Option<ControlPath> {
    let wanted = crate::protocol::path::for_master(
        settings.control_socket.as_deref(),
        settings.pidfile.as_deref(),
        env,
    )?;
    let (bind_at, final_path) = match upgrade_child {
        true => (
            crate::protocol::path::with_suffix(&wanted.path, ".2"),
            Some(wanted.path),
        ),
        false => (wanted.path, None),
    };
    Some(ControlPath {
        bind_at,
        final_path,
        explicit: wanted.explicit,
    })
}

/// The control socket, metrics endpoint and output capture of one master.
pub struct Ops {
    control: Option<ControlServer>,
    metrics: Option<MetricsServer>,
    counters: Counters,
    capture: Option<Capture>,
    statsd: Option<Statsd>,
}

impl Ops {
    /// Opens what the settings ask for. An explicit control socket that cannot be bound is an
    /// error; the default one only logs a warning. An upgrade child binds beside the old
    /// master's socket (`PATH.2`) and takes its path when promoted.
    pub fn open(
        settings: &Settings,
        env: &[(OsString, OsString)],
        upgrade_child: bool,
        log: &Logger,
    ) -> Result<Ops, ControlError> {
        let control = match control_socket(settings, env, upgrade_child) {
            None => None,
            Some(ControlPath {
                bind_at,
                final_path,
                explicit,
            }) => match socket::bind(&bind_at) {
                Ok((listener, identity)) => {
                    info!(log, "Control socket: {}", bind_at.display());
                    Some(ControlServer::new(listener, bind_at, identity, final_path))
                }
                Err(e) if explicit => return Err(e),
                Err(e) => {
                    warn!(log, "running without a control socket: {e}");
                    None
                }
            },
        };
        let metrics = match settings.metrics_bind {
            None => None,
            Some(addr) => {
                let server = MetricsServer::bind(addr)
                    .map_err(|source| ControlError::Metrics { addr, source })?;
                let at = server.local_addr().map_or(addr, |a| a);
                info!(log, "Metrics at: http://{at}/metrics");
                Some(server)
            }
        };
        let statsd = match &settings.statsd_host {
            None => None,
            Some(host) => {
                let statsd = Statsd::connect(host, &settings.statsd_prefix).map_err(|source| {
                    ControlError::Statsd {
                        host: host.clone(),
                        source,
                    }
                })?;
                info!(log, "Metrics to statsd at {host}");
                Some(statsd)
            }
        };
        Ok(Ops {
            control,
            metrics,
            statsd,
            counters: Counters::default(),
            capture: settings.capture_output.then(Capture::default),
        })
    }

    /// The fds to poll and for what; [`Ops::handle`] takes the results in the same order.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut out = Vec::new();
        if let Some(control) = &self.control {
            out.extend(control.interest());
        }
        if let Some(metrics) = &self.metrics {
            out.extend(metrics.interest());
        }
        if let Some(capture) = &self.capture {
            out.extend(capture.interest());
        }
        out
    }

    /// Whether `revents` include a control client or a metrics scrape: they read the workers'
    /// state, so the caller brings heartbeats up to date first.
    pub fn reads_state(&self, revents: &[PollFlags]) -> bool {
        let control = self.control.as_ref().map_or(0, |c| c.clients() + 1);
        let metrics = self.metrics.as_ref().map_or(0, |m| m.interest().len());
        let n = (control + metrics).min(revents.len());
        revents[..n].iter().any(|r| !r.is_empty())
    }

    /// Acts on what poll reported; returns the orders for the master to carry out.
    pub fn handle(
        &mut self,
        revents: &[PollFlags],
        core: &Arbiter,
        log: &Logger,
        now: Moment,
    ) -> Vec<Order> {
        let mut rest = revents;
        let mut orders = Vec::new();
        if let Some(control) = &mut self.control {
            let (mine, after) = rest.split_at(rest.len().min(control.clients() + 1));
            rest = after;
            orders = control.handle(mine, core, || status_line(core, now), now);
        }
        if let Some(server) = &mut self.metrics {
            let n = server.interest().len();
            let (mine, after) = rest.split_at(rest.len().min(n));
            rest = after;
            let counters = &self.counters;
            server.handle(mine, |p| metrics::route(p, core, counters, now), now);
        }
        if let Some(capture) = &mut self.capture {
            capture.handle(rest, |line| relay(log, line));
        }
        orders
    }

    /// After a round of actions: answers finished orders and enforces deadlines.
    pub fn settle(&mut self, core: &Arbiter, now: Moment) {
        if let Some(control) = &mut self.control {
            control.settle(core, now);
        }
        if let Some(metrics) = &mut self.metrics {
            metrics.settle(now);
        }
        if let Some(statsd) = &mut self.statsd {
            statsd.gauge("workers.live", core.active_count() as i64);
            statsd.gauge("workers.target", core.target() as i64);
            statsd.gauge("workers.ready", core.ready_count() as i64);
            for (device, holders) in core.gpu_load().unwrap_or_default() {
                // A device id may hold characters statsd reads as separators.
                let id: String = device
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                statsd.gauge(&format!("gpu.{id}.workers"), holders as i64);
            }
        }
    }

    /// The earliest deadline of a connection or an order.
    pub fn next_deadline(&self) -> Option<Moment> {
        let control = self.control.as_ref().and_then(ControlServer::next_deadline);
        let metrics = self.metrics.as_ref().and_then(MetricsServer::next_deadline);
        control.into_iter().chain(metrics).min()
    }

    /// The core emitted an event: every observer follows it (counters, statsd, waiting control
    /// orders); this is the only way the runtime tells the observers what happened.
    pub fn on_event(&mut self, event: &Event, log: &Logger, now: Moment) {
        self.counters.on_event(event);
        if let Some(statsd) = &self.statsd {
            match event {
                Event::WorkerSpawned { .. } => statsd.count("spawns", 1),
                Event::WorkerExited { cause, .. } => statsd.count(&format!("exits.{cause}"), 1),
                Event::ReloadFinished { .. } => statsd.count("reloads.ok", 1),
                Event::ConfigRejected { .. } => statsd.count("reloads.failed", 1),
                Event::Promoted => statsd.count("upgrades.ok", 1),
                Event::ReexecFailed
                | Event::ReexecExited { .. }
                | Event::SignalRefused {
                    signal: Signal::Usr2,
                    ..
                } => statsd.count("upgrades.failed", 1),
                Event::PidfileFailed { .. } => statsd.count("pidfile.failed", 1),
                _ => {}
            }
        }
        if let Some(control) = &mut self.control {
            control.on_event(event, now);
            if let Event::ConfigRejected { error } = event {
                control.reload_failed(error, now);
            }
            if matches!(event, Event::Promoted) {
                match control.promote() {
                    Some(Ok(path)) => info!(log, "Control socket: {}", path.display()),
                    Some(Err(e)) => warn!(log, "moving the control socket: {e}"),
                    None => {}
                }
            }
        }
    }

    /// Pipes for the next worker's stdout and stderr, when capturing.
    pub fn worker_pipes(&self) -> std::io::Result<Option<WorkerPipes>> {
        match self.capture {
            Some(_) => WorkerPipes::new().map(Some),
            None => Ok(None),
        }
    }

    /// A worker was forked with `pipes` (when capturing): its output is relayed from now on.
    /// (It is counted when the core's `WorkerSpawned` event comes.)
    pub fn capture_output(&mut self, pid: Pid, slot: usize, pipes: Option<WorkerPipes>) {
        if let (Some(capture), Some(pipes)) = (&mut self.capture, pipes) {
            capture.add(pid, slot, pipes);
        }
    }

    /// The master is exiting: relays the output still in the pipes.
    pub fn finish(&mut self, log: &Logger) {
        if let Some(capture) = &mut self.capture {
            capture.drain(|line| relay(log, line));
        }
    }
}

/// The log field that marks a record as being about a worker (its pid): the runtime's log
/// gives such a line the worker's colour.
pub const WORKER_PID: &str = "worker_pid";

fn relay(log: &Logger, line: capture::Line<'_>) {
    info!(log, "[{} {}] {}", line.pid, line.stream.name(), line.text;
        "pid" => line.pid, "slot" => line.slot, "stream" => line.stream.name(),
        WORKER_PID => line.pid);
}

/// The `status` answer line.
fn status_line(core: &Arbiter, now: Moment) -> String {
    let mut line = serde_json::to_string(&status_report(core, now)).unwrap_or_default();
    line.push('\n');
    line
}

/// The master's and every worker's state, as `arbiter ctl status` shows it.
pub fn status_report(core: &Arbiter, now: Moment) -> protocol::StatusReport {
    let phase = match core.phase() {
        Phase::Running if core.is_upgrading() => "upgrading",
        other => other.name(),
    };
    let workers = core
        .workers()
        .map(|w| protocol::WorkerStatus {
            pid: w.pid,
            id: w.id.0,
            slot: w.slot,
            generation: w.generation,
            gpus: w.gpus.clone(),
            state: w.state.name().to_owned(),
            age_s: now.saturating_since(w.spawned_at).as_secs_f64(),
            heartbeat_age_s: w
                .last_heartbeat
                .map(|at| now.saturating_since(at).as_secs_f64()),
            ready: w.state == arbiter_core::WorkerState::Ready,
            restarts: core.slot_restarts(w.slot),
            rss_bytes: w.pid.and_then(|pid| protocol::rss_bytes(&pid.to_string())),
            recycling: w
                .recycle
                .filter(|_| w.state.is_active())
                .map(|reason| match reason {
                    Reason::RecycleAge => "age",
                    Reason::RecycleMemory => "memory",
                    _ => "requested",
                })
                .map(str::to_owned),
        })
        .collect::<Vec<_>>();
    protocol::StatusReport {
        ok: true,
        master: protocol::MasterStatus {
            pid: std::process::id(),
            uptime_s: now.since_origin().as_secs_f64(),
            phase: phase.to_owned(),
            generation: core.generation(),
            target: core.target(),
            live: workers.len(),
            ready: core.ready_count(),
        },
        workers,
    }
}
