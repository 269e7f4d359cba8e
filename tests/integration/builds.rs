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
use crate::harness::storage_double::{StorageDouble, SERVICE_KEY};
use crate::harness::{insert_tenant, TestDb};

/// Where the daemons and the publisher keep objects: a local storage root, or the HTTP double
/// of Supabase Storage.
#[derive(Clone, Copy)]
enum Store<'a> {
    Local(&'a Path),
    Double(&'a StorageDouble),
}

impl<'a> From<&'a Path> for Store<'a> {
    fn from(root: &'a Path) -> Self {
        Store::Local(root)
    }
}

impl<'a> From<&'a StorageDouble> for Store<'a> {
    fn from(double: &'a StorageDouble) -> Self {
        Store::Double(double)
    }
}

impl Store<'_> {
    fn env(self) -> Vec<(String, String)> {
        match self {
            Store::Local(root) => vec![(
                "APP_EXECUTOR_STORAGE__LOCAL_ROOT".to_owned(),
                root.display().to_string(),
            )],
            Store::Double(double) => vec![
                ("APP_EXECUTOR_STORAGE__BACKEND".into(), "supabase".into()),
                ("APP_EXECUTOR_STORAGE__URL".into(), double.url.to_string()),
                (
                    "APP_EXECUTOR_STORAGE__SERVICE_KEY".into(),
                    SERVICE_KEY.into(),
                ),
            ],
        }
    }
}

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

    fn options<'a>(&self, storage: impl Into<Store<'a>>) -> DaemonOptions {
        let mut options = DaemonOptions::production(self.state.path());
        options.env.extend(storage.into().env());
        options
    }

    fn label(&self) -> String {
        DaemonOptions::test_label(self.state.path())
    }

    fn run_until_idle<'a>(&self, db: &TestDb, storage: impl Into<Store<'a>>) -> String {
        let mut daemon = Daemon::spawn(db, self.options(storage).until_idle());
        let status = daemon.wait(Duration::from_secs(120));
        let log = daemon.log_text();
        assert!(status.success(), "daemon failed: {log}");
        log
    }
}

/// The app `examples/hello` with a `build` script that writes `built.txt`, published with the
/// storage at `storage`.
fn publish_with_build_script<'a>(
    db: &TestDb,
    storage: impl Into<Store<'a>>,
    app: Uuid,
    script: &str,
) {
    publish_hello_variant(db, storage, app, script, |_, _| {});
}

/// A copy of `examples/hello` whose `build` script runs `script`, with `edit` applied to the
/// manifest and `package.json`.
fn hello_with_build_script(
    script: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = apps::copy_hello();
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let package = dir.path().join("package.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&package).unwrap()).unwrap();
    value["scripts"] = json!({"build": "node build.js", "noop": "node --version"});
    edit(&mut manifest, &mut value);
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::write(&package, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    std::fs::write(dir.path().join("build.js"), script).unwrap();
    dir
}

/// The CLI as an operator runs it against this database and storage (a state directory of its
/// own, kept until the process is gone).
fn cli<'a>(db: &TestDb, storage: impl Into<Store<'a>>) -> std::process::Command {
    let state = tempfile::tempdir().unwrap().keep();
    let mut command = std::process::Command::new(crate::harness::binary());
    command
        .env("DATABASE_URL", db.url.expose())
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .env("APP_EXECUTOR_EXECUTOR__STATE_DIR", state)
        .envs(storage.into().env());
    command
}

/// [`publish_with_build_script`] with `edit` applied to the manifest and `package.json` first.
fn publish_hello_variant<'a>(
    db: &TestDb,
    storage: impl Into<Store<'a>>,
    app: Uuid,
    script: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value),
) {
    let dir = hello_with_build_script(script, edit);
    let out = cli(db, storage)
        .arg("publish")
        .arg(dir.path())
        .args(["--app", &app.to_string()])
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
    let phases: serde_json::Value = client
        .query_one(
            "select metadata->'phases_ms' from public.app_builds where id = $1",
            &[&build],
        )
        .await
        .unwrap()
        .get(0);
    for phase in ["prepare", "image", "install", "build", "pack", "upload"] {
        assert!(phases[phase].is_number(), "{phase} not in {phases}");
    }
    assert!(log.contains("build phases"), "{log}");

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
    let chosen: Option<Uuid> = client
        .query_one(
            "select build_id from public.app_runs where id = $1",
            &[&implicit],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        chosen,
        Some(build),
        "a run that chose the current build records it"
    );
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
    assert_gone_within(&container, Duration::from_secs(15), &daemon);
    let row = wait_until_completed(&client, cancelled, Duration::from_secs(15)).await;
    assert_eq!(row.status, "cancelled");
    assert_eq!(row.error_kind.as_deref(), Some("cancelled"));
    daemon.stop();
    assert_no_containers(&host.label());
}

