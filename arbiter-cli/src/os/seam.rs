//! The OS seam: the small trait through which the runtime touches processes and files, its
//! real implementation ([`System`]) and a test double ([`FakeOs`]) that records every call, so
//! the shell's own sequencing (peek an exit, kill the group, reap; write, rename and remove
//! pidfiles; start and reap hooks) is tested without forking. The model is tokio's
//! `process/unix/orphan.rs` (`Wait` and its mock).
//!
//! The seam knows nothing of the core: pids are `i32` (negative: a process group), statuses are
//! [`ChildStatus`], time is a [`Duration`] since the seam's origin. The real side owns the
//! process-wide resources (the signal self-pipe), so a test double needs none of them.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arbiter_signals::SignalPipe;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::pidfile::{self, PidfileError, Previous};
use super::procfs;
use super::spawn::{self, ExecWatch, FunctionSpawn, MasterSpawn, SpawnError, WorkerSpawn};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

/// A child that exited (and, after [`Os::peek_exit`], is still a zombie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildExit {
    /// Its pid.
    pub pid: i32,
    /// How it ended.
    pub status: ChildStatus,
}

/// What the runtime asks of the operating system.
pub trait Os {
    /// Monotonic time since this seam was created.
    fn elapsed(&self) -> Duration;
    /// The fd to poll for signals, if there is one (the test double has none).
    fn signal_fd(&self) -> Option<BorrowedFd<'_>>;
    /// The signals that arrived, in arrival order, appended to `into`.
    fn drain_signals(&mut self, into: &mut Vec<Signal>) -> io::Result<()>;
    /// Forks and execs a worker (see [`spawn::spawn_worker`]); its pid, and, for a real
    /// exec, the watch that tells whether the exec failed.
    fn spawn_worker(
        &mut self,
        spawn: WorkerSpawn<'_>,
    ) -> Result<(i32, Option<ExecWatch>), SpawnError>;
    /// Forks a library-mode worker that runs `run` without exec (see
    /// [`spawn::spawn_function`]).
    fn spawn_function(
        &mut self,
        spawn: FunctionSpawn<'_>,
        run: Box<dyn FnOnce(u32) -> i32 + '_>,
    ) -> Result<(i32, Option<ExecWatch>), SpawnError>;
    /// Forks and execs a new master (see [`spawn::spawn_master`]).
    fn spawn_master(&mut self, spawn: MasterSpawn<'_>) -> Result<i32, SpawnError>;
    /// Sends `signal` to `pid` (a negative pid: to that process group).
    fn signal(&mut self, pid: i32, signal: Signal) -> io::Result<()>;
    /// An exited child, left a zombie (`waitid(WNOWAIT)`), so its pid cannot be reused before
    /// [`Os::reap`]; `None` when no child has exited.
    fn peek_exit(&mut self) -> Option<ChildExit>;
    /// Reaps `pid`, which [`Os::peek_exit`] reported.
    fn reap(&mut self, pid: i32) -> Option<ChildExit>;
    /// The parent's pid (an upgrade child watches it to know when to promote itself).
    fn parent_pid(&self) -> i32;
    /// The process group of `pid`, to credit a notify message from a worker's child.
    fn process_group(&self, pid: i32) -> Option<i32>;
    /// The resident bytes of each of these process groups (see [`procfs::group_resident`]);
    /// a group with no process left is absent.
    fn group_resident(&mut self, groups: &[i32]) -> HashMap<i32, u64>;
    /// Writes the pidfile atomically (see [`pidfile::create`]).
    fn write_pidfile(&mut self, path: &Path, pid: u32) -> Result<Previous, PidfileError>;
    /// Renames the pidfile (promotion of an upgrade child).
    fn rename_pidfile(&mut self, from: &Path, to: &Path, pid: u32) -> io::Result<()>;
    /// Removes the pidfile if it still holds `pid`; whether it did.
    fn remove_pidfile(&mut self, path: &Path, pid: u32) -> bool;
    /// Starts a hook as `/bin/sh -c COMMAND` with `env` and `vars`, without waiting; its pid
    /// (the loop reaps it like any child).
    fn start_hook(
        &mut self,
        name: &str,
        command: &str,
        env: &[(OsString, OsString)],
        vars: &[(&str, String)],
    ) -> io::Result<i32>;
}

/// A borrowed seam is a seam: a test keeps its double and looks at it after the runtime is
/// gone.
impl<T: Os + ?Sized> Os for &mut T {
    fn elapsed(&self) -> Duration {
        (**self).elapsed()
    }
    fn signal_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).signal_fd()
    }
    fn drain_signals(&mut self, into: &mut Vec<Signal>) -> io::Result<()> {
        (**self).drain_signals(into)
    }
    fn spawn_worker(
        &mut self,
        spawn: WorkerSpawn<'_>,
    ) -> Result<(i32, Option<ExecWatch>), SpawnError> {
        (**self).spawn_worker(spawn)
    }
    fn spawn_function(
        &mut self,
        spawn: FunctionSpawn<'_>,
        run: Box<dyn FnOnce(u32) -> i32 + '_>,
    ) -> Result<(i32, Option<ExecWatch>), SpawnError> {
        (**self).spawn_function(spawn, run)
    }
    fn spawn_master(&mut self, spawn: MasterSpawn<'_>) -> Result<i32, SpawnError> {
        (**self).spawn_master(spawn)
    }
    fn signal(&mut self, pid: i32, signal: Signal) -> io::Result<()> {
        (**self).signal(pid, signal)
    }
    fn peek_exit(&mut self) -> Option<ChildExit> {
        (**self).peek_exit()
    }
    fn reap(&mut self, pid: i32) -> Option<ChildExit> {
        (**self).reap(pid)
    }
    fn parent_pid(&self) -> i32 {
        (**self).parent_pid()
    }
    fn process_group(&self, pid: i32) -> Option<i32> {
        (**self).process_group(pid)
    }
    fn group_resident(&mut self, groups: &[i32]) -> HashMap<i32, u64> {
        (**self).group_resident(groups)
    }
    fn write_pidfile(&mut self, path: &Path, pid: u32) -> Result<Previous, PidfileError> {
        (**self).write_pidfile(path, pid)
    }
    fn rename_pidfile(&mut self, from: &Path, to: &Path, pid: u32) -> io::Result<()> {
        (**self).rename_pidfile(from, to, pid)
    }
    fn remove_pidfile(&mut self, path: &Path, pid: u32) -> bool {
        (**self).remove_pidfile(path, pid)
    }
    fn start_hook(
        &mut self,
        name: &str,
        command: &str,
        env: &[(OsString, OsString)],
        vars: &[(&str, String)],
    ) -> io::Result<i32> {
        (**self).start_hook(name, command, env, vars)
    }
}

