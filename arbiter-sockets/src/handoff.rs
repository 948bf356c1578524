//! Handing listeners to a worker as fds 3.. with the systemd variables, between fork and exec.
//!
//! Everything that allocates happens in [`HandoffPlan::new`], before the fork. In the child,
//! [`HandoffPlan::apply_in_child`] only calls `fcntl`, `dup2`, `close`, `close_range`, `getpid`
//! (raw syscalls, through rustix) and writes digits into buffers it already owns:
//! async-signal-safe, allocation-free, no panic paths.

use std::ffi::c_char;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::io::{dup2, fcntl_dupfd_cloexec, fcntl_setfd, FdFlags};

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

/// What happens, in the child, to the fds above the plan's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Others {
    /// Marked close-on-exec: the child execs next, and the kernel closes them then.
    CloseOnExec,
    /// Closed now: the child runs on without exec (a library-mode worker), so only fds 0-2
    /// and the plan's remain. The parent image's objects that held them are never dropped
    /// in the child (it ends with `_exit`).
    Close,
}

/// Moves listeners (then extra fds) to 3.. in a forked child and fills `LISTEN_PID`.
///
/// Use: build the plan and the envp (your own `CString`s plus [`HandoffPlan::env_pointers`])
/// before `fork`; in the child call signal reset, then [`HandoffPlan::apply_in_child`], then
/// `execve` (or, without exec, the worker's code). The plan borrows the source fds, so they
/// stay open until the fork.
#[derive(Debug)]
pub struct HandoffPlan<'a> {
    /// Source fds: listeners first, then extras; borrowed, so they stay open until the fork.
    sources: Vec<BorrowedFd<'a>>,
    /// Scratch space for the out-of-the-way copies (filled in the child, never allocating:
    /// the slots exist before the fork).
    moved: Vec<Option<OwnedFd>>,
    listener_count: usize,
    listen_fds: Vec<u8>,
    listen_fdnames: Vec<u8>,
    listen_pid: PidEnvSlot,
}

impl<'a> HandoffPlan<'a> {
    /// Plans fds 3..3+n for `listeners` (in order) and 3+n.. for `extra` fds.
    pub fn new(
        listeners: &[&'a Listener],
        extra: &[BorrowedFd<'a>],
    ) -> Result<HandoffPlan<'a>, Error> {
        let sources: Vec<BorrowedFd<'a>> = listeners
            .iter()
            .map(|l| l.fd())
            .chain(extra.iter().copied())
            .collect();
        if sources.len() > 1000 {
            return Err(Error::Handoff("more than 1000 fds"));
        }
        let names: Vec<&str> = listeners.iter().map(|l| l.name()).collect();
        let mut listen_fds = format!("LISTEN_FDS={}", listeners.len()).into_bytes();
        listen_fds.push(0);
        let mut listen_fdnames = format!("LISTEN_FDNAMES={}", names.join(":")).into_bytes();
        listen_fdnames.push(0);
        Ok(HandoffPlan {
            moved: sources.iter().map(|_| None).collect(),
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

    /// The highest source fd number (2 when there is none): a child that keeps every fd up
    /// to it has every source.
    pub fn highest_source(&self) -> RawFd {
        self.sources
            .iter()
            .map(|fd| fd.as_raw_fd())
            .max()
            .unwrap_or(2)
            .max(2)
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
    /// close-on-exec on each target (F_SETFD), closes the copies, treats every other fd above
    /// the targets as `others` says (`close_range`, Linux 5.11+ for close-on-exec, 5.9 for
    /// closing; skipped where unsupported), and writes this process's pid into `LISTEN_PID`.
    ///
    /// Async-signal-safe (raw syscalls through rustix), allocation-free, no panics.
    ///
    /// # Safety
    ///
    /// Only in a child process between `fork` and `exec` (or, with [`Others::Close`], a child
    /// that never returns to the parent's code): it overwrites fds 3.. (closing whatever was
    /// there, which may be owned by Rust objects of the parent's image) and must end with
    /// `exec` or `_exit`.
    pub unsafe fn apply_in_child(&mut self, others: Others) -> io::Result<()> {
        let total = self.sources.len() as RawFd;
        let first_free = LISTEN_FDS_START + total;
        for (moved, &source) in self.moved.iter_mut().zip(&self.sources) {
            // F_DUPFD_CLOEXEC copies each source to the lowest free number >= first_free, so no
            // copy sits on a target number and no source is clobbered yet.
            *moved = Some(fcntl_dupfd_cloexec(source, first_free)?);
        }
        for (target, moved) in (LISTEN_FDS_START..).zip(&self.moved) {
            let Some(moved) = moved else {
                continue;
            };
            // SAFETY: the caller allows this child to overwrite fds 3..: dup2 replaces whatever
            // the target number held, and ManuallyDrop keeps the target from being closed here.
            let mut target = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(target) });
            dup2(moved, &mut target)?;
            // dup2 onto a new number leaves it without close-on-exec; said explicitly anyway.
            fcntl_setfd(&*target, FdFlags::empty())?;
        }
        for moved in &mut self.moved {
            // Dropping the temporary copy closes it.
            *moved = None;
        }
        let flags = match others {
            Others::CloseOnExec => libc::CLOSE_RANGE_CLOEXEC,
            Others::Close => 0,
        };
        // SAFETY: close_range on the numbers above the targets, which the caller gave up (see
        // `# Safety`); an old kernel answers ENOSYS/EINVAL and nothing changes.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first_free as libc::c_uint,
                libc::c_uint::MAX,
                flags,
            )
        };
        self.listen_pid
            .fill(rustix::process::getpid().as_raw_nonzero().get() as u32);
        Ok(())
    }
}

/// For a re-exec child between fork and exec: clears close-on-exec on `fds` (F_SETFD), keeping
/// their numbers, so the new master finds them at the numbers in `ARBITER_LISTEN_FDS`.
///
/// Async-signal-safe, allocation-free. Only for a child process between `fork` and `exec`:
/// in the parent it would leak the fds into every later exec (a leak, not a memory or fd
/// ownership hazard, so the function is safe, as `fcntl(F_SETFD)` on a borrowed fd is).
pub fn clear_cloexec_in_child(fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    for &fd in fds {
        fcntl_setfd(fd, FdFlags::empty())?;
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
