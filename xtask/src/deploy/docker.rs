//! `deploy/Dockerfile` without a container engine: its steps run here as the image would run
//! them.
//!
//! The build stage's `RUN cargo build ...` runs verbatim in the workspace root (its `WORKDIR`,
//! filled by `COPY . .`), and the runtime stage's `COPY --from=build` source is the binary
//! used. Then ENTRYPOINT + CMD run with the image's ENV (each `0.0.0.0:PORT` bind moved to a
//! free loopback port, `/tmp/...` paths to a scratch directory) and a bare environment as
//! Docker gives it, as PID 1 of a new pid and mount namespace (`unshare --pid --fork
//! --mount-proc`) under USER's uid (`setpriv`), when this runs as root; otherwise plainly, and
//! the report says so. Checked: arbiter is PID 1 with that uid; `GET /` serves; the HEALTHCHECK
//! command succeeds (and fails against a port where nothing listens); `arbiter ctl status` run
//! inside the namespaces (as `docker exec` would) sees the workers; STOPSIGNAL ends it with exit
//! 0 within the graceful timeout, no process left.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common;
use crate::process::{find_in_path, secs, signal, Master, SERVE_LIMIT};

/// The Dockerfile, relative to the workspace root.
const DOCKERFILE: &str = "deploy/Dockerfile";
/// Docker's default `PATH` for a container whose image sets none.
const DOCKER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Slack over the graceful timeout for the stop to be observed.
const STOP_SLACK: Duration = Duration::from_secs(2);

/// One instruction: its stage (0 = the first `FROM`), keyword (upper case) and arguments.
#[derive(Debug, Clone, PartialEq)]
struct Instruction {
    stage: usize,
    keyword: String,
    args: String,
}

/// The instructions of a Dockerfile: comments dropped, `\` continuations joined.
fn parse(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut stage = 0;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let whole = std::mem::take(&mut pending);
        let (keyword, args) = whole
            .split_once(char::is_whitespace)
            .unwrap_or((&whole, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" && !out.is_empty() {
            stage += 1;
        }
        out.push(Instruction {
            stage,
            keyword,
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        });
    }
    out
}

/// The runtime image as the file describes it.
#[derive(Debug)]
struct Image {
    build_workdir: String,
    build_command: String,
    runtime_base: String,
    binary_source: String,
    binary_dest: String,
    user: (u32, u32),
    env: Vec<(String, String)>,
    stop_signal: String,
    healthcheck: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

fn json_argv(what: &str, text: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not a JSON argv ({e}): {text}"))
}

/// Reads what the checks need, refusing a file that does not have the expected shape.
fn image(instructions: &[Instruction]) -> Result<Image, String> {
    let stages = instructions.iter().map(|i| i.stage).max().unwrap_or(0) + 1;
    if stages != 2 {
        return Err(format!(
            "expected two stages (build, runtime), found {stages}"
        ));
    }
    let find = |stage: usize, keyword: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|i| i.stage == stage && i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    };
    let one = |stage: usize, keyword: &str| -> Result<String, String> {
        match find(stage, keyword)[..] {
            [args] => Ok(args.to_owned()),
            ref found => Err(format!(
                "stage {stage}: expected one {keyword}, found {}",
                found.len()
            )),
        }
    };
    let build_from = one(0, "FROM")?;
    if !build_from.ends_with(" AS build") {
        return Err(format!(
            "the first stage should be `AS build`: FROM {build_from}"
        ));
    }
    if find(0, "COPY") != [". ."] {
        return Err("the build stage should COPY . . (the workspace)".into());
    }
    let build_command = one(0, "RUN")?;
    if !build_command.starts_with("cargo build --release --locked") {
        return Err(format!(
            "the build stage's RUN is not a locked release build: {build_command}"
        ));
    }
    let runtime_base = one(1, "FROM")?;
    if !runtime_base.starts_with("debian:") || !runtime_base.contains("-slim") {
        return Err(format!(
            "the runtime stage should be a slim Debian: FROM {runtime_base}"
        ));
    }
    let copy = one(1, "COPY")?;
    let words: Vec<&str> = copy.split_whitespace().collect();
    let [from, source, dest] = words[..] else {
        return Err(format!("COPY {copy}: expected --from=build SOURCE DEST"));
    };
    if from != "--from=build" {
        return Err(format!("COPY {copy}: expected --from=build"));
    }
    let user = one(1, "USER")?;
    let user = user
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .filter(|&(u, _)| u != 0)
        .ok_or_else(|| format!("USER {user}: expected a numeric, non-root UID:GID"))?;
    let mut env = Vec::new();
    for line in find(1, "ENV") {
        for pair in line.split_whitespace() {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("ENV {pair}: expected KEY=VALUE"))?;
            if value.contains(['"', '\'', '$']) {
                return Err(format!(
                    "ENV {pair}: quoting and expansion are not handled here"
                ));
            }
            env.push((key.to_owned(), value.to_owned()));
        }
    }
    let healthcheck = one(1, "HEALTHCHECK")?;
    let (_, probe) = healthcheck
        .split_once("CMD ")
        .ok_or_else(|| format!("HEALTHCHECK {healthcheck}: expected CMD [...]"))?;
    Ok(Image {
        build_workdir: one(0, "WORKDIR")?,
        build_command,
        runtime_base,
        binary_source: source.to_owned(),
        binary_dest: dest.to_owned(),
        user,
        env,
        stop_signal: one(1, "STOPSIGNAL")?,
        healthcheck: json_argv("HEALTHCHECK CMD", probe)?,
        entrypoint: json_argv("ENTRYPOINT", &one(1, "ENTRYPOINT")?)?,
        cmd: json_argv("CMD", &one(1, "CMD")?)?,
    })
}

