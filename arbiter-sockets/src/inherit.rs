//! Inheriting listeners: from our own re-exec (`ARBITER_LISTEN_FDS`, `ARBITER_MASTER_PID`) or
//! from systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`).

use std::os::fd::{AsRawFd, RawFd};

use crate::listener::{adopt_fd, bind, resolve_host};
use crate::{BindOptions, BindSpec, Error, Listener, LocalAddr, Origin};

/// Variable naming the listener fds a re-exec'd master inherits, comma separated.
pub const ARBITER_LISTEN_FDS: &str = "ARBITER_LISTEN_FDS";
/// Variable naming the pid of the master that re-exec'd us.
pub const ARBITER_MASTER_PID: &str = "ARBITER_MASTER_PID";
/// First fd of systemd's socket-activation protocol.
pub const LISTEN_FDS_START: RawFd = 3;

/// The raw values of the inheritance variables, as read from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InheritVars {
    /// `ARBITER_LISTEN_FDS`.
    pub arbiter_listen_fds: Option<String>,
    /// `ARBITER_MASTER_PID`.
    pub arbiter_master_pid: Option<String>,
    /// `LISTEN_FDS`.
    pub listen_fds: Option<String>,
    /// `LISTEN_PID`.
    pub listen_pid: Option<String>,
    /// `LISTEN_FDNAMES`.
    pub listen_fdnames: Option<String>,
}

/// What the variables say to inherit: fds with their optional names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritPlan {
    /// Re-exec or systemd.
    pub origin: Origin,
    /// The fds, in order, each with its systemd name if one was given.
    pub fds: Vec<(RawFd, Option<String>)>,
    /// The old master's pid, after a re-exec.
    pub old_master: Option<u32>,
}

fn bad_env(var: &'static str, value: &str, reason: &'static str) -> Error {
    Error::BadEnv {
        var,
        value: value.to_owned(),
        reason,
    }
}

/// Parses the inheritance variables (pure: no environment, no fds).
///
/// The re-exec variables win over systemd's. Systemd's are honoured only when `LISTEN_PID` is
/// `our_pid`; otherwise they were meant for another process and are ignored. `Ok(None)`: there
/// is nothing to inherit.
pub fn parse_inherited(vars: &InheritVars, our_pid: u32) -> Result<Option<InheritPlan>, Error> {
    if let Some(list) = &vars.arbiter_listen_fds {
        let mut fds = Vec::new();
        for item in list.split(',').filter(|item| !item.is_empty()) {
            let fd = item
                .trim()
                .parse::<RawFd>()
                .ok()
                .filter(|&fd| fd >= 3)
                .ok_or_else(|| bad_env(ARBITER_LISTEN_FDS, list, "not a list of fds >= 3"))?;
            fds.push((fd, None));
        }
        let old_master = match &vars.arbiter_master_pid {
            None => None,
            Some(text) => Some(
                text.parse::<u32>()
                    .ok()
                    .filter(|&pid| pid > 0)
                    .ok_or_else(|| bad_env(ARBITER_MASTER_PID, text, "not a pid"))?,
            ),
        };
        return Ok(Some(InheritPlan {
            origin: Origin::Reexec,
            fds,
            old_master,
        }));
    }
    let (Some(pid), Some(count)) = (&vars.listen_pid, &vars.listen_fds) else {
        return Ok(None);
    };
    match pid.parse::<u32>() {
        Ok(pid) if pid == our_pid => {}
        Ok(_) => return Ok(None),
        Err(_) => return Err(bad_env("LISTEN_PID", pid, "not a pid")),
    }
    let n = count
        .parse::<u16>()
        .map_err(|_| bad_env("LISTEN_FDS", count, "not a count of fds"))?;
    let names: Vec<Option<String>> = match &vars.listen_fdnames {
        None => vec![None; usize::from(n)],
        Some(text) => {
            let names: Vec<Option<String>> = text.split(':').map(|s| Some(s.to_owned())).collect();
            if names.len() != usize::from(n) {
                return Err(bad_env(
                    "LISTEN_FDNAMES",
                    text,
                    "the number of names differs from LISTEN_FDS",
                ));
            }
            names
        }
    };
    let fds = (LISTEN_FDS_START..).zip(names).collect();
    Ok(Some(InheritPlan {
        origin: Origin::Systemd,
        fds,
        old_master: None,
    }))
}

