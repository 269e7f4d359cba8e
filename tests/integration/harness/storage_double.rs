//! A Supabase Storage double over real HTTP on 127.0.0.1 (random port): in-memory objects,
//! the routes the client uses under `/storage/v1`, the real error model (HTTP 400 with the
//! status as a string in the body; the gateway's 401 for a bad `apikey`), bucket size limits,
//! MIME allow-lists and key validation written from the server's rules (not shared with the
//! client), plus fault knobs: failing requests (the next n, or all for a while), delays, and
//! wire faults on downloads (a reset mid-body, a Content-Length larger than the body, more bytes
//! than the Content-Length).
//!
//! Who is asking, as the real server decides it: the service key sees everything; the anon key
//! (a valid JWT of role `anon`) passes authentication but row-level security hides every object
//! and bucket of the private buckets (downloads are `NoSuchKey`, listings and `GET /bucket`
//! are `[]`, deletes delete nothing, uploads are refused); any other token is `AccessDenied
//! "Invalid Compact JWS"`, except on the routes that allow an invalid JWT
//! (`GET /object/{bucket}/…`, `GET /object/info/{bucket}/…`), which treat it as no login at all
//! and answer a private bucket with `NoSuchBucket`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The key the double accepts, as both `apikey` and `Authorization: Bearer`.
pub const SERVICE_KEY: &str = "double-service-role-key";
/// The project's anon key: accepted by the gateway and as a JWT, but sees no private object.
pub const ANON_KEY: &str = "double-anon-key";

/// Who a request's `Authorization` makes the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    ServiceRole,
    Anon,
}

/// A fault on the wire for the next object download (`GET /object/{bucket}/{key}`).
#[derive(Debug, Clone, Copy)]
pub enum WireFault {
    /// Send half the body, then reset the connection (RST).
    ResetMidBody,
    /// Announce `Content-Length` this many bytes larger than the body, send the body, close.
    ClaimLonger(u64),
    /// Announce the true `Content-Length` but send this many extra bytes (chunked framing, as a
    /// misbehaving proxy would).
    SendMore(u64),
}

#[derive(Default)]
struct Faults {
    fail_next: u32,
    /// Every request fails with 500 until then.
    fail_until: Option<std::time::Instant>,
    delay: Option<Duration>,
    wire: Option<WireFault>,
}

struct Object {
    bytes: Bytes,
    content_type: String,
    id: String,
}

struct Bucket {
    size_limit: u64,
    allowed: Vec<&'static str>,
}

struct Inner {
    buckets: Mutex<BTreeMap<&'static str, Bucket>>,
    /// The server's own upload limit (`FILE_SIZE_LIMIT`; the real default is 50 MiB), below
    /// which every bucket's limit is capped. Unlimited unless a test sets it.
    global_limit: Mutex<u64>,
    objects: Mutex<BTreeMap<(String, String), Object>>,
    requests: Mutex<Vec<String>>,
    faults: Mutex<Faults>,
    /// Whether the gateway's `apikey` check runs (the hosted API); off = the storage server
    /// reached directly.
    gateway: Mutex<bool>,
}

type Shared = Arc<Inner>;

