//! What operators open: the Prometheus rules pass `promtool`, the Grafana dashboard is a
//! well-formed dashboard, and every metric either of them queries is exported by a real daemon
//! after real work (a run in a container, a cron tick, a webhook request).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{Datelike, Timelike};
use serde_json::Value;

use crate::harness::apps::{self, publish_ok};
use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::TestDb;
use crate::webhooks::{create_hook, now, post, signed, tenant};

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/prometheus/alerts.yml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/grafana/app-executor.json");

/// Every `app_executor_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("app_executor_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap()
}

/// Every query of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool() {
    let out = std::process::Command::new("promtool")
        .args(["check", "rules", RULES])
        .output()
        .expect("promtool is installed by scripts/test (Debian package prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_whose_panels_all_query_our_metrics() {
    let dashboard = dashboard();
    for key in [
        "title",
        "uid",
        "schemaVersion",
        "panels",
        "templating",
        "time",
    ] {
        assert!(dashboard.get(key).is_some(), "the dashboard has no {key:?}");
    }
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let ids: BTreeSet<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels {
        for key in ["type", "title", "gridPos", "datasource", "targets"] {
            assert!(panel.get(key).is_some(), "{panel}: no {key:?}");
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                !metric_names(expr).is_empty(),
                "{}: the query {expr:?} names none of our metrics",
                panel["title"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_and_the_rules_query_is_exported_after_real_work() {
    crate::harness::docker::ensure_engine();
    let db = TestDb::migrated().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = tenant(&db).await;
    publish_ok(&db, state.path(), Path::new(apps::HELLO), app);
    // A schedule that fires once, a few seconds from now (seconds field first).
    let at = chrono::Utc::now() + chrono::Duration::seconds(4);
    let expression = format!(
        "{} {} {} {} {} *",
        at.second(),
        at.minute(),
        at.hour(),
        at.day(),
        at.month()
    );
    let client = db.client().await;
    client
        .execute(
            "insert into public.app_cron_schedules (app_id, company_id, cron_expression) values ($1, $2, $3)",
            &[&app, &company, &expression],
        )
        .await
        .unwrap();
    let (hook, secret) = create_hook(&db, app, company, &[]).await;
    let mut options = DaemonOptions::production(state.path());
    options.env.push((
        "APP_EXECUTOR_WEBHOOKS__LISTEN".to_owned(),
        "127.0.0.1:0".to_owned(),
    ));
    options.env.push((
        "APP_EXECUTOR_OPS__STATUS_INTERVAL".to_owned(),
        "500ms".to_owned(),
    ));
    options.env.push((
        "APP_EXECUTOR_OPS__STORAGE_USAGE_INTERVAL".to_owned(),
        "500ms".to_owned(),
    ));
    let mut daemon = Daemon::spawn(&db, options);
    let hooks = format!("http://{}/hooks/{hook}?wait=60s", daemon.webhooks_addr());
    let ops = daemon.ops_addr();

    let (status, answer, _) = post(
        &hooks,
        &signed(&secret, "msg_monitoring", now(), b"{}"),
        b"{}",
    )
    .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("success")),
        "{answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fired: i64 = client
            .query_one(
                "select count(*) from public.app_runs where schedule_id is not null and status = 'success'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if fired == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the schedule did not fire and succeed:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let exported_text = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<String> = exported_text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let mut queried = metric_names(&std::fs::read_to_string(RULES).unwrap());
    for query in dashboard_queries(&dashboard()) {
        queried.extend(metric_names(&query));
    }
    let missing: Vec<&String> = queried.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n/metrics:\n{exported_text}"
    );
    // The status loop's gauges are live: the database answered, the state dir has space.
    assert!(
        exported_text.contains("app_executor_database_up 1"),
        "{exported_text}"
    );
    let free = exported_text
        .lines()
        .find_map(|l| l.strip_prefix("app_executor_state_dir_free_bytes "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(free.is_some_and(|f| f > 0.0), "{exported_text}");

    // Storage: the runs' downloads and uploads were measured, and the stored-bytes gauge (the
    // local backend counts our records) holds what the tables say.
    let value = |series: &str| {
        exported_text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
    };
    for series in [
        r#"app_executor_storage_request_duration_seconds_count{op="download",bucket="app-storage",outcome="ok"}"#,
        r#"app_executor_storage_request_duration_seconds_count{op="upload",bucket="app-logs",outcome="ok"}"#,
        r#"app_executor_storage_bytes_total{op="download",bucket="app-storage"}"#,
        r#"app_executor_db_statement_duration_seconds_count{statement="claim_runs"}"#,
        r#"app_executor_db_statement_duration_seconds_count{statement="finish_run"}"#,
    ] {
        assert!(
            value(series).is_some_and(|v| v > 0.0),
            "{series} is not above 0:\n{exported_text}"
        );
    }
    let files: i64 = client
        .query_one(
            "select coalesce(sum(file_size), 0)::int8 from public.app_storage",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        value(r#"app_executor_storage_stored_bytes{bucket="app-storage"}"#),
        Some(files as f64),
        "{exported_text}"
    );
    assert!(
        value(r#"app_executor_storage_stored_bytes{bucket="app-logs"}"#).is_some_and(|v| v > 0.0),
        "{exported_text}"
    );
    daemon.stop();
}

/// The Supabase backend counts what `storage.objects` holds (the Storage server's own rows),
/// whoever uploaded them; both buckets are listed even when empty.
#[tokio::test]
async fn stored_bytes_per_bucket_come_from_storage_objects_on_supabase() {
    use app_executor::db::status::{stored_per_bucket, Stored, StoredSource};
    let db = TestDb::migrated().await;
    let pool = app_executor::db::pool(&db.url, Duration::from_secs(5), 2).unwrap();
    let stored = |bucket: &str, bytes: i64, objects: i64| Stored {
        bucket: bucket.to_owned(),
        bytes,
        objects,
    };
    assert_eq!(
        stored_per_bucket(&pool, StoredSource::StorageObjects)
            .await
            .unwrap(),
        [stored("app-logs", 0, 0), stored("app-storage", 0, 0)]
    );
    db.client()
        .await
        .batch_execute(
            r#"insert into storage.buckets (id, name) values ('other-bucket', 'other-bucket');
               insert into storage.objects (bucket_id, name, metadata) values
                 ('app-storage', 'app_1/1.0.0/index.js', '{"size": 1200, "mimetype": "text/javascript"}'),
                 ('app-storage', 'app_1/1.0.0/manifest.json', '{"size": 300}'),
                 ('app-logs', 'app_1/runs/r/stdout.log', '{"size": 45}'),
                 ('other-bucket', 'x', '{"size": 999999}')"#,
        )
        .await
        .unwrap();
    assert_eq!(
        stored_per_bucket(&pool, StoredSource::StorageObjects)
            .await
            .unwrap(),
        [stored("app-logs", 45, 1), stored("app-storage", 1500, 2)]
    );
}

#[tokio::test]
async fn where_supabase_realtime_exists_runs_outputs_and_usage_are_published_and_a_slot_sees_a_run_change(
) {
    // Plain PostgreSQL (no publication): migrate passes and publishes nothing.
    let plain = TestDb::migrated().await;
    let publications: i64 = plain
        .client()
        .await
        .query_one("select count(*) from pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0);

    let db = TestDb::empty().await;
    let client = db.client().await;
    client
        .batch_execute("create publication supabase_realtime")
        .await
        .unwrap();
    let out = crate::harness::cli(&db, &["migrate"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published: Vec<String> = client
        .query(
            "select tablename::text from pg_publication_tables where pubname = 'supabase_realtime' order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["app_outputs", "app_runs", "app_usage_daily"]);

    // What Realtime does: a pgoutput slot on the publication sees a run's status change.
    let slot = format!("realtime_{}", uuid::Uuid::new_v4().simple());
    client
        .execute(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    let (company, app) = crate::harness::insert_tenant(&client).await;
    let run: uuid::Uuid = client
        .query_one(
            "insert into public.app_runs (app_id, company_id) values ($1, $2) returning id",
            &[&app, &company],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    // Decoding reads flushed WAL only (the test cluster commits asynchronously): peek until the
    // change is there, at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let changes = loop {
        let changes: Vec<u8> = client
            .query(
                "select data from pg_logical_slot_peek_binary_changes($1, null, null,
                   'proto_version', '1', 'publication_names', 'supabase_realtime')",
                &[&slot],
            )
            .await
            .unwrap()
            .iter()
            .flat_map(|r| r.get::<_, Vec<u8>>(0))
            .collect();
        if changes.windows(9).any(|w| w == b"cancelled") || Instant::now() > deadline {
            break changes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    client
        .execute("select pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    let has = |needle: &[u8]| changes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"app_runs"), "no change of app_runs on the slot");
    assert!(
        has(run.to_string().as_bytes()),
        "the run's row is not in the changes"
    );
    assert!(has(b"cancelled"), "the status change is not in the changes");
    assert!(
        has(b"app_usage_daily"),
        "the company's usage row, counted at the cancel, is not in the changes"
    );
    assert!(!has(b"app_storage"), "only the published tables are sent");
}
