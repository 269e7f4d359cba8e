//! Recording what a run produced: the collected files uploaded under
//! `app_{appId}/runs/{runId}/output/`, then every `app_outputs` row and the run's pointers in
//! one transaction fenced on the claim (see `db::output`). An attempt that lost its lease
//! uploads nothing and writes nothing.
//!
//! Rows: `stdout`/`stderr` (compacted object, size, dropped bytes), `result`, a `metric` per
//! `metrics.json` number and per daemon metric (`duration_ms`, `peak_memory_bytes`,
//! `exit_code`), a `file` per uploaded file, an `error` named after the run's `error_kind`
//! when it failed, and an `error` named `invalid_output` per [`OutputProblem`].
//!
//! A retried run's outputs are those of the attempt that finishes it: its rows replace any an
//! earlier attempt recorded, and (from attempt 2 on) objects an earlier attempt left under
//! `output/` that this one did not upload are deleted.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::collect::file_path;
use super::{Collected, OutputError, OutputFile, OutputProblem};
use crate::db::output::{record_outputs, run_is_ours, OutputRow, RunPointers};
use crate::logs::{layout, LogSummary, StreamSummary};
use crate::model::ClaimedRun;
use crate::storage::{ListEntry, Storage, UploadBody, APP_LOGS_BUCKET};

/// Files uploaded at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// What the daemon measured itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonMetrics {
    pub duration_ms: Option<i64>,
    pub peak_memory_bytes: Option<u64>,
    pub exit_code: Option<i32>,
    /// Processes the kernel killed for the memory limit (recorded as `metadata.oom_kills`).
    pub oom_kills: u64,
    /// CPU time of the app's container, from its cgroup.
    pub cpu_ms: Option<u64>,
    /// Bytes of the app's files downloaded from storage for this attempt (cache misses).
    pub downloaded_bytes: u64,
}

/// Why a run failed, as stored in `app_runs.error_kind` / `error_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFailure {
    pub kind: String,
    pub message: String,
}

/// Everything to record for one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunRecord<'a> {
    /// `None` when the app never ran (nothing to read back).
    pub collected: Option<&'a Collected>,
    pub metrics: DaemonMetrics,
    /// `None` when no log was started.
    pub logs: Option<&'a LogSummary>,
    pub failure: Option<&'a RunFailure>,
}

/// What [`record`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The run was still ours: the rows and pointers are written. When false nothing was
    /// uploaded or written (or the upload happened but no row points at it).
    pub fence_held: bool,
    pub files_uploaded: usize,
    /// Files that could not be uploaded (recorded as `upload_failed` problems).
    pub upload_failures: usize,
    pub rows: usize,
}

/// Uploads the collected files and records the run's outputs, fenced on
/// `(run.id, executor_id, run.attempt, status in ('running', 'cancelled'))`. Call it before writing the
/// terminal status.
pub async fn record(
    pool: &deadpool_postgres::Pool,
    storage: &dyn Storage,
    run: &ClaimedRun,
    executor_id: &str,
    what: &RunRecord<'_>,
) -> Result<Recorded, OutputError> {
    let db_error = |source| OutputError::Record {
        run_id: run.id,
        source,
    };
    if !run_is_ours(pool, run.id, executor_id, run.attempt)
        .await
        .map_err(db_error)?
    {
        return Ok(Recorded::default());
    }
    let prefix = layout::output_prefix(run.app_id, run.id);
    let mut uploaded = Vec::new();
    let mut failed = Vec::new();
    if let Some(collected) = what.collected {
        let prefix = prefix.as_str();
        // By index, not by reference: a stream of futures borrowing the items is not `Send`
        // under every lifetime, which the daemon's boxed execution future requires.
        let results: Vec<(usize, Result<(), String>)> =
            futures_util::stream::iter(0..collected.files.len())
                .map(|i| async move {
                    let result = upload_file(storage, collected, &collected.files[i], prefix).await;
                    (i, result)
                })
                .buffered(UPLOAD_CONCURRENCY)
                .collect()
                .await;
        for (i, result) in results {
            let file = &collected.files[i];
            match result {
                Ok(()) => uploaded.push(file),
                Err(message) => failed.push(OutputProblem {
                    path: file.relative.clone(),
                    reason: "upload_failed",
                    message,
                }),
            }
        }
    }
    if run.attempt > 1 {
        let keep: Vec<String> = uploaded
            .iter()
            .map(|f| format!("{prefix}{}", f.relative))
            .collect();
        sweep_earlier_outputs(storage, run, &prefix, &keep).await;
    }
    let rows = rows(run, what, &prefix, &uploaded, &failed);
    let logs_incomplete = what.logs.is_some_and(|l| !l.durable);
    let pointers = RunPointers {
        logs_path: what.logs.map(|l| l.logs_path.as_str()),
        output_path: (!uploaded.is_empty()).then_some(prefix.as_str()),
        metadata_patch: {
            let mut patch = serde_json::Map::new();
            if logs_incomplete {
                patch.insert("logs_incomplete".into(), json!(true));
            }
            if what.metrics.oom_kills > 0 {
                patch.insert("oom_kills".into(), json!(what.metrics.oom_kills));
            }
            if let Some(usage) = usage(what, &uploaded) {
                patch.insert("usage".into(), usage);
            }
            Value::Object(patch)
        },
    };
    let fence_held = record_outputs(pool, run.id, executor_id, run.attempt, &rows, &pointers)
        .await
        .map_err(db_error)?;
    if !fence_held {
        tracing::warn!(run_id = %run.id, attempt = run.attempt, "the run was no longer ours when its outputs were recorded; nothing was written");
    }
    Ok(Recorded {
        fence_held,
        files_uploaded: uploaded.len(),
        upload_failures: failed.len(),
        rows: if fence_held { rows.len() } else { 0 },
    })
}

