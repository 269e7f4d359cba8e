//! `app-executor publish`: the upload path the platform lacks. Validates an app directory,
//! uploads every file to `app-storage` under `app_{appId}/{version}/{path}`, and records the
//! files with their SHA-256 (and the permissions the manifest asks for) in one transaction.
//!
//! Idempotent: publishing the same content again changes nothing; publishing different content
//! under an existing version is refused (versions are immutable — publish a new one).
//! `node_modules/` and `.git/` are never published (dependencies are installed in the sandbox).

use std::path::Path;
use std::sync::Arc;

use super::digest::sha256_hex;
use uuid::Uuid;

use super::object_key::{check_app_key, version_file_key};
use super::{check_app_dir, walk_regular_files, HostLimits, WalkLimits};
use crate::db::artifact::{self as sql, AppFile, PermissionRow, PublishRecord};
use crate::db::queue::QueueError;
use crate::storage::{Storage, StorageError, UploadBody, APP_STORAGE_BUCKET};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{dir} is not a valid app:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { dir: String, problems: Vec<String> },
    #[error("application {0} does not exist; create it in `applications` first")]
    UnknownApp(Uuid),
    #[error("version {version} of app {app} is already published with different content ({}); versions are immutable, publish a new version", .differing.join(", "))]
    VersionConflict {
        app: Uuid,
        version: String,
        differing: Vec<String>,
    },
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("uploading {path}: {source}")]
    Upload {
        path: String,
        #[source]
        source: StorageError,
    },
    #[error("{0}")]
    Database(#[from] QueueError),
}

/// What was published.
#[derive(Debug, serde::Serialize)]
pub struct PublishReport {
    pub app: Uuid,
    pub version: String,
    pub files: usize,
    pub bytes: u64,
    /// The same content was already published: nothing was uploaded or written.
    pub already_published: bool,
    /// Files present in the directory but not published (symlinks, FIFOs, …), with the reason.
    pub skipped: Vec<String>,
}

/// One file uploaded by [`publish`]: `(index from 1, count, path, bytes)`.
pub type UploadProgress<'a> = &'a (dyn Fn(usize, usize, &str, u64) + Send + Sync);

