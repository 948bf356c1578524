//! The annotated arbiter (seed version 4): `--color` (worker lines in their worker's colour,
//! master lines plain, JSON never) and `--log-level trace` (every core input and action, one
//! line each with its reason), for each of the seed's methods.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use arbiter_tests::{run, wait_until, Fixture, Master, SOON};

use crate::{slack, EXIT};

const ESC: char = '\x1b';
const RESET: &str = "\x1b[0m";

/// The seed's colour of the process `pid`: red, green, blue, yellow, cyan by pid modulo 5.
fn colour(pid: i32) -> &'static str {
    ["\x1b[31m", "\x1b[32m", "\x1b[34m", "\x1b[33m", "\x1b[36m"][pid.rem_euclid(5) as usize]
}

/// A worker that prints one line and then waits for its stop.
const CHATTY: &[&str] = &["--", "sh", "-c", "echo hello from $$; exec sleep 60"];

/// Starts two chatty workers with output capture and `args`, waits for both greetings, stops
/// the master, and returns its log and the workers' pids.
fn two_workers(
    fx: &Fixture,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (String, Vec<i32>) {
    let mut full = vec!["-b", "127.0.0.1:0", "-w", "2", "--capture-output"];
    full.extend_from_slice(args);
    full.extend_from_slice(CHATTY);
    let mut master = fx.start_with(name, &full, env);
    master
        .wait_log_count("hello from", 2, SOON)
        .unwrap_or_else(|e| panic!("{e}"));
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    let log = master.stderr();
    (log.clone(), booted_pids(&log))
}

/// The pids of the `Booting worker with pid: N` lines.
fn booted_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter_map(|line| line.split("Booting worker with pid: ").nth(1))
        .filter_map(|rest| {
            rest.trim_end_matches(RESET)
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
}

fn assert_coloured(log: &str, needle: &str, pid: i32) {
    let line = line_with(log, needle);
    assert!(
        line.starts_with(colour(pid)) && line.ends_with(RESET),
        "{needle:?} should be in worker {pid}'s colour {:?}: {line:?}",
        colour(pid)
    );
}

fn assert_plain(log: &str, needle: &str) {
    let line = line_with(log, needle);
    assert!(!line.contains(ESC), "{needle:?} should be plain: {line:?}");
}

#[test]
fn always_colours_each_worker_line_by_its_pid_and_leaves_master_lines_plain() {
    let fx = Fixture::new();
    let (log, pids) = two_workers(
        &fx,
        "arbiter",
        &["--color", "always", "--log-level", "trace"],
        &[],
    );
    assert_eq!(pids.len(), 2, "{log}");
    for &pid in &pids {
        assert_coloured(&log, &format!("Booting worker with pid: {pid}"), pid);
        assert_coloured(&log, &format!("[{pid} stdout] hello from {pid}"), pid);
        assert_coloured(&log, &format!("spawned as pid {pid}"), pid);
        assert_coloured(&log, &format!("Worker (pid:{pid}) was sent SIGTERM"), pid);
        assert_coloured(&log, &format!("(pid {pid}): shutdown"), pid);
        assert_coloured(&log, &format!("action: reap {pid}{RESET}"), pid);
    }
    for master_line in [
        "Starting arbiter",
        "Listening at: http://",
        "Handling signal: term",
        "[TRACE] input: signal SIGTERM",
        "Shutting down: Master",
    ] {
        assert_plain(&log, master_line);
    }
}

#[test]
fn no_colour_with_never_no_color_a_file_or_json_and_from_the_environment() {
    let fx = Fixture::new();
    let (never, _) = two_workers(&fx, "never", &["--color", "never"], &[]);
    assert!(!never.contains(ESC), "--color never:\n{never}");
    // The log is a file, not a terminal: auto (the default) stays plain.
    let (auto, _) = two_workers(&fx, "auto", &[], &[]);
    assert!(!auto.contains(ESC), "auto on a file:\n{auto}");
    let (no_color, _) = two_workers(&fx, "no-color", &["--color", "auto"], &[("NO_COLOR", "1")]);
    assert!(!no_color.contains(ESC), "NO_COLOR:\n{no_color}");
    let (json, pids) = two_workers(
        &fx,
        "json",
        &[
            "--color",
            "always",
            "--log-format",
            "json",
            "--log-level",
            "trace",
        ],
        &[],
    );
    assert!(
        !json.contains(ESC) && !json.contains("\\u001b"),
        "json:\n{json}"
    );
    let relayed = line_with(&json, "stdout] hello from");
    let record: serde_json::Value = serde_json::from_str(relayed).unwrap();
    assert!(
        pids.iter()
            .any(|pid| record["worker_pid"].as_str().and_then(|s| s.parse().ok()) == Some(*pid)),
        "{relayed}"
    );
    // ARBITER_COLOR=always colours as --color always does.
    let (env, pids) = two_workers(&fx, "env", &[], &[("ARBITER_COLOR", "always")]);
    assert_coloured(
        &env,
        &format!("Booting worker with pid: {}", pids[0]),
        pids[0],
    );
}

#[test]
fn a_bad_color_exits_2_with_one_line() {
    let fx = Fixture::new();
    let (code, _, stderr) = run(&fx, "bad", &["--color", "sometimes"], SOON);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--color \"sometimes\": expected one of auto, always, never"),
        "{stderr}"
    );
    let config = fx.write("bad.toml", "color = \"loud\"\n");
    let (code, _, stderr) = run(&fx, "bad-file", &["-c", config.to_str().unwrap()], SOON);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("color = \"loud\""), "{stderr}");
}

