//! Every example runs: `arbiter-core`'s minimal shell to its own exit 0, and `arbiter-cli`'s
//! library-mode server through start, requests, a crash, a HUP roll and a TERM.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arbiter_tests::{example_bin, get, read_pid, usr2_child, wait_until, Fixture};

const BOUND: Duration = Duration::from_secs(20);

#[test]
fn the_core_example_shell_runs_its_script_and_exits_0() {
    let bin = example_bin("arbiter-core", "minimal_shell");
    let fixture = Fixture::new();
    let out = fixture.join("shell.stdout");
    let mut child = Command::new(&bin)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .process_group(0)
        .spawn()
        .expect("spawning the example");
    let pid = child.id() as i32;
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Its whole group: the shell and the workers it started.
            let _ = arbiter_tests::signal(-pid, libc::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("still running after {BOUND:?}:\n{log}"));
    assert_eq!(status.code(), Some(0), "{status:?}\n{log}");
    for step in [
        "spawn worker 4 in slot 0, generation 0: respawn",
        "spawn worker 5 in slot 3, generation 0: scale up",
        "graceful timeout over",
        "exit 0: shutdown",
    ] {
        assert!(log.contains(step), "no {step:?} in:\n{log}");
    }
}

/// `pid=P slot=S ...` from the example's `/`.
fn served_by(port: u16) -> Option<i32> {
    let response = get(port, "/").ok()?;
    (response.status == 200).then_some(())?;
    response
        .body
        .split_whitespace()
        .find_map(|field| field.strip_prefix("pid="))?
        .parse()
        .ok()
}

/// Sends `GET /hang` and leaves without waiting for an answer (there is none).
fn get_hang(port: u16) -> std::io::Result<()> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")?;
    // Give the worker time to read it before the connection closes.
    stream.set_read_timeout(Some(Duration::from_millis(300)))?;
    let _ = std::io::Read::read(&mut stream, &mut [0u8; 16]);
    Ok(())
}

/// The fd numbers a process holds.
fn fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort_unstable();
    fds
}

#[test]
fn the_library_mode_example_serves_its_table_survives_a_crash_and_a_hup_and_stops_on_term() {
    let bin = example_bin("arbiter-cli", "preload");
    let fixture = Fixture::new();
    let mut master = fixture.start_program(
        "preload",
        &bin,
        &[
            "--table-mib",
            "8",
            "-w",
            "2",
            "-b",
            "127.0.0.1:0",
            "--timeout",
            "2s",
        ],
        &[],
    );
    let port = master.port();
    let workers = master.wait_children(2, BOUND);
    assert!(
        wait_until(BOUND, || served_by(port).is_some()),
        "not serving:\n{}",
        master.stderr()
    );
    let lookup = get(port, "/lookup/4096").expect("lookup");
    assert_eq!(lookup.status, 200, "{}", lookup.body);
    assert!(
        lookup.body.starts_with("index=4096 value="),
        "{}",
        lookup.body
    );
    assert_eq!(get(port, "/lookup/999999999").unwrap().status, 404);
    // A forked worker holds only stdio, its listener (3) and its heartbeat file (4).
    for &worker in &workers {
        assert_eq!(fds(worker), [0, 1, 2, 3, 4], "fds of worker {worker}");
    }

    // A crash is replaced by a fork of the same master.
    arbiter_tests::signal(workers[0], libc::SIGKILL).unwrap();
    let mut now = Vec::new();
    assert!(
        wait_until(BOUND, || {
            now = master.children();
            now.len() == 2 && !now.contains(&workers[0])
        }),
        "no replacement: {now:?}\n{}",
        master.stderr()
    );
    master.track_tree();

    // HUP rolls every worker, forked from the same master.
    let before = master.children();
    master.signal(libc::SIGHUP);
    assert!(
        wait_until(BOUND, || {
            now = master.children();
            now.len() == 2 && now.iter().all(|pid| !before.contains(pid))
        }),
        "HUP did not roll the workers: {before:?} -> {now:?}\n{}",
        master.stderr()
    );
    master.track_tree();
    assert!(
        wait_until(BOUND, || served_by(port)
            .is_some_and(|pid| now.contains(&pid))),
        "the new workers do not serve\n{}",
        master.stderr()
    );

    // A worker that stops heartbeating is killed at the timeout (2 s) and replaced.
    let before = master.children();
    get_hang(port).expect("GET /hang");
    assert!(
        master.wait_log("WORKER TIMEOUT", BOUND).is_ok(),
        "no timeout\n{}",
        master.stderr()
    );
    assert!(
        wait_until(BOUND, || {
            now = master.children();
            now.len() == 2 && before.iter().any(|pid| !now.contains(pid))
        }),
        "the hung worker is not replaced: {before:?} -> {now:?}\n{}",
        master.stderr()
    );
    master.track_tree();

    master.signal(libc::SIGTERM);
    let status = master.wait_exit(BOUND).expect("exits on TERM");
    assert_eq!(status.code(), Some(0), "{status:?} {:?}", status.signal());
    master.assert_no_process_left();
    let log = master.stderr();
    assert!(
        log.contains("Using worker: preload (library mode)"),
        "{log}"
    );
}

