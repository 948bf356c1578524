//! Per-slot listeners (`--reuse-port-per-slot`) under load: each slot's worker gets its own
//! `SO_REUSEPORT` socket, held by the master, and no connection is lost when a worker dies, is
//! recycled, a slot is scaled away, or the master is upgraded (USR2 + TERM). Each runs a
//! keep-alive load and two clients that open a connection per request (so new connections
//! keep going through the accept queues), and asserts every request got its answer.

use std::time::Instant;

use arbiter_tests::{wait_until, ClientLoop, Fixture, LoopReport, Master, SOON};

use crate::load::{Load, LoadReport};
use crate::{assert_clean, bin, promoted, record, s, stop, wait_log_count, LOAD_LIMIT};

/// Keep-alive threads and connection-per-request clients.
const KEEP_ALIVE: usize = 3;
const PER_REQUEST: usize = 2;

/// The socket a process has at fd 3, as `/proc` names it (`socket:[INODE]`).
fn fd3(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/3"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The slot of a worker, from its environment.
fn slot_of(pid: i32) -> Option<usize> {
    let env = arbiter_tests::environ(pid)?;
    env.get("ARBITER_WORKER_SLOT")?.parse().ok()
}

struct Clients {
    load: Load,
    loops: Vec<ClientLoop>,
}

impl Clients {
    fn start(port: u16) -> Clients {
        Clients {
            load: Load::start(port, KEEP_ALIVE, LOAD_LIMIT),
            loops: (0..PER_REQUEST).map(|_| ClientLoop::start(port)).collect(),
        }
    }

    /// Waits until both kinds of clients have been answered by one of `pids`.
    fn wait_served_by_any(&self, pids: &[i32]) -> bool {
        self.load.wait_served_by_any(pids, SOON)
            && self.loops.iter().all(|l| l.wait_served_by_any(pids, SOON))
    }

    /// Waits until each connection-per-request client has been answered by one of `pids`
    /// (the keep-alive connections may all sit with other workers).
    fn wait_new_connections_served_by_any(&self, pids: &[i32]) -> bool {
        self.loops.iter().all(|l| l.wait_served_by_any(pids, SOON))
    }

    fn finish(self) -> (LoadReport, LoopReport) {
        let report = self.load.finish();
        let mut loops = LoopReport::default();
        for l in self.loops {
            let r = l.finish();
            loops.ok += r.ok;
            loops.failures.extend(r.failures);
            loops.pids.extend(r.pids);
        }
        (report, loops)
    }
}

/// Asserts both kinds of clients got every answer.
fn assert_all_answered(scenario: &str, (report, loops): &(LoadReport, LoopReport), log: &str) {
    record(
        scenario,
        report,
        &format!(
            "connection per request: {} answered, {} failed",
            loops.ok,
            loops.failures.len()
        ),
    );
    assert_clean(report, log);
    assert!(
        loops.failures.is_empty(),
        "{} of {} connection-per-request clients' requests failed: {:?}\nlog:\n{log}",
        loops.failures.len(),
        loops.ok + loops.failures.len(),
        &loops.failures[..loops.failures.len().min(5)]
    );
    assert!(
        loops.ok > 0,
        "nothing answered the connection-per-request clients"
    );
}

/// Starts `arbiter -w N --reuse-port-per-slot` with the built-in worker (`worker_args` after
/// `worker`), waits until all N are ready; its port and workers.
fn start(fx: &Fixture, workers: usize, extra: &[&str], worker_args: &[&str]) -> (Master, u16) {
    let n = workers.to_string();
    let mut args = vec![
        "-b",
        "127.0.0.1:0",
        "-w",
        n.as_str(),
        "--reuse-port-per-slot",
        "--ready",
        "notify",
    ];
    if !extra.contains(&"--log-level") {
        args.extend(["--log-level", "debug"]);
    }
    args.extend_from_slice(extra);
    args.extend(["--", bin(), "worker"]);
    args.extend_from_slice(worker_args);
    let mut master = fx.start("arbiter", &args);
    let port = master.port();
    wait_log_count(&mut master, "is ready", workers, SOON);
    (master, port)
}

#[test]
fn each_slot_has_its_own_socket_and_a_worker_that_dies_loses_no_connection() {
    let fx = Fixture::new();
    // Ready a second after the exec: a worker killed once both are ready is no quick death,
    // and its replacement is replaced at once (and takes a second to be ready again, while
    // its slot's queue waits for it).
    let (mut master, port) = start(&fx, 2, &[], &["--ready-delay", "1s"]);
    let workers = master.wait_children(2, SOON);
    let sockets: Vec<String> = workers.iter().map(|&pid| fd3(pid)).collect();
    assert!(
        sockets.iter().all(|s| s.starts_with("socket:")) && sockets[0] != sockets[1],
        "each slot's worker has its own listener at fd 3: {sockets:?}"
    );
    let clients = Clients::start(port);
    assert!(clients.wait_served_by_any(&workers), "{}", master.stderr());
    let victim = workers[1];
    let slot = slot_of(victim).expect("the worker's slot");
    let socket = fd3(victim);
    let started = Instant::now();
    // Not the master's doing: the worker just ends (TERM from elsewhere, a clean exit).
    arbiter_tests::signal(victim, libc::SIGTERM).expect("TERM to the worker");
    let log = wait_log_count(&mut master, "Booting worker with pid", 3, SOON);
    let mut replacement = 0;
    assert!(
        wait_until(SOON, || {
            master.track_tree();
            replacement = arbiter_tests::children_of(master.pid())
                .into_iter()
                .find(|pid| !workers.contains(pid))
                .unwrap_or(0);
            replacement > 0
        }),
        "no replacement\n{log}"
    );
    assert_eq!(slot_of(replacement), Some(slot));
    assert_eq!(
        fd3(replacement),
        socket,
        "the replacement serves its slot's socket"
    );
    assert!(
        clients.wait_new_connections_served_by_any(&[replacement]),
        "{}",
        master.stderr()
    );
    let took = started.elapsed();
    let reports = clients.finish();
    assert_all_answered(
        &format!(
            "per-slot: worker died, replaced in {:.2} s",
            took.as_secs_f64()
        ),
        &reports,
        &master.stderr(),
    );
    let pid = master.pid();
    stop(&mut master, pid);
}

#[test]
fn recycling_with_per_slot_listeners_loses_no_connection() {
    let fx = Fixture::new();
    let (mut master, port) = start(
        &fx,
        2,
        &[],
        &[
            "--ready-delay",
            "300ms",
            "--max-requests",
            "1500",
            "--max-requests-jitter",
            "300",
        ],
    );
    let clients = Clients::start(port);
    let log = wait_log_count(&mut master, "Worker recycled (pid: ", 3, LOAD_LIMIT);
    let new: Vec<i32> = arbiter_tests::children_of(master.pid());
    assert!(clients.wait_served_by_any(&new), "{log}");
    let reports = clients.finish();
    assert_all_answered("per-slot: 3 recycles", &reports, &master.stderr());
    let pid = master.pid();
    stop(&mut master, pid);
}

#[test]
fn slots_scaled_away_lose_no_connection() {
    let fx = Fixture::new();
    let (mut master, port) = start(&fx, 3, &[], &[]);
    let workers = master.wait_children(3, SOON);
    let clients = Clients::start(port);
    assert!(clients.wait_served_by_any(&workers), "{}", master.stderr());
    master.signal(libc::SIGTTOU);
    wait_log_count(&mut master, "Closing slot 2's listener", 1, SOON);
    let left = master.wait_children(2, SOON);
    assert!(clients.wait_served_by_any(&left), "{}", master.stderr());
    master.signal(libc::SIGTTOU);
    let log = wait_log_count(&mut master, "Closing slot 1's listener", 1, SOON);
    let last = master.wait_children(1, SOON);
    // The load goes on with one slot until it has been answered there again.
    assert!(clients.wait_served_by_any(&last), "{log}");
    let reports = clients.finish();
    assert!(
        !log.contains("resets"),
        "a closed slot still had queued connections:\n{log}"
    );
    assert_all_answered("per-slot: 3 -> 2 -> 1 slots", &reports, &master.stderr());
    let pid = master.pid();
    stop(&mut master, pid);
}

#[test]
fn usr2_inherits_every_slot_socket_and_loses_no_connection() {
    let fx = Fixture::new();
    let _guard = crate::CopyGuard::new(fx.path());
    let program = fx.copy_arbiter("arbiter");
    let pidfile = fx.join("app.pid");
    let upgrade = fx.join("app.pid.2");
    let args = [
        "-b",
        "127.0.0.1:0",
        "-w",
        "2",
        "-p",
        s(&pidfile),
        "--reuse-port-per-slot",
        "--ready",
        "notify",
        "--log-level",
        "debug",
    ];
    let mut master = fx.start_program("arbiter", &program, &args, &[]);
    let port = master.port();
    wait_log_count(&mut master, "is ready", 2, SOON);
    let old_workers = master.wait_children(2, SOON);
    let old_sockets: Vec<(usize, String)> = old_workers
        .iter()
        .map(|&pid| (slot_of(pid).expect("slot"), fd3(pid)))
        .collect();
    let old = master.pid();
    let clients = Clients::start(port);
    assert!(clients.wait_served_by_any(&old_workers));
    let new = arbiter_tests::usr2_child(&mut master, &upgrade, SOON);
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0, "{}", master.stderr());
    let (promoted_pid, new_workers) = promoted(&mut master, &pidfile, old, 2);
    assert_eq!(promoted_pid, new);
    let log = wait_log_count(&mut master, "Inherited 2 per-slot listeners at", 1, SOON);
    for &pid in &new_workers {
        let slot = slot_of(pid).expect("slot");
        let had = old_sockets.iter().find(|(s, _)| *s == slot).map(|(_, f)| f);
        assert_eq!(
            Some(&fd3(pid)),
            had,
            "slot {slot} kept its socket across the upgrade"
        );
    }
    assert!(clients.wait_served_by_any(&new_workers), "{log}");
    let reports = clients.finish();
    assert_all_answered("per-slot: usr2+term", &reports, &master.stderr());
    stop(&mut master, new);
}

