//! The drain before a stop (`--shutdown-delay`), as a load balancer or a Kubernetes endpoint
//! controller sees it: from the TERM on `/readyz` answers 503 and the service manager hears
//! `STOPPING=1`, while `/healthz` stays 200 and the workers keep answering on open listeners;
//! after the delay the master stops as without one and exits 0. A second stop order cuts the
//! drain short.

use std::time::{Duration, Instant};

use arbiter_tests::{get, identity, wait_serving, wait_until, Fixture, Master, SOON};

use crate::notify::Manager;
use crate::s;

fn metrics_port(master: &mut Master) -> u16 {
    let log = master
        .wait_log("Metrics at: http://127.0.0.1:", SOON)
        .unwrap_or_else(|e| panic!("{e}"));
    let rest = log.split("Metrics at: http://127.0.0.1:").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// The status of `GET path` on the probe port, or `None` when nothing answers.
fn probe(port: u16, path: &str) -> Option<u16> {
    get(port, path).ok().map(|r| r.status)
}

/// Starts a master with a metrics endpoint and `args`; waits until `/readyz` says 200.
fn start(fx: &Fixture, args: &[&str], env: &[(&str, &str)]) -> (Master, u16, u16) {
    let mut full = vec![
        "-b",
        "127.0.0.1:0",
        "-w",
        "2",
        "--metrics-bind",
        "127.0.0.1:0",
    ];
    full.extend_from_slice(args);
    let mut master = fx.start_with("arbiter", &full, env);
    let port = master.port();
    let probes = metrics_port(&mut master);
    wait_serving(port, SOON).unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()));
    let ready = wait_until(SOON, || probe(probes, "/readyz") == Some(200));
    assert!(ready, "never ready\n{}", master.stderr());
    (master, port, probes)
}

#[test]
fn term_drains_not_ready_but_serving_for_the_delay_then_exits_0() {
    let fx = Fixture::new();
    let socket = fx.join("notify.sock");
    let manager = Manager::bind(&socket);
    let env = [("NOTIFY_SOCKET", s(&socket))];
    let delay = Duration::from_secs(3);
    let (mut master, port, probes) = start(&fx, &["--shutdown-delay", "3s"], &env);
    let term = Instant::now();
    master.signal(libc::SIGTERM);
    manager.wait("STOPPING=1", term);
    let not_ready = wait_until(SOON, || probe(probes, "/readyz") == Some(503));
    assert!(not_ready, "/readyz never 503\n{}", master.stderr());
    // Until the drain is over: every probe says not ready, the liveness probe and the
    // workers keep answering.
    let mut rounds = 0;
    while !master.stderr().contains("Drain over") {
        let served = identity(port);
        let readyz = probe(probes, "/readyz");
        let healthz = probe(probes, "/healthz");
        if master.stderr().contains("Drain over") {
            // The listeners may have closed under this round.
            break;
        }
        assert!(served.is_ok(), "not served while draining: {served:?}");
        assert_eq!(readyz, Some(503), "{}", master.stderr());
        assert_eq!(healthz, Some(200), "{}", master.stderr());
        rounds += 1;
        assert!(term.elapsed() < delay + SOON, "{}", master.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let drained = term.elapsed();
    assert!(rounds > 0, "no round during the drain\n{}", master.stderr());
    assert!(drained >= delay, "drain over after {drained:?}");
    eprintln!("drain: {rounds} rounds of / + /readyz + /healthz served, over after {drained:?}");
    assert_eq!(master.exit_code(SOON), 0, "{}", master.stderr());
    master.assert_no_process_left();
    let stopping = manager
        .all()
        .iter()
        .filter(|(_, text)| text.lines().any(|l| l == "STOPPING=1"))
        .count();
    assert_eq!(stopping, 1, "{:?}", manager.all());
}

#[test]
fn a_second_term_cuts_the_drain_short() {
    let fx = Fixture::new();
    let (mut master, _port, probes) = start(&fx, &["--shutdown-delay", "1h"], &[]);
    master.signal(libc::SIGTERM);
    let not_ready = wait_until(SOON, || probe(probes, "/readyz") == Some(503));
    assert!(not_ready, "{}", master.stderr());
    assert!(!master.exited());
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0, "{}", master.stderr());
    assert!(master.stderr().contains("Drain cut short"));
    master.assert_no_process_left();
}

#[test]
fn ctl_stop_drains_and_int_skips_the_rest() {
    let fx = Fixture::new();
    let ctl_socket = fx.join("c.sock");
    let args = ["--shutdown-delay", "1h", "--control-socket", s(&ctl_socket)];
    let (mut master, port, probes) = start(&fx, &args, &[]);
    let mut stop = std::process::Command::new(arbiter_tests::arbiter_bin())
        .args(["ctl", "-s", s(&ctl_socket), "stop"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("arbiter ctl stop");
    let not_ready = wait_until(SOON, || probe(probes, "/readyz") == Some(503));
    assert!(not_ready, "{}", master.stderr());
    assert!(identity(port).is_ok(), "serving while draining");
    master.signal(libc::SIGINT);
    assert_eq!(master.exit_code(SOON), 0, "{}", master.stderr());
    // `ctl stop` returns once the master has exited.
    let code = stop.wait().expect("ctl stop exits").code();
    assert_eq!(code, Some(0));
    master.assert_no_process_left();
}
