//! Workspace rules as tests (rust-analyzer's tidy style): what the design card promises about
//! the code's shape is checked here, not left to review.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, skipping `target/`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path
                    .file_name()
                    .is_some_and(|n| n == "target" || n == ".git")
                {
                    continue;
                }
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The dependency names of one section (`[dependencies]`) of a crate's Cargo.toml.
fn dependencies(manifest: &str, section: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == section;
            continue;
        }
        if inside {
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim().trim_end_matches(".workspace").to_owned();
                if !name.is_empty() && !name.starts_with('#') {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// Lines of code with `//` comments (but not strings) kept, for token searches.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l))
}

const PURE_CRATES: &[&str] = &["arbiter-core", "arbiter-gpu"];

#[test]
fn pure_crates_depend_on_no_os_crate() {
    let allowed = ["arbiter-gpu", "thiserror"];
    for krate in PURE_CRATES {
        let manifest = read(&root().join(krate).join("Cargo.toml"));
        for dep in dependencies(&manifest, "[dependencies]") {
            assert!(
                allowed.contains(&dep.as_str()),
                "{krate} depends on {dep}: the pure crates may depend only on {allowed:?}"
            );
        }
    }
}

#[test]
fn pure_crates_forbid_unsafe_and_never_read_a_clock_or_spawn() {
    let banned = [
        "Instant::now",
        "SystemTime",
        "std::time::Instant",
        "unsafe ",
        "std::process",
        "std::fs",
        "std::net",
        "std::env",
        "std::thread",
    ];
    for krate in PURE_CRATES {
        let lib = read(&root().join(krate).join("src/lib.rs"));
        assert!(
            lib.contains("#![forbid(unsafe_code)]"),
            "{krate}/src/lib.rs must forbid unsafe_code"
        );
        for file in rust_files(&root().join(krate).join("src")) {
            let text = read(&file);
            for (number, line) in code_lines(&text) {
                let code = line.split("//").next().unwrap_or("");
                for token in banned {
                    assert!(
                        !code.contains(token),
                        "{}:{number}: `{token}` in a pure crate (inputs carry the time; no I/O)",
                        file.display()
                    );
                }
            }
        }
    }
}

#[test]
fn every_unsafe_block_has_a_safety_comment() {
    let mut missing = Vec::new();
    for file in rust_files(&root()) {
        if file.ends_with("tests/tests/tidy.rs") {
            continue; // this file names the patterns it looks for
        }
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let opens_block = code.contains("unsafe {") || code.trim_end().ends_with("unsafe");
            if !opens_block || code.contains("unsafe fn") || code.contains("unsafe impl") {
                continue;
            }
            // The comment sits on the line itself or within the few lines above the block's
            // statement (attributes and the start of a multi-line statement may intervene).
            let from = index.saturating_sub(6);
            let documented = lines[from..=index].iter().any(|l| l.contains("SAFETY:"));
            if !documented {
                missing.push(format!("{}:{}", file.display(), index + 1));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "unsafe blocks without a `// SAFETY:` comment:\n{}",
        missing.join("\n")
    );
}

#[test]
fn unsafe_lives_only_in_the_os_crates_and_the_spawn_path() {
    // Library and binary sources only; tests and test fixtures may use unsafe to set up fds.
    let allowed = [
        "arbiter-signals/src/",
        "arbiter-sockets/src/",
        "arbiter-cli/src/os/spawn.rs",
        "arbiter-cli/src/os/daemon.rs", // fork and setsid for --daemon, before any thread
        "arbiter-cli/src/serve.rs",     // taking inherited sockets (environment) before any thread
        "arbiter-cli/src/worker/",      // the built-in worker is a separate program after exec
        "arbiter-cli/src/library/context.rs", // a library-mode worker adopts its fds 3..
        "arbiter-cli/src/library/memory.rs", // madvise on a preloaded buffer
        "arbiter-cli/src/os/beat_filter.rs", // bpf(2): the heartbeat filter, which nothing wraps
    ];
    let mut offenders = Vec::new();
    for file in rust_files(&root()) {
        let relative = file
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let is_test = relative.contains("/tests/")
            || relative.ends_with("tests.rs")
            || relative.starts_with("tests/")
            || relative.starts_with("xtask/")
            || relative.starts_with("fuzz/") // the fuzz harness: its allocator counts bytes
            || relative.contains("/benches/");
        if is_test || allowed.iter().any(|a| relative.starts_with(a)) {
            continue;
        }
        let text = read(&file);
        for (number, line) in code_lines(&text) {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("unsafe {") || code.contains("unsafe fn") {
                offenders.push(format!("{relative}:{number}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "unsafe outside the OS crates and the spawn path:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn no_process_spawning_outside_the_cli() {
    let mut offenders = Vec::new();
    for krate in [
        "arbiter-core",
        "arbiter-gpu",
        "arbiter-signals",
        "arbiter-sockets",
    ] {
        for file in rust_files(&root().join(krate).join("src")) {
            let text = read(&file);
            for (number, line) in code_lines(&text) {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("Command::new")
                    || code.contains("libc::fork")
                    || code.contains("execve")
                {
                    offenders.push(format!("{}:{number}", file.display()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "process spawning outside arbiter-cli:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn no_stub_macros_anywhere() {
    let mut offenders = Vec::new();
    for file in rust_files(&root()) {
        let text = read(&file);
        for (number, line) in code_lines(&text) {
            let code = line.split("//").next().unwrap_or("");
            if code.contains(concat!("todo", "!(")) || code.contains(concat!("unimplemented", "!("))
            {
                offenders.push(format!("{}:{number}", file.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "stubs left in the code:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_readme_opens_with_the_run_and_test_commands() {
    let readme = read(&root().join("README.md"));
    let head: String = readme.lines().take(30).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("cargo run --release -p arbiter-cli"),
        "README must open with the run command"
    );
    assert!(
        head.contains("cargo test --workspace"),
        "README must open with the test command"
    );
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.contains("cargo test --workspace"),
        ".ci/run must run the README's test command"
    );
}

/// The arrows of arbiter-cli point down (docs/ARCHITECTURE.md): main -> cli -> serve ->
/// runtime -> ops, os; client, worker and protocol stand alone. A module may not name what
/// sits above it or beside it on the wrong side.
#[test]
fn arbiter_cli_modules_point_down() {
    let src = root().join("arbiter-cli/src");
    // (folder or file, what it must never name)
    let rules: &[(&str, &[&str])] = &[
        // The OS layer carries out; it neither decides nor observes.
        (
            "os/",
            &[
                "arbiter_core",
                "crate::runtime",
                "crate::ops",
                "crate::config",
                "crate::cli",
                "crate::serve",
                "crate::client",
            ],
        ),
        // Observers never act on processes or call back into the loop.
        (
            "ops/",
            &[
                "crate::runtime",
                "crate::os::spawn",
                "crate::serve",
                "crate::cli",
                "crate::client",
                "signal::kill",
                "process::Command",
            ],
        ),
        // The clients speak the protocol; they never use the runtime or its observers.
        (
            "client/",
            &[
                "crate::runtime",
                "crate::ops",
                "crate::serve",
                "crate::os::spawn",
            ],
        ),
        ("protocol/", &["crate::"]),
        (
            "config/",
            &[
                "crate::runtime",
                "crate::ops",
                "crate::os",
                "crate::cli",
                "crate::serve",
            ],
        ),
        ("runtime/", &["crate::cli", "crate::serve", "crate::client"]),
    ];
    let mut offenders = Vec::new();
    for file in rust_files(&src) {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // The built-in worker is a separate program: it names nothing of the crate.
        let forbidden: Vec<&str> = if relative.starts_with("worker/") {
            vec!["crate::", "arbiter_core"]
        } else {
            rules
                .iter()
                .filter(|(place, _)| relative.starts_with(place))
                .flat_map(|(_, names)| names.iter().copied())
                .collect()
        };
        let text = read(&file);
        for (number, line) in code_lines(&text) {
            let code = line.split("//").next().unwrap_or("");
            for name in &forbidden {
                if code.contains(name) {
                    offenders.push(format!("arbiter-cli/src/{relative}:{number}: {name}"));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "arrows pointing up in arbiter-cli:\n{}",
        offenders.join("\n")
    );
    // The reusable crates never depend on the composition.
    for krate in [
        "arbiter-core",
        "arbiter-signals",
        "arbiter-sockets",
        "arbiter-gpu",
    ] {
        let manifest = read(&root().join(krate).join("Cargo.toml"));
        assert!(
            !dependencies(&manifest, "[dependencies]").contains(&"arbiter-cli".to_owned()),
            "{krate} depends on arbiter-cli"
        );
    }
}

#[test]
fn main_is_a_thin_entry() {
    let main = read(&root().join("arbiter-cli/src/main.rs"));
    let code = code_lines(&main)
        .filter(|(_, line)| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with("//")
        })
        .count();
    assert!(
        code <= 60,
        "arbiter-cli/src/main.rs has {code} lines of code"
    );
    for dispatch in ["args_os", "\"ctl\"", "\"worker\"", "daemon", "unsafe"] {
        assert!(
            !main.contains(dispatch),
            "main.rs should only parse, run and map the exit code, found {dispatch}"
        );
    }
}

/// The code of a production source: the part before its `#[cfg(test)]` module, without `//`
/// comments.
fn production_code(text: &str) -> Vec<(usize, String)> {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    code_lines(&text[..end])
        .map(|(number, line)| (number, line.split("//").next().unwrap_or("").to_owned()))
        .collect()
}

#[test]
fn libc_only_where_no_safe_wrapper_exists() {
    // Syscalls go through nix or rustix. `libc` is left only for what neither wraps safely:
    // the signal handler and dispositions by number (signals), `close_range` between fork and
    // exec (the hand-off), `execve` and `_exit` in the forked child (spawn), and `bpf(2)`.
    let allowed = [
        "arbiter-signals/src/lib.rs",
        "arbiter-sockets/src/handoff.rs",
        // SO_ATTACH_REUSEPORT_CBPF takes a classic BPF program (sock_filter, sock_fprog),
        // which rustix does not wrap.
        "arbiter-sockets/src/slots.rs",
        "arbiter-cli/src/os/spawn.rs",
        // bpf(2) (the heartbeat filter's table and programs), which neither wraps.
        "arbiter-cli/src/os/beat_filter.rs",
    ];
    let mut offenders = Vec::new();
    let mut seen_allowed = Vec::new();
    for krate in [
        "arbiter-core",
        "arbiter-gpu",
        "arbiter-signals",
        "arbiter-sockets",
        "arbiter-cli",
    ] {
        for file in rust_files(&root().join(krate).join("src")) {
            let relative = file
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if relative.ends_with("tests.rs") || relative.contains("/tests/") {
                continue;
            }
            let text = read(&file);
            for (number, code) in production_code(&text) {
                if !code.contains("libc::") {
                    continue;
                }
                if allowed.contains(&relative.as_str()) {
                    seen_allowed.push(relative.clone());
                } else {
                    offenders.push(format!("{relative}:{number}"));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "libc:: outside the places with no safe wrapper (use nix or rustix):\n{}",
        offenders.join("\n")
    );
    // The rule looks at real paths: a renamed file must be renamed here too.
    for path in allowed {
        assert!(
            root().join(path).is_file(),
            "{path} is allowed libc:: but does not exist"
        );
    }
    assert!(!seen_allowed.is_empty(), "the scan found no file at all");
}

#[test]
fn at_most_thirty_unsafe_blocks_and_functions_in_production_sources() {
    let mut sites = Vec::new();
    for krate in [
        "arbiter-core",
        "arbiter-gpu",
        "arbiter-signals",
        "arbiter-sockets",
        "arbiter-cli",
    ] {
        for file in rust_files(&root().join(krate).join("src")) {
            let relative = file
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if relative.ends_with("tests.rs") || relative.contains("/tests/") {
                continue;
            }
            let text = read(&file);
            for (number, code) in production_code(&text) {
                let count = code.matches("unsafe {").count() + code.matches("unsafe fn").count();
                for _ in 0..count {
                    sites.push(format!("{relative}:{number}"));
                }
            }
        }
    }
    assert!(
        sites.len() <= 30,
        "{} unsafe blocks and functions in production sources (at most 30; wrap syscalls with \
         nix or rustix):\n{}",
        sites.len(),
        sites.join("\n")
    );
}
