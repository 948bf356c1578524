//! Heartbeats taken by the kernel: an eBPF socket filter on each worker's notify socket that
//! keeps a bare `WATCHDOG=1` out of the queue and writes the time it was sent into a table the
//! master reads when a deadline needs it.
//!
//! A unix datagram socket runs its filter in the sender's `sendmsg`, before the message is
//! queued or the queue's limit is checked; a message the filter drops is reported sent. So a
//! worker beating once a second costs the master nothing between its deadlines: no wake-up,
//! no `recvmmsg`, no queue to keep from filling. Every other message (`READY=1`, `STATUS=`,
//! a heartbeat sent with anything else) passes and is read as before.
//!
//! The table is a few one-entry `BPF_MAP_TYPE_ARRAY` maps, each value [`CHUNK`] stamps
//! (`CLOCK_MONOTONIC` nanoseconds, from `bpf_ktime_get_ns`); one lookup copies a whole chunk.
//! Each program writes one stamp, addressed directly (`BPF_PSEUDO_MAP_VALUE`), so there is one
//! small program per table index, loaded for each socket given the index and closed once
//! attached (the socket holds it): the master keeps no fd per worker for it, only one per
//! table map. Loading needs `CAP_BPF` (root) where
//! `kernel.unprivileged_bpf_disabled` is set, as on most distributions: without it the
//! caller reads heartbeats from the sockets.
//!
//! Neither nix nor rustix wraps `bpf(2)`: one private function makes the call, for the three
//! commands used, each with its attribute block built here.

use std::collections::BTreeSet;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Stamps per table map: one page of `u64`.
pub const CHUNK: usize = 512;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PSEUDO_MAP_VALUE: u8 = 2;
const BPF_FUNC_KTIME_GET_NS: i32 = 5;

/// The attribute block of one `bpf(2)` command: a `#[repr(C)]` prefix of the kernel's
/// `union bpf_attr` for that command, whose pointers point at memory borrowed for as long as
/// the block lives ([`Attr::RETURNS_FD`]: whether the command's result is a new fd).
trait Attr {
    const COMMAND: libc::c_long;
    const RETURNS_FD: bool;
}

/// `BPF_MAP_CREATE`.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

impl Attr for MapCreate {
    const COMMAND: libc::c_long = BPF_MAP_CREATE;
    const RETURNS_FD: bool = true;
}

/// `BPF_PROG_LOAD`, borrowing the instructions and the license string.
#[repr(C)]
struct ProgLoad<'a> {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    borrowed: PhantomData<&'a [Insn]>,
}

impl Attr for ProgLoad<'_> {
    const COMMAND: libc::c_long = BPF_PROG_LOAD;
    const RETURNS_FD: bool = true;
}

/// `BPF_MAP_LOOKUP_ELEM` of key 0, writing the value into a borrowed chunk.
#[repr(C)]
struct Lookup<'a> {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
    borrowed: PhantomData<&'a mut [u64; CHUNK]>,
}

impl Attr for Lookup<'_> {
    const COMMAND: libc::c_long = BPF_MAP_LOOKUP_ELEM;
    const RETURNS_FD: bool = false;
}

