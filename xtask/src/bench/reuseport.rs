//! The overhead baseline: N copies of `arbiter worker`, each given its own `SO_REUSEPORT`
//! listener on the same loopback port at fd 3 with `LISTEN_FDS=1`, and no master.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::procfs;

/// The baseline workers; killed by pid and reaped when dropped.
pub struct Workers {
    pids: Vec<i32>,
}

/// A listening TCP socket on 127.0.0.1:`port` with `SO_REUSEPORT`, close-on-exec.
fn reuseport_listener(port: u16) -> Result<OwnedFd, String> {
    let os_error = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: socket(2) takes plain integers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_error("socket"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: `one` lives across the call and its size is passed with it.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(os_error("setsockopt"));
        }
    }
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `address` is a valid sockaddr_in and its exact size is passed with it.
    let r = unsafe {
        libc::bind(
            fd,
            (&address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(os_error("bind"));
    }
    // SAFETY: listen(2) on a descriptor we own, with a plain integer backlog.
    if unsafe { libc::listen(fd, 2048) } != 0 {
        return Err(os_error("listen"));
    }
    Ok(socket)
}

impl Workers {
    /// Starts `n` workers of `arbiter` on 127.0.0.1:`port`, one socket each.
    pub fn start(arbiter: &Path, port: u16, n: usize) -> Result<Workers, String> {
        let mut workers = Workers { pids: Vec::new() };
        for _ in 0..n {
            let socket = reuseport_listener(port)?;
            let fd = socket.as_raw_fd();
            let mut command = Command::new(arbiter);
            command
                .arg("worker")
                .env("LISTEN_FDS", "1")
                .env_remove("LISTEN_PID")
                .env_remove("LISTEN_FDNAMES")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null());
            // SAFETY: the closure runs between fork and exec and calls only dup2 and fcntl,
            // which are async-signal-safe; it allocates nothing and takes no lock.
            unsafe {
                command.pre_exec(move || {
                    if fd == 3 {
                        // dup2(3, 3) would leave close-on-exec set.
                        if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, 3) != 3 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = command
                .spawn()
                .map_err(|e| format!("start baseline worker: {e}"))?;
            workers.pids.push(child.id() as i32);
            // Our copy of the socket closes here; the worker holds its own.
            drop(socket);
        }
        Ok(workers)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for &pid in &self.pids {
            procfs::kill_tree(pid);
        }
    }
}
