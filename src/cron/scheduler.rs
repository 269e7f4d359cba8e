//! The cron loop that runs in every daemon: plan schedules lacking `next_run_at`, sleep until
//! the earliest one is due (or a schedule changes), then fire the due schedules in batches.
//!
//! A batch is set-based: one statement claims up to [`FIRE_CHUNK`] due schedules, the plan of
//! each (due ticks, catch-up, next `next_run_at`) is computed in Rust, and a few statements
//! write the whole batch (active runs, skipped ticks, runs with their fired ticks, the advanced
//! schedules), so the common case costs a handful of round trips per batch, not per schedule.
//! [`FIRE_WORKERS`] batches run at once on separate connections. If a batch statement fails,
//! that batch is redone schedule by schedule, each in a savepoint, so one poison row is isolated.
//!
//! Fire ahead: a pass also takes schedules whose next tick is at most `cron.fire_ahead` away
//! and inserts their runs early with `run_after` = the tick, so the queue can claim them at the
//! instant itself; a busy minute's inserts are then written before the minute starts. Only a
//! tick whose decision nothing before its instant can change fires early: when the schedule has
//! a pending or running run and its overlap policy looks at that, the tick is left for a pass at
//! its instant (deferred). The database withdraws early runs when a schedule is edited or
//! deleted before their instant (migration `executor_cron_fire_ahead`).
//!
//! Several daemons run this loop against one database. Row locks (`FOR UPDATE SKIP LOCKED`)
//! keep two daemons off one schedule at a time, and `UNIQUE (schedule_id, scheduled_for)` on
//! `app_runs` makes a double fire impossible even if that ever failed. A daemon killed
//! mid-transaction loses nothing: its transaction rolls back and `next_run_at` stays due.
//! One bad schedule is disabled and never stops the loop.

mod firing;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::clock::{Clock, Sleep};
use super::policy::SkipReason;
use super::schedule::ParseCache;
use crate::cron::CronSettings;
use crate::db::schedule::{self as sql};
use crate::ops::metrics;

/// Due ticks enumerated for one schedule in one pass at most; a longer backlog (a per-second
/// schedule after a day of downtime) is worked off over the following passes.
pub const MAX_TICKS_PER_PASS: usize = 10_000;
/// Due schedules claimed and fired per transaction (one batch).
const FIRE_CHUNK: usize = 500;
/// Batches fired at once, each on its own connection (`SKIP LOCKED` keeps them apart).
const FIRE_WORKERS: usize = 4;
/// Wait before retrying after the database failed, so an outage is not a busy loop.
const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(1);

