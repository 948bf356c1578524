//! The variables a parent hands down (`ARBITER_LISTEN_FDS`, `ARBITER_LISTEN_FDNAMES`,
//! `ARBITER_MASTER_PID`, `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`): a plan that parses prints back to the same plan, a refusal
//! is one line naming the variable, and memory stays bounded whatever the count says.
//!
//! Input: `NAME=VALUE` fields separated by NUL bytes; our own pid is 42.
#![no_main]

use arbiter_fuzz::{assert_bounded, assert_one_line, env_fields, peak_during};
use arbiter_sockets::{parse_inherited, InheritPlan, InheritVars, Origin, LISTEN_FDS_START};
use libfuzzer_sys::fuzz_target;

const OUR_PID: u32 = 42;

/// The variables that would make a re-exec'd master inherit `plan`, as `reexec_env` and
/// systemd write them.
fn render(plan: &InheritPlan) -> InheritVars {
    match plan.origin {
        Origin::Reexec => {
            let names: Option<Vec<&str>> = plan.fds.iter().map(|f| f.name.as_deref()).collect();
            InheritVars {
                arbiter_listen_fds: Some(
                    plan.fds
                        .iter()
                        .map(|f| match f.origin {
                            Origin::Systemd => format!("{}:systemd", f.fd),
                            Origin::Fd => format!("{}:fd", f.fd),
                            _ => f.fd.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                arbiter_listen_fdnames: names.filter(|n| !n.is_empty()).map(|n| n.join(":")),
                arbiter_master_pid: plan.old_master.map(|pid| pid.to_string()),
                ..InheritVars::default()
            }
        }
        _ => {
            let names: Option<Vec<&str>> = plan.fds.iter().map(|f| f.name.as_deref()).collect();
            InheritVars {
                listen_fds: Some(plan.fds.len().to_string()),
                listen_pid: Some(OUR_PID.to_string()),
                listen_fdnames: names.filter(|n| !n.is_empty()).map(|n| n.join(":")),
                ..InheritVars::default()
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut vars = InheritVars::default();
    for (name, value) in env_fields(data) {
        let slot = match name.as_str() {
            "ARBITER_LISTEN_FDS" => &mut vars.arbiter_listen_fds,
            "ARBITER_LISTEN_FDNAMES" => &mut vars.arbiter_listen_fdnames,
            "ARBITER_MASTER_PID" => &mut vars.arbiter_master_pid,
            "LISTEN_FDS" => &mut vars.listen_fds,
            "LISTEN_PID" => &mut vars.listen_pid,
            "LISTEN_FDNAMES" => &mut vars.listen_fdnames,
            _ => continue,
        };
        *slot = Some(value);
    }
    let (parsed, peak) = peak_during(|| parse_inherited(&vars, OUR_PID));
    // A plan holds one entry per fd; `LISTEN_FDS` is a u16, so at most 65535 of them.
    assert_bounded(peak, 64 * data.len() + 65535 * 80, data);
    let plan = match parsed {
        Ok(Some(plan)) => plan,
        Ok(None) => {
            assert!(vars.arbiter_listen_fds.is_none(), "{vars:?}");
            return;
        }
        Err(error) => {
            let message = error.to_string();
            assert_one_line(&message);
            assert!(
                [
                    "ARBITER_LISTEN_FDS",
                    "ARBITER_LISTEN_FDNAMES",
                    "ARBITER_MASTER_PID",
                    "LISTEN_"
                ]
                .iter()
                .any(|var| message.starts_with(&format!("bad {var}"))),
                "{message:?} does not name the variable"
            );
            return;
        }
    };
    match plan.origin {
        Origin::Reexec => {
            assert!(plan.fds.iter().all(|f| f.fd >= 3), "{plan:?}");
            assert!(plan.old_master != Some(0));
        }
        Origin::Systemd => {
            let expected: Vec<i32> = (LISTEN_FDS_START..).take(plan.fds.len()).collect();
            let fds: Vec<i32> = plan.fds.iter().map(|f| f.fd).collect();
            assert_eq!(fds, expected, "systemd fds are 3, 4, ...");
            assert!(plan.fds.iter().all(|f| f.origin == Origin::Systemd));
        }
        other => panic!("unexpected origin {other:?}"),
    }
    let shown = render(&plan);
    let again = parse_inherited(&shown, OUR_PID)
        .unwrap_or_else(|e| panic!("{plan:?} rendered as {shown:?} is refused: {e}"));
    // Systemd names render back only when there are some (`LISTEN_FDNAMES=` with one fd names
    // it ""; without the variable it has no name).
    let comparable = |plan: &InheritPlan| -> Vec<(i32, String, Origin)> {
        let fds = plan.fds.iter();
        fds.map(|f| (f.fd, f.name.clone().unwrap_or_default(), f.origin))
            .collect()
    };
    let again = again.unwrap_or_else(|| panic!("{plan:?} rendered as {shown:?} is nothing"));
    assert_eq!(again.origin, plan.origin);
    assert_eq!(again.old_master, plan.old_master);
    assert_eq!(comparable(&again), comparable(&plan), "{shown:?}");
});
