//! Unit tests of configuration loading: layers, forms, errors, reload, `to_toml`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn args(list: &[&str]) -> Vec<OsString> {
    std::iter::once("arbiter")
        .chain(list.iter().copied())
        .map(OsString::from)
        .collect()
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn run(list: &[&str], vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    match load(args(list), &env(vars))?.0 {
        Invocation::Run(settings) | Invocation::CheckConfig(settings) => Ok(*settings),
    }
}

fn error(list: &[&str], vars: &[(&str, &str)]) -> String {
    let err = run(list, vars).expect_err("configuration should be rejected");
    assert_eq!(err.exit_code(), 2, "{err}");
    let message = err.to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    message
}

/// A temp dir holding `arbiter.toml` with `text`.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("arbiter.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

fn with_file(text: &str, list: &[&str], vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let (_dir, path) = config_file(text);
    let mut full = vec!["--config", path.to_str().expect("utf-8 temp path")];
    full.extend_from_slice(list);
    run(&full, vars)
}

fn file_error(text: &str) -> (String, PathBuf) {
    let (_dir, path) = config_file(text);
    let message = error(&["--config", path.to_str().expect("utf-8")], &[]);
    (message, path)
}

#[test]
fn defaults() {
    let settings = run(&[], &[]).expect("defaults");
    assert_eq!(settings, Settings::default());
    assert_eq!(settings.bind, ["127.0.0.1:8000"]);
    assert_eq!(settings.workers, 1);
    assert_eq!(settings.timeout, Some(Duration::from_secs(30)));
    assert_eq!(settings.boot_timeout, Some(Duration::from_secs(60)));
    assert_eq!(settings.graceful_timeout, Duration::from_secs(30));
    assert_eq!(settings.abort_grace, Duration::from_secs(1));
    assert_eq!(settings.backlog, 2048);
    assert_eq!(settings.umask, 0o022);
    assert_eq!(settings.bind_retries, 5);
    assert_eq!(settings.log_level, LogLevel::Info);
    assert_eq!(settings.log_format, LogFormat::Text);
    assert_eq!(settings.on_boot_error, BootErrorPolicy::Halt);
    assert_eq!(settings.ready, ReadyMode::Auto);
    assert_eq!(settings.quick_signal, QuickSignal::Quit);
    assert_eq!(settings.max_surge, 1);
    assert_eq!(settings.gpus, None);
    assert_eq!(settings.gpus_per_worker, 1);
    assert_eq!(settings.gpu_env, "CUDA_VISIBLE_DEVICES");
    assert!(settings.command.is_empty());
    assert!(!settings.daemon && !settings.reuse_port && !settings.forward_usr1);
}

#[test]
fn run_and_check_config_invocations() {
    let (invocation, sources) = load(args(&["-w", "2"]), &env(&[])).expect("load");
    assert!(matches!(invocation, Invocation::Run(s) if s.workers == 2));
    assert_eq!(sources.config_file(), None);
    let (invocation, _) = load(args(&["--check-config"]), &env(&[])).expect("load");
    assert!(matches!(invocation, Invocation::CheckConfig(s) if s.check_config));
}

#[test]
fn cli_beats_env_beats_file_beats_default() {
    let file = "workers = 2\ntimeout = 10\nbind = [\"127.0.0.1:1\"]\nlog_level = \"debug\"\nname = \"from-file\"\n";
    let vars = [
        ("ARBITER_WORKERS", "3"),
        ("ARBITER_TIMEOUT", "20s"),
        ("ARBITER_BIND", "127.0.0.1:2, unix:/tmp/a.sock"),
    ];
    let only_file = with_file(file, &[], &[]).expect("file");
    assert_eq!(only_file.workers, 2);
    assert_eq!(only_file.timeout, Some(Duration::from_secs(10)));
    assert_eq!(only_file.bind, ["127.0.0.1:1"]);
    assert_eq!(only_file.log_level, LogLevel::Debug);

    let file_env = with_file(file, &[], &vars).expect("file + env");
    assert_eq!(file_env.workers, 3);
    assert_eq!(file_env.timeout, Some(Duration::from_secs(20)));
    assert_eq!(file_env.bind, ["127.0.0.1:2", "unix:/tmp/a.sock"]);
    assert_eq!(
        file_env.log_level,
        LogLevel::Debug,
        "the file's value stays where env is silent"
    );
    assert_eq!(file_env.name.as_deref(), Some("from-file"));

    let all = with_file(
        file,
        &[
            "-w",
            "4",
            "--timeout",
            "0",
            "-b",
            "[::1]:3",
            "--bind",
            "127.0.0.1:4",
        ],
        &vars,
    )
    .expect("all layers");
    assert_eq!(all.workers, 4);
    assert_eq!(all.timeout, None);
    assert_eq!(all.bind, ["[::1]:3", "127.0.0.1:4"]);
    assert_eq!(all.log_level, LogLevel::Debug);
    assert_eq!(all.name.as_deref(), Some("from-file"));
}

