//! The arbiter's signal self-pipe.
//!
//! Model: [`SignalPipe::install`] installs one handler for every signal in [`HANDLED`]. The
//! handler saves errno, writes the signal number as one byte to a non-blocking, close-on-exec
//! pipe, restores errno, and does nothing else (no allocation, no lock, no panic). The event
//! loop polls [`SignalPipe::fd`] and calls [`SignalPipe::drain`], which yields the signals in
//! the order the handlers ran.
//!
//! Invariants and limits:
//! - at most one `SignalPipe` exists at a time (a second `install` is an error); dropping it
//!   restores the dispositions that were in place before `install`;
//! - every handler run puts exactly one byte in the pipe, unless the pipe is full: the pipe is
//!   enlarged (`F_SETPIPE_SZ`, up to 1 MiB), and if a write still fails with `EAGAIN` that
//!   signal is lost, since a handler cannot wait. A full pipe means the loop has stopped draining;
//! - the kernel itself merges a standard signal that arrives while one of the same kind is still
//!   pending: that is the only other way two sends become one arrival;
//! - [`SignalPipe::child_reset`] / [`reset_in_child`] are async-signal-safe and allocation-free,
//!   for the child between `fork` and `exec`; [`SignalPipe::forked_child_reset`] /
//!   [`reset_in_forked_child`] for a forked child that runs on without `exec`;
//! - [`SignalPipe::vfork_child_reset`] resets only the signals that may not be at their default:
//!   the handled ones, `SIGPIPE`, the C library's reserved pair, and those found not at their
//!   default at install. A disposition changed after install by other code than this crate
//!   would not be reset in a vforked child (the master changes none).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
pub use nix::sys::signal::Signal;
use nix::sys::signal::{
    sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow,
};

/// The signals the arbiter handles, in the order their handlers are installed.
pub const HANDLED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCHLD,
];

/// Size asked of the kernel for the pipe (a byte per signal: a million queued signals).
const PIPE_SIZE: i32 = 1 << 20;
/// Fallback pipe size when the larger one is refused (above `/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE_FALLBACK: i32 = 1 << 16;
/// One past the highest signal number on Linux (`_NSIG`).
const NSIG: libc::c_int = 65;

/// Set while a `SignalPipe` exists.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The write end the handler writes to, or -1 when none.
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

/// The signals [`SignalPipe::vfork_child_reset`] sets to `SIG_DFL` (bit `n - 1` for signal
/// `n`), found at install: the handled ones, `SIGPIPE`, the C library's reserved real-time
/// pair (32, 33), and every other signal not at its default then (an ignore inherited from our
/// own parent). The others are at their default already: nothing in the master changes a
/// disposition but this crate. Resetting only these takes about a dozen `sigaction` calls
/// instead of 62, in the window where the master waits for its vforked child to exec.
static RESET_ON_SPAWN: AtomicU64 = AtomicU64::new(u64::MAX);

/// The bit of `signal` (1..=64) in a signal mask word.
fn bit(signal: libc::c_int) -> u64 {
    1u64 << (signal - 1)
}

/// Every signal whose disposition is not `SIG_DFL` now (ignored or caught, as
/// `/proc/self/status` says; all of them if it cannot be read), plus those the child must
/// reset whatever they are now: [`HANDLED`], `SIGPIPE` and the C library's reserved pair.
fn not_default_now() -> u64 {
    let mut mask = bit(libc::SIGPIPE);
    for signal in 32..libc::SIGRTMIN() {
        mask |= bit(signal);
    }
    for &signal in HANDLED {
        mask |= bit(signal as libc::c_int);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    };
    mask |= match (field("SigIgn:"), field("SigCgt:")) {
        (Some(ignored), Some(caught)) => ignored | caught,
        _ => u64::MAX,
    };
    mask & !(bit(libc::SIGKILL) | bit(libc::SIGSTOP))
}

