//! Signals come out of `drain` in the order they reached the handlers.

mod common;

use std::time::{Duration, Instant};

use arbiter_signals::{Signal, SignalPipe};
use common::{poll_readable, Child};

#[test]
fn signals_sent_one_at_a_time_come_out_in_order() {
    let kinds = [
        Signal::SIGUSR2,
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGWINCH,
        Signal::SIGUSR1,
        Signal::SIGTERM,
    ];
    let pipe = SignalPipe::install().expect("install");
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let mut acks = [0; 2];
    // SAFETY: valid array of two fds.
    let created = unsafe { libc::pipe2(acks.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(created, 0);

    let expected: Vec<Signal> = kinds.iter().cycle().take(200).copied().collect();
    let to_send: Vec<libc::c_int> = expected.iter().map(|&s| s as libc::c_int).collect();
    let mut sender = Child::fork(|| {
        let mut byte = 0u8;
        for &signal in &to_send {
            // SAFETY: kill is async-signal-safe.
            if unsafe { libc::kill(me, signal) } != 0 {
                return 5;
            }
            // Wait for the receiver to have seen it before sending the next one.
            // SAFETY: reading one byte into a valid stack byte.
            if unsafe { libc::read(acks[0], std::ptr::from_mut(&mut byte).cast(), 1) } != 1 {
                return 6;
            }
        }
        0
    });
    // SAFETY: closing our copy of the ack pipe's read end.
    unsafe { libc::close(acks[0]) };

    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.len() < expected.len() && Instant::now() < deadline {
        poll_readable(pipe.fd(), Duration::from_millis(100));
        let before = received.len();
        pipe.drain(&mut received).expect("drain");
        for _ in before..received.len() {
            // SAFETY: writing one valid byte to the ack pipe's write end.
            unsafe { libc::write(acks[1], b"k".as_ptr().cast(), 1) };
        }
    }
    assert_eq!(
        sender.wait(Duration::from_secs(10)),
        Some(0),
        "sender failed"
    );
    // SAFETY: closing the ack pipe's write end.
    unsafe { libc::close(acks[1]) };
    assert_eq!(received, expected);
}
