//! Fork and exec: workers (with the hand-off plan) and the re-exec'd master (USR2).
//!
//! Everything that allocates happens before the child is made. Between then and `exec` the
//! child only makes async-signal-safe calls on memory prepared in advance: no allocation, no
//! lock, no logging: the child's calls are rustix's raw syscalls, plus `execve` and `_exit`.
//!
//! A child that execs is made the way `posix_spawn` makes it: `clone(CLONE_VM | CLONE_VFORK)`
//! on a stack of its own. Nothing of the master's memory is copied (no page tables, no
//! copy-on-write faults in the master afterwards), the master is suspended until the child
//! has exec'd or exited, and the child's only writes to the memory it shares are the errno of
//! a failed set-up or exec and the pid digits of the environment prepared for it; its signal
//! handlers are its own (no `CLONE_SIGHAND`), and it starts with every signal blocked, so the
//! master's handler never runs in it. A library-mode worker, which runs on without exec, is
//! forked; it reports a failed set-up through a close-on-exec pipe.

use std::ffi::{c_char, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use arbiter_signals::SignalPipe;
use arbiter_sockets::{HandoffPlan, Others, PidEnvSlot};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use rustix::io::Errno;
use rustix::process;

use crate::os::identity::Identity;

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// fork or pipe failed (out of processes or memory).
    #[error("fork failed: {0}")]
    Fork(io::Error),
    /// The child could not set itself up or exec the program.
    #[error("cannot execute {program}: {error}")]
    Exec {
        /// The program.
        program: String,
        /// The errno the child reported.
        error: io::Error,
    },
    /// A file the worker gets could not be prepared for it (given to its user).
    #[error("preparing the worker: {0}")]
    Prepare(io::Error),
    /// A NUL byte in an argument or variable.
    #[error("NUL byte in {0}")]
    Nul(String),
}

/// Finds `program` on `PATH` unless it contains a slash; checks it is an executable file.
pub fn resolve_program(program: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, String> {
    let name = Path::new(program);
    let is_executable = |candidate: &Path| {
        use std::os::unix::fs::PermissionsExt;
        candidate
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        if !name.exists() {
            return Err(format!("worker command {} not found", name.display()));
        }
        if !is_executable(name) {
            return Err(format!(
                "worker command {} is not executable",
                name.display()
            ));
        }
        return Ok(name.to_path_buf());
    }
    let search = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(search) {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "worker command {:?} not found on PATH",
        name.to_string_lossy()
    ))
}

/// A C string from bytes, naming `what` on error.
pub fn cstring(bytes: &[u8], what: &str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul(what.to_owned()))
}

/// What a worker is started with; built before the fork.
pub struct WorkerSpawn<'a> {
    /// The resolved program.
    pub program: &'a CString,
    /// argv, argv[0] included.
    pub argv: &'a [CString],
    /// The `KEY=VALUE` entries every worker gets, made once.
    pub base_env: &'a [CString],
    /// This worker's own `KEY=VALUE` entries (besides the plan's and the watchdog pid's).
    pub env: Vec<CString>,
    /// The fds and `LISTEN_*` variables.
    pub plan: HandoffPlan<'a>,
    /// `WATCHDOG_PID=` filled with the worker's pid, when a watchdog is set.
    pub watchdog_pid: Option<PidEnvSlot>,
    /// Put on the child's fd 1 (output capture); `None` inherits the master's stdout.
    pub stdout_fd: Option<BorrowedFd<'a>>,
    /// Put on the child's fd 2 (output capture); `None` inherits the master's stderr.
    pub stderr_fd: Option<BorrowedFd<'a>>,
    /// The user and groups to switch to (`--user`, `--group`); `None` keeps the master's.
    pub identity: Option<&'a Identity>,
}

