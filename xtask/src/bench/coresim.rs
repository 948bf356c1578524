//! The core alone: `arbiter-core` driven through its public API by a simulated world of
//! 100,000 workers and 1,000,000 inputs on a virtual clock, with invariants checked as it
//! goes. Single-threaded, so it measures one core.
//!
//! The world: every worker sends `READY=1` when spawned and heartbeats every 3 s of virtual
//! time (at a random phase, under a 5 s timeout); some crash, some hang (stop
//! heartbeating), TTIN and TTOU (rarely) change the target; signalled workers exit 20 ms later; at the
//! end a TERM stops everything. Invariants: no signal to a pid that exited or never existed;
//! no worker id spawned twice; the core's table and the world agree on the live workers and
//! `ready_count` never exceeds them; no heartbeat timeout for a worker that heartbeated
//! within the timeout (no false timeout); every hung worker is aborted within one step of
//! its deadline (none missed; a worker is timed from its first heartbeat on); the core's kept
//! counts and indexes agree with a recount of its table (`Arbiter::check_indexes`, now and
//! then); the stop ends with `Exit` code 0 and an empty table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use arbiter_core::{Action, Arbiter, Config, ExitStatus, Moment, Pid, ReadyMode, Role, Signal};

/// What a simulation run did.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// Inputs given to the core (every `handle_*` call).
    pub inputs: u64,
    /// Actions drained from it.
    pub actions: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// CPU time of this thread (what one core spent, whatever else ran on the machine).
    pub cpu: Duration,
    /// Virtual time covered.
    pub virtual_time: Duration,
    /// CPU time of one TTIN or TTOU (a change of target), measured apart at the end.
    pub target_change: Duration,
    /// Hung workers aborted on time.
    pub hangs_caught: u64,
    /// Crashes fed in.
    pub crashes: u64,
    /// Invariant checks made.
    pub checks: u64,
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct World {
    arbiter: Arbiter,
    now: Moment,
    next_pid: Pid,
    live: Vec<Pid>,
    index: HashMap<Pid, usize>,
    exited: HashSet<Pid>,
    ids: HashSet<u64>,
    last_beat: HashMap<Pid, Moment>,
    beats: BTreeMap<(Moment, Pid), ()>,
    beat_every: Duration,
    rng: Rng,
    hung: HashMap<Pid, Moment>,
    hang_deadlines: BTreeMap<(Moment, Pid), ()>,
    aborted: HashSet<Pid>,
    pending_exits: BTreeMap<(Moment, Pid), ExitStatus>,
    timeout: Duration,
    step: Duration,
    report: SimReport,
    exit_code: Option<i32>,
}

impl World {
    fn fail(&self, what: String) -> String {
        format!(
            "core simulation invariant broken at {:?}: {what}",
            self.now.since_origin()
        )
    }

    fn add_live(&mut self, pid: Pid) {
        self.index.insert(pid, self.live.len());
        self.live.push(pid);
        // The first heartbeat at a random phase, then every `beat_every`.
        let phase = self.rng.below(self.beat_every.as_micros() as usize) as u64;
        self.beats
            .insert((self.now + Duration::from_micros(phase), pid), ());
    }

    fn remove_live(&mut self, pid: Pid) {
        if let Some(i) = self.index.remove(&pid) {
            self.live.swap_remove(i);
            if let Some(&moved) = self.live.get(i) {
                self.index.insert(moved, i);
            }
        }
        self.exited.insert(pid);
        self.last_beat.remove(&pid);
        self.hung.remove(&pid);
    }

    /// Carries out every action; checks the invariants that concern actions.
    fn drain(&mut self) -> Result<(), String> {
        while let Some(action) = self.arbiter.poll_action() {
            self.report.actions += 1;
            match action {
                Action::Spawn { id, .. } => {
                    self.report.checks += 1;
                    if !self.ids.insert(id.0) {
                        return Err(self.fail(format!("worker id {id:?} spawned twice")));
                    }
                    self.next_pid += 1;
                    let pid = self.next_pid;
                    self.arbiter.handle_spawned(id, pid, self.now);
                    self.arbiter.handle_ready(pid, self.now);
                    self.report.inputs += 2;
                    self.add_live(pid);
                }
                Action::Signal { pid, signal, .. } => {
                    self.report.checks += 1;
                    if !self.index.contains_key(&pid) {
                        return Err(
                            self.fail(format!("{signal:?} to pid {pid}, which is not live"))
                        );
                    }
                    if signal == Signal::Abrt {
                        self.check_abort(pid)?;
                    } else {
                        // Retired or stopped: no longer timed by its heartbeat.
                        self.hung.remove(&pid);
                    }
                    let delay = if signal == Signal::Kill {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(20)
                    };
                    let status = match signal {
                        Signal::Term => ExitStatus::Exited(0),
                        other => ExitStatus::Signaled {
                            signal: signal_number(other),
                            core_dumped: false,
                        },
                    };
                    self.pending_exits
                        .entry((self.now + delay, pid))
                        .or_insert(status);
                }
                Action::Exit { code, .. } => self.exit_code = Some(code),
                _ => {}
            }
        }
        Ok(())
    }

