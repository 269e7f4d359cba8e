//! Retention: deletes what finished runs and old builds leave behind, by age, in bounded
//! batches, storage objects first and rows after (so a crash in between leaves rows whose
//! objects are gone, which the next pass finishes, never objects nothing points to).
//!
//! - [`settings`]: the `[retention]` section.
//! - [`policy`]: the pure rules (protected versions, where a run's outputs live).
//! - [`purge`]: one pass over each kind of data.
//!
//! What a pass deletes (ages from `[retention]`):
//!
//! - **Logs** of runs in a terminal state (`success`, `failed`, `timeout`, `cancelled`) whose
//!   `completed_at` is older than `logs_max_age`: every object under
//!   `app-logs/app_{app}/runs/{run}/` except `output/` (compacted logs and per-attempt chunks),
//!   then the run's `stdout`/`stderr` `app_outputs` rows; `logs_path` is cleared and
//!   `logs_purged_at` set.
//! - **Outputs** of such runs older than `outputs_max_age`: every object under
//!   `app-logs/app_{app}/runs/{run}/output/`, then the run's other `app_outputs` rows (result,
//!   metrics, files, errors); `output_path` is cleared and `outputs_purged_at` set. The
//!   `app_runs` row itself (status, error, duration, digest) is always kept.
//! - **Builds** (`app_builds` rows) that are not current, finished (`success`, `failed`,
//!   `cancelled`) more than `builds_max_age` ago, and not used by a pending or running run:
//!   every object under `app-storage/app_{app}/builds/{build}/` (the archive, the frontend's
//!   assets) and `app-logs/app_{app}/builds/{build}/` (the build log), then the build's `dist`
//!   rows and its row. Runs that used one keep their row with `build_id` set to null; a later
//!   run of that version without a current build installs from the version's files.
//! - **Versions** (an app's `app_storage` rows of one version, and their `app-storage` objects)
//!   whose files were all published more than `builds_max_age` ago, unless: a remaining build
//!   names the version (current or not), a pending or running run asks for it by
//!   `metadata.version`, it is the app's highest semver version, or it is the app's most
//!   recently published version. Only objects under the app's own folder (`app_{app}/`) are
//!   deleted, and none that a kept row (of any app or version) also names.
//!
//! One daemon at a time does this: a pass runs only while its session holds the advisory lock
//! `app_exec.retention`; the others skip that interval.

pub mod policy;
mod purge;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use settings::RetentionSettings;

use crate::db;
use crate::db::queue::QueueError;
use crate::db::DatabaseUrl;
use crate::storage::Storage;

/// A pass that could not go on. Storage failures of single runs or versions are not errors:
/// they are counted in the report and retried next pass.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("retention: cannot open its lock session: {0}")]
    Session(#[from] db::DbError),
    #[error("retention: {0}")]
    Database(#[from] QueueError),
    /// Deleting rows on the word of a key that cannot see the objects would orphan them.
    #[error("retention: nothing deleted: {0}")]
    Storage(#[from] crate::storage::StorageError),
}

/// Everything a pass needs; built by `app`.
pub struct Retention {
    pub pool: Pool,
    pub storage: Arc<dyn Storage>,
    pub settings: RetentionSettings,
    /// The advisory lock lives on a dedicated session (a pooled connection would carry it back
    /// into the pool); it ends, and frees the lock, with the pass.
    pub database_url: DatabaseUrl,
    pub connect_timeout: Duration,
}

/// Counts for one kind of run data (logs or outputs).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct RunsPurged {
    pub runs: u64,
    pub objects: u64,
    /// `app_outputs` rows deleted (not counted by a dry run).
    pub rows: u64,
}

/// Counts for versions.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct VersionsPurged {
    pub versions: u64,
    pub objects: u64,
    /// `app_storage` rows deleted (not counted by a dry run).
    pub rows: u64,
}

/// One thing a dry run would delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// `logs`, `outputs`, `build` or `version`.
    pub kind: &'static str,
    /// The run id, build id, or `app_{app}@{version}`.
    pub id: String,
    /// Storage objects (bucket-relative keys) it would delete.
    pub objects: Vec<String>,
}

/// What a pass did (or, with `dry_run`, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    pub logs: RunsPurged,
    pub outputs: RunsPurged,
    pub builds: u64,
    pub versions: VersionsPurged,
    /// Runs or versions skipped because storage failed; retried next pass.
    pub failures: u64,
    /// Dry run only: each item that would go.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<Planned>,
}

impl RetentionReport {
    fn is_empty(&self) -> bool {
        self.logs.runs + self.outputs.runs + self.builds + self.versions.versions + self.failures
            == 0
    }
}

impl Retention {
    /// The daemon's loop: a pass after `min(interval, 1m)`, then one per interval, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut wait = self.settings.interval.min(Duration::from_secs(60));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = self.settings.interval;
            // Shutdown drops a pass mid-batch: safe, since objects go before rows (the next
            // pass redoes the rows) and the lock ends with its session.
            let outcome = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                outcome = self.locked_pass(&stop) => outcome,
            };
            match outcome {
                Ok(Some(report)) if !report.is_empty() => {
                    tracing::info!(
                        logs_runs = report.logs.runs,
                        log_objects = report.logs.objects,
                        outputs_runs = report.outputs.runs,
                        output_objects = report.outputs.objects,
                        builds = report.builds,
                        versions = report.versions.versions,
                        version_objects = report.versions.objects,
                        failures = report.failures,
                        "retention pass deleted old data"
                    );
                }
                Ok(Some(_)) => tracing::debug!("retention pass: nothing is due"),
                Ok(None) => {
                    tracing::debug!("retention: another daemon holds the lock; skipping this pass")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed; trying again next interval")
                }
            }
        }
    }

    /// One pass under the advisory lock; `None` when another session holds it.
    pub async fn locked_pass(
        &self,
        stop: &CancellationToken,
    ) -> Result<Option<RetentionReport>, RetentionError> {
        let session = db::connect(&self.database_url, self.connect_timeout).await?;
        if !db::retention::try_lock(&session).await? {
            return Ok(None);
        }
        let report = self.pass(false, stop).await;
        // Ending the session would free the lock too; unlocking says so explicitly.
        let _ = db::retention::unlock(&session).await;
        report.map(Some)
    }

    /// One pass over every kind of data. `dry_run` deletes nothing and lists what would go; it
    /// takes no lock. (A dry run cannot see versions that only this pass's build deletions
    /// would free: those show up once the builds are gone.)
    pub async fn pass(
        &self,
        dry_run: bool,
        stop: &CancellationToken,
    ) -> Result<RetentionReport, RetentionError> {
        // A key that cannot see the buckets would list nothing and delete nothing, and the pass
        // would then clear rows whose objects stay behind with nothing pointing at them. (An
        // outage is no such proof: each deletion then fails, is counted and retried.)
        match crate::storage::verify_service_role(self.storage.as_ref()).await {
            Err(e) if !e.is_retryable() => return Err(e.into()),
            _ => {}
        }
        let mut report = RetentionReport {
            dry_run,
            ..RetentionReport::default()
        };
        let settings = &self.settings;
        let mut pass = purge::Pass {
            retention: self,
            dry_run,
            stop,
            report: &mut report,
        };
        pass.runs(db::retention::RunPart::Logs, settings.logs_max_age)
            .await?;
        pass.runs(db::retention::RunPart::Outputs, settings.outputs_max_age)
            .await?;
        pass.builds(settings.builds_max_age).await?;
        pass.versions(settings.builds_max_age).await?;
        Ok(report)
    }
}