#[test]
fn a_bad_per_slot_value_is_one_line_and_exit_2() {
    let fx = Fixture::new();
    let (code, _, stderr) = arbiter_tests::run(
        &fx,
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "--reuse-port-per-slot=maybe",
            "--",
            bin(),
            "worker",
        ],
        SOON,
    );
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--reuse-port-per-slot"), "{stderr}");
    assert!(!stderr.contains("Booting worker"), "{stderr}");
}

/// The accept queue of the listening socket `socket:[INODE]` (its `rx_queue` in
/// `/proc/net/tcp`).
fn queued(socket: &str) -> u32 {
    let inode = socket
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_owned();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(9) != Some(&inode.as_str()) {
                return None;
            }
            u32::from_str_radix(fields.get(4)?.split_once(':')?.1, 16).ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_slot_scaled_away_answers_the_connections_its_queue_held() {
    use std::io::{Read, Write};
    let fx = Fixture::new();
    let (mut master, port) = start(&fx, 2, &["--log-level", "trace"], &[]);
    let workers = master.wait_children(2, SOON);
    let top = *workers
        .iter()
        .find(|&&pid| slot_of(pid) == Some(1))
        .expect("slot 1's worker");
    let socket = fd3(top);
    // Slot 1's worker is stopped: the connections steered to its slot wait in its queue.
    arbiter_tests::signal(top, libc::SIGSTOP).expect("STOP to the worker");
    let mut streams = Vec::new();
    while queued(&socket) < 3 && streams.len() < 200 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("request");
        streams.push(stream);
    }
    let waiting = queued(&socket);
    assert!(
        waiting >= 3,
        "slot 1's queue holds {waiting} of {}",
        streams.len()
    );
    // Slot 1 is scaled away while its queue holds them: steered away at once, and its worker
    // is not retired while its queue is not empty, however long that lasts (here: until the
    // master has found it full three times, past the drain's first second).
    master.signal(libc::SIGTTOU);
    let checks = "count the connections queued on slots 1..2";
    let log = wait_log_count(&mut master, checks, 3, SOON);
    assert!(
        !log.contains(&format!("Sending SIGTERM to worker (pid:{top})")),
        "retired with a full queue:\n{log}"
    );
    arbiter_tests::signal(top, libc::SIGCONT).expect("CONT to the worker");
    let log = wait_log_count(&mut master, "Closing slot 1's listener", 1, SOON);
    let mut answered = 0;
    for mut stream in streams.drain(..) {
        stream.set_read_timeout(Some(SOON)).expect("timeout");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "a queued connection got {response:?} ({answered} answered before)\n{log}"
        );
        answered += 1;
    }
    assert!(!log.contains("resets"), "{log}");
    eprintln!("[reload] per-slot: {waiting} queued on a slot scaled away, all {answered} answered");
    let pid = master.pid();
    stop(&mut master, pid);
}