/// A pseudo-terminal: the master end to read, the slave's path for `--log-file`.
struct Pty {
    reader: File,
    _slave: OwnedFd,
    path: String,
}

impl Pty {
    fn open() -> Pty {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two fds into the given ints; the name, termios and winsize
        // pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened by openpty and are owned by nothing else.
        let (reader, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let path = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&slave)
        ))
        .expect("pty slave path")
        .to_string_lossy()
        .into_owned();
        // SAFETY: fcntl on an fd we own.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&reader),
                libc::F_SETFL,
                libc::O_NONBLOCK,
            )
        };
        Pty {
            reader,
            _slave: slave,
            path,
        }
    }

    /// What was written to the terminal until `needle` appeared (bounded).
    fn read_until(&mut self, needle: &str, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        let mut text = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&text).contains(needle) && Instant::now() < deadline {
            match self.reader.read(&mut chunk) {
                Ok(n) if n > 0 => text.extend_from_slice(&chunk[..n]),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        String::from_utf8_lossy(&text).replace("\r\n", "\n")
    }
}

/// `auto` colours a log that goes to a terminal, unless `NO_COLOR` is set.
#[test]
fn auto_colours_a_terminal_unless_no_color_is_set() {
    let fx = Fixture::new();
    for (name, env, coloured) in [("tty", None, true), ("tty-no-color", Some("1"), false)] {
        let mut pty = Pty::open();
        let mut args = vec!["-b", "127.0.0.1:0", "-w", "1", "--log-file", &pty.path];
        args.extend_from_slice(CHATTY);
        let env: Vec<(&str, &str)> = env.map(|v| ("NO_COLOR", v)).into_iter().collect();
        let mut master = fx.start_with(name, &args, &env);
        let log = pty.read_until("Booting worker with pid: ", SOON);
        assert!(wait_until(SOON, || !master.children().is_empty()));
        let log = log + &pty.read_until("\n", Duration::from_secs(1));
        let pids = booted_pids(&log);
        assert_eq!(pids.len(), 1, "{log}");
        let line = line_with(&log, "Booting worker with pid: ");
        assert_eq!(
            line.starts_with(colour(pids[0])),
            coloured,
            "{name}: {line:?}"
        );
        assert_plain(&log, "Starting arbiter");
        stop(&mut master);
    }
}

fn stop(master: &mut Master) {
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
}

/// Waits for each needle in turn, in the order given (each after the previous one).
fn wait_trace(master: &mut Master, needles: &[&str]) -> String {
    let mut from = 0;
    for needle in needles {
        let found = wait_until(SOON + slack(), || master.stderr()[from..].contains(needle));
        let log = master.stderr();
        assert!(
            found,
            "{needle:?} not traced after the previous line:\n{log}"
        );
        from += log[from..].find(needle).expect("found") + needle.len();
    }
    master.stderr()
}

fn trace_master(fx: &Fixture, args: &[&str]) -> Master {
    let mut full = vec!["-b", "127.0.0.1:0", "--log-level", "trace"];
    full.extend_from_slice(args);
    fx.start("arbiter", &full)
}

