//! The master towards its own service manager (`NOTIFY_SOCKET` a datagram socket the test
//! binds): `READY=1` only once the workers are ready, `RELOADING=1` + `MONOTONIC_USEC=` on
//! HUP and `READY=1` after the roll, `STOPPING=1` on TERM, `WATCHDOG=1` every
//! `WATCHDOG_USEC`/2.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbiter_tests::{wait_until, Fixture, SOON};

use crate::{bin, s};

/// A service manager's notify socket: the datagrams received, each with its arrival time.
pub(crate) struct Manager {
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Manager {
    pub(crate) fn bind(path: &std::path::Path) -> Manager {
        let socket = UnixDatagram::bind(path).expect("binding the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, flag) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().expect("lock").push((Instant::now(), text));
                }
            }
        });
        Manager {
            messages,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().expect("lock").clone()
    }

    /// The arrival of the first message after `after` that has the line `line`.
    pub(crate) fn first(&self, line: &str, after: Instant) -> Option<(Instant, String)> {
        self.all()
            .into_iter()
            .find(|(at, text)| *at >= after && text.lines().any(|l| l == line))
    }

    pub(crate) fn wait(&self, line: &str, after: Instant) -> (Instant, String) {
        let mut found = None;
        wait_until(SOON, || {
            found = self.first(line, after);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {line:?} after the mark; got {:?}", self.all()))
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn ready_reloading_and_stopping_reach_the_service_manager() {
    let fx = Fixture::new();
    let socket = fx.join("notify.sock");
    let manager = Manager::bind(&socket);
    let env = [("NOTIFY_SOCKET", s(&socket))];
    let args = ["-b", "127.0.0.1:0", "-w", "2", "--ready", "notify", "--"];
    let mut args = args.to_vec();
    args.extend([bin(), "worker", "--ready-delay", "1s"]);
    let started = Instant::now();
    let mut master = fx.start_with("arbiter", &args, &env);
    let (ready, _) = manager.wait("READY=1", started);
    let boot = ready - started;
    assert!(
        boot >= Duration::from_millis(900),
        "READY=1 after {boot:?}, before the workers' 1 s ready delay\n{}",
        master.stderr()
    );
    let hup = Instant::now();
    master.signal(libc::SIGHUP);
    let (reloading_at, reloading) = manager.wait("RELOADING=1", hup);
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        usec.is_some_and(|u| u > 0),
        "RELOADING=1 comes with MONOTONIC_USEC=N: {reloading:?}"
    );
    let (ready_again, _) = manager.wait("READY=1", reloading_at);
    let roll = ready_again - hup;
    assert!(
        roll >= Duration::from_millis(900),
        "READY=1 {roll:?} after HUP, before the new workers could be ready"
    );
    master.wait_log("Reload finished", SOON).unwrap();
    let term = Instant::now();
    master.signal(libc::SIGTERM);
    manager.wait("STOPPING=1", term);
    assert_eq!(
        master.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        master.stderr()
    );
    master.assert_no_process_left();
    eprintln!(
        "[reload] notify: READY=1 {:.2} s after start, READY=1 {:.2} s after HUP",
        boot.as_secs_f64(),
        roll.as_secs_f64()
    );
}

#[test]
fn watchdog_pings_every_half_watchdog_usec() {
    let fx = Fixture::new();
    let socket = fx.join("notify.sock");
    let manager = Manager::bind(&socket);
    let env = [("NOTIFY_SOCKET", s(&socket)), ("WATCHDOG_USEC", "200000")];
    let started = Instant::now();
    let mut master = fx.start_with("arbiter", &["-b", "127.0.0.1:0", "-w", "1"], &env);
    let (ready, _) = manager.wait("READY=1", started);
    // Waits for three pings after READY=1 (sleeping 1 s and then counting measured the
    // machine's load). The bound is 50 WATCHDOG_USEC: pings on the watchdog's own schedule,
    // not only when something else wakes an idle master. How close the period is to
    // WATCHDOG_USEC/2 is a speed figure, not this test's.
    let within = Duration::from_secs(10);
    let pings_since_ready = || {
        manager
            .all()
            .iter()
            .filter(|(at, text)| *at >= ready && text.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    };
    let pinged = wait_until(within, || pings_since_ready() >= 3);
    let took = ready.elapsed();
    let pings = pings_since_ready();
    assert!(
        pinged,
        "{pings} WATCHDOG=1 in {within:?} with WATCHDOG_USEC=200000: {:?}\n{}",
        manager.all(),
        master.stderr()
    );
    master.signal(libc::SIGTERM);
    assert_eq!(
        master.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        master.stderr()
    );
    master.assert_no_process_left();
    eprintln!(
        "[reload] notify: {pings} WATCHDOG=1 within {took:?} of READY=1 (WATCHDOG_USEC=200000)"
    );
}
