//! HTTP/1.x for the built-in worker: request-head parsing, routing and response formatting.
//!
//! Pure: no I/O, no clock. The parser looks at a byte buffer that may hold a partial request or
//! several pipelined ones and reports the first head; the caller consumes `Head::len` bytes plus
//! the body (`Content-Length`, read and discarded). Chunked request bodies are refused (501).

use std::io::Write;

/// The largest request head accepted (request line and headers); larger ones get 431.
pub const MAX_HEAD: usize = 8192;

/// The `Server` header value and the `server` field of `GET /`.
pub const SERVER: &str = concat!("arbiter/", env!("CARGO_PKG_VERSION"));

/// A parsed request head, borrowing from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    /// The method token, e.g. `GET`.
    pub method: &'a [u8],
    /// The request target, e.g. `/sleep/10?x=1`.
    pub target: &'a [u8],
    /// Bytes of the buffer the head occupies, blank line (and skipped leading CRLFs) included.
    pub len: usize,
    /// The request body length (`Content-Length`, 0 when absent).
    pub content_length: u64,
    /// Whether the client allows the connection to stay open after the response.
    pub keep_alive: bool,
    /// Whether the request is HTTP/1.0 (keep-alive then needs an explicit response header).
    pub http10: bool,
}

/// Why a request head is refused; every refusal closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not a request line or header this parser understands: 400.
    Malformed,
    /// The head exceeds [`MAX_HEAD`]: 431.
    TooLarge,
    /// A `Transfer-Encoding` request body: 501.
    Chunked,
    /// An HTTP version other than 1.0 and 1.1: 505.
    Version,
}

/// What the parser found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// The head is not complete yet: read more.
    Partial,
    /// A complete head.
    Complete(Head<'a>),
    /// The head is invalid: answer the refusal and close.
    Invalid(Reject),
}

/// Parses the first request head in `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    // RFC 9112 2.2: ignore at least one empty line before a request line.
    let skipped = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let rest = &buf[skipped..];
    let Some(end) = head_end(rest) else {
        // `buf` holds only unconsumed input, so a full buffer without a blank line is too large.
        return if buf.len() >= MAX_HEAD {
            Parsed::Invalid(Reject::TooLarge)
        } else {
            Parsed::Partial
        };
    };
    // Skipped blank lines count: the connection's buffer holds them too, so a longer buffer
    // must not accept what the worker's own 8 KiB one refuses.
    if skipped + end > MAX_HEAD {
        return Parsed::Invalid(Reject::TooLarge);
    }
    match parse_head(&rest[..end]) {
        Ok(mut head) => {
            head.len = skipped + end;
            Parsed::Complete(head)
        }
        Err(reject) => Parsed::Invalid(reject),
    }
}

/// The length of the head (through its blank line) at the start of `buf`, if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(offset) = buf[from..].iter().position(|&b| b == b'\n') {
        let newline = from + offset;
        match (buf.get(newline + 1), buf.get(newline + 2)) {
            (Some(b'\n'), _) => return Some(newline + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(newline + 3),
            _ => {}
        }
        from = newline + 1;
    }
    None
}

fn parse_head(head: &[u8]) -> Result<Head<'_>, Reject> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().ok_or(Reject::Malformed)?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::Malformed);
    };
    if method.is_empty() || target.is_empty() {
        return Err(Reject::Malformed);
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        v if v.starts_with(b"HTTP/") => return Err(Reject::Version),
        _ => return Err(Reject::Malformed),
    };
    let mut head = Head {
        method,
        target,
        len: head.len(),
        content_length: 0,
        keep_alive: !http10,
        http10,
    };
    let mut seen_length: Option<u64> = None;
    let mut close = false;
    for line in lines.filter(|line| !line.is_empty()) {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Reject::Malformed)?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() || name.last().is_some_and(u8::is_ascii_whitespace) {
            return Err(Reject::Malformed);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_decimal(value).ok_or(Reject::Malformed)?;
            if seen_length.is_some_and(|seen| seen != length) {
                return Err(Reject::Malformed);
            }
            seen_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(Reject::Chunked);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    head.keep_alive = true;
                }
            }
        }
    }
    head.content_length = seen_length.unwrap_or(0);
    head.keep_alive &= !close;
    Ok(head)
}

