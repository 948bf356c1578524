//! One non-blocking connection server for the master's operators, shared by the control
//! socket and the metrics endpoint: a bounded table of connections, each reading a request,
//! then writing its answer, each with a deadline, all driven by the master's single poll.
//!
//! Bounds: at most `limit` connections are open. When the table is full, the connection that
//! has waited longest without completing a request is dropped to make room, so idle or slow
//! clients can never lock an operator out (the dropped client gets the caller's refusal
//! bytes, in one try); only when every open connection has a request in hand is a newcomer
//! refused with them instead. Nothing here blocks. At
//! most `limit` connections are accepted per wake-up, so a flood cannot hold the loop.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixListener;

use arbiter_core::Moment;
use nix::poll::PollFlags;

/// A listening socket whose connections the server holds.
pub trait Listen: AsFd {
    /// A connection.
    type Stream: Read + Write + AsFd;
    /// Accepts one connection, already non-blocking.
    fn accept_one(&self) -> io::Result<Self::Stream>;
}

impl Listen for UnixListener {
    type Stream = std::os::unix::net::UnixStream;
    fn accept_one(&self) -> io::Result<Self::Stream> {
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }
}

impl Listen for TcpListener {
    type Stream = std::net::TcpStream;
    fn accept_one(&self) -> io::Result<Self::Stream> {
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }
}

/// What a connection waits for on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Reading its request.
    Reading,
    /// Writing its answer; then close, or (`hold`) keep it open without reading.
    Writing {
        /// Keep the connection open once the answer is written.
        hold: bool,
    },
    /// Neither: an order in progress, or an answered connection held open.
    Idle,
    /// Finished: dropped at the next sweep.
    Done,
}

/// What one read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Bytes were added to the input (or nothing more is there for now).
    Again,
    /// The peer closed its end.
    Eof,
    /// The input reached the limit.
    Full,
    /// The connection failed; it is marked done.
    Failed,
}

/// One connection and the caller's state for it.
pub struct Conn<S, T> {
    stream: S,
    /// The bytes read so far.
    pub input: Vec<u8>,
    output: Vec<u8>,
    wire: Wire,
    /// When the connection is dropped or its order failed; `None` while held.
    pub deadline: Option<Moment>,
    since: Moment,
    /// The caller's state.
    pub state: T,
}

impl<S: Read + Write + AsFd, T> Conn<S, T> {
    /// What the connection waits for.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// Reads what the socket has until it would block, the peer closes, or `input` holds
    /// `max` bytes; `found` tells when the input already holds a complete request.
    pub fn fill(&mut self, max: usize, found: impl Fn(&[u8]) -> bool) -> Fill {
        let mut chunk = [0u8; 4096];
        loop {
            if found(&self.input) {
                return Fill::Again;
            }
            if self.input.len() >= max {
                return Fill::Full;
            }
            let room = (max - self.input.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return Fill::Eof,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Fill::Again,
                Err(_) => {
                    self.wire = Wire::Done;
                    return Fill::Failed;
                }
            }
        }
    }

    /// Starts writing `answer`, due by `deadline`; writes what the socket takes now.
    pub fn answer(&mut self, answer: Vec<u8>, hold: bool, deadline: Moment) {
        self.output = answer;
        self.wire = Wire::Writing { hold };
        self.deadline = Some(deadline);
        self.flush();
    }

    /// Waits, neither reading nor writing, until `deadline` (an order in progress).
    pub fn wait(&mut self, deadline: Moment) {
        self.wire = Wire::Idle;
        self.deadline = Some(deadline);
    }

    /// Drops the connection at the next sweep.
    pub fn close(&mut self) {
        self.wire = Wire::Done;
    }

    /// Writes what the socket takes now; once all is written, closes or holds.
    fn flush(&mut self) {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => break,
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.wire = Wire::Done;
                    return;
                }
            }
        }
        if let Wire::Writing { hold } = self.wire {
            if hold {
                self.wire = Wire::Idle;
                self.deadline = None;
            } else {
                self.wire = Wire::Done;
            }
        }
    }
}

/// A listener and its bounded table of connections.
pub struct Server<L: Listen, T> {
    listener: L,
    conns: Vec<Conn<L::Stream, T>>,
    limit: usize,
}

impl<L: Listen, T> Server<L, T> {
    /// Serves `listener` (already non-blocking) with at most `limit` connections.
    pub fn new(listener: L, limit: usize) -> Server<L, T> {
        Server {
            listener,
            conns: Vec::new(),
            limit: limit.max(1),
        }
    }

    /// The listener.
    pub fn listener(&self) -> &L {
        &self.listener
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The fds to poll: the listener, then each connection, in the order
    /// [`Server::handle`] expects their `revents`.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut out = Vec::with_capacity(self.conns.len() + 1);
        out.push((self.listener.as_fd(), PollFlags::POLLIN));
        for conn in &self.conns {
            let flags = match conn.wire {
                Wire::Reading => PollFlags::POLLIN,
                Wire::Writing { .. } => PollFlags::POLLOUT,
                // Only hang-ups, which poll reports unasked.
                Wire::Idle | Wire::Done => PollFlags::empty(),
            };
            out.push((conn.stream.as_fd(), flags));
        }
        out
    }

