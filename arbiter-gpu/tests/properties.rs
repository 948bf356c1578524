//! Property tests of the balancer: the mapping is balanced for every (N, D, k), and the
//! counters match the live holders over any sequence of acquires and releases.

use arbiter_gpu::{Balancer, DeviceId, GpuConfig, DEFAULT_ENV_VAR};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};

fn balancer(devices: usize, per_worker: usize, workers: usize) -> Balancer {
    let ids = (0..devices).map(|d| format!("GPU-{d}")).collect();
    Balancer::new(
        GpuConfig::new(ids, per_worker, DEFAULT_ENV_VAR).unwrap(),
        workers,
    )
}

fn loads(balancer: &Balancer) -> Vec<usize> {
    balancer.load().into_iter().map(|(_, load)| load).collect()
}

/// (devices D in 1..16, per_worker k in 1..=D)
fn devices_and_per_worker() -> impl Strategy<Value = (usize, usize)> {
    (1usize..16).prop_flat_map(|devices| (Just(devices), 1..=devices))
}

fn assert_balanced(loads: &[usize], cap: usize) -> Result<(), TestCaseError> {
    let max = *loads.iter().max().unwrap();
    let min = *loads.iter().min().unwrap();
    prop_assert!(max - min <= 1, "loads {loads:?} differ by more than one");
    prop_assert!(max <= cap, "loads {loads:?} exceed the cap {cap}");
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    /// A new worker (fresh id) starts in this slot (taken modulo N).
    Spawn(usize),
    /// The worker spawned at this index (modulo the number spawned so far) exits; it may have
    /// exited already, which must change nothing.
    Exit(usize),
    /// TTIN / TTOU: the worker count becomes this (at least 1).
    Resize(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..200).prop_map(Op::Spawn),
        3 => (0usize..400).prop_map(Op::Exit),
        1 => (1usize..200).prop_map(Op::Resize),
    ]
}

proptest! {
    #[test]
    fn one_worker_per_slot_is_balanced_within_one_and_capped(
        workers in 1usize..200,
        (devices, per_worker) in devices_and_per_worker(),
    ) {
        let mut gpus = balancer(devices, per_worker, workers);
        prop_assert_eq!(gpus.cap(), (workers * per_worker).div_ceil(devices));
        for slot in 0..workers {
            let held = gpus.acquire(slot as u64, slot);
            prop_assert_eq!(held.len(), per_worker);
            let distinct: HashSet<&DeviceId> = held.iter().collect();
            prop_assert_eq!(distinct.len(), per_worker, "slot {} got {:?}", slot, held);
            prop_assert_eq!(&held, &gpus.devices_for_slot(slot));
        }
        assert_balanced(&loads(&gpus), gpus.cap())?;
        prop_assert_eq!(loads(&gpus).iter().sum::<usize>(), workers * per_worker);
    }

    #[test]
    fn the_mapping_of_a_slot_ignores_the_worker_count(
        slot in 0usize..400,
        first in 0usize..200,
        second in 0usize..200,
        (devices, per_worker) in devices_and_per_worker(),
    ) {
        let mut gpus = balancer(devices, per_worker, first);
        let before = gpus.devices_for_slot(slot);
        gpus.set_workers(second);
        prop_assert_eq!(gpus.devices_for_slot(slot), before);
    }

    #[test]
    fn counters_equal_live_holders_over_any_history(
        (devices, per_worker) in devices_and_per_worker(),
        initial in 1usize..200,
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let mut gpus = balancer(devices, per_worker, initial);
        let mut workers = initial;
        // The model: live worker id -> the devices it holds.
        let mut live: BTreeMap<u64, Vec<DeviceId>> = BTreeMap::new();
        let mut spawned: Vec<u64> = Vec::new();
        let mut next_id = 1u64;
        for op in ops {
            match op {
                Op::Spawn(slot) => {
                    let slot = slot % workers;
                    let held = gpus.acquire(next_id, slot);
                    prop_assert_eq!(&held, &gpus.devices_for_slot(slot));
                    live.insert(next_id, held);
                    spawned.push(next_id);
                    next_id += 1;
                }
                Op::Exit(index) => {
                    if spawned.is_empty() {
                        continue;
                    }
                    let worker = spawned[index % spawned.len()];
                    gpus.release(worker);
                    live.remove(&worker);
                }
                Op::Resize(count) => {
                    workers = count;
                    gpus.set_workers(count);
                }
            }
            let mut expected: BTreeMap<&DeviceId, usize> = BTreeMap::new();
            for held in live.values() {
                for device in held {
                    *expected.entry(device).or_default() += 1;
                }
            }
            for (device, load) in gpus.load() {
                prop_assert_eq!(load, expected.get(&device).copied().unwrap_or(0), "device {}", device);
            }
            prop_assert_eq!(gpus.holders(), live.len());
        }
        // Every exit reported, some twice: nothing may be left or underflow.
        for worker in spawned.iter().chain(spawned.iter()) {
            gpus.release(*worker);
        }
        prop_assert!(loads(&gpus).iter().all(|&load| load == 0));
        prop_assert_eq!(gpus.holders(), 0);
    }

    #[test]
    fn a_finished_roll_is_balanced_again(
        workers in 1usize..100,
        (devices, per_worker) in devices_and_per_worker(),
        order in any::<u64>(),
    ) {
        let mut gpus = balancer(devices, per_worker, workers);
        for slot in 0..workers {
            gpus.acquire(slot as u64, slot);
        }
        // Roll the slots one at a time in a pseudo-random order: new worker up, old one out.
        let mut slots: Vec<usize> = (0..workers).collect();
        slots.sort_by_key(|slot| (*slot as u64).wrapping_mul(order | 1).rotate_left(17));
        for slot in slots {
            let old = slot as u64;
            gpus.acquire(1_000 + old, slot);
            let surging = loads(&gpus);
            prop_assert!(surging.iter().max().unwrap() <= &(gpus.cap() + 1));
            gpus.release(old);
        }
        assert_balanced(&loads(&gpus), gpus.cap())?;
    }
}
