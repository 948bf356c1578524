//! Handing listeners to a worker as fds 3.. with the systemd variables, between fork and exec.
//!
//! Everything that allocates happens in [`HandoffPlan::new`], before the fork. In the child,
//! [`HandoffPlan::apply_in_child`] only calls `fcntl`, `dup2`, `close`, `getpid` and writes
//! digits into buffers it already owns: async-signal-safe, allocation-free, no panic paths.

use std::ffi::c_char;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::{Error, Listener, LISTEN_FDS_START};

/// Room for the digits of any pid (and a NUL).
const PID_DIGITS: usize = 20;

/// A `NAME=PID` environment entry whose pid is filled in the child, after fork.
#[derive(Debug, Clone)]
pub struct PidEnvSlot {
    /// `NAME=` followed by room for the digits and a NUL.
    buffer: Vec<u8>,
    /// Where the digits start.
    digits_at: usize,
}

impl PidEnvSlot {
    /// A slot for the variable `name` (e.g. `LISTEN_PID`, `WATCHDOG_PID`), pid not yet filled.
    pub fn new(name: &str) -> PidEnvSlot {
        let mut buffer = Vec::with_capacity(name.len() + 1 + PID_DIGITS + 1);
        buffer.extend_from_slice(name.as_bytes());
        buffer.push(b'=');
        let digits_at = buffer.len();
        buffer.resize(digits_at + PID_DIGITS + 1, 0);
        PidEnvSlot { buffer, digits_at }
    }

    /// Writes `pid` as decimal digits followed by NUL. Async-signal-safe, allocation-free.
    pub fn fill(&mut self, pid: u32) {
        let mut digits = [0u8; 10];
        let mut n = 0;
        let mut rest = pid;
        loop {
            digits[n] = b'0' + (rest % 10) as u8;
            n += 1;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let slot = &mut self.buffer[self.digits_at..];
        for (out, &digit) in slot.iter_mut().zip(digits[..n].iter().rev()) {
            *out = digit;
        }
        slot[n] = 0;
    }

    /// The NUL-terminated `NAME=PID` entry, for an `envp` array; valid while `self` lives.
    pub fn as_ptr(&self) -> *const c_char {
        self.buffer.as_ptr().cast()
    }

    /// The entry as it stands (without the NUL), for tests and logs.
    pub fn entry(&self) -> &[u8] {
        let end = self.buffer[self.digits_at..]
            .iter()
            .position(|&b| b == 0)
            .map_or(self.buffer.len(), |i| self.digits_at + i);
        &self.buffer[..end]
    }
}

/// Moves listeners (then extra fds) to 3.. in a forked child and fills `LISTEN_PID`.
///
/// Use: build the plan and the envp (your own `CString`s plus [`HandoffPlan::env_pointers`])
/// before `fork`; in the child call signal reset, then [`HandoffPlan::apply_in_child`], then
/// `execve`. The source fds must stay open until the fork.
#[derive(Debug)]
pub struct HandoffPlan {
    /// Source fds: listeners first, then extras.
    sources: Vec<RawFd>,
    /// Scratch space for the out-of-the-way copies (filled in the child).
    moved: Vec<RawFd>,
    listener_count: usize,
    listen_fds: Vec<u8>,
    listen_fdnames: Vec<u8>,
    listen_pid: PidEnvSlot,
}

impl HandoffPlan {
    /// Plans fds 3..3+n for `listeners` (in order) and 3+n.. for `extra` fds.
    pub fn new(listeners: &[&Listener], extra: &[RawFd]) -> Result<HandoffPlan, Error> {
        let sources: Vec<RawFd> = listeners
            .iter()
            .map(|l| l.fd().as_raw_fd())
            .chain(extra.iter().copied())
            .collect();
        if sources.iter().any(|&fd| fd < 0) {
            return Err(Error::Handoff("negative fd"));
        }
        if sources.len() > 1000 {
            return Err(Error::Handoff("more than 1000 fds"));
        }
        let names: Vec<&str> = listeners.iter().map(|l| l.name()).collect();
        let mut listen_fds = format!("LISTEN_FDS={}", listeners.len()).into_bytes();
        listen_fds.push(0);
        let mut listen_fdnames = format!("LISTEN_FDNAMES={}", names.join(":")).into_bytes();
        listen_fdnames.push(0);
        Ok(HandoffPlan {
            moved: vec![-1; sources.len()],
            sources,
            listener_count: listeners.len(),
            listen_fds,
            listen_fdnames,
            listen_pid: PidEnvSlot::new("LISTEN_PID"),
        })
    }

