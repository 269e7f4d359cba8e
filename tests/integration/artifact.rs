//! Preparing a run's files against real PostgreSQL and a real storage backend (the local
//! directory backend, and the HTTP client against the storage double): version resolution,
//! streamed verification, the blob cache, and every way a published version can be broken.

use std::path::Path;
use std::sync::Arc;

use app_executor::artifact::cache::BlobCache;
use app_executor::artifact::resolve::{PrepareError, Resolver};
use app_executor::artifact::{ExtractLimits, HostLimits};
use app_executor::model::ClaimedRun;
use app_executor::storage::{BucketPolicy, LocalStorage, Storage, UploadBody, APP_STORAGE_BUCKET};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::harness::TestDb;

const MANIFEST: &str = r#"{
  "name": "hello", "version": "1.0.0", "type": "backend",
  "runtime": {"backend": {"type": "nodejs", "version": "20", "entrypoint": "index.js", "package_manager": "pnpm"}},
  "permissions": [], "config": {"timeout": 30, "memory_limit": "256MB", "cpu_limit": 0.5}
}"#;

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Fixture {
    _db_dir: tempfile::TempDir,
    storage: Arc<dyn Storage>,
    client: Client,
    app: Uuid,
    company: Uuid,
    state: std::path::PathBuf,
}

async fn fixture(db: &TestDb) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(
        dir.path().join("storage"),
        BucketPolicy::default(),
    ));
    let client = db.client().await;
    let (company, app) = crate::harness::insert_tenant(&client).await;
    let state = dir.path().join("state");
    Fixture {
        _db_dir: dir,
        storage,
        client,
        app,
        company,
        state,
    }
}

impl Fixture {
    /// Uploads `content` and registers it as `path` of `version` with `checksum` (the real one
    /// unless given).
    async fn publish(&self, version: &str, path: &str, content: &[u8], checksum: Option<&str>) {
        let key = format!("app_{}/{version}/{path}", self.app);
        self.storage
            .upload(
                APP_STORAGE_BUCKET,
                &key,
                UploadBody::Bytes(content.to_vec().into()),
                "application/octet-stream",
                true,
            )
            .await
            .unwrap();
        let checksum = checksum
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sha256:{}", sha(content)));
        self.register(version, &key, content.len() as i64, &checksum)
            .await;
    }

    /// Registers the object `key` (under the app's folder) as a file of `version`.
    async fn register(&self, version: &str, key: &str, size: i64, checksum: &str) {
        let file_type = if key.ends_with("/manifest.json") {
            "manifest"
        } else {
            "source"
        };
        self.client
            .execute(
                "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum)
                 values ($1, $2, $3, $4, $5, $6)",
                &[&self.app, &version, &key, &file_type, &size, &checksum],
            )
            .await
            .unwrap();
    }

    async fn publish_hello(&self, version: &str) {
        self.publish(version, "manifest.json", MANIFEST.as_bytes(), None)
            .await;
        self.publish(version, "index.js", b"console.log('hello')\n", None)
            .await;
    }

    fn resolver(&self, db: &TestDb, storage: Arc<dyn Storage>) -> Resolver {
        Resolver {
            pool: app_executor::db::pool(&db.url, std::time::Duration::from_secs(10), 4).unwrap(),
            storage,
            cache: Arc::new(BlobCache::new(self.state.join("cache"), u64::MAX)),
            runs_dir: self.state.join("runs"),
            host: HostLimits {
                max_memory: 2 << 30,
                max_cpu: 2.0,
                max_timeout: std::time::Duration::from_secs(1800),
                default_memory: 512 << 20,
                default_cpu: 1.0,
                default_timeout: std::time::Duration::from_secs(300),
                max_stop_grace: std::time::Duration::from_secs(60),
                default_stop_grace: std::time::Duration::from_secs(10),
            },
            extract: ExtractLimits::default(),
        }
    }

