//! The Docker engine, through bollard: images, and one container's life from create to remove.
//!
//! [`Engine::run_container`] is the only way a container is started. It attaches before
//! starting (so no output is missed and the engine keeps no log copy), enforces the wall-clock
//! limit, the `/output` size cap and cancellation by killing, samples memory for the peak, and
//! removes the container on every path — including its own errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, KillContainerOptions,
    ListContainersOptions, RemoveContainerOptions, StatsOptions, WaitContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::profile::{
    container_config, ContainerSpec, LABEL_ATTEMPT, LABEL_EXECUTOR, LABEL_MANAGED, LABEL_RUN,
};
use super::settings::{PullPolicy, RegistryAuth, SandboxSettings};

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
    /// Killed because the app wrote more to `/output` than allowed.
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
    pub duration: Duration,
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

/// `/output` limits watched while a container runs.
#[derive(Debug, Clone)]
pub struct OutputWatch {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_files: usize,
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

    /// The image's id (`sha256:…`), pulling it first when absent and allowed (with `auth` when
    /// the registry needs a login).
    pub async fn ensure_image(
        &self,
        image: &str,
        pull: PullPolicy,
        auth: Option<&RegistryAuth>,
    ) -> Result<String, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(found) => return Ok(found.id.unwrap_or_else(|| image.to_owned())),
            Err(e) if !is_not_found(&e) => return Err(docker("inspect an image")(e)),
            Err(_) => {}
        }
        if pull == PullPolicy::Never {
            return Err(EngineError::ImageMissing {
                image: image.to_owned(),
            });
        }
        tracing::info!(%image, "image not on this host; pulling it");
        let (from_image, tag) = split_tag(image);
        let options = CreateImageOptions {
            from_image: Some(from_image.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let credentials = auth.map(|auth| bollard::auth::DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.expose().to_owned()),
            serveraddress: Some(registry_host(image).to_owned()),
            ..Default::default()
        });
        let mut progress = self.long.create_image(Some(options), None, credentials);
        let mut last_report = Instant::now();
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| EngineError::PullFailed {
                image: image.to_owned(),
                detail: e.to_string(),
            })?;
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                tracing::info!(%image, status = info.status.as_deref().unwrap_or(""), layer = info.id.as_deref().unwrap_or(""), current = ?info.progress_detail.as_ref().and_then(|p| p.current), total = ?info.progress_detail.as_ref().and_then(|p| p.total), "pulling");
            }
        }
        let found =
            self.docker
                .inspect_image(image)
                .await
                .map_err(|e| EngineError::PullFailed {
                    image: image.to_owned(),
                    detail: e.to_string(),
                })?;
        tracing::info!(%image, "image pulled");
        Ok(found.id.unwrap_or_else(|| image.to_owned()))
    }

    /// Creates, attaches, starts and waits for one container; then removes it, always.
    pub async fn run_container(
        &self,
        spec: &ContainerSpec,
        settings: &SandboxSettings,
        sink: &mut dyn OutputSink,
        timing: &Timing<'_>,
        stop: &CancellationToken,
        watch: Option<&OutputWatch>,
    ) -> Result<ContainerExit, EngineError> {
        let config = container_config(spec, settings);
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                config,
            )
            .await
            .map_err(docker("create a container"))?;
        let id = created.id;
        let result = self.drive(&id, sink, timing, stop, watch).await;
        self.remove(&id).await;
        result
    }

    async fn drive(
        &self,
        id: &str,
        sink: &mut dyn OutputSink,
        timing: &Timing<'_>,
        stop: &CancellationToken,
        watch: Option<&OutputWatch>,
    ) -> Result<ContainerExit, EngineError> {
        let attached = self
            .long
            .attach_container(
                id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(docker("attach to a container"))?;
        self.docker
            .start_container(id, None)
            .await
            .map_err(docker("start a container"))?;
        let started = Instant::now();
        let peak = Arc::new(AtomicU64::new(0));
        let oom_kills = Arc::new(AtomicU64::new(0));
        let sampler = tokio::spawn(sample_memory(
            self.long.clone(),
            id.to_owned(),
            peak.clone(),
        ));
        let cgroup_sampler = tokio::spawn(sample_cgroup(
            self.docker.clone(),
            id.to_owned(),
            peak.clone(),
            oom_kills.clone(),
        ));

        let deadline = tokio::time::sleep(timing.timeout);
        tokio::pin!(deadline);
        // Set once SIGTERM was sent: SIGKILL follows then, unless the app exits first.
        let kill_at = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(kill_at);
        let mut terminating = false;
        let mut watch_tick = tokio::time::interval(Duration::from_millis(500));
        let mut ended = Ended::Exited;
        // Two phases in one loop, so the limits are enforced in one place: first the attach
        // stream is read until it closes; then, since that is not proof of exit (an app can
        // close its own stdout), the container is waited for until it is not running.
        let mut output = Some(attached.output);
        let mut waiter = None;
        loop {
            tokio::select! {
                chunk = next_if_some(&mut output) => match chunk {
                    Some(Ok(bollard::container::LogOutput::StdOut { message })) => {
                        sink.output(OutputStream::Stdout, message).await
                    }
                    Some(Ok(bollard::container::LogOutput::StdErr { message })) => {
                        sink.output(OutputStream::Stderr, message).await
                    }
                    Some(Ok(_)) => {}
                    // The stream ends (or breaks) when the container stops.
                    end => {
                        if let Some(Err(e)) = end {
                            tracing::debug!(container = id, error = %e, "attach stream ended with an error");
                        }
                        output = None;
                        waiter = Some(self.long.wait_container(
                            id,
                            Some(WaitContainerOptions {
                                condition: "not-running".into(),
                            }),
                        ));
                    }
                },
                waited = next_if_some(&mut waiter) => match waited {
                    // bollard reports a non-zero exit as an error: it is an exit code.
                    Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. })) | None => break,
                    Some(Err(e)) => return Err(docker("wait for a container")(e)),
                },
                _ = &mut deadline, if ended == Ended::Exited => {
                    ended = Ended::TimedOut;
                    terminating = self.terminate(id, timing.grace_at_timeout, kill_at.as_mut()).await;
                }
                _ = stop.cancelled(), if ended == Ended::Exited => {
                    ended = Ended::Stopped;
                    terminating = self.terminate(id, (timing.grace_on_stop)(), kill_at.as_mut()).await;
                }
                _ = &mut kill_at, if terminating => {
                    terminating = false;
                    tracing::info!(container = id, "the app did not stop within its grace after SIGTERM; killing it");
                    self.kill(id).await;
                }
                // A lost lease while the app shuts down gracefully: no more grace.
                _ = stop.cancelled(), if terminating && (timing.grace_on_stop)().is_zero() => {
                    terminating = false;
                    self.kill(id).await;
                }
                _ = watch_tick.tick(), if ended == Ended::Exited && output.is_some() && watch.is_some() => {
                    let watch = watch.expect("guarded");
                    if output_exceeds(watch).await {
                        ended = Ended::OutputTooLarge;
                        self.kill(id).await;
                    }
                }
            }
        }
        let duration = started.elapsed();
        sampler.abort();
        cgroup_sampler.abort();
        let inspected = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(docker("inspect a container"))?;
        let state = inspected.state.unwrap_or_default();
        let peak = peak.load(Ordering::Relaxed);
        let oom_killed = state.oom_killed.unwrap_or(false);
        Ok(ContainerExit {
            ended,
            exit_code: state.exit_code,
            oom_killed,
            oom_kills: oom_kills.load(Ordering::Relaxed).max(u64::from(oom_killed)),
            peak_memory_bytes: (peak > 0).then_some(peak),
            duration,
        })
    }

    /// Sends SIGTERM and arms `kill_at` for SIGKILL after `grace`; with no grace, SIGKILL now.
    /// Returns whether a SIGKILL is pending.
    async fn terminate(
        &self,
        id: &str,
        grace: Duration,
        kill_at: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> bool {
        if grace.is_zero() {
            self.kill(id).await;
            return false;
        }
        let signalled = self
            .docker
            .kill_container(
                id,
                Some(KillContainerOptions {
                    signal: "SIGTERM".into(),
                }),
            )
            .await;
        if let Err(e) = signalled {
            tracing::debug!(container = id, error = %e, "SIGTERM did not apply; killing");
            self.kill(id).await;
            return false;
        }
        kill_at.reset(tokio::time::Instant::now() + grace);
        true
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

/// `repo[:tag]` (a registry port is not a tag) → (repo, tag or `latest`).
/// The registry an image reference names: its first path component when that looks like a
/// host (has a `.` or `:`, or is `localhost`), else Docker Hub.
fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

fn split_tag(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// Follows the container's memory cgroup on the host (every 50 ms, until aborted): its
/// high-water mark into `peak`, its OOM-kill count into `oom_kills`. Does nothing where the
/// cgroup cannot be found (another runtime's layout, a container that already exited).
async fn sample_cgroup(
    docker: Docker,
    id: String,
    peak: Arc<AtomicU64>,
    oom_kills: Arc<AtomicU64>,
) {
    let pid = match docker.inspect_container(&id, None).await {
        Ok(inspected) => inspected.state.and_then(|s| s.pid).unwrap_or(0),
        Err(_) => 0,
    };
    if pid <= 0 {
        return;
    }
    let Some(cgroup) = super::cgroup::MemoryCgroup::of_pid(pid) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let cgroup = cgroup.clone();
        let Ok(counters) = tokio::task::spawn_blocking(move || cgroup.read()).await else {
            return;
        };
        if counters.peak_bytes.is_none() && counters.oom_kills.is_none() {
            return; // the cgroup is gone: the container exited
        }
        if let Some(bytes) = counters.peak_bytes {
            peak.fetch_max(bytes, Ordering::Relaxed);
        }
        if let Some(kills) = counters.oom_kills {
            oom_kills.fetch_max(kills, Ordering::Relaxed);
        }
    }
}

/// Keeps the highest memory use the engine reports (cgroup v1 `max_usage`, else `usage`).
async fn sample_memory(docker: Docker, id: String, peak: Arc<AtomicU64>) {
    let mut stats = docker.stats(
        &id,
        Some(StatsOptions {
            stream: true,
            one_shot: false,
        }),
    );
    while let Some(Ok(sample)) = stats.next().await {
        if let Some(memory) = sample.memory_stats {
            let used = memory.max_usage.or(memory.usage).unwrap_or(0);
            peak.fetch_max(used, Ordering::Relaxed);
        }
    }
}

/// Whether the files under `watch.dir` exceed the caps (counted without following links).
async fn output_exceeds(watch: &OutputWatch) -> bool {
    let watch = watch.clone();
    tokio::task::spawn_blocking(move || {
        let (bytes, files) = usage(&watch.dir, watch.max_files + 1);
        bytes > watch.max_bytes || files > watch.max_files
    })
    .await
    .unwrap_or(false)
}

/// Bytes and entries under `dir`, counting at most `entry_limit` entries.
pub fn usage(dir: &Path, entry_limit: usize) -> (u64, usize) {
    let mut bytes = 0;
    let mut entries = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in read.flatten() {
            entries += 1;
            if entries > entry_limit {
                return (bytes, entries);
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    (bytes, entries)
}

/// The next item of `stream`, or never when there is no stream (a `select!` arm that is off).
async fn next_if_some<S: futures_util::Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_split_without_mistaking_a_registry_port() {
        assert_eq!(
            split_tag("node:20-bookworm-slim"),
            ("node", "20-bookworm-slim")
        );
        assert_eq!(split_tag("node"), ("node", "latest"));
        assert_eq!(
            split_tag("registry:5000/team/node"),
            ("registry:5000/team/node", "latest")
        );
        assert_eq!(
            split_tag("registry:5000/team/node:20"),
            ("registry:5000/team/node", "20")
        );
    }

    #[test]
    fn the_registry_is_the_first_component_when_it_looks_like_a_host() {
        assert_eq!(registry_host("node:20"), "docker.io");
        assert_eq!(registry_host("library/node:20"), "docker.io");
        assert_eq!(registry_host("ghcr.io/acme/node:20"), "ghcr.io");
        assert_eq!(registry_host("127.0.0.1:5000/node:20"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/node"), "localhost");
    }
}
