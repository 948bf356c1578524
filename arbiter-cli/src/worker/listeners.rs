//! Taking the inherited descriptors: listeners at fds 3.., and the heartbeat file.
//!
//! Each descriptor is taken once, checked (open; for listeners, a listening stream socket of
//! family unix, inet or inet6), and set close-on-exec as it is taken. Listeners are put in
//! non-blocking mode: that flag lives on the open file description shared with the master and
//! sibling workers, which is what gunicorn's workers do too (several workers accept on one
//! socket, so `EAGAIN` on accept is normal).

use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};
use nix::sys::stat::{fstat, SFlag};

use super::WorkerError;

/// The first inherited listener, as in the systemd socket-activation protocol.
pub const FIRST_LISTEN_FD: RawFd = 3;

/// An inherited listener, ready for the event loop.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener (IPv4 or IPv6).
    Tcp(mio::net::TcpListener),
    /// A unix stream listener.
    Unix(mio::net::UnixListener),
}

/// Takes ownership of the inherited descriptor `raw`, setting close-on-exec.
///
/// The caller must take each number at most once: [`take_listeners`] and the heartbeat code
/// check that the numbers they adopt are distinct.
fn adopt(raw: RawFd) -> Result<OwnedFd, WorkerError> {
    let bad = |reason| WorkerError::BadDescriptor { fd: raw, reason };
    if raw < 0 {
        return Err(bad("is negative"));
    }
    // SAFETY: the descriptor was handed to this process by the worker protocol; nothing else
    // in this process uses or owns this number, since callers adopt each number once and the
    // standard library opens nothing at these numbers before `main` runs (fds 0-2 are never
    // adopted). It stays in a ManuallyDrop until F_GETFD found it open (a closed number only
    // makes fcntl fail with EBADF), so a number that is not open is never closed.
    let owned = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(raw) });
    if fcntl(&*owned, FcntlArg::F_GETFD).is_err() {
        return Err(bad("is not open"));
    }
    let owned = ManuallyDrop::into_inner(owned);
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|_| bad("refuses FD_CLOEXEC"))?;
    Ok(owned)
}

/// Takes the `count` listeners at fds 3..3+count.
pub fn take_listeners(count: usize) -> Result<Vec<Listener>, WorkerError> {
    (0..count)
        .map(|index| {
            let raw = RawFd::try_from(index)
                .ok()
                .and_then(|index| FIRST_LISTEN_FD.checked_add(index))
                .ok_or(WorkerError::BadDescriptor {
                    fd: RawFd::MAX,
                    reason: "is out of range",
                })?;
            listener(adopt(raw)?)
        })
        .collect()
}

fn listener(fd: OwnedFd) -> Result<Listener, WorkerError> {
    let raw = fd.as_raw_fd();
    let bad = |reason| WorkerError::BadDescriptor { fd: raw, reason };
    let stat = fstat(&fd).map_err(|_| bad("cannot be inspected"))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(bad("is not a socket"));
    }
    if getsockopt(&fd, sockopt::SockType).map_err(|_| bad("is not a socket"))? != SockType::Stream {
        return Err(bad("is not a stream socket"));
    }
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(|_| bad("is not a socket"))? {
        return Err(bad("is not listening"));
    }
    let family = getsockname::<SockaddrStorage>(raw)
        .ok()
        .and_then(|address| address.family());
    let io = |source| WorkerError::Io {
        what: "listener",
        source,
    };
    match family {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => {
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true).map_err(io)?;
            Ok(Listener::Tcp(mio::net::TcpListener::from_std(std)))
        }
        Some(AddressFamily::Unix) => {
            let std = std::os::unix::net::UnixListener::from(fd);
            std.set_nonblocking(true).map_err(io)?;
            Ok(Listener::Unix(mio::net::UnixListener::from_std(std)))
        }
        _ => Err(bad("is not a unix, inet or inet6 socket")),
    }
}

/// Takes the heartbeat file at `raw`, refusing a number that is also a listener.
pub fn take_heartbeat(raw: RawFd, listen_fds: usize) -> Result<OwnedFd, WorkerError> {
    let last_listener = i64::from(FIRST_LISTEN_FD) + listen_fds as i64;
    if (i64::from(FIRST_LISTEN_FD)..last_listener).contains(&i64::from(raw)) {
        return Err(WorkerError::BadDescriptor {
            fd: raw,
            reason: "is both a listener and the heartbeat file",
        });
    }
    if (0..FIRST_LISTEN_FD).contains(&raw) {
        return Err(WorkerError::BadDescriptor {
            fd: raw,
            reason: "is a standard stream, not a heartbeat file",
        });
    }
    adopt(raw)
}
