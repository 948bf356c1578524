//! arbiter as a library: the master's runtime, its operations, the clients of a running
//! master and the built-in worker, composed over the pure crates.
//!
//! Model: quinn over quinn-proto. [`arbiter_core`] decides; the [`runtime`] owns the single
//! poll loop that feeds it (signals, exits, notify messages, heartbeats, deadlines, control
//! orders) and carries out its actions through [`os`], the thin layer over the kernel.
//! [`ops`] (control socket, metrics, statsd, output capture, hooks) observes the core's events
//! and status; [`client`] (`ctl`, `upgrade`) and [`worker`] share no code with the runtime.
//! The `arbiter` binary is [`cli::Cli`] parsed and [`cli::run`] mapped to an exit code.
//!
//! The runtime reaches the kernel only through the OS seam, [`os::seam::Os`]: the real
//! [`os::seam::System`] (which owns the signal self-pipe) or the recording
//! [`os::seam::FakeOs`], over which the shell's own sequencing is tested without forking.
//! [`library::serve`] runs a Rust function as every worker, forked from a master that loaded
//! its state once (gunicorn's `preload_app`); `examples/preload.rs` shows it.
//!
//! ```no_run
//! // Run a master from code: settings as the command line would give them.
//! let cli = <arbiter_cli::cli::Cli as clap::Parser>::parse_from(["arbiter", "-w", "2"]);
//! let code = arbiter_cli::cli::run(cli).unwrap_or_else(|failure| failure.code());
//! std::process::exit(i32::from(code));
//! ```
//!
//! Invariants: the master has one thread whenever it forks; between fork and exec only
//! async-signal-safe calls run (`os::spawn`); every fd the runtime owns is closed when its
//! owner drops. Limits: Linux only (pidfd-free, `/proc`, `PR_SET_PDEATHSIG`).

pub mod cli;
pub mod client;
pub mod config;
pub mod library;
pub mod ops;
pub mod os;
pub mod protocol;
pub mod runtime;
pub mod serve;
pub mod worker;

pub use cli::{command, Cli};
pub use config::Settings;
pub use runtime::{Runtime, Start, StartError};

/// A command that failed: the one line to print on stderr and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    line: String,
    code: u8,
}

impl Failure {
    /// A failure with its whole message line (prefix included) and exit code.
    pub fn new(line: impl Into<String>, code: u8) -> Failure {
        Failure {
            line: line.into(),
            code,
        }
    }

    /// The exit code.
    pub fn code(&self) -> u8 {
        self.code
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line)
    }
}

impl std::error::Error for Failure {}
