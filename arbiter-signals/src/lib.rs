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
//!   for the child between `fork` and `exec`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

pub use nix::sys::signal::Signal;

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
const PIPE_SIZE: libc::c_int = 1 << 20;
/// Fallback pipe size when the larger one is refused (above `/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE_FALLBACK: libc::c_int = 1 << 16;
/// One past the highest signal number on Linux (`_NSIG`).
const NSIG: libc::c_int = 65;

/// Set while a `SignalPipe` exists.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The write end the handler writes to, or -1 when none.
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

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
    previous: Vec<libc::sigaction>,
}

extern "C" fn on_signal(signal: libc::c_int) {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid for the thread's life.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: reading this thread's errno through its valid slot.
    let saved = unsafe { *errno };
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // Signal numbers are below 65, so they fit in one byte.
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is one valid byte on our stack. If the
        // pipe is full (EAGAIN) nothing can be done in a handler: the loss is documented.
        unsafe { libc::write(fd, std::ptr::from_ref(&byte).cast(), 1) };
    }
    // SAFETY: restoring this thread's errno through its valid slot.
    unsafe { *errno = saved };
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
        let mut fds = [-1 as RawFd; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(Error::Pipe(std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on a pipe we own; failure only leaves the default size.
        if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) } < 0 {
            // SAFETY: as above.
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE_FALLBACK) };
        }
        WRITE_FD.store(write.as_raw_fd(), Ordering::Release);
        let mut pipe = SignalPipe {
            read,
            write,
            previous: Vec::with_capacity(HANDLED.len()),
        };
        for &signal in HANDLED {
            // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: sa_mask is a valid sigset_t inside `action`. Blocking every signal while the
            // handler runs keeps the handlers of one thread from nesting.
            unsafe { libc::sigfillset(&mut action.sa_mask) };
            // SAFETY: as above, a zeroed sigaction is valid storage for the old disposition.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are to valid sigaction values; the handler is async-signal-safe.
            if unsafe { libc::sigaction(signal as libc::c_int, &action, &mut old) } != 0 {
                let source = std::io::Error::last_os_error();
                // Dropping `pipe` restores the handlers installed so far and clears INSTALLED.
                drop(pipe);
                return Err(Error::Install { signal, source });
            }
            pipe.previous.push(old);
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
            // SAFETY: the buffer is valid for its whole length; the fd is our open read end.
            let n = unsafe {
                libc::read(
                    self.read.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                match error.kind() {
                    std::io::ErrorKind::WouldBlock => return Ok(()),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(Error::Read(error)),
                }
            }
            if n == 0 {
                return Ok(());
            }
            let bytes = &buffer[..n as usize];
            // Only our handler writes here, and only numbers of HANDLED signals.
            out.extend(
                bytes
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
        // SAFETY: in the child these raw fds are the child's copies; closing them does not affect
        // the parent, and the child never drops this value (it execs or _exits).
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
    // SAFETY: sigset_t is plain data; sigfillset/sigemptyset initialise it fully.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is valid storage for a sigset_t.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: sigprocmask with a valid set and a null old-set pointer is async-signal-safe.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) };
    WRITE_FD.store(-1, Ordering::Relaxed);
    // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask and no flags.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    for signal in 1..NSIG {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: valid sigaction pointer; a failure is handled below.
        if unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) } != 0 {
            // The C library refuses its reserved real-time signals (32, 33), yet one inherited
            // as ignored would stay ignored across exec: ask the kernel directly. An all-zero
            // kernel sigaction is SIG_DFL, no flags, empty mask on every architecture.
            let kernel_default = [0u64; 4];
            // SAFETY: rt_sigaction reads a kernel sigaction (at most 32 bytes here) and a null
            // old-action pointer is allowed; 8 is the kernel's sigset size.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    kernel_default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                )
            };
        }
    }
    // SAFETY: `all` is valid storage; emptied, it clears the mask.
    unsafe { libc::sigemptyset(&mut all) };
    // SAFETY: as above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) };
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (&signal, old) in HANDLED.iter().zip(&self.previous) {
            // SAFETY: `old` is the disposition sigaction returned for this signal at install.
            unsafe { libc::sigaction(signal as libc::c_int, old, std::ptr::null_mut()) };
        }
        // Every handler is gone now: no one writes to the fd after this point.
        WRITE_FD.store(-1, Ordering::Release);
        INSTALLED.store(false, Ordering::Release);
    }
}
