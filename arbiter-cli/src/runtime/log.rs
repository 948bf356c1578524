//! Logging: slog with a synchronous, mutex-guarded drain (no thread, unlike slog-async),
//! gunicorn's text layout or one JSON object per line, reopened on USR1.
//!
//! Colour (the seed's annotated arbiter): a text record about a worker carries the
//! [`WORKER_PID`] field, and with colour on the whole line takes that worker's colour (pid
//! modulo 5 over red, green, blue, yellow, cyan, as the seed); the master's own lines stay
//! plain, and JSON records never carry colour codes.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

use crate::config::{ColorChoice, LogFormat, LogLevel};

pub use crate::ops::WORKER_PID;

/// The seed's colours, by pid modulo 5: red, green, blue, yellow, cyan.
const COLOURS: [&str; 5] = ["\x1b[31m", "\x1b[32m", "\x1b[34m", "\x1b[33m", "\x1b[36m"];
/// Back to the terminal's default.
const RESET: &str = "\x1b[0m";

/// The colour of the lines about the worker `pid`.
pub fn worker_colour(pid: i32) -> &'static str {
    COLOURS[pid.rem_euclid(5) as usize]
}

/// Where log lines go.
enum Sink {
    Stderr,
    File(File),
}

struct Inner {
    sink: Sink,
    path: Option<PathBuf>,
}

/// The drain behind the master's logger; cloneable handle for reopening.
#[derive(Clone)]
pub struct LogOutput {
    inner: Arc<Mutex<Inner>>,
    format: LogFormat,
    level: Level,
    /// Whether worker lines are coloured (text format only).
    colour: bool,
}

impl LogOutput {
    /// Opens `path` for appending (None or "-": stderr).
    pub fn open(path: Option<&Path>, format: LogFormat, level: LogLevel) -> io::Result<LogOutput> {
        let path = path.filter(|p| *p != Path::new("-")).map(Path::to_path_buf);
        let sink = match &path {
            Some(path) => Sink::File(open_append(path)?),
            None => Sink::Stderr,
        };
        Ok(LogOutput {
            inner: Arc::new(Mutex::new(Inner { sink, path })),
            format,
            level: slog_level(level),
            colour: false,
        })
    }

    /// Decides colour: `always`, `never`, or `auto`, on only when the log goes to a terminal
    /// and `NO_COLOR` is unset or empty (as cargo and ripgrep do). Never for JSON.
    pub fn with_colour(mut self, choice: ColorChoice, no_color: bool) -> LogOutput {
        self.colour = self.format == LogFormat::Text
            && match choice {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => !no_color && self.is_terminal(),
            };
        self
    }

    fn is_terminal(&self) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &inner.sink {
            Sink::Stderr => io::stderr().is_terminal(),
            Sink::File(file) => file.is_terminal(),
        }
    }

    /// Whether trace records (every core input and action) are written.
    pub fn traces(&self) -> bool {
        self.level == Level::Trace
    }

    /// Reopens the log file (after rotation); stderr needs nothing.
    pub fn reopen(&self) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = inner.path.clone() {
            inner.sink = Sink::File(open_append(&path)?);
        }
        Ok(())
    }

    /// The logger writing through this output.
    pub fn logger(&self) -> slog::Logger {
        slog::Logger::root(self.clone().fuse(), slog::o!())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn slog_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Trace => Level::Trace,
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warning => Level::Warning,
        LogLevel::Error => Level::Error,
        LogLevel::Critical => Level::Critical,
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Critical => "CRITICAL",
        Level::Error => "ERROR",
        Level::Warning => "WARNING",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}