#[test]
fn trace_spawn_manage_and_signals() {
    let fx = Fixture::new();
    let pidfile = fx.join("arbiter.pid");
    let mut master = trace_master(&fx, &["-w", "1", "-p", pidfile.to_str().unwrap()]);
    let log = wait_trace(
        &mut master,
        &[
            "[TRACE] start: 1 workers",
            "[TRACE] action: write PIDFILE: boot",
            "[TRACE] input: pidfile done",
            "[TRACE] action: spawn worker 1 in slot 0, generation 0: boot",
            "Booting worker with pid: ",
            "[TRACE] input: worker 1 spawned as pid ",
            "[TRACE] action: notify the service manager: READY=1",
        ],
    );
    let first = booted_pids(&log)[0];
    master.signal(libc::SIGTTIN);
    wait_trace(
        &mut master,
        &[
            "[TRACE] input: signal SIGTTIN",
            "[TRACE] action: event: target 1 -> 2: scale up",
            "[TRACE] action: event: spawns wait until the scale signals pause for ",
            "[TRACE] input: deadline passed (end of a burst of scale signals)",
            "[TRACE] action: spawn worker 2 in slot 1, generation 0: scale up",
            "[TRACE] input: worker 2 spawned as pid ",
        ],
    );
    master.signal(libc::SIGTTOU);
    let log = wait_trace(
        &mut master,
        &[
            "[TRACE] input: signal SIGTTOU",
            "[TRACE] action: event: target 2 -> 1: cull",
            "[TRACE] action: send SIGTERM to worker 2 (pid ",
        ],
    );
    let second = booted_pids(&log)[1];
    wait_trace(
        &mut master,
        &[&format!(
            "[TRACE] action: send SIGTERM to worker 2 (pid {second}): cull"
        )],
    );
    wait_trace(
        &mut master,
        &[&format!(
            "[TRACE] action: event: worker 2 (pid {second}, slot 1) "
        )],
    );
    master.signal(libc::SIGTTOU);
    master.signal(libc::SIGWINCH);
    let log = wait_trace(
        &mut master,
        &[
            "[TRACE] input: signal SIGTTOU",
            "[TRACE] input: signal SIGWINCH",
            "[TRACE] action: event: SIGWINCH ignored. Not daemonized",
        ],
    );
    assert!(
        !log.contains("target 1 -> 0"),
        "TTOU never goes below one:\n{log}"
    );
    master.signal(libc::SIGINT);
    wait_trace(
        &mut master,
        &[
            "[TRACE] input: signal SIGINT",
            "[TRACE] action: notify the service manager: STOPPING=1",
            "[TRACE] action: close listeners, unlinking socket files",
            &format!("[TRACE] action: send SIGQUIT to worker 1 (pid {first}): quick shutdown"),
            &format!("[TRACE] input: pid {first} exited 0"),
            "[TRACE] action: exit 0: quick shutdown",
        ],
    );
    assert_eq!(master.exit_code(EXIT), 0);
}

#[test]
fn trace_murder_abort_then_kill_and_the_reap_and_respawn() {
    let fx = Fixture::new();
    // Heartbeats once through its file, then hangs, ignoring ABRT: KILL must follow.
    let hang = "trap '' ABRT; chmod 0 /proc/self/fd/$ARBITER_HEARTBEAT_FD; exec sleep 60";
    let mut master = trace_master(
        &fx,
        &[
            "-w",
            "1",
            "--timeout",
            "1",
            "--abort-grace",
            "300ms",
            "--",
            "sh",
            "-c",
            hang,
        ],
    );
    let log = wait_trace(&mut master, &["Booting worker with pid: "]);
    let pid = booted_pids(&log)[0];
    wait_trace(
        &mut master,
        &[
            &format!("[TRACE] input: pid {pid} heartbeat at "),
            "[TRACE] input: deadline passed (heartbeat deadline of worker 1)",
            &format!(
                "[TRACE] action: send SIGABRT to group of worker 1 (pid {pid}): heartbeat timeout"
            ),
            "WORKER TIMEOUT",
            // A hung worker is replaced at once, before it is gone.
            "[TRACE] action: spawn worker 2 in slot 0, generation 0: respawn",
            "[TRACE] input: deadline passed (kill deadline of worker 1)",
            &format!(
                "[TRACE] action: send SIGKILL to group of worker 1 (pid {pid}): abort grace over"
            ),
            &format!("[TRACE] input: pid {pid} killed by signal 9"),
            // The reap and what it decided: the group goes too, the exit was expected.
            &format!("[TRACE] action: kill the group of worker 1 (pid {pid}): worker exited"),
            &format!("[TRACE] action: reap {pid}"),
            &format!(
                "[TRACE] action: event: worker 1 (pid {pid}, slot 0) killed by signal 9: timeout, expected"
            ),
        ],
    );
    stop(&mut master);
}

