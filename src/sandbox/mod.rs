//! Sandboxed execution: the production [`RunExecutor`]. A claimed run becomes
//! files prepared and verified ([`Resolver`]) → image resolved → dependencies installed or taken
//! from the cache ([`install`]) → the entrypoint run under the app's limits ([`engine`]) → an
//! exact [`Outcome`].
//!
//! Every container gets the hardened [`profile`]: non-root, read-only root, capped `/tmp`,
//! app files read-only, no capabilities, no new privileges, pids/memory/CPU/nofile limits,
//! `init`, no network unless the app holds the `network` permission, and an environment built
//! from an allow-list only — the daemon's own environment (database URL, storage key) never
//! reaches a container.
//!
//! Containers carry labels naming the daemon and the run. [`DockerExecution::sweep_orphans`]
//! removes containers whose daemon is gone (crashed or stopped) and hands their runs back to
//! the queue at once.

mod cgroup;
pub mod engine;
pub mod install;
mod output;
pub mod profile;
pub mod settings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::artifact::manifest::PermissionType;
use crate::artifact::resolve::{PreparedApp, Resolver};
use crate::db::queue;
use crate::logs::{LogSettings, LogStream, LogTarget, RunLog};
use crate::model::StopReason;
use crate::model::{ClaimedRun, FinalStatus, Outcome};
use crate::ops::metrics;
use crate::outputs::{self, DaemonMetrics, OutputLimits, RunFailure, RunRecord};
use crate::runner::{RunExecutor, Stop};
pub use engine::{
    ContainerExit, Ended, Engine, EngineError, ManagedContainer, OutputSink, OutputStream, Timing,
};
use install::{InstallError, InstallRequest, Installer};
use output::Tail;
use profile::{ContainerSpec, Mount, LABEL_ATTEMPT, LABEL_EXECUTOR, LABEL_PHASE, LABEL_RUN};
pub use settings::{PullPolicy, RawSandbox, RegistryAuth, RegistryPassword, SandboxSettings};

/// Where the app's files, dependencies and outputs appear inside a container.
const APP_DIR: &str = "/app";
const OUTPUT_DIR: &str = "/output";
const INPUT_DIR: &str = "/input";

/// Runs apps in Docker containers.
pub struct DockerExecution {
    pub resolver: Resolver,
    /// `[logs]`: how the run's output is streamed to storage.
    pub logs: LogSettings,
    /// `[outputs]`: caps on what is read back from `/output`.
    pub outputs: OutputLimits,
    pub engine: Engine,
    pub installer: Installer,
    pub settings: SandboxSettings,
    pub executor_id: String,
}

impl RunExecutor for DockerExecution {
    fn execute<'a>(&'a self, run: &'a ClaimedRun, stop: Stop) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let (outcome, recorded) = self.attempt(run, &stop).await;
            if !recorded {
                // Failed before the app ran (bad files, install): still an `error` output.
                if let Some(failure) = failure_of(&outcome) {
                    self.record(
                        run,
                        &RunRecord {
                            failure: Some(&failure),
                            ..RunRecord::default()
                        },
                    )
                    .await;
                }
            }
            self.resolver.clean_up(run).await;
            outcome
        })
    }
}

