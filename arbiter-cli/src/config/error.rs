//! The one error type of configuration loading.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value came from: what an error message names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, such as `--workers`.
    Flag(&'static str),
    /// An environment variable, such as `ARBITER_WORKERS`.
    Env(String),
    /// A key of the configuration file.
    File {
        /// The key, such as `workers`.
        key: &'static str,
        /// The configuration file.
        path: PathBuf,
    },
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap's own outcome: a usage error, or the `--help` / `--version` text (exit 0).
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    ReadFile {
        /// The file named by `--config` or `ARBITER_CONFIG`.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("invalid configuration file {}: {message}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line.
        message: String,
    },
    /// The configuration file has a key that is no option.
    #[error("unknown configuration key \"{key}\" in {}", path.display())]
    UnknownKey {
        /// The unknown key.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// A value is invalid for its option.
    #[error("{}: {reason}", ValueAt(origin, value))]
    Invalid {
        /// Where the value came from.
        origin: Origin,
        /// The value as given (strings quoted).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `gpus_per_worker` asks for more GPUs than `gpus` lists.
    #[error("gpus_per_worker = {per_worker} is more than the {listed} GPU(s) listed in gpus")]
    TooFewGpus {
        /// GPUs each worker wants.
        per_worker: usize,
        /// GPUs in the explicit list.
        listed: usize,
    },
    /// `daemon` with logging to stderr, which a daemon closes.
    #[error("daemon = true with log_file = \"-\": a daemon has no stderr; give log_file a path")]
    DaemonLogsToStderr,
}

impl ConfigError {
    /// The exit status for this error: clap's own for `--help`/`--version` (0) and usage errors
    /// (2), and 2 for every configuration error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Clap(e) => u8::try_from(e.exit_code()).unwrap_or(2),
            _ => 2,
        }
    }

    /// Prints the error the way the user expects: clap's text (help on stdout, usage errors on
    /// stderr) as clap prints it, anything else as one `arbiter: ...` line on stderr.
    pub fn print(&self) {
        match self {
            ConfigError::Clap(e) => {
                // Printing fails only when stdout/stderr is closed; there is nowhere to report it.
                let _ = e.print();
            }
            other => eprintln!("arbiter: {other}"),
        }
    }
}

struct ValueAt<'a>(&'a Origin, &'a str);

impl fmt::Display for ValueAt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ValueAt(origin, value) = *self;
        match origin {
            Origin::Flag(flag) => write!(f, "{flag} {value}"),
            Origin::Env(var) => write!(f, "{var}={value}"),
            Origin::File { key, path } => write!(f, "{key} = {value} in {}", path.display()),
        }
    }
}
