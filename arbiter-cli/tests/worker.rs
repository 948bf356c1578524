//! Real-process tests of the built-in worker: `arbiter worker` with a listener
//! at fd 3, a `NOTIFY_SOCKET` datagram socket and a heartbeat file in a temp dir.
//!
//! Every child is killed by pid and reaped when its guard drops; every wait is bounded.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long any single wait in these tests may take: a bound on a wait for a state, generous
/// for a loaded 2-core machine (one left a process unscheduled for 6 s at load average 190).
const PATIENCE: Duration = Duration::from_secs(30);

/// How long the worker's heartbeats (every 50 ms here) must stay away to count as stopped.
const QUIET: Duration = Duration::from_millis(400);

/// The `arbiter` binary, built by cargo for this integration test with the features of the
/// build that runs it.
fn arbiter() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_arbiter"))
}

/// Moves `from` to `to` in a child between fork and exec (async-signal-safe, no allocation).
fn move_fd(from: RawFd, to: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 on descriptors the parent keeps open for the child's whole start; it takes no
    // pointers and is async-signal-safe. dup2 clears close-on-exec on `to`.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Copies `fd` to a number at or above 10, so that moving several fds into 3.. never clobbers
/// one that is still to be moved.
fn park_fd(fd: RawFd) -> std::io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an int argument, no pointers; async-signal-safe.
    let parked = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if parked < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(parked)
}

/// The listener handed to the worker at fd 3.
enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A temp dir with a notify socket, a listener and a heartbeat file.
struct Fixture {
    dir: tempfile::TempDir,
    notify: UnixDatagram,
    socket: Socket,
    heartbeat: File,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_socket(|_| Socket::Tcp(TcpListener::bind("127.0.0.1:0").unwrap()))
    }

    fn with_socket(make: impl FnOnce(&Path) -> Socket) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let notify = UnixDatagram::bind(dir.path().join("notify")).unwrap();
        let socket = make(dir.path());
        let heartbeat = File::create(dir.path().join("heartbeat")).unwrap();
        Fixture {
            dir,
            notify,
            socket,
            heartbeat,
        }
    }

    /// `arbiter worker ARGS` with the protocol environment (`LISTEN_FDS=1`, heartbeat at fd 4).
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(arbiter());
        command
            .arg("worker")
            .args(args)
            .env("LISTEN_FDS", "1")
            .env("NOTIFY_SOCKET", self.dir.path().join("notify"))
            .env("ARBITER_HEARTBEAT_FD", "4")
            .env("ARBITER_WORKER_ID", "4")
            .env("ARBITER_WORKER_SLOT", "0")
            .env("CUDA_VISIBLE_DEVICES", "0,1")
            .env("WATCHDOG_USEC", "200000")
            .env("PROBE", "probe value")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_PID")
            .env_remove("ARBITER_GPU_ENV")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let listener = match &self.socket {
            Socket::Tcp(listener) => listener.as_raw_fd(),
            Socket::Unix(listener, _) => listener.as_raw_fd(),
        };
        let heartbeat = self.heartbeat.as_raw_fd();
        let pre_exec = move || {
            let (listener, heartbeat) = (park_fd(listener)?, park_fd(heartbeat)?);
            move_fd(listener, 3)?;
            move_fd(heartbeat, 4)
        };
        // SAFETY: the closure runs in the child between fork and exec; it only calls fcntl and
        // dup2 (async-signal-safe, no allocation, no locks) on fds the parent holds open.
        unsafe { command.pre_exec(pre_exec) };
        command
    }

    fn spawn(&self, args: &[&str]) -> Worker {
        Worker::spawn(self.command(args))
    }

    fn port(&self) -> u16 {
        match &self.socket {
            Socket::Tcp(listener) => listener.local_addr().unwrap().port(),
            Socket::Unix(..) => panic!("not a TCP fixture"),
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port())).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
    }

    /// The next notify message, waiting at most `wait`.
    fn message(&self, wait: Duration) -> Option<String> {
        self.notify.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 512];
        let n = self.notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for `wanted`, skipping other messages (WATCHDOG=1); None if it does not come.
    fn wait_for(&self, wanted: &str, wait: Duration) -> Option<Instant> {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.message(left.max(Duration::from_millis(1))) {
                Some(message) if message == wanted => return Some(Instant::now()),
                Some(_) => {}
                None => return None,
            }
        }
        None
    }

    /// The heartbeat file's ctime, in nanoseconds.
    fn heartbeat_ctime(&self) -> i128 {
        let meta = std::fs::metadata(self.dir.path().join("heartbeat")).unwrap();
        i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec())
    }

    /// Waits (bounded) until the heartbeat file's ctime differs from `before`; whether it did.
    fn wait_heartbeat_after(&self, before: i128) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self.heartbeat_ctime() != before {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Waits (bounded) until the heartbeat file's ctime has stayed the same for `QUIET`; that
    /// ctime, or `None` if it kept moving for `PATIENCE`.
    fn wait_heartbeats_stop(&self) -> Option<i128> {
        let deadline = Instant::now() + PATIENCE;
        let (mut last, mut since) = (self.heartbeat_ctime(), Instant::now());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            let now = self.heartbeat_ctime();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= QUIET {
                return Some(last);
            }
        }
        None
    }

    /// Waits (bounded) until no notify message has come for `QUIET`, dropping what comes;
    /// whether that quiet came within `PATIENCE`.
    fn wait_messages_stop(&self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self.message(QUIET).is_none() {
                return true;
            }
        }
        false
    }
}

