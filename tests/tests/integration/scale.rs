//! Many workers, and workers that speak the notify protocol the way sd_notify clients do:
//! nothing they send is lost or left to block them, and nobody is timed out who heartbeated.

use arbiter_tests::{signal, wait_until, Fixture, SOON};

use crate::protocol::python;

/// A worker that heartbeats only by datagram: `READY=1`, then `WATCHDOG=1` every 0.4 s from
/// a fresh non-blocking socket (so a full queue shows as `EAGAIN` instead of a wait), each
/// send counted in `beats.PID` and each refusal in `refused.PID`.
const DATAGRAM_WORKER: &str = r#"
import os, socket, sys, time
path, out = os.environ["NOTIFY_SOCKET"], sys.argv[1]
def send(message):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        s.sendto(message, path)
        return True
    except BlockingIOError:
        with open(f"{out}/refused.{os.getpid()}", "a") as f:
            f.write("x")
        return False
    finally:
        s.close()
send(b"READY=1")
while True:
    time.sleep(0.4)
    if send(b"WATCHDOG=1"):
        with open(f"{out}/beats.{os.getpid()}", "a") as f:
            f.write("x")
"#;

/// A datagram-only heartbeater for many at once: `WATCHDOG=1` before `READY=1`, then every
/// 0.5 s, each send counted in `beats.PID`. On SIGABRT (the master's heartbeat timeout) it
/// writes `abort.PID`: the longest it went without a `WATCHDOG=1` going out over the last two
/// timeouts (4 s), by its own clock, the time since its last one included, then dies of the
/// signal. Under the timeout, it
/// never went a timeout without beating, so the master timed out a worker that had
/// heartbeated: a false timeout. Over it, the worker itself was late (a starved machine): a
/// worker starved for longer than the timeout may even beat again after the master judged it,
/// just before the signal comes, so the time since its last beat alone does not tell.
const MANY_WORKER: &str = r#"
import os, signal, socket, sys, time
path, out = os.environ["NOTIFY_SOCKET"], sys.argv[1]
last = [None]
recent = []
def on_abort(signum, frame):
    if last[0] is not None:
        now = time.monotonic()
        times = recent[-64:] + [now]
        gaps = [b - a for a, b in zip(times, times[1:]) if b >= now - 4.0]
        with open(f"{out}/abort.{os.getpid()}", "w") as f:
            f.write(repr(max(gaps)))
    signal.signal(signal.SIGABRT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGABRT)
signal.signal(signal.SIGABRT, on_abort)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setblocking(False)
def beat():
    try:
        s.sendto(b"WATCHDOG=1", path)
    except BlockingIOError:
        return
    last[0] = time.monotonic()
    recent.append(last[0])
    with open(f"{out}/beats.{os.getpid()}", "a") as f:
        f.write("x")
beat()
s.sendto(b"READY=1", path)
while True:
    time.sleep(0.5)
    beat()
"#;

/// A datagram-only heartbeater that beats `WATCHDOG=1` every 0.2 s, ten times, then stops
/// (a hung request) and lives on. Each beat is counted in `beats.PID`; on SIGABRT (the
/// master's heartbeat timeout) it writes `abort.PID`: the seconds since its last beat went
/// out, by its own clock, then dies of the signal.
const STOPPING_WORKER: &str = r#"
import os, signal, socket, sys, time
path, out = os.environ["NOTIFY_SOCKET"], sys.argv[1]
last = [None]
def on_abort(signum, frame):
    with open(f"{out}/abort.{os.getpid()}", "w") as f:
        f.write(repr(time.monotonic() - last[0]))
    signal.signal(signal.SIGABRT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGABRT)
signal.signal(signal.SIGABRT, on_abort)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", path)
for _ in range(10):
    s.sendto(b"WATCHDOG=1", path)
    last[0] = time.monotonic()
    with open(f"{out}/beats.{os.getpid()}", "a") as f:
        f.write("x")
    time.sleep(0.2)
