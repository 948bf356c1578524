//! The process title: what `ps -o args` shows (the argv area, overwritten through
//! `/proc/self/mem`, so no `unsafe` is needed) and the kernel's 15-byte `comm`.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

/// Sets the title to `title`, truncated to the length of the original command line.
pub fn set(title: &str) {
    if let Ok(comm) = CString::new(
        title
            .as_bytes()
            .iter()
            .copied()
            .take(15)
            .collect::<Vec<u8>>(),
    ) {
        let _ = nix::sys::prctl::set_name(&comm);
    }
    let _ = overwrite_argv(title);
}

/// `arg_start` and `arg_end` from `/proc/self/stat` (fields 48 and 49).
fn argv_area() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    (end > start).then_some((start, end))
}

fn overwrite_argv(title: &str) -> std::io::Result<()> {
    let (start, end) = argv_area().ok_or_else(|| std::io::Error::other("no argv area"))?;
    let room = (end - start) as usize;
    let mut bytes = title.as_bytes().to_vec();
    bytes.truncate(room.saturating_sub(1));
    bytes.resize(room, 0);
    let mut mem = OpenOptions::new().write(true).open("/proc/self/mem")?;
    mem.seek(SeekFrom::Start(start))?;
    mem.write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_area_is_found_and_holds_our_command_line() {
        let (start, end) = argv_area().expect("argv area");
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!((end - start) as usize, cmdline.len());
    }
}