/// Inherited listeners, taken from the environment by [`take_inherited`].
#[derive(Debug, Default)]
pub struct Inherited {
    /// Re-exec or systemd; `None` when nothing was inherited.
    pub origin: Option<Origin>,
    /// The listeners, in the order the variables gave them.
    pub listeners: Vec<Listener>,
    /// The old master's pid, after a re-exec.
    pub old_master: Option<u32>,
}

/// Reads the inheritance variables, removes all five from the environment, checks each named
/// fd is a listening socket, sets it close-on-exec (F_SETFD), and takes ownership of it.
///
/// # Safety
///
/// Mutates the environment: no other thread may read or write the environment meanwhile
/// (call it early in `main`, before any thread starts). The fds named by the variables must
/// not be owned by anything else in this process.
pub unsafe fn take_inherited() -> Result<Inherited, Error> {
    let read = |name: &str| std::env::var(name).ok();
    let vars = InheritVars {
        arbiter_listen_fds: read(ARBITER_LISTEN_FDS),
        arbiter_master_pid: read(ARBITER_MASTER_PID),
        listen_fds: read("LISTEN_FDS"),
        listen_pid: read("LISTEN_PID"),
        listen_fdnames: read("LISTEN_FDNAMES"),
    };
    for name in [
        ARBITER_LISTEN_FDS,
        ARBITER_MASTER_PID,
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
        // SAFETY: the caller guarantees no other thread touches the environment.
        unsafe { std::env::remove_var(name) };
    }
    let Some(plan) = parse_inherited(&vars, std::process::id())? else {
        return Ok(Inherited::default());
    };
    let mut listeners = Vec::with_capacity(plan.fds.len());
    for (fd, name) in plan.fds {
        listeners.push(adopt_fd(fd, plan.origin, name)?);
    }
    Ok(Inherited {
        origin: Some(plan.origin),
        listeners,
        old_master: plan.old_master,
    })
}

/// Matches inherited listeners to the configured binds by local address, binding what is
/// missing and closing (without unlinking) inherited ones no bind wants.
///
/// A tcp spec with port 0 matches an inherited socket on the same IP whatever its port (the
/// old master's ephemeral port). With no binds at all, inherited listeners (from systemd, or
/// from an old master, which may have had them from systemd) are all used. The result is in
/// bind order.
pub fn resolve(
    binds: &[BindSpec],
    inherited: Inherited,
    opts: &BindOptions,
) -> Result<Vec<Listener>, Error> {
    let mut pool: Vec<Option<Listener>> = inherited.listeners.into_iter().map(Some).collect();
    if binds.is_empty() && matches!(inherited.origin, Some(Origin::Systemd | Origin::Reexec)) {
        return Ok(pool.into_iter().flatten().collect());
    }
    // In bind order, each with whether it was bound here (not inherited): if a later spec
    // fails, the unix paths bound here are removed, so a failed start leaves no socket file.
    let mut out: Vec<(Listener, bool)> = Vec::new();
    for spec in binds {
        let result = take_matching(&mut pool, spec).and_then(|taken| {
            if taken.is_empty() {
                bind(spec, opts).map(|bound| (bound, true))
            } else {
                Ok((taken, false))
            }
        });
        match result {
            Ok((listeners, fresh)) => out.extend(listeners.into_iter().map(|l| (l, fresh))),
            Err(error) => {
                for (listener, fresh) in out {
                    listener.close(fresh);
                }
                return Err(error);
            }
        }
    }
    let out: Vec<Listener> = out.into_iter().map(|(listener, _)| listener).collect();
    // Unmatched inherited listeners are closed here, never unlinked.
    for listener in pool.into_iter().flatten() {
        listener.close(false);
    }
    Ok(out)
}

fn take_matching(pool: &mut [Option<Listener>], spec: &BindSpec) -> Result<Vec<Listener>, Error> {
    let wanted: Vec<LocalAddr> = match spec {
        BindSpec::Tcp { host, port } => resolve_host(host, *port)?
            .into_iter()
            .map(LocalAddr::Inet)
            .collect(),
        BindSpec::Unix(path) => vec![LocalAddr::Unix(path.clone())],
        BindSpec::Fd(_) => Vec::new(),
    };
    let matches = |listener: &Listener| match (spec, listener.local_addr()) {
        (BindSpec::Fd(fd), _) => listener.fd().as_raw_fd() == *fd,
        (BindSpec::Tcp { port: 0, .. }, LocalAddr::Inet(have)) => wanted
            .iter()
            .any(|w| matches!(w, LocalAddr::Inet(w) if w.ip() == have.ip())),
        (_, have) => wanted.contains(have),
    };
    let mut taken = Vec::new();
    for slot in pool.iter_mut() {
        if slot.as_ref().is_some_and(matches) {
            if let Some(mut listener) = slot.take() {
                listener.set_spec(spec.clone());
                taken.push(listener);
            }
        }
    }
    Ok(taken)
}