    /// Acts on what poll reported (`revents` in the order of [`Server::interest`]): calls
    /// `read` for each readable connection, writes pending answers, closes hung-up idle
    /// connections, then accepts newcomers with `open` (their state and first deadline);
    /// when full, makes room as the module doc says, or sends `refusal` and drops the
    /// newcomer.
    pub fn handle(
        &mut self,
        revents: &[PollFlags],
        now: Moment,
        mut read: impl FnMut(&mut Conn<L::Stream, T>),
        open: impl Fn() -> (T, Moment),
        refusal: &[u8],
    ) {
        let hangup = PollFlags::POLLHUP | PollFlags::POLLERR;
        for (conn, &events) in self.conns.iter_mut().zip(revents.iter().skip(1)) {
            if events.is_empty() {
                continue;
            }
            match conn.wire {
                Wire::Reading => read(conn),
                Wire::Writing { .. } if events.contains(PollFlags::POLLOUT) => conn.flush(),
                _ if events.intersects(hangup) => conn.wire = Wire::Done,
                _ => {}
            }
        }
        self.sweep();
        if revents
            .first()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            self.accept(now, open, refusal);
        }
    }

    fn accept(&mut self, now: Moment, open: impl Fn() -> (T, Moment), refusal: &[u8]) {
        for _ in 0..self.limit {
            let mut stream = match self.listener.accept_one() {
                Ok(stream) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.conns.len() >= self.limit {
                // The client that has waited longest without a complete request goes.
                let oldest = self
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.wire == Wire::Reading)
                    .min_by_key(|(_, c)| c.since)
                    .map(|(i, _)| i);
                match oldest {
                    Some(i) => {
                        // It is told why, in one try, as a refused newcomer would be.
                        let mut evicted = self.conns.swap_remove(i);
                        let _ = evicted.stream.write(refusal);
                    }
                    None => {
                        // One try to say why; then the connection is dropped.
                        let _ = stream.write(refusal);
                        continue;
                    }
                }
            }
            let (state, deadline) = open();
            self.conns.push(Conn {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                wire: Wire::Reading,
                deadline: Some(deadline),
                since: now,
                state,
            });
        }
    }

    /// Every open connection, to settle orders and deadlines.
    pub fn conns_mut(&mut self) -> impl Iterator<Item = &mut Conn<L::Stream, T>> {
        self.conns.iter_mut()
    }

    /// Drops the finished connections.
    pub fn sweep(&mut self) {
        self.conns.retain(|c| c.wire != Wire::Done);
    }

    /// The earliest connection deadline.
    pub fn next_deadline(&self) -> Option<Moment> {
        self.conns.iter().filter_map(|c| c.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn server(
        limit: usize,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Server<UnixListener, u32>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        (dir, path, Server::new(listener, limit))
    }

    fn accept_all(server: &mut Server<UnixListener, u32>, now: Moment, tag: u32) {
        server.handle(
            &[PollFlags::POLLIN],
            now,
            |_| {},
            || (tag, now + Duration::from_secs(5)),
            b"full\n",
        );
    }

    #[test]
    fn a_full_table_drops_the_client_idle_longest_to_admit_a_new_one() {
        let (_dir, path, mut server) = server(3);
        let at = |s| Moment::from_origin(Duration::from_secs(s));
        let mut clients = Vec::new();
        for second in 0..3 {
            clients.push(UnixStream::connect(&path).unwrap());
            accept_all(&mut server, at(second), second as u32);
        }
        assert_eq!(server.len(), 3);
        let _newcomer = UnixStream::connect(&path).unwrap();
        accept_all(&mut server, at(10), 10);
        let mut tags: Vec<u32> = server.conns_mut().map(|c| c.state).collect();
        tags.sort();
        assert_eq!(
            tags,
            vec![1, 2, 10],
            "the client accepted first was dropped"
        );
        // The dropped client is told why, then sees the end of its connection.
        clients[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut text = String::new();
        clients[0].read_to_string(&mut text).unwrap();
        assert_eq!(text, "full\n");
    }

    #[test]
    fn with_every_client_answered_but_held_a_newcomer_is_refused() {
        let (_dir, path, mut server) = server(1);
        let _first = UnixStream::connect(&path).unwrap();
        accept_all(&mut server, Moment::ZERO, 1);
        for conn in server.conns_mut() {
            conn.wait(Moment::from_origin(Duration::from_secs(60)));
        }
        let mut second = UnixStream::connect(&path).unwrap();
        accept_all(&mut server, Moment::ZERO, 2);
        assert_eq!(server.len(), 1);
        let mut text = String::new();
        second.read_to_string(&mut text).unwrap();
        assert_eq!(text, "full\n");
    }

    #[test]
    fn fill_stops_at_the_limit_and_at_a_complete_request() {
        let (_dir, path, mut server) = server(1);
        let mut client = UnixStream::connect(&path).unwrap();
        accept_all(&mut server, Moment::ZERO, 0);
        client.write_all(b"abc\ndef").unwrap();
        let conn = server.conns_mut().next().unwrap();
        // Wait for the bytes to arrive: a blocking peek on our side is not possible, so read
        // until the newline is in (bounded).
        let mut outcome = Fill::Again;
        for _ in 0..1000 {
            outcome = conn.fill(64, |input| input.contains(&b'\n'));
            if conn.input.contains(&b'\n') {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(outcome, Fill::Again);
        assert!(conn.input.starts_with(b"abc\n"));
        client.write_all(&[b'x'; 100]).unwrap();
        drop(client);
        let mut seen = Fill::Again;
        for _ in 0..1000 {
            seen = conn.fill(32, |_| false);
            if seen != Fill::Again {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen, Fill::Full);
        assert_eq!(conn.input.len(), 32);
    }
}
