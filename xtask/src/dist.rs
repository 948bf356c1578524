//! `cargo xtask dist`: what a release ships, in `target/dist/`: the release binary (the
//! container image's build command), man pages generated from arbiter's clap definitions
//! (`arbiter.1` and one page per subcommand, `clap_mangen`) and shell completions for bash, zsh
//! and fish (`clap_complete`).
//!
//! Then the results are checked with the tools that will read them: the binary's `--version`
//! is the man page's; groff renders `arbiter.1` with no warning and the options in it; bash and
//! fish complete `arbiter --wor` to `--workers` from the generated files; zsh parses its file.
//! A shell that is not installed is reported as skipped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap_complete::Shell;

use crate::common;
use crate::process::find_in_path;

/// Builds and checks everything; prints what was made.
pub fn run() -> Result<(), String> {
    let dist = build()?;
    for line in check(&dist)? {
        println!("dist: {line}");
    }
    Ok(())
}

/// The files of `target/dist/`.
pub(crate) struct Dist {
    /// `target/dist/arbiter`.
    pub(crate) binary: PathBuf,
    /// `target/dist/man/man1/`: `arbiter.1` and the subcommands' pages (so `target/dist/man`
    /// is a `MANPATH` entry).
    pub(crate) man_dir: PathBuf,
    /// `target/dist/completions/`: `arbiter.bash`, `_arbiter`, `arbiter.fish`.
    pub(crate) completions: PathBuf,
}

/// Builds the release binary and generates the man pages and completions into `target/dist/`.
pub(crate) fn build() -> Result<Dist, String> {
    let built = common::arbiter_release()?;
    let root = common::root().join("target/dist");
    if root.exists() {
        fs::remove_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    }
    let dist = Dist {
        binary: root.join("arbiter"),
        man_dir: root.join("man/man1"),
        completions: root.join("completions"),
    };
    for dir in [&dist.man_dir, &dist.completions] {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::copy(&built, &dist.binary).map_err(|e| format!("copy {}: {e}", built.display()))?;
    clap_mangen::generate_to(arbiter_cli::command(), &dist.man_dir)
        .map_err(|e| format!("man pages: {e}"))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = arbiter_cli::command();
        clap_complete::generate_to(shell, &mut command, "arbiter", &dist.completions)
            .map_err(|e| format!("{shell} completions: {e}"))?;
    }
    Ok(dist)
}

/// Every check; one report line each.
pub(crate) fn check(dist: &Dist) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let version = text(&run_output(Command::new(&dist.binary).arg("--version"))?.stdout);
    let version = version.trim();
    let man = dist.man_dir.join("arbiter.1");
    let page = fs::read_to_string(&man).map_err(|e| format!("{}: {e}", man.display()))?;
    let title = page
        .lines()
        .find(|l| l.starts_with(".TH"))
        .unwrap_or_default();
    if !title.contains(&format!("\"{version}\"")) {
        return Err(format!(
            "arbiter.1's title {title:?} does not name {version:?}"
        ));
    }
    let mut pages: Vec<String> = fs::read_dir(&dist.man_dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
        .collect();
    pages.sort();
    lines.push(format!(
        "{} ({}); man pages {}",
        dist.binary.display(),
        version,
        pages.join(", ")
    ));
    lines.push(render_man(&man)?);
    for (shell, file) in [
        ("bash", "arbiter.bash"),
        ("zsh", "_arbiter"),
        ("fish", "arbiter.fish"),
    ] {
        let path = dist.completions.join(file);
        if !path.is_file() {
            return Err(format!("no {} after generating", path.display()));
        }
        let line = match find_in_path(shell) {
            None => format!("{file}: {shell} not installed, not checked"),
            Some(_) => check_completion(shell, &path)?,
        };
        lines.push(line);
    }
    Ok(lines)
}

/// groff renders the page with warnings on (`-ww`): none may appear, and the options must.
fn render_man(man: &Path) -> Result<String, String> {
    if find_in_path("groff").is_none() {
        return Ok("arbiter.1: groff not installed, not rendered".into());
    }
    let output = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww"])
        .arg(man)
        .output()
        .map_err(|e| format!("groff: {e}"))?;
    let warnings = text(&output.stderr);
    if !output.status.success() || !warnings.trim().is_empty() {
        return Err(format!("groff on arbiter.1: {} {warnings}", output.status));
    }
    // groff may hyphenate or embolden; plain search on text with backspace overstrikes removed.
    let rendered = strip_overstrike(&text(&output.stdout));
    for wanted in [
        "--workers",
        "--graceful-timeout",
        "--metrics-bind",
        "ctl",
        "upgrade",
    ] {
        if !rendered.contains(wanted) {
            return Err(format!("rendered arbiter.1 does not mention {wanted}"));
        }
    }
    Ok(format!(
        "arbiter.1 renders with groff -ww, no warning, {} lines",
        rendered.lines().count()
    ))
}

/// What `shell` offers for `arbiter --wor` with the generated file loaded (zsh: parsed only).
fn check_completion(shell: &str, path: &Path) -> Result<String, String> {
    let file = path.display().to_string();
    let (program, args, what): (&str, Vec<String>, &str) = match shell {
        "bash" => (
            "bash",
            vec![
                "-c".into(),
                "source \"$1\" && COMP_WORDS=(arbiter --wor) && COMP_CWORD=1 && \
                 _arbiter arbiter --wor arbiter && printf '%s\\n' \"${COMPREPLY[@]}\""
                    .into(),
                "bash".into(),
                file.clone(),
            ],
            "completes arbiter --wor to --workers",
        ),
        "fish" => (
            "fish",
            vec![
                "--no-config".into(),
                "-c".into(),
                format!("source {file}; complete -C 'arbiter --wor'"),
            ],
            "completes arbiter --wor to --workers",
        ),
        "zsh" => ("zsh", vec!["-n".into(), file.clone()], "parses (zsh -n)"),
        other => return Err(format!("no check for {other}")),
    };
    let output = run_output(Command::new(program).args(&args))?;
    let offered = text(&output.stdout);
    if shell != "zsh"
        && !offered
            .lines()
            .any(|l| l.split_whitespace().next() == Some("--workers"))
    {
        return Err(format!(
            "{shell} with {file} offers {offered:?} for `arbiter --wor`, not --workers"
        ));
    }
    if !text(&output.stderr).trim().is_empty() {
        return Err(format!("{shell} with {file}: {}", text(&output.stderr)));
    }
    Ok(format!(
        "{}: {shell} {what}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ))
}

fn run_output(command: &mut Command) -> Result<Output, String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{command:?}: {}: {}",
            output.status,
            text(&output.stderr)
        ))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Text without terminal overstrikes (`X\bX` bold, `_\bX` underline).
fn strip_overstrike(text: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overstrikes_are_removed() {
        assert_eq!(strip_overstrike("-\u{8}--\u{8}-w\u{8}w x"), "--w x");
        assert_eq!(strip_overstrike("_\u{8}a_\u{8}b"), "ab");
    }

    #[test]
    fn the_command_has_the_subcommands_the_pages_name() {
        let command = arbiter_cli::command();
        let names: Vec<&str> = command.get_subcommands().map(|s| s.get_name()).collect();
        for wanted in ["ctl", "upgrade", "worker"] {
            assert!(names.contains(&wanted), "{names:?}");
        }
    }
}
