//! Per-slot `SO_REUSEPORT` listeners: one accept queue per worker slot, held by the master, so
//! a slot's queue outlives its worker (a dead worker's queued connections wait for its
//! replacement, and a replacement that runs beside its predecessor shares the queue).
//!
//! Model: slot 0 of a TCP bind is the bind's own listener (which must have `SO_REUSEPORT`);
//! slots 1.. are siblings bound to the same address ([`Listener::reuse_port_sibling`]). The
//! kernel keeps a reuse-port group's sockets in an array, in the order they were bound, and
//! when one closes it moves the last one into its place. So as long as siblings are created
//! in slot order and closed only from the top, a socket's index in the group is its slot, and
//! [`steer`] can name slots: it attaches a classic BPF program (no privilege needed) that picks
//! a random index below `slots`, so a slot at or above it gets no new connection while it
//! drains. Closing a listener resets the connections still in its queue unless
//! `net.ipv4.tcp_migrate_req` is 1 ([`migrate_requests`]), which moves them to another
//! listener of the group.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::listener::bind_inet;
use crate::{BindOptions, Error, Listener, LocalAddr, Origin};

/// The classic BPF program of [`steer`]: `A = random; A %= slots; return A`.
fn program(slots: u32) -> [libc::sock_filter; 3] {
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    [
        op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32,
        ),
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, slots.max(1)),
        op(libc::BPF_RET | libc::BPF_A, 0),
    ]
}

/// `SO_ATTACH_REUSEPORT_CBPF` (the same number on every architecture Linux runs arbiter on
/// but mips, parisc and sparc, which are not supported here).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Sends new connections of `listener`'s reuse-port group only to the sockets at indices
/// `0..slots` (at random, as the kernel's own hash would spread them). The program belongs to
/// the group: attaching it through any member replaces the one before.
pub fn steer(listener: &Listener, slots: u32) -> io::Result<()> {
    let filter = program(slots);
    let fprog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // `fprog` points at `filter`, which lives across the call; the kernel copies the program
    // and keeps no pointer.
    set_socket_option(listener.fd(), SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

/// Attaches the loaded eBPF socket filter `program` (`BPF_PROG_TYPE_SOCKET_FILTER`) to
/// `socket`: each datagram or packet queued on it runs the program first, in the sender's
/// context, and is dropped when the program returns 0. It replaces any filter before.
pub fn attach_filter(socket: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let program: libc::c_int = program.as_raw_fd();
    set_socket_option(socket, libc::SO_ATTACH_BPF, &program)
}

/// `setsockopt(fd, SOL_SOCKET, name, value)`, for the options rustix does not wrap.
fn set_socket_option<T>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` borrowed across the call and the size passed is its own;
    // setsockopt only reads it (a pointer inside it is read by the kernel with its own checks,
    // never written through). The fd is borrowed, so it stays open across the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an established connection waits in `listener`'s accept queue: a listening socket
/// polls readable exactly then. One syscall on the held fd, whatever the number of sockets on
/// the machine (unlike [`queued`], which reads the whole `/proc/net/tcp`: on a machine with
/// tens of thousands of sockets that took seconds of the master's loop). `false` where the
/// poll fails.
pub fn has_queued(listener: &Listener) -> bool {
    let fd = listener.fd();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
        && fds[0].revents().contains(rustix::event::PollFlags::IN)
}

/// How many established connections wait in `listener`'s accept queue: the `rx_queue` that
/// `/proc/net/tcp` (or `tcp6`) shows for a listening socket, found by its inode. Handshakes
/// still in flight are not counted. `None` where it cannot be told.
pub fn queued(listener: &Listener) -> Option<u32> {
    let inode = rustix::fs::fstat(listener.fd()).ok()?.st_ino.to_string();
    let table = match listener.local_addr() {
        LocalAddr::Inet(addr) if addr.is_ipv4() => "/proc/net/tcp",
        LocalAddr::Inet(_) => "/proc/net/tcp6",
        LocalAddr::Unix(_) => return None,
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(9) != Some(&inode.as_str()) {
            return None;
        }
        let (_, rx) = fields.get(4)?.split_once(':')?;
        u32::from_str_radix(rx, 16).ok()
    })
}

/// Whether this network namespace migrates a closing listener's queued connections and
/// handshakes to another listener of its reuse-port group (`net.ipv4.tcp_migrate_req`,
/// Linux 5.14+); `None` where it cannot be read.
pub fn migrate_requests() -> Option<bool> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").ok()?;
    Some(text.trim() == "1")
}

impl Listener {
    /// Whether this listener can have per-slot siblings: a TCP socket with `SO_REUSEPORT`.
    pub fn takes_siblings(&self) -> bool {
        matches!(self.local_addr(), LocalAddr::Inet(_))
            && rustix::net::sockopt::socket_reuseport(self.fd()).unwrap_or(false)
    }

    /// A new listener in this one's reuse-port group: the same address (its real port, even
    /// where the spec said 0), `SO_REUSEPORT`, the same spec and name, `backlog`.
    pub fn reuse_port_sibling(&self, backlog: i32) -> Result<Listener, Error> {
        let LocalAddr::Inet(addr) = self.local_addr() else {
            return Err(Error::Handoff("per-slot listeners are for TCP only"));
        };
        let opts = BindOptions {
            reuse_port: true,
            backlog,
            ..BindOptions::default()
        };
        let fd = bind_inet(*addr, &opts).map_err(|source| Error::Bind {
            addr: self.local_addr().to_string(),
            attempts: 1,
            source,
        })?;
        let mut sibling = Listener::adopt(fd, Origin::Bound, Some(self.name().to_owned()))?;
        if let Some(spec) = self.spec() {
            sibling.set_spec(spec.clone());
            sibling.set_name(self.name());
        }
        Ok(sibling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_takes_a_random_index_below_slots() {
        let p = program(3);
        assert_eq!(p[0].k, (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32);
        assert_eq!(p[1].k, 3);
        assert_eq!(program(0)[1].k, 1, "never a division by zero");
    }
}
