//! Bind specs: what the user writes after `--bind`.

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use crate::Error;

/// The port used when a bind names only a host, as gunicorn does.
pub const DEFAULT_PORT: u16 = 8000;

/// One configured bind, parsed from `HOST:PORT`, `[V6]:PORT`, `HOST`, `tcp://HOST:PORT`,
/// `unix:/path`, `unix:///path` or `fd://N`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindSpec {
    /// A TCP address; `host` is a name or an IP literal (without brackets).
    Tcp {
        /// Host name or IP literal.
        host: String,
        /// Port; 0 asks the kernel for an ephemeral one.
        port: u16,
    },
    /// A unix socket at an absolute path.
    Unix(PathBuf),
    /// An already open listening socket, by descriptor number.
    Fd(RawFd),
}

fn bad(spec: &str, reason: impl Into<String>) -> Error {
    Error::BadSpec {
        spec: spec.to_owned(),
        reason: reason.into(),
    }
}

impl FromStr for BindSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self, Error> {
        if spec.is_empty() {
            return Err(bad(spec, "empty bind"));
        }
        if let Some(rest) = spec.strip_prefix("unix:") {
            // `unix:///p` and `unix:/p` both name `/p`; `unix://p` names the relative `p`.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(bad(spec, "empty unix path"));
            }
            if !path.starts_with('/') {
                return Err(bad(spec, format!("relative unix path `{path}`")));
            }
            return Ok(BindSpec::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = spec.strip_prefix("fd://") {
            return match rest.parse::<RawFd>() {
                Ok(fd) if fd >= 0 => Ok(BindSpec::Fd(fd)),
                _ => Err(bad(spec, format!("non-numeric fd `{rest}`"))),
            };
        }
        let address = spec.strip_prefix("tcp://").unwrap_or(spec);
        let (host, port) = split_host_port(spec, address)?;
        if host.is_empty() {
            return Err(bad(spec, "empty host"));
        }
        Ok(BindSpec::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

fn split_host_port<'a>(spec: &str, address: &'a str) -> Result<(&'a str, u16), Error> {
    let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(bad(spec, "unclosed `[` in ipv6 address"));
        };
        if after.is_empty() {
            (host, None)
        } else if let Some(port) = after.strip_prefix(':') {
            (host, Some(port))
        } else {
            return Err(bad(spec, format!("unexpected `{after}` after `]`")));
        }
    } else {
        match address.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err(bad(spec, "ipv6 address needs brackets: `[ADDR]:PORT`"));
            }
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(text) => text
            .parse::<u16>()
            .map_err(|_| bad(spec, format!("bad port `{text}`")))?,
    };
    Ok((host, port))
}

