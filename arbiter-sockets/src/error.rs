//! The crate's one error type.
//!
//! Every message is one line: text from outside (a bind spec, a host, a path) is shown with
//! control characters escaped (`\n`), so a spec holding a newline cannot split a log line.

use std::os::fd::RawFd;
use std::path::PathBuf;

/// Errors of bind specs, listeners, inheritance and hand-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bind string could not be parsed; `reason` names the bad part.
    #[error("bad bind `{}`: {}", escaped(.spec), escaped(.reason))]
    BadSpec {
        /// The bind string as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A host name did not resolve.
    #[error("cannot resolve `{}`: {source}", escaped(.host))]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// Creating, binding or listening on a socket failed.
    #[error("cannot bind {} (after {attempts} attempt(s)): {source}", escaped(.addr))]
    Bind {
        /// The address, as `http://HOST:PORT` or `unix:/path`.
        addr: String,
        /// How many times binding was tried.
        attempts: u32,
        /// The OS error of the last attempt.
        #[source]
        source: std::io::Error,
    },
    /// A unix socket path holds something that is not a socket.
    #[error(
        "cannot bind unix:{}: the path exists and is not a socket",
        shown(path)
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A unix socket path holds a socket that accepts connections.
    #[error("cannot bind unix:{}: a live socket is listening there", shown(path))]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// An inherited or `fd://` descriptor is not a listening socket.
    #[error("fd {fd} is not a listening socket: {reason}")]
    NotAListener {
        /// The descriptor.
        fd: RawFd,
        /// Why it was refused.
        reason: String,
    },
    /// An inheritance variable (`LISTEN_*`, `ARBITER_*`) has a bad value.
    #[error("bad {var}={value:?}: {reason}")]
    BadEnv {
        /// The variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A hand-off plan could not be built.
    #[error("cannot plan the hand-off: {0}")]
    Handoff(&'static str),
    /// Another OS call failed.
    #[error("{what}: {source}")]
    Os {
        /// The call and its object.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Text from outside as one line: control characters escaped (`\n`, `\u{1}`), the rest as is.
fn escaped(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// A path as one line of text: lossy UTF-8, control characters escaped.
fn shown(path: &std::path::Path) -> String {
    escaped(&path.to_string_lossy())
}
