//! `scripts/gpu_probe.py` (the worker of `cargo xtask gpu-check`) as far as it runs without a
//! GPU: under arbiter, with `--dry-run`, each worker reports its slot and devices in a file and
//! over HTTP on the inherited listener.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arbiter_tests::{get, wait_until, Fixture, SOON};

use crate::{expected, settle, CUDA, EXIT};

fn probe_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/gpu_probe.py")
}

/// The reports in `dir`, by slot (the newest file per slot wins; none is replaced here).
fn reports(dir: &std::path::Path) -> BTreeMap<u64, serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            if path.extension().is_none_or(|x| x != "json") {
                return None;
            }
            let report: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
            Some((report["slot"].as_u64()?, report))
        })
        .collect()
}

#[test]
fn the_gpu_probe_reports_its_slot_and_devices_under_arbiter() {
    let fx = Fixture::new();
    let dir = fx.join("reports");
    std::fs::create_dir(&dir).unwrap();
    let probe_env = format!("GPU_PROBE_DIR={}", dir.display());
    let script = probe_script();
    let (mut master, port) = {
        let args = [
            "-w",
            "4",
            "--gpus",
            "0,1",
            "--ready",
            "notify",
            "--env",
            &probe_env,
            "--",
            "python3",
            script.to_str().unwrap(),
            "--dry-run",
        ];
        let mut full = vec!["-b", "127.0.0.1:0"];
        full.extend_from_slice(&args);
        let mut master = fx.start("arbiter", &full);
        let port = master.port();
        (master, port)
    };
    let settled = settle(&mut master, CUDA, 4);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = reports(&dir);
    while seen.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "reports {seen:?}\n{}",
            master.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
        seen = reports(&dir);
    }
    let libcuda_here = seen[&0]["cuda"].get("skipped").is_none();
    for (slot, worker) in &settled {
        let report = &seen[&(*slot as u64)];
        assert_eq!(
            report["pid"].as_i64(),
            Some(i64::from(worker.pid)),
            "{report}"
        );
        assert_eq!(
            report["visible"].as_str(),
            Some(expected(&["0", "1"], 1, *slot).join(",").as_str()),
            "{report}"
        );
        assert_eq!(report["gpu_env"].as_str(), Some(CUDA));
        if !libcuda_here {
            assert_eq!(
                report["cuda"]["skipped"].as_str(),
                Some("dry run: libcuda.so.1 not found"),
                "{report}"
            );
        }
    }
    // The same report over HTTP, from the listener the worker inherited as fd 3.
    let mut answered = None;
    assert!(wait_until(SOON, || {
        answered = get(port, "/").ok().filter(|r| r.status == 200);
        answered.is_some()
    }));
    let body: serde_json::Value = serde_json::from_str(&answered.unwrap().body).unwrap();
    let pid = body["pid"].as_i64().unwrap() as i32;
    assert!(settled.values().any(|w| w.pid == pid), "{body}");
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    master.assert_no_process_left();
}
