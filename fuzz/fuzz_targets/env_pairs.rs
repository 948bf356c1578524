//! Worker environment pairs: repeated `--env KEY=VALUE` flags and one comma-separated
//! `ARBITER_ENV`. Accepted pairs have valid, unique names and print back (as `--check-config`
//! writes them, one `KEY=VALUE` per item) to the same pairs; a refusal is one line.
//!
//! Input: the flag values separated by NUL bytes; the whole input is also tried as the
//! variable's value (NULs and all: a variable cannot hold one, so it must be refused or split).
#![no_main]

use arbiter_cli::config::{parse_env_flags, parse_env_variable};
use arbiter_fuzz::{assert_bounded, assert_one_line, peak_during};
use libfuzzer_sys::fuzz_target;

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check(pairs: &[(String, String)], input: &str) {
    for (i, (key, _)) in pairs.iter().enumerate() {
        assert!(is_env_name(key), "{input:?}: accepted the name {key:?}");
        assert!(
            pairs[..i].iter().all(|(earlier, _)| earlier != key),
            "{input:?}: {key:?} twice"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let flags: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let (parsed, peak) = peak_during(|| parse_env_flags(&flags));
    // Each item holds its text and a few words of bookkeeping; an item may be one byte.
    assert_bounded(peak, 160 * text.len() + 4096, data);
    match parsed {
        Ok(pairs) => {
            check(&pairs, text);
            assert_eq!(pairs.len(), flags.len());
            let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert_eq!(shown, flags, "flags print back as they were given");
            assert_eq!(parse_env_flags(&shown), Ok(pairs));
        }
        Err(reason) => assert_one_line(&reason),
    }

    let (parsed, peak) = peak_during(|| parse_env_variable(text));
    assert_bounded(peak, 160 * text.len() + 4096, data);
    match parsed {
        Ok(pairs) => {
            check(&pairs, text);
            // Items are trimmed and split at commas; a value without either prints back.
            let plain = |v: &String| !v.contains(',') && v.trim() == v;
            if pairs.iter().all(|(_, v)| plain(v)) && !pairs.is_empty() {
                let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                assert_eq!(parse_env_variable(&shown.join(",")), Ok(pairs));
            }
        }
        Err(reason) => assert_one_line(&reason),
    }
});
