//! The GPU options: several GPUs per worker, another vendor's variable, the seed's
//! `USE_GPUS`, `auto` discovery, and the impossible combinations that are usage errors.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use arbiter_tests::{identities_of, run, Fixture, SOON};

use crate::{assert_balanced, record, settle, start, CUDA, EXIT};

/// Stops a master started by [`start`] and checks it left nothing behind.
fn stop(master: &mut arbiter_tests::Master) {
    master.signal(libc::SIGTERM);
    assert_eq!(master.exit_code(EXIT), 0, "{}", master.stderr());
    master.assert_no_process_left();
}

#[test]
fn two_gpus_per_worker_give_distinct_pairs_each_device_used_twice() {
    let fx = Fixture::new();
    let devices = ["0", "1", "2", "3"];
    let (mut master, _) = start(
        &fx,
        &["-w", "4", "--gpus", "0,1,2,3", "--gpus-per-worker", "2"],
        &[],
    );
    let settled = settle(&mut master, CUDA, 4);
    let load = assert_balanced(&settled, &devices, 2, "K=2 over 4");
    record("4 workers, --gpus 0,1,2,3 --gpus-per-worker 2", &load);
    assert_eq!(load, devices.iter().map(|d| (d.to_string(), 2)).collect());
    for worker in settled.values() {
        assert_eq!(worker.gpus.len(), 2, "{worker:?}");
        assert_ne!(worker.gpus[0], worker.gpus[1], "{worker:?}");
    }
    let pairs: Vec<String> = settled.values().map(|w| w.gpus.join(",")).collect();
    assert_eq!(pairs, ["0,1", "2,3", "0,1", "2,3"]);
    stop(&mut master);

    // The README's wrapping example: 3 workers, 3 GPUs, 2 each.
    let fx = Fixture::new();
    let (mut master, _) = start(
        &fx,
        &["-w", "3", "--gpus", "0,1,2", "--gpus-per-worker", "2"],
        &[],
    );
    let settled = settle(&mut master, CUDA, 3);
    let load = assert_balanced(&settled, &["0", "1", "2"], 2, "K=2 over 3");
    record("3 workers, --gpus 0,1,2 --gpus-per-worker 2", &load);
    let pairs: Vec<String> = settled.values().map(|w| w.gpus.join(",")).collect();
    assert_eq!(pairs, ["0,1", "2,0", "1,2"]);
    stop(&mut master);
}

#[test]
fn gpu_env_names_the_variable_and_leaves_cuda_visible_devices_alone() {
    let fx = Fixture::new();
    let (mut master, port) = start(
        &fx,
        &[
            "-w",
            "2",
            "--gpus",
            "0,1",
            "--gpu-env",
            "HIP_VISIBLE_DEVICES",
        ],
        &[(CUDA, "7")],
    );
    let settled = settle(&mut master, "HIP_VISIBLE_DEVICES", 2);
    let load = assert_balanced(&settled, &["0", "1"], 1, "HIP");
    record("2 workers, --gpus 0,1 --gpu-env HIP_VISIBLE_DEVICES", &load);
    // The README: only the configured variable is replaced; any other passes through as is.
    for worker in settled.values() {
        let env = arbiter_tests::environ(worker.pid).expect("a live worker");
        assert_eq!(env.get(CUDA).map(String::as_str), Some("7"), "{env:?}");
        assert_eq!(
            env.get("ARBITER_GPU_ENV").map(String::as_str),
            Some("HIP_VISIBLE_DEVICES")
        );
    }
    // The built-in worker reports the variable it was told about.
    let pids: Vec<i32> = settled.values().map(|w| w.pid).collect();
    let seen = identities_of(port, &pids, SOON);
    for worker in settled.values() {
        assert_eq!(
            seen.get(&worker.pid).and_then(|i| i.gpu.clone()),
            Some(worker.gpus.join(",")),
            "{seen:?}"
        );
    }
    stop(&mut master);
}