impl DockerExecution {
    /// Runs the attempt; returns its outcome and whether its outputs were recorded already.
    async fn attempt(&self, run: &ClaimedRun, stop_signal: &Stop) -> (Outcome, bool) {
        let stop = stop_signal.token();
        let mut phases = Phases::start(run.id);
        let prepared = tokio::select! {
            biased;
            _ = stop.cancelled() => return not_recorded(Outcome::Stopped),
            prepared = self.resolver.prepare(run) => prepared,
        };
        metrics::phase_finished(metrics::Phase::Prepare, phases.done("prepare"));
        let app = match prepared {
            Ok(app) => app,
            Err(e) if e.is_retryable() => {
                return not_recorded(infra(e.error_kind(), e.to_string()))
            }
            Err(e) => return not_recorded(Outcome::failed(e.error_kind(), e.to_string())),
        };
        let recorded = crate::db::artifact::record_artifact_digest(
            &self.resolver.pool,
            run.id,
            &self.executor_id,
            run.attempt,
            &app.digest,
        )
        .await;
        if let Err(e) = recorded {
            tracing::warn!(run_id = %run.id, error = %e, "could not record the artifact digest");
        }
        let Some(backend) = app.manifest.backend.clone() else {
            return not_recorded(Outcome::failed(
                "no_backend",
                format!(
                    "version {} has no runtime.backend in manifest.json; only apps with a Node.js backend can run",
                    app.version
                ),
            ));
        };
        let image = self.settings.image_for(&backend.node_version);
        let image_id = tokio::select! {
            biased;
            _ = stop.cancelled() => return not_recorded(Outcome::Stopped),
            id = self.engine.ensure_image(&image, self.settings.pull, self.settings.registry.as_ref()) => match id {
                Ok(id) => id,
                Err(e @ EngineError::ImageMissing { .. }) => return not_recorded(Outcome::failed(e.error_kind(), e.to_string())),
                Err(e) => return not_recorded(infra(e.error_kind(), e.to_string())),
            },
        };
        phases.done("image");

        let install = InstallRequest {
            app_dir: &app.dir,
            package_manager: backend.package_manager,
            image: &image,
            image_id: &image_id,
            allow_scripts: self.settings.install_scripts_apps.contains(&run.app_id),
            cpu: app.manifest.limits.cpu,
            container_name: container_name(run, "install"),
            labels: self.labels(run, "install"),
        };
        let dependencies = match self.installer.ensure(&install, stop).await {
            Ok(deps) => deps,
            Err(InstallError::Stopped) => return not_recorded(Outcome::Stopped),
            Err(e) if e.is_retryable() => {
                return not_recorded(infra(e.error_kind(), e.to_string()))
            }
            Err(e) => return not_recorded(Outcome::failed(e.error_kind(), e.to_string())),
        };
        phases.done("install");
        if let Some(deps) = &dependencies {
            match deps.installed_in {
                Some(took) => {
                    metrics::phase_finished(metrics::Phase::Install, took);
                    tracing::info!(run_id = %run.id, key = %deps.key, took = ?took, "dependencies installed")
                }
                None => {
                    tracing::info!(run_id = %run.id, key = %deps.key, "dependencies from the cache")
                }
            }
        }

        let run_dir = self.resolver.run_dir(run);
        let spec = match self
            .run_spec(
                run,
                &app,
                &image,
                &backend.entrypoint,
                &run_dir,
                dependencies.as_ref(),
            )
            .await
        {
            Ok(spec) => spec,
            Err(e) => {
                return not_recorded(infra(
                    "prepare_io",
                    format!("preparing the run directory {}: {e}", run_dir.display()),
                ))
            }
        };
        let watch = engine::OutputWatch {
            dir: run_dir.join("output"),
            max_bytes: self.settings.output_max_bytes,
            max_files: self.settings.output_max_files,
        };
        let log = RunLog::start(
            self.resolver.storage.clone(),
            &run_dir.join("spool"),
            LogTarget::of(run),
            self.logs.clone(),
        );
        let log = match log {
            Ok(log) => log,
            Err(e) => return not_recorded(infra("log_spool", e.to_string())),
        };
        phases.done("setup");
        let mut sink = RunSink {
            log,
            stderr_tail: Tail::default(),
        };
        let exit = self
            .engine
            .run_container(
                &spec,
                &self.settings,
                &mut sink,
                &Timing {
                    timeout: app.manifest.limits.timeout,
                    grace_at_timeout: app.manifest.limits.stop_grace,
                    grace_on_stop: &|| match stop_signal.reason() {
                        // Another daemon may already run the app: no second copy for longer
                        // than it takes to kill this one, and nothing of it is kept anyway.
                        Some(StopReason::LeaseLost) => Duration::ZERO,
                        _ => app.manifest.limits.stop_grace,
                    },
                },
                stop,
                Some(&watch),
            )
            .await;
        phases.done("container");
        let RunSink { log, stderr_tail } = sink;
        let exit = match exit {
            Ok(exit) => exit,
            Err(e) => {
                // Docker failed under the run: it goes back to the queue; keep the chunks.
                log.interrupt().await;
                return not_recorded(infra(e.error_kind(), e.to_string()));
            }
        };
        metrics::phase_finished(metrics::Phase::Run, exit.duration);
        if exit.oom_killed {
            metrics::oom_killed();
        }
        tracing::info!(
            run_id = %run.id,
            ended = ?exit.ended,
            exit_code = ?exit.exit_code,
            oom_killed = exit.oom_killed,
            peak_memory_bytes = ?exit.peak_memory_bytes,
            took = ?exit.duration,
            "container finished"
        );
        let outcome = run_outcome(&exit, &app, &self.settings, &stderr_tail.text());
        match (&outcome, stop_signal.reason()) {
            // Someone else holds the run now: write nothing, not even logs.
            (Outcome::Stopped, Some(StopReason::LeaseLost)) => {
                log.abandon();
                return not_recorded(outcome);
            }
            // Back to the queue: the next attempt writes its own logs; keep this one's chunks.
            (Outcome::Stopped, Some(StopReason::Shutdown) | None) => {
                log.interrupt().await;
                return not_recorded(outcome);
            }
            _ => {}
        }
        // Finished, or cancelled by a client: logs durable first, then outputs, then (by the
        // runner) the status.
        let summary = log.finish().await;
        phases.done("logs");
        // A client's cancel (the only stop left here) keeps what the app saved in its grace.
        let collected = match &outcome {
            Outcome::Finished { .. } | Outcome::Stopped => {
                match outputs::collect(&run_dir.join("output"), &self.outputs).await {
                    Ok(collected) => Some(collected),
                    Err(e) => {
                        tracing::warn!(run_id = %run.id, error = %e, "could not read the run's /output");
                        None
                    }
                }
            }
            _ => None,
        };
        let failure = failure_of(&outcome);
        self.record(
            run,
            &RunRecord {
                collected: collected.as_ref(),
                metrics: DaemonMetrics {
                    duration_ms: Some(exit.duration.as_millis() as i64),
                    peak_memory_bytes: peak_memory(&exit, app.manifest.limits.memory_bytes),
                    exit_code: exit.exit_code.map(|c| c as i32),
                    oom_kills: exit.oom_kills,
                },
                logs: Some(&summary),
                failure: failure.as_ref(),
            },
        )
        .await;
        phases.done("record");
        phases.report();
        (outcome, true)
    }