impl Drain for LogOutput {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if !record.level().is_at_least(self.level) {
            return Ok(());
        }
        let mut fields = Fields::default();
        let _ = values.serialize(record, &mut fields);
        let _ = record.kv().serialize(record, &mut fields);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let pid = std::process::id();
        let line = match self.format {
            LogFormat::Text => {
                // gunicorn's layout: the message only; JSON lines carry every field.
                let colour = self
                    .colour
                    .then(|| fields.worker_pid())
                    .flatten()
                    .map(worker_colour);
                let mut line = format!(
                    "{}[{}] [{}] [{}] {}{}",
                    colour.unwrap_or(""),
                    format_utc(now.as_secs()),
                    pid,
                    level_name(record.level()),
                    record.msg(),
                    if colour.is_some() { RESET } else { "" },
                );
                line.push('\n');
                line
            }
            LogFormat::Json => {
                let mut object = serde_json::Map::new();
                object.insert("ts".into(), serde_json::json!(now.as_secs_f64()));
                object.insert("pid".into(), serde_json::json!(pid));
                object.insert(
                    "level".into(),
                    serde_json::json!(level_name(record.level())),
                );
                object.insert("msg".into(), serde_json::json!(record.msg().to_string()));
                for (key, value) in fields.pairs {
                    object.insert(key, serde_json::Value::String(value));
                }
                let mut line = serde_json::Value::Object(object).to_string();
                line.push('\n');
                line
            }
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = match &mut inner.sink {
            Sink::Stderr => io::stderr().write_all(line.as_bytes()),
            Sink::File(file) => file.write_all(line.as_bytes()),
        };
        Ok(())
    }
}

#[derive(Default)]
struct Fields {
    pairs: Vec<(String, String)>,
}

impl Fields {
    /// The worker a record is about, if it says.
    fn worker_pid(&self) -> Option<i32> {
        self.pairs
            .iter()
            .find(|(key, _)| key == WORKER_PID)
            .and_then(|(_, value)| value.parse().ok())
    }
}

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        self.pairs.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// An absent optional field (`"worker_pid" => None`) is left out.
    fn emit_none(&mut self, _key: Key) -> slog::Result {
        Ok(())
    }
}

/// `YYYY-MM-DD HH:MM:SS +0000` for a Unix time, as gunicorn prints it (UTC).
pub fn format_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_colours_follow_the_seed_by_pid_modulo_five() {
        assert_eq!(worker_colour(10), "\x1b[31m");
        assert_eq!(worker_colour(11), "\x1b[32m");
        assert_eq!(worker_colour(12), "\x1b[34m");
        assert_eq!(worker_colour(13), "\x1b[33m");
        assert_eq!(worker_colour(14), "\x1b[36m");
    }

    #[test]
    fn only_worker_lines_are_coloured_and_only_in_text_with_colour_on() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, format: LogFormat, choice: ColorChoice| {
            let path = dir.path().join(name);
            let output = LogOutput::open(Some(&path), format, LogLevel::Trace)
                .unwrap()
                .with_colour(choice, false);
            let log = output.logger();
            slog::info!(log, "Booting worker with pid: 12"; WORKER_PID => 12);
            slog::info!(log, "Listening at: somewhere");
            slog::trace!(log, "input: signal SIGTTIN"; WORKER_PID => None::<i32>);
            std::fs::read_to_string(&path).unwrap()
        };
        let coloured = write("always", LogFormat::Text, ColorChoice::Always);
        let lines: Vec<&str> = coloured.lines().collect();
        assert!(lines[0].starts_with("\x1b[34m[") && lines[0].ends_with("pid: 12\x1b[0m"));
        assert!(lines[1].starts_with('[') && !lines[1].contains('\x1b'));
        assert!(lines[2].contains("[TRACE] input: signal SIGTTIN") && !lines[2].contains('\x1b'));
        // A file is no terminal: auto stays plain.
        assert!(!write("auto", LogFormat::Text, ColorChoice::Auto).contains('\x1b'));
        assert!(!write("never", LogFormat::Text, ColorChoice::Never).contains('\x1b'));
        let json = write("json", LogFormat::Json, ColorChoice::Always);
        assert!(
            !json.contains('\x1b') && !json.contains("\\u001b"),
            "{json}"
        );
        assert!(
            json.contains("\"worker_pid\":\"12\"") && !json.contains("None"),
            "{json}"
        );
    }

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 +0000");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 +0000");
        assert_eq!(format_utc(1_795_790_509), "2026-11-27 14:41:49 +0000");
    }
}
