//! `deploy/kubernetes/`: every manifest validated offline against the Kubernetes API schemas
//! (`kubernetes-validate`, pinned, in the xtask venv; it bundles the schemas and runs in a
//! network namespace with no network when this runs as root), then checked against arbiter:
//!
//! - each container that runs arbiter: probes on the `--metrics-bind` port, `/healthz` for
//!   liveness and `/readyz` for readiness; the Prometheus annotations name that port and
//!   `/metrics`; `--bind`'s port is the `http` container port; `--shutdown-delay` is set and
//!   `terminationGracePeriodSeconds` is longer than it plus `--graceful-timeout`; a container
//!   that asks for `nvidia.com/gpu` runs `--gpus auto`; the pod runs as the image's user;
//! - each Service selects a Deployment's pods and targets named ports they have; each
//!   HorizontalPodAutoscaler scales a Deployment that exists;
//! - the container's arguments pass `arbiter --check-config` (the worker command left out, as it
//!   is not installed here; `--gpus auto` given as many devices as the pod requests).
//!
//! A copy of a manifest with an unknown field must fail validation, so a validator that checks
//! nothing is caught.
//!
//! What a pod of `app.yaml` does when deleted (the drain, the probes, a rolling update, under
//! load) is rehearsed by the `pod` scenarios of the `reload` integration test, which read the
//! container's arguments and the grace period from the manifest.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common;

/// The manifests, relative to the workspace root.
const DIR: &str = "deploy/kubernetes";
/// The validator, pinned (its version is also the newest Kubernetes version it knows).
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
/// The YAML parser the validator uses, pinned, used here to read the manifests.
const YAML: &str = "PyYAML==6.0.3";

/// Runs the checks; returns the report lines.
pub(crate) fn check(arbiter: &Path, image_uid: u32, scratch: &Path) -> Result<Vec<String>, String> {
    let venv = common::venv(&[VALIDATOR, YAML])?;
    let files = manifests()?;
    let mut lines = vec![validate(&venv, &files, scratch)?];
    let mut documents = Vec::new();
    for file in &files {
        let name = file_name(file);
        for document in load(&venv, file)? {
            documents.push((name.clone(), document));
        }
    }
    let deployments: Vec<(&String, &Value)> = documents
        .iter()
        .filter(|(_, d)| d["kind"] == "Deployment")
        .map(|(f, d)| (f, d))
        .collect();
    if deployments.is_empty() {
        return Err(format!("no Deployment in {DIR}"));
    }
    for (file, deployment) in &deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap_or("?");
        let accepts = |args: &[String], gpus: Option<u64>| check_config(arbiter, args, gpus);
        let line = check_deployment(deployment, image_uid, accepts)
            .map_err(|e| format!("{file}: Deployment {name}: {e}"))?;
        lines.push(format!("{file}: Deployment {name}: {line}"));
    }
    for (file, document) in &documents {
        let kind = document["kind"].as_str().unwrap_or("?");
        let name = document["metadata"]["name"].as_str().unwrap_or("?");
        let checked = match kind {
            "Service" => check_service(document, &deployments),
            "HorizontalPodAutoscaler" => check_autoscaler(document, &deployments),
            _ => continue,
        };
        let line = checked.map_err(|e| format!("{file}: {kind} {name}: {e}"))?;
        lines.push(format!("{file}: {kind} {name}: {line}"));
    }
    Ok(lines)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn manifests() -> Result<Vec<PathBuf>, String> {
    let dir = common::root().join(DIR);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no manifests in {DIR}"));
    }
    Ok(files)
}

/// `kubernetes-validate --strict` on every file, offline where it can be; then on a copy with
/// an unknown field, which must fail.
fn validate(venv: &Path, files: &[PathBuf], scratch: &Path) -> Result<String, String> {
    let offline =
        nix::unistd::geteuid().is_root() && crate::process::find_in_path("unshare").is_some();
    let run = |paths: &[PathBuf]| -> Result<String, String> {
        let validator = venv.join("kubernetes-validate");
        let mut command = if offline {
            let mut c = Command::new("unshare");
            c.arg("--net").arg(&validator);
            c
        } else {
            Command::new(&validator)
        };
        let output = command
            .args(["--strict", "--quiet"])
            .args(paths)
            .output()
            .map_err(|e| format!("kubernetes-validate: {e}"))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() && !said.contains("ERROR") && !said.contains("WARN") {
            Ok(said)
        } else {
            Err(format!("{}: {}", output.status, said.trim()))
        }
    };
    run(files).map_err(|e| format!("kubernetes-validate --strict: {e}"))?;
    fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
    let broken = scratch.join("broken.yaml");
    let text = fs::read_to_string(&files[0]).map_err(|e| e.to_string())?;
    let mutated = text.replacen("spec:\n", "spec:\n  notAField: 1\n", 1);
    if mutated == text {
        return Err(format!(
            "{}: no top-level spec to break",
            file_name(&files[0])
        ));
    }
    fs::write(&broken, mutated).map_err(|e| e.to_string())?;
    if run(&[broken]).is_ok() {
        return Err("kubernetes-validate accepted a manifest with an unknown field".into());
    }
    let names: Vec<String> = files.iter().map(|f| file_name(f)).collect();
    Ok(format!(
        "{VALIDATOR} --strict{}: {} valid; an unknown field is caught",
        if offline { " with no network" } else { "" },
        names.join(", ")
    ))
}

