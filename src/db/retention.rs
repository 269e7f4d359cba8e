//! The retention policy's statements: which finished runs' logs and outputs, which builds and
//! which app versions are old enough to go, deleting their rows, and the advisory lock that
//! keeps the work to one daemon at a time.
//!
//! Selections page by a keyset cursor (never `offset`), so a dry run can list everything and a
//! run whose objects could not be deleted does not block the ones after it. Row deletions
//! re-check their conditions, so a row that became needed since it was selected is kept.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Client;
use uuid::Uuid;

use super::queue::{client, query, QueueError};

type Result<T, E = QueueError> = std::result::Result<T, E>;

/// Key of the session-level advisory lock a retention pass holds.
const RETENTION_LOCK_KEY: &str = "app_exec.retention";

fn seconds(age: Duration) -> f64 {
    age.as_secs_f64()
}

/// Takes the retention lock on `session` if no other session holds it. Held until unlocked or
/// the session ends, so a daemon that dies mid-pass frees it.
pub async fn try_lock(session: &Client) -> Result<bool> {
    let _timed = super::timed("try_lock");
    let row = session
        .query_one(
            "select pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&RETENTION_LOCK_KEY],
        )
        .await
        .map_err(query("take the retention lock"))?;
    Ok(row.get(0))
}

/// Releases the lock [`try_lock`] took on `session`.
pub async fn unlock(session: &Client) -> Result<()> {
    let _timed = super::timed("unlock");
    session
        .execute(
            "select pg_advisory_unlock(hashtextextended($1, 0))",
            &[&RETENTION_LOCK_KEY],
        )
        .await
        .map_err(query("release the retention lock"))?;
    Ok(())
}

/// What of a finished run is purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPart {
    /// Objects under the run's prefix other than `output/`; `stdout`/`stderr` rows.
    Logs,
    /// Objects under `output/`; every other `app_outputs` row.
    Outputs,
}

/// A finished run whose logs or outputs are due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRun {
    pub id: Uuid,
    pub app_id: Uuid,
    pub completed_at: DateTime<Utc>,
}

/// Up to `limit` terminal runs completed more than `age` ago whose `part` was not purged yet,
/// oldest first, after `cursor` (`(completed_at, id)` of the last run of the previous page).
pub async fn due_runs(
    pool: &Pool,
    part: RunPart,
    age: Duration,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<DueRun>> {
    let _timed = super::timed("due_runs");
    let client = client(pool, "selecting runs for retention").await?;
    let statement = match part {
        RunPart::Logs => {
            "select id, app_id, completed_at from public.app_runs
              where logs_purged_at is null and completed_at is not null
                and status in ('success', 'failed', 'timeout', 'cancelled')
                and completed_at < now() - make_interval(secs => $1)
                and ($2::timestamptz is null or (completed_at, id) > ($2, $3))
              order by completed_at, id
              limit $4"
        }
        RunPart::Outputs => {
            "select id, app_id, completed_at from public.app_runs
              where outputs_purged_at is null and completed_at is not null
                and status in ('success', 'failed', 'timeout', 'cancelled')
                and completed_at < now() - make_interval(secs => $1)
                and ($2::timestamptz is null or (completed_at, id) > ($2, $3))
              order by completed_at, id
              limit $4"
        }
    };
    let (after, after_id) = cursor.unzip();
    let rows = client
        .query(statement, &[&seconds(age), &after, &after_id, &limit])
        .await
        .map_err(query("select runs whose logs or outputs are due"))?;
    Ok(rows
        .iter()
        .map(|r| DueRun {
            id: r.get(0),
            app_id: r.get(1),
            completed_at: r.get(2),
        })
        .collect())
}

/// Deletes the `part` rows of `runs` from `app_outputs`, clears the matching pointer
/// (`logs_path` / `output_path`) and stamps `*_purged_at`, in one transaction. Returns the
/// `app_outputs` rows deleted.
pub async fn mark_purged(pool: &Pool, part: RunPart, runs: &[Uuid]) -> Result<u64> {
    let _timed = super::timed("mark_purged");
    let mut client = client(pool, "recording a retention purge").await?;
    let tx = client
        .transaction()
        .await
        .map_err(query("begin recording a retention purge"))?;
    let (delete, stamp) = match part {
        RunPart::Logs => (
            "delete from public.app_outputs
              where run_id = any($1) and output_type in ('stdout', 'stderr')",
            "update public.app_runs set logs_purged_at = now(), logs_path = null
              where id = any($1) and logs_purged_at is null",
        ),
        RunPart::Outputs => (
            "delete from public.app_outputs
              where run_id = any($1) and output_type not in ('stdout', 'stderr')",
            "update public.app_runs set outputs_purged_at = now(), output_path = null
              where id = any($1) and outputs_purged_at is null",
        ),
    };
    let deleted = tx
        .execute(delete, &[&runs])
        .await
        .map_err(query("delete purged runs' app_outputs rows"))?;
    tx.execute(stamp, &[&runs])
        .await
        .map_err(query("stamp runs as purged"))?;
    tx.commit()
        .await
        .map_err(query("commit a retention purge"))?;
    Ok(deleted)
}

/// A build retention may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldBuild {
    pub id: Uuid,
    pub app_id: Uuid,
    pub version: String,
}

/// Non-current builds in a final state (`success`, `failed`, `cancelled`) finished (or, without
/// a completion time, created) more than `age` ago, that no pending or running run uses.
const OLD_BUILDS: &str = "
    select b.id, b.app_id, b.build_version, coalesce(b.completed_at, b.created_at) as ended
      from public.app_builds b
     where not b.is_current and b.build_status in ('success', 'failed', 'cancelled')
       and coalesce(b.completed_at, b.created_at) < now() - make_interval(secs => $1)
       and not exists (select 1 from public.app_runs r
                        where r.build_id = b.id and r.status in ('pending', 'running'))";

