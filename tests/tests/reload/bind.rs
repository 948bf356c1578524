//! Scenario 4: HUP with a changed `bind` under load: new addresses are bound before old ones
//! are closed, and a new bind that fails keeps the old set and the master.

use std::time::{Duration, Instant};

use arbiter_tests::{wait_until, Fixture, Master, SOON};

use crate::load::Load;
use crate::{assert_clean, free_port, record, refused, s, wait_log_count, LOAD_LIMIT, THREADS};

fn config(ports: &[u16]) -> String {
    let binds: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    // No bind retries: a failing bind on HUP must be reported at once.
    format!(
        "workers = 2\nbind_retries = 0\nbind = [{}]\n",
        binds.join(", ")
    )
}

fn start(fx: &Fixture, port: u16) -> Master {
    let path = fx.write("app.toml", &config(&[port]));
    let mut master = fx.start("arbiter", &["-c", s(&path)]);
    master
        .wait_log(&format!("Listening at: http://127.0.0.1:{port}"), SOON)
        .unwrap_or_else(|e| panic!("{e}"));
    arbiter_tests::wait_serving(port, SOON).unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()));
    master.wait_children(2, SOON);
    master
}

/// Waits for the `count`th finished reload and for exactly two workers, none of `old`.
fn rolled(master: &mut Master, count: usize, old: &[i32]) -> Vec<i32> {
    wait_log_count(master, "Reload finished", count, Duration::from_secs(15));
    let mut now = Vec::new();
    assert!(
        wait_until(SOON, || {
            now = master.children();
            now.len() == 2 && now.iter().all(|p| !old.contains(p))
        }),
        "old workers left: {old:?} -> {now:?}\n{}",
        master.stderr()
    );
    now
}

#[test]
fn hup_moves_the_bind_from_a_to_a_and_b_to_b() {
    let fx = Fixture::new();
    let (a, b) = (free_port(), free_port());
    let mut master = start(&fx, a);
    let first = master.children();
    let load_a = Load::start(a, THREADS, LOAD_LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    fx.write("app.toml", &config(&[a, b]));
    let hup = Instant::now();
    master.signal(libc::SIGHUP);
    let second = rolled(&mut master, 1, &first);
    let took = hup.elapsed();
    arbiter_tests::wait_serving(b, SOON).unwrap_or_else(|e| panic!("{e}\n{}", master.stderr()));
    let load_b = Load::start(b, THREADS, LOAD_LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    let report = load_a.finish();
    record(
        "bind A -> A+B (load on A)",
        &report,
        &format!("HUP -> rolled {:.2} s", took.as_secs_f64()),
    );
    assert_clean(&report, &master.stderr());
    fx.write("app.toml", &config(&[b]));
    let hup = Instant::now();
    master.signal(libc::SIGHUP);
    rolled(&mut master, 2, &second);
    let took = hup.elapsed();
    // Once the last worker holding A is gone, A is closed for good.
    assert!(
        wait_until(SOON, || refused(a)),
        "A still accepts after the roll\n{}",
        master.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    let report = load_b.finish();
    record(
        "bind A+B -> B (load on B)",
        &report,
        &format!(
            "HUP -> rolled {:.2} s; A refused afterwards",
            took.as_secs_f64()
        ),
    );
    assert_clean(&report, &master.stderr());
    assert!(
        master.stderr().contains("Closing listener"),
        "{}",
        master.stderr()
    );
    master.signal(libc::SIGTERM);
    assert_eq!(
        master.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        master.stderr()
    );
    master.assert_no_process_left();
}

#[test]
fn hup_with_a_bind_that_fails_keeps_the_old_set() {
    let fx = Fixture::new();
    let a = free_port();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let b = taken.local_addr().expect("addr").port();
    let mut master = start(&fx, a);
    let workers = master.wait_children(2, SOON);
    let load = Load::start(a, THREADS, LOAD_LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    fx.write("app.toml", &config(&[a, b]));
    let hup = Instant::now();
    master.signal(libc::SIGHUP);
    let log = wait_log_count(&mut master, "new bind failed", 1, SOON);
    let took = hup.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.finish();
    record(
        "bind A -> A+B with B taken (load on A)",
        &report,
        &format!("failure reported {:.2} s after HUP", took.as_secs_f64()),
    );
    assert_clean(&report, &log);
    assert!(!master.exited(), "the master survives\n{}", master.stderr());
    assert_eq!(
        master.wait_children(2, SOON),
        workers,
        "no roll on a failed reload"
    );
    assert!(
        !master.stderr().contains("Reloading: generation"),
        "{}",
        master.stderr()
    );
    arbiter_tests::wait_serving(a, SOON).unwrap_or_else(|e| panic!("{e}"));
    drop(taken);
    master.signal(libc::SIGTERM);
    assert_eq!(
        master.exit_code(Duration::from_secs(15)),
        0,
        "{}",
        master.stderr()
    );
    master.assert_no_process_left();
}
