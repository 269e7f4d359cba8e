//! `app-executor publish` end to end: the real binary, a real database, the local storage
//! backend; then a daemon resolving and verifying what was published.

use std::process::Output;
use std::time::Duration;

use uuid::Uuid;

use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::TestDb;

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");

fn publish(db: &TestDb, state: &std::path::Path, dir: &str, app: &str, extra: &[&str]) -> Output {
    crate::harness::apps::publish(db, state, std::path::Path::new(dir), app, extra)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_is_idempotent_refuses_changed_content_and_what_it_publishes_verifies() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = crate::harness::insert_tenant(&client).await;

    let out = publish(&db, state.path(), HELLO, &app.to_string(), &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["version"], "1.0.0");
    assert_eq!(report["already_published"], false);
    // (path inside the app, file_type, object key)
    let folder = format!("app_{app}/1.0.0/");
    let rows: Vec<(String, String, String)> = client
        .query(
            "select file_path, file_type from public.app_storage where app_id = $1 order by 1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let key: String = r.get(0);
            let path = key
                .strip_prefix(&folder)
                .unwrap_or_else(|| panic!("{key} is not under the version's folder {folder}"));
            (path.to_owned(), r.get(1), key.clone())
        })
        .collect();
    let paths: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for expected in [
        "index.js",
        "manifest.json",
        "package.json",
        "pnpm-lock.yaml",
        "vendor/greeting-1.0.0.tgz",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} not published: {paths:?}"
        );
    }
    assert_eq!(report["files"], rows.len());
    for (path, _, key) in &rows {
        assert!(
            state.path().join("storage/app-storage").join(key).is_file(),
            "{path} was recorded but not uploaded"
        );
    }

    let again = publish(&db, state.path(), HELLO, &app.to_string(), &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("already published"),
        "{}",
        text(&again)
    );

    let changed = tempfile::tempdir().unwrap();
    for file in ["manifest.json", "package.json", "pnpm-lock.yaml"] {
        std::fs::copy(format!("{HELLO}/{file}"), changed.path().join(file)).unwrap();
    }
    std::fs::write(changed.path().join("index.js"), "console.log('changed')\n").unwrap();
    let refused = publish(
        &db,
        state.path(),
        changed.path().to_str().unwrap(),
        &app.to_string(),
        &[],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("different content") && text(&refused).contains("index.js"),
        "{}",
        text(&refused)
    );
    let index_key = rows.iter().find(|r| r.0 == "index.js").unwrap().2.clone();
    assert_eq!(
        std::fs::read(state.path().join("storage/app-storage").join(&index_key)).unwrap(),
        std::fs::read(format!("{HELLO}/index.js")).unwrap(),
        "a refused publish overwrote a stored object"
    );

    // A daemon resolves the published version, verifies every file and runs it.
    client
        .execute(
            "insert into public.app_runs (app_id, company_id) values ($1, $2)",
            &[&app, &company],
        )
        .await
        .unwrap();
    let mut daemon = Daemon::spawn(&db, DaemonOptions::production(state.path()).until_idle());
    assert!(
        daemon.wait(Duration::from_secs(60)).success(),
        "{}",
        daemon.log_text()
    );
    let row = client
        .query_one(
            "select error_kind, artifact_digest from public.app_runs where app_id = $1",
            &[&app],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0),
        None,
        "the run did not succeed"
    );
    assert!(row.get::<_, Option<String>>(1).is_some());
}

#[tokio::test]
async fn publishing_an_invalid_directory_or_to_an_unknown_app_fails_clearly() {
    let db = TestDb::migrated().await;
    let state = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = publish(
        &db,
        state.path(),
        empty.path().to_str().unwrap(),
        &Uuid::new_v4().to_string(),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("manifest.json"), "{}", text(&out));

    let unknown = Uuid::new_v4();
    let out = publish(&db, state.path(), HELLO, &unknown.to_string(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&unknown.to_string()) && text(&out).contains("does not exist"),
        "{}",
        text(&out)
    );

    let out = publish(&db, state.path(), HELLO, "not-a-uuid", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not-a-uuid"), "{}", text(&out));
}
