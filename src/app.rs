//! The composition root: builds the clients (database, storage, Docker) from the validated
//! config and runs the operations the CLI asks for. Nothing else constructs clients.

use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::artifact::cache::BlobCache;
use crate::artifact::resolve::Resolver;
use crate::config::{Config, ConfigError};
use crate::db;
use crate::db::listener::Wakeups;
use crate::db::migration::MigrateReport;
use crate::db::DatabaseUrl;
use crate::ops::{DaemonStatus, DockerCheck, Ops, Readiness, Systemd};
use crate::pipeline::RunPipeline;
use crate::runner::execution::{RunExecutor, TestExecution};
use crate::runner::Runner;
use crate::sandbox::install::Installer;
use crate::sandbox::{Engine, Sweeper};
use crate::storage::StorageBackend;
use crate::storage::{
    BucketPolicy, LocalStorage, Storage, StorageError, SupabaseOptions, SupabaseStorage,
};

/// Options of `app-executor run` that are not configuration.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Exit once no run is pending and none is in flight.
    pub until_idle: bool,
    /// A trivial execution for queue tests (`sleep=…,record=…`); debug builds only.
    pub test_execution: Option<String>,
}

/// `app-executor run`: the daemon. Returns after a drain (`shutdown`) or, with `until_idle`,
/// once the queue is empty.
pub async fn run(
    config: &Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let url = database_url(config)?;
    let pool = db::pool(
        url,
        config.database.connect_timeout,
        config.database.pool_size,
    )?;
    let executor_id = executor_id();
    let state_dir = &config.executor.state_dir;
    if std::env::var_os("INVOCATION_ID").is_some()
        && (state_dir.starts_with("/tmp") || state_dir.starts_with("/var/tmp"))
    {
        return Err(ConfigError::Invalid(format!(
            "executor.state_dir = {:?}: under systemd /tmp is private to the service, so Docker cannot mount per-run directories from it; use a directory such as /var/lib/app-executor",
            state_dir.display()
        ))
        .into());
    }

    let client = pool
        .get()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    match db::schema_version(&client).await? {
        Some(v) if v.as_str() >= db::migration::latest_version() => {}
        found => {
            return Err(ConfigError::Invalid(format!(
                "the database at {url} is at schema {}, this binary needs {}; run `app-executor migrate` first",
                found.as_deref().unwrap_or("(none)"),
                db::migration::latest_version()
            ))
            .into())
        }
    }
    drop(client);
    let namespace = &config.database.notify_namespace;
    let db_namespace = db::queue::notify_namespace(&pool).await?;
    if db_namespace.as_deref() != Some(namespace.as_str()) {
        return Err(ConfigError::Invalid(format!(
            "database.notify_namespace = {namespace:?} but the database notifies on {:?} (app_exec.settings); make them equal or the daemon will not hear new runs",
            db_namespace.unwrap_or_default()
        ))
        .into());
    }

    let storage = verified_storage(config).await?;
    let (execution, docker) = select_execution(
        config,
        &pool,
        storage.clone(),
        &executor_id,
        options.test_execution.as_deref(),
    )
    .await?;
    let webhook = webhook_client(config)?;
    let retention = if config.retention.enabled {
        Some(retention_policy(config, pool.clone(), storage)?)
    } else {
        None
    };
    let status = Arc::new(DaemonStatus::new(config.queue.max_concurrent_runs));
    let ops = Ops::start(
        &config.ops,
        Arc::new(Systemd::from_env()),
        Readiness {
            pool: pool.clone(),
            docker: docker_check(docker.as_deref()),
            status: status.clone(),
            timeout: config.ops.probe_timeout,
        },
    )
    .await?;
    let capacity = i32::try_from(config.queue.max_concurrent_runs).unwrap_or(i32::MAX);
    db::queue::register_executor(
        &pool,
        &executor_id,
        &host_name(),
        env!("CARGO_PKG_VERSION"),
        capacity,
    )
    .await?;
    tracing::info!(%executor_id, capacity, "executor registered; waiting for runs");
    ops.ready(pool.clone(), &shutdown);
    let sweeper_stop = CancellationToken::new();
    let sweeper = docker.map(|docker| {
        let (stop, queue) = (sweeper_stop.clone(), config.queue.clone());
        tokio::spawn(async move {
            // Leftovers of a previous instance on this host first, then any dead daemon's.
            docker
                .sweep_orphans(queue.lease * 3, Some(&host_name()))
                .await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(queue.rescue_interval) => {}
                }
                docker.sweep_orphans(queue.lease * 3, None).await;
            }
        })
    });

    let (cancelled_tx, cancelled_rx) = mpsc::unbounded_channel();
    let wakeups = Wakeups {
        run_pending: Arc::new(Notify::new()),
        schedule_changed: Arc::new(Notify::new()),
        run_cancelled: cancelled_tx,
    };
    let listener_stop = CancellationToken::new();
    let listener = tokio::spawn(db::listener::listen(
        url.clone(),
        config.database.connect_timeout,
        namespace.clone(),
        wakeups.clone(),
        listener_stop.clone(),
    ));

    let (alerts, alert_tasks) = crate::alerts::start(&config.alerts, pool.clone(), webhook);
    let retention_stop = CancellationToken::new();
    let retention = retention.map(|r| tokio::spawn(r.run(retention_stop.clone())));
    let runner = Runner {
        pool: pool.clone(),
        executor_id: executor_id.clone(),
        settings: config.queue.clone(),
        execution,
        run_pending: wakeups.run_pending.clone(),
        run_cancelled: cancelled_rx,
        until_idle: options.until_idle,
        status,
        alerts,
    };
    let scheduler_stop = CancellationToken::new();
    // Cron fires by the database's clock: a host whose clock is off must not fire early or
    // record ticks as missed while other daemons are on time.
    let clock = crate::cron::DatabaseClock::default();
    clock.set_offset(crate::cron::DatabaseClock::measure(&pool).await?);
    let clock_keeper = tokio::spawn(clock.clone().keep_in_step(
        pool.clone(),
        std::time::Duration::from_secs(30),
        scheduler_stop.clone(),
    ));
    let scheduler = tokio::spawn(
        crate::cron::Scheduler::new(
            pool.clone(),
            Arc::new(clock),
            config.cron.clone(),
            wakeups.schedule_changed.clone(),
        )
        .run(scheduler_stop.clone()),
    );
    runner.run(shutdown).await;
    retention_stop.cancel();
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    alert_tasks.stop(crate::alerts::DRAIN_GRACE).await;
    sweeper_stop.cancel();
    if let Some(sweeper) = sweeper {
        let _ = sweeper.await;
    }
    scheduler_stop.cancel();
    let _ = scheduler.await;
    let _ = clock_keeper.await;
    listener_stop.cancel();
    let _ = listener.await;
    ops.stop().await;
    tracing::info!(%executor_id, "executor stopped");
    Ok(())
}

