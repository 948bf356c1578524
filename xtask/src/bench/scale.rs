//! The idle master at 8 to 1,000 heartbeating workers, and 1,000 to 10,000 light workers:
//! boot to all ready, then an idle window (master wake-ups, CPU, RSS), then what the master
//! did during it (false timeouts, the notify queue, how fast a new `READY=1` is acted on),
//! then a graceful stop. One master at a time (1,000 Python workers take gigabytes).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::floor::Floor;
use super::procfs::{self, CpuUse};
use super::report::{Better, Figure, Section};
use super::scenarios::{columns, ms, note_unavailable, WAIT};
use super::servers::{Beat, Bench, Kind, Master, Spec, System};
use super::Plan;

/// The idle columns: the four servers, then arbiter with datagram-only Python workers, then
/// arbiter with Python workers and its heartbeat filter off.
const IDLE: [System; 6] = [
    System::Arbiter(Kind::Builtin),
    System::Arbiter(Kind::Python),
    System::Gunicorn,
    System::Uwsgi,
    System::Arbiter(Kind::Python),
    System::Arbiter(Kind::Python),
];
/// The column of the datagram-only run.
const DATAGRAM_ONLY: usize = 4;
/// The column of the run without the heartbeat filter.
const NO_FILTER: usize = 5;
/// The column of the C datagram reader (wake-ups and CPU only).
const DATAGRAM_FLOOR: usize = 6;
/// How often the C datagram reader drains its sockets: the period arbiter settles on for
/// workers beating once a second.
const FLOOR_PERIOD: Duration = Duration::from_secs(4);

/// How long booting `n` workers may take (gunicorn sleeps up to 100 ms per fork), at most
/// 5 minutes.
fn boot_limit(n: usize) -> Duration {
    (WAIT + Duration::from_millis(150) * n as u32).min(Duration::from_secs(300))
}

/// What one idle run measured.
#[derive(Default)]
struct IdleRun {
    boot_ms: f64,
    wakeups_per_s: f64,
    cpu_ms: f64,
    rss_mib: f64,
    stop_ms: f64,
    fds: Option<usize>,
    timeouts: Option<f64>,
    false_timeouts: Option<f64>,
    notify: Option<(u64, u64, f64)>,
    ready_latency_ms: Option<f64>,
}

/// One master: boot N, settle, idle, then probe and stop.
fn idle_run(
    bench: &Bench,
    system: System,
    spec: &Spec,
    idle: Duration,
    ready_probe: bool,
) -> Result<IdleRun, String> {
    let n = spec.workers;
    let mut master = bench.start(system, spec)?;
    // 10,000 workers get 300 s to boot (10,000 sleep workers took 121 s on the shared 2-core
    // machine), so a slow master cannot take the whole run.
    let limit = if n > 1000 {
        Duration::from_secs(300)
    } else {
        boot_limit(n)
    };
    let mut run = IdleRun {
        boot_ms: ms(master.wait_ready(n, limit)?),
        ..IdleRun::default()
    };
    // Let the last workers finish starting and the master settle.
    std::thread::sleep(Duration::from_secs(2));
    let before = procfs::cpu_use(master.pid).ok_or_else(|| master.fail("master vanished"))?;
    std::thread::sleep(idle);
    let after = procfs::cpu_use(master.pid).ok_or_else(|| master.fail("master vanished"))?;
    let CpuUse { cpu_ns, .. } = after;
    run.cpu_ms = (cpu_ns - before.cpu_ns) as f64 / 1e6;
    run.wakeups_per_s = (after.switches() - before.switches()) as f64 / idle.as_secs_f64();
    run.rss_mib = procfs::rss_kib(master.pid).unwrap_or(0) as f64 / 1024.0;
    run.fds = procfs::fd_count(master.pid);
    if let Some(text) = master.metrics() {
        run.timeouts = Master::metric(&text, "arbiter_worker_exits_total{cause=\"timeout\"}");
    }
    if ready_probe {
        if let Some(dir) = &spec.stats_dir {
            run.ready_latency_ms = ready_latency(&master, n, dir);
        }
    }
    master.signal(libc::SIGTERM);
    let took = master
        .wait_exit(Duration::from_secs(60))
        .ok_or_else(|| master.fail("did not exit within 60 s of TERM"))?;
    run.stop_ms = ms(took);
    if let Some(dir) = &spec.stats_dir {
        run.notify = notify_stats(dir);
        run.false_timeouts = Some(false_timeouts(dir, spec.timeout_s) as f64);
    }
    Ok(run)
}