/// Parses a non-empty string of ASCII digits that fits a `u64`.
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// What a request asks the worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /`: the identity JSON.
    Root,
    /// `GET /env/NAME`: the value of an environment variable.
    Env(&'a [u8]),
    /// `GET /sleep/MS`: answer after MS milliseconds.
    Sleep(u64),
    /// `GET /hang`: stop heartbeating and serving.
    Hang,
    /// `GET /crash`: exit 1 at once.
    Crash,
    /// `GET /exit/N`: exit N at once.
    Exit(u8),
    /// A known path with an invalid argument: 400.
    BadArgument,
    /// Anything else: 404.
    NotFound,
}

/// Maps a request target (query string ignored) to its route.
pub fn route(target: &[u8]) -> Route<'_> {
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    match path {
        b"/" => Route::Root,
        b"/hang" => Route::Hang,
        b"/crash" => Route::Crash,
        _ => {
            if let Some(name) = path.strip_prefix(b"/env/") {
                if name.is_empty() {
                    Route::NotFound
                } else {
                    Route::Env(name)
                }
            } else if let Some(ms) = path.strip_prefix(b"/sleep/") {
                parse_decimal(ms).map_or(Route::BadArgument, Route::Sleep)
            } else if let Some(code) = path.strip_prefix(b"/exit/") {
                parse_decimal(code)
                    .and_then(|code| u8::try_from(code).ok())
                    .map_or(Route::BadArgument, Route::Exit)
            } else {
                Route::NotFound
            }
        }
    }
}

/// A response status the worker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200 OK.
    Ok,
    /// 400 Bad Request.
    BadRequest,
    /// 404 Not Found.
    NotFound,
    /// 431 Request Header Fields Too Large.
    HeadTooLarge,
    /// 501 Not Implemented.
    NotImplemented,
    /// 505 HTTP Version Not Supported.
    VersionNotSupported,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::HeadTooLarge => "431 Request Header Fields Too Large",
            Status::NotImplemented => "501 Not Implemented",
            Status::VersionNotSupported => "505 HTTP Version Not Supported",
        }
    }
}

impl From<Reject> for Status {
    fn from(reject: Reject) -> Status {
        match reject {
            Reject::Malformed => Status::BadRequest,
            Reject::TooLarge => Status::HeadTooLarge,
            Reject::Chunked => Status::NotImplemented,
            Reject::Version => Status::VersionNotSupported,
        }
    }
}

/// How the response speaks about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 keep-alive: no header needed.
    KeepAlive,
    /// HTTP/1.0 keep-alive: `Connection: keep-alive`.
    KeepAlive10,
    /// The connection closes after this response: `Connection: close`.
    Close,
}

impl Persistence {
    /// The persistence of the response to `head`, closing anyway when `closing`.
    pub fn of(head: &Head<'_>, closing: bool) -> Persistence {
        match (head.keep_alive && !closing, head.http10) {
            (false, _) => Persistence::Close,
            (true, false) => Persistence::KeepAlive,
            (true, true) => Persistence::KeepAlive10,
        }
    }
}

/// Content type of the JSON bodies.
pub const JSON: &str = "application/json";
/// Content type of the text bodies.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// Appends a complete response to `out`; with `head_only` (a HEAD request) the body is left out.
pub fn write_response(
    out: &mut Vec<u8>,
    status: Status,
    content_type: &str,
    body: &[u8],
    persistence: Persistence,
    head_only: bool,
) {
    let connection = match persistence {
        Persistence::KeepAlive => "",
        Persistence::KeepAlive10 => "Connection: keep-alive\r\n",
        Persistence::Close => "Connection: close\r\n",
    };
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {}\r\nServer: {SERVER}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{connection}\r\n",
        status.line(),
        body.len()
    );
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// The identity of this worker, as `GET /` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The worker's pid.
    pub pid: u32,
    /// `ARBITER_WORKER_ID`, when set and numeric.
    pub id: Option<u64>,
    /// `ARBITER_WORKER_SLOT`, when set and numeric.
    pub slot: Option<u64>,
    /// The GPU variable's value, when set.
    pub gpu: Option<String>,
}

