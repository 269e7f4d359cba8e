//! Retention against a real database and real storage (the local backend, and the Supabase HTTP
//! client against the storage double): old logs, outputs, builds and versions go, objects and
//! rows; recent ones and everything still in use stay; a dry run deletes nothing; one pass at a
//! time; and the daemon runs it by itself.

use std::sync::Arc;
use std::time::Duration;

use app_executor::retention::{Retention, RetentionSettings};
use app_executor::storage::ServiceKey;
use app_executor::storage::{
    BucketPolicy, LocalStorage, Storage, SupabaseOptions, SupabaseStorage, APP_LOGS_BUCKET,
    APP_STORAGE_BUCKET,
};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::storage_double::{StorageDouble, SERVICE_KEY};
use crate::harness::{insert_tenant, TestDb};

const DAY: i64 = 86_400;
const CHECKSUM: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn settings() -> RetentionSettings {
    RetentionSettings {
        enabled: true,
        logs_max_age: Duration::from_secs(30 * DAY as u64),
        outputs_max_age: Duration::from_secs(60 * DAY as u64),
        builds_max_age: Duration::from_secs(90 * DAY as u64),
        interval: Duration::from_secs(3600),
        // Small, so every kind takes several batches.
        batch_size: 2,
    }
}

/// A run that finished `days_ago` (or is still running with `None`), with logs, chunks and
/// outputs in storage and their `app_outputs` rows.
async fn run_with_data(
    client: &Client,
    storage: &dyn Storage,
    (company, app): (Uuid, Uuid),
    days_ago: Option<i64>,
) -> Uuid {
    let run: Uuid = match days_ago {
        Some(days) => client
            .query_one(
                "insert into public.app_runs (app_id, company_id, status, started_at, completed_at, logs_path, output_path)
                 values ($1, $2, 'failed', now() - make_interval(secs => $3), now() - make_interval(secs => $3),
                         'x', 'y') returning id",
                &[&app, &company, &((days * DAY) as f64)],
            )
            .await
            .unwrap()
            .get(0),
        None => client
            .query_one(
                "insert into public.app_runs (app_id, company_id, status, executor_id, started_at, lease_expires_at)
                 values ($1, $2, 'running', 'elsewhere', now() - interval '200 days', now() + interval '1 hour')
                 returning id",
                &[&app, &company],
            )
            .await
            .unwrap()
            .get(0),
    };
    for key in run_keys(app, run) {
        storage
            .upload(
                APP_LOGS_BUCKET,
                &key,
                b"x".to_vec().into(),
                "text/plain",
                false,
            )
            .await
            .unwrap();
    }
    for (kind, name) in [
        ("stdout", "stdout"),
        ("stderr", "stderr"),
        ("result", "result"),
        ("metric", "duration_ms"),
        ("file", "report.csv"),
    ] {
        client
            .execute(
                "insert into public.app_outputs (run_id, output_type, output_name) values ($1, $2, $3)",
                &[&run, &kind, &name],
            )
            .await
            .unwrap();
    }
    run
}

/// The keys [`run_with_data`] stores: logs first (3), outputs after (2).
fn run_keys(app: Uuid, run: Uuid) -> Vec<String> {
    let prefix = format!("app_{app}/runs/{run}/");
    [
        "stdout.log",
        "stderr.log",
        "attempt-1-20250101T000000.000000Z/stdout.000001.log",
    ]
    .into_iter()
    .chain(["output/report.csv", "output/deep/er/x.txt"])
    .map(|k| format!("{prefix}{k}"))
    .collect()
}

async fn exists(storage: &dyn Storage, bucket: &str, key: &str) -> bool {
    storage.head(bucket, key).await.unwrap().is_some()
}

