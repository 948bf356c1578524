//! Events per second through the core with 10,000 workers: heartbeats, exits and respawns.
use std::time::{Duration, Instant};

use arbiter_core::{Action, Arbiter, Config, ExitStatus, Moment, Role};

fn main() {
    let workers = 10_000;
    let config = Config {
        workers,
        ..Config::default()
    };
    let mut now = Moment::ZERO;
    let mut arbiter = Arbiter::new(config, Role::Fresh, now);
    let mut next_pid = 1000;
    let mut pids = Vec::new();
    drain(&mut arbiter, &mut next_pid, &mut pids, now);
    let started = Instant::now();
    let mut events = 0u64;
    for round in 0..20u64 {
        now = now + Duration::from_millis(10);
        for &pid in &pids {
            arbiter.handle_heartbeat(pid, now);
            events += 1;
        }
        // Kill one worker in a hundred and let it respawn.
        let victims: Vec<i32> = pids
            .iter()
            .copied()
            .skip((round % 100) as usize)
            .step_by(100)
            .collect();
        for pid in victims {
            arbiter.handle_exit(pid, ExitStatus::Exited(1), now + Duration::from_secs(5));
            events += 1;
            pids.retain(|p| *p != pid);
            drain(&mut arbiter, &mut next_pid, &mut pids, now);
        }
        arbiter.handle_timeout(now);
        events += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "core: {events} events with {workers} workers in {:.3} s: {:.0} events/s",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
}

fn drain(arbiter: &mut Arbiter, next_pid: &mut i32, pids: &mut Vec<i32>, now: Moment) {
    while let Some(action) = arbiter.poll_action() {
        if let Action::Spawn { id, .. } = action {
            *next_pid += 1;
            pids.push(*next_pid);
            arbiter.handle_spawned(id, *next_pid, now);
        }
    }
}
