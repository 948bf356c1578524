//! A complete, minimal shell around `arbiter-core`, with `std` alone: it spawns workers with
//! `std::process::Command`, reaps them, keeps the core's deadlines, carries out its signals,
//! and exits with the core's exit code. It shows what the core decides (respawning a crashed
//! worker, scaling, the graceful stop and the KILL at its deadline) and what a shell must do.
//!
//! ```text
//! cargo run -p arbiter-core --example minimal_shell
//! ```
//!
//! The script: three workers (`sh -c ...`); the one in slot 0 crashes after 0.3 s and is
//! replaced; at 0.8 s the shell scales to 4; at 1.6 s it asks for a graceful stop; the worker
//! in slot 2 ignores TERM, so the core kills it when the graceful timeout (1 s) is over; then
//! the core exits 0, and so does this program (within about 3 s).
//!
//! What std alone cannot do, and `arbiter-cli` does: wait for a child's exit and a deadline at
//! once (this shell checks its children every 10 ms; arbiter wakes on SIGCHLD through a signal
//! pipe), peek at an exit without reaping (so the core's `KillGroup` is carried out here right
//! after `try_wait` reaped the worker; arbiter kills the group while the worker is a zombie,
//! race-free), listeners, heartbeat files and notify sockets.

use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use arbiter_core::{
    Action, Arbiter, Command as CoreCommand, Config, ExitStatus, Moment, ReadyMode, Role, Signal,
};

/// How often the shell looks at its children (std cannot wait for SIGCHLD).
const CHILD_POLL: Duration = Duration::from_millis(10);

/// What a worker in `slot` runs: slot 0 crashes once, slot 2 ignores TERM, the rest idle.
fn worker_script(slot: usize, crashed_before: bool) -> &'static str {
    match slot {
        0 if !crashed_before => "sleep 0.3; exit 1",
        2 => "trap '' TERM; while :; do sleep 0.05; done",
        _ => "exec sleep 30",
    }
}

/// The shell: the core, the clock's origin, the children by pid, and the script's state.
struct Shell {
    core: Arbiter,
    origin: Instant,
    children: HashMap<i32, Child>,
    slot0_crashed: bool,
}

impl Shell {
    fn now(&self) -> Moment {
        Moment::from_origin(self.origin.elapsed())
    }

    fn log(&self, what: impl std::fmt::Display) {
        println!("[{:>6.3}s] {what}", self.origin.elapsed().as_secs_f64());
    }

    /// Carries out every action the core has; returns the exit code once it says to exit.
    fn execute(&mut self) -> Option<i32> {
        let mut exit = None;
        while let Some(action) = self.core.poll_action() {
            self.log(&action);
            match action {
                Action::Spawn { id, slot, .. } => {
                    let script = worker_script(slot, self.slot0_crashed);
                    let spawned = Command::new("sh")
                        .args(["-c", script])
                        .stdin(Stdio::null())
                        .process_group(0)
                        .spawn();
                    let now = self.now();
                    match spawned {
                        Ok(child) => {
                            let pid = child.id() as i32;
                            self.children.insert(pid, child);
                            self.core.handle_spawned(id, pid, now);
                        }
                        Err(e) => self.core.handle_spawn_failed(id, e.to_string(), now),
                    }
                }
                Action::Signal {
                    pid, signal, group, ..
                } => send(pid, signal, group),
                Action::KillGroup { pid, .. } => send(pid, Signal::Kill, true),
                Action::Reap { pid } => {
                    // try_wait has reaped it already; drop the handle.
                    self.children.remove(&pid);
                }
                Action::Exit { code, .. } => exit = Some(code),
                // No listeners, pidfile, config file, re-exec, log files or service manager in
                // this shell: those actions are only logged.
                _ => {}
            }
        }
        exit
    }

    /// Reports every child that exited since the last look.
    fn reap(&mut self) {
        let mut exited = Vec::new();
        for (&pid, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((pid, status));
            }
        }
        for (pid, status) in exited {
            let status = match (status.code(), status.signal()) {
                (Some(code), _) => ExitStatus::Exited(code),
                (None, Some(signal)) => ExitStatus::Signaled {
                    signal,
                    core_dumped: status.core_dumped(),
                },
                (None, None) => continue,
            };
            if self.core.worker_by_pid(pid).is_some_and(|w| w.slot == 0) {
                self.slot0_crashed = true;
            }
            let now = self.now();
            self.core.handle_exit(pid, status, now);
        }
    }
}

/// `kill -s SIGNAL PID` (or `-- -PID` for the process group), through the `kill` program:
/// std can only send SIGKILL, and only to its own `Child`.
fn send(pid: i32, signal: Signal, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = Command::new("kill")
        .args(["-s", signal.name(), "--", &target])
        .stderr(Stdio::null())
        .status();
}

fn main() -> ExitCode {
    let config = Config {
        workers: 3,
        ready: ReadyMode::Exec,
        graceful_timeout: Duration::from_secs(1),
        timeout: None,
        boot_timeout: None,
        pidfile: false,
        ..Config::default()
    };
    let mut shell = Shell {
        core: Arbiter::new(config, Role::Fresh, Moment::ZERO),
        origin: Instant::now(),
        children: HashMap::new(),
        slot0_crashed: false,
    };
    // The script's own inputs, as a user or a control socket would give them.
    let mut script: Vec<(Duration, &str)> = vec![
        (Duration::from_millis(800), "scale"),
        (Duration::from_millis(1600), "stop"),
    ];
    let give_up = Duration::from_secs(20);
    loop {
        if let Some(code) = shell.execute() {
            shell.log(format!("exit {code}"));
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
        if shell.origin.elapsed() > give_up {
            eprintln!("minimal_shell: the core did not exit within {give_up:?}");
            return ExitCode::FAILURE;
        }
        // Sleep until the core's next deadline, the script's next step or the next look at
        // the children, whichever comes first.
        let now = shell.now();
        let elapsed = shell.origin.elapsed();
        let mut wait = CHILD_POLL;
        if let Some(at) = shell.core.poll_timeout() {
            wait = wait.min(at.saturating_since(now));
        }
        if let Some((at, _)) = script.first() {
            wait = wait.min(at.saturating_sub(elapsed));
        }
        std::thread::sleep(wait);
        shell.reap();
        let elapsed = shell.origin.elapsed();
        while script.first().is_some_and(|(at, _)| *at <= elapsed) {
            let (_, step) = script.remove(0);
            let now = shell.now();
            match step {
                "scale" => shell.core.handle_command(CoreCommand::Scale(4), now),
                _ => shell.core.handle_signal(Signal::Term, now),
            }
        }
        let now = shell.now();
        if shell.core.poll_timeout().is_some_and(|at| at <= now) {
            shell.core.handle_timeout(now);
        }
    }
}
