//! The composition root: builds the clients (database, and later Docker and storage) from the
//! validated config and runs the operations the CLI asks for. Nothing else constructs clients.

use anyhow::Context;
use serde::Serialize;

use crate::config::{Config, ConfigError, DatabaseUrl};
use crate::db;
use crate::db::migration::MigrateReport;

fn database_url(config: &Config) -> Result<&DatabaseUrl, ConfigError> {
    config.database.url.as_ref().ok_or_else(|| {
        ConfigError::Invalid(
            "no database configured: set DATABASE_URL (or APP_EXECUTOR_DATABASE__URL), pass \
             --database-url, or provide the systemd credential database-url"
                .into(),
        )
    })
}

/// `app-executor migrate`: applies pending migrations on a dedicated session.
pub async fn migrate(config: &Config, dry_run: bool) -> anyhow::Result<MigrateReport> {
    let url = database_url(config)?;
    let mut client = db::connect(url, config.database.connect_timeout).await?;
    let report = db::migration::migrate(&mut client, dry_run)
        .await
        .with_context(|| format!("migrating {url}"))?;
    Ok(report)
}

/// One line of `check`.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub checks: Vec<Check>,
    pub config: serde_json::Value,
}

impl CheckReport {
    /// The name of the first failing check.
    pub fn failed(&self) -> Option<&'static str> {
        self.checks.iter().find(|c| !c.ok).map(|c| c.name)
    }
}

/// `app-executor check`: the configuration is valid (it was loaded), the database is reachable
/// and its schema is current.
pub async fn check(config: &Config) -> CheckReport {
    let mut checks = vec![Check {
        name: "config",
        ok: true,
        detail: match &config.source_file {
            Some(path) => format!("loaded {}", path.display()),
            None => "defaults and environment (no config file)".into(),
        },
    }];
    checks.push(check_database(config).await);
    CheckReport {
        ok: checks.iter().all(|c| c.ok),
        checks,
        config: config.redacted_json(),
    }
}

async fn check_database(config: &Config) -> Check {
    let fail = |detail: String| Check {
        name: "database",
        ok: false,
        detail,
    };
    let url = match database_url(config) {
        Ok(url) => url,
        Err(e) => return fail(e.to_string()),
    };
    let client = match db::connect(url, config.database.connect_timeout).await {
        Ok(client) => client,
        Err(e) => return fail(e.to_string()),
    };
    match db::schema_version(&client).await {
        Ok(Some(version)) if version.as_str() >= db::migration::latest_version() => Check {
            name: "database",
            ok: true,
            detail: format!("{url} reachable, schema at {version}"),
        },
        Ok(Some(version)) => fail(format!(
            "{url} reachable but its schema is at {version}, older than {}; run `app-executor migrate`",
            db::migration::latest_version()
        )),
        Ok(None) => fail(format!(
            "{url} reachable but not migrated; run `app-executor migrate`"
        )),
        Err(e) => fail(format!("{url}: {e}")),
    }
}
