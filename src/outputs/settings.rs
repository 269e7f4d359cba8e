//! The `[outputs]` configuration section: caps on what is read back from a run's `/output`
//! and uploaded (files, bytes, the largest file, `result.json`).

use serde::{Deserialize, Serialize};

use crate::storage::APP_LOGS_FILE_SIZE_LIMIT;
use crate::units::bounded_size;

/// `[outputs]`: caps on what is collected from `/output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLimits {
    /// Files uploaded at most (besides `result.json` and `metrics.json`), first by name.
    pub max_files: usize,
    /// Bytes of files uploaded at most, in total.
    pub max_bytes: u64,
    /// Largest single file uploaded; at most the `app-logs` bucket's object size limit.
    pub max_file_bytes: u64,
    /// Largest `result.json` (and `metrics.json`) read.
    pub max_result_bytes: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self {
            max_files: 100,
            max_bytes: 100 * 1024 * 1024,
            max_file_bytes: 50 * 1024 * 1024,
            max_result_bytes: 1024 * 1024,
        }
    }
}

/// What the TOML file and the environment may contain under `[outputs]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutputs {
    max_files: usize,
    max_bytes: String,
    max_file_bytes: String,
    max_result_bytes: String,
}

impl Default for RawOutputs {
    fn default() -> Self {
        Self {
            max_files: 100,
            max_bytes: "100MiB".into(),
            max_file_bytes: "50MiB".into(),
            max_result_bytes: "1MiB".into(),
        }
    }
}

impl OutputLimits {
    /// Validates `[outputs]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawOutputs, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        if !(1..=10_000).contains(&raw.max_files) {
            violations.push(format!(
                "outputs.max_files = {}: must be between 1 and 10000",
                raw.max_files
            ));
        }
        let max_bytes = bounded_size(
            "outputs",
            "max_bytes",
            &raw.max_bytes,
            (1, u64::MAX),
            violations,
        );
        let max_file_bytes = bounded_size(
            "outputs",
            "max_file_bytes",
            &raw.max_file_bytes,
            (1, APP_LOGS_FILE_SIZE_LIMIT),
            violations,
        );
        let max_result_bytes = bounded_size(
            "outputs",
            "max_result_bytes",
            &raw.max_result_bytes,
            (2, 64 << 20),
            violations,
        );
        (violations.len() == before).then_some(Self {
            max_files: raw.max_files,
            max_bytes,
            max_file_bytes,
            max_result_bytes,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "max_files": self.max_files,
            "max_bytes": self.max_bytes,
            "max_file_bytes": self.max_file_bytes,
            "max_result_bytes": self.max_result_bytes,
        })
    }
}
