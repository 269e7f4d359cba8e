//! SQL for an app's published files: which versions exist, the files of one version, what the
//! platform granted the app, and recording the digest of the file set a run used.

use deadpool_postgres::Pool;
use tokio_postgres::Client;
use uuid::Uuid;

use super::queue::QueueError;

/// One `app_storage` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFile {
    /// Path relative to the app root, e.g. `src/index.js`.
    pub file_path: String,
    /// Object key in the `app-storage` bucket.
    pub storage_path: String,
    pub file_type: String,
    pub file_size: i64,
    /// `sha256:<64 hex>` as stored (validated again by the caller).
    pub checksum: String,
}

fn query(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> QueueError {
    move |source| QueueError::Query { action, source }
}

/// The app and version of a build.
pub async fn build_version(
    client: &Client,
    build_id: Uuid,
) -> Result<Option<(Uuid, String)>, QueueError> {
    let row = client
        .query_opt(
            "select app_id, version from public.app_builds where id = $1",
            &[&build_id],
        )
        .await
        .map_err(query("read a build's version"))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Every version with at least one file.
pub async fn app_versions(client: &Client, app_id: Uuid) -> Result<Vec<String>, QueueError> {
    let rows = client
        .query(
            "select distinct version from public.app_storage where app_id = $1",
            &[&app_id],
        )
        .await
        .map_err(query("list an app's versions"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The files of one version, ordered by path.
pub async fn app_files(
    client: &Client,
    app_id: Uuid,
    version: &str,
) -> Result<Vec<AppFile>, QueueError> {
    let rows = client
        .query(
            "select file_path, storage_path, file_type, file_size, checksum
               from public.app_storage where app_id = $1 and version = $2 order by file_path",
            &[&app_id, &version],
        )
        .await
        .map_err(query("list a version's files"))?;
    Ok(rows
        .iter()
        .map(|r| AppFile {
            file_path: r.get(0),
            storage_path: r.get(1),
            file_type: r.get(2),
            file_size: r.get(3),
            checksum: r.get(4),
        })
        .collect())
}

/// `(permission_type, scope)` rows the platform granted the app.
pub async fn granted_permissions(
    client: &Client,
    app_id: Uuid,
) -> Result<Vec<(String, String)>, QueueError> {
    let rows = client
        .query(
            "select permission_type, scope from public.app_permissions where app_id = $1 order by 1, 2",
            &[&app_id],
        )
        .await
        .map_err(query("read an app's permissions"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Records the digest of the verified file set on a run we hold. Fenced; `false` when the run
/// is no longer ours.
pub async fn record_artifact_digest(
    pool: &Pool,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
    digest: &str,
) -> Result<bool, QueueError> {
    let client = pool.get().await.map_err(|source| QueueError::Pool {
        action: "recording an artifact digest",
        source,
    })?;
    let n = client
        .execute(
            "update public.app_runs set artifact_digest = $4
              where id = $1 and executor_id = $2 and attempt = $3 and status = 'running'",
            &[&run_id, &executor_id, &attempt, &digest],
        )
        .await
        .map_err(query("record a run's artifact digest"))?;
    Ok(n == 1)
}
