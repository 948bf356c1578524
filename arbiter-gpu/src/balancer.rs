//! The balancer: a fixed slot -> devices mapping, and live-holder counters per device.

use crate::{DeviceId, GpuConfig};
use std::collections::BTreeMap;

/// Assigns devices to worker slots and counts who holds what.
///
/// The mapping: with `D` devices and `k` per worker, slot `s` gets the `k` devices at indices
/// `(s*k) % D, (s*k + 1) % D, ..., (s*k + k-1) % D`, in that order (the list wraps around). It
/// depends on nothing but `s`, `k` and `D`, so it is sticky across respawns and never moves
/// when the worker count changes. Over slots `0..N` it lays the positions `0..N*k` around the
/// device ring, so every device is used `floor(N*k/D)` or `ceil(N*k/D)` times: balanced within
/// one and never above [`cap`](Balancer::cap), for every `N`, `D` and `k <= D` (the crate's
/// property tests check this). Rotating the start also rotates which device a worker sees
/// first, so programs that use only their first visible device spread over all of them too.
///
/// The counters are driven by [`acquire`](Balancer::acquire) and
/// [`release`](Balancer::release), keyed by the worker's unique id: a release of a worker that
/// holds nothing is a no-op, so every exit path may call it and counters never drift.
#[derive(Debug, Clone)]
pub struct Balancer {
    config: GpuConfig,
    workers: usize,
    cap: usize,
    /// Live worker id -> its slot and the device indices it holds.
    holdings: BTreeMap<u64, Holding>,
    /// Live holders per device index.
    load: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Holding {
    slot: usize,
    devices: Vec<usize>,
}

impl Balancer {
    /// A balancer for `workers` slots with nobody holding anything yet.
    pub fn new(config: GpuConfig, workers: usize) -> Balancer {
        let load = vec![0; config.devices.len()];
        let mut balancer = Balancer {
            config,
            workers,
            cap: 0,
            holdings: BTreeMap::new(),
            load,
        };
        balancer.set_workers(workers);
        balancer
    }

    /// Number of workers (slots 0..workers) the balance is computed for; recomputes the cap.
    ///
    /// No slot's devices move (the mapping does not depend on the count), and live holdings
    /// are kept: the caller releases the workers it retires.
    pub fn set_workers(&mut self, workers: usize) {
        self.workers = workers;
        self.cap = workers
            .saturating_mul(self.config.per_worker)
            .div_ceil(self.config.devices.len());
    }

    /// The worker count the cap is computed for.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The seed's per-device cap: ceil(workers * per_worker / devices).
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The devices of a slot. Deterministic and sticky: the same slot always gets the same devices back while the worker count is unchanged, so a respawned worker sees the GPUs its predecessor saw. For slots 0..workers, every device holds at most `cap` slots and the per-device counts differ by at most one.
    ///
    /// The result has exactly `per_worker` distinct devices; it is defined for every slot,
    /// including slots at or above the worker count.
    pub fn devices_for_slot(&self, slot: usize) -> Vec<DeviceId> {
        self.indices_for_slot(slot)
            .map(|index| self.config.devices[index].clone())
            .collect()
    }

    /// A live worker (identified by its unique worker id, u64) now holds its slot's devices. Returns them.
    ///
    /// Acquiring again for a worker that already holds devices replaces its holding (the old
    /// devices are released first), so the counters stay exact.
    pub fn acquire(&mut self, worker: u64, slot: usize) -> Vec<DeviceId> {
        self.release(worker);
        let devices: Vec<usize> = self.indices_for_slot(slot).collect();
        for &index in &devices {
            self.load[index] += 1;
        }
        let names = devices
            .iter()
            .map(|&index| self.config.devices[index].clone())
            .collect();
        self.holdings.insert(worker, Holding { slot, devices });
        names
    }

    /// The worker exited (crash, kill, timeout, retire: every exit goes through here, exactly once per worker; a second release of the same worker is a no-op, so counters never drift — the seed decremented on kill and murder only, never on a crash, and twice for a worker aborted then killed).
    pub fn release(&mut self, worker: u64) {
        if let Some(holding) = self.holdings.remove(&worker) {
            for index in holding.devices {
                // Cannot underflow: each held index was counted once by `acquire`.
                self.load[index] -= 1;
            }
        }
    }

