//! A datagram on a worker's notify socket, from the worker or any of its children: sent for
//! real (with or without ancillary data: explicit credentials, up to 31 passed fds, more than
//! a receive buffer for 16 would hold), read by the master's `NotifyHub` (at once for an
//! urgent socket, in the lazy round otherwise). The master reads exactly one message, equal
//! to the pure parser's reading of the first 4096 bytes and stamped by the kernel (unless it
//! carried fds into a header the kernel had shrunk, see `os::notify`); every passed
//! fd is closed (the fd table does not grow); a status never holds a line break; memory stays
//! bounded.
//!
//! Input: byte 0 says what rides along and how it is read (bit 0: explicit credentials;
//! bits 1-5: how many fds; bit 6: the socket is lazy), the rest is the payload.
#![no_main]

use std::cell::RefCell;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use arbiter_cli::os::notify::{parse, Chattiness, Message, NotifyHub};
use arbiter_fuzz::{assert_bounded, peak_during};
use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr, UnixCredentials};

/// The receiver's buffer per datagram: longer payloads are cut there.
const RECEIVE_BUFFER: usize = 4096;
/// The hub's key for the one worker socket.
const KEY: u64 = 1;

struct Fixture {
    hub: NotifyHub,
    sender: UnixDatagram,
    address: UnixAddr,
    spare: OwnedFd,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        // The master's thresholds; no heartbeat filter, so every datagram is read and parsed.
        let rule = Chattiness {
            chatty_at: arbiter_core::notify::CHATTY_AT,
            quiet_at: arbiter_core::notify::QUIET_AT,
        };
        let mut hub = NotifyHub::new(dir.path(), false, rule).expect("notify hub");
        let path = hub.open(KEY).expect("open a worker socket");
        Fixture {
            hub,
            sender: UnixDatagram::unbound().expect("sender"),
            address: UnixAddr::new(&path).expect("address"),
            spare: std::fs::File::open("/dev/null").expect("/dev/null").into(),
            _dir: dir,
        }
    }
}

thread_local! {
    static FIXTURE: RefCell<Fixture> = RefCell::new(Fixture::new());
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

fn one(fixture: &mut Fixture, what: u8, payload: &[u8]) {
    let passed: Vec<i32> = vec![fixture.spare.as_raw_fd(); usize::from(what >> 1 & 31)];
    let credentials = UnixCredentials::new();
    let mut cmsgs = Vec::new();
    if what & 1 == 1 {
        cmsgs.push(ControlMessage::ScmCredentials(&credentials));
    }
    if !passed.is_empty() {
        cmsgs.push(ControlMessage::ScmRights(&passed));
    }
    let lazy = what & 0x40 != 0;
    fixture.hub.set_urgent(KEY, !lazy);
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
    let hub = &mut fixture.hub;
    let (messages, peak) = peak_during(|| {
        let mut messages = Vec::new();
        match lazy {
            true => {
                hub.read_lazy(&mut messages);
            }
            false => hub.read_eager(&mut messages),
        }
        messages
    });
    // The message, plus the receive headers rebuilt after fds (16 of about 1 KiB each).
    assert_bounded(peak, 4 * payload.len() + 32 * 1024, payload);
    assert_eq!(open_fds(), before, "passed fds are closed at once");
    let [(key, message)] = &messages[..] else {
        panic!("one datagram, {} messages", messages.len());
    };
    assert_eq!(*key, KEY);
    // A message with fds may come back cut (the kernel installs none of them, so nothing
    // leaks) when the header's room was shrunk by an earlier message: then it has no stamp.
    assert!(
        message.age.is_some() || !passed.is_empty(),
        "stamped by the kernel"
    );
    let seen = &payload[..payload.len().min(RECEIVE_BUFFER)];
    let unstamped = Message {
        age: None,
        status: message.status.clone(),
        ..*message
    };
    assert_eq!(unstamped, parse(seen));
    if let Some(status) = &message.status {
        assert!(!status.contains('\n'), "{status:?}");
        assert!(
            status.len() <= 3 * seen.len(),
            "lossy UTF-8 at most triples"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [what, payload @ ..] = data else {
        return;
    };
    FIXTURE.with_borrow_mut(|fixture| one(fixture, *what, payload));
});
