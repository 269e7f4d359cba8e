//! Everything that speaks SQL. No other module holds a query.
//!
//! - [`statement`]: splitting migration files into statements (pure).
//! - [`migration`]: the Supabase-compatible migration applier.
//! - [`output`]: a run's `app_outputs` rows and log pointers (fenced), and its log lookup.
//! - [`alert`]: alert events as `NOTIFY <namespace>_events`.
//! - [`retention`]: what the retention policy selects and deletes, and its advisory lock.
//!
//! Connections: [`connect`] opens one dedicated session (migrations, LISTEN); [`pool`] builds the
//! deadpool pool every other component shares. Both use the same `tokio_postgres::Config`, so
//! timeouts and the application name are set in one place.

pub mod alert;
pub mod artifact;
pub mod listener;
pub mod migration;
pub mod output;
pub mod queue;
pub mod retention;
pub mod runs;
pub mod schedule;
pub mod statement;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, NoTls};

use crate::config::DatabaseUrl;

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
}

fn pg_config(
    url: &DatabaseUrl,
    connect_timeout: Duration,
) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config =
        url.expose().parse().map_err(|source| DbError::BadUrl {
            url: url.redacted(),
            source,
        })?;
    config.connect_timeout(connect_timeout);
    if config.get_application_name().is_none() {
        config.application_name("app-executor");
    }
    Ok(config)
}

/// Opens one dedicated session. Its connection task is spawned on the current runtime and ends
/// when the returned client is dropped.
pub async fn connect(url: &DatabaseUrl, connect_timeout: Duration) -> Result<Client, DbError> {
    let config = pg_config(url, connect_timeout)?;
    let (client, connection) = config
        .connect(NoTls)
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
/// so a database restart heals without restarting the daemon.
pub fn pool(url: &DatabaseUrl, connect_timeout: Duration, size: usize) -> Result<Pool, DbError> {
    let config = pg_config(url, connect_timeout)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
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