/// What `/readyz` asks Docker: the sandbox's engine, or nothing when the test execution (which
/// starts no containers) was selected.
fn docker_check(docker: Option<&Sweeper>) -> DockerCheck {
    let Some(docker) = docker else {
        return DockerCheck::NotUsed("the test execution (--test-execution) starts no containers");
    };
    let engine = docker.engine.clone();
    DockerCheck::Probe(Arc::new(move || {
        let engine = engine.clone();
        async move {
            engine
                .ping()
                .await
                .map(|()| "engine answers".to_owned())
                .map_err(|e| e.to_string())
        }
    }))
}

/// The execution this daemon uses: the run pipeline in Docker containers, or (debug and
/// benchmark builds only) the trivial [`TestExecution`]. With the pipeline comes the orphan
/// sweep over the same engine.
async fn select_execution(
    config: &Config,
    pool: &deadpool_postgres::Pool,
    storage: Arc<dyn Storage>,
    executor_id: &str,
    test_execution: Option<&str>,
) -> anyhow::Result<(Arc<dyn RunExecutor>, Option<Arc<Sweeper>>)> {
    match test_execution {
        None => {
            let state = &config.executor.state_dir;
            let resolver = Resolver {
                pool: pool.clone(),
                storage,
                cache: Arc::new(BlobCache::new(
                    state.join("cache").join("blobs"),
                    config.executor.blob_cache_max_bytes,
                )),
                runs_dir: state.join("runs"),
                host: config.limits.host.clone(),
                extract: config.limits.extract.clone(),
            };
            let engine = Engine::connect(&config.sandbox).await?;
            let sweeper = Arc::new(Sweeper {
                engine: engine.clone(),
                pool: pool.clone(),
                runs_dir: resolver.runs_dir.clone(),
                executor_id: executor_id.to_owned(),
            });
            let pipeline = Arc::new(RunPipeline {
                resolver,
                logs: config.logs.clone(),
                outputs: config.outputs.clone(),
                installer: Installer {
                    engine: engine.clone(),
                    settings: config.sandbox.clone(),
                    cache_dir: state.join("cache").join("deps"),
                },
                engine,
                settings: config.sandbox.clone(),
                executor_id: executor_id.to_owned(),
            });
            Ok((pipeline, Some(sweeper)))
        }
        Some(_) if !cfg!(any(debug_assertions, feature = "test-execution")) => Err(ConfigError::Invalid(
            "--test-execution is only available in debug builds and benchmark builds (--features test-execution); it exists for tests".into(),
        )
        .into()),
        Some(spec) => Ok((Arc::new(TestExecution::parse(spec).map_err(ConfigError::Invalid)?), None)),
    }
}

