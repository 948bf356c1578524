//! Creating, matching and closing listeners against the real kernel.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use arbiter_sockets::{
    bind, close_listeners, may_unlink, resolve, BindOptions, BindSpec, Error, Inherited, LocalAddr,
    Origin,
};

fn opts() -> BindOptions {
    BindOptions {
        retries: 0,
        retry_delay: Duration::from_millis(10),
        ..BindOptions::default()
    }
}

fn cloexec(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries.
    unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
}

#[test]
fn tcp_ephemeral_port_is_resolved_and_displayed() {
    let listeners = bind(&"127.0.0.1:0".parse().unwrap(), &opts()).unwrap();
    assert_eq!(listeners.len(), 1);
    let listener = &listeners[0];
    let LocalAddr::Inet(addr) = listener.local_addr() else {
        panic!("not inet")
    };
    assert_ne!(addr.port(), 0);
    assert_eq!(
        listener.to_string(),
        format!("http://127.0.0.1:{}", addr.port())
    );
    assert_eq!(listener.origin(), Origin::Bound);
    assert!(cloexec(listener.fd().as_raw_fd()));
    TcpStream::connect(addr).expect("connect to the listener");
}

#[test]
fn ipv6_is_v6only_and_bracketed() {
    let Ok(listeners) = bind(&"[::1]:0".parse().unwrap(), &opts()) else {
        return; // no IPv6 loopback on this machine: nothing to check
    };
    let listener = &listeners[0];
    let LocalAddr::Inet(addr) = listener.local_addr() else {
        panic!("not inet")
    };
    assert_eq!(
        listener.to_string(),
        format!("http://[::1]:{}", addr.port())
    );
    let fd = listener.fd().as_raw_fd();
    let mut v6only: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out pointers for an int option.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            std::ptr::from_mut(&mut v6only).cast(),
            &mut len,
        )
    };
    assert_eq!((r, v6only), (0, 1));
}

#[test]
fn address_in_use_is_retried_a_bounded_number_of_times() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let spec: BindSpec = format!("127.0.0.1:{port}").parse().unwrap();
    let options = BindOptions {
        retries: 3,
        retry_delay: Duration::from_millis(30),
        ..opts()
    };
    let started = Instant::now();
    let error = bind(&spec, &options).expect_err("port is taken");
    assert!(started.elapsed() >= Duration::from_millis(90));
    match &error {
        Error::Bind {
            addr,
            attempts,
            source,
        } => {
            assert_eq!(addr, &format!("http://127.0.0.1:{port}"));
            assert_eq!(*attempts, 4);
            assert_eq!(source.raw_os_error(), Some(libc::EADDRINUSE));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(error.to_string().starts_with(&format!(
        "cannot bind http://127.0.0.1:{port} (after 4 attempt(s)): "
    )));
}

#[test]
fn address_not_available_fails_at_once() {
    let options = BindOptions {
        retries: 5,
        retry_delay: Duration::from_secs(20),
        ..opts()
    };
    let started = Instant::now();
    // 192.0.2.1 (TEST-NET-1) is not a local address.
    let error = bind(&"192.0.2.1:0".parse().unwrap(), &options).expect_err("not local");
    // No retry: less than half the 20 s delay before a first retry (a 500 ms bound with a 1 s
    // delay measured the machine's load); `attempts: 1` below says it too.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        matches!(&error, Error::Bind { attempts: 1, source, .. } if source.raw_os_error() == Some(libc::EADDRNOTAVAIL)),
        "{error}"
    );
}

#[test]
fn unix_socket_mode_stale_live_and_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let spec = BindSpec::Unix(path.clone());
    let options = BindOptions {
        mode: Some(0o660),
        ..opts()
    };

    // A stale socket file (nobody listening) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = bind(&spec, &options).unwrap().remove(0);
    assert_eq!(listener.to_string(), format!("unix:{}", path.display()));
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // While it is live, a second bind is refused and the file is kept.
    let error = bind(&spec, &options).expect_err("live socket");
    assert!(matches!(error, Error::SocketInUse { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "cannot bind unix:{}: a live socket is listening there",
            path.display()
        )
    );
    std::os::unix::net::UnixStream::connect(&path).expect("still live");

    // unlink = false (an upgrade) keeps the file; a normal close removes it.
    close_listeners(vec![listener], false);
    assert!(path.exists());
    let listener = bind(&spec, &options).unwrap().remove(0);
    assert!(listener.close(true));
    assert!(!path.exists());

    // A regular file is never replaced.
    std::fs::write(&path, b"data").unwrap();
    let error = bind(&spec, &options).expect_err("regular file");
    assert!(matches!(error, Error::NotASocket { .. }), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

#[test]
fn unix_umask_applies_without_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("masked.sock");
    let options = BindOptions {
        umask: 0o077,
        ..opts()
    };
    let listener = bind(&BindSpec::Unix(path.clone()), &options).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    close_listeners(listener, true);
}

#[test]
fn closing_never_unlinks_a_path_that_is_no_longer_ours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moved.sock");
    let listener = bind(&BindSpec::Unix(path.clone()), &opts())
        .unwrap()
        .remove(0);
    // Someone replaced the path with their own file.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"theirs").unwrap();
    assert!(!listener.close(true));
    assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
}

