//! The `arbiter` command line: `arbiter [OPTIONS] [-- COMMAND...]` (the same as
//! `arbiter serve`), `arbiter ctl`, `arbiter upgrade` and `arbiter worker`, and running one of
//! them to an exit code.

use clap::{CommandFactory, Parser, Subcommand};

use crate::client::{ctl, upgrade};
use crate::config::ServeArgs;
use crate::{serve, worker, Failure};

/// A pre-fork process arbiter: binds sockets once and keeps N workers alive.
#[derive(Debug, Parser)]
#[command(
    name = "arbiter",
    version,
    args_override_self = true,
    args_conflicts_with_subcommands = true,
    after_help = "Every option is also a key of the --config TOML file (workers = 4) and an \
                  ARBITER_<KEY> variable (ARBITER_WORKERS=4); the command line wins, then the \
                  environment, then the file.\n\n\
                  Example: arbiter -w 4 -b 127.0.0.1:8000 -- uvicorn --fd 3 app:app"
)]
pub struct Cli {
    /// What to run; none runs the arbiter (`serve`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The arbiter's options, when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the arbiter (the default when no subcommand is given)
    #[command(args_override_self = true)]
    Serve(Box<ServeArgs>),
    /// Talk to a running arbiter: status, scale N, reload, stop, kill-worker PID
    Ctl(ctl::Args),
    /// Replace a running arbiter by the binary on disk, without dropping a connection
    Upgrade(upgrade::Args),
    /// The built-in HTTP worker (the default worker)
    Worker(worker::Switches),
}

/// The whole command-line definition, for man pages and shell completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs what the command line asks for; `Ok` is the exit code.
pub fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        None => serve::main(cli.serve),
        Some(Command::Serve(args)) => serve::main(*args),
        Some(Command::Ctl(args)) => ctl::run(&args),
        Some(Command::Upgrade(args)) => upgrade::run(&args),
        Some(Command::Worker(switches)) => worker::main(&switches)
            .map_err(|error| Failure::new(format!("arbiter worker: {error}"), error.exit_code())),
    }
}
