//! [`RunLog`]: the log of one run attempt, from the container's first byte to durable objects
//! in storage. The sandbox calls [`RunLog::append`] as output arrives (a local write, never a
//! wait on storage) and one of [`RunLog::finish`], [`RunLog::interrupt`] or
//! [`RunLog::abandon`] at the end; the uploader task (see `upload`) does the network work.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::line::{LineSplitter, MAX_LINE};
use super::spool::{StreamSpool, StreamStats};
use super::upload::{Ending, StreamUpload, UploadReport, Uploader};
use super::{LogError, LogSettings, LogStream, LogTarget, APP_LOG_TARGET};
use crate::storage::Storage;

/// What became of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub stream: LogStream,
    /// The compacted object's key in `app-logs` (`app_{appId}/runs/{runId}/stdout.log`).
    pub key: String,
    /// Bytes stored (kept output plus the truncation marker, if any); at most the cap.
    pub stored_bytes: u64,
    /// Bytes the app wrote.
    pub received_bytes: u64,
    /// Bytes dropped over the cap (or lost to a failing spool disk).
    pub dropped_bytes: u64,
    /// Chunks uploaded during the attempt (deleted again once compacted).
    pub chunks: u32,
    /// The spool write error that lost bytes, if one did.
    pub spool_error: Option<String>,
}

/// The end state of an attempt's logs, for `outputs::record` and the run's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// `app_{appId}/runs/{runId}/` (`app_runs.logs_path`).
    pub logs_path: String,
    pub stdout: StreamSummary,
    pub stderr: StreamSummary,
    /// Every stored byte is in storage: for `finish`, in the compacted objects. When false,
    /// flag the run `logs_incomplete`.
    pub durable: bool,
    /// The compacted `stdout.log` and `stderr.log` exist (only after `finish`).
    pub compacted: bool,
}

/// The log of one run attempt. Dropping it without `finish`/`interrupt` is `abandon`.
pub struct RunLog {
    target: LogTarget,
    chunk_bytes: u64,
    spool_dir: PathBuf,
    /// `[stdout, stderr]`.
    spools: [StreamSpool; 2],
    lines: [LineSplitter; 2],
    /// Stored bytes of each stream when the uploader was last woken.
    woken_at: [u64; 2],
    wake: Arc<Notify>,
    /// Tells the uploader how to end; dropping it abandons the upload.
    ending: Option<oneshot::Sender<Ending>>,
    /// Cancelled just before `ending` is sent, so the live phase (a backlog, or an upload in
    /// flight) yields to the final phase at once.
    ending_flag: CancellationToken,
    uploader: Option<JoinHandle<UploadReport>>,
}

impl std::fmt::Debug for RunLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLog")
            .field("target", &self.target)
            .field("spool_dir", &self.spool_dir)
            .finish_non_exhaustive()
    }
}