while True:
    time.sleep(3600)
"#;

fn count(path: &std::path::Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.len())
}

#[test]
fn workers_that_heartbeat_only_by_datagram_are_never_timed_out_nor_refused() {
    datagram_heartbeaters_are_never_timed_out_nor_refused("true");
}

/// The same with the heartbeat filter off: the master reads every datagram (its lazy rounds).
#[test]
fn without_the_heartbeat_filter_datagram_heartbeaters_are_never_timed_out_nor_refused() {
    datagram_heartbeaters_are_never_timed_out_nor_refused("false");
}

fn datagram_heartbeaters_are_never_timed_out_nor_refused(filter: &str) {
    let fx = Fixture::new();
    let script = fx.write("worker.py", DATAGRAM_WORKER);
    let python = python();
    let out = fx.path().to_str().unwrap().to_owned();
    let filter = format!("--heartbeat-filter={filter}");
    let mut master = fx.start(
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "-w",
            "4",
            "--timeout",
            "2",
            "--ready",
            "notify",
            &filter,
            "--",
            &python,
            script.to_str().unwrap(),
            &out,
        ],
    );
    let workers = master.wait_children(4, SOON);
    // Ten beats each is four seconds: twice the timeout, and many rounds of the master
    // reading its lazy sockets.
    let beats = |pid: i32| count(&fx.join(&format!("beats.{pid}")));
    assert!(
        wait_until(SOON * 2, || workers.iter().all(|&pid| beats(pid) >= 10)),
        "beats: {:?}\n{}",
        workers.iter().map(|&p| beats(p)).collect::<Vec<_>>(),
        master.stderr()
    );
    let log = master.stderr();
    assert!(!log.contains("TIMEOUT"), "{log}");
    assert_eq!(master.children(), workers, "{log}");
    for pid in &workers {
        let refused = count(&fx.join(&format!("refused.{pid}")));
        assert_eq!(refused, 0, "worker {pid} found the queue full\n{log}");
    }
}

#[test]
fn a_thousand_workers_boot_are_replaced_and_stop_with_nothing_lost() {
    let fx = Fixture::new();
    let mut master = fx.start(
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "-w",
            "1000",
            "--ready",
            "exec",
            "--",
            "sleep",
            "1000",
        ],
    );
    // Generous bounds: a thousand spawns take about a second on an idle machine, many more
    // when the machine is shared (they bound a hang, they time nothing).
    let workers = master.wait_children(1000, SOON * 6);
    // Every tenth killed at once: each is replaced, none twice, none forgotten.
    let victims: Vec<i32> = workers.iter().step_by(10).copied().collect();
    for &victim in &victims {
        signal(victim, libc::SIGKILL).unwrap();
    }
    let mut now = Vec::new();
    assert!(
        wait_until(SOON * 6, || {
            now = master.children();
            now.len() == 1000 && victims.iter().all(|v| !now.contains(v))
        }),
        "{} children, {} victims left",
        now.len(),
        victims.iter().filter(|v| now.contains(v)).count()
    );
    let log = master.stderr();
    assert_eq!(log.matches("Booting worker").count(), 1100, "{log}");
    assert!(!log.contains("Open-file limit"), "{log}");
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON * 3), 0);
    master.assert_no_process_left();
}

