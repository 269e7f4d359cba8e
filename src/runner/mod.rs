//! The runner: keeps up to `max_concurrent_runs` runs and `max_concurrent_builds` builds in
//! flight, each under a lease.
//!
//! Runs (`app_runs`) and builds (`app_builds`) are two queues with the same lease columns, so
//! one runner serves both: a claimed item is a [`Job`], and everything after the claim —
//! lease, fencing, cancel, drain, retries, rescue — is the same code for both. Each queue has
//! its own slots: a build never waits for a run's slot, nor takes one.
//!
//! One loop claims while slots are free (runs for all free slots in one statement, through
//! the [`claimer`], which also serves a finishing task's claim of its next run), then waits for
//! a NOTIFY wake-up, a freed slot, the `run_after` of a job not claimable yet (a cron tick
//! fired ahead, a retry's backoff), a few milliseconds after a claim another daemon's claim
//! crowded out, or the poll interval. Each claimed job gets a task that renews its lease
//! (fenced on executor and attempt), executes it through the [`JobExecutor`] seam, and writes
//! the outcome — retrying database errors until the write lands or the job is provably no
//! longer ours. Background loops renew this daemon's `app_executors` row, rescue expired
//! leases of any daemon, and forward client cancellations to the job they concern.
//!
//! Shutdown (the token passed to [`Runner::run`]) drains: no new claims, running jobs get
//! `drain_grace` to finish, then they are stopped and put back in the queue without charging
//! an attempt.

mod claimer;
pub mod execution;
mod lease;
pub mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::alerts::Alerts;
use crate::db::executors;
use crate::db::queue::{self, ClaimLimits, Queue};
use crate::model::{Job, StopReason};
use crate::ops::metrics;
use crate::ops::DaemonStatus;
use crate::runner::settings::QueueSettings;
use claimer::RunClaimer;
pub use execution::{JobExecutor, Stop};

/// Added to the wait for a run's `run_after`, so the claim's `now()` is past it.
const DUE_MARGIN: Duration = Duration::from_millis(1);

/// How soon to claim again after a claim that got nothing only because another daemon was
/// claiming the same companies at that moment (their runs are still pending).
const CONTENDED_RETRY: Duration = Duration::from_millis(5);

/// Jobs registered in this process, by id (run and build ids are UUIDs and never collide).
type Registry = Arc<Mutex<HashMap<Uuid, Stop>>>;

pub struct Runner {
    pub pool: Pool,
    pub executor_id: String,
    pub settings: QueueSettings,
    pub execution: Arc<dyn JobExecutor>,
    /// Notified by the LISTEN session when a run or a build becomes pending.
    pub run_pending: Arc<Notify>,
    /// Run and build ids a client cancelled, from the LISTEN session.
    pub run_cancelled: mpsc::UnboundedReceiver<Uuid>,
    /// Exit once no run is pending and none is in flight (`run --until-idle`).
    pub until_idle: bool,
    /// Shared with the ops side: the loop ticks it (watchdog), run tasks count themselves in
    /// and out; its idle cap bounds the loop's wait so a watchdog sees it alive.
    pub status: Arc<DaemonStatus>,
    /// Raises events for failed, timed-out, OOM-killed, security-relevant and rescued runs;
    /// never waits.
    pub alerts: Alerts,
}

