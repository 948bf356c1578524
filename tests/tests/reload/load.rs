//! A small keep-alive HTTP/1.1 load generator for loopback ports.
//!
//! K threads, each with one keep-alive connection doing `GET /` in a loop. A connection the
//! server closes after a complete response (`Connection: close`, or EOF on the next read
//! once a response was complete) is normal: the thread reconnects. Everything else is an
//! error, counted by kind: a refused or failed connect, an EOF or reset in the middle of a
//! response, a non-200, a malformed response, a stall past the read timeout.
//!
//! One case is neither: the keep-alive race. A server that stops gracefully closes its idle
//! keep-alive connections; a request the client wrote at that same instant meets a closed
//! socket (EOF or reset with not one byte of response). The server never saw that request,
//! which is why RFC 9112 section 9.3.1 lets a client retry it, and every HTTP client library
//! does. It is retried once on a fresh connection and counted apart (`idle_retries`); the
//! retry's own failure is an error. A reset or EOF on a *fresh* connection, or after part of a
//! response, is always an error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// No request may stall longer than this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Error samples kept per thread (the counts are complete).
const SAMPLES: usize = 5;

/// What the load threads saw, together.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Requests answered 200.
    pub served: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// A few errors in full.
    pub samples: Vec<String>,
    /// The slowest request (including a keep-alive-race retry).
    pub worst: Duration,
    /// Requests retried after the keep-alive race (see the module doc).
    pub idle_retries: u64,
    /// Connections opened.
    pub connects: u64,
    /// Worker pids that answered.
    pub pids: BTreeSet<i32>,
    /// How long the load ran.
    pub ran: Duration,
}

impl LoadReport {
    /// The number of errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// One line for logs and the results file.
    pub fn summary(&self) -> String {
        format!(
            "served={} errors={} {:?} worst_latency_ms={:.1} idle_retries={} connects={} ran_s={:.1}",
            self.served,
            self.error_count(),
            self.errors,
            self.worst.as_secs_f64() * 1000.0,
            self.idle_retries,
            self.connects,
            self.ran.as_secs_f64()
        )
    }

    fn merge(&mut self, other: LoadReport) {
        self.served += other.served;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.samples.extend(other.samples);
        self.worst = self.worst.max(other.worst);
        self.idle_retries += other.idle_retries;
        self.connects += other.connects;
        self.pids.extend(other.pids);
    }
}

/// Running load threads; stopped (and joined) by [`Load::finish`] or on drop.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// The worker pids that answered so far, shared with the client threads.
    served: Arc<Mutex<BTreeSet<i32>>>,
    threads: Vec<JoinHandle<LoadReport>>,
    started: Instant,
}

impl Load {
    /// Starts `threads` keep-alive clients on 127.0.0.1:`port`; each stops by itself after
    /// `limit` at the latest.
    pub fn start(port: u16, threads: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        let served = Arc::new(Mutex::new(BTreeSet::new()));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let served = served.clone();
                std::thread::spawn(move || client(addr, &stop, &served, started + limit))
            })
            .collect();
        Load {
            stop,
            served,
            threads,
            started,
        }
    }

    /// Waits up to `bound` until one of `pids` has answered the load; whether one did.
    pub fn wait_served_by_any(&self, pids: &[i32], bound: Duration) -> bool {
        arbiter_tests::wait_until(bound, || {
            let served = self.served.lock().unwrap_or_else(|e| e.into_inner());
            pids.iter().any(|pid| served.contains(pid))
        })
    }

    /// Stops the threads and returns what they saw.
    pub fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for thread in self.threads.drain(..) {
            report.merge(thread.join().expect("load thread"));
        }
        report.ran = self.started.elapsed();
        report
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// How one request went.
enum Outcome {
    /// A complete 200; whether the connection stays open.
    Ok { keep: bool, pid: Option<i32> },
    /// Closed with not one byte of response on a reused connection: the keep-alive race.
    IdleClosed,
    /// A real failure: kind and detail.
    Failed(String, String),
}

/// One keep-alive connection and its read buffer.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    used: bool,
}