/// The real operating system: this process, its children and its signal handlers.
pub struct System {
    origin: Instant,
    signals: SignalPipe,
}

impl System {
    /// The seam over this process: installs the signal self-pipe (once per process); its
    /// clock starts now.
    pub fn new() -> Result<System, arbiter_signals::Error> {
        Ok(System {
            origin: Instant::now(),
            signals: SignalPipe::install()?,
        })
    }
}

fn child_exit(status: WaitStatus) -> Option<ChildExit> {
    match status {
        WaitStatus::Exited(pid, code) => Some(ChildExit {
            pid: pid.as_raw(),
            status: ChildStatus::Exited(code),
        }),
        WaitStatus::Signaled(pid, signal, core_dumped) => Some(ChildExit {
            pid: pid.as_raw(),
            status: ChildStatus::Signaled {
                signal: signal as i32,
                core_dumped,
            },
        }),
        _ => None,
    }
}

impl Os for System {
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }

    fn signal_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.signals.fd())
    }

    fn drain_signals(&mut self, into: &mut Vec<Signal>) -> io::Result<()> {
        self.signals.drain(into).map_err(io::Error::other)
    }

    fn spawn_worker(
        &mut self,
        spawn: WorkerSpawn<'_>,
    ) -> Result<(i32, Option<ExecWatch>), SpawnError> {
        spawn::spawn_worker(spawn, &self.signals).map(|(pid, exec)| (pid, Some(exec)))
    }

    fn spawn_function(
        &mut self,
        spawn: FunctionSpawn<'_>,
        run: Box<dyn FnOnce(u32) -> i32 + '_>,
    ) -> Result<(i32, Option<ExecWatch>), SpawnError> {
        spawn::spawn_function(spawn, &self.signals, run).map(|(pid, exec)| (pid, Some(exec)))
    }

    fn spawn_master(&mut self, spawn: MasterSpawn<'_>) -> Result<i32, SpawnError> {
        spawn::spawn_master(spawn, &self.signals)
    }

    fn signal(&mut self, pid: i32, signal: Signal) -> io::Result<()> {
        kill(Pid::from_raw(pid), signal).map_err(io::Error::from)
    }

    fn peek_exit(&mut self) -> Option<ChildExit> {
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            match waitid(Id::All, peek) {
                Ok(WaitStatus::StillAlive) | Err(_) => return None,
                Ok(status) => {
                    if let Some(exit) = child_exit(status) {
                        return Some(exit);
                    }
                    // A stop or continue report: nothing to reap; look again.
                }
            }
        }
    }

    fn reap(&mut self, pid: i32) -> Option<ChildExit> {
        waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
            .ok()
            .and_then(child_exit)
    }

    fn parent_pid(&self) -> i32 {
        nix::unistd::getppid().as_raw()
    }

    fn process_group(&self, pid: i32) -> Option<i32> {
        nix::unistd::getpgid(Some(Pid::from_raw(pid)))
            .ok()
            .map(Pid::as_raw)
    }

    fn group_resident(&mut self, groups: &[i32]) -> HashMap<i32, u64> {
        procfs::group_resident(groups)
    }

    fn write_pidfile(&mut self, path: &Path, pid: u32) -> Result<Previous, PidfileError> {
        pidfile::create(path, pid)
    }

    fn rename_pidfile(&mut self, from: &Path, to: &Path, pid: u32) -> io::Result<()> {
        pidfile::rename(from, to, pid)
    }

    fn remove_pidfile(&mut self, path: &Path, pid: u32) -> bool {
        pidfile::remove_if_ours(path, pid)
    }

    fn start_hook(
        &mut self,
        name: &str,
        command: &str,
        env: &[(OsString, OsString)],
        vars: &[(&str, String)],
    ) -> io::Result<i32> {
        let child = super::hooks::start(name, command, env, vars)?;
        // The loop reaps it with waitid/waitpid; dropping `Child` neither waits nor kills.
        Ok(child.id() as i32)
    }
}

