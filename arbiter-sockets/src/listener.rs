//! Listening sockets: creating them from bind specs, their identity, and closing them.

use std::fmt;
use std::io;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{sys, BindSpec, Error};

/// How listeners are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOptions {
    /// Set `SO_REUSEPORT` (several processes may then bind the same address).
    pub reuse_port: bool,
    /// The `listen(2)` backlog.
    pub backlog: i32,
    /// The umask in effect while a unix socket is bound.
    pub umask: u32,
    /// The mode a unix socket file gets after `bind` (`chmod`), if any.
    pub mode: Option<u32>,
    /// How many more times to try when the address is in use (`EADDRINUSE`).
    pub retries: u32,
    /// The wait between those tries.
    pub retry_delay: Duration,
}

impl Default for BindOptions {
    /// gunicorn's defaults: backlog 2048, umask 0, five retries a second apart.
    fn default() -> Self {
        BindOptions {
            reuse_port: false,
            backlog: 2048,
            umask: 0,
            mode: None,
            retries: 5,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// Where a listener came from; decides whether closing may unlink its unix path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Created by this process from a bind spec.
    Bound,
    /// Inherited from the previous master across a re-exec (`ARBITER_LISTEN_FDS`).
    Reexec,
    /// Passed by systemd socket activation (`LISTEN_FDS`); never unlinked.
    Systemd,
    /// Given as `fd://N`; never unlinked.
    Fd,
}

/// The address a listener is bound to, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalAddr {
    /// An IP address and port (an ephemeral port already resolved).
    Inet(SocketAddr),
    /// A unix socket path (empty for an unnamed or abstract socket).
    Unix(PathBuf),
}

impl fmt::Display for LocalAddr {
    /// As gunicorn logs it: `http://127.0.0.1:8000`, `http://[::1]:8000`, `unix:/path`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Inet(addr) => write!(f, "http://{addr}"),
            LocalAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One listening socket with its origin, its configured spec (if any) and its name.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    spec: Option<BindSpec>,
    origin: Origin,
    local: LocalAddr,
    name: String,
    /// (dev, ino) of the unix socket file right after we bound or inherited it.
    unix_identity: Option<(u64, u64)>,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.local.fmt(f)
    }
}

/// A `LISTEN_FDNAMES` entry: at most 255 bytes, no `:`, printable ASCII only.
pub(crate) fn fd_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ':' || !c.is_ascii_graphic() {
                '_'
            } else {
                c
            }
        })
        .take(255)
        .collect()
}

impl Listener {
    pub(crate) fn adopt(
        fd: OwnedFd,
        origin: Origin,
        name: Option<String>,
    ) -> Result<Listener, Error> {
        let local = sys::local_addr(fd.as_fd()).map_err(|source| Error::Os {
            what: format!("getsockname of fd {}", fd.as_raw_fd()),
            source,
        })?;
        let unix_identity = match &local {
            LocalAddr::Unix(path) if !path.as_os_str().is_empty() => sys::path_identity(path)
                .ok()
                .flatten()
                .map(|id| (id.dev, id.ino)),
            _ => None,
        };
        let name = name.unwrap_or_else(|| match &local {
            LocalAddr::Inet(addr) => fd_name(&addr.to_string()),
            LocalAddr::Unix(path) => fd_name(&format!("unix:{}", path.display())),
        });
        Ok(Listener {
            fd,
            spec: None,
            origin,
            local,
            name,
            unix_identity,
        })
    }

    /// The listening socket.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The bind spec this listener serves, if it was configured or matched to one.
    pub fn spec(&self) -> Option<&BindSpec> {
        self.spec.as_ref()
    }

    /// Where this listener came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The real bound address, for logging and matching.
    pub fn local_addr(&self) -> &LocalAddr {
        &self.local
    }

    /// The name handed to workers in `LISTEN_FDNAMES`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the `LISTEN_FDNAMES` name (`:` and non-printable characters become `_`).
    pub fn set_name(&mut self, name: &str) {
        self.name = fd_name(name);
    }

