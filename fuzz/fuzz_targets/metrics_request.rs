//! A request to the metrics server (`--metrics-bind`), read as the server reads it: the head
//! parser runs on everything read so far after each read, in any split of the bytes, and the
//! first answer must be the one a single read of the whole input gets. A GET or HEAD path is
//! routed (200, 404 or 503 with a body); anything else is refused with 400, 405 or 431; an
//! answer never waits for more than 8 KiB plus one read.
//!
//! Input: byte 0 seeds the read sizes, the rest is what the client sends.
#![no_main]

use arbiter_cli::ops::metrics::{parse_head, route, Counters};
use arbiter_core::{Action, Arbiter, Config, Moment, ReadyMode, Role};
use arbiter_fuzz::{assert_bounded, chunk_sizes, peak_during};
use libfuzzer_sys::fuzz_target;

/// The server's head limit (`MAX_HEAD`) and the most one read adds to it.
const LIMIT: usize = 8 * 1024 + 2048;

fn core_with_ready_workers(n: usize) -> Arbiter {
    let config = Config {
        workers: n,
        ready: ReadyMode::Exec,
        ..Config::default()
    };
    let mut core = Arbiter::new(config, Role::Fresh, Moment::ZERO);
    let mut pid = 100;
    while let Some(action) = core.poll_action() {
        if let Action::Spawn { id, .. } = action {
            pid += 1;
            core.handle_spawned(id, pid, Moment::ZERO);
        }
    }
    core
}

fuzz_target!(|data: &[u8]| {
    let [seed, request @ ..] = data else {
        return;
    };
    let (whole, peak) = peak_during(|| parse_head(request));
    // Lossy UTF-8 of the head: up to three bytes per byte read.
    assert_bounded(peak, 8 * request.len() + 4096, data);

    // Reads of 1..=256 bytes (the real server reads up to 2048 at a time).
    let mut input = Vec::new();
    let mut split = None;
    let mut sizes = chunk_sizes(std::slice::from_ref(seed));
    let mut at = 0;
    while at < request.len() {
        let size = sizes.next().unwrap_or(1).min(request.len() - at);
        input.extend_from_slice(&request[at..at + size]);
        at += size;
        if let Some(answer) = parse_head(&input) {
            split = Some(answer);
            break;
        }
    }
    assert!(
        input.len() <= LIMIT,
        "read {} bytes without answering",
        input.len()
    );
    assert_eq!(split, whole, "split reads answer differently from one read");

    match whole {
        None => assert!(request.len() <= 8 * 1024),
        Some(Err(code)) => assert!([400, 405, 431].contains(&code), "{code}"),
        Some(Ok(path)) => {
            assert!(!path.contains('?') && !path.chars().any(char::is_whitespace));
            let core = core_with_ready_workers(2);
            let (code, body, kind) = route(&path, &core, &Counters::default(), Moment::ZERO);
            assert!([200, 404, 503].contains(&code), "{path:?}: {code}");
            assert!(body.ends_with('\n') && kind.starts_with("text/plain"));
        }
    }
});