/// TTIN, then the time from the new worker's `READY=1` (its own clock reading) until the
/// master counts it ready (an upper bound: the end of the metrics request that saw it).
fn ready_latency(master: &Master, n: usize, dir: &Path) -> Option<f64> {
    let known: Vec<f64> = ready_times(dir);
    master.signal(libc::SIGTTIN);
    let limit = Instant::now() + Duration::from_secs(20);
    let seen_at = loop {
        let count = master.ready_count().unwrap_or(0);
        let now = procfs::monotonic_secs();
        if count > n {
            break now;
        }
        if Instant::now() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let sent = ready_times(dir)
        .into_iter()
        .filter(|t| !known.contains(t))
        .fold(f64::NEG_INFINITY, f64::max);
    sent.is_finite().then_some((seen_at - sent) * 1e3)
}

/// The `READY=1` times the Python workers wrote (`PID.ready`).
fn ready_times(dir: &Path) -> Vec<f64> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        .filter_map(|e| fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect()
}

/// The Python workers aborted (heartbeat timeout) that never went `timeout_s` without a
/// `WATCHDOG=1` going out over the last two timeouts, by their own clock (`PID.abort`):
/// timeouts the master got wrong. A worker that was itself late (starved on a loaded machine)
/// is not counted.
fn false_timeouts(dir: &Path, timeout_s: u32) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".abort"))
        .filter_map(|e| {
            fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|&since| since < timeout_s as f64)
        .count()
}