#[test]
fn every_example_of_the_library_crates_has_a_test_here() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf();
    // The examples this file runs, by crate; a new example needs its test here.
    let tested = [
        ("arbiter-core", vec!["minimal_shell"]),
        ("arbiter-cli", vec!["preload"]),
    ];
    for (krate, names) in tested {
        let mut found: Vec<String> = std::fs::read_dir(root.join(krate).join("examples"))
            .unwrap_or_else(|e| panic!("{krate}/examples: {e}"))
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".rs").map(str::to_owned)
            })
            .collect();
        found.sort();
        assert_eq!(
            found, names,
            "{krate}/examples and the tests of tests/examples.rs"
        );
    }
}

#[test]
fn the_library_mode_example_answers_ctl_and_metrics_and_upgrades_itself_on_usr2() {
    let bin = example_bin("arbiter-cli", "preload");
    let fixture = Fixture::new();
    let pidfile = fixture.join("preload.pid");
    let args = [
        "--table-mib",
        "4",
        "-w",
        "2",
        "-b",
        "127.0.0.1:0",
        "-p",
        pidfile.to_str().unwrap(),
        "--metrics-bind",
        "127.0.0.1:0",
    ];
    let mut master = fixture.start_program("preload", &bin, &args, &[]);
    let port = master.port();
    let old_workers = master.wait_children(2, BOUND);
    assert!(wait_until(BOUND, || read_pid(&pidfile) == Some(master.pid())));

    // The metrics count the forked workers as they count exec'd ones.
    let log = master.wait_log("Metrics at: http://", BOUND).unwrap();
    let metrics_port: u16 = log
        .split("Metrics at: http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next()?.parse().ok())
        .expect("metrics port in the log");
    let sample = |body: &str, name: &str| -> Option<f64> {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let mut body = String::new();
    assert!(
        wait_until(BOUND, || {
            body = get(metrics_port, "/metrics")
                .map(|r| r.body)
                .unwrap_or_default();
            sample(&body, "arbiter_workers_ready") == Some(2.0)
        }),
        "metrics:\n{body}"
    );
    assert_eq!(sample(&body, "arbiter_workers_live"), Some(2.0), "{body}");

    // `arbiter ctl` speaks to a library-mode master as to any other.
    let status = Command::new(arbiter_tests::arbiter_bin())
        .args(["ctl", "--pidfile", pidfile.to_str().unwrap(), "status"])
        .output()
        .expect("running arbiter ctl");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    for pid in &old_workers {
        assert!(text.contains(&pid.to_string()), "worker {pid} in:\n{text}");
    }

    // USR2 re-execs the program, which loads its table again and serves on the same socket.
    let new = usr2_child(&mut master, &fixture.join("preload.pid.2"), BOUND);
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(BOUND), 0, "{}", master.stderr());
    assert!(
        wait_until(BOUND, || read_pid(&pidfile) == Some(new)),
        "the new master is not promoted\n{}",
        master.stderr()
    );
    let new_workers = arbiter_tests::children_of(new);
    assert_eq!(new_workers.len(), 2, "{new_workers:?}");
    for &pid in &new_workers {
        master.track(pid);
    }
    assert!(
        wait_until(BOUND, || served_by(port)
            .is_some_and(|pid| new_workers.contains(&pid))),
        "the new master's workers do not serve\n{}",
        master.stderr()
    );
    arbiter_tests::signal(new, libc::SIGTERM).unwrap();
    assert!(
        arbiter_tests::wait_gone(new, BOUND).is_some(),
        "the new master did not stop"
    );
    master.assert_no_process_left();
}

#[test]
fn the_library_mode_example_refuses_a_worker_command_with_a_usage_error() {
    let bin = example_bin("arbiter-cli", "preload");
    let fixture = Fixture::new();
    for extra in [&["--check-config"][..], &[][..]] {
        let mut args = vec!["--table-mib", "1", "-b", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "/bin/true"]);
        let mut master = fixture.start_program("refused", &bin, &args, &[]);
        assert_eq!(master.exit_code(BOUND), 2, "{args:?}\n{}", master.stderr());
        master.assert_no_process_left();
        let log = master.stderr();
        assert!(
            log.contains("library mode: the worker is the program's function"),
            "{args:?}: {log}"
        );
        assert!(!log.contains("Listening at"), "nothing half-started: {log}");
    }
}