/// Forks and execs a worker in its own process group, with default signal dispositions, an
/// empty mask, the configured identity, a parent-death signal, and only fds 0-2 plus the
/// plan's. Returns its pid once the child has exec'd (or failed to), and the watch that
/// tells, once the worker has exited, whether its exec failed. `signals` (the
/// master's pipe) is reset in the child.
pub fn spawn_worker(
    mut spawn: WorkerSpawn<'_>,
    signals: &SignalPipe,
) -> Result<(i32, ExecWatch), SpawnError> {
    let argv = pointers(spawn.argv.iter().map(|a| a.as_ptr()));
    let envp = {
        let mut entries: Vec<*const c_char> = Vec::with_capacity(spawn.base_env.len() + 16);
        entries.extend(spawn.base_env.iter().chain(&spawn.env).map(|e| e.as_ptr()));
        entries.extend(spawn.plan.env_pointers());
        if let Some(slot) = &spawn.watchdog_pid {
            entries.push(slot.as_ptr());
        }
        entries.push(std::ptr::null());
        entries
    };
    let master = process::getpid();
    // The child needs fds 0-2, the plan's sources and the output capture ends, nothing above.
    let keep = [spawn.stdout_fd, spawn.stderr_fd]
        .into_iter()
        .flatten()
        .map(|fd| fd.as_raw_fd())
        .fold(spawn.plan.highest_source(), RawFd::max);
    let files = FdTable::KeepBelow(keep + 1);
    let (pid, failed) = vfork_exec(spawn.program, &argv, &envp, files, || {
        signals.vfork_child_reset();
        crate::os::limits::restore_in_child();
        worker_setup(master, spawn.identity, spawn.stdout_fd, spawn.stderr_fd)?;
        if let Some(slot) = spawn.watchdog_pid.as_mut() {
            slot.fill(process::getpid().as_raw_nonzero().get() as u32);
        }
        // SAFETY: we are the forked child, and exec or _exit follows.
        unsafe { spawn.plan.apply_in_child(Others::CloseOnExec) }.map_err(errno_of)
    })?;
    // No `make_group_leader` here: this returns once the child has exec'd, its first set-up
    // step having made it a group leader, or has exited (the parent's call only failed with
    // EACCES, a syscall on every spawn).
    Ok((pid, ExecWatch::known(failed)))
}

/// In a new worker between fork and exec: its own process group, the configured user and
/// groups, death with the master (and none if the master already died), output capture on
/// fds 1 and 2. Async-signal-safe: raw syscalls, no allocation.
fn worker_setup(
    master: process::Pid,
    identity: Option<&Identity>,
    stdout_fd: Option<BorrowedFd<'_>>,
    stderr_fd: Option<BorrowedFd<'_>>,
) -> Result<(), Errno> {
    process::setpgid(None, None)?;
    // Before the parent-death signal: a change of effective uid or gid clears it.
    if let Some(identity) = identity {
        identity.switch_in_child()?;
    }
    process::set_parent_process_death_signal(Some(process::Signal::KILL))?;
    if process::getppid() != Some(master) {
        return Err(Errno::SRCH);
    }
    if let Some(fd) = stdout_fd {
        rustix::stdio::dup2_stdout(fd)?;
    }
    if let Some(fd) = stderr_fd {
        rustix::stdio::dup2_stderr(fd)?;
    }
    Ok(())
}

/// A forked child makes itself a group leader too; doing it in the parent as well means the
/// group exists as soon as fork returns, whichever runs first.
fn make_group_leader(pid: i32) {
    if let Some(pid) = process::Pid::from_raw(pid) {
        let _ = process::setpgid(Some(pid), Some(pid));
    }
}

/// What a library-mode worker is started with; built before the fork.
pub struct FunctionSpawn<'a> {
    /// The fds; the plan's `LISTEN_*` variables are not used (nothing is exec'd).
    pub plan: HandoffPlan<'a>,
    /// The user and groups to switch to (`--user`, `--group`), prepared before the fork.
    pub identity: Option<&'a Identity>,
    /// Put on the child's fd 1 (output capture); `None` inherits the master's stdout.
    pub stdout_fd: Option<BorrowedFd<'a>>,
    /// Put on the child's fd 2 (output capture); `None` inherits the master's stderr.
    pub stderr_fd: Option<BorrowedFd<'a>>,
}