/// Two hundred workers that heartbeat only by datagram under a 2 s timeout: while they boot
/// (a burst of spawns that holds the master's loop for seconds on a loaded machine) and
/// after, the master reads their queues in time, so none is timed out after a heartbeat.
#[test]
fn two_hundred_datagram_heartbeaters_get_no_false_timeout() {
    const N: usize = 200;
    let fx = Fixture::new();
    let script = fx.write("many.py", MANY_WORKER);
    let python = python();
    let out = fx.path().to_str().unwrap().to_owned();
    let workers = N.to_string();
    let mut master = fx.start(
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "-w",
            &workers,
            "--timeout",
            "2",
            "--boot-timeout",
            "0",
            "--ready",
            "notify",
            "--",
            &python,
            "-S",
            script.to_str().unwrap(),
            &out,
        ],
    );
    // Eight beats each is four seconds of heartbeats, twice the timeout, for every worker
    // alive at the end (one timed out rightly, late itself, is replaced and counted anew).
    let beats = |pid: i32| count(&fx.join(&format!("beats.{pid}")));
    let mut live = Vec::new();
    let beaten = wait_until(SOON * 6, || {
        live = master.children();
        live.len() == N && live.iter().all(|&pid| beats(pid) >= 8)
    });
    assert!(
        beaten,
        "{} workers, {} with 8 beats\n{}",
        live.len(),
        live.iter().filter(|&&pid| beats(pid) >= 8).count(),
        master.stderr()
    );
    let aborts: Vec<(String, f64)> = std::fs::read_dir(fx.path())
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let since = std::fs::read_to_string(entry.path()).ok()?.parse().ok()?;
            name.starts_with("abort.").then_some((name, since))
        })
        .collect();
    let false_timeouts: Vec<&(String, f64)> =
        aborts.iter().filter(|(_, since)| *since < 2.0).collect();
    assert!(
        false_timeouts.is_empty(),
        "timed out though it never went 2 s without a heartbeat: {false_timeouts:?}\n{}",
        master.stderr()
    );
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON * 3), 0);
    master.assert_no_process_left();
}

/// With the heartbeat filter (on by default, taken where the master may load eBPF: as root),
/// heartbeats the kernel took are still seen at the deadline: a worker that stops beating is
/// timed out, not before the timeout after its last beat, and its replacement is ready. The
/// same with the filter off.
#[test]
fn a_datagram_heartbeater_that_stops_is_timed_out_after_its_last_beat_with_or_without_the_filter() {
    for filter in ["true", "false"] {
        let fx = Fixture::new();
        let script = fx.write("stopping.py", STOPPING_WORKER);
        let python = python();
        let out = fx.path().to_str().unwrap().to_owned();
        let flag = format!("--heartbeat-filter={filter}");
        let mut master = fx.start(
            "arbiter",
            &[
                "-b",
                "127.0.0.1:0",
                "-w",
                "1",
                "--timeout",
                "1",
                "--ready",
                "notify",
                "--log-level",
                "debug",
                &flag,
                "--",
                &python,
                script.to_str().unwrap(),
                &out,
            ],
        );
        let first = master.wait_children(1, SOON)[0];
        let abort = fx.join(&format!("abort.{first}"));
        assert!(
            wait_until(SOON, || std::fs::read_to_string(&abort)
                .is_ok_and(|t| t.parse::<f64>().is_ok())),
            "filter {filter}: no timeout\n{}",
            master.stderr()
        );
        let since: f64 = std::fs::read_to_string(&abort).unwrap().parse().unwrap();
        let log = master.stderr();
        assert_eq!(count(&fx.join(&format!("beats.{first}"))), 10, "{log}");
        assert!(
            since >= 1.0,
            "filter {filter}: timed out {since} s after its last beat, under the 1 s timeout\n{log}"
        );
        assert!(log.contains("TIMEOUT"), "{log}");
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(2) == Some("0"));
        match filter {
            "true" if root => assert!(log.contains("Heartbeat filter on"), "{log}"),
            "true" => assert!(log.contains("Heartbeat filter off (bpf: "), "{log}"),
            _ => assert!(!log.contains("Heartbeat filter"), "{log}"),
        }
        // Its replacement is spawned (and ready: --ready notify gates nothing after the first).
        assert!(
            wait_until(SOON, || master.children().iter().any(|&pid| pid != first)),
            "{}",
            master.stderr()
        );
        master.signal(libc::SIGTERM);
        assert_eq!(master.exit_code(SOON * 3), 0);
        master.assert_no_process_left();
    }
}
