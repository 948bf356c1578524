//! The validated GPU configuration: which devices, how many per worker, and the variable that
//! names them to a worker.

use crate::GpuError;
use std::collections::HashSet;

/// One GPU as the user named it ("0", "3", "GPU-8d2c...", "MIG-..."): opaque text.
pub type DeviceId = String;

/// The variable a worker finds its GPUs in when none is configured.
pub const DEFAULT_ENV_VAR: &str = "CUDA_VISIBLE_DEVICES";

/// A validated GPU configuration: at least one device, no duplicates, `1 <= per_worker <=
/// devices.len()`, and an environment variable name that can be set.
///
/// The fields are public for reading; build one with [`GpuConfig::new`] so the invariants hold
/// ([`crate::Balancer`] relies on them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuConfig {
    /// The devices, in the order the user gave them (the order of `load()` and of the mapping).
    pub devices: Vec<DeviceId>,
    /// How many devices each worker gets.
    pub per_worker: usize,
    /// The environment variable the devices are passed in (`CUDA_VISIBLE_DEVICES`, ...).
    pub env_var: String,
}

impl GpuConfig {
    /// Parses "0,1,2,3" (trims spaces); errors: empty list, empty item, duplicates.
    pub fn parse_list(list: &str) -> Result<Vec<DeviceId>, GpuError> {
        if list.trim().is_empty() {
            return Err(GpuError::EmptyList);
        }
        let mut devices = Vec::new();
        for (index, item) in list.split(',').enumerate() {
            let id = item.trim();
            if id.is_empty() {
                return Err(GpuError::EmptyId {
                    position: index + 1,
                });
            }
            devices.push(id.to_owned());
        }
        check_devices(&devices)?;
        Ok(devices)
    }

    /// Validates: per_worker >= 1, per_worker <= devices.len(), no duplicates, non-empty, env_var a valid env name.
    pub fn new(
        devices: Vec<DeviceId>,
        per_worker: usize,
        env_var: impl Into<String>,
    ) -> Result<GpuConfig, GpuError> {
        let env_var = env_var.into();
        check_devices(&devices)?;
        if per_worker == 0 {
            return Err(GpuError::ZeroPerWorker);
        }
        if per_worker > devices.len() {
            return Err(GpuError::PerWorkerTooLarge {
                per_worker,
                available: devices.len(),
            });
        }
        if !is_env_name(&env_var) {
            return Err(GpuError::InvalidEnvVar(env_var));
        }
        Ok(GpuConfig {
            devices,
            per_worker,
            env_var,
        })
    }
}

/// Non-empty, each id non-empty and passable in a comma-separated value, no id twice.
fn check_devices(devices: &[DeviceId]) -> Result<(), GpuError> {
    if devices.is_empty() {
        return Err(GpuError::EmptyList);
    }
    let mut seen = HashSet::with_capacity(devices.len());
    for (index, id) in devices.iter().enumerate() {
        if id.is_empty() {
            return Err(GpuError::EmptyId {
                position: index + 1,
            });
        }
        if id
            .chars()
            .any(|c| c == ',' || c.is_whitespace() || c.is_control())
        {
            return Err(GpuError::InvalidId(id.clone()));
        }
        if !seen.insert(id.as_str()) {
            return Err(GpuError::DuplicateId(id.clone()));
        }
    }
    Ok(())
}

/// POSIX portable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() || first == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<DeviceId> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn message(result: Result<impl std::fmt::Debug, GpuError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn parse_list_trims_and_keeps_order() {
        assert_eq!(
            GpuConfig::parse_list(" 3, 1 ,GPU-8d2c,MIG-1/2 ").unwrap(),
            ids(&["3", "1", "GPU-8d2c", "MIG-1/2"])
        );
        assert_eq!(GpuConfig::parse_list("0").unwrap(), ids(&["0"]));
    }

    #[test]
    fn parse_list_errors_name_the_problem() {
        assert_eq!(message(GpuConfig::parse_list("")), "empty GPU list");
        assert_eq!(message(GpuConfig::parse_list("  ")), "empty GPU list");
        assert_eq!(
            message(GpuConfig::parse_list("0,,1")),
            "empty GPU id at position 2"
        );
        assert_eq!(
            message(GpuConfig::parse_list("0,1,")),
            "empty GPU id at position 3"
        );
        assert_eq!(
            message(GpuConfig::parse_list(",0")),
            "empty GPU id at position 1"
        );
        assert_eq!(
            message(GpuConfig::parse_list("0,1, 1")),
            "duplicate GPU id \"1\""
        );
        assert_eq!(
            message(GpuConfig::parse_list("0,GPU a")),
            "GPU id \"GPU a\" contains a comma, whitespace or a control character"
        );
    }

    /// Found by the `gpu_list` fuzz target: an id holding a control character made a
    /// multi-line error.
    #[test]
    fn errors_quote_ids_on_one_line() {
        assert_eq!(
            message(GpuConfig::parse_list("0,a\u{7}b")),
            "GPU id \"a\\u{7}b\" contains a comma, whitespace or a control character"
        );
        assert_eq!(
            message(GpuConfig::parse_list("0,a\nb")),
            "GPU id \"a\\nb\" contains a comma, whitespace or a control character"
        );
        assert_eq!(
            message(GpuConfig::new(ids(&["0"]), 1, "A\nB")),
            "invalid GPU environment variable name \"A\\nB\": expected letters, digits and '_', not starting with a digit"
        );
    }

    #[test]
    fn new_accepts_a_valid_config() {
        let config = GpuConfig::new(ids(&["0", "1"]), 2, DEFAULT_ENV_VAR).unwrap();
        assert_eq!(config.devices, ids(&["0", "1"]));
        assert_eq!(config.per_worker, 2);
        assert_eq!(config.env_var, "CUDA_VISIBLE_DEVICES");
        assert!(GpuConfig::new(ids(&["0"]), 1, "_x9").is_ok());
    }

    #[test]
    fn new_errors_name_the_problem() {
        assert_eq!(
            message(GpuConfig::new(vec![], 1, DEFAULT_ENV_VAR)),
            "empty GPU list"
        );
        assert_eq!(
            message(GpuConfig::new(ids(&["0", ""]), 1, DEFAULT_ENV_VAR)),
            "empty GPU id at position 2"
        );
        assert_eq!(
            message(GpuConfig::new(ids(&["0", "1", "0"]), 1, DEFAULT_ENV_VAR)),
            "duplicate GPU id \"0\""
        );
        assert_eq!(
            message(GpuConfig::new(ids(&["0,1"]), 1, DEFAULT_ENV_VAR)),
            "GPU id \"0,1\" contains a comma, whitespace or a control character"
        );
        assert_eq!(
            message(GpuConfig::new(ids(&["0", "1"]), 0, DEFAULT_ENV_VAR)),
            "gpus-per-worker must be at least 1"
        );
        assert_eq!(
            message(GpuConfig::new(ids(&["0", "1"]), 3, DEFAULT_ENV_VAR)),
            "gpus-per-worker 3 is larger than the 2 GPUs available"
        );
        assert_eq!(
            message(GpuConfig::new(ids(&["0"]), 2, DEFAULT_ENV_VAR)),
            "gpus-per-worker 2 is larger than the 1 GPU available"
        );
        for bad in ["", "1GPU", "CUDA-VISIBLE", "A B", "É"] {
            assert_eq!(
                message(GpuConfig::new(ids(&["0"]), 1, bad)),
                format!(
                    "invalid GPU environment variable name \"{bad}\": expected letters, digits and '_', not starting with a digit"
                )
            );
        }
    }
}
