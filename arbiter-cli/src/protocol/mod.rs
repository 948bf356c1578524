//! The control protocol: one JSON request line per connection, one JSON answer line.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"scale","workers":4}`, `{"cmd":"reload"}`,
//! `{"cmd":"stop","quick":false}`, `{"cmd":"kill-worker","pid":123}`. Answers:
//! `{"ok":true,...}` or `{"ok":false,"error":"..."}`. Shared by the server and `arbiter ctl`.

pub mod path;

use serde::{Deserialize, Serialize};

/// Longest request line the server reads, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One order or question sent to the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The master's and every worker's state.
    Status,
    /// Set the target number of workers; answered when that many are ready.
    Scale {
        /// The new target, at least 1.
        workers: usize,
    },
    /// Re-read the configuration and roll the workers; answered when the roll completes.
    Reload,
    /// Stop; answered at once, and the connection closes when the master exits.
    Stop {
        /// Quick stop (the quick signal instead of TERM).
        #[serde(default)]
        quick: bool,
    },
    /// Stop one worker (it is replaced); answered when it has exited and been replaced.
    KillWorker {
        /// The worker's pid.
        pid: i32,
    },
}

impl Request {
    /// The request as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Parses one request line (without its newline). The reason for a refusal is one line:
    /// control characters the parser quotes from the line come out escaped.
    ///
    /// The line is read into a flat [`Wire`] record, not through serde's internally tagged
    /// enum: that one buffers every field it has not matched yet (nested arrays included)
    /// before it knows the command, so a short line of brackets cost kilobytes. Here an
    /// unknown field or a value of the wrong type is refused at its first byte.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let wire: Wire = serde_json::from_slice(line).map_err(|e| refusal(&e.to_string()))?;
        let Wire {
            cmd,
            workers,
            quick,
            pid,
        } = wire;
        let stray = |field: &str, given: bool| match given {
            true => Err(refusal(&format!(
                "unknown field `{field}` for `{}`",
                cmd.name()
            ))),
            false => Ok(()),
        };
        let missing = |field: &str| refusal(&format!("missing field `{field}`"));
        match cmd {
            Command::Status | Command::Reload => {
                stray("workers", workers.is_some())?;
                stray("quick", quick.is_some())?;
                stray("pid", pid.is_some())?;
                Ok(match cmd {
                    Command::Status => Request::Status,
                    _ => Request::Reload,
                })
            }
            Command::Scale => {
                stray("quick", quick.is_some())?;
                stray("pid", pid.is_some())?;
                let workers = workers.ok_or_else(|| missing("workers"))?;
                Ok(Request::Scale { workers })
            }
            Command::Stop => {
                stray("workers", workers.is_some())?;
                stray("pid", pid.is_some())?;
                Ok(Request::Stop {
                    quick: quick.unwrap_or(false),
                })
            }
            Command::KillWorker => {
                stray("workers", workers.is_some())?;
                stray("quick", quick.is_some())?;
                let pid = pid.ok_or_else(|| missing("pid"))?;
                Ok(Request::KillWorker { pid })
            }
        }
    }
}

/// A request line as it is read: the command and every field any command takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    cmd: Command,
    workers: Option<usize>,
    quick: Option<bool>,
    pid: Option<i32>,
}

/// The commands, as spelled on the wire.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Command {
    Status,
    Scale,
    Reload,
    Stop,
    KillWorker,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Scale => "scale",
            Command::Reload => "reload",
            Command::Stop => "stop",
            Command::KillWorker => "kill-worker",
        }
    }
}

/// The longest reason a refusal quotes, in characters: the parser's message may quote the
/// whole line, which the client already has.
const MAX_REASON: usize = 200;

