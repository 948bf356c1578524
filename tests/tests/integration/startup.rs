//! Starting: boot errors, bad commands, busy ports, bad configuration, pidfiles.

use std::net::TcpListener;
use std::time::Instant;

use arbiter_tests::{run, Fixture, SOON};

use crate::{bin, serving, EXIT};

#[test]
fn a_worker_boot_error_halts_the_master_with_code_3() {
    let fx = Fixture::new();
    let pidfile = fx.join("a.pid");
    let (code, _, stderr) = run(
        &fx,
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "-p",
            pidfile.to_str().unwrap(),
            "--",
            bin(),
            "worker",
            "--boot-exit",
            "3",
        ],
        EXIT,
    );
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("Worker failed to boot."), "{stderr}");
    assert!(!pidfile.exists());
}

#[test]
fn a_worker_app_load_error_halts_the_master_with_code_4() {
    let fx = Fixture::new();
    let (code, _, stderr) = run(
        &fx,
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "--",
            bin(),
            "worker",
            "--boot-exit",
            "4",
        ],
        EXIT,
    );
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("App failed to load."), "{stderr}");
}

/// The delays of the `next start in D s` log lines, in order.
fn backoff_delays(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|line| line.split("next start in ").nth(1))
        .filter_map(|rest| rest.trim_end_matches(" s").parse().ok())
        .collect()
}

#[test]
fn with_backoff_a_boot_error_is_retried_with_growing_delays() {
    let fx = Fixture::new();
    let mut master = fx.start(
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "--on-boot-error",
            "backoff",
            "--",
            bin(),
            "worker",
            "--boot-exit",
            "3",
        ],
    );
    master.wait_log_count("crash-looping", 2, SOON).unwrap();
    let second = Instant::now();
    let log = master.wait_log_count("crash-looping", 3, SOON).unwrap();
    let delays = backoff_delays(&log);
    assert!(delays.len() >= 3, "{log}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "delays grow: {delays:?}"
    );
    // The third start waited for the second announced delay.
    let waited = second.elapsed().as_secs_f64();
    assert!(waited >= delays[1] - 0.15, "{waited} < {delays:?}\n{log}");
    assert!(!master.exited(), "the master keeps running:\n{log}");
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    master.assert_no_process_left();
}

fn refused_command(command: &str) {
    let fx = Fixture::new();
    let pidfile = fx.join("a.pid");
    let (code, _, stderr) = run(
        &fx,
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "-p",
            pidfile.to_str().unwrap(),
            "--",
            command,
        ],
        EXIT,
    );
    assert_eq!(code, 2, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(command)).collect();
    assert_eq!(errors.len(), 1, "one line names {command}:\n{stderr}");
    assert!(!pidfile.exists(), "pidfile left behind");
}

#[test]
fn a_missing_command_is_a_usage_error_naming_it() {
    refused_command("/nonexistent/x");
}

#[test]
fn a_non_executable_command_is_a_usage_error_naming_it() {
    let fx = Fixture::new();
    let script = fx.write("not-executable.sh", "#!/bin/sh\nexit 0\n");
    refused_command(script.to_str().unwrap());
}

