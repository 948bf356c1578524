//! The worker side of the worker protocol: reading its environment, `sd_notify` messages and
//! the heartbeat.
//!
//! [`WorkerEnv::parse`] is pure (it reads variables through a lookup function) and is tested
//! directly; [`Notifier`] and [`Heartbeat`] do the I/O.

use std::ffi::{OsStr, OsString};
use std::os::fd::{OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use nix::sys::stat::{fchmod, Mode};

use super::WorkerError;

/// The default name of the variable that carries the worker's GPUs.
pub const DEFAULT_GPU_ENV: &str = "CUDA_VISIBLE_DEVICES";

/// The interval between two heartbeats when no `WATCHDOG_USEC` says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// What the worker protocol tells this worker through its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEnv {
    /// How many listeners start at fd 3 (`LISTEN_FDS`, checked against `LISTEN_PID`).
    pub listen_fds: usize,
    /// Where to send `sd_notify` messages (`NOTIFY_SOCKET`), a path or `@abstract`.
    pub notify_socket: Option<OsString>,
    /// Whether to send `WATCHDOG=1` (`WATCHDOG_USEC` set, `WATCHDOG_PID` absent or ours).
    pub watchdog: bool,
    /// The interval between heartbeats: a quarter of `WATCHDOG_USEC` (so the master, whose
    /// deadlines are exact, is woken rarely), else one second.
    pub heartbeat_interval: Duration,
    /// The heartbeat file to fchmod (`ARBITER_HEARTBEAT_FD`).
    pub heartbeat_fd: Option<RawFd>,
    /// `ARBITER_WORKER_ID`.
    pub worker_id: Option<u64>,
    /// `ARBITER_WORKER_SLOT`.
    pub slot: Option<u64>,
    /// The value of the GPU variable (named by `ARBITER_GPU_ENV`, default [`DEFAULT_GPU_ENV`]).
    pub gpu: Option<String>,
}

impl WorkerEnv {
    /// Reads the protocol variables through `lookup`, for the process `pid`.
    ///
    /// Like systemd's `sd_listen_fds`, listeners are ignored when `LISTEN_PID` names another
    /// process; unlike it, a missing `LISTEN_PID` is accepted (not every spawner can set it).
    pub fn parse(
        lookup: impl Fn(&str) -> Option<OsString>,
        pid: u32,
    ) -> Result<WorkerEnv, WorkerError> {
        let number = |name: &'static str| -> Result<Option<u64>, WorkerError> {
            lookup(name)
                .map(|value| {
                    value
                        .to_str()
                        .and_then(|text| text.trim().parse::<u64>().ok())
                        .ok_or(WorkerError::BadVariable { name, value })
                })
                .transpose()
        };
        let listen_fds = number("LISTEN_FDS")?.ok_or(WorkerError::NoListeners)?;
        if let Some(listen_pid) = number("LISTEN_PID")? {
            if listen_pid != u64::from(pid) {
                return Err(WorkerError::ForeignListeners { listen_pid, pid });
            }
        }
        if listen_fds == 0 {
            return Err(WorkerError::NoListeners);
        }
        let listen_fds = usize::try_from(listen_fds)
            .ok()
            .filter(|&n| n < 65536)
            .ok_or_else(|| WorkerError::BadVariable {
                name: "LISTEN_FDS",
                value: listen_fds.to_string().into(),
            })?;
        let watchdog_usec = number("WATCHDOG_USEC")?.filter(|&usec| usec > 0);
        let watchdog_ours = number("WATCHDOG_PID")?.is_none_or(|owner| owner == u64::from(pid));
        let heartbeat_interval = watchdog_usec.map_or(DEFAULT_HEARTBEAT_INTERVAL, |usec| {
            Duration::from_micros(usec / 4).max(Duration::from_millis(1))
        });
        let heartbeat_fd = number("ARBITER_HEARTBEAT_FD")?
            .map(|fd| {
                RawFd::try_from(fd).map_err(|_| WorkerError::BadVariable {
                    name: "ARBITER_HEARTBEAT_FD",
                    value: fd.to_string().into(),
                })
            })
            .transpose()?;
        let gpu_env = lookup("ARBITER_GPU_ENV")
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| DEFAULT_GPU_ENV.into());
        let gpu = gpu_env
            .to_str()
            .and_then(&lookup)
            .map(|value| value.to_string_lossy().into_owned());
        Ok(WorkerEnv {
            listen_fds,
            notify_socket: lookup("NOTIFY_SOCKET").filter(|path| !path.is_empty()),
            watchdog: watchdog_usec.is_some() && watchdog_ours,
            heartbeat_interval,
            heartbeat_fd,
            worker_id: number("ARBITER_WORKER_ID")?,
            slot: number("ARBITER_WORKER_SLOT")?,
            gpu,
        })
    }
}

/// A sender of `sd_notify` datagrams to `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET` = `target` (a path, or `@name` for an abstract socket).
    pub fn new(target: &OsStr) -> Result<Notifier, WorkerError> {
        let io = |source| WorkerError::Io {
            what: "notify socket",
            source,
        };
        let address = match target.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(target),
        }
        .map_err(io)?;
        let socket = UnixDatagram::unbound().map_err(io)?;
        // A full receive queue must not stall serving for long.
        socket
            .set_write_timeout(Some(Duration::from_secs(1)))
            .map_err(io)?;
        Ok(Notifier { socket, address })
    }

    /// Sends one message such as `READY=1`.
    pub fn send(&self, message: &str) -> std::io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.address)
            .map(drop)
    }
}