impl Runner {
    /// Claims and executes runs until `shutdown` fires (then drains) or, with `until_idle`,
    /// until the queue is empty.
    pub async fn run(self, shutdown: CancellationToken) {
        let Runner {
            pool,
            executor_id,
            settings,
            execution,
            run_pending,
            run_cancelled,
            until_idle,
            status,
            alerts,
        } = self;
        let registry: Registry = Arc::default();
        let tracker = TaskTracker::new();
        let background = CancellationToken::new();
        let state = Arc::new(Mutex::new("active"));
        let slots = Slots {
            runs: Arc::new(Semaphore::new(settings.max_concurrent_runs)),
            builds: Arc::new(Semaphore::new(settings.max_concurrent_builds)),
        };
        let slot_freed = Arc::new(Notify::new());
        let limits = ClaimLimits {
            lease: settings.lease,
            company_cap: settings.company_running_cap,
            app_cap: settings.app_running_cap,
            company_caps: serde_json::to_value(
                settings
                    .company_caps
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect::<HashMap<_, _>>(),
            )
            .expect("a map of strings to integers serialises"),
        };

        let claimer = RunClaimer::start(pool.clone(), executor_id.clone(), limits.clone());

        let background_tasks = TaskTracker::new();
        background_tasks.spawn(registry_heartbeat(
            pool.clone(),
            executor_id.clone(),
            settings.heartbeat_interval,
            registry.clone(),
            state.clone(),
            background.clone(),
        ));
        background_tasks.spawn(rescue_loop(
            pool.clone(),
            settings.clone(),
            run_pending.clone(),
            alerts.clone(),
            background.clone(),
        ));
        background_tasks.spawn(forward_cancellations(
            run_cancelled,
            registry.clone(),
            background.clone(),
        ));

        // What every job's task gets; cloned per job.
        let task = RunTask {
            pool: pool.clone(),
            executor_id: executor_id.clone(),
            settings: settings.clone(),
            execution: execution.clone(),
            registry: registry.clone(),
            status: status.clone(),
            alerts: alerts.clone(),
            claimer: claimer.clone(),
        };

        loop {
            status.loop_ticked();
            // Register interest before looking, so a NOTIFY between the claim and the wait is
            // not lost.
            let pending = run_pending.notified();
            let freed = slot_freed.notified();
            tokio::pin!(pending, freed);
            pending.as_mut().enable();
            freed.as_mut().enable();

            // Whether a queue's last claim found nothing: only then is it worth asking if we
            // are idle, or when the next waiting job is due.
            let mut found_nothing = false;
            // Whether it found nothing only because another daemon held the locks.
            let mut contended = false;
            let start = |job: Job, permit: tokio::sync::OwnedSemaphorePermit| {
                note_claimed(&job);
                let task = task.clone();
                let limits = limits.clone();
                let shutdown = shutdown.clone();
                let freed_signal = slot_freed.clone();
                tracker.spawn(async move {
                    task.execute_while_claimable(job, &limits, &shutdown).await;
                    drop(permit);
                    freed_signal.notify_one();
                });
            };

            // Runs: every free slot in one claim.
            let mut permits = Vec::new();
            while permits.len() < claimer::MAX_BATCH && !shutdown.is_cancelled() {
                match slots.runs.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            if !permits.is_empty() {
                status.loop_ticked();
                match claimer.claim(permits.len()).await {
                    Ok(batch) => {
                        found_nothing = batch.runs.len() < permits.len();
                        contended = batch.contended;
                        for run in batch.runs {
                            start(Job::Run(run), permits.pop().expect("one permit per run"));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming failed; retrying after the poll interval");
                    }
                }
                drop(permits);
            }

            // Builds: one at a time.
            while let Ok(permit) = slots.builds.clone().try_acquire_owned() {
                if shutdown.is_cancelled() {
                    break;
                }
                status.loop_ticked();
                match queue::claim_next_build(&pool, &executor_id, limits.lease).await {
                    Ok(Some(build)) => start(Job::Build(build), permit),
                    Ok(None) => {
                        found_nothing = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming a build failed; retrying after the poll interval");
                        break;
                    }
                }
            }

            let all_slots_free = slots.runs.available_permits() == settings.max_concurrent_runs
                && slots.builds.available_permits() == settings.max_concurrent_builds;
            if until_idle && found_nothing && all_slots_free {
                match queue::count_pending_runs(&pool).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot count pending runs"),
                }
            }

            let mut wait = status.idle_wait(settings.poll_interval);
            if contended {
                wait = wait.min(CONTENDED_RETRY);
            }
            if found_nothing {
                // A run inserted ahead of its time sent its NOTIFY already; wake when it is due.
                match queue::time_until_next_waiting_run(&pool).await {
                    Ok(Some(until)) => wait = wait.min(until + DUE_MARGIN),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot look up the next waiting run"),
                }
            }

            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = &mut pending => {}
                _ = &mut freed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }

        drain(
            &registry,
            &tracker,
            &state,
            &settings,
            shutdown.is_cancelled(),
        )
        .await;
        background.cancel();
        background_tasks.close();
        background_tasks.wait().await;
        *state.lock().unwrap() = "stopped";
        if let Err(e) = executors::heartbeat_executor(&pool, &executor_id, 0, "stopped").await {
            tracing::warn!(error = %e, "could not mark this executor stopped");
        }
    }
}

/// Waits for runs in flight; on shutdown, for at most `drain_grace`, then stops the rest and
/// waits for their release.
async fn drain(
    registry: &Registry,
    tracker: &TaskTracker,
    state: &Mutex<&'static str>,
    settings: &QueueSettings,
    shutting_down: bool,
) {
    tracker.close();
    if !shutting_down {
        tracker.wait().await;
        return;
    }
    *state.lock().unwrap() = "draining";
    let in_flight = registry.lock().unwrap().len();
    tracing::info!(in_flight, grace = ?settings.drain_grace, "draining: no new claims");
    if tokio::time::timeout(settings.drain_grace, tracker.wait())
        .await
        .is_ok()
    {
        return;
    }
    let stopping: Vec<Stop> = registry.lock().unwrap().values().cloned().collect();
    tracing::warn!(
        runs = stopping.len(),
        "drain grace period over; stopping runs and returning them to the queue"
    );
    for run in &stopping {
        run.stop_for(StopReason::Shutdown);
    }
    tracker.wait().await;
}

/// Renews this daemon's `app_executors` row (liveness, running count, state).
async fn registry_heartbeat(
    pool: Pool,
    executor_id: String,
    interval: Duration,
    registry: Registry,
    state: Arc<Mutex<&'static str>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let running = registry.lock().unwrap().len() as i32;
        let current = *state.lock().unwrap();
        if let Err(e) = executors::heartbeat_executor(&pool, &executor_id, running, current).await {
            tracing::warn!(error = %e, "executor heartbeat failed");
        }
    }
}

