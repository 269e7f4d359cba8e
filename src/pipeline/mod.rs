//! The run pipeline: what happens to one attempt of a claimed run, phase by phase. It is the
//! production [`JobExecutor`]; the runner claims, leases and finishes runs and builds, this
//! module does the work in between, each phase a call into the module that owns it (a build's
//! phases are in `build`):
//!
//! 1. **prepare** the files: download, verify and extract the version ([`Resolver`]);
//! 2. **image**: the runtime image for the manifest's Node version ([`Engine::ensure_image`]);
//! 3. **install** the dependencies, or take them from the cache ([`Installer`]); nothing when
//!    the files came from a build's archive (it holds `node_modules`);
//! 4. **run** the entrypoint in a hardened container ([`sandbox::run`], [`Engine::run_container`]),
//!    its output streamed live to the run's log ([`RunLog`]);
//! 5. **collect** what the app left in `/output` ([`outputs::collect`]);
//! 6. **record** outputs, metrics and the failure, fenced by the lease ([`outputs::record`]).
//!
//! The runner writes the status afterwards from the returned [`Outcome`]. A stop (cancel,
//! drain, lost lease) can end any phase; what is kept then depends on why (see `attempt`).
//!
//! - `outcome`: a finished container mapped to an exact outcome.
//! - `phases`: the per-phase timer; `sink`: where the container's output goes.

mod build;
mod outcome;
mod phases;
mod sink;
mod thresholds;

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use crate::artifact::manifest::BackendRuntime;
use crate::artifact::resolve::{PreparedApp, Resolver};
use crate::logs::{LogSettings, LogTarget, RunLog};
use crate::model::{ClaimedRun, Job, Outcome, StopReason};
use crate::ops::metrics;
use crate::outputs::{self, DaemonMetrics, OutputLimits, RunRecord};
use crate::runner::{JobExecutor, Stop};
use crate::sandbox::install::{Dependencies, InstallError, InstallRequest, Installer};
use crate::sandbox::output::Tail;
use crate::sandbox::output_copy::{Copied, SkippedKind};
use crate::sandbox::output_pool::OutputPool;
use crate::sandbox::run::RunRequest;
use crate::sandbox::{self, Ended, Engine, EngineError, OutputVolume, SandboxSettings, Timing};
use outcome::{failure_of, infra, peak_memory, run_outcome};
use phases::Phases;
use sink::RunSink;

/// Runs apps in Docker containers.
pub struct RunPipeline {
    pub resolver: Resolver,
    /// `[logs]`: how the run's output is streamed to storage.
    pub logs: LogSettings,
    /// `[outputs]`: caps on what is read back from `/output`.
    pub outputs: OutputLimits,
    pub engine: Engine,
    /// Spare `/output` volumes, so a run does not wait for its keeper to start.
    pub output_pool: std::sync::Arc<OutputPool>,
    pub installer: Installer,
    pub settings: SandboxSettings,
    pub executor_id: String,
    /// Raises `resource_threshold` for runs that came near their limits.
    pub alerts: crate::alerts::Alerts,
    pub thresholds: crate::alerts::settings::Thresholds,
}

/// How an attempt ended: `Ok` once its outputs were recorded (the app ran to an end the run
/// keeps), `Err` when it ended before that (bad files, install, a stop) and nothing was
/// recorded yet.
type Attempt = Result<Outcome, Outcome>;

impl JobExecutor for RunPipeline {
    fn execute<'a>(&'a self, job: &'a Job, stop: Stop) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let run = match job {
                Job::Run(run) => run,
                Job::Build(build) => return self.build(build, &stop).await,
            };
            let outcome = match self.attempt(run, &stop).await {
                Ok(recorded) => recorded,
                Err(outcome) => {
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
                    outcome
                }
            };
            self.resolver.clean_up(run).await;
            outcome
        })
    }
}

