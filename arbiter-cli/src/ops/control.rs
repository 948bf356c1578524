//! The control socket's server side, on the shared connection server ([`super::conns`]).
//!
//! Each connection sends one request line and gets one answer line. Bounds: a request is at
//! most [`MAX_REQUEST`] bytes and must arrive within [`REQUEST_DEADLINE`]; at most
//! [`MAX_CLIENTS`] connections are open (when full, the client idle longest without a complete
//! request is dropped to admit a new one); an answer is written as the client reads it
//! (POLLOUT), and a client that does not read it within [`WRITE_DEADLINE`] is dropped.
//! Nothing here ever blocks.
//!
//! Whether an order is taken is the core's decision: every order goes to it, and a
//! [`Event::CommandRefused`] it answers with is the client's answer ([`refusal`]). Only a line
//! that does not parse is refused here.

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use arbiter_core::{Arbiter, Command, Config, Event, Moment, Refusal, Slot};
use nix::poll::PollFlags;

use super::conns::{self, Fill, Server, Wire};
use super::socket::{self, Identity};
use crate::protocol::{self, Request, MAX_REQUEST};

/// Most connections open at once.
pub const MAX_CLIENTS: usize = 64;
/// Time a client has to send its whole request line.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Time a client has to read its answer.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// What a request asks the master to do; the master carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `Command::Scale`.
    Scale(usize),
    /// Re-read the configuration and roll (as HUP).
    Reload,
    /// `Command::Stop`.
    Stop {
        /// Quick stop.
        quick: bool,
    },
    /// `Command::KillWorker`.
    KillWorker(i32),
}

/// What an accepted order waits for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Scale {
        workers: usize,
    },
    /// `finished`: the core reported the roll done; answered once the old workers are gone.
    Reload {
        generation: Option<u64>,
        finished: bool,
    },
    Kill {
        pid: i32,
        /// The worker's slot when the order was given (`None`: no such worker, which the core
        /// refuses).
        slot: Option<Slot>,
        exited: bool,
    },
}

/// An order in progress on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    /// The order as the core was given it.
    order: Order,
    /// Given this round, the core's verdict is still to come: a refusal of `order` answers it.
    /// Cleared when the round's actions are carried out ([`ControlServer::settle`]).
    verdict_due: bool,
    /// What it waits for once taken.
    pending: Pending,
}

/// One control connection: the order it waits for, while one is in progress.
type Conn = conns::Conn<UnixStream, Option<Waiting>>;

/// The control socket and its connections.
pub struct ControlServer {
    server: Server<UnixListener, Option<Waiting>>,
    path: PathBuf,
    /// Where it is moved on promotion (an upgrade child binds beside the old master's).
    final_path: Option<PathBuf>,
    identity: Identity,
}

impl ControlServer {
    /// Serves on a bound listener.
    pub fn new(
        listener: UnixListener,
        path: PathBuf,
        identity: Identity,
        final_path: Option<PathBuf>,
    ) -> ControlServer {
        ControlServer {
            server: Server::new(listener, MAX_CLIENTS),
            path,
            final_path,
            identity,
        }
    }

    /// Open connections.
    pub fn clients(&self) -> usize {
        self.server.len()
    }

