//! Storage behaviour through the real clients: [`SupabaseStorage`] against the HTTP double
//! (real HTTP on loopback, the server's error model, injected faults) and [`LocalStorage`] on
//! a temp dir. Behaviours that both backends share run against both from one body.

use std::sync::Arc;
use std::time::Duration;

use app_executor::storage::ServiceKey;
use app_executor::storage::{
    BucketPolicy, ListEntry, LocalStorage, Storage, StorageError, SupabaseOptions, SupabaseStorage,
    UploadBody,
};
use futures_util::StreamExt;

use crate::harness::storage_double::{StorageDouble, WireFault, ANON_KEY, SERVICE_KEY};

const LOGS: &str = "app-logs";
const FILES: &str = "app-storage";
const LOGS_LIMIT: usize = 52_428_800;

fn options(double: &StorageDouble, key: &str) -> SupabaseOptions {
    let mut options = SupabaseOptions::new(double.url.clone(), ServiceKey::new(key));
    options.retry_base_delay = Duration::from_millis(10);
    options.retry_max_delay = Duration::from_millis(50);
    options.read_timeout = Duration::from_secs(5);
    options.list_page_size = 3;
    options
}

fn client(double: &StorageDouble) -> SupabaseStorage {
    SupabaseStorage::new(options(double, SERVICE_KEY)).unwrap()
}

fn count(double: &StorageDouble, prefix: &str) -> usize {
    double
        .requests()
        .iter()
        .filter(|r| r.starts_with(prefix))
        .count()
}

async fn put(storage: &dyn Storage, bucket: &str, key: &str, bytes: &[u8], mime: &str) {
    storage
        .upload(bucket, key, bytes.to_vec().into(), mime, false)
        .await
        .unwrap();
}

// ---- behaviours of every backend ------------------------------------------------------------

async fn an_upload_downloads_as_the_same_streamed_bytes_and_type(storage: &dyn Storage) {
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    put(
        storage,
        FILES,
        "app_1/1.0.0/app.tgz",
        &bytes,
        "application/gzip",
    )
    .await;
    let download = storage
        .download(FILES, "app_1/1.0.0/app.tgz")
        .await
        .unwrap();
    assert_eq!(download.size, Some(bytes.len() as u64));
    assert_eq!(download.content_type.as_deref(), Some("application/gzip"));
    let mut chunks = 0;
    let mut got = Vec::new();
    let mut body = download.body;
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.unwrap());
        chunks += 1;
    }
    assert_eq!(got, bytes);
    assert!(
        chunks > 1,
        "the body should arrive in several chunks, not buffered whole"
    );
    let info = storage
        .head(FILES, "app_1/1.0.0/app.tgz")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(storage.head(FILES, "app_1/nope").await.unwrap(), None);
}

async fn a_missing_object_is_not_found_naming_bucket_and_key(storage: &dyn Storage) {
    let err = storage
        .download(FILES, "app_1/missing.json")
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("app-storage") && text.contains("app_1/missing.json"),
        "{text}"
    );
}

async fn an_upload_over_the_bucket_limit_is_too_large(storage: &dyn Storage) {
    let big = vec![b'x'; LOGS_LIMIT + 1];
    let err = storage
        .upload(
            LOGS,
            "app_1/runs/r/stdout.log",
            big.into(),
            "text/plain",
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("app-logs/app_1/runs/r/stdout.log") && text.contains("file_size_limit"),
        "{text}"
    );
    put(
        storage,
        LOGS,
        "app_1/runs/r/exact.log",
        &vec![b'y'; LOGS_LIMIT],
        "text/plain",
    )
    .await;
}

async fn a_mime_type_outside_the_allow_list_is_rejected_even_with_parameters(
    storage: &dyn Storage,
) {
    for mime in ["text/plain;charset=UTF-8", "application/pdf"] {
        let err = storage
            .upload(
                LOGS,
                "app_1/runs/r/a.txt",
                b"hi".to_vec().into(),
                mime,
                false,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StorageError::MimeRejected { mime: m, .. } if m == mime),
            "{err}"
        );
        assert!(err.to_string().contains("bare type"), "{err}");
    }
    put(storage, LOGS, "app_1/runs/r/a.txt", b"hi", "text/plain").await;
    put(storage, LOGS, "app_1/runs/r/a.png", b"png", "image/png").await;
}

