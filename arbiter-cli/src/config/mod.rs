//! Configuration of the `arbiter` command: command line, `ARBITER_*` environment, TOML file.
//!
//! Model: each source becomes a layer of raw values tagged with their origin (flag, variable,
//! or file key); per option the command line wins over the environment, which wins over the
//! file (layered with the `config` crate), which wins over the defaults. The winner is then
//! parsed and validated into [`Settings`] ("parse, don't validate": the rest of the program
//! only sees typed, checked values).
//!
//! Invariants: every error is one line naming the option, variable or key and the bad value;
//! only the known `ARBITER_<KEY>` variables are read (workers' `ARBITER_WORKER_ID`, re-exec's
//! `ARBITER_LISTEN_FDS` and the like are ignored); an unknown file key is an error; the
//! environment is passed in as a map, never read here. [`reload`] re-reads the file and the
//! environment with the original command line and touches nothing on error.
//!
//! Limits: bind addresses are kept as strings (the socket layer parses them); values read from
//! flags must be UTF-8 (the worker command need not); the worker command has no environment
//! variable, and `ARBITER_ENV` / `ARBITER_BIND` split on commas.

mod cli;
mod error;
mod parse;
mod raw;
mod resolve;
mod settings;
mod size;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;

pub use cli::ServeArgs;
pub use error::{ConfigError, Origin};
pub use settings::{
    BootErrorPolicy, ColorChoice, GpuSelection, Hooks, LogFormat, LogLevel, QuickSignal, ReadyMode,
    Settings,
};
pub use size::ByteSize;

/// A duration as a flag or variable gives it (`--timeout`, `ARBITER_GRACEFUL_TIMEOUT`, ...):
/// seconds (`"30"`, `"0.5"`) or humantime (`"500ms"`, `"1m"`); the reason when refused.
/// Public for fuzzing; [`load`] adds the option and the value to the reason.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    parse::duration(&raw::Raw::Str(text.to_owned()))
}

/// Worker environment pairs as repeated `--env KEY=VALUE` flags give them; the reason when
/// refused. Public for fuzzing.
pub fn parse_env_flags(values: &[String]) -> Result<Vec<(String, String)>, String> {
    let raw = raw::Raw::List(values.iter().cloned().map(raw::Raw::Str).collect());
    parse::env_pairs(&raw)
}

/// Worker environment pairs as `ARBITER_ENV` gives them (`KEY=VALUE`, comma separated); the
/// reason when refused. Public for fuzzing.
pub fn parse_env_variable(text: &str) -> Result<Vec<(String, String)>, String> {
    parse::env_pairs(&raw::Raw::Str(text.to_owned()))
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// Run the arbiter with these settings.
    Run(Box<Settings>),
    /// `--check-config`: validate, then print the resolved configuration
    /// ([`Settings::to_toml`]) and exit 0.
    CheckConfig(Box<Settings>),
}

/// What [`reload`] needs to resolve the configuration again: the parsed command line and the
/// configuration file path.
#[derive(Debug, Clone)]
pub struct Sources {
    cli: ServeArgs,
    config_file: Option<PathBuf>,
}

impl Sources {
    /// The configuration file in use, absolute, if any.
    pub fn config_file(&self) -> Option<&Path> {
        self.config_file.as_deref()
    }
}

/// Parses an `arbiter` command line (`args[0]` is the program name; options and the worker
/// command only, no subcommand) and resolves it with [`load_args`].
pub fn load(
    args: Vec<OsString>,
    env: &BTreeMap<String, String>,
) -> Result<(Invocation, Sources), ConfigError> {
    load_args(cli::ServeCommand::try_parse_from(args)?.args, env)
}

/// Resolves parsed options with the environment and the config file. Precedence: command line
/// > `ARBITER_*` environment > config file > defaults.
pub fn load_args(
    cli: ServeArgs,
    env: &BTreeMap<String, String>,
) -> Result<(Invocation, Sources), ConfigError> {
    let config_file = config_path(&cli, env)?;
    let sources = Sources { cli, config_file };
    let settings = Box::new(resolve(&sources, env)?);
    let invocation = if settings.check_config {
        Invocation::CheckConfig(settings)
    } else {
        Invocation::Run(settings)
    };
    Ok((invocation, sources))
}

/// On HUP: re-reads the config file and the environment with the command line kept in
/// `sources`. An error leaves the caller's settings untouched (they are not passed in).
pub fn reload(sources: &Sources, env: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
    resolve(sources, env)
}

fn resolve(sources: &Sources, env: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
    let file_env = raw::file_and_env(sources.config_file.as_deref(), env)?;
    let base = Settings {
        config_file: sources.config_file.clone(),
        check_config: sources.cli.check_config,
        command: sources.cli.command.clone(),
        ..Settings::default()
    };
    resolve::settings(&sources.cli.layer(), &file_env, base)
}

/// `--config`, else `ARBITER_CONFIG`, made absolute so a later `chdir` does not change which
/// file a reload reads.
fn config_path(
    cli: &ServeArgs,
    env: &BTreeMap<String, String>,
) -> Result<Option<PathBuf>, ConfigError> {
    let (path, origin) = match (&cli.config, env.get("ARBITER_CONFIG")) {
        (Some(path), _) => (path.clone(), Origin::Flag("--config")),
        (None, Some(path)) => (
            PathBuf::from(path),
            Origin::Env("ARBITER_CONFIG".to_owned()),
        ),
        (None, None) => return Ok(None),
    };
    if path.as_os_str().is_empty() {
        return Err(ConfigError::Invalid {
            origin,
            value: "\"\"".to_owned(),
            reason: "must not be empty".to_owned(),
        });
    }
    std::path::absolute(&path)
        .map(Some)
        .map_err(|source| ConfigError::ReadFile { path, source })
}
