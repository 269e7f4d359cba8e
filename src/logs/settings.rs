//! The `[logs]` configuration section: how often and in what size chunks a run's output is
//! streamed to `app-logs`, the per-stream cap, and how long durable uploads are retried.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::storage::APP_LOGS_FILE_SIZE_LIMIT;
use crate::units::{bounded_size, format_duration, parse_duration};

/// `[logs]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Longest time new output waits before it is uploaded as a chunk.
    pub chunk_interval: Duration,
    /// A chunk is uploaded as soon as this many new bytes are pending; also the largest chunk
    /// (and the uploader's read buffer).
    pub chunk_bytes: u64,
    /// Bytes kept per stream, truncation marker included; the rest is dropped and counted.
    /// At most the `app-logs` bucket's object size limit.
    pub stream_cap: u64,
    /// How long `finish` keeps retrying storage before reporting the logs not durable.
    pub durable_retry_window: Duration,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            chunk_interval: Duration::from_secs(2),
            chunk_bytes: 256 * 1024,
            stream_cap: 50 * 1024 * 1024,
            durable_retry_window: Duration::from_secs(60),
        }
    }
}

/// What the TOML file and the environment may contain under `[logs]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogs {
    chunk_interval: String,
    chunk_bytes: String,
    stream_cap: String,
    durable_retry_window: String,
}

impl Default for RawLogs {
    fn default() -> Self {
        Self {
            chunk_interval: "2s".into(),
            chunk_bytes: "256KiB".into(),
            stream_cap: "50MiB".into(),
            durable_retry_window: "60s".into(),
        }
    }
}

impl LogSettings {
    /// Validates `[logs]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawLogs, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        let chunk_interval = parse_duration("logs.chunk_interval", &raw.chunk_interval, violations);
        let durable_retry_window = parse_duration(
            "logs.durable_retry_window",
            &raw.durable_retry_window,
            violations,
        );
        let stream_cap = bounded_size(
            "logs",
            "stream_cap",
            &raw.stream_cap,
            (4096, APP_LOGS_FILE_SIZE_LIMIT),
            violations,
        );
        let chunk_bytes = bounded_size(
            "logs",
            "chunk_bytes",
            &raw.chunk_bytes,
            (1024, 16 << 20),
            violations,
        );
        (violations.len() == before).then(|| Self {
            chunk_interval: chunk_interval.unwrap_or_default(),
            chunk_bytes,
            stream_cap,
            durable_retry_window: durable_retry_window.unwrap_or_default(),
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "chunk_interval": format_duration(self.chunk_interval),
            "chunk_bytes": self.chunk_bytes,
            "stream_cap": self.stream_cap,
            "durable_retry_window": format_duration(self.durable_retry_window),
        })
    }
}