/// Errors of the signal pipe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `SignalPipe` is already installed in this process.
    #[error("a signal pipe is already installed in this process")]
    AlreadyInstalled,
    /// Creating the pipe failed.
    #[error("cannot create the signal pipe: {0}")]
    Pipe(#[source] std::io::Error),
    /// Installing the handler of a signal failed.
    #[error("cannot install the handler for {signal}: {source}")]
    Install {
        /// The signal whose handler could not be installed.
        signal: Signal,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the pipe failed.
    #[error("cannot read the signal pipe: {0}")]
    Read(#[source] std::io::Error),
}

/// The installed handlers and their pipe; restores the previous dispositions when dropped.
#[derive(Debug)]
pub struct SignalPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The dispositions in place before `install`, one per entry of `HANDLED`.
    previous: Vec<SigAction>,
}

extern "C" fn on_signal(signal: libc::c_int) {
    let saved = Errno::last_raw();
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // Signal numbers are below 65, so they fit in one byte.
        let byte = [signal as u8];
        // SAFETY: WRITE_FD holds the pipe's write end, which stays open while any handler is
        // installed (Drop restores the dispositions before it clears WRITE_FD and closes the
        // fd), or -1, checked above.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        // write(2) is async-signal-safe. If the pipe is full (EAGAIN) nothing can be done in
        // a handler: the loss is documented.
        let _ = nix::unistd::write(fd, &byte);
    }
    Errno::set_raw(saved);
}

impl SignalPipe {
    /// Creates the pipe and installs the handler for every signal in [`HANDLED`].
    pub fn install() -> Result<SignalPipe, Error> {
        if INSTALLED
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::AlreadyInstalled);
        }
        let result = Self::install_unguarded();
        if result.is_err() {
            INSTALLED.store(false, Ordering::Release);
        }
        result
    }

    fn install_unguarded() -> Result<SignalPipe, Error> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .map_err(|e| Error::Pipe(e.into()))?;
        // Failure only leaves the default size.
        if fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)).is_err() {
            let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE_FALLBACK));
        }
        WRITE_FD.store(write.as_raw_fd(), Ordering::Release);
        RESET_ON_SPAWN.store(not_default_now(), Ordering::Relaxed);
        let mut pipe = SignalPipe {
            read,
            write,
            previous: Vec::with_capacity(HANDLED.len()),
        };
        // Every signal is blocked while the handler runs, so the handlers of one thread never
        // nest.
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::all(),
        );
        for &signal in HANDLED {
            // SAFETY: the handler is async-signal-safe: it reads and restores errno and
            // writes one byte to a non-blocking pipe, nothing else (no allocation, no lock).
            match unsafe { sigaction(signal, &action) } {
                Ok(old) => pipe.previous.push(old),
                Err(errno) => {
                    // Dropping `pipe` restores the handlers installed so far and clears
                    // INSTALLED.
                    drop(pipe);
                    return Err(Error::Install {
                        signal,
                        source: errno.into(),
                    });
                }
            }
        }
        Ok(pipe)
    }

    /// The read end of the pipe, to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Appends every signal now in the pipe to `out`, in arrival order; never blocks.
    pub fn drain(&self, out: &mut Vec<Signal>) -> Result<(), Error> {
        let mut buffer = [0u8; 512];
        loop {
            let n = match nix::unistd::read(&self.read, &mut buffer) {
                Ok(0) | Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(Error::Read(errno.into())),
                Ok(n) => n,
            };
            // Only our handler writes here, and only numbers of HANDLED signals.
            out.extend(
                buffer[..n]
                    .iter()
                    .filter_map(|&b| Signal::try_from(libc::c_int::from(b)).ok()),
            );
        }
    }

    /// For the child between `fork` and `exec`: [`reset_in_child`], then closes both pipe ends.
    ///
    /// Async-signal-safe and allocation-free. Call it before `exec` so the program starts with
    /// default dispositions, an empty mask, and without the arbiter's pipe.
    pub fn child_reset(&self) {
        // Stop the inherited handler from writing into the pipe shared with the parent first.
        WRITE_FD.store(-1, Ordering::Relaxed);
        reset_in_child();
        self.close_in_child();
    }

    /// For a child that shares the parent's memory until it execs (`clone` with `CLONE_VM`,
    /// as `vfork` and `posix_spawn` do): as [`SignalPipe::child_reset`], but the handler's
    /// state, which is the parent's own memory here, is left alone. The child must start with
    /// every signal blocked (so no handler runs in it before its dispositions are the
    /// defaults). Only the signals that may not be at their default are reset (see
    /// `RESET_ON_SPAWN`). Async-signal-safe and allocation-free.
    pub fn vfork_child_reset(&self) {
        reset_dispositions(Scope::Exec, RESET_ON_SPAWN.load(Ordering::Relaxed));
        self.close_in_child();
    }

    /// For a forked child that runs on without `exec` (a library-mode worker):
    /// [`reset_in_forked_child`], then closes both pipe ends. Async-signal-safe and
    /// allocation-free.
    pub fn forked_child_reset(&self) {
        WRITE_FD.store(-1, Ordering::Relaxed);
        reset_in_forked_child();
        self.close_in_child();
    }

    fn close_in_child(&self) {
        // SAFETY: in the child these fds are the child's copies; closing them does not affect
        // the parent, and the child never drops this value (it execs or _exits), so they are
        // not closed twice.
        unsafe {
            libc::close(self.read.as_raw_fd());
            libc::close(self.write.as_raw_fd());
        }
    }
}

