//! [`LocalStorage`]: buckets as directories under a root (`<root>/<bucket>/<key>`), for a single
//! host and the demo. Enforces what the server enforces (key syntax, per-bucket size limits and
//! MIME allow-lists from a [`BucketPolicy`], create vs upsert), writes atomically (temp file,
//! then rename or link) and never resolves a path outside the root. Content types live in a
//! sidecar tree (`<root>/.meta/<bucket>/<key>`) so they round-trip.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};

use super::{
    validate_key, BucketPolicy, Download, ListEntry, ObjectInfo, Storage, StorageError, UploadBody,
};

/// The directory backend. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    policy: BucketPolicy,
}

impl LocalStorage {
    /// A store rooted at `root` (created on first write) serving the buckets of `policy`.
    pub fn new(root: impl Into<PathBuf>, policy: BucketPolicy) -> Self {
        Self {
            root: root.into(),
            policy,
        }
    }

    fn data_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    fn meta_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(".meta").join(bucket).join(key)
    }

    /// Runs blocking filesystem work off the runtime, mapping I/O errors to this object.
    async fn blocking<T: Send + 'static>(
        &self,
        bucket: &str,
        key: &str,
        work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| io_error(bucket, key, std::io::Error::other(e)))?
    }
}

fn io_error(bucket: &str, key: &str, source: std::io::Error) -> StorageError {
    StorageError::Io {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        source,
    }
}

fn not_found(bucket: &str, key: &str) -> StorageError {
    StorageError::NotFound {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    }
}

/// Writes `contents` to a fresh temp file under `<root>/.tmp`, failing past `limit` bytes.
fn write_temp(
    root: &Path,
    contents: &mut dyn Read,
    limit: Option<u64>,
) -> std::io::Result<(tempfile::TempPath, u64)> {
    let dir = root.join(".tmp");
    std::fs::create_dir_all(&dir)?;
    let mut file = tempfile::NamedTempFile::new_in(&dir)?;
    let cap = limit.map_or(u64::MAX, |l| l.saturating_add(1));
    let written = std::io::copy(&mut contents.take(cap), &mut file)?;
    file.as_file_mut().flush()?;
    file.as_file().sync_all()?;
    Ok((file.into_temp_path(), written))
}

impl Storage for LocalStorage {
    fn buckets(&self) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move { Ok(self.policy.buckets.keys().cloned().collect()) })
    }

    fn download<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Download, StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            let file = match tokio::fs::File::open(self.data_path(bucket, key)).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(not_found(bucket, key))
                }
                Err(e) => return Err(io_error(bucket, key, e)),
            };
            let meta = file
                .metadata()
                .await
                .map_err(|e| io_error(bucket, key, e))?;
            if !meta.is_file() {
                return Err(not_found(bucket, key));
            }
            let content_type = tokio::fs::read_to_string(self.meta_path(bucket, key))
                .await
                .ok();
            let (b, k) = (bucket.to_owned(), key.to_owned());
            let body = tokio_util::io::ReaderStream::new(file)
                .map_err(move |e| io_error(&b, &k, e))
                .boxed();
            Ok(Download {
                size: Some(meta.len()),
                content_type,
                body,
            })
        })
    }

    fn upload<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        body: UploadBody,
        content_type: &'a str,
        upsert: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            let limit = self.policy.limits(bucket, key)?.file_size_limit;
            self.policy.check_upload(bucket, key, content_type, None)?;
            let (root, data, meta) = (
                self.root.clone(),
                self.data_path(bucket, key),
                self.meta_path(bucket, key),
            );
            let (b, k, mime) = (bucket.to_owned(), key.to_owned(), content_type.to_owned());
            self.blocking(bucket, key, move || {
                let io = |e| io_error(&b, &k, e);
                let (temp, size) = match &body {
                    UploadBody::Bytes(bytes) => write_temp(&root, &mut &bytes[..], limit),
                    UploadBody::File(path) => {
                        write_temp(&root, &mut std::fs::File::open(path).map_err(io)?, limit)
                    }
                }
                .map_err(io)?;
                if limit.is_some_and(|l| size > l) {
                    return Err(StorageError::TooLarge {
                        bucket: b,
                        key: k,
                        limit,
                    });
                }
                let parent = data
                    .parent()
                    .expect("a key has a parent: the bucket directory");
                std::fs::create_dir_all(parent).map_err(io)?;
                if upsert {
                    temp.persist(&data).map_err(|e| io(e.error))?;
                } else {
                    // A hard link fails if the name exists, so two concurrent creators cannot
                    // both win; the temp file is removed when `temp` drops.
                    match std::fs::hard_link(&temp, &data) {
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            return Err(StorageError::AlreadyExists { bucket: b, key: k })
                        }
                        other => other.map_err(io)?,
                    }
                }
                let (meta_temp, _) = write_temp(&root, &mut mime.as_bytes(), None).map_err(io)?;
                std::fs::create_dir_all(meta.parent().expect("under .meta")).map_err(io)?;
                meta_temp.persist(&meta).map_err(|e| io(e.error))?;
                Ok(())
            })
            .await
        })
    }

    fn list<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ListEntry>, StorageError>> {
        Box::pin(async move {
            let folder = prefix.trim_end_matches('/');
            if !folder.is_empty() {
                validate_key(folder)?;
            }
            let (dir, meta_dir) = (
                self.root.join(bucket).join(folder),
                self.root.join(".meta").join(bucket).join(folder),
            );
            let (b, k) = (bucket.to_owned(), prefix.to_owned());
            self.blocking(bucket, prefix, move || {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    // As on the server, a missing bucket or folder lists as empty.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(io_error(&b, &k, e)),
                };
                let mut listed = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| io_error(&b, &k, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let kind = entry.file_type().map_err(|e| io_error(&b, &k, e))?;
                    if kind.is_dir() {
                        listed.push(ListEntry::Folder { name });
                    } else if kind.is_file() {
                        let size = entry.metadata().ok().map(|m| m.len());
                        let content_type = std::fs::read_to_string(meta_dir.join(&name)).ok();
                        listed.push(ListEntry::Object {
                            name,
                            size,
                            content_type,
                        });
                    }
                }
                listed.sort_by(|a, b| a.name().cmp(b.name()));
                Ok(listed)
            })
            .await
        })
    }

    fn delete_many<'a>(
        &'a self,
        bucket: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            keys.iter().try_for_each(|k| validate_key(k))?;
            let this = self.clone();
            let (b, keys) = (bucket.to_owned(), keys.to_vec());
            self.blocking(bucket, "(many)", move || {
                let mut deleted = Vec::new();
                for key in keys {
                    let data = this.data_path(&b, &key);
                    match std::fs::remove_file(&data) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_error(&b, &key, e)),
                    }
                    let _ = std::fs::remove_file(this.meta_path(&b, &key));
                    // Folders are implicit, as on the server: drop the ones this emptied.
                    let bucket_dir = this.root.join(&b);
                    let mut dir = data.parent();
                    while let Some(d) = dir.filter(|d| *d != bucket_dir) {
                        if std::fs::remove_dir(d).is_err() {
                            break;
                        }
                        dir = d.parent();
                    }
                    deleted.push(key);
                }
                Ok(deleted)
            })
            .await
        })
    }

    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObjectInfo>, StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            match tokio::fs::metadata(self.data_path(bucket, key)).await {
                Ok(meta) if meta.is_file() => Ok(Some(ObjectInfo {
                    size: meta.len(),
                    content_type: tokio::fs::read_to_string(self.meta_path(bucket, key))
                        .await
                        .ok(),
                })),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_error(bucket, key, e)),
            }
        })
    }
}
