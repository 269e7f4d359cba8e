//! Applies the embedded migrations the way the Supabase CLI does, so `app-executor migrate` and
//! `supabase db push` can be used on the same database and agree on what is applied.
//!
//! Per pending file: `RESET ALL`, `BEGIN`, its statements one by one, the history row in
//! `supabase_migrations.schema_migrations (version, name, statements)`, `COMMIT`. A failing
//! statement rolls the whole file back and the error names the file, the statement number and
//! its first line. An advisory lock serialises concurrent `migrate` runs of ours (the CLI takes
//! none). On a database without a `storage` schema (plain PostgreSQL) the Supabase
//! compatibility bootstrap runs first.

use tokio_postgres::Client;

use super::statement::split_statements;

/// One migration file compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct MigrationFile {
    /// The file name, e.g. `20250715000000_create_app_storage_buckets.sql`.
    pub file_name: &'static str,
    pub sql: &'static str,
}

impl MigrationFile {
    /// The 14-digit UTC timestamp before the first `_`: the CLI's `version`.
    pub fn version(&self) -> &'static str {
        self.file_name
            .split_once('_')
            .map_or(self.file_name, |(v, _)| v)
    }

    /// The part after the first `_`, without `.sql`: the CLI's `name`.
    pub fn name(&self) -> &'static str {
        self.file_name
            .split_once('_')
            .map_or("", |(_, n)| n)
            .trim_end_matches(".sql")
    }
}

macro_rules! migration {
    ($file:literal) => {
        MigrationFile {
            file_name: $file,
            sql: include_str!(concat!("../../migrations/", $file)),
        }
    };
}

/// Every migration, in the order they apply. A unit test checks this list against the files in
/// `migrations/`, so a new file cannot be forgotten here.
pub const MIGRATIONS: &[MigrationFile] = &[
    migration!("20250715000000_create_app_storage_buckets.sql"),
    migration!("20250715000001_create_app_storage_schema.sql"),
    migration!("20250715000002_add_test_app_data.sql"),
    migration!("20250801000000_executor_queue.sql"),
    migration!("20250801000001_executor_cron.sql"),
    migration!("20250801000003_executor_claim.sql"),
    migration!("20250801000004_executor_claim_skip_scan.sql"),
    migration!("20250801000005_executor_cron_quiet_advance.sql"),
    migration!("20250801000006_executor_retention.sql"),
    migration!("20250801000007_executor_notify_per_statement.sql"),
    migration!("20250801000008_executor_claim_indexed_pick.sql"),
    migration!("20250801000009_executor_cron_advance_without_trigger_call.sql"),
    migration!("20250801000010_executor_cron_fire_ahead.sql"),
    migration!("20250801000011_executor_alert_outbox.sql"),
    migration!("20250801000012_seed_contract_columns.sql"),
    migration!("20250801000013_executor_tenant_guards.sql"),
    migration!("20250801000014_executor_claim_bounded_lock_wait.sql"),
    migration!("20250801000015_executor_webhooks.sql"),
    migration!("20250801000016_executor_realtime.sql"),
    migration!("20250801000017_executor_builds.sql"),
    migration!("20250801000018_executor_usage.sql"),
    migration!("20250801000019_executor_claim_batch.sql"),
];

/// Applied only to databases without a `storage` schema; see the file's header.
pub const SUPABASE_COMPAT_BOOTSTRAP: &str =
    include_str!("../../migrations/bootstrap/supabase_compat.sql");

/// The newest version this binary knows; `run` refuses to start against an older schema.
pub fn latest_version() -> &'static str {
    MIGRATIONS.last().map_or("", MigrationFile::version)
}

/// Arbitrary constant for `pg_advisory_lock`: "app-executor migrate".
const MIGRATE_LOCK_KEY: i64 = 0x6170_7065_7865_6301;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("failed to {action}: {source}")]
    Database {
        action: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {file} failed at statement {index} of {total} ({first_line}): {message}; \
         nothing of this file was applied"
    )]
    Statement {
        file: String,
        index: usize,
        total: usize,
        first_line: String,
        message: String,
    },
}

fn db(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    move |source| MigrateError::Database { action, source }
}

/// What a `migrate` run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct MigrateReport {
    /// The compatibility bootstrap ran (plain PostgreSQL, first time).
    pub bootstrap_applied: bool,
    /// Files applied by this run, in order.
    pub applied: Vec<String>,
    /// Files that were already recorded.
    pub already_applied: Vec<String>,
    /// Files recorded as applied whose text has changed since (never re-run; a warning).
    pub changed_since_applied: Vec<String>,
    /// `--dry-run`: nothing was written.
    pub dry_run: bool,
}