/// Resets every signal 1..NSIG except KILL and STOP to `SIG_DFL` and empties the signal mask.
///
/// Async-signal-safe and allocation-free, for the child between `fork` and `exec` (also when
/// no [`SignalPipe`] is installed: ignored signals inherited from our own parent are reset too).
/// Signals are blocked while the dispositions change, so no inherited handler runs half-way.
pub fn reset_in_child() {
    reset(Scope::Exec);
}

/// As [`reset_in_child`], for a forked child that runs on without `exec`: the C library's own
/// real-time signals (below `SIGRTMIN`, which it uses for thread cancellation and `setuid`)
/// keep its handlers, and `SIGPIPE` is then ignored, as Rust's start-up code leaves it in a
/// new program (a write to a closed socket is an `EPIPE` error, not death).
pub fn reset_in_forked_child() {
    reset(Scope::NoExec);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Exec,
    NoExec,
}

fn reset(scope: Scope) {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    WRITE_FD.store(-1, Ordering::Relaxed);
    reset_dispositions(scope, u64::MAX);
}

/// With every signal blocked: the dispositions of the signals in `only` (bit `n - 1` for
/// signal `n`) to their defaults, then an empty mask.
fn reset_dispositions(scope: Scope, only: u64) {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    let reserved = 32..libc::SIGRTMIN();
    for signal in 1..NSIG {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP || only & bit(signal) == 0 {
            continue;
        }
        if scope == Scope::NoExec && reserved.contains(&signal) {
            continue;
        }
        set_disposition(signal, libc::SIG_DFL);
    }
    if scope == Scope::NoExec {
        set_disposition(libc::SIGPIPE, libc::SIG_IGN);
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Sets `signal` (a number: real-time signals have no `Signal` variant) to `SIG_DFL` or
/// `SIG_IGN`, installing no handler code.
fn set_disposition(signal: libc::c_int, disposition: libc::sighandler_t) {
    // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask and no flags, and the only
    // handler set is SIG_DFL or SIG_IGN; both calls take valid pointers (or null for the old
    // action) and only change this process's dispositions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = disposition;
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0
            && disposition == libc::SIG_DFL
        {
            // The C library refuses its reserved real-time signals (32, 33), yet one inherited
            // as ignored would stay ignored across exec: ask the kernel directly. An all-zero
            // kernel sigaction is SIG_DFL, no flags, empty mask on every architecture; 8 is the
            // kernel's sigset size.
            let kernel_default = [0u64; 4];
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                kernel_default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (&signal, old) in HANDLED.iter().zip(&self.previous) {
            // SAFETY: `old` is the disposition sigaction returned for this signal at install.
            let _ = unsafe { sigaction(signal, old) };
        }
        // Every handler is gone now: no one writes to the fd after this point.
        WRITE_FD.store(-1, Ordering::Release);
        RESET_ON_SPAWN.store(u64::MAX, Ordering::Relaxed);
        INSTALLED.store(false, Ordering::Release);
    }
}