async fn a_duplicate_upload_needs_upsert(storage: &dyn Storage) {
    put(
        storage,
        FILES,
        "app_1/1.0.0/manifest.json",
        b"{\"v\":1}",
        "application/json",
    )
    .await;
    let again = |upsert| {
        storage.upload(
            FILES,
            "app_1/1.0.0/manifest.json",
            b"{\"v\":2}".to_vec().into(),
            "application/json",
            upsert,
        )
    };
    let err = again(false).await.unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("upsert"), "{err}");
    again(true).await.unwrap();
    let got = storage
        .download(FILES, "app_1/1.0.0/manifest.json")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got, b"{\"v\":2}");
}

async fn a_listing_shows_one_level_across_pages(storage: &dyn Storage) {
    for name in [
        "a.js",
        "b.js",
        "c.js",
        "d.js",
        "e.js",
        "f.js",
        "src/x.js",
        "src/deep/y.js",
    ] {
        put(
            storage,
            FILES,
            &format!("app_1/1.0.0/{name}"),
            b"js",
            "text/javascript",
        )
        .await;
    }
    put(
        storage,
        FILES,
        "app_2/1.0.0/other.js",
        b"js",
        "text/javascript",
    )
    .await;
    let entries = storage.list(FILES, "app_1/1.0.0").await.unwrap();
    let names: Vec<&str> = entries.iter().map(ListEntry::name).collect();
    assert_eq!(
        names,
        ["a.js", "b.js", "c.js", "d.js", "e.js", "f.js", "src"]
    );
    assert_eq!(entries[6], ListEntry::Folder { name: "src".into() });
    assert!(
        matches!(&entries[0], ListEntry::Object { size: Some(2), content_type: Some(t), .. } if t == "text/javascript")
    );
    let root: Vec<String> = storage
        .list(FILES, "")
        .await
        .unwrap()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    assert_eq!(root, ["app_1", "app_2"]);
    assert!(storage.list(FILES, "app_9").await.unwrap().is_empty());
}

async fn delete_many_removes_exactly_the_named_objects(storage: &dyn Storage) {
    for name in ["a.log", "b.log", "c.log"] {
        put(
            storage,
            LOGS,
            &format!("app_1/runs/r/{name}"),
            b"l",
            "text/plain",
        )
        .await;
    }
    let keys = [
        "app_1/runs/r/a.log",
        "app_1/runs/r/c.log",
        "app_1/runs/r/missing.log",
    ]
    .map(String::from);
    let mut deleted = storage.delete_many(LOGS, &keys).await.unwrap();
    deleted.sort();
    assert_eq!(deleted, ["app_1/runs/r/a.log", "app_1/runs/r/c.log"]);
    let left: Vec<String> = storage
        .list(LOGS, "app_1/runs/r")
        .await
        .unwrap()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    assert_eq!(left, ["b.log"]);
}

async fn keys_with_forbidden_characters_or_escapes_are_rejected(storage: &dyn Storage) {
    for key in ["bad\\key.txt", "caf\u{e9}.js", "../etc/passwd", "/abs.js"] {
        let err = storage
            .upload(FILES, key, b"x".to_vec().into(), "text/plain", false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{key}: {err}"
        );
        let err = storage.download(FILES, key).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{key}: {err}"
        );
    }
    // Characters the server allows, including ones that need percent-encoding in a URL.
    let odd = "app_1/1.0.0/a b+c?d&e=f;g@h'(i)!*,$:.txt";
    put(storage, FILES, odd, b"odd", "text/plain").await;
    assert_eq!(
        storage
            .download(FILES, odd)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        b"odd"
    );
}

macro_rules! for_both_backends {
    ($($behaviour:ident),* $(,)?) => {
        mod supabase_backend {
            $(#[tokio::test]
            async fn $behaviour() {
                let double = super::StorageDouble::start().await;
                super::$behaviour(&super::client(&double)).await;
            })*
        }
        mod local_backend {
            $(#[tokio::test]
            async fn $behaviour() {
                let dir = tempfile::tempdir().unwrap();
                let storage = super::LocalStorage::new(dir.path().join("storage"), super::BucketPolicy::default());
                super::$behaviour(&storage).await;
            })*
        }
    };
}

