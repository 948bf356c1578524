//! `arbiter` / `arbiter serve`: from parsed options to a running [`Runtime`], its exit code,
//! and `--check-config` and `--daemon` on the way.

use std::collections::BTreeMap;
use std::ffi::OsString;

use std::rc::Rc;

use crate::config::{self, Invocation, ServeArgs, Settings};
use crate::library::WorkerFn;
use crate::os::daemon;
use crate::runtime::{setup, Runtime, Start, StartError};
use crate::Failure;

/// Runs the arbiter with these options; returns its exit code.
pub fn main(args: ServeArgs) -> Result<u8, Failure> {
    main_with(args, None)
}

/// Runs the arbiter with these options and, in library mode, `function` as every worker.
pub(crate) fn main_with(args: ServeArgs, function: Option<Rc<WorkerFn>>) -> Result<u8, Failure> {
    // SAFETY: no other thread exists yet, so nothing else reads or writes the environment.
    let inherited = unsafe { arbiter_sockets::take_inherited() }
        .map_err(|e| Failure::new(format!("arbiter: error: inherited sockets: {e}"), 1))?;
    let master_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let env_snapshot: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let (invocation, sources) = config::load_args(args, &env_snapshot).map_err(|e| {
        let code = e.exit_code();
        match e {
            config::ConfigError::Clap(e) => Failure::new(e.to_string().trim_end(), code),
            other => Failure::new(format!("arbiter: {other}"), code),
        }
    })?;
    let settings = match invocation {
        Invocation::CheckConfig(settings) => {
            if function.is_some() {
                crate::runtime::refuse_worker_command(&settings).map_err(start_failure)?;
            }
            return check_config(&settings, &master_env);
        }
        Invocation::Run(settings) => *settings,
    };
    let daemon = settings.daemon;
    let start = Start {
        settings,
        sources,
        env_snapshot,
        inherited,
        master_env,
        argv: std::env::args_os().collect(),
    };
    let started = if daemon {
        let report = daemon::daemonize()
            .map_err(|e| Failure::new(format!("arbiter: error: cannot daemonize: {e}"), 1))?;
        let started = Runtime::start_with(start, function.clone());
        match &started {
            Ok(_) => report.report(0, ""),
            Err(e) => report.report(e.exit_code(), &e.to_string()),
        }
        started
    } else {
        Runtime::start_with(start, function.clone())
    };
    let code = started.map_err(start_failure)?.run();
    Ok(code.clamp(0, 255) as u8)
}

fn start_failure(error: StartError) -> Failure {
    Failure::new(format!("arbiter: error: {error}"), error.exit_code())
}

/// `--check-config`: everything that can be checked without binding or spawning (binds,
/// the worker command, the GPU pool).
fn check_config(settings: &Settings, master_env: &[(OsString, OsString)]) -> Result<u8, Failure> {
    setup::bind_specs(settings).map_err(start_failure)?;
    setup::prepare(settings, master_env).map_err(start_failure)?;
    print!("{}", settings.to_toml());
    Ok(0)
}
