//! Preparing a claimed run's files: resolve the version, fetch every file through the verified
//! blob cache, lay them out in a fresh per-run directory, extract archives, validate the
//! manifest and check the app's permissions. Nothing of the app runs here, and nothing runs at
//! all unless every step succeeded.
//!
//! Failures are split the way the queue needs them: problems of the app's published files
//! (mismatching checksum, missing object, no manifest, …) fail the run for good with a message
//! naming the file; infrastructure problems (storage or database down) are retryable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use futures_util::TryStreamExt;

use super::cache::{BlobCache, CacheError};
use super::manifest::{missing_permissions, validate_manifest, Manifest, PermissionType};
use super::object_key::path_in_app;
use super::version::{choose_version, file_set_digest, parse_checksum, VersionError};
use super::{extract_archive, ArchiveFormat, ExtractLimits, HostLimits};
use crate::db::artifact::{self as sql, AppFile};
use crate::db::queue::QueueError;
use crate::model::ClaimedRun;
use crate::storage::{Storage, StorageError, APP_STORAGE_BUCKET};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{0}")]
    Version(#[from] VersionError),
    #[error("file {file}: checksum {checksum:?} is malformed; expected sha256:<64 lowercase hex>")]
    MalformedChecksum { file: String, checksum: String },
    #[error("file {key}: {reason}; nothing of the version was read")]
    UnsafePath { key: String, reason: String },
    #[error(
        "files {first} and {second} both become {path} inside the app; remove one of the rows"
    )]
    DuplicatePath {
        path: String,
        first: String,
        second: String,
    },
    #[error("file {file}: object {key} is missing from bucket app-storage; republish the version")]
    MissingObject { file: String, key: String },
    #[error("file {file}: {source}; the stored object does not match what was published, nothing was run")]
    Corrupt {
        file: String,
        #[source]
        source: CacheError,
    },
    #[error("build {build} is not a build of this run's app {app}; nothing was read")]
    ForeignBuild { build: uuid::Uuid, app: uuid::Uuid },
    #[error("build {build} is {status}, so the run has nothing to start from; {hint}")]
    BuildNotUsable {
        build: uuid::Uuid,
        status: String,
        hint: &'static str,
    },
    #[error("build {build} succeeded but records no archive (build_path, artifact_digest); build the version again")]
    BuildMissing { build: uuid::Uuid },
    #[error("version {version} has no manifest.json")]
    NoManifest { version: String },
    #[error("manifest.json of version {version}: {message}")]
    Manifest { version: String, message: String },
    #[error("the app requires permissions the platform has not granted: {}", .0.join("; "))]
    PermissionsMissing(Vec<String>),
    #[error("{0}")]
    Archive(String),
    #[error("file {file}: storage unavailable: {source}")]
    Storage {
        file: String,
        #[source]
        source: StorageError,
    },
    #[error("{0}")]
    Database(#[from] QueueError),
    #[error("preparing the run directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PrepareError {
    /// Stable `error_kind` for `app_runs`.
    pub fn error_kind(&self) -> &'static str {
        match self {
            PrepareError::Version(VersionError::NothingPublished) => "app_not_published",
            PrepareError::Version(_) => "unknown_version",
            PrepareError::MalformedChecksum { .. } => "malformed_checksum",
            PrepareError::UnsafePath { .. } => "unsafe_path",
            PrepareError::DuplicatePath { .. } => "duplicate_path",
            PrepareError::ForeignBuild { .. } => "foreign_build",
            PrepareError::BuildNotUsable { status, .. }
                if status == "failed" || status == "cancelled" =>
            {
                "build_failed"
            }
            PrepareError::BuildNotUsable { .. } => "build_not_ready",
            PrepareError::BuildMissing { .. } => "build_missing",
            PrepareError::MissingObject { .. } => "missing_object",
            PrepareError::Corrupt { .. } => "checksum_mismatch",
            PrepareError::NoManifest { .. } => "missing_manifest",
            PrepareError::Manifest { .. } => "invalid_manifest",
            PrepareError::PermissionsMissing(_) => "permission_not_granted",
            PrepareError::Archive(_) => "unsafe_archive",
            PrepareError::Storage { .. } => "storage_unavailable",
            PrepareError::Database(_) => "database_unavailable",
            PrepareError::Io { .. } => "prepare_io",
        }
    }

    /// Whether retrying later can help (infrastructure), as opposed to a fault of the app.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PrepareError::Storage { .. } | PrepareError::Database(_) | PrepareError::Io { .. }
        )
    }
}