    /// Records the run's outputs (fenced); retried a few times on database trouble, then left
    /// (the status write that follows retries on its own and settles who owns the run).
    async fn record(&self, run: &ClaimedRun, what: &RunRecord<'_>) {
        let pool = &self.resolver.pool;
        let storage = self.resolver.storage.as_ref();
        for attempt in 1..=5u32 {
            match outputs::record(pool, storage, run, &self.executor_id, what).await {
                Ok(recorded) if recorded.fence_held => return,
                Ok(_) => {
                    tracing::warn!(run_id = %run.id, "outputs not recorded: the run is no longer ours");
                    return;
                }
                Err(e) if e.is_retryable() && attempt < 5 => {
                    tracing::warn!(run_id = %run.id, error = %e, "recording outputs failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
                }
                Err(e) => {
                    tracing::warn!(run_id = %run.id, error = %e, "could not record the run's outputs");
                    return;
                }
            }
        }
    }

    /// The run container: the entrypoint under the app's limits, with its directories mounted.
    async fn run_spec(
        &self,
        run: &ClaimedRun,
        app: &PreparedApp,
        image: &str,
        entrypoint: &str,
        run_dir: &Path,
        dependencies: Option<&install::Dependencies>,
    ) -> std::io::Result<ContainerSpec> {
        let output = run_dir.join("output");
        let input = run_dir.join("input");
        tokio::fs::create_dir_all(&output).await?;
        tokio::fs::create_dir_all(&input).await?;
        // Only the daemon's user may enter the run directory on the host: what the app writes
        // to /output (a setuid copy of a shell, say) is reachable by no other host user, while
        // the container sees its mounts whatever their host parents allow.
        {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700)).await?;
        }
        let input_json = serde_json::to_vec(&run.input_data).expect("JSON values serialise");
        tokio::fs::write(input.join("input.json"), &input_json).await?;
        let user = self.settings.user.clone();
        let output_owned = output.clone();
        tokio::task::spawn_blocking(move || install::hand_over(&output_owned, &user))
            .await
            .expect("chown does not panic")?;
        let mut mounts = vec![
            Mount {
                host: app.dir.clone(),
                container: APP_DIR,
                read_only: true,
            },
            Mount {
                host: output,
                container: OUTPUT_DIR,
                read_only: false,
            },
            Mount {
                host: input,
                container: INPUT_DIR,
                read_only: true,
            },
        ];
        if let Some(deps) = dependencies {
            // The mount point must exist in the (read-only) app directory.
            tokio::fs::create_dir_all(app.dir.join("node_modules")).await?;
            mounts.push(Mount {
                host: deps.node_modules.clone(),
                container: "/app/node_modules",
                read_only: true,
            });
        }
        let network_granted = app
            .granted
            .iter()
            .any(|(kind, _)| *kind == PermissionType::Network);
        Ok(ContainerSpec {
            name: container_name(run, "run"),
            image: image.to_owned(),
            cmd: vec!["node".into(), entrypoint.to_owned()],
            working_dir: APP_DIR,
            env: app_environment(run, &app.version, &input_json),
            mounts,
            memory_bytes: app.manifest.limits.memory_bytes,
            cpu: app.manifest.limits.cpu,
            tmp_size_bytes: self.settings.tmp_size_bytes,
            network: if network_granted {
                self.settings.app_network.clone()
            } else {
                "none".into()
            },
            labels: self.labels(run, "run"),
        })
    }

    fn labels(&self, run: &ClaimedRun, phase: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_EXECUTOR.to_owned(), self.executor_id.clone()),
            (LABEL_RUN.to_owned(), run.id.to_string()),
            (LABEL_ATTEMPT.to_owned(), run.attempt.to_string()),
            (LABEL_PHASE.to_owned(), phase.to_owned()),
        ])
    }

    /// Removes containers whose daemon is gone and hands that daemon's runs back to the queue,
    /// then attempt directories no attempt in flight uses. On start (`host` given) a daemon also
    /// retires earlier instances on the same host whose process no longer exists, without
    /// waiting for their heartbeat to go stale.
    pub async fn sweep_orphans(&self, stale_after: Duration, host: Option<&str>) {
        let pool = &self.resolver.pool;
        if let Some(host) = host {
            match queue::executors_on_host(pool, host, &self.executor_id).await {
                Ok(ids) => {
                    for id in ids.iter().filter(|id| !process_alive(id)) {
                        match queue::retire_executor(pool, id).await {
                            Ok(runs) => {
                                tracing::warn!(executor = %id, runs, "a previous instance on this host is gone; its runs go back to the queue")
                            }
                            Err(e) => {
                                tracing::warn!(executor = %id, error = %e, "could not retire a dead executor")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not look up earlier executors of this host")
                }
            }
        }
        self.remove_orphaned_containers(stale_after).await;
        self.remove_abandoned_run_dirs(stale_after).await;
    }

    /// Removes the containers of daemons that are gone, with their run directories, and hands
    /// those daemons' runs back to the queue.
    async fn remove_orphaned_containers(&self, stale_after: Duration) {
        let pool = &self.resolver.pool;
        let containers = match self.engine.managed_containers().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not list containers for the orphan sweep");
                return;
            }
        };
        let executors: Vec<String> = containers
            .iter()
            .map(|c| c.executor.clone())
            .filter(|e| *e != self.executor_id)
            .collect();
        if executors.is_empty() {
            return;
        }
        let dead = match queue::dead_executors(pool, &executors, stale_after).await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(error = %e, "could not check container owners for the orphan sweep");
                return;
            }
        };
        for container in containers {
            let executor = &container.executor;
            if dead.contains(executor) {
                tracing::warn!(container = %container.id, %executor, run_id = %container.run, "removing a container left by a daemon that is gone");
                self.engine.remove(&container.id).await;
                self.remove_orphaned_run_dir(&container).await;
                if let Err(e) = queue::retire_executor(pool, executor).await {
                    tracing::warn!(%executor, error = %e, "could not hand back the runs of a dead executor");
                }
            }
        }
    }

    /// Removes attempt directories no attempt in flight uses: those a daemon killed before its
    /// container existed (while downloading or installing) left behind. A directory is removed
    /// when it is older than `stale_after` and its run is no longer `running` at that attempt
    /// (finished, requeued, rescued under a new attempt, or deleted). The age keeps a directory
    /// being prepared right now out of reach whatever the database said a moment before.
    async fn remove_abandoned_run_dirs(&self, stale_after: Duration) {
        let runs_dir = self.resolver.runs_dir.clone();
        let old_enough = move || -> Vec<(uuid::Uuid, i32, PathBuf)> {
            let now = std::time::SystemTime::now();
            std::fs::read_dir(&runs_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().into_string().ok()?;
                    let (run, attempt) = parse_run_dir_name(&name)?;
                    let modified = entry.metadata().ok()?.modified().ok()?;
                    let age = now.duration_since(modified).unwrap_or_default();
                    (age >= stale_after).then(|| (run, attempt, entry.path()))
                })
                .collect()
        };
        let candidates = tokio::task::spawn_blocking(old_enough)
            .await
            .unwrap_or_default();
        if candidates.is_empty() {
            return;
        }
        let runs: Vec<uuid::Uuid> = candidates.iter().map(|c| c.0).collect();
        let attempts: Vec<i32> = candidates.iter().map(|c| c.1).collect();
        let in_flight = match queue::attempts_in_flight(&self.resolver.pool, &runs, &attempts).await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "could not check run directories for the sweep");
                return;
            }
        };
        for (run, attempt, dir) in candidates {
            if in_flight.contains(&(run, attempt)) {
                continue;
            }
            remove_left_run_dir(
                &dir,
                run,
                attempt,
                "no attempt uses it (its daemon stopped before the run's container started)",
            )
            .await;
        }
    }

    /// Removes the per-attempt directory (app files, log spool, `/output`) a dead daemon left
    /// for the container's run, when it lives under this daemon's state directory. Nobody
    /// else uses it: the attempt was charged to the dead claim, so the run's next claim gets
    /// a directory of its own. The spool's tail that never reached storage goes with it (a
    /// crash loses at most that, see `logs`).
    async fn remove_orphaned_run_dir(&self, container: &ManagedContainer) {
        // Labels come from the engine: only a run id and an attempt number name a directory.
        let (Ok(run), Ok(attempt)) = (
            container.run.parse::<uuid::Uuid>(),
            container.attempt.parse::<i32>(),
        ) else {
            return;
        };
        let dir = self
            .resolver
            .runs_dir
            .join(orphaned_run_dir_name(run, attempt));
        remove_left_run_dir(
            &dir,
            run,
            attempt,
            "a dead daemon left it with its container",
        )
        .await;
    }
}

