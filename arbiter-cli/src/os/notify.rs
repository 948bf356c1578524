//! The sd_notify protocol, both ways: the sockets the master's workers talk to
//! (`NOTIFY_SOCKET` in their environment), and the master's own messages to the service
//! manager above it.
//!
//! Each worker gets its own socket ([`NotifyHub`]). A unix datagram socket queues only
//! `net.unix.max_dgram_qlen` messages (often 10) before a blocking sender waits and a
//! non-blocking one gets `EAGAIN`, whatever `SO_RCVBUF` says; one shared socket would make
//! a thousand workers that each send `WATCHDOG=1` once a second wait on the master unless it
//! woke for nearly every message. With one queue per worker the master can leave a ready
//! worker's messages queued and read them all at once, every few seconds: it wakes at once
//! only for the sockets marked urgent (workers whose `READY=1` is awaited) and for those
//! that send too fast to be left queued. The kernel stamps each datagram as it is queued, so
//! a message read late is still dated when it was sent.
//!
//! Where the kernel allows it (`CAP_BPF`), a socket that has carried a bare `WATCHDOG=1` gets
//! the heartbeat filter ([`crate::os::beat_filter`]): its later bare heartbeats are never
//! queued, their time is kept in a table, and [`NotifyHub::beat_age`] reads it when a
//! deadline asks. Then a worker that only beats gives the master nothing to read at all.

use std::collections::{HashMap, HashSet};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    bind, recvmmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    MultiHeaders, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeSpec;

use crate::os::beat_filter::{self, BeatFilter};

/// One message on a worker's socket (from the worker or one of its descendants).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// `READY=1`.
    pub ready: bool,
    /// `WATCHDOG=1`.
    pub watchdog: bool,
    /// `STOPPING=1`.
    pub stopping: bool,
    /// `STATUS=...`.
    pub status: Option<String>,
    /// How long ago the kernel queued it, when the socket stamps datagrams.
    pub age: Option<Duration>,
    /// `X_ARBITER_RECYCLE=1`: the worker asks to be replaced (it keeps serving until its
    /// replacement is ready and it gets TERM). sd_notify leaves `X_`-prefixed names to
    /// applications.
    pub recycle: bool,
}

/// The notify field a worker sends (`=1`) to ask to be replaced.
pub const RECYCLE_FIELD: &str = "X_ARBITER_RECYCLE";

/// Parses the newline-separated assignments of one datagram.
pub fn parse(payload: &[u8]) -> Message {
    // Nearly every datagram is a heartbeat and nothing else.
    if payload.strip_suffix(b"\n").unwrap_or(payload) == b"WATCHDOG=1" {
        return Message {
            watchdog: true,
            ..Message::default()
        };
    }
    let mut message = Message::default();
    for line in String::from_utf8_lossy(payload).lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => message.ready = true,
            Some(("WATCHDOG", "1")) => message.watchdog = true,
            Some(("STOPPING", "1")) => message.stopping = true,
            Some((RECYCLE_FIELD, "1")) => message.recycle = true,
            Some(("STATUS", text)) => message.status = Some(text.to_owned()),
            _ => {}
        }
    }
    message
}

