//! Shared checks of the fuzz targets: memory measured per input, one-line errors, and the
//! small input formats that pack several fields into one byte string.
//!
//! Every target links this crate, so its counting allocator is every target's global
//! allocator: [`peak_during`] reports the most heap bytes live at once while a closure runs,
//! which lets a target assert that memory stays bounded by its input (libFuzzer's own
//! `-rss_limit_mb` only catches a leak or a blow-up in the hundreds of megabytes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds bookkeeping on the side, so `System`'s guarantees are passed through as they are.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block this allocator (that is, `System`) handed out.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's block and sizes, forwarded unchanged.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most heap bytes that were live at once during the
/// call, beyond what was live before it (the result's own allocations included).
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let result = f();
    let peak = PEAK.load(Relaxed).saturating_sub(base);
    (result, peak)
}

/// Panics unless `peak` heap bytes stay within `limit`, naming the input.
pub fn assert_bounded(peak: usize, limit: usize, input: &[u8]) {
    assert!(
        peak <= limit,
        "{peak} heap bytes for a {}-byte input (limit {limit}): {:?}",
        input.len(),
        String::from_utf8_lossy(&input[..input.len().min(200)]),
    );
}

/// Panics unless `message` is one line: no newline, carriage return or other control
/// character (a log line or a terminal must show it as one line).
pub fn assert_one_line(message: &str) {
    assert!(
        !message.chars().any(char::is_control),
        "error message is not one line: {message:?}"
    );
}

/// `text` as a one-line message quotes it: control characters escaped (`\n`, `\u{1}`).
pub fn escaped(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// Splits `data` at NUL bytes into `NAME=VALUE` fields (NUL is the one byte an environment
/// value cannot hold). Fields without `=` are skipped; a later field of a name wins.
pub fn env_fields(data: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for field in data.split(|&b| b == 0) {
        let Ok(field) = std::str::from_utf8(field) else {
            continue;
        };
        if let Some((name, value)) = field.split_once('=') {
            fields.retain(|(seen, _)| seen != name);
            fields.push((name.to_owned(), value.to_owned()));
        }
    }
    fields
}

/// Chunk sizes for split reads, from `seed` bytes (each 1..=256, cycling; one chunk of
/// everything when `seed` is empty).
pub fn chunk_sizes(seed: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut index = 0;
    std::iter::from_fn(move || {
        if seed.is_empty() {
            return Some(usize::MAX);
        }
        let size = usize::from(seed[index % seed.len()]) + 1;
        index += 1;
        Some(size)
    })
}
