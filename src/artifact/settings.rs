//! The `[limits]` configuration section: what one app may use on this host (manifests are
//! clamped to the maxima and get the defaults when silent), and the caps on extracting an
//! app's archives.

use serde::{Deserialize, Serialize};

use super::{ExtractLimits, HostLimits};
use crate::units::{format_duration, parse_byte_size, parse_duration};

/// `[limits]`: what one app may use on this host (manifests are clamped to the maxima and get
/// the defaults when silent), and the caps on extracting an app's archives.
#[derive(Debug, Clone)]
pub struct LimitsSettings {
    pub host: HostLimits,
    pub extract: ExtractLimits,
}

/// What the TOML file and the environment may contain under `[limits]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    max_memory: String,
    max_cpu: f64,
    max_timeout: String,
    default_memory: String,
    default_cpu: f64,
    default_timeout: String,
    max_stop_grace: String,
    default_stop_grace: String,
    archive_max_entries: usize,
    archive_max_bytes: String,
    archive_max_file_bytes: String,
    archive_max_ratio: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_memory: "2GiB".into(),
            max_cpu: 2.0,
            max_timeout: "30m".into(),
            default_memory: "512MiB".into(),
            default_cpu: 1.0,
            default_timeout: "5m".into(),
            max_stop_grace: "1m".into(),
            default_stop_grace: "10s".into(),
            archive_max_entries: 10_000,
            archive_max_bytes: "500MB".into(),
            archive_max_file_bytes: "100MB".into(),
            archive_max_ratio: 100,
        }
    }
}

impl LimitsSettings {
    /// Validates `[limits]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawLimits, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        let mut size = |key: &str, value: &str| {
            parse_byte_size(&format!("limits.{key}"), value)
                .and_then(|b| match b {
                    0 => Err(format!(
                        "limits.{key} = {value:?}: must be greater than zero"
                    )),
                    b => Ok(b),
                })
                .map_err(|e| violations.push(e))
                .unwrap_or_default()
        };
        let max_memory = size("max_memory", &raw.max_memory);
        let default_memory = size("default_memory", &raw.default_memory);
        let archive_max_bytes = size("archive_max_bytes", &raw.archive_max_bytes);
        let archive_max_file_bytes = size("archive_max_file_bytes", &raw.archive_max_file_bytes);
        let max_timeout = parse_duration("limits.max_timeout", &raw.max_timeout, violations);
        let default_timeout =
            parse_duration("limits.default_timeout", &raw.default_timeout, violations);
        let max_stop_grace =
            parse_duration("limits.max_stop_grace", &raw.max_stop_grace, violations);
        let default_stop_grace = parse_duration(
            "limits.default_stop_grace",
            &raw.default_stop_grace,
            violations,
        );
        if default_stop_grace > max_stop_grace {
            violations.push(format!(
                "limits.default_stop_grace = {:?}: above limits.max_stop_grace = {:?}",
                raw.default_stop_grace, raw.max_stop_grace
            ));
        }
        for (key, value) in [("max_cpu", raw.max_cpu), ("default_cpu", raw.default_cpu)] {
            if !(value.is_finite() && value > 0.0) {
                violations.push(format!(
                    "limits.{key} = {value}: must be a positive number of CPUs"
                ));
            }
        }
        if default_memory > max_memory {
            violations.push(format!(
                "limits.default_memory = {:?}: above limits.max_memory = {:?}",
                raw.default_memory, raw.max_memory
            ));
        }
        if raw.default_cpu > raw.max_cpu {
            violations.push(format!(
                "limits.default_cpu = {}: above limits.max_cpu = {}",
                raw.default_cpu, raw.max_cpu
            ));
        }
        if default_timeout > max_timeout {
            violations.push(format!(
                "limits.default_timeout = {:?}: above limits.max_timeout = {:?}",
                raw.default_timeout, raw.max_timeout
            ));
        }
        for (key, value) in [
            ("archive_max_entries", raw.archive_max_entries as u64),
            ("archive_max_ratio", raw.archive_max_ratio),
        ] {
            if value == 0 {
                violations.push(format!("limits.{key} = 0: must be at least 1"));
            }
        }
        (violations.len() == before).then(|| Self {
            host: HostLimits {
                max_memory,
                max_cpu: raw.max_cpu,
                max_timeout: max_timeout.unwrap_or_default(),
                default_memory,
                default_cpu: raw.default_cpu,
                default_timeout: default_timeout.unwrap_or_default(),
                max_stop_grace: max_stop_grace.unwrap_or_default(),
                default_stop_grace: default_stop_grace.unwrap_or_default(),
            },
            extract: ExtractLimits {
                max_entries: raw.archive_max_entries,
                max_total_bytes: archive_max_bytes,
                max_file_bytes: archive_max_file_bytes,
                max_ratio: raw.archive_max_ratio,
                ..Default::default()
            },
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "max_memory": self.host.max_memory,
            "max_cpu": self.host.max_cpu,
            "max_timeout": format_duration(self.host.max_timeout),
            "default_memory": self.host.default_memory,
            "default_cpu": self.host.default_cpu,
            "default_timeout": format_duration(self.host.default_timeout),
            "max_stop_grace": format_duration(self.host.max_stop_grace),
            "default_stop_grace": format_duration(self.host.default_stop_grace),
            "archive_max_entries": self.extract.max_entries,
            "archive_max_bytes": self.extract.max_total_bytes,
            "archive_max_file_bytes": self.extract.max_file_bytes,
            "archive_max_ratio": self.extract.max_ratio,
        })
    }
}
