//! SQL a build writes while it holds its lease: the archive and log it produced, and the
//! frontend assets it published. Every write is fenced on `(executor_id, attempt)` and
//! `build_status = 'building'`, like a run's; `false` means the build is no longer ours. The
//! queue statements (claim, lease, finish) are shared with runs in [`super::queue`].

use deadpool_postgres::Pool;

use super::queue::{client, query, QueueError};
use crate::model::ClaimedBuild;

/// What one attempt of a build leaves on its row, whatever its end.
pub struct BuildRecord<'a> {
    /// `(object key, sha256:<hex>, bytes)` of the uploaded archive; `None` when the build
    /// failed before uploading one.
    pub archive: Option<(&'a str, &'a str, u64)>,
    /// The end of the build's log (at most 64 KiB, the column's cap).
    pub build_logs: &'a str,
    /// Prefix of the whole log in `app-logs`.
    pub build_log_path: &'a str,
    /// Milliseconds by phase (`prepare`, `image`, `install`, `build`, `pack`, `upload`), kept in
    /// `metadata.phases_ms`.
    pub phases_ms: serde_json::Value,
}

/// Records the attempt's archive and log on the build. Fenced.
pub async fn record_build(
    pool: &Pool,
    build: &ClaimedBuild,
    executor_id: &str,
    record: &BuildRecord<'_>,
) -> Result<bool, QueueError> {
    let _timed = super::timed("record_build");
    let client = client(pool, "recording a build").await?;
    let (key, digest, size) = match record.archive {
        Some((key, digest, size)) => (Some(key), Some(digest), Some(size as i64)),
        None => (None, None, None),
    };
    let n = client
        .execute(
            "update public.app_builds
                set build_path = $4, artifact_digest = $5, archive_size = $6,
                    build_logs = $7, build_log_path = $8,
                    metadata = coalesce(metadata, '{}') || jsonb_build_object('phases_ms', $9::jsonb)
              where id = $1 and executor_id = $2 and attempt = $3 and build_status = 'building'",
            &[
                &build.id,
                &executor_id,
                &build.attempt,
                &key,
                &digest,
                &size,
                &record.build_logs,
                &record.build_log_path,
                &record.phases_ms,
            ],
        )
        .await
        .map_err(query("record a build's archive and log"))?;
    Ok(n == 1)
}

/// A frontend asset a build published.
pub struct DistFile {
    /// Object key in `app-storage` (`app_<appId>/builds/<buildId>/dist/...`).
    pub key: String,
    pub size: i64,
    pub checksum: String,
    pub mime: String,
}

/// Replaces the build's `dist` rows (an earlier attempt's included) with `files`, as rows of
/// the build's version marked with `metadata.build_id`. Fenced; one transaction.
pub async fn record_dist(
    pool: &Pool,
    build: &ClaimedBuild,
    executor_id: &str,
    files: &[DistFile],
) -> Result<bool, QueueError> {
    let _timed = super::timed("record_dist");
    let mut client = client(pool, "recording a build's frontend assets").await?;
    let tx = client
        .transaction()
        .await
        .map_err(query("begin recording frontend assets"))?;
    let held = tx
        .query_opt(
            "select 1 from public.app_builds
              where id = $1 and executor_id = $2 and attempt = $3 and build_status = 'building'
              for update",
            &[&build.id, &executor_id, &build.attempt],
        )
        .await
        .map_err(query("check a build's lease"))?;
    if held.is_none() {
        return Ok(false);
    }
    let build_id = build.id.to_string();
    tx.execute(
        "delete from public.app_storage where app_id = $1 and metadata->>'build_id' = $2",
        &[&build.app_id, &build_id],
    )
    .await
    .map_err(query("remove a build's earlier frontend assets"))?;
    let keys: Vec<&str> = files.iter().map(|f| f.key.as_str()).collect();
    let sizes: Vec<i64> = files.iter().map(|f| f.size).collect();
    let checksums: Vec<&str> = files.iter().map(|f| f.checksum.as_str()).collect();
    let mimes: Vec<&str> = files.iter().map(|f| f.mime.as_str()).collect();
    tx.execute(
        "insert into public.app_storage
           (app_id, version, file_path, file_type, file_size, checksum, mime_type, metadata)
         select $1, $2, f.key, 'dist', f.size, f.checksum, f.mime, jsonb_build_object('build_id', $3::text)
           from unnest($4::text[], $5::bigint[], $6::text[], $7::text[]) as f(key, size, checksum, mime)",
        &[&build.app_id, &build.version, &build_id, &keys, &sizes, &checksums, &mimes],
    )
    .await
    .map_err(query("record a build's frontend assets"))?;
    tx.commit()
        .await
        .map_err(query("commit a build's frontend assets"))?;
    Ok(true)
}

/// A build as the CLI shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildState {
    pub id: uuid::Uuid,
    pub app_id: uuid::Uuid,
    pub version: String,
    pub status: String,
    pub attempt: i32,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub duration_ms: Option<i64>,
    pub build_path: Option<String>,
    pub artifact_digest: Option<String>,
    pub archive_size: Option<i64>,
    pub build_log_path: Option<String>,
    pub is_current: bool,
}

impl BuildState {
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "success" | "failed" | "cancelled")
    }
}

/// Creates a pending build of `version` (which must be published) with `config` as its
/// `build_config`.
pub async fn insert_build(
    pool: &Pool,
    app: uuid::Uuid,
    version: &str,
    config: &serde_json::Value,
) -> Result<uuid::Uuid, QueueError> {
    let _timed = super::timed("insert_build");
    let client = client(pool, "creating a build").await?;
    let row = client
        .query_one(
            "insert into public.app_builds (app_id, build_version, build_config)
             values ($1, $2, $3) returning id",
            &[&app, &version, config],
        )
        .await
        .map_err(query("create a build"))?;
    Ok(row.get(0))
}

/// The build's current state, or `None` when there is no such build.
pub async fn build_state(pool: &Pool, build: uuid::Uuid) -> Result<Option<BuildState>, QueueError> {
    let _timed = super::timed("build_state");
    let client = client(pool, "reading a build").await?;
    let row = client
        .query_opt(
            "select id, app_id, build_version, build_status, attempt, error_kind, error_message,
                    duration_ms, build_path, artifact_digest, archive_size, build_log_path, is_current
               from public.app_builds where id = $1",
            &[&build],
        )
        .await
        .map_err(query("read a build"))?;
    Ok(row.map(|r| BuildState {
        id: r.get(0),
        app_id: r.get(1),
        version: r.get(2),
        status: r.get(3),
        attempt: r.get(4),
        error_kind: r.get(5),
        error_message: r.get(6),
        duration_ms: r.get(7),
        build_path: r.get(8),
        artifact_digest: r.get(9),
        archive_size: r.get(10),
        build_log_path: r.get(11),
        is_current: r.get(12),
    }))
}