/// Wall-clock time of each phase of an attempt, logged once at its end (`run phases`).
struct Phases {
    run_id: uuid::Uuid,
    last: std::time::Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn start(run_id: uuid::Uuid) -> Self {
        Self {
            run_id,
            last: std::time::Instant::now(),
            took: Vec::new(),
        }
    }

    /// Ends `phase`; returns how long it took.
    fn done(&mut self, phase: &'static str) -> Duration {
        let now = std::time::Instant::now();
        let took = now - self.last;
        self.took.push((phase, took));
        self.last = now;
        took
    }

    fn report(&self) {
        let ms: serde_json::Map<String, serde_json::Value> = self
            .took
            .iter()
            .map(|(phase, d)| {
                (
                    (*phase).to_owned(),
                    (d.as_secs_f64() * 1000.0).round().into(),
                )
            })
            .collect();
        tracing::info!(run_id = %self.run_id, phases_ms = %serde_json::Value::Object(ms), "run phases");
    }
}

/// Removes an attempt directory the sweep found left behind; `why` goes into the log line.
/// Gone already is fine; any other failure is logged and retried by the next sweep.
async fn remove_left_run_dir(dir: &Path, run: uuid::Uuid, attempt: i32, why: &str) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {
            tracing::info!(run_id = %run, attempt, dir = %dir.display(), why, "removed a run directory left behind")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(run_id = %run, attempt, dir = %dir.display(), why, error = %e, "could not remove a run directory left behind")
        }
    }
}