    /// An abort is due only for a worker silent for the whole timeout.
    fn check_abort(&mut self, pid: Pid) -> Result<(), String> {
        let Some(last) = self.last_beat.get(&pid).copied() else {
            return Err(self.fail(format!("pid {pid} aborted before its first heartbeat")));
        };
        let silent = self.now.saturating_since(last);
        if silent < self.timeout {
            return Err(self.fail(format!(
                "false timeout: pid {pid} aborted {silent:?} after its last heartbeat"
            )));
        }
        if self.aborted.insert(pid) && self.hung.contains_key(&pid) {
            self.report.hangs_caught += 1;
        }
        Ok(())
    }

    fn input_timers_and_exits(&mut self) -> Result<(), String> {
        while let Some((&(at, pid), _)) = self.pending_exits.first_key_value() {
            if at > self.now {
                break;
            }
            let status = self
                .pending_exits
                .remove(&(at, pid))
                .unwrap_or(ExitStatus::Exited(0));
            if self.index.contains_key(&pid) {
                self.remove_live(pid);
                self.arbiter.handle_exit(pid, status, self.now);
                self.report.inputs += 1;
                self.drain()?;
            }
        }
        if self.arbiter.poll_timeout().is_some_and(|t| t <= self.now) {
            self.arbiter.handle_timeout(self.now);
            self.report.inputs += 1;
            self.drain()?;
        }
        // A hung worker must have been aborted by one step past its deadline.
        while let Some((&(deadline, pid), _)) = self.hang_deadlines.first_key_value() {
            if deadline + self.step * 2 > self.now {
                break;
            }
            self.hang_deadlines.remove(&(deadline, pid));
            self.report.checks += 1;
            if self.hung.contains_key(&pid) && !self.aborted.contains(&pid) {
                return Err(self.fail(format!("missed timeout: hung pid {pid} not aborted")));
            }
        }
        Ok(())
    }

    /// The core's kept counts and indexes (spawn queues, ready and active counts, pid index,
    /// deadlines) agree with a full recount of its table: O(N), so made now and then.
    fn check_indexes(&mut self) -> Result<(), String> {
        self.report.checks += 1;
        self.arbiter
            .check_indexes()
            .map_err(|drift| self.fail(drift))
    }

