//! From validated settings to runtime resources: the worker command, the core's config,
//! the workers' base environment, bind specs and options.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use arbiter_core::{BootErrorPolicy, Config, GpuConfig, ReadyMode, Signal};
use arbiter_sockets::{BindOptions, BindSpec};

use crate::config::{self, GpuSelection, QuickSignal, Settings};
use crate::os::identity::{self, Identity};
use crate::os::spawn::{cstring, resolve_program};

/// A startup failure, with the exit code it gets.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad usage or configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A runtime failure: a port in use, a live pidfile, ... (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl StartError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Usage(_) => 2,
            StartError::Runtime(_) => 1,
        }
    }
}

/// Variables of the worker protocol: set by the master per worker, never passed through.
pub const PROTOCOL_VARS: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "ARBITER_HEARTBEAT_FD",
    "ARBITER_WORKER_ID",
    "ARBITER_WORKER_SLOT",
    "ARBITER_GPU_ENV",
    "ARBITER_LISTEN_FDS",
    "ARBITER_LISTEN_FDNAMES",
    "ARBITER_MASTER_PID",
    NOTIFY_KEYS_VAR,
    "SERVER_SOFTWARE",
];

/// The program every worker runs.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The resolved program path.
    pub program: CString,
    /// argv, argv[0] included.
    pub argv: Vec<CString>,
    /// For logs: `builtin` or the command line.
    pub display: String,
    /// Identity for `ready = auto`.
    pub key: u64,
}

