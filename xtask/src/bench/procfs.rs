//! What the benchmarks read about other processes from `/proc`, and the few signals and waits
//! they need. Reads are best-effort: a process that is gone reads as `None`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the epoch on the wall clock (the clock of file ctimes).
pub fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The part of `/proc/PID/stat` after the command name: state first, then ppid, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The process state letter (`R`, `S`, `T`, `Z`, ...).
pub fn state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Whether the process is gone or a zombie (dead, not yet reaped).
pub fn is_dead(pid: i32) -> bool {
    matches!(state(pid), None | Some('Z') | Some('X'))
}

/// Every live (not zombie) process whose parent is `parent`.
pub fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                f.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent)
                    && !matches!(f.first().map(String::as_str), Some("Z") | Some("X"))
            })
        })
        .collect();
    found.sort_unstable();
    found
}

/// Every live process with its parent, from one scan of `/proc`.
fn parents() -> Vec<(i32, i32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let fields = stat_fields(pid)?;
            if matches!(fields.first().map(String::as_str), Some("Z") | Some("X")) {
                return None;
            }
            Some((pid, fields.get(1)?.parse().ok()?))
        })
        .collect()
}

/// `pid` and all its descendants, parents before children (one scan of `/proc`).
pub fn tree(pid: i32) -> Vec<i32> {
    let mut by_parent: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    for (child, parent) in parents() {
        by_parent.entry(parent).or_default().push(child);
    }
    let mut all = vec![pid];
    let mut next = 0;
    while next < all.len() {
        if let Some(kids) = by_parent.get(&all[next]) {
            all.extend(kids);
        }
        next += 1;
    }
    all
}

/// A `Key:` line of `/proc/PID/status`, without the key.
fn status_line(pid: i32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_line(pid, "VmRSS:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What `/proc` says about a process's use of the CPU, summed over its threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuUse {
    /// Nanoseconds on CPU from `schedstat` (precise, unlike the 10 ms ticks of `stat`).
    pub cpu_ns: u64,
    /// Voluntary context switches: the process slept and was woken.
    pub voluntary: u64,
    /// Involuntary context switches: it was preempted.
    pub involuntary: u64,
}

impl CpuUse {
    /// Wake-ups: voluntary plus involuntary context switches.
    pub fn switches(&self) -> u64 {
        self.voluntary + self.involuntary
    }
}

/// CPU time and context switches of all threads of `pid`, summed.
pub fn cpu_use(pid: i32) -> Option<CpuUse> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = CpuUse::default();
    for task in tasks.flatten() {
        let tid = task.file_name();
        let tid = tid.to_str()?;
        // A thread listed may end before it is read (a test harness's threads do): it is
        // skipped, not taken for the whole process gone.
        let Ok(sched) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue;
        };
        total.cpu_ns += sched.split_whitespace().next()?.parse::<u64>().ok()?;
        let field = |key: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .trim()
                .parse()
                .ok()
        };
        total.voluntary += field("voluntary_ctxt_switches:")?;
        total.involuntary += field("nonvoluntary_ctxt_switches:")?;
    }
    Some(total)
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The soft limit of a `/proc/PID/limits` row ("Max open files"), as text.
pub fn soft_limit(pid: i32, row: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with(row))?;
    line[row.len()..]
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// `CLOCK_MONOTONIC` in seconds: the clock of Python's `time.monotonic()`.
pub fn monotonic_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The wall-clock ctime (seconds) of the worker's heartbeat file: arbiter's
/// `ARBITER_HEARTBEAT_FD`, else the one unlinked regular file among its descriptors
/// (gunicorn's `WorkerTmp`). Both bump it with a metadata change (`utime`, `fchmod`), which
/// sets the ctime to now.
pub fn heartbeat_ctime(pid: i32) -> Option<f64> {
    // An arbiter worker names its heartbeat fd (the file stays linked, in the master's
    // private heartbeat directory, while the worker lives).
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let named = environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(b"ARBITER_HEARTBEAT_FD="))
        .and_then(|fd| std::str::from_utf8(fd).ok()?.parse::<u32>().ok());
    if let Some(fd) = named {
        let meta = fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
        return Some(meta.ctime() as f64 + meta.ctime_nsec() as f64 * 1e-9);
    }
    // gunicorn's worker keeps an unlinked temporary file.
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for fd in fds.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if target.starts_with('/') && target.ends_with(" (deleted)") {
            let meta = fs::metadata(fd.path()).ok()?;
            if meta.is_file() {
                return Some(meta.ctime() as f64 + meta.ctime_nsec() as f64 * 1e-9);
            }
        }
    }
    None
}

/// Sends `signal` to `pid`; false when there is no such process.
pub fn kill(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Reaps `pid` (our child) if it has exited; true once it is reaped or is not our child.
pub fn try_reap(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: `status` is a valid, writable int for the duration of the call.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    r == pid || r == -1
}

/// Waits (polling every half millisecond) until our child `pid` exits; how long it took.
pub fn wait_exit(pid: i32, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if try_reap(pid) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    None
}

/// Reaps every exited child we have (orphans reparented to us as subreaper included).
pub fn reap_any() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int for the duration of the call.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return;
        }
    }
}

/// Makes this process the reaper of its orphaned descendants (a USR2 master whose parent
/// exits is reparented to us, so it can still be found, killed and reaped by pid).
pub fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Kills `pid` and all its descendants with SIGKILL, each by pid, and reaps what is ours.
pub fn kill_tree(pid: i32) {
    let all = tree(pid);
    for &p in &all {
        kill(p, libc::SIGKILL);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) && !all.iter().all(|&p| is_dead(p)) {
        reap_any();
        std::thread::sleep(Duration::from_millis(2));
    }
    reap_any();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by pid with waitpid: the code under test
    fn sees_a_child_and_its_exit() {
        let child = Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        assert!(children(me).contains(&pid));
        // Right after the spawn it may still be running towards its sleep.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state(pid) != Some('S') && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(state(pid), Some('S'));
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(kill(pid, libc::SIGKILL));
        assert!(wait_exit(pid, Duration::from_secs(5)).is_some());
        assert!(is_dead(pid));
        assert!(!children(me).contains(&pid));
    }

    #[test]
    fn cpu_time_of_this_process_grows() {
        let me = std::process::id() as i32;
        let before = cpu_use(me).unwrap().cpu_ns;
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = cpu_use(me).unwrap().cpu_ns;
        assert!(after > before);
    }
}
