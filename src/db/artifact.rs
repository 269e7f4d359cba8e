//! SQL for an app's published files: which versions exist, the files of one version, what the
//! platform granted the app, and recording the digest of the file set a run used.

use deadpool_postgres::Pool;
use tokio_postgres::Client;
use uuid::Uuid;

use super::queue::QueueError;

/// One `app_storage` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFile {
    /// Object key in the `app-storage` bucket, e.g. `app_<id>/1.0.0/src/index.js` (see
    /// `artifact::object_key` for the path it gets inside the app).
    pub file_path: String,
    pub file_type: String,
    pub file_size: i64,
    /// `sha256:<64 hex>` as stored (validated again by the caller).
    pub checksum: String,
}

fn query(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> QueueError {
    move |source| QueueError::Query { action, source }
}

/// An `app_builds` row as a run sees it.
#[derive(Debug, Clone)]
pub struct BuildRow {
    pub id: Uuid,
    pub app_id: Uuid,
    pub version: String,
    pub status: String,
    /// Object key of the archive in `app-storage`, once the build succeeded.
    pub build_path: Option<String>,
    pub digest: Option<String>,
    pub archive_size: Option<i64>,
}

const BUILD_COLUMNS: &str =
    "id, app_id, build_version, build_status, build_path, artifact_digest, archive_size";

fn build_row(r: &tokio_postgres::Row) -> BuildRow {
    BuildRow {
        id: r.get(0),
        app_id: r.get(1),
        version: r.get(2),
        status: r.get(3),
        build_path: r.get(4),
        digest: r.get(5),
        archive_size: r.get(6),
    }
}

/// One build, by id.
pub async fn build(client: &Client, build_id: Uuid) -> Result<Option<BuildRow>, QueueError> {
    let _timed = super::timed("build");
    let row = client
        .query_opt(
            &format!("select {BUILD_COLUMNS} from public.app_builds where id = $1"),
            &[&build_id],
        )
        .await
        .map_err(query("read a build"))?;
    Ok(row.as_ref().map(build_row))
}

/// The build a run of `version` uses when it names none: the app's current build if it is of
/// that version, else the newest successful build of the version; `None` when there is none
/// (the run installs its dependencies itself).
pub async fn build_of_version(
    client: &Client,
    app_id: Uuid,
    version: &str,
) -> Result<Option<BuildRow>, QueueError> {
    let _timed = super::timed("build_of_version");
    let row = client
        .query_opt(
            &format!(
                "select {BUILD_COLUMNS} from public.app_builds
                  where app_id = $1 and build_version = $2 and build_status = 'success'
                    and build_path is not null and artifact_digest is not null
                  order by is_current desc, created_at desc limit 1"
            ),
            &[&app_id, &version],
        )
        .await
        .map_err(query("look up a version's build"))?;
    Ok(row.as_ref().map(build_row))
}

/// The app and version of a build.
pub async fn build_version(
    client: &Client,
    build_id: Uuid,
) -> Result<Option<(Uuid, String)>, QueueError> {
    let _timed = super::timed("build_version");
    let row = client
        .query_opt(
            "select app_id, build_version from public.app_builds where id = $1",
            &[&build_id],
        )
        .await
        .map_err(query("read a build's version"))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Every version with at least one file.
pub async fn app_versions(client: &Client, app_id: Uuid) -> Result<Vec<String>, QueueError> {
    let _timed = super::timed("app_versions");
    let rows = client
        .query(
            "select distinct version from public.app_storage where app_id = $1",
            &[&app_id],
        )
        .await
        .map_err(query("list an app's versions"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The files of one version, ordered by path. Rows a build published (its frontend assets,
/// `metadata.build_id` set) are the platform's to serve, not part of what runs.
pub async fn app_files(
    client: &Client,
    app_id: Uuid,
    version: &str,
) -> Result<Vec<AppFile>, QueueError> {
    let _timed = super::timed("app_files");
    let rows = client
        .query(
            "select file_path, file_type, file_size, checksum
               from public.app_storage
              where app_id = $1 and version = $2 and not (metadata ? 'build_id')
              order by file_path",
            &[&app_id, &version],
        )
        .await
        .map_err(query("list a version's files"))?;
    Ok(rows
        .iter()
        .map(|r| AppFile {
            file_path: r.get(0),
            file_type: r.get(1),
            file_size: r.get(2),
            checksum: r.get(3),
        })
        .collect())
}

/// `(permission_type, permission_value)` of the rows the platform granted the app.
pub async fn granted_permissions(
    client: &Client,
    app_id: Uuid,
) -> Result<Vec<(String, String)>, QueueError> {
    let _timed = super::timed("granted_permissions");
    let rows = client
        .query(
            "select permission_type, permission_value from public.app_permissions where app_id = $1 order by 1, 2",
            &[&app_id],
        )
        .await
        .map_err(query("read an app's permissions"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Records the digest of the verified file set on a run we hold, and the build it starts from
/// when it chose one itself (the version's current build): `build_id` then says which build
/// ran, and a retry of the run uses the same one. Fenced; `false` when the run is no longer
/// ours.
pub async fn record_artifact_digest(
    pool: &Pool,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
    digest: &str,
    build: Option<Uuid>,
) -> Result<bool, QueueError> {
    let _timed = super::timed("record_artifact_digest");
    let client = pool.get().await.map_err(|source| QueueError::Pool {
        action: "recording an artifact digest",
        source,
    })?;
    let n = client
        .execute(
            "update public.app_runs set artifact_digest = $4, build_id = coalesce(build_id, $5)
              where id = $1 and executor_id = $2 and attempt = $3 and status = 'running'",
            &[&run_id, &executor_id, &attempt, &digest, &build],
        )
        .await
        .map_err(query("record a run's artifact digest"))?;
    Ok(n == 1)
}

/// Whether `applications` has the app.
pub async fn app_exists(client: &Client, app_id: Uuid) -> Result<bool, QueueError> {
    let _timed = super::timed("app_exists");
    Ok(client
        .query_opt(
            "select 1 from public.applications where id = $1",
            &[&app_id],
        )
        .await
        .map_err(query("look up an application"))?
        .is_some())
}

/// One `app_permissions` row as `publish` records it from a manifest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRow {
    pub permission_type: String,
    /// The manifest's `scope`.
    pub permission_value: String,
    /// The manifest's `required`.
    pub is_required: bool,
}

/// What [`record_published_version`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishRecord {
    /// The rows were inserted.
    Inserted,
    /// Exactly these files were already recorded for the version: nothing changed.
    AlreadyPublished,
    /// The version exists with other content; nothing was written.
    Conflict { differing: Vec<String> },
}

/// Records a version's files and the permissions its manifest asks for, in one transaction,
/// unless the version already exists. Serialised per (app, version) by an advisory lock.
pub async fn record_published_version(
    client: &mut Client,
    app_id: Uuid,
    version: &str,
    files: &[AppFile],
    permissions: &[PermissionRow],
) -> Result<PublishRecord, QueueError> {
    let _timed = super::timed("record_published_version");
    let tx = client
        .transaction()
        .await
        .map_err(query("begin recording a published version"))?;
    tx.execute(
        "select pg_advisory_xact_lock(hashtextextended('app_exec.publish:' || $1::uuid::text || ':' || $2::text, 0))",
        &[&app_id, &version],
    )
    .await
    .map_err(query("lock the version being published"))?;
    let existing: Vec<(String, String)> = tx
        .query(
            "select file_path, checksum from public.app_storage where app_id = $1 and version = $2",
            &[&app_id, &version],
        )
        .await
        .map_err(query("read the version's recorded files"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if !existing.is_empty() {
        let mut wanted: Vec<(String, String)> = files
            .iter()
            .map(|f| (f.file_path.clone(), f.checksum.clone()))
            .collect();
        wanted.sort();
        let mut have = existing;
        have.sort();
        if wanted == have {
            return Ok(PublishRecord::AlreadyPublished);
        }
        let differing = wanted
            .iter()
            .filter(|w| !have.contains(w))
            .chain(have.iter().filter(|h| !wanted.contains(h)))
            .map(|(path, _)| path.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        return Ok(PublishRecord::Conflict { differing });
    }
    for file in files {
        tx.execute(
            "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum)
             values ($1, $2, $3, $4, $5, $6)",
            &[
                &app_id,
                &version,
                &file.file_path,
                &file.file_type,
                &file.file_size,
                &file.checksum,
            ],
        )
        .await
        .map_err(query("record a published file"))?;
    }
    // The newest published manifest says whether a permission is required.
    for p in permissions {
        tx.execute(
            "insert into public.app_permissions (app_id, permission_type, permission_value, is_required)
             values ($1, $2, $3, $4)
             on conflict (app_id, permission_type, permission_value)
             do update set is_required = excluded.is_required",
            &[&app_id, &p.permission_type, &p.permission_value, &p.is_required],
        )
        .await
        .map_err(query("record a permission"))?;
    }
    tx.commit()
        .await
        .map_err(query("commit a published version"))?;
    Ok(PublishRecord::Inserted)
}