for_both_backends!(
    an_upload_downloads_as_the_same_streamed_bytes_and_type,
    a_missing_object_is_not_found_naming_bucket_and_key,
    an_upload_over_the_bucket_limit_is_too_large,
    a_mime_type_outside_the_allow_list_is_rejected_even_with_parameters,
    a_duplicate_upload_needs_upsert,
    a_listing_shows_one_level_across_pages,
    delete_many_removes_exactly_the_named_objects,
    keys_with_forbidden_characters_or_escapes_are_rejected,
);

// ---- the HTTP client against the double -----------------------------------------------------

#[tokio::test]
async fn not_found_is_not_retried() {
    let double = StorageDouble::start().await;
    let err = client(&double)
        .download(FILES, "app_1/missing.json")
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert_eq!(
        double.requests(),
        ["GET /storage/v1/object/authenticated/app-storage/app_1/missing.json"]
    );
}

#[tokio::test]
async fn two_server_errors_are_retried_and_the_third_attempt_succeeds() {
    let double = StorageDouble::start().await;
    double.put(FILES, "app_1/m.json", b"{}", "application/json");
    double.fail_next(2);
    let got = client(&double)
        .download(FILES, "app_1/m.json")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got, b"{}");
    assert_eq!(count(&double, "GET"), 3);
}

#[tokio::test]
async fn server_errors_past_max_retries_are_unavailable_and_retryable() {
    let double = StorageDouble::start().await;
    double.fail_next(100);
    let mut options = options(&double, SERVICE_KEY);
    options.max_retries = 2;
    let storage = SupabaseStorage::new(options).unwrap();
    let err = storage
        .upload(
            LOGS,
            "app_1/x.log",
            b"x".to_vec().into(),
            "text/plain",
            false,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Unavailable { .. }) && err.is_retryable(),
        "{err}"
    );
    assert_eq!(count(&double, "POST"), 3);
}

#[tokio::test]
async fn a_connection_reset_mid_body_is_a_retryable_error_naming_the_object() {
    let double = StorageDouble::start().await;
    double.put(
        FILES,
        "app_1/big.bin",
        &vec![7u8; 200_000],
        "application/octet-stream",
    );
    double.wire_fault(WireFault::ResetMidBody);
    let err = client(&double)
        .download(FILES, "app_1/big.bin")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Unavailable { .. } | StorageError::Protocol { .. }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("app-storage/app_1/big.bin"),
        "{err}"
    );
    // The next download is clean again.
    let got = client(&double)
        .download(FILES, "app_1/big.bin")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), 200_000);
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_a_protocol_error() {
    let double = StorageDouble::start().await;
    double.put(FILES, "app_1/a.js", b"console.log(1)", "text/javascript");
    double.wire_fault(WireFault::ClaimLonger(10));
    let err = client(&double)
        .download(FILES, "app_1/a.js")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("14 of"), "{err}");
}

