//! `app-executor demo`: the whole system once, on one host, with nothing but Docker and the
//! host's PostgreSQL binaries. Starts (or reuses) a private PostgreSQL cluster in the state
//! directory when no database is configured, migrates it, uses the local storage backend,
//! publishes `examples/hello`, enqueues a run and a cron schedule, runs the daemon until the run
//! ends, prints what happened and where everything is, and stops cleanly. A second invocation
//! reuses the cluster, the published version and the caches.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::{self, RunOptions};
use crate::config::Config;
use crate::db::runs;
use crate::embedded_postgres::EmbeddedPostgres;
use crate::sandbox::Engine;
use crate::storage::StorageBackend;

/// Fixed ids, so a second demo finds what the first created.
const DEMO_COMPANY: Uuid = Uuid::from_u128(0x0de0_0000_0000_4000_8000_0000_0000_0c01);
const DEMO_APP: Uuid = Uuid::from_u128(0x0de0_0000_0000_4000_8000_0000_0000_0a01);
/// Longest the demo waits for its run.
const RUN_LIMIT: Duration = Duration::from_secs(600);

pub struct DemoOptions {
    /// The app to publish and run (default `examples/hello`).
    pub app_dir: PathBuf,
}

/// Runs the demo; `Ok(true)` when the run succeeded.
pub async fn demo(
    config: &Config,
    options: DemoOptions,
    interrupt: CancellationToken,
) -> anyhow::Result<bool> {
    let mut config = config.clone();
    let state = config.executor.state_dir.clone();
    println!("state directory: {}", state.display());

    let embedded = match &config.database.url {
        Some(url) => {
            println!("database: {url} (configured)");
            None
        }
        None => {
            let root = state.join("postgres");
            let root_owned = root.clone();
            let pg =
                tokio::task::spawn_blocking(move || EmbeddedPostgres::ensure_running(&root_owned))
                    .await
                    .expect("starting PostgreSQL does not panic")
                    .with_context(|| {
                        format!(
                            "starting the private PostgreSQL cluster in {}",
                            root.display()
                        )
                    })?;
            let url = pg.url("postgres");
            println!(
                "database: private PostgreSQL cluster in {} ({url})",
                root.display()
            );
            config.database.url = Some(url);
            Some(pg)
        }
    };
    let result = demo_with_database(&config, &options, interrupt).await;
    if let Some(pg) = embedded {
        let stopped = tokio::task::spawn_blocking(move || pg.stop())
            .await
            .expect("stopping PostgreSQL does not panic");
        match stopped {
            Ok(()) => {
                println!("stopped the private PostgreSQL cluster (the next demo starts it again)")
            }
            Err(e) => eprintln!("warning: could not stop the private PostgreSQL cluster: {e}"),
        }
    }
    result
}