/// Resolves the worker command: the built-in worker (this binary, `worker`) when empty.
pub fn worker_command(
    command: &[OsString],
    path_var: Option<&std::ffi::OsStr>,
) -> Result<WorkerCommand, StartError> {
    let (program, argv, display) = if command.is_empty() {
        let exe = std::env::current_exe()
            .map_err(|e| StartError::Runtime(format!("cannot find the arbiter binary: {e}")))?;
        let argv = vec![exe.clone().into_os_string(), OsString::from("worker")];
        (exe, argv, "builtin".to_owned())
    } else {
        let program = resolve_program(&command[0], path_var).map_err(StartError::Usage)?;
        let display = command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        (program, command.to_vec(), display)
    };
    let nul = |e| StartError::Usage(format!("worker command: {e}"));
    let program = cstring(program.as_os_str().as_bytes(), "the worker program").map_err(nul)?;
    let argv = argv
        .iter()
        .map(|a| cstring(a.as_bytes(), "a worker argument"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(nul)?;
    let key = command_key(&display);
    Ok(WorkerCommand {
        program,
        argv,
        display,
        key,
    })
}

/// A stable identity of a command line (FNV-1a), the same in every arbiter build, so an
/// upgrade child can recognise the commands its parent knew to speak the notify protocol.
pub fn command_key(display: &str) -> u64 {
    display.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The variable through which a master tells the master it re-execs which command keys speak
/// the notify protocol.
pub const NOTIFY_KEYS_VAR: &str = "ARBITER_NOTIFY_KEYS";

/// Parses `ARBITER_NOTIFY_KEYS` (comma-separated hexadecimal keys); bad items are skipped.
pub fn parse_notify_keys(value: &str) -> Vec<u64> {
    value
        .split(',')
        .filter_map(|k| u64::from_str_radix(k.trim(), 16).ok())
        .collect()
}

/// Makes the paths of `settings` absolute against `base` (the directory arbiter was started
/// in), so `--chdir` and reloads never change what a relative path on the command line meant.
pub fn absolutize(settings: &mut Settings, base: &std::path::Path) {
    let fix = |path: &mut Option<PathBuf>| {
        if let Some(p) = path.as_mut() {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        }
    };
    fix(&mut settings.pidfile);
    fix(&mut settings.log_file);
    fix(&mut settings.worker_tmp_dir);
    fix(&mut settings.control_socket);
    fix(&mut settings.chdir);
}

/// What settings resolve to against the master's environment: the worker command (found on
/// its `PATH`), the GPU pool (`auto` reads its GPU variable) and the workers' identity (looked
/// up in the user database). One function for the start, a HUP and `--check-config`, so all
/// three accept and refuse the same things.
pub struct Prepared {
    /// The worker command.
    pub command: WorkerCommand,
    /// The GPU pool, when balancing.
    pub gpus: Option<GpuConfig>,
    /// The user and groups workers switch to, when `--user` or `--group` asks for a change.
    pub identity: Option<Identity>,
}

/// Resolves the worker command and the GPU pool of `settings`.
pub fn prepare(
    settings: &Settings,
    master_env: &[(OsString, OsString)],
) -> Result<Prepared, StartError> {
    let var = |name: &[u8]| {
        master_env
            .iter()
            .find(|(k, _)| k.as_bytes() == name)
            .map(|(_, v)| v.as_os_str())
    };
    let command = worker_command(&settings.command, var(b"PATH"))?;
    let own_visible = var(settings.gpu_env.as_bytes()).map(|v| v.to_string_lossy().into_owned());
    let gpus = gpu_config(settings, own_visible.as_deref())?;
    let identity = identity::resolve(settings.user.as_deref(), settings.group.as_deref())
        .map_err(StartError::Usage)?;
    Ok(Prepared {
        command,
        gpus,
        identity,
    })
}

/// Parses the bind strings.
pub fn bind_specs(settings: &Settings) -> Result<Vec<BindSpec>, StartError> {
    settings
        .bind
        .iter()
        .map(|b| {
            b.parse::<BindSpec>()
                .map_err(|e| StartError::Usage(e.to_string()))
        })
        .collect()
}

/// Socket options from the settings.
pub fn bind_options(settings: &Settings) -> BindOptions {
    BindOptions {
        // Per-slot listeners join their slot 0's reuse-port group.
        reuse_port: settings.reuse_port || settings.reuse_port_per_slot,
        backlog: settings.backlog,
        umask: settings.umask,
        mode: None,
        retries: settings.bind_retries,
        retry_delay: Duration::from_secs(1),
    }
}

/// The GPU pool: an explicit list, or `auto` (the master's own `CUDA_VISIBLE_DEVICES`, else
/// `nvidia-smi -L`).
pub fn gpu_config(
    settings: &Settings,
    own_visible: Option<&str>,
) -> Result<Option<GpuConfig>, StartError> {
    let devices = match &settings.gpus {
        None => return Ok(None),
        Some(GpuSelection::List(list)) => list.clone(),
        Some(GpuSelection::Auto) => match own_visible.filter(|v| !v.trim().is_empty()) {
            Some(visible) => GpuConfig::parse_list(visible)
                .map_err(|e| StartError::Usage(format!("--gpus auto: {e}")))?,
            None => nvidia_smi_devices()?,
        },
    };
    GpuConfig::new(devices, settings.gpus_per_worker, settings.gpu_env.clone())
        .map(Some)
        .map_err(|e| StartError::Usage(format!("--gpus: {e}")))
}

fn nvidia_smi_devices() -> Result<Vec<String>, StartError> {
    let output = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .map_err(|e| {
            StartError::Usage(format!(
                "--gpus auto: CUDA_VISIBLE_DEVICES is not set and nvidia-smi cannot run ({e})"
            ))
        })?;
    let count = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("GPU "))
        .count();
    if !output.status.success() || count == 0 {
        return Err(StartError::Usage(
            "--gpus auto: nvidia-smi -L lists no GPU".into(),
        ));
    }
    Ok((0..count).map(|i| i.to_string()).collect())
}

/// The core's configuration.
pub fn core_config(settings: &Settings, command_key: u64, gpus: Option<GpuConfig>) -> Config {
    Config {
        workers: settings.workers,
        timeout: settings.timeout,
        boot_timeout: settings.boot_timeout,
        graceful_timeout: settings.graceful_timeout,
        abort_grace: settings.abort_grace,
        shutdown_delay: settings.shutdown_delay,
        abort_signal: Signal::Abrt,
        quick_signal: match settings.quick_signal {
            QuickSignal::Quit => Signal::Quit,
            QuickSignal::Int => Signal::Int,
            QuickSignal::Term => Signal::Term,
            QuickSignal::Kill => Signal::Kill,
        },
        ready: match settings.ready {
            config::ReadyMode::Notify => ReadyMode::Notify,
            config::ReadyMode::Exec => ReadyMode::Exec,
            config::ReadyMode::Auto => ReadyMode::Auto,
        },
        on_boot_error: match settings.on_boot_error {
            config::BootErrorPolicy::Halt => BootErrorPolicy::Halt,
            config::BootErrorPolicy::Backoff => BootErrorPolicy::Backoff,
        },
        ready_after: settings.ready_after,
        max_surge: settings.max_surge,
        daemonized: settings.daemon,
        forward_usr1: settings.forward_usr1,
        command_key,
        gpus,
        pidfile: settings.pidfile.is_some(),
        // From the service manager's environment, not the settings: the caller adds it.
        watchdog: None,
        // Set by the runtime, which knows the service manager.
        extend_start: false,
        max_worker_age: settings.max_worker_age,
        max_worker_age_jitter: settings.max_worker_age_jitter,
        max_worker_memory: settings.max_worker_memory.map(|size| size.0),
        memory_sample_every: Config::default().memory_sample_every,
        slot_listeners: settings.reuse_port_per_slot,
    }
}

/// The workers' base environment, and its `KEY=VALUE` C strings made once: a spawn made each
/// anew (two allocations per variable, a twentieth of the master's CPU in a boot).
pub struct WorkerEnv {
    pairs: Vec<(OsString, OsString)>,
    /// The C strings, or the error every spawn reports (a NUL byte in a variable).
    entries: Result<Vec<CString>, String>,
}

impl WorkerEnv {
    fn new(pairs: Vec<(OsString, OsString)>) -> WorkerEnv {
        let entries = pairs
            .iter()
            .map(|(key, value)| env_entry(key.as_bytes(), value.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match e {
                crate::os::spawn::SpawnError::Nul(what) => what,
                other => other.to_string(),
            });
        WorkerEnv { pairs, entries }
    }

    /// The variables.
    pub fn pairs(&self) -> &[(OsString, OsString)] {
        &self.pairs
    }

    /// The variables as `KEY=VALUE` C strings, for an exec'd worker.
    pub fn entries(&self) -> Result<&[CString], crate::os::spawn::SpawnError> {
        match &self.entries {
            Ok(entries) => Ok(entries),
            Err(what) => Err(crate::os::spawn::SpawnError::Nul(what.clone())),
        }
    }
}

/// The workers' environment: the master's, less the protocol variables (and the GPU variable
/// when balancing), with `--env` applied.
pub fn worker_base_env(
    master_env: &[(OsString, OsString)],
    settings: &Settings,
    balancing_gpus: bool,
) -> WorkerEnv {
    let mut env: Vec<(OsString, OsString)> = master_env
        .iter()
        .filter(|(key, _)| {
            let key = key.to_string_lossy();
            let protocol = PROTOCOL_VARS.contains(&key.as_ref());
            let gpu = balancing_gpus && key == settings.gpu_env.as_str();
            !protocol && !gpu
        })
        .cloned()
        .collect();
    for (key, value) in &settings.env {
        env.retain(|(k, _)| k.as_bytes() != key.as_bytes());
        env.push((OsString::from(key), OsString::from(value)));
    }
    WorkerEnv::new(env)
}

/// `KEY=VALUE` as a C string.
pub fn env_entry(key: &[u8], value: &[u8]) -> Result<CString, crate::os::spawn::SpawnError> {
    let mut bytes = Vec::with_capacity(key.len() + value.len() + 1);
    bytes.extend_from_slice(key);
    bytes.push(b'=');
    bytes.extend_from_slice(value);
    cstring(&bytes, &String::from_utf8_lossy(key))
}

/// The runtime directory for the notify sockets: `$XDG_RUNTIME_DIR`, else
/// [`crate::os::scratch_dir`] (`$TMPDIR` if set, else `/dev/shm`, else `/tmp`): a socket is
/// bound per worker spawned, 12 s of a 10,000-worker boot on a loaded disk `/tmp`. Workers of
/// another user (`--user`) cannot reach the master's private `$XDG_RUNTIME_DIR`: theirs is
/// always under the temp dir.
pub fn runtime_parent(master_env: &[(OsString, OsString)], switching_user: bool) -> PathBuf {
    if switching_user {
        return std::env::temp_dir();
    }
    master_env
        .iter()
        .find(|(k, _)| k == "XDG_RUNTIME_DIR")
        .map(|(_, v)| PathBuf::from(OsString::from_vec(v.as_bytes().to_vec())))
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| {
            let tmpdir = master_env.iter().find(|(k, _)| k == "TMPDIR");
            crate::os::scratch_dir(tmpdir.map(|(_, v)| v.as_os_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_env_drops_protocol_variables_and_applies_env_settings() {
        let master = vec![
            (OsString::from("PATH"), OsString::from("/bin")),
            (OsString::from("LISTEN_FDS"), OsString::from("9")),
            (
                OsString::from("CUDA_VISIBLE_DEVICES"),
                OsString::from("0,1"),
            ),
            (OsString::from("KEEP"), OsString::from("old")),
        ];
        let settings = Settings {
            env: vec![("KEEP".into(), "new".into())],
            ..Settings::default()
        };
        let env = worker_base_env(&master, &settings, true);
        assert_eq!(env.entries().unwrap(), [c"PATH=/bin", c"KEEP=new"]);
        let keys: Vec<_> = env
            .pairs()
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect();
        assert_eq!(keys, ["PATH=/bin", "KEEP=new"]);
        let env = worker_base_env(&master, &settings, false);
        assert!(env.pairs().iter().any(|(k, _)| k == "CUDA_VISIBLE_DEVICES"));
        let nul = Settings {
            env: vec![("BAD".into(), "a\0b".into())],
            ..Settings::default()
        };
        let error = worker_base_env(&master, &nul, false).entries().unwrap_err();
        assert_eq!(error.to_string(), "NUL byte in BAD");
    }

    #[test]
    fn command_keys_are_stable_and_round_trip_through_the_variable() {
        assert_eq!(command_key(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(command_key("a b"), command_key("a  b"));
        let keys = [command_key("uvicorn --fd 3 app:app"), 7];
        let value = keys
            .iter()
            .map(|k| format!("{k:x}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_notify_keys(&value), keys);
        assert_eq!(parse_notify_keys("zz,10"), [16]);
    }

    #[test]
    fn relative_paths_are_made_absolute_against_the_start_directory() {
        let mut settings = Settings {
            pidfile: Some("run/a.pid".into()),
            log_file: Some("-".into()),
            chdir: Some("/srv".into()),
            ..Settings::default()
        };
        absolutize(&mut settings, std::path::Path::new("/home/app"));
        assert_eq!(settings.pidfile, Some(PathBuf::from("/home/app/run/a.pid")));
        assert_eq!(settings.log_file, Some(PathBuf::from("-")));
        assert_eq!(settings.chdir, Some(PathBuf::from("/srv")));
    }

    #[test]
    fn missing_worker_command_is_a_usage_error() {
        let err = worker_command(&[OsString::from("no-such-worker-x")], None).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("not found"));
    }
}