/// Forks a library-mode worker: the set-up of [`spawn_worker`] (own process group, the
/// configured user and groups, death with the master, default signal dispositions and an empty mask, fds 0-2 plus the plan's, every
/// other fd closed), then, without exec, `run` with the child's pid; its return value is the
/// child's exit status (`_exit`, so nothing of the master's image is dropped or flushed).
///
/// The master must be single-threaded (checked: an error names the thread count). Until
/// `run` starts, the child only makes async-signal-safe calls on memory prepared before the
/// fork. `run` must not return into the master's code by unwinding: a panic in it ends the
/// child with status 101, as a panicking `main` does.
pub fn spawn_function(
    spawn: FunctionSpawn<'_>,
    signals: &SignalPipe,
    run: impl FnOnce(u32) -> i32,
) -> Result<(i32, ExecWatch), SpawnError> {
    ensure_single_threaded()?;
    let FunctionSpawn {
        mut plan,
        identity,
        stdout_fd,
        stderr_fd,
    } = spawn;
    let report = ExecReport::new()?;
    let master = process::getpid();
    // SAFETY: the master is single-threaded (checked above); until `run` starts the child only
    // makes the async-signal-safe calls below.
    match unsafe { fork_blocked() }? {
        ForkResult::Parent { child } => {
            make_group_leader(child.as_raw());
            Ok((child.as_raw(), report.into_watch()))
        }
        ForkResult::Child => {
            signals.forked_child_reset();
            if let Err(errno) = worker_setup(master, identity, stdout_fd, stderr_fd) {
                report.fail_and_exit(errno);
            }
            // The report's fds are closed by the plan (they sit above its targets): the value
            // must never be dropped in this child.
            let report = std::mem::ManuallyDrop::new(report);
            // SAFETY: this forked child never returns to the master's code: it ends with
            // _exit below, so the objects of the master's image that held the fds the plan
            // closes or overwrites are never used or dropped here.
            if let Err(error) = unsafe { plan.apply_in_child(Others::Close) } {
                report.fail_and_exit(errno_of(error));
            }
            let pid = process::getpid().as_raw_nonzero().get() as u32;
            let code =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(pid))).unwrap_or(101);
            exit_child(code)
        }
    }
}

/// Refuses to fork without exec while this process has more than one thread: the child would
/// have only the forking thread, with any lock another thread held locked forever.
fn ensure_single_threaded() -> Result<(), SpawnError> {
    // From `/proc/self/task`; 1 if it cannot be read.
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |entries| entries.count());
    if threads > 1 {
        return Err(SpawnError::Fork(io::Error::other(format!(
            "the master has {threads} threads: library mode forks only a single-threaded master"
        ))));
    }
    Ok(())
}

/// What a re-exec'd master is started with; built before the fork.
pub struct MasterSpawn<'a> {
    /// The arbiter's binary, re-resolved.
    pub program: &'a CString,
    /// The original argv.
    pub argv: &'a [CString],
    /// The environment, with `ARBITER_LISTEN_FDS` and `ARBITER_MASTER_PID`.
    pub env: &'a [CString],
    /// Listener fds, kept at their numbers.
    pub listener_fds: &'a [BorrowedFd<'a>],
    /// The directory the first master was started in: the new one starts there too, so its
    /// argv means what it meant (gunicorn's reexec does the same).
    pub cwd: &'a CString,
}

/// Forks and execs a new master that inherits the listeners at their fd numbers; `signals`
/// (the master's pipe) is reset in the child.
pub fn spawn_master(spawn: MasterSpawn<'_>, signals: &SignalPipe) -> Result<i32, SpawnError> {
    let argv = pointers(spawn.argv.iter().map(|a| a.as_ptr()));
    let envp = pointers(spawn.env.iter().map(|e| e.as_ptr()));
    let (pid, failed) = vfork_exec(spawn.program, &argv, &envp, FdTable::Copy, || {
        signals.vfork_child_reset();
        crate::os::limits::restore_in_child();
        process::chdir(spawn.cwd.as_c_str())?;
        arbiter_sockets::clear_cloexec_in_child(spawn.listener_fds).map_err(errno_of)
    })?;
    let Some(errno) = failed else {
        return Ok(pid);
    };
    // It has exited already: reaped here, it never reaches the worker table.
    let _ = waitpid(Pid::from_raw(pid), None);
    Err(SpawnError::Exec {
        program: spawn.program.to_string_lossy().into_owned(),
        error: errno.into(),
    })
}

