//! `take_inherited` reads and clears the environment and re-arms close-on-exec.
//! Its own test binary: it mutates the process environment.

use std::net::TcpListener;
use std::os::fd::IntoRawFd;

use arbiter_sockets::{reexec_env, take_inherited, LocalAddr, Origin};

#[test]
fn reexec_listeners_are_taken_and_the_variables_removed() {
    let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let fd = std_listener.into_raw_fd();
    // As the re-exec child sees it: close-on-exec cleared.
    // SAFETY: F_SETFD on the fd we just released.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);

    // SAFETY: this test binary has one test; no other thread touches the environment.
    unsafe {
        std::env::set_var("ARBITER_LISTEN_FDS", fd.to_string());
        std::env::set_var("ARBITER_MASTER_PID", "4242");
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_PID", "1");
    }
    // SAFETY: as above; the fd is owned by nothing else now.
    let inherited = unsafe { take_inherited() }.unwrap();
    assert_eq!(inherited.origin, Some(Origin::Reexec));
    assert_eq!(inherited.old_master, Some(4242));
    assert_eq!(inherited.listeners.len(), 1);
    assert_eq!(inherited.listeners[0].local_addr(), &LocalAddr::Inet(addr));
    // SAFETY: F_GETFD only queries.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert_ne!(flags & libc::FD_CLOEXEC, 0, "close-on-exec set again");
    for name in [
        "ARBITER_LISTEN_FDS",
        "ARBITER_MASTER_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
    ] {
        assert!(std::env::var_os(name).is_none(), "{name} still set");
    }

    let env = reexec_env(&inherited.listeners);
    assert_eq!(
        env,
        vec![
            ("ARBITER_LISTEN_FDS".to_owned(), fd.to_string()),
            (
                "ARBITER_LISTEN_FDNAMES".to_owned(),
                inherited.listeners[0].name().to_owned()
            ),
            (
                "ARBITER_MASTER_PID".to_owned(),
                std::process::id().to_string()
            ),
        ]
    );

    // Nothing left to inherit: an empty result, not an error.
    // SAFETY: as above.
    let again = unsafe { take_inherited() }.unwrap();
    assert!(again.origin.is_none() && again.listeners.is_empty());
}
