//! gunicorn-style heartbeat files: a file per worker whose ctime the worker bumps (fchmod);
//! the master reads the ctime only when a deadline is due, never on a tick.
//!
//! The master holds no fd per worker for them (at ten thousand workers, the fds are what
//! runs out: `RLIMIT_NOFILE`): each file is named after its worker in a private directory the
//! master keeps open, handed to the worker as an open fd, closed in the master once the
//! worker has it, looked at by name (`fstatat` on the directory fd) and unlinked when the
//! worker is gone. The directory (mode 0700) is removed when the last of its files is.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags};

/// The directory for heartbeat files: the configured one, else [`super::scratch_dir`]
/// (`$TMPDIR` if set, else `/dev/shm`, memory, as gunicorn recommends, else `/tmp`).
pub fn default_dir(configured: Option<&Path>) -> PathBuf {
    match configured {
        Some(dir) => dir.to_path_buf(),
        None => super::scratch_dir(std::env::var_os("TMPDIR").as_deref()),
    }
}

/// The master's private directory of heartbeat files, inside the configured one.
#[derive(Clone)]
pub struct HeartbeatDir(Rc<Private>);

struct Private {
    fd: OwnedFd,
    /// Removed (with anything left in it) when the last holder is dropped.
    _dir: tempfile::TempDir,
}

impl HeartbeatDir {
    /// Makes a private directory (0700) in `parent`.
    pub fn new(parent: &Path) -> io::Result<HeartbeatDir> {
        let dir = tempfile::Builder::new()
            .prefix("arbiter-heartbeat.")
            .tempdir_in(parent)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(HeartbeatDir(Rc::new(Private { fd, _dir: dir })))
    }

    /// Creates the heartbeat file of the worker numbered `key` (close-on-exec, 0600).
    pub fn create(&self, key: u64) -> io::Result<Heartbeat> {
        let name = format!("h{key}");
        let open = || {
            rustix::fs::openat(
                &self.0.fd,
                &name,
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )
        };
        // The directory is this master's own and keys are not reused, so the name is free:
        // a stale file is removed only when one is found (an unlink of a missing name up front
        // was a quarter of this call's cost, on every spawn).
        let fd = match open() {
            Err(rustix::io::Errno::EXIST) => {
                let _ = rustix::fs::unlinkat(&self.0.fd, &name, AtFlags::empty());
                open()?
            }
            opened => opened?,
        };
        let file = File::from(fd);
        let mut heartbeat = Heartbeat {
            dir: self.clone(),
            name,
            file: Some(file),
            last_ctime: Duration::ZERO,
        };
        heartbeat.last_ctime = heartbeat.ctime()?;
        Ok(heartbeat)
    }
}

/// One worker's heartbeat file; unlinked when dropped.
pub struct Heartbeat {
    dir: HeartbeatDir,
    name: String,
    /// Open until the worker has it ([`Heartbeat::release`]).
    file: Option<File>,
    last_ctime: Duration,
}

impl Heartbeat {
    /// The open file, to hand to the worker; `None` once released.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Closes the master's fd: the worker has its own now, and the file is looked at by
    /// name from here on.
    pub fn release(&mut self) {
        self.file = None;
    }

    /// If the worker bumped the file since the last look, how long ago (the caller dates it
    /// on its monotonic clock).
    pub fn check(&mut self) -> Option<Duration> {
        let changed = self.ctime().ok()?;
        if changed == self.last_ctime {
            return None;
        }
        self.last_ctime = changed;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Some(wall.saturating_sub(changed))
    }

    fn ctime(&self) -> io::Result<Duration> {
        let stat = match &self.file {
            Some(file) => rustix::fs::fstat(file.as_fd())?,
            None => rustix::fs::statat(&self.dir.0.fd, &self.name, AtFlags::SYMLINK_NOFOLLOW)?,
        };
        Ok(Duration::new(
            stat.st_ctime.max(0) as u64,
            (stat.st_ctime_nsec as i64).max(0) as u32,
        ))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(&self.dir.0.fd, &self.name, AtFlags::empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_is_seen_once_by_name_after_release_and_dated_no_later_than_now() {
        let parent = tempfile::tempdir().unwrap();
        let dir = HeartbeatDir::new(parent.path()).unwrap();
        let mut heartbeat = dir.create(7).unwrap();
        assert_eq!(heartbeat.check(), None);
        // The worker's own fd; the master's is closed.
        let worker = heartbeat.file().unwrap().try_clone().unwrap();
        heartbeat.release();
        assert!(heartbeat.file().is_none());
        std::thread::sleep(Duration::from_millis(20));
        let bumped = std::time::Instant::now();
        worker
            .set_permissions(std::fs::Permissions::from_mode(0o001))
            .unwrap();
        let age = heartbeat.check().expect("bump seen");
        // Dated at the bump: no older than the time since it, give or take the kernel's coarse
        // clock for ctime (a tick). A fixed 1 s bound measured the machine's load instead.
        let since = bumped.elapsed();
        assert!(
            age <= since + Duration::from_millis(100),
            "{age:?} > {since:?}"
        );
        assert_eq!(heartbeat.check(), None);
    }

    #[test]
    fn files_are_unlinked_with_their_worker_and_the_directory_with_the_last() {
        let parent = tempfile::tempdir().unwrap();
        let entries = || std::fs::read_dir(parent.path()).unwrap().count();
        let dir = HeartbeatDir::new(parent.path()).unwrap();
        let private = std::fs::read_dir(parent.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let first = dir.create(1).unwrap();
        let second = dir.create(2).unwrap();
        assert_eq!(std::fs::read_dir(&private).unwrap().count(), 2);
        drop(first);
        assert_eq!(std::fs::read_dir(&private).unwrap().count(), 1);
        drop(dir);
        assert_eq!(entries(), 1, "a file still held keeps the directory");
        drop(second);
        assert_eq!(entries(), 0);
    }

    #[test]
    fn a_stale_file_at_a_workers_name_is_replaced_by_a_fresh_one() {
        let parent = tempfile::tempdir().unwrap();
        let dir = HeartbeatDir::new(parent.path()).unwrap();
        let private = std::fs::read_dir(parent.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(private.join("h3"), "stale").unwrap();
        let heartbeat = dir.create(3).unwrap();
        let file = heartbeat.file().unwrap().metadata().unwrap();
        assert_eq!(file.len(), 0, "the stale file was reused");
        let named = std::fs::metadata(private.join("h3")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(named.ino(), file.ino(), "the name is not the new file's");
        assert_eq!(file.mode() & 0o777, 0o600);
    }
}