/// The errno of an error from a wrapper that speaks `io::Error`.
fn errno_of(error: io::Error) -> Errno {
    Errno::from_io_error(&error).unwrap_or(Errno::INVAL)
}

/// Forks with every signal blocked across the fork, and restores the mask in the parent.
///
/// A signal sent to the child before it has reset its dispositions would otherwise run the
/// master's handler there, which writes into the master's signal pipe and swallows the signal
/// (a TERM to a just-spawned worker was lost so). The child unblocks once its dispositions are
/// the defaults (`child_reset`), so such a signal then acts on it; the parent restores its
/// mask at once, losing nothing.
///
/// # Safety
///
/// As `fork`: the process must be single-threaded, and the child must only make
/// async-signal-safe calls until it execs or `_exit`s (or, for a library-mode worker, until
/// the user's function starts).
unsafe fn fork_blocked() -> Result<ForkResult, SpawnError> {
    let mut saved = SigSet::empty();
    let _ = sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&SigSet::all()),
        Some(&mut saved),
    );
    // SAFETY: the caller's contract (single-threaded; async-signal-safe child).
    let forked = unsafe { fork() };
    if !matches!(forked, Ok(ForkResult::Child)) {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    }
    forked.map_err(|errno| SpawnError::Fork(errno.into()))
}

/// The child's stack: its set-up and `execve` need a few KiB; debug builds more.
const CHILD_STACK: usize = 256 * 1024;

thread_local! {
    /// The stack every child of [`vfork_exec`] runs on, allocated once: spawns are serial
    /// (each returns only once its child has exec'd or exited), so one serves them all, and a
    /// spawn no longer allocates and clears 256 KiB (8% of a 1000-worker boot's master time).
    static CHILD_STACK_MEMORY: std::cell::RefCell<Vec<u8>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// How the child of [`vfork_exec`] gets its fd table.
#[derive(Clone, Copy)]
enum FdTable {
    /// A copy of the master's whole table, made by `clone` (every open fd referenced once
    /// more, then each close-on-exec one closed again by `execve`).
    Copy,
    /// Only fds below this number: the child shares the master's table (`CLONE_FILES`) and,
    /// before anything else, swaps it for a private copy of those fds
    /// (`close_range(n, ~0, CLOSE_RANGE_UNSHARE)`, Linux 5.9). The master holds one notify
    /// socket per worker, so a full copy costs every spawn O(workers): at 10,000 workers the
    /// kernel's `dup_fd` was 38% of the master's CPU during a boot, and each child's exec
    /// closed 10,000 inherited fds again. Where the kernel lacks the flag, a copy as above.
    KeepBelow(RawFd),
}

/// Whether `close_range` takes `CLOSE_RANGE_UNSHARE` here: 0 not asked yet, 1 yes, 2 no.
static UNSHARE_SUPPORTED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Asks the kernel once, in the master: `close_range(~0, ~0, CLOSE_RANGE_UNSHARE)` closes
/// nothing (no fd has that number) and, the master's table being its own, copies nothing.
fn unshare_supported() -> bool {
    use std::sync::atomic::Ordering;
    match UNSHARE_SUPPORTED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            // SAFETY: a raw close_range of the single number ~0, which no fd has.
            let result = unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    libc::c_uint::MAX,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_UNSHARE,
                )
            };
            let ok = result == 0;
            UNSHARE_SUPPORTED.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            ok
        }
    }
}

