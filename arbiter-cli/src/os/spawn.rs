//! Fork and exec: workers (with the hand-off plan) and the re-exec'd master (USR2).
//!
//! Everything that allocates happens before `fork`. Between `fork` and `exec` the child only
//! makes async-signal-safe calls on memory prepared in advance: no allocation, no lock, no
//! logging. An exec failure is reported to the parent through a close-on-exec pipe (the
//! errno, four bytes); EOF on that pipe means the exec succeeded.

use std::ffi::{c_char, CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use arbiter_signals::SignalPipe;
use arbiter_sockets::{HandoffPlan, PidEnvSlot};

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
    /// `KEY=VALUE` entries (besides the plan's and the watchdog pid's).
    pub env: Vec<CString>,
    /// The fds and `LISTEN_*` variables.
    pub plan: HandoffPlan,
    /// `WATCHDOG_PID=` filled with the worker's pid, when a watchdog is set.
    pub watchdog_pid: Option<PidEnvSlot>,
    /// The master's signal pipe, reset in the child.
    pub signals: &'a SignalPipe,
    /// Put on the child's fd 1 (output capture); `None` inherits the master's stdout.
    pub stdout_fd: Option<RawFd>,
    /// Put on the child's fd 2 (output capture); `None` inherits the master's stderr.
    pub stderr_fd: Option<RawFd>,
}

/// Forks and execs a worker in its own process group, with default signal dispositions, an
/// empty mask, a parent-death signal, and only fds 0-2 plus the plan's. Returns its pid at
/// once, without waiting for the exec (so the master stays free to take signals), and the
/// watch that tells, once the worker has exited, whether its exec failed.
pub fn spawn_worker(mut spawn: WorkerSpawn<'_>) -> Result<(i32, ExecWatch), SpawnError> {
    let argv = pointers(spawn.argv.iter().map(|a| a.as_ptr()));
    let envp = {
        let mut entries: Vec<*const c_char> = spawn.env.iter().map(|e| e.as_ptr()).collect();
        entries.extend(spawn.plan.env_pointers());
        if let Some(slot) = &spawn.watchdog_pid {
            entries.push(slot.as_ptr());
        }
        entries.push(std::ptr::null());
        entries
    };
    // SAFETY: getpid cannot fail; read before the fork so the child can compare getppid.
    let master = unsafe { libc::getpid() };
    let (pid, report) = fork_exec(spawn.program, &argv, &envp, || {
        spawn.signals.child_reset();
        // SAFETY: plain syscalls on this process; dup2 onto 1 and 2 of fds opened before the
        // fork (the copies are not close-on-exec; the originals are).
        let setup = unsafe {
            libc::setpgid(0, 0) == 0
                && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == 0
                && libc::getppid() == master
                && spawn.stdout_fd.is_none_or(|fd| libc::dup2(fd, 1) == 1)
                && spawn.stderr_fd.is_none_or(|fd| libc::dup2(fd, 2) == 2)
        };
        if !setup {
            return false;
        }
        if let Some(slot) = spawn.watchdog_pid.as_mut() {
            // SAFETY: getpid is async-signal-safe.
            slot.fill(unsafe { libc::getpid() } as u32);
        }
        // SAFETY: we are the forked child, and exec or _exit follows.
        unsafe { spawn.plan.apply_in_child() }.is_ok()
    })?;
    // The child makes itself a group leader too; doing it here as well means the group exists
    // as soon as fork returns, whichever runs first (EACCES once it has exec'd is fine).
    // SAFETY: setpgid on our own child.
    unsafe { libc::setpgid(pid, pid) };
    Ok((pid, report.into_watch()))
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
    pub listener_fds: &'a [RawFd],
    /// The directory the first master was started in: the new one starts there too, so its
    /// argv means what it meant (gunicorn's reexec does the same).
    pub cwd: &'a CString,
    /// The master's signal pipe, reset in the child.
    pub signals: &'a SignalPipe,
}

/// Forks and execs a new master that inherits the listeners at their fd numbers.
pub fn spawn_master(spawn: MasterSpawn<'_>) -> Result<i32, SpawnError> {
    let argv = pointers(spawn.argv.iter().map(|a| a.as_ptr()));
    let envp = pointers(spawn.env.iter().map(|e| e.as_ptr()));
    let (pid, report) = fork_exec(spawn.program, &argv, &envp, || {
        spawn.signals.child_reset();
        // SAFETY: we are the forked child; chdir to a C string prepared before the fork, and
        // fcntl on fd numbers: both async-signal-safe.
        unsafe {
            libc::chdir(spawn.cwd.as_ptr()) == 0
                && arbiter_sockets::clear_cloexec_in_child(spawn.listener_fds).is_ok()
        }
    })?;
    report.wait(pid, spawn.program)
}