/// One call the runtime made, as [`FakeOs`] recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`Os::signal`].
    Signal(i32, Signal),
    /// [`Os::peek_exit`] that found this child.
    Peek(i32),
    /// [`Os::reap`].
    Reap(i32),
    /// [`Os::write_pidfile`].
    WritePidfile(PathBuf),
    /// [`Os::rename_pidfile`].
    RenamePidfile(PathBuf, PathBuf),
    /// [`Os::remove_pidfile`].
    RemovePidfile(PathBuf),
    /// [`Os::start_hook`]: its name and the pid it got.
    StartHook(String, i32),
    /// [`Os::spawn_worker`]: the program and the pid it got.
    SpawnWorker(String, i32),
    /// [`Os::spawn_master`]: the pid it got.
    SpawnMaster(i32),
    /// [`Os::group_resident`]: the groups asked about.
    GroupResident(Vec<i32>),
}

/// A scripted operating system: exits are queued by the test, every call is recorded, files
/// live in a map, time advances only when the test says.
#[derive(Debug, Default)]
pub struct FakeOs {
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// Children that have exited and wait to be peeked at.
    pub exits: VecDeque<ChildExit>,
    /// Zombies: peeked, not yet reaped.
    zombies: Vec<ChildExit>,
    /// The clock.
    pub now: Duration,
    /// The parent's pid.
    pub parent: i32,
    /// Pidfiles by path, with the pid each holds.
    pub pidfiles: Vec<(PathBuf, u32)>,
    /// Paths whose pidfile write fails.
    pub unwritable: Vec<PathBuf>,
    /// The next pid handed out (hooks).
    pub next_pid: i32,
    /// Live pids: a signal to any other pid fails with ESRCH, as the kernel's would.
    pub live: Vec<i32>,
    /// Signals that arrived and wait to be drained.
    pub signals: Vec<Signal>,
    /// Whether forking fails (out of processes).
    pub fork_fails: bool,
    /// Resident bytes by process group, for [`Os::group_resident`].
    pub resident: HashMap<i32, u64>,
    /// How long each spawn takes on the clock (a vfork waits for its child's exec).
    pub spawn_takes: Duration,
    /// Whether the workers talk while spawns go on: at each spawn, every worker spawned
    /// before sends `WATCHDOG=1` on its `NOTIFY_SOCKET` (non-blocking) and the one spawned
    /// just before sends `READY=1` first.
    pub chatter: bool,
    /// The workers' notify sockets (`NOTIFY_SOCKET`), in spawn order.
    pub notify_paths: Vec<PathBuf>,
    /// Datagrams of [`FakeOs::chatter`] that found the queue full (`EAGAIN`).
    pub refused: usize,
}

