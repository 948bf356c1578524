//! Raw, unvalidated values as the three sources give them, and the layering of file and
//! environment through the `config` crate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::error::{ConfigError, Origin};

/// One value before validation: what TOML can hold; flags and variables give `Str`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Raw {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Raw>),
    Table(BTreeMap<String, Raw>),
}

impl fmt::Display for Raw {
    /// TOML-like, so an error shows the value as the user wrote it (strings quoted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::Int(n) => write!(f, "{n}"),
            Raw::Float(x) => write!(f, "{x}"),
            Raw::Str(s) => write!(f, "{s:?}"),
            Raw::List(items) => {
                let items: Vec<String> = items.iter().map(Raw::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Raw::Table(table) => {
                let items: Vec<String> = table.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                write!(f, "{{ {} }}", items.join(", "))
            }
        }
    }
}

/// A raw value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sourced {
    pub(crate) raw: Raw,
    pub(crate) origin: Origin,
}

/// The values one source gave, by option key.
pub(crate) type Layer = BTreeMap<&'static str, Sourced>;

/// Declares the options that the file and the environment may set: the raw struct the
/// `config` crate deserializes into, and the list of keys.
macro_rules! file_options {
    ($($key:ident),+ $(,)?) => {
        /// The configuration file and environment, merged and not yet validated.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawConfig {
            $($key: Option<Raw>,)+
        }

        /// Every key a configuration file may hold.
        pub(crate) const FILE_KEYS: &[&str] = &[$(stringify!($key)),+];

        impl RawConfig {
            fn into_entries(self) -> Vec<(&'static str, Raw)> {
                let mut entries = Vec::new();
                $(if let Some(raw) = self.$key {
                    entries.push((stringify!($key), raw));
                })+
                entries
            }
        }
    };
}

file_options! {
    bind, workers, timeout, heartbeat_filter, boot_timeout, graceful_timeout, abort_grace, shutdown_delay, pidfile, name, env,
    chdir, reuse_port, reuse_port_per_slot, backlog, umask, bind_retries, log_level, log_file, log_format, color,
    worker_tmp_dir, user, group, on_boot_error, ready, ready_after, quick_signal, forward_usr1, max_surge,
    max_worker_age, max_worker_age_jitter, max_worker_memory, gpus,
    gpus_per_worker, gpu_env, daemon, command, control_socket, metrics_bind, statsd_host, statsd_prefix,
    capture_output, on_starting, when_ready, on_reload, nworkers_changed, worker_exit, on_exit,
}

/// Keys that have no environment variable: a command line cannot be written as one.
const NOT_FROM_ENV: &[&str] = &["command"];

/// The environment variable of a key: `ARBITER_` and the key in upper case.
pub(crate) fn env_var(key: &str) -> String {
    format!("ARBITER_{}", key.to_ascii_uppercase())
}

/// The seed's name for the GPU list, read when `ARBITER_GPUS` is not set.
pub(crate) const GPU_ALIAS: &str = "USE_GPUS";

/// Reads the configuration file (if any) and the known `ARBITER_*` variables, layers them with
/// the `config` crate (environment over file), and tags each value with its origin.
pub(crate) fn file_and_env(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Layer, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        let text = read_file(path)?;
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    let (known_env, env_origins) = known_variables(env);
    builder = builder.add_source(
        config::Environment::with_prefix("ARBITER")
            .prefix_separator("_")
            .try_parsing(false)
            .source(Some(known_env)),
    );
    let file_error = |message: String| ConfigError::ParseFile {
        path: path.map(Path::to_path_buf).unwrap_or_default(),
        message,
    };
    let merged = builder
        .build()
        .map_err(|e| file_error(e.to_string()))?
        .try_deserialize::<RawConfig>()
        .map_err(|e| file_error(e.to_string()))?;
    let layer = merged
        .into_entries()
        .into_iter()
        .map(|(key, raw)| {
            let origin = match (env_origins.get(key), path) {
                (Some(var), _) => Origin::Env(var.clone()),
                (None, Some(path)) => Origin::File {
                    key,
                    path: path.to_path_buf(),
                },
                // Unreachable in practice: a value comes from the file or the environment.
                (None, None) => Origin::Env(env_var(key)),
            };
            (key, Sourced { raw, origin })
        })
        .collect();
    Ok(layer)
}

/// Reads and checks the file before the `config` crate sees it, so that errors name the path,
/// the line, and an unknown key exactly as written (the `config` crate's messages do not).
fn read_file(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_path_buf(),
        message: one_line_toml_error(&text, &e),
    })?;
    if let Some(key) = table.keys().find(|key| !FILE_KEYS.contains(&key.as_str())) {
        return Err(ConfigError::UnknownKey {
            key: key.clone(),
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

fn one_line_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

/// The known `ARBITER_*` variables (others, such as `ARBITER_WORKER_ID`, belong to workers and
/// re-exec and are ignored), with `USE_GPUS` standing in for an unset `ARBITER_GPUS`.
/// Returns the variables to layer and, per key, the variable it came from.
fn known_variables(
    env: &BTreeMap<String, String>,
) -> (config::Map<String, String>, BTreeMap<&'static str, String>) {
    let mut known = config::Map::new();
    let mut origins = BTreeMap::new();
    for &key in FILE_KEYS.iter().filter(|key| !NOT_FROM_ENV.contains(key)) {
        let var = env_var(key);
        let found = match env.get(&var) {
            Some(value) => Some((var.clone(), value)),
            // The seed tests `os.environ.get("USE_GPUS")`: empty means unset.
            None if key == "gpus" => env
                .get(GPU_ALIAS)
                .filter(|v| !v.is_empty())
                .map(|v| (GPU_ALIAS.to_owned(), v)),
            None => None,
        };
        if let Some((source_var, value)) = found {
            known.insert(var, value.clone());
            origins.insert(key, source_var);
        }
    }
    (known, origins)
}
