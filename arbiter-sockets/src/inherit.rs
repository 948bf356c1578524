//! Inheriting listeners: from our own re-exec (`ARBITER_LISTEN_FDS`, `ARBITER_LISTEN_FDNAMES`,
//! `ARBITER_MASTER_PID`) or from systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`).
//!
//! `ARBITER_LISTEN_FDS` lists the fds, comma separated, each as `FD` (a socket the old master
//! bound: the new one may unlink its path), `FD:systemd` or `FD:fd` (passed to the old master
//! by systemd or as `fd://N`: never unlinked, by any master). `ARBITER_LISTEN_FDNAMES` carries
//! their `LISTEN_FDNAMES` names, colon separated, so a re-exec changes neither.

use std::os::fd::{AsRawFd, RawFd};

use crate::listener::{adopt_fd, bind, resolve_host};
use crate::{BindOptions, BindSpec, Error, Listener, LocalAddr, Origin};

/// Variable naming the listener fds a re-exec'd master inherits, comma separated.
pub const ARBITER_LISTEN_FDS: &str = "ARBITER_LISTEN_FDS";
/// Variable naming the listeners a re-exec'd master inherits, colon separated, as
/// `LISTEN_FDNAMES` does.
pub const ARBITER_LISTEN_FDNAMES: &str = "ARBITER_LISTEN_FDNAMES";
/// Variable naming the pid of the master that re-exec'd us.
pub const ARBITER_MASTER_PID: &str = "ARBITER_MASTER_PID";
/// First fd of systemd's socket-activation protocol.
pub const LISTEN_FDS_START: RawFd = 3;

/// The raw values of the inheritance variables, as read from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InheritVars {
    /// `ARBITER_LISTEN_FDS`.
    pub arbiter_listen_fds: Option<String>,
    /// `ARBITER_LISTEN_FDNAMES`.
    pub arbiter_listen_fdnames: Option<String>,
    /// `ARBITER_MASTER_PID`.
    pub arbiter_master_pid: Option<String>,
    /// `LISTEN_FDS`.
    pub listen_fds: Option<String>,
    /// `LISTEN_PID`.
    pub listen_pid: Option<String>,
    /// `LISTEN_FDNAMES`.
    pub listen_fdnames: Option<String>,
}

/// One fd to inherit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    /// Its number.
    pub fd: RawFd,
    /// Its `LISTEN_FDNAMES` name, if one was given.
    pub name: Option<String>,
    /// Where the listener first came from: `Reexec` for one an old master bound, `Systemd` or
    /// `Fd` for one it was given (kept across re-execs, so no master ever unlinks it).
    pub origin: Origin,
}

