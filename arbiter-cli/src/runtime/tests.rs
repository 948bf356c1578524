//! The shell's own sequencing, over the OS test double: no fork, no signal handler, no real
//! child. The core's decisions are tested in arbiter-core; these check that the runtime
//! carries them out in the right order (peek, group kill, reap; the upgrade pidfile dance;
//! hooks reaped as the shell's own children).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal as NixSignal;

use super::{Runtime, Start};
use crate::config::{self, Invocation};
use crate::os::pidfile;
use crate::os::seam::{Call, ChildStatus, FakeOs, Os};

/// A `Start` for `arbiter -b 127.0.0.1:0 ARGS -- true` in `dir`, as a fresh master or as the
/// upgrade child of `old_master`.
fn start(dir: &Path, args: &[&str], old_master: Option<u32>) -> Start {
    let mut argv: Vec<OsString> = ["arbiter", "-b", "127.0.0.1:0", "--log-level", "error"]
        .iter()
        .map(OsString::from)
        .collect();
    argv.extend(args.iter().map(OsString::from));
    argv.extend(["--", "true"].iter().map(OsString::from));
    let (invocation, sources) = config::load(argv, &BTreeMap::new()).expect("valid options");
    let Invocation::Run(mut settings) = invocation else {
        panic!("not a run");
    };
    settings.worker_tmp_dir = Some(dir.to_path_buf());
    let master_env = vec![
        (OsString::from("PATH"), OsString::from("/usr/bin:/bin")),
        (OsString::from("TMPDIR"), dir.as_os_str().to_owned()),
    ];
    Start {
        settings: *settings,
        sources,
        env_snapshot: BTreeMap::new(),
        inherited: arbiter_sockets::Inherited {
            origin: None,
            listeners: Vec::new(),
            old_master,
        },
        master_env,
        argv: vec![OsString::from("arbiter")],
    }
}

/// The pids of the workers spawned so far, in order.
fn spawned(os: &FakeOs) -> Vec<i32> {
    os.calls
        .iter()
        .filter_map(|call| match call {
            Call::SpawnWorker(_, pid) => Some(*pid),
            _ => None,
        })
        .collect()
}

/// The calls made since `from`.
fn calls_since(os: &FakeOs, from: usize) -> Vec<Call> {
    os.calls[from..].to_vec()
}

#[test]
fn an_exit_is_peeked_then_its_group_killed_then_it_is_reaped_then_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut os = FakeOs::new();
    {
        let mut runtime =
            Runtime::start_over(start(dir.path(), &["-w", "2"], None), None, &mut os).unwrap();
        runtime.execute_actions();
        let workers = spawned(runtime.os);
        assert_eq!(workers.len(), 2, "{:?}", runtime.os.calls);
        let crashed = workers[0];
        let mark = runtime.os.calls.len();
        runtime.os.exit(
            crashed,
            ChildStatus::Signaled {
                signal: 9,
                core_dumped: false,
            },
        );
        let now = runtime.now();
        runtime.reap(now);
        let after = calls_since(runtime.os, mark);
        assert_eq!(
            after[..3],
            [
                Call::Peek(crashed),
                Call::Signal(-crashed, NixSignal::SIGKILL),
                Call::Reap(crashed),
            ],
            "{after:?}"
        );
        assert!(
            matches!(after.get(3), Some(Call::SpawnWorker(_, pid)) if !workers.contains(pid)),
            "the slot is refilled after the reap: {after:?}"
        );
        // Nothing is left a zombie.
        assert_eq!(runtime.os.peek_exit(), None);
    }
}

#[test]
fn the_pidfile_is_written_before_any_worker_and_an_unwritable_one_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.pid");
    let path_text = path.to_str().unwrap().to_owned();
    let mut os = FakeOs::new();
    {
        let mut runtime =
            Runtime::start_over(start(dir.path(), &["-p", &path_text], None), None, &mut os)
                .unwrap();
        runtime.execute_actions();
    }
    let first_spawn = os
        .calls
        .iter()
        .position(|c| matches!(c, Call::SpawnWorker(..)))
        .expect("a worker was spawned");
    let write = os
        .calls
        .iter()
        .position(|c| *c == Call::WritePidfile(path.clone()))
        .expect("the pidfile was written");
    assert!(write < first_spawn, "{:?}", os.calls);

    let mut refusing = FakeOs::new();
    refusing.unwritable.push(path.clone());
    let error = Runtime::start_over(
        start(dir.path(), &["-p", &path_text], None),
        None,
        &mut refusing,
    )
    .err()
    .expect("the start fails");
    assert_eq!(error.exit_code(), 1);
    assert!(error.to_string().contains("a.pid"), "{error}");
    assert!(
        !refusing
            .calls
            .iter()
            .any(|c| matches!(c, Call::SpawnWorker(..) | Call::StartHook(..))),
        "nothing started: {:?}",
        refusing.calls
    );
}