/// Requeues runs and builds whose lease expired, whoever held them; wakes the claim loop when
/// it did.
async fn rescue_loop(
    pool: Pool,
    settings: QueueSettings,
    run_pending: Arc<Notify>,
    alerts: Alerts,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.rescue_interval) => {}
        }
        for queue in [Queue::Runs, Queue::Builds] {
            let rescue = queue::rescue_expired_leases(
                &pool,
                queue,
                100,
                Duration::ZERO,
                settings.lease * 3,
                |run| alerts.for_rescue(run),
            );
            match rescue.await {
                Ok(rescued) => {
                    let failed =
                        rescued.iter().filter(|(r, _)| r.status == "failed").count() as u64;
                    if queue == Queue::Runs {
                        metrics::runs_rescued(rescued.len() as u64 - failed, failed);
                    }
                    for (run, alert) in &rescued {
                        tracing::warn!(run_id = %run.run_id, job = queue.noun(), previous_executor = ?run.previous_executor, status = %run.status, "rescued from an expired lease");
                        if let Some((raised, recorded)) = alert {
                            alerts.raised(raised, *recorded);
                        }
                    }
                    if !rescued.is_empty() {
                        run_pending.notify_waiters();
                    }
                }
                Err(e) => tracing::warn!(error = %e, job = queue.noun(), "rescue sweep failed"),
            }
        }
    }
}

