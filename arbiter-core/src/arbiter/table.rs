//! The worker table's bookkeeping: keeping slots filled and rolled (`manage`), the per-slot
//! caches and counters that make each input cheap, spawning, retiring and aborting workers,
//! and their deadlines (one named [`Timer`] per kind).

use std::time::Duration;

use crate::action::{Action, Event, Reason, SupervisorNote};
use crate::time::Moment;
use crate::timers::Timer;
use crate::types::{Signal, Slot, WorkerId};
use crate::worker::{Worker, WorkerState};

use super::{Arbiter, Phase, PidfileOp, SlotState};

impl Arbiter {
    /// Keeps the table at the target: spawns into empty slots, rolls reloads forward,
    /// retires surplus workers, and finishes a stop once the table is empty. Nothing is
    /// spawned while a burst of scale signals settles (`settle.rs`).
    ///
    /// Incremental: only slots touched since the last call (and those a change of target
    /// moved over, or all of them after a change of generation) are looked at, so an input
    /// costs O(changed slots * log N). Every slot change goes through `touch`; the `want_*`
    /// sets and counters are exact once the dirty slots are refreshed (checked against a
    /// full scan in debug builds and by [`Arbiter::check_indexes`]).
    pub(super) fn manage(&mut self, now: Moment) {
        if self.exited || self.awaiting_pidfile {
            return;
        }
        if self.is_stopping() {
            if self.workers.is_empty() {
                self.finish_exit();
            }
            return;
        }
        if self.slots.len() < self.target {
            self.slots.resize_with(self.target, SlotState::default);
        }
        // Only a lower target puts active workers at or above it: they go first, so their
        // capacity is free for spawns below. No active worker sits at or above the target
        // after a `manage` (unless a per-slot listener drain defers them), so a change of
        // target looks only at the slots it moved over.
        if self.all_dirty {
            self.all_dirty = false;
            self.retarget = None;
            self.retire_surplus(self.slots.len(), now);
            for slot in 0..self.slots.len() {
                self.touch(slot);
            }
        } else if let Some((lo, hi)) = self.retarget.take() {
            let hi = hi.min(self.slots.len());
            // Workers a drain deferred may sit above the slots moved over.
            let end = if self.slot_drain.is_some() {
                self.slots.len()
            } else {
                hi
            };
            self.retire_surplus(end, now);
            for slot in lo..hi {
                self.touch(slot);
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        // Ascending, so old workers are retired in slot order, as a full scan would.
        dirty.sort_unstable();
        for &slot in &dirty {
            // Retire old workers whose slot has a ready replacement.
            if slot < self.target {
                if let Some(ready) = self.current_ready_in(slot) {
                    let mut index = 0;
                    while let Some(&id) = self.slots[slot].members.get(index) {
                        let worker = &self.workers[&id];
                        if id != ready && worker.state.is_active() {
                            let reason = worker.recycle.unwrap_or(Reason::Reload);
                            self.retire(id, reason, now);
                        }
                        index += 1;
                    }
                    // Its predecessors are retiring: it may be recycled in turn.
                    self.start_recycle(ready);
                }
            }
            self.refresh(slot);
        }
        if self.dirty.is_empty() {
            dirty.clear();
            self.dirty = dirty;
        }
        // Spawn: empty slots first (lost capacity), then slots still rolling.
        // The table holds at most target + max_surge processes, and at most max_surge slots
        // run a second active worker at once (so no GPU carries more than its cap plus the
        // surge, even while other slots are empty in a crash backoff).
        let max_surge = self.config.max_surge.max(1);
        let limit = self.target + max_surge;
        let mut surge = self.surge_active;
        let mut round = 0;
        while self.workers.len() < limit && !self.spawns_held() && !self.spawn_round_waits() {
            let wanted =
                !self.want_empty.is_empty() || (surge < max_surge && !self.want_roll.is_empty());
            if !wanted {
                break;
            }
            if round == super::SPAWN_ROUND {
                // The rest go out after the shell has turned its loop (`settle.rs`).
                self.cut_spawn_round(round, now);
                break;
            }
            round += 1;
            let (slot, rolling) = if let Some(slot) = self.want_empty.pop_first() {
                (slot, false)
            } else if surge >= max_surge {
                break;
            } else if let Some(slot) = self.want_roll.pop_first() {
                surge += 1;
                (slot, true)
            } else {
                break;
            };
            let state = &self.slots[slot];
            let reason = if rolling {
                self.roll_reason(slot)
            } else if !self.announced_ready && !state.used {
                Reason::Boot
            } else if state.used {
                Reason::Respawn
            } else {
                Reason::ScaleUp
            };
            self.spawn(slot, reason, now);
        }
        // The spawns changed their slots: bring those caches up to date now.
        while let Some(slot) = self.dirty.pop() {
            self.refresh(slot);
        }
        #[cfg(debug_assertions)]
        if let Err(drift) = self.check_indexes() {
            panic!("{drift}");
        }
        self.check_ready();
        self.hold_slot_listeners();
    }

    /// Per-slot listeners: whether the retirement of the workers above a lowered target
    /// waits, because their slots were just steered away and still drain their queues
    /// ([`crate::SLOT_DRAIN`]). A further change of target starts a new drain. Not with GPU
    /// balancing: a device never holds more than its cap plus the surge, so its surplus
    /// workers go at once.
    fn slot_drain_defers(&mut self, surplus: bool, now: Moment) -> bool {
        if !self.config.slot_listeners || !surplus || self.target == 0 || self.gpus.is_some() {
            self.slot_drain = None;
            self.timers.set(Timer::SlotDrain, None);
            return false;
        }
        match self.slot_drain {
            Some(drain) if drain.target == self.target => {
                if drain.done {
                    self.slot_drain = None;
                    self.timers.set(Timer::SlotDrain, None);
                    return false;
                }
                true
            }
            _ => {
                let until = now + crate::types::SLOT_DRAIN;
                self.slot_drain = Some(super::SlotDrain {
                    target: self.target,
                    began: now,
                    asked: false,
                    done: false,
                });
                self.timers.set(Timer::SlotDrain, Some(until));
                // Steer the new connections away first, before anything else happens.
                self.hold_slot_listeners();
                true
            }
        }
    }

    /// Per-slot listeners: tells the shell which slots hold listeners (every slot below the
    /// target, and above it every slot up to the highest one that still has a worker) and
    /// which get new connections (those below the target), when that changed.
    pub(super) fn hold_slot_listeners(&mut self) {
        if !self.config.slot_listeners || self.is_stopping() || self.exited {
            return;
        }
        let mut open = self.slots.len().max(self.target);
        while open > self.target && self.slots[open - 1].members.is_empty() {
            open -= 1;
        }
        let steer = self.target;
        let (was_open, was_steer) = self.slot_listeners;
        if (open, steer) == (was_open, was_steer) {
            return;
        }
        let reason = if was_open == 0 {
            Reason::Boot
        } else if open > was_open || steer > was_steer {
            Reason::ScaleUp
        } else {
            Reason::Cull
        };
        self.slot_listeners = (open, steer);
        self.push(Action::SlotListeners {
            open,
            steer,
            reason,
        });
    }

    /// Retires the active workers of the slots from the target up to `end` (a TTOU, a
    /// scale down, WINCH), unless a per-slot listener drain defers them.
    fn retire_surplus(&mut self, end: Slot, now: Moment) {
        let start = self.target.min(end);
        let surplus: Vec<WorkerId> = self.slots[start..end]
            .iter()
            .flat_map(|slot| slot.members.iter().copied())
            .filter(|id| self.workers[id].state.is_active())
            .collect();
        if self.slot_drain_defers(!surplus.is_empty(), now) {
            return;
        }
        let reason = if self.target == 0 {
            Reason::Winch
        } else {
            Reason::Cull
        };
        for id in surplus {
            self.retire(id, reason, now);
        }
    }

    /// Queues `slot` for a refresh at the next `manage`.
    pub(super) fn touch(&mut self, slot: Slot) {
        if let Some(state) = self.slots.get_mut(slot) {
            if !state.dirty {
                state.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// Recomputes a slot's cached counts and its place in the spawn queues.
    pub(super) fn refresh(&mut self, slot: Slot) {
        let in_range = slot < self.target;
        let (mut any, mut current, mut current_ready, mut old) = (false, false, false, 0);
        let mut active: usize = 0;
        let mut hung = false;
        for id in &self.slots[slot].members {
            let worker = &self.workers[id];
            let is_current = self.is_current(worker);
            hung |= is_hung(worker);
            if worker.state.is_active() {
                any = true;
                active += 1;
                current |= is_current;
                if !is_current || !in_range {
                    old += 1;
                }
            }
            current_ready |= worker.state == WorkerState::Ready && is_current;
        }
        let state = &mut self.slots[slot];
        state.dirty = false;
        let counted_ready = current_ready && in_range;
        self.ready_slots =
            self.ready_slots + usize::from(counted_ready) - usize::from(state.counted_ready);
        self.old_active = self.old_active + old - state.old_active;
        let surge = active.saturating_sub(1);
        self.surge_active = self.surge_active + surge - state.surge_active;
        state.surge_active = surge;
        state.counted_ready = counted_ready;
        state.old_active = old;
        // With GPUs, a hung worker being killed still holds the slot's device memory: its
        // replacement waits for the reap (at most the abort grace) instead of sharing it.
        let gpu_held = hung && self.gpus.is_some();
        let spawnable = in_range && state.backoff_until.is_none() && !gpu_held;
        if spawnable && !any {
            self.want_empty.insert(slot);
        } else {
            self.want_empty.remove(&slot);
        }
        if spawnable && any && !current {
            self.want_roll.insert(slot);
        } else {
            self.want_roll.remove(&slot);
        }
    }

    /// Announces readiness: once for the first generation, again when a reload finishes.
    pub(super) fn check_ready(&mut self) {
        if self.ready_slots < self.target || self.old_active > 0 {
            return;
        }
        if matches!(self.phase, Phase::Draining { .. }) {
            // STOPPING=1 was sent: a READY=1 now would put the endpoint back.
            return;
        }
        if self.phase == Phase::Reloading {
            self.phase = Phase::Running;
            self.event(Event::ReloadFinished {
                generation: self.generation,
            });
            self.notify_ready();
        } else if !self.announced_ready {
            self.notify_ready();
        }
    }

    pub(super) fn notify_ready(&mut self) {
        self.announced_ready = true;
        self.end_start_extension();
        if self.parent.is_some() && self.config.pidfile && !self.upgrade_pidfile_asked {
            // Its appearance tells `arbiter upgrade` (and scripts) that the new generation
            // serves, so an upgrade child writes it only now.
            self.upgrade_pidfile_asked = true;
            self.pidfile_op = Some(PidfileOp::Upgrade);
            self.push(Action::WritePidfile {
                upgrade_child: true,
                reason: Reason::UpgradeReady,
            });
        }
        self.push(Action::Notify(SupervisorNote::Ready));
        let status = format!("{} workers ready", self.ready_count());
        self.push(Action::Notify(SupervisorNote::Status(status)));
    }

    pub(super) fn finish_exit(&mut self) {
        if self.exited {
            return;
        }
        self.exited = true;
        self.push(Action::Exit {
            code: self.exit_code,
            reason: self.exit_reason,
        });
    }

    // ----- table operations -----

    pub(super) fn spawn(&mut self, slot: Slot, reason: Reason, now: Moment) {
        let id = WorkerId(self.next_id);
        self.next_id += 1;
        let gpus = match self.gpus.as_mut() {
            Some(balancer) => balancer.acquire(id.0, slot),
            None => Vec::new(),
        };
        let worker = Worker {
            id,
            slot,
            generation: self.generation,
            pid: None,
            state: WorkerState::Spawning,
            spawned_at: now,
            ready_at: None,
            last_heartbeat: None,
            awaits_ready: false,
            command_key: self.config.command_key,
            gpus: gpus.clone(),
            status: None,
            kill_at: None,
            stop_reason: None,
            recycle: None,
            recycle_at: None,
            recycle_pending: None,
        };
        self.workers.insert(id, worker);
        self.active += 1;
        let state = &mut self.slots[slot];
        state.members.push(id);
        state.used = true;
        self.touch(slot);
        self.push(Action::Spawn {
            id,
            slot,
            generation: self.generation,
            gpus,
            reason,
        });
    }

    pub(super) fn remove_worker(&mut self, id: WorkerId) -> Option<Worker> {
        let worker = self.workers.remove(&id)?;
        if let Some(pid) = worker.pid {
            self.by_pid.remove(&pid);
        }
        self.ready -= usize::from(worker.state == WorkerState::Ready);
        self.active -= usize::from(worker.state.is_active());
        for timer in worker_timers(id) {
            self.timers.set(timer, None);
        }
        if let Some(gpus) = self.gpus.as_mut() {
            gpus.release(id.0);
        }
        if let Some(slot) = self.slots.get_mut(worker.slot) {
            slot.members.retain(|member| *member != id);
        }
        self.touch(worker.slot);
        Some(worker)
    }

    pub(super) fn mark_ready(&mut self, id: WorkerId, now: Moment) {
        self.set_state(id, WorkerState::Ready);
        let worker = self.workers.get_mut(&id).expect("caller checked");
        worker.ready_at = Some(now);
        let (pid, slot) = (worker.pid.expect("ready workers have a pid"), worker.slot);
        if worker.recycle_at.is_some_and(|at| at <= now) {
            // Its age was reached while it booted.
            worker.recycle_pending.get_or_insert(Reason::RecycleAge);
        }
        self.touch(slot);
        self.event(Event::WorkerReady { id, pid });
    }

    /// Asks a worker to stop (TERM, or the quick signal during a quick stop), KILL later.
    pub(super) fn retire(&mut self, id: WorkerId, reason: Reason, now: Moment) {
        let signal = match reason {
            Reason::QuickShutdown => self.config.quick_signal,
            _ => Signal::Term,
        };
        let grace = self.config.graceful_timeout;
        self.set_state(id, WorkerState::Retiring);
        let worker = self.workers.get_mut(&id).expect("caller checked");
        worker.kill_at = Some(now + grace);
        worker.stop_reason = Some(reason);
        let (has_pid, slot) = (worker.pid.is_some(), worker.slot);
        self.touch(slot);
        if has_pid {
            self.send(id, signal, false, reason);
        }
        self.arm(id);
    }

    /// Sends the abort signal to a hung worker's process group; KILL after the abort grace.
    pub(super) fn abort(&mut self, id: WorkerId, reason: Reason, now: Moment) {
        let grace = self.config.abort_grace;
        let signal = self.config.abort_signal;
        self.set_state(id, WorkerState::Aborted);
        let worker = self.workers.get_mut(&id).expect("caller checked");
        worker.kill_at = Some(now + grace);
        worker.stop_reason = Some(reason);
        let slot = worker.slot;
        self.touch(slot);
        self.send(id, signal, true, reason);
        self.arm(id);
    }

    /// Moves a worker to `state`, keeping the ready and active counts.
    pub(super) fn set_state(&mut self, id: WorkerId, state: WorkerState) {
        let worker = self.workers.get_mut(&id).expect("caller checked");
        let old = std::mem::replace(&mut worker.state, state);
        self.ready = self.ready + usize::from(state == WorkerState::Ready)
            - usize::from(old == WorkerState::Ready);
        self.active = self.active + usize::from(state.is_active()) - usize::from(old.is_active());
    }

    pub(super) fn send(&mut self, id: WorkerId, signal: Signal, group: bool, reason: Reason) {
        let Some(pid) = self.workers.get(&id).and_then(|w| w.pid) else {
            return;
        };
        self.push(Action::Signal {
            id,
            pid,
            signal,
            group,
            reason,
        });
    }

    /// Recomputes a worker's deadlines, one per kind, from its state.
    pub(super) fn arm(&mut self, id: WorkerId) {
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        let running = matches!(worker.state, WorkerState::Booting | WorkerState::Ready);
        let stopping = matches!(worker.state, WorkerState::Retiring | WorkerState::Aborted);
        let boot = self.boot_deadline(worker);
        let heartbeat = self.heartbeat_deadline(worker).filter(|_| running);
        let ready_after = self.exec_ready_deadline(worker);
        let kill = worker.kill_at.filter(|_| stopping);
        // Only a ready worker's age is watched: one that reaches it while booting is recycled
        // when it becomes ready.
        let recycle = worker
            .recycle_at
            .filter(|_| worker.state == WorkerState::Ready)
            .filter(|_| worker.recycle.is_none() && worker.recycle_pending.is_none());
        self.timers.set(Timer::Boot(id), boot);
        self.timers.set(Timer::Recycle(id), recycle);
        self.timers.set(Timer::Heartbeat(id), heartbeat);
        self.timers.set(Timer::ReadyAfter(id), ready_after);
        self.timers.set(Timer::Kill(id), kill);
    }

    pub(super) fn boot_deadline(&self, worker: &Worker) -> Option<Moment> {
        if worker.state != WorkerState::Booting || !worker.awaits_ready {
            return None;
        }
        self.config
            .boot_timeout
            .map(|timeout| worker.spawned_at + timeout)
    }

    /// When a worker whose `READY=1` is not awaited counts as ready (`ready_after`).
    pub(super) fn exec_ready_deadline(&self, worker: &Worker) -> Option<Moment> {
        let delayed = worker.state == WorkerState::Booting
            && !worker.awaits_ready
            && !self.config.ready_after.is_zero();
        delayed.then(|| worker.spawned_at + self.config.ready_after)
    }

    /// When a worker exec'd at `spawned_at` reaches its maximum age: the first point of its
    /// slot's schedule after `max_worker_age - jitter` from its exec (so at most
    /// `max_worker_age`; computed once, at the exec, so it is never in the past). Slot `s` of `N`
    /// has the points `jitter * (s / N + k)` from the origin, so two slots' points are never
    /// closer than `jitter / N`, and a replacement spawned at its predecessor's point lives
    /// exactly `max_worker_age` when that is a multiple of the jitter (the default, half).
    pub(super) fn age_deadline(&self, worker: &Worker) -> Option<Moment> {
        let age = self.config.max_worker_age?;
        let jitter = self
            .config
            .max_worker_age_jitter
            .unwrap_or(age / 2)
            .min(age);
        let earliest = worker.spawned_at + (age - jitter);
        if jitter.is_zero() {
            return Some(earliest);
        }
        let spacing = jitter.as_nanos();
        let workers = self.target.max(1) as u128;
        let phase = spacing * (worker.slot as u128 % workers) / workers;
        let after = earliest.since_origin().as_nanos();
        let steps = if after < phase {
            0
        } else {
            (after - phase) / spacing + 1
        };
        let point = phase + steps * spacing;
        let point = u64::try_from(point).unwrap_or(u64::MAX);
        Some(Moment::from_origin(Duration::from_nanos(point)))
    }

    /// Whether a worker is what its slot should run: of the current generation and not being
    /// recycled.
    pub(super) fn is_current(&self, worker: &Worker) -> bool {
        worker.generation == self.generation && worker.recycle.is_none()
    }

    /// Why a rolling slot spawns: the recycling of its worker, or a reload.
    fn roll_reason(&self, slot: Slot) -> Reason {
        self.slots[slot]
            .members
            .iter()
            .map(|id| &self.workers[id])
            .filter(|w| w.state.is_active() && w.generation == self.generation)
            .find_map(|w| w.recycle)
            .unwrap_or(Reason::Reload)
    }

    pub(super) fn heartbeat_deadline(&self, worker: &Worker) -> Option<Moment> {
        let last = worker.last_heartbeat?;
        self.config.timeout.map(|timeout| last + timeout)
    }

    pub(super) fn slot_has_ready(&self, slot: Slot) -> bool {
        self.slots.get(slot).is_some_and(|state| {
            state
                .members
                .iter()
                .any(|id| self.workers[id].state == WorkerState::Ready)
        })
    }

    pub(super) fn current_ready_in(&self, slot: Slot) -> Option<WorkerId> {
        self.slots.get(slot)?.members.iter().copied().find(|id| {
            let worker = &self.workers[id];
            worker.state == WorkerState::Ready && self.is_current(worker)
        })
    }
}

/// The deadlines a worker may have.
fn worker_timers(id: WorkerId) -> [Timer; 5] {
    [
        Timer::Boot(id),
        Timer::Heartbeat(id),
        Timer::ReadyAfter(id),
        Timer::Kill(id),
        Timer::Recycle(id),
    ]
}

/// A worker aborted for a timeout (then perhaps killed) and not reaped yet.
pub(super) fn is_hung(worker: &Worker) -> bool {
    match worker.state {
        WorkerState::Aborted => true,
        WorkerState::Killed => matches!(
            worker.stop_reason,
            Some(Reason::HeartbeatTimeout | Reason::BootTimeout)
        ),
        _ => false,
    }
}