    fn check_table(&mut self) -> Result<(), String> {
        self.report.checks += 1;
        let table = self.arbiter.worker_count();
        if table != self.live.len() {
            return Err(self.fail(format!(
                "the core has {table} workers, the world {} live",
                self.live.len()
            )));
        }
        if self.arbiter.ready_count() > table {
            return Err(self.fail("more ready than live".into()));
        }
        Ok(())
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn signal_number(signal: Signal) -> i32 {
    match signal {
        Signal::Abrt => libc::SIGABRT,
        Signal::Kill => libc::SIGKILL,
        Signal::Quit => libc::SIGQUIT,
        Signal::Int => libc::SIGINT,
        _ => libc::SIGTERM,
    }
}

/// Runs `workers` workers through `inputs` inputs; checks invariants as it goes.
pub fn run(workers: usize, inputs: u64) -> Result<SimReport, String> {
    let timeout = Duration::from_secs(5);
    let config = Config {
        workers,
        timeout: Some(timeout),
        ready: ReadyMode::Notify,
        ..Config::default()
    };
    let started = Instant::now();
    let cpu_started = thread_cpu();
    let mut world = World {
        arbiter: Arbiter::new(config, Role::Fresh, Moment::ZERO),
        now: Moment::ZERO,
        next_pid: 1000,
        live: Vec::with_capacity(workers * 2),
        index: HashMap::with_capacity(workers * 2),
        exited: HashSet::new(),
        ids: HashSet::with_capacity(workers * 2),
        last_beat: HashMap::with_capacity(workers * 2),
        beats: BTreeMap::new(),
        beat_every: Duration::from_secs(3),
        rng: Rng(0x9E37_79B9_7F4A_7C15),
        hung: HashMap::new(),
        hang_deadlines: BTreeMap::new(),
        aborted: HashSet::new(),
        pending_exits: BTreeMap::new(),
        timeout,
        // About one heartbeat per step: each worker beats every 3 s.
        step: Duration::from_micros((3_000_000 / workers.max(1) as u64).max(1)),
        report: SimReport {
            inputs: 0,
            actions: 0,
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
            virtual_time: Duration::ZERO,
            target_change: Duration::ZERO,
            hangs_caught: 0,
            crashes: 0,
            checks: 0,
        },
        exit_code: None,
    };
    world.drain()?;
    world.check_table()?;
    world.check_indexes()?;
    let mut next_index_check = 131_072;
    while world.report.inputs < inputs {
        world.now = world.now + world.step;
        world.input_timers_and_exits()?;
        // Every heartbeat that is due, from workers that are live and not hung.
        while let Some((&(at, pid), _)) = world.beats.first_key_value() {
            if at > world.now {
                break;
            }
            world.beats.remove(&(at, pid));
            if world.index.contains_key(&pid) && !world.hung.contains_key(&pid) {
                world.last_beat.insert(pid, world.now);
                world.arbiter.handle_heartbeat(pid, world.now);
                world.report.inputs += 1;
                world.beats.insert((world.now + world.beat_every, pid), ());
            }
        }
        world.drain()?;
        if world.live.is_empty() {
            continue;
        }
        let roll = world.rng.below(10_000);
        if roll < 40 {
            let pid = world.live[world.rng.below(world.live.len())];
            if !world.hung.contains_key(&pid) && !world.aborted.contains(&pid) {
                world.remove_live(pid);
                world
                    .arbiter
                    .handle_exit(pid, ExitStatus::Exited(1), world.now);
                world.report.inputs += 1;
                world.report.crashes += 1;
            }
        } else if roll < 60 {
            let pid = world.live[world.rng.below(world.live.len())];
            // Only a worker that has heartbeated is timed (from its first sign of life).
            if let (false, Some(&last)) = (world.hung.contains_key(&pid), world.last_beat.get(&pid))
            {
                world.hung.insert(pid, last);
                world.hang_deadlines.insert((last + timeout, pid), ());
            }
        } else if roll < 62 {
            // Rare: a change of target (the core refreshes only the slots it moves over).
            let signal = if roll < 61 {
                Signal::Ttin
            } else {
                Signal::Ttou
            };
            world.arbiter.handle_signal(signal, world.now);
            world.report.inputs += 1;
        }
        world.drain()?;
        if world.report.inputs.is_multiple_of(4096) {
            world.check_table()?;
        }
        if world.report.inputs >= next_index_check {
            world.check_indexes()?;
            next_index_check += 131_072;
        }
    }
    world.check_table()?;
    world.check_indexes()?;
    // The price of one change of target at this size, on its own.
    let cpu_before = thread_cpu();
    for _ in 0..5 {
        for signal in [Signal::Ttin, Signal::Ttou] {
            world.now = world.now + world.step;
            world.arbiter.handle_signal(signal, world.now);
            world.report.inputs += 1;
            world.drain()?;
        }
    }
    world.report.target_change = thread_cpu().saturating_sub(cpu_before) / 10;
    world.check_table()?;
    world.check_indexes()?;
    // Stop: TERM, then time runs until the core exits (bounded by the graceful timeout).
    world.arbiter.handle_signal(Signal::Term, world.now);
    world.report.inputs += 1;
    world.drain()?;
    let stop_limit = world.now + Duration::from_secs(120);
    while world.exit_code.is_none() {
        if world.now > stop_limit {
            return Err(world.fail("no exit within 120 s of virtual time after TERM".into()));
        }
        world.now = world.now + Duration::from_millis(1);
        world.input_timers_and_exits()?;
    }
    world.check_indexes()?;
    if world.exit_code != Some(0) || !world.live.is_empty() {
        return Err(world.fail(format!(
            "stop ended with {:?} and {} live workers",
            world.exit_code,
            world.live.len()
        )));
    }
    world.report.elapsed = started.elapsed();
    world.report.cpu = thread_cpu().saturating_sub(cpu_started);
    world.report.virtual_time = world.now.since_origin();
    Ok(world.report)
}