/// The image's `USER` (uid, gid).
pub(crate) fn user() -> Result<(u32, u32), String> {
    let path = common::root().join(DOCKERFILE);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(image(&parse(&text))?.user)
}

/// Runs the file's steps; returns the report lines.
pub(crate) fn check(scratch: &Path) -> Result<Vec<String>, String> {
    let path = common::root().join(DOCKERFILE);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let image = image(&parse(&text))?;
    let mut lines = Vec::new();

    // The build, verbatim, where the build stage's WORKDIR would be.
    let start = Instant::now();
    common::run(
        Command::new("sh")
            .args(["-c", &image.build_command])
            .current_dir(common::root()),
    )?;
    let relative = image
        .binary_source
        .strip_prefix(&format!("{}/", image.build_workdir))
        .ok_or_else(|| format!("COPY source {} is not under WORKDIR", image.binary_source))?;
    let binary = common::root().join(relative);
    if !binary.is_file() {
        return Err(format!(
            "`{}` made no {}",
            image.build_command,
            binary.display()
        ));
    }
    if image.entrypoint.first() != Some(&image.binary_dest) {
        return Err(format!(
            "ENTRYPOINT {:?} does not start with the copied binary {}",
            image.entrypoint, image.binary_dest
        ));
    }
    lines.push(format!(
        "build: `{}` ({}) made {} for COPY to {} on {}",
        image.build_command,
        secs(start.elapsed()),
        relative,
        image.binary_dest,
        image.runtime_base
    ));
    lines.push(run_container(&image, &binary, scratch)?);
    Ok(lines)
}

/// The container's environment: Docker's `PATH` and `HOME`, then ENV with binds on loopback and
/// `/tmp` under `tmp`. Returns it with the moved ports (app, metrics) by variable name.
fn container_env(image: &Image, tmp: &Path) -> (Vec<(String, String)>, BTreeMap<String, u16>) {
    let mut env = vec![
        ("PATH".to_owned(), DOCKER_PATH.to_owned()),
        ("HOME".to_owned(), "/".to_owned()),
        ("HOSTNAME".to_owned(), "arbiter-xtask".to_owned()),
    ];
    let mut ports = BTreeMap::new();
    for (key, value) in &image.env {
        let value = if value.starts_with("0.0.0.0:") {
            let port = common::free_port();
            ports.insert(key.clone(), port);
            format!("127.0.0.1:{port}")
        } else if let Some(rest) = value.strip_prefix("/tmp/") {
            tmp.join(rest).display().to_string()
        } else {
            value.clone()
        };
        env.push((key.clone(), value));
    }
    (env, ports)
}

