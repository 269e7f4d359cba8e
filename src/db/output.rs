//! SQL for what a run produced: the fenced transaction that records its `app_outputs` rows and
//! log/output pointers, and the lookup `app-executor logs` uses to find a run's logs.
//!
//! Recording is fenced like every write after the claim: it happens only while the run is
//! `running` under `(executor_id, attempt)`, in one transaction that first locks that row.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::queue::{client, query, QueueError};

/// One `app_outputs` row to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRow {
    /// `stdout` | `stderr` | `result` | `metric` | `file` | `error`.
    pub output_type: &'static str,
    pub output_name: Option<String>,
    pub output_data: Option<Value>,
    /// Object key in `app-logs` (files, compacted logs).
    pub output_path: Option<String>,
    pub file_size: Option<i64>,
    pub mime_type: Option<String>,
}

/// The pointers written on `app_runs` with the outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPointers<'a> {
    pub logs_path: Option<&'a str>,
    pub output_path: Option<&'a str>,
    /// Merged into `metadata` (`metadata || patch`), e.g. `{"logs_incomplete": true}`.
    pub metadata_patch: Value,
}

/// Replaces the run's outputs with `rows` and sets its pointers, in one transaction, only while
/// the run is `running` under `(executor_id, attempt)`. `false` (nothing written) when it is not.
///
/// Rows left by an earlier attempt that recorded but never finished are replaced: a run's
/// outputs are those of the attempt that finishes it.
pub async fn record_outputs(
    pool: &Pool,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
    rows: &[OutputRow],
    pointers: &RunPointers<'_>,
) -> Result<bool, QueueError> {
    let _timed = super::timed("record_outputs");
    let mut client = client(pool, "recording outputs").await?;
    let tx = client
        .transaction()
        .await
        .map_err(query("begin recording outputs"))?;
    if !lock_running_run(&tx, run_id, executor_id, attempt).await? {
        return Ok(false);
    }
    delete_run_outputs(&tx, run_id).await?;
    insert_run_outputs(&tx, run_id, rows).await?;
    set_run_pointers(&tx, run_id, pointers).await?;
    tx.commit().await.map_err(query("commit a run's outputs"))?;
    Ok(true)
}

/// Locks the run's row if it is still ours: running, or cancelled by a client while we held
/// it (its holder still completes its record: logs, outputs).
async fn lock_running_run(
    tx: &Transaction<'_>,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
) -> Result<bool, QueueError> {
    let row = tx
        .query_opt(
            "select 1 from public.app_runs
              where id = $1 and executor_id = $2 and attempt = $3 and status in ('running', 'cancelled')
              for update",
            &[&run_id, &executor_id, &attempt],
        )
        .await
        .map_err(query("lock a run to record its outputs"))?;
    Ok(row.is_some())
}

async fn delete_run_outputs(tx: &Transaction<'_>, run_id: Uuid) -> Result<u64, QueueError> {
    tx.execute(
        "delete from public.app_outputs where run_id = $1",
        &[&run_id],
    )
    .await
    .map_err(query("delete an earlier attempt's outputs"))
}

async fn insert_run_outputs(
    tx: &Transaction<'_>,
    run_id: Uuid,
    rows: &[OutputRow],
) -> Result<u64, QueueError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let types: Vec<&str> = rows.iter().map(|r| r.output_type).collect();
    let names: Vec<Option<&str>> = rows.iter().map(|r| r.output_name.as_deref()).collect();
    let data: Vec<Option<&Value>> = rows.iter().map(|r| r.output_data.as_ref()).collect();
    let paths: Vec<Option<&str>> = rows.iter().map(|r| r.output_path.as_deref()).collect();
    let sizes: Vec<Option<i64>> = rows.iter().map(|r| r.file_size).collect();
    let mimes: Vec<Option<&str>> = rows.iter().map(|r| r.mime_type.as_deref()).collect();
    tx.execute(
        "insert into public.app_outputs (run_id, output_type, output_name, output_data, output_path, file_size, mime_type)
         select $1, t, n, d, p, s, m
           from unnest($2::text[], $3::text[], $4::jsonb[], $5::text[], $6::int8[], $7::text[])
                with ordinality as u(t, n, d, p, s, m, i)
          order by i",
        &[&run_id, &types, &names, &data, &paths, &sizes, &mimes],
    )
    .await
    .map_err(query("insert a run's outputs"))
}

async fn set_run_pointers(
    tx: &Transaction<'_>,
    run_id: Uuid,
    pointers: &RunPointers<'_>,
) -> Result<u64, QueueError> {
    tx.execute(
        "update public.app_runs
            set logs_path = coalesce($2, logs_path), output_path = $3, metadata = metadata || $4::jsonb
          where id = $1",
        &[
            &run_id,
            &pointers.logs_path,
            &pointers.output_path,
            &pointers.metadata_patch,
        ],
    )
    .await
    .map_err(query("set a run's log and output paths"))
}

/// Whether the run is still ours under `(executor_id, attempt)` (running, or cancelled by a
/// client while we held it): checked before uploading outputs, so an attempt that lost its
/// lease uploads nothing.
pub async fn run_is_ours(
    pool: &Pool,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
) -> Result<bool, QueueError> {
    let _timed = super::timed("run_is_ours");
    let client = client(pool, "checking a run's lease").await?;
    let row = client
        .query_opt(
            "select 1 from public.app_runs
              where id = $1 and executor_id = $2 and attempt = $3 and status in ('running', 'cancelled')",
            &[&run_id, &executor_id, &attempt],
        )
        .await
        .map_err(query("check that a run is still ours"))?;
    Ok(row.is_some())
}

/// What `app-executor logs` needs to know about a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLogInfo {
    pub app_id: Uuid,
    pub status: String,
    pub attempt: i32,
    /// The current (or last) claim's start; with `attempt`, names its chunk folder.
    pub started_at: Option<DateTime<Utc>>,
    /// No more log output will come: finished, or cancelled and closed (or never started, or
    /// its daemon is gone).
    pub settled: bool,
    /// The id is an `app_builds` row's (its status mapped onto a run's: `building` is
    /// `running`); its logs live under the build's prefix.
    pub build: bool,
}

/// The log state of the run (or build) `run_id`, `None` when neither exists.
pub async fn run_log_info(pool: &Pool, run_id: Uuid) -> Result<Option<RunLogInfo>, QueueError> {
    let _timed = super::timed("run_log_info");
    let client = client(pool, "looking up a run").await?;
    let row = client
        .query_opt(
            "select app_id, status, attempt, started_at,
                    status in ('success', 'failed', 'timeout')
                    or (status = 'cancelled' and (completed_at is not null or lease_expires_at is null
                                                  or lease_expires_at < now())),
                    false
               from public.app_runs where id = $1
             union all
             select app_id, case build_status when 'building' then 'running' else build_status end,
                    attempt, started_at,
                    build_status in ('success', 'failed')
                    or (build_status = 'cancelled' and (completed_at is not null or lease_expires_at is null
                                                        or lease_expires_at < now())),
                    true
               from public.app_builds where id = $1",
            &[&run_id],
        )
        .await
        .map_err(query("look up a run's logs"))?;
    Ok(row.map(|r| RunLogInfo {
        app_id: r.get(0),
        status: r.get(1),
        attempt: r.get(2),
        started_at: r.get(3),
        settled: r.get(4),
        build: r.get(5),
    }))
}
