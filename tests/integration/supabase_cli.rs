//! Migration history shared with the real Supabase CLI (npm `supabase`, pinned in
//! `scripts/ensure-supabase-cli`), in both directions: after our `migrate` the CLI sees every
//! file applied; after the CLI's `db push` our `migrate` applies nothing and sees no file as
//! changed, because both split files into the same recorded statements.

use std::path::Path;
use std::process::{Command, Output};

use app_executor::db::migration::{MIGRATIONS, SUPABASE_COMPAT_BOOTSTRAP};
use app_executor::db::statement::split_statements;
use serde_json::Value;
use tokio_postgres::Client;

use crate::harness::{binary, TestDb};

/// The CLI's binary, installed on first use.
fn supabase_cli() -> String {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/ensure-supabase-cli"
    ))
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "installing the Supabase CLI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A CLI project directory whose `supabase/migrations/` holds our files plus `extra`.
fn project(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("supabase/migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    for file in MIGRATIONS {
        std::fs::write(migrations.join(file.file_name), file.sql).unwrap();
    }
    for (name, sql) in extra {
        std::fs::write(migrations.join(name), sql).unwrap();
    }
    dir
}

fn cli(project: &Path, args: &[&str], db: &TestDb) -> Output {
    // The CLI wants libpq's form; the test server has no TLS.
    let url = format!("{}?sslmode=disable", db.url.expose());
    let out = Command::new(supabase_cli())
        .args(args)
        .args(["--db-url", &url])
        .current_dir(project)
        .env("SUPABASE_TELEMETRY_DISABLED", "1")
        .env("DO_NOT_TRACK", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "supabase {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn our_migrate(db: &TestDb) -> Value {
    let out = Command::new(binary())
        .args(["migrate", "--json", "--database-url", db.url.expose()])
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("changed since"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Version → recorded statements.
async fn history(client: &Client) -> Vec<(String, Vec<String>)> {
    client
        .query(
            "select version, statements from supabase_migrations.schema_migrations order by version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn after_our_migrate_the_cli_lists_every_file_as_applied() {
    let db = TestDb::migrated().await;
    let project = project(&[]);
    let out = cli(project.path(), &["migration", "list"], &db);
    let listing = String::from_utf8_lossy(&out.stdout);
    for file in MIGRATIONS {
        let version = file.version();
        // ` `20250715000000` | `20250715000000` | `2025-07-15 00:00:00` `: local and remote.
        let both = listing.lines().any(|line| {
            let cells: Vec<&str> = line
                .split('|')
                .map(|cell| cell.trim().trim_matches('`'))
                .collect();
            cells.len() >= 2 && cells[0] == version && cells[1] == version
        });
        assert!(both, "{version} is not applied on both sides:\n{listing}");
    }
}

/// Constructs the CLI's splitter treats specially, each executable after its split.
const PROBE: &str = "-- header comment; with a semicolon
create table probe_t (x text default 'a;b', y text default 'it''s;', \"odd;col\" int);
/* block; /* nested; */ still a comment */ create table probe_u (z int);
create function probe_f() returns int language sql as $$ select 1; $$;
create function probe_g() returns int language plpgsql as $body$ begin return 2; end $body$;
create function probe_h() returns int language sql begin atomic select 1; select 2; end;
create view probe_v as select (select 1) as one;
comment on table probe_t is 'größe; ok — fine';
create table probe_w (a int);   -- a comment after the last statement
-- the end; nothing after
";

#[tokio::test]
async fn after_the_clis_push_our_migrate_applies_nothing_and_sees_no_change() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    // A plain PostgreSQL needs the Supabase pieces first (on Supabase they exist).
    client
        .batch_execute(SUPABASE_COMPAT_BOOTSTRAP)
        .await
        .unwrap();
    let probe_name = "29990101000000_cli_splitter_probe.sql";
    let project = project(&[(probe_name, PROBE)]);
    cli(project.path(), &["db", "push", "--yes"], &db);

    // The CLI recorded exactly the statements we would have.
    let recorded = history(&client).await;
    let mut expected: Vec<(String, Vec<String>)> = MIGRATIONS
        .iter()
        .map(|f| (f.version().to_owned(), split_statements(f.sql)))
        .collect();
    expected.push(("29990101000000".into(), split_statements(PROBE)));
    assert_eq!(recorded.len(), expected.len());
    for ((version, theirs), (_, ours)) in recorded.iter().zip(&expected) {
        assert_eq!(theirs, ours, "statements of {version}");
    }
    // Eight statements and the trailing comments, which the CLI keeps as a ninth.
    assert_eq!(split_statements(PROBE).len(), 9);

    let report = our_migrate(&db);
    assert_eq!(report["applied"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["changed_since_applied"],
        serde_json::json!([]),
        "{report}"
    );
    assert_eq!(
        report["already_applied"].as_array().unwrap().len(),
        MIGRATIONS.len()
    );
}
