//! `app-executor migrate` on real PostgreSQL: empty database, re-run, host tables, failures.

use serde_json::Value;

use crate::harness::{binary, TestDb};

fn migrate(db: &TestDb, extra: &[&str]) -> (i32, Value, String) {
    let out = std::process::Command::new(binary())
        .args(["migrate", "--json", "--database-url", db.url.expose()])
        .args(extra)
        .env_remove("DATABASE_URL")
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// A fingerprint of the schema: every relation, column, constraint, policy and trigger.
async fn schema_fingerprint(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client
        .query(
            "select 'rel ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname in ('public', 'app_exec', 'storage', 'auth', 'supabase_migrations')
             union all
             select 'col ' || table_schema || '.' || table_name || '.' || column_name || ' ' || data_type
               from information_schema.columns
              where table_schema in ('public', 'app_exec', 'storage', 'supabase_migrations')
             union all
             select 'con ' || conname || ' ' || pg_get_constraintdef(oid) from pg_constraint
             union all
             select 'pol ' || schemaname || '.' || tablename || ' ' || policyname from pg_policies
             union all
             select 'trg ' || tgname from pg_trigger where not tgisinternal
             order by 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn migrate_on_an_empty_database_creates_the_schema_and_records_every_file() {
    let db = TestDb::empty().await;
    let (code, report, stderr) = migrate(&db, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["bootstrap_applied"], true);
    let expected: Vec<String> = app_executor::db::migration::MIGRATIONS
        .iter()
        .map(|m| m.file_name.to_owned())
        .collect();
    assert_eq!(names(&report["applied"]), expected);

    let client = db.client().await;
    let history = client
        .query(
            "select version, name, array_length(statements, 1) from supabase_migrations.schema_migrations order by version",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(history.len(), expected.len());
    let first_name: String = history[0].get(1);
    assert_eq!(first_name, "create_app_storage_buckets");
    let first_statements: Option<i32> = history[0].get(2);
    assert_eq!(first_statements, Some(1));

    for table in [
        "app_storage",
        "app_builds",
        "app_runs",
        "app_outputs",
        "app_cron_schedules",
        "app_permissions",
        "app_executors",
        "app_cron_ticks",
    ] {
        let rls: bool = client
            .query_one(
                "select relrowsecurity from pg_class where oid = ('public.' || $1)::regclass",
                &[&table],
            )
            .await
            .unwrap_or_else(|e| panic!("table {table} missing: {e}"))
            .get(0);
        assert!(rls, "RLS is not enabled on {table}");
    }

    let buckets = client
        .query(
            "select id, public, file_size_limit, allowed_mime_types from storage.buckets order by id",
            &[],
        )
        .await
        .unwrap();
    let summary: Vec<(String, bool, i64)> = buckets
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("app-logs".to_owned(), false, 52_428_800),
            ("app-storage".to_owned(), false, 104_857_600)
        ]
    );
    let storage_mimes: Vec<String> = buckets[1].get(3);
    assert!(storage_mimes.contains(&"application/json".to_owned()));
    assert!(storage_mimes.contains(&"application/gzip".to_owned()));
}

#[tokio::test]
async fn migrating_twice_changes_nothing() {
    let db = TestDb::empty().await;
    assert_eq!(migrate(&db, &[]).0, 0);
    let client = db.client().await;
    let before = schema_fingerprint(&client).await;
    let (code, report, stderr) = migrate(&db, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["bootstrap_applied"], false);
    assert!(names(&report["applied"]).is_empty());
    assert_eq!(
        names(&report["already_applied"]).len(),
        app_executor::db::migration::MIGRATIONS.len()
    );
    assert!(names(&report["changed_since_applied"]).is_empty());
    assert_eq!(schema_fingerprint(&client).await, before);
}

#[tokio::test]
async fn migrate_keeps_existing_host_tables_and_their_extra_columns() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table public.companies (
               id uuid primary key default gen_random_uuid(),
               name text not null,
               billing_plan text not null default 'pro',
               created_at timestamptz default now()
             );
             create table public.applications (
               id uuid primary key default gen_random_uuid(),
               name text not null,
               slug text unique,
               category text
             );
             insert into public.companies (name) values ('Existing Co');",
        )
        .await
        .unwrap();
    let (code, _, stderr) = migrate(&db, &[]);
    assert_eq!(code, 0, "{stderr}");
    let plan: String = client
        .query_one("select billing_plan from public.companies", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plan, "pro");
    // Our tables reference the host's tables.
    client
        .batch_execute(
            "insert into public.applications (name, slug) values ('a', 'a');
             insert into public.app_runs (app_id, company_id)
               select a.id, c.id from public.applications a, public.companies c;",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_migration_rolls_back_its_file_and_names_file_and_statement() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    // A table in the way of the schema migration's `create table public.app_builds`.
    client
        .batch_execute("create table public.app_builds (id int)")
        .await
        .unwrap();
    let (code, _, stderr) = migrate(&db, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("20250715000001_create_app_storage_schema.sql"),
        "{stderr}"
    );
    assert!(
        stderr.contains("create table public.app_builds"),
        "{stderr}"
    );
    assert!(stderr.contains("already exists"), "{stderr}");

    // The failing file left nothing behind; the file before it stays applied.
    let app_exec: bool = client
        .query_one(
            "select exists (select 1 from pg_namespace where nspname = 'app_exec')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!app_exec, "the failed migration's app_exec schema survived");
    let versions: Vec<String> = client
        .query(
            "select version from supabase_migrations.schema_migrations order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec!["20250715000000"]);

    // Once the obstacle is gone, migrate continues where it stopped.
    client
        .batch_execute("drop table public.app_builds")
        .await
        .unwrap();
    let (code, report, stderr) = migrate(&db, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        names(&report["already_applied"]),
        vec!["20250715000000_create_app_storage_buckets.sql"]
    );
}

#[tokio::test]
async fn a_dry_run_reports_pending_files_and_writes_nothing() {
    let db = TestDb::empty().await;
    let (code, report, stderr) = migrate(&db, &["--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["dry_run"], true);
    assert_eq!(
        names(&report["applied"]).len(),
        app_executor::db::migration::MIGRATIONS.len()
    );
    let client = db.client().await;
    let touched: bool = client
        .query_one(
            "select exists (select 1 from pg_namespace where nspname in ('storage', 'supabase_migrations', 'app_exec'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!touched);
}

#[tokio::test]
async fn on_a_supabase_database_the_compatibility_bootstrap_is_skipped() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    // Stand in for Supabase: its storage schema, roles and auth functions already exist.
    client
        .batch_execute(app_executor::db::migration::SUPABASE_COMPAT_BOOTSTRAP)
        .await
        .unwrap();
    client
        .batch_execute("comment on schema storage is 'owned by the platform'")
        .await
        .unwrap();
    let (code, report, stderr) = migrate(&db, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["bootstrap_applied"], false);
    let comment: Option<String> = client
        .query_one("select obj_description('storage'::regnamespace)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment.as_deref(), Some("owned by the platform"));
}
