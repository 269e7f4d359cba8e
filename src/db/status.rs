//! What `app-executor status` shows, read in one snapshot: the executors, the queue by company,
//! the runs in flight and the last hour's failures. Read-only.

use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use super::queue::{client, query, QueueError};

#[derive(Debug, Clone, Serialize)]
pub struct ExecutorRow {
    pub id: String,
    pub host: String,
    pub version: String,
    pub state: String,
    pub capacity: i32,
    pub running: i32,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompanyQueue {
    pub company_id: Uuid,
    pub pending: i64,
    /// Seconds the oldest claimable pending run has waited (since its `run_after`).
    pub oldest_wait_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunningRun {
    pub run_id: Uuid,
    pub app_id: Uuid,
    pub company_id: Uuid,
    pub executor_id: Option<String>,
    pub attempt: i32,
    pub run_type: String,
    /// Seconds since it was claimed.
    pub age_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureCount {
    pub status: String,
    pub error_kind: Option<String>,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub at: chrono::DateTime<chrono::Utc>,
    pub executors: Vec<ExecutorRow>,
    pub queue: Vec<CompanyQueue>,
    pub running: Vec<RunningRun>,
    /// Runs that ended `failed` or `timeout` in the last hour, by `error_kind`.
    pub failures_last_hour: Vec<FailureCount>,
}

/// Everything at once, in one read-only transaction (one snapshot).
pub async fn snapshot(pool: &Pool) -> Result<Snapshot, QueueError> {
    let _timed = super::timed("snapshot");
    let mut client = client(pool, "reading the status").await?;
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(query("begin the status snapshot"))?;
    let at: chrono::DateTime<chrono::Utc> = tx
        .query_one("select now()", &[])
        .await
        .map_err(query("read the time"))?
        .get(0);
    let executors = tx
        .query(
            "select id, host, version, state, capacity, running,
                    extract(epoch from now() - heartbeat_at)::float8
               from public.app_executors where state <> 'stopped' order by host, id",
            &[],
        )
        .await
        .map_err(query("read the executors"))?
        .iter()
        .map(|r| ExecutorRow {
            id: r.get(0),
            host: r.get(1),
            version: r.get(2),
            state: r.get(3),
            capacity: r.get(4),
            running: r.get(5),
            heartbeat_age_s: r.get(6),
        })
        .collect();
    let queue = tx
        .query(
            "select company_id, count(*),
                    coalesce(extract(epoch from now() - min(run_after) filter (where run_after <= now())), 0)::float8
               from public.app_runs where status = 'pending'
              group by company_id order by count(*) desc, company_id",
            &[],
        )
        .await
        .map_err(query("read the queue"))?
        .iter()
        .map(|r| CompanyQueue {
            company_id: r.get(0),
            pending: r.get(1),
            oldest_wait_s: r.get::<_, f64>(2).max(0.0),
        })
        .collect();
    let running = tx
        .query(
            "select id, app_id, company_id, executor_id, attempt, run_type,
                    extract(epoch from now() - started_at)::float8
               from public.app_runs where status = 'running' order by started_at",
            &[],
        )
        .await
        .map_err(query("read the running runs"))?
        .iter()
        .map(|r| RunningRun {
            run_id: r.get(0),
            app_id: r.get(1),
            company_id: r.get(2),
            executor_id: r.get(3),
            attempt: r.get(4),
            run_type: r.get(5),
            age_s: r.get::<_, Option<f64>>(6).unwrap_or(0.0),
        })
        .collect();
    let failures_last_hour = tx
        .query(
            "select status, error_kind, count(*) from public.app_runs
              where status in ('failed', 'timeout') and completed_at > now() - interval '1 hour'
              group by status, error_kind order by count(*) desc, error_kind",
            &[],
        )
        .await
        .map_err(query("read the last hour's failures"))?
        .iter()
        .map(|r| FailureCount {
            status: r.get(0),
            error_kind: r.get(1),
            count: r.get(2),
        })
        .collect();
    tx.commit()
        .await
        .map_err(query("end the status snapshot"))?;
    Ok(Snapshot {
        at,
        executors,
        queue,
        running,
        failures_last_hour,
    })
}

/// Where [`stored_per_bucket`] counts what the buckets hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredSource {
    /// `storage.objects`, the Storage server's own table (the Supabase backend: the database
    /// is the project's). Exact, whoever uploaded the objects.
    StorageObjects,
    /// What our tables record (the local backend, whose objects are files): `app_storage`
    /// sizes and build archives in `app-storage`, `app_outputs` objects (logs, files) in
    /// `app-logs`. Objects nothing records (a live log's chunks) are not seen.
    Records,
}

/// What one bucket holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stored {
    pub bucket: String,
    pub bytes: i64,
    pub objects: i64,
}

/// Bytes and objects per bucket of ours (`app-storage`, `app-logs`), both always listed.
pub async fn stored_per_bucket(
    pool: &Pool,
    source: StoredSource,
) -> Result<Vec<Stored>, QueueError> {
    let _timed = super::timed("stored_per_bucket");
    let client = client(pool, "counting stored bytes").await?;
    let sql = match source {
        StoredSource::StorageObjects => {
            "select b.bucket, coalesce(sum((o.metadata ->> 'size')::bigint), 0)::int8, count(o.id)
               from unnest(array['app-storage', 'app-logs']) as b(bucket)
               left join storage.objects o on o.bucket_id = b.bucket
              group by b.bucket order by b.bucket"
        }
        StoredSource::Records => {
            "select 'app-logs', coalesce(sum(file_size), 0)::int8, count(*)
               from public.app_outputs where output_path is not null
             union all
             select 'app-storage',
                    (select coalesce(sum(file_size), 0) from public.app_storage)::int8
                      + (select coalesce(sum(archive_size), 0) from public.app_builds where build_path is not null)::int8,
                    (select count(*) from public.app_storage)
                      + (select count(*) from public.app_builds where build_path is not null)"
        }
    };
    let rows = client
        .query(sql, &[])
        .await
        .map_err(query("count the bytes stored per bucket"))?;
    Ok(rows
        .iter()
        .map(|r| Stored {
            bucket: r.get(0),
            bytes: r.get(1),
            objects: r.get(2),
        })
        .collect())
}
