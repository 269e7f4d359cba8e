//! The original design document (`shared/seed/`) is the contract with the host platform: its
//! tables, columns and enum values, transcribed below by hand from the document, must exist as
//! written; its direct-insert example must run; and a file row can only ever name its own app's
//! objects. Our additions are listed too, so an undocumented column or value fails here.

use std::collections::BTreeSet;
use std::path::Path;

use app_executor::storage::{BucketPolicy, LocalStorage, Storage, UploadBody};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::harness::apps::{run_record, RunRecord};
use crate::harness::daemon::DaemonOptions;
use crate::harness::docker::assert_no_containers;
use crate::harness::storage_double::{StorageDouble, SERVICE_KEY};
use crate::harness::{binary, insert_tenant, TestDb};

/// The document's "Database Schema" section, table by table.
const DOCUMENT_COLUMNS: &[(&str, &[&str])] = &[
    (
        "app_storage",
        &[
            "id",
            "app_id",
            "file_path",
            "file_type",
            "file_size",
            "version",
            "checksum",
            "metadata",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "app_builds",
        &[
            "id",
            "app_id",
            "build_version",
            "build_status",
            "build_path",
            "build_config",
            "build_logs",
            "created_at",
            "completed_at",
        ],
    ),
    (
        "app_runs",
        &[
            "id",
            "app_id",
            "company_id",
            "build_id",
            "run_type",
            "status",
            "executor_id",
            "started_at",
            "completed_at",
            "duration_ms",
            "logs_path",
            "output_path",
            "error_message",
            "metadata",
        ],
    ),
    (
        "app_outputs",
        &[
            "id",
            "run_id",
            "output_type",
            "output_name",
            "output_data",
            "output_path",
            "file_size",
            "created_at",
        ],
    ),
    (
        "app_cron_schedules",
        &[
            "id",
            "app_id",
            "company_id",
            "cron_expression",
            "timezone",
            "is_active",
            "last_run_at",
            "next_run_at",
            "last_run_id",
            "config",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "app_permissions",
        &[
            "id",
            "app_id",
            "permission_type",
            "permission_value",
            "description",
            "is_required",
            "created_at",
        ],
    ),
];

/// Our extra columns (README, "Schema"): each carries something the document lacks.
const OUR_COLUMNS: &[(&str, &[&str])] = &[
    ("app_storage", &["mime_type"]),
    (
        "app_builds",
        &[
            "is_current",
            "artifact_digest",
            "build_log_path",
            "error_message",
            "metadata",
            "started_at",
            "run_after",
            "attempt",
            "max_attempts",
            "executor_id",
            "lease_expires_at",
            "heartbeat_at",
            "error_kind",
            "exit_code",
            "duration_ms",
            "archive_size",
        ],
    ),
    (
        "app_runs",
        &[
            "input_data",
            "triggered_by",
            "created_at",
            "priority",
            "run_after",
            "attempt",
            "max_attempts",
            "lease_expires_at",
            "heartbeat_at",
            "schedule_id",
            "scheduled_for",
            "error_kind",
            "exit_code",
            "artifact_digest",
            "logs_purged_at",
            "outputs_purged_at",
        ],
    ),
    ("app_outputs", &["mime_type"]),
    (
        "app_cron_schedules",
        &["name", "created_by", "disabled_reason"],
    ),
    ("app_permissions", &["granted_by"]),
];

/// The document's enum values: (table, column, values).
const DOCUMENT_ENUMS: &[(&str, &str, &[&str])] = &[
    (
        "app_storage",
        "file_type",
        &["manifest", "source", "build", "asset", "dist", "config"],
    ),
    (
        "app_builds",
        "build_status",
        &["pending", "building", "success", "failed", "cancelled"],
    ),
    (
        "app_runs",
        "run_type",
        &["manual", "cron", "webhook", "test"],
    ),
    (
        "app_runs",
        "status",
        &[
            "pending",
            "running",
            "success",
            "failed",
            "cancelled",
            "timeout",
        ],
    ),
    (
        "app_outputs",
        "output_type",
        &["stdout", "stderr", "file", "metric", "result", "error"],
    ),
    (
        "app_permissions",
        "permission_type",
        &["storage", "network", "database", "api", "system", "custom"],
    ),
];

/// Our extra enum values (README, "Schema").
const OUR_ENUM_VALUES: &[(&str, &str, &[&str])] = &[
    ("app_storage", "file_type", &["archive", "other"]),
    ("app_runs", "run_type", &["api"]),
    (
        "app_permissions",
        "permission_type",
        &["secrets", "filesystem"],
    ),
];

fn extras<'a>(list: &'a [(&str, &str, &[&'a str])], table: &str, column: &str) -> &'a [&'a str] {
    list.iter()
        .find(|(t, c, _)| *t == table && *c == column)
        .map_or(&[], |(_, _, v)| v)
}

fn sha256(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        app_executor::artifact::version::hex(&Sha256::digest(bytes))
    )
}

#[tokio::test]
async fn every_document_table_has_its_columns_and_only_documented_additions() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    for (table, documented) in DOCUMENT_COLUMNS {
        let have: BTreeSet<String> = client
            .query(
                "select column_name::text from information_schema.columns
                  where table_schema = 'public' and table_name = $1",
                &[table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let ours = OUR_COLUMNS
            .iter()
            .find(|(t, _)| t == table)
            .map_or(&[][..], |(_, c)| c);
        let missing: Vec<&&str> = documented.iter().filter(|c| !have.contains(**c)).collect();
        assert!(
            missing.is_empty(),
            "{table} lacks the document's {missing:?}"
        );
        let undocumented: Vec<&String> = have
            .iter()
            .filter(|c| !documented.contains(&c.as_str()) && !ours.contains(&c.as_str()))
            .collect();
        assert!(
            undocumented.is_empty(),
            "{table} has columns neither the document nor OUR_COLUMNS (README) names: {undocumented:?}"
        );
    }
}

/// The values a `<column> = any (array[...])` CHECK constraint lists.
async fn check_values(client: &Client, table: &str, column: &str) -> BTreeSet<String> {
    let name = format!("{table}_{column}_check");
    let def: String = client
        .query_one(
            "select pg_get_constraintdef(oid) from pg_constraint
              where conrelid = ('public.' || $1)::regclass and conname = $2",
            &[&table, &name],
        )
        .await
        .unwrap_or_else(|e| panic!("no constraint {name}: {e}"))
        .get(0);
    def.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// A row of `table` with `column` set to `$2`; `$1` is an app, `$3` a run of it.
fn insert_with(table: &str, column: &str) -> String {
    let insert = match (table, column) {
        ("app_storage", "file_type") => "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum)
             select app, '1.0.0', 'app_' || app::text || '/1.0.0/' || value || '.bin', value, 1, 'sha256:' || repeat('a', 64) from ctx".to_owned(),
        ("app_builds", "build_status") => "insert into public.app_builds (app_id, build_version, build_status, executor_id, lease_expires_at)
             select app, '1.0.0', value, 'e', now() from ctx".to_owned(),
        ("app_runs", _) => format!(
            "insert into public.app_runs (app_id, company_id, {column}, executor_id, lease_expires_at)
             select r.app_id, r.company_id, value, 'e', now() from ctx join public.app_runs r on r.id = ctx.run"
        ),
        ("app_outputs", "output_type") => "insert into public.app_outputs (run_id, output_type)
             select run, value from ctx".to_owned(),
        ("app_permissions", "permission_type") => "insert into public.app_permissions (app_id, permission_type)
             select app, value from ctx".to_owned(),
        other => panic!("no insert for {other:?}"),
    };
    format!("with ctx as (select $1::uuid as app, $2::text as value, $3::uuid as run) {insert}")
}

#[tokio::test]
async fn every_document_enum_value_is_accepted_and_the_lists_hold_nothing_undocumented() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let run: Uuid = client
        .query_one(
            "insert into public.app_runs (app_id, company_id) values ($1, $2) returning id",
            &[&app, &company],
        )
        .await
        .unwrap()
        .get(0);
    for (table, column, documented) in DOCUMENT_ENUMS {
        let ours = extras(OUR_ENUM_VALUES, table, column);
        let listed = check_values(&client, table, column).await;
        let expected: BTreeSet<String> = documented
            .iter()
            .chain(ours)
            .map(|v| (*v).to_owned())
            .collect();
        assert_eq!(listed, expected, "{table}.{column}'s CHECK constraint");
        for value in documented.iter().chain(ours) {
            let tx = client.transaction().await.unwrap();
            let inserted = tx
                .execute(&insert_with(table, column), &[&app, value, &run])
                .await;
            assert_eq!(
                inserted.as_ref().map_err(ToString::to_string),
                Ok(&1),
                "{table}.{column} = {value:?}"
            );
            tx.rollback().await.unwrap();
        }
        let tx = client.transaction().await.unwrap();
        let bogus = tx
            .execute(&insert_with(table, column), &[&app, &"bogus", &run])
            .await
            .unwrap_err();
        assert_eq!(
            bogus.as_db_error().and_then(|e| e.constraint()),
            Some(format!("{table}_{column}_check").as_str()),
            "{table}.{column} = 'bogus': {bogus}"
        );
        tx.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn a_file_row_naming_another_apps_folder_or_escaping_is_refused_by_the_database() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (_, app) = insert_tenant(&client).await;
    let (_, other) = insert_tenant(&client).await;
    let insert = "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum)
                  values ($1, '1.0.0', $2, 'source', 1, 'sha256:' || repeat('a', 64))";
    let own = format!("app_{app}");
    for bad in [
        format!("app_{other}/1.0.0/secret.txt"),
        format!("{own}/../app_{other}/secret.txt"),
        format!("{own}/1.0.0/../../x"),
        format!("{own}//index.js"),
        format!("/{own}/index.js"),
        format!("{own}/./index.js"),
        format!("{own}/dir/"),
        format!("{own}/a\\b.js"),
        format!("app_{}/index.js", app.to_string().to_uppercase()),
        "index.js".to_owned(),
    ] {
        let err = client.execute(insert, &[&app, &bad]).await.unwrap_err();
        assert_eq!(
            err.as_db_error().and_then(|e| e.constraint()),
            Some("app_storage_file_path_in_app_folder"),
            "{bad}: {err}"
        );
    }
    for good in [
        format!("{own}/manifest.json"),
        format!("{own}/1.0.0/src/a b.js"),
    ] {
        client.execute(insert, &[&app, &good]).await.unwrap();
    }
    // The build artifact's key follows the same rule.
    let err = client
        .execute(
            "insert into public.app_builds (app_id, build_version, build_path) values ($1, '1.0.0', $2)",
            &[&app, &format!("app_{other}/builds/x.tar.gz")],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().and_then(|e| e.constraint()),
        Some("app_builds_build_path_in_app_folder")
    );
}

// ---- the document's direct-insert example, run by the daemon ---------------------------------

const MANIFEST: &str = r#"{
  "name": "seed-example", "version": "1.0.0", "type": "backend",
  "runtime": {"backend": {"type": "nodejs", "version": "20", "entrypoint": "index.js", "package_manager": "pnpm"}},
  "config": {"timeout": 60, "memory_limit": "128MB", "cpu_limit": "1"}
}"#;
const INDEX_JS: &str = "const fs = require('fs');\n\
fs.mkdirSync('/output', {recursive: true});\n\
fs.writeFileSync('/output/result.json', JSON.stringify({run_type: process.env.RUN_TYPE, greeting: require('./lib/greet.js')}));\n";
const GREET_JS: &str = "module.exports = 'hello from the seed example';\n";

/// Where the objects go: the daemon's local backend or the Supabase double.
enum Backend<'a> {
    Local(&'a Path),
    Double(&'a StorageDouble),
}

impl Backend<'_> {
    async fn put(&self, key: &str, bytes: &[u8]) {
        match self {
            Backend::Local(state) => {
                LocalStorage::new(state.join("storage"), BucketPolicy::default())
                    .upload(
                        "app-storage",
                        key,
                        UploadBody::Bytes(bytes.to_vec().into()),
                        "application/octet-stream",
                        true,
                    )
                    .await
                    .unwrap();
            }
            Backend::Double(double) => {
                double.put("app-storage", key, bytes, "application/octet-stream")
            }
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        match self {
            Backend::Local(_) => vec![],
            Backend::Double(double) => vec![
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

/// The document's example statement, one per file, with real sizes and digests. `key` is the
/// rest of the object key after `app_<id>/`.
async fn insert_as_the_document_does(
    client: &Client,
    backend: &Backend<'_>,
    app: Uuid,
    files: &[(String, &str, &str)],
) {
    for (rest, file_type, content) in files {
        let key = format!("app_{app}/{rest}");
        backend.put(&key, content.as_bytes()).await;
        let statement = format!(
            "INSERT INTO app_storage (app_id, file_path, file_type, file_size, version, checksum, metadata)
             VALUES ('{app}', '{key}', '{file_type}', {}, '1.0.0', '{}', '{{\"entrypoint\": \"index.js\"}}')",
            content.len(),
            sha256(content.as_bytes())
        );
        client.batch_execute(&statement).await.unwrap();
    }
}

/// `app-executor enqueue --run-type <run_type>` for the app; returns the run id.
fn enqueue(db: &TestDb, (company, app): (Uuid, Uuid), run_type: &str) -> Uuid {
    let out = std::process::Command::new(binary())
        .args([
            "enqueue",
            "--app",
            &app.to_string(),
            "--company",
            &company.to_string(),
        ])
        .args(["--run-type", run_type])
        .env("DATABASE_URL", db.url.expose())
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enqueue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn run_until_idle(db: &TestDb, state: &Path, backend: &Backend<'_>) -> String {
    let mut options = DaemonOptions::production(state);
    options.env.extend(backend.env());
    crate::harness::daemon::run_until_idle(db, options).await
}

async fn result_of(client: &Client, run: Uuid) -> serde_json::Value {
    client
        .query_one(
            "select output_data from public.app_outputs where run_id = $1 and output_type = 'result'",
            &[&run],
        )
        .await
        .unwrap()
        .get(0)
}

/// The example's three files, each under `folder` (`""` or `"1.0.0/"`).
fn example_files(folder: &str) -> Vec<(String, &'static str, &'static str)> {
    [
        ("manifest.json", "manifest", MANIFEST),
        ("index.js", "source", INDEX_JS),
        ("lib/greet.js", "source", GREET_JS),
    ]
    .into_iter()
    .map(|(rest, kind, content)| (format!("{folder}{rest}"), kind, content))
    .collect()
}

/// With `double`, through the Supabase storage API; without, with the local backend.
async fn the_documents_example_runs(double: Option<&StorageDouble>) {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let backend = match double {
        Some(double) => Backend::Double(double),
        None => Backend::Local(state.path()),
    };
    // The document's shape: keys without a version folder, metadata jsonb.
    let flat = insert_tenant(&client).await;
    insert_as_the_document_does(&client, &backend, flat.1, &example_files("")).await;
    // The shape `publish` writes: a version folder in the key.
    let foldered = insert_tenant(&client).await;
    insert_as_the_document_does(&client, &backend, foldered.1, &example_files("1.0.0/")).await;

    let runs = [
        (enqueue(&db, flat, "test"), "test"),
        (enqueue(&db, flat, "manual"), "manual"),
        (enqueue(&db, foldered, "webhook"), "webhook"),
    ];
    let log = run_until_idle(&db, state.path(), &backend).await;
    for (run, run_type) in runs {
        let record: RunRecord = run_record(&client, run).await;
        assert_eq!(record.summary(), "success/-", "{record:?}\n{log}");
        assert_eq!(
            result_of(&client, run).await,
            serde_json::json!({"run_type": run_type, "greeting": "hello from the seed example"})
        );
    }
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

#[tokio::test]
async fn the_documents_insert_example_runs_with_local_storage() {
    the_documents_example_runs(None).await;
}

#[tokio::test]
async fn the_documents_insert_example_runs_through_the_supabase_storage_api() {
    let double = StorageDouble::start().await;
    the_documents_example_runs(Some(&double)).await;
}

/// Files under the daemon's run directories of `run` whose bytes contain `needle`.
fn walk_contains(state: &Path, needle: &[u8], run: Uuid) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, needle: &[u8], found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => walk(&path, needle, found),
                Ok(t) if t.is_file() => {
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(path);
                    }
                }
                _ => {}
            }
        }
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(state.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&run.to_string())
        {
            walk(&entry.path(), needle, &mut found);
        }
    }
    found
}

#[tokio::test]
async fn a_row_naming_another_apps_object_fails_for_good_without_reading_it() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let double = StorageDouble::start().await;
    let backend = Backend::Double(&double);
    let victim_tenant = insert_tenant(&client).await;
    let thief_tenant = insert_tenant(&client).await;
    let (victim, thief) = (victim_tenant.1, thief_tenant.1);
    let secret_key = format!("app_{victim}/1.0.0/secret.txt");
    let secret = "the victim's secret";
    let mut victim_files = example_files("1.0.0/");
    victim_files.push(("1.0.0/secret.txt".into(), "asset", secret));
    insert_as_the_document_does(&client, &backend, victim, &victim_files).await;
    insert_as_the_document_does(&client, &backend, thief, &example_files("1.0.0/")).await;
    // The victim runs first, so its secret's digest is in the blob cache.
    let victim_run = enqueue(&db, victim_tenant, "manual");
    run_until_idle(&db, state.path(), &backend).await;
    assert_eq!(run_record(&client, victim_run).await.summary(), "success/-");

    // A host that dropped the constraint (or restored a dump without it) lets such rows in; the
    // daemon checks again before any I/O.
    client
        .batch_execute(
            "alter table public.app_storage drop constraint app_storage_file_path_in_app_folder",
        )
        .await
        .unwrap();
    // (key of the thief's row, what the thief's own object holds, the outcome)
    let own_key = format!("app_{thief}/1.0.0/secret.txt");
    let cases = [
        (secret_key.clone(), None, "failed/unsafe_path"),
        (
            format!("app_{thief}/1.0.0/../../app_{victim}/1.0.0/secret.txt"),
            None,
            "failed/unsafe_path",
        ),
        // Under the thief's own folder with the victim's checksum: the warm cache must not
        // answer for an object the thief never proved it has.
        (own_key.clone(), None, "failed/missing_object"),
        (
            own_key.clone(),
            Some("not the secret"),
            "failed/checksum_mismatch",
        ),
    ];
    for (key, own_object, outcome) in cases {
        if let Some(bytes) = own_object {
            double.put("app-storage", &key, bytes.as_bytes(), "text/plain");
        }
        client
            .execute(
                "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum)
                 values ($1, '1.0.0', $2, 'asset', $3, $4)",
                &[&thief, &key, &(secret.len() as i64), &sha256(secret.as_bytes())],
            )
            .await
            .unwrap();
        let requests_before = double.requests().len();
        let run = enqueue(&db, thief_tenant, "manual");
        client
            .execute(
                "update public.app_runs set max_attempts = 3 where id = $1",
                &[&run],
            )
            .await
            .unwrap();
        let log = run_until_idle(&db, state.path(), &backend).await;
        let record = run_record(&client, run).await;
        assert_eq!(record.summary(), outcome, "{key}: {record:?}\n{log}");
        if outcome.ends_with("unsafe_path") {
            assert!(
                record.error_message.as_deref().unwrap_or("").contains(&key),
                "the error names the key: {record:?}"
            );
        }
        let attempt: i32 = client
            .query_one("select attempt from public.app_runs where id = $1", &[&run])
            .await
            .unwrap()
            .get(0);
        assert_eq!(attempt, 1, "{outcome} is final, not retried");
        let victims_objects: Vec<String> = double.requests()[requests_before..]
            .iter()
            .filter(|r| r.contains(&format!("app_{victim}")))
            .cloned()
            .collect();
        assert!(
            victims_objects.is_empty(),
            "the victim's objects were asked for: {victims_objects:?}"
        );
        let leaked = walk_contains(state.path(), secret.as_bytes(), run);
        assert!(
            leaked.is_empty(),
            "the secret is in the thief's run: {leaked:?}"
        );
        let logs = double.keys("app-logs", &format!("app_{thief}/runs/{run}/"));
        for (log_key, _) in logs {
            let (bytes, _) = double.get("app-logs", &log_key).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret),
                "the secret is in {log_key}"
            );
        }
        client
            .execute(
                "delete from public.app_storage where app_id = $1 and file_path = $2",
                &[&thief, &key],
            )
            .await
            .unwrap();
    }
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}
