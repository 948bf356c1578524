//! Signals not covered elsewhere: USR1 (log reopening), WINCH (daemonized or not), orphan
//! reaping when the master runs as PID 1, and the dispositions a worker starts with.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use arbiter_tests::{
    alive, arbiter_bin, descendants, signal, wait_gone, wait_until, Fixture, Master, SOON,
};

use crate::{bin, serving};

#[test]
fn usr1_reopens_the_log_file_after_rotation() {
    let fx = Fixture::new();
    let log = fx.join("arbiter.log");
    let log_arg = log.to_str().unwrap();
    // The log goes to the file, so `serving` (which reads the port from stderr) is not used.
    let mut master = fx.start(
        "arbiter",
        &["-b", "127.0.0.1:0", "-w", "1", "--log-file", log_arg],
    );
    master.wait_children(1, SOON);
    assert!(wait_until(SOON, || read(&log).contains("Booting worker")));
    // Rotate as logrotate does: rename, then USR1.
    let rotated = fx.join("arbiter.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    master.signal(libc::SIGUSR1);
    // The "Handling signal: usr1" line still goes to the old file; the reopen follows it.
    assert!(
        wait_until(SOON, || log.exists()),
        "no new log file after USR1; rotated one:\n{}",
        read(&rotated)
    );
    assert!(read(&rotated).contains("Handling signal: usr1"));
    master.signal(libc::SIGTTIN);
    assert!(wait_until(SOON, || read(&log).contains("Booting worker")));
    assert!(
        !read(&rotated).contains("Handling signal: ttin"),
        "written to the old file"
    );
    // Without --forward-usr1 the worker was not signalled: it is still the same one.
    assert_eq!(master.wait_children(2, SOON).len(), 2);
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0);
}

/// Whether `signal` is pending for the whole process `pid` (`ShdPnd` in its status): the
/// one moment the kernel would merge another send of it into this one.
fn pending(pid: i32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1 << (signal - 1)) != 0
}

#[test]
fn a_burst_of_ttin_raises_the_target_by_exactly_its_count() {
    const BURST: usize = 20;
    let fx = Fixture::new();
    let (mut master, _) = serving(&fx, &["-w", "2"], 2);
    let pid = master.pid();
    // As fast as the master takes them: each TTIN goes out as soon as the last one is no
    // longer pending, so the kernel merges none and every one must count.
    for sent in 0..BURST {
        assert!(
            wait_until(SOON, || !pending(pid, libc::SIGTTIN)),
            "TTIN {sent} still pending"
        );
        master.signal(libc::SIGTTIN);
    }
    let target = 2 + BURST;
    let workers = master.wait_children(target, SOON);
    let log = master
        .wait_log_count("Handling signal: ttin", BURST, SOON)
        .unwrap();
    let last_change = log
        .lines()
        .rev()
        .find_map(|l| l.split_once("Workers: ").map(|(_, change)| change));
    assert_eq!(
        last_change,
        Some(format!("{} -> {target} (scale up)", target - 1).as_str()),
        "{log}"
    );
    assert_eq!(log.matches("Handling signal: ttin").count(), BURST, "{log}");
    assert_eq!(log.matches("(scale up)").count(), BURST, "{log}");
    assert_eq!(workers.len(), target);
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0);
}

#[test]
fn winch_is_ignored_unless_daemonized() {
    let fx = Fixture::new();
    let (mut master, _) = serving(&fx, &["-w", "2"], 2);
    let before = master.children();
    master.signal(libc::SIGWINCH);
    master
        .wait_log("SIGWINCH ignored. Not daemonized", SOON)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut after = master.children();
    after.sort_unstable();
    let mut before = before;
    before.sort_unstable();
    assert_eq!(before, after, "workers untouched");
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0);
}