/// The variables a re-exec'd master needs to inherit `listeners`: `ARBITER_LISTEN_FDS` (their
/// fd numbers, unchanged) and `ARBITER_MASTER_PID` (this process).
///
/// The re-exec child keeps the fds at their numbers: between fork and exec it calls
/// [`crate::clear_cloexec_in_child`] on them (the hand-off plan, which renumbers to 3.., is for
/// workers).
pub fn reexec_env<'a>(listeners: impl IntoIterator<Item = &'a Listener>) -> Vec<(String, String)> {
    let fds: Vec<String> = listeners
        .into_iter()
        .map(|l| l.fd().as_raw_fd().to_string())
        .collect();
    vec![
        (ARBITER_LISTEN_FDS.to_owned(), fds.join(",")),
        (
            ARBITER_MASTER_PID.to_owned(),
            std::process::id().to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> InheritVars {
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        InheritVars {
            arbiter_listen_fds: get(ARBITER_LISTEN_FDS),
            arbiter_master_pid: get(ARBITER_MASTER_PID),
            listen_fds: get("LISTEN_FDS"),
            listen_pid: get("LISTEN_PID"),
            listen_fdnames: get("LISTEN_FDNAMES"),
        }
    }

    #[test]
    fn nothing_to_inherit() {
        assert_eq!(parse_inherited(&vars(&[]), 42).unwrap(), None);
        let other = vars(&[("LISTEN_FDS", "2"), ("LISTEN_PID", "41")]);
        assert_eq!(
            parse_inherited(&other, 42).unwrap(),
            None,
            "meant for pid 41"
        );
    }

    #[test]
    fn systemd_fds_with_and_without_names() {
        let plan = parse_inherited(&vars(&[("LISTEN_FDS", "2"), ("LISTEN_PID", "42")]), 42)
            .unwrap()
            .unwrap();
        assert_eq!(plan.origin, Origin::Systemd);
        assert_eq!(plan.fds, vec![(3, None), (4, None)]);
        let named = vars(&[
            ("LISTEN_FDS", "2"),
            ("LISTEN_PID", "42"),
            ("LISTEN_FDNAMES", "web:admin"),
        ]);
        let plan = parse_inherited(&named, 42).unwrap().unwrap();
        assert_eq!(
            plan.fds,
            vec![(3, Some("web".into())), (4, Some("admin".into()))]
        );
    }

    #[test]
    fn reexec_wins_and_carries_the_old_master() {
        let both = vars(&[
            (ARBITER_LISTEN_FDS, "7,9"),
            (ARBITER_MASTER_PID, "100"),
            ("LISTEN_FDS", "1"),
            ("LISTEN_PID", "42"),
        ]);
        let plan = parse_inherited(&both, 42).unwrap().unwrap();
        assert_eq!(plan.origin, Origin::Reexec);
        assert_eq!(plan.fds, vec![(7, None), (9, None)]);
        assert_eq!(plan.old_master, Some(100));
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        let table = [
            (
                vars(&[(ARBITER_LISTEN_FDS, "7,x")]),
                "bad ARBITER_LISTEN_FDS=\"7,x\": not a list of fds >= 3",
            ),
            (
                vars(&[(ARBITER_LISTEN_FDS, "1")]),
                "bad ARBITER_LISTEN_FDS=\"1\": not a list of fds >= 3",
            ),
            (
                vars(&[(ARBITER_LISTEN_FDS, "5"), (ARBITER_MASTER_PID, "me")]),
                "bad ARBITER_MASTER_PID=\"me\": not a pid",
            ),
            (
                vars(&[("LISTEN_FDS", "two"), ("LISTEN_PID", "42")]),
                "bad LISTEN_FDS=\"two\": not a count of fds",
            ),
            (
                vars(&[("LISTEN_FDS", "1"), ("LISTEN_PID", "x")]),
                "bad LISTEN_PID=\"x\": not a pid",
            ),
            (
                vars(&[
                    ("LISTEN_FDS", "2"),
                    ("LISTEN_PID", "42"),
                    ("LISTEN_FDNAMES", "a"),
                ]),
                "bad LISTEN_FDNAMES=\"a\": the number of names differs from LISTEN_FDS",
            ),
        ];
        for (input, message) in table {
            let error = parse_inherited(&input, 42).expect_err(message);
            assert_eq!(error.to_string(), message);
        }
    }
}
