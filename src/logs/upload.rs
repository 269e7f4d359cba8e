//! The uploader: one task per run attempt that copies new spool bytes to storage as ordered
//! chunks, and at the end compacts each stream into one object and removes the chunks.
//!
//! Live phase: on every tick of `chunk_interval` it uploads everything pending (the tail may be
//! a short chunk); when woken because `chunk_bytes` are pending it uploads full chunks only.
//! Streams take turns, one chunk each, so a flood on stdout does not starve stderr. A failed
//! upload is retried from the spool with backoff (nothing is read from memory, so nothing is
//! lost however long storage is away); chunk keys are fixed by their sequence number and
//! uploaded with upsert, so a retry after an ambiguous failure rewrites identical bytes.
//!
//! Final phase (after `finish`/`interrupt`): the remaining chunks, then (for `finish`) the
//! compacted objects and the chunk deletion, all within `durable_retry_window`. Beyond it the
//! logs are reported not durable and the chunks are left in place. An upload of the live phase
//! still in flight when the run ends is dropped (the final phase sends the same chunk again):
//! storage that hangs must not hold `finish` past the window by the storage client's own
//! timeouts and retries. A dropped upload may still land later (a server that finishes the
//! request anyway, the local backend's blocking write); after compaction that leaves a
//! redundant chunk behind, as a failed chunk deletion does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::layout;
use super::{LogSettings, LogStream, LogTarget};
use crate::storage::{Storage, StorageError, UploadBody, APP_LOGS_BUCKET};

/// Delay before the first retry of a failed upload; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Content type of chunks and compacted logs: a bare type (the bucket does not strip
/// parameters). Bytes are stored as the app wrote them, UTF-8 or not.
pub(super) const LOG_CONTENT_TYPE: &str = "text/plain";

/// How the attempt's logging ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// The run ended here: upload the rest, compact, delete the chunks.
    Complete,
    /// The run goes back to the queue: upload the rest, keep the chunks, no compaction.
    Interrupt,
}

/// What the uploader achieved, per stream in `[stdout, stderr]` order.
#[derive(Debug, Clone, Default)]
pub(super) struct UploadReport {
    /// Every spooled byte is in storage (for `Complete`: in the compacted objects).
    pub durable: bool,
    pub compacted: bool,
    pub chunks: [u32; 2],
}

#[derive(Debug, thiserror::Error)]
enum ChunkError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot read the log spool {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storage did not answer before the end of the retry window")]
    Deadline,
}

#[derive(Debug)]
pub(super) struct StreamUpload {
    pub stream: LogStream,
    pub spool: PathBuf,
    pub published: Arc<AtomicU64>,
    uploaded: u64,
    next_seq: u32,
}

impl StreamUpload {
    pub(super) fn new(stream: LogStream, spool: PathBuf, published: Arc<AtomicU64>) -> Self {
        Self {
            stream,
            spool,
            published,
            uploaded: 0,
            next_seq: 1,
        }
    }

    fn pending(&self) -> u64 {
        self.published.load(Ordering::Acquire) - self.uploaded
    }
}

pub(super) struct Uploader {
    pub storage: Arc<dyn Storage>,
    pub target: LogTarget,
    pub settings: LogSettings,
    /// `[stdout, stderr]`.
    pub streams: [StreamUpload; 2],
    /// Notified by `append` when a full chunk is pending.
    pub wake: Arc<Notify>,
    /// Cancelled (before the `Ending` is sent) when the run's logging ends: the live phase
    /// yields to the final one at once, even mid-upload, so the final phase's deadline bounds
    /// the remaining work.
    pub ending: CancellationToken,
}