/// USR2 + TERM with the mode switched in the configuration file between the two masters:
/// returns the new master's workers' fd-3 sockets and its log, after asserting the load saw
/// no failure.
fn upgrade_switching_mode(scenario: &str, old_per_slot: bool) -> (Vec<String>, String) {
    let fx = Fixture::new();
    let _guard = crate::CopyGuard::new(fx.path());
    let program = fx.copy_arbiter("arbiter");
    let pidfile = fx.join("app.pid");
    let upgrade = fx.join("app.pid.2");
    let config = |per_slot: bool| {
        format!(
            "bind = [\"127.0.0.1:0\"]\nworkers = 2\nready = \"notify\"\nlog_level = \"debug\"\n\
             reuse_port_per_slot = {per_slot}\n"
        )
    };
    let file = fx.write("arbiter.toml", &config(old_per_slot));
    let args = ["-c", s(&file), "-p", s(&pidfile)];
    let mut master = fx.start_program("arbiter", &program, &args, &[]);
    let port = master.port();
    wait_log_count(&mut master, "is ready", 2, SOON);
    let old_workers = master.wait_children(2, SOON);
    let old = master.pid();
    let clients = Clients::start(port);
    assert!(clients.wait_served_by_any(&old_workers));
    fx.write("arbiter.toml", &config(!old_per_slot));
    let new = arbiter_tests::usr2_child(&mut master, &upgrade, SOON);
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0, "{}", master.stderr());
    let (_, new_workers) = promoted(&mut master, &pidfile, old, 2);
    assert!(
        clients.wait_new_connections_served_by_any(&new_workers),
        "{}",
        master.stderr()
    );
    let reports = clients.finish();
    let log = master.stderr();
    assert_all_answered(scenario, &reports, &log);
    let sockets = new_workers.iter().map(|&pid| fd3(pid)).collect();
    stop(&mut master, new);
    (sockets, log)
}

#[test]
fn usr2_to_a_master_without_the_mode_shares_slot_0s_socket_and_loses_no_connection() {
    let (sockets, log) = upgrade_switching_mode("per-slot -> shared: usr2+term", true);
    assert_eq!(sockets[0], sockets[1], "one shared socket: {sockets:?}");
    assert!(
        log.contains("without --reuse-port-per-slot: new connections go to the first one only"),
        "{log}"
    );
}

#[test]
fn usr2_to_a_master_with_the_mode_keeps_an_inherited_socket_without_reuseport_shared() {
    let (sockets, log) = upgrade_switching_mode("shared -> per-slot: usr2+term", false);
    assert_eq!(
        sockets[0], sockets[1],
        "still one shared socket: {sockets:?}"
    );
    assert!(
        log.contains("has no SO_REUSEPORT (inherited): it stays shared"),
        "{log}"
    );
}