/// The heartbeat: bumps the heartbeat file's ctime and sends `WATCHDOG=1`, as configured.
#[derive(Debug)]
pub struct Heartbeat {
    file: Option<OwnedFd>,
    watchdog: bool,
    spinner: bool,
}

impl Heartbeat {
    /// A heartbeat on `file` (if any), sending `WATCHDOG=1` when `watchdog`.
    pub fn new(file: Option<OwnedFd>, watchdog: bool) -> Heartbeat {
        Heartbeat {
            file,
            watchdog,
            spinner: false,
        }
    }

    /// Whether beating does anything at all.
    pub fn is_active(&self) -> bool {
        self.file.is_some() || self.watchdog
    }

    /// One beat: fchmod the file to mode 0 or 1 in turn (gunicorn's `WorkerTmp.notify`), which
    /// changes its ctime; without a heartbeat file, send `WATCHDOG=1` instead. The file is the
    /// cheaper channel: the master reads it only when a deadline is due, while every
    /// `WATCHDOG=1` wakes it, so with hundreds of workers the file keeps an idle master asleep.
    pub fn beat(&mut self, notifier: Option<&Notifier>) -> Result<(), WorkerError> {
        if let Some(file) = &self.file {
            self.spinner = !self.spinner;
            let mode = if self.spinner {
                Mode::S_IXOTH
            } else {
                Mode::empty()
            };
            fchmod(file, mode).map_err(|errno| WorkerError::Io {
                what: "heartbeat fchmod",
                source: errno.into(),
            })?;
        }
        if self.watchdog && self.file.is_none() {
            if let Some(notifier) = notifier {
                // The master may be busy or gone; a lost WATCHDOG=1 is made up by the next one.
                let _ = notifier.send("WATCHDOG=1");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)], pid: u32) -> Result<WorkerEnv, WorkerError> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        WorkerEnv::parse(|name| map.get(name).cloned(), pid)
    }

    #[test]
    fn missing_or_zero_listen_fds_is_no_listeners() {
        assert!(matches!(env(&[], 7), Err(WorkerError::NoListeners)));
        assert!(matches!(
            env(&[("LISTEN_FDS", "0")], 7),
            Err(WorkerError::NoListeners)
        ));
        assert_eq!(
            WorkerError::NoListeners.to_string(),
            "no listeners: set LISTEN_FDS"
        );
    }

    #[test]
    fn listen_pid_must_be_ours_when_set() {
        assert_eq!(env(&[("LISTEN_FDS", "2")], 7).unwrap().listen_fds, 2);
        assert_eq!(
            env(&[("LISTEN_FDS", "1"), ("LISTEN_PID", "7")], 7)
                .unwrap()
                .listen_fds,
            1
        );
        assert!(matches!(
            env(&[("LISTEN_FDS", "1"), ("LISTEN_PID", "8")], 7),
            Err(WorkerError::ForeignListeners {
                listen_pid: 8,
                pid: 7
            })
        ));
        assert!(matches!(
            env(&[("LISTEN_FDS", "two")], 7),
            Err(WorkerError::BadVariable {
                name: "LISTEN_FDS",
                ..
            })
        ));
    }

    #[test]
    fn heartbeat_interval_is_a_quarter_of_the_watchdog_else_a_second() {
        let base = [("LISTEN_FDS", "1")];
        let plain = env(&base, 7).unwrap();
        assert_eq!(plain.heartbeat_interval, Duration::from_secs(1));
        assert!(!plain.watchdog);
        let fast = env(&[base[0], ("WATCHDOG_USEC", "400000")], 7).unwrap();
        assert_eq!(fast.heartbeat_interval, Duration::from_millis(100));
        assert!(fast.watchdog);
        let slow = env(&[base[0], ("WATCHDOG_USEC", "30000000")], 7).unwrap();
        assert_eq!(slow.heartbeat_interval, Duration::from_millis(7500));
        let foreign = env(
            &[base[0], ("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "1")],
            7,
        )
        .unwrap();
        assert!(!foreign.watchdog);
    }

    #[test]
    fn identity_and_gpu_variables() {
        let parsed = env(
            &[
                ("LISTEN_FDS", "1"),
                ("ARBITER_WORKER_ID", "4"),
                ("ARBITER_WORKER_SLOT", "0"),
                ("CUDA_VISIBLE_DEVICES", "0,1"),
                ("ARBITER_HEARTBEAT_FD", "5"),
                ("NOTIFY_SOCKET", "@arbiter"),
            ],
            7,
        )
        .unwrap();
        assert_eq!(parsed.worker_id, Some(4));
        assert_eq!(parsed.slot, Some(0));
        assert_eq!(parsed.gpu.as_deref(), Some("0,1"));
        assert_eq!(parsed.heartbeat_fd, Some(5));
        assert_eq!(parsed.notify_socket, Some(OsString::from("@arbiter")));
        let other = env(
            &[
                ("LISTEN_FDS", "1"),
                ("ARBITER_GPU_ENV", "HIP_VISIBLE_DEVICES"),
                ("CUDA_VISIBLE_DEVICES", "0"),
                ("HIP_VISIBLE_DEVICES", "3"),
            ],
            7,
        )
        .unwrap();
        assert_eq!(other.gpu.as_deref(), Some("3"));
        assert_eq!(env(&[("LISTEN_FDS", "1")], 7).unwrap().gpu, None);
    }

    #[test]
    fn notifier_reaches_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.as_os_str())
            .unwrap()
            .send("READY=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("arbiter-worker-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        Notifier::new(OsStr::new(&format!("@{name}")))
            .unwrap()
            .send("STOPPING=1")
            .unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