/// The name [`Resolver::run_dir`] gives an attempt's directory (`{run id}-{attempt}`), for
/// an attempt known only by its container's labels. The crash test of `run_logs` checks that
/// the two agree (the directory of the killed daemon's attempt is gone).
fn orphaned_run_dir_name(run: uuid::Uuid, attempt: i32) -> String {
    format!("{run}-{attempt}")
}

/// The run and attempt a directory named by [`orphaned_run_dir_name`] belongs to; `None` for
/// any other name (left alone).
fn parse_run_dir_name(name: &str) -> Option<(uuid::Uuid, i32)> {
    let (run, attempt) = name.rsplit_once('-')?;
    Some((run.parse().ok()?, attempt.parse().ok()?))
}

/// Whether the process named in an executor id (`<host>-<pid>-<suffix>`) still exists here.
fn process_alive(executor_id: &str) -> bool {
    let mut parts = executor_id.rsplitn(3, '-');
    let _suffix = parts.next();
    match parts.next().and_then(|pid| pid.parse::<u32>().ok()) {
        Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        // Not an id this daemon makes: leave it to the heartbeat check.
        None => true,
    }
}

fn infra(error_kind: &str, message: String) -> Outcome {
    Outcome::InfraFailure {
        error_kind: error_kind.to_owned(),
        message,
    }
}

