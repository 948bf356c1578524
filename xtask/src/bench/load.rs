//! A small HTTP/1.1 load generator on loopback: a few threads, each with one keep-alive
//! connection (reopened when the server closes it, as gunicorn's sync worker does after every
//! response), counting successes, errors and the worst latency, and noting which worker pids
//! answered (`"pid":N` in the body).
//!
//! A request that gets no byte back on a reused keep-alive connection (the server closed it
//! while idle) is retried once on a new connection, as HTTP clients do for idempotent requests;
//! such retries are counted apart. Every request is bounded by a 10 s timeout. Each failed
//! request is kept with when and how it failed, for the scenario to say what was lost.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run of the load generator saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (refused, reset, timed out, non-200).
    pub errors: u64,
    /// Requests retried once on a new connection after an idle keep-alive close.
    pub retries: u64,
    /// The worst latency of a request, connection included.
    pub max_latency: Duration,
    /// Every failed request, in no particular order.
    pub failures: Vec<Failure>,
}

/// One failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// When it failed, since the load started.
    pub at: Duration,
    /// How: "reset before any byte on a new connection", "timed out", "status 503", ...
    pub what: String,
    /// It was the retry of a request whose reused connection had been closed while idle.
    pub retried: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {:.3} s: {}", self.at.as_secs_f64(), self.what)?;
        if self.retried {
            write!(
                f,
                " (the retry of a request on an idle keep-alive connection closed by the server)"
            )?;
        }
        Ok(())
    }
}

/// A running load: threads hitting `GET /` until [`Load::finish`].
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    pids: Arc<Mutex<HashSet<u32>>>,
    threads: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    /// Starts `threads` client threads against 127.0.0.1:`port`.
    pub fn start(port: u16, threads: usize) -> Load {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let pids = Arc::new(Mutex::new(HashSet::new()));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let pids = Arc::clone(&pids);
                std::thread::spawn(move || client(port, started, &stop, &pids))
            })
            .collect();
        Load {
            started,
            stop,
            pids,
            threads,
        }
    }

    /// The time since the load started (what [`Failure::at`] counts from).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The worker pids that have answered so far.
    pub fn seen_pids(&self) -> HashSet<u32> {
        self.pids.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Stops the threads and sums what they saw.
    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for thread in self.threads {
            let one = thread.join().unwrap_or_default();
            total.ok += one.ok;
            total.errors += one.errors;
            total.retries += one.retries;
            total.max_latency = total.max_latency.max(one.max_latency);
            total.failures.extend(one.failures);
        }
        total.failures.sort_by_key(|f| f.at);
        total
    }
}

/// How one request ended.
enum Outcome {
    /// 200, with the pid in the body if any, and whether the server keeps the connection.
    Ok(Option<u32>, bool),
    /// Nothing came back on a reused connection: the server closed it while idle.
    StaleConnection,
    /// Anything else, and how.
    Failed(String),
}

fn client(
    port: u16,
    started: Instant,
    stop: &AtomicBool,
    pids: &Mutex<HashSet<u32>>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut connection: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let mut outcome = request(port, &mut connection);
        let retried = matches!(outcome, Outcome::StaleConnection);
        if retried {
            report.retries += 1;
            outcome = request(port, &mut connection);
        }
        let latency = start.elapsed();
        match outcome {
            Outcome::Ok(pid, keep) => {
                report.ok += 1;
                report.max_latency = report.max_latency.max(latency);
                if let (Some(pid), Ok(mut seen)) = (pid, pids.lock()) {
                    seen.insert(pid);
                }
                if !keep {
                    connection = None;
                }
            }
            Outcome::StaleConnection | Outcome::Failed(_) => {
                let what = match outcome {
                    Outcome::Failed(what) => what,
                    _ => "closed before any byte, on a reused connection, twice".to_owned(),
                };
                report.failures.push(Failure {
                    at: started.elapsed(),
                    what,
                    retried,
                });
                report.errors += 1;
                report.max_latency = report.max_latency.max(latency);
                connection = None;
                // Do not spin on a refused port.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    report
}

/// One `GET /` on `connection`, opening one when there is none.
fn request(port: u16, connection: &mut Option<TcpStream>) -> Outcome {
    let reused = connection.is_some();
    if connection.is_none() {
        let stream =
            match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), REQUEST_TIMEOUT) {
                Ok(stream) => stream,
                Err(e) => return Outcome::Failed(format!("connect: {}", kind(&e))),
            };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
        *connection = Some(stream);
    }
    let Some(stream) = connection.as_mut() else {
        return Outcome::Failed("no connection".to_owned());
    };
    if let Err(e) = stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") {
        *connection = None;
        return if reused {
            Outcome::StaleConnection
        } else {
            Outcome::Failed(format!("write on a new connection: {}", kind(&e)))
        };
    }
    match read_response(stream) {
        Ok(outcome) => outcome,
        Err(broke) => {
            *connection = None;
            match broke {
                Broke::BeforeAnyByte(_) if reused => Outcome::StaleConnection,
                Broke::BeforeAnyByte(how) => {
                    Outcome::Failed(format!("{how} before any byte, on a new connection"))
                }
                Broke::MidResponse(how) => Outcome::Failed(format!("{how} mid-response")),
            }
        }
    }
}

