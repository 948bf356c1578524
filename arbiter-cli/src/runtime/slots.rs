//! Per-slot listeners (`--reuse-port-per-slot`): for each TCP listener with `SO_REUSEPORT`,
//! the master holds one more socket per worker slot above 0 in the same reuse-port group, and
//! hands slot `s`'s worker its slot's socket in that listener's place (same fd number, same
//! `LISTEN_FDNAMES` name). A slot's accept queue so outlives its worker. The core decides
//! which slots hold listeners and which get new connections ([`Action::SlotListeners`]); this
//! carries it out: siblings are created in slot order and closed from the top, so a socket's
//! index in the group stays its slot, which the steering program relies on.
//!
//! Unix sockets, and TCP sockets inherited without `SO_REUSEPORT` (from systemd, or from a
//! master without this mode), stay shared by every slot.
//!
//! [`Action::SlotListeners`]: arbiter_core::Action::SlotListeners

use std::collections::HashMap;

use arbiter_sockets::{Listener, LocalAddr};
use slog::{debug, info, warn, Logger};

/// The siblings of every listener that takes them, and what the core last asked for.
#[derive(Debug, Default)]
pub(super) struct SlotListeners {
    /// By their slot-0 listener's address: slot `s` at index `s - 1`.
    siblings: HashMap<LocalAddr, Vec<Listener>>,
    /// Slots held and slots steered to, as the core last said.
    hold: (usize, usize),
    /// The mode is on (fixed at start).
    enabled: bool,
    /// The backlog of new siblings.
    backlog: i32,
}

impl SlotListeners {
    /// The per-slot state for a master in (or not in) this mode.
    pub(super) fn new(enabled: bool, backlog: i32) -> SlotListeners {
        SlotListeners {
            enabled,
            backlog,
            ..SlotListeners::default()
        }
    }

    /// Takes the per-slot listeners an old master handed over (after its slot-0 listener, the
    /// others with the same TCP address, in slot order) out of `listeners`. Without the mode,
    /// new connections go to slot 0's socket only and the old master's slot sockets are
    /// closed here (the old master keeps serving their queues until it stops).
    pub(super) fn adopt(&mut self, listeners: &mut Vec<Listener>, log: &Logger) {
        let mut bases: Vec<Listener> = Vec::with_capacity(listeners.len());
        for listener in listeners.drain(..) {
            let addr = listener.local_addr().clone();
            let is_sibling = matches!(addr, LocalAddr::Inet(_))
                && bases.iter().any(|base| *base.local_addr() == addr);
            if is_sibling {
                self.siblings.entry(addr).or_default().push(listener);
            } else {
                bases.push(listener);
            }
        }
        *listeners = bases;
        if self.enabled {
            for (addr, siblings) in &self.siblings {
                info!(
                    log,
                    "Inherited {} per-slot listeners at {addr}",
                    siblings.len() + 1
                );
            }
            for base in listeners.iter() {
                if matches!(base.local_addr(), LocalAddr::Inet(_)) && !base.takes_siblings() {
                    warn!(
                        log,
                        "{base} has no SO_REUSEPORT (inherited): it stays shared by every slot"
                    );
                }
            }
            return;
        }
        for (addr, siblings) in std::mem::take(&mut self.siblings) {
            warn!(
                log,
                "Inherited {} per-slot listeners at {addr} without --reuse-port-per-slot: new \
                 connections go to the first one only",
                siblings.len() + 1
            );
            if let Some(base) = listeners.iter().find(|l| *l.local_addr() == addr) {
                if let Err(e) = arbiter_sockets::steer(base, 1) {
                    warn!(log, "steering {addr}: {e}");
                }
            }
            arbiter_sockets::close_listeners(siblings, false);
        }
    }

    /// Makes sure every listener that takes siblings has them for slots `1..slots`.
    pub(super) fn ensure(
        &mut self,
        bases: &[Listener],
        slots: usize,
    ) -> Result<(), arbiter_sockets::Error> {
        if !self.enabled {
            return Ok(());
        }
        for base in bases.iter().filter(|base| base.takes_siblings()) {
            let siblings = self.siblings.entry(base.local_addr().clone()).or_default();
            while siblings.len() + 1 < slots {
                siblings.push(base.reuse_port_sibling(self.backlog)?);
            }
        }
        Ok(())
    }

