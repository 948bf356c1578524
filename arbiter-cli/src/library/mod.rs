//! Library mode: a Rust program embeds the arbiter, and its worker is a Rust function instead
//! of a command (gunicorn's `preload_app`, for Rust).
//!
//! The program loads its state once (a table, a model file), then calls [`serve`] with the
//! arbiter's options and the worker function. The master binds, and forks each worker without
//! exec: the worker runs the function on the memory the master loaded, shared copy-on-write,
//! so N workers cost about one copy of the state. Everything else is the same as for exec'd
//! workers: heartbeat and boot timeouts, readiness, HUP rolls, TTIN/TTOU, `ctl`, metrics,
//! crash-loop backoff, output capture, GPU balancing.
//!
//! The worker function gets a [`WorkerContext`]: its listeners (fds 3..), the notify socket,
//! the heartbeat, its id, slot and GPUs, and the environment an exec'd worker would have had.
//! What the function returns is the worker's exit status (a panic exits 101).
//!
//! Rules, as for the exec path:
//! - the master forks only while it has a single thread (checked at each fork: a spawn fails
//!   with the thread count otherwise), so load the state without leaving threads behind;
//! - between the fork and the function the child only makes async-signal-safe calls on memory
//!   prepared before the fork (the fd plan, the context); it resets the signal dispositions
//!   and mask to the defaults, then ignores `SIGPIPE` as Rust's start-up code does, and keeps
//!   only fds 0-2, its listeners and its heartbeat file;
//! - the child's process environment is the master's: read the worker's from the context;
//! - a HUP reloads the configuration and forks new workers from the same master, so they run
//!   the same code on the same preloaded state (as gunicorn's `preload_app`: new code needs a
//!   new master); USR2 re-execs the program, which loads its state again, and is the way to
//!   roll out a new binary or new state without dropping a connection.
//!
//! ```no_run
//! use std::io::Write;
//! use arbiter_cli::library::{self, ListenerSocket, WorkerContext};
//!
//! let table: Vec<u8> = vec![7; 64 << 20]; // loaded once, shared by every worker
//! let args = library::args(["--workers", "4", "--bind", "127.0.0.1:8000"]).unwrap();
//! let code = library::serve(args, move |mut ctx: WorkerContext| {
//!     let listeners = ctx.take_listeners().unwrap();
//!     let _ = ctx.notifier().and_then(|n| n.send("READY=1"));
//!     let ListenerSocket::Tcp(listener) = &listeners[0] else { return 1 };
//!     for stream in listener.incoming().flatten() {
//!         let mut stream = stream;
//!         let _ = write!(stream, "HTTP/1.0 200 OK\r\n\r\n{}\n", table[ctx.slot()]);
//!     }
//!     0
//! })
//! .unwrap_or_else(|failure| failure.code());
//! std::process::exit(i32::from(code));
//! ```

mod context;
mod memory;

use std::ffi::OsString;
use std::rc::Rc;

use clap::Parser;

pub use context::{Heartbeat, ListenerSocket, Notifier, WorkerContext};
pub use memory::advise_huge_pages;

use crate::config::ServeArgs;
use crate::Failure;

/// A worker that is a Rust function: given its context, it serves, and returns its exit
/// status.
pub type WorkerFn = dyn Fn(WorkerContext) -> u8;

/// Runs the arbiter with `args` and `worker` as every worker, until it stops; returns the
/// master's exit code (0 clean stop, 1 runtime failure, 2 bad configuration, 3 or 4 a worker
/// that failed to boot). Call it from the main thread with no other thread running.
///
/// `args` are the options of `arbiter serve` (flatten [`ServeArgs`] into the program's own
/// clap parser, or build them with [`args`]); a worker command (`-- COMMAND`) is refused.
/// Inherited listeners (after USR2, or from systemd) are taken from the environment here.
pub fn serve(
    args: ServeArgs,
    worker: impl Fn(WorkerContext) -> u8 + 'static,
) -> Result<u8, Failure> {
    crate::serve::main_with(args, Some(Rc::new(worker)))
}

/// `arbiter serve`'s options alone.
#[derive(Debug, Parser)]
#[command(name = "arbiter", args_override_self = true)]
struct Options {
    #[command(flatten)]
    args: ServeArgs,
}

/// The arbiter's options from an argument list such as `["--workers", "4"]` (no program name).
pub fn args<I, T>(items: I) -> Result<ServeArgs, Failure>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv = std::iter::once(OsString::from("arbiter")).chain(items.into_iter().map(Into::into));
    Options::try_parse_from(argv)
        .map(|options| options.args)
        .map_err(|e| Failure::new(e.to_string().trim_end(), 2))
}
