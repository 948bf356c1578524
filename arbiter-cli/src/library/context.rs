//! What a library-mode worker function is given: the worker protocol as a typed value.
//!
//! An exec'd worker reads the protocol from its environment (`LISTEN_FDS`, `NOTIFY_SOCKET`,
//! `ARBITER_HEARTBEAT_FD`, ...). A forked worker function gets the same facts in a
//! [`WorkerContext`], prepared by the master before the fork: the child's process environment
//! is left as the master's (nothing calls `setenv` in the child), and [`WorkerContext::env`]
//! is the environment an exec'd worker would have had.

use std::ffi::{OsStr, OsString};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::AddressFamily;

/// The first listener's fd, as in the systemd socket-activation protocol.
const FIRST_LISTEN_FD: RawFd = 3;

/// One worker's share of the worker protocol, for a worker that is a Rust function.
#[derive(Debug)]
pub struct WorkerContext {
    pub(crate) id: u64,
    pub(crate) slot: usize,
    pub(crate) pid: u32,
    pub(crate) listener_names: Vec<String>,
    pub(crate) listeners_taken: bool,
    pub(crate) heartbeat_fd: Option<RawFd>,
    pub(crate) notify_socket: PathBuf,
    pub(crate) watchdog: Option<Duration>,
    pub(crate) gpus: Vec<String>,
    pub(crate) env: Vec<(OsString, OsString)>,
}

/// An inherited listener, adopted by [`WorkerContext::take_listeners`]. It is in blocking
/// mode unless the worker changes it (the mode is shared with the master and every sibling,
/// who hold the same socket).
#[derive(Debug)]
pub enum ListenerSocket {
    /// A TCP listener (IPv4 or IPv6).
    Tcp(std::net::TcpListener),
    /// A unix stream listener.
    Unix(UnixListener),
}

impl WorkerContext {
    /// The worker's age: monotonic, never reused (`ARBITER_WORKER_ID`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The worker's stable slot 0..N-1, reused on respawn (`ARBITER_WORKER_SLOT`).
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// This process's pid (`LISTEN_PID`, `WATCHDOG_PID`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How many listeners the worker has, at fds 3.. in bind order (`LISTEN_FDS`).
    pub fn listener_count(&self) -> usize {
        self.listener_names.len()
    }

    /// Their names (`LISTEN_FDNAMES`).
    pub fn listener_names(&self) -> &[String] {
        &self.listener_names
    }

    /// Adopts the listeners at fds 3.. (once; later calls return nothing), each checked to be
    /// a listening socket of family inet, inet6 or unix.
    pub fn take_listeners(&mut self) -> io::Result<Vec<ListenerSocket>> {
        if std::mem::replace(&mut self.listeners_taken, true) {
            return Ok(Vec::new());
        }
        let count = RawFd::try_from(self.listener_names.len()).map_err(io::Error::other)?;
        (FIRST_LISTEN_FD..FIRST_LISTEN_FD + count)
            .map(|fd| {
                let owned = adopt(fd)?;
                if !rustix::net::sockopt::socket_acceptconn(&owned)? {
                    return Err(io::Error::other(format!("fd {fd} is not listening")));
                }
                let family = rustix::net::getsockname(&owned)?.address_family();
                if family == AddressFamily::UNIX {
                    Ok(ListenerSocket::Unix(UnixListener::from(owned)))
                } else if family == AddressFamily::INET || family == AddressFamily::INET6 {
                    Ok(ListenerSocket::Tcp(std::net::TcpListener::from(owned)))
                } else {
                    Err(io::Error::other(format!("fd {fd}: not a stream listener")))
                }
            })
            .collect()
    }

    /// The heartbeat (once; later calls return `None`): bump it more often than
    /// [`WorkerContext::watchdog`] to count as alive.
    pub fn take_heartbeat(&mut self) -> io::Result<Option<Heartbeat>> {
        match self.heartbeat_fd.take() {
            Some(fd) => Ok(Some(Heartbeat {
                file: adopt(fd)?,
                spinner: false,
            })),
            None => Ok(None),
        }
    }

    /// A sender of `sd_notify` messages to the master (`NOTIFY_SOCKET`): `READY=1` once
    /// serving, `STATUS=...`, `STOPPING=1`.
    pub fn notifier(&self) -> io::Result<Notifier> {
        Notifier::new(&self.notify_socket)
    }

    /// The master's notify socket (`NOTIFY_SOCKET`).
    pub fn notify_socket(&self) -> &Path {
        &self.notify_socket
    }

    /// The heartbeat timeout, when one is set (`WATCHDOG_USEC`).
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// The GPUs assigned to this worker's slot (empty unless GPUs are balanced).
    pub fn gpus(&self) -> &[String] {
        &self.gpus
    }

    /// The environment an exec'd worker would have: the master's, with `--env` applied and
    /// the protocol variables (including `LISTEN_PID` and `WATCHDOG_PID`) set.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env = self.env.clone();
        env.push(("LISTEN_PID".into(), self.pid.to_string().into()));
        if self.watchdog.is_some() {
            env.push(("WATCHDOG_PID".into(), self.pid.to_string().into()));
        }
        env
    }

    /// One variable of [`WorkerContext::env`].
    pub fn var(&self, name: impl AsRef<OsStr>) -> Option<OsString> {
        let name = name.as_ref();
        self.env()
            .into_iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

/// Takes ownership of the inherited fd `fd`, checking it is open and setting close-on-exec.
fn adopt(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: the master's hand-off put this fd here for this process, and only the context
    // adopts it (once: `take_listeners` and `take_heartbeat` mark theirs taken). It stays in a
    // ManuallyDrop until F_GETFD found it open, so a number that is not open is never closed.
    let owned = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let flags = rustix::io::fcntl_getfd(owned.as_fd())?;
    rustix::io::fcntl_setfd(owned.as_fd(), flags | rustix::io::FdFlags::CLOEXEC)?;
    Ok(ManuallyDrop::into_inner(owned))
}

/// The heartbeat file: each [`Heartbeat::beat`] changes its ctime, which the master reads.
#[derive(Debug)]
pub struct Heartbeat {
    file: OwnedFd,
    spinner: bool,
}

impl Heartbeat {
    /// One beat: fchmod the file to mode 0 or 1 in turn (gunicorn's `WorkerTmp.notify`).
    pub fn beat(&mut self) -> io::Result<()> {
        self.spinner = !self.spinner;
        let mode = if self.spinner {
            rustix::fs::Mode::XOTH
        } else {
            rustix::fs::Mode::empty()
        };
        Ok(rustix::fs::fchmod(&self.file, mode)?)
    }
}

/// A sender of `sd_notify` datagrams to the master.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    fn new(target: &Path) -> io::Result<Notifier> {
        let address = match target.as_os_str().as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(target)?,
        };
        let socket = UnixDatagram::unbound()?;
        // A full receive queue must not stall serving for long.
        socket.set_write_timeout(Some(Duration::from_secs(1)))?;
        Ok(Notifier { socket, address })
    }

    /// Sends one message such as `READY=1`.
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.address)
            .map(drop)
    }
}
