//! gunicorn-style heartbeat files: an unlinked temp file per worker whose ctime the worker
//! bumps (fchmod); the master reads the ctime only when a deadline is due, never on a tick.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The directory for heartbeat files: the configured one, else `/dev/shm` (memory, as
/// gunicorn recommends), else the system temp dir.
pub fn default_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempfile_in(shm).is_ok() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// One worker's heartbeat file.
pub struct Heartbeat {
    file: File,
    last_ctime: Duration,
}

impl Heartbeat {
    /// An unnamed (already unlinked), close-on-exec file in `dir`.
    pub fn create(dir: &Path) -> io::Result<Heartbeat> {
        let file = tempfile::tempfile_in(dir)?;
        let last_ctime = ctime(&file)?;
        Ok(Heartbeat { file, last_ctime })
    }

    /// The file, to hand to the worker.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// If the worker bumped the file since the last look, how long ago (the caller dates it
    /// on its monotonic clock).
    pub fn check(&mut self) -> Option<Duration> {
        let changed = ctime(&self.file).ok()?;
        if changed == self.last_ctime {
            return None;
        }
        self.last_ctime = changed;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Some(wall.saturating_sub(changed))
    }
}

fn ctime(file: &File) -> io::Result<Duration> {
    let meta = file.metadata()?;
    Ok(Duration::new(
        meta.ctime().max(0) as u64,
        meta.ctime_nsec().max(0) as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_bump_is_seen_once_and_dated_no_later_than_now() {
        let dir = tempfile::tempdir().unwrap();
        let mut heartbeat = Heartbeat::create(dir.path()).unwrap();
        assert_eq!(heartbeat.check(), None);
        std::thread::sleep(Duration::from_millis(20));
        heartbeat
            .file()
            .set_permissions(std::fs::Permissions::from_mode(0o001))
            .unwrap();
        let age = heartbeat.check().expect("bump seen");
        assert!(age < Duration::from_secs(1), "{age:?}");
        assert_eq!(heartbeat.check(), None);
    }
}