/// Runs one command; its new fd, for the commands that make one.
fn bpf<A: Attr>(attr: &mut A) -> io::Result<Option<OwnedFd>> {
    // SAFETY: `attr` is a live, initialized attribute block of its command (see `Attr`), of the
    // size passed; every pointer in it points at memory borrowed for `attr`'s lifetime, which
    // covers the call: the kernel reads the instructions, license and key and writes a map
    // value of the size the map was created with into a `[u64; CHUNK]` of that size. A
    // non-negative result of a command that makes an fd is a new fd that nothing else owns.
    unsafe {
        let r = libc::syscall(
            libc::SYS_bpf,
            A::COMMAND,
            attr as *mut A,
            std::mem::size_of::<A>(),
        );
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(A::RETURNS_FD.then(|| OwnedFd::from_raw_fd(r as RawFd)))
    }
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// `dst_reg` in the low four bits, `src_reg` in the high four.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `"WATC"`, `"HDOG"` and `"=1"` as the kernel's absolute loads read them (network order).
const WATC: i32 = i32::from_be_bytes(*b"WATC");
const HDOG: i32 = i32::from_be_bytes(*b"HDOG");
const EQ1: i32 = u16::from_be_bytes(*b"=1") as i32;

/// The filter for the stamp at byte `offset` of the map value `map`: a message that is
/// exactly `WATCHDOG=1` (or `WATCHDOG=1\n`) writes `bpf_ktime_get_ns()` there and is dropped;
/// any other passes whole.
fn program(map: RawFd, offset: i32) -> [Insn; 21] {
    // Jumps count from the next instruction; PASS is instruction 19.
    const PASS: i16 = 19;
    let to_pass = |at: i16| PASS - at - 1;
    [
        insn(0xbf, 6, 1, 0, 0),           // 0: r6 = r1 (the skb, for the loads)
        insn(0x61, 7, 6, 0, 0),           // 1: r7 = skb->len
        insn(0x15, 7, 0, 3, 10),          // 2: if r7 == 10 goto 6
        insn(0x55, 7, 0, to_pass(3), 11), // 3: if r7 != 11 goto PASS
        insn(0x30, 0, 0, 0, 10),          // 4: r0 = byte 10
        insn(0x55, 0, 0, to_pass(5), b'\n' as i32), // 5: if r0 != '\n' goto PASS
        insn(0x20, 0, 0, 0, 0),           // 6: r0 = bytes 0..4
        insn(0x55, 0, 0, to_pass(7), WATC), // 7: if r0 != "WATC" goto PASS
        insn(0x20, 0, 0, 0, 4),           // 8: r0 = bytes 4..8
        insn(0x55, 0, 0, to_pass(9), HDOG), // 9: if r0 != "HDOG" goto PASS
        insn(0x28, 0, 0, 0, 8),           // 10: r0 = bytes 8..10
        insn(0x55, 0, 0, to_pass(11), EQ1), // 11: if r0 != "=1" goto PASS
        insn(0x18, 1, BPF_PSEUDO_MAP_VALUE, 0, map), // 12: r1 = &value[offset]
        insn(0, 0, 0, 0, offset),         // 13: (the second half of 12)
        insn(0xbf, 7, 1, 0, 0),           // 14: r7 = r1
        insn(0x85, 0, 0, 0, BPF_FUNC_KTIME_GET_NS), // 15: r0 = bpf_ktime_get_ns()
        insn(0x7b, 7, 0, 0, 0),           // 16: *(u64 *)r7 = r0
        insn(0xb7, 0, 0, 0, 0),           // 17: r0 = 0: dropped
        insn(0x95, 0, 0, 0, 0),           // 18: exit
        insn(0xb4, 0, 0, 0, -1),          // 19: PASS: r0 = u32::MAX: kept whole
        insn(0x95, 0, 0, 0, 0),           // 20: exit
    ]
}

fn name(text: &str) -> [u8; 16] {
    let mut name = [0; 16];
    name[..text.len().min(15)].copy_from_slice(&text.as_bytes()[..text.len().min(15)]);
    name
}

/// The table.
pub struct BeatFilter {
    chunks: Vec<OwnedFd>,
    stamps: Vec<Box<[u64; CHUNK]>>,
    free: BTreeSet<u32>,
    next: u32,
}

impl BeatFilter {
    /// A table with its first program loaded, or why the kernel refused (`EPERM` without
    /// `CAP_BPF`).
    pub fn new() -> io::Result<BeatFilter> {
        let mut filter = BeatFilter {
            chunks: Vec::new(),
            stamps: Vec::new(),
            free: BTreeSet::new(),
            next: 0,
        };
        let first = filter.take();
        filter.program(first)?;
        filter.release(first);
        Ok(filter)
    }

    /// A free table index (the lowest), for one socket.
    pub fn take(&mut self) -> u32 {
        self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Gives an index back, once its socket is closed (no filter of it runs any more).
    pub fn release(&mut self, index: u32) {
        self.free.insert(index);
    }

    /// The program of `index` (its chunk made the first time), to attach and close.
    pub fn program(&mut self, index: u32) -> io::Result<OwnedFd> {
        let index = index as usize;
        let chunk = index / CHUNK;
        while self.chunks.len() <= chunk {
            let mut attr = MapCreate {
                map_type: BPF_MAP_TYPE_ARRAY,
                key_size: 4,
                value_size: (CHUNK * 8) as u32,
                max_entries: 1,
                map_name: name("arbiter_beats"),
                ..MapCreate::default()
            };
            let map = bpf(&mut attr)?.expect("a map fd");
            self.chunks.push(map);
            self.stamps.push(Box::new([0; CHUNK]));
        }
        let map = self.chunks[chunk].as_raw_fd();
        let code = program(map, ((index % CHUNK) * 8) as i32);
        let license = c"MIT OR Apache-2.0";
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: code.len() as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name("arbiter_beat"),
            borrowed: PhantomData,
        };
        Ok(bpf(&mut attr)?.expect("a program fd"))
    }

    /// Reads the stamps of the first `indices` table indices (one lookup per chunk).
    pub fn load(&mut self, indices: u32) {
        let chunks = (indices as usize).div_ceil(CHUNK).min(self.chunks.len());
        for (map, stamps) in self.chunks.iter().zip(&mut self.stamps).take(chunks) {
            let key: u32 = 0;
            let mut attr = Lookup {
                map_fd: map.as_raw_fd() as u32,
                pad: 0,
                key: &key as *const u32 as u64,
                value: stamps.as_mut_ptr() as u64,
                flags: 0,
                borrowed: PhantomData,
            };
            // A failed lookup (none is expected) leaves the stamps read before.
            let _ = bpf(&mut attr);
        }
    }

    /// The stamp of `index` as last loaded (`CLOCK_MONOTONIC` nanoseconds; 0: never).
    pub fn stamp(&self, index: u32) -> u64 {
        let index = index as usize;
        self.stamps
            .get(index / CHUNK)
            .map_or(0, |chunk| chunk[index % CHUNK])
    }

    /// The largest index given out so far, plus one.
    pub fn indices(&self) -> u32 {
        self.next
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the stamps' clock).
pub fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
    })
}

