//! The Supabase Storage wire format: JSON bodies of requests and replies, and the error model
//! (errors usually arrive as HTTP 400 with the real status as a *string* in the body; only 5xx,
//! 416 and a few others use real HTTP codes). Pure: maps bytes to values, no I/O.

use serde::{Deserialize, Serialize};

use super::{ListEntry, StorageError};

/// `POST /object/list/{bucket}` request body.
#[derive(Debug, Serialize)]
pub struct ListRequest<'a> {
    pub prefix: &'a str,
    pub limit: u32,
    pub offset: u64,
    #[serde(rename = "sortBy")]
    pub sort_by: SortBy,
}

#[derive(Debug, Serialize)]
pub struct SortBy {
    pub column: &'static str,
    pub order: &'static str,
}

/// One row of a list reply; folders have no `id` and no `metadata`.
#[derive(Debug, Deserialize)]
pub struct ListRow {
    pub name: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub metadata: Option<ObjectMetadata>,
}

#[derive(Debug, Deserialize)]
pub struct ObjectMetadata {
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub mimetype: Option<String>,
}

impl From<ListRow> for ListEntry {
    fn from(row: ListRow) -> Self {
        match (row.id, row.metadata) {
            (None, None) => ListEntry::Folder { name: row.name },
            (_, metadata) => ListEntry::Object {
                name: row.name,
                size: metadata.as_ref().and_then(|m| m.size),
                content_type: metadata.and_then(|m| m.mimetype),
            },
        }
    }
}

/// `DELETE /object/{bucket}` request body: exact object names, despite the field's name.
#[derive(Debug, Serialize)]
pub struct DeleteRequest<'a> {
    pub prefixes: &'a [String],
}

/// A row of the delete reply (the deleted objects).
#[derive(Debug, Deserialize)]
pub struct DeletedRow {
    pub name: String,
}

/// A row of `GET /bucket` (the fields used).
#[derive(Debug, Deserialize)]
pub struct BucketRow {
    pub name: String,
}

/// `GET /object/info/{bucket}/{key}` reply (the fields used).
#[derive(Debug, Deserialize)]
pub struct InfoReply {
    pub size: Option<u64>,
    pub content_type: Option<String>,
}

/// An error reply, with its effective status (the body's string `statusCode` when present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(rename = "statusCode", default)]
    status_code: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Parses an error reply. The body's `statusCode` (a string, sometimes a number) wins over the
/// HTTP status; a body that is not the expected JSON keeps the HTTP status and shows its start.
pub fn parse_error(http_status: u16, body: &[u8]) -> ApiError {
    let Ok(raw) = serde_json::from_slice::<RawError>(body) else {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return ApiError {
            status: http_status,
            code: String::new(),
            message: if text.is_empty() {
                "(empty body)".into()
            } else {
                text
            },
        };
    };
    let status = match &raw.status_code {
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
    .unwrap_or(http_status);
    ApiError {
        status,
        code: raw.code.or(raw.error).unwrap_or_default(),
        message: raw.message.unwrap_or_default(),
    }
}

/// Maps an error reply to a [`StorageError`]. `mime` is the upload's content type, if any.
pub fn to_storage_error(api: ApiError, bucket: &str, key: &str, mime: &str) -> StorageError {
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    match (api.status, api.code.as_str()) {
        (_, "NoSuchBucket") => StorageError::Rejected {
            bucket,
            key,
            status: api.status,
            code: api.code,
            message: format!("{}; create the bucket (see the migrations)", api.message),
        },
        (404, _) => StorageError::NotFound { bucket, key },
        (409, _) => StorageError::AlreadyExists { bucket, key },
        (413, _) => StorageError::TooLarge {
            bucket,
            key,
            limit: None,
        },
        (415, _) => StorageError::MimeRejected {
            bucket,
            key,
            mime: mime.to_owned(),
        },
        (401 | 403, _) => StorageError::AccessDenied {
            bucket,
            key,
            message: api.message,
        },
        (_, "InvalidKey") => StorageError::InvalidKey {
            key,
            reason: api.message,
        },
        (408 | 429 | 500..=599, _) => StorageError::Unavailable {
            bucket,
            key,
            detail: format!("HTTP {} {} {}", api.status, api.code, api.message),
        },
        _ => StorageError::Rejected {
            bucket,
            key,
            status: api.status,
            code: api.code,
            message: api.message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(http: u16, body: &str) -> StorageError {
        to_storage_error(parse_error(http, body.as_bytes()), "b", "k", "text/x")
    }

    #[test]
    fn the_status_in_the_body_wins_over_http_400() {
        let body = r#"{"statusCode":"404","error":"not_found","message":"Object not found","code":"NoSuchKey"}"#;
        assert_eq!(
            parse_error(400, body.as_bytes()),
            ApiError {
                status: 404,
                code: "NoSuchKey".into(),
                message: "Object not found".into()
            }
        );
        assert!(matches!(map(400, body), StorageError::NotFound { .. }));
    }

    #[test]
    fn each_documented_error_maps_to_its_variant() {
        let e = |status: &str, error: &str, code: &str| {
            map(
                400,
                &format!(
                    r#"{{"statusCode":"{status}","error":"{error}","message":"m","code":"{code}"}}"#
                ),
            )
        };
        assert!(matches!(
            e("409", "Duplicate", "KeyAlreadyExists"),
            StorageError::AlreadyExists { .. }
        ));
        assert!(matches!(
            e("413", "Payload too large", "EntityTooLarge"),
            StorageError::TooLarge { .. }
        ));
        assert!(
            matches!(e("415", "invalid_mime_type", "InvalidMimeType"), StorageError::MimeRejected { mime, .. } if mime == "text/x")
        );
        assert!(matches!(
            e("403", "Unauthorized", "AccessDenied"),
            StorageError::AccessDenied { .. }
        ));
        assert!(matches!(
            e("400", "InvalidKey", "InvalidKey"),
            StorageError::InvalidKey { .. }
        ));
        assert!(matches!(
            e("404", "Bucket not found", "NoSuchBucket"),
            StorageError::Rejected { status: 404, .. }
        ));
        assert!(matches!(
            e("400", "Error", "InvalidRequest"),
            StorageError::Rejected { status: 400, .. }
        ));
    }

    #[test]
    fn server_errors_are_retryable_and_client_errors_are_not() {
        assert!(map(
            500,
            r#"{"statusCode":"500","error":"internal","message":"x"}"#
        )
        .is_retryable());
        assert!(map(502, "<html>bad gateway</html>").is_retryable());
        assert!(map(544, "").is_retryable());
        assert!(!map(400, r#"{"statusCode":"404","code":"NoSuchKey"}"#).is_retryable());
    }

    #[test]
    fn a_numeric_status_code_and_a_non_json_body_are_understood() {
        assert_eq!(parse_error(400, br#"{"statusCode":409}"#).status, 409);
        let api = parse_error(400, b"");
        assert_eq!((api.status, api.message.as_str()), (400, "(empty body)"));
    }
}