/// A running worker; killed by pid and reaped when dropped.
struct Worker {
    child: Child,
    started: Instant,
}

impl Worker {
    fn spawn(mut command: Command) -> Worker {
        let started = Instant::now();
        let child = command.spawn().expect("spawn arbiter worker");
        Worker { child, started }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many fds the worker has open (an accepted connection is one more).
    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    /// Waits (bounded) until the worker has more than `before` fds open; whether it did.
    fn wait_fds_above(&self, before: usize) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self.fd_count() > before {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// Waits (bounded) for the worker to exit.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "worker did not exit in time");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut text).unwrap();
        }
        text
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// One parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn read_response(reader: &mut impl BufRead) -> Response {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut response = Response {
        status,
        headers,
        body: String::new(),
    };
    let length: usize = response.header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    response.body = String::from_utf8(body).unwrap();
    response
}

fn get(stream: &TcpStream, path: &str) -> Response {
    (&*stream)
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .unwrap();
    read_response(&mut BufReader::new(stream))
}

fn at_eof(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!((&*stream).read(&mut byte), Ok(0))
}

#[test]
fn ready_then_serves_its_identity_with_keep_alive() {
    let fixture = Fixture::new();
    let worker = fixture.spawn(&[]);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    let stream = fixture.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for _ in 0..100 {
        (&stream).write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let response = read_response(&mut reader);
        assert_eq!(response.status, 200);
        let identity: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(identity["pid"], worker.pid());
        assert_eq!(identity["id"], 4);
        assert_eq!(identity["slot"], 0);
        assert_eq!(identity["gpu"], "0,1");
        assert_eq!(identity["server"], arbiter_cli::worker::http::SERVER);
    }
    let env = get(&stream, "/env/PROBE");
    assert_eq!((env.status, env.body.as_str()), (200, "probe value"));
    assert_eq!(get(&stream, "/env/NO_SUCH_VARIABLE_HERE").status, 404);
    assert_eq!(get(&stream, "/nowhere").status, 404);
}

