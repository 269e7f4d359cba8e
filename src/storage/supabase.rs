//! [`SupabaseStorage`]: the Supabase Storage HTTP API (`<url>/storage/v1`) with the service
//! key, streaming downloads that check the announced length, retries with exponential backoff
//! on 5xx and connection failures only, and the 400-with-status-in-the-body error model (see
//! `wire`). Owns its HTTP client; only `app` constructs it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};

use super::wire::{
    self, BucketRow, DeleteRequest, DeletedRow, InfoReply, ListRequest, ListRow, SortBy,
};
use super::{validate_key, Download, ListEntry, ObjectInfo, Storage, StorageError, UploadBody};
use crate::storage::ServiceKey;

/// Bytes of a path segment sent as is; everything else is percent-encoded (`?`, `#`, space, `+`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The server's cap on names per delete request (`MAX_OBJECTS_PER_REQUEST`).
const DELETE_BATCH: usize = 1000;

/// How to reach the API and how patient to be.
#[derive(Debug, Clone)]
pub struct SupabaseOptions {
    /// The project URL (`https://<ref>.supabase.co`); `/storage/v1` is appended.
    pub url: url::Url,
    pub service_key: ServiceKey,
    pub connect_timeout: Duration,
    /// Longest silence while reading a response; a slow but steady download never times out.
    pub read_timeout: Duration,
    /// Retries after the first attempt, for 5xx, 429 and connection failures only.
    pub max_retries: u32,
    /// Delay before the first retry; doubled each time up to `retry_max_delay`.
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Rows asked per list request.
    pub list_page_size: u32,
}

impl SupabaseOptions {
    pub fn new(url: url::Url, service_key: ServiceKey) -> Self {
        Self {
            url,
            service_key,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_base_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(10),
            list_page_size: 100,
        }
    }
}

/// The HTTP backend. `Debug` shows the URL, never the key.
pub struct SupabaseStorage {
    http: reqwest::Client,
    base: String,
    options: SupabaseOptions,
}

impl std::fmt::Debug for SupabaseStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupabaseStorage")
            .field("base", &self.base)
            .field("service_key", &self.options.service_key)
            .finish_non_exhaustive()
    }
}

impl SupabaseStorage {
    pub fn new(options: SupabaseOptions) -> Result<Self, StorageError> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .build()
            .map_err(|e| unavailable("-", "-", &e))?;
        let base = format!("{}/storage/v1", options.url.as_str().trim_end_matches('/'));
        Ok(Self {
            http,
            base,
            options,
        })
    }

    fn url(&self, route: &str, bucket: &str, key: Option<&str>) -> String {
        let mut url = format!("{}/{route}/{}", self.base, encode(bucket));
        if let Some(key) = key {
            url.push('/');
            url.push_str(&key.split('/').map(encode).collect::<Vec<_>>().join("/"));
        }
        url
    }

    /// Sends the request `build` makes, with the key headers, retrying retryable failures.
    /// `build` runs once per attempt, so a file body is re-opened each time.
    async fn execute<F, Fut>(
        &self,
        bucket: &str,
        key: &str,
        mime: &str,
        build: F,
    ) -> Result<reqwest::Response, StorageError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<reqwest::RequestBuilder, StorageError>>,
    {
        let secret = self.options.service_key.expose();
        let mut retries = 0;
        loop {
            let request = build()
                .await?
                .header(AUTHORIZATION, format!("Bearer {secret}"))
                .header("apikey", secret);
            let err = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => error_reply(response, bucket, key, mime).await,
                Err(e) => unavailable(bucket, key, &e),
            };
            if !err.is_retryable() || retries >= self.options.max_retries {
                return Err(err);
            }
            let delay = self
                .options
                .retry_base_delay
                .saturating_mul(1 << retries.min(16))
                .min(self.options.retry_max_delay);
            retries += 1;
            tracing::warn!(%bucket, %key, retry = retries, ?delay, error = %err, "storage request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
        bucket: &str,
        key: &str,
    ) -> Result<T, StorageError> {
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(bucket, key, &e))?;
        serde_json::from_slice(&body).map_err(|e| StorageError::Protocol {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            detail: format!("reply is not the expected JSON ({e})"),
        })
    }
}