/// The HTTP client alert webhooks are POSTed with: no redirects (a 3xx is a misconfigured URL,
/// and following it would turn the POST into a GET), our user agent.
fn webhook_client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let connect_timeout = config
        .alerts
        .webhook
        .as_ref()
        .map_or(std::time::Duration::from_secs(10), |w| w.timeout);
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .user_agent(concat!("app-executor/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the alerts webhook HTTP client")
}

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
pub fn storage(config: &Config) -> anyhow::Result<Arc<dyn Storage>> {
    let settings = &config.storage;
    match settings.backend {
        StorageBackend::Local => Ok(Arc::new(LocalStorage::new(
            settings.local_root.clone(),
            BucketPolicy::default(),
        ))),
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
            Ok(Arc::new(SupabaseStorage::new(options)?))
        }
    }
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
/// and its schema is current, the Docker engine answers, and storage accepts the credentials.
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
    checks.push(check_docker(config).await);
    checks.push(check_storage(config).await);
    CheckReport {
        ok: checks.iter().all(|c| c.ok),
        checks,
        config: config.redacted_json(),
    }
}

async fn check_docker(config: &Config) -> Check {
    let (ok, detail) = match Engine::connect(&config.sandbox).await {
        Ok(engine) => {
            let image = config.sandbox.image_for("20");
            let present = engine
                .ensure_image(&image, crate::sandbox::PullPolicy::Never, None)
                .await
                .is_ok();
            (
                true,
                format!(
                    "{engine:?} reachable; image {image} {}",
                    if present {
                        "present".to_owned()
                    } else {
                        format!("not present (sandbox.pull = {:?})", config.sandbox.pull)
                    }
                ),
            )
        }
        Err(e) => (false, e.to_string()),
    };
    Check {
        name: "docker",
        ok,
        detail,
    }
}

async fn check_storage(config: &Config) -> Check {
    let fail = |detail: String| Check {
        name: "storage",
        ok: false,
        detail,
    };
    let storage = match storage(config) {
        Ok(storage) => storage,
        Err(e) => return fail(e.to_string()),
    };
    // The key must act as the service role; then a lookup of an object that need not exist
    // proves downloads are allowed too.
    if let Err(e) = crate::storage::verify_service_role(storage.as_ref()).await {
        return fail(e.to_string());
    }
    match storage
        .head(
            crate::storage::APP_STORAGE_BUCKET,
            "app-executor-check/probe",
        )
        .await
    {
        Ok(_) => Check {
            name: "storage",
            ok: true,
            detail: format!(
                "{:?} backend reachable, credentials accepted",
                config.storage.backend
            ),
        },
        Err(e) => fail(e.to_string()),
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
    // How the session travels, for whoever reads `check` (sslmode in the README).
    let transport = match db::session_tls(&client).await {
        Ok(Some(tls)) => format!("over {tls}"),
        Ok(None) => "without TLS".to_owned(),
        Err(e) => return fail(format!("{url}: {e}")),
    };
    match db::schema_version(&client).await {
        Ok(Some(version)) if version.as_str() >= db::migration::latest_version() => Check {
            name: "database",
            ok: true,
            detail: format!("{url} reachable {transport}, schema at {version}"),
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
    let company = match company {
        Some(c) => c
            .parse()
            .map_err(|_| anyhow::anyhow!("--company {c:?} is not a company id (a uuid)"))?,
        None => match db::runs::companies_of_app(&pool, app).await?.as_slice() {
            [only] => *only,
            [] => anyhow::bail!("app {app} is not enabled for any company (app_exec.company_apps); pass --company <id>"),
            many => anyhow::bail!(
                "app {app} is enabled for {} companies; pass --company with one of: {}",
                many.len(),
                many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        },
    };
    match db::runs::tenant_exists(&pool, app, company).await? {
        (false, _) => anyhow::bail!("there is no application {app} in this database"),
        (_, false) => anyhow::bail!("there is no company {company} in this database"),
        _ => {}
    }
    let run = db::runs::insert_run(&pool, app, company, run_type, input).await?;
    Ok((pool, run))
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
