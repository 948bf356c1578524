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

fn count(path: &std::path::Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.len())
}

#[test]
fn workers_that_heartbeat_only_by_datagram_are_never_timed_out_nor_refused() {
    let fx = Fixture::new();
    let script = fx.write("worker.py", DATAGRAM_WORKER);
    let python = python();
    let out = fx.path().to_str().unwrap().to_owned();
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