    fn run(&self, metadata: serde_json::Value) -> ClaimedRun {
        ClaimedRun {
            id: Uuid::new_v4(),
            app_id: self.app,
            company_id: self.company,
            build_id: None,
            run_type: "manual".into(),
            attempt: 1,
            max_attempts: 3,
            input_data: serde_json::json!({}),
            metadata,
            created_at: chrono::Utc::now(),
            started_at: chrono::Utc::now(),
        }
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

#[tokio::test]
async fn the_highest_version_is_verified_and_laid_out_and_a_second_run_downloads_nothing() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    f.publish_hello("1.0.0").await;
    f.publish_hello("1.2.0").await;
    f.publish("1.2.0", "lib/util.js", b"module.exports = 1\n", None)
        .await;
    let resolver = f.resolver(&db, f.storage.clone());

    let first = resolver
        .prepare(&f.run(serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(first.version, "1.2.0");
    assert_eq!(read(&first.dir, "lib/util.js"), "module.exports = 1\n");
    assert_eq!(first.manifest.name, "hello");
    assert!(first.digest.starts_with("sha256:"));
    assert!(first.downloaded_bytes > 0);

    let second = resolver
        .prepare(&f.run(serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(
        second.downloaded_bytes, 0,
        "a cached version was downloaded again"
    );
    assert_eq!(second.digest, first.digest);

    let pinned = resolver
        .prepare(&f.run(serde_json::json!({"version": "1.0.0"})))
        .await
        .unwrap();
    assert_eq!(pinned.version, "1.0.0");
    assert!(!pinned.dir.join("lib").exists());
}

#[tokio::test]
async fn concurrent_runs_of_one_version_download_it_once() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    f.publish_hello("1.0.0").await;
    let resolver = Arc::new(f.resolver(&db, f.storage.clone()));
    let runs: Vec<_> = (0..6).map(|_| f.run(serde_json::json!({}))).collect();
    let prepared = futures_util::future::join_all(runs.iter().map(|r| resolver.prepare(r))).await;
    let downloaded: u64 = prepared
        .into_iter()
        .map(|p| p.unwrap().downloaded_bytes)
        .sum();
    let published = (MANIFEST.len() + "console.log('hello')\n".len()) as u64;
    assert_eq!(downloaded, published);
}

async fn failure(f: &Fixture, db: &TestDb, metadata: serde_json::Value) -> PrepareError {
    let resolver = f.resolver(db, f.storage.clone());
    let run = f.run(metadata);
    let err = resolver.prepare(&run).await.unwrap_err();
    resolver.clean_up(&run).await;
    assert!(!resolver.run_dir(&run).exists());
    err
}

#[tokio::test]
async fn a_checksum_mismatch_fails_naming_the_file_and_both_digests() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    f.publish("1.0.0", "manifest.json", MANIFEST.as_bytes(), None)
        .await;
    let claimed = format!("sha256:{}", sha(b"what was published"));
    f.publish("1.0.0", "index.js", b"what is stored now", Some(&claimed))
        .await;
    let err = failure(&f, &db, serde_json::json!({})).await;
    let message = err.to_string();
    assert_eq!(err.error_kind(), "checksum_mismatch");
    assert!(!err.is_retryable());
    assert!(message.contains("index.js"), "{message}");
    assert!(message.contains(&sha(b"what was published")), "{message}");
    assert!(message.contains(&sha(b"what is stored now")), "{message}");
}

#[tokio::test]
async fn a_version_without_a_manifest_fails() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    f.publish("1.0.0", "index.js", b"x", None).await;
    let err = failure(&f, &db, serde_json::json!({})).await;
    assert_eq!(err.error_kind(), "missing_manifest");
    assert!(err.to_string().contains("1.0.0"));
}

#[tokio::test]
async fn a_row_pointing_to_a_missing_object_fails_naming_it() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    f.publish_hello("1.0.0").await;
    let checksum = format!("sha256:{}", sha(b"gone"));
    f.register(
        "1.0.0",
        &format!("app_{}/1.0.0/gone.js", f.app),
        4,
        &checksum,
    )
    .await;
    let err = failure(&f, &db, serde_json::json!({})).await;
    assert_eq!(err.error_kind(), "missing_object");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("gone.js"), "{err}");
}

