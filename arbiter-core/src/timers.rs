//! The named deadlines: one [`Timer`] per kind (and per worker or slot where the kind has
//! many), at most one deadline each, in a small table whose next wake-up is the minimum
//! (quinn-proto's `Timer` and `TimerTable`).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;

use crate::time::Moment;
use crate::types::{Slot, WorkerId};

/// Each kind of deadline the arbiter keeps. When several are due at once they fire in this
/// order (then by worker or slot): a boot timeout wins over a heartbeat timeout, and both over
/// a readiness delay due at the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A booting worker whose `READY=1` is awaited is aborted if it has not sent it by then
    /// (`boot_timeout` after its exec).
    Boot(WorkerId),
    /// A worker that has heartbeated is aborted if its next heartbeat is not there by then
    /// (`timeout` after its last one).
    Heartbeat(WorkerId),
    /// A booting worker whose `READY=1` is not awaited counts as ready then (`ready_after`
    /// after its exec).
    ReadyAfter(WorkerId),
    /// A retiring or aborted worker is killed (its whole group) if it is still there.
    Kill(WorkerId),
    /// A worker reaches its (staggered) maximum age and is recycled.
    Recycle(WorkerId),
    /// A crash-looping slot may spawn again.
    Backoff(Slot),
    /// A burst of TTIN or TTOU has settled: the spawns it held back start (see
    /// [`crate::SCALE_SETTLE`]).
    ScaleSettle,
    /// The next round of a long run of spawns (due at once, so the shell turns its loop
    /// between rounds: see [`crate::SPAWN_ROUND`]).
    SpawnRound,
    /// The next `WATCHDOG=1` to the service manager is due.
    Watchdog,
    /// The next `EXTEND_TIMEOUT_USEC=` to the service manager is due, while the first
    /// generation boots.
    ExtendStart,
    /// A drain (`shutdown_delay` after a graceful stop order) is over: the stop begins.
    Drain,
    /// The workers' memory is sampled next (while a memory limit is set).
    MemorySample,
    /// Slots above a lowered target have drained their queues: their workers are retired
    /// ([`crate::SLOT_DRAIN`] after the steering change).
    SlotDrain,
    /// A stop gives up waiting for reaps after its final KILLs (`REAP_GRACE` past them).
    Stop,
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timer::Boot(id) => write!(f, "boot deadline of worker {id}"),
            Timer::Heartbeat(id) => write!(f, "heartbeat deadline of worker {id}"),
            Timer::ReadyAfter(id) => write!(f, "ready-after deadline of worker {id}"),
            Timer::Kill(id) => write!(f, "kill deadline of worker {id}"),
            Timer::Recycle(id) => write!(f, "age deadline of worker {id}"),
            Timer::Backoff(slot) => write!(f, "backoff of slot {slot}"),
            Timer::ScaleSettle => f.write_str("end of a burst of scale signals"),
            Timer::SpawnRound => f.write_str("next round of spawns"),
            Timer::Watchdog => f.write_str("watchdog ping"),
            Timer::ExtendStart => f.write_str("start timeout extension"),
            Timer::Drain => f.write_str("end of the drain"),
            Timer::MemorySample => f.write_str("memory sample"),
            Timer::SlotDrain => f.write_str("end of the slot drain"),
            Timer::Stop => f.write_str("stop deadline"),
        }
    }
}

/// Deadlines keyed by `K`, ordered by time.
#[derive(Debug)]
pub(crate) struct Timers<K: Ord + Hash + Copy> {
    by_time: BTreeSet<(Moment, K)>,
    by_key: HashMap<K, Moment>,
}

impl<K: Ord + Hash + Copy> Timers<K> {
    pub(crate) fn new() -> Self {
        Timers {
            by_time: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }

    /// Sets (or with `None`, clears) the deadline of `key`.
    pub(crate) fn set(&mut self, key: K, at: Option<Moment>) {
        if self.by_key.get(&key).copied() == at {
            return;
        }
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key));
        }
        if let Some(at) = at {
            self.by_key.insert(key, at);
            self.by_time.insert((at, key));
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Moment> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// The earliest deadline and its key.
    pub(crate) fn first(&self) -> Option<(Moment, K)> {
        self.by_time.first().copied()
    }

    /// The keys due at `now`, earliest first.
    pub(crate) fn due(&self, now: Moment) -> impl Iterator<Item = K> + '_ {
        self.by_time
            .iter()
            .take_while(move |(at, _)| *at <= now)
            .map(|(_, key)| *key)
    }

    /// Every key with a deadline.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.by_key.keys()
    }

    /// Whether the two orders agree (each key once, at its deadline).
    pub(crate) fn check(&self) -> Result<(), String> {
        let agree = self.by_time.len() == self.by_key.len()
            && self
                .by_time
                .iter()
                .all(|(at, key)| self.by_key.get(key) == Some(at));
        if agree {
            Ok(())
        } else {
            Err(format!(
                "deadline table drifted: {} by time, {} by key",
                self.by_time.len(),
                self.by_key.len()
            ))
        }
    }

    /// Removes and returns the earliest key due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: Moment) -> Option<K> {
        let (at, key) = *self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.remove(&(at, key));
        self.by_key.remove(&key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> Moment {
        Moment::from_origin(Duration::from_millis(ms))
    }

    #[test]
    fn next_is_minimum_and_reset_moves_a_key() {
        let mut timers = Timers::new();
        timers.set(1u32, Some(at(50)));
        timers.set(2, Some(at(20)));
        assert_eq!(timers.next(), Some(at(20)));
        timers.set(2, Some(at(80)));
        assert_eq!(timers.next(), Some(at(50)));
        assert_eq!(timers.pop_due(at(49)), None);
        assert_eq!(timers.due(at(50)).collect::<Vec<_>>(), [1]);
        assert_eq!(timers.pop_due(at(50)), Some(1));
        timers.set(2, None);
        assert_eq!(timers.next(), None);
    }
}
