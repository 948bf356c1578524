//! The scenarios of one master at a time: boot, spawning, TTIN burst, hung request and crash,
//! graceful stop, HUP and USR2 under load, overhead. Each runs the systems alternately, `reps`
//! times, every run bounded in time, and returns a [`Section`] with the floors of the same
//! run beside them. The idle and scale scenarios are in `scale.rs`.

use std::process::Command;
use std::time::{Duration, Instant};

use super::floor::Floor;
use super::load::Load;
use super::procfs::{self, wall_now};
use super::report::{Better, Figure, Section};
use super::servers::{Bench, Kind, Master, Spec, System};
use super::Plan;

/// The longest any single wait may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// The four systems that serve HTTP, in column order.
pub const SERVERS: [System; 4] = [
    System::Arbiter(Kind::Builtin),
    System::Arbiter(Kind::Python),
    System::Gunicorn,
    System::Uwsgi,
];

/// Ratios of the two arbiter columns against gunicorn and uWSGI.
pub const SERVER_RATIOS: [(usize, usize); 4] = [(1, 2), (1, 3), (0, 2), (0, 3)];

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Column names of `systems`, then `extra`.
pub fn columns(systems: &[System], extra: &[&str]) -> Vec<String> {
    systems
        .iter()
        .map(|s| s.label().to_owned())
        .chain(extra.iter().map(|e| (*e).to_owned()))
        .collect()
}

/// Marks the columns of systems that cannot run here.
pub fn note_unavailable(bench: &Bench, systems: &[System], figures: &mut [Figure]) {
    for (column, &system) in systems.iter().enumerate() {
        if !bench.available(system) {
            for figure in figures.iter_mut() {
                figure.note(column, "not installed");
            }
        }
    }
}

/// Sends `count` SIGTTIN to `pid`, `gap` apart.
pub fn burst(pid: i32, count: usize, gap: Duration) {
    for i in 0..count {
        procfs::kill(pid, libc::SIGTTIN);
        if i + 1 < count {
            std::thread::sleep(gap);
        }
    }
}

/// The C floors: 32 spawns (fork and vfork) of `/bin/true`, and of Python importing the app.
pub fn floors(bench: &Bench, floor: &Floor, plan: &Plan) -> Result<Section, String> {
    let n = 32;
    let mut fork = Figure::new(
        format!("{n} x fork+exec of /bin/true, all reaped"),
        "ms",
        Better::Lower,
    );
    let mut fork_loop = Figure::new(
        format!("{n} x fork returned in the parent"),
        "ms",
        Better::Lower,
    );
    let py_import = format!(
        "import sys; sys.path.insert(0, {:?}); import py_worker",
        bench.scripts.to_string_lossy()
    );
    let mut python = Figure::new(
        format!("{n} x fork+exec of Python importing the app, all reaped"),
        "ms",
        Better::Lower,
    );
    let truth = std::path::Path::new("/bin/true");
    let python_bin = bench.python();
    let dash_c = std::path::Path::new("-c");
    let import = std::path::Path::new(&py_import);
    for _ in 0..plan.reps {
        for (column, vfork) in [(0, false), (1, true)] {
            let t = floor.spawn(vfork, n, &[truth])?;
            fork.push(column, ms(t.reaped));
            fork_loop.push(column, ms(t.forked));
        }
        let t = floor.spawn(false, n, &[&python_bin, dash_c, import])?;
        python.push(0, ms(t.reaped));
    }
    python.note(1, "—");
    Ok(Section {
        title: "Floors: fork+exec from C".into(),
        method: format!(
            "A C program (compiled with `cc -O2` at bench time) forks (or vforks) {n} children \
             one after the other, each exec'ing the program, then waits for all of them. This \
             is what a master cannot beat when it spawns {n} workers; the Python row is the \
             floor of exec'd Python workers (the interpreter starts and imports \
             `py_worker`). {} repetitions.",
            plan.reps
        ),
        columns: vec!["fork+exec".into(), "vfork+exec".into()],
        ratios: vec![(1, 0)],
        figures: vec![fork, fork_loop, python],
    })
}