/// Kills a daemonized master and everything under it by pid, whatever the test did.
struct Daemon {
    pid: i32,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if alive(self.pid) {
            let tree = descendants(self.pid);
            let _ = signal(self.pid, libc::SIGKILL);
            for pid in tree {
                let _ = signal(pid, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn winch_stops_the_workers_of_a_daemon_and_ttin_brings_one_back() {
    let fx = Fixture::new();
    let pidfile = fx.join("d.pid");
    let log = fx.join("d.log");
    let status = Command::new(bin())
        .args(["-D", "-w", "2", "-b", "127.0.0.1:0"])
        .args(["--pidfile", pidfile.to_str().unwrap()])
        .args(["--log-file", log.to_str().unwrap()])
        .current_dir(fx.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the starting process exits 0 once the daemon runs"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let daemon = Daemon { pid };
    assert!(
        wait_until(SOON, || arbiter_tests::children_of(pid).len() == 2),
        "{}",
        read(&log)
    );
    let workers = arbiter_tests::children_of(pid);
    signal(pid, libc::SIGWINCH).unwrap();
    for worker in &workers {
        assert!(
            wait_gone(*worker, SOON).is_some(),
            "worker {worker} still there"
        );
    }
    assert!(alive(pid), "the master stays");
    assert!(read(&log).contains("Handling signal: winch"));
    signal(pid, libc::SIGTTIN).unwrap();
    assert!(
        wait_until(SOON, || arbiter_tests::children_of(pid).len() == 1),
        "{}",
        read(&log)
    );
    signal(pid, libc::SIGTERM).unwrap();
    assert!(wait_gone(pid, SOON).is_some());
    assert!(!pidfile.exists(), "pidfile removed at exit");
    drop(daemon);
}

#[test]
fn as_pid_1_the_master_reaps_orphans() {
    // A PID namespace makes the master PID 1, so orphans are reparented to it.
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare --pid --fork --mount-proc is not available here");
        return;
    }
    let fx = Fixture::new();
    // Each worker leaves behind a short-lived orphan, then becomes the built-in worker.
    let worker = format!("(sleep 0.3 &); exec {} worker", bin());
    let args = [
        "--pid",
        "--fork",
        "--mount-proc",
        bin(),
        "-w",
        "2",
        "-b",
        "127.0.0.1:0",
        "--log-level",
        "debug",
        "--",
        "/bin/sh",
        "-c",
        &worker,
    ];
    let mut master = fx.start_program("unshare", Path::new("unshare"), &args, &[]);
    master.wait_log_count("Reaped orphan", 2, SOON).unwrap();
    let zombies: Vec<i32> = master
        .track_tree()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rfind(')')
                        .map(|i| s[i + 1..].trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        })
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    // unshare waits for its child, the arbiter (PID 1 inside), and exits with its status.
    let arbiter = master.children();
    assert_eq!(arbiter.len(), 1, "{arbiter:?}");
    signal(arbiter[0], libc::SIGTERM).unwrap();
    assert_eq!(master.exit_code(SOON), 0);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn workers_die_with_a_sigkilled_master() {
    let fx = Fixture::new();
    let (mut master, port) = serving(&fx, &["-w", "2"], 2);
    let workers = master.children();
    master.signal(libc::SIGKILL);
    for worker in &workers {
        assert!(
            wait_gone(*worker, SOON).is_some(),
            "worker {worker} outlived its master"
        );
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing serves once the master and its workers are gone"
    );
}

/// Starts one worker that first starts a child of its own (`sleep 300 &`), then becomes the
/// built-in worker with `switches`; the master, the worker's pid and its children.
fn worker_with_a_child(fx: &Fixture, args: &[&str], switches: &str) -> (Master, i32, Vec<i32>) {
    let worker = format!("sleep 300 & exec {} worker {switches}", bin());
    let mut full = vec!["-b", "127.0.0.1:0", "-w", "1"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--", "/bin/sh", "-c", &worker]);
    // Not `serving`: with `--hang-after` a worker on a loaded machine may hang before it has
    // answered a first request, and so may each replacement.
    let mut master = fx.start("arbiter", &full);
    master.port();
    // Any worker of the master that has started its child: with `--hang-after` the first
    // worker may already have been timed out and replaced by the time it is looked at (a
    // loaded machine), and the dead one never gets a child.
    let mut found = None;
    assert!(
        wait_until(SOON * 3, || {
            found = master.children().into_iter().find_map(|pid| {
                let grandchildren = arbiter_tests::children_of(pid);
                (!grandchildren.is_empty()).then_some((pid, grandchildren))
            });
            found.is_some()
        }),
        "no worker with a child of its own\n{}",
        master.stderr()
    );
    let (pid, grandchildren) = found.expect("found above");
    master.track_tree();
    (master, pid, grandchildren)
}

/// Each of `pids` is gone within `SOON`.
fn assert_all_gone(pids: &[i32], what: &str) {
    for pid in pids {
        assert!(
            wait_gone(*pid, SOON).is_some(),
            "{what} {pid} was left behind"
        );
    }
}

#[test]
fn a_killed_workers_own_children_are_killed_with_it() {
    let fx = Fixture::new();
    let (mut master, pid, grandchildren) = worker_with_a_child(&fx, &[], "");
    signal(pid, libc::SIGKILL).unwrap();
    assert_all_gone(&grandchildren, "the killed worker's child");
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0);
}

#[test]
fn a_timed_out_workers_children_are_killed_with_it() {
    let fx = Fixture::new();
    let (mut master, pid, grandchildren) =
        worker_with_a_child(&fx, &["-t", "1"], "--hang-after 300ms");
    master
        .wait_log(&format!("WORKER TIMEOUT (pid:{pid})"), SOON)
        .unwrap();
    assert_all_gone(&grandchildren, "the timed-out worker's child");
    assert_all_gone(&[pid], "the timed-out worker");
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0);
}

#[test]
fn relative_paths_mean_the_start_directory_with_chdir_and_across_an_upgrade() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.join("work")).unwrap();
    let (mut master, _) = serving(&fx, &["-w", "1", "-p", "app.pid", "--chdir", "work"], 1);
    let pidfile = fx.join("app.pid");
    assert!(wait_until(SOON, || read(&pidfile).trim() == master.pid().to_string()));
    let worker = master.children()[0];
    let cwd = std::fs::read_link(format!("/proc/{worker}/cwd")).unwrap();
    assert_eq!(
        cwd,
        fx.join("work").canonicalize().unwrap(),
        "workers run in --chdir"
    );
    // The new master starts where the first one did, so `app.pid` means the same file.
    master.signal(libc::SIGUSR2);
    let upgrade = fx.join("app.pid.2");
    assert!(wait_until(SOON, || upgrade.exists()), "{}", master.stderr());
    let new: i32 = read(&upgrade).trim().parse().unwrap();
    master.track_tree();
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0);
    assert!(
        wait_until(SOON, || read(&pidfile).trim() == new.to_string()),
        "promoted master in {}",
        pidfile.display()
    );
    assert!(!fx.join("work/app.pid").exists() && !fx.join("work/app.pid.2").exists());
    signal(new, libc::SIGTERM).unwrap();
    assert!(wait_gone(new, SOON).is_some());
    assert!(!pidfile.exists(), "removed by the new master at exit");
}