/// What the child of [`vfork_exec`] runs, in memory shared with the suspended parent.
struct VforkChild<F> {
    /// With `CLONE_FILES`: the first fd number the child does not keep when it unshares.
    unshare_from: Option<RawFd>,
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    prepare: Option<F>,
    /// Written by the child when its set-up or exec failed; 0 otherwise.
    errno: i32,
}

/// The child's entry point: set up, exec, or leave the errno and exit 127.
extern "C" fn vfork_child<F: FnOnce() -> Result<(), Errno>>(arg: *mut libc::c_void) -> i32 {
    // SAFETY: `arg` is the `VforkChild<F>` that `vfork_exec` passed; the parent is suspended
    // until this child execs or exits, so nothing else uses it meanwhile.
    let child = unsafe { &mut *arg.cast::<VforkChild<F>>() };
    if let Some(from) = child.unshare_from {
        // First of all, before any fd is touched: the table is still the master's.
        // SAFETY: a raw close_range that gives this child a private copy of fds below `from`
        // and closes nothing of the master's (the range is closed in the new copy only).
        let result = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                from as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            )
        };
        if result != 0 {
            // Still on the master's table: leave without touching it (exit drops only this
            // child's reference to the table).
            child.errno = nix::errno::Errno::last_raw().max(1);
            exit_child(127)
        }
    }
    let errno = match child.prepare.take().map_or(Ok(()), |prepare| prepare()) {
        Err(errno) => errno,
        Ok(()) => {
            // SAFETY: program, argv and envp are NUL-terminated arrays of C strings prepared
            // before the clone; they live until exec replaces this image.
            unsafe { libc::execve(child.program, child.argv, child.envp) };
            Errno::from_raw_os_error(nix::errno::Errno::last_raw())
        }
    };
    child.errno = errno.raw_os_error().max(1);
    exit_child(127)
}

/// Starts a child that shares the master's memory until it execs (see the module doc); the
/// child runs `prepare` (async-signal-safe and allocation-free, and writing nothing of the
/// master's but what was prepared for it), then execs `program`. Returns when the child has
/// exec'd or exited: its pid, and the errno if its set-up or exec failed (it then exited 127).
/// Every signal is blocked across the clone (see [`fork_blocked`] for why), and the parent's
/// mask restored when the child is gone from its memory.
fn vfork_exec<F: FnOnce() -> Result<(), Errno>>(
    program: &CString,
    argv: &[*const c_char],
    envp: &[*const c_char],
    files: FdTable,
    prepare: F,
) -> Result<(i32, Option<Errno>), SpawnError> {
    // The stack grows down from its (16-byte aligned) end. The thread's stack memory is never
    // resized once made, so the pointer stays valid while the thread lives.
    let top = CHILD_STACK_MEMORY.with_borrow_mut(|stack| {
        if stack.len() < CHILD_STACK {
            *stack = vec![0u8; CHILD_STACK];
        }
        let top = stack.as_mut_ptr().wrapping_add(CHILD_STACK - 64);
        top.wrapping_sub(top as usize % 16)
    });
    let unshare_from = match files {
        FdTable::KeepBelow(from) if unshare_supported() => Some(from.max(3)),
        _ => None,
    };
    let share = if unshare_from.is_some() {
        libc::CLONE_FILES
    } else {
        0
    };
    let mut child = VforkChild {
        unshare_from,
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        prepare: Some(prepare),
        errno: 0,
    };
    let mut saved = SigSet::empty();
    let _ = sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&SigSet::all()),
        Some(&mut saved),
    );
    // With CLONE_FILES the child's first act is to swap the shared fd table for a private
    // copy (`vfork_child`), or to exit if it cannot; the master is suspended meanwhile, so no
    // fd of its table changes under the child, and the child changes none of the master's.
    // Without CLONE_SIGHAND the child's dispositions are its own copy; in a single-threaded
    // process the C library's set-id calls (--user) go straight to the kernel and change only
    // the calling task, the child.
    // SAFETY: the master is single-threaded (DESIGN: no thread in the master); the child runs
    // `vfork_child` on its own stack (this thread's `CHILD_STACK_MEMORY`, which outlives the
    // call and no other child uses meanwhile), and with CLONE_VFORK this returns only once the
    // child has exec'd or exited, so `child` and the stack outlive its use of them.
    let pid = unsafe {
        libc::clone(
            vfork_child::<F>,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | share | libc::SIGCHLD,
            (&mut child as *mut VforkChild<F>).cast(),
        )
    };
    let clone_error = (pid < 0).then(io::Error::last_os_error);
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    if let Some(error) = clone_error {
        return Err(SpawnError::Fork(error));
    }
    let failed = (child.errno != 0).then(|| Errno::from_raw_os_error(child.errno));
    Ok((pid, failed))
}

