//! A small named-deadline table: at most one deadline per key, the next wake-up is the minimum.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use crate::time::Moment;

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
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key));
        }
        if let Some(at) = at {
            self.by_key.insert(key, at);
            self.by_time.insert((at, key));
        }
    }

    /// The deadline of `key`, if set.
    pub(crate) fn get(&self, key: K) -> Option<Moment> {
        self.by_key.get(&key).copied()
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Moment> {
        self.by_time.first().map(|(at, _)| *at)
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
        assert_eq!(timers.pop_due(at(50)), Some(1));
        timers.set(2, None);
        assert_eq!(timers.next(), None);
    }
}
