//! A small HTTP/1.1 load generator on loopback: a few threads, each with one keep-alive
//! connection (reopened when the server closes it, as gunicorn's sync worker does after every
//! response), counting successes, errors and the worst latency, and noting which worker pids
//! answered (`"pid":N` in the body).
//!
//! A request that gets no byte back on a reused keep-alive connection (the server closed it
//! while idle) is retried once on a new connection, as HTTP clients do for idempotent requests;
//! such retries are counted apart. Every request is bounded by a 10 s timeout.

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
}

/// A running load: threads hitting `GET /` until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    pids: Arc<Mutex<HashSet<u32>>>,
    threads: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    /// Starts `threads` client threads against 127.0.0.1:`port`.
    pub fn start(port: u16, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let pids = Arc::new(Mutex::new(HashSet::new()));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let pids = Arc::clone(&pids);
                std::thread::spawn(move || client(port, &stop, &pids))
            })
            .collect();
        Load {
            stop,
            pids,
            threads,
        }
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
        }
        total
    }
}

/// How one request ended.
enum Outcome {
    /// 200, with the pid in the body if any, and whether the server keeps the connection.
    Ok(Option<u32>, bool),
    /// Nothing came back on a reused connection: the server closed it while idle.
    StaleConnection,
    /// Anything else.
    Failed,
}

fn client(port: u16, stop: &AtomicBool, pids: &Mutex<HashSet<u32>>) -> LoadReport {
    let mut report = LoadReport::default();
    let mut connection: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let mut outcome = request(port, &mut connection);
        if matches!(outcome, Outcome::StaleConnection) {
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
            Outcome::StaleConnection | Outcome::Failed => {
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
        let Ok(stream) =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), REQUEST_TIMEOUT)
        else {
            return Outcome::Failed;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
        *connection = Some(stream);
    }
    let Some(stream) = connection.as_mut() else {
        return Outcome::Failed;
    };
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        *connection = None;
        return if reused {
            Outcome::StaleConnection
        } else {
            Outcome::Failed
        };
    }
    match read_response(stream) {
        Ok(outcome) => outcome,
        Err(got_bytes) => {
            *connection = None;
            if reused && !got_bytes {
                Outcome::StaleConnection
            } else {
                Outcome::Failed
            }
        }
    }
}

/// Reads one response; `Err(true)` when it broke off after some bytes, `Err(false)` before any.
fn read_response(stream: &mut TcpStream) -> Result<Outcome, bool> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .ok_or(true)?;
            let body_start = end + 4;
            while buffer.len() < body_start + length {
                let n = read_some(stream, &mut chunk).map_err(|_| true)?;
                buffer.extend_from_slice(&chunk[..n]);
            }
            let status_ok = head.split_whitespace().nth(1) == Some("200");
            if !status_ok {
                return Ok(Outcome::Failed);
            }
            let keep = header(&head, "connection").is_none_or(|v| v != "close");
            let body = String::from_utf8_lossy(&buffer[body_start..body_start + length]);
            return Ok(Outcome::Ok(pid_in(&body), keep));
        }
        let n = read_some(stream, &mut chunk).map_err(|_| !buffer.is_empty())?;
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn read_some(stream: &mut TcpStream, chunk: &mut [u8]) -> Result<usize, ()> {
    loop {
        match stream.read(chunk) {
            Ok(0) => return Err(()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
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
        assert_eq!(seen, HashSet::from([42]));
    }
}
