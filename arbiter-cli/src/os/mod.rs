//! The OS seam's real side: spawning (fork and exec), reaping, the notify socket, heartbeat
//! files, the pidfile, the process title, daemonizing, and the workers' memory (`/proc`).
//!
//! Model: tokio's `process/unix`: small wrappers that carry out what the runtime was told to
//! do and report what the kernel said. Nothing here decides: no policy, no deadlines. The
//! `unsafe` of the runtime lives in `spawn` (fork, execve, the child's fd and signal set-up)
//! and in `beat_filter` (the `bpf(2)` call), each block with its `SAFETY` reasoning.

pub mod beat_filter;
pub mod daemon;
pub mod heartbeat;
pub mod hooks;
pub mod identity;
pub mod limits;
pub mod notify;
pub mod pidfile;
pub mod procfs;
pub mod seam;
pub mod spawn;
pub mod title;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The directory for the master's many small files when none is configured (heartbeat files,
/// notify sockets): `$TMPDIR` when it is set (the user chose it), else `/dev/shm` when it is
/// writable (memory: a file or socket is made per worker spawned, and on a disk file system
/// each is a journaled inode, 1.26 ms per bind on a loaded ext4 `/tmp` here against 0.09 ms),
/// else `/tmp`.
pub fn scratch_dir(tmpdir: Option<&OsStr>) -> PathBuf {
    if let Some(dir) = tmpdir.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && rustix::fs::access(shm, rustix::fs::Access::WRITE_OK).is_ok() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dir_is_tmpdir_when_set_else_memory_or_tmp() {
        let chosen = scratch_dir(Some(OsStr::new("/srv/app/tmp")));
        assert_eq!(chosen, Path::new("/srv/app/tmp"));
        let fallback = scratch_dir(Some(OsStr::new("")));
        assert_eq!(fallback, scratch_dir(None), "an empty TMPDIR is unset");
        assert!(fallback.is_dir());
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && rustix::fs::access(shm, rustix::fs::Access::WRITE_OK).is_ok() {
            assert_eq!(fallback, shm);
        }
    }
}