#[test]
fn pipelined_requests_with_bodies_and_split_writes_are_answered_in_order() {
    let fixture = Fixture::new();
    let _worker = fixture.spawn(&[]);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    let stream = fixture.connect();
    (&stream)
        .write_all(
            b"POST /env/PROBE HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /nope HTTP/1.1\r\n\r\nGET /sle",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    (&stream)
        .write_all(b"ep/1 HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let first = read_response(&mut reader);
    assert_eq!((first.status, first.body.as_str()), (200, "probe value"));
    assert_eq!(read_response(&mut reader).status, 404);
    let last = read_response(&mut reader);
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(at_eof(&stream), "Connection: close must close");
}

#[test]
fn a_sleeping_response_does_not_hold_up_other_connections() {
    let fixture = Fixture::new();
    let _worker = fixture.spawn(&[]);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    let slow = fixture.connect();
    (&slow)
        .write_all(b"GET /sleep/3000 HTTP/1.1\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let fast = fixture.connect();
    assert_eq!(get(&fast, "/").status, 200);
    // Answered while the slow one is still sleeping (a bound of 800 ms on the fast answer
    // measured the machine's load).
    slow.set_nonblocking(true).unwrap();
    let mut early = [0u8; 64];
    assert!(
        matches!((&slow).read(&mut early), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow response came before the fast one ({:?})",
        started.elapsed()
    );
    slow.set_nonblocking(false).unwrap();
    let response = read_response(&mut BufReader::new(&slow));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "{\"slept_ms\":3000}\n");
    assert!(started.elapsed() >= Duration::from_millis(3000));
}

#[test]
fn term_finishes_requests_in_flight_then_exits_0() {
    let fixture = Fixture::new();
    let mut worker = fixture.spawn(&[]);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    let idle = fixture.connect();
    assert_eq!(get(&idle, "/").status, 200);
    let talker = fixture.connect();
    assert_eq!(get(&talker, "/").status, 200);
    let open = worker.fd_count();
    let busy = fixture.connect();
    // Sleeps far longer than the idle grace (500 ms): an idle connection closed only at the
    // worker's exit is told from one closed by the grace by the state below, not by a time.
    (&busy)
        .write_all(b"GET /sleep/10000 HTTP/1.1\r\n\r\n")
        .unwrap();
    // Until the worker has accepted it (a fixed 50 ms pause could leave it in the backlog at
    // the TERM on a loaded machine, where nothing would answer it).
    assert!(worker.wait_fds_above(open), "busy connection not accepted");
    worker.signal(Signal::SIGTERM);
    assert!(fixture.wait_for("STOPPING=1", PATIENCE).is_some());
    let stopping = Instant::now();
    // A keep-alive client that sends its next request during the idle grace is answered
    // (and told to close) rather than finding its connection closed under it.
    let late = get(&talker, "/");
    assert_eq!(late.status, 200);
    assert_eq!(late.header("connection"), Some("close"));
    idle.set_read_timeout(Some(PATIENCE)).unwrap();
    assert!(
        at_eof(&idle),
        "an idle keep-alive connection closes after the grace"
    );
    let waited = stopping.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "idle connection closed {waited:?} after STOPPING=1, within the grace"
    );
    // Closed by the grace, not at the exit: the busy response is still being slept on (a
    // bound of 3 s on `waited` measured the machine's load).
    busy.set_nonblocking(true).unwrap();
    let mut early = [0u8; 64];
    assert!(
        matches!((&busy).read(&mut early), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the idle connection closed only after the busy response ({waited:?})"
    );
    busy.set_nonblocking(false).unwrap();
    let response = read_response(&mut BufReader::new(&busy));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(worker.wait().code(), Some(0));
    assert!(
        TcpStream::connect(("127.0.0.1", fixture.port()))
            .and_then(|stream| {
                stream.set_read_timeout(Some(Duration::from_millis(200)))?;
                (&stream).write_all(b"GET / HTTP/1.1\r\n\r\n")?;
                let mut byte = [0u8; 1];
                (&stream).read(&mut byte)
            })
            .is_err(),
        "nothing serves after the worker is gone"
    );
}

#[test]
fn int_and_quit_exit_0_at_once() {
    for signal in [Signal::SIGINT, Signal::SIGQUIT] {
        let fixture = Fixture::new();
        let mut worker = fixture.spawn(&[]);
        assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
        let open = worker.fd_count();
        let busy = fixture.connect();
        (&busy)
            .write_all(b"GET /sleep/60000 HTTP/1.1\r\n\r\n")
            .unwrap();
        // In flight: the worker has accepted it (a fixed 50 ms pause raced a loaded machine).
        assert!(worker.wait_fds_above(open), "busy connection not accepted");
        let sent = Instant::now();
        worker.signal(signal);
        assert_eq!(worker.wait().code(), Some(0), "{signal}");
        // At once: it did not wait for the request in flight. The bound is half that request's
        // 60 s, not a speed target (a 2 s bound measured the machine's load).
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(30), "{signal}: {took:?}");
    }
}

#[test]
fn ignore_term_keeps_serving_after_term() {
    let fixture = Fixture::new();
    let worker = fixture.spawn(&["--ignore-term"]);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    worker.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&fixture.connect(), "/").status, 200);
}