    pub(crate) fn set_spec(&mut self, spec: BindSpec) {
        if self.origin != Origin::Systemd {
            self.name = fd_name(&spec.to_string());
        }
        self.spec = Some(spec);
    }

    /// Closes the socket; with `unlink`, also removes its unix path if this process bound it
    /// (or inherited it by re-exec) and the path still is that same socket file.
    ///
    /// Returns whether the path was unlinked.
    pub fn close(self, unlink: bool) -> bool {
        let mut unlinked = false;
        if let (true, LocalAddr::Unix(path), Some(identity)) =
            (unlink, &self.local, self.unix_identity)
        {
            let ours = matches!(self.origin, Origin::Bound | Origin::Reexec);
            let same =
                matches!(sys::path_identity(path), Ok(Some(id)) if (id.dev, id.ino) == identity);
            if ours && same {
                unlinked = std::fs::remove_file(path).is_ok();
            }
        }
        drop(self.fd);
        unlinked
    }
}

/// Whether closing listeners may unlink unix paths, by gunicorn's rule: not while an upgrade
/// is under way (in either master), and not with `SO_REUSEPORT` (another process may share the
/// path). Systemd and `fd://` sockets are never unlinked whatever this says.
pub fn may_unlink(upgrading: bool, reuse_port: bool) -> bool {
    !(upgrading || reuse_port)
}

/// Closes every listener, unlinking unix paths as [`Listener::close`] describes.
pub fn close_listeners(listeners: Vec<Listener>, unlink: bool) {
    for listener in listeners {
        listener.close(unlink);
    }
}

/// Creates the listeners for one spec.
///
/// A host name that resolves to several addresses (`localhost`: 127.0.0.1 and ::1) gets one
/// listener per address, in resolver order, as gunicorn does; with port 0 each gets its own
/// ephemeral port. `fd://N` adopts fd N after checking it is a listening socket.
pub fn bind(spec: &BindSpec, opts: &BindOptions) -> Result<Vec<Listener>, Error> {
    let mut listeners = match spec {
        BindSpec::Tcp { host, port } => {
            let mut listeners = Vec::new();
            for addr in resolve_host(host, *port)? {
                let fd = with_retries(&LocalAddr::Inet(addr).to_string(), opts, || {
                    bind_inet(addr, opts)
                })?;
                listeners.push(Listener::adopt(fd, Origin::Bound, None)?);
            }
            listeners
        }
        BindSpec::Unix(path) => vec![bind_unix(path, opts)?],
        BindSpec::Fd(fd) => vec![adopt_fd(*fd, Origin::Fd, None)?],
    };
    for listener in &mut listeners {
        listener.set_spec(spec.clone());
    }
    Ok(listeners)
}

pub(crate) fn resolve_host(host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|source| Error::Resolve {
            host: host.to_owned(),
            source,
        })?;
    let mut unique: Vec<SocketAddr> = Vec::new();
    for addr in addrs {
        if !unique.contains(&addr) {
            unique.push(addr);
        }
    }
    Ok(unique)
}

/// Takes ownership of an open descriptor after checking it is a listening socket, and sets
/// close-on-exec on it (F_SETFD).
pub(crate) fn adopt_fd(fd: RawFd, origin: Origin, name: Option<String>) -> Result<Listener, Error> {
    if fd < 3 {
        return Err(Error::NotAListener {
            fd,
            reason: "descriptors 0-2 are stdio".to_owned(),
        });
    }
    // SAFETY: the caller hands the ownership of fd to us (it was inherited or configured for
    // this process and nothing else wraps it). It stays in a ManuallyDrop until the checks
    // below found it open and a listening socket, so a number that is not open is never
    // closed; until then it is only passed to fstat, getsockopt and fcntl (EBADF if closed).
    let owned = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) });
    sys::check_listening(owned.as_fd()).map_err(|reason| Error::NotAListener { fd, reason })?;
    sys::set_cloexec(owned.as_fd(), true).map_err(|source| Error::Os {
        what: format!("setting close-on-exec on fd {fd}"),
        source,
    })?;
    let owned = ManuallyDrop::into_inner(owned);
    Listener::adopt(owned, origin, name)
}

