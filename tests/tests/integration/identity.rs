//! `--user` / `--group`: workers run as another user with its supplementary groups, the
//! master keeps its identity, the files workers use are theirs; refusals come before anything
//! starts.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use arbiter_tests::{environ, get_unix, identity, run, wait_serving, Fixture, SOON};

use crate::EXIT;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `Uid:`, `Gid:` (real, effective, saved, filesystem) and `Groups:` of `pid`.
fn ids(pid: i32) -> (Vec<u32>, Vec<u32>, BTreeSet<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(|n| n.parse().expect("an id"))
            .collect()
    };
    let groups = field("Groups:").into_iter().collect();
    (field("Uid:"), field("Gid:"), groups)
}

/// `id -u/-g/-G nobody`, as the user database says.
fn nobody(flag: &str) -> Vec<u32> {
    let out = Command::new("id")
        .args([flag, "nobody"])
        .output()
        .expect("id");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().expect("an id"))
        .collect()
}

#[test]
fn workers_run_as_nobody_with_its_groups_and_the_master_stays_root() {
    if !is_root() {
        eprintln!("skipped: switching workers to nobody needs the tests to run as root");
        return;
    }
    let fx = Fixture::new();
    let sock = fx.join("app.sock");
    let sock_arg = format!("unix:{}", sock.display());
    let mut master = fx.start(
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "-b",
            &sock_arg,
            "-w",
            "1",
            "--user",
            "nobody",
            // Beats every 2 s: a 1 s timeout (beats every 250 ms) timed the worker out when
            // the machine left it unscheduled for 6 s (load average 190). The master looks
            // at the file once a timeout, so three looks take about 24 s.
            "--timeout",
            "8",
            "--log-level",
            "trace",
        ],
    );
    let port = master.port();
    let worker = wait_serving(port, SOON)
        .unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()))
        .pid;
    let (uid, gid) = (nobody("-u")[0], nobody("-g")[0]);
    let (uids, gids, groups) = ids(worker);
    assert_eq!(uids, vec![uid; 4], "worker uids");
    assert_eq!(gids, vec![gid; 4], "worker gids");
    assert_eq!(groups, nobody("-G").into_iter().collect(), "worker groups");
    let (master_uids, _, _) = ids(master.pid());
    assert_eq!(master_uids, vec![0; 4], "the master keeps its identity");
    // The heartbeat file and the unix socket are the worker's; the notify socket reaches the
    // master (READY=1 and WATCHDOG=1 arrive), and the heartbeat file can be bumped.
    let fd = environ(worker).expect("environ")["ARBITER_HEARTBEAT_FD"].clone();
    let heartbeat = std::fs::metadata(format!("/proc/{worker}/fd/{fd}")).expect("heartbeat");
    assert_eq!((heartbeat.uid(), heartbeat.gid()), (uid, gid));
    let socket = std::fs::metadata(&sock).expect("unix socket");
    assert_eq!((socket.uid(), socket.gid()), (uid, gid));
    master
        .wait_log(&format!("input: pid {worker} sent READY=1"), SOON)
        .unwrap();
    // Three heartbeats: the worker is still the same one, serving.
    master
        .wait_log_count(&format!("input: pid {worker} heartbeat at"), 3, SOON * 2)
        .unwrap();
    assert_eq!(identity(port).unwrap().pid, worker);
    assert_eq!(get_unix(&sock, "/").unwrap().status, 200);
    assert!(master.stderr().contains("Workers run as nobody:"));
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0);
    assert!(!sock.exists(), "the socket is still removed at exit");
}

#[test]
fn an_unknown_user_or_group_exits_2_naming_it_before_anything_starts() {
    let fx = Fixture::new();
    let pidfile = fx.join("arbiter.pid");
    let sock = fx.join("app.sock");
    let sock_arg = format!("unix:{}", sock.display());
    let base = ["-b", &sock_arg, "-p", pidfile.to_str().unwrap()];
    for (extra, env, message) in [
        (
            &["--user", "no-such-user-arbiter"][..],
            None,
            "arbiter: error: --user no-such-user-arbiter: no such user",
        ),
        (
            &["--group", "no-such-group-arbiter"][..],
            None,
            "arbiter: error: --group no-such-group-arbiter: no such group",
        ),
        (
            &[][..],
            Some(("ARBITER_USER", "no-such-user-arbiter")),
            "arbiter: error: --user no-such-user-arbiter: no such user",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let mut master = fx.start_with("bad", &args, &env.into_iter().collect::<Vec<_>>());
        assert_eq!(master.exit_code(SOON), 2, "{}", master.stderr());
        assert_eq!(master.stderr().trim_end(), message);
        assert!(master.children().is_empty());
        assert!(!pidfile.exists() && !sock.exists(), "nothing half-started");
    }
    let (code, _, stderr) = run(
        &fx,
        "check",
        &["--check-config", "-u", "no-such-user-arbiter"],
        SOON,
    );
    assert_eq!(
        (code, stderr.trim_end()),
        (
            2,
            "arbiter: error: --user no-such-user-arbiter: no such user"
        )
    );
}

#[test]
fn a_master_that_is_not_root_may_not_switch_users() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to start a master as nobody");
        return;
    }
    let fx = Fixture::new();
    let bin = arbiter_tests::arbiter_bin().to_str().unwrap();
    let mut master = fx.start_program(
        "nobody",
        Path::new("/usr/bin/setpriv"),
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin,
            "-b",
            "127.0.0.1:0",
            "--user",
            "root",
        ],
        &[],
    );
    assert_eq!(master.exit_code(SOON), 2, "{}", master.stderr());
    let stderr = master.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("arbiter: error: --user root: the master runs as uid 65534")
            && stderr.contains("only root may run workers as root:root (0:0)"),
        "{stderr}"
    );
    assert!(master.children().is_empty());
}
