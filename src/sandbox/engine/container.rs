//! One container's life: create, attach before start (so no output is missed and the engine
//! keeps no log copy), start, wait under the wall-clock limit and stops
//! (SIGTERM, the grace, SIGKILL), with memory sampled for the peak; removed on every path.

use super::{
    docker, next_if_some, ContainerExit, Ended, Engine, EngineError, OutputSink, OutputStream,
    Timing,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, KillContainerOptions, StatsOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::sandbox::profile::{container_config, ContainerSpec};
use crate::sandbox::settings::SandboxSettings;

impl Engine {
    /// Creates a container named `name`; returns its id.
    pub(super) async fn create_named(
        &self,
        name: &str,
        config: bollard::models::ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_owned()),
                    ..Default::default()
                }),
                config,
            )
            .await?;
        Ok(created.id)
    }

    /// Creates, attaches, starts and waits for one container; then removes it, always.
    pub async fn run_container(
        &self,
        spec: &ContainerSpec,
        settings: &SandboxSettings,
        sink: &mut dyn OutputSink,
        timing: &Timing<'_>,
        stop: &CancellationToken,
    ) -> Result<ContainerExit, EngineError> {
        let config = container_config(spec, settings);
        let id = self
            .create_named(&spec.name, config)
            .await
            .map_err(docker("create a container"))?;
        let result = self.drive(&id, sink, timing, stop).await;
        self.remove(&id).await;
        result
    }

    async fn drive(
        &self,
        id: &str,
        sink: &mut dyn OutputSink,
        timing: &Timing<'_>,
        stop: &CancellationToken,
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
        let host_oom_kills_before = crate::sandbox::cgroup::host_oom_kills();
        self.docker
            .start_container(id, None)
            .await
            .map_err(docker("start a container"))?;
        let started = Instant::now();
        let peak = Arc::new(AtomicU64::new(0));
        let oom_kills = Arc::new(AtomicU64::new(0));
        let cpu = Arc::new(CpuSeen::default());
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
            cpu.clone(),
        ));

        let deadline = tokio::time::sleep(timing.timeout);
        tokio::pin!(deadline);
        // Set once SIGTERM was sent: SIGKILL follows then, unless the app exits first.
        let kill_at = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(kill_at);
        let mut terminating = false;
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
        let seen = OomEvidence {
            engine_flag: state.oom_killed.unwrap_or(false),
            cgroup_kills: oom_kills.load(Ordering::Relaxed),
            killed_by_us: ended != Ended::Exited,
            exit_code: state.exit_code,
            host_kills_during: host_oom_kills_before
                .zip(crate::sandbox::cgroup::host_oom_kills())
                .map(|(before, after)| after.saturating_sub(before)),
        };
        let oom_killed = seen.oom_killed();
        if oom_killed && !seen.engine_flag && seen.cgroup_kills == 0 {
            tracing::debug!(
                container = id,
                "SIGKILLed while the host counted an OOM kill, which the engine did not report: taking it as OOM-killed"
            );
        }
        Ok(ContainerExit {
            ended,
            exit_code: state.exit_code,
            oom_killed,
            oom_kills: seen.cgroup_kills.max(u64::from(oom_killed)),
            peak_memory_bytes: (peak > 0).then_some(peak),
            cpu: cpu.usage(),
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
}

/// What tells whether the kernel OOM-killed a process of a container. Each source alone can
/// miss it under load: Docker's `OOMKilled` comes from an event that may arrive after the exit
/// (or never, when the cgroup was deleted first); the cgroup's counter is sampled every 50 ms
/// and the cgroup is gone right after the exit.
#[derive(Debug, Clone, Copy)]
struct OomEvidence {
    engine_flag: bool,
    /// The highest OOM-kill count a sample of the container's cgroup saw.
    cgroup_kills: u64,
    /// The daemon sent the signal that ended it (timeout, stop).
    killed_by_us: bool,
    exit_code: Option<i64>,
    /// OOM kills the whole host counted while the container ran.
    host_kills_during: Option<u64>,
}

impl OomEvidence {
    /// Either direct source says so; or, where both missed it, the main process died of a
    /// SIGKILL nobody here sent (docker-init exits 128 + 9 for it, and a process inside cannot
    /// signal PID 1) while the host counted an OOM kill. The one misreading left is an app that
    /// SIGKILLs its own main process in the same moment as another container's OOM kill.
    fn oom_killed(&self) -> bool {
        self.engine_flag
            || self.cgroup_kills > 0
            || (!self.killed_by_us
                && self.exit_code == Some(137)
                && self.host_kills_during.is_some_and(|n| n > 0))
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
    cpu: Arc<CpuSeen>,
) {
    let pid = match docker.inspect_container(&id, None).await {
        Ok(inspected) => inspected.state.and_then(|s| s.pid).unwrap_or(0),
        Err(_) => 0,
    };
    if pid <= 0 {
        return;
    }
    let Some(cgroup) = crate::sandbox::cgroup::MemoryCgroup::of_pid(pid) else {
        return;
    };
    let cpu_cgroup = crate::sandbox::cgroup::CpuCgroup::of_pid(pid);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let (cgroup, cpu_cgroup) = (cgroup.clone(), cpu_cgroup.clone());
        let Ok((counters, cpu_counters)) = tokio::task::spawn_blocking(move || {
            (
                cgroup.read(),
                cpu_cgroup.map(|c| c.read()).unwrap_or_default(),
            )
        })
        .await
        else {
            return;
        };
        cpu.see(&cpu_counters);
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

/// The highest CPU counters the cgroup showed (they only grow while it lives).
#[derive(Default)]
struct CpuSeen {
    usage_ns: AtomicU64,
    periods: AtomicU64,
    throttled: AtomicU64,
}

impl CpuSeen {
    fn see(&self, counters: &crate::sandbox::cgroup::CpuCounters) {
        let keep = |seen: &AtomicU64, value: Option<u64>| {
            if let Some(value) = value {
                seen.fetch_max(value, Ordering::Relaxed);
            }
        };
        keep(&self.usage_ns, counters.usage_ns);
        keep(&self.periods, counters.periods);
        keep(&self.throttled, counters.throttled_periods);
    }

    fn usage(&self) -> super::CpuUsage {
        let usage_ns = self.usage_ns.load(Ordering::Relaxed);
        let periods = self.periods.load(Ordering::Relaxed);
        super::CpuUsage {
            usage_ns: (usage_ns > 0).then_some(usage_ns),
            periods,
            throttled_periods: self.throttled.load(Ordering::Relaxed),
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

#[cfg(test)]
mod tests {
    use super::OomEvidence;

    fn evidence() -> OomEvidence {
        OomEvidence {
            engine_flag: false,
            cgroup_kills: 0,
            killed_by_us: false,
            exit_code: Some(137),
            host_kills_during: Some(0),
        }
    }

    #[test]
    fn either_direct_source_is_enough() {
        let flagged = OomEvidence {
            engine_flag: true,
            exit_code: Some(0),
            ..evidence()
        };
        assert!(flagged.oom_killed());
        let counted = OomEvidence {
            cgroup_kills: 2,
            exit_code: Some(1),
            ..evidence()
        };
        assert!(counted.oom_killed());
    }

    #[test]
    fn an_unexplained_sigkill_during_a_host_oom_kill_is_an_oom_kill() {
        let missed = OomEvidence {
            host_kills_during: Some(1),
            ..evidence()
        };
        assert!(missed.oom_killed());
    }

    #[test]
    fn a_sigkill_without_a_host_oom_kill_or_sent_by_the_daemon_is_not() {
        assert!(!evidence().oom_killed(), "no OOM kill on the host");
        let unreadable = OomEvidence {
            host_kills_during: None,
            ..evidence()
        };
        assert!(!unreadable.oom_killed(), "no /proc/vmstat");
        let ours = OomEvidence {
            killed_by_us: true,
            host_kills_during: Some(3),
            ..evidence()
        };
        assert!(
            !ours.oom_killed(),
            "the daemon's own SIGKILL at a timeout or stop"
        );
        let other_exit = OomEvidence {
            exit_code: Some(1),
            host_kills_during: Some(3),
            ..evidence()
        };
        assert!(
            !other_exit.oom_killed(),
            "the main process exited by itself"
        );
    }
}