/// How long to wait for another daemon that holds a due schedule's row lock.
const CONTENTION_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// What the loop does after a pass.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// A batch limit was hit: pass again at once.
    Now,
    /// A due schedule is locked by another daemon.
    Contended,
    At(DateTime<Utc>),
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("cannot get a database connection for the cron scheduler: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("failed to plan cron schedules: {}", crate::db::error_text(.0))]
    Plan(#[source] tokio_postgres::Error),
    #[error("failed to list due cron schedules: {}", crate::db::error_text(.0))]
    ListDue(#[source] tokio_postgres::Error),
    #[error("failed to commit fired cron schedules: {}", crate::db::error_text(.0))]
    Commit(#[source] tokio_postgres::Error),
    #[error(
        "failed to fire cron schedule {schedule_id}: {}",
        crate::db::error_text(source)
    )]
    Fire {
        schedule_id: Uuid,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub planned: usize,
    pub disabled: usize,
    pub fired: usize,
    pub skipped: usize,
    /// Schedules whose firing failed this pass (logged; retried after a pause).
    pub failed: usize,
    /// A batch limit was reached: run another pass at once.
    pub more: bool,
    /// `skipped`, by reason (`SkipReason::as_str`).
    pub skipped_by_reason: BTreeMap<&'static str, usize>,
    /// For each fired tick, how long after its nominal time it fired (as of the pass's `now`;
    /// zero when it fired ahead).
    pub fire_lags: Vec<chrono::Duration>,
    /// Ticks fired before their nominal instant (`cron.fire_ahead`).
    pub fired_ahead: usize,
    /// Schedules within the fire-ahead window left for a pass at their instant, because an
    /// active run could still end (or start) before it and change the overlap decision.
    pub deferred: usize,
}

impl PassReport {
    fn absorb(&mut self, other: PassReport) {
        self.planned += other.planned;
        self.disabled += other.disabled;
        self.fired += other.fired;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.more |= other.more;
        self.fired_ahead += other.fired_ahead;
        self.deferred += other.deferred;
        for (reason, n) in other.skipped_by_reason {
            *self.skipped_by_reason.entry(reason).or_default() += n;
        }
        self.fire_lags.extend(other.fire_lags);
    }

    fn skip(&mut self, reason: &'static str, ticks: usize) {
        self.skipped += ticks;
        *self.skipped_by_reason.entry(reason).or_default() += ticks;
    }

    fn fired(&mut self, now: DateTime<Utc>, scheduled_for: DateTime<Utc>) {
        self.fired += 1;
        if scheduled_for > now {
            self.fired_ahead += 1;
        }
        self.fire_lags
            .push((now - scheduled_for).max(chrono::Duration::zero()));
    }

    /// Records what a committed transaction did in the metrics (never before the commit: a
    /// rolled-back batch is redone and must not count twice).
    fn record_metrics(&self) {
        for (reason, n) in &self.skipped_by_reason {
            metrics::cron_skipped(reason, *n as u64);
        }
        metrics::cron_skipped(SkipReason::InvalidSchedule.as_str(), self.disabled as u64);
        for lag in &self.fire_lags {
            metrics::cron_fired(lag.to_std().unwrap_or_default());
        }
    }
}

/// The cron scheduler of one daemon. Build it in the composition root and spawn [`run`].
///
/// [`run`]: Scheduler::run
pub struct Scheduler {
    pool: Pool,
    clock: Arc<dyn Clock>,
    settings: CronSettings,
    /// Notified by the daemon's LISTEN task on `<namespace>_schedule_changed`: a new or edited
    /// schedule is planned at once instead of at the next `max_sleep`.
    wake: Arc<Notify>,
    parsed: ParseCache,
}

impl Scheduler {
    pub fn new(
        pool: Pool,
        clock: Arc<dyn Clock>,
        settings: CronSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            clock,
            settings,
            wake,
            parsed: ParseCache::default(),
        }
    }

    /// Runs until `shutdown` is cancelled. Cancelling mid-pass drops the open transaction,
    /// which rolls back: that schedule stays due for the next daemon.
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.settings.enabled {
            tracing::info!("cron scheduler disabled by cron.enabled = false");
            return;
        }
        loop {
            let deadline = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                deadline = self.pass_and_deadline() => deadline,
            };
            tracing::trace!(wake = ?deadline, "cron scheduler pass done");
            let sleep: Sleep<'_> = match deadline {
                Wake::Now => continue,
                // Another daemon is firing a due schedule: a pause in real time, not in the
                // schedule's clock, since its commit is what we wait for.
                Wake::Contended => Box::pin(tokio::time::sleep(CONTENTION_PAUSE)),
                Wake::At(deadline) => self.clock.sleep_until(deadline),
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
        }
    }

    /// One pass, then when to wake next.
    async fn pass_and_deadline(&self) -> Wake {
        let now = self.clock.now();
        let cap = now + self.max_sleep();
        let retry = Wake::At((now + RETRY_AFTER).min(cap));
        let horizon = now + self.fire_ahead();
        match self.pass(now).await {
            Ok(report) if report.failed > 0 => retry,
            // After a pass that fired ahead, the schedule's following tick may already be
            // within the window too.
            Ok(report) if report.more || report.fired_ahead > 0 => Wake::Now,
            Ok(report) => match self.next_run_at_bounds(now, horizon).await {
                Ok(bounds) => {
                    wake_after_clean_pass(now, self.fire_ahead(), cap, bounds, report.deferred)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cron scheduler cannot read its next wake time; retrying");
                    retry
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cron scheduler pass failed; retrying");
                retry
            }
        }
    }

    fn max_sleep(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.max_sleep).unwrap_or(chrono::Duration::MAX)
    }

    fn fire_ahead(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.fire_ahead).unwrap_or(chrono::Duration::zero())
    }

    async fn next_run_at_bounds(
        &self,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> Result<sql::NextRunAtBounds, SchedulerError> {
        let client = self.pool.get().await?;
        sql::next_run_at_bounds(&client, now, horizon)
            .await
            .map_err(SchedulerError::ListDue)
    }

    /// Plans unplanned schedules, then fires every schedule due at `now`, and those due within
    /// `cron.fire_ahead` of it whose tick can be decided now.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<PassReport, SchedulerError> {
        let mut report = PassReport::default();
        self.plan_unplanned(now, &mut report).await?;
        // Up to batch_size due schedules per pass, in batches of FIRE_CHUNK claimed by
        // FIRE_WORKERS concurrent workers; each batch is one transaction.
        let limit = self.settings.batch_size.max(1);
        let budget = AtomicUsize::new(limit);
        let claimed = AtomicUsize::new(0);
        let workers = (0..FIRE_WORKERS).map(|_| self.fire_worker(now, &budget, &claimed));
        let mut first_error = None;
        for result in futures_util::future::join_all(workers).await {
            match result {
                Ok(worker_report) => report.absorb(worker_report),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        // A full pass may have left work behind, unless all it took were deferred ticks: those
        // wait for their instant (see `wake_after_clean_pass`), and passing again at once would
        // only take them again.
        let claimed = claimed.load(Ordering::Relaxed);
        report.more |= claimed >= limit && report.deferred < claimed;
        Ok(report)
    }
}

/// When to pass again after a pass that did all it could and deferred `deferred` schedules,
/// from where the active schedules' `next_run_at` stand (`bounds`, with the fire-ahead window
/// ending at `now + lead`); never later than `cap`.
fn wake_after_clean_pass(
    now: DateTime<Utc>,
    lead: chrono::Duration,
    cap: DateTime<Utc>,
    bounds: sql::NextRunAtBounds,
    deferred: usize,
) -> Wake {
    // Still due (or unplanned) after a clean pass, or more ticks in the window than this pass
    // deferred: another daemon holds their row locks. Look again shortly; if it died holding
    // them, its transaction ends and they are ours to fire.
    let in_window = usize::try_from(bounds.in_window).unwrap_or(usize::MAX);
    if bounds.earliest.is_some_and(|t| t <= now) || in_window > deferred {
        return Wake::Contended;
    }
    // The ticks in the window were all deferred: look again at the first one's instant. A tick
    // beyond the window: when it enters it.
    let deferred_instant = bounds.earliest.filter(|t| *t <= now + lead);
    let entering = bounds.beyond.map(|t| t - lead);
    Wake::At(
        deferred_instant
            .into_iter()
            .chain(entering)
            .fold(cap, DateTime::min),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn bounds(earliest: Option<i64>, in_window: i64, beyond: Option<i64>) -> sql::NextRunAtBounds {
        sql::NextRunAtBounds {
            earliest: earliest.map(at),
            in_window,
            beyond: beyond.map(at),
        }
    }

    #[test]
    fn after_a_clean_pass_the_loop_wakes_when_the_next_tick_enters_the_window() {
        let lead = chrono::Duration::seconds(2);
        let cap = at(30);
        let wake = |b, deferred| wake_after_clean_pass(at(0), lead, cap, b, deferred);
        // Nothing in the window: wake when the earliest tick is `lead` away.
        assert_eq!(wake(bounds(Some(10), 0, Some(10)), 0), Wake::At(at(8)));
        // A deferred tick at 1 s, the next one beyond the window at 5 s: its instant first.
        assert_eq!(wake(bounds(Some(1), 1, Some(5)), 1), Wake::At(at(1)));
        // ... unless the later one enters the window sooner than the deferred instant.
        assert_eq!(wake(bounds(Some(2), 1, Some(3)), 1), Wake::At(at(1)));
        // More ticks in the window than were deferred: another daemon holds one.
        assert_eq!(wake(bounds(Some(1), 2, Some(5)), 1), Wake::Contended);
        assert_eq!(wake(bounds(Some(2), 1, None), 0), Wake::Contended);
        // A tick still due after a clean pass is held by another daemon.
        assert_eq!(wake(bounds(Some(0), 1, Some(9)), 0), Wake::Contended);
        // Without a lead, a future tick is waited for at its instant.
        let none = chrono::Duration::zero();
        assert_eq!(
            wake_after_clean_pass(at(0), none, cap, bounds(Some(10), 0, Some(10)), 0),
            Wake::At(at(10))
        );
        // Nothing at all, or everything far away: max_sleep.
        assert_eq!(wake(bounds(None, 0, None), 0), Wake::At(cap));
        assert_eq!(wake(bounds(Some(90), 0, Some(90)), 0), Wake::At(cap));
    }
}
