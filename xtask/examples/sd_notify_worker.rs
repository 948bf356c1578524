//! A worker that speaks arbiter's protocol through the `sd-notify` crate only, as a Rust
//! service written for systemd would: `READY=1` once the file `$CLIENT_GATE/ready` exists,
//! then `WATCHDOG=1` every half of the watchdog interval that `sd_notify::watchdog_enabled`
//! reads from `WATCHDOG_USEC`/`WATCHDOG_PID`, until `$CLIENT_GATE/hang` exists; then it hangs.
//! `cargo xtask integration` runs it as arbiter's worker command. It exits 1 with a message if
//! the environment is not what systemd would give a service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::Duration;

use sd_notify::NotifyState;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sd_notify_worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let gate = PathBuf::from(std::env::var_os("CLIENT_GATE").ok_or("CLIENT_GATE is not set")?);
    let watchdog = sd_notify::watchdog_enabled()
        .ok_or("no watchdog for this process (WATCHDOG_USEC unset, or WATCHDOG_PID not ours)")?;
    while !gate.join("ready").exists() {
        sleep(Duration::from_millis(20));
    }
    sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("serving")])
        .map_err(|e| format!("READY=1: {e}"))?;
    while !gate.join("hang").exists() {
        sd_notify::notify(&[NotifyState::Watchdog]).map_err(|e| format!("WATCHDOG=1: {e}"))?;
        sleep((watchdog / 2).min(Duration::from_millis(500)));
    }
    loop {
        sleep(Duration::from_secs(3600));
    }
}