/// The YAML documents of `file` as JSON values (PyYAML's safe loader, from the venv).
fn load(venv: &Path, file: &Path) -> Result<Vec<Value>, String> {
    let output = Command::new(venv.join("python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             json.dump(docs, sys.stdout)",
        ])
        .arg(file)
        .output()
        .map_err(|e| format!("python: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("{}: {e}", file.display()))
}

/// The value after `flag` in `args` (before `--`).
fn option<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let options = &args[..args.iter().position(|a| a == "--").unwrap_or(args.len())];
    options
        .iter()
        .position(|a| a == flag)
        .and_then(|i| options.get(i + 1))
        .map(String::as_str)
}

/// `5s`, `25s`, `500ms`, `1m`, `10m` or plain seconds.
fn duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("{value:?}: not a duration this check reads");
    let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60.0)
    } else {
        (value, 1.0)
    };
    let number: f64 = number.parse().map_err(|_| bad())?;
    Ok(Duration::from_secs_f64(number * scale))
}

/// The port of `host:port`.
fn bind_port(bind: &str) -> Result<u64, String> {
    bind.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| format!("{bind:?}: expected HOST:PORT"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The container port named `name`.
fn named_port(container: &Value, name: &str) -> Option<u64> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["containerPort"]
        .as_u64()
}

/// The checks of one Deployment; `accepts` runs arbiter on the container's arguments and the
/// number of GPUs the pod requests.
fn check_deployment(
    deployment: &Value,
    image_uid: u32,
    accepts: impl Fn(&[String], Option<u64>) -> Result<(), String>,
) -> Result<String, String> {
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let containers = spec["containers"].as_array().ok_or("no containers")?;
    let [container] = &containers[..] else {
        return Err("expected one container (arbiter supervises the pod's processes)".into());
    };
    let args = strings(&container["args"]);
    if container.get("command").is_some() {
        return Err("command: overrides the image's ENTRYPOINT (arbiter); give args only".into());
    }
    let need = |flag: &str| option(&args, flag).ok_or_else(|| format!("args have no {flag}"));

    let metrics = bind_port(need("--metrics-bind")?)?;
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        if get["path"] != path {
            return Err(format!("{probe} should GET {path}, not {}", get["path"]));
        }
        let port = match &get["port"] {
            Value::String(name) => named_port(container, name),
            other => other.as_u64(),
        };
        if port != Some(metrics) {
            return Err(format!(
                "{probe} goes to port {port:?}, not the --metrics-bind port {metrics}"
            ));
        }
    }
    let annotations = &pod["metadata"]["annotations"];
    if annotations["prometheus.io/scrape"] != "true"
        || annotations["prometheus.io/port"].as_str() != Some(metrics.to_string().as_str())
        || annotations["prometheus.io/path"] != "/metrics"
    {
        return Err(format!(
            "the prometheus.io annotations should scrape /metrics on {metrics}: {annotations}"
        ));
    }
    let http = bind_port(need("--bind")?)?;
    if named_port(container, "http") != Some(http) {
        return Err(format!("the http container port is not --bind's {http}"));
    }

    let delay = duration(need("--shutdown-delay")?)?;
    let graceful = duration(need("--graceful-timeout")?)?;
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .map(Duration::from_secs)
        .ok_or("no terminationGracePeriodSeconds")?;
    if grace <= delay + graceful {
        return Err(format!(
            "terminationGracePeriodSeconds {grace:?} does not cover --shutdown-delay {delay:?} \
             + --graceful-timeout {graceful:?}"
        ));
    }

    let gpus = container["resources"]["limits"]["nvidia.com/gpu"].as_u64();
    match (gpus, option(&args, "--gpus")) {
        (Some(_), Some("auto")) | (None, None) => {}
        (Some(n), other) => {
            return Err(format!(
                "requests {n} nvidia.com/gpu but runs --gpus {other:?}, not auto"
            ))
        }
        (None, Some(_)) => return Err("runs --gpus without requesting nvidia.com/gpu".into()),
    }

    let security = &spec["securityContext"];
    if security["runAsNonRoot"] != true || security["runAsUser"] != image_uid {
        return Err(format!(
            "the pod should run as non-root uid {image_uid} (the image's USER): {security}"
        ));
    }

    accepts(&args, gpus)?;
    Ok(format!(
        "probes /healthz and /readyz on {metrics}, scraped there; grace {}s > {}s drain + {}s \
         graceful{}; arbiter --check-config accepts the args",
        grace.as_secs(),
        delay.as_secs_f64(),
        graceful.as_secs_f64(),
        gpus.map(|n| format!("; {n} GPUs, --gpus auto"))
            .unwrap_or_default(),
    ))
}