    /// The listeners slot `slot`'s worker gets, in the order of `bases`.
    pub(super) fn for_slot<'a>(&'a self, bases: &'a [Listener], slot: usize) -> Vec<&'a Listener> {
        bases
            .iter()
            .map(|base| {
                slot.checked_sub(1)
                    .and_then(|index| self.siblings.get(base.local_addr())?.get(index))
                    .unwrap_or(base)
            })
            .collect()
    }

    /// Holds listeners for slots `0..open` and steers new connections to `0..steer`.
    pub(super) fn hold(&mut self, bases: &[Listener], open: usize, steer: usize, log: &Logger) {
        self.hold = (open, steer);
        if let Err(e) = self.ensure(bases, open) {
            warn!(log, "per-slot listeners: {e}");
        }
        let migrates = arbiter_sockets::migrate_requests() == Some(true);
        for (addr, siblings) in &mut self.siblings {
            while siblings.len() + 1 > open.max(1) {
                let slot = siblings.len();
                let Some(top) = siblings.pop() else { break };
                match arbiter_sockets::queued(&top) {
                    Some(n) if n > 0 && !migrates => warn!(
                        log,
                        "Closing slot {slot}'s listener at {addr} resets {n} queued \
                         connection(s) (net.ipv4.tcp_migrate_req is not 1)"
                    ),
                    _ => debug!(log, "Closing slot {slot}'s listener at {addr}"),
                }
                top.close(false);
            }
        }
        self.steer(bases, log);
    }

    /// How many accept queues of slots `from..to` hold connections, every group together
    /// (one poll per listener; a queue that cannot be polled counts as empty).
    pub(super) fn queued(&self, bases: &[Listener], from: usize, to: usize) -> u64 {
        bases
            .iter()
            .filter_map(|base| self.siblings.get(base.local_addr()))
            .flat_map(|siblings| (from.max(1)..to).filter_map(|slot| siblings.get(slot - 1)))
            .map(|sibling| u64::from(arbiter_sockets::has_queued(sibling)))
            .sum()
    }

    /// Attaches the steering program the core last asked for to every group.
    pub(super) fn steer(&self, bases: &[Listener], log: &Logger) {
        if !self.enabled {
            return;
        }
        for base in bases.iter().filter(|base| base.takes_siblings()) {
            let held = 1 + self.siblings.get(base.local_addr()).map_or(0, Vec::len);
            let slots = self.hold.1.min(held).max(1);
            if let Err(e) = arbiter_sockets::steer(base, slots as u32) {
                warn!(log, "steering new connections at {base}: {e}");
            }
        }
    }

    /// After a reload changed the binds: drops the siblings of listeners no longer bound
    /// (new ones get theirs at the next spawn), and steers every group again.
    pub(super) fn rebind(&mut self, bases: &[Listener], log: &Logger) {
        let (kept, gone): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut self.siblings)
            .into_iter()
            .partition(|(addr, _)| bases.iter().any(|base| base.local_addr() == addr));
        self.siblings = kept;
        for (_, siblings) in gone {
            arbiter_sockets::close_listeners(siblings, false);
        }
        if let Err(e) = self.ensure(bases, self.hold.0) {
            warn!(log, "per-slot listeners: {e}");
        }
        self.steer(bases, log);
    }

    /// Every sibling, each group in slot order, for a re-exec'd master to inherit after the
    /// slot-0 listeners.
    pub(super) fn all<'a>(&'a self, bases: &'a [Listener]) -> impl Iterator<Item = &'a Listener> {
        bases
            .iter()
            .filter_map(|base| self.siblings.get(base.local_addr()))
            .flatten()
    }

    /// Closes every sibling (a stop began, or the master ends).
    pub(super) fn close_all(&mut self) {
        for (_, siblings) in self.siblings.drain() {
            arbiter_sockets::close_listeners(siblings, false);
        }
    }
}