/// A run's verified files, ready to mount.
#[derive(Debug)]
pub struct PreparedApp {
    /// The app root (read-only for the app).
    pub dir: PathBuf,
    pub version: String,
    /// `sha256:` digest of the verified file set (see `version::file_set_digest`).
    pub digest: String,
    pub manifest: Manifest,
    /// Bytes downloaded for this run (0 when every blob was cached).
    pub downloaded_bytes: u64,
    /// Permissions the platform granted the app (`app_permissions`), as `(type, scope)`.
    pub granted: Vec<(PermissionType, String)>,
    /// The build the files came from: its archive holds the app with its `node_modules` and
    /// build output, so the run installs nothing.
    pub build: Option<uuid::Uuid>,
}

pub struct Resolver {
    pub pool: Pool,
    pub storage: Arc<dyn Storage>,
    pub cache: Arc<BlobCache>,
    /// Per-run directories live here (under the state directory, never /tmp).
    pub runs_dir: PathBuf,
    pub host: HostLimits,
    pub extract: ExtractLimits,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Resolver {
    /// The directory a run's attempt prepares into; removed by [`Resolver::clean_up`].
    pub fn run_dir(&self, run: &ClaimedRun) -> PathBuf {
        self.attempt_dir(run.id, run.attempt)
    }

    /// The directory of one attempt of a run or a build (`<id>-<attempt>`, which the orphan
    /// sweep parses).
    pub fn attempt_dir(&self, id: uuid::Uuid, attempt: i32) -> PathBuf {
        self.runs_dir.join(format!("{id}-{attempt}"))
    }

    pub async fn clean_up(&self, run: &ClaimedRun) {
        let _ = tokio::fs::remove_dir_all(self.run_dir(run)).await;
    }

    /// The version's published files laid out in `attempt_dir/app` (for a build: no build is
    /// used, whatever exists).
    pub async fn prepare_version(
        &self,
        app_id: uuid::Uuid,
        version: &str,
        attempt_dir: &Path,
    ) -> Result<PreparedApp, PrepareError> {
        let (files, granted) = {
            let client = self.pool.get().await.map_err(|source| QueueError::Pool {
                action: "resolving an app version",
                source,
            })?;
            let available = sql::app_versions(&client, app_id).await?;
            let version = choose_version(Some(version), &serde_json::Value::Null, &available)?;
            let files = sql::app_files(&client, app_id, &version).await?;
            let granted = sql::granted_permissions(&client, app_id).await?;
            (files, granted)
        };
        self.lay_out(app_id, version.to_owned(), &files, granted, attempt_dir)
            .await
    }

    /// Resolves, fetches, verifies and lays out the run's files.
    pub async fn prepare(&self, run: &ClaimedRun) -> Result<PreparedApp, PrepareError> {
        let (version, files, granted, build) = {
            let client = self.pool.get().await.map_err(|source| QueueError::Pool {
                action: "resolving an app version",
                source,
            })?;
            // The database ties a run's build to its app (app_runs_build_of_app); a host that
            // dropped that constraint still never gets another app's version here.
            let build_version = match run.build_id {
                Some(build) => match sql::build_version(&client, build).await? {
                    Some((app, _)) if app != run.app_id => {
                        return Err(PrepareError::ForeignBuild {
                            build,
                            app: run.app_id,
                        })
                    }
                    found => found.map(|(_, version)| version),
                },
                None => None,
            };
            let available = sql::app_versions(&client, run.app_id).await?;
            let version = choose_version(build_version.as_deref(), &run.metadata, &available)?;
            let build = match run.build_id {
                Some(id) => sql::build(&client, id).await?,
                None => sql::build_of_version(&client, run.app_id, &version).await?,
            };
            let files = match build {
                Some(_) => Vec::new(),
                None => sql::app_files(&client, run.app_id, &version).await?,
            };
            let granted = sql::granted_permissions(&client, run.app_id).await?;
            (version, files, granted, build)
        };
        let run_dir = self.run_dir(run);
        match build {
            Some(build) => self.lay_out_build(version, &build, granted, &run_dir).await,
            None => {
                self.lay_out(run.app_id, version, &files, granted, &run_dir)
                    .await
            }
        }
    }

    /// A build's archive, fetched through the verified cache and extracted as the app root.
    async fn lay_out_build(
        &self,
        version: String,
        build: &sql::BuildRow,
        granted: Vec<(String, String)>,
        run_dir: &Path,
    ) -> Result<PreparedApp, PrepareError> {
        if build.status != "success" {
            return Err(PrepareError::BuildNotUsable {
                build: build.id,
                status: build.status.clone(),
                hint: if build.status == "failed" || build.status == "cancelled" {
                    "see its build_logs, fix the app and build it again"
                } else {
                    "wait for it (app-executor build --wait) before running with its build_id"
                },
            });
        }
        let (Some(key), Some(digest)) = (&build.build_path, &build.digest) else {
            return Err(PrepareError::BuildMissing { build: build.id });
        };
        let archive = AppFile {
            file_path: key.clone(),
            file_type: "archive".into(),
            file_size: build.archive_size.unwrap_or(-1),
            checksum: digest.clone(),
        };
        if parse_checksum(digest).is_none() {
            return Err(PrepareError::MalformedChecksum {
                file: format!("the archive of build {}", build.id),
                checksum: digest.clone(),
            });
        }
        let app_dir = run_dir.join("app");
        let _ = tokio::fs::remove_dir_all(run_dir).await;
        tokio::fs::create_dir_all(run_dir)
            .await
            .map_err(io(run_dir))?;
        let blob = self
            .fetch(
                build.app_id,
                &archive,
                &format!("the archive of build {}", build.id),
            )
            .await?;
        let (blob_path, target, limits) =
            (blob.path.clone(), app_dir.clone(), self.extract.clone());
        tokio::task::spawn_blocking(move || extract_archive(&blob_path, &target, &limits))
            .await
            .map_err(|e| PrepareError::Archive(e.to_string()))?
            .map_err(|e| PrepareError::Archive(format!("build {}: {e}", build.id)))?;
        let (manifest, granted) = self.check_app(&app_dir, &version, granted).await?;
        Ok(PreparedApp {
            dir: app_dir,
            version,
            digest: digest.clone(),
            manifest,
            downloaded_bytes: blob.downloaded,
            granted,
            build: Some(build.id),
        })
    }

    /// Lays the version's files out in `run_dir/app`: every key checked before any I/O, every
    /// file verified through the cache, archives extracted.
    async fn lay_out(
        &self,
        app_id: uuid::Uuid,
        version: String,
        files: &[AppFile],
        granted: Vec<(String, String)>,
        run_dir: &Path,
    ) -> Result<PreparedApp, PrepareError> {
        // Every key is checked before any I/O: a row pointing outside the app's folder never
        // reaches storage or the blob cache.
        let mut by_path = std::collections::BTreeMap::new();
        let mut placed = Vec::with_capacity(files.len());
        for file in files {
            // A key that passes is a plain relative path below the app's folder (no empty,
            // `.` or `..` segment, no `\`), so the path it gives inside the app is one too.
            let path = path_in_app(app_id, &version, &file.file_path).map_err(|e| {
                PrepareError::UnsafePath {
                    key: file.file_path.clone(),
                    reason: e.to_string(),
                }
            })?;
            if parse_checksum(&file.checksum).is_none() {
                return Err(PrepareError::MalformedChecksum {
                    file: path,
                    checksum: file.checksum.clone(),
                });
            }
            if let Some(first) = by_path.insert(path.clone(), file.file_path.clone()) {
                return Err(PrepareError::DuplicatePath {
                    path,
                    first,
                    second: file.file_path.clone(),
                });
            }
            placed.push((file, path));
        }

        let app_dir = run_dir.join("app");
        let _ = tokio::fs::remove_dir_all(run_dir).await;
        tokio::fs::create_dir_all(&app_dir)
            .await
            .map_err(io(&app_dir))?;

        let mut downloaded_bytes = 0;
        let mut archives = Vec::new();
        for (file, path) in &placed {
            let blob = self.fetch(app_id, file, path).await?;
            downloaded_bytes += blob.downloaded;
            let target = app_dir.join(path);
            place(&blob.path, &target).await?;
            if file.file_type == "archive" {
                archives.push(target);
            }
        }
        for archive in archives {
            self.unpack_into(&archive, &app_dir, run_dir).await?;
        }

        let (manifest, granted) = self.check_app(&app_dir, &version, granted).await?;
        let digest = file_set_digest(
            placed
                .iter()
                .map(|(f, path)| (path.as_str(), f.checksum.as_str())),
        );
        Ok(PreparedApp {
            dir: app_dir,
            version,
            digest,
            manifest,
            downloaded_bytes,
            granted,
            build: None,
        })
    }

    /// The laid-out app's manifest, validated, and the granted permissions it needs.
    async fn check_app(
        &self,
        app_dir: &Path,
        version: &str,
        granted: Vec<(String, String)>,
    ) -> Result<(Manifest, Vec<(PermissionType, String)>), PrepareError> {
        let version = version.to_owned();
        let manifest_path = app_dir.join("manifest.json");
        let text = match tokio::fs::read_to_string(&manifest_path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PrepareError::NoManifest { version })
            }
            Err(e) => return Err(io(&manifest_path)(e)),
        };
        let manifest = validate_manifest(&text, &self.host, Some(app_dir))
            .map_err(|e| PrepareError::Manifest {
                version: version.clone(),
                message: e.to_string(),
            })?
            .manifest;
        if let Some(backend) = &manifest.backend {
            let package = app_dir.join("package.json");
            if !backend.dependencies.is_empty() && !package.exists() {
                // The document's apps name their packages in the manifest only.
                let text = crate::artifact::manifest::dependencies::generated_package_json(
                    &manifest.name,
                    &manifest.version,
                    &backend.dependencies,
                );
                tokio::fs::write(&package, text)
                    .await
                    .map_err(io(&package))?;
            }
        }
        let granted: Vec<(PermissionType, String)> = granted
            .into_iter()
            .filter_map(|(kind, scope)| kind.parse().ok().map(|k| (k, scope)))
            .collect();
        let missing = missing_permissions(&manifest, &granted);
        if !missing.is_empty() {
            return Err(PrepareError::PermissionsMissing(
                missing.iter().map(ToString::to_string).collect(),
            ));
        }
        Ok((manifest, granted))
    }

    /// One file through the cache: downloaded and verified unless already cached. `path` is
    /// where it goes inside the app (for messages).
    async fn fetch(
        &self,
        app_id: uuid::Uuid,
        file: &AppFile,
        path: &str,
    ) -> Result<super::cache::Blob, PrepareError> {
        let hex = parse_checksum(&file.checksum).expect("checked by prepare");
        // The cache only sees a reader; keep the storage error's type for the outcome.
        let storage_error: Arc<Mutex<Option<StorageError>>> = Arc::default();
        let size = u64::try_from(file.file_size).ok();
        // Served from the cache only if this app's own object proved these bytes before.
        let owner = app_id.to_string();
        let result = self
            .cache
            .get_or_fetch(&owner, hex, size, || {
                let storage = self.storage.clone();
                let key = file.file_path.clone();
                let storage_error = storage_error.clone();
                async move {
                    match storage.download(APP_STORAGE_BUCKET, &key).await {
                        Ok(download) => Ok(tokio_util::io::StreamReader::new(
                            download.body.map_err(std::io::Error::other),
                        )),
                        Err(e) => {
                            let message = e.to_string();
                            *storage_error.lock().unwrap() = Some(e);
                            Err(message)
                        }
                    }
                }
            })
            .await;
        result.map_err(|e| {
            let file_path = path.to_owned();
            match (storage_error.lock().unwrap().take(), e) {
                (Some(StorageError::NotFound { .. }), _) => PrepareError::MissingObject {
                    file: file_path,
                    key: file.file_path.clone(),
                },
                (Some(source), _) => PrepareError::Storage {
                    file: file_path,
                    source,
                },
                (
                    None,
                    e @ (CacheError::ChecksumMismatch { .. } | CacheError::SizeMismatch { .. }),
                ) => PrepareError::Corrupt {
                    file: file_path,
                    source: e,
                },
                (None, CacheError::Io { path, source }) => PrepareError::Io { path, source },
                (None, e) => PrepareError::Storage {
                    file: file_path,
                    source: StorageError::Unavailable {
                        bucket: APP_STORAGE_BUCKET.into(),
                        key: file.file_path.clone(),
                        detail: e.to_string(),
                    },
                },
            }
        })
    }

    /// Extracts an archive into a fresh directory, then moves its top-level entries into the
    /// app root; an entry that would replace a published file is refused.
    async fn unpack_into(
        &self,
        archive: &Path,
        app_dir: &Path,
        run_dir: &Path,
    ) -> Result<(), PrepareError> {
        let staging = run_dir.join(format!("unpack-{}", uuid::Uuid::new_v4().simple()));
        let (archive_owned, staging_owned, limits) =
            (archive.to_path_buf(), staging.clone(), self.extract.clone());
        let extracted =
            tokio::task::spawn_blocking(move || match ArchiveFormat::detect(&archive_owned) {
                Ok(Some(_)) => extract_archive(&archive_owned, &staging_owned, &limits)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Ok(None) => Err(format!(
                    "{} is not a .tar, .tar.gz or .zip archive",
                    archive_owned.display()
                )),
                Err(e) => Err(e.to_string()),
            })
            .await
            .map_err(|e| PrepareError::Archive(e.to_string()))?;
        extracted.map_err(PrepareError::Archive)?;
        let mut entries = tokio::fs::read_dir(&staging).await.map_err(io(&staging))?;
        while let Some(entry) = entries.next_entry().await.map_err(io(&staging))? {
            let target = app_dir.join(entry.file_name());
            if tokio::fs::symlink_metadata(&target).await.is_ok() {
                return Err(PrepareError::Archive(format!(
                    "archive {}: entry {:?} would replace a published file",
                    archive.display(),
                    entry.file_name()
                )));
            }
            tokio::fs::rename(entry.path(), &target)
                .await
                .map_err(io(&target))?;
        }
        let _ = tokio::fs::remove_dir_all(&staging).await;
        let _ = tokio::fs::remove_file(archive).await;
        Ok(())
    }
}

/// Hard-links the cached blob into place (same filesystem under the state directory), falling
/// back to a copy; the run keeps its file even if the cache evicts the blob.
async fn place(blob: &Path, target: &Path) -> Result<(), PrepareError> {
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io(parent))?;
    }
    if tokio::fs::hard_link(blob, target).await.is_err() {
        tokio::fs::copy(blob, target).await.map_err(io(target))?;
    }
    Ok(())
}
