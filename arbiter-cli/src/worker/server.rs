//! The worker's single-threaded event loop: accepts on every listener, serves keep-alive
//! connections, fires its timers (heartbeat, delayed readiness, scripted misbehaviour, delayed
//! responses) and reads signals.
//!
//! Readiness is edge-triggered (mio), so every accept and read goes on until the kernel has no
//! more (a short read counts as that: anything arriving later raises a new edge). Each
//! connection owns a fixed input buffer of [`MAX_HEAD`] bytes and a reusable output buffer: the
//! `GET /` path copies pre-formatted bytes and allocates nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use super::http::{
    parse, route, write_response, Parsed, Persistence, RootResponses, Route, Status, JSON,
    MAX_HEAD, TEXT,
};
use super::listeners::Listener;
use super::protocol::{Heartbeat, Notifier};
use super::signals::{Signals, Stop};
use super::WorkerError;

/// The token of the signalfd.
pub const SIGNALS: Token = Token(usize::MAX);
/// Listeners are tokens `0..CONNECTIONS`; connection `i` is token `CONNECTIONS + i`.
const CONNECTIONS: usize = 1 << 16;
/// Stop answering a connection's pipelined requests while this much output waits for the peer.
const HIGH_WATER: usize = 256 * 1024;
/// After TERM, how long idle keep-alive connections stay open: a client that sends its next
/// request meanwhile gets an answer (with `Connection: close`) instead of a closed socket.
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);

/// The scripted behaviour of the worker once it serves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Send `READY=1` only after this long.
    pub ready_delay: Option<Duration>,
    /// Hang after this long.
    pub hang_after: Option<Duration>,
    /// Exit 1 after this long.
    pub crash_after: Option<Duration>,
    /// After answering this many requests, ask the master to be replaced
    /// (`X_ARBITER_RECYCLE=1`), and keep serving until it sends TERM.
    pub max_requests: Option<u64>,
}

/// The end of a worker's life that a request or timer asks for.
enum Fatal {
    Hang,
    Exit(u8),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Tcp(stream) => stream,
            Stream::Unix(stream) => stream,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buf),
            Stream::Unix(stream) => stream.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buf),
            Stream::Unix(stream) => stream.write(buf),
        }
    }
}

/// A response held back by `GET /sleep/MS`.
struct Sleeping {
    until: Instant,
    millis: u64,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
}

/// How a read went.
enum Fill {
    /// Nothing new: the kernel had no data.
    Nothing,
    /// New data, and the kernel had no more (a short read).
    Drained,
    /// New data, and the buffer is full: read again once it is processed.
    Full,
    /// The peer closed its side.
    Eof,
}

struct Connection {
    stream: Stream,
    /// Unique over the worker's life: tells a stale timer from the slot's new occupant.
    serial: u64,
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Request body bytes still to read and discard.
    discard: u64,
    output: Vec<u8>,
    written: usize,
    sleeping: Option<Sleeping>,
    close_after_flush: bool,
    eof: bool,
    /// Nothing read yet: the request of a just-accepted connection may still be on its way,
    /// so a graceful stop must not close it as idle (its client would see a reset).
    fresh: bool,
}

impl Connection {
    fn new(stream: Stream, serial: u64) -> Connection {
        Connection {
            stream,
            serial,
            input: vec![0; MAX_HEAD].into_boxed_slice(),
            start: 0,
            end: 0,
            discard: 0,
            output: Vec::with_capacity(1024),
            written: 0,
            sleeping: None,
            close_after_flush: false,
            eof: false,
            fresh: true,
        }
    }

    fn flushed(&self) -> bool {
        self.written == self.output.len()
    }

    fn idle(&self) -> bool {
        self.start == self.end && self.discard == 0 && self.sleeping.is_none() && self.flushed()
    }

    fn paused(&self) -> bool {
        self.sleeping.is_some()
            || self.close_after_flush
            || self.output.len() - self.written >= HIGH_WATER
    }