/// Boot: from spawning the master until every worker is ready by the system's own marker.
pub fn boot(bench: &Bench, floor: &Floor, plan: &Plan) -> Result<Section, String> {
    let mut figures = Vec::new();
    let python_bin = bench.python();
    let py_import = format!(
        "import sys; sys.path.insert(0, {:?}); import py_worker",
        bench.scripts.to_string_lossy()
    );
    for &n in &plan.boot_sizes {
        let mut figure =
            Figure::new(format!("boot to {n} workers ready"), "ms", Better::Lower).charted();
        for _ in 0..plan.reps {
            for (column, &system) in SERVERS.iter().enumerate() {
                if !bench.available(system) {
                    continue;
                }
                let master = bench.start(system, &Spec::workers(n))?;
                let took = master.wait_ready(n, WAIT)?;
                figure.push(column, ms(took));
            }
            let t = floor.spawn(false, n, &[std::path::Path::new("/bin/true")])?;
            figure.push(4, ms(t.reaped));
            let t = floor.spawn(
                false,
                n,
                &[
                    &python_bin,
                    std::path::Path::new("-c"),
                    std::path::Path::new(&py_import),
                ],
            )?;
            figure.push(5, ms(t.reaped));
        }
        figures.push(figure);
    }
    note_unavailable(bench, &SERVERS, &mut figures);
    Ok(Section {
        title: "Boot to every worker ready".into(),
        method: "From just before the master is spawned until all N workers are ready by the \
                 system's own marker: for arbiter, its `arbiter_workers_ready` metric (polled \
                 every 2 ms) reaching N, i.e. the master has acted on N `READY=1` datagrams; for \
                 gunicorn, N workers have run its `post_worker_init` hook (the app is loaded); \
                 for uWSGI, N workers have run its post-fork hook (the app is loaded once in the \
                 master, workers fork from it warm). Both hooks send the worker's pid to a unix \
                 datagram socket of the bench. The floors are the C program's N fork+exec of \
                 `/bin/true` and of Python importing the app, all reaped, in the same \
                 repetition. gunicorn sleeps a random 0-100 ms after each fork."
            .into(),
        columns: columns(
            &SERVERS,
            &["floor: fork+exec /bin/true", "floor: fork+exec Python"],
        ),
        ratios: vec![(1, 2), (1, 3), (0, 2), (0, 3), (0, 4), (1, 5)],
        figures,
    })
}

/// Spawning: N `sleep` workers (ready once exec'd) against N fork+exec and vfork+exec, of
/// `/bin/true` and of the workers' own program (`sleep 0`).
pub fn spawning(bench: &Bench, floor: &Floor, plan: &Plan) -> Result<Section, String> {
    // `sleep` starts as the workers do (C library, locale) and then exits; `/bin/true` does
    // less than half of that work before it exits (1.1 ms against 0.5 ms of CPU here), so
    // only this floor runs what the workers run.
    let sleep = crate::process::find_in_path("sleep").ok_or("no sleep on PATH")?;
    let programs: [&[&std::path::Path]; 2] = [
        &[std::path::Path::new("/bin/true")],
        &[&sleep, std::path::Path::new("0")],
    ];
    let mut figures = Vec::new();
    for &n in &plan.spawn_sizes {
        let mut total = Figure::new(
            format!("{n} workers spawned and exec'd"),
            "ms",
            Better::Lower,
        )
        .charted();
        let mut each = Figure::new(format!("per worker, N = {n}"), "ms", Better::Lower);
        for _ in 0..plan.reps {
            let master = bench.start(System::Arbiter(Kind::Sleep), &Spec::workers(n))?;
            let took = master.wait_ready(n, WAIT * 2)?;
            drop(master);
            total.push(0, ms(took));
            each.push(0, ms(took) / n as f64);
            for (program, command) in programs.iter().enumerate() {
                for (mode, vfork) in [(1, false), (2, true)] {
                    let column = 2 * program + mode;
                    let t = floor.spawn(vfork, n, command)?;
                    total.push(column, ms(t.reaped));
                    each.push(column, ms(t.reaped) / n as f64);
                }
            }
        }
        figures.extend([total, each]);
    }
    Ok(Section {
        title: "Spawning against the fork+exec floor".into(),
        method: "arbiter with N `sleep infinity` workers (`--ready exec`: ready once exec'd, so \
                 this is the master's spawn path and nothing else): from just before the master \
                 is spawned until `arbiter_workers_ready` = N. It includes the master's own \
                 start (binding, pidfile, metrics listener). The floors are the C program's N \
                 fork (or vfork) + exec, all reaped, in the same repetition: of `/bin/true`, \
                 and of the workers' own program as `sleep 0` (the same start-up as `sleep \
                 infinity`, then it exits; `/bin/true` skips the C library's locale set-up and \
                 takes less than half the CPU, so only this floor runs what the workers run)."
            .into(),
        columns: vec![
            "arbiter (sleep)".into(),
            "floor: fork+exec /bin/true".into(),
            "floor: vfork+exec /bin/true".into(),
            "floor: fork+exec sleep".into(),
            "floor: vfork+exec sleep".into(),
        ],
        ratios: vec![(0, 1), (0, 2), (0, 3), (0, 4)],
        figures,
    })
}

