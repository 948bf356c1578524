//! Preloaded memory that forks cheaply.

use std::io;

/// Asks the kernel to back `bytes` with transparent huge pages (`MADV_HUGEPAGE`), for a large
/// preloaded buffer, before it is first written: every fork copies the page tables of the
/// master's memory, one entry per 4 KiB page (51,200 for 200 MiB) or per 2 MiB huge page (100),
/// so a worker starts sooner. Only the whole 4 KiB pages inside `bytes` are advised; the
/// kernel may still use small pages (`/sys/kernel/mm/transparent_hugepage/enabled` set to
/// `never`, or no 2 MiB-aligned stretch).
pub fn advise_huge_pages(bytes: &mut [u8]) -> io::Result<()> {
    const PAGE: usize = 4096;
    let start = (bytes.as_mut_ptr() as usize).next_multiple_of(PAGE);
    let end = (bytes.as_mut_ptr() as usize + bytes.len()) & !(PAGE - 1);
    let Some(addr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else {
        return Ok(());
    };
    if end <= start {
        return Ok(());
    }
    // SAFETY: the range lies within `bytes`, borrowed mutably here, so no other reference sees
    // it change; MADV_HUGEPAGE only changes how the kernel backs those pages, never their
    // contents.
    unsafe { nix::sys::mman::madvise(addr, end - start, nix::sys::mman::MmapAdvise::MADV_HUGEPAGE) }
        .map_err(io::Error::from)
}