    /// How many listeners the child gets (fds 3..3+n).
    pub fn listener_count(&self) -> usize {
        self.listener_count
    }

    /// The fd numbers the extra fds will have in the child, in the order given.
    pub fn extra_fd_targets(&self) -> std::ops::Range<RawFd> {
        let first = LISTEN_FDS_START + self.listener_count as RawFd;
        first..LISTEN_FDS_START + self.sources.len() as RawFd
    }

    /// Pointers to the NUL-terminated `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` entries,
    /// for the child's envp; valid while the plan lives (`LISTEN_PID` is complete only after
    /// `apply_in_child`).
    pub fn env_pointers(&self) -> impl Iterator<Item = *const c_char> + '_ {
        [
            self.listen_fds.as_ptr().cast(),
            self.listen_fdnames.as_ptr().cast(),
            self.listen_pid.as_ptr(),
        ]
        .into_iter()
    }

    /// In the child: moves every source out of the way, then onto 3.. in order, clears
    /// close-on-exec on each target (F_SETFD), closes the copies, marks every other fd above
    /// the targets close-on-exec (`close_range`, Linux 5.11+; skipped where unsupported), and
    /// writes this process's pid into `LISTEN_PID`.
    ///
    /// Async-signal-safe, allocation-free, no panics.
    ///
    /// # Safety
    ///
    /// Only in a child process between `fork` and `exec`: it overwrites fds 3.. (closing
    /// whatever was there, which may be owned by Rust objects of the parent's image) and must
    /// be followed by `exec` or `_exit`.
    pub unsafe fn apply_in_child(&mut self) -> io::Result<()> {
        let total = self.sources.len() as RawFd;
        let first_free = LISTEN_FDS_START + total;
        for (moved, &source) in self.moved.iter_mut().zip(&self.sources) {
            // SAFETY: F_DUPFD_CLOEXEC copies an fd to the lowest free number >= first_free, so
            // no copy sits on a target number and no source is clobbered yet.
            *moved = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, first_free) };
            if *moved < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for (target, &moved) in (LISTEN_FDS_START..).zip(&self.moved) {
            // SAFETY: dup2 onto a target number; moved != target (moved >= first_free).
            if unsafe { libc::dup2(moved, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: F_SETFD on the fd just created; clears close-on-exec explicitly.
            if unsafe { libc::fcntl(target, libc::F_SETFD, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for &moved in &self.moved {
            // SAFETY: closing the temporary copies made above.
            unsafe { libc::close(moved) };
        }
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets close-on-exec on fds above the
        // targets; an old kernel answers ENOSYS/EINVAL and nothing changes.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first_free as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        // SAFETY: getpid is async-signal-safe and cannot fail.
        let pid = unsafe { libc::getpid() };
        self.listen_pid.fill(pid as u32);
        Ok(())
    }
}

/// For a re-exec child between fork and exec: clears close-on-exec on `fds` (F_SETFD), keeping
/// their numbers, so the new master finds them at the numbers in `ARBITER_LISTEN_FDS`.
///
/// Async-signal-safe, allocation-free.
///
/// # Safety
///
/// Only in a child process between `fork` and `exec`: in the parent it would leak the fds
/// into every later exec.
pub unsafe fn clear_cloexec_in_child(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: F_SETFD with flags 0 on a descriptor number; errors are returned.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_slot_writes_digits_and_terminates() {
        let mut slot = PidEnvSlot::new("WATCHDOG_PID");
        assert_eq!(slot.entry(), b"WATCHDOG_PID=");
        slot.fill(4_294_967_295);
        assert_eq!(slot.entry(), b"WATCHDOG_PID=4294967295");
        slot.fill(7);
        assert_eq!(slot.entry(), b"WATCHDOG_PID=7");
        // SAFETY: as_ptr points to a NUL-terminated buffer owned by `slot`.
        let c = unsafe { std::ffi::CStr::from_ptr(slot.as_ptr()) };
        assert_eq!(c.to_bytes(), b"WATCHDOG_PID=7");
        slot.fill(0);
        assert_eq!(slot.entry(), b"WATCHDOG_PID=0");
    }
}