fn with_retries(
    addr: &str,
    opts: &BindOptions,
    mut attempt: impl FnMut() -> io::Result<OwnedFd>,
) -> Result<OwnedFd, Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt() {
            Ok(fd) => return Ok(fd),
            Err(error) if sys::is_addr_in_use(&error) && attempts <= opts.retries => {
                std::thread::sleep(opts.retry_delay);
            }
            Err(source) => {
                return Err(Error::Bind {
                    addr: addr.to_owned(),
                    attempts,
                    source,
                })
            }
        }
    }
}

pub(crate) fn bind_inet(addr: SocketAddr, opts: &BindOptions) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => sys::Family::Inet,
        SocketAddr::V6(_) => sys::Family::Inet6,
    };
    let fd = sys::stream_socket(family)?;
    sys::enable(fd.as_fd(), sys::BoolOption::ReuseAddr)?;
    if opts.reuse_port {
        sys::enable(fd.as_fd(), sys::BoolOption::ReusePort)?;
    }
    if family == sys::Family::Inet6 {
        sys::enable(fd.as_fd(), sys::BoolOption::V6Only)?;
    }
    sys::bind(fd.as_fd(), &sys::inet_raw(addr))?;
    sys::listen(fd.as_fd(), opts.backlog)?;
    Ok(fd)
}

fn bind_unix(path: &Path, opts: &BindOptions) -> Result<Listener, Error> {
    let shown = format!("unix:{}", path.display());
    let raw = sys::unix_raw(path).ok_or_else(|| Error::Bind {
        addr: shown.clone(),
        attempts: 0,
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "path too long for a unix socket",
        ),
    })?;
    let fd = with_retries(&shown, opts, || {
        clear_stale(path, &raw)?;
        let fd = sys::stream_socket(sys::Family::Unix)?;
        // The mask is the process's: restored right after bind. The master is
        // single-threaded, so no other thread creates files meanwhile.
        let old = sys::umask(opts.umask);
        let bound = sys::bind(fd.as_fd(), &raw);
        sys::umask(old);
        bound?;
        Ok(fd)
    })
    .map_err(|error| match error {
        Error::Bind { source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
            Error::NotASocket {
                path: path.to_owned(),
            }
        }
        Error::Bind { source, .. } if source.kind() == io::ErrorKind::ResourceBusy => {
            Error::SocketInUse {
                path: path.to_owned(),
            }
        }
        other => other,
    })?;
    let os = |what: &str, source| Error::Os {
        what: format!("{what} {shown}"),
        source,
    };
    if let Some(mode) = opts.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| os("chmod", e))?;
    }
    sys::listen(fd.as_fd(), opts.backlog).map_err(|e| os("listen on", e))?;
    let mut listener = Listener::adopt(fd, Origin::Bound, None)?;
    if listener.unix_identity.is_none() {
        return Err(os(
            "stat",
            io::Error::new(io::ErrorKind::NotFound, "socket file vanished after bind"),
        ));
    }
    listener.local = LocalAddr::Unix(path.to_owned());
    Ok(listener)
}

/// Removes a stale socket file at `path`; refuses a non-socket (`AlreadyExists`) and a live
/// socket (`ResourceBusy`).
fn clear_stale(path: &Path, raw: &sys::RawAddr) -> io::Result<()> {
    let Some(identity) = sys::path_identity(path)? else {
        return Ok(());
    };
    if !identity.is_socket {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    let probe = sys::stream_socket(sys::Family::Unix)?;
    match sys::connect(probe.as_fd(), raw) {
        Ok(()) => Err(io::ErrorKind::ResourceBusy.into()),
        Err(error) if sys::is_conn_refused(&error) => match std::fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        },
        Err(error) => Err(error),
    }
}