impl RunPipeline {
    /// The phases of one attempt, in order.
    async fn attempt(&self, run: &ClaimedRun, stop_signal: &Stop) -> Attempt {
        let mut phases = Phases::start(run.id);

        let app = self.prepare(run, stop_signal).await?;
        metrics::phase_finished(metrics::Phase::Prepare, phases.done("prepare"));
        let Some(backend) = app.manifest.backend.clone() else {
            return Err(Outcome::failed(
                "no_backend",
                format!(
                    "version {} has no runtime.backend in manifest.json; only apps with a Node.js backend can run",
                    app.version
                ),
            ));
        };

        let (image, image_id) = self.image(&backend.node_version, stop_signal).await?;
        phases.done("image");

        // The /output volume's keeper starts while the dependencies install.
        let install = async {
            match app.build {
                // A build's archive brought node_modules along: nothing to install.
                Some(build) => {
                    tracing::info!(run_id = %run.id, %build, "dependencies from the build's archive; no install");
                    Ok(None)
                }
                None => {
                    self.install(run, &app, &backend, &image, &image_id, stop_signal)
                        .await
                }
            }
        };
        let (dependencies, output) = tokio::join!(install, self.output_volume(run, &image));
        let output = output?;
        let dependencies = match dependencies {
            Ok(dependencies) => dependencies,
            Err(outcome) => {
                output.remove_later();
                return Err(outcome);
            }
        };
        phases.done("install");

        let ran = self
            .run_app(
                run,
                &app,
                &backend,
                &image,
                dependencies.as_ref(),
                &output,
                stop_signal,
                &mut phases,
            )
            .await;
        // Its outputs are read: the volume goes while the runner records the outcome.
        output.remove_later();
        ran
    }

