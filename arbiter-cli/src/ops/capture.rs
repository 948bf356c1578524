//! Worker output capture (`--capture-output`): each worker's stdout and stderr are pipes the
//! master reads without blocking; each line is relayed through the arbiter's log with the
//! worker's pid and slot.
//!
//! Invariants: the loop never blocks on a pipe (read ends are non-blocking, and at most
//! [`READ_BUDGET`] bytes are read per pipe per wake-up); no line is lost when a worker dies
//! (a pipe is read until EOF, which comes only after the worker and every descendant holding
//! it are gone, and the master drains what is left when it exits). Limits: a line longer than
//! [`MAX_LINE`] bytes is relayed in pieces; bytes that are not UTF-8 are replaced.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::PollFlags;

/// Longest line relayed in one piece.
pub const MAX_LINE: usize = 16 * 1024;
/// Bytes read from one pipe per wake-up, so one chatty worker cannot hold the loop.
pub const READ_BUDGET: usize = 256 * 1024;

/// Which of a worker's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The two pipes of a worker about to be spawned.
pub struct WorkerPipes {
    read: [OwnedFd; 2],
    write: [OwnedFd; 2],
}

impl WorkerPipes {
    /// Two close-on-exec pipes; the read ends non-blocking.
    pub fn new() -> io::Result<WorkerPipes> {
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        for fd in [&out_r, &err_r] {
            fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        }
        Ok(WorkerPipes {
            read: [out_r, err_r],
            write: [out_w, err_w],
        })
    }

    /// The write ends the child puts on fds 1 and 2.
    pub fn child_fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.write[0].as_fd(), self.write[1].as_fd())
    }
}

struct Pipe {
    fd: OwnedFd,
    pid: i32,
    slot: usize,
    stream: Stream,
    partial: Vec<u8>,
}

/// One relayed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// The worker's pid.
    pub pid: i32,
    /// Its slot.
    pub slot: usize,
    /// Which output.
    pub stream: Stream,
    /// The text, without its newline.
    pub text: &'a str,
}

/// The pipes being read.
#[derive(Default)]
pub struct Capture {
    pipes: Vec<Pipe>,
}

impl Capture {
    /// The worker `pid` was spawned with `pipes`: the write ends are closed here (the child
    /// has its copies), the read ends are watched.
    pub fn add(&mut self, pid: i32, slot: usize, pipes: WorkerPipes) {
        let WorkerPipes { read, write } = pipes;
        drop(write);
        let [out, err] = read;
        for (fd, stream) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
            self.pipes.push(Pipe {
                fd,
                pid,
                slot,
                stream,
                partial: Vec::new(),
            });
        }
    }

    /// Pipes still open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pipes.len()
    }

    /// Whether no pipe is open.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pipes.is_empty()
    }

    /// The fds to poll, in the order [`Capture::handle`] relies on.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        self.pipes
            .iter()
            .map(|p| (p.fd.as_fd(), PollFlags::POLLIN))
            .collect()
    }

    /// Reads the pipes poll reported, relaying each complete line; closes a pipe at EOF.
    pub fn handle(&mut self, revents: &[PollFlags], mut relay: impl FnMut(Line<'_>)) {
        for (pipe, events) in self.pipes.iter_mut().zip(revents) {
            if !events.is_empty() {
                read_pipe(pipe, READ_BUDGET, &mut relay);
            }
        }
        self.pipes.retain(|p| p.pid != 0);
    }

    /// At the master's exit: relays whatever the pipes hold now, without waiting.
    pub fn drain(&mut self, mut relay: impl FnMut(Line<'_>)) {
        for pipe in &mut self.pipes {
            read_pipe(pipe, usize::MAX, &mut relay);
            if pipe.pid != 0 && !pipe.partial.is_empty() {
                emit(pipe, &mut relay);
            }
        }
        self.pipes.clear();
    }
}

/// Reads up to `budget` bytes; marks the pipe closed (pid 0) at EOF or on error.
fn read_pipe(pipe: &mut Pipe, budget: usize, relay: &mut impl FnMut(Line<'_>)) {
    let mut chunk = [0u8; 8192];
    let mut read = 0;
    while read < budget {
        match nix::unistd::read(&pipe.fd, &mut chunk) {
            Ok(0) | Err(nix::errno::Errno::EBADF) => {
                if !pipe.partial.is_empty() {
                    emit(pipe, relay);
                }
                pipe.pid = 0;
                return;
            }
            Ok(n) => {
                read += n;
                for &byte in &chunk[..n] {
                    if byte == b'\n' {
                        emit(pipe, relay);
                    } else {
                        pipe.partial.push(byte);
                        if pipe.partial.len() >= MAX_LINE {
                            emit(pipe, relay);
                        }
                    }
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return,
            Err(_) => {
                pipe.pid = 0;
                return;
            }
        }
    }
}

fn emit(pipe: &mut Pipe, relay: &mut impl FnMut(Line<'_>)) {
    let text = String::from_utf8_lossy(&pipe.partial);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    relay(Line {
        pid: pipe.pid,
        slot: pipe.slot,
        stream: pipe.stream,
        text,
    });
    pipe.partial.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn relays_lines_in_order_keeps_partials_and_drains_after_the_writer_is_gone() {
        let pipes = WorkerPipes::new().unwrap();
        let writer = pipes.write[0].try_clone().unwrap();
        let mut capture = Capture::default();
        capture.add(42, 3, pipes);
        let mut file = std::fs::File::from(writer);
        file.write_all(b"one\ntwo\r\nthr").unwrap();
        let mut lines = Vec::new();
        let all = vec![PollFlags::POLLIN; capture.len()];
        capture.handle(&all, |l| {
            lines.push((l.pid, l.slot, l.stream, l.text.to_owned()))
        });
        assert_eq!(
            lines,
            vec![
                (42, 3, Stream::Stdout, "one".to_owned()),
                (42, 3, Stream::Stdout, "two".to_owned()),
            ]
        );
        file.write_all(b"ee").unwrap();
        drop(file);
        let all = vec![PollFlags::POLLIN; capture.len()];
        capture.handle(&all, |l| {
            lines.push((l.pid, l.slot, l.stream, l.text.to_owned()))
        });
        assert_eq!(lines.last().unwrap().3, "three");
        // stdout hit EOF and is closed; stderr's write end was closed by add: EOF too.
        let all = vec![PollFlags::POLLIN; capture.len()];
        capture.handle(&all, |_| {});
        assert_eq!(capture.len(), 0);
    }

    #[test]
    fn splits_overlong_lines_and_never_blocks_on_an_empty_pipe() {
        let pipes = WorkerPipes::new().unwrap();
        let writer = pipes.write[0].try_clone().unwrap();
        let mut capture = Capture::default();
        capture.add(7, 0, pipes);
        let all = vec![PollFlags::POLLIN; capture.len()];
        capture.handle(&all, |_| panic!("nothing written yet"));
        let mut file = std::fs::File::from(writer);
        file.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        let mut sizes = Vec::new();
        capture.handle(&all, |l| sizes.push(l.text.len()));
        assert_eq!(sizes, vec![MAX_LINE]);
        let mut rest = Vec::new();
        capture.drain(|l| rest.push(l.text.len()));
        assert_eq!(rest, vec![10]);
    }
}