/// What the variables say to inherit: fds with their optional names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritPlan {
    /// Re-exec or systemd.
    pub origin: Origin,
    /// The fds, in order.
    pub fds: Vec<InheritFd>,
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
            let bad = || {
                bad_env(
                    ARBITER_LISTEN_FDS,
                    list,
                    "not a list of fds >= 3 (each FD, FD:systemd or FD:fd)",
                )
            };
            let (number, origin) = match item.trim().split_once(':') {
                None => (item.trim(), Origin::Reexec),
                Some((number, "systemd")) => (number, Origin::Systemd),
                Some((number, "fd")) => (number, Origin::Fd),
                Some(_) => return Err(bad()),
            };
            let fd = number
                .parse::<RawFd>()
                .ok()
                .filter(|&fd| fd >= 3)
                .ok_or_else(bad)?;
            fds.push(InheritFd {
                fd,
                name: None,
                origin,
            });
        }
        if let Some(text) = &vars.arbiter_listen_fdnames {
            let names: Vec<&str> = text.split(':').collect();
            if names.len() != fds.len() {
                return Err(bad_env(
                    ARBITER_LISTEN_FDNAMES,
                    text,
                    "the number of names differs from ARBITER_LISTEN_FDS",
                ));
            }
            for (item, name) in fds.iter_mut().zip(names) {
                item.name = Some(name.to_owned());
            }
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
    let fds = (LISTEN_FDS_START..)
        .zip(names)
        .map(|(fd, name)| InheritFd {
            fd,
            name,
            origin: Origin::Systemd,
        })
        .collect();
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
        arbiter_listen_fdnames: read(ARBITER_LISTEN_FDNAMES),
        arbiter_master_pid: read(ARBITER_MASTER_PID),
        listen_fds: read("LISTEN_FDS"),
        listen_pid: read("LISTEN_PID"),
        listen_fdnames: read("LISTEN_FDNAMES"),
    };
    for name in [
        ARBITER_LISTEN_FDS,
        ARBITER_LISTEN_FDNAMES,
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
    for InheritFd { fd, name, origin } in plan.fds {
        listeners.push(adopt_fd(fd, origin, name)?);
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
/// fd numbers, unchanged, each marked `:systemd` or `:fd` if this master was given it),
/// `ARBITER_LISTEN_FDNAMES` (their names) and `ARBITER_MASTER_PID` (this process).
///
/// The re-exec child keeps the fds at their numbers: between fork and exec it calls
/// [`crate::clear_cloexec_in_child`] on them (the hand-off plan, which renumbers to 3.., is for
/// workers).
pub fn reexec_env<'a>(listeners: impl IntoIterator<Item = &'a Listener>) -> Vec<(String, String)> {
    let listeners: Vec<&Listener> = listeners.into_iter().collect();
    let fds: Vec<String> = listeners
        .iter()
        .map(|l| {
            let fd = l.fd().as_raw_fd();
            match l.origin() {
                Origin::Bound | Origin::Reexec => fd.to_string(),
                Origin::Systemd => format!("{fd}:systemd"),
                Origin::Fd => format!("{fd}:fd"),
            }
        })
        .collect();
    let names: Vec<&str> = listeners.iter().map(|l| l.name()).collect();
    vec![
        (ARBITER_LISTEN_FDS.to_owned(), fds.join(",")),
        (ARBITER_LISTEN_FDNAMES.to_owned(), names.join(":")),
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
            arbiter_listen_fdnames: get(ARBITER_LISTEN_FDNAMES),
            arbiter_master_pid: get(ARBITER_MASTER_PID),
            listen_fds: get("LISTEN_FDS"),
            listen_pid: get("LISTEN_PID"),
            listen_fdnames: get("LISTEN_FDNAMES"),
        }
    }

    fn fds(plan: &InheritPlan) -> Vec<(RawFd, Option<String>)> {
        plan.fds.iter().map(|f| (f.fd, f.name.clone())).collect()
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
        assert_eq!(fds(&plan), vec![(3, None), (4, None)]);
        assert!(plan.fds.iter().all(|f| f.origin == Origin::Systemd));
        let named = vars(&[
            ("LISTEN_FDS", "2"),
            ("LISTEN_PID", "42"),
            ("LISTEN_FDNAMES", "web:admin"),
        ]);
        let plan = parse_inherited(&named, 42).unwrap().unwrap();
        assert_eq!(
            fds(&plan),
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
        assert_eq!(fds(&plan), vec![(7, None), (9, None)]);
        assert!(plan.fds.iter().all(|f| f.origin == Origin::Reexec));
        assert_eq!(plan.old_master, Some(100));
    }

    /// A socket systemd (or `fd://`) gave the first master keeps that origin through any number
    /// of upgrades, so no master unlinks its path; names survive too.
    #[test]
    fn given_sockets_keep_their_origin_and_names_across_reexec() {
        let plan = parse_inherited(
            &vars(&[
                (ARBITER_LISTEN_FDS, "3:systemd,5,6:fd"),
                (ARBITER_LISTEN_FDNAMES, "web:http://127.0.0.1:80:fd://6"),
            ]),
            42,
        );
        assert!(plan.is_err(), "a name with a colon cannot be told apart");
        let plan = parse_inherited(
            &vars(&[
                (ARBITER_LISTEN_FDS, "3:systemd,5,6:fd"),
                (ARBITER_LISTEN_FDNAMES, "web:127.0.0.1_80:fd_6"),
            ]),
            42,
        )
        .unwrap()
        .unwrap();
        assert_eq!(plan.origin, Origin::Reexec);
        let origins: Vec<Origin> = plan.fds.iter().map(|f| f.origin).collect();
        assert_eq!(origins, [Origin::Systemd, Origin::Reexec, Origin::Fd]);
        assert_eq!(
            fds(&plan),
            [
                (3, Some("web".into())),
                (5, Some("127.0.0.1_80".into())),
                (6, Some("fd_6".into()))
            ]
        );
        for bad in ["3:sytemd", "3:", ":systemd", "3:systemd:fd"] {
            assert!(
                parse_inherited(&vars(&[(ARBITER_LISTEN_FDS, bad)]), 42).is_err(),
                "{bad}"
            );
        }
        let miscount = vars(&[(ARBITER_LISTEN_FDS, "3,4"), (ARBITER_LISTEN_FDNAMES, "a")]);
        assert_eq!(
            parse_inherited(&miscount, 42).unwrap_err().to_string(),
            "bad ARBITER_LISTEN_FDNAMES=\"a\": the number of names differs from ARBITER_LISTEN_FDS"
        );
    }

    #[test]
    fn reexec_env_marks_given_sockets_and_parses_back() {
        use std::os::fd::OwnedFd;
        let given: OwnedFd = std::net::TcpListener::bind("127.0.0.1:0").unwrap().into();
        let bound: OwnedFd = std::net::TcpListener::bind("127.0.0.1:0").unwrap().into();
        let (given_fd, bound_fd) = (given.as_raw_fd(), bound.as_raw_fd());
        let listeners = [
            Listener::adopt(given, Origin::Systemd, Some("web".into())).unwrap(),
            Listener::adopt(bound, Origin::Bound, Some("admin".into())).unwrap(),
        ];
        let env = reexec_env(&listeners);
        assert_eq!(env[0].1, format!("{given_fd}:systemd,{bound_fd}"));
        assert_eq!(
            env[1],
            (ARBITER_LISTEN_FDNAMES.to_owned(), "web:admin".into())
        );
        let back = vars(&[
            (ARBITER_LISTEN_FDS, &env[0].1),
            (ARBITER_LISTEN_FDNAMES, &env[1].1),
        ]);
        let plan = parse_inherited(&back, 42).unwrap().unwrap();
        let origins: Vec<Origin> = plan.fds.iter().map(|f| f.origin).collect();
        assert_eq!(origins, [Origin::Systemd, Origin::Reexec]);
        assert_eq!(
            fds(&plan),
            [
                (given_fd, Some("web".into())),
                (bound_fd, Some("admin".into()))
            ]
        );
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        let table = [
            (
                vars(&[(ARBITER_LISTEN_FDS, "7,x")]),
                "bad ARBITER_LISTEN_FDS=\"7,x\": not a list of fds >= 3 (each FD, FD:systemd or FD:fd)",
            ),
            (
                vars(&[(ARBITER_LISTEN_FDS, "1")]),
                "bad ARBITER_LISTEN_FDS=\"1\": not a list of fds >= 3 (each FD, FD:systemd or FD:fd)",
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