#[test]
fn a_port_in_use_exits_1_naming_the_address() {
    let fx = Fixture::new();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let pidfile = fx.join("a.pid");
    let (code, _, stderr) = run(
        &fx,
        "arbiter",
        &[
            "-b",
            &address,
            "--bind-retries",
            "0",
            "-p",
            pidfile.to_str().unwrap(),
        ],
        EXIT,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
    // `--bind-retries 0`: one attempt and no retry delay (the error counts the attempts; a
    // wall-clock bound on the whole run measured the loaded machine instead).
    assert!(stderr.contains("(after 1 attempt(s))"), "{stderr}");
    assert!(!pidfile.exists(), "pidfile left behind");
}

#[test]
fn a_config_file_with_an_unknown_key_exits_2_naming_it() {
    let fx = Fixture::new();
    let config = fx.write("a.toml", "wrokers = 2\n");
    let (code, _, stderr) = run(
        &fx,
        "arbiter",
        &["-b", "127.0.0.1:0", "-c", config.to_str().unwrap()],
        EXIT,
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("wrokers"), "{stderr}");
    assert!(stderr.contains(config.to_str().unwrap()), "{stderr}");
}

#[test]
fn a_config_file_with_a_bad_value_exits_2_naming_it() {
    let fx = Fixture::new();
    let config = fx.write("a.toml", "workers = \"x\"\n");
    let (code, _, stderr) = run(
        &fx,
        "arbiter",
        &["-b", "127.0.0.1:0", "-c", config.to_str().unwrap()],
        EXIT,
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("workers"), "{stderr}");
    assert!(stderr.contains(config.to_str().unwrap()), "{stderr}");
}

#[test]
fn check_config_prints_the_resolved_config_and_exits_0() {
    let fx = Fixture::new();
    let config = fx.write("a.toml", "workers = 3\ntimeout = \"5s\"\n");
    let (code, stdout, stderr) = run(
        &fx,
        "arbiter",
        &[
            "-c",
            config.to_str().unwrap(),
            "--graceful-timeout",
            "7",
            "--check-config",
        ],
        EXIT,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.lines().any(|l| l.trim() == "workers = 3"),
        "{stdout}"
    );
    assert!(stdout.contains("graceful_timeout"), "{stdout}");
    assert!(stdout.contains("bind"), "{stdout}");
    // The output is itself a valid config file.
    let round = fx.write("round.toml", &stdout);
    let (code, again, stderr) = run(
        &fx,
        "again",
        &["-c", round.to_str().unwrap(), "--check-config"],
        EXIT,
    );
    assert_eq!(code, 0, "{stderr}");
    // Same settings; only the comment naming the file differs.
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with("# resolved with"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(settings(&again), settings(&stdout));
}

#[test]
fn a_live_pidfile_refuses_a_second_arbiter() {
    let fx = Fixture::new();
    let pidfile = fx.join("a.pid");
    let (first, _port) = serving(&fx, &["-p", pidfile.to_str().unwrap()], 1);
    let (code, _, stderr) = run(
        &fx,
        "second",
        &["-b", "127.0.0.1:0", "-p", pidfile.to_str().unwrap()],
        EXIT,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("already running as PID {}", first.pid())),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        first.pid().to_string(),
        "the first arbiter's pidfile is untouched"
    );
}

fn stale_pidfile_is_replaced(contents: &str) {
    let fx = Fixture::new();
    let pidfile = fx.write("a.pid", contents);
    let (mut master, _port) = serving(&fx, &["-p", pidfile.to_str().unwrap()], 1);
    let log = master.wait_log("stale pidfile", SOON).unwrap();
    assert!(log.contains("WARNING"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        master.pid().to_string()
    );
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0);
    master.assert_no_process_left();
    assert!(!pidfile.exists());
}

#[test]
fn a_pidfile_naming_a_dead_pid_is_replaced_and_removed_at_exit() {
    // A pid that existed and is gone: a reaped child of ours.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    stale_pidfile_is_replaced(&format!("{dead}\n"));
}

#[test]
fn a_garbage_pidfile_is_replaced_and_removed_at_exit() {
    stale_pidfile_is_replaced("not a pid\n");
}

#[test]
fn a_pidfile_that_cannot_be_written_exits_1_before_anything_is_bound_or_spawned() {
    let fx = Fixture::new();
    let pidfile = fx.join("no-such-dir/a.pid");
    let socket = fx.join("s.sock");
    let unix = format!("unix:{}", socket.display());
    let hook_ran = fx.join("on-starting");
    let on_starting = format!("touch {}", hook_ran.display());
    let (code, _, stderr) = run(
        &fx,
        "arbiter",
        &[
            "-b",
            &unix,
            "-p",
            pidfile.to_str().unwrap(),
            "--on-starting",
            &on_starting,
        ],
        EXIT,
    );
    assert_eq!(code, 1, "a startup failure, not a clean stop:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("arbiter: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("a.pid"), "{stderr}");
    assert!(!socket.exists(), "bound before the pidfile:\n{stderr}");
    assert!(!hook_ran.exists(), "on_starting ran before the pidfile");
    assert!(!stderr.contains("Booting worker"), "{stderr}");
}