#[test]
fn use_gpus_in_the_environment_works_like_gpus_and_arbiter_gpus_wins() {
    let fx = Fixture::new();
    let (mut master, _) = start(&fx, &["-w", "3"], &[("USE_GPUS", "0,1")]);
    let settled = settle(&mut master, CUDA, 3);
    let load = assert_balanced(&settled, &["0", "1"], 1, "USE_GPUS");
    record("3 workers, USE_GPUS=0,1", &load);
    assert_eq!(load, BTreeMap::from([("0".into(), 2), ("1".into(), 1)]));
    stop(&mut master);

    let fx = Fixture::new();
    let (mut master, _) = start(
        &fx,
        &["-w", "3"],
        &[("USE_GPUS", "0,1"), ("ARBITER_GPUS", "5,6")],
    );
    let settled = settle(&mut master, CUDA, 3);
    assert_balanced(&settled, &["5", "6"], 1, "ARBITER_GPUS over USE_GPUS");
    stop(&mut master);
}

#[test]
fn gpus_auto_uses_the_masters_cuda_visible_devices() {
    let fx = Fixture::new();
    let (mut master, _) = start(&fx, &["-w", "3", "--gpus", "auto"], &[(CUDA, "4,5")]);
    let settled = settle(&mut master, CUDA, 3);
    let load = assert_balanced(&settled, &["4", "5"], 1, "auto from CUDA_VISIBLE_DEVICES");
    record(
        "3 workers, --gpus auto with CUDA_VISIBLE_DEVICES=4,5",
        &load,
    );
    stop(&mut master);
}

/// A directory holding a fake `nvidia-smi` that lists `gpus` GPUs, for `PATH`.
fn fake_nvidia_smi(fx: &Fixture, gpus: usize) -> String {
    let dir = fx.join("bin");
    std::fs::create_dir(&dir).unwrap();
    let mut script = String::from("#!/bin/sh\n");
    for i in 0..gpus {
        script.push_str(&format!(
            "echo 'GPU {i}: Fake GPU (UUID: GPU-0000000{i}-fake)'\n"
        ));
    }
    let path = dir.join("nvidia-smi");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_str().unwrap().to_owned()
}

#[test]
fn gpus_auto_falls_back_to_nvidia_smi_and_fails_clearly_without_it() {
    let fx = Fixture::new();
    let bin = fake_nvidia_smi(&fx, 2);
    let path = format!("{bin}:/usr/bin:/bin");
    // An empty CUDA_VISIBLE_DEVICES counts as unset.
    let (mut master, _) = start(
        &fx,
        &["-w", "3", "--gpus", "auto"],
        &[("PATH", &path), (CUDA, "")],
    );
    let settled = settle(&mut master, CUDA, 3);
    let load = assert_balanced(&settled, &["0", "1"], 1, "auto from nvidia-smi -L");
    record("3 workers, --gpus auto with a 2-GPU nvidia-smi", &load);
    stop(&mut master);

    let fx = Fixture::new();
    let empty = fx.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut master = fx.start_with(
        "none",
        &["-b", "127.0.0.1:0", "--gpus", "auto"],
        &[("PATH", empty.to_str().unwrap()), (CUDA, "")],
    );
    assert_eq!(master.exit_code(SOON), 2, "{}", master.stderr());
    let stderr = master.stderr();
    assert!(stderr.contains("nvidia-smi"), "{stderr}");
    master.assert_no_process_left();
}

#[test]
fn impossible_gpu_settings_exit_2_naming_the_problem() {
    let fx = Fixture::new();
    let bound = Duration::from_secs(10);
    for (args, needle) in [
        (&["--gpus", ""][..], "empty"),
        (&["--gpus", "0,0"][..], "twice"),
        (&["--gpus", "0,,1"][..], "empty"),
        (
            &["--gpus", "0,1", "--gpus-per-worker", "3"][..],
            "more than the 2 GPU(s)",
        ),
        (&["--gpus", "0,1", "--gpus-per-worker", "0"][..], "gpus"),
    ] {
        let mut full = vec!["-b", "127.0.0.1:0"];
        full.extend_from_slice(args);
        let (code, _, stderr) = run(&fx, "bad", &full, bound);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?} names the problem: {stderr}"
        );
        println!("{args:?} -> exit 2: {}", stderr.trim());
    }
    // The same checks apply to the seed's variable.
    let mut master = fx.start_with("bad-env", &["-b", "127.0.0.1:0"], &[("USE_GPUS", "0,0")]);
    assert_eq!(master.exit_code(bound), 2, "{}", master.stderr());
    assert!(master.stderr().contains("twice"), "{}", master.stderr());
    master.assert_no_process_left();
}
