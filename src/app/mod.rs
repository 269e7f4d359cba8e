//! The composition root: builds the clients (database, storage, Docker) from the validated
//! config and runs the operations the CLI asks for. Nothing else constructs clients.
//!
//! - `daemon`: `app-executor run`, every long-lived component started and stopped in order.
//! - `check`: `app-executor check`, one line per dependency.
//! - here: the clients (storage, verified storage, database URL, retention) and the one-shot
//!   operations (`migrate`, `enqueue`, `logs`, `publish`, `retention`).

mod check;
mod daemon;
mod webhooks;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::db;
use crate::db::migration::MigrateReport;
use crate::db::DatabaseUrl;
use crate::storage::StorageBackend;
use crate::storage::{
    BucketPolicy, LocalStorage, Storage, StorageError, SupabaseOptions, SupabaseStorage,
};

pub use check::{check, Check, CheckReport};
pub use daemon::{reap, run, RunOptions};
pub use webhooks::{
    create_webhook, list_webhooks, rotate_webhook, set_webhook_active, CreatedWebhook,
};

/// The retention policy over this config's database and `storage`.
fn retention_policy(
    config: &Config,
    pool: deadpool_postgres::Pool,
    storage: Arc<dyn Storage>,
) -> anyhow::Result<crate::retention::Retention> {
    Ok(crate::retention::Retention {
        pool,
        storage,
        settings: config.retention.clone(),
        database_url: database_url(config)?.clone(),
        connect_timeout: config.database.connect_timeout,
    })
}

/// `app-executor retention`: one retention pass now (under the same lock as the daemons'), or
/// with `dry_run` the list of what a pass would delete. `None` when a daemon holds the lock.
pub async fn retention_pass(
    config: &Config,
    dry_run: bool,
) -> anyhow::Result<Option<crate::retention::RetentionReport>> {
    let url = database_url(config)?;
    let pool = db::pool(url, config.database.connect_timeout, 2)?;
    let storage = verified_storage(config).await?;
    let retention = retention_policy(config, pool, storage)?;
    let stop = CancellationToken::new();
    if dry_run {
        Ok(Some(retention.pass(true, &stop).await?))
    } else {
        Ok(retention.locked_pass(&stop).await?)
    }
}

fn executor_id() -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", host_name(), std::process::id(), &suffix[..6])
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn database_url(config: &Config) -> Result<&DatabaseUrl, ConfigError> {
    config.database.url.as_ref().ok_or_else(|| {
        ConfigError::Invalid(
            "no database configured: set DATABASE_URL (or APP_EXECUTOR_DATABASE__URL), pass \
             --database-url, or provide the systemd credential database-url"
                .into(),
        )
    })
}