/// Whether the container can be imitated faithfully: root, with unshare and setpriv.
fn can_isolate() -> bool {
    nix::unistd::geteuid().is_root()
        && find_in_path("unshare").is_some()
        && find_in_path("setpriv").is_some()
        && find_in_path("nsenter").is_some()
}

/// `setpriv` to the image's USER, as argv words.
fn as_user(image: &Image) -> Vec<String> {
    let (uid, gid) = image.user;
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
    ]
}

fn run_container(image: &Image, binary: &Path, scratch: &Path) -> Result<String, String> {
    let tmp = scratch.join("tmp");
    fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let (env, ports) = container_env(image, &tmp);
    let isolate = can_isolate();
    if isolate {
        // The container's /tmp is writable by its user.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(|e| e.to_string())?;
    }
    let app_port = *ports
        .get("ARBITER_BIND")
        .ok_or("ENV sets no ARBITER_BIND")?;
    let metrics_port = *ports
        .get("ARBITER_METRICS_BIND")
        .ok_or("ENV sets no ARBITER_METRICS_BIND (the HEALTHCHECK's /healthz)")?;
    let graceful = env
        .iter()
        .find(|(k, _)| k == "ARBITER_GRACEFUL_TIMEOUT")
        .map(|(_, v)| v.trim_end_matches('s').parse::<u64>())
        .transpose()
        .map_err(|_| "ARBITER_GRACEFUL_TIMEOUT: expected whole seconds".to_owned())?
        .map_or(Duration::from_secs(30), Duration::from_secs);

    let mut argv: Vec<String> = Vec::new();
    if isolate {
        argv.extend(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"].map(String::from),
        );
        argv.extend(as_user(image));
    }
    argv.push(binary.display().to_string());
    argv.extend(image.entrypoint[1..].iter().cloned());
    argv.extend(image.cmd.iter().cloned());
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/");
    let mut master = Master::spawn(command, scratch.join("container.log"))?
        .with_stop_limit(graceful + STOP_SLACK);
    let result = exercise(
        image,
        &mut master,
        isolate,
        &env,
        app_port,
        metrics_port,
        binary,
    );
    result.map_err(|e| master.with_log(e))
}

