//! A full recount of what the arbiter keeps incrementally, for tests and simulations: each
//! input is cheap because counts and queues are kept as the table changes, and this says
//! whether they still agree with the table.

use crate::timers::Timer;
use crate::worker::WorkerState;

use super::table::is_hung;
use super::Arbiter;

/// One slot, recounted from the workers.
#[derive(Debug, Clone, Copy, Default)]
struct SlotRecount {
    members: usize,
    active: usize,
    current_active: bool,
    current_ready: bool,
    hung: bool,
}

impl Arbiter {
    /// Recomputes every count and index the arbiter keeps (the ready and active counts, the
    /// ready-slot, old-worker and surge counts, the slots waiting for a spawn, the pid index,
    /// the slots' member lists, the workers' deadlines) from the worker table and says where
    /// they disagree. O(N): for tests and simulations (debug builds run it after every
    /// `manage`). The per-slot caches are compared only while the arbiter manages its table
    /// (not before its pidfile is written, nor once it stops or has exited) and no refresh is
    /// pending (none is after an input). Active workers at or above the target are an error
    /// only while no per-slot listener drain defers their retirement.
    pub fn check_indexes(&self) -> Result<(), String> {
        let drift = |what: &str, kept: usize, counted: usize| {
            if kept == counted {
                Ok(())
            } else {
                Err(format!("{what} drifted: kept {kept}, counted {counted}"))
            }
        };
        let mut slots = vec![SlotRecount::default(); self.slots.len()];
        let (mut ready, mut active, mut with_pid, mut old_active) = (0, 0, 0, 0);
        for (id, worker) in &self.workers {
            let Some(slot) = slots.get_mut(worker.slot) else {
                return Err(format!(
                    "worker {id} is in slot {}, which does not exist",
                    worker.slot
                ));
            };
            if !self.slots[worker.slot].members.contains(id) {
                return Err(format!(
                    "slot {} does not list its worker {id}",
                    worker.slot
                ));
            }
            let current = self.is_current(worker);
            let is_active = worker.state.is_active();
            slot.members += 1;
            slot.hung |= is_hung(worker);
            if is_active {
                slot.active += 1;
                slot.current_active |= current;
                old_active += usize::from(!current || worker.slot >= self.target);
            }
            if worker.state == WorkerState::Ready {
                ready += 1;
                slot.current_ready |= current;
            }
            active += usize::from(is_active);
            if let Some(pid) = worker.pid {
                with_pid += 1;
                if self.by_pid.get(&pid) != Some(id) {
                    return Err(format!("pid index: {pid} does not lead to its worker {id}"));
                }
            }
        }
        drift("ready count", self.ready, ready)?;
        drift("active count", self.active, active)?;
        drift("pid index", self.by_pid.len(), with_pid)?;
        // Every worker is listed in its slot: with as many entries as workers, each once.
        let members: usize = self.slots.iter().map(|s| s.members.len()).sum();
        drift("slot members", members, self.workers.len())?;
        if let Some(timer) = self.timers.keys().find(|timer| match timer {
            Timer::Boot(id)
            | Timer::Heartbeat(id)
            | Timer::ReadyAfter(id)
            | Timer::Kill(id)
            | Timer::Recycle(id) => !self.workers.contains_key(id),
            Timer::Backoff(slot) => *slot >= self.slots.len(),
            _ => false,
        }) {
            return Err(format!("a deadline outlived what it is for: {timer}"));
        }
        self.timers.check()?;
        let managed = !(self.exited || self.awaiting_pidfile || self.is_stopping());
        let pending = self.all_dirty || self.retarget.is_some() || !self.dirty.is_empty();
        if pending || !managed {
            return Ok(());
        }
        let (mut ready_slots, mut surge_active) = (0, 0);
        for (slot, (state, recount)) in self.slots.iter().zip(&slots).enumerate() {
            if state.dirty {
                return Err(format!("slot {slot} is marked dirty but not queued"));
            }
            drift("slot member list", state.members.len(), recount.members)?;
            let in_range = slot < self.target;
            ready_slots += usize::from(in_range && recount.current_ready);
            surge_active += recount.active.saturating_sub(1);
            if !in_range && recount.active > 0 && self.slot_drain.is_none() {
                return Err(format!(
                    "slot {slot} is at or above the target {} and has an active worker",
                    self.target
                ));
            }
            let any = recount.active > 0;
            let gpu_held = recount.hung && self.gpus.is_some();
            let spawnable = in_range && state.backoff_until.is_none() && !gpu_held;
            if self.want_empty.contains(&slot) != (spawnable && !any) {
                return Err(format!("slot {slot}: the empty-slot spawn queue drifted"));
            }
            if self.want_roll.contains(&slot) != (spawnable && any && !recount.current_active) {
                return Err(format!("slot {slot}: the rolling-slot spawn queue drifted"));
            }
        }
        drift("ready slot count", self.ready_slots, ready_slots)?;
        drift("old worker count", self.old_active, old_active)?;
        drift("surge count", self.surge_active, surge_active)?;
        let last = self.want_empty.last().max(self.want_roll.last());
        if let Some(&slot) = last {
            if slot >= self.slots.len() {
                return Err(format!(
                    "slot {slot} is queued for a spawn and does not exist"
                ));
            }
        }
        Ok(())
    }
}
