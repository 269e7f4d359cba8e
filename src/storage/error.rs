//! [`StorageError`]: the failures of every storage backend, with stable variants callers match
//! on (not found, too large, MIME rejected, …) and [`StorageError::is_retryable`]. Messages name
//! the bucket and key and suggest the fix where one is obvious. Owns no I/O.

/// A failed storage operation. Variants are stable: callers (fetch, log upload, publish) match
/// on them to decide between failing a run, retrying later and reporting a bad input.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {bucket}/{key} not found")]
    NotFound { bucket: String, key: String },
    #[error("object {bucket}/{key} is {}", match limit {
        Some(l) => format!("larger than the bucket allows ({l} bytes); split it or raise the bucket's file_size_limit"),
        None => "larger than the server accepts: the lower of the bucket's file_size_limit and the storage server's own upload limit (FILE_SIZE_LIMIT when self-hosted, the plan's limit on hosted projects; a bucket limit above it has no effect); split it or raise the lower one".to_owned(),
    })]
    TooLarge {
        bucket: String,
        key: String,
        /// The bucket's limit in bytes, when the backend knows it (the HTTP API does not say).
        limit: Option<u64>,
    },
    #[error("bucket {bucket} does not accept content type {mime:?} for {key}; send a bare type from the bucket's allowed_mime_types (parameters such as ;charset= are not stripped)")]
    MimeRejected {
        bucket: String,
        key: String,
        mime: String,
    },
    #[error("object {bucket}/{key} already exists; upload with upsert to overwrite it")]
    AlreadyExists { bucket: String, key: String },
    #[error("access to {bucket}/{key} denied: {message}; check the storage service key (it must be the project's service_role key)")]
    AccessDenied {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("the storage key sees {} but not {}: it is not the project's service_role key (an anon key or a user's token sees no private bucket); set the service_role key, or create the buckets (see the migrations)", if visible.is_empty() { "no bucket".to_owned() } else { visible.join(", ") }, missing.join(" and "))]
    NotServiceRole {
        missing: Vec<String>,
        visible: Vec<String>,
    },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// The server answered with a client error this enum has no variant for (e.g. `NoSuchBucket`).
    #[error("storage rejected the request for {bucket}/{key}: {status} {code}: {message}")]
    Rejected {
        bucket: String,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    /// 5xx, 429, a timeout or a connection failure: worth retrying later.
    #[error("storage unavailable for {bucket}/{key}: {detail}")]
    Unavailable {
        bucket: String,
        key: String,
        detail: String,
    },
    /// The server broke the protocol: a body shorter or longer than its Content-Length, JSON
    /// that does not parse. Not retried: the same server will likely do it again.
    #[error("storage protocol error for {bucket}/{key}: {detail}")]
    Protocol {
        bucket: String,
        key: String,
        detail: String,
    },
    /// A local filesystem operation failed (the local backend, or reading an upload's file).
    #[error("i/o error on {bucket}/{key}: {source}")]
    Io {
        bucket: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether the same operation may succeed if repeated later (server or network trouble).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
