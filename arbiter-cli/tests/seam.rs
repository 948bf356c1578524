//! The OS seam's real side against the kernel: one test per binary, since it looks at any
//! child of this process (`waitid(P_ALL)`).

use std::time::{Duration, Instant};

use arbiter_cli::os::seam::{ChildStatus, Os, System};

#[test]
// The child is reaped by the seam under test, not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn the_real_system_peeks_without_reaping() {
    // A child of this test process (std's Command does not reap it for us).
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .expect("sh");
    let pid = child.id() as i32;
    let mut os = System::new().expect("the signal pipe");
    // Wait (bounded) for its exit; other tests' children may show up too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        match os.peek_exit() {
            Some(exit) if exit.pid == pid => {
                seen = Some(exit);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let seen = seen.expect("the child's exit was seen");
    assert_eq!(seen.status, ChildStatus::Exited(7));
    // Peeking twice reports it again: it is still a zombie.
    assert_eq!(os.peek_exit().map(|e| e.pid), Some(pid));
    assert_eq!(os.reap(pid), Some(seen));
}
