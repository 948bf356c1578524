//! Binding the control socket safely, and unlinking it only while it is still ours.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::ControlError;

/// The identity of a file, to unlink it at exit only if it is still ours.
pub type Identity = (u64, u64);

/// What [`check`] found at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing: the socket can be created.
    Nothing,
    /// A socket nobody listens on (left by a master that died): [`bind`] replaces it.
    Stale,
}

/// The safety checks of [`bind`], changing nothing: the parent directory exists, is writable
/// and is not world-writable without the sticky bit; nothing but a stale socket is in the
/// way (a live one is refused).
pub fn check(path: &Path) -> Result<Found, ControlError> {
    let refuse = |why: String| ControlError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::metadata(parent)
        .map_err(|e| refuse(format!("parent directory {}: {e}", parent.display())))?;
    if !dir.is_dir() {
        return Err(refuse(format!("{} is not a directory", parent.display())));
    }
    if dir.mode() & 0o002 != 0 && dir.mode() & 0o1000 == 0 {
        return Err(refuse(format!(
            "parent directory {} is world-writable without the sticky bit",
            parent.display()
        )));
    }
    let access = nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK;
    nix::unistd::access(parent, access).map_err(|e| {
        refuse(format!(
            "parent directory {} is not writable: {}",
            parent.display(),
            io::Error::from(e)
        ))
    })?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            Err(refuse("a file that is not a socket is in the way".into()))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(refuse("a live process listens on it".into())),
            Err(_) => Ok(Found::Stale),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Nothing),
        Err(e) => Err(refuse(e.to_string())),
    }
}

/// Binds a listening unix socket at `path` with mode 0600 after the checks of [`check`],
/// replacing a stale socket. Returns the listener and the file's identity.
pub fn bind(path: &Path) -> Result<(UnixListener, Identity), ControlError> {
    if check(path)? == Found::Stale {
        std::fs::remove_file(path).map_err(|e| ControlError::Unsafe {
            path: path.to_path_buf(),
            why: format!("removing stale: {e}"),
        })?;
    }
    // Single-threaded master: the umask change is seen by nothing else.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((listener, (meta.dev(), meta.ino())))
}

/// Whether the file at `path` is still the socket with this identity.
pub fn is_ours(path: &Path, identity: Identity) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn binds_0600_refuses_live_and_foreign_files_and_replaces_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ctl");
        let (listener, identity) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(is_ours(&path, identity));
        let live = bind(&path).unwrap_err().to_string();
        assert!(live.contains("live"), "{live}");
        drop(listener);
        // The file stays behind with nobody listening: stale, replaced.
        let (_again, second) = bind(&path).unwrap();
        assert!(!is_ours(&path, identity) || identity == second);
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        assert!(bind(&plain)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&open.join("c.ctl")).unwrap_err().to_string();
        assert!(err.contains("world-writable"), "{err}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        bind(&open.join("c.ctl")).unwrap();
    }
}