#[test]
fn repeated_single_flag_last_wins() {
    assert_eq!(run(&["-w", "2", "-w", "5"], &[]).expect("ok").workers, 5);
}

#[test]
fn unrelated_arbiter_variables_are_ignored() {
    let vars = [
        ("ARBITER_WORKER_ID", "7"),
        ("ARBITER_LISTEN_FDS", "2"),
        ("ARBITER_MASTER_PID", "1"),
        ("ARBITER_COMMAND", "ls"),
        ("WORKERS", "9"),
    ];
    assert_eq!(run(&[], &vars).expect("ignored"), Settings::default());
}

#[test]
fn env_sets_every_kind_of_value() {
    let vars = [
        ("ARBITER_DAEMON", "yes"),
        ("ARBITER_LOG_FILE", "/var/log/arbiter.log"),
        ("ARBITER_REUSE_PORT", "1"),
        ("ARBITER_UMASK", "077"),
        ("ARBITER_READY", "NOTIFY"),
        ("ARBITER_QUICK_SIGNAL", "sigterm"),
        ("ARBITER_ENV", "A=1,B=x=y"),
        ("ARBITER_PIDFILE", "/run/arbiter.pid"),
        ("ARBITER_GRACEFUL_TIMEOUT", "1m"),
    ];
    let settings = run(&[], &vars).expect("env");
    assert!(settings.daemon && settings.reuse_port);
    assert_eq!(
        settings.log_file,
        Some(PathBuf::from("/var/log/arbiter.log"))
    );
    assert_eq!(settings.umask, 0o077);
    assert_eq!(settings.ready, ReadyMode::Notify);
    assert_eq!(settings.quick_signal, QuickSignal::Term);
    assert_eq!(
        settings.env,
        [("A".into(), "1".into()), ("B".into(), "x=y".into())]
    );
    assert_eq!(settings.pidfile, Some(PathBuf::from("/run/arbiter.pid")));
    assert_eq!(settings.graceful_timeout, Duration::from_secs(60));
}

#[test]
fn bool_flags_take_an_optional_value() {
    let settings = with_file(
        "daemon = true\nlog_file = \"/tmp/x.log\"\n",
        &["--daemon=false", "--reuse-port"],
        &[],
    )
    .expect("flags");
    assert!(!settings.daemon);
    assert!(settings.reuse_port);
    assert!(
        run(&["-D", "--log-file", "/tmp/l"], &[])
            .expect("daemon")
            .daemon
    );
}

#[test]
fn command_after_double_dash_is_captured() {
    let settings = run(&["-w", "4", "--", "uvicorn", "--fd", "3", "app:app"], &[]).expect("ok");
    assert_eq!(settings.workers, 4);
    assert_eq!(settings.command, ["uvicorn", "--fd", "3", "app:app"]);
    let flags_after = run(&["--", "prog", "-w", "9"], &[]).expect("ok");
    assert_eq!(
        flags_after.workers, 1,
        "flags after -- belong to the worker"
    );
    assert_eq!(flags_after.command, ["prog", "-w", "9"]);
    let trailing = run(&["-w", "2", "node", "-e", "x"], &[]).expect("ok");
    assert_eq!(trailing.command, ["node", "-e", "x"]);
}

#[test]
fn command_from_file_and_cli_override() {
    let file = "command = [\"uvicorn\", \"--fd\", \"3\", \"app:app\"]\n";
    assert_eq!(
        with_file(file, &[], &[]).expect("file").command,
        ["uvicorn", "--fd", "3", "app:app"]
    );
    assert_eq!(
        with_file(file, &["--", "other"], &[]).expect("cli").command,
        ["other"]
    );
}

#[test]
fn toml_env_as_list_and_as_table() {
    let list = with_file("env = [\"A=1\", \"PATH_X=/a,/b\"]\n", &[], &[]).expect("list");
    assert_eq!(
        list.env,
        [("A".into(), "1".into()), ("PATH_X".into(), "/a,/b".into())]
    );
    let table = with_file(
        "[env]\nPYTHONPATH = \"/srv\"\nDEBUG = \"1\"\nMixed_Case = \"v\"\n",
        &[],
        &[],
    )
    .expect("table");
    assert_eq!(
        table.env,
        [
            ("DEBUG".into(), "1".into()),
            ("Mixed_Case".into(), "v".into()),
            ("PYTHONPATH".into(), "/srv".into())
        ]
    );
    let cli = with_file("env = [\"A=1\"]\n", &["-e", "B=2,3", "--env", "C="], &[]).expect("cli");
    assert_eq!(
        cli.env,
        [("B".into(), "2,3".into()), ("C".into(), String::new())]
    );
}

