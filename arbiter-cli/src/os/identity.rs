//! `--user` / `--group`: the identity workers run as, resolved once before anything starts
//! and switched to in the child between fork and exec (gunicorn's `user` and `group`).
//!
//! Model: everything that reads the user database or allocates (`getpwnam_r`, `getgrnam_r`,
//! `getgrouplist`) happens in [`resolve`], in the master, before the first fork; the child only
//! makes the three async-signal-safe syscalls of [`Identity::switch_in_child`] on the prepared
//! list, in the order that works: supplementary groups, then the group, then the user (after
//! `setuid` the other two are no longer allowed).
//!
//! Invariants: the master keeps its own identity (it binds, signals workers and re-execs); a
//! switch the master is not allowed to make is refused by [`resolve`], so a worker never fails
//! to start over it. Limits: only a root master may switch (a master with `CAP_SETUID` but a
//! non-zero uid is refused too); a numeric uid with no user database entry needs `--group`
//! and gets no supplementary groups.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

/// The identity workers run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user, if `--user` was given (else the master's uid is kept).
    pub uid: Option<Uid>,
    /// The group.
    pub gid: Gid,
    /// The supplementary groups: the user's (`getgrouplist`), the group included.
    pub groups: Vec<Gid>,
    /// For log lines: `nobody:nogroup (65534:65534)`.
    pub display: String,
}

/// Looks up `user` and `group` (names or numbers) and checks that this master may switch to
/// them. `Ok(None)`: neither is given, or both are what the master already is.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, String> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let user_entry = match user {
        None => None,
        Some(spec) => Some(lookup_user(spec)?),
    };
    let (group_name, gid) = match (group, &user_entry) {
        (Some(spec), _) => lookup_group(spec)?,
        (None, Some((_, Some(entry)))) => {
            let name = Group::from_gid(entry.gid)
                .ok()
                .flatten()
                .map_or_else(|| entry.gid.to_string(), |g| g.name);
            (name, entry.gid)
        }
        (None, Some((uid, None))) => {
            return Err(format!(
                "--user {uid}: no such user in the user database, so it has no primary group: \
                 give --group as well"
            ))
        }
        (None, None) => unreachable!("user or group is set"),
    };
    let uid = user_entry.as_ref().map(|(uid, _)| *uid);
    let groups = match user_entry.as_ref().and_then(|(_, entry)| entry.as_ref()) {
        Some(entry) => {
            let name = CString::new(entry.name.as_bytes())
                .map_err(|_| format!("--user {}: NUL byte in the name", entry.name))?;
            nix::unistd::getgrouplist(&name, gid)
                .map_err(|e| format!("--user {}: its groups: {e}", entry.name))?
        }
        None => vec![gid],
    };
    let user_name = match &user_entry {
        Some((_, Some(entry))) => entry.name.clone(),
        Some((uid, None)) => uid.to_string(),
        None => String::new(),
    };
    let target_uid = uid.unwrap_or_else(Uid::effective);
    let display = if user_name.is_empty() {
        format!(":{group_name} (:{gid})")
    } else {
        format!("{user_name}:{group_name} ({target_uid}:{gid})")
    };
    let me = Uid::effective();
    if !me.is_root() {
        let same = target_uid == me && gid == Gid::effective();
        if same {
            return Ok(None);
        }
        let what = match (user, group) {
            (Some(user), _) if target_uid != me => format!("--user {user}"),
            (_, Some(group)) => format!("--group {group}"),
            (Some(user), None) => format!("--user {user}"),
            (None, None) => unreachable!("user or group is set"),
        };
        return Err(format!(
            "{what}: the master runs as uid {me} gid {}, and only root may run workers as \
             {display}",
            Gid::effective()
        ));
    }
    Ok(Some(Identity {
        uid,
        gid,
        groups,
        display,
    }))
}

