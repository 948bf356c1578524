//! Install, second install, restore on drop, and the child-side reset.

mod common;

use std::time::Duration;

use arbiter_signals::{reset_in_child, Error, SignalPipe, HANDLED};
use common::Child;

fn disposition(signal: libc::c_int) -> libc::sighandler_t {
    // SAFETY: zeroed sigaction is valid storage; a null new action only queries.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    let queried = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) };
    assert_eq!(queried, 0);
    old.sa_sigaction
}

/// Reads a hex mask line of /proc/self/status, allocation-free (for a forked child).
fn status_mask(key: &[u8]) -> Option<u64> {
    let mut buffer = [0u8; 4096];
    // SAFETY: valid NUL-terminated path literal.
    let fd = unsafe { libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    while len < buffer.len() {
        // SAFETY: writable remainder of the buffer.
        let n = unsafe { libc::read(fd, buffer[len..].as_mut_ptr().cast(), buffer.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    let text = &buffer[..len];
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let mut mask = 0u64;
    for &digit in text[at..].iter().take_while(|b| b.is_ascii_hexdigit()) {
        mask = mask << 4 | u64::from((digit as char).to_digit(16)?);
    }
    Some(mask)
}

#[test]
fn lifecycle() {
    // Before: USR1 ignored, as a parent might leave it, and ALRM, which the pipe does not
    // handle; TERM default.
    // SAFETY: installing SIG_IGN is always sound.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGALRM, libc::SIG_IGN) };
    assert_eq!(disposition(libc::SIGTERM), libc::SIG_DFL);

    let pipe = SignalPipe::install().expect("first install");
    assert!(matches!(
        SignalPipe::install(),
        Err(Error::AlreadyInstalled)
    ));
    for &signal in HANDLED {
        let handler = disposition(signal as libc::c_int);
        assert_ne!(handler, libc::SIG_DFL, "{signal} not handled");
        assert_ne!(handler, libc::SIG_IGN, "{signal} not handled");
    }
    // The pipe is close-on-exec and non-blocking.
    use std::os::fd::AsRawFd;
    let fd = pipe.fd().as_raw_fd();
    // SAFETY: fcntl queries on an open fd.
    let (fd_flags, fl_flags) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFD),
            libc::fcntl(fd, libc::F_GETFL),
        )
    };
    assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
    assert_ne!(fl_flags & libc::O_NONBLOCK, 0);

    // The child side: block something and ignore something, then reset; the child reports
    // through its exit code what /proc/self/status says.
    // SAFETY: installing SIG_IGN is always sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let mut child = Child::fork(|| {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid set pointers; blocking signals in the child only.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::sigaddset(&mut set, libc::SIGRTMIN() + 3);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        if status_mask(b"SigBlk:\t") == Some(0) {
            return 10; // the setup did not take: the test would prove nothing
        }
        pipe.child_reset();
        match (
            status_mask(b"SigBlk:\t"),
            status_mask(b"SigIgn:\t"),
            status_mask(b"SigCgt:\t"),
        ) {
            (Some(0), Some(0), Some(0)) => {}
            (Some(b), _, _) if b != 0 => return 11,
            (_, Some(i), _) if i != 0 => return 12,
            (_, _, Some(c)) if c != 0 => return 13,
            _ => return 14,
        }
        // The pipe fds are closed in the child.
        // SAFETY: F_GETFD on a possibly closed fd only reports EBADF.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            return 15;
        }
        0
    });
    assert_eq!(child.wait(Duration::from_secs(10)), Some(0));

    // The vforked child's reset, which resets only what may not be at its default: ALRM,
    // ignored before the install and not handled, PIPE, ignored after it, the handled signals
    // and the C runtime's own handlers (Rust's SEGV and BUS) all end at their defaults.
    // (Called in a forked child here: it only makes syscalls.)
    let mut child = Child::fork(|| {
        if status_mask(b"SigIgn:\t") == Some(0) || status_mask(b"SigCgt:\t") == Some(0) {
            return 30; // nothing ignored or caught: the test would prove nothing
        }
        pipe.vfork_child_reset();
        match (
            status_mask(b"SigBlk:\t"),
            status_mask(b"SigIgn:\t"),
            status_mask(b"SigCgt:\t"),
        ) {
            (Some(0), Some(0), Some(0)) => 0,
            (Some(b), _, _) if b != 0 => 31,
            (_, Some(i), _) if i != 0 => 32,
            (_, _, Some(c)) if c != 0 => 33,
            _ => 34,
        }
    });
    assert_eq!(child.wait(Duration::from_secs(10)), Some(0));

    // The free function works without a pipe too (same checks, fewer of them).
    let mut child = Child::fork(|| {
        reset_in_child();
        match status_mask(b"SigIgn:\t") {
            Some(0) => 0,
            _ => 20,
        }
    });
    assert_eq!(child.wait(Duration::from_secs(10)), Some(0));

    drop(pipe);
    assert_eq!(
        disposition(libc::SIGUSR1),
        libc::SIG_IGN,
        "ignored USR1 restored"
    );
    assert_eq!(
        disposition(libc::SIGTERM),
        libc::SIG_DFL,
        "default TERM restored"
    );
    // A new install after the drop works.
    let again = SignalPipe::install().expect("install after drop");
    drop(again);
}