impl RunLog {
    /// Creates the spool files in `spool_dir` (created if missing; a directory of this attempt
    /// under the state directory) and starts the uploader. Must be called inside a tokio
    /// runtime.
    pub fn start(
        storage: Arc<dyn Storage>,
        spool_dir: &Path,
        target: LogTarget,
        mut settings: LogSettings,
    ) -> Result<Self, LogError> {
        // The config validates these; a hand-built value must not make empty chunks forever
        // or a cap the marker alone exceeds.
        settings.chunk_bytes = settings.chunk_bytes.max(1);
        settings.stream_cap = settings.stream_cap.max(2 * super::layout::MARKER_RESERVE);
        let spool_error = |source| LogError::Spool {
            run_id: target.run_id,
            path: spool_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(spool_dir).map_err(spool_error)?;
        let stdout = StreamSpool::create(spool_dir, LogStream::Stdout, settings.stream_cap)
            .map_err(spool_error)?;
        let stderr = StreamSpool::create(spool_dir, LogStream::Stderr, settings.stream_cap)
            .map_err(spool_error)?;
        let wake = Arc::new(Notify::new());
        let ending_flag = CancellationToken::new();
        let uploader = Uploader {
            storage,
            target: target.clone(),
            settings: settings.clone(),
            streams: [&stdout, &stderr]
                .map(|s| StreamUpload::new(s.stream(), s.path().to_owned(), s.published())),
            wake: wake.clone(),
            ending: ending_flag.clone(),
        };
        let (ending, receiver) = oneshot::channel();
        let uploader = tokio::spawn(uploader.run(receiver));
        Ok(Self {
            target,
            chunk_bytes: settings.chunk_bytes,
            spool_dir: spool_dir.to_owned(),
            spools: [stdout, stderr],
            lines: [LineSplitter::new(MAX_LINE), LineSplitter::new(MAX_LINE)],
            woken_at: [0, 0],
            wake,
            ending: Some(ending),
            ending_flag,
            uploader: Some(uploader),
        })
    }

    /// Takes output of the container as it arrives. Writes to the local spool only (never
    /// waits on storage); bytes past the stream's cap are counted and dropped. Any bytes: UTF-8
    /// or not, with or without newlines.
    pub fn append(&mut self, stream: LogStream, bytes: &[u8]) {
        let i = stream.index();
        let kept = self.spools[i].append(bytes);
        if kept.is_empty() {
            return;
        }
        if tracing::enabled!(target: APP_LOG_TARGET, tracing::Level::DEBUG) {
            let (run_id, app_id) = (self.target.run_id, self.target.app_id);
            self.lines[i].feed(kept, |line| trace_line(run_id, app_id, stream, line));
        }
        let stored = self.spools[i].stats().stored;
        if stored - self.woken_at[i] >= self.chunk_bytes {
            self.woken_at[i] = stored;
            self.wake.notify_one();
        }
    }

    /// Counts of one stream so far (e.g. to stop a container that floods its output).
    pub fn stats(&self, stream: LogStream) -> StreamStats {
        self.spools[stream.index()].stats()
    }

    /// The run ended here (any terminal status, cancelled included): uploads what is left,
    /// writes the compacted `stdout.log`/`stderr.log` (with the truncation marker when bytes
    /// were dropped), deletes this attempt's chunks, and removes the spool. Gives up after
    /// `logs.durable_retry_window` of storage failures, reporting `durable: false` (the spool
    /// and the uploaded chunks are then kept).
    pub async fn finish(self) -> LogSummary {
        self.end(Ending::Complete).await
    }

    /// The run goes back to the queue (shutdown): uploads what is left as chunks and keeps
    /// them (no compaction: the next attempt will write the run's logs).
    pub async fn interrupt(self) -> LogSummary {
        self.end(Ending::Interrupt).await
    }

    /// The lease is lost: stops uploading at once and removes the spool. Chunks already
    /// uploaded stay; nothing else is written.
    pub fn abandon(mut self) {
        self.stop_uploader();
        self.remove_spool();
    }

    async fn end(mut self, ending: Ending) -> LogSummary {
        let (run_id, app_id) = (self.target.run_id, self.target.app_id);
        for (i, stream) in [LogStream::Stdout, LogStream::Stderr]
            .into_iter()
            .enumerate()
        {
            self.lines[i].flush(|line| trace_line(run_id, app_id, stream, line));
            self.spools[i].seal();
        }
        let report = match (self.ending.take(), self.uploader.take()) {
            (Some(sender), Some(uploader)) => {
                self.ending_flag.cancel();
                let _ = sender.send(ending);
                uploader.await.unwrap_or_else(|e| {
                    tracing::error!(%run_id, error = %e, "the log uploader failed");
                    UploadReport::default()
                })
            }
            _ => UploadReport::default(),
        };
        if report.durable {
            self.remove_spool();
        } else {
            tracing::warn!(%run_id, spool = %self.spool_dir.display(), "logs are not durable; the spool is kept");
        }
        let summary = |i: usize| {
            let spool = &self.spools[i];
            let stats = spool.stats();
            StreamSummary {
                stream: spool.stream(),
                key: self.target.compacted_key(spool.stream()),
                stored_bytes: stats.stored,
                received_bytes: stats.received,
                dropped_bytes: stats.dropped,
                chunks: report.chunks[i],
                spool_error: spool.spool_error().map(str::to_owned),
            }
        };
        LogSummary {
            logs_path: self.target.prefix(),
            stdout: summary(0),
            stderr: summary(1),
            durable: report.durable,
            compacted: report.compacted,
        }
    }

    fn stop_uploader(&mut self) {
        self.ending.take();
        if let Some(uploader) = self.uploader.take() {
            uploader.abort();
        }
    }

    fn remove_spool(&self) {
        for spool in &self.spools {
            let _ = std::fs::remove_file(spool.path());
        }
        // Only if empty: the caller may keep other things there.
        let _ = std::fs::remove_dir(&self.spool_dir);
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        self.stop_uploader();
    }
}

fn trace_line(run_id: uuid::Uuid, app_id: uuid::Uuid, stream: LogStream, line: &[u8]) {
    tracing::debug!(target: APP_LOG_TARGET, %run_id, %app_id, stream = stream.as_str(), "{}", String::from_utf8_lossy(line));
}