fn client(
    addr: SocketAddr,
    stop: &AtomicBool,
    served: &Mutex<BTreeSet<i32>>,
    deadline: Instant,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut connection: Option<Connection> = None;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let started = Instant::now();
        let mut outcome = request(addr, &mut connection, &mut report);
        if matches!(outcome, Outcome::IdleClosed) {
            report.idle_retries += 1;
            connection = None;
            outcome = match request(addr, &mut connection, &mut report) {
                Outcome::IdleClosed => Outcome::Failed(
                    "closed before any response (fresh connection)".into(),
                    "retry after the keep-alive race".into(),
                ),
                other => other,
            };
        }
        report.worst = report.worst.max(started.elapsed());
        match outcome {
            Outcome::Ok { keep, pid } => {
                report.served += 1;
                if let Some(pid) = pid.filter(|&pid| report.pids.insert(pid)) {
                    served.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
                }
                if !keep {
                    connection = None;
                }
            }
            Outcome::IdleClosed => unreachable!("retried above"),
            Outcome::Failed(kind, detail) => {
                *report.errors.entry(kind.clone()).or_default() += 1;
                if report.samples.len() < SAMPLES {
                    report.samples.push(format!("{kind}: {detail}"));
                }
                connection = None;
                // Do not spin on a port that refuses: the test sees the count either way.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    report
}

fn request(
    addr: SocketAddr,
    connection: &mut Option<Connection>,
    report: &mut LoadReport,
) -> Outcome {
    if connection.is_none() {
        match connect(addr) {
            Ok(stream) => {
                report.connects += 1;
                *connection = Some(Connection {
                    stream,
                    buffer: Vec::with_capacity(1024),
                    used: false,
                });
            }
            Err(e) => return Outcome::Failed(format!("connect: {}", kind(&e)), e.to_string()),
        }
    }
    let conn = connection.as_mut().expect("connected above");
    let reused = conn.used;
    conn.used = true;
    let race = |e: &io::Error| {
        reused
            && matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )
    };
    if let Err(e) = conn
        .stream
        .write_all(b"GET / HTTP/1.1\r\nHost: load\r\n\r\n")
    {
        if race(&e) {
            return Outcome::IdleClosed;
        }
        return Outcome::Failed(format!("write: {}", kind(&e)), e.to_string());
    }
    conn.buffer.clear();
    loop {
        if let Some(outcome) = parse(&conn.buffer) {
            return outcome;
        }
        let mut chunk = [0u8; 4096];
        match conn.stream.read(&mut chunk) {
            Ok(0) if conn.buffer.is_empty() && reused => return Outcome::IdleClosed,
            Ok(0) if conn.buffer.is_empty() => {
                return Outcome::Failed(
                    "eof before any response (fresh connection)".into(),
                    "no bytes".into(),
                )
            }
            Ok(0) => {
                return Outcome::Failed(
                    "eof in the middle of a response".into(),
                    String::from_utf8_lossy(&conn.buffer).into_owned(),
                )
            }
            Ok(n) => conn.buffer.extend_from_slice(&chunk[..n]),
            Err(e) if conn.buffer.is_empty() && race(&e) => return Outcome::IdleClosed,
            Err(e) => {
                let place = if conn.buffer.is_empty() {
                    "before any response"
                } else {
                    "in the middle of a response"
                };
                return Outcome::Failed(format!("read {place}: {}", kind(&e)), e.to_string());
            }
        }
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A complete response in `raw`, or `None` while more bytes are needed.
fn parse(raw: &[u8]) -> Option<Outcome> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status: Option<u16> = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok());
    let mut length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"));
        }
    }
    let Some(length) = length else {
        return Some(Outcome::Failed(
            "response without content-length".into(),
            head.into_owned(),
        ));
    };
    let body = raw.get(end + 4..end + 4 + length)?;
    if raw.len() > end + 4 + length {
        return Some(Outcome::Failed(
            "bytes after the response".into(),
            String::from_utf8_lossy(raw).into_owned(),
        ));
    }
    match status {
        Some(200) => Some(Outcome::Ok {
            keep: !close,
            pid: body_pid(body),
        }),
        Some(code) => Some(Outcome::Failed(
            format!("status {code}"),
            String::from_utf8_lossy(raw).into_owned(),
        )),
        None => Some(Outcome::Failed("bad status line".into(), head.into_owned())),
    }
}

/// The `"pid":N` of the built-in worker's identity JSON.
fn body_pid(body: &[u8]) -> Option<i32> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find("\"pid\"")? + 5..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_status_length_and_close() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"pid\":42}\n";
        match parse(raw) {
            Some(Outcome::Ok { keep, pid }) => {
                assert!(!keep);
                assert_eq!(pid, Some(42));
            }
            _ => panic!("a complete 200"),
        }
        assert!(parse(&raw[..raw.len() - 1]).is_none(), "body incomplete");
        let bad = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(parse(bad), Some(Outcome::Failed(kind, _)) if kind == "status 503"));
    }
}
