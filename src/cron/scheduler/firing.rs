//! The work of a pass: due schedules fired as runs in batches (one by one when a batch hits
//! contention), each tick evaluated against the catch-up and overlap policies, schedules that
//! can never fire disabled with a reason, and new schedules planned.

use super::{PassReport, Scheduler, SchedulerError, FIRE_CHUNK, MAX_TICKS_PER_PASS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::cron::policy::{plan, CatchUp, Overlap, Plan, Policy, SkipReason};
use crate::db::schedule::{self as sql, DueSchedule};
use crate::ops::metrics;

impl Scheduler {
    /// Claims and fires batches until the pass's budget is spent or nothing due is left.
    pub(super) async fn fire_worker(
        &self,
        now: DateTime<Utc>,
        budget: &AtomicUsize,
        claimed: &AtomicUsize,
    ) -> Result<PassReport, SchedulerError> {
        let mut report = PassReport::default();
        loop {
            let Ok(before) = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b > 0).then(|| b.saturating_sub(FIRE_CHUNK))
            }) else {
                return Ok(report);
            };
            let take = before.min(FIRE_CHUNK);
            let mut client = self.pool.get().await?;
            let mut tx = client.transaction().await.map_err(SchedulerError::Commit)?;
            let horizon = now + self.fire_ahead();
            let rows = sql::claim_due_schedules(&tx, horizon, take as i64)
                .await
                .map_err(SchedulerError::ListDue)?;
            claimed.fetch_add(rows.len(), Ordering::Relaxed);
            if rows.is_empty() {
                return Ok(report);
            }
            let savepoint = tx
                .savepoint("batch")
                .await
                .map_err(SchedulerError::Commit)?;
            let mut batch_report = PassReport::default();
            let mut committed = PassReport::default();
            match self
                .fire_batch(&savepoint, &rows, now, &mut batch_report)
                .await
            {
                Ok(()) => {
                    savepoint.commit().await.map_err(SchedulerError::Commit)?;
                    committed.absorb(batch_report);
                }
                Err(e) => {
                    savepoint.rollback().await.map_err(SchedulerError::Commit)?;
                    tracing::warn!(error = %e, schedules = rows.len(), "cron batch failed; firing its schedules one by one");
                    self.fire_one_by_one(&mut tx, &rows, now, &mut committed)
                        .await?;
                }
            }
            tx.commit().await.map_err(SchedulerError::Commit)?;
            committed.record_metrics();
            report.absorb(committed);
            if rows.len() < take {
                return Ok(report);
            }
        }
    }

    /// The fallback for a failed batch: each schedule in its own savepoint, so that one failing
    /// schedule rolls back alone and the others still fire.
    async fn fire_one_by_one(
        &self,
        tx: &mut Transaction<'_>,
        rows: &[DueSchedule],
        now: DateTime<Utc>,
        report: &mut PassReport,
    ) -> Result<(), SchedulerError> {
        for row in rows {
            let savepoint = tx.savepoint("fire").await.map_err(SchedulerError::Commit)?;
            // Counted only once its savepoint is kept.
            let mut one = PassReport::default();
            let fired = self
                .fire_batch(&savepoint, std::slice::from_ref(row), now, &mut one)
                .await
                .map_err(|source| SchedulerError::Fire {
                    schedule_id: row.id,
                    source,
                });
            match fired {
                Ok(()) => {
                    savepoint.commit().await.map_err(SchedulerError::Commit)?;
                    report.absorb(one);
                }
                Err(e) => {
                    savepoint.rollback().await.map_err(SchedulerError::Commit)?;
                    report.failed += 1;
                    tracing::warn!(error = %e, schedule_id = %row.id, "cron schedule not fired this pass");
                }
            }
        }
        Ok(())
    }

    /// Fires a batch of claimed schedules inside `tx` (a savepoint) in a few statements for the
    /// whole batch: their runs, ticks and new `next_run_at` are kept together or not at all.
    async fn fire_batch(
        &self,
        tx: &Transaction<'_>,
        rows: &[DueSchedule],
        now: DateTime<Utc>,
        report: &mut PassReport,
    ) -> Result<(), tokio_postgres::Error> {
        let mut skipped = sql::SkippedTicks::default();
        let mut disables = Vec::new();
        let mut ready = Vec::with_capacity(rows.len());
        for row in rows {
            match self.evaluate(row, now) {
                Evaluation::Disable { at, reason } => disables.push((row.id, at, reason)),
                Evaluation::Fire {
                    policy,
                    plan,
                    next,
                    cut,
                } => {
                    report.more |= cut;
                    for (tick, reason) in &plan.skip {
                        skipped.push(row.id, *tick, reason.as_str(), None);
                    }
                    ready.push((row, policy, plan.fire, next));
                }
            }
        }

        // The overlap check, for the schedules that fire and whose policy looks at it.
        let check: Vec<Uuid> = ready
            .iter()
            .filter(|(_, policy, fire, _)| !fire.is_empty() && policy.overlap != Overlap::Allow)
            .map(|(row, ..)| row.id)
            .collect();
        let active = sql::active_runs_of_schedules(tx, &check).await?;
        // A tick ahead of its instant whose overlap decision could still change (the active
        // run may end first) is left alone until the instant: not fired, not advanced.
        let before = ready.len();
        ready.retain(|(row, _, _, _)| row.next_run_at <= now || !active.contains_key(&row.id));
        report.deferred += before - ready.len();
        let mut to_fire = sql::TicksToFire::default();
        for (row, policy, fire, _) in &ready {
            let detail = active
                .get(&row.id)
                .map(|a| format!("previous run {} was {}", a.id, a.status));
            match (policy.overlap, detail) {
                (Overlap::Skip, Some(detail)) => {
                    for &tick in fire {
                        skipped.push(
                            row.id,
                            tick,
                            SkipReason::Overlap.as_str(),
                            Some(detail.clone()),
                        );
                    }
                }
                (overlap, detail) => {
                    let detail = detail.filter(|_| overlap == Overlap::Queue);
                    for &tick in fire {
                        to_fire.push(row, tick, &policy.input, detail.clone());
                    }
                }
            }
        }

        sql::record_skipped_ticks_batch(tx, &skipped).await?;
        let fired = sql::fire_ticks(tx, &to_fire).await?;
        let mut last_run: HashMap<Uuid, (DateTime<Utc>, Uuid)> = HashMap::new();
        for run in &fired {
            let newest = last_run
                .entry(run.schedule_id)
                .or_insert((run.scheduled_for, run.run_id));
            if run.scheduled_for > newest.0 {
                *newest = (run.scheduled_for, run.run_id);
            }
        }
        let mut advances = sql::Advances::default();
        for (row, _, _, next) in &ready {
            let last = last_run.get(&row.id).copied();
            advances.push(row.id, *next, last);
            if let Some((tick, run_id)) = last {
                tracing::debug!(schedule_id = %row.id, %run_id, scheduled_for = %tick, "cron schedule fired");
            }
        }
        sql::advance_schedules(tx, &advances).await?;
        for (id, at, reason) in &disables {
            disable(tx, *id, *at, reason).await?;
        }
        for reason in &skipped.reasons {
            report.skip(reason, 1);
        }
        for run in &fired {
            report.fired(now, run.scheduled_for);
        }
        report.disabled += disables.len();
        Ok(())
    }

    /// What to do with one claimed due schedule: its plan, or why it must be disabled.
    fn evaluate(&self, row: &DueSchedule, now: DateTime<Utc>) -> Evaluation {
        let parsed = self
            .parsed
            .parse(&row.cron_expression, &row.timezone)
            .map_err(|e| e.to_string())
            .and_then(|s| Policy::from_config(&row.config).map(|p| (s, p)));
        let (schedule, policy) = match parsed {
            Ok(ok) => ok,
            Err(reason) => {
                return Evaluation::Disable {
                    at: row.next_run_at,
                    reason,
                }
            }
        };

        // A schedule taken ahead of its tick is evaluated as of that tick: exactly one is due.
        let now = now.max(row.next_run_at);
        // Every nominal tick from next_run_at up to now, oldest first.
        let mut due = vec![row.next_run_at];
        let mut next = schedule.next_after(row.next_run_at);
        let mut cut = false;
        while let Some(t) = next.filter(|t| *t <= now) {
            if due.len() >= MAX_TICKS_PER_PASS {
                cut = true;
                break;
            }
            due.push(t);
            next = schedule.next_after(t);
        }
        let Some(next) = next else {
            return Evaluation::Disable {
                at: now,
                reason: never_fires(&row.cron_expression),
            };
        };
        let plan = if cut {
            // A backlog longer than one pass: these are all older than the newest tick, so
            // none of them fires; the next pass continues from `next`, which is still due.
            let reason = match policy.catch_up {
                CatchUp::All => SkipReason::CatchUpCap,
                CatchUp::Skip | CatchUp::Once => SkipReason::Downtime,
            };
            Plan {
                fire: Vec::new(),
                skip: due.iter().map(|t| (*t, reason)).collect(),
            }
        } else {
            plan(&due, policy.catch_up, self.settings.catch_up_cap)
        };
        Evaluation::Fire {
            policy,
            plan,
            next,
            cut,
        }
    }

    fn batch_size(&self) -> i64 {
        i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX)
    }

    /// Computes `next_run_at` (the first tick after `now`) for new and edited schedules, and
    /// disables the ones that cannot be parsed (expression, zone or policies) or never fire.
    pub(super) async fn plan_unplanned(
        &self,
        now: DateTime<Utc>,
        report: &mut PassReport,
    ) -> Result<(), SchedulerError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(SchedulerError::Plan)?;
        let rows = sql::claim_unplanned_schedules(&tx, self.batch_size())
            .await
            .map_err(SchedulerError::Plan)?;
        let mut disabled = 0;
        report.more |= rows.len() as i64 >= self.batch_size();
        let (mut planned_ids, mut planned_next) = (Vec::new(), Vec::new());
        for row in rows {
            // The policies are checked now too, so a typo is reported before the first tick.
            let parsed = self
                .parsed
                .parse(&row.cron_expression, &row.timezone)
                .map_err(|e| e.to_string())
                .and_then(|s| Policy::from_config(&row.config).map(|_| s))
                .and_then(|s| {
                    s.next_after(now)
                        .ok_or_else(|| never_fires(&row.cron_expression))
                });
            match parsed {
                Ok(next) => {
                    planned_ids.push(row.id);
                    planned_next.push(next);
                }
                Err(reason) => {
                    disable(&tx, row.id, now, &reason)
                        .await
                        .map_err(SchedulerError::Plan)?;
                    disabled += 1;
                }
            }
        }
        sql::set_next_run_at(&tx, &planned_ids, &planned_next)
            .await
            .map_err(SchedulerError::Plan)?;
        tx.commit().await.map_err(SchedulerError::Plan)?;
        report.planned += planned_ids.len();
        report.disabled += disabled;
        metrics::cron_skipped(SkipReason::InvalidSchedule.as_str(), disabled as u64);
        Ok(())
    }
}