    /// The fds to poll and for what: the listener, then each connection, in a fixed order
    /// that [`ControlServer::handle`] relies on.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        self.server.interest()
    }

    /// Acts on what poll reported (`revents` in the order of [`ControlServer::interest`]);
    /// answers questions at once and returns the orders for the master to carry out.
    pub fn handle(
        &mut self,
        revents: &[PollFlags],
        core: &Arbiter,
        status: impl Fn() -> String,
        now: Moment,
    ) -> Vec<Order> {
        let mut orders = Vec::new();
        let refusal = protocol::failure("too many control clients");
        self.server.handle(
            revents,
            now,
            |conn| orders.extend(read_request(conn, core, &status, now)),
            || (None, now + REQUEST_DEADLINE),
            refusal.as_bytes(),
        );
        orders
    }

    /// Feeds the core's events to the waiting orders; a refusal answers the order it refuses.
    pub fn on_event(&mut self, event: &Event, now: Moment) {
        if let Event::CommandRefused { command, why } = event {
            // Orders are carried out one by one, each followed by its events: the refusal is
            // of an order given this round (among equal ones, any is the same to its client).
            let refused = self.server.conns_mut().find(|conn| {
                conn.state
                    .is_some_and(|w| w.verdict_due && is_order(w.order, command))
            });
            if let Some(conn) = refused {
                answer(conn, protocol::failure(&refusal(command, *why)), false, now);
            }
            return;
        }
        for conn in self.server.conns_mut() {
            let Some(Waiting { pending, .. }) = &mut conn.state else {
                continue;
            };
            match (pending, event) {
                (Pending::Reload { generation, .. }, Event::ReloadStarted { generation: g })
                    if generation.is_none() =>
                {
                    *generation = Some(*g);
                }
                (
                    Pending::Reload {
                        generation: Some(want),
                        finished,
                    },
                    Event::ReloadFinished { generation: g },
                ) if *g >= *want => *finished = true,
                (Pending::Kill { pid, exited, .. }, Event::WorkerExited { pid: gone, .. })
                    if pid == gone =>
                {
                    *exited = true;
                }
                _ => {}
            }
        }
    }

    /// A reload could not start (the configuration is invalid): every reload waiting for its
    /// start fails with `why`.
    pub fn reload_failed(&mut self, why: &str, now: Moment) {
        for conn in self.server.conns_mut() {
            if let Some(Waiting {
                pending:
                    Pending::Reload {
                        generation: None, ..
                    },
                ..
            }) = conn.state
            {
                answer(
                    conn,
                    protocol::failure(&format!("reload failed: {why}")),
                    false,
                    now,
                );
            }
        }
    }

    /// After the master carried out the actions: answers the orders that are done, fails the
    /// ones past their deadline, and drops connections past theirs.
    pub fn settle(&mut self, core: &Arbiter, now: Moment) {
        let stopping = core.stop_requested();
        for conn in self.server.conns_mut() {
            let late = conn.deadline.is_some_and(|at| at <= now);
            if let Some(waiting) = &mut conn.state {
                // The round's orders were carried out: one not refused was taken.
                waiting.verdict_due = false;
            }
            let line = match (conn.wire(), conn.state) {
                (Wire::Idle, Some(waiting)) => settle_one(waiting.pending, core, stopping, late),
                (Wire::Reading, _) if late => {
                    Some(protocol::failure("no complete request line in time"))
                }
                (Wire::Writing { .. }, _) if late => {
                    conn.close();
                    None
                }
                _ => None,
            };
            if let Some(line) = line {
                answer(conn, line, false, now);
            }
        }
        self.server.sweep();
    }

    /// The earliest connection or order deadline.
    pub fn next_deadline(&self) -> Option<Moment> {
        self.server.next_deadline()
    }

    /// This master was promoted: its socket takes the final path.
    pub fn promote(&mut self) -> Option<Result<PathBuf, io::Error>> {
        let to = self.final_path.take()?;
        Some(std::fs::rename(&self.path, &to).map(|()| {
            self.path = to.clone();
            to
        }))
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if socket::is_ours(&self.path, self.identity) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `line` as the answer; the order, if any, is over.
fn answer(conn: &mut Conn, line: String, hold: bool, now: Moment) {
    conn.state = None;
    conn.answer(line.into_bytes(), hold, now + WRITE_DEADLINE);
}

/// Reads what is there; on a complete line, parses and starts the request.
fn read_request(
    conn: &mut Conn,
    core: &Arbiter,
    status: &impl Fn() -> String,
    now: Moment,
) -> Option<Order> {
    let outcome = conn.fill(MAX_REQUEST, |input| input.contains(&b'\n'));
    if let Some(end) = conn.input.iter().position(|&b| b == b'\n') {
        let line = conn.input[..end].to_vec();
        return start(conn, &line, core, status, now);
    }
    match outcome {
        Fill::Full => {
            let why = format!("request longer than {MAX_REQUEST} bytes");
            answer(conn, protocol::failure(&why), false, now);
            None
        }
        // EOF: a last line without its newline still counts.
        Fill::Eof if conn.input.is_empty() => {
            conn.close();
            None
        }
        Fill::Eof => {
            let line = std::mem::take(&mut conn.input);
            start(conn, &line, core, status, now)
        }
        Fill::Again | Fill::Failed => None,
    }
}

/// Answers a question, or accepts an order and sets what it waits for.
fn start(
    conn: &mut Conn,
    line: &[u8],
    core: &Arbiter,
    status: &impl Fn() -> String,
    now: Moment,
) -> Option<Order> {
    conn.input.clear();
    let request = match Request::parse(line) {
        Ok(request) => request,
        Err(why) => {
            answer(conn, protocol::failure(&why), false, now);
            return None;
        }
    };
    let config = core.config();
    let (order, pending, limit) = match request {
        Request::Status => {
            answer(conn, status(), false, now);
            return None;
        }
        Request::Stop { quick } => {
            let line = protocol::success(serde_json::json!({ "stopping": true }));
            answer(conn, line, true, now);
            return Some(Order::Stop { quick });
        }
        Request::Scale { workers } => (
            Order::Scale(workers),
            Pending::Scale { workers },
            wait_limit(config, 1),
        ),
        Request::Reload => {
            let batches = config.workers.div_ceil(config.max_surge.max(1));
            (
                Order::Reload,
                Pending::Reload {
                    generation: None,
                    finished: false,
                },
                wait_limit(config, batches),
            )
        }
        Request::KillWorker { pid } => {
            let pending = Pending::Kill {
                pid,
                slot: core.worker_by_pid(pid).map(|w| w.slot),
                exited: false,
            };
            (Order::KillWorker(pid), pending, wait_limit(config, 1))
        }
    };
    conn.state = Some(Waiting {
        order,
        verdict_due: true,
        pending,
    });
    conn.wait(now + limit);
    Some(order)
}

/// Whether the core's `command` is `order`.
fn is_order(order: Order, command: &Command) -> bool {
    match (order, command) {
        (Order::Scale(n), Command::Scale(m)) => n == *m,
        (Order::Reload, Command::Reload) => true,
        (Order::Stop { quick }, Command::Stop { quick: q }) => quick == *q,
        (Order::KillWorker(pid), Command::KillWorker(p)) => pid == *p,
        _ => false,
    }
}

/// The client's answer to the core's refusal of `command`, in the control protocol's words.
fn refusal(command: &Command, why: Refusal) -> String {
    match (command, why) {
        (_, Refusal::Stopping) => "the arbiter is stopping".to_string(),
        (Command::Scale(_), Refusal::AtFloor) => "workers must be at least 1".to_string(),
        (Command::Scale(_), Refusal::AtCeiling) => {
            format!("workers must be at most {}", arbiter_core::MAX_WORKERS)
        }
        (Command::KillWorker(pid), Refusal::NoSuchWorker) => {
            format!("no running worker with pid {pid}")
        }
        // Any other refusal in the core's words (`scale 3 refused. Child exists.`).
        (command, why) => format!("{command} refused. {why}"),
    }
}

/// How long an order may take before it is answered with a failure: twice the boot timeout
/// (60 s when disabled) per batch of spawns, plus the graceful timeout for the exits.
pub fn wait_limit(config: &Config, batches: usize) -> Duration {
    let boot = config.boot_timeout.unwrap_or(Duration::from_secs(60));
    (boot * 2).saturating_mul(batches.max(1) as u32) + config.graceful_timeout
}

/// The answer to a waiting order, if it is done, failed or late.
fn settle_one(pending: Pending, core: &Arbiter, stopping: bool, late: bool) -> Option<String> {
    match pending {
        Pending::Scale { workers } => {
            let live = core.worker_count();
            let ready = core.ready_count();
            if core.target() != workers.max(1) {
                let why = format!("target changed to {} meanwhile", core.target());
                Some(protocol::failure(&why))
            } else if ready >= workers && live <= workers {
                Some(protocol::success(
                    serde_json::json!({ "workers": workers, "ready": ready }),
                ))
            } else if stopping {
                Some(protocol::failure("the arbiter is stopping"))
            } else if late {
                let why = format!("timed out with {ready} of {workers} workers ready, {live} live");
                Some(protocol::failure(&why))
            } else {
                None
            }
        }
        Pending::Reload {
            generation,
            finished,
        } => {
            let old_gone = core.workers().all(|w| Some(w.generation) >= generation);
            if finished && old_gone {
                let generation = generation.unwrap_or_default();
                Some(protocol::success(
                    serde_json::json!({ "generation": generation }),
                ))
            } else if stopping {
                Some(protocol::failure("the arbiter is stopping"))
            } else if generation.is_none() {
                // The order was carried out and no roll began (nor did it fail).
                Some(protocol::failure("reload did not start"))
            } else if late {
                Some(protocol::failure("roll did not complete in time"))
            } else {
                None
            }
        }
        Pending::Kill {
            pid, slot: None, ..
        } => {
            // Only a running worker's kill is taken, and the core refused none this round.
            Some(protocol::failure(&format!("worker {pid} was not found")))
        }
        Pending::Kill {
            pid,
            slot: Some(slot),
            exited,
        } => {
            let replacement = core
                .workers()
                .filter(|w| w.slot == slot && w.state.is_active() && w.pid != Some(pid))
                .find_map(|w| w.pid);
            if exited && (replacement.is_some() || stopping || slot >= core.target()) {
                Some(protocol::success(
                    serde_json::json!({ "pid": pid, "replacement": replacement }),
                ))
            } else if late {
                let why = match exited {
                    true => format!("worker {pid} exited but was not replaced in time"),
                    false => format!("worker {pid} did not exit in time"),
                };
                Some(protocol::failure(&why))
            } else {
                None
            }
        }
    }
}