#[test]
fn boot_exit_3_exits_without_ready() {
    let fixture = Fixture::new();
    let mut worker = fixture.spawn(&["--boot-exit", "3"]);
    assert_eq!(worker.wait().code(), Some(3));
    assert_eq!(fixture.message(Duration::from_millis(100)), None);
}

#[test]
fn missing_listen_fds_is_a_boot_error() {
    let fixture = Fixture::new();
    let mut command = fixture.command(&[]);
    command.env_remove("LISTEN_FDS");
    let mut worker = Worker::spawn(command);
    assert_eq!(worker.wait().code(), Some(3));
    assert!(worker
        .stderr()
        .contains("arbiter worker: no listeners: set LISTEN_FDS"));
    assert_eq!(fixture.message(Duration::from_millis(100)), None);
}

#[test]
fn a_foreign_listen_pid_is_a_boot_error() {
    let fixture = Fixture::new();
    let mut command = fixture.command(&[]);
    command.env("LISTEN_PID", "1");
    let mut worker = Worker::spawn(command);
    assert_eq!(worker.wait().code(), Some(3));
    assert!(worker.stderr().contains("LISTEN_PID is 1"));
}

#[test]
fn ready_delay_serves_at_once_but_delays_ready() {
    let fixture = Fixture::new();
    let worker = fixture.spawn(&["--ready-delay", "300ms"]);
    // The listener is bound already: the request waits in its queue until the worker serves.
    let response = get(&fixture.connect(), "/");
    let answered = worker.started.elapsed();
    assert_eq!(response.status, 200);
    if answered < Duration::from_millis(300) {
        let early: Vec<String> =
            std::iter::from_fn(|| fixture.message(Duration::from_millis(1))).collect();
        assert!(
            !early.iter().any(|message| message == "READY=1"),
            "READY=1 came before the delay: {early:?}"
        );
    }
    let ready = fixture.wait_for("READY=1", PATIENCE).expect("READY=1");
    assert!(ready - worker.started >= Duration::from_millis(300));
}

#[test]
fn hang_stops_heartbeats_and_watchdog() {
    let fixture = Fixture::new();
    let _worker = fixture.spawn(&[]);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    // WATCHDOG_USEC=200000: a beat every 50 ms, on the heartbeat file only (it does not wake
    // the master, as WATCHDOG=1 would).
    let before = fixture.heartbeat_ctime();
    assert!(
        fixture.wait_heartbeat_after(before),
        "the heartbeat file's ctime moves"
    );
    assert_eq!(
        fixture.wait_for("WATCHDOG=1", Duration::from_millis(200)),
        None,
        "no WATCHDOG=1 while the heartbeat file is there"
    );

    let stream = fixture.connect();
    (&stream).write_all(b"GET /hang HTTP/1.1\r\n\r\n").unwrap();
    // Until the worker has taken the request (a fixed 100 ms pause raced a loaded machine):
    // its heartbeats stop, for good.
    let hung = fixture
        .wait_heartbeats_stop()
        .expect("the heartbeats stop after /hang");
    // Drain what was sent before the hang.
    std::iter::from_fn(|| fixture.message(Duration::from_millis(1))).for_each(drop);
    std::thread::sleep(QUIET);
    assert_eq!(hung, fixture.heartbeat_ctime(), "no heartbeat after /hang");
    assert_eq!(
        fixture.message(Duration::from_millis(1)),
        None,
        "no WATCHDOG=1"
    );
    let other = fixture.connect();
    other
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (&other).write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut byte = [0u8; 1];
    assert!(
        (&other).read(&mut byte).is_err(),
        "a hung worker serves nothing"
    );
}