impl Identity {
    /// The one-line JSON body of `GET /`, fields in a fixed order.
    pub fn json(&self) -> String {
        let number = |n: Option<u64>| n.map_or_else(|| "null".to_owned(), |n| n.to_string());
        let gpu = self.gpu.as_ref().map_or_else(
            || "null".to_owned(),
            |gpu| serde_json::Value::from(gpu.as_str()).to_string(),
        );
        format!(
            "{{\"pid\":{},\"id\":{},\"slot\":{},\"gpu\":{gpu},\"server\":\"{SERVER}\"}}\n",
            self.pid,
            number(self.id),
            number(self.slot),
        )
    }
}

/// The `GET /` responses, formatted once at start-up: the hot path copies bytes only.
#[derive(Debug, Clone)]
pub struct RootResponses {
    keep_alive: Vec<u8>,
    keep_alive10: Vec<u8>,
    close: Vec<u8>,
    body: Vec<u8>,
}

impl RootResponses {
    /// Formats the three variants of the `GET /` response for `identity`.
    pub fn new(identity: &Identity) -> RootResponses {
        let body = identity.json().into_bytes();
        let format = |persistence| {
            let mut out = Vec::new();
            write_response(&mut out, Status::Ok, JSON, &body, persistence, false);
            out
        };
        RootResponses {
            keep_alive: format(Persistence::KeepAlive),
            keep_alive10: format(Persistence::KeepAlive10),
            close: format(Persistence::Close),
            body,
        }
    }

    /// Appends the response to `out`.
    pub fn write(&self, out: &mut Vec<u8>, persistence: Persistence, head_only: bool) {
        if head_only {
            write_response(out, Status::Ok, JSON, &self.body, persistence, true);
            return;
        }
        out.extend_from_slice(match persistence {
            Persistence::KeepAlive => &self.keep_alive,
            Persistence::KeepAlive10 => &self.keep_alive10,
            Persistence::Close => &self.close,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> Head<'_> {
        match parse(buf) {
            Parsed::Complete(head) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_simple_get() {
        let buf = b"GET /sleep/5 HTTP/1.1\r\nHost: x\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.method, b"GET");
        assert_eq!(head.target, b"/sleep/5");
        assert_eq!(head.len, buf.len());
        assert_eq!(head.content_length, 0);
        assert!(head.keep_alive);
        assert!(!head.http10);
    }

    #[test]
    fn every_partial_prefix_is_partial() {
        let buf = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n";
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Parsed::Partial, "cut at {cut}");
        }
        assert_eq!(complete(buf).content_length, 3);
    }

    #[test]
    fn pipelined_requests_parse_one_after_another() {
        let buf =
            b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\n\r\nGET /d";
        let first = complete(buf);
        assert_eq!(first.target, b"/a");
        let rest = &buf[first.len..];
        let second = complete(rest);
        assert_eq!(second.target, b"/b");
        assert_eq!(second.content_length, 2);
        let rest = &rest[second.len + 2..];
        let third = complete(rest);
        assert_eq!(third.target, b"/c");
        assert_eq!(parse(&rest[third.len..]), Parsed::Partial);
    }

    #[test]
    fn bare_newlines_and_leading_blank_lines_are_accepted() {
        let buf = b"\r\n\nGET / HTTP/1.1\nHost: x\n\nrest";
        let head = complete(buf);
        assert_eq!(head.target, b"/");
        assert_eq!(&buf[head.len..], b"rest");
    }

    /// Found writing the `http_worker` fuzz target (its one-read-versus-split-reads check):
    /// blank lines before a request did not count towards the head limit, so a buffer longer
    /// than the worker's accepted a head the worker refuses.
    #[test]
    fn leading_blank_lines_count_towards_the_limit() {
        let mut buf = b"\r\n".repeat(MAX_HEAD / 2);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&buf), Parsed::Invalid(Reject::TooLarge));
        assert_eq!(parse(&buf[..MAX_HEAD]), Parsed::Invalid(Reject::TooLarge));
        let mut fits = b"\r\n".repeat(100);
        fits.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(complete(&fits).len, fits.len());
    }