/// Applies pending migrations (or, with `dry_run`, only reports them) on a dedicated session
/// connection (never a transaction pooler: advisory locks and `SET` need a session).
pub async fn migrate(client: &mut Client, dry_run: bool) -> Result<MigrateReport, MigrateError> {
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
        .await
        .map_err(db("take the migration lock"))?;
    let result = migrate_locked(client, dry_run).await;
    // Unlock even after a failure; a failed unlock is only possible if the session died, which
    // releases the lock anyway.
    let _ = client
        .execute("select pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
        .await;
    result
}

async fn migrate_locked(client: &mut Client, dry_run: bool) -> Result<MigrateReport, MigrateError> {
    let mut report = MigrateReport {
        dry_run,
        ..Default::default()
    };
    let has_storage: bool = client
        .query_one(
            "select exists (select 1 from pg_namespace where nspname = 'storage')",
            &[],
        )
        .await
        .map_err(db("inspect the database for a storage schema"))?
        .get(0);
    if !has_storage {
        report.bootstrap_applied = true;
        if !dry_run {
            apply_in_transaction(
                client,
                "bootstrap/supabase_compat.sql",
                SUPABASE_COMPAT_BOOTSTRAP,
                None,
            )
            .await?;
        }
    }

    let applied = if dry_run {
        read_history(client).await?
    } else {
        ensure_history_table(client).await?;
        read_history(client).await?
    };

    for file in MIGRATIONS {
        match applied.iter().find(|(v, _)| v == file.version()) {
            Some((_, statements)) => {
                report.already_applied.push(file.file_name.to_owned());
                if let Some(stored) = statements {
                    if *stored != split_statements(file.sql) {
                        report.changed_since_applied.push(file.file_name.to_owned());
                    }
                }
            }
            None => {
                if !dry_run {
                    apply_in_transaction(client, file.file_name, file.sql, Some(file)).await?;
                }
                report.applied.push(file.file_name.to_owned());
            }
        }
    }
    Ok(report)
}

/// The history table exactly as the Supabase CLI creates it (columns added one by one so older
/// tables are upgraded in place).
async fn ensure_history_table(client: &Client) -> Result<(), MigrateError> {
    client
        .batch_execute(
            "set lock_timeout = '4s';
             create schema if not exists supabase_migrations;
             create table if not exists supabase_migrations.schema_migrations (version text not null primary key);
             alter table supabase_migrations.schema_migrations add column if not exists statements text[];
             alter table supabase_migrations.schema_migrations add column if not exists name text;
             reset lock_timeout;",
        )
        .await
        .map_err(db("create supabase_migrations.schema_migrations"))
}

/// Recorded versions with their statements; empty when the table does not exist yet.
async fn read_history(client: &Client) -> Result<Vec<(String, Option<Vec<String>>)>, MigrateError> {
    let exists: bool = client
        .query_one(
            "select to_regclass('supabase_migrations.schema_migrations') is not null",
            &[],
        )
        .await
        .map_err(db("look for supabase_migrations.schema_migrations"))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "select version, statements from supabase_migrations.schema_migrations order by version",
            &[],
        )
        .await
        .map_err(db("read supabase_migrations.schema_migrations"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Runs `sql` statement by statement in one transaction, with its history row when `record`
/// is given. Any failure rolls everything back.
async fn apply_in_transaction(
    client: &mut Client,
    label: &str,
    sql: &str,
    record: Option<&MigrationFile>,
) -> Result<(), MigrateError> {
    client
        .batch_execute("reset all")
        .await
        .map_err(db("reset the session before a migration"))?;
    let statements = split_statements(sql);
    let tx = client
        .transaction()
        .await
        .map_err(db("begin a migration transaction"))?;
    for (index, statement) in statements.iter().enumerate() {
        if let Err(e) = tx.batch_execute(statement).await {
            let message = match e.as_db_error() {
                Some(db) => match db.hint() {
                    Some(hint) => format!("{} (hint: {hint})", db.message()),
                    None => db.message().to_owned(),
                },
                None => e.to_string(),
            };
            return Err(MigrateError::Statement {
                file: label.to_owned(),
                index: index + 1,
                total: statements.len(),
                first_line: first_code_line(statement),
                message,
            });
        }
    }
    if let Some(file) = record {
        tx.execute(
            "insert into supabase_migrations.schema_migrations (version, name, statements) values ($1, $2, $3)",
            &[&file.version(), &file.name(), &statements],
        )
        .await
        .map_err(db("record the migration in supabase_migrations.schema_migrations"))?;
    }
    tx.commit().await.map_err(db("commit a migration"))
}

/// The first line of a statement that is not a comment, shortened for error messages.
fn first_code_line(statement: &str) -> String {
    let line = statement
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or("");
    let mut short: String = line.chars().take(80).collect();
    if line.chars().count() > 80 {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_list_matches_the_migrations_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = MIGRATIONS.iter().map(|m| m.file_name.to_owned()).collect();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn versions_are_14_digit_timestamps_in_ascending_order() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version() < pair[1].version());
        }
        for m in MIGRATIONS {
            assert_eq!(m.version().len(), 14, "{}", m.file_name);
            assert!(m.version().chars().all(|c| c.is_ascii_digit()));
        }
        assert_eq!(MIGRATIONS[0].name(), "create_app_storage_buckets");
    }
}
