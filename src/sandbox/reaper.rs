//! The dead-man's switch: a small process of its own (`app-executor reaper`, started by the
//! daemon) that removes the daemon's containers the moment the daemon dies, however it dies
//! (`kill -9`, a crash, the OOM killer). Without it a dead daemon's container would run on
//! until the orphan sweep, while another daemon rescues the run and starts the next attempt:
//! two attempts of one run at once.
//!
//! How it knows: the daemon holds the write end of the reaper's stdin and never writes to it.
//! The kernel closes that end when the daemon's process ends, for any reason, and the reaper's
//! read returns end-of-file. The pipe is close-on-exec, so no other child of the daemon keeps it
//! open. The reaper then force-removes every container labelled with the daemon's executor id
//! (its runs, installs and builds) and exits. After a clean drain there is nothing left to
//! remove, and the reaper exits just the same.
//!
//! Signals: the reaper ignores SIGINT, SIGTERM and SIGHUP, so a terminal's Ctrl-C (sent to the
//! whole process group) or a stop request reaches only the daemon, which drains; the reaper
//! outlives it and cleans up after it. systemd's `KillMode=mixed` sends SIGTERM to the daemon
//! only, and SIGKILL to both after `TimeoutStopSec`.
//!
//! What this guarantees: a dead daemon's containers are gone within about a second, well inside
//! the lease, so the rescue's next attempt never overlaps them. It does not cover a reaper
//! killed together with its daemon (`kill -9` of both, a dead host: on a dead host the
//! containers die with it); the orphan sweep remains for those.

use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, Command};

use super::engine::Engine;
use super::settings::SandboxSettings;

/// The daemon's handle on its reaper. Dropping it (or the daemon dying) sets the reaper off.
pub struct Reaper {
    child: Child,
    /// Written once, by [`Reaper::finish`] (a clean end); otherwise only its closing matters.
    lifeline: Option<ChildStdin>,
}

/// What the daemon writes before a clean end: the reaper then hands back no runs.
const CLEAN_END: &[u8] = b"drained\n";

impl Reaper {
    /// Starts `app-executor reaper --executor <executor_id>` (this same binary, the same
    /// configuration through the inherited environment and `config`). What it must agree on
    /// with the daemon even when the daemon's configuration was changed in code (the demo) is
    /// passed in its environment: the Docker endpoint, the state directory and the database URL
    /// (the environment is readable by this user only; a command line by every user).
    pub fn spawn(
        executor_id: &str,
        config: Option<&std::path::Path>,
        settings: &SandboxSettings,
        state_dir: &std::path::Path,
        database_url: Option<&crate::db::DatabaseUrl>,
    ) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        if let Some(url) = database_url {
            command.env("APP_EXECUTOR_DATABASE__URL", url.expose());
        }
        command
            .env("APP_EXECUTOR_EXECUTOR__STATE_DIR", state_dir)
            .env("APP_EXECUTOR_SANDBOX__DOCKER_HOST", &settings.docker_host);
        let mut child = command
            .args(["reaper", "--executor", executor_id])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(false)
            .spawn()?;
        let lifeline = child.stdin.take();
        Ok(Self { child, lifeline })
    }

    /// The daemon is done (drained): closes the lifeline and waits for the reaper to finish
    /// its last look (at most 15 s; it is left to finish on its own after that).
    pub async fn finish(mut self) {
        if let Some(mut lifeline) = self.lifeline.take() {
            use tokio::io::AsyncWriteExt;
            let _ = lifeline.write_all(CLEAN_END).await;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(15), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => tracing::warn!(%status, "the reaper ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot wait for the reaper"),
            Err(_) => tracing::warn!("the reaper did not finish within 15 s; leaving it"),
        }
    }
}

/// The reaper's body: connects to the engine first (so nothing is left to set up when it must
/// act), waits for end-of-file on stdin, then removes every container `executor_id` labelled.
/// When the daemon died (no clean end was written) its runs are also handed back to the queue
/// at once (`retire_executor`), instead of after their lease, when `pool` reaches the database.
pub async fn reap_when_orphaned(
    settings: &SandboxSettings,
    executor_id: &str,
    runs_dir: &std::path::Path,
    pool: Option<deadpool_postgres::Pool>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers that are never acted on: these signals no longer end this process.
    let _ignored = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
        signal(SignalKind::hangup())?,
    );
    let engine = Engine::connect(settings).await?;
    let mut stdin = tokio::io::stdin();
    let mut received = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) if received.len() < 64 => received.extend_from_slice(&buf[..n]),
            Ok(_) => {}
        }
    }
    let clean = received == CLEAN_END;
    let ours: Vec<_> = engine
        .managed_containers()
        .await?
        .into_iter()
        .filter(|c| c.executor == executor_id)
        .collect();
    // After a drain only spare /output keepers are left (`output_pool`): expected, so not a
    // warning.
    if !ours.is_empty() && !clean {
        tracing::warn!(
            executor = executor_id,
            containers = ours.len(),
            "removing the containers the daemon left"
        );
    }
    for container in &ours {
        engine.remove(&container.id).await;
        super::sweep::remove_container_run_dir(runs_dir, container, "its daemon died").await;
        if clean {
            tracing::info!(container = %container.id, "removed a spare container of a drained daemon");
        } else {
            tracing::warn!(container = %container.id, run_id = %container.run, attempt = %container.attempt, "removed a container of a daemon that is gone");
        }
    }
    // The /output volumes, now that no container uses them.
    engine.remove_volumes_of(executor_id).await;
    if clean {
        return Ok(());
    }
    let Some(pool) = pool else {
        return Ok(());
    };
    match crate::db::executors::retire_executor(&pool, executor_id).await {
        Ok(runs) => {
            tracing::warn!(
                executor = executor_id,
                runs,
                "the daemon is gone; its runs go back to the queue"
            )
        }
        Err(e) => {
            tracing::warn!(executor = executor_id, error = %e, "cannot hand back the dead daemon's runs; they are rescued when their lease expires")
        }
    }
    Ok(())
}