fn pointers<'a>(items: impl Iterator<Item = *const c_char> + 'a) -> Vec<*const c_char> {
    let mut out: Vec<*const c_char> = items.collect();
    out.push(std::ptr::null());
    out
}

/// Ends a forked child at once: no destructors, no atexit handlers, no stdio flush of the
/// parent's image. Async-signal-safe.
pub(crate) fn exit_child(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and ends this process only.
    unsafe { libc::_exit(code) }
}

/// Whether a worker's set-up or exec failed, told once it has exited: known at the spawn
/// for an exec'd worker, or the parent's end of a forked worker's report pipe.
pub struct ExecWatch(Watch);

enum Watch {
    Known(Option<Errno>),
    Pipe(OwnedFd),
}

impl ExecWatch {
    fn known(failed: Option<Errno>) -> ExecWatch {
        ExecWatch(Watch::Known(failed))
    }

    /// After the worker exited: the errno it reported if its setup or exec failed (on the
    /// pipe, an exec that succeeded closed it without a word).
    pub fn failure(&self) -> Option<io::Error> {
        match &self.0 {
            Watch::Known(failed) => failed.map(io::Error::from),
            Watch::Pipe(read) => {
                let mut bytes = [0u8; 4];
                let n = rustix::io::read(read, &mut bytes).ok()?;
                (n == 4).then(|| io::Error::from_raw_os_error(i32::from_ne_bytes(bytes)))
            }
        }
    }
}

/// The close-on-exec pipe through which a child reports a failed exec.
struct ExecReport {
    read: OwnedFd,
    write: OwnedFd,
}

