//! A container registry double on a loopback port, for testing the daemon's image pull with
//! the real Docker engine (no registry on the internet is reachable here). Docker treats
//! registries on 127.0.0.0/8 as insecure, so plain HTTP is accepted.
//!
//! It serves one local image, exported with `docker save`, as the Docker v2 (schema 2)
//! manifest of one tag under any repository name: the config with a label of its own (so the
//! engine sees a new image and fetches it), each layer gzip-compressed, every object addressed
//! by its SHA-256. Other tags answer 404
//! `MANIFEST_UNKNOWN` as a real registry does. The paths asked for are recorded.

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
    tag: String,
    manifest: Vec<u8>,
    manifest_digest: String,
    blobs: HashMap<String, Vec<u8>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Registry {
    /// Serves the local image `image` as `<any repository>:<tag>`.
    pub async fn serving(image: &str, tag: &str) -> Self {
        let image = image.to_owned();
        let (manifest, blobs) = tokio::task::spawn_blocking(move || export(&image))
            .await
            .unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(Served {
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
    config["config"]["Labels"]["app-executor.registry-double"] =
        serde_json::Value::String(uuid::Uuid::new_v4().to_string());
    let config = serde_json::to_vec(&config).unwrap();
    let mut blobs = HashMap::new();
    let mut layers = Vec::new();
    for path in saved_manifest[0]["Layers"].as_array().unwrap() {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
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

fn record(served: &Served, uri: &Uri) {
    served.requests.lock().unwrap().push(uri.path().to_owned());
}

async fn api_version(State(served): State<Arc<Served>>, uri: Uri) -> Response {
    record(&served, &uri);
    ([("docker-distribution-api-version", "registry/2.0")], "{}").into_response()
}

async fn manifest_of(
    State(served): State<Arc<Served>>,
    Path((_name, reference)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    record(&served, &uri);
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
) -> Response {
    record(&served, &uri);
    match served.blobs.get(&digest) {
        Some(bytes) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes.clone(),
        )
            .into_response(),
        None => unknown("BLOB_UNKNOWN", "blob unknown to registry"),
    }
}

async fn not_found(State(served): State<Arc<Served>>, uri: Uri) -> Response {
    record(&served, &uri);
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