async fn demo_with_database(
    config: &Config,
    options: &DemoOptions,
    interrupt: CancellationToken,
) -> anyhow::Result<bool> {
    let mut config = config.clone();
    // The demo keeps everything on this host: local storage under the state directory.
    if config.storage.backend != StorageBackend::Local {
        println!("storage: using the local backend for the demo (storage.backend is ignored)");
        config.storage.backend = StorageBackend::Local;
    }
    println!(
        "storage: local backend in {}",
        config.storage.local_root.display()
    );

    let migrated = app::migrate(&config, false).await?;
    println!(
        "migrations: {} applied now, schema up to date",
        migrated.applied.len()
    );

    let image = config.sandbox.image_for("20");
    let engine = Engine::connect(&config.sandbox).await?;
    if let Err(e) = engine
        .ensure_image(
            &image,
            config.sandbox.pull,
            config.sandbox.registry.as_ref(),
        )
        .await
    {
        anyhow::bail!(
            "the runtime image {image} is not available: {e}\nOn a host that cannot pull images, build one from this host's Node.js with scripts/build-runtime-image and set APP_EXECUTOR_SANDBOX__IMAGE to the tag it prints (scripts/demo does this for you)."
        );
    }
    println!("runtime image: {image}");

    let url = config.database.url.as_ref().expect("set by demo()");
    let pool = crate::db::pool(url, config.database.connect_timeout, 4)?;
    runs::ensure_demo_tenant(&pool, DEMO_COMPANY, DEMO_APP).await?;
    let published = app::publish(
        &config,
        &options.app_dir,
        &DEMO_APP.to_string(),
        None,
        false,
    )
    .await?;
    if published.already_published {
        println!(
            "app: version {} of {} already published ({} files); reusing it",
            published.version,
            options.app_dir.display(),
            published.files
        );
    } else {
        println!(
            "app: published version {} of {} ({} files, {} bytes) as app {DEMO_APP}",
            published.version,
            options.app_dir.display(),
            published.files,
            published.bytes
        );
    }
    let schedule = runs::ensure_schedule(
        &pool,
        DEMO_APP,
        DEMO_COMPANY,
        "demo: every 5 minutes",
        "*/5 * * * *",
        "UTC",
    )
    .await?;
    let run = runs::insert_run(
        &pool,
        DEMO_APP,
        DEMO_COMPANY,
        "manual",
        &serde_json::json!({"name": "demo"}),
    )
    .await?;
    println!("enqueued run {run}; cron schedule {schedule} (\"*/5 * * * *\", UTC)");

    let shutdown = CancellationToken::new();
    let daemon = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(async move { app::run(&config, RunOptions::default(), shutdown).await })
    };
    let started = Instant::now();
    let state = loop {
        if daemon.is_finished() {
            let ended = daemon.await.expect("the daemon task does not panic");
            return Err(ended
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the daemon stopped early")));
        }
        if let Some(state) = runs::run_state(&pool, run)
            .await?
            .filter(|s| s.is_terminal())
        {
            break state;
        }
        if started.elapsed() > RUN_LIMIT {
            shutdown.cancel();
            let _ = daemon.await;
            anyhow::bail!("run {run} did not finish within {RUN_LIMIT:?}");
        }
        tokio::select! {
            _ = interrupt.cancelled() => {
                shutdown.cancel();
                let _ = daemon.await;
                anyhow::bail!("interrupted; the run stays in the queue for the next demo");
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    let next = runs::schedule_next_run(&pool, schedule).await?;
    shutdown.cancel();
    daemon.await.expect("the daemon task does not panic")?;

    println!();
    println!("run {run}: {}", state.status);
    if let Some(ms) = state.duration_ms {
        println!("  duration: {ms} ms (claim to finish)");
    }
    if let Some(code) = state.exit_code {
        println!("  exit code: {code}");
    }
    if let Some(kind) = &state.error_kind {
        println!(
            "  error: {kind}: {}",
            state.error_message.as_deref().unwrap_or("")
        );
    }
    print_logs(&config, &state).await;
    match runs::run_result(&pool, run).await? {
        Some(result) => println!("result (/output/result.json): {result}"),
        None => println!("result: (the app wrote no /output/result.json)"),
    }
    print_where(&config, &state, next);
    Ok(state.status == "success")
}

/// Prints the run's compacted stdout and stderr from storage (at most 20 lines each).
async fn print_logs(config: &Config, state: &runs::RunState) {
    let Some(prefix) = &state.logs_path else {
        println!("logs: none recorded");
        return;
    };
    let storage = match app::storage(config) {
        Ok(storage) => storage,
        Err(e) => {
            println!("logs: storage unavailable: {e}");
            return;
        }
    };
    for name in ["stdout", "stderr"] {
        let key = format!("{}/{name}.log", prefix.trim_end_matches('/'));
        let text = match storage
            .download(crate::storage::APP_LOGS_BUCKET, &key)
            .await
        {
            Ok(download) => {
                use futures_util::TryStreamExt;
                let read = download
                    .body
                    .try_fold(Vec::new(), |mut all, chunk| async move {
                        all.extend_from_slice(&chunk);
                        Ok(all)
                    })
                    .await;
                match read {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(e) => format!("(unreadable: {e})"),
                }
            }
            Err(crate::storage::StorageError::NotFound { .. }) => continue,
            Err(e) => format!("(unreadable: {e})"),
        };
        let lines: Vec<&str> = text.lines().collect();
        println!("{name} ({} lines, app-logs/{key}):", lines.len());
        for line in lines.iter().take(20) {
            println!("  | {line}");
        }
        if lines.len() > 20 {
            println!("  | … (`app-executor logs {}` prints all)", state.id);
        }
    }
}

fn print_where(
    config: &Config,
    state: &runs::RunState,
    next: Option<chrono::DateTime<chrono::Utc>>,
) {
    let storage = &config.storage.local_root;
    println!("where things are:");
    println!(
        "  app files:   {}",
        storage
            .join("app-storage")
            .join(format!("app_{}", state.app_id))
            .display()
    );
    if let Some(logs) = &state.logs_path {
        println!(
            "  logs:        {}",
            storage.join("app-logs").join(logs).display()
        );
    }
    if let Some(output) = &state.output_path {
        println!(
            "  outputs:     {}",
            storage.join("app-logs").join(output).display()
        );
    }
    println!(
        "  caches:      {}",
        config.executor.state_dir.join("cache").display()
    );
    if let Some(next) = next {
        println!("  cron:        the schedule fires next at {next} while a daemon runs (`app-executor run`)");
    }
}

/// Where `examples/hello` is: next to the binary's source checkout, or the working directory.
pub fn default_app_dir() -> PathBuf {
    let here = Path::new("examples/hello");
    if here.is_dir() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello")
}