#[test]
fn server_hooks_run_at_their_moments_with_their_variables() {
    let fx = Fixture::new();
    let log = fx.join("hooks.log");
    let line = |extra: &str| format!("echo \"$ARBITER_HOOK {extra}\" >> {}", log.display());
    let (on_starting, when_ready, on_reload) = (line(""), line(""), line(""));
    let nworkers = line("$ARBITER_HOOK_OLD $ARBITER_HOOK_NEW");
    let worker_exit = line("$ARBITER_HOOK_WORKER_PID $ARBITER_HOOK_WORKER_STATUS");
    let on_exit = line("$ARBITER_HOOK_EXIT_CODE");
    let args = [
        "-w",
        "2",
        "--on-starting",
        &on_starting,
        "--when-ready",
        &when_ready,
        "--on-reload",
        &on_reload,
        "--nworkers-changed",
        &nworkers,
        "--worker-exit",
        &worker_exit,
        "--on-exit",
        &on_exit,
    ];
    let (mut master, _) = serving(&fx, &args, 2);
    assert!(
        wait_until(SOON, || read(&log).contains("when_ready")),
        "{}",
        read(&log)
    );
    assert!(
        read(&log).starts_with("on_starting"),
        "on_starting runs first:\n{}",
        read(&log)
    );
    master.signal(libc::SIGTTIN);
    assert!(
        wait_until(SOON, || read(&log).contains("nworkers_changed 2 3")),
        "{}",
        read(&log)
    );
    let victim = master.wait_children(3, SOON)[0];
    signal(victim, libc::SIGKILL).unwrap();
    let killed = format!("worker_exit {victim} killed by SIGKILL");
    assert!(
        wait_until(SOON, || read(&log).contains(&killed)),
        "{}",
        read(&log)
    );
    master.signal(libc::SIGHUP);
    assert!(
        wait_until(SOON, || read(&log).contains("on_reload")),
        "{}",
        read(&log)
    );
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0);
    // on_exit is waited for; worker_exit hooks of the stop run concurrently with it.
    assert!(
        read(&log).lines().any(|l| l == "on_exit 0"),
        "{}",
        read(&log)
    );
}

/// A hex signal mask line (`SigIgn`, `SigCgt`, `SigBlk`) of `/proc/PID/status`.
fn status_mask(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix(key))?;
    u64::from_str_radix(hex.trim_start_matches(':').trim(), 16).ok()
}

#[test]
fn a_worker_starts_with_default_dispositions_and_an_empty_mask_whatever_the_master_inherited() {
    let fx = Fixture::new();
    // The master inherits ALRM and USR1 ignored (`trap ''` survives exec); `sleep` changes no
    // disposition, so what the worker shows is what the master gave it.
    let script = "trap '' ALRM USR1; exec \"$0\" \"$@\"";
    let arbiter = arbiter_bin().to_str().unwrap();
    let args = [
        "-c",
        script,
        arbiter,
        "-b",
        "127.0.0.1:0",
        "-w",
        "1",
        "--ready",
        "exec",
        "--",
        "sleep",
        "1000",
    ];
    let mut master = fx.start_program("arbiter", Path::new("/bin/sh"), &args, &[]);
    let worker = master.wait_children(1, SOON)[0];
    let alarm = 1u64 << (libc::SIGALRM - 1);
    assert!(
        wait_until(SOON, || status_mask(master.pid(), "SigIgn")
            .is_some_and(|m| m & alarm != 0)),
        "the master did not inherit ALRM ignored: the test would prove nothing"
    );
    assert!(wait_until(SOON, || std::fs::read_to_string(format!(
        "/proc/{worker}/comm"
    ))
    .is_ok_and(|comm| comm.trim() == "sleep")));
    for key in ["SigIgn", "SigCgt", "SigBlk"] {
        assert_eq!(status_mask(worker, key), Some(0), "worker's {key}");
    }
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(SOON), 0);
}
