//! Everything that speaks SQL. No other module holds a query.
//!
//! - [`statement`]: splitting migration files into statements (pure).
//! - [`migration`]: the Supabase-compatible migration applier.
//! - [`output`]: a run's `app_outputs` rows and log pointers (fenced), and its log lookup.
//! - [`alert`]: alert events as `NOTIFY <namespace>_events`.
//! - [`retention`]: what the retention policy selects and deletes, and its advisory lock.
//!
//! - [`tls`]: TLS with libpq's `sslmode` meanings (`verify-full`, `sslrootcert`, ...), and
//!   SCRAM channel binding to the server's certificate ([`channel_binding`]).
//!
//! Every public statement function measures itself ([`timed`]) as
//! `app_executor_db_statement_duration_seconds{statement="<function>"}`.
//!
//! Connections: [`connect`] opens one dedicated session (migrations); [`pool`] builds the
//! deadpool pool every other component shares; the LISTEN task opens its own. All use
//! [`session_config`], so TLS, timeouts and the application name are set in one place.

pub mod alert;
pub mod artifact;
pub mod builds;
mod channel_binding;
pub mod executors;
pub mod listener;
pub mod migration;
pub mod output;
pub mod queue;
pub mod retention;
pub mod runs;
pub mod schedule;
pub mod settings;
pub mod statement;
pub mod status;
pub mod tls;
pub mod webhooks;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Client;

use self::tls::{RootCerts, RustlsConnect, SslMode};

pub use settings::{DatabaseSettings, DatabaseUrl};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL {url} is not usable: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot connect to the database at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot build the connection pool for {url}: {message}")]
    Pool { url: String, message: String },
    #[error("the database does not answer: {0}")]
    Ping(String),
    #[error("database URL {url}: sslmode={value} is not a mode; use disable, prefer, require, verify-ca or verify-full")]
    BadSslMode { url: String, value: String },
    #[error("database URL {url}: {source}")]
    Tls {
        url: String,
        #[source]
        source: tls::TlsSetupError,
    },
}

/// Measures one statement function from its start until it returns (the guard is dropped),
/// its wait for a pooled connection included: that wait is part of what a caller sees when
/// the pool is short. `statement` is the function's name, a bounded label.
pub(crate) fn timed(statement: &'static str) -> Timed {
    Timed {
        statement,
        started: std::time::Instant::now(),
    }
}

/// See [`timed`].
pub(crate) struct Timed {
    statement: &'static str,
    started: std::time::Instant,
}

/// The histogram [`timed`] records into. Recorded here through the `metrics` facade (this
/// layer is below `ops`); `ops::metrics` describes it and sets its buckets.
pub const STATEMENT_DURATION: &str = "app_executor_db_statement_duration_seconds";

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!(STATEMENT_DURATION, "statement" => self.statement)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The session settings and TLS connector for `url`. `sslmode` (all of libpq's five) and
/// `sslrootcert` are taken from a URL's query here, since tokio-postgres knows only three modes
/// and no root certificates; everything else is tokio-postgres's to parse.
pub fn session_config(
    url: &DatabaseUrl,
    connect_timeout: Duration,
) -> Result<(tokio_postgres::Config, RustlsConnect), DbError> {
    let (rest, sslmode, sslrootcert) = take_tls_options(url.expose());
    let mode = match sslmode {
        None => SslMode::Prefer,
        Some(value) => SslMode::parse(&value).ok_or_else(|| DbError::BadSslMode {
            url: url.redacted(),
            value,
        })?,
    };
    let roots = match sslrootcert.as_deref() {
        None | Some("system") => RootCerts::System,
        Some(path) => RootCerts::File(path.into()),
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(|source| DbError::BadUrl {
        url: url.redacted(),
        source,
    })?;
    config.ssl_mode(mode.for_tokio_postgres());
    config.connect_timeout(connect_timeout);
    if config.get_application_name().is_none() {
        config.application_name("app-executor");
    }
    let tls = RustlsConnect::new(mode, &roots).map_err(|source| DbError::Tls {
        url: url.redacted(),
        source,
    })?;
    Ok((config, tls))
}

/// Splits `sslmode` and `sslrootcert` off a `postgres://` URL's query (percent-decoded), leaving
/// the rest of the URL untouched. Key/value connection strings are returned as they are.
fn take_tls_options(url: &str) -> (String, Option<String>, Option<String>) {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return (url.to_owned(), None, None);
    };
    let (mut sslmode, mut sslrootcert) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        };
        match key {
            "sslmode" => sslmode = Some(decoded()),
            "sslrootcert" => sslrootcert = Some(decoded()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, sslmode, sslrootcert)
}

/// Opens one dedicated session. Its connection task is spawned on the current runtime and ends
/// when the returned client is dropped.
pub async fn connect(url: &DatabaseUrl, connect_timeout: Duration) -> Result<Client, DbError> {
    let (config, tls) = session_config(url, connect_timeout)?;
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|source| DbError::Connect {
            url: url.redacted(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database session ended");
        }
    });
    Ok(client)
}