pub async fn publish(
    client: &mut tokio_postgres::Client,
    storage: Arc<dyn Storage>,
    dir: &Path,
    app: Uuid,
    version_override: Option<&str>,
    host: &HostLimits,
    progress: UploadProgress<'_>,
) -> Result<PublishReport, PublishError> {
    let report = check_app_dir(dir, host);
    let manifest = match (report.valid, report.manifest) {
        (true, Some(manifest)) => manifest,
        _ => {
            return Err(PublishError::Invalid {
                dir: dir.display().to_string(),
                problems: report.problems.iter().map(ToString::to_string).collect(),
            })
        }
    };
    if !sql::app_exists(client, app).await? {
        return Err(PublishError::UnknownApp(app));
    }
    let version = version_override
        .map(str::to_owned)
        .unwrap_or_else(|| manifest.version.to_string());

    let walked =
        walk_regular_files(dir, &WalkLimits::default()).map_err(|e| PublishError::Read {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
    let mut files = Vec::new();
    let mut bytes = 0;
    for file in &walked.files {
        let path = file.relative.to_string_lossy().replace('\\', "/");
        if path.starts_with("node_modules/") || path.starts_with(".git/") {
            continue;
        }
        let content = tokio::fs::read(dir.join(&file.relative))
            .await
            .map_err(|e| PublishError::Read {
                path: path.clone(),
                message: e.to_string(),
            })?;
        bytes += content.len() as u64;
        files.push((path, content));
    }
    let records: Vec<AppFile> = files
        .iter()
        .map(|(path, content)| AppFile {
            file_path: version_file_key(app, &version, path),
            file_type: file_type(path).to_owned(),
            file_size: content.len() as i64,
            checksum: format!("sha256:{}", sha256_hex(content)),
        })
        .collect();
    // The database refuses keys Supabase Storage would refuse; say which file, before uploading.
    let problems: Vec<String> = records
        .iter()
        .filter_map(|r| check_app_key(app, &r.file_path).err())
        .map(|e| format!("{e}; rename the file"))
        .collect();
    if !problems.is_empty() {
        return Err(PublishError::Invalid {
            dir: dir.display().to_string(),
            problems,
        });
    }
    let skipped = walked
        .skipped
        .iter()
        .map(|s| format!("{} ({})", s.relative.display(), s.reason))
        .collect();

    // Upload before recording: rows only ever point at objects that exist. Upserting is safe:
    // a version's objects are only reachable through rows, which are written once.
    if !already_recorded(client, app, &version).await? {
        let count = files.len();
        for (i, ((path, content), record)) in files.into_iter().zip(&records).enumerate() {
            let bytes = content.len() as u64;
            storage
                .upload(
                    APP_STORAGE_BUCKET,
                    &record.file_path,
                    UploadBody::Bytes(content.into()),
                    content_type(&path),
                    true,
                )
                .await
                .map_err(|source| PublishError::Upload {
                    path: path.clone(),
                    source,
                })?;
            progress(i + 1, count, &path, bytes);
        }
    }
    let permissions: Vec<PermissionRow> = manifest
        .permissions
        .iter()
        .map(|p| PermissionRow {
            permission_type: p.kind.as_str().to_owned(),
            permission_value: p.scope.clone(),
            is_required: p.required,
        })
        .collect();
    let recorded =
        sql::record_published_version(client, app, &version, &records, &permissions).await?;
    let already_published = match recorded {
        PublishRecord::Inserted => false,
        PublishRecord::AlreadyPublished => true,
        PublishRecord::Conflict { differing } => {
            return Err(PublishError::VersionConflict {
                app,
                version,
                differing,
            })
        }
    };
    Ok(PublishReport {
        app,
        version,
        files: records.len(),
        bytes,
        already_published,
        skipped,
    })
}

/// Whether the version is already recorded (with any content): then nothing is uploaded, so a
/// refused re-publish cannot overwrite the stored objects.
async fn already_recorded(
    client: &tokio_postgres::Client,
    app: Uuid,
    version: &str,
) -> Result<bool, QueueError> {
    Ok(!sql::app_files(client, app, version).await?.is_empty())
}

/// The `app_storage.file_type` of a path.
fn file_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name {
        "manifest.json" if path == name => "manifest",
        _ if path.starts_with("dist/") => "dist",
        "package.json" | "pnpm-lock.yaml" | "package-lock.json" | ".npmrc" | ".pnpmrc" => "config",
        _ if name.ends_with(".tgz")
            || name.ends_with(".tar.gz")
            || name.ends_with(".tar")
            || name.ends_with(".zip") =>
        {
            // Vendored dependency tarballs are files, not archives to unpack.
            if path.contains("vendor/") {
                "asset"
            } else {
                "archive"
            }
        }
        _ if [".js", ".mjs", ".cjs", ".ts", ".json"]
            .iter()
            .any(|e| name.ends_with(e)) =>
        {
            "source"
        }
        _ => "asset",
    }
}

/// A MIME type from the app-storage allow-list (no parameters: the server does not strip them);
/// anything the list has no entry for is `application/octet-stream`.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "json" => "application/json",
        "js" | "mjs" | "cjs" => "application/javascript",
        "ts" => "application/typescript",
        "md" => "text/markdown",
        "txt" => "text/plain",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "csv" => "text/csv",
        "yaml" | "yml" => "application/yaml",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "zip" => "application/zip",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_types_follow_the_path() {
        assert_eq!(file_type("manifest.json"), "manifest");
        assert_eq!(file_type("sub/manifest.json"), "source");
        assert_eq!(file_type("pnpm-lock.yaml"), "config");
        assert_eq!(file_type("index.js"), "source");
        assert_eq!(file_type("bundle.tgz"), "archive");
        assert_eq!(file_type("vendor/dep-1.0.0.tgz"), "asset");
        assert_eq!(file_type("logo.png"), "asset");
        assert_eq!(file_type("dist/index.html"), "dist");
        assert_eq!(content_type("a/b.mjs"), "application/javascript");
        assert_eq!(content_type("logo.PNG"), "image/png");
        assert_eq!(content_type("assets/icon.svg"), "image/svg+xml");
        assert_eq!(content_type("font.woff2"), "font/woff2");
        assert_eq!(content_type("blob.bin"), "application/octet-stream");
    }
}