/// Sums of the workers' exit statistics: (sends that met a full queue, dropped sends, worst
/// send in ms).
fn notify_stats(dir: &Path) -> Option<(u64, u64, f64)> {
    let entries = fs::read_dir(dir).ok()?;
    let (mut blocked, mut dropped, mut worst, mut files) = (0, 0, 0.0f64, 0);
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().ends_with(".json") {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| -> f64 {
            text.split(&format!("\"{key}\": "))
                .nth(1)
                .and_then(|rest| rest.split([',', '}']).next())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        blocked += field("notify_queue_full") as u64;
        dropped += field("notify_dropped") as u64;
        worst = worst.max(field("max_send_ms"));
        files += 1;
    }
    (files > 0).then_some((blocked, dropped, worst))
}

/// Idle masters with N = 8 .. 1,000 heartbeating workers.
pub fn idle(bench: &Bench, floor: &Floor, plan: &Plan) -> Result<Section, String> {
    let mut figures = Vec::new();
    let secs = plan.idle.as_secs();
    for &(n, reps) in &plan.idle_sizes {
        let mut wakeups = Figure::new(
            format!("wake-ups per second, N = {n}"),
            "per s",
            Better::Lower,
        )
        .charted();
        let mut cpu = Figure::new(
            format!("CPU over {secs} s idle, N = {n}"),
            "ms",
            Better::Lower,
        )
        .charted();
        let mut rss = Figure::new(format!("master RSS, N = {n}"), "MiB", Better::Lower);
        let mut boot = Figure::new(format!("boot to all ready, N = {n}"), "ms", Better::Lower);
        let mut stop = Figure::new(format!("graceful stop, N = {n}"), "ms", Better::Lower);
        let mut timeouts = Figure::new(
            format!("heartbeat timeouts, N = {n}"),
            "workers",
            Better::Lower,
        );
        let mut false_timeouts = Figure::new(
            format!("false heartbeat timeouts, N = {n}"),
            "workers",
            Better::Lower,
        );
        let mut latency = Figure::new(
            format!("new worker's READY=1 acted on, N = {n}"),
            "ms",
            Better::Lower,
        );
        let mut blocked = Figure::new(
            format!("notify sends that met a full queue, N = {n}"),
            "sends",
            Better::Lower,
        );
        let mut dropped = Figure::new(
            format!("notify sends dropped, N = {n}"),
            "sends",
            Better::Lower,
        );
        for rep in 0..reps {
            for (column, &system) in IDLE.iter().enumerate() {
                if !bench.available(system) {
                    continue;
                }
                let python = system == System::Arbiter(Kind::Python);
                let stats_dir = bench.dir.join(format!("idle-{n}-{rep}-{column}"));
                let spec = Spec {
                    timeout_s: if column == DATAGRAM_ONLY { 2 } else { 30 },
                    beat: if column == DATAGRAM_ONLY {
                        Beat::Datagram
                    } else {
                        Beat::Both
                    },
                    stats_dir: python.then(|| stats_dir.clone()),
                    heartbeat_filter: column != NO_FILTER,
                    ..Spec::workers(n)
                };
                if python {
                    fs::create_dir_all(&stats_dir).map_err(|e| format!("{stats_dir:?}: {e}"))?;
                }
                eprintln!("bench:   idle N = {n}: {} ({})", system.label(), column);
                let run = match idle_run(bench, system, &spec, plan.idle, python) {
                    Ok(run) => run,
                    Err(e) => {
                        eprintln!("bench:   {} at N = {n} failed: {e}", system.label());
                        let why = format!("failed: {}", first_line(&e));
                        for f in [&mut wakeups, &mut cpu, &mut rss, &mut boot, &mut stop] {
                            f.note(column, why.clone());
                        }
                        continue;
                    }
                };
                wakeups.push(column, run.wakeups_per_s);
                cpu.push(column, run.cpu_ms);
                rss.push(column, run.rss_mib);
                boot.push(column, run.boot_ms);
                stop.push(column, run.stop_ms);
                if let Some(t) = run.timeouts {
                    timeouts.push(column, t);
                }
                if let Some(t) = run.false_timeouts {
                    false_timeouts.push(column, t);
                }
                if let Some(l) = run.ready_latency_ms {
                    latency.push(column, l);
                }
                if let Some((sends_blocked, sends_dropped, _)) = run.notify {
                    blocked.push(column, sends_blocked as f64);
                    dropped.push(column, sends_dropped as f64);
                }
            }
            eprintln!("bench:   idle N = {n}: C datagram reader");
            match floor.datagrams(n, FLOOR_PERIOD, plan.idle) {
                Ok(f) => {
                    wakeups.push(DATAGRAM_FLOOR, f.wakeups_per_s);
                    cpu.push(DATAGRAM_FLOOR, f.cpu_ms);
                }
                Err(e) => {
                    eprintln!("bench:   the C datagram reader at N = {n} failed: {e}");
                    let why = format!("failed: {}", first_line(&e));
                    wakeups.note(DATAGRAM_FLOOR, why.clone());
                    cpu.note(DATAGRAM_FLOOR, why);
                }
            }
        }
        for f in [
            &mut rss,
            &mut boot,
            &mut stop,
            &mut timeouts,
            &mut false_timeouts,
            &mut latency,
            &mut blocked,
            &mut dropped,
        ] {
            f.note(DATAGRAM_FLOOR, "—");
        }
        for column in [2, 3] {
            timeouts.note(column, "—");
            false_timeouts.note(column, "—");
            latency.note(column, "—");
            blocked.note(column, "—");
            dropped.note(column, "—");
        }
        let mut all = vec![
            wakeups,
            cpu,
            rss,
            boot,
            stop,
            timeouts,
            false_timeouts,
            latency,
            blocked,
            dropped,
        ];
        note_unavailable(bench, &IDLE, &mut all);
        figures.extend(all);
    }
    let mut cols = columns(&IDLE, &["floor: C datagram reader"]);
    cols[DATAGRAM_ONLY] = "arbiter (Python, WATCHDOG=1 only, -t 2)".into();
    cols[NO_FILTER] = "arbiter (Python, no heartbeat filter)".into();
    Ok(Section {
        title: "Idle master with N heartbeating workers".into(),
        method: format!(
            "One master at a time with N workers: boot to all ready (as in *Boot*), 2 s to \
             settle, then {secs} s idle. *Wake-ups* are the master's context switches \
             (voluntary + involuntary, all threads, `/proc/PID/task/*/status`) over the window \
             per second; *CPU* its on-CPU time over the window from `schedstat`; RSS its \
             `VmRSS` at the end. The Python workers (`scripts/py_worker.py`) send `WATCHDOG=1` \
             once a second and bump their heartbeat file at the same moment; gunicorn's sync \
             workers bump their file; uWSGI's workers do not heartbeat (its master reads \
             their state from shared memory once a second). The last column runs the Python \
             worker sending only `WATCHDOG=1`, with `--timeout 2`. arbiter runs with its \
             heartbeat filter (the default: after a worker's first `WATCHDOG=1` an eBPF socket \
             filter takes its bare heartbeats in the sender's `sendmsg` and stamps them in a \
             table the master reads at deadlines; the bench runs as root, which the kernel \
             asks for), except in the *no heartbeat filter* column \
             (`--heartbeat-filter=false`: the master reads every datagram, in lazy rounds), \
             which is what a master without `CAP_BPF` does. *Heartbeat timeouts* are the \
             master's count (`arbiter_worker_exits_total{{cause=\"timeout\"}}`, read after the \
             window, boot included); *false* ones are those of workers that, by their own \
             clock, never went a timeout without a `WATCHDOG=1` going out over the two \
             timeouts before their SIGABRT (a worker starved for longer than the timeout on a \
             loaded machine is timed out rightly, even if it beat again just before the signal \
             came). After the window, one TTIN: *READY=1 acted on* is from the \
             new worker's `READY=1` (its CLOCK_MONOTONIC before the send) until a metrics \
             request (polled every 1 ms) shows it ready: an upper bound. *Notify sends*: the \
             Python workers' own count of sends on `NOTIFY_SOCKET` that met a full queue \
             (EAGAIN on a non-blocking first try: the master's queue holds \
             `net.unix.max_dgram_qlen` = {} datagrams; the worker then waits up to 1 s for \
             room, as a blocking sd_notify would) and that were dropped (still full after \
             1 s), from files they write at exit. Then SIGTERM: *graceful \
             stop* until the master exited. The floor is a C program reading N unix datagram \
             sockets that a child of it sends `WATCHDOG=1` to once a second (one sending \
             socket per target), drained every {} s with one `epoll_wait` and one `recvmmsg` \
             per socket holding messages: the least a master that receives its workers' \
             heartbeat datagrams can spend (uWSGI's workers send none). Repetitions: {}.",
            fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".into()),
            FLOOR_PERIOD.as_secs(),
            plan.idle_sizes
                .iter()
                .map(|(n, r)| format!("N = {n}: {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        columns: cols,
        ratios: vec![
            (1, 2),
            (1, 3),
            (0, 2),
            (0, 3),
            (NO_FILTER, 3),
            (NO_FILTER, DATAGRAM_FLOOR),
        ],
        figures,
    })
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").chars().take(80).collect()
}

/// 1,000 and 10,000 light workers: `sleep` and the built-in worker.
pub fn scale(bench: &Bench, floor: &Floor, plan: &Plan) -> Result<Section, String> {
    let systems = [System::Arbiter(Kind::Sleep), System::Arbiter(Kind::Builtin)];
    let secs = plan.idle.as_secs();
    let mut figures = Vec::new();
    let mut limits = Vec::new();
    // The workers' own program as a floor too (see the spawn scenario): `sleep 0` starts as
    // `sleep infinity` does, then exits.
    let sleep = crate::process::find_in_path("sleep").ok_or("no sleep on PATH")?;
    let true_command = [Path::new("/bin/true")];
    let sleep_command = [sleep.as_path(), Path::new("0")];
    for &n in &plan.scale_sizes {
        let mut boot =
            Figure::new(format!("boot to all ready, N = {n}"), "ms", Better::Lower).charted();
        let mut rss = Figure::new(format!("master RSS, N = {n}"), "MiB", Better::Lower);
        let mut cpu = Figure::new(
            format!("CPU over {secs} s idle, N = {n}"),
            "ms",
            Better::Lower,
        );
        let mut wakeups = Figure::new(
            format!("wake-ups per second, N = {n}"),
            "per s",
            Better::Lower,
        );
        let mut stop = Figure::new(format!("graceful stop, N = {n}"), "ms", Better::Lower);
        let mut fds = Figure::new(format!("master open fds, N = {n}"), "fds", Better::Lower);
        for (column, &system) in systems.iter().enumerate() {
            eprintln!("bench:   scale N = {n}: {}", system.label());
            match idle_run(bench, system, &Spec::workers(n), plan.idle, false) {
                Ok(run) => {
                    boot.push(column, run.boot_ms);
                    rss.push(column, run.rss_mib);
                    cpu.push(column, run.cpu_ms);
                    wakeups.push(column, run.wakeups_per_s);
                    stop.push(column, run.stop_ms);
                    if let Some(f) = run.fds {
                        fds.push(column, f as f64);
                    }
                }
                Err(e) => {
                    eprintln!("bench:   {} at N = {n} failed: {e}", system.label());
                    limits.push(format!(
                        "{} with N = {n} failed: {}",
                        system.label(),
                        e.replace('\n', " / ")
                    ));
                    for f in [
                        &mut boot,
                        &mut rss,
                        &mut cpu,
                        &mut wakeups,
                        &mut stop,
                        &mut fds,
                    ] {
                        f.note(column, "failed (see below)");
                    }
                }
            }
        }
        for (column, command) in [(2, &true_command[..]), (3, &sleep_command[..])] {
            match floor.spawn(false, n, command) {
                Ok(t) => boot.push(column, ms(t.reaped)),
                Err(e) => boot.note(column, format!("failed: {}", first_line(&e))),
            }
        }
        figures.extend([boot, rss, cpu, wakeups, stop, fds]);
    }
    let me = std::process::id() as i32;
    let read = |path: &str| {
        fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".into())
    };
    let limit_text = format!(
        "`kernel.pid_max` = {}, `kernel.threads-max` = {}, `RLIMIT_NPROC` = {}, \
         `RLIMIT_NOFILE` = {} (soft limit the masters inherit), `net.unix.max_dgram_qlen` = {}",
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/kernel/threads-max"),
        procfs::soft_limit(me, "Max processes").unwrap_or_else(|| "?".into()),
        procfs::soft_limit(me, "Max open files").unwrap_or_else(|| "?".into()),
        read("/proc/sys/net/unix/max_dgram_qlen"),
    );
    let failures = if limits.is_empty() {
        "No run hit a limit.".to_owned()
    } else {
        format!(
            "Runs that did not reach N ready (10,000 get 300 s): {}.",
            limits.join("; ")
        )
    };
    Ok(Section {
        title: "1,000 and 10,000 light workers".into(),
        method: format!(
            "arbiter with N `sleep infinity` workers (`--ready exec`) and with N built-in \
             workers (which heartbeat through their file and send `READY=1`), one master at a \
             time, measured as in the idle scenario ({secs} s window); *master open fds* is \
             counted in `/proc/PID/fd` at the end of the window. The floors are N fork+exec \
             from C of `/bin/true` and of `sleep 0` (the workers' own start-up, then exit). The Python worker is not run at 10,000 (about 7 MB of \
             private memory each: 70 GB), nor are gunicorn (a random 0-100 ms sleep after each \
             fork: over 8 minutes to boot) and uWSGI. Limits on this machine: {limit_text}. \
             {failures}"
        ),
        columns: vec![
            "arbiter (sleep)".into(),
            "arbiter (built-in)".into(),
            "floor: fork+exec /bin/true".into(),
            "floor: fork+exec sleep".into(),
        ],
        ratios: vec![(0, 2), (1, 2), (0, 3)],
        figures,
    })
}