fn container_name(run: &ClaimedRun, phase: &str) -> String {
    format!(
        "app-executor-{}-{}-{phase}-{}",
        run.id.simple(),
        run.attempt,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// The only environment a container gets: an allow-list built from the run.
fn app_environment(run: &ClaimedRun, version: &str, input_json: &[u8]) -> Vec<String> {
    let mut env = vec![
        format!("APP_ID={}", run.app_id),
        format!("RUN_ID={}", run.id),
        format!("RUN_TYPE={}", run.run_type),
        format!("APP_VERSION={version}"),
        format!("APP_INPUT_FILE={INPUT_DIR}/input.json"),
        format!("APP_OUTPUT_DIR={OUTPUT_DIR}"),
        "HOME=/tmp".to_owned(),
        "NODE_ENV=production".to_owned(),
    ];
    // Small inputs also come inline; large ones only as the file (the kernel caps one
    // environment string at 128 KiB).
    if input_json.len() <= 64 * 1024 {
        env.push(format!("APP_INPUT={}", String::from_utf8_lossy(input_json)));
    }
    env
}

/// What a finished container means for the run.
fn run_outcome(
    exit: &ContainerExit,
    app: &PreparedApp,
    settings: &SandboxSettings,
    stderr_tail: &str,
) -> Outcome {
    let limits = &app.manifest.limits;
    let exit_code = exit.exit_code.map(|c| c as i32);
    let finished = |status, kind: &str, message: String| Outcome::Finished {
        status,
        error_kind: Some(kind.to_owned()),
        error_message: Some(message),
        exit_code,
    };
    match exit.ended {
        Ended::Stopped => Outcome::Stopped,
        Ended::TimedOut => finished(
            FinalStatus::Timeout,
            "timeout",
            format!(
                "the app ran longer than its time limit of {} and was killed",
                humantime::format_duration(limits.timeout)
            ),
        ),
        Ended::OutputTooLarge => finished(
            FinalStatus::Failed,
            "output_too_large",
            format!(
                "the app wrote more than {} or {} files to /output and was killed",
                bytesize::ByteSize::b(settings.output_max_bytes),
                settings.output_max_files
            ),
        ),
        // The main process itself was killed (docker-init exits 128 + SIGKILL for it); a
        // child killed while the main process went on is the exit code's business.
        Ended::Exited if exit.oom_killed && exit_code == Some(137) => finished(
            FinalStatus::Failed,
            "oom_killed",
            format!(
                "the app exceeded its memory limit of {} and was killed; last lines of stderr:\n{stderr_tail}",
                bytesize::ByteSize::b(limits.memory_bytes)
            ),
        ),
        Ended::Exited => match exit_code {
            Some(0) => Outcome::success(),
            Some(code) => finished(
                FinalStatus::Failed,
                "nonzero_exit",
                format!(
                    "the app exited with code {code}{}; last lines of stderr:\n{stderr_tail}",
                    child_oom_note(exit, limits.memory_bytes)
                ),
            ),
            None => finished(
                FinalStatus::Failed,
                "nonzero_exit",
                format!("the app stopped without an exit code; last lines of stderr:\n{stderr_tail}"),
            ),
        },
    }
}

/// ` after the kernel killed N of its processes …` when some process (not the main one) hit
/// the memory limit.
fn child_oom_note(exit: &ContainerExit, memory_bytes: u64) -> String {
    if !exit.oom_killed {
        return String::new();
    }
    format!(
        " after the kernel killed {} of its processes for exceeding the memory limit of {}",
        exit.oom_kills.max(1),
        bytesize::ByteSize::b(memory_bytes)
    )
}

/// The run's peak memory: the sampled high-water mark, and the limit itself when the kernel
/// OOM-killed something (it does so exactly when usage reaches the limit, possibly between
/// two samples).
fn peak_memory(exit: &ContainerExit, memory_bytes: u64) -> Option<u64> {
    match (exit.oom_killed, exit.peak_memory_bytes) {
        (true, peak) => Some(peak.unwrap_or(0).max(memory_bytes)),
        (false, peak) => peak,
    }
}

/// An outcome whose outputs were not recorded by the attempt itself.
fn not_recorded(outcome: Outcome) -> (Outcome, bool) {
    (outcome, false)
}

/// The failure recorded as an `error` output, for a finished run that did not succeed.
fn failure_of(outcome: &Outcome) -> Option<RunFailure> {
    match outcome {
        Outcome::Finished {
            error_kind: Some(kind),
            error_message,
            ..
        } => Some(RunFailure {
            kind: kind.clone(),
            message: error_message.clone().unwrap_or_default(),
        }),
        _ => None,
    }
}

/// The run container's output: spooled and streamed to storage ([`RunLog`]), and the stderr
/// tail kept for a failure message.
struct RunSink {
    log: RunLog,
    stderr_tail: Tail,
}

impl OutputSink for RunSink {
    fn output<'a>(&'a mut self, stream: OutputStream, bytes: Bytes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let stream = match stream {
                OutputStream::Stdout => LogStream::Stdout,
                OutputStream::Stderr => {
                    self.stderr_tail.push(&bytes);
                    LogStream::Stderr
                }
            };
            metrics::log_bytes(stream.as_str(), bytes.len() as u64);
            self.log.append(stream, &bytes);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_ids_name_a_process() {
        let me = format!("host-name-{}-abc123", std::process::id());
        assert!(process_alive(&me));
        assert!(!process_alive("host-name-4000000-abc123"));
        assert!(process_alive("not an id"));
    }

    #[test]
    fn the_environment_is_the_allow_list() {
        let run = ClaimedRun {
            id: uuid::Uuid::nil(),
            app_id: uuid::Uuid::nil(),
            company_id: uuid::Uuid::nil(),
            build_id: None,
            run_type: "manual".into(),
            attempt: 1,
            max_attempts: 3,
            input_data: serde_json::json!({"a": 1}),
            metadata: serde_json::json!({}),
            created_at: chrono::Utc::now(),
            started_at: chrono::Utc::now(),
        };
        let env = app_environment(&run, "1.0.0", br#"{"a":1}"#);
        let names: Vec<&str> = env.iter().map(|e| e.split('=').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "APP_ID",
                "RUN_ID",
                "RUN_TYPE",
                "APP_VERSION",
                "APP_INPUT_FILE",
                "APP_OUTPUT_DIR",
                "HOME",
                "NODE_ENV",
                "APP_INPUT"
            ]
        );
        let big = vec![b'1'; 100_000];
        assert!(!app_environment(&run, "1", &big)
            .iter()
            .any(|e| e.starts_with("APP_INPUT=")));
    }
}
