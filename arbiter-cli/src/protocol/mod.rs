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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
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
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        serde_json::from_slice(line).map_err(|e| {
            let reason: String = e
                .to_string()
                .chars()
                .flat_map(|c| match c.is_control() {
                    true => c.escape_default().collect::<Vec<_>>(),
                    false => vec![c],
                })
                .collect();
            format!("bad request: {reason}")
        })
    }
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