/// A running double; the server stops when this is dropped.
pub struct StorageDouble {
    /// The "project URL" to give the client (it appends `/storage/v1`).
    pub url: url::Url,
    inner: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StorageDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StorageDouble {
    /// Starts the double with the two buckets of the migration and their limits.
    pub async fn start() -> Self {
        let app_storage = [
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
        ];
        let app_logs = [
            "text/plain",
            "application/json",
            "application/x-ndjson",
            "text/csv",
            "text/html",
            "application/octet-stream",
            "image/*",
        ];
        let buckets = BTreeMap::from([
            (
                "app-storage",
                Bucket {
                    size_limit: 104_857_600,
                    allowed: app_storage.to_vec(),
                },
            ),
            (
                "app-logs",
                Bucket {
                    size_limit: 52_428_800,
                    allowed: app_logs.to_vec(),
                },
            ),
        ]);
        let inner = Arc::new(Inner {
            buckets: Mutex::new(buckets),
            global_limit: Mutex::new(u64::MAX),
            objects: Mutex::default(),
            requests: Mutex::default(),
            faults: Mutex::default(),
            gateway: Mutex::new(true),
        });
        let router = Router::new()
            .route("/storage/v1/bucket", get(list_buckets))
            .route("/storage/v1/object/list/{bucket}", post(list))
            .route(
                "/storage/v1/object/info/authenticated/{bucket}/{*key}",
                get(info),
            )
            .route("/storage/v1/object/info/{bucket}/{*key}", get(info))
            .route(
                "/storage/v1/object/authenticated/{bucket}/{*key}",
                get(download),
            )
            .route(
                "/storage/v1/object/{bucket}/{*key}",
                get(download).post(upload),
            )
            .route("/storage/v1/object/{bucket}", delete(delete_many))
            .layer(axum::middleware::from_fn_with_state(inner.clone(), front))
            .layer(DefaultBodyLimit::disable())
            .with_state(inner.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (router, shared) = (router.clone(), shared.clone());
                tokio::spawn(async move { serve(stream, router, shared).await });
            }
        });
        Self {
            url: url::Url::parse(&format!("http://{addr}")).unwrap(),
            inner,
            task,
        }
    }

    /// Narrows a bucket's allowed MIME types (as an operator editing `storage.buckets` would).
    pub fn allow_only(&self, bucket: &str, mimes: &[&'static str]) {
        if let Some(b) = self.inner.buckets.lock().unwrap().get_mut(bucket) {
            b.allowed = mimes.to_vec();
        }
    }

    /// Sets the server's global upload limit (the real default is 50 MiB).
    pub fn set_global_limit(&self, bytes: u64) {
        *self.inner.global_limit.lock().unwrap() = bytes;
    }

    /// The next `n` requests fail with HTTP 500 (after being counted).
    pub fn fail_next(&self, n: u32) {
        self.inner.faults.lock().unwrap().fail_next = n;
    }

    /// Every request fails with HTTP 500 for `outage` from now (an outage of the server).
    pub fn fail_for(&self, outage: Duration) {
        self.inner.faults.lock().unwrap().fail_until = Some(std::time::Instant::now() + outage);
    }

    /// Objects whose key starts with `prefix`, with their sizes, read directly.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<(String, usize)> {
        let objects = self.inner.objects.lock().unwrap();
        objects
            .iter()
            .filter(|((b, k), _)| b == bucket && k.starts_with(prefix))
            .map(|((_, k), o)| (k.clone(), o.bytes.len()))
            .collect()
    }

    /// Every request waits this long before being answered.
    pub fn delay(&self, delay: Duration) {
        self.inner.faults.lock().unwrap().delay = Some(delay);
    }

    /// The next object download suffers `fault`.
    pub fn wire_fault(&self, fault: WireFault) {
        self.inner.faults.lock().unwrap().wire = Some(fault);
    }

    /// Off: no gateway in front, so only the storage server's own `Authorization` check runs.
    pub fn set_gateway(&self, on: bool) {
        *self.inner.gateway.lock().unwrap() = on;
    }

    /// Requests seen so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Stores an object directly, bypassing HTTP.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8], content_type: &str) {
        self.inner.objects.lock().unwrap().insert(
            (bucket.into(), key.into()),
            Object {
                bytes: Bytes::copy_from_slice(bytes),
                content_type: content_type.into(),
                id: uuid::Uuid::new_v4().to_string(),
            },
        );
    }

    /// An object's bytes and content type, read directly.
    pub fn get(&self, bucket: &str, key: &str) -> Option<(Vec<u8>, String)> {
        let objects = self.inner.objects.lock().unwrap();
        objects
            .get(&(bucket.into(), key.into()))
            .map(|o| (o.bytes.to_vec(), o.content_type.clone()))
    }
}

