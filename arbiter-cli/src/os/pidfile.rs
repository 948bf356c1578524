//! The pidfile: written atomically (temp file in the same directory, then rename), never
//! through a symlink; a live arbiter's pidfile refuses the start; a stale one is replaced;
//! removed at exit only if it still holds our pid.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the pidfile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    /// Another arbiter is running.
    #[error("already running as PID {pid} (pidfile {path})")]
    AlreadyRunning {
        /// Its pid.
        pid: i32,
        /// The pidfile.
        path: PathBuf,
    },
    /// An I/O error on the pidfile.
    #[error("pidfile {path}: {source}")]
    Io {
        /// The pidfile.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// What was found at the pidfile's path before writing it.
#[derive(Debug, PartialEq, Eq)]
pub enum Previous {
    /// Nothing.
    None,
    /// A pidfile naming a dead process, garbage, or a live process that is not an arbiter.
    Stale(String),
}

/// Reads the pid in a pidfile, if it holds one.
pub fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

/// Whether `pid` is a live process that looks like an arbiter master.
pub fn is_live_arbiter(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
            let named = |s: &[u8]| {
                let text = String::from_utf8_lossy(s);
                text.contains("arbiter")
            };
            let exe_named = exe
                .as_deref()
                .and_then(|p| p.file_name())
                .is_some_and(|name| name.to_string_lossy().contains("arbiter"));
            // A re-titled master shows "master [NAME]" (or "master.2 [NAME]") in argv[0]; a zombie has no cmdline.
            !cmdline.is_empty()
                && (named(argv0)
                    || exe_named
                    || (argv0.starts_with(b"master [") || argv0.starts_with(b"master.2 [")))
        }
        Err(_) => false,
    }
}

/// Checks the path for a live arbiter and writes `pid` there atomically.
pub fn create(path: &Path, pid: u32) -> Result<Previous, PidfileError> {
    let io_err = |source| PidfileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut previous = Previous::None;
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            let text = fs::read_to_string(path).unwrap_or_default();
            match read_pid(path) {
                Some(old)
                    if old as u32 != pid
                        && !meta.file_type().is_symlink()
                        && is_live_arbiter(old) =>
                {
                    return Err(PidfileError::AlreadyRunning {
                        pid: old,
                        path: path.to_path_buf(),
                    })
                }
                _ => previous = Previous::Stale(text.trim().chars().take(40).collect()),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    write_atomically(path, pid).map_err(io_err)?;
    Ok(previous)
}

fn write_atomically(path: &Path, pid: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{pid}.tmp"));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&temp)?;
        // No fsync: the rename makes the content appear atomically, and a pid means nothing
        // after a crash of the machine; an fsync would stall the master's loop on a busy disk.
        writeln!(file, "{pid}")?;
        // rename replaces a symlink at `path` itself, never the file it points to.
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Renames `from` to `to` (promotion of `PIDFILE.2`), if `from` holds our pid.
pub fn rename(from: &Path, to: &Path, pid: u32) -> io::Result<()> {
    if read_pid(from) != Some(pid as i32) {
        return Err(io::Error::other(format!(
            "{} does not hold pid {pid}",
            from.display()
        )));
    }
    fs::rename(from, to)
}

/// Removes the pidfile if it still holds `pid`.
pub fn remove_if_ours(path: &Path, pid: u32) -> bool {
    if read_pid(path) == Some(pid as i32) {
        fs::remove_file(path).is_ok()
    } else {
        false
    }
}

/// `PIDFILE.2`: where an upgrade child writes its pid until promoted.
pub fn upgrade_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".2");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_then_removes_only_our_own_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pid");
        assert_eq!(create(&path, 4242).unwrap(), Previous::None);
        assert_eq!(read_pid(&path), Some(4242));
        assert!(!remove_if_ours(&path, 4243));
        assert!(path.exists());
        assert!(remove_if_ours(&path, 4242));
        assert!(!path.exists());
    }

    #[test]
    fn garbage_and_dead_pids_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pid");
        fs::write(&path, "not a pid\n").unwrap();
        assert!(matches!(create(&path, 77).unwrap(), Previous::Stale(_)));
        // A pid far above pid_max's default is never alive.
        fs::write(&path, "99999999\n").unwrap();
        assert!(matches!(create(&path, 77).unwrap(), Previous::Stale(_)));
        assert_eq!(read_pid(&path), Some(77));
    }

    #[test]
    fn a_live_process_that_is_not_an_arbiter_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pid");
        // pid 1 is alive and is not an arbiter (in a container it may be; skip then).
        if is_live_arbiter(1) {
            return;
        }
        fs::write(&path, "1\n").unwrap();
        assert!(matches!(create(&path, 77).unwrap(), Previous::Stale(_)));
    }

    #[test]
    fn a_symlink_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        fs::write(&target, "precious").unwrap();
        let path = dir.path().join("a.pid");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        create(&path, 55).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(read_pid(&path), Some(55));
    }

    #[test]
    fn upgrade_path_appends_dot_two() {
        assert_eq!(
            upgrade_path(Path::new("/run/a.pid")),
            PathBuf::from("/run/a.pid.2")
        );
    }
}