/// `(logs purged, outputs purged, output types left)` of a run.
async fn run_state(client: &Client, run: Uuid) -> (bool, bool, Vec<String>) {
    let row = client
        .query_one(
            "select logs_purged_at is not null and logs_path is null,
                    outputs_purged_at is not null and output_path is null,
                    coalesce((select array_agg(output_type order by output_type) from public.app_outputs where run_id = r.id), '{}')
               from public.app_runs r where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Publishes `version` of `app` (one file of its own, and optionally one shared object)
/// `days_ago`.
async fn publish(
    client: &Client,
    storage: &dyn Storage,
    app: Uuid,
    version: &str,
    days_ago: i64,
    shared: bool,
) {
    let own = format!("app_{app}/{version}/index.js");
    storage
        .upload(
            APP_STORAGE_BUCKET,
            &own,
            b"1".to_vec().into(),
            "text/javascript",
            false,
        )
        .await
        .unwrap();
    let mut files = vec![("index.js".to_owned(), own)];
    if shared {
        let key = format!("app_{app}/shared/lib.js");
        storage
            .upload(
                APP_STORAGE_BUCKET,
                &key,
                b"2".to_vec().into(),
                "text/javascript",
                true,
            )
            .await
            .unwrap();
        files.push(("lib.js".into(), key));
    }
    for (_, key) in files {
        client
            .execute(
                "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum, created_at, updated_at)
                 values ($1, $2, $3, 'source', 1, $4, now() - make_interval(secs => $5), now() - make_interval(secs => $5))",
                &[&app, &version, &key, &CHECKSUM, &((days_ago * DAY) as f64)],
            )
            .await
            .unwrap();
    }
}

async fn build(client: &Client, app: Uuid, version: &str, days_ago: i64, current: bool) -> Uuid {
    client
        .query_one(
            "insert into public.app_builds (app_id, build_version, build_status, is_current, created_at, completed_at)
             values ($1, $2, 'success', $3, now() - make_interval(secs => $4), now() - make_interval(secs => $4))
             returning id",
            &[&app, &version, &current, &((days_ago * DAY) as f64)],
        )
        .await
        .unwrap()
        .get(0)
}

/// What a finished build leaves in storage, as the build pipeline lays it out: its archive and
/// one frontend asset (with its `dist` row) in `app-storage`, its log in `app-logs`. Returns
/// `(bucket, key)` of each object.
async fn build_objects(
    client: &Client,
    storage: &dyn Storage,
    app: Uuid,
    build: Uuid,
    version: &str,
) -> Vec<(&'static str, String)> {
    let prefix = format!("app_{app}/builds/{build}/");
    let objects = vec![
        (APP_STORAGE_BUCKET, format!("{prefix}app.tar.gz")),
        (APP_STORAGE_BUCKET, format!("{prefix}dist/dist/index.html")),
        (APP_LOGS_BUCKET, format!("{prefix}stdout.log")),
    ];
    for (bucket, key) in &objects {
        storage
            .upload(bucket, key, b"x".to_vec().into(), "text/plain", true)
            .await
            .unwrap();
    }
    client
        .execute(
            "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum, metadata, created_at, updated_at)
             values ($1, $2, $3, 'dist', 1, $4, jsonb_build_object('build_id', $5::text),
                     now() - interval '200 days', now() - interval '200 days')",
            &[&app, &version, &objects[1].1, &CHECKSUM, &build.to_string()],
        )
        .await
        .unwrap();
    objects
}

async fn dist_rows(client: &Client, build: Uuid) -> i64 {
    client
        .query_one(
            "select count(*) from public.app_storage where file_type = 'dist' and metadata->>'build_id' = $1",
            &[&build.to_string()],
        )
        .await
        .unwrap()
        .get(0)
}

async fn versions_left(client: &Client, app: Uuid) -> Vec<String> {
    client
        .query(
            "select distinct version from public.app_storage where app_id = $1 order by 1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn builds_left(client: &Client, ids: &[Uuid]) -> Vec<Uuid> {
    client
        .query(
            "select id from public.app_builds where id = any($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn removes_old_data_and_keeps_recent_and_used_data(storage: Arc<dyn Storage>) {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let tenant = insert_tenant(&client).await;
    let (company, app) = tenant;
    let s = storage.as_ref();

    // Runs: logs go after 30 days, outputs after 60.
    let ancient = run_with_data(&client, s, tenant, Some(70)).await;
    let old = run_with_data(&client, s, tenant, Some(40)).await;
    let old_too = run_with_data(&client, s, tenant, Some(35)).await;
    let recent = run_with_data(&client, s, tenant, Some(1)).await;
    let running = run_with_data(&client, s, tenant, None).await;

    // Versions, all published 200 days ago unless said otherwise.
    publish(&client, s, app, "1.0.0", 200, true).await; // unused: goes (but not lib.js)
    publish(&client, s, app, "1.1.0", 200, false).await; // only an old build: both go
    publish(&client, s, app, "1.2.0", 200, false).await; // the current build
    publish(&client, s, app, "1.3.0", 200, false).await; // a pending run asks for it
    publish(&client, s, app, "1.4.0", 200, false).await; // a young non-current build
    publish(&client, s, app, "1.5.0", 200, false).await; // an old build a running run uses
    publish(&client, s, app, "2.0.0", 200, true).await; // the highest
    publish(&client, s, app, "0.9.0", 10, false).await; // recent (and the newest)
    let old_build = build(&client, app, "1.1.0", 120, false).await;
    let current = build(&client, app, "1.2.0", 200, true).await;
    let young = build(&client, app, "1.4.0", 10, false).await;
    let in_use = build(&client, app, "1.5.0", 120, false).await;
    let old_build_objects = build_objects(&client, s, app, old_build, "1.1.0").await;
    let current_objects = build_objects(&client, s, app, current, "1.2.0").await;
    client
        .execute(
            "insert into public.app_runs (app_id, company_id, metadata) values ($1, $2, '{\"version\": \"1.3.0\"}')",
            &[&app, &company],
        )
        .await
        .unwrap();
    client
        .execute(
            "update public.app_runs set build_id = $1 where id = $2",
            &[&in_use, &running],
        )
        .await
        .unwrap();

    let retention = Retention {
        pool: app_executor::db::pool(&db.url, Duration::from_secs(30), 4).unwrap(),
        storage: storage.clone(),
        settings: settings(),
        database_url: db.url.clone(),
        connect_timeout: Duration::from_secs(30),
    };
    let stop = CancellationToken::new();

    // A dry run lists what goes and deletes nothing.
    let planned = retention.pass(true, &stop).await.unwrap();
    let mut ids: Vec<(&str, String)> = planned
        .planned
        .iter()
        .map(|p| (p.kind, p.id.clone()))
        .collect();
    ids.sort();
    let mut expected = vec![
        ("logs", ancient.to_string()),
        ("logs", old.to_string()),
        ("logs", old_too.to_string()),
        ("outputs", ancient.to_string()),
        ("build", old_build.to_string()),
        // 1.1.0 still has its build in a dry run, so only 1.0.0 shows.
        ("version", format!("app_{app}@1.0.0")),
    ];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(planned.logs.objects, 9);
    assert_eq!(planned.outputs.objects, 2);
    let planned_build = planned.planned.iter().find(|p| p.kind == "build").unwrap();
    let mut want_keys: Vec<String> = old_build_objects.iter().map(|(_, k)| k.clone()).collect();
    want_keys.sort();
    let mut got_keys = planned_build.objects.clone();
    got_keys.sort();
    assert_eq!(got_keys, want_keys, "a build's archive, assets and log");
    assert_eq!(
        planned.versions.objects, 1,
        "the shared lib.js is not planned"
    );
    for run in [ancient, old, recent] {
        for key in run_keys(app, run) {
            assert!(
                exists(s, APP_LOGS_BUCKET, &key).await,
                "{key} deleted by a dry run"
            );
        }
    }
    assert_eq!(versions_left(&client, app).await.len(), 8);

    let report = retention
        .locked_pass(&stop)
        .await
        .unwrap()
        .expect("the lock is free");
    assert_eq!(
        (report.logs.runs, report.logs.objects, report.logs.rows),
        (3, 9, 6)
    );
    assert_eq!(
        (
            report.outputs.runs,
            report.outputs.objects,
            report.outputs.rows
        ),
        (1, 2, 3)
    );
    assert_eq!(report.builds, 1);
    assert_eq!(
        (
            report.versions.versions,
            report.versions.objects,
            report.versions.rows
        ),
        (2, 2, 3)
    );
    assert_eq!(report.failures, 0);

    // Storage: logs of old runs gone, outputs only of the ancient one; the rest untouched.
    let logs = |run| run_keys(app, run)[..3].to_vec();
    let outputs = |run| run_keys(app, run)[3..].to_vec();
    for key in logs(ancient)
        .iter()
        .chain(&outputs(ancient))
        .chain(&logs(old))
        .chain(&logs(old_too))
    {
        assert!(
            !exists(s, APP_LOGS_BUCKET, key).await,
            "{key} is still there"
        );
    }
    for key in outputs(old)
        .iter()
        .chain(&outputs(old_too))
        .chain(&run_keys(app, recent))
        .chain(&run_keys(app, running))
    {
        assert!(exists(s, APP_LOGS_BUCKET, key).await, "{key} was deleted");
    }
    // Rows likewise.
    assert_eq!(run_state(&client, ancient).await, (true, true, vec![]));
    let outputs_left = vec!["file".to_owned(), "metric".into(), "result".into()];
    assert_eq!(
        run_state(&client, old).await,
        (true, false, outputs_left.clone())
    );
    assert_eq!(
        run_state(&client, old_too).await,
        (true, false, outputs_left)
    );
    let everything: Vec<String> = ["file", "metric", "result", "stderr", "stdout"]
        .map(String::from)
        .to_vec();
    assert_eq!(
        run_state(&client, recent).await,
        (false, false, everything.clone())
    );
    assert_eq!(
        run_state(&client, running).await,
        (false, false, everything)
    );
    let status: String = client
        .query_one(
            "select status from public.app_runs where id = $1",
            &[&ancient],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "failed", "the run row itself is kept");

    // Builds and versions.
    let mut kept = builds_left(&client, &[old_build, current, young, in_use]).await;
    kept.sort();
    let mut want = vec![current, young, in_use];
    want.sort();
    assert_eq!(kept, want);
    for (bucket, key) in &old_build_objects {
        assert!(
            !exists(s, bucket, key).await,
            "{bucket}/{key} is still there"
        );
    }
    for (bucket, key) in &current_objects {
        assert!(exists(s, bucket, key).await, "{bucket}/{key} was deleted");
    }
    assert_eq!(dist_rows(&client, old_build).await, 0);
    assert_eq!(dist_rows(&client, current).await, 1);
    assert_eq!(
        versions_left(&client, app).await,
        ["0.9.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0", "2.0.0"]
    );
    for version in ["1.0.0", "1.1.0"] {
        let key = format!("app_{app}/{version}/index.js");
        assert!(!exists(s, APP_STORAGE_BUCKET, &key).await, "{key}");
    }
    for version in ["0.9.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0", "2.0.0"] {
        let key = format!("app_{app}/{version}/index.js");
        assert!(exists(s, APP_STORAGE_BUCKET, &key).await, "{key}");
    }
    assert!(
        exists(s, APP_STORAGE_BUCKET, &format!("app_{app}/shared/lib.js")).await,
        "an object 2.0.0 still names was deleted"
    );

    // A second pass finds nothing left to do.
    let again = retention.locked_pass(&stop).await.unwrap().unwrap();
    assert_eq!(
        (
            again.logs.runs,
            again.outputs.runs,
            again.builds,
            again.versions.versions
        ),
        (0, 0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_old_objects_and_rows_and_keeps_recent_ones() {
    let root = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(root.path(), BucketPolicy::default());
    removes_old_data_and_keeps_recent_and_used_data(Arc::new(storage)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_works_through_the_supabase_storage_api() {
    let double = StorageDouble::start().await;
    let mut options = SupabaseOptions::new(double.url.clone(), ServiceKey::new(SERVICE_KEY));
    options.retry_base_delay = Duration::from_millis(20);
    let storage = SupabaseStorage::new(options).unwrap();
    removes_old_data_and_keeps_recent_and_used_data(Arc::new(storage)).await;
    assert!(!double.keys(APP_LOGS_BUCKET, "").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_skips_a_pass_while_another_session_holds_the_lock_and_keeps_data_on_storage_errors(
) {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let tenant = insert_tenant(&client).await;
    let double = StorageDouble::start().await;
    let mut options = SupabaseOptions::new(double.url.clone(), ServiceKey::new(SERVICE_KEY));
    options.retry_base_delay = Duration::from_millis(20);
    options.max_retries = 1;
    let storage: Arc<dyn Storage> = Arc::new(SupabaseStorage::new(options).unwrap());
    let old = run_with_data(&client, storage.as_ref(), tenant, Some(100)).await;
    let retention = Retention {
        pool: app_executor::db::pool(&db.url, Duration::from_secs(30), 4).unwrap(),
        storage: storage.clone(),
        settings: settings(),
        database_url: db.url.clone(),
        connect_timeout: Duration::from_secs(30),
    };
    let stop = CancellationToken::new();

    let holder = db.client().await;
    let held: bool = holder
        .query_one(
            "select pg_try_advisory_lock(hashtextextended('app_exec.retention', 0))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(held);
    assert!(retention.locked_pass(&stop).await.unwrap().is_none());
    assert!(!run_state(&client, old).await.0);
    drop(holder);

    // Storage down: the run's rows stay, to be retried.
    double.fail_for(Duration::from_secs(3));
    let report = retention.locked_pass(&stop).await.unwrap().unwrap();
    assert_eq!(report.failures, 2, "logs and outputs of the run");
    assert!(!run_state(&client, old).await.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = retention.locked_pass(&stop).await.unwrap().unwrap();
    assert_eq!(
        (report.failures, report.logs.runs, report.outputs.runs),
        (0, 1, 1)
    );
    assert!(double.keys(APP_LOGS_BUCKET, "").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_runs_retention_in_the_background_and_the_cli_dry_run_lists_it() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let tenant = insert_tenant(&client).await;
    let state = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(state.path().join("storage"), BucketPolicy::default());
    let old = run_with_data(&client, &storage, tenant, Some(45)).await;
    let keys = run_keys(tenant.1, old);

    let output = std::process::Command::new(crate::harness::binary())
        .args(["retention", "--dry-run", "--json"])
        .env("DATABASE_URL", db.url.expose())
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .env("APP_EXECUTOR_EXECUTOR__STATE_DIR", state.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["logs"]["runs"], 1);
    assert_eq!(report["planned"][0]["id"], old.to_string());
    let planned: Vec<&str> = report["planned"][0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(planned.len(), 3);
    assert!(planned.contains(&keys[0].as_str()), "{planned:?}");
    assert!(exists(&storage, APP_LOGS_BUCKET, &keys[0]).await);

    let mut options = DaemonOptions::new("");
    options.env.extend([
        (
            "APP_EXECUTOR_EXECUTOR__STATE_DIR".to_owned(),
            state.path().display().to_string(),
        ),
        ("APP_EXECUTOR_RETENTION__INTERVAL".into(), "1s".into()),
    ]);
    let mut daemon = Daemon::spawn(&db, options);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Defaults (executor.toml): logs and outputs are kept 30 days; this run is 45 days old.
    while run_state(&client, old).await != (true, true, vec![]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not purge the old run; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for key in &keys {
        assert!(!exists(&storage, APP_LOGS_BUCKET, key).await, "{key}");
    }
    daemon.stop();
}