    /// Phases 4 to 6: the app's container, its outputs read back and recorded.
    #[allow(clippy::too_many_arguments)]
    async fn run_app(
        &self,
        run: &ClaimedRun,
        app: &PreparedApp,
        backend: &BackendRuntime,
        image: &str,
        dependencies: Option<&Dependencies>,
        output: &OutputVolume,
        stop_signal: &Stop,
        phases: &mut Phases,
    ) -> Attempt {
        let stop = stop_signal.token();
        let run_dir = self.resolver.run_dir(run);
        let request = RunRequest {
            run,
            app,
            image,
            entrypoint: &backend.entrypoint,
            run_dir: &run_dir,
            output: output.mount(),
            dependencies,
        };
        let spec = sandbox::run::prepare(&self.settings, &self.executor_id, &request)
            .await
            .map_err(|e| {
                infra(
                    "prepare_io",
                    format!("preparing the run directory {}: {e}", run_dir.display()),
                )
            })?;
        let log = RunLog::start(
            self.resolver.storage.clone(),
            &run_dir.join("spool"),
            LogTarget::of(run),
            self.logs.clone(),
        )
        .map_err(|e| infra("log_spool", e.to_string()))?;
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
            )
            .await;
        phases.done("container");
        let RunSink { log, stderr_tail } = sink;
        let mut exit = match exit {
            Ok(exit) => exit,
            Err(e) => {
                // Docker failed under the run: it goes back to the queue; keep the chunks.
                log.interrupt().await;
                return Err(infra(e.error_kind(), e.to_string()));
            }
        };
        // Nothing writes /output any more: its usage now is final. An app that went over a
        // cap got ENOSPC there and ended by itself since.
        let output_usage = match output.usage_now().await {
            Ok(usage) => Some(usage),
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "could not read the /output usage");
                None
            }
        };
        if exit.ended == Ended::Exited && output_usage.is_some_and(|u| output.over_cap(u)) {
            exit.ended = Ended::OutputTooLarge;
        }
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
            cpu_ms = ?exit.cpu.usage_ns.map(|ns| ns / 1_000_000),
            cpu_throttled_periods = exit.cpu.throttled_periods,
            cpu_periods = exit.cpu.periods,
            output_bytes = output_usage.map(|u| u.bytes),
            output_entries = output_usage.map(|u| u.entries),
            took = ?exit.duration,
            "container finished"
        );
        let outcome = run_outcome(&exit, app, &self.settings, &stderr_tail.text());
        match (&outcome, stop_signal.reason()) {
            // Someone else holds the run now: write nothing, not even logs.
            (Outcome::Stopped, Some(StopReason::LeaseLost)) => {
                log.abandon();
                return Err(outcome);
            }
            // Back to the queue: the next attempt writes its own logs; keep this one's chunks.
            (Outcome::Stopped, Some(StopReason::Shutdown) | None) => {
                log.interrupt().await;
                return Err(outcome);
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
                self.collect(run, output, output_usage, &run_dir).await
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
                    cpu_ms: exit.cpu.usage_ns.map(|ns| ns / 1_000_000),
                    downloaded_bytes: app.downloaded_bytes,
                },
                logs: Some(&summary),
                failure: failure.as_ref(),
            },
        )
        .await;
        self.check_thresholds(run, app, &exit, output_usage, &summary)
            .await;
        phases.done("record");
        phases.report();
        Ok(outcome)
    }

    /// The attempt's `/output` volume, its keeper started (see `sandbox::engine::output_volume`).
    async fn output_volume(&self, run: &ClaimedRun, image: &str) -> Result<OutputVolume, Outcome> {
        let name = sandbox::run::container_name(run.id, run.attempt, "output");
        let labels = sandbox::run::labels(&self.executor_id, run.id, run.attempt, "output");
        self.output_pool
            .take(image, &name, &labels)
            .await
            .map_err(|e| infra(e.error_kind(), e.to_string()))
    }

    /// Phase 5: what the app left in `/output`, copied out of its volume into the run
    /// directory and read there; `None` (with a warning) when it cannot be read.
    async fn collect(
        &self,
        run: &ClaimedRun,
        output: &OutputVolume,
        usage: Option<sandbox::OutputUsage>,
        run_dir: &std::path::Path,
    ) -> Option<outputs::Collected> {
        let copy = run_dir.join("output");
        // An empty /output needs no archive: the copy's absence reads as no outputs.
        let copied = if usage.is_some_and(|u| u.entries == 0) {
            None
        } else {
            let archive = tokio_util::io::StreamReader::new(
                output
                    .archive()
                    .map(|chunk| chunk.map_err(std::io::Error::other)),
            );
            let archive = tokio_util::io::SyncIoBridge::new(archive);
            let (dest, budget) = (copy.clone(), output.capacity());
            let copied = tokio::task::spawn_blocking(move || {
                sandbox::output_copy::copy_out(archive, &dest, budget, outputs::MAX_DEPTH)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|copied| copied);
            match copied {
                Ok(copied) => Some(copied),
                Err(e) => {
                    tracing::warn!(run_id = %run.id, error = %e, "could not copy the run's /output out of its volume");
                    return None;
                }
            }
        };
        let mut collected = match outputs::collect(&copy, &self.outputs).await {
            Ok(collected) => collected,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "could not read the run's /output");
                return None;
            }
        };
        for problem in copied.map(copy_problems).unwrap_or_default() {
            collected.add_problem(problem);
        }
        Some(collected)
    }

    /// Phase 1: the version's files downloaded, verified and extracted; their digest noted on
    /// the run.
    async fn prepare(&self, run: &ClaimedRun, stop: &Stop) -> Result<PreparedApp, Outcome> {
        let prepared = tokio::select! {
            biased;
            _ = stop.token().cancelled() => return Err(Outcome::Stopped),
            prepared = self.resolver.prepare(run) => prepared,
        };
        let app = match prepared {
            Ok(app) => app,
            Err(e) if e.is_retryable() => return Err(infra(e.error_kind(), e.to_string())),
            Err(e) => return Err(Outcome::failed(e.error_kind(), e.to_string())),
        };
        let recorded = crate::db::artifact::record_artifact_digest(
            &self.resolver.pool,
            run.id,
            &self.executor_id,
            run.attempt,
            &app.digest,
            app.build,
        )
        .await;
        if let Err(e) = recorded {
            tracing::warn!(run_id = %run.id, error = %e, "could not record the artifact digest");
        }
        Ok(app)
    }

    /// Phase 2: the runtime image for the app's Node version, present locally (pulled when the
    /// policy allows); returns its name and id.
    async fn image(&self, node_version: &str, stop: &Stop) -> Result<(String, String), Outcome> {
        let image = self.settings.image_for(node_version);
        let ensured = tokio::select! {
            biased;
            _ = stop.token().cancelled() => return Err(Outcome::Stopped),
            id = self.engine.ensure_image(&image, self.settings.pull, self.settings.registry.as_ref()) => id,
        };
        match ensured {
            Ok(id) => Ok((image, id)),
            Err(e @ EngineError::ImageMissing { .. }) => {
                Err(Outcome::failed(e.error_kind(), e.to_string()))
            }
            Err(e) => Err(infra(e.error_kind(), e.to_string())),
        }
    }

    /// Phase 3: the app's dependencies installed in a container of their own, or taken from
    /// the cache; `None` when the app has none.
    async fn install(
        &self,
        run: &ClaimedRun,
        app: &PreparedApp,
        backend: &BackendRuntime,
        image: &str,
        image_id: &str,
        stop: &Stop,
    ) -> Result<Option<Dependencies>, Outcome> {
        let install = InstallRequest {
            app_dir: &app.dir,
            package_manager: backend.package_manager,
            image,
            image_id,
            allow_scripts: self.settings.install_scripts_apps.contains(&run.app_id),
            include_dev: false,
            cpu: app.manifest.limits.cpu,
            container_name: sandbox::run::container_name(run.id, run.attempt, "install"),
            labels: sandbox::run::labels(&self.executor_id, run.id, run.attempt, "install"),
        };
        let dependencies = match self.installer.ensure(&install, stop.token()).await {
            Ok(deps) => deps,
            Err(InstallError::Stopped) => return Err(Outcome::Stopped),
            Err(e) if e.is_retryable() => return Err(infra(e.error_kind(), e.to_string())),
            Err(e) => return Err(Outcome::failed(e.error_kind(), e.to_string())),
        };
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
        Ok(dependencies)
    }

    /// After the record: the resources the run used at or above their thresholds, noted on the
    /// run (`metadata.resource_thresholds`) and raised as one `resource_threshold` event.
    async fn check_thresholds(
        &self,
        run: &ClaimedRun,
        app: &PreparedApp,
        exit: &crate::sandbox::ContainerExit,
        output: Option<sandbox::OutputUsage>,
        logs: &crate::logs::LogSummary,
    ) {
        let output = output.unwrap_or_default();
        let usage = thresholds::Usage {
            peak_memory: peak_memory(exit, app.manifest.limits.memory_bytes),
            memory_limit: app.manifest.limits.memory_bytes,
            output_bytes: output.bytes,
            output_max_bytes: self.settings.output_max_bytes,
            output_files: output.entries,
            output_max_files: self.settings.output_max_files as u64,
            log_bytes: vec![
                ("stdout", logs.stdout.received_bytes),
                ("stderr", logs.stderr.received_bytes),
            ],
            log_cap: self.logs.stream_cap,
            cpu_periods: exit.cpu.periods,
            cpu_throttled_periods: exit.cpu.throttled_periods,
        };
        let crossed = thresholds::crossed(&self.thresholds, &usage);
        if crossed.is_empty() {
            return;
        }
        let crossed = serde_json::Value::Array(crossed);
        tracing::warn!(run_id = %run.id, thresholds = %crossed, "the run came near its limits");
        let raised = self
            .alerts
            .for_thresholds(run, &self.executor_id, crossed.clone());
        let recorded = crate::db::runs::record_thresholds(
            &self.resolver.pool,
            run.id,
            &self.executor_id,
            run.attempt,
            &crossed,
            raised.as_ref(),
        )
        .await;
        match (recorded, &raised) {
            (Ok(Some(Some(recorded))), Some(raised)) => self.alerts.raised(raised, recorded),
            (Ok(_), _) => {}
            (Err(e), _) => {
                tracing::warn!(run_id = %run.id, error = %e, "could not record the run's resource thresholds")
            }
        }
    }

    /// Phase 6: the run's outputs, metrics and failure recorded, fenced by the lease.
    async fn record(&self, run: &ClaimedRun, what: &RunRecord<'_>) {
        outputs::record_retrying(
            &self.resolver.pool,
            self.resolver.storage.as_ref(),
            run,
            &self.executor_id,
            what,
        )
        .await;
    }
}

/// What the copy out of the volume left out, as the collector's problems.
fn copy_problems(copied: Copied) -> Vec<outputs::OutputProblem> {
    let mut problems: Vec<_> = copied
        .skipped
        .into_iter()
        .map(|skipped| match skipped.kind {
            SkippedKind::Symlink => outputs::not_regular(skipped.path, "symlink"),
            SkippedKind::Fifo => outputs::not_regular(skipped.path, "fifo"),
            SkippedKind::Device => outputs::not_regular(skipped.path, "device"),
            SkippedKind::Unwritable | SkippedKind::Other => outputs::OutputProblem {
                message: format!(
                    "{} could not be copied out of /output; not collected",
                    skipped.path
                ),
                path: skipped.path,
                reason: "unreadable",
            },
        })
        .collect();
    if let Some(path) = copied.stopped_at {
        problems.push(outputs::OutputProblem {
            message: format!(
                "{path} and the entries after it were not collected: the files of /output declare more bytes than its filesystem holds (sparse files)"
            ),
            path,
            reason: "over_total",
        });
    }
    problems
}
