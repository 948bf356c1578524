//! A line on the control socket (`arbiter ctl`'s protocol), framed as the server frames it (up
//! to the first newline, or all of it at EOF). A request that parses prints back (`to_line`)
//! as one line that parses to the same request; a refusal is a one-line reason, and the
//! failure answer built from it is one valid JSON line carrying it.
#![no_main]

use arbiter_cli::protocol::{failure, Request};
use arbiter_fuzz::{assert_bounded, assert_one_line, peak_during};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(end) => &data[..end],
        None => data,
    };
    let (parsed, peak) = peak_during(|| Request::parse(line));
    assert_bounded(peak, 16 * line.len() + 4096, data);
    match parsed {
        Ok(request) => {
            let shown = request.to_line();
            assert!(shown.ends_with('\n') && shown.matches('\n').count() == 1);
            assert_eq!(
                Request::parse(shown.trim_end().as_bytes()).as_ref(),
                Ok(&request),
                "{shown:?}"
            );
        }
        Err(reason) => {
            assert_one_line(&reason);
            let answer = failure(&reason);
            assert!(answer.ends_with('\n') && answer.matches('\n').count() == 1);
            let value: serde_json::Value =
                serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
            assert_eq!(value["ok"], false);
            assert_eq!(value["error"], reason.as_str());
        }
    }
});