#[tokio::test]
async fn a_malformed_checksum_fails_naming_the_file() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    f.publish_hello("1.0.0").await;
    // The table's CHECK refuses malformed checksums; a host may have dropped it, so the daemon
    // checks again.
    f.client
        .batch_execute("alter table public.app_storage drop constraint app_storage_checksum_check")
        .await
        .unwrap();
    f.register(
        "1.0.0",
        &format!("app_{}/1.0.0/odd.js", f.app),
        1,
        "sha256:XYZ",
    )
    .await;
    let err = failure(&f, &db, serde_json::json!({})).await;
    assert_eq!(err.error_kind(), "malformed_checksum");
    assert!(err.to_string().contains("odd.js") && err.to_string().contains("sha256:XYZ"));
}

#[tokio::test]
async fn unknown_versions_and_unpublished_apps_fail_clearly() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    let err = failure(&f, &db, serde_json::json!({})).await;
    assert_eq!(err.error_kind(), "app_not_published");
    f.publish_hello("1.0.0").await;
    let err = failure(&f, &db, serde_json::json!({"version": "9.9.9"})).await;
    assert_eq!(err.error_kind(), "unknown_version");
    assert!(err.to_string().contains("9.9.9") && err.to_string().contains("1.0.0"));
    let err = failure(&f, &db, serde_json::json!({"version": {"garbage": true}})).await;
    assert_eq!(err.error_kind(), "unknown_version");
}

#[tokio::test]
async fn a_required_permission_that_was_not_granted_fails() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    let manifest = MANIFEST.replace(
        r#""permissions": []"#,
        r#""permissions": [{"type": "network", "scope": "api.example.com", "required": true}]"#,
    );
    f.publish("1.0.0", "manifest.json", manifest.as_bytes(), None)
        .await;
    f.publish("1.0.0", "index.js", b"x", None).await;
    let err = failure(&f, &db, serde_json::json!({})).await;
    assert_eq!(err.error_kind(), "permission_not_granted");
    f.client
        .execute(
            "insert into public.app_permissions (app_id, permission_type, permission_value) values ($1, 'network', 'api.example.com')",
            &[&f.app],
        )
        .await
        .unwrap();
    let resolver = f.resolver(&db, f.storage.clone());
    resolver
        .prepare(&f.run(serde_json::json!({})))
        .await
        .unwrap();
}

#[tokio::test]
async fn files_come_through_the_http_storage_client_as_well() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    let double = crate::harness::storage_double::StorageDouble::start().await;
    let http: Arc<dyn Storage> = Arc::new(
        app_executor::storage::SupabaseStorage::new(app_executor::storage::SupabaseOptions::new(
            double.url.clone(),
            app_executor::storage::ServiceKey::new(crate::harness::storage_double::SERVICE_KEY),
        ))
        .unwrap(),
    );
    let f = Fixture {
        storage: http.clone(),
        ..f
    };
    f.publish_hello("1.0.0").await;
    let prepared = f
        .resolver(&db, http)
        .prepare(&f.run(serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(read(&prepared.dir, "index.js"), "console.log('hello')\n");
}

#[tokio::test]
async fn a_build_of_another_app_is_refused_without_naming_its_version() {
    let db = TestDb::migrated().await;
    let f = fixture(&db).await;
    f.publish_hello("1.0.0").await;
    let (_, other_app) = crate::harness::insert_tenant(&f.client).await;
    let foreign_build: Uuid = f
        .client
        .query_one(
            "insert into public.app_builds (app_id, build_version, build_status) values ($1, '9.9.9-other', 'success') returning id",
            &[&other_app],
        )
        .await
        .unwrap()
        .get(0);
    let resolver = f.resolver(&db, f.storage.clone());
    let mut run = f.run(serde_json::json!({}));
    run.build_id = Some(foreign_build);
    let err = resolver.prepare(&run).await.unwrap_err();
    resolver.clean_up(&run).await;
    assert_eq!(err.error_kind(), "foreign_build");
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("9.9.9-other"), "{err}");
}
