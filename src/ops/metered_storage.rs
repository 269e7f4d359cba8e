//! [`Metered`]: any [`Storage`] with each request measured, the storage metrics of `/metrics`:
//! latency by operation, bucket and outcome, and the bytes sent and received by operation and
//! bucket. The composition root wraps every backend in it, so the daemon, publish and retention
//! are all measured the same way and the backends (a lower layer) stay free of metrics.
//!
//! A download's latency is the time to its first byte (the response's headers): its body is
//! the caller's to read, at the caller's pace; its bytes are counted as they are read.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use super::metrics;
use crate::storage::{
    Download, ListEntry, ObjectInfo, Storage, StorageError, UploadBody, APP_LOGS_BUCKET,
    APP_STORAGE_BUCKET,
};

/// A storage backend whose requests are measured.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Storage>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        Self { inner }
    }
}

/// The `bucket` label: ours by name, any other as `other` (the label set stays bounded).
fn bucket_label(bucket: &str) -> &'static str {
    match bucket {
        APP_STORAGE_BUCKET => APP_STORAGE_BUCKET,
        APP_LOGS_BUCKET => APP_LOGS_BUCKET,
        _ => "other",
    }
}

/// The `outcome` label of a result: `ok`, or the error's class.
fn outcome<T>(result: &Result<T, StorageError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StorageError::NotFound { .. }) => "not_found",
        Err(StorageError::AccessDenied { .. } | StorageError::NotServiceRole { .. }) => "denied",
        Err(StorageError::Unavailable { .. }) => "unavailable",
        Err(
            StorageError::TooLarge { .. }
            | StorageError::MimeRejected { .. }
            | StorageError::AlreadyExists { .. }
            | StorageError::InvalidKey { .. }
            | StorageError::Rejected { .. },
        ) => "rejected",
        Err(StorageError::Protocol { .. } | StorageError::Io { .. }) => "error",
    }
}

/// Times `request` and records it as one `op` on `bucket`.
async fn measured<T>(
    op: &'static str,
    bucket: &'static str,
    request: BoxFuture<'_, Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let started = Instant::now();
    let result = request.await;
    metrics::storage_request(op, bucket, outcome(&result), started.elapsed());
    result
}

/// The bytes an upload sends: the buffer's length, or the file's size now.
async fn upload_size(body: &UploadBody) -> Option<u64> {
    match body {
        UploadBody::Bytes(bytes) => Some(bytes.len() as u64),
        UploadBody::File(path) => tokio::fs::metadata(path).await.ok().map(|m| m.len()),
    }
}

impl Storage for Metered {
    fn download<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Download, StorageError>> {
        Box::pin(async move {
            let label = bucket_label(bucket);
            let download = measured("download", label, self.inner.download(bucket, key)).await?;
            let body = download
                .body
                .inspect(move |chunk| {
                    if let Ok(chunk) = chunk {
                        metrics::storage_bytes("download", label, chunk.len() as u64);
                    }
                })
                .boxed();
            Ok(Download { body, ..download })
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
            let label = bucket_label(bucket);
            let size = upload_size(&body).await;
            let uploaded = self.inner.upload(bucket, key, body, content_type, upsert);
            let result = measured("upload", label, uploaded).await;
            if let (Ok(()), Some(size)) = (&result, size) {
                metrics::storage_bytes("upload", label, size);
            }
            result
        })
    }

    fn list<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ListEntry>, StorageError>> {
        Box::pin(measured(
            "list",
            bucket_label(bucket),
            self.inner.list(bucket, prefix),
        ))
    }

    fn delete_many<'a>(
        &'a self,
        bucket: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(measured(
            "delete",
            bucket_label(bucket),
            self.inner.delete_many(bucket, keys),
        ))
    }

    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObjectInfo>, StorageError>> {
        Box::pin(measured(
            "head",
            bucket_label(bucket),
            self.inner.head(bucket, key),
        ))
    }

    fn buckets(&self) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(measured("buckets", "all", self.inner.buckets()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_a_small_fixed_set() {
        assert_eq!(bucket_label("app-storage"), "app-storage");
        assert_eq!(bucket_label("app-logs"), "app-logs");
        assert_eq!(bucket_label("tenant-123"), "other");
        let not_found: Result<(), _> = Err(StorageError::NotFound {
            bucket: "b".into(),
            key: "k".into(),
        });
        assert_eq!(outcome(&not_found), "not_found");
        let unavailable: Result<(), _> = Err(StorageError::Unavailable {
            bucket: "b".into(),
            key: "k".into(),
            detail: "503".into(),
        });
        assert_eq!(outcome(&unavailable), "unavailable");
        assert_eq!(outcome(&Ok::<_, StorageError>(())), "ok");
    }
}