impl Storage for SupabaseStorage {
    fn buckets(&self) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            let url = format!("{}/bucket", self.base);
            let url = &url;
            let build = move || async move { Ok(self.http.get(url)) };
            let response = self.execute("-", "(bucket list)", "", build).await?;
            let rows: Vec<BucketRow> = Self::json(response, "-", "(bucket list)").await?;
            Ok(rows.into_iter().map(|r| r.name).collect())
        })
    }

    fn download<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Download, StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            // The authenticated route: the plain one treats a bad key as "not logged in" and
            // answers a private bucket with "Bucket not found", hiding the real problem.
            let url = &self.url("object/authenticated", bucket, Some(key));
            let response = self
                .execute(
                    bucket,
                    key,
                    "",
                    move || async move { Ok(self.http.get(url)) },
                )
                .await?;
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                    .map(str::to_owned)
            };
            // The header, not the framing: with chunked framing the two can disagree.
            let size = header(CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
            let content_type = header(CONTENT_TYPE);
            let body = checked_body(response.bytes_stream(), size, bucket, key);
            Ok(Download {
                size,
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
            let (url, body) = (&self.url("object", bucket, Some(key)), &body);
            let build = move || async move {
                let request = self
                    .http
                    .post(url)
                    .header(CONTENT_TYPE, content_type)
                    .header("x-upsert", if upsert { "true" } else { "false" });
                Ok(match body {
                    UploadBody::Bytes(bytes) => request.body(bytes.clone()),
                    UploadBody::File(path) => {
                        let io = |source| StorageError::Io {
                            bucket: bucket.to_owned(),
                            key: key.to_owned(),
                            source,
                        };
                        let file = tokio::fs::File::open(path).await.map_err(io)?;
                        let len = file.metadata().await.map_err(io)?.len();
                        // A known length lets the server refuse an oversized body up front.
                        request
                            .header(CONTENT_LENGTH, len)
                            .body(reqwest::Body::wrap_stream(
                                tokio_util::io::ReaderStream::new(file),
                            ))
                    }
                })
            };
            self.execute(bucket, key, content_type, build).await?;
            Ok(())
        })
    }

    fn list<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ListEntry>, StorageError>> {
        Box::pin(async move {
            let url = format!("{}/object/list/{}", self.base, encode(bucket));
            let limit = self.options.list_page_size.max(1);
            let mut entries = Vec::new();
            loop {
                let body = ListRequest {
                    prefix,
                    limit,
                    offset: entries.len() as u64,
                    sort_by: SortBy {
                        column: "name",
                        order: "asc",
                    },
                };
                let (url, body) = (&url, &body);
                let build = move || async move { Ok(self.http.post(url).json(body)) };
                let response = self.execute(bucket, prefix, "", build).await?;
                let page: Vec<ListRow> = Self::json(response, bucket, prefix).await?;
                let full = page.len() as u64 >= u64::from(limit);
                entries.extend(page.into_iter().map(ListEntry::from));
                if !full {
                    return Ok(entries);
                }
            }
        })
    }

    fn delete_many<'a>(
        &'a self,
        bucket: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            keys.iter().try_for_each(|k| validate_key(k))?;
            let url = format!("{}/object/{}", self.base, encode(bucket));
            let mut deleted = Vec::new();
            for batch in keys.chunks(DELETE_BATCH) {
                let label = format!("({} keys from {})", batch.len(), batch[0]);
                let body = DeleteRequest { prefixes: batch };
                let (url, body) = (&url, &body);
                let build = move || async move { Ok(self.http.delete(url).json(body)) };
                let response = self.execute(bucket, &label, "", build).await?;
                let rows: Vec<DeletedRow> = Self::json(response, bucket, &label).await?;
                deleted.extend(rows.into_iter().map(|r| r.name));
            }
            Ok(deleted)
        })
    }

    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObjectInfo>, StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            // `GET /object/info/authenticated/…`, not HEAD (it answers a missing object with a
            // bare 400) nor the plain info route (it takes a bad key for "not logged in").
            let url = &self.url("object/info/authenticated", bucket, Some(key));
            let build = move || async move { Ok(self.http.get(url)) };
            match self.execute(bucket, key, "", build).await {
                Ok(response) => {
                    let info: InfoReply = Self::json(response, bucket, key).await?;
                    Ok(Some(ObjectInfo {
                        size: info.size.unwrap_or(0),
                        content_type: info.content_type,
                    }))
                }
                Err(StorageError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}

fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Reads an error reply (small; capped) and maps it.
async fn error_reply(
    response: reqwest::Response,
    bucket: &str,
    key: &str,
    mime: &str,
) -> StorageError {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            break;
        }
    }
    wire::to_storage_error(wire::parse_error(status, &body), bucket, key, mime)
}

fn unavailable(bucket: &str, key: &str, error: &reqwest::Error) -> StorageError {
    StorageError::Unavailable {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        detail: chain(error),
    }
}

/// The error and its sources in one line (reqwest's own message omits the cause).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether a body error is the connection dying (reset, timeout): worth downloading again.
fn connection_lost(error: &reqwest::Error) -> bool {
    use std::io::ErrorKind::*;
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut
            ) {
                return true;
            }
        }
        source = s.source();
    }
    error.is_timeout()
}

struct BodyState {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    claimed: Option<u64>,
    received: u64,
    done: bool,
    bucket: String,
    key: String,
}

/// Passes the body through, ending in an error when it is longer or shorter than `claimed`.
fn checked_body(
    inner: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    claimed: Option<u64>,
    bucket: &str,
    key: &str,
) -> BoxStream<'static, Result<Bytes, StorageError>> {
    let state = BodyState {
        inner: inner.boxed(),
        claimed,
        received: 0,
        done: false,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    };
    stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let claimed = s
            .claimed
            .map_or("an unknown number of".into(), |c| c.to_string());
        let detail = match s.inner.next().await {
            Some(Ok(chunk)) => {
                s.received += chunk.len() as u64;
                match s.claimed {
                    Some(c) if s.received > c => format!(
                        "the body is longer than the {c} bytes its Content-Length announced"
                    ),
                    _ => return Some((Ok(chunk), s)),
                }
            }
            Some(Err(e)) if connection_lost(&e) => {
                s.done = true;
                let detail = format!(
                    "connection lost after {} of {claimed} bytes ({}); download again",
                    s.received,
                    chain(&e)
                );
                let err = StorageError::Unavailable {
                    bucket: s.bucket.clone(),
                    key: s.key.clone(),
                    detail,
                };
                return Some((Err(err), s));
            }
            Some(Err(e)) => format!(
                "the body ended after {} of {claimed} bytes ({})",
                s.received,
                chain(&e)
            ),
            None => match s.claimed {
                Some(c) if s.received < c => format!(
                    "the body ended after {} of the {c} bytes its Content-Length announced",
                    s.received
                ),
                _ => return None,
            },
        };
        s.done = true;
        let err = StorageError::Protocol {
            bucket: s.bucket.clone(),
            key: s.key.clone(),
            detail,
        };
        Some((Err(err), s))
    })
    .boxed()
}
