//! Helpers shared by the signal tests: a forked sender process, cleaned up by pid.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::{Duration, Instant};

/// A forked child, killed and reaped by pid when dropped.
pub struct Child {
    /// The child's pid.
    pub pid: libc::pid_t,
    reaped: bool,
}

impl Child {
    /// Forks; the child runs `body` (which must be async-signal-safe) and `_exit`s with its code.
    pub fn fork(body: impl FnOnce() -> i32) -> Child {
        // SAFETY: the child only runs `body`, which the callers keep async-signal-safe, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = body();
            // SAFETY: _exit is async-signal-safe and never returns.
            unsafe { libc::_exit(code) };
        }
        Child { pid, reaped: false }
    }

    /// Waits up to `limit` for the child to exit; returns its exit code (None: killed or late).
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: kill and waitpid on our own, not yet reaped, child pid.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Waits until `fd` is readable or `timeout` passes.
pub fn poll_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    r > 0
}