    /// Answers the complete requests in the input buffer, in order, until one must wait.
    /// Returns the deadline of a response held back by `/sleep`.
    fn process(
        &mut self,
        root: &RootResponses,
        closing: bool,
        now: Instant,
        answered: &mut u64,
    ) -> Result<Option<Instant>, Fatal> {
        loop {
            if self.paused() {
                return Ok(None);
            }
            if self.discard > 0 {
                let take = self.discard.min((self.end - self.start) as u64);
                self.start += take as usize;
                self.discard -= take;
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                return Ok(None);
            }
            if self.discard > 0 {
                return Ok(None);
            }
            let head = match parse(&self.input[self.start..self.end]) {
                Parsed::Partial => {
                    self.input.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                    return Ok(None);
                }
                Parsed::Invalid(reject) => {
                    let status = Status::from(reject);
                    write_response(
                        &mut self.output,
                        status,
                        TEXT,
                        b"bad request\n",
                        Persistence::Close,
                        false,
                    );
                    self.close_after_flush = true;
                    return Ok(None);
                }
                Parsed::Complete(head) => head,
            };
            *answered += 1;
            let persistence = Persistence::of(&head, closing);
            let head_only = head.method == b"HEAD";
            let mut sleep_until = None;
            match route(head.target) {
                Route::Root => root.write(&mut self.output, persistence, head_only),
                Route::Env(name) => match std::env::var_os(OsStr::from_bytes(name)) {
                    Some(value) => write_response(
                        &mut self.output,
                        Status::Ok,
                        TEXT,
                        value.as_bytes(),
                        persistence,
                        head_only,
                    ),
                    None => not_found(&mut self.output, persistence, head_only),
                },
                Route::Sleep(millis) => match now.checked_add(Duration::from_millis(millis)) {
                    Some(until) => {
                        self.sleeping = Some(Sleeping {
                            until,
                            millis,
                            keep_alive: head.keep_alive,
                            http10: head.http10,
                            head_only,
                        });
                        sleep_until = Some(until);
                    }
                    None => bad_argument(&mut self.output, persistence, head_only),
                },
                Route::Hang => return Err(Fatal::Hang),
                Route::Crash => return Err(Fatal::Exit(1)),
                Route::Exit(code) => return Err(Fatal::Exit(code)),
                Route::BadArgument => bad_argument(&mut self.output, persistence, head_only),
                Route::NotFound => not_found(&mut self.output, persistence, head_only),
            }
            self.start += head.len;
            self.discard = head.content_length;
            if sleep_until.is_some() {
                return Ok(sleep_until);
            }
            if persistence == Persistence::Close {
                self.close_after_flush = true;
            }
        }
    }

    /// Writes the held-back `/sleep` response once its time has come.
    fn wake(&mut self, now: Instant, closing: bool) -> bool {
        let Some(sleeping) = self.sleeping.take_if(|sleeping| sleeping.until <= now) else {
            return false;
        };
        let persistence = match (sleeping.keep_alive && !closing, sleeping.http10) {
            (false, _) => Persistence::Close,
            (true, false) => Persistence::KeepAlive,
            (true, true) => Persistence::KeepAlive10,
        };
        let body = format!("{{\"slept_ms\":{}}}\n", sleeping.millis);
        write_response(
            &mut self.output,
            Status::Ok,
            JSON,
            body.as_bytes(),
            persistence,
            sleeping.head_only,
        );
        if persistence == Persistence::Close {
            self.close_after_flush = true;
        }
        true
    }

    fn fill(&mut self) -> io::Result<Fill> {
        if self.end == self.input.len() && self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = self.input.len() - self.end;
        if room == 0 {
            return Ok(Fill::Nothing);
        }
        loop {
            match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(Fill::Eof);
                }
                Ok(n) => {
                    self.end += n;
                    self.fresh = false;
                    return Ok(if n < room { Fill::Drained } else { Fill::Full });
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Fill::Nothing)
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.output.clear();
        self.written = 0;
        Ok(())
    }
}

fn bad_argument(out: &mut Vec<u8>, persistence: Persistence, head_only: bool) {
    write_response(
        out,
        Status::BadRequest,
        TEXT,
        b"bad argument\n",
        persistence,
        head_only,
    );
}

fn not_found(out: &mut Vec<u8>, persistence: Persistence, head_only: bool) {
    write_response(
        out,
        Status::NotFound,
        TEXT,
        b"not found\n",
        persistence,
        head_only,
    );
}

/// The serving worker.
pub struct Server {
    poll: Poll,
    signals: Signals,
    listeners: Vec<Listener>,
    /// The poll's epoll instance, for the listeners' level-triggered registration.
    listener_epoll: Epoll,
    connections: Vec<Option<Connection>>,
    free: Vec<usize>,
    live: usize,
    next_serial: u64,
    sleepers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    root: RootResponses,
    notifier: Option<Notifier>,
    heartbeat: Heartbeat,
    heartbeat_interval: Duration,
    next_beat: Option<Instant>,
    ready_at: Option<Instant>,
    hang_at: Option<Instant>,
    crash_at: Option<Instant>,
    draining: bool,
    /// Requests answered so far.
    answered: u64,
    /// Ask to be replaced once `answered` reaches this (cleared once asked).
    max_requests: Option<u64>,
    /// While draining: idle keep-alive connections are kept until then.
    idle_grace_until: Option<Instant>,
    notify_failed: bool,
}