/// One connection: a raw wire fault when one is armed and this is an object download, hyper
/// otherwise. Every reply says `Connection: close`, so each request gets its own connection.
async fn serve(mut stream: TcpStream, router: Router, shared: Shared) {
    if shared.faults.lock().unwrap().wire.is_some() {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.peek(&mut buf).await.unwrap_or(0);
            if n == 0 || buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                head.extend_from_slice(&buf[..n]);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let target = text.split(' ').nth(1).unwrap_or("").to_owned();
        let is_download =
            text.starts_with("GET /storage/v1/object/") && !target.contains("/object/info/");
        let fault = if is_download {
            shared.faults.lock().unwrap().wire.take()
        } else {
            None
        };
        if let Some(fault) = fault {
            // Consume the request head so closing does not turn into a reset by accident.
            let end = text.find("\r\n\r\n").unwrap() + 4;
            let mut consumed = vec![0u8; end];
            stream.read_exact(&mut consumed).await.unwrap();
            shared
                .requests
                .lock()
                .unwrap()
                .push(format!("GET {target}"));
            let path = target.trim_start_matches("/storage/v1/object/");
            let path = path.strip_prefix("authenticated/").unwrap_or(path);
            let (bucket, key) = path.split_once('/').unwrap();
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .into_owned();
            let bytes = shared
                .objects
                .lock()
                .unwrap()
                .get(&(bucket.to_owned(), key))
                .map(|o| o.bytes.clone())
                .expect("wire faults need an existing object");
            return raw_reply(stream, fault, &bytes).await;
        }
    }
    let service = hyper_util::service::TowerToHyperService::new(router);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

async fn raw_reply(mut stream: TcpStream, fault: WireFault, body: &[u8]) {
    let len = body.len() as u64;
    let head = |cl: u64, extra: &str| {
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {cl}\r\n{extra}connection: close\r\n\r\n")
    };
    match fault {
        WireFault::ResetMidBody => {
            let _ = stream.write_all(head(len, "").as_bytes()).await;
            let _ = stream.write_all(&body[..body.len() / 2]).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = stream.set_zero_linger();
        }
        WireFault::ClaimLonger(extra) => {
            let _ = stream.write_all(head(len + extra, "").as_bytes()).await;
            let _ = stream.write_all(body).await;
            let _ = stream.shutdown().await;
        }
        WireFault::SendMore(extra) => {
            let mut chunk = body.to_vec();
            chunk.extend(std::iter::repeat_n(b'x', extra as usize));
            let mut out = head(len, "transfer-encoding: chunked\r\n").into_bytes();
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(&chunk);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// The server's error shape: HTTP 400 (500 for server errors) with the status as a string.
fn error(status: &str, error: &str, code: &str, message: &str) -> Response {
    let http = if status.starts_with('5') {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        http,
        Json(json!({"statusCode": status, "error": error, "message": message, "code": code})),
    )
        .into_response()
}

/// Counting, faults, the gateway's key check and the server's JWT check, in that order.
async fn front(State(shared): State<Shared>, mut request: Request, next: Next) -> Response {
    shared
        .requests
        .lock()
        .unwrap()
        .push(format!("{} {}", request.method(), request.uri().path()));
    let (delay, fail) = {
        let mut faults = shared.faults.lock().unwrap();
        let outage = faults
            .fail_until
            .is_some_and(|until| std::time::Instant::now() < until);
        let fail = faults.fail_next > 0 || outage;
        faults.fail_next = faults.fail_next.saturating_sub(1);
        (faults.delay, fail)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let allows_invalid_jwt = allows_invalid_jwt(&request);
    let mut response = if fail {
        error("500", "internal", "InternalError", "injected failure")
    } else {
        match check_auth(&shared, request.headers(), allows_invalid_jwt) {
            Err(rejection) => *rejection,
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                next.run(request).await
            }
        }
    };
    response
        .headers_mut()
        .insert(header::CONNECTION, "close".parse().unwrap());
    response
}

/// `GET /object/{bucket}/…` and `GET /object/info/{bucket}/…` (not their `authenticated`
/// forms): the real server lets an invalid JWT through there as "not logged in".
fn allows_invalid_jwt(request: &Request) -> bool {
    let path = request.uri().path();
    let rest = path
        .strip_prefix("/storage/v1/object/info/")
        .or_else(|| path.strip_prefix("/storage/v1/object/"));
    request.method() == axum::http::Method::GET
        && rest.is_some_and(|r| {
            !r.starts_with("authenticated/") && !r.starts_with("list/") && r.contains('/')
        })
}

fn check_auth(
    shared: &Shared,
    headers: &HeaderMap,
    allows_invalid_jwt: bool,
) -> Result<Caller, Box<Response>> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if *shared.gateway.lock().unwrap() {
        // Kong's key-auth: real HTTP 401 and a bare message; it knows both project keys.
        match value("apikey") {
            None => {
                return Err(Box::new(
                    (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({"message": "No API key found in request"})),
                    )
                        .into_response(),
                ))
            }
            Some(key) if key != SERVICE_KEY && key != ANON_KEY => {
                return Err(Box::new(
                    (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({"message": "Invalid authentication credentials"})),
                    )
                        .into_response(),
                ))
            }
            Some(_) => {}
        }
    }
    match value("authorization") {
        None => Err(Box::new(error(
            "400",
            "Error",
            "InvalidRequest",
            "headers must have required property 'authorization'",
        ))),
        Some(auth) if auth == format!("Bearer {SERVICE_KEY}") => Ok(Caller::ServiceRole),
        Some(auth) if auth == format!("Bearer {ANON_KEY}") => Ok(Caller::Anon),
        // Not logged in, and every bucket here is private.
        Some(_) if allows_invalid_jwt => Err(Box::new(error(
            "404",
            "Bucket not found",
            "NoSuchBucket",
            "Bucket not found",
        ))),
        Some(_) => Err(Box::new(error(
            "403",
            "Unauthorized",
            "AccessDenied",
            "Invalid Compact JWS",
        ))),
    }
}

/// `GET /bucket`: the buckets the caller may see (row-level security hides them from anon).
async fn list_buckets(
    State(shared): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    if caller == Caller::Anon {
        return Json(json!([])).into_response();
    }
    let rows: Vec<Value> = shared
        .buckets
        .lock()
        .unwrap()
        .iter()
        .map(|(name, b)| json!({"id": name, "name": name, "public": false, "file_size_limit": b.size_limit, "allowed_mime_types": b.allowed}))
        .collect();
    Json(rows).into_response()
}

fn valid_key(key: &str) -> bool {
    key.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_/!.*'() &$=@;:+,?-".contains(c))
}

fn mime_ok(allowed: &[&str], mime: &str) -> bool {
    allowed.iter().any(|a| match a.strip_suffix("/*") {
        Some(kind) => mime.split('/').next() == Some(kind),
        None => *a == mime,
    })
}

async fn download(
    State(shared): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    let objects = shared.objects.lock().unwrap();
    let visible = objects
        .get(&(bucket, key))
        .filter(|_| caller == Caller::ServiceRole);
    match visible {
        Some(o) => (
            [(header::CONTENT_TYPE, o.content_type.clone())],
            o.bytes.clone(),
        )
            .into_response(),
        None => error("404", "not_found", "NoSuchKey", "Object not found"),
    }
}

async fn info(
    State(shared): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    let objects = shared.objects.lock().unwrap();
    let visible = objects
        .get(&(bucket.clone(), key.clone()))
        .filter(|_| caller == Caller::ServiceRole);
    match visible {
        Some(o) => Json(json!({"id": o.id, "name": key, "bucket_id": bucket, "size": o.bytes.len(), "content_type": o.content_type, "version": o.id})).into_response(),
        None => error("404", "not_found", "NoSuchKey", "Object not found"),
    }
}

async fn upload(
    State(shared): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if caller == Caller::Anon {
        return error(
            "403",
            "Unauthorized",
            "AccessDenied",
            "new row violates row-level security policy",
        );
    }
    if !valid_key(&key) {
        return error(
            "400",
            "InvalidKey",
            "InvalidKey",
            &format!("Invalid key: {key}"),
        );
    }
    let buckets = shared.buckets.lock().unwrap();
    let Some(limits) = buckets.get(bucket.as_str()) else {
        return error(
            "404",
            "Bucket not found",
            "NoSuchBucket",
            "Bucket not found",
        );
    };
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    if !mime_ok(&limits.allowed, &mime) {
        return error(
            "415",
            "invalid_mime_type",
            "InvalidMimeType",
            &format!("mime type {mime} is not supported"),
        );
    }
    let limit = limits.size_limit.min(*shared.global_limit.lock().unwrap());
    if body.len() as u64 > limit {
        return error(
            "413",
            "Payload too large",
            "EntityTooLarge",
            "The object exceeded the maximum allowed size",
        );
    }
    let upsert = headers.get("x-upsert").is_some_and(|v| v == "true");
    let mut objects = shared.objects.lock().unwrap();
    let entry = (bucket.clone(), key.clone());
    let id = match objects.get(&entry) {
        Some(_) if !upsert => {
            return error(
                "409",
                "Duplicate",
                "KeyAlreadyExists",
                "The resource already exists",
            )
        }
        Some(existing) => existing.id.clone(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    objects.insert(
        entry,
        Object {
            bytes: body,
            content_type: mime,
            id: id.clone(),
        },
    );
    Json(json!({"Key": format!("{bucket}/{key}"), "Id": id})).into_response()
}

async fn list(
    State(shared): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(bucket): Path<String>,
    Json(request): Json<Value>,
) -> Response {
    if caller == Caller::Anon {
        return Json(json!([])).into_response();
    }
    let Some(prefix) = request["prefix"].as_str() else {
        return error(
            "400",
            "Error",
            "InvalidRequest",
            "body must have required property 'prefix'",
        );
    };
    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    };
    let limit = request["limit"].as_u64().unwrap_or(100) as usize;
    let offset = request["offset"].as_u64().unwrap_or(0) as usize;
    let objects = shared.objects.lock().unwrap();
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    for ((b, name), o) in objects.iter() {
        let Some(rest) = name.strip_prefix(&prefix).filter(|_| *b == bucket) else {
            continue;
        };
        match rest.split_once('/') {
            Some((folder, _)) => {
                rows.insert(folder.to_owned(), json!({"name": folder, "id": null, "updated_at": null, "created_at": null, "last_accessed_at": null, "metadata": null}));
            }
            None => {
                rows.insert(rest.to_owned(), json!({"name": rest, "id": o.id, "updated_at": "2025-01-01T00:00:00Z", "created_at": "2025-01-01T00:00:00Z", "last_accessed_at": "2025-01-01T00:00:00Z",
                    "metadata": {"eTag": "\"x\"", "size": o.bytes.len(), "mimetype": o.content_type, "cacheControl": "no-cache", "lastModified": "2025-01-01T00:00:00Z", "contentLength": o.bytes.len(), "httpStatusCode": 200}}));
            }
        }
    }
    Json(
        rows.into_values()
            .skip(offset)
            .take(limit)
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn delete_many(
    State(shared): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(bucket): Path<String>,
    Json(request): Json<Value>,
) -> Response {
    let names: Vec<String> = request["prefixes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() || names.len() > 1000 {
        return error(
            "400",
            "Error",
            "InvalidRequest",
            "body/prefixes must NOT have fewer than 1 items or more than 1000",
        );
    }
    if caller == Caller::Anon {
        return Json(json!([])).into_response();
    }
    let mut objects = shared.objects.lock().unwrap();
    let deleted: Vec<Value> = names
        .into_iter()
        .filter_map(|name| {
            objects
                .remove(&(bucket.clone(), name.clone()))
                .map(|o| json!({"name": name, "bucket_id": bucket, "id": o.id}))
        })
        .collect();
    Json(deleted).into_response()
}
