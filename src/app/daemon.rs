//! `app-executor run`: the daemon. Builds the run pipeline (or the test execution), the
//! runner, the scheduler, the alert sender, retention, the ops endpoints and the orphan sweep,
//! runs them until a drain, and stops them in order.

use super::{database_url, executor_id, host_name, retention_policy, verified_storage};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::artifact::cache::BlobCache;
use crate::artifact::resolve::Resolver;
use crate::config::{Config, ConfigError};
use crate::db;
use crate::db::listener::Wakeups;
use crate::ops::{DaemonStatus, DockerCheck, Ops, Readiness, Systemd};
use crate::pipeline::RunPipeline;
use crate::runner::execution::{JobExecutor, TestExecution};
use crate::runner::Runner;
use crate::sandbox::install::Installer;
use crate::sandbox::reaper::Reaper;
use crate::sandbox::{Engine, Sweeper};
use crate::storage::Storage;
use crate::webhooks::WebhookListener;

/// Options of `app-executor run` that are not configuration.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Exit once no run is pending and none is in flight.
    pub until_idle: bool,
    /// A trivial execution for queue tests (`sleep=…,record=…`); debug builds only.
    pub test_execution: Option<String>,
}

/// `app-executor reaper`: the daemon's dead-man's switch (`sandbox::reaper`). Its database
/// pool is made now, connections on demand: a database that is down now may be back by then.
pub async fn reap(config: &Config, executor_id: &str) -> anyhow::Result<()> {
    let pool = match &config.database.url {
        Some(url) => Some(db::pool(url, config.database.connect_timeout, 1)?),
        None => None,
    };
    let runs_dir = config.executor.state_dir.join("runs");
    crate::sandbox::reaper::reap_when_orphaned(&config.sandbox, executor_id, &runs_dir, pool).await
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
    let webhook = webhook_client(config)?;
    // Before the execution: the pipeline raises resource_threshold events through it.
    let (alerts, alert_tasks) = crate::alerts::start(&config.alerts, pool.clone(), webhook);
    let (execution, docker) = select_execution(
        config,
        &pool,
        storage.clone(),
        &executor_id,
        options.test_execution.as_deref(),
        alerts.clone(),
    )
    .await?;
    // Before any container can start: the dead-man's switch that removes this daemon's
    // containers if it dies (see `sandbox::reaper`).
    let reaper = match docker {
        Some(_) => Some(
            Reaper::spawn(
                &executor_id,
                config.source_file.as_deref(),
                &config.sandbox,
                &config.executor.state_dir,
                config.database.url.as_ref(),
            )
            .context("starting the reaper (app-executor reaper), which removes this daemon's containers if it dies")?,
        ),
        None => None,
    };
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
    db::executors::register_executor(
        &pool,
        &executor_id,
        &host_name(),
        env!("CARGO_PKG_VERSION"),
        capacity,
    )
    .await?;
    tracing::info!(%executor_id, capacity, "executor registered; waiting for runs");
    // The webhook trigger stops taking requests when the drain begins (its `?wait` requests
    // answer at once), not when the last run is done.
    let hooks_done = CancellationToken::new();
    let hooks = match WebhookListener::start(&config.webhooks, pool.clone()).await {
        Ok(hooks) => hooks,
        Err(e) => anyhow::bail!(
            "cannot listen for webhooks on webhooks.listen = {}: {e}; free the port or change the address",
            config.webhooks.listen.map(|a| a.to_string()).unwrap_or_default()
        ),
    };
    let hooks = hooks.map(|hooks| {
        let (shutdown, done) = (shutdown.clone(), hooks_done.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = done.cancelled() => {}
            }
            hooks.stop().await;
        })
    });
    let stored = match config.storage.backend {
        crate::storage::StorageBackend::Supabase => crate::db::status::StoredSource::StorageObjects,
        crate::storage::StorageBackend::Local => crate::db::status::StoredSource::Records,
    };
    ops.ready(
        pool.clone(),
        &shutdown,
        config.executor.state_dir.clone(),
        stored,
    );
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
    hooks_done.cancel();
    if let Some(hooks) = hooks {
        let _ = hooks.await;
    }
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
    if let Some(reaper) = reaper {
        reaper.finish().await;
    }
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

/// The spare `/output` volumes; warmed at once when every run uses the same image (no
/// `{version}` in `sandbox.image`) and it is on the host.
fn output_pool(
    engine: &Engine,
    settings: &crate::sandbox::SandboxSettings,
    executor_id: &str,
) -> Arc<crate::sandbox::output_pool::OutputPool> {
    let pool =
        crate::sandbox::output_pool::OutputPool::new(engine.clone(), settings.clone(), executor_id);
    if !settings.image.contains("{version}") {
        let (pool, engine, image) = (pool.clone(), engine.clone(), settings.image.clone());
        tokio::spawn(async move {
            let present = engine
                .ensure_image(&image, crate::sandbox::PullPolicy::Never, None)
                .await
                .is_ok();
            if present {
                pool.warm(&image);
            }
        });
    }
    pool
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
    alerts: crate::alerts::Alerts,
) -> anyhow::Result<(Arc<dyn JobExecutor>, Option<Arc<Sweeper>>)> {
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
                    registry: config.install.clone(),
                    cache_dir: state.join("cache").join("deps"),
                },
                output_pool: output_pool(&engine, &config.sandbox, executor_id),
                engine,
                settings: config.sandbox.clone(),
                executor_id: executor_id.to_owned(),
                alerts,
                thresholds: config.alerts.thresholds,
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
