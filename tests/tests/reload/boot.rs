//! The first boot under a service manager or a readiness probe: a slow boot extends the
//! manager's start timeout (`EXTEND_TIMEOUT_USEC=`) until the workers are ready; with the
//! default `--ready auto` the master says once that first-generation workers count as ready
//! at exec, naming `--ready notify`; `--check-config` prints the readiness rule.

use std::time::Instant;

use arbiter_tests::{Fixture, Master, SOON};

use crate::notify::Manager;
use crate::{bin, s};

const NOTICE: &str = "Readiness: with --ready auto";

/// Starts `arbiter -b 127.0.0.1:0 ARGS` with `NOTIFY_SOCKET` set to a manager's socket.
fn supervised(fx: &Fixture, args: &[&str]) -> (Master, Manager, Instant) {
    let socket = fx.join("notify.sock");
    let manager = Manager::bind(&socket);
    let mut full = vec!["-b", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let started = Instant::now();
    let master = fx.start_with("arbiter", &full, &[("NOTIFY_SOCKET", s(&socket))]);
    (master, manager, started)
}

fn stop(master: &mut Master) {
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0, "{}", master.stderr());
    master.assert_no_process_left();
}

#[test]
fn a_booting_first_generation_extends_the_start_timeout_before_ready() {
    let fx = Fixture::new();
    let args = [
        "--ready",
        "notify",
        "--boot-timeout",
        "45s",
        "--",
        bin(),
        "worker",
        "--ready-delay",
        "1s",
    ];
    let (mut master, manager, started) = supervised(&fx, &args);
    let (ready_at, _) = manager.wait("READY=1", started);
    let extensions: Vec<(Instant, String)> = manager
        .all()
        .into_iter()
        .filter(|(_, text)| text.starts_with("EXTEND_TIMEOUT_USEC="))
        .collect();
    assert!(
        !extensions.is_empty(),
        "no EXTEND_TIMEOUT_USEC= while booting: {:?}",
        manager.all()
    );
    // The first goes out at once, 30 s ahead (the boot timeout is longer).
    let (first_at, first) = &extensions[0];
    assert_eq!(first, "EXTEND_TIMEOUT_USEC=30000000");
    assert!(*first_at < ready_at, "{:?}", manager.all());
    assert!(!master.stderr().contains(NOTICE), "{}", master.stderr());
    stop(&mut master);
}

/// Workers that never send `READY=1` (`sleep`) count as ready at exec under `--ready auto`.
/// Not the built-in worker: it speaks the protocol, and once one of its `READY=1` is read
/// (between spawns, on a loaded machine) `auto` gates the next spawn on it, so the boot is
/// rightly still going and extended.
#[test]
fn workers_ready_at_exec_send_no_extension_and_the_master_says_why() {
    let fx = Fixture::new();
    let (mut master, manager, started) = supervised(&fx, &["-w", "2", "--", "sleep", "1000"]);
    let (ready_at, _) = manager.wait("READY=1", started);
    let early: Vec<String> = manager
        .all()
        .into_iter()
        .filter(|(at, text)| *at <= ready_at && text.starts_with("EXTEND_TIMEOUT_USEC="))
        .map(|(_, text)| text)
        .collect();
    assert!(early.is_empty(), "{early:?}");
    let log = master
        .wait_log(NOTICE, SOON)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(log.matches(NOTICE).count(), 1, "{log}");
    let notice = log.lines().find(|l| l.contains(NOTICE)).unwrap();
    assert!(
        notice.contains("READY=1 to the service manager"),
        "{notice}"
    );
    assert!(notice.contains("--ready notify"), "{notice}");
    stop(&mut master);
}

#[test]
fn a_probed_master_says_so_too_and_notify_mode_silences_it() {
    let fx = Fixture::new();
    let args = ["-b", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0"];
    let mut master = fx.start("probed", &args);
    let log = master
        .wait_log(NOTICE, SOON)
        .unwrap_or_else(|e| panic!("{e}"));
    let notice = log.lines().find(|l| l.contains(NOTICE)).unwrap();
    assert!(notice.contains("/readyz"), "{notice}");
    assert!(!notice.contains("service manager"), "{notice}");
    stop(&mut master);
    // Readiness awaited, or nobody watching: no notice (it comes before the first spawn).
    for (name, extra) in [
        (
            "notify",
            &["--metrics-bind", "127.0.0.1:0", "--ready", "notify"][..],
        ),
        ("plain", &[][..]),
    ] {
        let mut full = vec!["-b", "127.0.0.1:0"];
        full.extend_from_slice(extra);
        let mut master = fx.start(name, &full);
        let log = master
            .wait_log("Booting worker", SOON)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!log.contains(NOTICE), "{name}: {log}");
        stop(&mut master);
    }
}

#[test]
fn check_config_prints_the_readiness_rule() {
    let fx = Fixture::new();
    let (code, stdout, stderr) = arbiter_tests::run(
        &fx,
        "check",
        &[
            "--check-config",
            "--ready",
            "notify",
            "--boot-timeout",
            "2m",
        ],
        SOON,
    );
    assert_eq!(code, 0, "{stderr}");
    let rule = stdout
        .lines()
        .find(|l| l.starts_with("# readiness: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(
        rule,
        "# readiness: a worker is ready when it sends READY=1, within the boot timeout (2m)"
    );
    let (_, auto, _) = arbiter_tests::run(&fx, "auto", &["--check-config"], SOON);
    let rule = auto
        .lines()
        .find(|l| l.starts_with("# readiness: "))
        .unwrap_or_else(|| panic!("{auto}"));
    assert!(
        rule.contains("first-generation workers count as ready at exec"),
        "{rule}"
    );
    assert!(rule.contains("ready = \"notify\""), "{rule}");
}