#[test]
fn an_upgrade_child_writes_pidfile_2_once_ready_and_renames_it_when_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    let path_text = path.to_str().unwrap().to_owned();
    let second = pidfile::upgrade_path(&path);
    let mut os = FakeOs::new();
    os.parent = 4242;
    {
        let args = ["-p", &path_text, "-w", "2", "--ready", "exec"];
        let mut runtime =
            Runtime::start_over(start(dir.path(), &args, Some(4242)), None, &mut os).unwrap();
        assert!(
            !runtime.os.calls.contains(&Call::WritePidfile(path.clone())),
            "an upgrade child never writes the old master's pidfile"
        );
        runtime.execute_actions();
        let calls = runtime.os.calls.clone();
        let write_two = calls
            .iter()
            .position(|c| *c == Call::WritePidfile(second.clone()))
            .expect("PIDFILE.2 written once the new workers are ready");
        let spawns: Vec<usize> = calls
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, Call::SpawnWorker(..)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(spawns.len(), 2, "{calls:?}");
        assert!(spawns.iter().all(|&i| i < write_two), "{calls:?}");
        assert!(!calls.iter().any(|c| matches!(c, Call::RenamePidfile(..))));

        // The old master exits: this one is reparented, and promotes itself.
        runtime.os.parent = 1;
        runtime.check_promotion();
        runtime.execute_actions();
        assert!(
            runtime
                .os
                .calls
                .contains(&Call::RenamePidfile(second.clone(), path.clone())),
            "{:?}",
            runtime.os.calls
        );
    }
    assert_eq!(os.pidfiles, vec![(path, std::process::id())]);
}

#[test]
fn a_worker_exit_hook_is_started_and_reaped_as_the_shells_own_child() {
    let dir = tempfile::tempdir().unwrap();
    let mut os = FakeOs::new();
    let mut runtime = Runtime::start_over(
        start(dir.path(), &["--worker-exit", "true"], None),
        None,
        &mut os,
    )
    .unwrap();
    runtime.execute_actions();
    let worker = spawned(runtime.os)[0];
    runtime.os.exit(worker, ChildStatus::Exited(1));
    let now = runtime.now();
    runtime.reap(now);
    let hook = runtime
        .os
        .calls
        .iter()
        .find_map(|c| match c {
            Call::StartHook(name, pid) if name == "worker_exit" => Some(*pid),
            _ => None,
        })
        .expect("the worker_exit hook started");
    let workers_before = spawned(runtime.os).len();
    let mark = runtime.os.calls.len();
    runtime.os.exit(hook, ChildStatus::Exited(0));
    let now = runtime.now();
    runtime.reap(now);
    assert_eq!(
        calls_since(runtime.os, mark),
        vec![Call::Peek(hook), Call::Reap(hook)],
        "a hook's exit is reaped, never fed to the core (no group kill, no respawn)"
    );
    assert_eq!(spawned(runtime.os).len(), workers_before);
    assert!(runtime.hook_pids.is_empty());
}

#[test]
fn a_stop_signals_every_worker_and_exits_once_all_are_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("s.pid");
    let path_text = path.to_str().unwrap().to_owned();
    let mut os = FakeOs::new();
    {
        let args = ["-w", "3", "-p", &path_text];
        let mut runtime =
            Runtime::start_over(start(dir.path(), &args, None), None, &mut os).unwrap();
        runtime.execute_actions();
        let workers = spawned(runtime.os);
        runtime.os.signals.push(NixSignal::SIGTERM);
        runtime.feed_signals();
        for pid in &workers {
            assert!(
                runtime
                    .os
                    .calls
                    .contains(&Call::Signal(*pid, NixSignal::SIGTERM)),
                "TERM to {pid}: {:?}",
                runtime.os.calls
            );
        }
        assert_eq!(runtime.exit, None, "not before the workers are reaped");
        for pid in &workers {
            runtime.os.exit(*pid, ChildStatus::Exited(0));
        }
        let now = runtime.now();
        runtime.reap(now);
        assert_eq!(runtime.exit, Some(0));
    }
    assert!(os.calls.contains(&Call::RemovePidfile(path)));
    assert!(os.pidfiles.is_empty(), "the pidfile is gone at exit");
}

