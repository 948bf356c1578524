//! The resident memory of process groups, from `/proc`.
//!
//! A worker's group is every process whose process group id is the worker's pid: what it
//! forked, and what those forked, unless they moved to a group of their own. The only way to
//! find all of them (a grandchild whose parent exited is re-parented, so a walk of
//! `/proc/PID/task/*/children` misses it) is one pass over `/proc/*/stat`, whose fields hold
//! both the group id and the resident set size: one read per process on the machine per
//! sample, for every group at once. Shared pages (copy-on-write after a fork) count in each
//! process that maps them, as `ps` and `top` count them.

use std::collections::HashMap;
use std::fs;

/// The pgid and the resident pages of one `/proc/PID/stat` line.
///
/// The command name (field 2) is in parentheses and may hold spaces and parentheses itself,
/// so fields are counted from the last `)`: after it come state (3), ppid (4), pgrp (5), ...,
/// rss (24, in pages).
pub fn parse_stat(line: &str) -> Option<(i32, u64)> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let pgrp = fields.nth(2)?.parse().ok()?;
    let rss = fields.nth(18)?.parse().ok()?;
    Some((pgrp, rss))
}

/// Resident bytes of each group in `groups`, summed over its processes (a group with no
/// process left is absent).
pub fn group_resident(groups: &[i32]) -> HashMap<i32, u64> {
    let mut resident: HashMap<i32, u64> = HashMap::new();
    if groups.is_empty() {
        return resident;
    }
    let page = rustix::param::page_size() as u64;
    let Ok(entries) = fs::read_dir("/proc") else {
        return resident;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may exit between the listing and the read: it no longer counts.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((pgrp, pages)) = parse_stat(&stat) {
            if groups.contains(&pgrp) {
                *resident.entry(pgrp).or_default() += pages * page;
            }
        }
    }
    resident
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    12345 10000000 777 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(parse_stat(line), Some((4240, 777)));
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_group_holds_at_least_our_resident_memory() {
        let group = nix::unistd::getpgrp().as_raw();
        let resident = group_resident(&[group]);
        let ours = resident.get(&group).copied().unwrap_or(0);
        // A test binary maps at least its own text and a stack.
        assert!(ours > 1 << 20, "{ours} bytes");
        assert!(group_resident(&[]).is_empty());
    }
}