/// TTIN burst: 20 TTIN about 0.5 ms apart to a master with 2 ready workers, and to the floor.
pub fn ttin(bench: &Bench, floor: &Floor, plan: &Plan) -> Result<Section, String> {
    let gap = Duration::from_micros(500);
    let mut added = Figure::new(
        "TTIN burst: signals acted on, of 20",
        "workers",
        Better::Higher,
    )
    .charted();
    for _ in 0..plan.reps {
        for (column, &system) in SERVERS.iter().enumerate() {
            if system == System::Uwsgi || !bench.available(system) {
                continue;
            }
            let master = bench.start(system, &Spec::workers(2))?;
            master.wait_ready(2, WAIT)?;
            std::thread::sleep(Duration::from_millis(300));
            burst(master.pid, 20, gap);
            added.push(column, acted_on(&master)? as f64);
        }
        added.push(4, floor.signals(20, gap)? as f64);
    }
    added.note(3, "no TTIN in uWSGI 2.0");
    note_unavailable(bench, &SERVERS, std::slice::from_mut(&mut added));
    Ok(Section {
        title: "TTIN burst".into(),
        method: "A master with 2 ready workers gets 20 SIGTTIN, 0.5 ms apart (about 10 ms in \
                 all); then its children are counted until the count has not changed for 1.5 s, \
                 and that many must become ready (arbiter: its target must say as many). \
                 The floor is a minimal C process that blocks SIGTTIN and reads it from a \
                 signalfd, sent the same burst in the same repetition: the kernel merges a \
                 signal that arrives while one is still pending, so the floor's count is the \
                 most a process can see. uWSGI 2.0 does not add workers on TTIN."
            .into(),
        columns: columns(&SERVERS, &["floor: C signalfd"]),
        ratios: vec![(1, 2), (1, 4), (0, 2), (0, 4)],
        figures: vec![added],
    })
}

/// How many workers a burst added, checked: the master's children once their count has
/// settled, less the 2 it had; for arbiter, its own target (`arbiter_workers_target`) raised
/// by exactly as many; and that many more workers all ready by the system's own marker.
fn acted_on(master: &Master) -> Result<usize, String> {
    let children = settled_children(master);
    let added = children.saturating_sub(2);
    if let Some(metrics) = master.metrics() {
        let target = Master::metric(&metrics, "arbiter_workers_target")
            .ok_or_else(|| master.fail("no arbiter_workers_target"))?;
        if target as usize != children {
            return Err(master.fail(&format!(
                "target {target} but {children} children after the burst"
            )));
        }
    }
    master.wait_ready(children, WAIT)?;
    Ok(added)
}

/// The master's child count once it has not changed for 1.5 s (at most 20 s).
fn settled_children(master: &Master) -> usize {
    let start = Instant::now();
    let (mut count, mut since) = (master.workers().len(), Instant::now());
    while since.elapsed() < Duration::from_millis(1500) && start.elapsed() < WAIT / 3 {
        std::thread::sleep(Duration::from_millis(20));
        let now = master.workers().len();
        if now != count {
            (count, since) = (now, Instant::now());
        }
    }
    count
}

