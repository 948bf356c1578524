//! `--daemon`: detach from the terminal (fork, `setsid`, fork), and report the master's
//! startup result back to the process the user started, so it exits with that result.

use std::io;
use std::os::fd::RawFd;

/// The daemon's end of the pipe back to the process the user started: it reports whether the
/// master came up, so `arbiter --daemon` exits 0 only once the master is bound and running.
pub struct DaemonReport {
    write: RawFd,
}

impl DaemonReport {
    /// Sends the outcome (exit code 0 and nothing, or the startup error's code and message)
    /// and closes the pipe.
    pub fn report(self, code: u8, message: &str) {
        let mut bytes = vec![code];
        bytes.extend_from_slice(message.as_bytes());
        // SAFETY: writing a buffer we own to the pipe's write end, then closing it.
        unsafe {
            libc::write(self.write, bytes.as_ptr().cast(), bytes.len());
            libc::close(self.write);
        }
    }
}

/// Detaches: fork, `setsid`, fork again, stdio to `/dev/null`. Returns in the daemon; the
/// original process waits for the daemon's [`DaemonReport`] and exits with its code (printing
/// its message), or 1 if the daemon died without a word.
pub fn daemonize() -> io::Result<DaemonReport> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (read, write) = (fds[0], fds[1]);
    // SAFETY: called from main before any thread exists.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        child => {
            // SAFETY: closing our copy of the write end, then reading the report into a
            // buffer we own; the intermediate child is reaped.
            let report = unsafe {
                libc::close(write);
                let mut buf = [0u8; 4096];
                let mut len = 0;
                loop {
                    let n = libc::read(read, buf[len..].as_mut_ptr().cast(), buf.len() - len);
                    if n <= 0 || len + n as usize >= buf.len() {
                        len += n.max(0) as usize;
                        break;
                    }
                    len += n as usize;
                }
                libc::waitpid(child, std::ptr::null_mut(), 0);
                buf[..len].to_vec()
            };
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
    // SAFETY: setsid and fork in the single-threaded child; the intermediate process exits
    // at once with _exit (no destructors, no atexit handlers).
    unsafe {
        libc::close(read);
        if libc::setsid() < 0 {
            libc::_exit(1);
        }
        match libc::fork() {
            -1 => libc::_exit(1),
            0 => {}
            _ => libc::_exit(0),
        }
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..3 {
        // SAFETY: dup2 of an fd we own onto the standard streams of this process.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(DaemonReport { write })
}
