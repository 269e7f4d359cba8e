//! A container registry double on a loopback port, for testing the daemon's image pull with
//! the real Docker engine (no registry on the internet is reachable here). Docker treats
//! registries on 127.0.0.0/8 as insecure, so plain HTTP is accepted.
//!
//! It serves one local image, exported with `docker save`, as the Docker v2 (schema 2)
//! manifest of one tag under any repository name: the config with a label of its own and each
//! layer gzip-compressed with a header comment of its own (so the engine sees a new image and
//! new blobs, and fetches them), every object addressed by its SHA-256. Other tags answer 404
//! `MANIFEST_UNKNOWN` as a real registry does. With a login ([`Registry::requiring_login`]) every
//! request without it gets 401 and a `Basic` challenge, as a private registry answers. The paths
//! asked for are recorded.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub struct Registry {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

struct Served {
    /// The `Authorization` header value a request must carry, if any.
    authorization: Option<String>,
    tag: String,
    manifest: Vec<u8>,
    manifest_digest: String,
    blobs: HashMap<String, Vec<u8>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Registry {
    /// Serves the local image `image` as `<any repository>:<tag>`.
    pub async fn serving(image: &str, tag: &str) -> Self {
        Self::start(image, tag, None).await
    }

    /// [`Registry::serving`], answering only requests with HTTP Basic `user`:`password`.
    pub async fn requiring_login(image: &str, tag: &str, user: &str, password: &str) -> Self {
        let token = base64(format!("{user}:{password}").as_bytes());
        Self::start(image, tag, Some(format!("Basic {token}"))).await
    }

    async fn start(image: &str, tag: &str, authorization: Option<String>) -> Self {
        let image = image.to_owned();
        let (manifest, blobs) = tokio::task::spawn_blocking(move || export(&image))
            .await
            .unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(Served {
            authorization,
            tag: tag.to_owned(),
            manifest_digest: digest(&manifest),
            manifest,
            blobs,
            requests: requests.clone(),
        });
        let router = axum::Router::new()
            .route("/v2/", get(api_version))
            .route("/v2/{name}/manifests/{reference}", get(manifest_of))
            .route("/v2/{name}/blobs/{digest}", get(blob))
            .fallback(not_found)
            .with_state(served);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, requests }
    }

    /// The request paths so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `docker save`s `image` and builds its manifest and blobs.
fn export(image: &str) -> (Vec<u8>, HashMap<String, Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("image.tar");
    let out = Command::new("docker")
        .args(["save", "-o", saved.to_str().unwrap(), image])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker save {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = HashMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&saved).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.insert(path, bytes);
        }
    }
    let saved_manifest: serde_json::Value =
        serde_json::from_slice(&files["manifest.json"]).unwrap();
    // A label of its own makes the config, and so the image id, new to the engine: otherwise
    // it recognises the image it already has and fetches nothing but the manifest.
    let mut config: serde_json::Value =
        serde_json::from_slice(&files[saved_manifest[0]["Config"].as_str().unwrap()]).unwrap();
    if !config["config"]["Labels"].is_object() {
        config["config"]["Labels"] = serde_json::json!({});
    }
    let unique = uuid::Uuid::new_v4().to_string();
    config["config"]["Labels"]["app-executor.registry-double"] =
        serde_json::Value::String(unique.clone());
    let config = serde_json::to_vec(&config).unwrap();
    let mut blobs = HashMap::new();
    let mut layers = Vec::new();
    for path in saved_manifest[0]["Layers"].as_array().unwrap() {
        // The gzip header names this registry, so the compressed blob (and its digest) is new
        // to the engine too: it remembers which blobs it has pulled, from any registry.
        let mut gzip = flate2::GzBuilder::new()
            .comment(unique.as_bytes())
            .write(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&files[path.as_str().unwrap()]).unwrap();
        let layer = gzip.finish().unwrap();
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": layer.len(),
            "digest": digest(&layer),
        }));
        blobs.insert(digest(&layer), layer);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config.len(),
            "digest": digest(&config),
        },
        "layers": layers,
    }))
    .unwrap();
    blobs.insert(digest(&config), config);
    (manifest, blobs)
}

/// Records the request; the 401 to answer when it lacks the login.
fn refusal(served: &Served, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    served.requests.lock().unwrap().push(uri.path().to_owned());
    let expected = served.authorization.as_deref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if given == Some(expected) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [
                (header::WWW_AUTHENTICATE, "Basic realm=\"registry-double\""),
                (header::CONTENT_TYPE, "application/json"),
            ],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
            .into_response(),
    )
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn api_version(State(served): State<Arc<Served>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&served, &uri, &headers) {
        return refused;
    }
    ([("docker-distribution-api-version", "registry/2.0")], "{}").into_response()
}

async fn manifest_of(
    State(served): State<Arc<Served>>,
    Path((_name, reference)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&served, &uri, &headers) {
        return refused;
    }
    if reference != served.tag && reference != served.manifest_digest {
        return unknown("MANIFEST_UNKNOWN", "manifest unknown");
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(MANIFEST_TYPE),
    );
    headers.insert(
        "docker-content-digest",
        HeaderValue::from_str(&served.manifest_digest).unwrap(),
    );
    (headers, served.manifest.clone()).into_response()
}

async fn blob(
    State(served): State<Arc<Served>>,
    Path((_name, digest)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&served, &uri, &headers) {
        return refused;
    }
    match served.blobs.get(&digest) {
        Some(bytes) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes.clone(),
        )
            .into_response(),
        None => unknown("BLOB_UNKNOWN", "blob unknown to registry"),
    }
}

async fn not_found(State(served): State<Arc<Served>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&served, &uri, &headers) {
        return refused;
    }
    unknown("NAME_UNKNOWN", "repository name not known to registry")
}

fn unknown(code: &str, message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string(),
    )
        .into_response()
}

#[test]
fn base64_matches_rfc_4648() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}