/// `metadata.usage`: what the attempt that ends the run used, which the database adds to the
/// company's `app_usage_daily` row when the run ends. `None` when the app never ran.
fn usage(what: &RunRecord<'_>, uploaded: &[&OutputFile]) -> Option<Value> {
    let logs = what.logs?;
    let m = &what.metrics;
    Some(json!({
        "cpu_ms": m.cpu_ms,
        "peak_memory_bytes": m.peak_memory_bytes,
        "downloaded_bytes": m.downloaded_bytes,
        "log_bytes": logs.stdout.received_bytes + logs.stderr.received_bytes,
        "output_bytes": uploaded.iter().map(|f| f.size).sum::<u64>(),
    }))
}

/// Objects examined at most when sweeping an earlier attempt's outputs.
const SWEEP_LIMIT: usize = 10_000;

/// Deletes objects under the output prefix that this attempt did not upload: files an earlier
/// attempt uploaded before it lost its claim. Best effort: the rows name exactly this attempt's
/// files whether or not the sweep succeeds.
async fn sweep_earlier_outputs(
    storage: &dyn Storage,
    run: &ClaimedRun,
    prefix: &str,
    keep: &[String],
) {
    let mut stale = Vec::new();
    let mut folders = vec![prefix.to_owned()];
    let mut examined = 0;
    while let Some(folder) = folders.pop() {
        let entries = match storage.list(APP_LOGS_BUCKET, &folder).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "cannot list an earlier attempt's outputs; they stay");
                return;
            }
        };
        for entry in entries {
            examined += 1;
            if examined > SWEEP_LIMIT {
                break;
            }
            match entry {
                ListEntry::Folder { name } => folders.push(format!("{folder}{name}/")),
                ListEntry::Object { name, .. } => {
                    let key = format!("{folder}{name}");
                    if !keep.contains(&key) {
                        stale.push(key);
                    }
                }
            }
        }
    }
    if stale.is_empty() {
        return;
    }
    match storage.delete_many(APP_LOGS_BUCKET, &stale).await {
        Ok(deleted) => {
            tracing::info!(run_id = %run.id, attempt = run.attempt, deleted = deleted.len(), "removed outputs an earlier attempt left");
        }
        Err(e) => {
            tracing::warn!(run_id = %run.id, error = %e, "cannot remove outputs an earlier attempt left; they stay");
        }
    }
}

/// Uploads one file (streamed from disk), after checking it is still the regular file listed.
async fn upload_file(
    storage: &dyn Storage,
    collected: &Collected,
    file: &OutputFile,
    prefix: &str,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let path = file_path(&collected.root, file);
    let same = match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) => meta.is_file() && meta.dev() == file.dev && meta.ino() == file.ino,
        Err(_) => false,
    };
    if !same {
        return Err(format!(
            "{} changed since the outputs were read; not uploaded",
            file.relative
        ));
    }
    let key = format!("{prefix}{}", file.relative);
    storage
        .upload(
            APP_LOGS_BUCKET,
            &key,
            UploadBody::File(path),
            file.mime_type,
            true,
        )
        .await
        .map_err(|e| format!("{} could not be uploaded: {e}", file.relative))
}

