//! Builds end to end: pending `app_builds` rows inserted by SQL, processed by the real daemon
//! with real Docker and pnpm, and runs that start from the build's archive on a host that never
//! saw the app (its own state directory, the storage shared).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::harness::apps::{self, enqueue, run_record};
use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::docker::{self, assert_no_containers, containers_created_since};
use crate::harness::{insert_tenant, TestDb};

/// A daemon host: its own state directory (caches, run directories), the storage shared.
struct Host {
    state: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        Self {
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn options(&self, storage: &Path) -> DaemonOptions {
        let mut options = DaemonOptions::production(self.state.path());
        options.env.push((
            "APP_EXECUTOR_STORAGE__LOCAL_ROOT".to_owned(),
            storage.display().to_string(),
        ));
        options
    }

    fn label(&self) -> String {
        DaemonOptions::test_label(self.state.path())
    }

    fn run_until_idle(&self, db: &TestDb, storage: &Path) -> String {
        let mut daemon = Daemon::spawn(db, self.options(storage).until_idle());
        let status = daemon.wait(Duration::from_secs(120));
        let log = daemon.log_text();
        assert!(status.success(), "daemon failed: {log}");
        log
    }
}

/// The app `examples/hello` with a `build` script that writes `built.txt`, published with the
/// storage at `storage`.
fn publish_with_build_script(db: &TestDb, storage: &Path, app: Uuid, script: &str) {
    let dir = apps::copy_hello();
    let package = dir.path().join("package.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&package).unwrap()).unwrap();
    value["scripts"] = json!({"build": "node build.js"});
    std::fs::write(&package, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    std::fs::write(dir.path().join("build.js"), script).unwrap();
    let publisher = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::harness::binary())
        .arg("publish")
        .arg(dir.path())
        .args(["--app", &app.to_string()])
        .env("DATABASE_URL", db.url.expose())
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .env("APP_EXECUTOR_EXECUTOR__STATE_DIR", publisher.path())
        .env("APP_EXECUTOR_STORAGE__LOCAL_ROOT", storage)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "publish failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn insert_build(
    client: &tokio_postgres::Client,
    app: Uuid,
    config: serde_json::Value,
) -> Uuid {
    client
        .query_one(
            "insert into public.app_builds (app_id, build_version, build_config) values ($1, '1.0.0', $2) returning id",
            &[&app, &config],
        )
        .await
        .unwrap()
        .get(0)
}

#[derive(Debug)]
struct BuildRow {
    status: String,
    error_kind: Option<String>,
    error_message: Option<String>,
    build_path: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    logs: Option<String>,
    log_path: Option<String>,
    is_current: bool,
    completed: bool,
}

async fn build_row(client: &tokio_postgres::Client, build: Uuid) -> BuildRow {
    let r = client
        .query_one(
            "select build_status, error_kind, error_message, build_path, artifact_digest, archive_size,
                    build_logs, build_log_path, is_current, completed_at is not null
               from public.app_builds where id = $1",
            &[&build],
        )
        .await
        .unwrap();
    BuildRow {
        status: r.get(0),
        error_kind: r.get(1),
        error_message: r.get(2),
        build_path: r.get(3),
        digest: r.get(4),
        size: r.get(5),
        logs: r.get(6),
        log_path: r.get(7),
        is_current: r.get(8),
        completed: r.get(9),
    }
}

fn object(storage: &Path, bucket: &str, key: &str) -> PathBuf {
    storage.join(bucket).join(key)
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

const WRITES_BUILT_TXT: &str =
    "require('fs').writeFileSync('built.txt', 'built by the build script\\n'); console.log('build step done');";

#[tokio::test(flavor = "multi_thread")]
async fn a_build_inserted_by_sql_succeeds_and_a_fresh_host_runs_it_without_installing() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let storage = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_with_build_script(&db, storage.path(), app, WRITES_BUILT_TXT);
    let builder = Host::new();
    let build = insert_build(&client, app, json!({})).await;

    let since = docker::unix_now();
    let log = builder.run_until_idle(&db, storage.path());
    let row = build_row(&client, build).await;
    assert_eq!(row.status, "success", "{row:?}\n{log}");
    assert!(row.completed && row.is_current, "{row:?}");
    let key = format!("app_{app}/builds/{build}/app.tar.gz");
    assert_eq!(row.build_path.as_deref(), Some(key.as_str()));
    let archive = object(storage.path(), "app-storage", &key);
    assert_eq!(
        row.digest.as_deref(),
        Some(sha256(&archive).as_str()),
        "the row's digest is the stored archive's"
    );
    assert_eq!(
        row.size,
        Some(std::fs::metadata(&archive).unwrap().len() as i64)
    );
    let logs = row.logs.unwrap_or_default();
    assert!(logs.contains("build step done"), "build_logs: {logs}");
    let log_path = row.log_path.unwrap();
    assert_eq!(log_path, format!("app_{app}/builds/{build}/"));
    let stdout = std::fs::read_to_string(object(
        storage.path(),
        "app-logs",
        &format!("{log_path}stdout.log"),
    ))
    .unwrap();
    assert!(
        stdout.contains("build step done"),
        "the whole log is in app-logs: {stdout}"
    );
    assert_eq!(
        containers_created_since(&since, &builder.label(), "build"),
        1
    );

    let listing = std::process::Command::new("tar")
        .arg("tzf")
        .arg(&archive)
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    for entry in [
        "built.txt",
        "index.js",
        "manifest.json",
        "node_modules/greeting",
    ] {
        assert!(
            listing.lines().any(|l| l.trim_end_matches('/') == entry),
            "{entry} not in the archive:\n{listing}"
        );
    }

    // A host that never saw the app: no blob, no dependency cache.
    let fresh = Host::new();
    let since = docker::unix_now();
    let run: Uuid = client
        .query_one(
            "insert into public.app_runs (app_id, company_id, build_id) values ($1, $2, $3) returning id",
            &[&app, &company, &build],
        )
        .await
        .unwrap()
        .get(0);
    let implicit = enqueue(&client, app, company, json!({})).await;
    let log = fresh.run_until_idle(&db, storage.path());
    for id in [run, implicit] {
        let record = run_record(&client, id).await;
        assert_eq!(record.summary(), "success/-", "{record:?}\n{log}");
    }
    assert_eq!(
        containers_created_since(&since, &fresh.label(), "install"),
        0,
        "a run from a build installed dependencies:\n{log}"
    );
    assert_eq!(containers_created_since(&since, &fresh.label(), "run"), 2);
    let digest: Option<String> = client
        .query_one(
            "select artifact_digest from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(digest, row.digest, "the run records the archive it ran");
    assert_no_containers(&builder.label());
    assert_no_containers(&fresh.label());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_script_fails_the_build_with_its_log_and_current_stays() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let storage = tempfile::tempdir().unwrap();
    let (_, app) = insert_tenant(&client).await;
    publish_with_build_script(
        &db,
        storage.path(),
        app,
        "console.error('compiler says: missing semicolon'); process.exit(3);",
    );
    let host = Host::new();
    let unknown_script = insert_build(&client, app, json!({"script": "ok"})).await;
    let bad = insert_build(&client, app, json!({})).await;
    let bad_config = insert_build(&client, app, json!({"env": {"PATH": "/evil"}})).await;
    let log = host.run_until_idle(&db, storage.path());

    let row = build_row(&client, unknown_script).await;
    // `ok` is not a script of the package: pnpm fails it, a clean failure too.
    assert_eq!(row.status, "failed", "{row:?}\n{log}");
    assert_eq!(row.error_kind.as_deref(), Some("build_script_failed"));

    let row = build_row(&client, bad).await;
    assert_eq!(row.status, "failed", "{row:?}\n{log}");
    assert_eq!(row.error_kind.as_deref(), Some("build_script_failed"));
    let message = row.error_message.unwrap();
    assert!(
        message.contains("missing semicolon") && message.contains("exit code 3"),
        "{message}"
    );
    assert!(row.logs.unwrap().contains("missing semicolon"));
    assert!(row.build_path.is_none() && !row.is_current && row.completed);

    let row = build_row(&client, bad_config).await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.error_kind.as_deref(), Some("invalid_build_config"));
    assert!(row.error_message.unwrap().contains("build_config.env.PATH"));
    let current: i64 = client
        .query_one(
            "select count(*) from public.app_builds where app_id = $1 and is_current",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, 0, "no failed build becomes current");
    assert_no_containers(&host.label());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_past_its_timeout_fails_and_a_cancelled_one_stops_within_seconds() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let storage = tempfile::tempdir().unwrap();
    let (_, app) = insert_tenant(&client).await;
    publish_with_build_script(&db, storage.path(), app, "setTimeout(() => {}, 600000);");
    let host = Host::new();
    let timed = insert_build(&client, app, json!({"timeout": 2})).await;
    let log = host.run_until_idle(&db, storage.path());
    let row = build_row(&client, timed).await;
    assert_eq!(row.status, "failed", "{row:?}\n{log}");
    assert_eq!(row.error_kind.as_deref(), Some("build_timeout"));

    let cancelled = insert_build(&client, app, json!({})).await;
    let mut daemon = Daemon::spawn(&db, host.options(storage.path()));
    let container = wait_for_build_container(cancelled, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("no build container:\n{}", daemon.log_text()));
    client
        .execute(
            "update public.app_builds set build_status = 'cancelled' where id = $1",
            &[&cancelled],
        )
        .await
        .unwrap();
    let started = Instant::now();
    while container_exists(&container) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the build container outlived its cancel"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = build_row(&client, cancelled).await;
        if row.completed {
            assert_eq!(row.status, "cancelled");
            assert_eq!(row.error_kind.as_deref(), Some("cancelled"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancel was never recorded: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop();
    assert_no_containers(&host.label());
}

fn wait_for_build_container(build: Uuid, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let out = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("label=app-executor.run={build}"))
            .args(["--filter", "label=app-executor.phase=build"])
            .output()
            .unwrap();
        let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        if !id.is_empty() {
            return Some(id);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn container_exists(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_build_archive_fails_the_run_with_checksum_mismatch() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let storage = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_with_build_script(&db, storage.path(), app, WRITES_BUILT_TXT);
    let build = insert_build(&client, app, json!({})).await;
    let log = Host::new().run_until_idle(&db, storage.path());
    let row = build_row(&client, build).await;
    assert_eq!(row.status, "success", "{row:?}\n{log}");

    // Replace the object with another valid archive: the digest no longer matches.
    let archive = object(
        storage.path(),
        "app-storage",
        row.build_path.as_deref().unwrap(),
    );
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("index.js"),
        "console.log('not what was built')",
    )
    .unwrap();
    let status = std::process::Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .args(["-C", other.path().to_str().unwrap(), "index.js"])
        .status()
        .unwrap();
    assert!(status.success());
    let run = enqueue(&client, app, company, json!({})).await;
    let log = Host::new().run_until_idle(&db, storage.path());
    let record = run_record(&client, run).await;
    assert_eq!(
        record.summary(),
        "failed/checksum_mismatch",
        "{record:?}\n{log}"
    );

    // A run naming a build that failed says so.
    let failed = insert_build(&client, app, json!({"script": "missing-script"})).await;
    Host::new().run_until_idle(&db, storage.path());
    assert_eq!(build_row(&client, failed).await.status, "failed");
    let run: Uuid = client
        .query_one(
            "insert into public.app_runs (app_id, company_id, build_id) values ($1, $2, $3) returning id",
            &[&app, &company, &failed],
        )
        .await
        .unwrap()
        .get(0);
    Host::new().run_until_idle(&db, storage.path());
    let record = run_record(&client, run).await;
    assert_eq!(record.summary(), "failed/build_failed", "{record:?}");
}