    /// Live holders per device, in device order.
    pub fn load(&self) -> Vec<(DeviceId, usize)> {
        self.config
            .devices
            .iter()
            .cloned()
            .zip(self.load.iter().copied())
            .collect()
    }

    /// The devices a live worker holds, or `None` if it holds none.
    pub fn held_by(&self, worker: u64) -> Option<Vec<DeviceId>> {
        self.holdings.get(&worker).map(|holding| {
            holding
                .devices
                .iter()
                .map(|&index| self.config.devices[index].clone())
                .collect()
        })
    }

    /// The slot a live worker acquired for, or `None` if it holds nothing.
    pub fn slot_of(&self, worker: u64) -> Option<usize> {
        self.holdings.get(&worker).map(|holding| holding.slot)
    }

    /// The number of live workers holding devices.
    pub fn holders(&self) -> usize {
        self.holdings.len()
    }

    /// The configuration this balancer was built from.
    pub fn config(&self) -> &GpuConfig {
        &self.config
    }

    /// The environment variable the devices are passed in.
    pub fn env_var(&self) -> &str {
        &self.config.env_var
    }

    /// "0,1" — the value to put in env_var for these devices.
    pub fn env_value(devices: &[DeviceId]) -> String {
        devices.join(",")
    }

    /// Indices of the slot's devices: `per_worker` consecutive positions on the device ring.
    fn indices_for_slot(&self, slot: usize) -> impl Iterator<Item = usize> {
        let count = self.config.devices.len();
        let per_worker = self.config.per_worker;
        // (slot % D) * k keeps the product small; it equals slot * k modulo D.
        let start = (slot % count) * per_worker % count;
        (0..per_worker).map(move |offset| (start + offset) % count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_ENV_VAR;

    fn balancer(devices: usize, per_worker: usize, workers: usize) -> Balancer {
        let ids = (0..devices).map(|d| d.to_string()).collect();
        Balancer::new(
            GpuConfig::new(ids, per_worker, DEFAULT_ENV_VAR).unwrap(),
            workers,
        )
    }

    fn loads(balancer: &Balancer) -> Vec<usize> {
        balancer.load().into_iter().map(|(_, load)| load).collect()
    }

    fn ids(list: &[&str]) -> Vec<DeviceId> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn seven_workers_over_three_gpus_load_three_two_two() {
        let mut gpus = balancer(3, 1, 7);
        assert_eq!(gpus.cap(), 3);
        let assigned: Vec<String> = (0..7)
            .map(|slot| Balancer::env_value(&gpus.acquire(100 + slot as u64, slot)))
            .collect();
        assert_eq!(assigned, ["0", "1", "2", "0", "1", "2", "0"]);
        assert_eq!(
            gpus.load(),
            vec![
                ("0".to_string(), 3),
                ("1".to_string(), 2),
                ("2".to_string(), 2)
            ]
        );
        assert_eq!(gpus.holders(), 7);
    }

    #[test]
    fn a_respawned_worker_gets_its_predecessors_devices() {
        let mut gpus = balancer(3, 1, 7);
        for slot in 0..7 {
            gpus.acquire(slot as u64, slot);
        }
        let before = loads(&gpus);
        let first = gpus.held_by(4).unwrap();
        gpus.release(4);
        assert_eq!(loads(&gpus), [3, 1, 2]);
        assert_eq!(gpus.held_by(4), None);
        let again = gpus.acquire(99, 4);
        assert_eq!(again, first);
        assert_eq!(again, gpus.devices_for_slot(4));
        assert_eq!(gpus.slot_of(99), Some(4));
        assert_eq!(loads(&gpus), before);
    }

    #[test]
    fn two_gpus_per_worker_cover_each_device_twice() {
        let mut gpus = balancer(4, 2, 4);
        assert_eq!(gpus.cap(), 2);
        let values: Vec<String> = (0..4)
            .map(|slot| Balancer::env_value(&gpus.acquire(slot as u64, slot)))
            .collect();
        assert_eq!(values, ["0,1", "2,3", "0,1", "2,3"]);
        assert_eq!(loads(&gpus), [2, 2, 2, 2]);
    }

    #[test]
    fn blocks_wrap_around_when_per_worker_does_not_divide_the_devices() {
        let gpus = balancer(3, 2, 3);
        assert_eq!(gpus.devices_for_slot(0), ids(&["0", "1"]));
        assert_eq!(gpus.devices_for_slot(1), ids(&["2", "0"]));
        assert_eq!(gpus.devices_for_slot(2), ids(&["1", "2"]));
        assert_eq!(gpus.cap(), 2);
    }

    #[test]
    fn changing_the_worker_count_never_moves_a_slot() {
        let mut gpus = balancer(3, 2, 5);
        let before: Vec<_> = (0..5).map(|slot| gpus.devices_for_slot(slot)).collect();
        gpus.set_workers(2);
        assert_eq!(gpus.workers(), 2);
        assert_eq!(gpus.cap(), 2);
        for (slot, devices) in before.iter().enumerate().take(2) {
            assert_eq!(&gpus.devices_for_slot(slot), devices);
        }
        gpus.set_workers(9);
        assert_eq!(gpus.cap(), 6);
        for (slot, devices) in before.iter().enumerate() {
            assert_eq!(&gpus.devices_for_slot(slot), devices);
        }
    }

    #[test]
    fn shrinking_then_growing_keeps_counts_exact() {
        let mut gpus = balancer(3, 1, 7);
        for slot in 0..7 {
            gpus.acquire(slot as u64, slot);
        }
        // TTOU twice: the core retires the workers of slots 6 and 5.
        gpus.set_workers(5);
        gpus.release(6);
        gpus.release(5);
        assert_eq!(loads(&gpus), [2, 2, 1]);
        assert_eq!(gpus.cap(), 2);
        // TTIN: slot 5 comes back on the device it had.
        gpus.set_workers(6);
        assert_eq!(gpus.acquire(50, 5), ids(&["2"]));
        assert_eq!(loads(&gpus), [2, 2, 2]);
    }

    #[test]
    fn releasing_twice_or_unknown_workers_is_a_no_op() {
        let mut gpus = balancer(2, 1, 2);
        gpus.acquire(1, 0);
        gpus.acquire(2, 1);
        gpus.release(1);
        gpus.release(1);
        gpus.release(12345);
        assert_eq!(loads(&gpus), [0, 1]);
        gpus.release(2);
        gpus.release(2);
        assert_eq!(loads(&gpus), [0, 0]);
        assert_eq!(gpus.holders(), 0);
    }

    #[test]
    fn acquiring_again_replaces_the_holding() {
        let mut gpus = balancer(2, 1, 2);
        gpus.acquire(1, 0);
        gpus.acquire(1, 0);
        assert_eq!(loads(&gpus), [1, 0]);
        gpus.acquire(1, 1);
        assert_eq!(loads(&gpus), [0, 1]);
        assert_eq!(gpus.slot_of(1), Some(1));
    }

    #[test]
    fn a_rolling_reload_surges_above_the_cap_and_load_says_so() {
        let mut gpus = balancer(2, 1, 2);
        gpus.acquire(1, 0);
        gpus.acquire(2, 1);
        // The replacement of slot 0 boots while the old worker still serves.
        gpus.acquire(3, 0);
        assert_eq!(loads(&gpus), [2, 1]);
        assert!(loads(&gpus)[0] > gpus.cap());
        gpus.release(1);
        assert_eq!(loads(&gpus), [1, 1]);
    }

    #[test]
    fn env_value_joins_with_commas_and_env_var_is_configured() {
        assert_eq!(
            Balancer::env_value(&ids(&["GPU-a", "GPU-b"])),
            "GPU-a,GPU-b"
        );
        assert_eq!(Balancer::env_value(&[]), "");
        let config = GpuConfig::new(ids(&["0"]), 1, "HIP_VISIBLE_DEVICES").unwrap();
        let gpus = Balancer::new(config.clone(), 1);
        assert_eq!(gpus.env_var(), "HIP_VISIBLE_DEVICES");
        assert_eq!(gpus.config(), &config);
    }

    #[test]
    fn zero_workers_have_a_zero_cap_and_huge_slots_still_map() {
        let gpus = balancer(3, 2, 0);
        assert_eq!(gpus.cap(), 0);
        assert_eq!(gpus.devices_for_slot(usize::MAX).len(), 2);
        let mut big = balancer(3, 2, usize::MAX);
        assert!(big.cap() > 0);
        big.set_workers(1);
        assert_eq!(big.cap(), 1);
    }
}