fn wait_for_build_container(build: Uuid, limit: Duration) -> Option<String> {
    wait_for_container(build, "build", limit)
}

/// The running container of `build`'s `phase` (`install` or `build`), once there is one.
fn wait_for_container(build: Uuid, phase: &str, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let out = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("label=app-executor.run={build}"))
            .args(["--filter", &format!("label=app-executor.phase={phase}")])
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

/// Panics with the daemon's log unless `container` is gone within `limit` (of a cancel).
fn assert_gone_within(container: &str, limit: Duration, daemon: &Daemon) {
    let started = Instant::now();
    while container_exists(container) {
        assert!(
            started.elapsed() < limit,
            "container {container} outlived its cancel:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn container_exists(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_or_unsafe_build_archive_fails_the_run_and_so_does_a_failed_build() {
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

    // An archive whose digest is right but which holds an entry escaping the app directory
    // is refused by the archive policy, not extracted.
    let evil = tempfile::tempdir().unwrap();
    std::fs::create_dir(evil.path().join("app")).unwrap();
    std::fs::write(evil.path().join("escape.js"), "owned").unwrap();
    let status = std::process::Command::new("tar")
        .args(["-C", evil.path().join("app").to_str().unwrap()])
        .args(["--absolute-names", "-czf"])
        .arg(&archive)
        .arg("../escape.js")
        .status()
        .unwrap();
    assert!(status.success());
    client
        .execute(
            "update public.app_builds set artifact_digest = $2, archive_size = $3 where id = $1",
            &[
                &build,
                &sha256(&archive),
                &(std::fs::metadata(&archive).unwrap().len() as i64),
            ],
        )
        .await
        .unwrap();
    let run = enqueue(&client, app, company, json!({})).await;
    let log = Host::new().run_until_idle(&db, storage.path());
    let record = run_record(&client, run).await;
    assert_eq!(
        record.summary(),
        "failed/unsafe_archive",
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

/// A build script that writes a small static site into `dist/` (the PNG is a real 1x1 image).
const WRITES_DIST: &str = r#"
const fs = require('fs');
fs.mkdirSync('dist/img', { recursive: true });
fs.writeFileSync('dist/index.html', '<!doctype html><script src="app.js"></script>');
fs.writeFileSync('dist/app.js', 'console.log("hi")');
fs.writeFileSync('dist/style.css', 'body { color: red }');
fs.writeFileSync('dist/img/icon.svg', '<svg xmlns="http://www.w3.org/2000/svg"/>');
fs.writeFileSync('dist/logo.png', Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=', 'base64'));
console.log('site built');
"#;

fn with_frontend(manifest: &mut serde_json::Value, _: &mut serde_json::Value) {
    manifest["type"] = json!("both");
    manifest["runtime"]["frontend"] =
        json!({"type": "static", "entrypoint": "dist/index.html", "assets": ["dist/"]});
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frontend_build_publishes_its_assets_as_dist_rows_with_their_mime_types() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let storage = tempfile::tempdir().unwrap();
    let (_, app) = insert_tenant(&client).await;
    // dist/ does not exist when the app is published: it is what the build makes.
    publish_hello_variant(&db, storage.path(), app, WRITES_DIST, with_frontend);
    let host = Host::new();
    let built = insert_build(&client, app, json!({})).await;
    let log = host.run_until_idle(&db, storage.path());
    let row = build_row(&client, built).await;
    assert_eq!(row.status, "success", "{row:?}\n{log}");
    assert!(row.is_current);

    let rows = client
        .query(
            "select file_path, mime_type, checksum, file_size, version from public.app_storage
              where app_id = $1 and file_type = 'dist' and metadata->>'build_id' = $2
              order by file_path",
            &[&app, &built.to_string()],
        )
        .await
        .unwrap();
    let prefix = format!("app_{app}/builds/{built}/dist/");
    let listed: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            let path: String = r.get(0);
            (path.strip_prefix(&prefix).unwrap().to_owned(), r.get(1))
        })
        .collect();
    let expected = [
        ("dist/app.js", "application/javascript"),
        ("dist/img/icon.svg", "image/svg+xml"),
        ("dist/index.html", "text/html"),
        ("dist/logo.png", "image/png"),
        ("dist/style.css", "text/css"),
    ];
    assert_eq!(
        listed,
        expected
            .iter()
            .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
            .collect::<Vec<_>>()
    );
    for r in &rows {
        let key: String = r.get(0);
        let stored = object(storage.path(), "app-storage", &key);
        assert_eq!(sha256(&stored), r.get::<_, String>(2), "{key}");
        assert_eq!(
            std::fs::metadata(&stored).unwrap().len() as i64,
            r.get::<_, i64>(3)
        );
        assert_eq!(r.get::<_, String>(4), "1.0.0");
    }

    // A later build that fails leaves the successful one current and its assets in place; a
    // build that produces no frontend entrypoint fails clearly.
    let failed = insert_build(&client, app, json!({"script": "missing-script"})).await;
    let no_site = insert_build(&client, app, json!({"script": "noop"})).await;
    let log = host.run_until_idle(&db, storage.path());
    assert_eq!(build_row(&client, failed).await.status, "failed", "{log}");
    let row = build_row(&client, no_site).await;
    assert_eq!(row.status, "failed", "{row:?}\n{log}");
    assert_eq!(row.error_kind.as_deref(), Some("frontend_missing"));
    assert!(
        row.error_message
            .as_deref()
            .unwrap_or("")
            .contains("dist/index.html"),
        "{row:?}"
    );
    let current: Vec<Uuid> = client
        .query(
            "select id from public.app_builds where app_id = $1 and is_current",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(current, vec![built], "is_current moves only on success");
    let dist: i64 = client
        .query_one(
            "select count(*) from public.app_storage where app_id = $1 and file_type = 'dist'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dist, 5, "failed builds publish no assets");
    assert_no_containers(&host.label());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_cancelled_while_installing_stops_within_seconds() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let storage = tempfile::tempdir().unwrap();
    let (_, app) = insert_tenant(&client).await;
    // The package's own postinstall hangs, so the install phase lasts until it is stopped.
    publish_hello_variant(&db, storage.path(), app, WRITES_BUILT_TXT, |_, package| {
        package["scripts"]["postinstall"] = json!("node -e \"setTimeout(() => {}, 600000)\"");
    });
    let host = Host::new();
    let build = insert_build(&client, app, json!({})).await;
    let mut options = host.options(storage.path());
    options.env.push((
        "APP_EXECUTOR_SANDBOX__INSTALL_SCRIPTS_APPS".to_owned(),
        format!("[\"{app}\"]"),
    ));
    let mut daemon = Daemon::spawn(&db, options);
    let container = wait_for_container(build, "install", Duration::from_secs(120))
        .unwrap_or_else(|| panic!("no install container:\n{}", daemon.log_text()));
    client
        .execute(
            "update public.app_builds set build_status = 'cancelled' where id = $1",
            &[&build],
        )
        .await
        .unwrap();
    assert_gone_within(&container, Duration::from_secs(15), &daemon);
    let row = wait_until_completed(&client, build, Duration::from_secs(15)).await;
    assert_eq!(row.status, "cancelled", "{row:?}");
    assert_eq!(row.error_kind.as_deref(), Some("cancelled"));
    assert!(row.build_path.is_none());
    daemon.stop();
    assert!(
        !storage
            .path()
            .join("app-storage")
            .join(format!("app_{app}/builds"))
            .exists(),
        "a cancelled build uploaded something"
    );
    assert_no_containers(&host.label());
}

/// A daemon killed hard while the build script runs: its container is removed, the build goes
/// back to the queue and is built again under a new attempt, ending with one archive.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_whose_daemon_is_killed_is_rescued_and_ends_with_one_archive() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let storage = tempfile::tempdir().unwrap();
    let (_, app) = insert_tenant(&client).await;
    publish_with_build_script(
        &db,
        storage.path(),
        app,
        "setTimeout(() => { require('fs').writeFileSync('built.txt', 'x'); console.log('build step done'); }, 4000);",
    );
    let host = Host::new();
    let build = insert_build(&client, app, json!({})).await;
    let mut first = Daemon::spawn(&db, host.options(storage.path()));
    let orphan = wait_for_build_container(build, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("no build container:\n{}", first.log_text()));
    first.kill_hard();
    // Its reaper removes the container at once and hands the build back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while container_exists(&orphan) {
        assert!(
            Instant::now() < deadline,
            "the killed daemon's build container is still there:\n{}",
            first.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut second = Daemon::spawn(&db, host.options(storage.path()));
    let row = wait_until_completed(&client, build, Duration::from_secs(120)).await;
    let log = second.log_text();
    assert_eq!(row.status, "success", "{row:?}\n{log}");
    assert!(row.is_current);
    assert!(
        !container_exists(&orphan),
        "the orphaned build container is still there"
    );
    let attempt: i32 = client
        .query_one(
            "select attempt from public.app_builds where id = $1",
            &[&build],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempt, 2, "{log}");
    second.stop();

    let folder = storage
        .path()
        .join("app-storage")
        .join(format!("app_{app}/builds/{build}"));
    let objects: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert_eq!(objects, vec!["app.tar.gz".to_owned()], "{folder:?}");
    let archive = folder.join("app.tar.gz");
    assert_eq!(row.digest.as_deref(), Some(sha256(&archive).as_str()));
    let runs_left: Vec<_> = std::fs::read_dir(host.state.path().join("runs"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(
        runs_left.is_empty(),
        "attempt directories left: {runs_left:?}"
    );
    assert_no_containers(&host.label());
}

async fn wait_until_completed(
    client: &tokio_postgres::Client,
    build: Uuid,
    limit: Duration,
) -> BuildRow {
    let deadline = Instant::now() + limit;
    loop {
        let row = build_row(client, build).await;
        if row.completed {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "the build never finished: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same path through the HTTP client against the double of Supabase Storage: the archive
/// and the frontend's assets are uploaded there, and a fresh host runs from the archive.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_works_through_the_supabase_storage_api() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let double = StorageDouble::start().await;
    let (company, app) = insert_tenant(&client).await;
    publish_hello_variant(&db, &double, app, WRITES_DIST, with_frontend);
    let build = insert_build(&client, app, json!({})).await;
    let log = Host::new().run_until_idle(&db, &double);
    let row = build_row(&client, build).await;
    assert_eq!(row.status, "success", "{row:?}\n{log}");
    let stored = double.keys("app-storage", &format!("app_{app}/builds/{build}/"));
    let archive = stored
        .iter()
        .find(|(key, _)| key.ends_with("/app.tar.gz"))
        .unwrap_or_else(|| panic!("no archive in {stored:?}"));
    assert_eq!(Some(archive.1 as i64), row.size);
    assert_eq!(
        stored
            .iter()
            .filter(|(key, _)| key.contains("/dist/"))
            .count(),
        5,
        "{stored:?}"
    );
    assert!(
        !double
            .keys("app-logs", &format!("app_{app}/builds/{build}/"))
            .is_empty(),
        "the build log is in app-logs"
    );

    let fresh = Host::new();
    let since = docker::unix_now();
    let run = enqueue(&client, app, company, json!({})).await;
    let log = fresh.run_until_idle(&db, &double);
    assert_eq!(
        run_record(&client, run).await.summary(),
        "success/-",
        "{log}"
    );
    assert_eq!(
        containers_created_since(&since, &fresh.label(), "install"),
        0
    );
}

/// The operator's path: `publish --build --wait` against a running daemon, `logs` of the build,
/// `build --wait --json` of a failing config, and the errors for bad input.
#[tokio::test(flavor = "multi_thread")]
async fn publish_build_wait_follows_the_build_and_logs_prints_it() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let storage = tempfile::tempdir().unwrap();
    let (_, app) = insert_tenant(&client).await;
    let host = Host::new();
    let mut daemon = Daemon::spawn(&db, host.options(storage.path()));
    let dir = hello_with_build_script(WRITES_BUILT_TXT, |_, _| {});
    let out = cli(&db, storage.path())
        .arg("publish")
        .arg(dir.path())
        .args(["--app", &app.to_string(), "--build", "--wait"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{stdout}{stderr}\n{}",
        daemon.log_text()
    );
    assert!(stdout.contains("published version 1.0.0"), "{stdout}");
    assert!(stdout.contains("status: success"), "{stdout}");
    assert!(stdout.contains("archive: app_"), "{stdout}");
    assert!(
        stdout.contains("current: runs of version 1.0.0"),
        "{stdout}"
    );
    let build: Uuid = client
        .query_one(
            "select id from public.app_builds where app_id = $1 and is_current",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stderr.contains(&format!("build {build}: success")),
        "{stderr}"
    );

    let out = cli(&db, storage.path())
        .args(["logs", &build.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("build step done"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = cli(&db, storage.path())
        .args(["build", &app.to_string(), "--wait", "--json"])
        .args(["--build-config", r#"{"script": "missing-script"}"#])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["status"], "failed");
    assert_eq!(state["error_kind"], "build_script_failed");
    assert_eq!(state["is_current"], false);

    for (args, says) in [
        (vec!["--version", "9.9.9"], "9.9.9"),
        (vec!["--build-config", "[1]"], "is not a JSON object"),
    ] {
        let out = cli(&db, storage.path())
            .args(["build", &app.to_string()])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let out = cli(&db, storage.path())
        .args(["build", &Uuid::new_v4().to_string()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no application"));
    let builds: i64 = client
        .query_one(
            "select count(*) from public.app_builds where app_id = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(builds, 2, "bad input creates no build");
    daemon.stop();
    assert_no_containers(&host.label());
}
