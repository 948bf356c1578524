//! Scenario 7: socket activation by `systemd-socket-activate` (skipped, with a message, where
//! it is not installed): the inherited TCP socket serves; a named unix socket is not unlinked
//! at stop, because it belongs to the service manager; an upgrade keeps serving on systemd's
//! socket.

use std::path::PathBuf;
use std::time::Duration;

use arbiter_tests::{wait_until, Fixture, SOON};

use crate::{bin, free_port, promoted, read_pid, run_upgrade, s, stop, wait_log_count};

fn socket_activate() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("systemd-socket-activate"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        eprintln!("skipped: systemd-socket-activate not installed");
    }
    found
}

/// Upgrades a socket-activated master of 2 workers once its pidfile names it: `arbiter upgrade`
/// succeeds, the old master exits 0, and the promoted master and its workers are returned.
fn upgrade_activated(
    master: &mut arbiter_tests::Master,
    program: &std::path::Path,
    pidfile: &std::path::Path,
) -> (i32, Vec<i32>) {
    master.wait_children(2, SOON);
    assert!(
        wait_until(SOON, || read_pid(pidfile) == Some(master.pid())),
        "no pidfile\n{}",
        master.stderr()
    );
    let old = master.pid();
    let run = run_upgrade(program, pidfile, Duration::from_secs(45));
    master.track_tree();
    assert_eq!(run.code, 0, "{run:?}\n{}", master.stderr());
    assert_eq!(master.exit_code(SOON), 0, "the old master stopped cleanly");
    promoted(master, pidfile, old, 2)
}

#[test]
fn socket_activated_tcp_listener_serves() {
    let Some(activate) = socket_activate() else {
        return;
    };
    let fx = Fixture::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // systemd-socket-activate execs the arbiter in place: the guard's pid is the master's.
    let args = ["-l", listen.as_str(), bin(), "-w", "2"];
    let mut master = fx.start_program("activate", &activate, &args, &[]);
    arbiter_tests::wait_serving(port, SOON).unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()));
    let workers = master.wait_children(2, SOON);
    let answered = arbiter_tests::identities_of(port, &workers, SOON);
    assert_eq!(answered.len(), 2, "both workers serve the inherited socket");
    master.signal(libc::SIGTERM);
    assert_eq!(
        master.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        master.stderr()
    );
    master.assert_no_process_left();
}

#[test]
fn socket_activated_unix_socket_is_not_unlinked_at_stop() {
    let Some(activate) = socket_activate() else {
        return;
    };
    let fx = Fixture::new();
    let path = fx.join("app.sock");
    let args = ["-l", s(&path), "--fdname", "web", bin(), "-w", "2"];
    let mut master = fx.start_program("activate", &activate, &args, &[]);
    let mut last = None;
    let ok = arbiter_tests::wait_until(SOON, || {
        last = Some(arbiter_tests::get_unix(&path, "/"));
        matches!(&last, Some(Ok(r)) if r.status == 200)
    });
    assert!(ok, "{last:?}\n{}", master.stderr());
    master.wait_children(2, SOON);
    master.signal(libc::SIGTERM);
    assert_eq!(
        master.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        master.stderr()
    );
    master.assert_no_process_left();
    assert!(
        path.exists(),
        "the service manager's socket {} was unlinked\n{}",
        path.display(),
        master.stderr()
    );
}

#[test]
fn socket_activated_master_upgrades_onto_systemds_socket() {
    let Some(activate) = socket_activate() else {
        return;
    };
    let fx = Fixture::new();
    let _guard = crate::CopyGuard::new(fx.path());
    let program = fx.copy_arbiter("arbiter");
    let pidfile = fx.join("app.pid");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // No --bind: the master serves on the socket systemd passed, and so must its successor
    // (which inherits that socket from the master, not from systemd).
    let args = [
        "-l",
        listen.as_str(),
        s(&program),
        "-w",
        "2",
        "-p",
        s(&pidfile),
    ];
    let mut master = fx.start_program("activate", &activate, &args, &[]);
    arbiter_tests::wait_serving(port, SOON).unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()));
    let (new, new_workers) = upgrade_activated(&mut master, &program, &pidfile);
    let needle = format!("Listening at: http://{listen} ({new})");
    let log = wait_log_count(&mut master, &needle, 1, SOON);
    let answered = arbiter_tests::identities_of(port, &new_workers, SOON);
    assert!(
        new_workers.iter().all(|p| answered.contains_key(p)),
        "the new workers {new_workers:?} answer on systemd's socket: {answered:?}\n{log}"
    );
    stop(&mut master, new);
}

/// A unix socket systemd gave the first master stays systemd's after an upgrade: the new
/// master never unlinks it at stop, and its workers see the name systemd gave it.
#[test]
fn socket_activated_unix_socket_survives_an_upgrade_with_its_name() {
    let Some(activate) = socket_activate() else {
        return;
    };
    let fx = Fixture::new();
    let _guard = crate::CopyGuard::new(fx.path());
    let program = fx.copy_arbiter("arbiter");
    let pidfile = fx.join("app.pid");
    let path = fx.join("app.sock");
    let args = [
        "-l",
        s(&path),
        "--fdname",
        "web",
        s(&program),
        "-w",
        "2",
        "-p",
        s(&pidfile),
    ];
    let mut master = fx.start_program("activate", &activate, &args, &[]);
    let name_seen = |master: &mut arbiter_tests::Master| {
        let mut last = None;
        let ok = wait_until(SOON, || {
            last = Some(arbiter_tests::get_unix(&path, "/env/LISTEN_FDNAMES"));
            matches!(&last, Some(Ok(r)) if r.status == 200 && r.body == "web")
        });
        assert!(ok, "{last:?}\n{}", master.stderr());
    };
    name_seen(&mut master);
    let (new, _) = upgrade_activated(&mut master, &program, &pidfile);
    name_seen(&mut master);
    stop(&mut master, new);
    assert!(
        path.exists(),
        "the service manager's socket {} was unlinked by the upgraded master\n{}",
        path.display(),
        master.stderr()
    );
}
