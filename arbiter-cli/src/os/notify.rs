//! The sd_notify protocol, both ways: the socket the master's workers talk to
//! (`NOTIFY_SOCKET` in their environment), and the master's own messages to the service
//! manager above it.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

/// One message from a worker (or one of its descendants).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The sender's pid, from the kernel's credentials.
    pub pid: i32,
    /// `READY=1`.
    pub ready: bool,
    /// `WATCHDOG=1`.
    pub watchdog: bool,
    /// `STOPPING=1`.
    pub stopping: bool,
    /// `STATUS=...`.
    pub status: Option<String>,
}

/// Parses the newline-separated assignments of one datagram.
pub fn parse(pid: i32, payload: &[u8]) -> Message {
    let mut message = Message {
        pid,
        ..Message::default()
    };
    for line in String::from_utf8_lossy(payload).lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => message.ready = true,
            Some(("WATCHDOG", "1")) => message.watchdog = true,
            Some(("STOPPING", "1")) => message.stopping = true,
            Some(("STATUS", text)) => message.status = Some(text.to_owned()),
            _ => {}
        }
    }
    message
}

/// The master's receiving socket, bound at a path in its private runtime directory.
pub struct NotifySocket {
    fd: OwnedFd,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a non-blocking, close-on-exec datagram socket at `path` that receives senders'
    /// credentials.
    pub fn bind(path: &Path) -> io::Result<NotifySocket> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&fd, sockopt::PassCred, &true)?;
        let addr = UnixAddr::new(path)?;
        bind(fd.as_raw_fd(), &addr)?;
        Ok(NotifySocket {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Its path, for the workers' `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fd to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every pending datagram. File descriptors passed along (systemd-notify's
    /// `BARRIER=1`) are closed at once so the sender never waits on them.
    pub fn drain(&self, out: &mut Vec<Message>) {
        let mut buf = [0u8; 4096];
        loop {
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials, [i32; 16]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let received = recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let Ok(message) = received else {
                return;
            };
            let len = message.bytes;
            let mut pid = 0;
            if let Ok(cmsgs) = message.cmsgs() {
                for cmsg in cmsgs {
                    match cmsg {
                        ControlMessageOwned::ScmCredentials(creds) => pid = creds.pid(),
                        ControlMessageOwned::ScmRights(fds) => {
                            for fd in fds {
                                let _ = nix::unistd::close(fd);
                            }
                        }
                        _ => {}
                    }
                }
            }
            if pid > 0 {
                out.push(parse(pid, &buf[..len]));
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

    #[test]
    fn parses_every_known_assignment() {
        let message = parse(
            7,
            b"READY=1\nSTATUS=serving 3\nWATCHDOG=1\nSTOPPING=1\nBOGUS=2",
        );
        assert_eq!(
            message,
            Message {
                pid: 7,
                ready: true,
                watchdog: true,
                stopping: true,
                status: Some("serving 3".into())
            }
        );
        assert!(!parse(7, b"READY=0").ready);
    }

    #[test]
    fn receives_with_the_senders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(&path).unwrap();
        let supervisor = Supervisor::new(path.to_str().unwrap()).unwrap();
        supervisor.send("READY=1\nSTATUS=hi").unwrap();
        let mut out = Vec::new();
        socket.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].pid, std::process::id() as i32);
        assert!(out[0].ready);
        assert_eq!(out[0].status.as_deref(), Some("hi"));
    }
}