/// `arbiter --check-config` with the container's options (the worker command is left out).
fn check_config(arbiter: &Path, args: &[String], gpus: Option<u64>) -> Result<(), String> {
    let options = &args[..args.iter().position(|a| a == "--").unwrap_or(args.len())];
    let mut command = Command::new(arbiter);
    command
        .arg("--check-config")
        .args(options)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    if let Some(n) = gpus {
        let devices: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        command.env("CUDA_VISIBLE_DEVICES", devices.join(","));
    }
    let output = command
        .output()
        .map_err(|e| format!("--check-config: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "arbiter --check-config {options:?}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn check_service(service: &Value, deployments: &[(&String, &Value)]) -> Result<String, String> {
    let selector = labels(&service["spec"]["selector"]);
    let target = deployments
        .iter()
        .map(|(_, d)| d)
        .find(|d| {
            let pod = labels(&d["spec"]["template"]["metadata"]["labels"]);
            !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
        })
        .ok_or_else(|| format!("selector {selector:?} matches no Deployment's pods"))?;
    let container = &target["spec"]["template"]["spec"]["containers"][0];
    let mut ports = Vec::new();
    for port in service["spec"]["ports"].as_array().ok_or("no ports")? {
        let name = port["targetPort"]
            .as_str()
            .ok_or("targetPort should name a container port")?;
        let number = named_port(container, name)
            .ok_or_else(|| format!("targetPort {name} is not a port of the pods"))?;
        ports.push(format!("{} -> {name} ({number})", port["port"]));
    }
    Ok(format!(
        "selects Deployment {}; {}",
        target["metadata"]["name"].as_str().unwrap_or("?"),
        ports.join(", ")
    ))
}

fn check_autoscaler(hpa: &Value, deployments: &[(&String, &Value)]) -> Result<String, String> {
    let reference = &hpa["spec"]["scaleTargetRef"];
    let name = reference["name"].as_str().ok_or("no scaleTargetRef.name")?;
    if reference["kind"] != "Deployment"
        || !deployments
            .iter()
            .any(|(_, d)| d["metadata"]["name"] == name)
    {
        return Err(format!(
            "scaleTargetRef {reference} is not a Deployment here"
        ));
    }
    Ok(format!(
        "scales Deployment {name} between {} and {} replicas",
        hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn options_stop_at_the_worker_command() {
        let a = args(&["--bind", "0.0.0.0:8000", "--", "app", "--bind", "x"]);
        assert_eq!(option(&a, "--bind"), Some("0.0.0.0:8000"));
        assert_eq!(option(&args(&["--", "--gpus", "auto"]), "--gpus"), None);
    }

    #[test]
    fn durations_in_arbiter_forms() {
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert!(duration("soon").is_err());
    }

    fn deployment(grace: u64, probe_path: &str, gpus: Option<u64>, gpu_arg: bool) -> Value {
        let mut args = vec![
            "--bind",
            "0.0.0.0:8000",
            "--metrics-bind",
            "0.0.0.0:9100",
            "--shutdown-delay",
            "5s",
            "--graceful-timeout",
            "25s",
        ];
        if gpu_arg {
            args.extend(["--gpus", "auto"]);
        }
        let mut container = serde_json::json!({
            "name": "app",
            "args": args,
            "ports": [{"name": "http", "containerPort": 8000},
                      {"name": "metrics", "containerPort": 9100}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
            "readinessProbe": {"httpGet": {"path": probe_path, "port": 9100}},
        });
        if let Some(n) = gpus {
            container["resources"] = serde_json::json!({"limits": {"nvidia.com/gpu": n}});
        }
        serde_json::json!({
            "kind": "Deployment",
            "metadata": {"name": "app"},
            "spec": {"template": {
                "metadata": {"labels": {"app": "a"}, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": "9100",
                    "prometheus.io/path": "/metrics"}},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 10001},
                    "containers": [container],
                }}}
        })
    }

    /// Runs the static checks only (no arbiter binary is run).
    fn static_check(d: &Value) -> Result<String, String> {
        check_deployment(d, 10001, |_, _| Ok(()))
    }

    #[test]
    fn a_consistent_deployment_passes_the_static_checks() {
        static_check(&deployment(35, "/readyz", None, false)).expect("passes");
        static_check(&deployment(35, "/readyz", Some(2), true)).expect("gpu passes");
    }

    #[test]
    fn a_short_grace_a_wrong_probe_or_gpus_without_auto_fail() {
        assert!(static_check(&deployment(30, "/readyz", None, false))
            .unwrap_err()
            .contains("does not cover"));
        assert!(static_check(&deployment(35, "/healthz", None, false))
            .unwrap_err()
            .contains("readinessProbe"));
        assert!(static_check(&deployment(35, "/readyz", Some(2), false)).is_err());
        assert!(static_check(&deployment(35, "/readyz", None, true)).is_err());
        assert!(
            check_deployment(&deployment(35, "/readyz", None, false), 0, |_, _| Ok(())).is_err()
        );
        let refused = check_deployment(&deployment(35, "/readyz", None, false), 10001, |_, _| {
            Err("--check-config refused".into())
        });
        assert_eq!(refused, Err("--check-config refused".into()));
    }
}
