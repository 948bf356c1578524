//! `--gpus 0,1,2` / `USE_GPUS`: a list that parses joins back into an equal list and is a valid
//! configuration for any `gpus-per-worker` up to its length, whose balancer keeps one worker per
//! slot balanced within one and under the cap; a refused list gets a one-line error.
//!
//! Input: byte 0 picks `gpus-per-worker`, byte 1 the worker count, the rest is the list.
#![no_main]

use arbiter_fuzz::{assert_bounded, assert_one_line, peak_during};
use arbiter_gpu::{Balancer, GpuConfig, GpuError, DEFAULT_ENV_VAR};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [per_worker_seed, workers, list @ ..] = data else {
        return;
    };
    let Ok(list) = std::str::from_utf8(list) else {
        return;
    };
    let (parsed, peak) = peak_during(|| GpuConfig::parse_list(list));
    assert_bounded(peak, 96 * list.len() + 1024, data);
    let devices = match parsed {
        Ok(devices) => devices,
        Err(error) => {
            let message = error.to_string();
            assert_one_line(&message);
            if let GpuError::InvalidId(id) | GpuError::DuplicateId(id) = &error {
                assert!(message.contains(&format!("{id:?}")), "{message:?}");
            }
            return;
        }
    };
    assert!(!devices.is_empty());
    let joined = Balancer::env_value(&devices);
    assert_eq!(
        GpuConfig::parse_list(&joined).as_ref(),
        Ok(&devices),
        "{list:?} joined as {joined:?}"
    );
    let per_worker = 1 + usize::from(*per_worker_seed) % devices.len();
    let config = GpuConfig::new(devices.clone(), per_worker, DEFAULT_ENV_VAR)
        .unwrap_or_else(|e| panic!("{list:?} parsed as {devices:?} but is refused: {e}"));
    let workers = usize::from(*workers);
    let mut balancer = Balancer::new(config, workers);
    for slot in 0..workers {
        let held = balancer.acquire(slot as u64, slot);
        assert_eq!(held.len(), per_worker);
        assert_eq!(held, balancer.devices_for_slot(slot), "sticky by slot");
    }
    let loads: Vec<usize> = balancer.load().into_iter().map(|(_, n)| n).collect();
    let (min, max) = (loads.iter().min(), loads.iter().max());
    if let (Some(&min), Some(&max)) = (min, max) {
        assert!(max - min <= 1 && max <= balancer.cap(), "{loads:?}");
    }
    for _ in 0..2 {
        for worker in 0..workers as u64 {
            balancer.release(worker);
        }
    }
    assert!(balancer.load().iter().all(|(_, n)| *n == 0));
});