/// Hung request (`GET /hang`) and crash (SIGKILL) with one worker and a 2 s timeout.
pub fn hung_and_crash(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let mut killed = Figure::new("hung: worker dead, past its deadline", "ms", Better::Lower);
    let mut replaced = Figure::new(
        "hung: replacement serves, past its deadline",
        "ms",
        Better::Lower,
    )
    .charted();
    let mut respawn =
        Figure::new("crash: SIGKILL to replacement serving", "ms", Better::Lower).charted();
    let spec = Spec {
        timeout_s: 2,
        ..Spec::workers(1)
    };
    for _ in 0..plan.reload_reps {
        for (column, &system) in SERVERS.iter().enumerate() {
            if !bench.available(system) {
                continue;
            }
            let master = bench.start(system, &spec)?;
            master.wait_ready(1, WAIT)?;
            let worker = master.answering_pid(WAIT)?;
            std::thread::sleep(Duration::from_millis(1200));
            let (dead, serves) = hang(&master, worker)?;
            killed.push(column, dead);
            replaced.push(column, serves);
            let worker = master.answering_pid(WAIT)?;
            std::thread::sleep(Duration::from_millis(1500));
            let start = Instant::now();
            procfs::kill(worker as i32, libc::SIGKILL);
            let (_, took) = master.answer_not_from(worker, WAIT)?;
            respawn.push(column, ms(start.elapsed().max(took)));
        }
    }
    let mut figures = vec![killed, replaced, respawn];
    note_unavailable(bench, &SERVERS, &mut figures);
    Ok(Section {
        title: "Hung request and crash".into(),
        method: "One worker; arbiter and gunicorn `--timeout 2`, uWSGI `--harakiri 2`. *Hung*: \
                 1.2 s after the worker first served, `GET /hang` makes it block for ever (it \
                 stops heartbeating). Its deadline: for arbiter and gunicorn, its last \
                 heartbeat (the ctime of the unlinked heartbeat file, read once it hangs; the \
                 Python worker sends `WATCHDOG=1` at the same moment) + 2 s; for uWSGI, whose \
                 harakiri counts from the request's start, the moment the request was sent + \
                 2 s. Then `/proc` is polled every millisecond: *dead* when the worker is a \
                 zombie or gone, *replacement serves* when another pid first answers `GET /`; \
                 both are lateness past the deadline. *Crash*: 1.5 s after the replacement \
                 served (past arbiter's 1 s quick-death window), it is SIGKILLed, and the time \
                 until another pid answers is measured."
            .into(),
        columns: columns(&SERVERS, &[]),
        ratios: SERVER_RATIOS.to_vec(),
        figures,
    })
}