/// `bad request: ` and the parser's reason, control characters escaped so it is one line,
/// cut at [`MAX_REASON`] characters (a line of 442 DEL bytes used to come back as 2.6 KB of
/// `\u{7f}` escapes, 14 KB of heap on the way: found by the `control_line` fuzz target).
fn refusal(reason: &str) -> String {
    let mut out = String::from("bad request: ");
    for (shown, c) in reason.chars().enumerate() {
        if shown >= MAX_REASON {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The master's part of a status answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterStatus {
    /// The master's pid.
    pub pid: u32,
    /// Seconds since the master started.
    pub uptime_s: f64,
    /// running, reloading, upgrading or stopping.
    pub phase: String,
    /// The reload generation now wanted.
    pub generation: u64,
    /// The target number of workers.
    pub target: usize,
    /// Worker processes alive (any state).
    pub live: usize,
    /// Ready workers not being stopped.
    pub ready: usize,
}

/// One worker row of a status answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its pid (none while the spawn is under way).
    pub pid: Option<i32>,
    /// Its id (age), never reused.
    pub id: u64,
    /// Its stable slot.
    pub slot: usize,
    /// Its reload generation.
    pub generation: u64,
    /// Its GPUs.
    pub gpus: Vec<String>,
    /// spawning, booting, ready, retiring, aborted or killed.
    pub state: String,
    /// Seconds since it was spawned.
    pub age_s: f64,
    /// Seconds since its last heartbeat, if it ever sent one.
    pub heartbeat_age_s: Option<f64>,
    /// Whether it is ready.
    pub ready: bool,
    /// Unexpected exits so far in its slot.
    pub restarts: u64,
    /// Resident memory in bytes, from `/proc/PID/status`.
    pub rss_bytes: Option<u64>,
    /// While it is being recycled (its replacement comes first): why, `age`, `memory` or
    /// `requested`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycling: Option<String>,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Always true.
    pub ok: bool,
    /// The master.
    pub master: MasterStatus,
    /// The workers, oldest first.
    pub workers: Vec<WorkerStatus>,
}

/// A failure answer line.
pub fn failure(error: &str) -> String {
    let mut line = serde_json::json!({ "ok": false, "error": error }).to_string();
    line.push('\n');
    line
}

/// A success answer line with extra fields.
pub fn success(fields: serde_json::Value) -> String {
    let mut object = serde_json::Map::new();
    object.insert("ok".into(), serde_json::Value::Bool(true));
    if let serde_json::Value::Object(extra) = fields {
        object.extend(extra);
    }
    let mut line = serde_json::Value::Object(object).to_string();
    line.push('\n');
    line
}

/// Resident set size of a process in bytes, from `/proc/PID/status` (`self` for the master).
pub fn rss_bytes(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_reject_unknown_shapes() {
        for request in [
            Request::Status,
            Request::Scale { workers: 4 },
            Request::Reload,
            Request::Stop { quick: true },
            Request::KillWorker { pid: 123 },
        ] {
            let line = request.to_line();
            assert!(line.ends_with('\n'));
            assert_eq!(Request::parse(line.trim_end().as_bytes()), Ok(request));
        }
        assert_eq!(
            Request::parse(br#"{"cmd":"stop"}"#),
            Ok(Request::Stop { quick: false })
        );
        assert_eq!(
            Request::parse(br#"{"cmd":"kill-worker","pid":7}"#),
            Ok(Request::KillWorker { pid: 7 })
        );
        for bad in [
            &br#"{"cmd":"explode"}"#[..],
            br#"{"cmd":"scale"}"#,
            br#"{"cmd":"scale","workers":-1}"#,
            br#"{"cmd":"kill-worker","pid":"x"}"#,
            br#"{"cmd":"kill-worker"}"#,
            br#"{"cmd":"status","workers":3}"#,
            br#"{"cmd":"stop","pid":3}"#,
            br#"{"cmd":"reload","quick":true}"#,
            br#"{"cmd":"scale","workers":2,"workers":3}"#,
            br#"{"workers":2}"#,
            br#"{"cmd":"status","extra":1}"#,
            b"not json",
        ] {
            assert!(
                Request::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Found by the `control_line` fuzz target: serde quotes an unknown command as sent, so a
    /// control character in it made a reason of several lines.
    #[test]
    fn refusals_are_one_line() {
        let reason = Request::parse(b"{\"cmd\":\"kill-\x7forker\"}").unwrap_err();
        assert!(
            reason.starts_with("bad request: unknown variant `kill-\\u{7f}orker`"),
            "{reason}"
        );
        let reason = Request::parse(b"{\"cmd\":\"a\nb\"}").unwrap_err();
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
    }

    /// Found by the `control_line` fuzz target: serde's internally tagged enum buffered the
    /// fields before `cmd` (here 108 nested arrays) as generic values, 8.6 KB of heap for a
    /// 206-byte line. The flat record refuses the unknown field at once.
    #[test]
    fn unknown_fields_are_refused_without_buffering_them() {
        let mut line = String::from(r#"{"c":"#);
        line.push_str(&"[".repeat(108));
        line.push_str(&"]".repeat(108));
        line.push_str(r#","cmd":"status"}"#);
        let reason = Request::parse(line.as_bytes()).unwrap_err();
        assert!(
            reason.starts_with("bad request: unknown field `c`"),
            "{reason}"
        );
        let reason = Request::parse(br#"{"cmd":"status","workers":2}"#).unwrap_err();
        assert_eq!(reason, "bad request: unknown field `workers` for `status`");
        let reason = Request::parse(br#"{"cmd":"scale"}"#).unwrap_err();
        assert_eq!(reason, "bad request: missing field `workers`");
        assert_eq!(
            Request::parse(br#"{"workers":2,"cmd":"scale"}"#),
            Ok(Request::Scale { workers: 2 })
        );
    }

    /// Found by the `control_line` fuzz target in CI: serde quotes a string it did not expect
    /// whole, and every control character in it was escaped to six characters.
    #[test]
    fn refusals_quote_at_most_a_bounded_reason() {
        let mut line = String::from("\"");
        line.push_str(&"\u{7f}".repeat(440));
        line.push('"');
        let reason = Request::parse(line.as_bytes()).unwrap_err();
        assert!(
            reason.starts_with("bad request: invalid type: string"),
            "{reason}"
        );
        assert!(reason.ends_with('…'), "{reason}");
        assert!(reason.chars().count() <= "bad request: ".len() + 6 * MAX_REASON + 1);
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
    }

    #[test]
    fn answers_are_single_json_lines() {
        let fail = failure("no such worker\nreally");
        assert_eq!(fail.matches('\n').count(), 1);
        let value: serde_json::Value = serde_json::from_str(&fail).unwrap();
        assert_eq!(value["ok"], false);
        let ok = success(serde_json::json!({"workers": 3}));
        let value: serde_json::Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(
            (value["ok"].clone(), value["workers"].clone()),
            (true.into(), 3.into())
        );
        assert!(rss_bytes("self").unwrap() > 0);
    }
}