/// The storage backend `[storage]` selects. Config validation guarantees the supabase backend's
/// URL. A missing service key is a configuration error (exit 78) of the command asking for
/// storage; commands that never use storage (`migrate`, `validate`, `enqueue`, `cron next`) do
/// not ask, so they run without the key.
/// Every backend is wrapped in [`crate::ops::metered_storage::Metered`], so its requests show in `/metrics`.
pub fn storage(config: &Config) -> anyhow::Result<Arc<dyn Storage>> {
    let settings = &config.storage;
    let backend: Arc<dyn Storage> = match settings.backend {
        StorageBackend::Local => Arc::new(LocalStorage::new(
            settings.local_root.clone(),
            BucketPolicy::default(),
        )),
        StorageBackend::Supabase => {
            let missing = |what: &str| StorageError::Unavailable {
                bucket: "-".into(),
                key: "-".into(),
                detail: format!("storage.backend = \"supabase\" but {what} is not configured"),
            };
            let url = settings.url.clone().ok_or_else(|| missing("storage.url"))?;
            let key = settings.service_key.clone().ok_or_else(|| {
                crate::config::ConfigError::Invalid(
                    crate::storage::settings::missing_service_key_fix(),
                )
            })?;
            let mut options = SupabaseOptions::new(url, key);
            options.connect_timeout = settings.connect_timeout;
            options.read_timeout = settings.read_timeout;
            options.max_retries = settings.max_retries;
            Arc::new(SupabaseStorage::new(options)?)
        }
    };
    Ok(Arc::new(crate::ops::metered_storage::Metered::new(backend)))
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

/// `enqueue`: inserts a pending run of `app` for `company` (or the app's only company in
/// `app_exec.company_apps`). Returns the pool (for following the run) and the run id.
pub async fn enqueue(
    config: &Config,
    app: &str,
    company: Option<&str>,
    run_type: &str,
    input: &serde_json::Value,
) -> anyhow::Result<(deadpool_postgres::Pool, uuid::Uuid)> {
    let app: uuid::Uuid = app
        .parse()
        .map_err(|_| anyhow::anyhow!("--app {app:?} is not an application id (a uuid)"))?;
    let url = database_url(config)?;
    let pool = db::pool(url, config.database.connect_timeout, 2)?;
    let company = company_of(&pool, app, company).await?;
    let run = db::runs::insert_run(&pool, app, company, run_type, input).await?;
    Ok((pool, run))
}

/// `app-executor build`: a pending build of `version` (default: the newest published
/// version, as runs choose it) with `build_config` (a JSON object, default `{}`). Returns the
/// pool (for `--wait`), the build and the version it builds.
pub async fn enqueue_build(
    config: &Config,
    app: &str,
    version: Option<&str>,
    build_config: Option<&str>,
) -> anyhow::Result<(deadpool_postgres::Pool, uuid::Uuid, String)> {
    let app: uuid::Uuid = app
        .parse()
        .map_err(|_| anyhow::anyhow!("--app {app:?} is not an application id (a uuid)"))?;
    let build_config: serde_json::Value = match build_config {
        None => serde_json::json!({}),
        Some(text) => match serde_json::from_str(text) {
            Ok(value @ serde_json::Value::Object(_)) => value,
            Ok(_) | Err(_) => anyhow::bail!(
                "--build-config {text:?} is not a JSON object; pass e.g. '{{\"script\": \"build\", \"timeout\": 600}}'"
            ),
        },
    };
    let url = database_url(config)?;
    let pool = db::pool(url, config.database.connect_timeout, 2)?;
    let version = {
        let client = pool.get().await?;
        if !db::artifact::app_exists(&client, app).await? {
            anyhow::bail!("there is no application {app} in this database");
        }
        let available = db::artifact::app_versions(&client, app).await?;
        crate::artifact::version::choose_version(version, &serde_json::Value::Null, &available)
            .map_err(|e| {
                anyhow::anyhow!("app {app}: {e}; publish it first (app-executor publish)")
            })?
    };
    let build = db::builds::insert_build(&pool, app, &version, &build_config).await?;
    Ok((pool, build, version))
}

/// A small pool for `status`.
pub fn status_pool(config: &Config) -> anyhow::Result<deadpool_postgres::Pool> {
    Ok(db::pool(
        database_url(config)?,
        config.database.connect_timeout,
        1,
    )?)
}

/// The company `--company` names (which must exist), or the app's only company.
async fn company_of(
    pool: &deadpool_postgres::Pool,
    app: uuid::Uuid,
    company: Option<&str>,
) -> anyhow::Result<uuid::Uuid> {
    let company = match company {
        Some(c) => c
            .parse()
            .map_err(|_| anyhow::anyhow!("--company {c:?} is not a company id (a uuid)"))?,
        None => match db::runs::companies_of_app(pool, app).await?.as_slice() {
            [only] => *only,
            [] => anyhow::bail!("app {app} is not enabled for any company (app_exec.company_apps); pass --company <id>"),
            many => anyhow::bail!(
                "app {app} is enabled for {} companies; pass --company with one of: {}",
                many.len(),
                many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        },
    };
    match db::runs::tenant_exists(pool, app, company).await? {
        (false, _) => anyhow::bail!("there is no application {app} in this database"),
        (_, false) => anyhow::bail!("there is no company {company} in this database"),
        _ => Ok(company),
    }
}

/// The configured storage after checking its key acts as the service role (both buckets
/// visible). A refused or too weak key is a configuration error (exit 78): with the anon key
/// every object would look missing and every listing empty. A storage outage is only warned
/// about here; the operations that need storage retry and report it themselves.
pub async fn verified_storage(config: &Config) -> anyhow::Result<Arc<dyn Storage>> {
    let storage = storage(config)?;
    match crate::storage::verify_service_role(storage.as_ref()).await {
        Ok(()) => Ok(storage),
        Err(e @ (StorageError::NotServiceRole { .. } | StorageError::AccessDenied { .. })) => {
            Err(ConfigError::Invalid(format!("storage: {e}")).into())
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check the storage key now; going on");
            Ok(storage)
        }
    }
}

/// `app-executor logs`: prints a run's logs from storage; with `follow`, until the run ends.
pub async fn logs(config: &Config, run: &str, follow: bool) -> anyhow::Result<()> {
    let url = database_url(config)?;
    let pool = db::pool(url, config.database.connect_timeout, 1)?;
    let storage = verified_storage(config).await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    crate::logs::reader::print_run_logs(&pool, storage.as_ref(), run, follow, &mut out, &mut err)
        .await?;
    Ok(())
}

/// `app-executor publish`: validates `dir`, uploads its files and records them. With
/// `progress`, each upload is reported on stderr: one updating line on a terminal, a plain
/// line per file otherwise.
pub async fn publish(
    config: &Config,
    dir: &std::path::Path,
    app: &str,
    version: Option<&str>,
    progress: bool,
) -> anyhow::Result<crate::artifact::publish::PublishReport> {
    let app: uuid::Uuid = app
        .parse()
        .map_err(|_| anyhow::anyhow!("--app {app:?} is not an application id (a uuid)"))?;
    let url = database_url(config)?;
    let mut client = db::connect(url, config.database.connect_timeout).await?;
    let report = crate::artifact::publish::publish(
        &mut client,
        verified_storage(config).await?,
        dir,
        app,
        version,
        &config.limits.host,
        &move |i, count, path, bytes| {
            if !progress {
                return;
            }
            use std::io::IsTerminal;
            if std::io::stderr().is_terminal() {
                eprint!("\r\x1b[2Kuploading {i}/{count}: {path} ({bytes} bytes)");
                if i == count {
                    eprintln!();
                }
            } else {
                eprintln!("uploaded {i}/{count}: {path} ({bytes} bytes)");
            }
        },
    )
    .await?;
    Ok(report)
}
