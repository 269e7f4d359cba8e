//! Run logs: live, crash-safe streaming of an app's stdout and stderr to the `app-logs` bucket,
//! capped per stream and compacted at the end; and reading them back (`app-executor logs`).
//!
//! - [`layout`]: the storage keys (run prefix, per-claim chunk folders, compacted objects) and
//!   the truncation marker; pure.
//! - [`run_log`]: [`RunLog`], the log of one attempt: `start`, `append` as output arrives, then
//!   `finish` (or `interrupt`/`abandon`).
//! - `spool`: the per-stream spool file and cap; `line`: bounded line splitting for tracing;
//!   `upload`: the background uploader (chunks, retries, compaction).
//! - [`reader`]: printing a run's logs from storage, following live chunks.
//!
//! Durability: output is on local disk before `append` returns; chunks reach storage every
//! `chunk_interval` or `chunk_bytes`; a daemon crash loses at most the spool's unuploaded tail,
//! and the next attempt writes under its own folder, so earlier chunks are never overwritten.
//! Nothing here touches the database: the caller records the [`LogSummary`].

pub mod layout;
mod line;
pub mod reader;
mod run_log;
pub mod settings;
mod spool;
mod upload;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use run_log::{LogSummary, RunLog, StreamSummary};
pub use settings::LogSettings;
pub use spool::StreamStats;

/// The tracing target of app output lines (debug level, with `run_id`, `app_id`, `stream`).
pub const APP_LOG_TARGET: &str = "app_executor::app_output";

/// One of the container's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Stdout => 0,
            Self::Stderr => 1,
        }
    }
}

/// Which claim of which run (or build) a log belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    pub app_id: Uuid,
    /// The run's id, or the build's.
    pub run_id: Uuid,
    pub attempt: i32,
    /// The claim's `started_at`: with `attempt`, names the chunk folder (see [`layout`]).
    pub claimed_at: DateTime<Utc>,
    /// A build's log lives under `builds/` instead of `runs/`.
    pub build: bool,
}

impl LogTarget {
    pub fn of(run: &crate::model::ClaimedRun) -> Self {
        Self {
            app_id: run.app_id,
            run_id: run.id,
            attempt: run.attempt,
            claimed_at: run.started_at,
            build: false,
        }
    }

    pub fn of_build(build: &crate::model::ClaimedBuild) -> Self {
        Self {
            app_id: build.app_id,
            run_id: build.id,
            attempt: build.attempt,
            claimed_at: build.started_at,
            build: true,
        }
    }

    /// The log's prefix: `app_{appId}/runs/{runId}/` or `app_{appId}/builds/{buildId}/`.
    pub fn prefix(&self) -> String {
        if self.build {
            layout::build_prefix(self.app_id, self.run_id)
        } else {
            layout::run_prefix(self.app_id, self.run_id)
        }
    }

    /// The compacted log of one stream under [`LogTarget::prefix`].
    pub fn compacted_key(&self, stream: LogStream) -> String {
        format!("{}{}.log", self.prefix(), stream.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create the log spool of run {run_id} in {path}: {source}")]
    Spool {
        run_id: Uuid,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a run or build id (a uuid)")]
    BadRunId(String),
    #[error("there is no run or build {0}")]
    UnknownRun(Uuid),
    #[error("cannot look up run {run_id}: {source}")]
    Lookup {
        run_id: Uuid,
        #[source]
        source: crate::db::queue::QueueError,
    },
    #[error("cannot read the logs of run {run_id}: {source}")]
    Storage {
        run_id: Uuid,
        #[source]
        source: crate::storage::StorageError,
    },
    #[error("cannot print the logs of run {run_id}: {source}")]
    Print {
        run_id: Uuid,
        #[source]
        source: std::io::Error,
    },
}