fn rows(
    run: &ClaimedRun,
    what: &RunRecord<'_>,
    prefix: &str,
    uploaded: &[&OutputFile],
    failed: &[OutputProblem],
) -> Vec<OutputRow> {
    let mut rows = Vec::new();
    if let Some(logs) = what.logs {
        for stream in [&logs.stdout, &logs.stderr] {
            rows.push(log_row(stream, logs.compacted));
        }
    }
    let collected = what.collected;
    if let Some(result) = collected.and_then(|c| c.result.as_ref()) {
        rows.push(OutputRow {
            output_name: Some("result".into()),
            output_data: Some(result.clone()),
            ..row_of("result")
        });
    }
    for (name, number) in collected.map(|c| c.metrics.as_slice()).unwrap_or_default() {
        rows.push(metric(name, Value::Number(number.clone())));
    }
    let daemon = what.metrics;
    for (name, value) in [
        ("duration_ms", daemon.duration_ms.map(Value::from)),
        (
            "peak_memory_bytes",
            daemon.peak_memory_bytes.map(Value::from),
        ),
        ("exit_code", daemon.exit_code.map(Value::from)),
    ] {
        if let Some(value) = value {
            rows.push(metric(name, value));
        }
    }
    for file in uploaded {
        rows.push(OutputRow {
            output_name: Some(file.relative.clone()),
            output_path: Some(format!("{prefix}{}", file.relative)),
            file_size: Some(i64::try_from(file.size).unwrap_or(i64::MAX)),
            mime_type: Some(file.mime_type.to_owned()),
            ..row_of("file")
        });
    }
    if let Some(failure) = what.failure {
        rows.push(OutputRow {
            output_name: Some(failure.kind.clone()),
            output_data: Some(json!({"kind": failure.kind, "message": failure.message})),
            ..row_of("error")
        });
    }
    let problems = collected.map(|c| c.problems.as_slice()).unwrap_or_default();
    for problem in problems.iter().chain(failed) {
        rows.push(OutputRow {
            output_name: Some("invalid_output".into()),
            output_data: Some(json!({
                "path": problem.path,
                "reason": problem.reason,
                "message": problem.message,
            })),
            ..row_of("error")
        });
    }
    let omitted = collected.map_or(0, |c| c.problems_omitted);
    if omitted > 0 {
        rows.push(OutputRow {
            output_name: Some("invalid_output".into()),
            output_data: Some(json!({
                "path": "",
                "reason": "more_problems",
                "message": format!("{omitted} more output problems of run {} are not listed", run.id),
            })),
            ..row_of("error")
        });
    }
    rows
}

fn row_of(output_type: &'static str) -> OutputRow {
    OutputRow {
        output_type,
        output_name: None,
        output_data: None,
        output_path: None,
        file_size: None,
        mime_type: None,
    }
}

fn metric(name: &str, value: Value) -> OutputRow {
    OutputRow {
        output_name: Some(name.to_owned()),
        output_data: Some(value),
        ..row_of("metric")
    }
}

fn log_row(stream: &StreamSummary, compacted: bool) -> OutputRow {
    OutputRow {
        output_name: Some(stream.stream.as_str().to_owned()),
        output_data: Some(json!({
            "received_bytes": stream.received_bytes,
            "dropped_bytes": stream.dropped_bytes,
            "complete": compacted,
        })),
        output_path: compacted.then(|| stream.key.clone()),
        file_size: Some(i64::try_from(stream.stored_bytes).unwrap_or(i64::MAX)),
        mime_type: Some("text/plain".into()),
        ..row_of(stream.stream.as_str())
    }
}
/// Records the run's outputs (fenced); retried a few times on database trouble, then left
/// (the status write that follows retries on its own and settles who owns the run).
pub async fn record_retrying(
    pool: &deadpool_postgres::Pool,
    storage: &dyn Storage,
    run: &ClaimedRun,
    executor_id: &str,
    what: &RunRecord<'_>,
) {
    for attempt in 1..=5u32 {
        match record(pool, storage, run, executor_id, what).await {
            Ok(recorded) if recorded.fence_held => return,
            Ok(_) => {
                tracing::warn!(run_id = %run.id, "outputs not recorded: the run is no longer ours");
                return;
            }
            Err(e) if e.is_retryable() && attempt < 5 => {
                tracing::warn!(run_id = %run.id, error = %e, "recording outputs failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            }
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "could not record the run's outputs");
                return;
            }
        }
    }
}
