//! Failures at start: a path the master cannot use stops it with exit 1 and one line naming
//! the path and the reason, before a listener is bound, a worker spawned or a file written;
//! nothing is left behind.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use arbiter_tests::{arbiter_bin, Fixture};

use crate::EXIT;

/// The names in `dir`, recursively, relative to it.
fn contents(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut queue = vec![dir.to_path_buf()];
    while let Some(at) = queue.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                queue.push(path.clone());
            }
            out.insert(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out
}

/// Runs `PREFIX... arbiter -b unix:DIR/app.sock ARGS -- sh -c 'touch DIR/spawned; ...'` and
/// asserts the refusal: exit 1, one line on stderr naming `path` and `reason`, no worker
/// spawned, and no file created in the fixture besides the captured output.
fn refused(fx: &Fixture, prefix: &[&str], args: &[&str], path: &Path, reason: &str) {
    let open = fx.join("open");
    let mark = open.join("spawned");
    let socket = open.join("app.sock");
    let worker = format!("touch {}; exec sleep 30", mark.display());
    let bind = format!("unix:{}", socket.display());
    let mut full: Vec<&str> = prefix.to_vec();
    let bin = arbiter_bin().to_str().unwrap();
    if !prefix.is_empty() {
        full.push(bin);
    }
    full.extend(["-b", &bind]);
    full.extend_from_slice(args);
    full.extend(["--", "/bin/sh", "-c", &worker]);
    let before = contents(fx.path());
    let program = match prefix.first() {
        Some(first) => PathBuf::from(first),
        None => arbiter_bin().to_path_buf(),
    };
    let rest = if prefix.is_empty() {
        &full[..]
    } else {
        &full[1..]
    };
    let mut master = fx.start_program("arbiter", &program, rest, &[]);
    let code = master.exit_code(EXIT);
    master.assert_no_process_left();
    let stderr = master.stderr();
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(lines[0].contains(&path.display().to_string()), "{stderr}");
    assert!(lines[0].contains(reason), "{stderr}");
    assert!(!mark.exists(), "a worker was spawned:\n{stderr}");
    let mut after = contents(fx.path());
    after.remove(Path::new("arbiter.stdout"));
    after.remove(Path::new("arbiter.stderr"));
    assert_eq!(after, before, "files left behind:\n{stderr}");
}

/// A fixture with `open/`, where the listener and the worker's mark go.
fn fixture() -> Fixture {
    let fx = Fixture::new();
    std::fs::create_dir(fx.join("open")).unwrap();
    fx
}

#[test]
fn a_pidfile_in_a_missing_directory_exits_1_before_anything_starts() {
    let fx = fixture();
    let pidfile = fx.join("gone/a.pid");
    let args = ["-p", pidfile.to_str().unwrap()];
    refused(&fx, &[], &args, &fx.join("gone"), "does not exist");
}

#[test]
fn a_pidfile_that_is_a_directory_exits_1() {
    let fx = fixture();
    let pidfile = fx.join("a.pid");
    std::fs::create_dir(&pidfile).unwrap();
    let args = ["-p", pidfile.to_str().unwrap()];
    refused(&fx, &[], &args, &pidfile, "is a directory");
}

#[test]
fn a_pidfile_in_a_directory_it_cannot_write_exits_1() {
    let fx = fixture();
    let locked = fx.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let pidfile = locked.join("a.pid");
    let args = ["-p", pidfile.to_str().unwrap()];
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        // Root writes anywhere: run the arbiter as nobody, who can reach the fixture and
        // write only in open/.
        for dir in [fx.path(), fx.join("open").as_path()] {
            let mode = if dir == fx.path() { 0o755 } else { 0o777 };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let nobody = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ];
        refused(&fx, &nobody, &args, &locked, "not writable");
    } else {
        refused(&fx, &[], &args, &locked, "not writable");
    }
}

#[test]
fn a_log_file_in_a_missing_directory_exits_1() {
    let fx = fixture();
    let log = fx.join("gone/a.log");
    let args = ["--log-file", log.to_str().unwrap()];
    refused(&fx, &[], &args, &log, "does not exist");
}

#[test]
fn a_missing_worker_tmp_dir_exits_1() {
    let fx = fixture();
    let dir = fx.join("gone");
    let args = ["--worker-tmp-dir", dir.to_str().unwrap()];
    refused(&fx, &[], &args, &dir, "does not exist");
}

