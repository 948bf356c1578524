//! Real-process integration tests of the `arbiter` binary: one test binary, one temp-dir
//! fixture per test, every process cleaned up by pid (see `arbiter_tests`).

mod annotated;
mod identity;
mod liveness;
mod preflight;
mod protocol;
mod reload;
mod scale;
mod serve;
mod signals;
mod startup;
mod stop;

use std::time::Duration;

use arbiter_tests::{Fixture, Master, SOON};

/// Starts `arbiter -b 127.0.0.1:0 ARGS...`, waits until `workers` children answer on `/`;
/// the master and its port.
pub fn serving(fixture: &Fixture, args: &[&str], workers: usize) -> (Master, u16) {
    let mut full = vec!["-b", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let mut master = fixture.start("arbiter", &full);
    let port = master.port();
    arbiter_tests::wait_serving(port, SOON).unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()));
    master.wait_children(workers, SOON);
    (master, port)
}

/// The `arbiter` binary as a string, for `-- ARBITER worker ...` command lines.
pub fn bin() -> &'static str {
    arbiter_tests::arbiter_bin().to_str().expect("utf-8 path")
}

/// How late a timed action may be: 1 s on an idle machine, more when the load average per
/// core is above 1 (several engineers' builds and benchmarks share 2 cores), at most 6 s.
/// Upper bounds built with it catch an action that never happens or waits a whole extra
/// period, not scheduling jitter; lower bounds stay exact.
pub fn slack() -> Duration {
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let extra = (load / cores - 1.0).max(0.0) * 0.5;
    Duration::from_secs_f64((1.0 + extra).min(6.0))
}

/// A bound for a graceful exit of idle workers.
pub const EXIT: Duration = Duration::from_secs(10);
