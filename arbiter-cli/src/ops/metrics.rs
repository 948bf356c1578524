//! Prometheus metrics and health probes, served over HTTP/1.0 by the master's own poll loop.
//!
//! [`Counters`] follow the core's actions and events (spawns, exits by the cause the core
//! gives them, reloads, upgrades, pidfile failures); gauges are read from the core at scrape
//! time. [`MetricsServer`] is a tiny
//! non-blocking responder: `GET /metrics` (text exposition 0.0.4), `GET /healthz` (200 while
//! the loop runs), `GET /readyz` (200 when the ready workers reach the target and the master
//! is not stopping, else 503). Limits: 64 connections, 8 KiB of request head, 5 s per
//! connection; one request per connection (`Connection: close`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::BorrowedFd;
use std::time::Duration;

use arbiter_core::{Arbiter, Event, ExitCause, Moment, Signal};
use nix::poll::PollFlags;

use super::conns::{Fill, Server};

/// Most HTTP connections open at once.
const MAX_CONNECTIONS: usize = 64;
/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a connection has from accept to its answer being read.
const DEADLINE: Duration = Duration::from_secs(5);
/// Upper bounds of the heartbeat age histogram, in seconds.
const HEARTBEAT_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Counters the core does not keep.
#[derive(Debug, Default)]
pub struct Counters {
    spawns: u64,
    spawn_failures: u64,
    exits: BTreeMap<ExitCause, u64>,
    reloads_ok: u64,
    reloads_failed: u64,
    upgrades_ok: u64,
    upgrades_failed: u64,
    pidfile_failures: u64,
}

impl Counters {
    /// A worker was forked and exec'd.
    /// Follows the core's events.
    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::WorkerSpawned { .. } => self.spawns += 1,
            Event::WorkerExited { cause, .. } => *self.exits.entry(*cause).or_default() += 1,
            Event::ReloadFinished { .. } => self.reloads_ok += 1,
            Event::ConfigRejected { .. } => self.reloads_failed += 1,
            Event::Promoted => self.upgrades_ok += 1,
            Event::ReexecFailed
            | Event::ReexecExited { .. }
            | Event::SignalRefused {
                signal: Signal::Usr2,
                ..
            } => self.upgrades_failed += 1,
            Event::SpawnFailed { .. } => self.spawn_failures += 1,
            Event::PidfileFailed { .. } => self.pidfile_failures += 1,
            _ => {}
        }
    }

    /// The Prometheus text exposition (0.0.4) of these counters and the core's gauges.
    pub fn exposition(&self, core: &Arbiter, now: Moment) -> String {
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |value: f64| vec![(String::new(), value)];
        let live = core.worker_count();
        family(
            "arbiter_workers_live",
            "gauge",
            "Worker processes alive.",
            &plain(live as f64),
        );
        family(
            "arbiter_workers_target",
            "gauge",
            "Target number of workers.",
            &plain(core.target() as f64),
        );
        family(
            "arbiter_workers_ready",
            "gauge",
            "Ready workers not being stopped.",
            &plain(core.ready_count() as f64),
        );
        family(
            "arbiter_generation",
            "gauge",
            "Reload generation now wanted.",
            &plain(core.generation() as f64),
        );
        let stopping = core.stop_requested();
        family(
            "arbiter_stopping",
            "gauge",
            "1 once a stop was ordered (draining or stopping).",
            &plain(f64::from(u8::from(stopping))),
        );
        family(
            "arbiter_worker_spawns_total",
            "counter",
            "Workers forked and exec'd.",
            &plain(self.spawns as f64),
        );
        family(
            "arbiter_worker_spawn_failures_total",
            "counter",
            "Worker commands that could not be run.",
            &plain(self.spawn_failures as f64),
        );
        let exits: Vec<(String, f64)> = ExitCause::ALL
            .iter()
            .map(|c| {
                (
                    format!("{{cause=\"{c}\"}}"),
                    self.exits.get(c).copied().unwrap_or(0) as f64,
                )
            })
            .collect();
        family(
            "arbiter_worker_exits_total",
            "counter",
            "Worker exits by cause.",
            &exits,
        );
        let slots = core
            .workers()
            .map(|w| w.slot + 1)
            .max()
            .unwrap_or(0)
            .max(core.target());
        let restarts: Vec<(String, f64)> = (0..slots)
            .map(|s| (format!("{{slot=\"{s}\"}}"), core.slot_restarts(s) as f64))
            .collect();
        family(
            "arbiter_slot_restarts_total",
            "counter",
            "Unexpected worker exits per slot.",
            &restarts,
        );
        let results = |ok: u64, failed: u64| {
            vec![
                ("{result=\"ok\"}".to_owned(), ok as f64),
                ("{result=\"failed\"}".to_owned(), failed as f64),
            ]
        };
        family(
            "arbiter_reloads_total",
            "counter",
            "Reloads: ok when the roll completed, failed when the configuration was refused.",
            &results(self.reloads_ok, self.reloads_failed),
        );
        family("arbiter_upgrades_total", "counter", "Upgrades (USR2): ok when this master was promoted, failed when refused or the new master exited.", &results(self.upgrades_ok, self.upgrades_failed));
        family(
            "arbiter_pidfile_failures_total",
            "counter",
            "Pidfile writes or renames after the start that failed (the master kept running).",
            &plain(self.pidfile_failures as f64),
        );
        family(
            "arbiter_worker_heartbeat_age_seconds",
            "histogram",
            "Seconds since each live worker's last heartbeat, at scrape time.",
            &heartbeat_histogram(core, now),
        );
        let (rss, cpu) = master_usage();
        family(
            "arbiter_master_resident_memory_bytes",
            "gauge",
            "Resident memory of the master.",
            &plain(rss as f64),
        );
        family(
            "arbiter_master_cpu_seconds_total",
            "counter",
            "User and system CPU time of the master.",
            &plain(cpu),
        );
        family(
            "arbiter_master_uptime_seconds",
            "gauge",
            "Seconds since the master started.",
            &plain(now.since_origin().as_secs_f64()),
        );
        if let Some(load) = core.gpu_load() {
            let gpus: Vec<(String, f64)> = load
                .into_iter()
                .map(|(id, n)| (format!("{{gpu=\"{}\"}}", escape(&id)), n as f64))
                .collect();
            family(
                "arbiter_gpu_workers",
                "gauge",
                "Workers holding each GPU.",
                &gpus,
            );
        }
        out
    }
}