impl FakeOs {
    /// An empty world whose first hook gets pid 1000.
    pub fn new() -> FakeOs {
        FakeOs {
            next_pid: 1000,
            parent: 1,
            ..FakeOs::default()
        }
    }

    /// The next pid, marked live.
    fn allocate_pid(&mut self) -> i32 {
        let pid = self.next_pid;
        self.next_pid += 1;
        self.live.push(pid);
        pid
    }

    /// One round of [`FakeOs::chatter`].
    fn chat(&mut self) {
        let socket = std::os::unix::net::UnixDatagram::unbound().expect("a datagram socket");
        socket.set_nonblocking(true).expect("non-blocking");
        let last = self.notify_paths.len().saturating_sub(1);
        for (i, path) in self.notify_paths.iter().enumerate() {
            let ready = (i == last).then_some(&b"READY=1"[..]);
            for message in ready.into_iter().chain([&b"WATCHDOG=1"[..]]) {
                if let Err(e) = socket.send_to(message, path) {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                    self.refused += 1;
                }
            }
        }
    }

    /// `pid` exits with `status`: the next [`Os::peek_exit`] reports it.
    pub fn exit(&mut self, pid: i32, status: ChildStatus) {
        self.live.retain(|p| *p != pid);
        self.exits.push_back(ChildExit { pid, status });
    }
}

impl Os for FakeOs {
    fn elapsed(&self) -> Duration {
        self.now
    }

    fn signal_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn drain_signals(&mut self, into: &mut Vec<Signal>) -> io::Result<()> {
        into.append(&mut self.signals);
        Ok(())
    }

    fn spawn_worker(
        &mut self,
        spawn: WorkerSpawn<'_>,
    ) -> Result<(i32, Option<ExecWatch>), SpawnError> {
        if self.fork_fails {
            return Err(SpawnError::Fork(io::Error::from_raw_os_error(
                nix::errno::Errno::EAGAIN as i32,
            )));
        }
        let pid = self.allocate_pid();
        let program = spawn.program.to_string_lossy().into_owned();
        self.calls.push(Call::SpawnWorker(program, pid));
        self.now += self.spawn_takes;
        if self.chatter {
            self.chat();
        }
        if let Some(path) = spawn.env.iter().find_map(|entry| {
            let text = entry.to_str().ok()?;
            text.strip_prefix("NOTIFY_SOCKET=").map(PathBuf::from)
        }) {
            self.notify_paths.push(path);
        }
        Ok((pid, None))
    }

    fn spawn_function(
        &mut self,
        _spawn: FunctionSpawn<'_>,
        _run: Box<dyn FnOnce(u32) -> i32 + '_>,
    ) -> Result<(i32, Option<ExecWatch>), SpawnError> {
        let pid = self.allocate_pid();
        self.calls
            .push(Call::SpawnWorker("(function)".to_owned(), pid));
        Ok((pid, None))
    }

    fn spawn_master(&mut self, _spawn: MasterSpawn<'_>) -> Result<i32, SpawnError> {
        let pid = self.allocate_pid();
        self.calls.push(Call::SpawnMaster(pid));
        Ok(pid)
    }

