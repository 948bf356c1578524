//! The socket and file calls the crate needs, through rustix's safe wrappers.

use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use rustix::io::{fcntl_getfd, fcntl_setfd, FdFlags};
use rustix::net::{sockopt, AddressFamily, SocketAddrAny, SocketAddrUnix, SocketFlags, SocketType};

use crate::LocalAddr;

/// Room in `sun_path` for a path and its NUL.
const SUN_PATH_LEN: usize = 108;

/// The address families the crate binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// IPv4.
    Inet,
    /// IPv6.
    Inet6,
    /// Unix domain.
    Unix,
}

/// A new close-on-exec stream socket of `family`.
pub(crate) fn stream_socket(family: Family) -> io::Result<OwnedFd> {
    let family = match family {
        Family::Inet => AddressFamily::INET,
        Family::Inet6 => AddressFamily::INET6,
        Family::Unix => AddressFamily::UNIX,
    };
    Ok(rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The socket options a listener may get.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BoolOption {
    /// `SO_REUSEADDR`.
    ReuseAddr,
    /// `SO_REUSEPORT`.
    ReusePort,
    /// `IPV6_V6ONLY`.
    V6Only,
}

/// Turns a boolean socket option on.
pub(crate) fn enable(fd: BorrowedFd<'_>, option: BoolOption) -> io::Result<()> {
    Ok(match option {
        BoolOption::ReuseAddr => sockopt::set_socket_reuseaddr(fd, true),
        BoolOption::ReusePort => sockopt::set_socket_reuseport(fd, true),
        BoolOption::V6Only => sockopt::set_ipv6_v6only(fd, true),
    }?)
}

/// A socket address to bind or connect to.
pub(crate) enum RawAddr {
    /// An IP address and port.
    Inet(SocketAddr),
    /// A unix socket path.
    Unix(SocketAddrUnix),
}

/// An IP socket address.
pub(crate) fn inet_raw(addr: SocketAddr) -> RawAddr {
    RawAddr::Inet(addr)
}

/// A unix socket path; `None` if it is empty, holds a NUL or does not fit `sun_path`.
pub(crate) fn unix_raw(path: &Path) -> Option<RawAddr> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= SUN_PATH_LEN || bytes.contains(&0) {
        return None;
    }
    SocketAddrUnix::new(path).ok().map(RawAddr::Unix)
}

/// bind(2).
pub(crate) fn bind(fd: BorrowedFd<'_>, addr: &RawAddr) -> io::Result<()> {
    Ok(match addr {
        RawAddr::Inet(addr) => rustix::net::bind(fd, addr),
        RawAddr::Unix(addr) => rustix::net::bind(fd, addr),
    }?)
}

/// connect(2), blocking.
pub(crate) fn connect(fd: BorrowedFd<'_>, addr: &RawAddr) -> io::Result<()> {
    Ok(match addr {
        RawAddr::Inet(addr) => rustix::net::connect(fd, addr),
        RawAddr::Unix(addr) => rustix::net::connect(fd, addr),
    }?)
}

/// listen(2).
pub(crate) fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    Ok(rustix::net::listen(fd, backlog)?)
}

/// The local address of a socket (getsockname).
pub(crate) fn local_addr(fd: BorrowedFd<'_>) -> io::Result<LocalAddr> {
    let any: SocketAddrAny = rustix::net::getsockname(fd)?;
    let family = any.address_family();
    if family == AddressFamily::INET || family == AddressFamily::INET6 {
        return Ok(LocalAddr::Inet(SocketAddr::try_from(any)?));
    }
    if family == AddressFamily::UNIX {
        let unix = SocketAddrUnix::try_from(any)?;
        let path = unix
            .path()
            .map(|p| PathBuf::from(OsStr::from_bytes(p.to_bytes())))
            .unwrap_or_default();
        return Ok(LocalAddr::Unix(path));
    }
    Err(io::Error::other(format!(
        "unsupported address family {}",
        family.as_raw()
    )))
}

/// What a path is, not following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathIdentity {
    /// The device.
    pub dev: u64,
    /// The inode.
    pub ino: u64,
    /// Whether it is a socket file.
    pub is_socket: bool,
}

/// The identity of a path, not following a final symlink; `None` if absent.
pub(crate) fn path_identity(path: &Path) -> io::Result<Option<PathIdentity>> {
    match rustix::fs::lstat(path) {
        Ok(st) => Ok(Some(PathIdentity {
            dev: st.st_dev,
            ino: st.st_ino,
            is_socket: FileType::from_raw_mode(st.st_mode) == FileType::Socket,
        })),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Sets or clears FD_CLOEXEC with F_SETFD (not F_SETFL, where it does nothing).
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let mut flags = fcntl_getfd(fd)?;
    flags.set(FdFlags::CLOEXEC, on);
    Ok(fcntl_setfd(fd, flags)?)
}

/// Checks that `fd` is an open socket in the listening state.
pub(crate) fn check_listening(fd: BorrowedFd<'_>) -> Result<(), String> {
    let st = rustix::fs::fstat(fd).map_err(|e| io::Error::from(e).to_string())?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err("not a socket".to_owned());
    }
    match sockopt::socket_acceptconn(fd) {
        Ok(false) => Err("socket is not listening".to_owned()),
        Ok(true) => Ok(()),
        Err(error) => Err(io::Error::from(error).to_string()),
    }
}

/// Whether an I/O error is `EADDRINUSE`.
pub(crate) fn is_addr_in_use(error: &io::Error) -> bool {
    error.raw_os_error() == Some(rustix::io::Errno::ADDRINUSE.raw_os_error())
}

/// Whether an I/O error is `ECONNREFUSED`.
pub(crate) fn is_conn_refused(error: &io::Error) -> bool {
    error.raw_os_error() == Some(rustix::io::Errno::CONNREFUSED.raw_os_error())
}

/// Sets the process umask, returning the previous one.
pub(crate) fn umask(mask: u32) -> u32 {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask as rustix::fs::RawMode))
        .as_raw_mode() as u32
}