#[test]
fn a_memory_sample_reads_each_group_once_and_a_worker_over_the_limit_is_replaced_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut os = FakeOs::new();
    let mut runtime = Runtime::start_over(
        start(dir.path(), &["-w", "2", "--max-worker-memory", "1M"], None),
        None,
        &mut os,
    )
    .unwrap();
    runtime.execute_actions();
    let workers = spawned(runtime.os);
    assert_eq!(workers.len(), 2);
    runtime.os.resident.insert(workers[0], 2 << 20);
    runtime.os.resident.insert(workers[1], 1 << 20);
    let mark = runtime.os.calls.len();
    // Nothing is sampled before the sample deadline.
    let deadline = runtime.core.poll_timeout().expect("a sample deadline");
    runtime.os.now = deadline.since_origin();
    let now = runtime.now();
    runtime.core.handle_timeout(now);
    runtime.execute_actions();
    let after = calls_since(runtime.os, mark);
    let mut sorted = workers.clone();
    sorted.sort_unstable();
    let asked: Vec<Vec<i32>> = after
        .iter()
        .filter_map(|c| match c {
            Call::GroupResident(groups) => {
                let mut groups = groups.clone();
                groups.sort_unstable();
                Some(groups)
            }
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![sorted], "{after:?}");
    // The worker over the limit (1M exactly is not over) gets a replacement, then TERM.
    let spawn = after
        .iter()
        .position(|c| matches!(c, Call::SpawnWorker(_, pid) if !workers.contains(pid)))
        .unwrap_or_else(|| panic!("no replacement: {after:?}"));
    let term = after
        .iter()
        .position(|c| *c == Call::Signal(workers[0], NixSignal::SIGTERM))
        .unwrap_or_else(|| panic!("no TERM: {after:?}"));
    assert!(spawn < term, "{after:?}");
    assert!(!after
        .iter()
        .any(|c| matches!(c, Call::Signal(pid, _) if *pid == workers[1] || *pid == -workers[1])));
}

/// A burst of spawns that holds the loop (thirty, a second each on the clock, the workers
/// spawned first sending `READY=1` and then a heartbeat a second): the notify sockets are
/// read between spawns, so no queue fills (it holds eleven) and every `READY=1` is acted on.
#[test]
fn a_long_burst_of_spawns_reads_the_notify_sockets_between_spawns() {
    use arbiter_core::WorkerState;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let mut os = FakeOs::new();
    os.spawn_takes = Duration::from_secs(1);
    os.chatter = true;
    {
        let args = ["-w", "30", "--timeout", "2", "--ready", "notify"];
        let mut runtime =
            Runtime::start_over(start(dir.path(), &args, None), None, &mut os).unwrap();
        runtime.execute_actions();
        assert_eq!(spawned(runtime.os).len(), 30);
        assert_eq!(runtime.os.refused, 0, "sends that found a queue full");
        let ready = runtime
            .core
            .workers()
            .filter(|w| w.state == WorkerState::Ready)
            .count();
        // The last one spawned has not spoken yet.
        assert_eq!(ready, 29);
    }
}

/// Whether `fd` is readable now.
fn readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) == 1
}

/// Idle workers that send `WATCHDOG=1` about once a second (every 900 ms: a lazy round two
/// seconds after the last then finds three on some socket) are read in lazy rounds that
/// settle at the longest period, where the fullest queue holds four or five of the eleven the
/// kernel keeps, not at every beat or every other second (a rule that kept two seconds when
/// a round found three did); no send finds a queue full and no socket turns chatty.
#[test]
fn idle_workers_beating_once_a_second_are_read_every_four_seconds() {
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let mut os = FakeOs::new();
    {
        // The master reads every datagram here: without the heartbeat filter (with it, the
        // kernel takes the bare beats and there is nothing to read; see the next test).
        let args = [
            "-w",
            "16",
            "--timeout",
            "30",
            "--ready",
            "notify",
            "--heartbeat-filter=false",
        ];
        let mut runtime =
            Runtime::start_over(start(dir.path(), &args, None), None, &mut os).unwrap();
        runtime.execute_actions();
        assert_eq!(spawned(runtime.os).len(), 16);
        // Every worker says READY=1 (read at once: they are urgent while booting).
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.set_nonblocking(true).unwrap();
        let paths = runtime.os.notify_paths.clone();
        for path in &paths {
            sender.send_to(b"READY=1", path).unwrap();
        }
        runtime.read_eager_notify();
        assert_eq!(runtime.core.ready_count(), 16);
        let start = runtime.os.now;
        // Worker i beats first at i * 60 ms, then every 900 ms; the clock runs in 10 ms steps.
        let mut next_beat: Vec<Duration> = (0..paths.len() as u32)
            .map(|i| start + Duration::from_millis(60) * i)
            .collect();
        let mut refused = 0;
        let mut rounds = Vec::new();
        for step in 1..=6000u32 {
            runtime.os.now = start + Duration::from_millis(10) * step;
            for (path, next) in paths.iter().zip(next_beat.iter_mut()) {
                if *next <= runtime.os.now {
                    *next += Duration::from_millis(900);
                    if sender.send_to(b"WATCHDOG=1", path).is_err() {
                        refused += 1;
                    }
                }
            }
            let now = runtime.now();
            if runtime.lazy_notify_at.is_none_or(|at| at <= now) {
                runtime.read_lazy_notify();
                rounds.push(step / 100);
            }
            assert!(
                !readable(runtime.notify.eager_fd()),
                "a socket turned chatty at step {step} (rounds at {rounds:?} s)"
            );
        }
        assert_eq!(refused, 0, "sends that found a queue full");
        assert_eq!(
            runtime.lazy_schedule.period(),
            arbiter_core::notify::LAZY_MAX,
            "rounds at {rounds:?} s"
        );
        let late = rounds.iter().filter(|s| **s >= 30).count();
        assert!(
            late <= 30 / arbiter_core::notify::LAZY_MAX.as_secs() as usize + 1,
            "{late} rounds in the last 30 s: {rounds:?}"
        );
    }
}

