//! The whole configuration resolution from a TOML file and an environment map, as
//! `arbiter --config FILE` runs it (the file layered under the `ARBITER_*` variables, every
//! value parsed and the combinations checked). Accepted settings print (`--check-config`'s
//! TOML) to a file that resolves to the same settings; a refusal is one line that names the
//! key, the variable or the file.
//!
//! Input: the TOML text, then NUL-separated `NAME=VALUE` environment variables.
#![no_main]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbiter_cli::config::{load, ConfigError, Invocation, Origin, Settings};
use arbiter_fuzz::{assert_bounded, assert_one_line, env_fields, peak_during};
use libfuzzer_sys::fuzz_target;

/// The file the target writes each input to: one per process, removed at exit.
fn config_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new("/dev/shm");
        let dir = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("arbiter-fuzz-config-{}.toml", std::process::id()));
        extern "C" fn remove() {
            if let Some(path) = PATH.get() {
                let _ = std::fs::remove_file(path);
            }
        }
        // SAFETY: `remove` is a plain `extern "C" fn()` that touches only a static.
        unsafe { libc::atexit(remove) };
        path
    })
}

fn resolve(text: &str, env: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
    let path = config_path();
    std::fs::write(path, text).expect("write the config file");
    let args = [
        "arbiter",
        "--config",
        path.to_str().expect("utf-8 temp path"),
    ];
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    match load(args, env)?.0 {
        Invocation::Run(settings) | Invocation::CheckConfig(settings) => Ok(*settings),
    }
}

fuzz_target!(|data: &[u8]| {
    let (text, vars) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    // Non-UTF-8 files are refused by reading them; the text is what the parsers see.
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: BTreeMap<String, String> = env_fields(vars).into_iter().collect();
    let (resolved, peak) = peak_during(|| resolve(text, &env));
    assert_bounded(peak, 512 * data.len() + (1 << 20), data);
    let settings = match resolved {
        Ok(settings) => settings,
        Err(error) => {
            assert_eq!(error.exit_code(), 2, "{error}");
            let message = error.to_string();
            assert_one_line(&message);
            let named = match &error {
                ConfigError::Invalid {
                    origin: Origin::File { key, .. },
                    ..
                } => message.starts_with(&format!("{key} = ")),
                ConfigError::Invalid {
                    origin: Origin::Env(var),
                    ..
                } => message.starts_with(&format!("{var}=")),
                ConfigError::ParseFile { .. } | ConfigError::UnknownKey { .. } => {
                    message.contains(&config_path().display().to_string())
                }
                _ => true,
            };
            assert!(named, "{message:?} does not name its source");
            return;
        }
    };
    // What `--check-config` prints resolves, as a file alone, to the same settings.
    let shown = settings.to_toml();
    let again = resolve(&shown, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("{text:?} resolved, printed as {shown:?}, is refused: {e}"));
    assert_eq!(again, settings, "{text:?} printed as {shown:?}");
});
