//! The `/output` contract and the record of what a run produced.
//!
//! - [`collect`](collect::collect): reads the directory the app wrote, after the container
//!   stopped: `result.json` (JSON, at most `max_result_bytes`) becomes the result,
//!   `metrics.json` (`{name: number}`) the metrics, other regular files are files to upload;
//!   links, FIFOs, sockets and devices are skipped with a reason and never opened; counts and
//!   sizes are capped. Problems are data ([`OutputProblem`]), not errors.
//! - [`record`](record::record): uploads the files under `app_{appId}/runs/{runId}/output/` and
//!   writes the run's `app_outputs` rows, `logs_path` and `output_path` in one transaction
//!   fenced on the run's claim.
//! - `mime`: the stored content type of a file, always one the `app-logs` bucket accepts.

mod collect;
mod mime;
mod record;
pub mod settings;

use std::path::PathBuf;

pub use collect::{collect, collect_blocking, not_regular, MAX_DEPTH};
pub use record::{record, record_retrying, DaemonMetrics, Recorded, RunFailure, RunRecord};
pub use settings::OutputLimits;

/// Metric names the executor records itself; `metrics.json` may not use them.
pub const DAEMON_METRICS: [&str; 3] = ["duration_ms", "peak_memory_bytes", "exit_code"];

/// What `/output` held, within the limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// The directory read.
    pub root: PathBuf,
    /// `result.json`, when present and valid.
    pub result: Option<serde_json::Value>,
    /// `metrics.json` entries that are numbers, by name.
    pub metrics: Vec<(String, serde_json::Number)>,
    /// Regular files to upload, sorted by path.
    pub files: Vec<OutputFile>,
    /// Bytes of `files`.
    pub total_bytes: u64,
    /// What was skipped or refused, and why (the first ones; see `problems_omitted`).
    pub problems: Vec<OutputProblem>,
    /// Problems beyond those listed.
    pub problems_omitted: usize,
}

/// A regular file found in `/output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// `/`-separated path under the output directory; a valid storage key suffix.
    pub relative: String,
    pub size: u64,
    /// The content type it is stored with (one the `app-logs` bucket accepts).
    pub mime_type: &'static str,
    /// Identity when listed: the upload checks it is still the same file.
    dev: u64,
    ino: u64,
}

/// Something in `/output` that was not taken as it stood, and why. Recorded as an `error`
/// output named `invalid_output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputProblem {
    /// The path under the output directory (`""` for the directory itself).
    pub path: String,
    /// Stable snake_case code: `symlink`, `fifo`, `socket`, `device`, `too_deep`,
    /// `too_many_entries`, `unstorable_name`, `too_large`, `over_total`, `too_many_files`,
    /// `unreadable`, `changed`, `invalid_json`, `invalid_metrics`, `not_a_number`,
    /// `invalid_metric_name`, `reserved_metric_name`, `too_many_metrics`, `upload_failed`.
    pub reason: &'static str,
    /// A sentence naming the file and the limit or fault.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot read the output directory {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot record the outputs of run {run_id}: {source}")]
    Record {
        run_id: uuid::Uuid,
        #[source]
        source: crate::db::queue::QueueError,
    },
}

impl OutputError {
    /// Whether the same operation may succeed later (the database was unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Record { .. })
    }
}