/// A page of the builds retention deletes (oldest id first after `cursor`).
pub async fn old_builds(
    pool: &Pool,
    age: Duration,
    cursor: Option<Uuid>,
    limit: i64,
) -> Result<Vec<OldBuild>> {
    let _timed = super::timed("old_builds");
    let client = client(pool, "selecting old builds").await?;
    let rows = client
        .query(
            &format!("{OLD_BUILDS} and ($2::uuid is null or b.id > $2) order by b.id limit $3"),
            &[&seconds(age), &cursor, &limit],
        )
        .await
        .map_err(query("select old builds"))?;
    Ok(rows.iter().map(old_build).collect())
}

/// Deletes the build's row and the `dist` rows it published, once its objects are gone, if it
/// is still old and unused (see [`old_builds`]); a row locked by a concurrent writer (a run
/// being inserted with that build) is skipped. Runs that used the build keep their history
/// with `build_id` set to null (the foreign key's rule). Returns whether the build was deleted.
pub async fn delete_old_build(pool: &Pool, age: Duration, build: Uuid) -> Result<bool> {
    let _timed = super::timed("delete_old_build");
    let client = client(pool, "deleting an old build").await?;
    let rows = client
        .query(
            &format!(
                "with doomed as ({OLD_BUILDS} and b.id = $2 for update of b skip locked),
                      dist as (delete from public.app_storage s using doomed d
                                where s.app_id = d.app_id and s.file_type = 'dist'
                                  and s.metadata->>'build_id' = d.id::text)
                 delete from public.app_builds b using doomed d where b.id = d.id
                 returning b.id"
            ),
            &[&seconds(age), &build],
        )
        .await
        .map_err(query("delete an old build"))?;
    Ok(!rows.is_empty())
}

fn old_build(row: &tokio_postgres::Row) -> OldBuild {
    OldBuild {
        id: row.get(0),
        app_id: row.get(1),
        version: row.get(2),
    }
}

/// No build names the version of `s` (a `public.app_storage` row), and no pending or running
/// run asks for it by `metadata.version`. (Runs naming a build are covered: a build a pending
/// or running run uses is never deleted.)
const UNUSED_VERSION: &str = "
    not exists (select 1 from public.app_builds b where b.app_id = s.app_id and b.build_version = s.version)
    and not exists (select 1 from public.app_runs r
                     where r.app_id = s.app_id and r.status in ('pending', 'running')
                       and r.metadata->>'version' = s.version)";

/// A page of published versions (app, version) that are old and unused (see [`UNUSED_VERSION`]),
/// after `cursor`, ordered by app and version. Whether a version is protected (the app's highest
/// or newest) is decided by the caller.
pub async fn stale_versions(
    pool: &Pool,
    age: Duration,
    cursor: Option<(Uuid, String)>,
    limit: i64,
) -> Result<Vec<(Uuid, String)>> {
    let _timed = super::timed("stale_versions");
    let client = client(pool, "selecting old versions").await?;
    let (after_app, after_version) = cursor.unzip();
    let rows = client
        .query(
            &format!(
                "select s.app_id, s.version from public.app_storage s
                  where ($2::uuid is null or (s.app_id, s.version) > ($2, $3::text))
                  group by s.app_id, s.version
                 having max(greatest(s.created_at, s.updated_at)) < now() - make_interval(secs => $1)
                    and {UNUSED_VERSION}
                  order by s.app_id, s.version
                  limit $4"
            ),
            &[&seconds(age), &after_app, &after_version, &limit],
        )
        .await
        .map_err(query("select old versions"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every published version of each app in `apps`, with when its newest file was published.
pub async fn published_versions(
    pool: &Pool,
    apps: &[Uuid],
) -> Result<Vec<(Uuid, String, DateTime<Utc>)>> {
    let _timed = super::timed("published_versions");
    let client = client(pool, "listing published versions").await?;
    let rows = client
        .query(
            "select app_id, version, max(greatest(created_at, updated_at))
               from public.app_storage where app_id = any($1)
              group by app_id, version",
            &[&apps],
        )
        .await
        .map_err(query("list published versions"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The `app-storage` keys of a version's files that lie in the app's own folder (`app_{app}/`)
/// and that no other version's rows name.
pub async fn version_objects(pool: &Pool, app: Uuid, version: &str) -> Result<Vec<String>> {
    let _timed = super::timed("version_objects");
    let client = client(pool, "listing a version's objects").await?;
    let rows = client
        .query(
            "select distinct s.file_path from public.app_storage s
              where s.app_id = $1 and s.version = $2
                and starts_with(s.file_path, 'app_' || $1::text || '/')
                and not exists (select 1 from public.app_storage o
                                 where o.file_path = s.file_path
                                   and (o.app_id <> $1 or o.version <> $2))
              order by 1",
            &[&app, &version],
        )
        .await
        .map_err(query("list a version's objects"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Deletes a version's `app_storage` rows unless it became used since it was selected (see
/// [`UNUSED_VERSION`]). Returns the rows deleted.
pub async fn delete_version_rows(pool: &Pool, app: Uuid, version: &str) -> Result<u64> {
    let _timed = super::timed("delete_version_rows");
    let client = client(pool, "deleting a version's files").await?;
    client
        .execute(
            &format!(
                "delete from public.app_storage s where s.app_id = $1 and s.version = $2 and {UNUSED_VERSION}"
            ),
            &[&app, &version],
        )
        .await
        .map_err(query("delete a version's app_storage rows"))
}
