//! The worker protocol as a foreign worker sees it: a Python script that reports its
//! environment and open descriptors over HTTP on the inherited fd 3.

use std::collections::BTreeMap;
use std::process::Command;

use arbiter_tests::{get, Fixture, SOON};

const WORKER: &str = r#"
import json, os, socket
fds = []
for name in os.listdir("/proc/self/fd"):
    try:
        os.readlink("/proc/self/fd/" + name)  # the listing's own fd is closed by now
    except OSError:
        continue
    fds.append(int(name))
fds.sort()
keys = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "ARBITER_WORKER_ID",
        "ARBITER_WORKER_SLOT", "NOTIFY_SOCKET", "ARBITER_HEARTBEAT_FD", "SERVER_SOFTWARE",
        "FROM_ENV_OPTION"]
findings = {k: os.environ.get(k) for k in keys}
findings["pid"] = os.getpid()
findings["fds"] = fds
hb = int(os.environ.get("ARBITER_HEARTBEAT_FD", "-1"))
try:
    os.fstat(hb)
    findings["heartbeat_open"] = True
except OSError:
    findings["heartbeat_open"] = False
listener = socket.socket(fileno=3)
findings["fd3_listening"] = listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
body = json.dumps(findings).encode()
while True:
    conn, _ = listener.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    conn.close()
"#;

/// The real interpreter behind `python3` (not a version-manager shim).
pub(crate) fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_python_worker_gets_the_protocol_environment_and_only_its_fds() {
    let fx = Fixture::new();
    let script = fx.write("worker.py", WORKER);
    let python = python();
    let mut master = fx.start_with(
        "arbiter",
        &[
            "-b",
            "127.0.0.1:0",
            "-w",
            "1",
            "-e",
            "FROM_ENV_OPTION=yes",
            "--",
            &python,
            script.to_str().unwrap(),
        ],
        // Inherited protocol variables must be replaced, never passed on.
        &[("ARBITER_WORKER_ID", "99"), ("SERVER_SOFTWARE", "bogus/1")],
    );
    let port = master.port();
    let worker = master.wait_children(1, SOON)[0];
    let mut response = None;
    arbiter_tests::wait_until(SOON, || {
        response = get(port, "/").ok();
        response.is_some()
    });
    let response = response.unwrap_or_else(|| panic!("python worker silent\n{}", master.stderr()));
    assert_eq!(response.status, 200);
    let findings: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&response.body).expect("json findings");
    let text = |key: &str| findings[key].as_str().unwrap_or_default().to_string();
    assert_eq!(findings["pid"].as_i64(), Some(i64::from(worker)));
    assert_eq!(text("LISTEN_FDS"), "1", "{findings:?}");
    assert_eq!(text("LISTEN_PID"), worker.to_string(), "{findings:?}");
    assert!(!text("LISTEN_FDNAMES").is_empty(), "{findings:?}");
    assert_eq!(text("ARBITER_WORKER_ID"), "1", "{findings:?}");
    assert_eq!(text("ARBITER_WORKER_SLOT"), "0", "{findings:?}");
    assert!(!text("NOTIFY_SOCKET").is_empty(), "{findings:?}");
    assert!(
        text("SERVER_SOFTWARE").starts_with("arbiter/"),
        "{findings:?}"
    );
    assert_eq!(text("FROM_ENV_OPTION"), "yes", "{findings:?}");
    let heartbeat: i64 = text("ARBITER_HEARTBEAT_FD").parse().expect("a number");
    assert_eq!(findings["heartbeat_open"], serde_json::Value::Bool(true));
    assert_eq!(findings["fd3_listening"], serde_json::Value::Bool(true));
    let fds: Vec<i64> = findings["fds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_i64())
        .collect();
    assert_eq!(fds, vec![0, 1, 2, 3, heartbeat], "{findings:?}");
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(crate::EXIT), 0, "{}", master.stderr());
    master.assert_no_process_left();
}