impl Server {
    /// A server on `listeners`; `poll` already has `signals` registered under [`SIGNALS`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        poll: Poll,
        signals: Signals,
        listeners: Vec<Listener>,
        root: RootResponses,
        notifier: Option<Notifier>,
        heartbeat: Heartbeat,
        heartbeat_interval: Duration,
        behaviour: &Behaviour,
    ) -> Result<Server, WorkerError> {
        // Sibling workers share each listener. Registered through mio (edge-triggered), a
        // worker drains the accept queue in one go and the fastest takes nearly every
        // connection (14 of 16 keep-alive connections on one worker, the other idle).
        // Level-triggered, with one accept per wake-up, every worker waiting in epoll takes
        // its turn while connections are queued, and none is ever stranded. (EPOLLEXCLUSIVE
        // was tried: it always wakes the same idle worker, so light traffic never spreads.)
        // The poll's epoll fd, borrowed from its registry; the dup is ours.
        let listener_epoll = Epoll(poll.registry().as_fd().try_clone_to_owned().map_err(
            |source| WorkerError::Io {
                what: "dup epoll fd",
                source,
            },
        )?);
        for (index, listener) in listeners.iter().enumerate() {
            let interest = EpollFlags::EPOLLIN;
            listener_epoll
                .add(
                    listener_fd(listener),
                    EpollEvent::new(interest, index as u64),
                )
                .map_err(|errno| WorkerError::Io {
                    what: "epoll register",
                    source: errno.into(),
                })?;
        }
        let now = Instant::now();
        Ok(Server {
            poll,
            signals,
            listeners,
            listener_epoll,
            connections: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_serial: 0,
            sleepers: BinaryHeap::new(),
            root,
            notifier,
            next_beat: heartbeat.is_active().then_some(now),
            heartbeat,
            heartbeat_interval,
            // A delay too long to represent means never.
            ready_at: now.checked_add(behaviour.ready_delay.unwrap_or_default()),
            hang_at: behaviour
                .hang_after
                .and_then(|after| now.checked_add(after)),
            crash_at: behaviour
                .crash_after
                .and_then(|after| now.checked_add(after)),
            draining: false,
            answered: 0,
            max_requests: behaviour.max_requests,
            idle_grace_until: None,
            notify_failed: false,
        })
    }

    /// Serves until a graceful stop completes (exit 0), a quick stop, or a scripted end.
    pub fn run(mut self) -> Result<u8, WorkerError> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.fire_timers(Instant::now())?;
            if self.draining && self.live == 0 {
                return Ok(0);
            }
            let timeout = self
                .next_deadline()
                .map(|deadline| deadline.saturating_duration_since(Instant::now()));
            if let Err(source) = self.poll.poll(&mut events, timeout) {
                if source.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(WorkerError::Io {
                    what: "epoll wait",
                    source,
                });
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    SIGNALS => match self.signals.drain()? {
                        Stop::Quick => return Ok(0),
                        Stop::Graceful => self.begin_drain(),
                        Stop::None => {}
                    },
                    Token(index) if index < CONNECTIONS => self.accept(index)?,
                    Token(token) => self.drive(token - CONNECTIONS, now),
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.next_beat,
            self.ready_at,
            self.hang_at,
            self.crash_at,
            self.sleepers.peek().map(|Reverse((until, _, _))| *until),
            self.idle_grace_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn fire_timers(&mut self, now: Instant) -> Result<(), WorkerError> {
        if self.crash_at.is_some_and(|at| at <= now) {
            std::process::exit(1);
        }
        if self.hang_at.is_some_and(|at| at <= now) {
            hang(&self.signals);
        }
        if self.idle_grace_until.is_some_and(|at| at <= now) {
            self.idle_grace_until = None;
            self.close_idle();
        }
        if self.ready_at.is_some_and(|at| at <= now) {
            self.ready_at = None;
            self.notify("READY=1");
        }
        if let Some(at) = self.next_beat.filter(|&at| at <= now) {
            self.heartbeat.beat(self.notifier.as_ref())?;
            self.next_beat = Some((at + self.heartbeat_interval).max(now));
        }
        while let Some(&Reverse((until, index, serial))) = self.sleepers.peek() {
            if until > now {
                break;
            }
            self.sleepers.pop();
            let woke = self
                .connections
                .get_mut(index)
                .and_then(Option::as_mut)
                .is_some_and(|connection| {
                    connection.serial == serial && connection.wake(now, self.draining)
                });
            if woke {
                self.drive(index, now);
            }
        }
        Ok(())
    }

    fn notify(&mut self, message: &str) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        if let Err(error) = notifier.send(message) {
            if !self.notify_failed {
                self.notify_failed = true;
                eprintln!("arbiter worker: cannot send {message} to NOTIFY_SOCKET: {error}");
            }
        }
    }

    fn accept(&mut self, index: usize) -> Result<(), WorkerError> {
        loop {
            let accepted = match self.listeners.get(index) {
                None => return Ok(()),
                Some(Listener::Tcp(listener)) => listener.accept().map(|(stream, _)| {
                    // Small responses must leave at once, not wait for the peer's delayed ACK.
                    let _ = stream.set_nodelay(true);
                    Stream::Tcp(stream)
                }),
                Some(Listener::Unix(listener)) => {
                    listener.accept().map(|(stream, _)| Stream::Unix(stream))
                }
            };
            match accepted {
                // One per wake-up: the listener is level-triggered, so more pending
                // connections wake this worker (or an idle sibling) again at once.
                Ok(stream) => return self.insert(stream),
                // Another worker took it, or the queue is empty.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // The peer gave up before we accepted, or a signal interrupted us: go on.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(error) => {
                    // Out of descriptors or memory: leave the connection to a sibling worker
                    // (or to the next edge) rather than die.
                    eprintln!("arbiter worker: accept: {error}");
                    return Ok(());
                }
            }
        }
    }

    fn insert(&mut self, mut stream: Stream) -> Result<(), WorkerError> {
        let index = self.free.pop().unwrap_or_else(|| {
            self.connections.push(None);
            self.connections.len() - 1
        });
        self.poll
            .registry()
            .register(
                stream.source(),
                Token(CONNECTIONS + index),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|source| WorkerError::Io {
                what: "epoll register",
                source,
            })?;
        self.next_serial += 1;
        self.connections[index] = Some(Connection::new(stream, self.next_serial));
        self.live += 1;
        Ok(())
    }

    fn close(&mut self, index: usize) {
        if let Some(mut connection) = self.connections.get_mut(index).and_then(Option::take) {
            let _ = self.poll.registry().deregister(connection.stream.source());
            self.free.push(index);
            self.live -= 1;
        }
    }

    /// Serves one connection as far as it can go without blocking.
    fn drive(&mut self, index: usize, now: Instant) {
        let Some(connection) = self.connections.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let mut may_read = true;
        let keep = loop {
            match connection.process(&self.root, self.draining, now, &mut self.answered) {
                Ok(Some(until)) => {
                    self.sleepers
                        .push(Reverse((until, index, connection.serial)));
                }
                Ok(None) => {}
                Err(Fatal::Exit(code)) => std::process::exit(i32::from(code)),
                Err(Fatal::Hang) => hang(&self.signals),
            }
            if connection.flush().is_err() {
                break false;
            }
            if connection.flushed() && connection.sleeping.is_none() {
                let idle_while_draining = self.draining
                    && self.idle_grace_until.is_none()
                    && connection.idle()
                    && !connection.fresh;
                if connection.close_after_flush || connection.eof || idle_while_draining {
                    break false;
                }
            }
            if !may_read || connection.paused() || connection.eof {
                break true;
            }
            match connection.fill() {
                Err(_) => break false,
                Ok(Fill::Nothing) => break true,
                Ok(Fill::Drained | Fill::Eof) => may_read = false,
                Ok(Fill::Full) => {}
            }
        };
        if !keep {
            self.close(index);
        }
        if self
            .max_requests
            .is_some_and(|limit| self.answered >= limit)
        {
            self.max_requests = None;
            // Asked once; the master spawns the replacement, then sends TERM.
            self.notify("X_ARBITER_RECYCLE=1");
        }
    }

    /// TERM: stop accepting, say `STOPPING=1`; idle connections close after
    /// [`DRAIN_IDLE_GRACE`] (a request arriving meanwhile is answered with `Connection: close`),
    /// busy ones after their response, and the loop exits once none is left.
    fn begin_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        for listener in self.listeners.drain(..) {
            let _ = self.listener_epoll.delete(listener_fd(&listener));
        }
        self.ready_at = None;
        self.notify("STOPPING=1");
        self.idle_grace_until = Some(Instant::now() + DRAIN_IDLE_GRACE);
    }

    /// Closes the idle connections (all but the just-accepted ones whose request may still be
    /// on its way).
    fn close_idle(&mut self) {
        let idle: Vec<usize> = self
            .connections
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                slot.as_ref()
                    .filter(|c| c.idle() && !c.fresh)
                    .map(|_| index)
            })
            .collect();
        for index in idle {
            self.close(index);
        }
    }
}

fn listener_fd(listener: &Listener) -> BorrowedFd<'_> {
    match listener {
        Listener::Tcp(listener) => listener.as_fd(),
        Listener::Unix(listener) => listener.as_fd(),
    }
}

/// Stops serving and heartbeating for good, as a stuck application would.
fn hang(signals: &Signals) -> ! {
    signals.unblock_for_hang();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Registers the signalfd with `poll` under [`SIGNALS`].
pub fn register_signals(poll: &Poll, signals: &Signals) -> Result<(), WorkerError> {
    poll.registry()
        .register(
            &mut SourceFd(&signals.raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )
        .map_err(|source| WorkerError::Io {
            what: "epoll register",
            source,
        })
}