/// Workers beating by datagram at their own phases under a 2 s timeout: with the heartbeat
/// filter (taken as root) the kernel keeps their beats out of the queues, and the master sees
/// them when a deadline is due (together with every deadline due within half a timeout), so
/// nobody is timed out. Without the filter (not root) the same holds, the beats read in lazy
/// rounds. (How often the master wakes is the benchmark's: the kernel's stamps run on the
/// real clock, not this test's.)
#[test]
fn beats_the_kernel_took_are_seen_at_the_deadlines_and_nobody_is_timed_out() {
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let mut os = FakeOs::new();
    let root = nix::unistd::geteuid().is_root();
    {
        let args = ["-w", "16", "--timeout", "2", "--ready", "notify"];
        let mut runtime =
            Runtime::start_over(start(dir.path(), &args, None), None, &mut os).unwrap();
        assert_eq!(
            runtime.notify.filtering(),
            root,
            "the filter is taken as root"
        );
        runtime.execute_actions();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.set_nonblocking(true).unwrap();
        let paths = runtime.os.notify_paths.clone();
        for path in &paths {
            sender.send_to(b"READY=1", path).unwrap();
            sender.send_to(b"WATCHDOG=1", path).unwrap();
        }
        runtime.read_eager_notify();
        assert_eq!(runtime.core.ready_count(), 16);
        let start = runtime.os.now;
        // Worker i beats at i * 55 ms, then every 900 ms; the clock runs in 10 ms steps.
        let mut next_beat: Vec<Duration> = (0..paths.len() as u32)
            .map(|i| start + Duration::from_millis(55) * i)
            .collect();
        let mut refused = 0;
        for step in 1..=2000u32 {
            runtime.os.now = start + Duration::from_millis(10) * step;
            for (path, next) in paths.iter().zip(next_beat.iter_mut()) {
                if *next <= runtime.os.now {
                    *next += Duration::from_millis(900);
                    if sender.send_to(b"WATCHDOG=1", path).is_err() {
                        refused += 1;
                    }
                }
            }
            let now = runtime.now();
            // As the loop does (wait_and_feed): lazy sockets are read when their round is
            // due, when a quiet one got a message, and before deadlines are judged.
            let lazy_due = match runtime.lazy_notify_at {
                Some(at) => at <= now,
                None => readable(runtime.notify.lazy_fd()),
            };
            let core_due = runtime.core.poll_timeout().is_some_and(|at| at <= now);
            if lazy_due || core_due {
                runtime.read_lazy_notify();
            }
            if core_due {
                runtime.refresh_due_heartbeats(now);
                runtime.core.handle_timeout(now);
                runtime.execute_actions();
            }
        }
        assert_eq!(refused, 0, "sends that found a queue full");
        let signals: Vec<&Call> = runtime
            .os
            .calls
            .iter()
            .filter(|call| matches!(call, Call::Signal(..)))
            .collect();
        assert!(signals.is_empty(), "timed out: {signals:?}");
        assert_eq!(runtime.core.ready_count(), 16);
        if root {
            assert!(
                !readable(runtime.notify.lazy_fd()),
                "the kernel took the beats: nothing queued"
            );
        }
    }
}
