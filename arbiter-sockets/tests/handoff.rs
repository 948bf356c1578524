//! A worker exec'd through a `HandoffPlan` (after the signal pipe's child reset) gets exactly
//! fds 0-2, its listeners at 3.. in plan order, the extra fd after them, the `LISTEN_*`
//! variables with its own pid, an empty signal mask and no ignored or caught signals; and it
//! can accept on every listener.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use arbiter_signals::SignalPipe;
use arbiter_sockets::{bind, BindOptions, BindSpec, HandoffPlan, LocalAddr, Others};

struct Reap(libc::pid_t);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: kill and reap our own child by pid (harmless if already gone).
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

fn connect_and_read(addr: &LocalAddr) -> String {
    let mut line = String::new();
    match addr {
        LocalAddr::Inet(inet) => {
            let stream = TcpStream::connect(inet).expect("connect tcp");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            BufReader::new(stream).read_line(&mut line).unwrap();
        }
        LocalAddr::Unix(path) => {
            let stream = UnixStream::connect(path).expect("connect unix");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            BufReader::new(stream).read_line(&mut line).unwrap();
        }
    }
    line.trim().to_owned()
}

#[test]
fn probe_gets_listeners_env_and_clean_signals() {
    let signals = SignalPipe::install().expect("install signal pipe");
    let dir = tempfile::tempdir().unwrap();
    let opts = BindOptions::default();
    let unix_spec = BindSpec::Unix(dir.path().join("probe.sock"));
    // Bound in this order, then handed over in the reverse order: the sources' fd numbers and
    // the targets overlap, which the plan must survive.
    let unix = bind(&unix_spec, &opts).unwrap().remove(0);
    let tcp = bind(&"127.0.0.1:0".parse().unwrap(), &opts)
        .unwrap()
        .remove(0);
    let heartbeat = tempfile::tempfile().unwrap();

    let mut plan = HandoffPlan::new(&[&tcp, &unix], &[heartbeat.as_fd()]).unwrap();
    assert_eq!(plan.listener_count(), 2);
    assert_eq!(plan.extra_fd_targets(), 5..6);

    let mut fds = [0; 2];
    // SAFETY: valid array of two fds.
    let created = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(created, 0);
    // SAFETY: pipe2 returned two new fds we own.
    let (report_read, report_write) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    let probe = CString::new(env!("CARGO_BIN_EXE_handoff-probe")).unwrap();
    let argv = [probe.as_ptr(), std::ptr::null()];
    let mut envp: Vec<*const libc::c_char> = plan.env_pointers().collect();
    envp.push(std::ptr::null());
    let report_fd = report_write.as_raw_fd();

    // SAFETY: the child only calls async-signal-safe functions on buffers prepared above
    // (child_reset, dup2, apply_in_child, execve, _exit).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        signals.child_reset();
        // SAFETY: in the forked child: stdout becomes the report pipe; then the plan, then exec.
        unsafe {
            libc::dup2(report_fd, 1);
            if plan.apply_in_child(Others::CloseOnExec).is_ok() {
                libc::execve(probe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
            libc::_exit(127);
        }
    }
    let _reap = Reap(pid);
    drop(report_write);

    // The probe accepts fd 3 (tcp) first, then fd 4 (unix).
    assert_eq!(
        connect_and_read(tcp.local_addr()),
        format!("fd=3 pid={pid}")
    );
    assert_eq!(
        connect_and_read(unix.local_addr()),
        format!("fd=4 pid={pid}")
    );

    let mut report = String::new();
    std::fs::File::from(report_read)
        .read_to_string(&mut report)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
        assert!(Instant::now() < deadline, "probe did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{report}"
    );

    let unix_name = format!("unix_{}", dir.path().join("probe.sock").display());
    let expected = [
        format!("pid={pid}"),
        "fds=0,1,2,3,4,5".to_owned(),
        "listen_fds=2".to_owned(),
        format!("listen_pid={pid}"),
        format!("listen_fdnames=127.0.0.1_0:{unix_name}"),
        "sigblk=0000000000000000".to_owned(),
        "sigign=0000000000000000".to_owned(),
        "sigcgt=0000000000000000".to_owned(),
    ];
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines, expected, "probe report");
}