#[test]
fn duration_forms() {
    let timeout = |value: &str| run(&["--timeout", value], &[]).expect("duration").timeout;
    assert_eq!(timeout("30"), Some(Duration::from_secs(30)));
    assert_eq!(timeout("0.5"), Some(Duration::from_millis(500)));
    assert_eq!(timeout("30s"), Some(Duration::from_secs(30)));
    assert_eq!(timeout("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(timeout("1m"), Some(Duration::from_secs(60)));
    assert_eq!(timeout("1m 30s"), Some(Duration::from_secs(90)));
    assert_eq!(timeout("0"), None);
    assert_eq!(timeout("0s"), None);
    let file = with_file(
        "timeout = 5\nboot_timeout = 2.5\ngraceful_timeout = \"250ms\"\nabort_grace = 0\n",
        &[],
        &[],
    )
    .expect("file durations");
    assert_eq!(file.timeout, Some(Duration::from_secs(5)));
    assert_eq!(file.boot_timeout, Some(Duration::from_millis(2500)));
    assert_eq!(file.graceful_timeout, Duration::from_millis(250));
    assert_eq!(file.abort_grace, Duration::ZERO);
    assert_eq!(
        run(&[], &[("ARBITER_BOOT_TIMEOUT", "0")])
            .expect("env")
            .boot_timeout,
        None
    );
}

/// Found by the `duration` fuzz target: whole seconds went through an f64 and came back
/// rounded above 2^53 (`--check-config` then printed another value).
#[test]
fn whole_seconds_are_exact() {
    let timeout = |value: &str| run(&["--timeout", value], &[]).expect("duration").timeout;
    assert_eq!(
        timeout("9116640000035064000"),
        Some(Duration::from_secs(9_116_640_000_035_064_000))
    );
    assert_eq!(
        parse_duration(" 18446744073709551615 "),
        Ok(Duration::from_secs(u64::MAX))
    );
    assert!(parse_duration("+5").is_err(), "a sign is no duration");
}

#[test]
fn umask_forms() {
    let umask = |value: &str| run(&["--umask", value], &[]).expect("umask").umask;
    assert_eq!(umask("0o22"), 0o022);
    assert_eq!(umask("022"), 0o022);
    assert_eq!(umask("18"), 18);
    assert_eq!(umask("0"), 0);
    assert_eq!(umask("0o777"), 0o777);
    assert_eq!(
        with_file("umask = 0o027\n", &[], &[])
            .expect("toml octal")
            .umask,
        0o027
    );
    assert_eq!(
        with_file("umask = \"007\"\n", &[], &[])
            .expect("toml string")
            .umask,
        0o007
    );
}

#[test]
fn gpus_forms_and_use_gpus_alias() {
    let gpus = |list: &[&str], vars: &[(&str, &str)]| run(list, vars).expect("gpus").gpus;
    let ids = |ids: &[&str]| {
        Some(GpuSelection::List(
            ids.iter().map(|s| (*s).to_owned()).collect(),
        ))
    };
    assert_eq!(gpus(&["--gpus", "auto"], &[]), Some(GpuSelection::Auto));
    assert_eq!(gpus(&["--gpus", "0,1, 2"], &[]), ids(&["0", "1", "2"]));
    assert_eq!(gpus(&[], &[("USE_GPUS", "2,3")]), ids(&["2", "3"]));
    assert_eq!(
        gpus(&[], &[("USE_GPUS", "2,3"), ("ARBITER_GPUS", "5")]),
        ids(&["5"])
    );
    assert_eq!(gpus(&["--gpus", "7"], &[("USE_GPUS", "2,3")]), ids(&["7"]));
    assert_eq!(
        with_file("gpus = [0, 1]\n", &[], &[]).expect("toml").gpus,
        ids(&["0", "1"])
    );
    assert_eq!(
        with_file("gpus = \"auto\"\n", &[], &[]).expect("toml").gpus,
        Some(GpuSelection::Auto)
    );
    assert_eq!(
        gpus(&[], &[("USE_GPUS", "")]),
        None,
        "the seed treats empty as unset"
    );
    assert!(
        error(&[], &[("ARBITER_GPUS", "")]).starts_with("ARBITER_GPUS=\"\": the GPU list is empty")
    );
    let message = error(&[], &[("USE_GPUS", "0,0")]);
    assert_eq!(message, "USE_GPUS=\"0,0\": GPU id \"0\" is listed twice");
    // gpus_per_worker without gpus is ignored, not an error.
    assert_eq!(
        run(&["--gpus-per-worker", "4"], &[])
            .expect("ok")
            .gpus_per_worker,
        4
    );
    assert_eq!(
        run(&["--gpus", "auto", "--gpus-per-worker", "4"], &[])
            .expect("auto")
            .gpus_per_worker,
        4
    );
}

#[test]
fn value_errors_name_the_source_and_the_value() {
    assert_eq!(
        error(&[], &[("ARBITER_WORKERS", "x")]),
        "ARBITER_WORKERS=\"x\": invalid number"
    );
    assert_eq!(
        error(&["-w", "abc"], &[]),
        "--workers \"abc\": invalid number"
    );
    assert_eq!(
        error(&["--workers", "0"], &[]),
        "--workers \"0\": must be at least 1"
    );
    assert_eq!(
        error(&["--workers", "100001"], &[]),
        "--workers \"100001\": must be at most 100000"
    );
    assert_eq!(
        error(&["--max-surge", "0"], &[]),
        "--max-surge \"0\": must be at least 1"
    );
    assert_eq!(
        error(&["--backlog", "70000"], &[]),
        "--backlog \"70000\": must be at most 65535"
    );
    assert_eq!(
        error(&["--backlog", "0"], &[]),
        "--backlog \"0\": must be at least 1"
    );
    assert_eq!(
        error(&["--umask", "0o1000"], &[]),
        "--umask \"0o1000\": must be at most 0o777"
    );
    assert!(error(&["--umask", "089"], &[]).starts_with("--umask \"089\": invalid umask"));
    assert_eq!(
        error(&["-t", "1e30"], &[]),
        "--timeout \"1e30\": not a duration (negative or too large)"
    );
    assert!(error(&["-t", "soon"], &[]).starts_with("--timeout \"soon\": invalid duration"));
    assert!(error(&["--timeout=-1"], &[]).starts_with("--timeout \"-1\": invalid duration"));
    assert_eq!(
        error(&["--log-level", "loud"], &[]),
        "--log-level \"loud\": expected one of trace, debug, info, warning, error, critical"
    );
    assert_eq!(
        error(&["--log-format", "xml"], &[]),
        "--log-format \"xml\": expected one of text, json"
    );
    assert_eq!(
        error(&["--ready", "now"], &[]),
        "--ready \"now\": expected one of notify, exec, auto"
    );
    assert_eq!(
        error(&["--on-boot-error", "retry"], &[]),
        "--on-boot-error \"retry\": expected one of halt, backoff"
    );
    assert_eq!(
        error(&["--quick-signal", "HUP"], &[]),
        "--quick-signal \"HUP\": expected one of QUIT, INT, TERM, KILL"
    );
    assert_eq!(
        error(&["-b", ""], &[]),
        "--bind [\"\"]: an address is empty"
    );
    assert_eq!(
        error(&["-b", "127.0.0.1:1", "-b", "127.0.0.1:1"], &[]),
        "--bind [\"127.0.0.1:1\", \"127.0.0.1:1\"]: address \"127.0.0.1:1\" is listed twice"
    );
    assert_eq!(
        error(&["-e", "NOVALUE"], &[]),
        "--env [\"NOVALUE\"]: \"NOVALUE\" is not KEY=VALUE"
    );
    assert_eq!(
        error(&["-e", "=1"], &[]),
        "--env [\"=1\"]: \"\" is not a valid environment variable name"
    );
    assert_eq!(
        error(&["-e", "1A=1"], &[]),
        "--env [\"1A=1\"]: \"1A\" is not a valid environment variable name"
    );
    assert_eq!(
        error(&["-e", "A=1", "-e", "A=2"], &[]),
        "--env [\"A=1\", \"A=2\"]: \"A\" is set twice"
    );
    assert_eq!(
        error(&["--gpu-env", "CUDA-DEVICES"], &[]),
        "--gpu-env \"CUDA-DEVICES\": \"CUDA-DEVICES\" is not a valid environment variable name"
    );
    assert!(error(&["--gpus", ""], &[]).starts_with("--gpus \"\": the GPU list is empty"));
    assert_eq!(
        error(&["--gpus", "0,,1"], &[]),
        "--gpus \"0,,1\": GPU id number 2 is empty"
    );
    assert_eq!(
        error(&["--pidfile", ""], &[]),
        "--pidfile \"\": must not be empty"
    );
    assert_eq!(
        error(&[], &[("ARBITER_DAEMON", "maybe")]),
        "ARBITER_DAEMON=\"maybe\": expected true or false"
    );
    assert_eq!(
        error(&[], &[("ARBITER_CONFIG", "")]),
        "ARBITER_CONFIG=\"\": must not be empty"
    );
}

#[test]
fn combination_errors() {
    assert_eq!(
        error(&["--gpus", "0,1", "--gpus-per-worker", "3"], &[]),
        "gpus_per_worker = 3 is more than the 2 GPU(s) listed in gpus"
    );
    assert!(run(&["--gpus", "0,1", "--gpus-per-worker", "2"], &[]).is_ok());
    assert_eq!(
        error(&["--daemon", "--log-file", "-"], &[]),
        "daemon = true with log_file = \"-\": a daemon has no stderr; give log_file a path"
    );
    // Allowed: a boot timeout with exec readiness (it simply never applies).
    assert!(run(&["--ready", "exec", "--boot-timeout", "5"], &[]).is_ok());
}

#[test]
fn file_errors_name_the_file_and_key() {
    let (message, path) = file_error("wrokers = 4\n");
    assert_eq!(
        message,
        format!(
            "unknown configuration key \"wrokers\" in {}",
            path.display()
        )
    );
    let (message, path) = file_error("workers = \"x\"\n");
    assert_eq!(
        message,
        format!("workers = \"x\" in {}: invalid number", path.display())
    );
    let (message, path) = file_error("workers = 0\n");
    assert_eq!(
        message,
        format!("workers = 0 in {}: must be at least 1", path.display())
    );
    let (message, path) = file_error("workers = 2\nbind = [\n");
    assert!(
        message.starts_with(&format!(
            "invalid configuration file {}: line ",
            path.display()
        )),
        "{message}"
    );
    let (message, _) = file_error("env = [\"K\"]\n");
    assert!(
        message.starts_with("env = [\"K\"] in ") && message.ends_with(": \"K\" is not KEY=VALUE")
    );
    let (message, _) = file_error("command = \"uvicorn app:app\"\n");
    assert!(message.contains("expected a list of strings"), "{message}");
}

#[test]
fn missing_config_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.toml");
    let err = run(&["-c", missing.to_str().expect("utf-8")], &[]).expect_err("missing");
    assert_eq!(err.exit_code(), 2);
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot read configuration file {}: ",
            missing.display()
        )),
        "{message}"
    );
    let via_env = run(&[], &[("ARBITER_CONFIG", missing.to_str().expect("utf-8"))])
        .expect_err("missing via env");
    assert!(matches!(via_env, ConfigError::ReadFile { path, .. } if path == missing));
}

