//! The Docker engine, through bollard: images (`image`), and one container's life from create
//! to remove (`container`); here the engine's types, connection, listing and removal.
//!
//! [`Engine::run_container`] is the only way a container is started. It attaches before
//! starting (so no output is missed and the engine keeps no log copy), enforces the wall-clock
//! limit, the `/output` size cap and cancellation by killing, samples memory for the peak, and
//! removes the container on every path — including its own errors.

mod container;
mod image;
pub mod output_volume;

pub use output_volume::{OutputUsage, OutputVolume};

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use super::profile::{LABEL_ATTEMPT, LABEL_EXECUTOR, LABEL_MANAGED, LABEL_RUN};
use super::settings::SandboxSettings;

/// Which of the container's streams a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Receives a container's output as it is produced. Slow sinks slow the container down (the
/// attach stream applies back-pressure); they never make the daemon buffer without bound.
pub trait OutputSink: Send {
    fn output<'a>(&'a mut self, stream: OutputStream, bytes: Bytes) -> BoxFuture<'a, ()>;
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine ({endpoint}): {source}; is dockerd running and is this user allowed to use its socket?")]
    Unreachable {
        endpoint: String,
        #[source]
        source: DockerError,
    },
    #[error("image {image} is not on this host and pulling is off (sandbox.pull = \"never\"); pull or build it, or set sandbox.image")]
    ImageMissing { image: String },
    #[error("could not pull image {image}: {detail}")]
    PullFailed { image: String, detail: String },
    #[error("Docker failed to {action}: {source}")]
    Docker {
        action: &'static str,
        #[source]
        source: DockerError,
    },
}

impl EngineError {
    /// Stable `error_kind` for `app_runs`.
    pub fn error_kind(&self) -> &'static str {
        match self {
            EngineError::Unreachable { .. } => "docker_unavailable",
            EngineError::ImageMissing { .. } => "image_missing",
            EngineError::PullFailed { .. } => "image_pull_failed",
            EngineError::Docker { .. } => "docker_error",
        }
    }
}

fn docker(action: &'static str) -> impl FnOnce(DockerError) -> EngineError {
    move |source| EngineError::Docker { action, source }
}

/// How a container's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The main process exited by itself (or was OOM-killed).
    Exited,
    /// Killed at the wall-clock limit.
    TimedOut,
    /// Killed because the caller's stop token fired.
    Stopped,
    /// Exited, but `/output` was over a cap at the end (the app's writes past it failed with
    /// ENOSPC; see [`output_volume`]). Set by the run pipeline, which reads the usage.
    OutputTooLarge,
}

#[derive(Debug, Clone)]
pub struct ContainerExit {
    pub ended: Ended,
    pub exit_code: Option<i64>,
    /// Docker's word: some process of the container was killed for its memory limit (the
    /// main one or another).
    pub oom_killed: bool,
    /// Processes the kernel OOM-killed, as far as the cgroup's counter was seen before the
    /// container exited (at least 1 when `oom_killed`).
    pub oom_kills: u64,
    /// Highest memory use seen: the cgroup's own high-water mark while it ran, or Docker's
    /// stats where the cgroup cannot be read.
    pub peak_memory_bytes: Option<u64>,
    /// CPU used and CFS throttling, from the cgroup's counters as last sampled (every 50 ms
    /// while it ran: the last tens of milliseconds before the exit may be missing).
    pub cpu: CpuUsage,
    pub duration: Duration,
}

/// A container's CPU time and how often its CPU limit held it back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUsage {
    /// `None` where the cgroup could not be read.
    pub usage_ns: Option<u64>,
    /// CFS periods elapsed (only counted under a CPU limit) and those throttled.
    pub periods: u64,
    pub throttled_periods: u64,
}

/// How long a container may run, and how it is stopped: SIGTERM, then SIGKILL after a grace.
pub struct Timing<'a> {
    pub timeout: Duration,
    /// SIGTERM to SIGKILL once the time limit is reached (the grace starts at the limit).
    pub grace_at_timeout: Duration,
    /// SIGTERM to SIGKILL when the stop token fires, asked at that moment: the reason decides
    /// (a lost lease wants none: another daemon may already run the app).
    pub grace_on_stop: &'a (dyn Fn() -> Duration + Sync),
}

impl Timing<'_> {
    /// SIGKILL at once, whatever stops the container (the install phase).
    pub fn kill_at_once(timeout: Duration) -> Timing<'static> {
        Timing {
            timeout,
            grace_at_timeout: Duration::ZERO,
            grace_on_stop: &|| Duration::ZERO,
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// Same connection settings without bollard's 120 s request timeout, for attach and wait,
    /// which last as long as the container.
    long: Docker,
    endpoint: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Engine {
    /// Connects (negotiating the API version: Debian's docker.io speaks 1.41) and pings.
    pub async fn connect(settings: &SandboxSettings) -> Result<Self, EngineError> {
        let (endpoint, connected) = if settings.docker_host.is_empty() {
            (
                std::env::var("DOCKER_HOST")
                    .unwrap_or_else(|_| "unix:///var/run/docker.sock".into()),
                Docker::connect_with_local_defaults(),
            )
        } else {
            (
                settings.docker_host.clone(),
                Docker::connect_with_host(&settings.docker_host),
            )
        };
        let unreachable = |source| EngineError::Unreachable {
            endpoint: endpoint.clone(),
            source,
        };
        let docker = connected.map_err(unreachable)?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| unreachable(DockerError::RequestTimeoutError))?
            .map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        let long = docker
            .clone()
            .with_timeout(Duration::from_secs(7 * 24 * 3600));
        Ok(Self {
            docker,
            long,
            endpoint,
        })
    }

    pub async fn ping(&self) -> Result<(), EngineError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|source| EngineError::Unreachable {
                endpoint: self.endpoint.clone(),
                source,
            })
    }

    async fn kill(&self, id: &str) {
        let killed = self
            .docker
            .kill_container(
                id,
                Some(KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            )
            .await;
        if let Err(e) = killed {
            // Already stopped is fine; anything else leaves the wait to notice.
            tracing::debug!(container = id, error = %e, "kill did not apply");
        }
    }

    /// Removes a container (killing it if needed); failures are logged, never fatal, and
    /// retried by the orphan sweep.
    pub async fn remove(&self, id: &str) {
        let removed = self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await;
        match removed {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(container = id, error = %e, "could not remove a container; the orphan sweep will retry")
            }
        }
    }

    /// Containers of this daemon kind on the engine, running or not, with their labels.
    pub async fn managed_containers(&self) -> Result<Vec<ManagedContainer>, EngineError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_MANAGED}=true")])]);
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(docker("list containers"))?;
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
                Some(ManagedContainer {
                    id: c.id?,
                    executor: label(LABEL_EXECUTOR),
                    run: label(LABEL_RUN),
                    attempt: label(LABEL_ATTEMPT),
                })
            })
            .collect())
    }
}

/// A container labelled `app-executor.managed=true`. The labels are as found: anyone with
/// access to the engine can set them, so parse before use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    pub id: String,
    /// `app-executor.executor`: the daemon that created it.
    pub executor: String,
    /// `app-executor.run`.
    pub run: String,
    /// `app-executor.attempt`.
    pub attempt: String,
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The next item of `stream`, or never when there is no stream (a `select!` arm that is off).
async fn next_if_some<S: futures_util::Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}
