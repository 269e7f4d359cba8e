//! Storage keys that are wrong or too weak stop the commands that use storage with a clear
//! reason instead of corrupting state, and a log bucket that refuses every upload does not hold
//! a run's status back for the whole retry window. Against the HTTP storage double, which
//! answers as the real server does (see its module header).

use std::process::Output;

use std::time::Duration;
use tokio::process::Command;

use serde_json::json;
use uuid::Uuid;

use crate::harness::apps::{enqueue, run_record, write_app};
use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::storage_double::{StorageDouble, ANON_KEY, SERVICE_KEY};
use crate::harness::{binary, insert_tenant, TestDb};

/// The binary with the double as storage and `key` as its service key (a child process the
/// runtime waits for, so the double on this runtime keeps answering).
async fn with_key(db: &TestDb, double: &StorageDouble, key: &str, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("DATABASE_URL", db.url.expose())
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .env("APP_EXECUTOR_OPS__LISTEN", "")
        .env("APP_EXECUTOR_STORAGE__BACKEND", "supabase")
        .env("APP_EXECUTOR_STORAGE__URL", double.url.as_str())
        .env("APP_EXECUTOR_STORAGE__MAX_RETRIES", "0")
        .env("APP_EXECUTOR_STORAGE__SERVICE_KEY", key)
        .output()
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_wrong_or_anon_key_stops_every_command_that_uses_storage_and_changes_nothing() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    // A finished run with logs and outputs old enough for retention.
    let run: Uuid = client
        .query_one(
            "insert into public.app_runs (app_id, company_id, status, completed_at, logs_path, output_path)
             values ($1, $2, 'cancelled', now() - interval '400 days', 'app_' || $1::uuid::text || '/runs/x/', 'app_' || $1::uuid::text || '/runs/x/output/')
             returning id",
            &[&app, &company],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "insert into public.app_outputs (run_id, output_type, output_name) values ($1, 'stdout', 'stdout')",
            &[&run],
        )
        .await
        .unwrap();
    let double = StorageDouble::start().await;
    double.set_gateway(false);
    for (key, reason) in [
        ("not-the-key-4711", "Invalid Compact JWS"),
        (ANON_KEY, "not the project's service_role key"),
    ] {
        let check = with_key(&db, &double, key, &["check"]).await;
        assert_eq!(check.status.code(), Some(1), "check: {}", text(&check));
        assert!(
            text(&check).contains("check failed: storage") && text(&check).contains(reason),
            "check: {}",
            text(&check)
        );
        for args in [
            &["run", "--until-idle"][..],
            &["logs", &run.to_string()][..],
            &["retention"][..],
        ] {
            let out = with_key(&db, &double, key, args).await;
            assert_eq!(out.status.code(), Some(78), "{args:?}: {}", text(&out));
            assert!(text(&out).contains(reason), "{args:?}: {}", text(&out));
            assert!(!text(&out).contains(key), "{args:?} printed the key");
        }
        assert!(!text(&check).contains(key), "check printed the key");
    }
    // Retention changed nothing: the rows and pointers are all still there.
    let row = client
        .query_one(
            "select logs_path is not null, logs_purged_at is null,
                    (select count(*) from public.app_outputs where run_id = $1)
               from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, i64>(2)
        ),
        (true, true, 1)
    );
    // With the service key the same pass does its work.
    let out = with_key(&db, &double, SERVICE_KEY, &["retention", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn a_log_bucket_that_refuses_every_upload_flags_the_run_without_waiting_out_the_window() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let state = tempfile::tempdir().unwrap();
    let double = StorageDouble::start().await;
    let dir = write_app(
        &[("index.js", "console.log('hello'); console.error('oops');")],
        json!({"timeout": 60, "memory_limit": "128MB", "cpu_limit": 1}),
        json!([]),
    );
    let storage_env = [
        ("APP_EXECUTOR_STORAGE__BACKEND", "supabase"),
        ("APP_EXECUTOR_STORAGE__URL", double.url.as_str()),
        ("APP_EXECUTOR_STORAGE__SERVICE_KEY", SERVICE_KEY),
    ];
    let published = Command::new(binary())
        .arg("publish")
        .arg(dir.path())
        .args(["--app", &app.to_string()])
        .env("DATABASE_URL", db.url.expose())
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .env("APP_EXECUTOR_EXECUTOR__STATE_DIR", state.path())
        .envs(storage_env)
        .output()
        .await
        .unwrap();
    assert!(published.status.success(), "{}", text(&published));
    // The operator narrowed app-logs to JSON: every log chunk (text/plain) is refused.
    double.allow_only("app-logs", &["application/json"]);
    let run = enqueue(&client, app, company, json!({})).await;
    let mut options = DaemonOptions::production(state.path()).until_idle();
    for (k, v) in storage_env {
        options.env.push((k.into(), v.into()));
    }
    options.env.push((
        "APP_EXECUTOR_LOGS__DURABLE_RETRY_WINDOW".into(),
        "30m".into(),
    ));
    let daemon = Daemon::spawn(&db, options);
    let log = tokio::task::spawn_blocking(move || {
        let mut daemon = daemon;
        // Far below the 30 min window: a permanent refusal is not retried for it.
        let status = daemon.wait(Duration::from_secs(180));
        let log = daemon.log_text();
        assert!(status.success(), "daemon failed: {log}");
        log
    })
    .await
    .unwrap();
    let record = run_record(&client, run).await;
    assert_eq!(record.summary(), "success/-", "{record:?}\n{log}");
    let flagged: Option<bool> = client
        .query_one(
            "select (metadata->>'logs_incomplete')::boolean from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(flagged, Some(true), "{log}");
    assert!(log.contains("not retrying a permanent error"), "{log}");
}
