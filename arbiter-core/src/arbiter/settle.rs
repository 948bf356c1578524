//! Bursts of scale signals: a TTIN or TTOU changes the target at once, but the spawns it
//! leads to wait until the signals pause ([`SCALE_SETTLE`] without one), at most
//! [`SCALE_SETTLE_CAP`] after the burst's first, then start together ([`Timer::ScaleSettle`]).
//!
//! Why: a standard signal that arrives while one of its kind is still pending is merged with
//! it by the kernel, so a master sees every TTIN of a burst only if it takes each one before
//! the next arrives. A master that spawned on each TTIN spent the burst suspended in its
//! spawns and then waiting for a CPU held by the workers it had just started, and most of a
//! burst 0.5 ms apart was merged. Held back, the master only counts signals while they come
//! (a few microseconds each), and a TTOU that follows a TTIN of the same burst cancels it
//! without a worker started and stopped (a TTOU retires at once: one before a TTIN is not
//! undone). Everything else spawns as before once the burst is over: a
//! respawn or a reload's spawn that falls into a burst waits with it, at most the cap.
//!
//! Long runs of spawns (a boot of thousands, a large scale order, a burst's spawns once it
//! settles) go out in rounds of at most [`SPAWN_ROUND`]: a round ends with
//! [`Timer::SpawnRound`] due at once, so the shell turns its loop (signals, control and
//! metrics requests, notify sockets) before the next round. Without rounds a boot of 10,000
//! workers kept the master deaf to TERM and to its control socket for minutes.

use std::time::Duration;

use crate::action::{Event, Reason};
use crate::time::Moment;
use crate::timers::Timer;

use super::Arbiter;

/// A burst of TTIN or TTOU is over once this passes without another one. A sender that
/// means 0.5 ms between its signals was seen to send them 2 ms apart on a loaded machine
/// (and a 2 ms window then ended its burst after three signals): this is well above that.
pub const SCALE_SETTLE: Duration = Duration::from_millis(5);
/// The spawns of a burst that does not pause start this long after its first signal at the
/// latest, so a steady stream of TTIN cannot hold spawning back for longer.
pub const SCALE_SETTLE_CAP: Duration = Duration::from_millis(50);
/// The most spawns the arbiter asks for before the shell turns its loop once. Measured on a
/// shared 2-core machine (1,000 `sleep` workers, `--ready exec`): the master's own CPU is
/// about 30 us a spawn, but each spawn holds it 1-2 ms of wall time (the vfork waits until
/// the child, queued behind the workers just started, reaches its exec), so a round keeps a
/// signal or a control request waiting 30-65 ms at most, while a turn of the loop between
/// rounds (a poll that does not wait) costs microseconds. A TERM sent once 100 of 1,000
/// workers were booting ended the master 67 ms later (median of 3, 128 workers spawned);
/// without rounds, 1,345 ms later, after all 1,000.
pub const SPAWN_ROUND: usize = 32;

impl Arbiter {
    /// Whether a round of spawns was cut short and the rest wait for [`Timer::SpawnRound`].
    pub(super) fn spawn_round_waits(&self) -> bool {
        self.spawn_round
    }

    /// `spawned` spawns went out in this round and more are wanted: the rest wait for the
    /// next turn of the shell's loop.
    pub(super) fn cut_spawn_round(&mut self, spawned: usize, now: Moment) {
        self.spawn_round = true;
        self.timers.set(Timer::SpawnRound, Some(now));
        self.event(Event::SpawnRoundCut { spawned });
    }

    /// A stop was ordered: no further round.
    pub(super) fn end_spawn_round(&mut self) {
        self.spawn_round = false;
        self.timers.set(Timer::SpawnRound, None);
    }
}

impl Arbiter {
    /// TTIN or TTOU: the new target now, its spawns once the burst has settled.
    pub(super) fn scale_by_signal(&mut self, target: usize, reason: Reason, now: Moment) {
        self.set_target(target, reason);
        let first = match self.scale_burst {
            Some(first) => first,
            None => {
                self.scale_burst = Some(now);
                self.event(Event::SpawnsHeld {
                    quiet: SCALE_SETTLE,
                    at_most: SCALE_SETTLE_CAP,
                });
                now
            }
        };
        let until = (now + SCALE_SETTLE).min(first + SCALE_SETTLE_CAP);
        self.timers.set(Timer::ScaleSettle, Some(until));
    }

    /// Whether spawns wait for a burst of scale signals to settle.
    pub(super) fn spawns_held(&self) -> bool {
        self.scale_burst.is_some()
    }

    /// The burst has settled ([`Timer::ScaleSettle`]), or a stop was ordered: what it held
    /// back may spawn (the caller runs `manage`).
    pub(super) fn end_scale_burst(&mut self) {
        self.scale_burst = None;
        self.timers.set(Timer::ScaleSettle, None);
    }
}
