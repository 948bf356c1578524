//! A datagram on the master's notify socket, from any worker or any of its children: sent for
//! real (with or without ancillary data: explicit credentials, up to 31 passed fds, which is
//! more than the receiver makes room for), drained by the master's `NotifySocket::drain`.
//! The master reads exactly one message with the sender's pid, equal to the pure parser's
//! reading of the first 4096 bytes; every passed fd is closed (the fd table does not grow);
//! a status line never holds a line break; memory stays bounded.
//!
//! Input: byte 0 says what rides along (bit 0: explicit credentials; bits 1-5: how many fds),
//! the rest is the payload.
#![no_main]

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

use arbiter_cli::os::notify::{parse, NotifySocket};
use arbiter_fuzz::{assert_bounded, peak_during};
use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr, UnixCredentials};

/// The receiver's buffer: longer payloads are cut there.
const RECEIVE_BUFFER: usize = 4096;

struct Fixture {
    _dir: tempfile::TempDir,
    socket: NotifySocket,
    sender: UnixDatagram,
    address: UnixAddr,
    spare: OwnedFd,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(&path).expect("bind the notify socket");
        let sender = UnixDatagram::unbound().expect("sender");
        let address = UnixAddr::new(&path).expect("address");
        let spare = std::fs::File::open("/dev/null").expect("/dev/null").into();
        Fixture {
            _dir: dir,
            socket,
            sender,
            address,
            spare,
        }
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

fuzz_target!(|data: &[u8]| {
    let [what, payload @ ..] = data else {
        return;
    };
    let fixture = fixture();
    let passed: Vec<i32> = vec![fixture.spare.as_raw_fd(); usize::from(what >> 1 & 31)];
    let credentials = UnixCredentials::new();
    let mut cmsgs = Vec::new();
    if what & 1 == 1 {
        cmsgs.push(ControlMessage::ScmCredentials(&credentials));
    }
    if !passed.is_empty() {
        cmsgs.push(ControlMessage::ScmRights(&passed));
    }
    let before = open_fds();
    let sent = sendmsg(
        fixture.sender.as_raw_fd(),
        &[IoSlice::new(payload)],
        &cmsgs,
        MsgFlags::MSG_DONTWAIT,
        Some(&fixture.address),
    );
    if let Err(errno) = sent {
        // Too long for a datagram: nothing was sent, nothing to read.
        assert_eq!(errno, nix::errno::Errno::EMSGSIZE, "sendmsg");
        return;
    }
    let (messages, peak) = peak_during(|| {
        let mut messages = Vec::new();
        fixture.socket.drain(&mut messages);
        messages
    });
    assert_bounded(peak, 4 * payload.len() + 4096, data);
    assert_eq!(open_fds(), before, "passed fds are closed at once");
    let [message] = &messages[..] else {
        panic!("one datagram, {} messages", messages.len());
    };
    let pid = std::process::id() as i32;
    assert_eq!(message.pid, pid, "the kernel's sender pid");
    let seen = &payload[..payload.len().min(RECEIVE_BUFFER)];
    assert_eq!(*message, parse(pid, seen));
    if let Some(status) = &message.status {
        assert!(!status.contains('\n'), "{status:?}");
        assert!(
            status.len() <= 3 * seen.len(),
            "lossy UTF-8 at most triples"
        );
    }
});