#[test]
fn a_control_socket_in_a_missing_directory_exits_1() {
    let fx = fixture();
    let socket = fx.join("gone/c.ctl");
    let args = ["--control-socket", socket.to_str().unwrap()];
    refused(&fx, &[], &args, &socket, "No such file or directory");
}

#[test]
fn a_control_socket_path_taken_by_a_file_exits_1() {
    let fx = fixture();
    let socket = fx.write("c.ctl", "not a socket\n");
    let args = ["--control-socket", socket.to_str().unwrap()];
    refused(&fx, &[], &args, &socket, "not a socket");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket\n");
}

#[test]
fn a_control_socket_another_process_listens_on_exits_1() {
    let fx = fixture();
    let socket = fx.join("c.ctl");
    let _live = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let args = ["--control-socket", socket.to_str().unwrap()];
    refused(&fx, &[], &args, &socket, "live process");
}

#[test]
fn a_metrics_address_in_use_exits_1_with_no_listener_left() {
    let fx = fixture();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let pidfile = fx.join("a.pid");
    let args = [
        "-p",
        pidfile.to_str().unwrap(),
        "--log-file",
        "-",
        "--metrics-bind",
        &address,
    ];
    // The log says "Starting" first (the bind is tried only once the log is open); the
    // failure is the one error line.
    let open = fx.join("open");
    let mark = open.join("spawned");
    let worker = format!("touch {}; exec sleep 30", mark.display());
    let bind = format!("unix:{}", open.join("app.sock").display());
    let mut full = vec!["-b", &bind];
    full.extend_from_slice(&args);
    full.extend(["--", "/bin/sh", "-c", &worker]);
    let before = contents(fx.path());
    let mut master = fx.start("arbiter", &full);
    let code = master.exit_code(EXIT);
    master.assert_no_process_left();
    let stderr = master.stderr();
    assert_eq!(code, 1, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&address), "{stderr}");
    assert!(!stderr.contains("Listening at"), "{stderr}");
    assert!(!mark.exists(), "a worker was spawned:\n{stderr}");
    let mut after = contents(fx.path());
    after.remove(Path::new("arbiter.stdout"));
    after.remove(Path::new("arbiter.stderr"));
    assert_eq!(after, before, "files left behind:\n{stderr}");
}

#[test]
fn a_port_in_use_after_a_unix_bind_leaves_no_socket_file() {
    let fx = fixture();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let pidfile = fx.join("a.pid");
    let args = [
        "-p",
        pidfile.to_str().unwrap(),
        "-b",
        &address,
        "--bind-retries",
        "0",
    ];
    let socket = fx.join("open/app.sock");
    let mark = fx.join("open/spawned");
    let worker = format!("touch {}; exec sleep 30", mark.display());
    let bind = format!("unix:{}", socket.display());
    let mut full = vec!["-b", &bind];
    full.extend_from_slice(&args);
    full.extend(["--", "/bin/sh", "-c", &worker]);
    let before = contents(fx.path());
    let mut master = fx.start("arbiter", &full);
    let code = master.exit_code(EXIT);
    master.assert_no_process_left();
    let stderr = master.stderr();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
    assert!(!mark.exists(), "a worker was spawned:\n{stderr}");
    let mut after = contents(fx.path());
    after.remove(Path::new("arbiter.stdout"));
    after.remove(Path::new("arbiter.stderr"));
    assert_eq!(after, before, "files left behind:\n{stderr}");
}

#[test]
fn an_existing_log_file_in_a_directory_it_cannot_write_is_fine() {
    let fx = fixture();
    let locked = fx.join("locked");
    std::fs::create_dir(&locked).unwrap();
    let log = locked.join("app.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(fx.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let bin = arbiter_bin().to_str().unwrap();
    let mut args = vec!["-b", "127.0.0.1:0", "--log-file", log.to_str().unwrap()];
    let mut master = if root {
        // Root writes anywhere: as nobody, only the file itself is writable.
        let mut full = vec!["--reuid=65534", "--regid=65534", "--clear-groups", bin];
        full.append(&mut args);
        fx.start_program("arbiter", Path::new("setpriv"), &full, &[])
    } else {
        fx.start("arbiter", &args)
    };
    let started = arbiter_tests::wait_until(arbiter_tests::SOON, || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("Booting worker"))
            || master.exited()
    });
    assert!(started && !master.exited(), "{}", master.stderr());
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    master.assert_no_process_left();
}
