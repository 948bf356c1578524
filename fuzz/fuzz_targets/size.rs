//! Sizes as flags, variables and TOML give them (`--max-worker-memory 512M`,
//! `ARBITER_MAX_WORKER_MEMORY=2G`): one that parses prints back (as `--check-config` writes it)
//! to the same number of bytes; a refusal is one line; memory stays bounded.
#![no_main]

use arbiter_cli::config::ByteSize;
use arbiter_fuzz::{assert_bounded, assert_one_line, peak_during};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (parsed, peak) = peak_during(|| text.parse::<ByteSize>());
    assert_bounded(peak, 4 * text.len() + 4096, data);
    match parsed {
        Ok(size) => {
            let shown = size.to_string();
            let again: ByteSize = shown.parse().unwrap_or_else(|e| {
                panic!("{text:?} parsed as {size:?}, shown as {shown:?}, which is refused: {e}")
            });
            assert_eq!(again, size, "{text:?} shown as {shown:?}");
            assert_eq!(
                size.0.to_string().parse::<ByteSize>(),
                Ok(size),
                "{text:?} as plain bytes"
            );
        }
        Err(reason) => assert_one_line(&reason),
    }
});
