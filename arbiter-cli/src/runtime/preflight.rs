//! The checks made before anything starts: every path the master will create something in
//! (pidfile, log file, control socket, heartbeat files) is usable. So a start that cannot
//! succeed fails before a listener is bound, a worker spawned or a file written, with one
//! line naming the path and the reason, and leaves nothing behind (exit 1).
//!
//! Limits: a check is a moment's look (`stat`, `access`), not a reservation; what changes
//! between it and the use is still reported then. The default control socket (`PIDFILE.ctl`,
//! `$XDG_RUNTIME_DIR/arbiter.ctl`) is not checked: without one the master only warns.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use nix::unistd::{access, AccessFlags};

use super::StartError;
use crate::config::Settings;
use crate::ops::{self, socket};
use crate::os::pidfile;

/// Checks the paths of `settings` for a master started as `upgrade_child` or not.
pub fn check(
    settings: &Settings,
    env: &[(OsString, OsString)],
    upgrade_child: bool,
) -> Result<(), StartError> {
    if let Some(path) = &settings.pidfile {
        let path = match upgrade_child {
            true => pidfile::upgrade_path(path),
            false => path.clone(),
        };
        // Written as a temp file renamed over it: its directory must take new files.
        file_to_create(&path, &format!("pidfile {}", path.display()), true)?;
    }
    if let Some(path) = settings
        .log_file
        .as_deref()
        .filter(|p| *p != Path::new("-"))
    {
        file_to_create(path, &format!("--log-file {}", path.display()), false)?;
    }
    if let Some(dir) = &settings.worker_tmp_dir {
        writable_dir(dir, &format!("--worker-tmp-dir {}", dir.display()))?;
    }
    if let Some(control) = ops::control_socket(settings, env, upgrade_child) {
        if control.explicit {
            socket::check(&control.bind_at).map_err(|e| StartError::Runtime(e.to_string()))?;
        }
    }
    Ok(())
}

/// A file the master creates or appends to: not a directory, writable if it exists, and in
/// a directory where files can be created if it does not exist or is `replaced` (written
/// anew by a rename), so an existing log file such as `/dev/stderr` needs no writable `/dev`.
fn file_to_create(path: &Path, what: &str, replaced: bool) -> Result<(), StartError> {
    let fail = |why: String| StartError::Runtime(format!("{what}: {why}"));
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(fail("is a directory".into())),
        Ok(_) => {
            access(path, AccessFlags::W_OK)
                .map_err(|e| fail(format!("not writable: {}", io::Error::from(e))))?;
            if !replaced {
                return Ok(());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    writable_dir(parent, what)
}

/// A directory the master creates files in.
fn writable_dir(dir: &Path, what: &str) -> Result<(), StartError> {
    let fail = |why: String| StartError::Runtime(format!("{what}: {why}"));
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(fail(format!("{} is not a directory", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(fail(format!("directory {} does not exist", dir.display())))
        }
        Err(e) => return Err(fail(format!("directory {}: {e}", dir.display()))),
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        fail(format!(
            "directory {} is not writable: {}",
            dir.display(),
            io::Error::from(e)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> Settings {
        Settings {
            pidfile: Some(dir.join("a.pid")),
            log_file: Some(dir.join("a.log")),
            worker_tmp_dir: Some(dir.to_path_buf()),
            control_socket: Some(dir.join("c.ctl")),
            ..Settings::default()
        }
    }

    #[test]
    fn usable_paths_pass_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        check(&settings(dir.path()), &[], false).unwrap();
        check(&settings(dir.path()), &[], true).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn each_unusable_path_is_named_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    pidfile: Some(gone.join("a.pid")),
                    ..settings(dir.path())
                },
                "pidfile",
            ),
            (
                Settings {
                    pidfile: Some(dir.path().to_path_buf()),
                    ..settings(dir.path())
                },
                "is a directory",
            ),
            (
                Settings {
                    log_file: Some(gone.join("a.log")),
                    ..settings(dir.path())
                },
                "--log-file",
            ),
            (
                Settings {
                    worker_tmp_dir: Some(gone.clone()),
                    ..settings(dir.path())
                },
                "--worker-tmp-dir",
            ),
            (
                Settings {
                    worker_tmp_dir: Some(file.clone()),
                    ..settings(dir.path())
                },
                "is not a directory",
            ),
            (
                Settings {
                    control_socket: Some(file.clone()),
                    ..settings(dir.path())
                },
                "not a socket",
            ),
            (
                Settings {
                    control_socket: Some(gone.join("c.ctl")),
                    ..settings(dir.path())
                },
                "control socket",
            ),
        ];
        for (settings, expect) in cases {
            let err = check(&settings, &[], false).unwrap_err();
            let line = err.to_string();
            assert_eq!(err.exit_code(), 1, "{line}");
            assert!(line.contains(expect), "{line:?} lacks {expect:?}");
            assert!(!line.contains('\n'), "{line:?}");
        }
    }
}