    #[test]
    fn connection_header_and_version_decide_keep_alive() {
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive);
        let old = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(old.http10 && !old.keep_alive);
        assert!(complete(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn invalid_heads_are_refused() {
        let refused = |buf: &[u8]| match parse(buf) {
            Parsed::Invalid(reject) => reject,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(refused(b"GET /\r\n\r\n"), Reject::Malformed);
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"),
            Reject::Malformed
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Reject::Malformed
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Reject::Malformed
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Reject::Chunked
        );
        assert_eq!(refused(b"GET / HTTP/2.0\r\n\r\n"), Reject::Version);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(refused(&long), Reject::TooLarge);
    }

    #[test]
    fn routes() {
        assert_eq!(route(b"/"), Route::Root);
        assert_eq!(route(b"/?q=1"), Route::Root);
        assert_eq!(route(b"/env/HOME"), Route::Env(b"HOME"));
        assert_eq!(route(b"/env/"), Route::NotFound);
        assert_eq!(route(b"/sleep/250"), Route::Sleep(250));
        assert_eq!(route(b"/sleep/x"), Route::BadArgument);
        assert_eq!(route(b"/exit/7"), Route::Exit(7));
        assert_eq!(route(b"/exit/256"), Route::BadArgument);
        assert_eq!(route(b"/hang"), Route::Hang);
        assert_eq!(route(b"/crash"), Route::Crash);
        assert_eq!(route(b"/nope"), Route::NotFound);
    }

    #[test]
    fn responses_are_well_formed() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            Status::NotFound,
            TEXT,
            b"nope\n",
            Persistence::Close,
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 5\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nnope\n"), "{text}");

        let mut out = Vec::new();
        write_response(
            &mut out,
            Status::Ok,
            TEXT,
            b"body",
            Persistence::KeepAlive,
            true,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("Content-Length: 4\r\n\r\n"), "{text}");
        assert!(!text.contains("Connection"), "{text}");
    }

    #[test]
    fn identity_json_is_one_line_in_field_order() {
        let identity = Identity {
            pid: 123,
            id: Some(4),
            slot: Some(0),
            gpu: Some("0,\"1".to_owned()),
        };
        let json = identity.json();
        assert_eq!(
            json,
            format!(
                "{{\"pid\":123,\"id\":4,\"slot\":0,\"gpu\":\"0,\\\"1\",\"server\":\"{SERVER}\"}}\n"
            )
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["gpu"], "0,\"1");
        let bare = Identity {
            pid: 1,
            id: None,
            slot: None,
            gpu: None,
        };
        assert!(bare
            .json()
            .contains("\"id\":null,\"slot\":null,\"gpu\":null"));
    }

    #[test]
    fn prebuilt_root_responses_match_the_formatter() {
        let identity = Identity {
            pid: 9,
            id: None,
            slot: Some(2),
            gpu: None,
        };
        let responses = RootResponses::new(&identity);
        for persistence in [
            Persistence::KeepAlive,
            Persistence::KeepAlive10,
            Persistence::Close,
        ] {
            let mut fast = Vec::new();
            responses.write(&mut fast, persistence, false);
            let mut slow = Vec::new();
            let body = identity.json();
            write_response(
                &mut slow,
                Status::Ok,
                JSON,
                body.as_bytes(),
                persistence,
                false,
            );
            assert_eq!(fast, slow);
        }
    }
}