#[test]
fn config_path_is_made_absolute() {
    let err = run(&["-c", "relative-does-not-exist.toml"], &[]).expect_err("missing");
    assert!(matches!(err, ConfigError::ReadFile { path, .. } if path.is_absolute()));
    let (_dir, path) = config_file("");
    let (_, sources) = load(args(&["-c", path.to_str().expect("utf-8")]), &env(&[])).expect("load");
    assert_eq!(sources.config_file(), Some(path.as_path()));
}

#[test]
fn clap_help_and_version_exit_zero_and_usage_errors_exit_two() {
    let help = run(&["--help"], &[]).expect_err("help is clap's outcome");
    assert!(matches!(help, ConfigError::Clap(_)));
    assert_eq!(help.exit_code(), 0);
    assert!(help.to_string().contains("--workers"));
    assert_eq!(
        run(&["--version"], &[]).expect_err("version").exit_code(),
        0
    );
    let unknown = run(&["--wrokers", "2"], &[]).expect_err("unknown flag");
    assert_eq!(unknown.exit_code(), 2);
}

#[test]
fn reload_picks_up_a_changed_file_and_rejects_a_broken_one() {
    let (dir, path) = config_file("workers = 2\n");
    let (invocation, sources) = load(
        args(&["-c", path.to_str().expect("utf-8"), "--timeout", "7"]),
        &env(&[]),
    )
    .expect("load");
    let Invocation::Run(first) = invocation else {
        panic!("expected Run");
    };
    assert_eq!(first.workers, 2);
    assert_eq!(sources.config_file(), Some(path.as_path()));

    std::fs::write(&path, "workers = 5\ntimeout = 1\n").expect("rewrite");
    let second = reload(&sources, &env(&[])).expect("reload");
    assert_eq!(second.workers, 5);
    assert_eq!(
        second.timeout,
        Some(Duration::from_secs(7)),
        "the command line still wins"
    );

    let third = reload(&sources, &env(&[("ARBITER_WORKERS", "6")])).expect("reload with env");
    assert_eq!(third.workers, 6);

    std::fs::write(&path, "workers = [\n").expect("break");
    assert!(matches!(
        reload(&sources, &env(&[])),
        Err(ConfigError::ParseFile { .. })
    ));
    std::fs::write(&path, "workers = 0\n").expect("invalid");
    assert!(matches!(
        reload(&sources, &env(&[])),
        Err(ConfigError::Invalid { .. })
    ));
    drop(dir);
    assert!(matches!(
        reload(&sources, &env(&[])),
        Err(ConfigError::ReadFile { .. })
    ));
}