/// One receiving socket, bound at a path in the master's private runtime directory;
/// unlinked when dropped.
pub struct NotifySocket {
    fd: OwnedFd,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a non-blocking, close-on-exec datagram socket at `path` whose datagrams the
    /// kernel stamps as they are queued.
    pub fn bind(path: &Path) -> io::Result<NotifySocket> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&fd, sockopt::ReceiveTimestampns, &true)?;
        let addr = UnixAddr::new(path)?;
        bind(fd.as_raw_fd(), &addr)?;
        Ok(NotifySocket {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Its path, for a worker's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what is queued, up to one batch per call (more than the kernel queues), and
    /// hands each message to `each`, aged against the wall clock `wall` (the stamps' clock).
    /// File descriptors passed along (systemd-notify's `BARRIER=1`) are closed at once so
    /// the sender never waits on them. Returns how many datagrams were read.
    fn read_batch(
        &self,
        headers: &mut MultiHeaders<()>,
        buffers: &mut [u8],
        wall: Duration,
        mut each: impl FnMut(Message),
    ) -> u32 {
        let mut received = [(0usize, None::<Duration>); BATCH];
        // The kernel shrinks each header's control room to what its message used, and nix
        // does not restore it: after a message with k fds, a later one with more would get k
        // installed, come back truncated (nix then yields no control messages) and leak them
        // (found by the `notify` fuzz target). So the headers are rebuilt whenever fds came
        // or a message was cut; after timestamp-only messages the room fits no fd at all, so
        // the kernel installs none and drops them.
        let mut reset = false;
        let count = {
            let mut chunks = buffers.chunks_mut(DATAGRAM_MAX);
            let mut slices: [[IoSliceMut<'_>; 1]; BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
            let Ok(results) = recvmmsg(
                self.fd.as_raw_fd(),
                headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                None,
            ) else {
                return 0;
            };
            let mut count = 0;
            for (slot, message) in received.iter_mut().zip(results) {
                let mut stamp = None;
                match message.cmsgs() {
                    Ok(cmsgs) => {
                        for cmsg in cmsgs {
                            match cmsg {
                                ControlMessageOwned::ScmTimestampns(at) => stamp = Some(at),
                                ControlMessageOwned::ScmRights(fds) => {
                                    reset = true;
                                    for fd in fds {
                                        let _ = nix::unistd::close(fd);
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    // Truncated: the kernel installed no fds in the room left (see below).
                    Err(_) => reset = true,
                }
                *slot = (
                    message.bytes,
                    stamp.map(|at| wall.saturating_sub(since_epoch(at))),
                );
                count += 1;
            }
            count
        };
        if reset {
            *headers = multi_headers();
        }
        for (i, (len, age)) in received[..count].iter().enumerate() {
            let start = i * DATAGRAM_MAX;
            let mut message = parse(&buffers[start..start + len.min(&DATAGRAM_MAX)]);
            message.age = *age;
            each(message);
        }
        count as u32
    }
}

fn since_epoch(at: TimeSpec) -> Duration {
    Duration::new(at.tv_sec().max(0) as u64, at.tv_nsec().max(0) as u32)
}

/// The most fds one message can carry (Linux's `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Headers for one batch, each with room for a stamp and as many fds as one message can
/// carry: with less, the kernel installs what fits and flags the message truncated, nix then
/// yields no control messages, and the installed fds would leak in the master.
fn multi_headers() -> MultiHeaders<()> {
    MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec, [RawFd; SCM_MAX_FD])))
}

/// The most datagrams read from one socket per call, and the buffer for each.
const BATCH: usize = 16;
const DATAGRAM_MAX: usize = 4096;
/// When a lazily read socket is read at once instead, and when it goes back (the caller's
/// policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chattiness {
    /// A lazily read socket found holding this many messages is read at once from then on.
    pub chatty_at: u32,
    /// A socket read at once for being chatty goes back to lazy reading once it sends at most
    /// this many messages between two lazy rounds.
    pub quiet_at: u32,
}

/// What a lazy round read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazyRound {
    /// Messages read.
    pub read: usize,
    /// The most read from one lazily read socket: how full the fullest queue was.
    pub most: u32,
}

/// One socket per worker, keyed by the caller's number for that worker (its id).
///
/// Every socket is in the lazy set, read by [`NotifyHub::read_lazy`] on the caller's
/// schedule (or when [`NotifyHub::lazy_fd`] is readable, if the caller polls it); sockets
/// marked urgent, or found chatty, are also in the eager set, whose fd the caller polls so
/// their messages are read at once ([`NotifyHub::read_eager`]).
pub struct NotifyHub {
    dir: PathBuf,
    /// The heartbeat filter, where it was asked for and the kernel took it.
    filter: Option<BeatFilter>,
    /// Why it is off, where it was asked for and the kernel refused it.
    refused: Option<io::Error>,
    rule: Chattiness,
    /// Sockets with the filter attached, and when the table was last loaded
    /// (`CLOCK_MONOTONIC` nanoseconds, the stamps' clock).
    filtered: usize,
    loaded_at: u64,
    eager: Epoll,
    lazy: Epoll,
    endpoints: HashMap<u64, Endpoint>,
    chatty: HashSet<u64>,
    buffers: Vec<u8>,
    headers: MultiHeaders<()>,
    events: Vec<EpollEvent>,
}

struct Endpoint {
    socket: NotifySocket,
    urgent: bool,
    /// Messages read since the last lazy round.
    recent: u32,
    /// Its index in the heartbeat filter's table, once the filter is attached.
    filtered: Option<Filtered>,
}

struct Filtered {
    index: u32,
    /// The newest stamp reported (at first: when the filter was attached, so a stamp left at
    /// this index by a socket before is never taken for this one's).
    reported: u64,
}

impl Endpoint {
    fn eager(&self, chatty: &HashSet<u64>, key: u64) -> bool {
        self.urgent || chatty.contains(&key)
    }
}

impl NotifyHub {
    /// A hub binding its sockets in `dir` (a private directory: who can write there can
    /// speak for a worker), with the heartbeat filter if `filter` and the kernel takes it
    /// (see [`NotifyHub::filter_refused`]).
    pub fn new(dir: &Path, filter: bool, rule: Chattiness) -> io::Result<NotifyHub> {
        let (filter, refused) = match filter.then(BeatFilter::new) {
            Some(Ok(filter)) => (Some(filter), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        Ok(NotifyHub {
            dir: dir.to_path_buf(),
            filter,
            refused,
            rule,
            filtered: 0,
            loaded_at: 0,
            eager: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            lazy: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            endpoints: HashMap::new(),
            chatty: HashSet::new(),
            buffers: vec![0; BATCH * DATAGRAM_MAX],
            headers: multi_headers(),
            events: vec![EpollEvent::empty(); 256],
        })
    }

    /// Binds the socket for `key`, urgent (read at once) until told otherwise; returns its
    /// path for the worker's `NOTIFY_SOCKET`.
    pub fn open(&mut self, key: u64) -> io::Result<PathBuf> {
        let path = self.dir.join(format!("n{key}"));
        // The directory is private and keys are not reused: a stale socket file is removed
        // only when the bind finds one (an unlink up front cost every spawn a syscall).
        let socket = match NotifySocket::bind(&path) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let _ = std::fs::remove_file(&path);
                NotifySocket::bind(&path)?
            }
            bound => bound?,
        };
        let event = EpollEvent::new(EpollFlags::EPOLLIN, key);
        self.lazy.add(&socket.fd, event)?;
        self.eager.add(&socket.fd, event)?;
        self.endpoints.insert(
            key,
            Endpoint {
                socket,
                urgent: true,
                recent: 0,
                filtered: None,
            },
        );
        Ok(path)
    }

    /// Closes and unlinks the socket for `key`.
    pub fn close(&mut self, key: u64) {
        self.chatty.remove(&key);
        // Closing the fd takes it out of both epoll sets, and ends its filter.
        if let Some(endpoint) = self.endpoints.remove(&key) {
            if let (Some(filtered), Some(filter)) = (endpoint.filtered, self.filter.as_mut()) {
                filter.release(filtered.index);
                self.filtered -= 1;
            }
        }
    }

    /// Whether the heartbeat filter is on.
    pub fn filtering(&self) -> bool {
        self.filter.is_some()
    }

    /// Why the kernel refused the heartbeat filter asked for, if it did.
    pub fn filter_refused(&self) -> Option<&io::Error> {
        self.refused.as_ref()
    }

    /// Attaches the heartbeat filter to `key`'s socket. A socket the kernel will not filter
    /// (none is expected) stays read as before.
    fn attach_filter(&mut self, key: u64) {
        let (Some(filter), Some(endpoint)) = (self.filter.as_mut(), self.endpoints.get_mut(&key))
        else {
            return;
        };
        if endpoint.filtered.is_some() {
            return;
        }
        let index = filter.take();
        // The socket holds the program once attached; its fd is closed here.
        let attached = filter.program(index).and_then(|program| {
            arbiter_sockets::attach_filter(endpoint.socket.fd.as_fd(), program.as_fd())
        });
        match attached {
            Ok(()) => {
                endpoint.filtered = Some(Filtered {
                    index,
                    reported: beat_filter::monotonic_ns(),
                });
                self.filtered += 1;
            }
            Err(_) => filter.release(index),
        }
    }

    /// Reads the heartbeat filter's table, for the [`NotifyHub::beat_age`] calls that follow
    /// (one lookup per 512 sockets; none while no socket has the filter).
    pub fn load_beats(&mut self) {
        if let Some(filter) = self.filter.as_mut().filter(|_| self.filtered > 0) {
            self.loaded_at = beat_filter::monotonic_ns();
            filter.load(filter.indices());
        }
    }

    /// How long before the last [`NotifyHub::load_beats`] `key`'s newest heartbeat taken by
    /// the filter was sent, if it is newer than the last one reported.
    pub fn beat_age(&mut self, key: u64) -> Option<Duration> {
        let filter = self.filter.as_ref()?;
        let filtered = self.endpoints.get_mut(&key)?.filtered.as_mut()?;
        let stamp = filter.stamp(filtered.index);
        if stamp <= filtered.reported {
            return None;
        }
        filtered.reported = stamp;
        Some(beat_filter::age(self.loaded_at, stamp))
    }

    /// Marks the socket for `key` urgent (read at once) or not.
    pub fn set_urgent(&mut self, key: u64, urgent: bool) {
        let Some(endpoint) = self.endpoints.get_mut(&key) else {
            return;
        };
        let was = endpoint.eager(&self.chatty, key);
        endpoint.urgent = urgent;
        let now = endpoint.eager(&self.chatty, key);
        Self::move_set(&self.eager, &endpoint.socket, key, was, now);
    }

    fn move_set(eager: &Epoll, socket: &NotifySocket, key: u64, was: bool, now: bool) {
        let _ = match (was, now) {
            (false, true) => eager.add(&socket.fd, EpollEvent::new(EpollFlags::EPOLLIN, key)),
            (true, false) => eager.delete(&socket.fd),
            _ => Ok(()),
        };
    }

    /// The fd that is readable while an urgent or chatty socket holds a message.
    pub fn eager_fd(&self) -> BorrowedFd<'_> {
        self.eager.0.as_fd()
    }

    /// The fd that is readable while any socket holds a message.
    pub fn lazy_fd(&self) -> BorrowedFd<'_> {
        self.lazy.0.as_fd()
    }

    /// Reads the urgent and chatty sockets that hold messages.
    pub fn read_eager(&mut self, out: &mut Vec<(u64, Message)>) {
        self.read_set(true, out);
    }

    /// Reads every socket that holds messages; a socket found holding many becomes chatty
    /// (read at once), a chatty one that was quiet since the last round becomes lazy again.
    pub fn read_lazy(&mut self, out: &mut Vec<(u64, Message)>) -> LazyRound {
        let before = out.len();
        let chatty: Vec<u64> = self.chatty.iter().copied().collect();
        for key in chatty {
            if let Some(endpoint) = self.endpoints.get_mut(&key) {
                if endpoint.recent <= self.rule.quiet_at {
                    self.chatty.remove(&key);
                    if !endpoint.urgent {
                        let _ = self.eager.delete(&endpoint.socket.fd);
                    }
                }
                endpoint.recent = 0;
            }
        }
        let most = self.read_set(false, out);
        LazyRound {
            read: out.len() - before,
            most,
        }
    }

    /// Reads the sockets of one set that hold messages; the most found on a lazy one.
    fn read_set(&mut self, eager: bool, out: &mut Vec<(u64, Message)>) -> u32 {
        let mut most = 0;
        loop {
            let set = if eager { &self.eager } else { &self.lazy };
            let n = set.wait(&mut self.events, EpollTimeout::ZERO).unwrap_or(0);
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            for i in 0..n {
                let key = self.events[i].data();
                let Some(endpoint) = self.endpoints.get_mut(&key) else {
                    continue;
                };
                let mut beat = false;
                let got = endpoint.socket.read_batch(
                    &mut self.headers,
                    &mut self.buffers,
                    wall,
                    |message| {
                        beat |= message.watchdog;
                        out.push((key, message))
                    },
                );
                if beat && endpoint.filtered.is_none() && self.filter.is_some() {
                    // It beats by datagram: from now on the kernel takes its bare beats.
                    self.attach_filter(key);
                    continue;
                }
                let Some(endpoint) = self.endpoints.get_mut(&key) else {
                    continue;
                };
                if endpoint.eager(&self.chatty, key) {
                    // Counted between lazy rounds, to tell when a chatty one has calmed.
                    endpoint.recent += got;
                    continue;
                }
                most = most.max(got);
                if got >= self.rule.chatty_at {
                    self.chatty.insert(key);
                    endpoint.recent = 0;
                    Self::move_set(&self.eager, &endpoint.socket, key, false, true);
                }
            }
            // A full batch of events may leave more ready sockets behind.
            if n < self.events.len() {
                return most;
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The master's link to its own service manager (`NOTIFY_SOCKET` given to the master).
pub struct Supervisor {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Supervisor {
    /// From the value of the master's own `NOTIFY_SOCKET` (a path or `@abstract`).
    pub fn new(value: &str) -> io::Result<Supervisor> {
        let address = match value.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(value)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Supervisor { socket, address })
    }

    /// Sends one message (`READY=1`, `STATUS=...`, ...); failures are reported to the caller.
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.address)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The master's thresholds (arbiter-core's `notify` module decides them).
    const RULE: Chattiness = Chattiness {
        chatty_at: 8,
        quiet_at: 4,
    };
    const CHATTY_AT: u32 = RULE.chatty_at;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    #[test]
    fn parses_every_known_assignment() {
        let message = parse(
            b"READY=1\nSTATUS=serving 3\nWATCHDOG=1\nSTOPPING=1\nX_ARBITER_RECYCLE=1\nBOGUS=2",
        );
        assert_eq!(
            message,
            Message {
                ready: true,
                watchdog: true,
                stopping: true,
                status: Some("serving 3".into()),
                age: None,
                recycle: true,
            }
        );
        assert!(!parse(b"READY=0").ready);
        assert!(!parse(b"X_ARBITER_RECYCLE=0").recycle);
    }

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    fn sender(path: &Path) -> Supervisor {
        Supervisor::new(path.to_str().unwrap()).unwrap()
    }

    #[test]
    fn a_stale_file_at_a_sockets_path_is_replaced_by_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = NotifyHub::new(dir.path(), false, RULE).unwrap();
        std::fs::write(dir.path().join("n9"), "stale").unwrap();
        let path = hub.open(9).unwrap();
        assert_eq!(path, dir.path().join("n9"));
        sender(&path).send("READY=1").unwrap();
        let mut fds = [PollFd::new(hub.eager_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(5000u16)).unwrap(), 1);
        let mut out = Vec::new();
        hub.read_eager(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 9);
        assert!(out[0].1.ready);
    }

    #[test]
    fn an_urgent_socket_wakes_the_eager_fd_and_is_read_with_its_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = NotifyHub::new(dir.path(), false, RULE).unwrap();
        let path = hub.open(7).unwrap();
        assert!(!readable(hub.eager_fd()));
        sender(&path).send("READY=1\nSTATUS=hi").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(readable(hub.eager_fd()));
        let mut out = Vec::new();
        hub.read_eager(&mut out);
        assert_eq!(out.len(), 1);
        let (key, message) = &out[0];
        assert_eq!(*key, 7);
        assert!(message.ready);
        assert_eq!(message.status.as_deref(), Some("hi"));
        let age = message.age.expect("stamped by the kernel");
        assert!(age >= Duration::from_millis(25), "{age:?}");
        assert!(age < Duration::from_secs(5), "{age:?}");
        assert!(!readable(hub.eager_fd()), "read");
    }

    #[test]
    fn a_lazy_socket_waits_for_the_lazy_round_and_a_chatty_one_turns_eager_then_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = NotifyHub::new(dir.path(), false, RULE).unwrap();
        let path = hub.open(3).unwrap();
        hub.set_urgent(3, false);
        let worker = sender(&path);
        worker.send("WATCHDOG=1").unwrap();
        assert!(
            !readable(hub.eager_fd()),
            "a lazy socket does not wake the loop"
        );
        assert!(readable(hub.lazy_fd()));
        let mut out = Vec::new();
        hub.read_eager(&mut out);
        assert!(out.is_empty());
        assert_eq!(hub.read_lazy(&mut out).read, 1);
        assert!(out[0].1.watchdog);
        // Eleven messages queue (max_dgram_qlen + 1 on a default kernel); a lazy round
        // that finds many makes the socket eager, so the sender is not left to wait.
        for _ in 0..CHATTY_AT {
            worker.send("WATCHDOG=1").unwrap();
        }
        out.clear();
        assert_eq!(
            hub.read_lazy(&mut out),
            LazyRound {
                read: CHATTY_AT as usize,
                most: CHATTY_AT
            }
        );
        worker.send("STATUS=busy").unwrap();
        assert!(readable(hub.eager_fd()), "chatty: read at once");
        hub.read_eager(&mut out);
        assert_eq!(out.last().unwrap().1.status.as_deref(), Some("busy"));
        // A round with (almost) nothing since the last makes it lazy again.
        hub.read_lazy(&mut out);
        worker.send("WATCHDOG=1").unwrap();
        assert!(!readable(hub.eager_fd()), "calmed: lazy again");
        assert!(readable(hub.lazy_fd()));
    }

    /// A socket made chatty by a burst, then beating at a pace a lazy round can hold (four
    /// between rounds, a worker beating once a second at a four-second period), goes back to
    /// lazy reading: it does not wake the loop at every beat for good.
    #[test]
    fn a_chatty_socket_back_at_a_lazy_pace_turns_lazy() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = NotifyHub::new(dir.path(), false, RULE).unwrap();
        let path = hub.open(5).unwrap();
        hub.set_urgent(5, false);
        let worker = sender(&path);
        for _ in 0..CHATTY_AT {
            worker.send("WATCHDOG=1").unwrap();
        }
        let mut out = Vec::new();
        hub.read_lazy(&mut out);
        worker.send("WATCHDOG=1").unwrap();
        assert!(readable(hub.eager_fd()), "chatty after the burst");
        hub.read_eager(&mut out);
        // Three more, read at once as they come: four since the last lazy round.
        for _ in 0..3 {
            worker.send("WATCHDOG=1").unwrap();
            hub.read_eager(&mut out);
        }
        hub.read_lazy(&mut out);
        worker.send("WATCHDOG=1").unwrap();
        assert!(!readable(hub.eager_fd()), "back to lazy");
        assert!(readable(hub.lazy_fd()));
    }

    /// Found by the `notify` fuzz target: a datagram with more fds than the receive buffer
    /// had room for came back truncated and its fds stayed open in the master; the room left
    /// after a message with fewer fds did the same to the next one.
    #[test]
    fn passed_fds_are_closed_whatever_came_before() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        use std::io::IoSlice;

        let dir = tempfile::tempdir().unwrap();
        let mut hub = NotifyHub::new(dir.path(), false, RULE).unwrap();
        let address = UnixAddr::new(&hub.open(5).unwrap()).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        // The fds passed are all of one file of this test's own, and only the fds open on it
        // are counted: other tests of this binary open and close fds concurrently (a count of
        // every fd in the process raced them), and any of them may open /dev/null.
        let passed = dir.path().join("passed");
        let null = std::fs::File::create(&passed).unwrap();
        let open_fds = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter(|target| *target == passed)
                .count()
        };
        let before = open_fds();
        assert_eq!(before, 1, "only the file itself is open on it");
        let mut send_and_read = |payload: &[u8], fds: usize| {
            let fds = vec![null.as_raw_fd(); fds];
            let rights = [ControlMessage::ScmRights(&fds)];
            let cmsgs = if fds.is_empty() { &[][..] } else { &rights[..] };
            let flags = MsgFlags::empty();
            sendmsg(
                sender.as_raw_fd(),
                &[IoSlice::new(payload)],
                cmsgs,
                flags,
                Some(&address),
            )
            .unwrap();
            let mut out = Vec::new();
            hub.read_eager(&mut out);
            assert_eq!(open_fds(), before, "every passed fd closed");
            assert_eq!(out.len(), 1);
            out.pop().unwrap().1
        };
        assert!(send_and_read(b"READY=1", SCM_MAX_FD).ready);
        assert!(send_and_read(b"WATCHDOG=1", 1).watchdog);
        assert!(send_and_read(b"WATCHDOG=1", 200).watchdog);
        assert!(send_and_read(b"STATUS=a", 0).age.is_some());
        assert!(send_and_read(b"STATUS=b", 3).status.is_some());
        let after_a_cut = send_and_read(b"STATUS=c", 5);
        assert!(after_a_cut.age.is_some(), "full room again: stamped");
    }

    /// With the heartbeat filter (taken as root; refused with EPERM, and only that, otherwise):
    /// a socket's first bare heartbeat is read as any message and attaches the filter; its
    /// later bare heartbeats wake nothing and queue nothing (more than the kernel would queue)
    /// and come back as the age of the newest, once; every other message is read as before;
    /// a socket opened after one closed gets none of its stamps.
    #[test]
    fn with_the_filter_bare_heartbeats_after_the_first_queue_nothing_and_are_dated() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = NotifyHub::new(dir.path(), true, RULE).unwrap();
        if let Some(why) = hub.filter_refused() {
            assert!(!nix::unistd::geteuid().is_root(), "root, refused: {why}");
            assert_eq!(why.raw_os_error(), Some(libc::EPERM), "{why}");
            return;
        }
        assert!(hub.filtering());
        let path = hub.open(4).unwrap();
        hub.set_urgent(4, false);
        let worker = sender(&path);
        worker.send("WATCHDOG=1").unwrap();
        let mut out = Vec::new();
        assert_eq!(hub.read_lazy(&mut out).read, 1, "the first is read");
        assert!(out[0].1.watchdog);
        hub.load_beats();
        assert_eq!(hub.beat_age(4), None, "no beat taken yet");
        for _ in 0..3 * CHATTY_AT {
            worker.send("WATCHDOG=1").unwrap();
        }
        assert!(!readable(hub.lazy_fd()), "nothing queued");
        assert!(!readable(hub.eager_fd()));
        hub.load_beats();
        let age = hub.beat_age(4).expect("the newest beat, dated");
        assert!(age < Duration::from_secs(5), "{age:?}");
        assert_eq!(hub.beat_age(4), None, "reported once");
        worker.send("STATUS=busy").unwrap();
        out.clear();
        hub.read_lazy(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.status.as_deref(), Some("busy"));
        // A worker that replaces it gets the same table index, and none of its stamps.
        hub.close(4);
        let path = hub.open(5).unwrap();
        let next = sender(&path);
        next.send("READY=1\nWATCHDOG=1").unwrap();
        out.clear();
        hub.read_eager(&mut out);
        assert!(out[0].1.ready && out[0].1.watchdog);
        hub.load_beats();
        assert_eq!(
            hub.beat_age(5),
            None,
            "the stamp left at its index is not its own"
        );
        next.send("WATCHDOG=1").unwrap();
        assert!(!readable(hub.eager_fd()), "taken by the filter");
        hub.load_beats();
        assert!(hub.beat_age(5).is_some());
    }

    #[test]
    fn a_closed_socket_is_unlinked_and_urgency_can_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = NotifyHub::new(dir.path(), false, RULE).unwrap();
        let path = hub.open(1).unwrap();
        hub.set_urgent(1, false);
        hub.set_urgent(1, true);
        sender(&path).send("READY=1").unwrap();
        assert!(readable(hub.eager_fd()));
        hub.close(1);
        assert!(!path.exists());
        assert!(!readable(hub.eager_fd()));
        assert!(!readable(hub.lazy_fd()));
    }
}