fn heartbeat_histogram(core: &Arbiter, now: Moment) -> Vec<(String, f64)> {
    let ages: Vec<f64> = core
        .workers()
        .filter_map(|w| w.last_heartbeat)
        .map(|at| now.saturating_since(at).as_secs_f64())
        .collect();
    let mut samples = Vec::new();
    for bound in HEARTBEAT_BUCKETS {
        let n = ages.iter().filter(|&&a| a <= *bound).count();
        samples.push((format!("_bucket{{le=\"{bound}\"}}"), n as f64));
    }
    samples.push(("_bucket{le=\"+Inf\"}".to_owned(), ages.len() as f64));
    samples.push(("_sum".to_owned(), ages.iter().sum()));
    samples.push(("_count".to_owned(), ages.len() as f64));
    samples
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The master's resident memory (bytes) and CPU time (seconds).
fn master_usage() -> (u64, f64) {
    use nix::sys::resource::{getrusage, UsageWho};
    let rss = crate::protocol::rss_bytes("self").unwrap_or(0);
    let cpu = getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            secs(u.user_time()) + secs(u.system_time())
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// The HTTP listener and its connections, on the shared connection server.
pub struct MetricsServer {
    server: Server<TcpListener, ()>,
}

impl MetricsServer {
    /// Binds the listener (non-blocking, close-on-exec).
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsServer {
            server: Server::new(listener, MAX_CONNECTIONS),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.server.listener().local_addr()
    }

    /// The fds to poll: the listener, then each connection.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        self.server.interest()
    }

    /// Acts on what poll reported, in the order of [`MetricsServer::interest`].
    pub fn handle(
        &mut self,
        revents: &[PollFlags],
        respond: impl Fn(&str) -> (u16, String, &'static str),
        now: Moment,
    ) {
        let busy = response(503, "too many connections\n", "text/plain");
        self.server.handle(
            revents,
            now,
            |conn| {
                let outcome = conn.fill(MAX_HEAD + 1, |input| head_end(input).is_some());
                let (code, body, kind) = match parse_head(&conn.input) {
                    Some(Ok(path)) => respond(&path),
                    Some(Err(code)) => (code, "bad request\n".to_owned(), "text/plain"),
                    None if matches!(outcome, Fill::Eof | Fill::Failed) => {
                        conn.close();
                        return;
                    }
                    None => return,
                };
                // The deadline runs from the accept: it is not extended for the answer.
                let deadline = conn.deadline.unwrap_or(now + DEADLINE);
                conn.answer(response(code, &body, kind), false, deadline);
            },
            || ((), now + DEADLINE),
            &busy,
        );
    }

    /// Drops connections past their deadline.
    pub fn settle(&mut self, now: Moment) {
        for conn in self.server.conns_mut() {
            if conn.deadline.is_some_and(|at| at <= now) {
                conn.close();
            }
        }
        self.server.sweep();
    }

    /// The earliest connection deadline.
    pub fn next_deadline(&self) -> Option<Moment> {
        self.server.next_deadline()
    }
}

/// Where the request head ends (`\r\n\r\n` or `\n\n`), if it is complete.
fn head_end(input: &[u8]) -> Option<usize> {
    find(input, b"\r\n\r\n").or_else(|| find(input, b"\n\n"))
}

/// The pure part of reading a request: `None` while the head is incomplete (and within
/// `MAX_HEAD`, 8 KiB), else the path of a GET or HEAD (query dropped) or the HTTP error code to
/// answer (405 another method, 400 a malformed request line, 431 a head too long).
pub fn parse_head(input: &[u8]) -> Option<Result<String, u16>> {
    let Some(end) = head_end(input) else {
        return (input.len() > MAX_HEAD).then_some(Err(431));
    };
    let head = String::from_utf8_lossy(&input[..end]);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    Some(match (words.next(), words.next()) {
        (Some("GET" | "HEAD"), Some(target)) => {
            Ok(target.split('?').next().unwrap_or("").to_owned())
        }
        (Some(_), Some(_)) => Err(405),
        _ => Err(400),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn response(code: u16, body: &str, kind: &str) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let mut out = format!(
        "HTTP/1.0 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The answer to one path: status code, body, content type.
pub fn route(
    path: &str,
    core: &Arbiter,
    counters: &Counters,
    now: Moment,
) -> (u16, String, &'static str) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => (
            200,
            counters.exposition(core, now),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => (200, "ok\n".to_owned(), TEXT),
        "/readyz" => {
            let (ready, target) = (core.ready_count(), core.target());
            if !core.stop_requested() && ready >= target {
                (200, format!("ready: {ready} of {target} workers\n"), TEXT)
            } else if core.stop_requested() {
                (503, format!("not ready: {}\n", core.phase().name()), TEXT)
            } else {
                (
                    503,
                    format!("not ready: {ready} of {target} workers\n"),
                    TEXT,
                )
            }
        }
        _ => (404, "not found\n".to_owned(), TEXT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbiter_core::{Action, Config, ExitStatus, Role};

    fn core_with_ready_workers(n: usize) -> Arbiter {
        let config = Config {
            workers: n,
            ready: arbiter_core::ReadyMode::Exec,
            ..Config::default()
        };
        let mut core = Arbiter::new(config, Role::Fresh, Moment::ZERO);
        let mut pid = 100;
        while let Some(action) = core.poll_action() {
            if let Action::Spawn { id, .. } = action {
                pid += 1;
                core.handle_spawned(id, pid, Moment::ZERO);
            }
        }
        core
    }

    #[test]
    fn exposition_lines_are_comments_or_samples_with_the_expected_values() {
        let core = core_with_ready_workers(3);
        let mut counters = Counters::default();
        for i in 0..3u64 {
            counters.on_event(&Event::WorkerSpawned {
                id: arbiter_core::WorkerId(i),
                pid: 101 + i as i32,
                slot: i as usize,
                generation: 0,
            });
        }
        counters.on_event(&Event::WorkerExited {
            id: arbiter_core::WorkerId(0),
            pid: 101,
            slot: 0,
            status: ExitStatus::Signaled {
                signal: 9,
                core_dumped: false,
            },
            expected: true,
            cause: ExitCause::Timeout,
        });
        let text = counters.exposition(&core, Moment::from_origin(Duration::from_secs(2)));
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (name, value) = line.rsplit_once(' ').expect(line);
            let value: f64 = value.parse().expect(line);
            samples.insert(name.to_owned(), value);
        }
        assert_eq!(samples["arbiter_workers_target"], 3.0);
        assert_eq!(samples["arbiter_workers_ready"], 3.0);
        assert_eq!(samples["arbiter_worker_spawns_total"], 3.0);
        assert_eq!(
            samples["arbiter_worker_exits_total{cause=\"timeout\"}"],
            1.0
        );
        assert_eq!(samples["arbiter_worker_exits_total{cause=\"crash\"}"], 0.0);
        assert_eq!(samples["arbiter_slot_restarts_total{slot=\"2\"}"], 0.0);
        assert_eq!(samples["arbiter_worker_heartbeat_age_seconds_count"], 0.0);
        assert!(samples["arbiter_master_resident_memory_bytes"] > 0.0);
    }

    #[test]
    fn probes_answer_by_readiness() {
        let core = core_with_ready_workers(2);
        let counters = Counters::default();
        assert_eq!(route("/healthz", &core, &counters, Moment::ZERO).0, 200);
        assert_eq!(route("/readyz", &core, &counters, Moment::ZERO).0, 200);
        assert_eq!(route("/nope", &core, &counters, Moment::ZERO).0, 404);
        let booting = Arbiter::new(Config::default(), Role::Fresh, Moment::ZERO);
        assert_eq!(route("/readyz", &booting, &counters, Moment::ZERO).0, 503);
        let text = String::from_utf8(response(503, "x", "text/plain")).unwrap();
        assert!(text.starts_with("HTTP/1.0 503 Service Unavailable\r\n"));
        assert!(text.contains("Content-Length: 1\r\n"));
    }
}
