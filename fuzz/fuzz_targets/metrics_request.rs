//! A request to the metrics server (`--metrics-bind`), read as the server reads it: at most
//! `MAX_HEAD + 1` bytes, stopping once the head is complete, then the head parser runs on what
//! was read. Any split of the bytes must get the answer a single read gets. A GET or HEAD path
//! is routed (200, 404 or 503 with a body); anything else is refused with 400, 405 or 431.
//!
//! Input: byte 0 seeds the read sizes, the rest is what the client sends.
#![no_main]

use arbiter_cli::ops::metrics::{parse_head, route, Counters};
use arbiter_core::{Action, Arbiter, Config, Moment, ReadyMode, Role};
use arbiter_fuzz::{assert_bounded, chunk_sizes, peak_during};
use libfuzzer_sys::fuzz_target;

/// The server's head limit (`MAX_HEAD`); it reads one byte more to tell a head too long.
const MAX_HEAD: usize = 8 * 1024;

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
    let one_read = &request[..request.len().min(MAX_HEAD + 1)];
    let (whole, peak) = peak_during(|| parse_head(one_read));
    // Lossy UTF-8 of the head: up to three bytes per byte read.
    assert_bounded(peak, 8 * request.len() + 4096, data);

    // Reads of 1..=256 bytes, until the head is complete or the limit is reached.
    let mut input = Vec::new();
    let mut sizes = chunk_sizes(std::slice::from_ref(seed));
    while input.len() < one_read.len() && parse_head(&input).is_none() {
        let size = sizes.next().unwrap_or(1).min(one_read.len() - input.len());
        input.extend_from_slice(&one_read[input.len()..input.len() + size]);
    }
    let split = parse_head(&input);
    assert_eq!(split, whole, "split reads answer differently from one read");

    match whole {
        None => assert!(request.len() <= MAX_HEAD),
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
