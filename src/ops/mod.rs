//! Operating the daemon: how systemd, Prometheus and an operator see it.
//!
//! - [`metrics`]: metric names, buckets and one recording function per event; the public
//!   helpers other components call (phase durations, cache, logs, OOM kills, cron).
//! - [`status`]: [`DaemonStatus`], the runner's live state (phase, runs in flight, claim-loop
//!   ticks) that everything here reads.
//! - [`health`]: readiness checks (database, Docker via the [`DockerProbe`] seam, not
//!   draining).
//! - [`systemd`]: `READY=1`, `STATUS=`, `WATCHDOG=1` and `STOPPING=1`.
//! - [`server`]: the loopback HTTP endpoints `/metrics`, `/healthz`, `/readyz`.
//!
//! [`Ops`] ties them together for the composition root: [`Ops::start`] once the clients exist
//! (endpoints up, `/readyz` says "starting"), [`Ops::ready`] when the startup checks have
//! passed, [`Ops::stop`] when the runner has returned. Nothing here claims, runs or writes runs.

pub mod health;
pub mod metered_storage;
pub mod metrics;
pub mod server;
pub mod settings;
pub mod status;
pub mod stored;
pub mod systemd;

use std::net::SocketAddr;
use std::sync::Arc;

use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ops::settings::OpsSettings;
pub use health::{DockerCheck, DockerProbe, Readiness};
pub use status::{DaemonStatus, Phase};
pub use systemd::Systemd;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot listen on ops.listen = {addr}: {source}; free the port or set ops.listen to another address (\"\" disables the endpoints)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

/// The operations side of a running daemon.
pub struct Ops {
    config: OpsSettings,
    systemd: Arc<Systemd>,
    status: Arc<DaemonStatus>,
    metrics: Option<PrometheusHandle>,
    /// The address the endpoints listen on, if enabled.
    pub local_addr: Option<SocketAddr>,
    /// Stops the background tasks (HTTP server, watchdog, status refresh).
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Ops {
    /// Installs the metrics recorder and starts the HTTP endpoints when `ops.listen` is set;
    /// readiness reports "starting" until [`Ops::ready`].
    pub async fn start(
        config: &OpsSettings,
        systemd: Arc<Systemd>,
        readiness: Readiness,
    ) -> Result<Self, OpsError> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let status = readiness.status.clone();
        let (metrics, local_addr) = match config.listen {
            None => (None, None),
            Some(addr) => {
                let handle = metrics::install()?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| OpsError::Bind { addr, source })?;
                let local_addr = listener.local_addr().unwrap_or(addr);
                let app = server::router(readiness, handle.clone());
                let stopped = stop.clone();
                tasks.spawn(async move {
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped.cancelled_owned())
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "the ops HTTP endpoints stopped");
                    }
                });
                tracing::info!(%local_addr, "ops endpoints listening: /metrics /healthz /readyz");
                (Some(handle), Some(local_addr))
            }
        };
        Ok(Self {
            config: config.clone(),
            systemd,
            status,
            metrics,
            local_addr,
            stop,
            tasks,
        })
    }

    /// The startup checks passed: marks the daemon active, sends `READY=1` with a first status,
    /// starts the watchdog and the status refresh, and arranges `STOPPING=1` for when
    /// `shutdown` fires. Call before the runner starts, so its idle wait honours the watchdog.
    pub fn ready(
        &self,
        pool: Pool,
        shutdown: &CancellationToken,
        state_dir: std::path::PathBuf,
        stored: crate::db::status::StoredSource,
    ) {
        let status = self.status.clone();
        status.advance(Phase::Active);
        metrics::set_running(0, status.capacity());
        self.systemd.ready(&systemd::status_line(
            Phase::Active,
            0,
            status.capacity(),
            None,
        ));
        if let Some(watchdog) = self.systemd.watchdog() {
            status.set_max_idle(watchdog / 4);
            status.loop_ticked();
            tracing::info!(
                ?watchdog,
                "systemd watchdog enabled; pinging while the claim loop makes progress"
            );
            self.tasks.spawn(systemd::watchdog_loop(
                self.systemd.clone(),
                watchdog,
                status.clone(),
                self.stop.clone(),
            ));
        }
        if let Some(interval) = self.config.storage_usage_interval {
            self.tasks.spawn(stored::stored_loop(
                pool.clone(),
                stored,
                interval,
                self.stop.clone(),
            ));
        }
        self.tasks.spawn(systemd::status_loop(
            self.systemd.clone(),
            pool,
            state_dir,
            status.clone(),
            self.metrics.clone(),
            self.config.status_interval,
            self.stop.clone(),
        ));
        let systemd = self.systemd.clone();
        let (shutdown, stop) = (shutdown.clone(), self.stop.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = shutdown.cancelled() => {
                    status.advance(Phase::Draining);
                    systemd.stopping(&systemd::status_line(
                        Phase::Draining,
                        status.running(),
                        status.capacity(),
                        None,
                    ));
                }
            }
        });
    }

    /// The runner has returned: says so to systemd (`STOPPING=1` if no drain did already) and
    /// stops the endpoints and background tasks.
    pub async fn stop(self) {
        if self.status.phase() != Phase::Draining {
            self.systemd.stopping("stopping");
        }
        self.status.advance(Phase::Stopped);
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