impl fmt::Display for BindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Brackets around a host that has a colon or starts with `[`, which the plain form
            // would split or read as an unclosed bracket.
            BindSpec::Tcp { host, port } if host.contains(':') || host.starts_with('[') => {
                write!(f, "[{host}]:{port}")
            }
            // `unix:PORT` would read as a unix path.
            BindSpec::Tcp { host, port } if host == "unix" => write!(f, "tcp://{host}:{port}"),
            BindSpec::Tcp { host, port } => write!(f, "{host}:{port}"),
            // `unix:` + `//x` would read as the relative `x`; `unix://` + `//x` keeps it.
            BindSpec::Unix(path) if path.as_os_str().as_encoded_bytes().starts_with(b"//") => {
                write!(f, "unix://{}", path.display())
            }
            BindSpec::Unix(path) => write!(f, "unix:{}", path.display()),
            BindSpec::Fd(fd) => write!(f, "fd://{fd}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> BindSpec {
        BindSpec::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn good_specs_parse_and_display() {
        let table = [
            ("127.0.0.1:8080", tcp("127.0.0.1", 8080), "127.0.0.1:8080"),
            ("localhost", tcp("localhost", 8000), "localhost:8000"),
            ("[::1]:0", tcp("::1", 0), "[::1]:0"),
            ("[::1]", tcp("::1", 8000), "[::1]:8000"),
            ("tcp://0.0.0.0:80", tcp("0.0.0.0", 80), "0.0.0.0:80"),
            (
                "unix:/run/a.sock",
                BindSpec::Unix("/run/a.sock".into()),
                "unix:/run/a.sock",
            ),
            (
                "unix:///run/a.sock",
                BindSpec::Unix("/run/a.sock".into()),
                "unix:/run/a.sock",
            ),
            ("fd://3", BindSpec::Fd(3), "fd://3"),
        ];
        for (text, spec, shown) in table {
            let parsed: BindSpec = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed, spec, "{text}");
            assert_eq!(parsed.to_string(), shown, "{text}");
            assert_eq!(
                shown.parse::<BindSpec>().unwrap(),
                spec,
                "round trip of {text}"
            );
        }
    }

    /// Cases the `bind_spec` fuzz target found: their display used to parse as another spec
    /// (or not at all).
    #[test]
    fn displays_that_used_to_read_differently_round_trip() {
        let table = [
            ("unix:////", BindSpec::Unix("//".into()), "unix:////"),
            ("unix://///r", BindSpec::Unix("///r".into()), "unix://///r"),
            ("unix", tcp("unix", 8000), "tcp://unix:8000"),
            ("tcp://unix:80", tcp("unix", 80), "tcp://unix:80"),
            ("[[a]:80", tcp("[a", 80), "[[a]:80"),
            ("tcp://[[x]", tcp("[x", 8000), "[[x]:8000"),
        ];
        for (text, spec, shown) in table {
            let parsed: BindSpec = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed, spec, "{text}");
            assert_eq!(parsed.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<BindSpec>().unwrap(), spec, "{shown}");
        }
    }

    /// Found by the `bind_spec` fuzz target: a spec holding a control character made a
    /// multi-line error.
    #[test]
    fn errors_are_one_line_whatever_the_spec_holds() {
        let error = "a\nb:x\r".parse::<BindSpec>().unwrap_err();
        assert_eq!(error.to_string(), "bad bind `a\\nb:x\\r`: bad port `x\\r`");
        let error = "127.\0\0:\u{f}1".parse::<BindSpec>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "bad bind `127.\\u{0}\\u{0}:\\u{f}1`: bad port `\\u{f}1`"
        );
    }

    #[test]
    fn bad_specs_name_the_bad_part() {
        let table = [
            ("", "bad bind ``: empty bind"),
            (
                "127.0.0.1:http",
                "bad bind `127.0.0.1:http`: bad port `http`",
            ),
            (
                "127.0.0.1:65536",
                "bad bind `127.0.0.1:65536`: bad port `65536`",
            ),
            ("127.0.0.1:", "bad bind `127.0.0.1:`: bad port ``"),
            ("[::1]:x", "bad bind `[::1]:x`: bad port `x`"),
            (":8000", "bad bind `:8000`: empty host"),
            ("tcp://:80", "bad bind `tcp://:80`: empty host"),
            ("[]:80", "bad bind `[]:80`: empty host"),
            ("[::1", "bad bind `[::1`: unclosed `[` in ipv6 address"),
            ("[::1]80", "bad bind `[::1]80`: unexpected `80` after `]`"),
            (
                "::1:80",
                "bad bind `::1:80`: ipv6 address needs brackets: `[ADDR]:PORT`",
            ),
            (
                "unix:run/a.sock",
                "bad bind `unix:run/a.sock`: relative unix path `run/a.sock`",
            ),
            (
                "unix://run/a.sock",
                "bad bind `unix://run/a.sock`: relative unix path `run/a.sock`",
            ),
            ("unix:", "bad bind `unix:`: empty unix path"),
            ("fd://x", "bad bind `fd://x`: non-numeric fd `x`"),
            ("fd://-1", "bad bind `fd://-1`: non-numeric fd `-1`"),
            ("fd://", "bad bind `fd://`: non-numeric fd ``"),
        ];
        for (text, message) in table {
            let error = text.parse::<BindSpec>().expect_err(text);
            assert_eq!(error.to_string(), message);
        }
    }
}
