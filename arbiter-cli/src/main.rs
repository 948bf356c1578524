//! The `arbiter` binary: a pre-fork process arbiter.
//!
//! `main` maps a `Result` to an exit code and nothing else; `arbiter worker ...` runs the
//! built-in HTTP worker, which the master execs when no worker command is given.

mod capture;
mod config;
mod control;
mod ctl;
mod heartbeat;
mod hooks;
mod log;
mod metrics;
mod notify;
mod pidfile;
mod runtime;
mod setup;
mod spawn;
mod statsd;
mod title;
mod upgrade;
mod worker;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::ExitCode;

use config::Invocation;
use setup::StartError;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "worker") {
        return worker::main(args[2..].to_vec());
    }
    if args.get(1).is_some_and(|a| a == "ctl") {
        return ctl::main(args[1..].to_vec());
    }
    if args.get(1).is_some_and(|a| a == "upgrade") {
        return upgrade::main(args[2..].to_vec());
    }
    // SAFETY: no other thread exists yet, so nothing else reads or writes the environment.
    let inherited = match unsafe { arbiter_sockets::take_inherited() } {
        Ok(inherited) => inherited,
        Err(e) => {
            eprintln!("arbiter: error: inherited sockets: {e}");
            return ExitCode::from(1);
        }
    };
    let master_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let env_snapshot: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let (invocation, sources) = match config::load(args.clone(), &env_snapshot) {
        Ok(loaded) => loaded,
        Err(e) => {
            e.print();
            return ExitCode::from(e.exit_code());
        }
    };
    let result = match invocation {
        Invocation::CheckConfig(settings) => check_config(&settings, &master_env),
        Invocation::Run(settings) => {
            let start = runtime::Start {
                settings: *settings,
                sources,
                env_snapshot,
                inherited,
                master_env,
                argv: args,
            };
            if start.settings.daemon {
                let report = match spawn::daemonize() {
                    Ok(report) => report,
                    Err(e) => {
                        eprintln!("arbiter: error: cannot daemonize: {e}");
                        return ExitCode::from(1);
                    }
                };
                match runtime::Master::start(start) {
                    Ok(master) => {
                        report.report(0, "");
                        Ok(master.run())
                    }
                    Err(e) => {
                        report.report(e.exit_code(), &e.to_string());
                        Err(e)
                    }
                }
            } else {
                runtime::Master::start(start).map(|master| master.run())
            }
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("arbiter: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `--check-config`: everything that can be checked without binding or spawning (binds,
/// the worker command, the GPU pool).
fn check_config(
    settings: &config::Settings,
    master_env: &[(OsString, OsString)],
) -> Result<i32, StartError> {
    setup::bind_specs(settings)?;
    setup::prepare(settings, master_env)?;
    print!("{}", settings.to_toml());
    Ok(0)
}
