//! Scenario 5: 20 upgrades in a row, then 100 HUPs in a row, under a light load: the
//! master's open fds do not grow, its RSS stays within a small slack, no request fails.

use std::time::{Duration, Instant};

use arbiter_tests::{wait_until, Fixture, SOON};

use crate::load::Load;
use crate::{
    assert_clean, fd_count, promoted, read_pid, record, rss_kib, run_upgrade, s, stop,
    wait_log_count, LOAD_LIMIT,
};

const UPGRADES: usize = 20;
const HUPS: usize = 100;
/// Measurements before this many rounds are warm-up.
const WARM: usize = 5;

/// The master's fds and RSS once settled: the minimum of a few reads (a transient fd, such
/// as a pidfile being written, is not a leak).
fn footprint(pid: i32) -> (usize, u64) {
    let mut best = (usize::MAX, u64::MAX);
    for _ in 0..3 {
        best = (best.0.min(fd_count(pid)), best.1.min(rss_kib(pid)));
        std::thread::sleep(Duration::from_millis(20));
    }
    best
}

fn assert_no_growth(what: &str, warm: (usize, u64), end: (usize, u64), log: &str) {
    assert!(
        end.0 <= warm.0,
        "{what}: open fds grew from {} to {}\n{log}",
        warm.0,
        end.0
    );
    assert!(
        end.1 * 4 <= warm.1 * 5,
        "{what}: RSS grew more than 25%: {} KiB -> {} KiB",
        warm.1,
        end.1
    );
}

#[test]
fn many_upgrades_and_reloads_leak_nothing() {
    let started = Instant::now();
    let fx = Fixture::new();
    let _guard = crate::CopyGuard::new(fx.path());
    let program = fx.copy_arbiter("arbiter");
    let pidfile = fx.join("app.pid");
    let args = ["-b", "127.0.0.1:0", "-w", "2", "-p", s(&pidfile)];
    let mut master = fx.start_program("arbiter", &program, &args, &[]);
    let port = master.port();
    arbiter_tests::wait_serving(port, SOON).unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()));
    master.wait_children(2, SOON);
    assert!(wait_until(SOON, || read_pid(&pidfile) == Some(master.pid())));
    let load = Load::start(port, 2, LOAD_LIMIT);
    let mut current = master.pid();
    let mut warm = (0, 0);
    let mut slowest = Duration::ZERO;
    for round in 1..=UPGRADES {
        let run = run_upgrade(&program, &pidfile, Duration::from_secs(30));
        master.track_tree();
        assert_eq!(run.code, 0, "upgrade {round}: {run:?}\n{}", master.stderr());
        slowest = slowest.max(run.took);
        current = promoted(&mut master, &pidfile, current, 2).0;
        if round == WARM {
            warm = footprint(current);
        }
    }
    let upgrades_took = started.elapsed();
    let after_upgrades = footprint(current);
    assert_no_growth("upgrades", warm, after_upgrades, &master.stderr());
    let hups_started = Instant::now();
    let mut hup_warm = (0, 0);
    for round in 1..=HUPS {
        arbiter_tests::signal(current, libc::SIGHUP).expect("HUP");
        wait_log_count(&mut master, "Reload finished", round, SOON);
        if round == WARM {
            hup_warm = footprint(current);
        }
    }
    let hups_took = hups_started.elapsed();
    assert!(
        wait_until(SOON, || arbiter_tests::children_of(current).len() == 2),
        "two workers after the reloads\n{}",
        master.stderr()
    );
    let after_hups = footprint(current);
    let report = load.finish();
    record(
        "soak (20 upgrades, 100 HUPs)",
        &report,
        &format!(
            "upgrades {:.1} s (slowest {:.2} s), fds {} -> {}, rss {} -> {} KiB; HUPs {:.1} s, fds {} -> {}, rss {} -> {} KiB",
            upgrades_took.as_secs_f64(),
            slowest.as_secs_f64(),
            warm.0,
            after_upgrades.0,
            warm.1,
            after_upgrades.1,
            hups_took.as_secs_f64(),
            hup_warm.0,
            after_hups.0,
            hup_warm.1,
            after_hups.1
        ),
    );
    assert_no_growth("reloads", hup_warm, after_hups, &master.stderr());
    assert_clean(&report, "");
    stop(&mut master, current);
}