/// How long before `now_ns` the stamp `stamp_ns` was.
pub fn age(now_ns: u64, stamp_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(stamp_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn the_loads_compare_the_message_bytes() {
        assert_eq!(WATC, 0x5741_5443);
        assert_eq!(HDOG, 0x4844_4f47);
        assert_eq!(EQ1, 0x3d31);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::size_of::<MapCreate>(), 44);
        assert_eq!(std::mem::size_of::<Lookup<'_>>(), 32);
    }

    /// As root (CI runs as root) the kernel must take the filter; elsewhere it may refuse
    /// with EPERM, and only that.
    fn filter_or_why() -> Option<BeatFilter> {
        match BeatFilter::new() {
            Ok(filter) => Some(filter),
            Err(e) => {
                assert!(
                    !nix::unistd::geteuid().is_root(),
                    "root and the kernel refused the filter: {e}"
                );
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                None
            }
        }
    }

    #[test]
    fn bare_heartbeats_are_stamped_and_dropped_and_everything_else_passes() {
        let Some(mut filter) = filter_or_why() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // Two sockets with neighbouring indices: a beat lands in its own stamp only.
        let path_a = dir.path().join("a");
        let path_b = dir.path().join("b");
        let a = UnixDatagram::bind(&path_a).unwrap();
        let b = UnixDatagram::bind(&path_b).unwrap();
        a.set_nonblocking(true).unwrap();
        let (ia, ib) = (filter.take(), filter.take());
        // The program's fd is closed once attached: the socket holds the program.
        let program = filter.program(ia).unwrap();
        arbiter_sockets::attach_filter(a.as_fd(), program.as_fd()).unwrap();
        drop(program);
        arbiter_sockets::attach_filter(b.as_fd(), filter.program(ib).unwrap().as_fd()).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        let before = monotonic_ns();
        for _ in 0..100 {
            sender.send_to(b"WATCHDOG=1", &path_a).unwrap();
        }
        sender.send_to(b"WATCHDOG=1\n", &path_a).unwrap();
        let after = monotonic_ns();
        filter.load(filter.indices());
        let stamp = filter.stamp(ia);
        assert!(
            (before..=after).contains(&stamp),
            "{before} <= {stamp} <= {after}"
        );
        assert_eq!(filter.stamp(ib), 0, "the other socket's stamp is untouched");
        let mut buffer = [0; 64];
        assert_eq!(
            a.recv(&mut buffer).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "a hundred and one heartbeats sent, none queued (the kernel queues 11)"
        );
        for other in [
            &b"READY=1"[..],
            b"WATCHDOG=1\nSTATUS=busy",
            b"WATCHDOG=2",
            b"WATCHDOG=1\r",
            b"WATCHDOG=",
            b"watchdog=1",
            b"",
        ] {
            sender.send_to(other, &path_a).unwrap();
            let n = a.recv(&mut buffer).unwrap();
            assert_eq!(&buffer[..n], other, "passes whole");
        }
        filter.load(filter.indices());
        assert_eq!(filter.stamp(ia), stamp, "only a bare heartbeat stamps");
    }

    #[test]
    fn indices_are_reused_lowest_first() {
        let Some(mut filter) = filter_or_why() else {
            return;
        };
        let taken: Vec<u32> = (0..CHUNK as u32 + 2).map(|_| filter.take()).collect();
        assert_eq!(taken, (0..CHUNK as u32 + 2).collect::<Vec<_>>());
        let last = *taken.last().unwrap();
        filter.program(last).unwrap();
        assert_eq!(filter.chunks.len(), 2, "a second chunk for index {last}");
        filter.release(3);
        filter.release(last);
        assert_eq!(filter.take(), 3);
        assert_eq!(filter.take(), last);
    }
}