/// Forks; the child runs `prepare` (async-signal-safe and allocation-free: it runs between
/// fork and exec), then execs `program`. Returns the child's pid and the pipe on which it
/// reports a failed `prepare` or exec.
fn fork_exec(
    program: &CString,
    argv: &[*const c_char],
    envp: &[*const c_char],
    prepare: impl FnOnce() -> bool,
) -> Result<(i32, ExecReport), SpawnError> {
    let report = ExecReport::new()?;
    // Every signal is blocked across the fork: a signal sent to the child before it has reset
    // its dispositions would otherwise run the master's handler there, which writes into the
    // master's signal pipe and swallows the signal (a TERM to a just-spawned worker was lost
    // so). The child unblocks once its dispositions are the defaults (`child_reset`), so such
    // a signal then acts on it; the parent restores its mask at once, losing nothing.
    // SAFETY: sigset_t is plain data that sigfillset initialises; sigprocmask with valid
    // pointers.
    let saved = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut saved: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, &mut saved);
        saved
    };
    // SAFETY: the master is single-threaded when it forks (DESIGN: no thread in the master),
    // so the child may run async-signal-safe code until exec.
    let pid = unsafe { libc::fork() };
    let fork_error = (pid < 0).then(io::Error::last_os_error);
    if pid != 0 {
        // SAFETY: restoring the mask saved above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
    }
    if let Some(error) = fork_error {
        // SAFETY: closing both ends of the pipe we created; no child holds them.
        unsafe {
            libc::close(report.read);
            libc::close(report.write);
        }
        return Err(SpawnError::Fork(error));
    }
    if pid == 0 {
        if prepare() {
            // SAFETY: program, argv and envp are NUL-terminated arrays of C strings prepared
            // before the fork; they live until exec replaces this image.
            unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        }
        report.fail_and_exit();
    }
    Ok((pid, report))
}

fn pointers<'a>(items: impl Iterator<Item = *const c_char> + 'a) -> Vec<*const c_char> {
    let mut out: Vec<*const c_char> = items.collect();
    out.push(std::ptr::null());
    out
}

/// The parent's end of a worker's exec report, kept until the worker exits.
pub struct ExecWatch {
    read: std::os::fd::OwnedFd,
}

impl ExecWatch {
    /// After the worker exited: the errno it reported if its setup or exec failed (an exec
    /// that succeeded closed the pipe without a word).
    pub fn failure(&self) -> Option<io::Error> {
        let mut bytes = [0u8; 4];
        // SAFETY: a non-blocking read into a stack buffer from a pipe we own.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.read),
                bytes.as_mut_ptr().cast(),
                bytes.len(),
            )
        };
        (n == 4).then(|| io::Error::from_raw_os_error(i32::from_ne_bytes(bytes)))
    }
}

/// The close-on-exec pipe through which a child reports a failed exec.
struct ExecReport {
    read: RawFd,
    write: RawFd,
}

impl ExecReport {
    fn new() -> Result<ExecReport, SpawnError> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(SpawnError::Fork(io::Error::last_os_error()));
        }
        Ok(ExecReport {
            read: fds[0],
            write: fds[1],
        })
    }

    /// In the child: writes errno and exits 127. Async-signal-safe.
    fn fail_and_exit(&self) -> ! {
        // SAFETY: __errno_location, write and _exit are async-signal-safe; the buffer is on
        // the stack.
        unsafe {
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(self.write, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    }

    /// In the parent, without waiting: keeps the read end (non-blocking) for later.
    fn into_watch(self) -> ExecWatch {
        // SAFETY: closing our copy of the write end (only the child's remains), making the
        // read end non-blocking, and taking ownership of it.
        unsafe {
            libc::close(self.write);
            libc::fcntl(self.read, libc::F_SETFL, libc::O_NONBLOCK);
            ExecWatch {
                read: std::os::fd::FromRawFd::from_raw_fd(self.read),
            }
        }
    }

    /// In the parent: EOF means exec succeeded; four bytes are the child's errno, and the
    /// child is reaped here so it never reaches the worker table.
    fn wait(self, pid: i32, program: &CString) -> Result<i32, SpawnError> {
        // SAFETY: closing our copy of the write end so EOF arrives once the child execs.
        unsafe { libc::close(self.write) };
        let mut bytes = [0u8; 4];
        let mut got = 0;
        while got < bytes.len() {
            // SAFETY: reading into the remaining part of a stack buffer.
            let n = unsafe {
                libc::read(
                    self.read,
                    bytes[got..].as_mut_ptr().cast(),
                    bytes.len() - got,
                )
            };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        // SAFETY: closing the read end we own.
        unsafe { libc::close(self.read) };
        if got == 0 {
            return Ok(pid);
        }
        let mut status = 0;
        // SAFETY: reaping our own child, which is exiting.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        Err(SpawnError::Exec {
            program: program.to_string_lossy().into_owned(),
            error: io::Error::from_raw_os_error(i32::from_ne_bytes(bytes)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
