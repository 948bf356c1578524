//! Layers to settings: per key, the command line wins over the environment, which wins over
//! the file, which wins over the default; then the checks that span several keys.

use super::error::ConfigError;
use super::parse::{self, Parsed};
use super::raw::{Layer, Raw, Sourced};
use super::settings::{
    BootErrorPolicy, ColorChoice, GpuSelection, Hooks, LogFormat, LogLevel, QuickSignal, ReadyMode,
    Settings,
};

/// The layers of one resolution, highest precedence first.
struct Layers<'a> {
    cli: &'a Layer,
    file_env: &'a Layer,
}

impl Layers<'_> {
    fn find(&self, key: &str) -> Option<&Sourced> {
        self.cli.get(key).or_else(|| self.file_env.get(key))
    }

    /// The value of `key` parsed by `parse`, or `default` when no layer sets it.
    fn value<T>(
        &self,
        key: &str,
        default: T,
        parse: impl Fn(&Raw) -> Parsed<T>,
    ) -> Result<T, ConfigError> {
        match self.find(key) {
            None => Ok(default),
            Some(sourced) => parse(&sourced.raw).map_err(|reason| invalid(sourced, reason)),
        }
    }
}

fn invalid(sourced: &Sourced, reason: String) -> ConfigError {
    ConfigError::Invalid {
        origin: sourced.origin.clone(),
        value: sourced.raw.to_string(),
        reason,
    }
}

fn usize_in(raw: &Raw, min: u64) -> Parsed<usize> {
    let n = parse::number_in(raw, min, usize::MAX as u64)?;
    usize::try_from(n).map_err(|_| "too large".to_owned())
}