/// How reading a response broke off, and whether any byte of it had come.
enum Broke {
    BeforeAnyByte(&'static str),
    MidResponse(&'static str),
}

/// An I/O error in a word or two.
fn kind(error: &std::io::Error) -> &'static str {
    match error.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::ConnectionReset => "reset",
        ErrorKind::ConnectionAborted => "aborted",
        ErrorKind::BrokenPipe => "broken pipe",
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timed out",
        _ => "other error",
    }
}

/// Reads one response, or says how and when it broke off.
fn read_response(stream: &mut TcpStream) -> Result<Outcome, Broke> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .ok_or(Broke::MidResponse("no Content-Length"))?;
            let body_start = end + 4;
            while buffer.len() < body_start + length {
                let n = read_some(stream, &mut chunk).map_err(Broke::MidResponse)?;
                buffer.extend_from_slice(&chunk[..n]);
            }
            let status_ok = head.split_whitespace().nth(1) == Some("200");
            if !status_ok {
                let status = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
                return Ok(Outcome::Failed(format!("status {status}")));
            }
            let keep = header(&head, "connection").is_none_or(|v| v != "close");
            let body = String::from_utf8_lossy(&buffer[body_start..body_start + length]);
            return Ok(Outcome::Ok(pid_in(&body), keep));
        }
        let n = read_some(stream, &mut chunk).map_err(|how| {
            if buffer.is_empty() {
                Broke::BeforeAnyByte(how)
            } else {
                Broke::MidResponse(how)
            }
        })?;
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Reads some bytes; how it failed ("closed", "reset", "timed out", ...) otherwise.
fn read_some(stream: &mut TcpStream, chunk: &mut [u8]) -> Result<usize, &'static str> {
    loop {
        match stream.read(chunk) {
            Ok(0) => return Err("closed"),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(kind(&e)),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in a lower-cased response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then_some(value.trim())
    })
}

/// The `"pid":N` of a JSON body.
pub fn pid_in(body: &str) -> Option<u32> {
    let rest = &body[body.find("\"pid\":")? + 6..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn finds_the_pid_in_a_body() {
        assert_eq!(pid_in("{\"pid\":123,\"id\":4}"), Some(123));
        assert_eq!(pid_in("{\"pid\": 77}\n"), Some(77));
        assert_eq!(pid_in("{\"id\":4}"), None);
    }

    /// A one-connection-per-request server answering with its "pid" 42, then closing.
    #[test]
    fn counts_answers_and_errors_against_a_closing_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let mut stream = stream.unwrap();
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head);
                let response = if n % 2 == 0 {
                    "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"pid\":42}\n"
                } else {
                    "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = stream.write_all(response.as_bytes());
                if n == 9 {
                    return;
                }
            }
        });
        let load = Load::start(port, 1);
        let start = Instant::now();
        while !served.is_finished() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = load.seen_pids();
        let report = load.finish();
        assert_eq!(report.ok, 5);
        assert!(report.errors >= 5, "{report:?}");
        assert_eq!(report.failures.len() as u64, report.errors, "{report:?}");
        assert!(
            report.failures[..5]
                .iter()
                .all(|f| f.what == "status 500" && !f.retried),
            "{report:?}"
        );
        assert_eq!(seen, HashSet::from([42]));
    }

    /// A server that takes each connection and closes it with the request unread (the kernel
    /// then resets it): each is a failed request, said as such, never retried.
    #[test]
    fn a_connection_closed_with_its_request_unread_is_a_reset_on_a_new_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = std::thread::spawn(move || {
            for stream in listener.incoming().take(3) {
                let stream = stream.unwrap();
                // Wait for the request, then close with it unread.
                let _ = stream.peek(&mut [0u8; 1]);
                drop(stream);
            }
        });
        let load = Load::start(port, 1);
        let start = Instant::now();
        while !served.is_finished() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let report = load.finish();
        assert_eq!(report.ok, 0, "{report:?}");
        let resets: Vec<&Failure> = report
            .failures
            .iter()
            .filter(|f| f.what == "reset before any byte, on a new connection")
            .collect();
        assert_eq!(resets.len(), 3, "{report:?}");
        assert!(resets.iter().all(|f| !f.retried), "{report:?}");
        assert_eq!(report.retries, 0, "{report:?}");
    }
}
