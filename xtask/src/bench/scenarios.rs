//! The scenarios. Each runs arbiter and gunicorn alternately, `reps` times, every run bounded
//! in time, and returns a [`Section`] of figures.

use std::process::Command;
use std::time::{Duration, Instant};

use super::load::Load;
use super::procfs::{self, wall_now};
use super::report::{Better, Figure, Section};
use super::servers::{Bench, Master, Spec, System};

/// How much to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Repetitions of each run.
    pub reps: usize,
    /// Worker counts for the boot scenario.
    pub boot_sizes: Vec<usize>,
    /// Worker counts for the footprint scenario, with repetitions for each.
    pub footprint: Vec<(usize, usize)>,
    /// The idle window of the footprint scenario.
    pub idle: Duration,
    /// Spawns of `/bin/true` for the floor.
    pub floor_spawns: usize,
    /// Seconds of wrk / load per overhead run.
    pub overhead_secs: u64,
}

const WAIT: Duration = Duration::from_secs(60);

fn push(figure: &mut Figure, system: System, value: f64) {
    match system {
        System::Arbiter => figure.a.push(value),
        System::Gunicorn => figure.b.push(value),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn section(title: &str, method: &str, figures: Vec<Figure>) -> Section {
    Section {
        title: title.into(),
        method: method.into(),
        a_name: "arbiter",
        b_name: "gunicorn",
        figures,
    }
}

/// The floor: fork+exec of `/bin/true`, one after the other.
pub fn floor(plan: &Plan) -> Result<Section, String> {
    let mut per_spawn = Figure::new("fork+exec+wait of /bin/true", "ms", Better::Lower);
    for _ in 0..plan.floor_spawns {
        let start = Instant::now();
        crate::common::run(&mut Command::new("/bin/true"))?;
        per_spawn.a.push(ms(start.elapsed()));
    }
    Ok(Section {
        title: "Floor: fork+exec".into(),
        method: format!(
            "`std::process::Command::new(\"/bin/true\").status()` {} times in a row, from this \
             xtask. Booting N workers can hardly take less than N times this (both masters fork \
             and exec, or fork and import, one worker at a time).",
            plan.floor_spawns
        ),
        a_name: "xtask",
        b_name: "—",
        figures: vec![per_spawn],
    })
}

/// Boot: from spawning the master until N distinct workers have answered.
pub fn boot(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let mut figures = Vec::new();
    for &n in &plan.boot_sizes {
        let mut figure = Figure::new(format!("boot to {n} workers serving"), "ms", Better::Lower);
        figure = figure.charted();
        for _ in 0..plan.reps {
            for system in System::BOTH {
                let start = Instant::now();
                let master = bench.start(system, Spec::workers(n))?;
                master.wait_distinct(n, WAIT)?;
                push(&mut figure, system, ms(start.elapsed()));
            }
        }
        figures.push(figure);
    }
    Ok(section(
        "Boot",
        "From just before the master is spawned until N distinct worker pids have answered \
         `GET /` (sequential requests with `Connection: close`, 1 ms apart on refusal; both \
         answer with their pid). A worker has answered only once it is serving, so this counts \
         every worker as booted and accepting.",
        figures,
    ))
}

/// Footprint of an idle master: RSS and CPU over the idle window, both masters at once.
pub fn footprint(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let mut figures = Vec::new();
    for &(n, reps) in &plan.footprint {
        let mut rss = Figure::new(format!("master RSS, {n} workers"), "MiB", Better::Lower);
        let mut cpu = Figure::new(
            format!("master CPU over {}s idle, {n} workers", plan.idle.as_secs()),
            "ms",
            Better::Lower,
        );
        let mut wakeups = Figure::new(
            format!(
                "master wake-ups over {}s idle, {n} workers",
                plan.idle.as_secs()
            ),
            "count",
            Better::Lower,
        );
        if n <= 64 {
            rss = rss.charted();
            cpu = cpu.charted();
        }
        for _ in 0..reps {
            let masters = [
                bench.start(System::Arbiter, Spec::workers(n))?,
                bench.start(System::Gunicorn, Spec::workers(n))?,
            ];
            for master in &masters {
                master.wait_children(n, WAIT)?;
            }
            // Let the workers finish loading and the masters settle.
            std::thread::sleep(Duration::from_secs(2));
            let before: Vec<_> = masters
                .iter()
                .map(|m| procfs::cpu_and_wakeups(m.pid))
                .collect();
            std::thread::sleep(plan.idle);
            for ((master, system), before) in masters.iter().zip(System::BOTH).zip(before) {
                let after = procfs::cpu_and_wakeups(master.pid);
                let (Some(before), Some(after), Some(kib)) =
                    (before, after, procfs::rss_kib(master.pid))
                else {
                    return Err(master.fail("master vanished while idle"));
                };
                push(&mut rss, system, kib as f64 / 1024.0);
                push(&mut cpu, system, (after.0 - before.0) as f64 / 1e6);
                push(&mut wakeups, system, (after.1 - before.1) as f64);
            }
        }
        figures.extend([rss, cpu, wakeups]);
    }
    Ok(section(
        "Master footprint",
        "Both masters run at the same time with N workers each (so they idle through the same \
         window of a shared machine); once all workers exist, 2 s to settle, then the idle \
         window. RSS is the master's `VmRSS`; CPU is the master's on-CPU time summed over its \
         threads from `/proc/PID/task/*/schedstat` (nanosecond precision, where `utime+stime` \
         counts 10 ms ticks); wake-ups are its voluntary context switches. Fewer repetitions \
         than elsewhere (n in the table) to keep the run under 15 minutes.",
        figures,
    ))
}

/// Hung worker (SIGSTOP) and crash (SIGKILL) with one worker and `--timeout 2`.
pub fn hung_and_crash(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let mut signalled = Figure::new(
        "hung: first signal, past the 2 s timeout",
        "ms",
        Better::Lower,
    )
    .charted();
    let mut killed = Figure::new(
        "hung: worker dead, past the 2 s timeout",
        "ms",
        Better::Lower,
    );
    let mut replaced = Figure::new(
        "hung: replacement serves, past the 2 s timeout",
        "ms",
        Better::Lower,
    )
    .charted();
    let mut respawn =
        Figure::new("crash: SIGKILL to replacement serving", "ms", Better::Lower).charted();
    let spec = Spec {
        workers: 1,
        timeout_s: 2,
        slow_boot: false,
    };
    for _ in 0..plan.reps {
        for system in System::BOTH {
            let master = bench.start(system, spec)?;
            let worker = master.answering_pid(WAIT)?;
            std::thread::sleep(Duration::from_millis(1500));
            let (sig, dead, serves) = hang(&master, worker)?;
            push(&mut signalled, system, sig);
            push(&mut killed, system, dead);
            push(&mut replaced, system, serves);
            let worker = master.answering_pid(WAIT)?;
            std::thread::sleep(Duration::from_millis(1500));
            let start = Instant::now();
            procfs::kill(worker as i32, libc::SIGKILL);
            let (_, took) = master.answer_not_from(worker, WAIT)?;
            push(&mut respawn, system, ms(start.elapsed().max(took)));
        }
    }
    Ok(section(
        "Hung worker and crash",
        "One worker, `--timeout 2` on both. *Hung*: the worker is SIGSTOPped 1.5 s after it \
         first served; its last heartbeat is read from its heartbeat file (the ctime of the \
         unlinked temp file both masters watch; both workers bump it with a metadata change); \
         its deadline is that heartbeat + 2 s. Then `/proc/PID/status` is polled every \
         millisecond: *first signal* is when a signal shows pending on the stopped worker (the \
         abort: gunicorn sends ABRT, arbiter its abort signal), *dead* when it is a zombie or \
         gone (both send KILL after a grace of about 1 s), *replacement serves* when a \
         `GET /` is first answered by another pid. All three are lateness past the deadline. \
         *Crash*: 1.5 s after the replacement served (past arbiter's 1 s quick-death window, \
         so no crash-loop back-off applies), it is SIGKILLed, and the time until another pid \
         answers is measured.",
        vec![signalled, killed, replaced, respawn],
    ))
}

/// SIGSTOPs `worker`; returns ms past its deadline of the first signal, death, replacement.
fn hang(master: &Master, worker: u32) -> Result<(f64, f64, f64), String> {
    let pid = worker as i32;
    procfs::kill(pid, libc::SIGSTOP);
    let start = Instant::now();
    while procfs::state(pid) != Some('T') {
        if start.elapsed() > Duration::from_secs(2) {
            return Err(master.fail("worker did not stop"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let beat = procfs::heartbeat_ctime(pid).ok_or_else(|| master.fail("no heartbeat file"))?;
    let deadline = beat + 2.0;
    let mut signalled = None;
    let limit = Instant::now() + Duration::from_secs(15);
    let dead = loop {
        if signalled.is_none() && procfs::signal_pending(pid) {
            signalled = Some(wall_now());
        }
        if procfs::is_dead(pid) {
            break wall_now();
        }
        if Instant::now() > limit {
            return Err(master.fail("the stopped worker was not killed within 15 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    master.answer_not_from(worker, WAIT)?;
    let serves = wall_now();
    let late = |t: f64| (t - deadline) * 1e3;
    Ok((late(signalled.unwrap_or(dead)), late(dead), late(serves)))
}

/// TTIN burst: 20 TTIN about 0.5 ms apart to a master with 2 workers.
pub fn ttin(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let mut added = Figure::new(
        "TTIN burst: workers added by 20 signals",
        "workers",
        Better::Higher,
    )
    .charted();
    for _ in 0..plan.reps {
        for system in System::BOTH {
            let master = bench.start(system, Spec::workers(2))?;
            master.wait_distinct(2, WAIT)?;
            std::thread::sleep(Duration::from_millis(500));
            for _ in 0..20 {
                master.signal(libc::SIGTTIN);
                std::thread::sleep(Duration::from_micros(500));
            }
            // Settled: the worker count has not changed for 1.5 s (at most 20 s).
            let start = Instant::now();
            let (mut count, mut since) = (master.workers().len(), Instant::now());
            while since.elapsed() < Duration::from_millis(1500) && start.elapsed() < WAIT / 3 {
                std::thread::sleep(Duration::from_millis(20));
                let now = master.workers().len();
                if now != count {
                    (count, since) = (now, Instant::now());
                }
            }
            push(&mut added, system, count.saturating_sub(2) as f64);
        }
    }
    Ok(section(
        "TTIN burst",
        "A master with 2 workers serving gets 20 SIGTTIN, 0.5 ms apart (about 10 ms in all); \
         then its children are counted until the count has not changed for 1.5 s. 20 is the \
         most possible; the kernel itself merges a TTIN that arrives while one is still \
         pending, so fewer than 20 can be no one's fault.",
        vec![added],
    ))
}

/// Graceful stop: TERM to exit with 8 idle workers.
pub fn graceful(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let mut stop = Figure::new("graceful stop, 8 idle workers", "ms", Better::Lower).charted();
    for _ in 0..plan.reps {
        for system in System::BOTH {
            let mut master = bench.start(system, Spec::workers(8))?;
            master.wait_distinct(8, WAIT)?;
            std::thread::sleep(Duration::from_millis(500));
            master.signal(libc::SIGTERM);
            let took = master
                .wait_exit(Duration::from_secs(40))
                .ok_or_else(|| master.fail("did not exit within 40 s of TERM"))?;
            push(&mut stop, system, ms(took));
        }
    }
    Ok(section(
        "Graceful stop",
        "A master with 8 idle workers (all have served) gets SIGTERM; the time until the \
         master has exited (waitpid, polled every 0.5 ms).",
        vec![stop],
    ))
}

/// HUP and USR2 under load, with workers that take about a second to load.
pub fn reloads(bench: &Bench, plan: &Plan) -> Result<Section, String> {
    let workers = 4;
    let spec = Spec {
        workers,
        timeout_s: 30,
        slow_boot: true,
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
        let mut retries = Figure::new(
            format!("{kind}: retried after idle keep-alive close"),
            "requests",
            Better::Lower,
        );
        for _ in 0..plan.reps {
            for system in System::BOTH {
                let mut master = bench.start(system, spec)?;
                master.wait_distinct(workers, WAIT)?;
                let report = if kind == "HUP" {
                    hup_under_load(&master)?
                } else {
                    usr2_under_load(&mut master)?
                };
                push(&mut served, system, report.ok as f64);
                push(&mut errors, system, report.errors as f64);
                push(&mut worst, system, ms(report.max_latency));
                push(&mut retries, system, report.retries as f64);
            }
        }
        figures.extend([served, errors, worst, retries]);
    }
    Ok(section(
        "HUP and USR2 under load",
        "4 workers that take about 1 s to load (arbiter: `-- arbiter worker --boot-delay 1s`; \
         gunicorn: the app module sleeps 1 s at import, no `--preload`). The Rust load \
         generator in xtask runs 4 threads, each one connection kept alive as long as the \
         server allows (gunicorn's sync worker closes after each response), for 6 s; the \
         signal goes 1 s in. Errors are refused, reset, timed out (10 s) or non-200 requests. \
         *USR2 dance*, the same for both: USR2 to the master; wait until the new master has \
         written `PIDFILE.2` and a probe request on a new connection (`Connection: close`, 2 ms \
         apart) has been answered by one of the new master's workers; then TERM the old master (graceful \
         stop of it and its workers); the new master stays and is then killed with the rest.",
        figures,
    ))
}

fn hup_under_load(master: &Master) -> Result<super::load::LoadReport, String> {
    let before: Vec<i32> = master.workers();
    let load = Load::start(master.port, 4);
    std::thread::sleep(Duration::from_secs(1));
    master.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(5));
    let seen = load.seen_pids();
    let report = load.finish();
    // The old workers are gone by now, so the load must have reached new ones.
    if seen.iter().all(|&pid| before.contains(&(pid as i32))) {
        return Err(master.fail("HUP: no new worker served within 5 s"));
    }
    Ok(report)
}

fn usr2_under_load(master: &mut Master) -> Result<super::load::LoadReport, String> {
    let load = Load::start(master.port, 4);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
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
    master.signal(libc::SIGTERM);
    // Keep the load on for 6 s in all, and at least 2 s after the TERM.
    let end = (start + Duration::from_secs(6)).max(Instant::now() + Duration::from_secs(2));
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let report = load.finish();
    master.wait_exit(Duration::from_secs(10));
    Ok(report)
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
    for _ in 0..plan.reps {
        let master = bench.start(System::Arbiter, Spec::workers(n))?;
        master.wait_distinct(n, WAIT)?;
        throughput
            .a
            .push(measure_throughput(master.port, plan.overhead_secs, wrk)?);
        drop(master);
        let port = crate::common::free_port();
        let baseline = super::reuseport::Workers::start(&bench.arbiter, port, n)?;
        crate::common::wait_for_http(port, Duration::from_secs(10))?;
        throughput
            .b
            .push(measure_throughput(port, plan.overhead_secs, wrk)?);
        drop(baseline);
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
            "{n} `arbiter worker` processes behind arbiter (one shared listener, notify and \
             heartbeat protocol on) against {n} copies of the same program each given its own \
             `SO_REUSEPORT` socket on the same port at fd 3 (`LISTEN_FDS=1`, created by xtask; \
             no master, no protocol). Load: {generator}, alternating. The master is idle while \
             workers serve, so the ratio should be near 1; what differs is one shared accept \
             queue against per-worker queues."
        ),
        a_name: "arbiter",
        b_name: "SO_REUSEPORT baseline",
        figures: vec![throughput.charted()],
    })
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
