//! The service manager's side of `NOTIFY_SOCKET`: a unix datagram socket that receives
//! sd_notify messages with the sender's credentials (`SO_PASSCRED`), as systemd does, so a
//! check can tell which process sent `READY=1` or `MAINPID=`.

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt::PassCred, ControlMessageOwned, MsgFlags, UnixCredentials,
};

/// One datagram: the sender's pid and its `KEY=VALUE` lines.
#[derive(Debug, Clone)]
pub(crate) struct Notification {
    /// The pid the kernel stamped on the datagram.
    pub(crate) pid: i32,
    /// The assignments, in order (a key may repeat).
    pub(crate) fields: Vec<(String, String)>,
}

impl Notification {
    /// The last value of `key`, if the datagram has it.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A bound notify socket; its file is removed on drop.
pub(crate) struct NotifyReceiver {
    socket: UnixDatagram,
    path: PathBuf,
    /// Everything received so far, in order.
    pub(crate) log: Vec<Notification>,
}

impl NotifyReceiver {
    /// Binds `path` and asks for the senders' credentials.
    pub(crate) fn bind(path: &Path) -> Result<Self, String> {
        let socket =
            UnixDatagram::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
        setsockopt(&socket, PassCred, &true).map_err(|e| format!("SO_PASSCRED: {e}"))?;
        Ok(NotifyReceiver {
            socket,
            path: path.to_path_buf(),
            log: Vec::new(),
        })
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `limit` for a datagram that satisfies `wanted`; returns it. Every datagram
    /// received on the way is kept in [`NotifyReceiver::log`].
    pub(crate) fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        wanted: impl Fn(&Notification) -> bool,
    ) -> Result<Notification, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no {what} within {limit:?}; received: {}",
                    self.summary()
                ));
            }
            if let Some(notification) = self.receive(left)? {
                self.log.push(notification.clone());
                if wanted(&notification) {
                    return Ok(notification);
                }
            }
        }
    }

    /// The messages received so far, one `pid: fields` entry each.
    pub(crate) fn summary(&self) -> String {
        let entries: Vec<String> = self
            .log
            .iter()
            .map(|n| {
                let fields: Vec<String> =
                    n.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}: {}]", n.pid, fields.join(" "))
            })
            .collect();
        if entries.is_empty() {
            "nothing".to_owned()
        } else {
            entries.join(" ")
        }
    }

    /// One datagram, or `None` when `timeout` passes first.
    fn receive(&self, timeout: Duration) -> Result<Option<Notification>, String> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        let mut buffer = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let mut space = nix::cmsg_space!(UnixCredentials);
        let message = match recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => message,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(format!("recvmsg: {e}")),
        };
        let mut pid = 0;
        for cmsg in message.cmsgs().map_err(|e| e.to_string())? {
            if let ControlMessageOwned::ScmCredentials(credentials) = cmsg {
                pid = credentials.pid();
            }
        }
        let length = message.bytes;
        let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
        Ok(Some(Notification {
            pid,
            fields: parse(&text),
        }))
    }
}

impl Drop for NotifyReceiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The `KEY=VALUE` lines of a datagram.
fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_arrive_with_the_senders_pid_and_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let mut receiver = NotifyReceiver::bind(&path).expect("bind");
        let sender = UnixDatagram::unbound().expect("socket");
        sender
            .send_to(b"RELOADING=1\nMONOTONIC_USEC=42\n", &path)
            .expect("send");
        let got = receiver
            .wait_for(Duration::from_secs(5), "RELOADING=1", |n| {
                n.get("RELOADING") == Some("1")
            })
            .expect("received");
        assert_eq!(got.pid as u32, std::process::id());
        assert_eq!(got.get("MONOTONIC_USEC"), Some("42"));
        let none = receiver.wait_for(Duration::from_millis(50), "READY=1", |n| {
            n.get("READY") == Some("1")
        });
        assert!(none.is_err(), "nothing else was sent: {none:?}");
    }
}