/// The slots of each queue.
struct Slots {
    runs: Arc<Semaphore>,
    builds: Arc<Semaphore>,
}

/// Stops runs and builds of ours that a client cancelled.
async fn forward_cancellations(
    mut cancelled: mpsc::UnboundedReceiver<Uuid>,
    registry: Registry,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            run = cancelled.recv() => match run {
                Some(run) => {
                    if let Some(in_flight) = registry.lock().unwrap().get(&run) {
                        tracing::info!(run_id = %run, "cancelled by a client; stopping it");
                        in_flight.stop_for(StopReason::Cancelled);
                    }
                }
                None => return,
            },
        }
    }
}

/// Everything one run's task needs.
#[derive(Clone)]
struct RunTask {
    pool: Pool,
    executor_id: String,
    settings: QueueSettings,
    execution: Arc<dyn JobExecutor>,
    registry: Registry,
    status: Arc<DaemonStatus>,
    alerts: Alerts,
    claimer: RunClaimer,
}

/// Logs and counts a claimed job.
fn note_claimed(job: &Job) {
    match job {
        Job::Run(run) => {
            tracing::info!(run_id = %run.id, app_id = %run.app_id, company_id = %run.company_id, attempt = run.attempt, "claimed run");
            metrics::run_claimed(
                (run.started_at - run.created_at)
                    .to_std()
                    .unwrap_or_default(),
            );
        }
        Job::Build(build) => {
            tracing::info!(build_id = %build.id, app_id = %build.app_id, version = %build.version, attempt = build.attempt, "claimed build");
        }
    }
}

impl RunTask {
    /// Executes `job`, then keeps its slot busy by claiming the next job of the same queue
    /// itself for as long as one is eligible: with a deep queue, handing the slot back through
    /// the claim loop would cost a wake-up and a new task per job. Stops claiming once shutdown
    /// begins.
    async fn execute_while_claimable(
        &self,
        mut job: Job,
        limits: &ClaimLimits,
        shutdown: &CancellationToken,
    ) {
        loop {
            let queue = job.queue();
            self.execute(job).await;
            if shutdown.is_cancelled() {
                return;
            }
            let next = match queue {
                Queue::Runs => self
                    .claimer
                    .claim(1)
                    .await
                    .map(|batch| batch.runs.into_iter().next().map(Job::Run)),
                Queue::Builds => {
                    queue::claim_next_build(&self.pool, &self.executor_id, limits.lease)
                        .await
                        .map(|build| build.map(Job::Build))
                        .map_err(|e| e.to_string())
                }
            };
            match next {
                Ok(Some(next)) => {
                    note_claimed(&next);
                    job = next;
                }
                // Nothing now, or contended: the claim loop owns trying again.
                Ok(None) => return,
                Err(e) => {
                    // The claim loop owns retrying after the poll interval.
                    tracing::warn!(error = %e, "claiming the next job failed; handing the slot back");
                    return;
                }
            }
        }
    }

    async fn execute(&self, job: Job) {
        let started = std::time::Instant::now();
        self.status.run_started();
        let in_flight = Stop::new();
        self.registry
            .lock()
            .unwrap()
            .insert(job.id(), in_flight.clone());
        let keeper = tokio::spawn(lease::keep(
            self.pool.clone(),
            job.queue(),
            self.executor_id.clone(),
            job.id(),
            job.attempt(),
            self.settings.clone(),
            in_flight.clone(),
        ));
        let outcome = self.execution.execute(&job, in_flight.clone()).await;
        keeper.abort();
        let reason = in_flight.reason();
        lease::record_outcome(
            &self.pool,
            &self.executor_id,
            &job,
            &self.settings,
            outcome,
            reason,
            &self.alerts,
        )
        .await;
        self.registry.lock().unwrap().remove(&job.id());
        self.status.run_ended();
        if let Job::Run(_) = job {
            metrics::phase_finished(metrics::Phase::Total, started.elapsed());
        }
    }
}
