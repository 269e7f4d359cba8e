//! Object storage for app files, logs and outputs: the [`Storage`] trait and its two backends,
//! [`SupabaseStorage`] (the Supabase Storage HTTP API) and [`LocalStorage`] (a directory tree
//! for single-host use and the demo), which enforce the same bucket rules ([`BucketPolicy`]).
//!
//! Backends are built only by the composition root (`app::storage`) and passed around as
//! `Arc<dyn Storage>`. Nothing here knows about runs or apps; callers choose buckets and keys.

mod error;
mod local;
mod policy;
pub mod settings;
mod supabase;
mod wire;

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use error::StorageError;
pub use local::LocalStorage;
pub use policy::{
    mime_allowed, validate_key, BucketLimits, BucketPolicy, APP_LOGS_FILE_SIZE_LIMIT,
};
pub use settings::{ServiceKey, StorageBackend, StorageSettings};
pub use supabase::{SupabaseOptions, SupabaseStorage};

/// The bucket holding the apps' published files.
pub const APP_STORAGE_BUCKET: &str = "app-storage";
/// The bucket holding run logs and outputs.
pub const APP_LOGS_BUCKET: &str = "app-logs";

/// An object being downloaded. The body is streamed: nothing is buffered whole, and a body that
/// disagrees with the announced size ends in an error instead of silently.
pub struct Download {
    /// The size the server announced (`Content-Length`), when it did.
    pub size: Option<u64>,
    pub content_type: Option<String>,
    pub body: BoxStream<'static, Result<Bytes, StorageError>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("size", &self.size)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// Collects the whole body; for small objects (manifests, JSON) and tests only.
    pub async fn bytes(self) -> Result<Vec<u8>, StorageError> {
        use futures_util::TryStreamExt;
        self.body
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
    }
}

/// What to upload. Both forms can be sent again, so failed attempts are retried; a file is
/// streamed from disk (re-opened per attempt), never read into memory whole.
#[derive(Debug, Clone)]
pub enum UploadBody {
    Bytes(Bytes),
    File(PathBuf),
}

impl From<Bytes> for UploadBody {
    fn from(bytes: Bytes) -> Self {
        Self::Bytes(bytes)
    }
}

impl From<Vec<u8>> for UploadBody {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes.into())
    }
}

/// One entry of a one-level listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListEntry {
    /// An object directly under the prefix; `name` is relative to the prefix.
    Object {
        name: String,
        size: Option<u64>,
        content_type: Option<String>,
    },
    /// A "folder": some objects live below `prefix/name/`.
    Folder { name: String },
}

impl ListEntry {
    pub fn name(&self) -> &str {
        match self {
            Self::Object { name, .. } | Self::Folder { name } => name,
        }
    }
}

/// Size and type of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub content_type: Option<String>,
}

/// An object store with Supabase Storage semantics. Object-safe: use it as `Arc<dyn Storage>`.
///
/// Keys are paths inside the bucket (`app_{id}/1.0.0/manifest.json`), checked with
/// [`validate_key`] before anything is sent or written.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Starts downloading `bucket/key`. Errors before the first byte (not found, access,
    /// unavailable after retries) come from the future; later ones from the body stream.
    fn download<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Download, StorageError>>;

    /// Stores `body` at `bucket/key` with `content_type` (sent as is: a bare type such as
    /// `text/plain`, since the bucket's allow-list does not strip parameters). Without `upsert`
    /// an existing object is an [`StorageError::AlreadyExists`].
    fn upload<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        body: UploadBody,
        content_type: &'a str,
        upsert: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Lists one level under `prefix` (a folder; `""` is the bucket's root), sorted by name,
    /// all pages. A missing bucket lists as empty, as on the server.
    fn list<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ListEntry>, StorageError>>;

    /// Deletes the objects with exactly these keys; missing ones are skipped. Returns the keys
    /// that were deleted.
    fn delete_many<'a>(
        &'a self,
        bucket: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>>;

    /// Size and content type of `bucket/key`, or `None` when it does not exist.
    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObjectInfo>, StorageError>>;

    /// The names of the buckets these credentials can see. On Supabase only the service role
    /// sees private buckets: the anon key or a user's token sees none.
    fn buckets(&self) -> BoxFuture<'_, Result<Vec<String>, StorageError>>;
}

/// Checks that the credentials act as the service role: they see both buckets. A wrong key is
/// refused by the server ([`StorageError::AccessDenied`]); the anon key or a user's token is
/// accepted but sees no private bucket ([`StorageError::NotServiceRole`]), and with it every
/// object would look missing and every listing empty, so nothing may run on it.
pub async fn verify_service_role(storage: &dyn Storage) -> Result<(), StorageError> {
    let visible = storage.buckets().await?;
    let missing: Vec<String> = [APP_STORAGE_BUCKET, APP_LOGS_BUCKET]
        .into_iter()
        .filter(|b| !visible.iter().any(|v| v == b))
        .map(str::to_owned)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StorageError::NotServiceRole { missing, visible })
    }
}