/// The shared pool. Connections are checked (`Fast` recycling) and re-established on demand,
/// so a database restart heals without restarting the daemon. Handed out last-in first-out:
/// a run's claim and finish then use the same, recently active server process instead of
/// cycling through every idle one (FIFO, deadpool's default, cost the 1-slot queue ~5%).
pub fn pool(url: &DatabaseUrl, connect_timeout: Duration, size: usize) -> Result<Pool, DbError> {
    let (config, tls) = session_config(url, connect_timeout)?;
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(connect_timeout))
        .create_timeout(Some(connect_timeout))
        .build()
        .map_err(|e| DbError::Pool {
            url: url.redacted(),
            message: e.to_string(),
        })
}

/// `select 1` on a pooled connection: the database is reachable and answering (readiness).
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await.map_err(|e| DbError::Ping(e.to_string()))?;
    client
        .query_one("select 1", &[])
        .await
        .map_err(|e| DbError::Ping(e.to_string()))?;
    Ok(())
}

/// The TLS version of `client`'s session (`TLSv1.3`, ...), `None` when it is not encrypted.
pub async fn session_tls(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select version from pg_catalog.pg_stat_ssl where pid = pg_backend_pid() and ssl",
            &[],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The database server's clock (`clock_timestamp()`), read on a pooled connection.
pub async fn database_time(pool: &Pool) -> Result<chrono::DateTime<chrono::Utc>, DbError> {
    let client = pool.get().await.map_err(|e| DbError::Ping(e.to_string()))?;
    let row = client
        .query_one("select clock_timestamp()", &[])
        .await
        .map_err(|e| DbError::Ping(e.to_string()))?;
    Ok(row.get(0))
}

/// The newest of this binary's migrations recorded in the database, `None` when none is.
pub async fn schema_version(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "select to_regclass('supabase_migrations.schema_migrations') is not null",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let ours: Vec<&str> = migration::MIGRATIONS.iter().map(|m| m.version()).collect();
    let row = client
        .query_one(
            "select max(version) from supabase_migrations.schema_migrations where version = any($1)",
            &[&ours],
        )
        .await?;
    Ok(row.get(0))
}

/// A statement's error as an operator needs it: tokio-postgres prints a server's error as just
/// "db error", so the server's message, SQLSTATE and hint are spelled out here.
pub fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{} {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_split_off_a_url_and_the_rest_is_kept_as_written() {
        let (rest, mode, root) = take_tls_options(
            "postgres://u:p%40ss@db.example.com:6543/postgres?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.crt",
        );
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example.com:6543/postgres?application_name=x"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.crt"));

        let (rest, mode, root) = take_tls_options("postgresql://h/db?sslmode=require");
        assert_eq!(
            (rest.as_str(), mode.as_deref(), root),
            ("postgresql://h/db", Some("require"), None)
        );

        // Key/value strings are tokio-postgres's to parse.
        let dsn = "host=h sslmode=require";
        assert_eq!(take_tls_options(dsn), (dsn.to_owned(), None, None));
    }

    #[test]
    fn a_bad_sslmode_or_root_file_is_named_with_the_fix() {
        let url = |s: &str| DatabaseUrl::parse(s, "the test").unwrap();
        let e = session_config(
            &url("postgres://h/db?sslmode=verify"),
            Duration::from_secs(1),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("sslmode=verify is not a mode") && e.contains("verify-full"),
            "{e}"
        );
        let e = session_config(
            &url("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt"),
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            text.contains("/nonexistent/ca.crt") && text.contains("cannot be read"),
            "{text}"
        );
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            session_config(
                &url(&format!("postgres://h/db?sslmode={mode}")),
                Duration::from_secs(1),
            )
            .unwrap();
        }
    }
}