/// Resolves the command-line layer over the file-and-environment layer into validated
/// settings. `base` holds the defaults plus what only the command line sets: the config file,
/// `--check-config`, and the command after `--`.
pub(crate) fn settings(
    cli: &Layer,
    file_env: &Layer,
    base: Settings,
) -> Result<Settings, ConfigError> {
    let layers = Layers { cli, file_env };
    let d = base;
    let settings = Settings {
        bind: layers.value("bind", d.bind, parse::binds)?,
        bind_explicit: layers.find("bind").is_some(),
        workers: layers.value("workers", d.workers, |r| {
            parse::number_in(r, 1, arbiter_core::MAX_WORKERS as u64).map(|n| n as usize)
        })?,
        timeout: layers.value("timeout", d.timeout, parse::duration_or_off)?,
        heartbeat_filter: layers.value("heartbeat_filter", d.heartbeat_filter, parse::boolean)?,
        boot_timeout: layers.value("boot_timeout", d.boot_timeout, parse::duration_or_off)?,
        graceful_timeout: layers.value("graceful_timeout", d.graceful_timeout, parse::duration)?,
        abort_grace: layers.value("abort_grace", d.abort_grace, parse::duration)?,
        shutdown_delay: layers.value("shutdown_delay", d.shutdown_delay, parse::duration)?,
        pidfile: layers.value("pidfile", d.pidfile, |r| parse::path(r).map(Some))?,
        name: layers.value("name", d.name, |r| parse::text(r).map(Some))?,
        env: layers.value("env", d.env, parse::env_pairs)?,
        chdir: layers.value("chdir", d.chdir, |r| parse::path(r).map(Some))?,
        reuse_port: layers.value("reuse_port", d.reuse_port, parse::boolean)?,
        reuse_port_per_slot: layers.value(
            "reuse_port_per_slot",
            d.reuse_port_per_slot,
            parse::boolean,
        )?,
        backlog: layers.value("backlog", d.backlog, |r| {
            parse::number_in(r, 1, 65535).map(|n| n as i32)
        })?,
        umask: layers.value("umask", d.umask, parse::umask)?,
        bind_retries: layers.value("bind_retries", d.bind_retries, |r| {
            parse::number_in(r, 0, u64::from(u32::MAX)).map(|n| n as u32)
        })?,
        log_level: layers.value("log_level", d.log_level, |r| {
            parse::name_of(r, LogLevel::NAMES, LogLevel::from_name)
        })?,
        log_file: layers.value("log_file", d.log_file, parse::log_file)?,
        log_format: layers.value("log_format", d.log_format, |r| {
            parse::name_of(r, LogFormat::NAMES, LogFormat::from_name)
        })?,
        color: layers.value("color", d.color, |r| {
            parse::name_of(r, ColorChoice::NAMES, ColorChoice::from_name)
        })?,
        worker_tmp_dir: layers.value("worker_tmp_dir", d.worker_tmp_dir, |r| {
            parse::path(r).map(Some)
        })?,
        user: layers.value("user", d.user, |r| parse::account(r).map(Some))?,
        group: layers.value("group", d.group, |r| parse::account(r).map(Some))?,
        on_boot_error: layers.value("on_boot_error", d.on_boot_error, |r| {
            parse::name_of(r, BootErrorPolicy::NAMES, BootErrorPolicy::from_name)
        })?,
        ready: layers.value("ready", d.ready, |r| {
            parse::name_of(r, ReadyMode::NAMES, ReadyMode::from_name)
        })?,
        ready_after: layers.value("ready_after", d.ready_after, parse::duration)?,
        quick_signal: layers.value("quick_signal", d.quick_signal, |r| {
            parse::signal_name(r, QuickSignal::NAMES, QuickSignal::from_name)
        })?,
        forward_usr1: layers.value("forward_usr1", d.forward_usr1, parse::boolean)?,
        max_surge: layers.value("max_surge", d.max_surge, |r| usize_in(r, 1))?,
        max_worker_age: layers.value("max_worker_age", d.max_worker_age, parse::duration_or_off)?,
        max_worker_age_jitter: layers.value(
            "max_worker_age_jitter",
            d.max_worker_age_jitter,
            |r| parse::duration(r).map(Some),
        )?,
        max_worker_memory: layers.value(
            "max_worker_memory",
            d.max_worker_memory,
            parse::size_or_off,
        )?,
        gpus: layers.value("gpus", d.gpus, |r| parse::gpus(r).map(Some))?,
        gpus_per_worker: layers.value("gpus_per_worker", d.gpus_per_worker, |r| usize_in(r, 1))?,
        gpu_env: layers.value("gpu_env", d.gpu_env, parse::env_name)?,
        daemon: layers.value("daemon", d.daemon, parse::boolean)?,
        control_socket: layers.value("control_socket", d.control_socket, |r| {
            parse::path(r).map(Some)
        })?,
        metrics_bind: layers.value("metrics_bind", d.metrics_bind, |r| {
            let text = parse::text(r)?;
            text.parse().map(Some).map_err(|_| {
                "expected HOST:PORT with an IP address, such as 127.0.0.1:9100".to_owned()
            })
        })?,
        statsd_host: layers.value("statsd_host", d.statsd_host, |r| {
            let text = parse::text(r)?;
            match text.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(Some(text))
                }
                _ => Err("expected HOST:PORT, such as 127.0.0.1:8125".to_owned()),
            }
        })?,
        statsd_prefix: layers.value("statsd_prefix", d.statsd_prefix, parse::text)?,
        capture_output: layers.value("capture_output", d.capture_output, parse::boolean)?,
        hooks: Hooks {
            on_starting: layers.value("on_starting", d.hooks.on_starting, |r| {
                parse::text(r).map(Some)
            })?,
            when_ready: layers.value("when_ready", d.hooks.when_ready, |r| {
                parse::text(r).map(Some)
            })?,
            on_reload: layers
                .value("on_reload", d.hooks.on_reload, |r| parse::text(r).map(Some))?,
            nworkers_changed: layers.value("nworkers_changed", d.hooks.nworkers_changed, |r| {
                parse::text(r).map(Some)
            })?,
            worker_exit: layers.value("worker_exit", d.hooks.worker_exit, |r| {
                parse::text(r).map(Some)
            })?,
            on_exit: layers.value("on_exit", d.hooks.on_exit, |r| parse::text(r).map(Some))?,
        },
        // A command after `--` is in `base`; the file's applies only when there is none.
        command: match d.command.is_empty() {
            true => layers.value("command", d.command, parse::command)?,
            false => d.command,
        },
        config_file: d.config_file,
        check_config: d.check_config,
    };
    check_combinations(&settings, &layers)?;
    Ok(settings)
}

/// Checks that span several options.
fn check_combinations(settings: &Settings, layers: &Layers<'_>) -> Result<(), ConfigError> {
    if let Some(GpuSelection::List(ids)) = &settings.gpus {
        if settings.gpus_per_worker > ids.len() {
            return Err(ConfigError::TooFewGpus {
                per_worker: settings.gpus_per_worker,
                listed: ids.len(),
            });
        }
    }
    if let (Some(age), Some(jitter), Some(sourced)) = (
        settings.max_worker_age,
        settings.max_worker_age_jitter,
        layers.find("max_worker_age_jitter"),
    ) {
        if jitter > age {
            let age = humantime::format_duration(age);
            return Err(invalid(
                sourced,
                format!("is more than max_worker_age ({age})"),
            ));
        }
    }
    let logs_to_stderr_explicitly = layers
        .find("log_file")
        .is_some_and(|sourced| matches!(&sourced.raw, Raw::Str(s) if s == "-"));
    if settings.daemon && logs_to_stderr_explicitly {
        return Err(ConfigError::DaemonLogsToStderr);
    }
    Ok(())
}