fn round_trip(settings: &Settings) {
    let text = settings.to_toml();
    let (_dir, path) = config_file(&text);
    let reread = run(&["-c", path.to_str().expect("utf-8")], &[])
        .unwrap_or_else(|e| panic!("to_toml output does not load: {e}\n{text}"));
    let expected = Settings {
        config_file: Some(path.clone()),
        check_config: false,
        ..settings.clone()
    };
    assert_eq!(reread, expected, "{text}");
}

#[test]
fn to_toml_round_trips() {
    round_trip(&Settings::default());
    let (_dir, env_file) = config_file("[env]\nB = \"x\\\"y\"\nA = \"1\"\n");
    let busy = run(
        &[
            "-c",
            env_file.to_str().expect("utf-8"),
            "-b",
            "unix:/tmp/a b.sock",
            "-b",
            "[::1]:0",
            "-w",
            "3",
            "-t",
            "0",
            "--boot-timeout",
            "1.25",
            "--graceful-timeout",
            "90s",
            "--abort-grace",
            "0",
            "-p",
            "/run/a.pid",
            "-n",
            "web \"app\"",
            "--chdir",
            "/srv",
            "--reuse-port",
            "--backlog",
            "64",
            "--umask",
            "0o077",
            "--bind-retries",
            "0",
            "--log-level",
            "critical",
            "--log-file",
            "/var/log/a.log",
            "--log-format",
            "json",
            "--worker-tmp-dir",
            "/dev/shm",
            "--on-boot-error",
            "backoff",
            "--ready",
            "notify",
            "--quick-signal",
            "term",
            "--forward-usr1",
            "--max-surge",
            "4",
            "--gpus",
            "0,1,2",
            "--gpus-per-worker",
            "3",
            "--gpu-env",
            "HIP_VISIBLE_DEVICES",
            "--daemon",
            "--check-config",
            "--",
            "uvicorn",
            "--fd",
            "3",
            "app:app",
        ],
        &[],
    )
    .expect("busy settings");
    assert_eq!(
        busy.env,
        [("A".into(), "1".into()), ("B".into(), "x\"y".into())]
    );
    assert!(busy.check_config);
    round_trip(&busy);
    round_trip(&Settings {
        gpus: Some(GpuSelection::Auto),
        timeout: Some(Duration::from_micros(1_500_001)),
        ..Settings::default()
    });
}

