//! What a bucket accepts: object key syntax, per-bucket size limits and MIME allow-lists, with
//! the real Supabase Storage server's rules (keys `[A-Za-z0-9_/!.*'() &$=@;:+,?-]`, MIME types
//! matching exactly or by `type/*`, parameters not stripped). Pure logic, no I/O: the Supabase
//! client checks keys before sending, the local backend enforces everything here.

use std::collections::BTreeMap;

use super::StorageError;

/// Characters besides ASCII letters and digits the server accepts in object keys.
/// The `app-logs` bucket's object size limit (50 MiB, set by the bucket migration): a
/// compacted log or an output file is one object, so the caps on them cannot exceed it.
pub const APP_LOGS_FILE_SIZE_LIMIT: u64 = 52_428_800;

const KEY_PUNCTUATION: &str = "_/!.*'() &$=@;:+,?-";

/// Checks an object key the way the server does, plus what would escape a directory tree
/// (`..` segments, a leading `/`, empty segments), which the local backend must refuse.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let invalid = |reason: String| {
        Err(StorageError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("the key is empty".into());
    }
    if let Some(c) = key
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !KEY_PUNCTUATION.contains(*c))
    {
        return invalid(format!(
            "character {c:?} is not allowed; use only A-Z a-z 0-9 and {KEY_PUNCTUATION}"
        ));
    }
    if key.starts_with('/') {
        return invalid("the key must be relative (no leading /)".into());
    }
    if key.split('/').any(|s| s == ".." || s == ".") {
        return invalid("`.` and `..` segments are not allowed".into());
    }
    if key.split('/').any(str::is_empty) {
        return invalid("empty path segments (`//` or a trailing /) are not allowed".into());
    }
    Ok(())
}

/// Whether `mime` is in `allowed`: an exact match or `type/*`. Parameters are compared as they
/// are, as the server does, so `text/plain;charset=UTF-8` does not match `text/plain`.
pub fn mime_allowed(allowed: &[String], mime: &str) -> bool {
    allowed
        .iter()
        .any(|pattern| match pattern.strip_suffix("/*") {
            Some(kind) => mime
                .split_once('/')
                .is_some_and(|(t, sub)| t == kind && !sub.is_empty()),
            None => pattern == mime,
        })
}

/// One bucket's limits (the `storage.buckets` columns of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketLimits {
    pub file_size_limit: Option<u64>,
    pub allowed_mime_types: Option<Vec<String>>,
}

/// The buckets a local backend serves and their limits; unknown buckets do not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketPolicy {
    pub buckets: BTreeMap<String, BucketLimits>,
}

impl Default for BucketPolicy {
    /// The two buckets of `migrations/20250715000000_create_app_storage_buckets.sql`.
    fn default() -> Self {
        let list = |types: &[&str]| Some(types.iter().map(|t| (*t).to_owned()).collect());
        let app_storage = BucketLimits {
            file_size_limit: Some(104_857_600),
            allowed_mime_types: list(&[
                "application/json",
                "application/javascript",
                "text/javascript",
                "application/typescript",
                "text/plain",
                "text/markdown",
                "text/html",
                "text/css",
                "text/csv",
                "application/yaml",
                "application/x-yaml",
                "application/gzip",
                "application/x-gzip",
                "application/x-tar",
                "application/zip",
                "application/octet-stream",
                "application/wasm",
                "image/*",
                "font/*",
            ]),
        };
        let app_logs = BucketLimits {
            file_size_limit: Some(APP_LOGS_FILE_SIZE_LIMIT),
            allowed_mime_types: list(&[
                "text/plain",
                "application/json",
                "application/x-ndjson",
                "text/csv",
                "text/html",
                "application/octet-stream",
                "image/*",
            ]),
        };
        Self {
            buckets: BTreeMap::from([
                ("app-storage".to_owned(), app_storage),
                ("app-logs".to_owned(), app_logs),
            ]),
        }
    }
}

impl BucketPolicy {
    /// The limits of `bucket`, or the server's `NoSuchBucket` rejection.
    pub fn limits(&self, bucket: &str, key: &str) -> Result<&BucketLimits, StorageError> {
        self.buckets
            .get(bucket)
            .ok_or_else(|| StorageError::Rejected {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                status: 404,
                code: "NoSuchBucket".into(),
                message: "Bucket not found".into(),
            })
    }

    /// Checks an upload's MIME type and (when known) size against the bucket.
    pub fn check_upload(
        &self,
        bucket: &str,
        key: &str,
        mime: &str,
        size: Option<u64>,
    ) -> Result<(), StorageError> {
        let limits = self.limits(bucket, key)?;
        if let Some(allowed) = &limits.allowed_mime_types {
            if !mime_allowed(allowed, mime) {
                return Err(StorageError::MimeRejected {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    mime: mime.to_owned(),
                });
            }
        }
        match (limits.file_size_limit, size) {
            (Some(limit), Some(size)) if size > limit => Err(StorageError::TooLarge {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                limit: Some(limit),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn mime_types_match_exactly_or_by_wildcard_and_parameters_are_not_stripped() {
        let allowed = types(&["text/plain", "image/*"]);
        assert!(mime_allowed(&allowed, "text/plain"));
        assert!(mime_allowed(&allowed, "image/png"));
        assert!(!mime_allowed(&allowed, "text/plain;charset=UTF-8"));
        assert!(!mime_allowed(&allowed, "text/html"));
        assert!(!mime_allowed(&allowed, "image/"));
        assert!(!mime_allowed(&allowed, "imagery/png"));
    }

    #[test]
    fn keys_with_characters_the_server_refuses_are_invalid() {
        for key in ["bad\\key.txt", "caf\u{e9}.txt", "a\tb", "tab#hash", "x%20y"] {
            assert!(
                matches!(validate_key(key), Err(StorageError::InvalidKey { .. })),
                "{key}"
            );
        }
        for key in [
            "app_1/1.0.0/manifest.json",
            "a b/(c)!*'&$=@;:+,?-.txt",
            "x/.emptyFolderPlaceholder",
        ] {
            validate_key(key).unwrap();
        }
    }

    #[test]
    fn keys_that_would_escape_a_directory_are_invalid() {
        for key in [
            "../etc/passwd",
            "a/../../b",
            "/abs",
            "a//b",
            "a/",
            "",
            "./a",
        ] {
            let err = validate_key(key).unwrap_err();
            assert!(matches!(err, StorageError::InvalidKey { .. }), "{key}");
        }
    }

    #[test]
    fn the_default_policy_has_the_migration_buckets() {
        let policy = BucketPolicy::default();
        policy
            .check_upload("app-logs", "a.log", "text/plain", Some(52_428_800))
            .unwrap();
        let err = policy
            .check_upload("app-logs", "a.log", "text/plain", Some(52_428_801))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::TooLarge {
                    limit: Some(52_428_800),
                    ..
                }
            ),
            "{err}"
        );
        let err = policy
            .check_upload("app-storage", "a.pdf", "application/pdf", Some(1))
            .unwrap_err();
        assert!(matches!(err, StorageError::MimeRejected { .. }), "{err}");
        assert!(policy
            .check_upload("nope", "a", "text/plain", None)
            .is_err());
    }
}