#[allow(clippy::too_many_arguments)]
fn exercise(
    image: &Image,
    master: &mut Master,
    isolate: bool,
    env: &[(String, String)],
    app_port: u16,
    metrics_port: u16,
    binary: &Path,
) -> Result<String, String> {
    // arbiter itself: the outer process, or unshare's only child.
    let arbiter = if isolate {
        let children = master.wait_workers(|c| c.len() == 1)?;
        *children.iter().next().expect("one child")
    } else {
        master.pid()
    };
    let waited = wait_http(master, app_port, "/")?;
    wait_http(master, metrics_port, "/healthz")?;
    master.track();
    let status =
        fs::read_to_string(format!("/proc/{arbiter}/status")).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let mut identity = String::from("not isolated (needs root, unshare, setpriv, nsenter)");
    if isolate {
        let nspid = field("NSpid:");
        if nspid.last() != Some(&"1") {
            return Err(format!(
                "arbiter is not PID 1 in its namespace: NSpid {nspid:?}"
            ));
        }
        let uid = field("Uid:");
        if uid.first() != Some(&image.user.0.to_string().as_str()) {
            return Err(format!(
                "arbiter runs as uid {uid:?}, not USER {}",
                image.user.0
            ));
        }
        identity = format!("PID 1 of its pid namespace, uid {}", image.user.0);
    }

    // HEALTHCHECK, as the engine runs it (inside the container: same network here).
    let probe = |vars: &[(String, String)]| {
        Command::new(&image.healthcheck[0])
            .args(&image.healthcheck[1..])
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
    };
    let healthy = probe(env).map_err(|e| format!("HEALTHCHECK: {e}"))?;
    if !healthy.status.success() {
        return Err(format!(
            "HEALTHCHECK failed while /healthz answers: {} {}",
            healthy.status,
            String::from_utf8_lossy(&healthy.stderr)
        ));
    }
    let nowhere: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "ARBITER_METRICS_BIND" => (k.clone(), format!("127.0.0.1:{}", common::free_port())),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    if probe(&nowhere).map_err(|e| e.to_string())?.status.success() {
        return Err("HEALTHCHECK succeeded against a port where nothing listens".into());
    }

    // `docker exec CONTAINER arbiter ctl status`.
    let mut ctl = if isolate {
        let mut c = Command::new("nsenter");
        c.args(["--target", &arbiter.to_string(), "--pid", "--mount"])
            .args(as_user(image))
            .arg(binary);
        c
    } else {
        Command::new(binary)
    };
    let ctl = ctl
        .args(["ctl", "status"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ctl status: {e}"))?;
    let told = String::from_utf8_lossy(&ctl.stdout).into_owned();
    if !ctl.status.success() || !told.contains("ready") {
        return Err(format!(
            "arbiter ctl status in the container: {} {told}{}",
            ctl.status,
            String::from_utf8_lossy(&ctl.stderr)
        ));
    }
    let first = told.lines().next().unwrap_or_default().to_owned();

    // STOPSIGNAL, to PID 1 (what `docker stop` does).
    if image.stop_signal != "SIGTERM" {
        return Err(format!(
            "STOPSIGNAL {}: expected SIGTERM",
            image.stop_signal
        ));
    }
    master.track();
    let (status, stopped) = if isolate {
        signal(arbiter, Signal::SIGTERM)?;
        master.wait_exit()?
    } else {
        master.stop()?
    };
    if status.code() != Some(0) {
        return Err(format!("STOPSIGNAL: exit {status}, expected 0"));
    }
    let left = master.leftovers();
    if !left.is_empty() {
        return Err(format!("STOPSIGNAL: processes left: {left:?}"));
    }
    Ok(format!(
        "run: ENTRYPOINT {:?} CMD {:?} as {identity}; serving in {}; HEALTHCHECK passes (and \
         fails with nothing listening); ctl status inside: {first:?}; {}: exit 0 in {}, no \
         process left",
        image.entrypoint,
        image.cmd,
        secs(waited),
        image.stop_signal,
        secs(stopped)
    ))
}

/// Waits until `GET path` on the port answers 200.
fn wait_http(master: &mut Master, port: u16, path: &str) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        master.check_running()?;
        let last = common::http_get(port, path, Duration::from_millis(500));
        if matches!(last, Ok((200, _))) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > SERVE_LIMIT {
            return Err(format!(
                "GET {path} on {port}: not 200 within {SERVE_LIMIT:?}: {last:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_join_comments_drop_and_stages_count() {
        let text = "# syntax=docker/dockerfile:1\nFROM a AS build\nRUN x \\\n  # inside\n    y\n\nFROM b\nCMD [\"z\"]\n";
        let parsed = parse(text);
        let words: Vec<(usize, &str, &str)> = parsed
            .iter()
            .map(|i| (i.stage, i.keyword.as_str(), i.args.as_str()))
            .collect();
        assert_eq!(
            words,
            [
                (0, "FROM", "a AS build"),
                (0, "RUN", "x y"),
                (1, "FROM", "b"),
                (1, "CMD", "[\"z\"]")
            ]
        );
    }

    #[test]
    fn the_dockerfile_has_the_expected_shape() {
        let text = fs::read_to_string(common::root().join(DOCKERFILE)).expect("Dockerfile");
        let image = image(&parse(&text)).expect("shape");
        assert_eq!(
            image.build_command,
            "cargo build --release --locked -p arbiter-cli"
        );
        assert_eq!(image.entrypoint, ["/usr/local/bin/arbiter"]);
        assert_eq!(image.stop_signal, "SIGTERM");
        assert_ne!(image.user.0, 0);
    }

    #[test]
    fn a_root_user_or_an_unlocked_build_is_refused() {
        let good = fs::read_to_string(common::root().join(DOCKERFILE)).expect("Dockerfile");
        let root_user = good.replace("USER 10001:10001", "USER 0:0");
        assert!(image(&parse(&root_user)).is_err());
        let unlocked = good.replace("--release --locked", "--release");
        assert!(image(&parse(&unlocked)).is_err());
    }
}
