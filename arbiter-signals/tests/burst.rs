//! A burst of 500 signals from another process all come out of the pipe.
//!
//! The sender never waits for the receiver's event loop: before each `kill` it only checks (in
//! `/proc/PID/status`, `ShdPnd`) that the kernel is not still holding a signal of the same kind,
//! the one case where the kernel merges two sends into one. So every send must reach a handler,
//! and every handler run must come out of `drain`: the counts must match exactly.

mod common;

use std::ffi::CString;
use std::time::{Duration, Instant};

use arbiter_signals::{Signal, SignalPipe};
use common::{poll_readable, Child};

const KINDS: [libc::c_int; 9] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];
const SENDS: usize = 500;

/// Reads the shared-pending mask of a process without allocating (for the forked child).
fn shared_pending(path: &CString, buffer: &mut [u8; 4096]) -> Option<u64> {
    // SAFETY: valid NUL-terminated path; open/read/close are async-signal-safe.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    while len < buffer.len() {
        // SAFETY: the slice from `len` is valid writable memory of the stated length.
        let n = unsafe { libc::read(fd, buffer[len..].as_mut_ptr().cast(), buffer.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    let text = &buffer[..len];
    let key = b"ShdPnd:\t";
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let mut mask = 0u64;
    for &digit in text[at..].iter().take_while(|b| b.is_ascii_hexdigit()) {
        mask = mask << 4 | u64::from((digit as char).to_digit(16)?);
    }
    Some(mask)
}

#[test]
fn burst_of_500_signals_from_another_process_all_come_out() {
    let pipe = SignalPipe::install().expect("install");
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let status_path = CString::new(format!("/proc/{me}/status")).unwrap();

    let mut sender = Child::fork(|| {
        let mut buffer = [0u8; 4096];
        for i in 0..SENDS {
            let signal = KINDS[i % KINDS.len()];
            let bit = 1u64 << (signal - 1);
            let mut spins = 0u32;
            loop {
                match shared_pending(&status_path, &mut buffer) {
                    Some(mask) if mask & bit == 0 => break,
                    Some(_) if spins < 500_000 => spins += 1,
                    Some(_) => return 3,
                    None => return 4,
                }
            }
            // SAFETY: kill is async-signal-safe; `me` is the test process.
            if unsafe { libc::kill(me, signal) } != 0 {
                return 5;
            }
        }
        0
    });

    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = |r: &Vec<Signal>| r.iter().filter(|&&s| s != Signal::SIGCHLD).count();
    while counted(&received) < SENDS && Instant::now() < deadline {
        poll_readable(pipe.fd(), Duration::from_millis(100));
        pipe.drain(&mut received).expect("drain");
    }
    assert_eq!(
        sender.wait(Duration::from_secs(10)),
        Some(0),
        "sender failed"
    );
    // Anything still in flight would show up now: there must be nothing extra.
    std::thread::sleep(Duration::from_millis(50));
    pipe.drain(&mut received).expect("drain");

    for (k, &kind) in KINDS.iter().enumerate() {
        let sent = (0..SENDS).filter(|i| i % KINDS.len() == k).count();
        let got = received.iter().filter(|&&s| s as i32 == kind).count();
        assert_eq!(got, sent, "signal {kind}: sent {sent}, received {got}");
    }
    assert_eq!(counted(&received), SENDS);
}
