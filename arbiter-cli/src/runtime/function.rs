//! Library mode in the loop: the worker "command" a function stands for, and forking a
//! worker that runs the function without exec ([`crate::library`]).

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use arbiter_core::WorkerId;
use arbiter_sockets::{HandoffPlan, Listener};

use crate::config::Settings;
use crate::library::WorkerContext;
use crate::os::spawn::{cstring, FunctionSpawn, SpawnError};
use crate::runtime::setup::{command_key, StartError, WorkerCommand};

use super::Runtime;
use crate::os::seam::Os;

/// The worker command to run: `resolved` for exec'd workers; in library mode, the function,
/// named after the program (a worker command in the settings is then refused).
pub(super) fn worker_command(
    library: bool,
    settings: &Settings,
    resolved: WorkerCommand,
    argv: &[OsString],
) -> Result<WorkerCommand, StartError> {
    if !library {
        return Ok(resolved);
    }
    refuse_worker_command(settings)?;
    let program = argv.first().cloned().unwrap_or_else(|| "arbiter".into());
    let name = std::path::Path::new(&program)
        .file_name()
        .map_or_else(|| program.to_string_lossy(), |n| n.to_string_lossy())
        .into_owned();
    let display = format!("{name} (library mode)");
    let nul = |e| StartError::Usage(format!("library mode: {e}"));
    Ok(WorkerCommand {
        program: cstring(program.as_bytes(), "the program name").map_err(nul)?,
        argv: Vec::new(),
        key: command_key(&display),
        display,
    })
}

/// In library mode a worker command in the settings is a usage error (the start, a HUP and
/// `--check-config` refuse it alike).
pub(crate) fn refuse_worker_command(settings: &Settings) -> Result<(), StartError> {
    if settings.command.is_empty() {
        return Ok(());
    }
    Err(StartError::Usage(
        "library mode: the worker is the program's function, a worker command (-- COMMAND) \
         cannot be given"
            .to_owned(),
    ))
}

impl<O: Os> Runtime<O> {
    /// Forks a worker that runs the library-mode function, with the same fds, protocol and
    /// bookkeeping as an exec'd worker.
    pub(super) fn spawn_function(
        &mut self,
        id: WorkerId,
        slot: usize,
        gpus: &[String],
    ) -> Result<i32, SpawnError> {
        let Some(function) = self.function.clone() else {
            return Err(SpawnError::Fork(std::io::Error::other(
                "no worker function in library mode",
            )));
        };
        let heartbeat = self.heartbeats.create(id.0).map_err(SpawnError::Fork)?;
        let heartbeat_file = heartbeat
            .file()
            .ok_or_else(|| SpawnError::Fork(std::io::Error::other("heartbeat file closed")))?;
        if let Some(identity) = &self.identity {
            // The worker bumps its heartbeat with fchmod, which only the file's owner may do.
            identity
                .give_file(heartbeat_file)
                .map_err(SpawnError::Prepare)?;
        }
        let notify_path = self.notify.open(id.0).map_err(SpawnError::Fork)?;
        if let Some(identity) = &self.identity {
            identity
                .share_path(&notify_path, 0o660)
                .map_err(SpawnError::Fork)?;
        }
        self.slots
            .ensure(&self.listeners, slot + 1)
            .map_err(|e| SpawnError::Fork(std::io::Error::other(e.to_string())))?;
        let listeners: Vec<&Listener> = self.slots.for_slot(&self.listeners, slot);
        let plan = HandoffPlan::new(&listeners, &[heartbeat_file.as_fd()])
            .map_err(|e| SpawnError::Fork(std::io::Error::other(e.to_string())))?;
        let heartbeat_fd = plan.extra_fd_targets().start;
        let listener_names: Vec<String> = listeners.iter().map(|l| l.name().to_owned()).collect();
        // What an exec'd worker finds in its environment (LISTEN_PID and WATCHDOG_PID are
        // added by the context, which knows the child's pid).
        let mut env = self.worker_env.pairs().to_vec();
        let mut add = |key: &str, value: String| env.push((key.into(), value.into()));
        add("LISTEN_FDS", listeners.len().to_string());
        add("LISTEN_FDNAMES", listener_names.join(":"));
        add("NOTIFY_SOCKET", notify_path.to_string_lossy().into_owned());
        add("ARBITER_HEARTBEAT_FD", heartbeat_fd.to_string());
        add("ARBITER_WORKER_ID", id.0.to_string());
        add("ARBITER_WORKER_SLOT", slot.to_string());
        add(
            "SERVER_SOFTWARE",
            concat!("arbiter/", env!("CARGO_PKG_VERSION")).to_owned(),
        );
        if self.settings.gpus.is_some() {
            add(&self.settings.gpu_env, gpus.join(","));
            add("ARBITER_GPU_ENV", self.settings.gpu_env.clone());
        }
        if let Some(timeout) = self.settings.timeout {
            add("WATCHDOG_USEC", timeout.as_micros().to_string());
        }
        let context = WorkerContext {
            id: id.0,
            slot,
            pid: 0,
            listener_names,
            listeners_taken: false,
            heartbeat_fd: Some(heartbeat_fd),
            notify_socket: notify_path,
            watchdog: self.settings.timeout,
            gpus: gpus.to_vec(),
            env,
        };
        let pipes = self.ops.worker_pipes().map_err(SpawnError::Fork)?;
        let output_fds = pipes.as_ref().map(|p| p.child_fds());
        let spawn = FunctionSpawn {
            plan,
            identity: self.identity.as_ref(),
            stdout_fd: output_fds.map(|fds| fds.0),
            stderr_fd: output_fds.map(|fds| fds.1),
        };
        let name = self.settings.name.clone().unwrap_or_else(|| {
            let display = &self.command.display;
            display
                .split_whitespace()
                .next()
                .unwrap_or(display)
                .to_owned()
        });
        let title = format!("worker [{name}]");
        // Everything the child needs is built above; the closure runs in the child only, once
        // its set-up is done: from here on it is the worker's own code.
        let (pid, exec) = self.os.spawn_function(
            spawn,
            Box::new(move |pid| {
                crate::os::title::set(&title);
                let mut context = context;
                context.pid = pid;
                let code = (*function)(context);
                let _ = std::io::stdout().flush();
                let _ = std::io::stderr().flush();
                i32::from(code)
            }),
        )?;
        self.track_spawned(id, slot, pid, heartbeat, exec, pipes);
        Ok(pid)
    }
}