/// A user by name or number: its uid and database entry (none for an unknown number).
fn lookup_user(spec: &str) -> Result<(Uid, Option<User>), String> {
    if let Ok(number) = spec.parse::<u32>() {
        let uid = Uid::from_raw(number);
        let entry = User::from_uid(uid).map_err(|e| format!("--user {spec}: {e}"))?;
        return Ok((uid, entry));
    }
    match User::from_name(spec) {
        Ok(Some(entry)) => Ok((entry.uid, Some(entry))),
        Ok(None) => Err(format!("--user {spec}: no such user")),
        Err(e) => Err(format!("--user {spec}: {e}")),
    }
}

/// A group by name or number: its name for logs and its gid.
fn lookup_group(spec: &str) -> Result<(String, Gid), String> {
    if let Ok(number) = spec.parse::<u32>() {
        let gid = Gid::from_raw(number);
        let name = Group::from_gid(gid)
            .ok()
            .flatten()
            .map_or_else(|| spec.to_owned(), |g| g.name);
        return Ok((name, gid));
    }
    match Group::from_name(spec) {
        Ok(Some(entry)) => Ok((entry.name, entry.gid)),
        Ok(None) => Err(format!("--group {spec}: no such group")),
        Err(e) => Err(format!("--group {spec}: {e}")),
    }
}

impl Identity {
    /// In the forked child, before exec: supplementary groups, group, user, in that order.
    /// Async-signal-safe and allocation-free (three syscalls on the prepared list).
    pub fn switch_in_child(&self) -> Result<(), rustix::io::Errno> {
        let errno = |e: nix::errno::Errno| rustix::io::Errno::from_raw_os_error(e as i32);
        nix::unistd::setgroups(&self.groups).map_err(errno)?;
        nix::unistd::setgid(self.gid).map_err(errno)?;
        if let Some(uid) = self.uid {
            nix::unistd::setuid(uid).map_err(errno)?;
        }
        Ok(())
    }

    /// Gives an open file (a heartbeat file) to the workers' user, so a worker can `fchmod` it.
    pub fn give_file(&self, file: impl AsFd) -> std::io::Result<()> {
        nix::unistd::fchown(file, self.uid, Some(self.gid)).map_err(std::io::Error::from)
    }

    /// Gives a path (a unix listener) to the workers' user and group, as gunicorn does.
    pub fn give_path(&self, path: &Path) -> std::io::Result<()> {
        nix::unistd::chown(path, self.uid, Some(self.gid)).map_err(std::io::Error::from)
    }

    /// Lets the workers' group reach a path the master keeps (the runtime directory and the
    /// notify socket in it): the owner stays the master, the group becomes the workers', so
    /// a worker can connect and send but not rename or remove.
    pub fn share_path(&self, path: &Path, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        nix::unistd::chown(path, None, Some(self.gid)).map_err(std::io::Error::from)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_switch_without_user_or_group() {
        assert_eq!(resolve(None, None), Ok(None));
    }

    #[test]
    fn unknown_names_are_refused_naming_them() {
        let user = resolve(Some("no-such-user-arbiter-x"), None).unwrap_err();
        assert_eq!(user, "--user no-such-user-arbiter-x: no such user");
        let group = resolve(None, Some("no-such-group-arbiter-x")).unwrap_err();
        assert_eq!(group, "--group no-such-group-arbiter-x: no such group");
    }

    #[test]
    fn an_unknown_number_needs_a_group() {
        let error = resolve(Some("4000000000"), None).unwrap_err();
        assert!(
            error.starts_with("--user 4000000000: no such user"),
            "{error}"
        );
    }

    #[test]
    fn the_masters_own_identity_is_resolved_or_switched_to() {
        let me = Uid::effective();
        let identity = resolve(Some(&me.to_string()), Some(&Gid::effective().to_string()));
        if me.is_root() {
            let identity = identity.unwrap().expect("root switches, even to itself");
            assert_eq!(identity.uid, Some(me));
            assert!(identity.groups.contains(&identity.gid));
        } else {
            assert_eq!(identity, Ok(None));
        }
    }
}