impl Uploader {
    /// Runs until `ending` says how to end (or is dropped: the attempt was abandoned, and
    /// nothing more is uploaded).
    pub(super) async fn run(mut self, mut ending: oneshot::Receiver<Ending>) -> UploadReport {
        let mut ticker = tokio::time::interval(self.settings.chunk_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut failures = 0u32;
        let end = loop {
            let partial = tokio::select! {
                biased;
                end = &mut ending => break end.ok(),
                _ = self.wake.notified() => false,
                _ = ticker.tick() => true,
            };
            match self.upload_pending(partial, None).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(run_id = %self.target.run_id, failures, "log upload recovered; chunks caught up from the spool");
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    let delay =
                        crate::model::retry_delay(failures as i32, FIRST_BACKOFF, MAX_BACKOFF);
                    if failures == 1 {
                        tracing::warn!(run_id = %self.target.run_id, error = %e, "log chunk upload failed; retrying from the spool with backoff");
                    } else {
                        tracing::debug!(run_id = %self.target.run_id, error = %e, failures, ?delay, "log chunk upload failed again");
                    }
                    tokio::select! {
                        biased;
                        end = &mut ending => break end.ok(),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        match end {
            None => UploadReport {
                chunks: self.chunk_counts(),
                ..UploadReport::default()
            },
            Some(end) => self.final_phase(end).await,
        }
    }

    fn chunk_counts(&self) -> [u32; 2] {
        [self.streams[0].next_seq - 1, self.streams[1].next_seq - 1]
    }

    fn folder(&self) -> String {
        format!(
            "{}{}/",
            self.target.prefix(),
            layout::attempt_folder(self.target.attempt, self.target.claimed_at)
        )
    }

    /// Uploads pending chunks, one per stream in turn: every full chunk, and with `partial`
    /// also what was pending when called (so steady small output is not sent as a stream of
    /// tiny chunks). In the live phase (no `deadline`) it stops as soon as the run is ending,
    /// dropping an upload in flight (its chunk is sent again, under the same key, by the final
    /// phase), so the final phase's deadline bounds the rest.
    async fn upload_pending(
        &mut self,
        partial: bool,
        deadline: Option<Instant>,
    ) -> Result<(), ChunkError> {
        let chunk_bytes = self.settings.chunk_bytes;
        let folder = self.folder();
        let due = self.streams.each_ref().map(|s| {
            if partial {
                s.published.load(Ordering::Acquire)
            } else {
                0
            }
        });
        loop {
            let mut progressed = false;
            for (i, due) in due.into_iter().enumerate() {
                if deadline.is_none() && self.ending.is_cancelled() {
                    return Ok(());
                }
                let s = &self.streams[i];
                let pending = s.pending();
                if pending == 0 || (pending < chunk_bytes && s.uploaded >= due) {
                    continue;
                }
                let len = pending.min(chunk_bytes);
                let bytes = read_range(s.spool.clone(), s.uploaded, len).await?;
                let key = format!("{folder}{}", layout::chunk_name(s.stream, s.next_seq));
                let upload = self.storage.upload(
                    APP_LOGS_BUCKET,
                    &key,
                    UploadBody::Bytes(bytes.into()),
                    LOG_CONTENT_TYPE,
                    true,
                );
                let uploaded = match deadline {
                    Some(_) => within(deadline, upload).await?,
                    None => tokio::select! {
                        biased;
                        _ = self.ending.cancelled() => return Ok(()),
                        uploaded = upload => uploaded,
                    },
                };
                uploaded?;
                let s = &mut self.streams[i];
                s.uploaded += len;
                s.next_seq += 1;
                progressed = true;
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    async fn final_phase(mut self, end: Ending) -> UploadReport {
        let deadline = Instant::now() + self.settings.durable_retry_window;
        let run_id = self.target.run_id;
        let mut report = UploadReport::default();
        let mut retry = Retry::new(
            deadline,
            run_id,
            "uploading the last log chunks (the logs are not durable)",
        );
        loop {
            // Each try resumes where the last one stopped.
            match self.upload_pending(true, Some(deadline)).await {
                Ok(()) => break,
                Err(e) if retry.again(&e).await => {}
                Err(_) => {
                    report.chunks = self.chunk_counts();
                    return report;
                }
            }
        }
        report.chunks = self.chunk_counts();
        if end == Ending::Interrupt {
            report.durable = true;
            return report;
        }
        for s in &self.streams {
            let key = self.target.compacted_key(s.stream);
            let mut retry = Retry::new(
                deadline,
                run_id,
                "writing the compacted log (the logs are not durable)",
            );
            loop {
                let upload = self.storage.upload(
                    APP_LOGS_BUCKET,
                    &key,
                    UploadBody::File(s.spool.clone()),
                    LOG_CONTENT_TYPE,
                    true,
                );
                match within(Some(deadline), upload).await.and_then(|r| Ok(r?)) {
                    Ok(()) => break,
                    Err(e) if retry.again(&e).await => {}
                    Err(_) => return report,
                }
            }
        }
        report.durable = true;
        report.compacted = true;
        let folder = self.folder();
        let chunk_keys: Vec<String> = self
            .streams
            .iter()
            .flat_map(|s| (1..s.next_seq).map(move |seq| (s.stream, seq)))
            .map(|(stream, seq)| format!("{folder}{}", layout::chunk_name(stream, seq)))
            .collect();
        if chunk_keys.is_empty() {
            return report;
        }
        let mut retry = Retry::new(
            deadline,
            run_id,
            "deleting the compacted log chunks (they stay as redundant copies)",
        );
        loop {
            let delete = self.storage.delete_many(APP_LOGS_BUCKET, &chunk_keys);
            match within(Some(deadline), delete).await.and_then(|r| Ok(r?)) {
                Ok(_) => break,
                Err(e) if retry.again(&e).await => {}
                // Logged by `again`; the chunks stay as redundant copies of the compacted logs.
                _ => break,
            }
        }
        report
    }
}

/// Runs `future`, giving up at `deadline` (if any).
async fn within<T>(
    deadline: Option<Instant>,
    future: impl std::future::Future<Output = T>,
) -> Result<T, ChunkError> {
    match deadline {
        None => Ok(future.await),
        Some(deadline) => tokio::time::timeout_at(deadline, future)
            .await
            .map_err(|_| ChunkError::Deadline),
    }
}

/// Backoff for the final phase, bounded by the retry window.
struct Retry {
    deadline: Instant,
    run_id: uuid::Uuid,
    what: &'static str,
    failures: u32,
}

impl Retry {
    fn new(deadline: Instant, run_id: uuid::Uuid, what: &'static str) -> Self {
        Self {
            deadline,
            run_id,
            what,
            failures: 0,
        }
    }

    /// After a failure: waits and returns true to try again, or returns false (logged once)
    /// when the next try would start after the deadline.
    async fn again(&mut self, error: &ChunkError) -> bool {
        self.failures += 1;
        // A refusal (MIME type, size, access) comes back the same however long we wait.
        if let ChunkError::Storage(e) = error {
            if !e.is_retryable() {
                let (run_id, what) = (self.run_id, self.what);
                tracing::warn!(%run_id, %error, "{what} was refused by storage; not retrying a permanent error");
                return false;
            }
        }
        let delay = crate::model::retry_delay(self.failures as i32, FIRST_BACKOFF, MAX_BACKOFF);
        let (run_id, what, failures) = (self.run_id, self.what, self.failures);
        if Instant::now() + delay >= self.deadline {
            tracing::warn!(%run_id, %error, failures, "{what} failed until the end of logs.durable_retry_window");
            return false;
        }
        tracing::debug!(%run_id, %error, failures, "{what} failed; retrying");
        tokio::time::sleep(delay).await;
        true
    }
}

/// Reads `len` bytes of the spool at `offset` (at most `chunk_bytes`, so memory stays bounded).
async fn read_range(path: PathBuf, offset: u64, len: u64) -> Result<Vec<u8>, ChunkError> {
    let shown = path.clone();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&path)?;
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .map_err(|source| ChunkError::Spool {
        path: shown,
        source,
    })
}