/// What [`Scheduler::evaluate`] decided for one due schedule.
enum Evaluation {
    /// The schedule cannot be evaluated (or never fires again): disable it, recording an
    /// `invalid_schedule` tick at `at`.
    Disable { at: DateTime<Utc>, reason: String },
    /// `plan` says which due ticks fire and which are skipped; `next` is the new
    /// `next_run_at`; `cut` means the backlog was longer than one pass.
    Fire {
        policy: Policy,
        plan: Plan,
        next: DateTime<Utc>,
        cut: bool,
    },
}

/// Disables a schedule, recording an `invalid_schedule` tick at `at` so its owner sees why
/// nothing fires in the tick history too.
async fn disable(
    tx: &tokio_postgres::Transaction<'_>,
    schedule_id: Uuid,
    at: DateTime<Utc>,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    tracing::warn!(%schedule_id, reason, "cron schedule disabled");
    sql::deactivate_schedule(tx, schedule_id, reason).await?;
    sql::record_skipped_ticks(
        tx,
        schedule_id,
        &[at],
        SkipReason::InvalidSchedule.as_str(),
        Some(reason),
    )
    .await?;
    Ok(())
}

fn never_fires(expression: &str) -> String {
    format!("{expression:?} never fires again; check the day-of-month and month fields")
}
