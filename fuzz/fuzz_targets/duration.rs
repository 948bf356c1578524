//! Durations as flags and variables give them (`--timeout 30`, `ARBITER_GRACEFUL_TIMEOUT=1m`):
//! one that parses prints back (as `--check-config` writes it, humantime) to the same duration;
//! a refusal is one line. The TOML forms (integers, floats) go through the `config` target.
#![no_main]

use arbiter_cli::config::parse_duration;
use arbiter_fuzz::{assert_bounded, assert_one_line, peak_during};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (parsed, peak) = peak_during(|| parse_duration(text));
    assert_bounded(peak, 8 * text.len() + 4096, data);
    match parsed {
        Ok(duration) => {
            let shown = humantime::format_duration(duration).to_string();
            let again = parse_duration(&shown).unwrap_or_else(|e| {
                panic!("{text:?} parsed as {duration:?}, shown as {shown:?}, which is refused: {e}")
            });
            assert_eq!(again, duration, "{text:?} shown as {shown:?}");
            if duration.subsec_nanos() == 0 {
                let seconds = duration.as_secs().to_string();
                assert_eq!(parse_duration(&seconds), Ok(duration), "{seconds:?}");
            }
        }
        Err(reason) => assert_one_line(&reason),
    }
});
