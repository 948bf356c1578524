//! `--bind` / `bind = [...]` / `ARBITER_BIND`: a spec that parses prints back to an equal spec,
//! and a refused one gets a one-line error that quotes it.
#![no_main]

use arbiter_fuzz::{assert_bounded, assert_one_line, escaped, peak_during};
use arbiter_sockets::BindSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Flags and variables reach the parser as UTF-8 (the config layer refuses anything else).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (parsed, peak) = peak_during(|| text.parse::<BindSpec>());
    assert_bounded(peak, 4 * text.len() + 256, data);
    match parsed {
        Ok(spec) => {
            let shown = spec.to_string();
            let again = shown.parse::<BindSpec>().unwrap_or_else(|e| {
                panic!("{text:?} parsed as {spec:?}, shown as {shown:?}, which is refused: {e}")
            });
            assert_eq!(again, spec, "{text:?} shown as {shown:?}");
            assert_eq!(again.to_string(), shown, "{text:?}: display is not stable");
        }
        Err(error) => {
            let message = error.to_string();
            assert_one_line(&message);
            let quoted = escaped(text);
            assert!(
                message.contains(&quoted),
                "{message:?} does not name the input {text:?}"
            );
        }
    }
});
