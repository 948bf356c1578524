//! Test fixture: a worker exec'd through a `HandoffPlan`, reporting what it inherited.
//!
//! Prints `key=value` lines to stdout (`pid`, `fds`, `listen_fds`, `listen_pid`,
//! `listen_fdnames`, `sigblk`, `sigign`, `sigcgt`), then accepts one connection on each
//! listener fd 3..3+LISTEN_FDS and writes `fd=N pid=P\n` to it, then exits 0.
//!
//! `no_main`: Rust's usual start-up would set SIGPIPE to ignored and install SIGSEGV/SIGBUS
//! handlers, hiding what the probe inherited.

#![no_main]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, OwnedFd};

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The C entry point (no Rust start-up code runs before it).
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    // read_dir itself holds one fd open while listing: drop the ones that are now closed.
    // SAFETY: F_GETFD on descriptor numbers only queries.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    let mut status = String::new();
    std::fs::File::open("/proc/self/status")
        .and_then(|mut f| f.read_to_string(&mut status))
        .expect("read /proc/self/status");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let fd_list: Vec<String> = fds.iter().map(|fd| fd.to_string()).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "pid={}", std::process::id()).unwrap();
    writeln!(out, "fds={}", fd_list.join(",")).unwrap();
    writeln!(out, "listen_fds={}", env("LISTEN_FDS")).unwrap();
    writeln!(out, "listen_pid={}", env("LISTEN_PID")).unwrap();
    writeln!(out, "listen_fdnames={}", env("LISTEN_FDNAMES")).unwrap();
    writeln!(out, "sigblk={}", status_field(&status, "SigBlk:")).unwrap();
    writeln!(out, "sigign={}", status_field(&status, "SigIgn:")).unwrap();
    writeln!(out, "sigcgt={}", status_field(&status, "SigCgt:")).unwrap();
    out.flush().unwrap();
    drop(out);
    let count: i32 = env("LISTEN_FDS").parse().unwrap_or(0);
    for fd in 3..3 + count {
        // SAFETY: the hand-off contract says fds 3..3+LISTEN_FDS are ours and listening; a
        // unix listener accepts through the same call, TcpStream only carries the bytes.
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: accept on the listener fd with null address pointers.
        let conn = unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
        assert!(
            conn >= 0,
            "accept on fd {fd}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: accept returned a new fd we own.
        let mut stream = unsafe { TcpStream::from_raw_fd(conn) };
        writeln!(stream, "fd={fd} pid={}", std::process::id()).unwrap();
        drop(listener);
    }
    0
}