    fn signal(&mut self, pid: i32, signal: Signal) -> io::Result<()> {
        self.calls.push(Call::Signal(pid, signal));
        let zombie = self.zombies.iter().any(|z| z.pid == pid.abs());
        if self.live.contains(&pid.abs()) || zombie {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc_esrch()))
        }
    }

    fn peek_exit(&mut self) -> Option<ChildExit> {
        if let Some(zombie) = self.zombies.first() {
            return Some(*zombie);
        }
        let exit = self.exits.pop_front()?;
        self.calls.push(Call::Peek(exit.pid));
        self.zombies.push(exit);
        Some(exit)
    }

    fn reap(&mut self, pid: i32) -> Option<ChildExit> {
        self.calls.push(Call::Reap(pid));
        let at = self.zombies.iter().position(|z| z.pid == pid)?;
        Some(self.zombies.remove(at))
    }

    fn parent_pid(&self) -> i32 {
        self.parent
    }

    fn process_group(&self, pid: i32) -> Option<i32> {
        self.live.contains(&pid).then_some(pid)
    }

    fn group_resident(&mut self, groups: &[i32]) -> HashMap<i32, u64> {
        self.calls.push(Call::GroupResident(groups.to_vec()));
        groups
            .iter()
            .filter_map(|group| self.resident.get(group).map(|bytes| (*group, *bytes)))
            .collect()
    }

    fn write_pidfile(&mut self, path: &Path, pid: u32) -> Result<Previous, PidfileError> {
        self.calls.push(Call::WritePidfile(path.to_path_buf()));
        if self.unwritable.iter().any(|p| p == path) {
            return Err(PidfileError::Io {
                path: path.to_path_buf(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            });
        }
        self.pidfiles.retain(|(p, _)| p != path);
        self.pidfiles.push((path.to_path_buf(), pid));
        Ok(Previous::None)
    }

    fn rename_pidfile(&mut self, from: &Path, to: &Path, pid: u32) -> io::Result<()> {
        self.calls
            .push(Call::RenamePidfile(from.to_path_buf(), to.to_path_buf()));
        let at = self
            .pidfiles
            .iter()
            .position(|(p, held)| p == from && *held == pid)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        self.pidfiles.remove(at);
        self.pidfiles.retain(|(p, _)| p != to);
        self.pidfiles.push((to.to_path_buf(), pid));
        Ok(())
    }

    fn remove_pidfile(&mut self, path: &Path, pid: u32) -> bool {
        self.calls.push(Call::RemovePidfile(path.to_path_buf()));
        let before = self.pidfiles.len();
        self.pidfiles
            .retain(|(p, held)| !(p == path && *held == pid));
        self.pidfiles.len() != before
    }

    fn start_hook(
        &mut self,
        name: &str,
        _command: &str,
        _env: &[(OsString, OsString)],
        _vars: &[(&str, String)],
    ) -> io::Result<i32> {
        let pid = self.allocate_pid();
        self.calls.push(Call::StartHook(name.to_owned(), pid));
        Ok(pid)
    }
}

/// `ESRCH`, as the kernel answers a signal to a pid that is gone.
fn libc_esrch() -> i32 {
    nix::errno::Errno::ESRCH as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_keeps_a_peeked_child_a_zombie_until_it_is_reaped() {
        let mut os = FakeOs::new();
        os.live.push(42);
        os.exit(42, ChildStatus::Exited(3));
        let peeked = os.peek_exit().expect("the exit is reported");
        assert_eq!(peeked.pid, 42);
        // Still a zombie: the group can be signalled, the same exit is reported again.
        assert!(os.signal(-42, Signal::SIGKILL).is_ok());
        assert_eq!(os.peek_exit(), Some(peeked));
        assert_eq!(os.reap(42), Some(peeked));
        assert_eq!(os.peek_exit(), None);
        assert!(
            os.signal(-42, Signal::SIGKILL).is_err(),
            "gone after the reap"
        );
        assert_eq!(
            os.calls,
            vec![
                Call::Peek(42),
                Call::Signal(-42, Signal::SIGKILL),
                Call::Reap(42),
                Call::Signal(-42, Signal::SIGKILL)
            ]
        );
    }
}
