//! Where the control socket lives: the path the master binds and `arbiter ctl` connects to.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The control socket's path and whether the user named it (an explicit path that cannot be
/// used stops the start; a default one only logs a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPath {
    /// The path.
    pub path: PathBuf,
    /// Given with `--control-socket` (or its key or variable).
    pub explicit: bool,
}

/// The path for a master: `--control-socket`, else `PIDFILE.ctl`, else
/// `$XDG_RUNTIME_DIR/arbiter.ctl`, else none.
pub fn for_master(
    explicit: Option<&Path>,
    pidfile: Option<&Path>,
    env: &[(OsString, OsString)],
) -> Option<SocketPath> {
    if let Some(path) = explicit {
        return Some(SocketPath {
            path: path.to_path_buf(),
            explicit: true,
        });
    }
    default_path(pidfile, |key| {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    })
    .map(|path| SocketPath {
        path,
        explicit: false,
    })
}

/// The default path, as the master and `arbiter ctl` both compute it.
pub fn default_path(
    pidfile: Option<&Path>,
    var: impl Fn(&str) -> Option<OsString>,
) -> Option<PathBuf> {
    if let Some(pidfile) = pidfile {
        return Some(with_suffix(pidfile, ".ctl"));
    }
    var("XDG_RUNTIME_DIR")
        .filter(|dir| !dir.is_empty())
        .map(|dir| PathBuf::from(dir).join("arbiter.ctl"))
}

/// `path` with `suffix` appended to its last component.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut text = path.as_os_str().to_owned();
    text.push(suffix);
    PathBuf::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_prefers_the_pidfile_then_the_runtime_dir() {
        let none = |_: &str| None;
        let runtime = |k: &str| (k == "XDG_RUNTIME_DIR").then(|| OsString::from("/run/user/1"));
        assert_eq!(
            default_path(Some(Path::new("/run/a.pid")), runtime),
            Some(PathBuf::from("/run/a.pid.ctl"))
        );
        assert_eq!(
            default_path(None, runtime),
            Some(PathBuf::from("/run/user/1/arbiter.ctl"))
        );
        assert_eq!(default_path(None, none), None);
        let explicit = for_master(Some(Path::new("/x.sock")), None, &[]).unwrap();
        assert!(explicit.explicit);
    }
}
