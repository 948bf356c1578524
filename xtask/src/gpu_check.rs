//! `cargo xtask gpu-check`: arbiter on a machine with NVIDIA GPUs, end to end, with workers
//! that initialise the CUDA driver.
//!
//! It runs `arbiter --gpus auto -w 2xD` with `python3 scripts/gpu_probe.py` as the worker; each
//! worker writes what it was given (`CUDA_VISIBLE_DEVICES`) and what the driver shows it (the
//! device count, device 0's PCI bus id) to a report file. The check passes when every slot
//! `s` sees exactly one device, the `(s mod D)`-th of the auto list, and that device's bus id
//! is the one `nvidia-smi --query-gpu=index,uuid,pci.bus_id` gives it; it prints a table and
//! fails on any mismatch. Without `nvidia-smi` it prints a line and succeeds: CI has no GPU and
//! does not run it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// How long the workers get to initialise CUDA and report.
const REPORT_BOUND: Duration = Duration::from_secs(90);

/// One GPU as `nvidia-smi` lists it.
#[derive(Debug, Clone)]
struct Gpu {
    index: String,
    uuid: String,
    bus_id: String,
}

/// Runs the check.
pub fn run() -> Result<(), String> {
    let gpus = match nvidia_smi_gpus()? {
        Some(gpus) => gpus,
        None => {
            println!("no NVIDIA GPU here: gpu-check not run");
            return Ok(());
        }
    };
    println!("nvidia-smi lists {} GPU(s):", gpus.len());
    for gpu in &gpus {
        println!("  {}  {}  {}", gpu.index, gpu.uuid, gpu.bus_id);
    }
    // What `--gpus auto` will use: our CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list.
    let own = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let pool: Vec<String> = match &own {
        Some(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
        None => gpus.iter().map(|g| g.index.clone()).collect(),
    };
    let workers = 2 * pool.len();
    let arbiter = common::arbiter_release()?;
    let dir = tempfile::Builder::new()
        .prefix("arbiter-gpu-check-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let reports_dir = dir.path().join("reports");
    fs::create_dir(&reports_dir).map_err(|e| format!("{}: {e}", reports_dir.display()))?;
    let log = dir.path().join("arbiter.log");
    println!(
        "running arbiter --gpus auto -w {workers} (pool: {})",
        pool.join(",")
    );
    let mut master = Master(Some(start(&arbiter, workers, &reports_dir, &log)?));
    let collected = collect(&reports_dir, workers, &mut master);
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    master.stop();
    let reports = collected.map_err(|e| format!("{e}\narbiter log:\n{log_text}"))?;
    judge(&pool, &gpus, &reports)
}

/// The GPUs `nvidia-smi` lists; `None` when there is no `nvidia-smi` to run.
fn nvidia_smi_gpus() -> Result<Option<Vec<Gpu>>, String> {
    let output = match Command::new("nvidia-smi")
        .args(["--query-gpu=index,uuid,pci.bus_id", "--format=csv,noheader"])
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("nvidia-smi: {e}")),
    };
    if !output.status.success() {
        return Err(format!(
            "nvidia-smi failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let gpus: Vec<Gpu> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(str::trim);
            Some(Gpu {
                index: fields.next()?.to_owned(),
                uuid: fields.next()?.to_owned(),
                bus_id: fields.next()?.to_owned(),
            })
        })
        .collect();
    if gpus.is_empty() {
        return Err("nvidia-smi lists no GPU".into());
    }
    Ok(Some(gpus))
}

/// Starts the master; its log goes to `log`.
fn start(arbiter: &Path, workers: usize, reports: &Path, log: &Path) -> Result<Child, String> {
    let script = common::root().join("scripts/gpu_probe.py");
    let log_file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(arbiter)
        .args(["-b", "127.0.0.1:0", "--gpus", "auto", "--ready", "notify"])
        .args(["-w", &workers.to_string(), "--boot-timeout", "60s"])
        .arg("--env")
        .arg(format!("GPU_PROBE_DIR={}", reports.display()))
        // CUDA numbers devices fastest-first unless told otherwise; nvidia-smi (and so `auto`
        // without CUDA_VISIBLE_DEVICES) numbers them in PCI bus order.
        .args(["--env", "CUDA_DEVICE_ORDER=PCI_BUS_ID"])
        .arg("--")
        .arg("python3")
        .arg(&script)
        .env_remove("ARBITER_GPUS")
        .env_remove("USE_GPUS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", arbiter.display()))
}