#[test]
fn to_toml_lists_every_key() {
    let text = Settings::default().to_toml();
    for key in raw::FILE_KEYS {
        assert!(
            text.lines()
                .any(|line| line.starts_with(&format!("{key} = "))
                    || line.starts_with(&format!("# {key} is not set"))),
            "{key} missing from:\n{text}"
        );
    }
}

#[test]
fn every_file_key_has_a_flag_in_the_help() {
    let help = run(&["--help"], &[]).expect_err("help").to_string();
    for key in raw::FILE_KEYS.iter().filter(|key| **key != "command") {
        let flag = format!("--{}", key.replace('_', "-"));
        assert!(help.contains(&flag), "{flag} missing from --help");
        // "!" is a valid value for some keys and invalid for the rest: either way the
        // variable must have been read.
        let var = raw::env_var(key);
        let read = match run(&[], &[(&var, "!")]) {
            Ok(settings) => settings != Settings::default(),
            Err(ConfigError::Invalid {
                origin: Origin::Env(named),
                ..
            }) => named == var,
            Err(_) => false,
        };
        assert!(read, "{var} is not read");
    }
}

#[test]
fn to_toml_reads_like_a_config_file() {
    let text = Settings::default().to_toml();
    for line in [
        "# bind is not set: [\"127.0.0.1:8000\"], or the sockets systemd passed when socket-activated",
        "workers = 1",
        "timeout = \"30s\"",
        "umask = 0o022",
        "log_level = \"info\"",
        "quick_signal = \"QUIT\"",
        "# pidfile is not set: no pidfile",
        "command = []",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from:\n{text}"
        );
    }
    let disabled = Settings {
        timeout: None,
        ..Settings::default()
    }
    .to_toml();
    assert!(disabled.lines().any(|l| l == "timeout = 0"), "{disabled}");
    let bound = Settings {
        bind_explicit: true,
        ..Settings::default()
    }
    .to_toml();
    assert!(
        bound.lines().any(|l| l == "bind = [\"127.0.0.1:8000\"]"),
        "{bound}"
    );
}