impl ExecReport {
    fn new() -> Result<ExecReport, SpawnError> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| SpawnError::Fork(e.into()))?;
        Ok(ExecReport { read, write })
    }

    /// In the child: writes errno and exits 127. Async-signal-safe.
    fn fail_and_exit(&self, errno: Errno) -> ! {
        let _ = rustix::io::write(&self.write, &errno.raw_os_error().to_ne_bytes());
        exit_child(127)
    }

    /// In the parent, without waiting: keeps the read end (non-blocking) for later.
    fn into_watch(self) -> ExecWatch {
        // Our copy of the write end closes here; only the child's remains.
        drop(self.write);
        let _ = rustix::fs::fcntl_setfl(&self.read, rustix::fs::OFlags::NONBLOCK);
        ExecWatch(Watch::Pipe(self.read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::WaitStatus;

    fn exit_code(pid: i32) -> i32 {
        match waitpid(Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, code) => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_vforked_child_execs_or_reports_why_not_and_writes_what_it_was_given() {
        let sh = CString::new("/bin/sh").unwrap();
        let args = [
            sh.clone(),
            CString::new("-c").unwrap(),
            CString::new("exit 7").unwrap(),
        ];
        let argv = pointers(args.iter().map(|a| a.as_ptr()));
        let envp = pointers(std::iter::empty());
        let mut written = 0;
        let (pid, failed) = vfork_exec(&sh, &argv, &envp, FdTable::Copy, || {
            written = 42;
            Ok(())
        })
        .unwrap();
        assert_eq!(failed, None);
        assert_eq!(
            written, 42,
            "the child shares the parent's memory until it execs"
        );
        assert_eq!(exit_code(pid), 7);

        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "not a program").unwrap();
        let plain = CString::new(plain.as_os_str().as_bytes()).unwrap();
        let (pid, failed) = vfork_exec(&plain, &argv, &envp, FdTable::Copy, || Ok(())).unwrap();
        assert_eq!(failed, Some(Errno::ACCESS));
        assert_eq!(exit_code(pid), 127);

        let (pid, failed) =
            vfork_exec(&sh, &argv, &envp, FdTable::Copy, || Err(Errno::SRCH)).unwrap();
        assert_eq!(failed, Some(Errno::SRCH));
        assert_eq!(exit_code(pid), 127);
    }

    #[test]
    fn a_worker_leads_its_own_process_group_as_soon_as_its_spawn_returns() {
        let sh = CString::new("/bin/sh").unwrap();
        let args = [
            sh.clone(),
            CString::new("-c").unwrap(),
            CString::new("exec sleep 30").unwrap(),
        ];
        let argv = pointers(args.iter().map(|a| a.as_ptr()));
        let envp = pointers(std::iter::empty());
        let master = process::getpid();
        let (pid, failed) = vfork_exec(&sh, &argv, &envp, FdTable::Copy, || {
            worker_setup(master, None, None, None)
        })
        .unwrap();
        let group = nix::unistd::getpgid(Some(Pid::from_raw(pid)));
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
        assert_eq!(failed, None);
        assert_eq!(group, Ok(Pid::from_raw(pid)), "no group of its own yet");
    }

    #[test]
    fn a_child_that_keeps_only_low_fds_has_none_above_and_touches_none_of_the_masters() {
        if !unshare_supported() {
            return;
        }
        let (read, write) = rustix::pipe::pipe().unwrap();
        // A high fd without close-on-exec: a copied table would hand it to the program.
        let high = rustix::io::fcntl_dupfd_cloexec(&write, 900).unwrap();
        rustix::io::fcntl_setfd(&high, rustix::io::FdFlags::empty()).unwrap();
        let keep = read.as_raw_fd().max(write.as_raw_fd()) + 1;
        let sh = CString::new("/bin/sh").unwrap();
        let script = format!(
            "[ -e /proc/self/fd/{} ] && exit 1; exit 0",
            high.as_raw_fd()
        );
        let args = [
            sh.clone(),
            CString::new("-c").unwrap(),
            CString::new(script).unwrap(),
        ];
        let argv = pointers(args.iter().map(|a| a.as_ptr()));
        let envp = pointers(std::iter::empty());
        let read_fd = read.as_raw_fd();
        let (pid, failed) = vfork_exec(&sh, &argv, &envp, FdTable::KeepBelow(keep), || {
            // SAFETY: the child's own (unshared) copy of the master's read end.
            unsafe { libc::close(read_fd) };
            Ok(())
        })
        .unwrap();
        assert_eq!(failed, None);
        assert_eq!(exit_code(pid), 0, "the child had the high fd");
        // The master's fds are all still there: the child closed its own copy only.
        assert!(rustix::io::fcntl_getfd(&read).is_ok());
        assert!(rustix::io::fcntl_getfd(&high).is_ok());
    }

    #[test]
    fn a_fork_without_exec_is_refused_while_another_thread_runs() {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || stopped.recv());
        let error = ensure_single_threaded().expect_err("two threads at least");
        assert!(
            error
                .to_string()
                .contains("threads: library mode forks only a single-threaded"),
            "{error}"
        );
        stop.send(()).unwrap();
        other.join().unwrap().unwrap();
    }

    #[test]
    fn resolves_on_path_and_reports_missing_and_non_executable() {
        let found = resolve_program(OsStr::new("sh"), Some(OsStr::new("/usr/bin:/bin"))).unwrap();
        assert!(found.ends_with("sh"));
        let missing = resolve_program(OsStr::new("no-such-program-x"), None).unwrap_err();
        assert!(missing.contains("not found"), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let not_exec = resolve_program(file.as_os_str(), None).unwrap_err();
        assert!(not_exec.contains("not executable"), "{not_exec}");
    }
}