#[test]
fn unlink_policy_follows_gunicorn() {
    assert!(may_unlink(false, false));
    assert!(!may_unlink(true, false), "upgrade under way");
    assert!(!may_unlink(false, true), "reuse port");
}

#[test]
fn fd_spec_adopts_a_listening_socket_and_refuses_others() {
    let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let fd = std::os::fd::IntoRawFd::into_raw_fd(std_listener);
    let listener = bind(&BindSpec::Fd(fd), &opts()).unwrap().remove(0);
    assert_eq!(listener.origin(), Origin::Fd);
    assert_eq!(listener.local_addr(), &LocalAddr::Inet(addr));

    let file = tempfile::tempfile().unwrap();
    let error = bind(&BindSpec::Fd(file.as_raw_fd()), &opts()).expect_err("a file");
    assert_eq!(
        error.to_string(),
        format!(
            "fd {} is not a listening socket: not a socket",
            file.as_raw_fd()
        )
    );
    let unconnected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let error = bind(&BindSpec::Fd(unconnected.as_raw_fd()), &opts()).expect_err("udp");
    assert!(
        error.to_string().ends_with("socket is not listening"),
        "{error}"
    );
    std::mem::forget(unconnected); // adopt did not take it; keep ownership single
}

#[test]
fn resolve_reuses_matching_inherited_binds_missing_and_closes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let kept_path = dir.path().join("kept.sock");
    let dropped_path = dir.path().join("dropped.sock");
    let mut old = bind(&"127.0.0.1:0".parse().unwrap(), &opts()).unwrap();
    old.extend(bind(&BindSpec::Unix(kept_path.clone()), &opts()).unwrap());
    old.extend(bind(&BindSpec::Unix(dropped_path.clone()), &opts()).unwrap());
    let tcp_addr = old[0].local_addr().clone();
    let tcp_fd = old[0].fd().as_raw_fd();
    let inherited = Inherited {
        origin: Some(Origin::Reexec),
        listeners: old,
        old_master: Some(1),
    };
    let binds: Vec<BindSpec> = vec![
        BindSpec::Unix(kept_path.clone()),
        "127.0.0.1:0".parse().unwrap(), // port 0 matches the old ephemeral port
        BindSpec::Unix(dir.path().join("new.sock")),
    ];
    let listeners = resolve(&binds, inherited, &opts()).unwrap();
    assert_eq!(listeners.len(), 3);
    assert_eq!(
        listeners[0].local_addr(),
        &LocalAddr::Unix(kept_path.clone())
    );
    assert_eq!(listeners[1].local_addr(), &tcp_addr);
    assert_eq!(
        listeners[1].fd().as_raw_fd(),
        tcp_fd,
        "the same socket, not a new one"
    );
    assert_eq!(listeners[1].spec(), Some(&binds[1]));
    assert_eq!(listeners[2].origin(), Origin::Bound);
    // The unmatched one was closed without unlinking: its file stays, nobody listens.
    assert!(dropped_path.exists());
    assert!(std::os::unix::net::UnixStream::connect(&dropped_path).is_err());
    close_listeners(listeners, true);
    assert!(!kept_path.exists());
}

#[test]
fn resolve_with_systemd_and_no_binds_uses_all() {
    let old = bind(&"127.0.0.1:0".parse().unwrap(), &opts()).unwrap();
    let addr = old[0].local_addr().clone();
    let inherited = Inherited {
        origin: Some(Origin::Systemd),
        listeners: old,
        old_master: None,
    };
    let listeners = resolve(&[], inherited, &opts()).unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].local_addr(), &addr);
    let LocalAddr::Inet(SocketAddr::V4(_)) = listeners[0].local_addr() else {
        panic!("not v4")
    };
}

#[test]
fn resolve_after_a_reexec_with_no_binds_uses_all() {
    // The upgrade child of a socket-activated master: its listeners came from systemd through
    // the old master, and no bind is configured.
    let old = bind(&"127.0.0.1:0".parse().unwrap(), &opts()).unwrap();
    let addr = old[0].local_addr().clone();
    let inherited = Inherited {
        origin: Some(Origin::Reexec),
        listeners: old,
        old_master: Some(1),
    };
    let listeners = resolve(&[], inherited, &opts()).unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].local_addr(), &addr);
}

#[test]
fn localhost_binds_every_address_it_resolves_to() {
    let listeners = bind(&"localhost:0".parse().unwrap(), &opts()).unwrap();
    let expected: std::collections::HashSet<_> =
        std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 0))
            .unwrap()
            .map(|a| a.ip())
            .collect();
    let got: std::collections::HashSet<_> = listeners
        .iter()
        .map(|l| match l.local_addr() {
            LocalAddr::Inet(a) => a.ip(),
            LocalAddr::Unix(_) => panic!("unix"),
        })
        .collect();
    assert_eq!(got, expected);
}