/// The master, stopped (TERM, then KILL by pid after a bound) when dropped.
struct Master(Option<Child>);

impl Master {
    fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_none_or(|child| child.try_wait().ok().flatten().is_some())
    }

    fn stop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The workers die with their master (PR_SET_PDEATHSIG).
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for one report per slot; the reports by slot.
fn collect(
    dir: &Path,
    workers: usize,
    master: &mut Master,
) -> Result<BTreeMap<usize, Report>, String> {
    let deadline = Instant::now() + REPORT_BOUND;
    loop {
        let reports = read_reports(dir);
        if (0..workers).all(|slot| reports.contains_key(&slot)) {
            return Ok(reports);
        }
        if master.exited() {
            return Err("arbiter exited before every worker reported".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "only slots {:?} reported within {REPORT_BOUND:?}",
                reports.keys().collect::<Vec<_>>()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What one worker reported.
#[derive(Debug, Clone, Default)]
struct Report {
    pid: i64,
    visible: String,
    device_count: Option<i64>,
    bus_id: Option<String>,
    name: Option<String>,
    error: Option<String>,
}

fn read_reports(dir: &Path) -> BTreeMap<usize, Report> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    let files: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files
        .iter()
        .filter_map(|path| parse_report(&fs::read_to_string(path).ok()?))
        .collect()
}

/// `(slot, report)` from a report file; the JSON is flat enough to read without a parser
/// crate, by key.
fn parse_report(text: &str) -> Option<(usize, Report)> {
    let slot = json_number(text, "slot")? as usize;
    let cuda = text.split("\"cuda\":").nth(1).unwrap_or("");
    let error = json_string(cuda, "error")
        .or_else(|| json_string(cuda, "skipped").map(|s| format!("skipped: {s}")));
    Some((
        slot,
        Report {
            pid: json_number(text, "pid")?,
            visible: json_string(text, "visible").unwrap_or_default(),
            device_count: json_number(cuda, "device_count"),
            bus_id: json_string(cuda, "bus_id_0"),
            name: json_string(cuda, "name_0"),
            error,
        },
    ))
}

fn json_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = text.split(&format!("\"{key}\": ")).nth(1)?;
    Some(rest.trim_start())
}

fn json_number(text: &str, key: &str) -> Option<i64> {
    let rest = json_value(text, key)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn json_string(text: &str, key: &str) -> Option<String> {
    let rest = json_value(text, key)?.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// `domain:bus:device.function` with the domain as a number, lowercase: nvidia-smi writes
/// `00000000:17:00.0`, CUDA `0000:17:00.0`.
fn normalize_bus_id(id: &str) -> String {
    let id = id.trim().to_ascii_lowercase();
    match id.split_once(':') {
        Some((domain, rest)) => match u32::from_str_radix(domain, 16) {
            Ok(domain) => format!("{domain:x}:{rest}"),
            Err(_) => id,
        },
        None => id,
    }
}

/// The nvidia-smi GPU an id of the auto pool names: an index or a UUID.
fn resolve<'a>(id: &str, gpus: &'a [Gpu]) -> Option<&'a Gpu> {
    gpus.iter().find(|g| g.index == id || g.uuid == id)
}

/// Prints the table; an error naming every mismatch.
fn judge(pool: &[String], gpus: &[Gpu], reports: &BTreeMap<usize, Report>) -> Result<(), String> {
    println!(
        "{:>4} {:>8} {:>8} {:>8} {:>7} {:<16} {:<16} {:<6} device 0",
        "slot", "pid", "visible", "expected", "devices", "bus id", "expected bus", "ok"
    );
    let mut problems = Vec::new();
    for (&slot, report) in reports {
        let expected = &pool[slot % pool.len()];
        let expected_bus = resolve(expected, gpus).map(|g| normalize_bus_id(&g.bus_id));
        let bus = report.bus_id.as_deref().map(normalize_bus_id);
        let mut wrong = Vec::new();
        if &report.visible != expected {
            wrong.push(format!("sees {:?}, not {expected:?}", report.visible));
        }
        if let Some(error) = &report.error {
            wrong.push(format!("cuda: {error}"));
        } else if report.device_count != Some(1) {
            wrong.push(format!("{:?} devices, not 1", report.device_count));
        }
        match (&bus, &expected_bus) {
            (Some(bus), Some(want)) if bus == want => {}
            (_, None) => wrong.push(format!("{expected:?} is not an nvidia-smi index or UUID")),
            (got, Some(want)) => wrong.push(format!("bus id {got:?}, not {want}")),
        }
        println!(
            "{:>4} {:>8} {:>8} {:>8} {:>7} {:<16} {:<16} {:<6} {}",
            slot,
            report.pid,
            report.visible,
            expected,
            report
                .device_count
                .map_or_else(|| "-".into(), |n| n.to_string()),
            bus.as_deref().unwrap_or("-"),
            expected_bus.as_deref().unwrap_or("-"),
            if wrong.is_empty() { "yes" } else { "NO" },
            report.name.as_deref().unwrap_or("-"),
        );
        if !wrong.is_empty() {
            problems.push(format!("slot {slot}: {}", wrong.join("; ")));
        }
    }
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for report in reports.values() {
        *load.entry(report.visible.as_str()).or_default() += 1;
    }
    println!("workers per device: {load:?}");
    if problems.is_empty() {
        println!("gpu-check: every worker sees exactly its own GPU");
        Ok(())
    } else {
        Err(format!("mismatches:\n  {}", problems.join("\n  ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_from_nvidia_smi_and_cuda_compare_equal() {
        assert_eq!(
            normalize_bus_id("00000000:17:00.0"),
            normalize_bus_id("0000:17:00.0")
        );
        assert_ne!(
            normalize_bus_id("00000000:17:00.0"),
            normalize_bus_id("0000:18:00.0")
        );
        assert_eq!(normalize_bus_id("00000000:AB:00.0"), "0:ab:00.0");
    }

    #[test]
    fn a_probe_report_is_read_by_key() {
        let text = r#"{"pid": 42, "slot": 3, "gpu_env": "CUDA_VISIBLE_DEVICES", "visible": "1", "cuda_device_order": "PCI_BUS_ID", "cuda": {"driver_version": 12040, "device_count": 1, "bus_id_0": "0000:17:00.0", "name_0": "NVIDIA H100"}}"#;
        let (slot, report) = parse_report(text).unwrap();
        assert_eq!(slot, 3);
        assert_eq!(report.pid, 42);
        assert_eq!(report.visible, "1");
        assert_eq!(report.device_count, Some(1));
        assert_eq!(report.bus_id.as_deref(), Some("0000:17:00.0"));
        assert_eq!(report.error, None);
        let failed = r#"{"pid": 7, "slot": 0, "visible": "0", "cuda": {"error": "cuInit(0) failed: CUDA error 100 (no CUDA-capable device is detected)"}}"#;
        let (_, report) = parse_report(failed).unwrap();
        assert!(report.error.unwrap().starts_with("cuInit(0) failed"));
    }

    #[test]
    fn judge_accepts_the_slot_mapping_and_names_each_mismatch() {
        let gpus = vec![
            Gpu {
                index: "0".into(),
                uuid: "GPU-a".into(),
                bus_id: "00000000:17:00.0".into(),
            },
            Gpu {
                index: "1".into(),
                uuid: "GPU-b".into(),
                bus_id: "00000000:65:00.0".into(),
            },
        ];
        let pool = vec!["0".to_owned(), "1".to_owned()];
        let report = |visible: &str, bus: &str| Report {
            pid: 1,
            visible: visible.into(),
            device_count: Some(1),
            bus_id: Some(bus.into()),
            ..Report::default()
        };
        let good = BTreeMap::from([
            (0, report("0", "0000:17:00.0")),
            (1, report("1", "0000:65:00.0")),
            (2, report("0", "0000:17:00.0")),
            (3, report("1", "0000:65:00.0")),
        ]);
        assert!(judge(&pool, &gpus, &good).is_ok());
        let mut bad = good.clone();
        bad.insert(3, report("1", "0000:17:00.0"));
        bad.get_mut(&0).unwrap().device_count = Some(2);
        let error = judge(&pool, &gpus, &bad).unwrap_err();
        assert!(error.contains("slot 0: Some(2) devices"), "{error}");
        assert!(error.contains("slot 3: bus id"), "{error}");
        // A UUID pool resolves too.
        let uuids = vec!["GPU-b".to_owned(), "GPU-a".to_owned()];
        let by_uuid = BTreeMap::from([
            (0, report("GPU-b", "0000:65:00.0")),
            (1, report("GPU-a", "0000:17:00.0")),
        ]);
        assert!(judge(&uuids, &gpus, &by_uuid).is_ok());
    }
}
