//! The open-file limit. A worker costs the master one fd (its notify socket: its heartbeat
//! file is looked at by name; three with output capture, whose pipes the master reads), so
//! a thousand workers need about as many fds as a soft `RLIMIT_NOFILE` of 1024 allows. The master raises its soft limit to the hard one at start
//! (and the hard one too where it may, when the workers asked for need more); each exec'd
//! worker gets the soft limit the master started with back, so a program that still uses
//! `select()` is not handed fds above 1024.

use std::sync::atomic::{AtomicU64, Ordering};

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The soft limit the master started with, for its children; `u64::MAX` when unchanged.
static START_SOFT: AtomicU64 = AtomicU64::new(u64::MAX);

/// What [`raise_open_files`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit at start.
    pub was: u64,
    /// The soft limit now.
    pub now: u64,
}

/// Raises the soft open-file limit to the hard one, and the hard one to `need` if it is
/// lower and the process may (`CAP_SYS_RESOURCE`).
pub fn raise_open_files(need: u64) -> OpenFiles {
    let limit = getrlimit(Resource::Nofile);
    let was = limit.current.unwrap_or(u64::MAX);
    let mut hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < need {
        let wanted = Rlimit {
            current: Some(need),
            maximum: Some(need),
        };
        if setrlimit(Resource::Nofile, wanted).is_ok() {
            hard = need;
        }
    }
    if was < hard {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            START_SOFT.store(was, Ordering::Relaxed);
        }
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    OpenFiles { was, now }
}

/// In a child between fork and exec: the soft open-file limit the master started with.
/// Async-signal-safe (an atomic load and one raw syscall).
pub fn restore_in_child() {
    let soft = START_SOFT.load(Ordering::Relaxed);
    if soft != u64::MAX {
        let hard = getrlimit(Resource::Nofile).maximum;
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(soft),
                maximum: hard,
            },
        );
    }
}

/// About how many workers fit under a soft limit of `limit` fds, at `per_worker` each.
pub fn workers_within(limit: u64, per_worker: u64) -> u64 {
    limit.saturating_sub(RESERVED) / per_worker.max(1)
}

/// Fds kept for the master itself: listeners, control and metrics clients, log, pipes.
pub const RESERVED: u64 = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_room_for_the_master() {
        assert_eq!(workers_within(1024, 2), 448);
        assert_eq!(workers_within(20_000, 1), 19_872);
        assert_eq!(workers_within(100, 2), 0);
    }
}