#[test]
fn color_from_each_source_and_bad_values_name_their_source() {
    assert_eq!(run(&[], &[]).unwrap().color, ColorChoice::Auto);
    assert_eq!(
        run(&["--color", "always"], &[]).unwrap().color,
        ColorChoice::Always
    );
    assert_eq!(
        run(&[], &[("ARBITER_COLOR", "never")]).unwrap().color,
        ColorChoice::Never
    );
    assert_eq!(
        with_file("color = \"always\"\n", &[], &[("ARBITER_COLOR", "never")])
            .unwrap()
            .color,
        ColorChoice::Never,
        "the environment wins over the file"
    );
    assert_eq!(
        error(&["--color", "rainbow"], &[]),
        "--color \"rainbow\": expected one of auto, always, never"
    );
    assert_eq!(
        error(&[], &[("ARBITER_COLOR", "yes")]),
        "ARBITER_COLOR=\"yes\": expected one of auto, always, never"
    );
    let (message, path) = file_error("color = true\n");
    assert_eq!(
        message,
        format!(
            "color = true in {}: expected one of auto, always, never",
            path.display()
        )
    );
    assert_eq!(
        run(&["--log-level", "trace"], &[]).unwrap().log_level,
        LogLevel::Trace
    );
}

#[test]
fn user_and_group_from_each_source_as_names_or_numbers() {
    let settings = run(&["--user", "nobody", "-g", "65534"], &[]).unwrap();
    assert_eq!(settings.user.as_deref(), Some("nobody"));
    assert_eq!(settings.group.as_deref(), Some("65534"));
    let settings = run(&[], &[("ARBITER_USER", "www"), ("ARBITER_GROUP", "web")]).unwrap();
    assert_eq!(
        (settings.user.as_deref(), settings.group.as_deref()),
        (Some("www"), Some("web"))
    );
    let settings = with_file("user = 65534\ngroup = \"nogroup\"\n", &[], &[]).unwrap();
    assert_eq!(settings.user.as_deref(), Some("65534"));
    assert_eq!(settings.group.as_deref(), Some("nogroup"));
    assert_eq!(run(&[], &[]).unwrap().user, None);
    assert_eq!(
        error(&["--user", ""], &[]),
        "--user \"\": must not be empty"
    );
    let (message, path) = file_error("group = -1\n");
    assert_eq!(
        message,
        format!(
            "group = -1 in {}: expected a name or an id from 0 to 4294967294",
            path.display()
        )
    );
}

#[test]
fn shutdown_delay_from_each_source_and_its_errors() {
    assert_eq!(
        run(&[], &[]).expect("default").shutdown_delay,
        Duration::ZERO
    );
    let flag = run(&["--shutdown-delay", "15s"], &[]).expect("flag");
    assert_eq!(flag.shutdown_delay, Duration::from_secs(15));
    let var = run(&[], &[("ARBITER_SHUTDOWN_DELAY", "500ms")]).expect("variable");
    assert_eq!(var.shutdown_delay, Duration::from_millis(500));
    let file = with_file("shutdown_delay = \"1m\"\n", &[], &[]).expect("file");
    assert_eq!(file.shutdown_delay, Duration::from_secs(60));
    assert!(error(&["--shutdown-delay", "soon"], &[])
        .starts_with("--shutdown-delay \"soon\": invalid duration"));
    assert!(error(&[], &[("ARBITER_SHUTDOWN_DELAY", "-1")])
        .starts_with("ARBITER_SHUTDOWN_DELAY=\"-1\": invalid duration"));
    let (message, path) = file_error("shutdown_delay = \"x\"\n");
    assert!(message.contains("shutdown_delay"), "{message}");
    assert!(message.contains(path.to_str().unwrap()), "{message}");
}

