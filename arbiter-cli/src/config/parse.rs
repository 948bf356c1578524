//! Value parsers: one raw value to one typed value, or the reason it is wrong. The caller adds
//! the origin and the value to the message.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::Raw;
use super::settings::GpuSelection;
use super::size::ByteSize;

/// What a parser returns: the value or a lowercase reason.
pub(crate) type Parsed<T> = Result<T, String>;

/// A non-negative whole number: a TOML integer or a decimal string.
pub(crate) fn number(raw: &Raw) -> Parsed<u64> {
    match raw {
        Raw::Int(n) => u64::try_from(*n).map_err(|_| "must not be negative".to_owned()),
        Raw::Str(s) => s.trim().parse().map_err(|_| "invalid number".to_owned()),
        _ => Err("expected a whole number".to_owned()),
    }
}

/// A whole number in `min..=max`.
pub(crate) fn number_in(raw: &Raw, min: u64, max: u64) -> Parsed<u64> {
    let n = number(raw)?;
    if n < min {
        Err(format!("must be at least {min}"))
    } else if n > max {
        Err(format!("must be at most {max}"))
    } else {
        Ok(n)
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off` in a string).
pub(crate) fn boolean(raw: &Raw) -> Parsed<bool> {
    match raw {
        Raw::Bool(b) => Ok(*b),
        Raw::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err("expected true or false".to_owned()),
        },
        _ => Err("expected true or false".to_owned()),
    }
}

/// A duration: a number of seconds (integer or decimal) or a humantime string (`500ms`, `1m`).
pub(crate) fn duration(raw: &Raw) -> Parsed<Duration> {
    let seconds = |x: f64| {
        Duration::try_from_secs_f64(x)
            .map_err(|_| "not a duration (negative or too large)".to_owned())
    };
    match raw {
        Raw::Int(n) => u64::try_from(*n)
            .map(Duration::from_secs)
            .map_err(|_| "not a duration (negative or too large)".to_owned()),
        Raw::Float(x) => seconds(*x),
        Raw::Str(s) => {
            let s = s.trim();
            // Whole seconds exactly (an f64 rounds above 2^53), as a TOML integer gives them.
            if let Some(whole) = s
                .starts_with(|c: char| c.is_ascii_digit())
                .then(|| s.parse::<u64>().ok())
                .flatten()
            {
                return Ok(Duration::from_secs(whole));
            }
            if s.starts_with(|c: char| c.is_ascii_digit() || c == '.') && s.parse::<f64>().is_ok() {
                return seconds(s.parse::<f64>().unwrap_or(f64::NAN));
            }
            humantime::parse_duration(s).map_err(|e| {
                format!(
                    "invalid duration ({e}); use seconds (\"30\", \"0.5\") or \"500ms\", \"1m\""
                )
            })
        }
        _ => Err("expected a duration".to_owned()),
    }
}

/// A size in bytes (`512M`, `2G`, or a number of bytes); zero means disabled.
pub(crate) fn size_or_off(raw: &Raw) -> Parsed<Option<ByteSize>> {
    let size = match raw {
        Raw::Int(n) => u64::try_from(*n)
            .map(ByteSize)
            .map_err(|_| "must not be negative".to_owned())?,
        Raw::Str(s) => s.parse::<ByteSize>()?,
        _ => return Err("expected a size such as 512M or 2G".to_owned()),
    };
    Ok((size.0 != 0).then_some(size))
}

/// A duration where zero means disabled.
pub(crate) fn duration_or_off(raw: &Raw) -> Parsed<Option<Duration>> {
    duration(raw).map(|d| (!d.is_zero()).then_some(d))
}

/// A non-empty string.
pub(crate) fn text(raw: &Raw) -> Parsed<String> {
    match raw {
        Raw::Str(s) if s.is_empty() => Err("must not be empty".to_owned()),
        Raw::Str(s) => Ok(s.clone()),
        _ => Err("expected a string".to_owned()),
    }
}

/// A user or group: a name, or a number (a TOML integer or digits); looked up at start.
pub(crate) fn account(raw: &Raw) -> Parsed<String> {
    match raw {
        Raw::Int(n) if *n >= 0 && *n < i64::from(u32::MAX) => Ok(n.to_string()),
        Raw::Int(_) => Err("expected a name or an id from 0 to 4294967294".to_owned()),
        Raw::Str(s) if s.trim().is_empty() => Err("must not be empty".to_owned()),
        Raw::Str(s) => Ok(s.trim().to_owned()),
        _ => Err("expected a name or a number".to_owned()),
    }
}

/// A non-empty path.
pub(crate) fn path(raw: &Raw) -> Parsed<PathBuf> {
    text(raw).map(PathBuf::from)
}

/// The log file: a path, or `-` for stderr (`None`).
pub(crate) fn log_file(raw: &Raw) -> Parsed<Option<PathBuf>> {
    let path = path(raw)?;
    Ok((path.as_os_str() != "-").then_some(path))
}

/// One of a fixed set of names, ignoring ASCII case.
pub(crate) fn name_of<T>(raw: &Raw, names: &[&str], from_name: fn(&str) -> Option<T>) -> Parsed<T> {
    let expected = || format!("expected one of {}", names.join(", "));
    match raw {
        Raw::Str(s) => from_name(s.trim()).ok_or_else(expected),
        _ => Err(expected()),
    }
}

/// A signal name, with or without the `SIG` prefix.
pub(crate) fn signal_name<T>(
    raw: &Raw,
    names: &[&str],
    from_name: fn(&str) -> Option<T>,
) -> Parsed<T> {
    let stripped = match raw {
        Raw::Str(s) => {
            let s = s.trim();
            let without = s
                .get(..3)
                .filter(|p| p.eq_ignore_ascii_case("SIG"))
                .map_or(s, |_| &s[3..]);
            Raw::Str(without.to_owned())
        }
        other => other.clone(),
    };
    name_of(&stripped, names, from_name)
}

/// The umask: a TOML integer (`0o022` in TOML is 18), or a string: `0o22` or `022` (octal, as
/// gunicorn takes it), or `18` (decimal). At most 0o777.
pub(crate) fn umask(raw: &Raw) -> Parsed<u32> {
    let value = match raw {
        Raw::Int(n) => u32::try_from(*n).map_err(|_| "must not be negative".to_owned())?,
        Raw::Str(s) => {
            let s = s.trim();
            let (digits, radix) = match s.strip_prefix("0o").or_else(|| s.strip_prefix("0O")) {
                Some(octal) => (octal, 8),
                None if s.len() > 1 && s.starts_with('0') => (&s[1..], 8),
                None => (s, 10),
            };
            u32::from_str_radix(digits, radix).map_err(|_| {
                "invalid umask; use octal (\"0o022\", \"022\") or decimal".to_owned()
            })?
        }
        _ => return Err("expected a number".to_owned()),
    };
    if value > 0o777 {
        return Err("must be at most 0o777".to_owned());
    }
    Ok(value)
}

/// Strings from a list, or from one comma-separated string (the environment's form).
pub(crate) fn strings(raw: &Raw) -> Parsed<Vec<String>> {
    match raw {
        Raw::Str(s) => Ok(s.split(',').map(|item| item.trim().to_owned()).collect()),
        Raw::List(items) => items
            .iter()
            .map(|item| match item {
                Raw::Str(s) => Ok(s.clone()),
                Raw::Int(n) => Ok(n.to_string()),
                other => Err(format!("expected strings, found {other}")),
            })
            .collect(),
        _ => Err("expected a list of strings".to_owned()),
    }
}

/// Listen addresses: non-empty strings, at least one, none twice.
pub(crate) fn binds(raw: &Raw) -> Parsed<Vec<String>> {
    let binds = strings(raw)?;
    if binds.is_empty() {
        return Err("must name at least one address".to_owned());
    }
    if binds.iter().any(String::is_empty) {
        return Err("an address is empty".to_owned());
    }
    no_duplicates(&binds, "address")?;
    Ok(binds)
}

/// GPU selection: `auto`, or a list of device ids (comma-separated in a string).
pub(crate) fn gpus(raw: &Raw) -> Parsed<GpuSelection> {
    if let Raw::Str(s) = raw {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(GpuSelection::Auto);
        }
        if s.trim().is_empty() {
            return Err("the GPU list is empty; use \"auto\" or ids such as \"0,1\"".to_owned());
        }
    }
    let ids = strings(raw)?;
    if ids.is_empty() {
        return Err("the GPU list is empty; use \"auto\" or ids such as \"0,1\"".to_owned());
    }
    if let Some(position) = ids.iter().position(String::is_empty) {
        return Err(format!("GPU id number {} is empty", position + 1));
    }
    no_duplicates(&ids, "GPU id")?;
    Ok(GpuSelection::List(ids))
}

fn no_duplicates(items: &[String], what: &str) -> Parsed<()> {
    for (i, item) in items.iter().enumerate() {
        if items[..i].contains(item) {
            return Err(format!("{what} {item:?} is listed twice"));
        }
    }
    Ok(())
}

/// An environment variable name: a letter or `_`, then letters, digits and `_`.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The variable that carries GPU ids: a valid name.
pub(crate) fn env_name(raw: &Raw) -> Parsed<String> {
    let name = text(raw)?;
    if !is_env_name(&name) {
        return Err(format!("{name:?} is not a valid environment variable name"));
    }
    Ok(name)
}

/// Worker environment: `KEY=VALUE` strings (a list, or comma-separated), or a TOML table.
/// Keys must be valid names and unique; a table comes out sorted by key.
pub(crate) fn env_pairs(raw: &Raw) -> Parsed<Vec<(String, String)>> {
    let pairs: Vec<(String, String)> = match raw {
        Raw::Table(table) => table
            .iter()
            .map(|(key, value)| match value {
                Raw::Str(s) => Ok((key.clone(), s.clone())),
                Raw::Int(_) | Raw::Float(_) | Raw::Bool(_) => Ok((key.clone(), value.to_string())),
                other => Err(format!(
                    "the value of {key:?} must be a string, found {other}"
                )),
            })
            .collect::<Parsed<_>>()?,
        Raw::Str(s) if s.trim().is_empty() => Vec::new(),
        _ => strings(raw)?
            .into_iter()
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
                None => Err(format!("{pair:?} is not KEY=VALUE")),
            })
            .collect::<Parsed<_>>()?,
    };
    for (i, (key, _)) in pairs.iter().enumerate() {
        if !is_env_name(key) {
            return Err(format!("{key:?} is not a valid environment variable name"));
        }
        if pairs[..i].iter().any(|(earlier, _)| earlier == key) {
            return Err(format!("{key:?} is set twice"));
        }
    }
    Ok(pairs)
}

/// The worker command from the file: a list of strings (empty: the built-in worker).
pub(crate) fn command(raw: &Raw) -> Parsed<Vec<std::ffi::OsString>> {
    match raw {
        Raw::List(items) => items
            .iter()
            .map(|item| match item {
                Raw::Str(s) => Ok(s.into()),
                other => Err(format!("expected strings, found {other}")),
            })
            .collect(),
        _ => Err(
            "expected a list of strings, such as [\"uvicorn\", \"--fd\", \"3\", \"app:app\"]"
                .to_owned(),
        ),
    }
}