#[tokio::test]
async fn a_body_longer_than_its_content_length_is_a_protocol_error() {
    let double = StorageDouble::start().await;
    double.put(FILES, "app_1/a.js", b"console.log(1)", "text/javascript");
    double.wire_fault(WireFault::SendMore(5));
    let err = client(&double)
        .download(FILES, "app_1/a.js")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Protocol { .. }), "{err}");
    assert!(
        err.to_string().contains("longer than the 14 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_service_key_is_access_denied_and_not_retried() {
    let double = StorageDouble::start().await;
    double.put(FILES, "app_1/a.js", b"x", "text/javascript");
    let storage = SupabaseStorage::new(options(&double, "not-the-key")).unwrap();
    for gateway in [true, false] {
        double.set_gateway(gateway);
        let err = storage.download(FILES, "app_1/a.js").await.unwrap_err();
        assert!(
            matches!(err, StorageError::AccessDenied { .. }),
            "gateway {gateway}: {err}"
        );
        assert!(err.to_string().contains("service key"), "{err}");
        assert!(
            !err.to_string().contains("not-the-key"),
            "the key leaked: {err}"
        );
    }
    assert_eq!(count(&double, "GET"), 2);
    assert!(!format!("{storage:?}").contains("not-the-key"));
}

#[tokio::test]
async fn a_file_upload_is_streamed_from_disk() {
    let double = StorageDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stdout.log");
    std::fs::write(&path, vec![b'l'; 1_000_000]).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(client(&double));
    storage
        .upload(
            LOGS,
            "app_1/runs/r/stdout.log",
            UploadBody::File(path),
            "text/plain",
            false,
        )
        .await
        .unwrap();
    let (bytes, mime) = double.get(LOGS, "app_1/runs/r/stdout.log").unwrap();
    assert_eq!((bytes.len(), mime.as_str()), (1_000_000, "text/plain"));
}

#[tokio::test]
async fn a_server_silent_past_the_read_timeout_is_unavailable() {
    let double = StorageDouble::start().await;
    double.delay(Duration::from_secs(3));
    let mut options = options(&double, SERVICE_KEY);
    options.read_timeout = Duration::from_millis(300);
    options.max_retries = 0;
    let err = SupabaseStorage::new(options)
        .unwrap()
        .download(FILES, "app_1/a.js")
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn a_wrong_key_on_the_plain_route_looks_like_a_missing_bucket_so_downloads_use_the_authenticated_one(
) {
    let double = StorageDouble::start().await;
    double.set_gateway(false);
    double.put(FILES, "app_1/a.js", b"x", "text/javascript");
    // What the server answers on the route that allows an invalid JWT: a hidden problem.
    let reply = reqwest::Client::new()
        .get(format!(
            "{}storage/v1/object/{FILES}/app_1/a.js",
            double.url
        ))
        .header("authorization", "Bearer not-the-key")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    assert!(reply.text().await.unwrap().contains("NoSuchBucket"));
    // The client's routes name the real problem.
    let storage = SupabaseStorage::new(options(&double, "not-the-key")).unwrap();
    let err = storage.download(FILES, "app_1/a.js").await.unwrap_err();
    assert!(matches!(err, StorageError::AccessDenied { .. }), "{err}");
    let err = storage.head(FILES, "app_1/a.js").await.unwrap_err();
    assert!(matches!(err, StorageError::AccessDenied { .. }), "{err}");
    assert!(count(&double, "GET /storage/v1/object/authenticated/") >= 1);
}

#[tokio::test]
async fn only_the_service_role_passes_the_bucket_check() {
    let double = StorageDouble::start().await;
    let service = client(&double);
    app_executor::storage::verify_service_role(&service)
        .await
        .unwrap();
    // The anon key is a valid JWT: accepted, but it sees no private bucket or object.
    double.put(FILES, "app_1/a.js", b"x", "text/javascript");
    let anon = SupabaseStorage::new(options(&double, ANON_KEY)).unwrap();
    let err = app_executor::storage::verify_service_role(&anon)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotServiceRole { .. }), "{err}");
    assert!(err.to_string().contains("service_role key"), "{err}");
    assert!(!err.to_string().contains(ANON_KEY), "the key leaked: {err}");
    assert!(matches!(
        anon.download(FILES, "app_1/a.js").await.unwrap_err(),
        StorageError::NotFound { .. }
    ));
    assert!(anon.list(FILES, "app_1/").await.unwrap().is_empty());
    // A wrong key is refused outright.
    double.set_gateway(false);
    let wrong = SupabaseStorage::new(options(&double, "not-the-key")).unwrap();
    let err = app_executor::storage::verify_service_role(&wrong)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::AccessDenied { .. }), "{err}");
    // The local backend has both buckets.
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStorage::new(dir.path(), BucketPolicy::default());
    app_executor::storage::verify_service_role(&local)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_upload_over_the_servers_own_limit_names_both_limits() {
    let double = StorageDouble::start().await;
    double.set_global_limit(50 * 1024 * 1024);
    let storage = client(&double);
    let err = storage
        .upload(
            FILES,
            "app_1/big.bin",
            vec![0u8; 60_000_000].into(),
            "application/octet-stream",
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("file_size_limit") && message.contains("FILE_SIZE_LIMIT"),
        "{message}"
    );
}