#[test]
fn recycling_limits_from_each_source_and_bad_values_name_their_source() {
    let settings = run(
        &[
            "--max-worker-age",
            "1h",
            "--max-worker-age-jitter",
            "10m",
            "--max-worker-memory",
            "512M",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(settings.max_worker_age, Some(Duration::from_secs(3600)));
    assert_eq!(
        settings.max_worker_age_jitter,
        Some(Duration::from_secs(600))
    );
    assert_eq!(settings.max_worker_memory, Some(ByteSize(512 << 20)));
    let settings = run(
        &[],
        &[
            ("ARBITER_MAX_WORKER_AGE", "90"),
            ("ARBITER_MAX_WORKER_MEMORY", "2G"),
        ],
    )
    .unwrap();
    assert_eq!(settings.max_worker_age, Some(Duration::from_secs(90)));
    assert_eq!(settings.max_worker_age_jitter, None);
    assert_eq!(settings.max_worker_memory, Some(ByteSize(2 << 30)));
    let settings = with_file(
        "max_worker_age = \"30m\"\nmax_worker_age_jitter = 0\nmax_worker_memory = 1048576\n",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(settings.max_worker_age, Some(Duration::from_secs(1800)));
    assert_eq!(settings.max_worker_age_jitter, Some(Duration::ZERO));
    assert_eq!(settings.max_worker_memory, Some(ByteSize(1 << 20)));
    // Zero turns a limit off; the defaults are off.
    let off = run(&["--max-worker-age", "0", "--max-worker-memory", "0"], &[]).unwrap();
    assert_eq!((off.max_worker_age, off.max_worker_memory), (None, None));
    let default = run(&[], &[]).unwrap();
    assert_eq!(
        (default.max_worker_age, default.max_worker_memory),
        (None, None)
    );
    assert_eq!(
        error(&["--max-worker-memory", "12X"], &[]),
        "--max-worker-memory \"12X\": unknown unit; use K, M, G or T (powers of 1024)"
    );
    assert_eq!(
        error(&[], &[("ARBITER_MAX_WORKER_MEMORY", "lots")]),
        "ARBITER_MAX_WORKER_MEMORY=\"lots\": expected a size such as 512M or 2G"
    );
    assert!(error(&["--max-worker-age", "soon"], &[]).starts_with("--max-worker-age \"soon\": "));
    assert_eq!(
        error(
            &["--max-worker-age", "1m", "--max-worker-age-jitter", "2m"],
            &[]
        ),
        "--max-worker-age-jitter \"2m\": is more than max_worker_age (1m)"
    );
    let (message, path) = file_error("max_worker_memory = -5\n");
    assert_eq!(
        message,
        format!(
            "max_worker_memory = -5 in {}: must not be negative",
            path.display()
        )
    );
    round_trip(&Settings {
        max_worker_age: Some(Duration::from_secs(3600)),
        max_worker_age_jitter: Some(Duration::from_secs(0)),
        max_worker_memory: Some(ByteSize(1536 << 10)),
        ..Settings::default()
    });
}

#[test]
fn reuse_port_per_slot_from_each_source_and_bad_values_name_their_source() {
    assert!(
        !run(&[], &[]).unwrap().reuse_port_per_slot,
        "off by default"
    );
    assert!(
        run(&["--reuse-port-per-slot"], &[])
            .unwrap()
            .reuse_port_per_slot
    );
    assert!(
        run(&[], &[("ARBITER_REUSE_PORT_PER_SLOT", "1")])
            .unwrap()
            .reuse_port_per_slot
    );
    assert!(
        with_file("reuse_port_per_slot = true\n", &[], &[])
            .unwrap()
            .reuse_port_per_slot
    );
    assert!(
        !with_file(
            "reuse_port_per_slot = true\n",
            &["--reuse-port-per-slot=false"],
            &[]
        )
        .unwrap()
        .reuse_port_per_slot,
        "the command line wins"
    );
    let flag = error(&["--reuse-port-per-slot=maybe"], &[]);
    assert!(
        flag.starts_with("--reuse-port-per-slot \"maybe\""),
        "{flag}"
    );
    let env = error(&[], &[("ARBITER_REUSE_PORT_PER_SLOT", "2")]);
    assert!(
        env.starts_with("ARBITER_REUSE_PORT_PER_SLOT=\"2\""),
        "{env}"
    );
    let (message, _) = file_error("reuse_port_per_slot = \"sometimes\"\n");
    assert!(message.starts_with("reuse_port_per_slot = "), "{message}");
    round_trip(&Settings {
        reuse_port_per_slot: true,
        ..Settings::default()
    });
}

#[test]
fn heartbeat_filter_from_each_source_and_bad_values_name_their_source() {
    assert!(run(&[], &[]).unwrap().heartbeat_filter, "on by default");
    assert!(
        !run(&["--heartbeat-filter=false"], &[])
            .unwrap()
            .heartbeat_filter
    );
    assert!(
        !run(&[], &[("ARBITER_HEARTBEAT_FILTER", "0")])
            .unwrap()
            .heartbeat_filter
    );
    assert!(
        !with_file("heartbeat_filter = false\n", &[], &[])
            .unwrap()
            .heartbeat_filter
    );
    assert!(
        with_file("heartbeat_filter = false\n", &["--heartbeat-filter"], &[])
            .unwrap()
            .heartbeat_filter,
        "the command line wins"
    );
    let flag = error(&["--heartbeat-filter=maybe"], &[]);
    assert!(flag.starts_with("--heartbeat-filter \"maybe\""), "{flag}");
    let env = error(&[], &[("ARBITER_HEARTBEAT_FILTER", "2")]);
    assert!(env.starts_with("ARBITER_HEARTBEAT_FILTER=\"2\""), "{env}");
    let (message, _) = file_error("heartbeat_filter = \"sometimes\"\n");
    assert!(message.starts_with("heartbeat_filter = "), "{message}");
    round_trip(&Settings {
        heartbeat_filter: false,
        ..Settings::default()
    });
}
