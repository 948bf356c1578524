//! Reloading and upgrading: HUP rolls workers without a failed request, an invalid config on
//! HUP is kept out, USR2 + TERM hands the port to a new master without a failed request.

use std::collections::BTreeSet;
use std::time::Duration;

use arbiter_tests::{alive, wait_gone, wait_until, ClientLoop, Fixture, SOON};

use crate::{bin, serving, EXIT};

#[test]
fn hup_replaces_every_worker_without_a_failed_request() {
    let fx = Fixture::new();
    let (mut master, port) = serving(
        &fx,
        &[
            "-w",
            "2",
            "--log-level",
            "debug",
            "--",
            bin(),
            "worker",
            "--ready-delay",
            "500ms",
        ],
        2,
    );
    // Wait until both have said READY=1, so the roll is readiness-gated.
    master.wait_log_count("is ready", 2, SOON).unwrap();
    let old: BTreeSet<i32> = master.children().into_iter().collect();
    let client = ClientLoop::start(port);
    std::thread::sleep(Duration::from_millis(100));
    master.signal(libc::SIGHUP);
    master.wait_log("Reload finished", SOON).unwrap();
    let mut now = Vec::new();
    assert!(
        wait_until(SOON, || {
            now = master.children();
            now.len() == 2 && now.iter().all(|p| !old.contains(p))
        }),
        "old workers left: {old:?} -> {now:?}\n{}",
        master.stderr()
    );
    // Until a new worker has answered the client (a fixed pause raced a loaded machine); the
    // assertion below reports it if none does.
    client.wait_served_by_any(&now, SOON);
    let report = client.finish();
    assert!(
        report.failures.is_empty(),
        "{report:?}\n{}",
        master.stderr()
    );
    assert!(report.ok > 10, "{report:?}");
    assert!(
        now.iter().any(|p| report.pids.contains(p)),
        "the new workers served: {report:?}"
    );
    assert!(arbiter_tests::pids_alive(&old.into_iter().collect::<Vec<_>>()).is_empty());
}

#[test]
fn hup_with_an_invalid_config_keeps_the_old_one() {
    let fx = Fixture::new();
    let config = fx.write("a.toml", "workers = 2\n");
    let (mut master, port) = serving(&fx, &["-c", config.to_str().unwrap()], 2);
    fx.write("a.toml", "workers = \"many\"\n");
    master.signal(libc::SIGHUP);
    master
        .wait_log("workers = \"many\"", SOON)
        .unwrap_or_else(|e| panic!("the bad config is reported: {e}"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!master.exited(), "{}", master.stderr());
    let workers = master.wait_children(2, SOON);
    assert_eq!(arbiter_tests::identities_of(port, &workers, SOON).len(), 2);
    // A valid file is picked up by the next HUP.
    fx.write("a.toml", "workers = 3\n");
    master.signal(libc::SIGHUP);
    master.wait_children(3, SOON);
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    master.assert_no_process_left();
}

#[test]
fn usr2_then_term_hands_the_port_to_a_new_master_without_a_failed_request() {
    let fx = Fixture::new();
    let pidfile = fx.join("a.pid");
    let upgrade = fx.join("a.pid.2");
    let (mut master, port) = serving(&fx, &["-w", "2", "-p", pidfile.to_str().unwrap()], 2);
    let old_workers = master.children();
    let client = ClientLoop::start(port);
    master.signal(libc::SIGUSR2);
    let mut new_master = 0;
    assert!(
        wait_until(SOON, || {
            new_master = std::fs::read_to_string(&upgrade)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            new_master > 0
        }),
        "no {}\n{}",
        upgrade.display(),
        master.stderr()
    );
    master.track(new_master);
    // The new master's workers come up next to the old ones.
    let mut new_workers = Vec::new();
    assert!(
        wait_until(SOON, || {
            new_workers = arbiter_tests::children_of(new_master);
            new_workers.len() == 2
        }),
        "{}",
        master.stderr()
    );
    master.track_tree();
    let served = arbiter_tests::identities_of(port, &new_workers, SOON);
    assert!(
        new_workers.iter().all(|p| served.contains_key(p)),
        "the new workers serve: {served:?}"
    );
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    master.wait_log("Master has been promoted.", SOON).unwrap();
    assert!(
        wait_until(SOON, || std::fs::read_to_string(&pidfile)
            .is_ok_and(|s| s.trim() == new_master.to_string())
            && !upgrade.exists()),
        "pidfile not promoted\n{}",
        master.stderr()
    );
    // Until a new worker has answered the client (a fixed pause raced a loaded machine).
    client.wait_served_by_any(&new_workers, SOON);
    let report = client.finish();
    assert!(
        report.failures.is_empty(),
        "{report:?}\n{}",
        master.stderr()
    );
    assert!(
        new_workers.iter().any(|p| report.pids.contains(p)),
        "{report:?}"
    );
    // Only the new master and its workers are left.
    assert!(arbiter_tests::pids_alive(&old_workers).is_empty());
    master.track_tree();
    let mut expected: BTreeSet<i32> = arbiter_tests::children_of(new_master).into_iter().collect();
    expected.insert(new_master);
    let left: BTreeSet<i32> = master.alive_tracked().into_iter().collect();
    assert_eq!(left, expected);
    arbiter_tests::signal(new_master, libc::SIGTERM).unwrap();
    assert!(wait_gone(new_master, EXIT).is_some(), "{}", master.stderr());
    assert!(!alive(new_master));
    assert!(wait_until(SOON, || master.alive_tracked().is_empty()));
    assert!(!pidfile.exists(), "the new master removes its pidfile");
}
