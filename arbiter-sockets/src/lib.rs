//! The arbiter's listening sockets: bind specs, creating listeners, inheriting them (re-exec,
//! systemd), handing them to workers as fds 3.., and closing them.
//!
//! Model: a [`BindSpec`] is parsed from the user's text; [`bind`] creates [`Listener`]s
//! (close-on-exec, `SO_REUSEADDR`, optional `SO_REUSEPORT`, `IPV6_V6ONLY`, unix sockets under a
//! umask and mode); [`take_inherited`] + [`resolve`] reuse inherited sockets, matched by local
//! address; a [`HandoffPlan`] built before `fork` renumbers them in the child; [`close_listeners`]
//! closes and unlinks.
//!
//! Invariants and limits:
//! - every fd this crate holds is close-on-exec; only a plan applied in a child clears it;
//! - a unix path is unlinked only if this process bound it (or inherited it by re-exec) and the
//!   path still has the dev/ino recorded at bind (socket fds' own `fstat` names sockfs, so the
//!   path's identity is recorded, not the fd's); systemd and `fd://` sockets are never unlinked;
//! - a host name resolving to several addresses binds each of them (as gunicorn does);
//! - binding a unix socket swaps the process umask briefly: call it from one thread only.

mod error;
mod handoff;
mod inherit;
mod listener;
mod slots;
mod spec;
mod sys;

pub use error::Error;
pub use handoff::{clear_cloexec_in_child, HandoffPlan, Others, PidEnvSlot};
pub use inherit::{
    parse_inherited, reexec_env, resolve, take_inherited, InheritFd, InheritPlan, InheritVars,
    Inherited, ARBITER_LISTEN_FDNAMES, ARBITER_LISTEN_FDS, ARBITER_MASTER_PID, LISTEN_FDS_START,
};
pub use listener::{bind, close_listeners, may_unlink, BindOptions, Listener, LocalAddr, Origin};
pub use slots::{attach_filter, has_queued, migrate_requests, queued, steer};
pub use spec::{BindSpec, DEFAULT_PORT};