#[test]
fn without_a_heartbeat_file_the_worker_sends_watchdog_until_it_hangs() {
    let fixture = Fixture::new();
    let mut command = fixture.command(&[]);
    command.env_remove("ARBITER_HEARTBEAT_FD");
    let _worker = Worker::spawn(command);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    assert!(fixture.wait_for("WATCHDOG=1", PATIENCE).is_some());
    assert!(fixture.wait_for("WATCHDOG=1", PATIENCE).is_some());
    let stream = fixture.connect();
    (&stream).write_all(b"GET /hang HTTP/1.1\r\n\r\n").unwrap();
    // Until the worker has taken the request (a fixed 100 ms pause raced a loaded machine):
    // its WATCHDOG=1 stop, for good.
    assert!(fixture.wait_messages_stop(), "WATCHDOG=1 stop after /hang");
    assert_eq!(
        fixture.wait_for("WATCHDOG=1", QUIET),
        None,
        "no WATCHDOG=1 after /hang"
    );
}

#[test]
fn exit_and_crash_routes_end_the_worker_with_their_code() {
    for (path, code) in [("/exit/7", 7), ("/crash", 1)] {
        let fixture = Fixture::new();
        let mut worker = fixture.spawn(&[]);
        assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
        let stream = fixture.connect();
        (&stream)
            .write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap();
        let status = worker.wait();
        assert_eq!(status.code(), Some(code), "{path}: {:?}", status.signal());
    }
}

#[test]
fn crash_after_exits_1() {
    let fixture = Fixture::new();
    let mut worker = fixture.spawn(&["--crash-after", "200ms"]);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    assert_eq!(worker.wait().code(), Some(1));
    assert!(worker.started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn silent_speaks_no_protocol_but_serves() {
    let fixture = Fixture::new();
    let _worker = fixture.spawn(&["--silent"]);
    let before = fixture.heartbeat_ctime();
    assert_eq!(get(&fixture.connect(), "/").status, 200);
    assert_eq!(fixture.message(Duration::from_millis(300)), None);
    assert_eq!(before, fixture.heartbeat_ctime());
}

#[test]
fn serves_on_a_unix_listener() {
    let fixture = Fixture::with_socket(|dir| {
        let path = dir.join("http.sock");
        Socket::Unix(UnixListener::bind(&path).unwrap(), path)
    });
    let worker = fixture.spawn(&[]);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    let Socket::Unix(_, path) = &fixture.socket else {
        unreachable!()
    };
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let response = read_response(&mut BufReader::new(&stream));
    let identity: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(identity["pid"], worker.pid());
    assert_eq!(response.header("connection"), Some("close"));
}

#[test]
fn max_requests_asks_once_to_be_recycled_and_keeps_serving_until_term() {
    let fixture = Fixture::new();
    let mut worker = fixture.spawn(&["--max-requests", "3"]);
    assert!(fixture.wait_for("READY=1", PATIENCE).is_some());
    let client = fixture.connect();
    for _ in 0..2 {
        assert_eq!(get(&client, "/").status, 200);
    }
    // Two answered: not yet (a WATCHDOG=1 may come meanwhile, nothing else).
    while let Some(message) = fixture.message(Duration::from_millis(100)) {
        assert_eq!(message, "WATCHDOG=1", "before the limit");
    }
    assert_eq!(get(&client, "/").status, 200);
    assert!(fixture.wait_for("X_ARBITER_RECYCLE=1", PATIENCE).is_some());
    // It keeps serving, and asks only once.
    for _ in 0..5 {
        assert_eq!(get(&client, "/").status, 200);
    }
    while let Some(message) = fixture.message(Duration::from_millis(100)) {
        assert_ne!(message, "X_ARBITER_RECYCLE=1", "asked twice");
    }
    worker.signal(Signal::SIGTERM);
    assert!(fixture.wait_for("STOPPING=1", PATIENCE).is_some());
    assert_eq!(worker.wait().code(), Some(0));
}
