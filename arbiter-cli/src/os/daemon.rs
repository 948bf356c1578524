//! `--daemon`: detach from the terminal (fork, `setsid`, fork), and report the master's
//! startup result back to the process the user started, so it exits with that result.

use std::io;
use std::os::fd::OwnedFd;

use nix::unistd::{fork, ForkResult};
use rustix::io::Errno;

use crate::os::spawn::exit_child;

/// The daemon's end of the pipe back to the process the user started: it reports whether the
/// master came up, so `arbiter --daemon` exits 0 only once the master is bound and running.
pub struct DaemonReport {
    write: OwnedFd,
}

impl DaemonReport {
    /// Sends the outcome (exit code 0 and nothing, or the startup error's code and message)
    /// and closes the pipe.
    pub fn report(self, code: u8, message: &str) {
        let mut bytes = vec![code];
        bytes.extend_from_slice(message.as_bytes());
        let _ = rustix::io::write(&self.write, &bytes);
    }
}

/// Detaches: fork, `setsid`, fork again, stdio to `/dev/null`. Returns in the daemon; the
/// original process waits for the daemon's [`DaemonReport`] and exits with its code (printing
/// its message), or 1 if the daemon died without a word.
pub fn daemonize() -> io::Result<DaemonReport> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: called from main before any thread exists.
    match unsafe { fork() }? {
        ForkResult::Child => {}
        ForkResult::Parent { child } => {
            drop(write);
            let report = read_report(&read);
            let _ = nix::sys::wait::waitpid(child, None);
            let (code, message) = match report.split_first() {
                Some((code, message)) => (*code, String::from_utf8_lossy(message).into_owned()),
                None => (1, "the daemon exited during startup".to_owned()),
            };
            if !message.is_empty() {
                eprintln!("arbiter: error: {message}");
            }
            std::process::exit(i32::from(code));
        }
    }
    drop(read);
    if rustix::process::setsid().is_err() {
        exit_child(1);
    }
    // SAFETY: the intermediate process is single-threaded; it exits at once with _exit (no
    // destructors, no atexit handlers).
    match unsafe { fork() } {
        Err(_) => exit_child(1),
        Ok(ForkResult::Parent { .. }) => exit_child(0),
        Ok(ForkResult::Child) => {}
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    Ok(DaemonReport { write })
}

/// The report as the daemon wrote it: up to 4 KiB, until EOF.
fn read_report(read: &OwnedFd) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match rustix::io::read(read, &mut buf[len..]) {
            Err(Errno::INTR) => continue,
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    buf[..len].to_vec()
}