/// Sends `GET /hang` to `worker`; returns ms past its deadline of its death and replacement.
fn hang(master: &Master, worker: u32) -> Result<(f64, f64), String> {
    let pid = worker as i32;
    let port = master.port;
    let sent = wall_now();
    // The request never gets an answer: its thread ends when the worker dies (reset).
    let request = std::thread::spawn(move || {
        let _ = crate::common::http_get(port, "/hang", Duration::from_secs(20));
    });
    // Give it time to reach the worker and stop its heartbeats, then read the last one.
    std::thread::sleep(Duration::from_millis(150));
    let deadline = match master.system {
        System::Uwsgi => sent + 2.0,
        _ => procfs::heartbeat_ctime(pid).ok_or_else(|| master.fail("no heartbeat file"))? + 2.0,
    };
    let limit = Instant::now() + Duration::from_secs(15);
    let dead = loop {
        if procfs::is_dead(pid) {
            break wall_now();
        }
        if Instant::now() > limit {
            return Err(master.fail("the hung worker was not killed within 15 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    master.answer_not_from(worker, WAIT)?;
    let serves = wall_now();
    let _ = request.join();
    let late = |t: f64| (t - deadline) * 1e3;
    Ok((late(dead), late(serves)))
}

/// Graceful stop: TERM to exit with 8 idle, ready workers.
pub fn graceful(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let mut stop = Figure::new("graceful stop, 8 idle workers", "ms", Better::Lower).charted();
    for _ in 0..plan.reps {
        for (column, &system) in SERVERS.iter().enumerate() {
            if !bench.available(system) {
                continue;
            }
            let mut master = bench.start(system, &Spec::workers(8))?;
            master.wait_ready(8, WAIT)?;
            std::thread::sleep(Duration::from_millis(500));
            master.signal(libc::SIGTERM);
            let took = master
                .wait_exit(Duration::from_secs(40))
                .ok_or_else(|| master.fail("did not exit within 40 s of TERM"))?;
            stop.push(column, ms(took));
        }
    }
    note_unavailable(bench, &SERVERS, std::slice::from_mut(&mut stop));
    Ok(Section {
        title: "Graceful stop".into(),
        method: "A master with 8 idle, ready workers gets SIGTERM (uWSGI runs with \
                 `--die-on-term`, so TERM stops it instead of reloading); the time until the \
                 master has exited (waitpid, polled every 0.5 ms)."
            .into(),
        columns: columns(&SERVERS, &[]),
        ratios: SERVER_RATIOS.to_vec(),
        figures: vec![stop],
    })
}

/// HUP and USR2 under load, with workers that take about a second to load.
pub fn reloads(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let workers = 4;
    let spec = Spec {
        slow_boot: true,
        metrics: false,
        ..Spec::workers(workers)
    };
    let mut figures = Vec::new();
    for kind in ["HUP", "USR2"] {
        let mut served = Figure::new(
            format!("{kind}: requests served in 6 s"),
            "requests",
            Better::Higher,
        );
        let mut errors = Figure::new(
            format!("{kind}: failed requests"),
            "requests",
            Better::Lower,
        );
        let mut worst =
            Figure::new(format!("{kind}: worst latency"), "ms", Better::Lower).charted();
        for _ in 0..plan.reload_reps {
            for (column, &system) in SERVERS.iter().enumerate() {
                if !bench.available(system) || (system == System::Uwsgi && kind == "USR2") {
                    continue;
                }
                let mut master = bench.start(system, &spec)?;
                master.wait_ready(workers, WAIT)?;
                let (report, signals) = if kind == "HUP" {
                    hup_under_load(&master)?
                } else {
                    usr2_under_load(&mut master)?
                };
                // What was lost, and when against the signals: the report has only counts.
                for failure in &report.failures {
                    eprintln!(
                        "bench: {kind} {}: failed request {failure}; {signals}",
                        system.label()
                    );
                }
                served.push(column, report.ok as f64);
                errors.push(column, report.errors as f64);
                worst.push(column, ms(report.max_latency));
            }
        }
        if kind == "USR2" {
            for figure in [&mut served, &mut errors, &mut worst] {
                figure.note(3, "no USR2 upgrade in uWSGI");
            }
        }
        figures.extend([served, errors, worst]);
    }
    note_unavailable(bench, &SERVERS, &mut figures);
    Ok(Section {
        title: "HUP and USR2 under load".into(),
        method: "4 workers that take about 1 s to load (built-in: `arbiter worker --boot-delay \
                 1s`; the Python app sleeps 1 s at import, no `--preload` for gunicorn; uWSGI \
                 loads it once in the master, so its HUP, a graceful reload of the whole stack, \
                 loads it again). The Rust load generator in xtask runs 4 threads, each one \
                 connection kept alive as long as the server allows, for 6 s; the signal goes \
                 1 s in. Errors are refused, reset, timed out (10 s) or non-200 requests (a \
                 request that got no byte on an idle keep-alive connection closed by the server \
                 is retried once, as clients do). *USR2 dance*: USR2 to the master; wait until \
                 the new master has written `PIDFILE.2` and one of its workers answered a probe \
                 on a new connection; then TERM the old master. arbiter runs without \
                 `--metrics-bind` here (a USR2 master cannot bind the old master's metrics \
                 address: it exits 1), its readiness read with `arbiter ctl status --json`."
            .into(),
        columns: columns(&SERVERS, &[]),
        ratios: SERVER_RATIOS.to_vec(),
        figures,
    })
}

/// The load's report, and when the signal went (since the load started).
fn hup_under_load(master: &Master) -> Result<(super::load::LoadReport, String), String> {
    let before: Vec<i32> = master.workers();
    let load = Load::start(master.port, 4);
    std::thread::sleep(Duration::from_secs(1));
    let signals = format!("HUP at {:.3} s", load.elapsed().as_secs_f64());
    master.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(5));
    let seen = load.seen_pids();
    let report = load.finish();
    // The old workers are gone by now, so the load must have reached new ones.
    if seen.iter().all(|&pid| before.contains(&(pid as i32))) {
        return Err(master.fail("HUP: no new worker served within 5 s"));
    }
    Ok((report, signals))
}

/// The load's report, and when USR2 and the old master's TERM went (since the load started).
fn usr2_under_load(master: &mut Master) -> Result<(super::load::LoadReport, String), String> {
    let load = Load::start(master.port, 4);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let usr2_at = load.elapsed();
    master.signal(libc::SIGUSR2);
    let child_pidfile = {
        let mut name = master.pidfile.clone().into_os_string();
        name.push(".2");
        std::path::PathBuf::from(name)
    };
    let limit = Instant::now() + Duration::from_secs(20);
    let new_master = loop {
        if let Some(pid) = Master::read_pid(&child_pidfile).filter(|&p| p != master.pid) {
            break pid;
        }
        if Instant::now() > limit {
            load.finish();
            return Err(master.fail("no new master pidfile within 20 s of USR2"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    master.adopt(new_master);
    // The load's keep-alive connections stay with old workers, so probe on new connections
    // until one of the new master's workers answers.
    loop {
        let new_workers = procfs::children(new_master);
        if let Ok((200, body)) = crate::common::http_get(master.port, "/", Duration::from_secs(2)) {
            if super::load::pid_in(&body).is_some_and(|pid| new_workers.contains(&(pid as i32))) {
                break;
            }
        }
        if Instant::now() > limit {
            load.finish();
            return Err(master.fail("no new worker served within 20 s of USR2"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let signals = format!(
        "USR2 at {:.3} s, TERM to the old master at {:.3} s",
        usr2_at.as_secs_f64(),
        load.elapsed().as_secs_f64()
    );
    master.signal(libc::SIGTERM);
    // Keep the load on for 6 s in all, and at least 2 s after the TERM.
    let end = (start + Duration::from_secs(6)).max(Instant::now() + Duration::from_secs(2));
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let report = load.finish();
    master.wait_exit(Duration::from_secs(10));
    Ok((report, signals))
}

/// Overhead: N built-in workers behind arbiter vs the same program on SO_REUSEPORT sockets.
pub fn overhead(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let n = 2;
    let wrk = Command::new("wrk").arg("--version").output().is_ok();
    let mut throughput = Figure::new(
        format!("throughput, {n} built-in workers"),
        "requests/s",
        Better::Higher,
    );
    let per_slot = Spec {
        per_slot: true,
        ..Spec::workers(n)
    };
    let mut spread = Figure::new(
        format!("largest share of {SPREAD_CONNECTIONS} new keep-alive connections on one of {n} workers"),
        "connections",
        Better::Lower,
    );
    for _ in 0..plan.reps {
        let master = bench.start(System::Arbiter(Kind::Builtin), &Spec::workers(n))?;
        master.wait_ready(n, WAIT)?;
        throughput.push(0, measure_throughput(master.port, plan.overhead_secs, wrk)?);
        drop(master);
        let master = bench.start(System::Arbiter(Kind::Builtin), &per_slot)?;
        master.wait_ready(n, WAIT)?;
        throughput.push(1, measure_throughput(master.port, plan.overhead_secs, wrk)?);
        drop(master);
        for (column, spec) in [(0, Spec::workers(n)), (1, per_slot.clone())] {
            let master = bench.start(System::Arbiter(Kind::Builtin), &spec)?;
            master.wait_ready(n, WAIT)?;
            for _ in 0..SPREAD_TRIALS {
                spread.push(column, largest_share(master.port)? as f64);
            }
        }
        let port = crate::common::free_port();
        let baseline = super::reuseport::Workers::start(&bench.arbiter, port, n)?;
        crate::common::wait_for_http(port, Duration::from_secs(10))?;
        throughput.push(2, measure_throughput(port, plan.overhead_secs, wrk)?);
        for _ in 0..SPREAD_TRIALS {
            spread.push(2, largest_share(port)? as f64);
        }
        drop(baseline);
        let last: Vec<String> = (0..3)
            .map(|column| {
                format!(
                    "{:.0}",
                    throughput.column(column).last().copied().unwrap_or(0.0)
                )
            })
            .collect();
        eprintln!(
            "bench: overhead rep: arbiter {}, per-slot {}, SO_REUSEPORT {} requests/s",
            last[0], last[1], last[2]
        );
    }
    let generator = if wrk {
        format!("`wrk -t2 -c16 -d{}s`", plan.overhead_secs)
    } else {
        format!(
            "the Rust load generator of xtask (wrk is not installed): 16 keep-alive connections \
             for {} s",
            plan.overhead_secs
        )
    };
    Ok(Section {
        title: "Overhead of the master".into(),
        method: format!(
            "{n} `arbiter worker` processes behind arbiter (notify and heartbeat protocol on), \
             with one shared listener (the default) and with `--reuse-port-per-slot` (one \
             `SO_REUSEPORT` socket per slot, held by the master), against {n} copies of the \
             same program each given its own `SO_REUSEPORT` socket on the same port at fd 3 \
             (`LISTEN_FDS=1`, created by xtask; no master, no protocol). Load: {generator}, \
             the three alternating. The master is idle while workers serve, so the ratio \
             should be near 1; what differs is one shared accept queue against per-worker \
             queues (per-slot: the same as the baseline's, spread by the master's steering \
             program instead of the kernel's hash). *Largest share*: {SPREAD_CONNECTIONS} \
             connections opened at once, one `GET /` on each (keep-alive), the most that one \
             worker answered, {SPREAD_TRIALS} times per repetition: with keep-alive \
             connections the first spread is the spread for their whole life, and a worker \
             that holds all of them leaves the other idle."
        ),
        columns: vec![
            "arbiter".into(),
            "arbiter --reuse-port-per-slot".into(),
            "SO_REUSEPORT baseline".into(),
        ],
        ratios: vec![(0, 2), (1, 2)],
        figures: vec![throughput.charted(), spread],
    })
}

/// Connections per spread trial (the throughput load's count).
const SPREAD_CONNECTIONS: usize = 16;
/// Spread trials per repetition and system.
const SPREAD_TRIALS: usize = 8;

/// Opens [`SPREAD_CONNECTIONS`] connections to 127.0.0.1:`port` at once, sends one keep-alive
/// `GET /` on each, and returns how many of them the busiest worker answered.
fn largest_share(port: u16) -> Result<usize, String> {
    use std::io::{Read, Write};
    let mut streams = Vec::with_capacity(SPREAD_CONNECTIONS);
    for _ in 0..SPREAD_CONNECTIONS {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        streams.push(stream);
    }
    let mut by_pid: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for stream in &mut streams {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            .map_err(|e| format!("request: {e}"))?;
    }
    for stream in &mut streams {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let pid = loop {
            let n = stream
                .read(&mut buf)
                .map_err(|e| format!("response: {e}"))?;
            if n == 0 {
                return Err("the connection closed before its response".into());
            }
            seen.extend_from_slice(&buf[..n]);
            if let Some(pid) = super::load::pid_in(&String::from_utf8_lossy(&seen)) {
                if seen.contains(&b'}') {
                    break pid;
                }
            }
        };
        *by_pid.entry(pid).or_default() += 1;
    }
    Ok(by_pid.values().copied().max().unwrap_or(0))
}

fn measure_throughput(port: u16, secs: u64, wrk: bool) -> Result<f64, String> {
    if wrk {
        let output = Command::new("wrk")
            .args(["-t2", "-c16", &format!("-d{secs}s")])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .map_err(|e| format!("wrk: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        return text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no Requests/sec in wrk output: {text}"));
    }
    let start = Instant::now();
    let load = Load::start(port, 16);
    std::thread::sleep(Duration::from_secs(secs));
    let report = load.finish();
    Ok(report.ok as f64 / start.elapsed().as_secs_f64())
}
