//! GPU balancing end to end: real `arbiter` masters with made-up device ids, workers read
//! exactly through `/proc/PID/environ` (slot and GPU variable), checked against the documented
//! mapping (slot `s` gets the K devices from position `(s*K) mod D`) and the per-device cap
//! `ceil(N*K/D)` through crashes, timeouts, TTIN/TTOU, HUP rolls and USR2 upgrades.
//! Every process is cleaned up by pid (see `arbiter_tests`); loopback only.

mod balance;
mod options;
mod probe;
mod reload;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arbiter_tests::{Fixture, Master, SOON};

/// The default variable that carries a worker's GPUs.
pub const CUDA: &str = "CUDA_VISIBLE_DEVICES";

/// One live worker: its pid, its slot and the devices its environment names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The worker's pid.
    pub pid: i32,
    /// `ARBITER_WORKER_SLOT`.
    pub slot: usize,
    /// The GPU variable's value, split on commas (empty when unset).
    pub gpus: Vec<String>,
}

/// The exec'd workers among the live children of `parent`, read from `/proc`; a child that
/// has not exec'd yet (no `ARBITER_WORKER_SLOT`) or that vanished meanwhile is left out.
pub fn placements_of(parent: i32, var: &str) -> Vec<Placed> {
    arbiter_tests::children_of(parent)
        .into_iter()
        .filter_map(|pid| {
            let env = arbiter_tests::environ(pid)?;
            let slot = env.get("ARBITER_WORKER_SLOT")?.parse().ok()?;
            let gpus = env
                .get(var)
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            Some(Placed { pid, slot, gpus })
        })
        .collect()
}

/// [`placements_of`] the master, recording every pid for the cleanup.
pub fn placements(master: &mut Master, var: &str) -> Vec<Placed> {
    master.track_tree();
    placements_of(master.pid(), var)
}

/// Waits until `parent` has exactly `n` children, all exec'd workers in distinct slots;
/// returns them by slot. Panics with `log()` after `bound`.
pub fn settle_of(
    parent: i32,
    var: &str,
    n: usize,
    bound: Duration,
    log: impl Fn() -> String,
) -> BTreeMap<usize, Placed> {
    let deadline = Instant::now() + bound;
    loop {
        let children = arbiter_tests::children_of(parent);
        let placed = placements_of(parent, var);
        let slots: BTreeSet<usize> = placed.iter().map(|p| p.slot).collect();
        if children.len() == n && placed.len() == n && slots.len() == n {
            return placed.into_iter().map(|p| (p.slot, p)).collect();
        }
        assert!(
            Instant::now() < deadline,
            "no {n} settled workers after {bound:?}: {placed:?}\nlog:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`settle_of`] the master.
pub fn settle(master: &mut Master, var: &str, n: usize) -> BTreeMap<usize, Placed> {
    master.track_tree();
    let pid = master.pid();
    let log = master.stderr();
    let settled = settle_of(pid, var, n, SOON, || log.clone());
    master.track_tree();
    settled
}

/// Workers per device.
pub fn load<'a>(placed: impl IntoIterator<Item = &'a Placed>) -> BTreeMap<String, usize> {
    let mut load = BTreeMap::new();
    for worker in placed {
        for gpu in &worker.gpus {
            *load.entry(gpu.clone()).or_default() += 1;
        }
    }
    load
}

/// The documented mapping: slot `s` gets the `k` devices starting at `(s*k) mod D`.
pub fn expected(devices: &[&str], k: usize, slot: usize) -> Vec<String> {
    (0..k)
        .map(|i| devices[(slot * k + i) % devices.len()].to_owned())
        .collect()
}

/// The per-device cap `ceil(n*k/D)`.
pub fn cap(n: usize, k: usize, devices: usize) -> usize {
    (n * k).div_ceil(devices)
}

/// Asserts the steady state of `n` workers: slots 0..n, each on its documented devices,
/// loads within one of each other and at most the cap; returns the load.
pub fn assert_balanced(
    settled: &BTreeMap<usize, Placed>,
    devices: &[&str],
    k: usize,
    context: &str,
) -> BTreeMap<String, usize> {
    let n = settled.len();
    assert_eq!(
        settled.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "{context}: slots 0..{n}: {settled:?}"
    );
    for (slot, worker) in settled {
        assert_eq!(
            worker.gpus,
            expected(devices, k, *slot),
            "{context}: slot {slot}: {settled:?}"
        );
    }
    let load = load(settled.values());
    let cap = cap(n, k, devices.len());
    let max = load.values().copied().max().unwrap_or(0);
    let min = if load.len() == devices.len() {
        load.values().copied().min().unwrap_or(0)
    } else {
        0
    };
    assert!(
        max <= cap && max - min <= 1,
        "{context}: load {load:?} over cap {cap} or uneven"
    );
    load
}

/// Starts `arbiter -b 127.0.0.1:0 ARGS...` with extra environment and waits for `/` to answer.
pub fn start(fx: &Fixture, args: &[&str], env: &[(&str, &str)]) -> (Master, u16) {
    let mut full = vec!["-b", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let mut master = fx.start_with("arbiter", &full, env);
    let port = master.port();
    arbiter_tests::wait_serving(port, SOON).unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()));
    (master, port)
}

/// The `arbiter` binary as a string, for `-- ARBITER worker ...` command lines.
pub fn bin() -> &'static str {
    arbiter_tests::arbiter_bin().to_str().expect("utf-8 path")
}

/// Prints a distribution for the record (shown with `--nocapture`).
pub fn record(scenario: &str, load: &BTreeMap<String, usize>) {
    let text: Vec<String> = load.iter().map(|(gpu, n)| format!("{gpu}:{n}")).collect();
    println!("distribution [{scenario}]: {}", text.join(" "));
}

/// A bound for a graceful stop of idle workers.
pub const EXIT: Duration = Duration::from_secs(10);

/// A small xorshift generator, seeded from the clock (printed, so a failure can be replayed
/// with `GPU_TEST_SEED`).
pub struct Rng(u64);

impl Rng {
    /// Seeds from `GPU_TEST_SEED` or the clock.
    pub fn seeded() -> Rng {
        let seed = std::env::var("GPU_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        println!("GPU_TEST_SEED={seed}");
        Rng(seed)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
