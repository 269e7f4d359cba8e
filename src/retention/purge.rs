//! One retention pass over each kind of data, batch by batch: select a page (SQL), delete the
//! objects (storage), then the rows (SQL). Stops between batches when asked to.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::policy::{protected_versions, OUTPUT_FOLDER};
use super::{Planned, Retention, RetentionError, RetentionReport};
use crate::db::retention::{self as sql, RunPart};
use crate::logs::layout::{build_prefix, run_prefix};
use crate::ops::metrics;
use crate::storage::{ListEntry, Storage, StorageError, APP_LOGS_BUCKET, APP_STORAGE_BUCKET};

/// Objects examined at most under one run's (or build's) prefix (a run has a few dozen at
/// most, a build's frontend a few thousand; this bounds a pathological one).
const MAX_OBJECTS_PER_RUN: usize = 100_000;

pub(super) struct Pass<'a> {
    pub retention: &'a Retention,
    pub dry_run: bool,
    pub stop: &'a CancellationToken,
    pub report: &'a mut RetentionReport,
}

impl Pass<'_> {
    fn batch(&self) -> i64 {
        self.retention.settings.batch_size as i64
    }

    /// Logs or outputs of finished runs older than `age`.
    pub async fn runs(&mut self, part: RunPart, age: Duration) -> Result<(), RetentionError> {
        let pool = &self.retention.pool;
        let storage = self.retention.storage.as_ref();
        let mut cursor = None;
        while !self.stop.is_cancelled() {
            let due = sql::due_runs(pool, part, age, cursor, self.batch()).await?;
            let Some(last) = due.last() else { break };
            cursor = Some((last.completed_at, last.id));
            let mut purged = Vec::new();
            let mut objects = 0;
            for run in &due {
                let prefix = run_prefix(run.app_id, run.id);
                let keys = match part {
                    RunPart::Logs => {
                        list_tree(storage, APP_LOGS_BUCKET, &prefix, Some(OUTPUT_FOLDER)).await
                    }
                    RunPart::Outputs => {
                        list_tree(
                            storage,
                            APP_LOGS_BUCKET,
                            &format!("{prefix}{OUTPUT_FOLDER}/"),
                            None,
                        )
                        .await
                    }
                };
                let deleted = match keys {
                    Ok(keys) if self.dry_run => {
                        self.report.planned.push(Planned {
                            kind: part_name(part),
                            id: run.id.to_string(),
                            objects: keys.clone(),
                        });
                        Ok(keys.len() as u64)
                    }
                    Ok(keys) => self.delete(APP_LOGS_BUCKET, &keys).await,
                    Err(e) => Err(e),
                };
                match deleted {
                    Ok(n) => {
                        objects += n;
                        purged.push(run.id);
                    }
                    Err(e) => {
                        self.report.failures += 1;
                        tracing::warn!(run_id = %run.id, app_id = %run.app_id, part = part_name(part), error = %e, "retention: cannot delete a run's objects; keeping its rows, will retry next pass");
                    }
                }
            }
            let rows = if self.dry_run || purged.is_empty() {
                0
            } else {
                sql::mark_purged(pool, part, &purged).await?
            };
            let counts = match part {
                RunPart::Logs => &mut self.report.logs,
                RunPart::Outputs => &mut self.report.outputs,
            };
            counts.runs += purged.len() as u64;
            counts.objects += objects;
            counts.rows += rows;
            if !self.dry_run {
                match part {
                    RunPart::Logs => metrics::retention_deleted("log_objects", objects),
                    RunPart::Outputs => {
                        metrics::retention_deleted("output_objects", objects);
                        metrics::retention_deleted("output_rows", rows);
                    }
                }
            }
            if (due.len() as i64) < self.batch() {
                break;
            }
        }
        Ok(())
    }

    /// Non-current builds older than `age` that no active run uses: their archive and
    /// frontend assets (`app-storage`) and their log (`app-logs`), all under
    /// `app_{app}/builds/{build}/`, then their rows.
    pub async fn builds(&mut self, age: Duration) -> Result<(), RetentionError> {
        let pool = &self.retention.pool;
        let storage = self.retention.storage.as_ref();
        let mut cursor = None;
        while !self.stop.is_cancelled() {
            let page = sql::old_builds(pool, age, cursor, self.batch()).await?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.id);
            for build in &page {
                let prefix = build_prefix(build.app_id, build.id);
                let listed = async {
                    let archive = list_tree(storage, APP_STORAGE_BUCKET, &prefix, None).await?;
                    let logs = list_tree(storage, APP_LOGS_BUCKET, &prefix, None).await?;
                    Ok::<_, StorageError>((archive, logs))
                }
                .await;
                if self.dry_run {
                    let (archive, logs) = listed.unwrap_or_default();
                    self.report.builds += 1;
                    self.report.planned.push(Planned {
                        kind: "build",
                        id: build.id.to_string(),
                        objects: archive.into_iter().chain(logs).collect(),
                    });
                    continue;
                }
                let deleted = match listed {
                    Ok((archive, logs)) => match self.delete(APP_STORAGE_BUCKET, &archive).await {
                        Ok(n) => self.delete(APP_LOGS_BUCKET, &logs).await.map(|m| n + m),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                match deleted {
                    Ok(objects) => {
                        metrics::retention_deleted("build_objects", objects);
                        if sql::delete_old_build(pool, age, build.id).await? {
                            self.report.builds += 1;
                            metrics::retention_deleted("builds", 1);
                            tracing::debug!(build_id = %build.id, app_id = %build.app_id, version = %build.version, objects, "retention: deleted a build");
                        } else {
                            tracing::warn!(build_id = %build.id, app_id = %build.app_id, objects, "retention: a build became used while its objects were deleted; its row is kept, runs of it fail with missing_object");
                        }
                    }
                    Err(e) => {
                        self.report.failures += 1;
                        tracing::warn!(build_id = %build.id, app_id = %build.app_id, error = %e, "retention: cannot delete a build's objects; keeping its rows, will retry next pass");
                    }
                }
            }
            if (page.len() as i64) < self.batch() {
                break;
            }
        }
        Ok(())
    }

    /// Published versions older than `age` that nothing uses and that are not protected.
    pub async fn versions(&mut self, age: Duration) -> Result<(), RetentionError> {
        let pool = &self.retention.pool;
        let mut cursor: Option<(Uuid, String)> = None;
        while !self.stop.is_cancelled() {
            let stale = sql::stale_versions(pool, age, cursor.clone(), self.batch()).await?;
            let Some(last) = stale.last() else { break };
            cursor = Some(last.clone());
            let apps: Vec<Uuid> = stale
                .iter()
                .map(|(app, _)| *app)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let mut published: HashMap<Uuid, Vec<_>> = HashMap::new();
            for (app, version, at) in sql::published_versions(pool, &apps).await? {
                published.entry(app).or_default().push((version, at));
            }
            let protected: HashMap<Uuid, HashSet<String>> = published
                .iter()
                .map(|(app, versions)| (*app, protected_versions(versions)))
                .collect();
            for (app, version) in &stale {
                if protected
                    .get(app)
                    .is_some_and(|keep| keep.contains(version))
                {
                    continue;
                }
                self.version(*app, version).await?;
            }
            if (stale.len() as i64) < self.batch() {
                break;
            }
        }
        Ok(())
    }

    async fn version(&mut self, app: Uuid, version: &str) -> Result<(), RetentionError> {
        let pool = &self.retention.pool;
        let keys = sql::version_objects(pool, app, version).await?;
        if self.dry_run {
            self.report.versions.versions += 1;
            self.report.versions.objects += keys.len() as u64;
            self.report.planned.push(Planned {
                kind: "version",
                id: format!("app_{app}@{version}"),
                objects: keys,
            });
            return Ok(());
        }
        match self.delete(APP_STORAGE_BUCKET, &keys).await {
            Ok(objects) => {
                let rows = sql::delete_version_rows(pool, app, version).await?;
                if rows == 0 {
                    tracing::warn!(app_id = %app, version, objects, "retention: a version became used while its objects were deleted; its rows are kept, runs of it fail with missing_object until it is republished");
                }
                self.report.versions.versions += u64::from(rows > 0);
                self.report.versions.objects += objects;
                self.report.versions.rows += rows;
                metrics::retention_deleted("version_objects", objects);
                metrics::retention_deleted("version_rows", rows);
                tracing::debug!(%app, version, objects, rows, "retention: deleted a version");
            }
            Err(e) => {
                self.report.failures += 1;
                tracing::warn!(app_id = %app, version, error = %e, "retention: cannot delete a version's objects; keeping its rows, will retry next pass");
            }
        }
        Ok(())
    }

    /// Deletes `keys` in chunks of at most `batch_size`; returns how many existed.
    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<u64, StorageError> {
        let mut deleted = 0;
        for chunk in keys.chunks(self.retention.settings.batch_size.max(1)) {
            deleted += self
                .retention
                .storage
                .delete_many(bucket, chunk)
                .await?
                .len() as u64;
        }
        Ok(deleted)
    }
}

fn part_name(part: RunPart) -> &'static str {
    match part {
        RunPart::Logs => "logs",
        RunPart::Outputs => "outputs",
    }
}

/// Every object key under `prefix` (a folder, ending in `/`) in `bucket`, folders walked,
/// except the top-level folder `skip`. Sorted.
async fn list_tree(
    storage: &dyn Storage,
    bucket: &str,
    prefix: &str,
    skip: Option<&str>,
) -> Result<Vec<String>, StorageError> {
    let mut keys = Vec::new();
    let mut folders = vec![prefix.to_owned()];
    let mut examined = 0;
    while let Some(folder) = folders.pop() {
        for entry in storage.list(bucket, &folder).await? {
            examined += 1;
            if examined > MAX_OBJECTS_PER_RUN {
                break;
            }
            match entry {
                ListEntry::Object { name, .. } => keys.push(format!("{folder}{name}")),
                ListEntry::Folder { name } if folder == prefix && Some(name.as_str()) == skip => {}
                ListEntry::Folder { name } => folders.push(format!("{folder}{name}/")),
            }
        }
    }
    keys.sort();
    Ok(keys)
}
