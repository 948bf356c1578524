//! The crate's one error type.

use std::os::fd::RawFd;
use std::path::PathBuf;

/// Errors of bind specs, listeners, inheritance and hand-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bind string could not be parsed; `reason` names the bad part.
    #[error("bad bind `{spec}`: {reason}")]
    BadSpec {
        /// The bind string as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A host name did not resolve.
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// Creating, binding or listening on a socket failed.
    #[error("cannot bind {addr} (after {attempts} attempt(s)): {source}")]
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
    #[error("cannot bind unix:{}: the path exists and is not a socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A unix socket path holds a socket that accepts connections.
    #[error("cannot bind unix:{}: a live socket is listening there", path.display())]
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