#[test]
fn trace_reload_retires_an_old_worker_once_its_slot_has_a_ready_new_one() {
    let fx = Fixture::new();
    // The built-in worker speaks notify: the roll waits for READY=1 of each new worker.
    let mut master = trace_master(&fx, &["-w", "2"]);
    let log = wait_trace(&mut master, &["[TRACE] input: worker 2 spawned as pid "]);
    let old = booted_pids(&log);
    master.wait_log_count("sent READY=1", 2, SOON).unwrap();
    master.signal(libc::SIGHUP);
    wait_trace(
        &mut master,
        &[
            "Handling signal: hup",
            "[TRACE] input: configuration loaded: 2 workers",
            "[TRACE] action: notify the service manager: RELOADING=1",
            "[TRACE] action: event: reload to generation 1",
            "[TRACE] action: spawn worker 3 in slot 0, generation 1: reload",
            "sent READY=1",
            &format!(
                "[TRACE] action: send SIGTERM to worker 1 (pid {}): reload, slot 0 has ready worker 3 of generation 1",
                old[0]
            ),
            "[TRACE] action: spawn worker 4 in slot 1, generation 1: reload",
            &format!(
                "[TRACE] action: send SIGTERM to worker 2 (pid {}): reload, slot 1 has ready worker 4 of generation 1",
                old[1]
            ),
            "[TRACE] action: event: reload finished: generation 1 serving",
        ],
    );
    stop(&mut master);
}

#[test]
fn trace_reexec_and_a_refused_usr2_then_stop() {
    let fx = Fixture::new();
    let pidfile = fx.join("arbiter.pid");
    let mut master = trace_master(&fx, &["-w", "1", "-p", pidfile.to_str().unwrap()]);
    wait_trace(&mut master, &["[TRACE] input: worker 1 spawned as pid "]);
    master.signal(libc::SIGUSR2);
    let log = wait_trace(
        &mut master,
        &[
            "[TRACE] input: signal SIGUSR2",
            "[TRACE] action: re-exec a new master: upgrade",
            "[TRACE] input: new master spawned as pid ",
        ],
    );
    let child: i32 = line_with(&log, "input: new master spawned as pid ")
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("new master pid");
    master.track_tree();
    master.signal(libc::SIGUSR2);
    wait_trace(
        &mut master,
        &[
            "[TRACE] input: signal SIGUSR2",
            "[TRACE] action: event: USR2 signal ignored. Child exists.",
        ],
    );
    // The new master, still a child, traces its own start as an upgrade child.
    wait_trace(
        &mut master,
        &["[TRACE] action: write PIDFILE.2: upgrade ready"],
    );
    arbiter_tests::signal(child, libc::SIGTERM).unwrap();
    wait_trace(
        &mut master,
        &[
            &format!("[TRACE] input: pid {child} exited 0"),
            &format!("[TRACE] action: event: new master {child} exited 0"),
        ],
    );
    master.signal(libc::SIGTERM);
    wait_trace(
        &mut master,
        &[
            "[TRACE] input: signal SIGTERM",
            "[TRACE] action: send SIGTERM to worker 1 (pid ",
            "): shutdown",
            "[TRACE] action: exit 0: shutdown",
        ],
    );
    assert_eq!(master.exit_code(EXIT), 0);
    master.assert_no_process_left();
}

#[test]
fn trace_halt_on_a_boot_error() {
    let fx = Fixture::new();
    let mut master = trace_master(&fx, &["-w", "1", "--", "sh", "-c", "exit 3"]);
    let log = wait_trace(
        &mut master,
        &[
            "[TRACE] action: spawn worker 1 in slot 0, generation 0: boot",
            " exited 3",
            "[TRACE] action: event: worker 1 (pid ",
            "[TRACE] action: exit 3: Worker failed to boot.",
        ],
    );
    let pid = booted_pids(&log)[0];
    assert!(
        log.contains(&format!("[TRACE] input: pid {pid} exited 3")),
        "{log}"
    );
    assert_eq!(master.exit_code(EXIT), 3);
}
