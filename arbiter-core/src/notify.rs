//! When a shell reads the workers' notify queues that it leaves queued (the heartbeats of
//! ready workers): the schedule of its lazy rounds, and when one socket is read at once
//! instead. The shell reports what a round found; these say what to do next.
//!
//! A unix datagram socket queues only `net.unix.max_dgram_qlen` + 1 messages (eleven on a
//! default kernel) before a blocking sender waits and a non-blocking one is refused, so a
//! queue left unread is not free. The rounds run between [`LAZY_MIN`] and [`LAZY_MAX`] apart
//! while the sockets carry messages, so that the fullest queue holds four to six: a worker
//! sending `WATCHDOG=1` once a second is read every four seconds, with room for a burst of
//! six more. The kernel's cost per datagram falls with the batch: reading four at a time costs
//! about 0.55 of reading one at a time. The upper bound keeps workers that beat slowly at
//! first (Python ones booting on a loaded machine) from setting a period at which they
//! overflow once they beat at their pace: at eight seconds, a thousand workers beating once
//! a second all turned chatty at once and woke the loop 300 times a second.

use std::time::Duration;

use crate::Moment;

/// The shortest period of the lazy rounds.
pub const LAZY_MIN: Duration = Duration::from_secs(1);
/// The longest period of the lazy rounds.
pub const LAZY_MAX: Duration = Duration::from_secs(4);
/// A lazily read socket found holding this many messages is read at once from then on: the
/// kernel's queue (eleven) would soon make its sender wait. Above a round's aim (four to six),
/// so a worker beating once a second, found with a few beats more after a late round, stays
/// lazy.
pub const CHATTY_AT: u32 = 8;
/// A socket read at once for being chatty goes back to lazy reading once it sends at most
/// this many messages between two lazy rounds (what a lazy round may find; with 2 it had to
/// fall to a third of its rate, and one beating once a second stayed eager for good once the
/// period reached three seconds, waking the loop at each beat).
pub const QUIET_AT: u32 = 4;

/// The period of the lazy rounds, adapted to how full the queues were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazySchedule {
    period: Duration,
}

impl Default for LazySchedule {
    fn default() -> Self {
        LazySchedule { period: LAZY_MIN }
    }
}

impl LazySchedule {
    /// The period of the next rounds.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// After a lazy round at `now` that read `read` messages, the fullest queue holding
    /// `most`: when the next round is due, or `None` when nothing was read (the next message
    /// is waited for; the period starts over from [`LAZY_MIN`]).
    pub fn after_round(&mut self, read: usize, most: u32, now: Moment) -> Option<Moment> {
        if read == 0 {
            self.period = LAZY_MIN;
            return None;
        }
        // The fullest queue found: a worker beating once a second shows two or three in two
        // seconds (its beats fall on either side of the round), four or five in four.
        self.period = match most {
            0..=3 => (self.period * 2).min(LAZY_MAX),
            4..=6 => self.period,
            _ => (self.period / 2).max(LAZY_MIN),
        };
        Some(now + self.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_period_doubles_on_room_keeps_at_the_aim_and_halves_when_full() {
        let mut schedule = LazySchedule::default();
        let now = Moment::ZERO;
        assert_eq!(schedule.after_round(3, 3, now), Some(now + 2 * S));
        assert_eq!(schedule.after_round(3, 2, now), Some(now + 4 * S));
        assert_eq!(
            schedule.after_round(3, 1, now),
            Some(now + 4 * S),
            "at most LAZY_MAX"
        );
        for most in 4..=6 {
            assert_eq!(
                schedule.after_round(9, most, now),
                Some(now + 4 * S),
                "kept"
            );
        }
        assert_eq!(schedule.after_round(9, 7, now), Some(now + 2 * S));
        assert_eq!(schedule.after_round(9, 11, now), Some(now + S));
        assert_eq!(
            schedule.after_round(9, 11, now),
            Some(now + S),
            "at least LAZY_MIN"
        );
        schedule.after_round(1, 1, now);
        assert_eq!(schedule.period(), 2 * S);
        assert_eq!(schedule.after_round(0, 0, now), None, "nothing read: wait");
        assert_eq!(schedule.period(), LAZY_MIN, "and start over");
    }

    #[test]
    fn a_socket_turns_chatty_above_a_rounds_aim_and_calms_at_what_a_round_may_find() {
        // A round aims at four to six in the fullest queue; the kernel keeps eleven.
        let aim = 4..=6;
        assert!(CHATTY_AT > *aim.end() && CHATTY_AT < 11);
        assert!(
            aim.contains(&QUIET_AT),
            "a beat a second over a four-second round"
        );
    }
}
