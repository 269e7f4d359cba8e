//! The scheduler's SQL: one function per statement over `app_cron_schedules`, `app_cron_ticks`
//! and the cron runs in `app_runs`.
//!
//! Every instant is a parameter (the scheduler's clock), never the database's `now()`, so
//! several daemons and the tests' manual clock agree on what is due. Functions that lock take a
//! transaction; the caller keeps it short (one batch of schedules: the batch functions do the work
//! of the per-schedule ones for many schedules in one statement each).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::{Client, Row, Transaction};
use uuid::Uuid;

/// An active schedule without `next_run_at` (new, edited, or re-activated).
#[derive(Debug, Clone)]
pub struct UnplannedSchedule {
    pub id: Uuid,
    pub cron_expression: String,
    pub timezone: String,
    pub config: Value,
}

/// A schedule whose `next_run_at` is due, locked by the claiming transaction.
#[derive(Debug, Clone)]
pub struct DueSchedule {
    pub id: Uuid,
    pub app_id: Uuid,
    pub company_id: Uuid,
    pub cron_expression: String,
    pub timezone: String,
    pub config: Value,
    pub next_run_at: DateTime<Utc>,
}

/// The schedule's run that is still `pending` or `running`, if any.
#[derive(Debug, Clone)]
pub struct ActiveRun {
    pub id: Uuid,
    pub status: String,
}

/// Locks up to `limit` active schedules lacking `next_run_at`; rows another daemon holds are
/// skipped (it is planning them).
pub async fn claim_unplanned_schedules(
    tx: &Transaction<'_>,
    limit: i64,
) -> Result<Vec<UnplannedSchedule>, tokio_postgres::Error> {
    let _timed = super::timed("claim_unplanned_schedules");
    let rows = tx
        .query(
            "select id, cron_expression, timezone, config from public.app_cron_schedules
             where is_active and next_run_at is null
             order by created_at limit $1
             for update skip locked",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| UnplannedSchedule {
            id: r.get(0),
            cron_expression: r.get(1),
            timezone: r.get(2),
            config: r.get(3),
        })
        .collect())
}

/// Sets `next_run_at` of many schedules in one statement: `next_run_at[i]` for `schedule_ids[i]`.
pub async fn set_next_run_at(
    tx: &Transaction<'_>,
    schedule_ids: &[Uuid],
    next_run_at: &[DateTime<Utc>],
) -> Result<u64, tokio_postgres::Error> {
    let _timed = super::timed("set_next_run_at");
    if schedule_ids.is_empty() {
        return Ok(0);
    }
    tx.execute(
        "update public.app_cron_schedules s set next_run_at = u.next_run_at
         from unnest($1::uuid[], $2::timestamptz[]) as u(id, next_run_at)
         where s.id = u.id",
        &[&schedule_ids, &next_run_at],
    )
    .await
}

/// Disables a schedule that cannot be evaluated; `reason` is shown to its owner.
pub async fn deactivate_schedule(
    tx: &Transaction<'_>,
    schedule_id: Uuid,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    let _timed = super::timed("deactivate_schedule");
    tx.execute(
        "update public.app_cron_schedules
         set is_active = false, disabled_reason = $2, next_run_at = null
         where id = $1",
        &[&schedule_id, &reason],
    )
    .await?;
    Ok(())
}

/// Locks up to `limit` active schedules due by `horizon` (the pass's instant plus the
/// fire-ahead lead), oldest `next_run_at` first, in one statement; rows another daemon (or
/// another batch of this one) holds are skipped.
pub async fn claim_due_schedules(
    tx: &Transaction<'_>,
    horizon: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DueSchedule>, tokio_postgres::Error> {
    let _timed = super::timed("claim_due_schedules");
    let rows = tx
        .query(
            "select id, app_id, company_id, cron_expression, timezone, config, next_run_at
             from public.app_cron_schedules
             where is_active and next_run_at <= $1
             order by next_run_at limit $2
             for update skip locked",
            &[&horizon, &limit],
        )
        .await?;
    Ok(rows.iter().map(due_schedule).collect())
}

fn due_schedule(r: &Row) -> DueSchedule {
    DueSchedule {
        id: r.get(0),
        app_id: r.get(1),
        company_id: r.get(2),
        cron_expression: r.get(3),
        timezone: r.get(4),
        config: r.get(5),
        next_run_at: r.get(6),
    }
}

/// The newest `pending` or `running` run of each of `schedule_ids` that has one.
pub async fn active_runs_of_schedules(
    tx: &Transaction<'_>,
    schedule_ids: &[Uuid],
) -> Result<HashMap<Uuid, ActiveRun>, tokio_postgres::Error> {
    let _timed = super::timed("active_runs_of_schedules");
    if schedule_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx
        .query(
            "select distinct on (schedule_id) schedule_id, id, status from public.app_runs
             where schedule_id = any($1) and status in ('pending', 'running')
             order by schedule_id, created_at desc",
            &[&schedule_ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                ActiveRun {
                    id: r.get(1),
                    status: r.get(2),
                },
            )
        })
        .collect())
}

/// The runs of a batch of schedules to insert together, one entry per nominal tick.
#[derive(Debug, Default)]
pub struct TicksToFire {
    pub app_ids: Vec<Uuid>,
    pub company_ids: Vec<Uuid>,
    pub inputs: Vec<Value>,
    pub schedule_ids: Vec<Uuid>,
    pub scheduled_for: Vec<DateTime<Utc>>,
    pub details: Vec<Option<String>>,
}

impl TicksToFire {
    pub fn push(
        &mut self,
        schedule: &DueSchedule,
        scheduled_for: DateTime<Utc>,
        input: &Value,
        detail: Option<String>,
    ) {
        self.app_ids.push(schedule.app_id);
        self.company_ids.push(schedule.company_id);
        self.inputs.push(input.clone());
        self.schedule_ids.push(schedule.id);
        self.scheduled_for.push(scheduled_for);
        self.details.push(detail);
    }

    pub fn is_empty(&self) -> bool {
        self.schedule_ids.is_empty()
    }
}

/// A run inserted by [`fire_ticks`].
#[derive(Debug, Clone, Copy)]
pub struct FiredRun {
    pub run_id: Uuid,
    pub schedule_id: Uuid,
    pub scheduled_for: DateTime<Utc>,
}

/// Inserts the run of every tick and records the tick as fired, in one statement. A run is not
/// claimable before its tick (`run_after`), so a tick fired ahead waits for its instant. Ticks
/// that already have a run are left out of the result (`UNIQUE (schedule_id, scheduled_for)`
/// makes a second fire a no-op, whichever daemon tries it).
pub async fn fire_ticks(
    tx: &Transaction<'_>,
    ticks: &TicksToFire,
) -> Result<Vec<FiredRun>, tokio_postgres::Error> {
    let _timed = super::timed("fire_ticks");
    if ticks.is_empty() {
        return Ok(Vec::new());
    }
    let rows = tx
        .query(
            "with wanted as (
               select * from unnest($1::uuid[], $2::uuid[], $3::jsonb[], $4::uuid[],
                                    $5::timestamptz[], $6::text[])
                 as w(app_id, company_id, input_data, schedule_id, scheduled_for, detail)
             ), run as (
               insert into public.app_runs
                 (app_id, company_id, run_type, status, input_data, schedule_id, scheduled_for,
                  run_after)
               select app_id, company_id, 'cron', 'pending', input_data, schedule_id, scheduled_for,
                      scheduled_for
               from wanted
               on conflict (schedule_id, scheduled_for) do nothing
               returning id, schedule_id, scheduled_for
             ), tick as (
               insert into public.app_cron_ticks (schedule_id, scheduled_for, outcome, run_id, detail)
               select r.schedule_id, r.scheduled_for, 'fired', r.id, w.detail
               from run r join wanted w using (schedule_id, scheduled_for)
               on conflict (schedule_id, scheduled_for) do nothing
             )
             select id, schedule_id, scheduled_for from run",
            &[
                &ticks.app_ids,
                &ticks.company_ids,
                &ticks.inputs,
                &ticks.schedule_ids,
                &ticks.scheduled_for,
                &ticks.details,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| FiredRun {
            run_id: r.get(0),
            schedule_id: r.get(1),
            scheduled_for: r.get(2),
        })
        .collect())
}

/// Skipped ticks of a batch of schedules, each with its own reason and detail.
#[derive(Debug, Default)]
pub struct SkippedTicks {
    pub schedule_ids: Vec<Uuid>,
    pub scheduled_for: Vec<DateTime<Utc>>,
    pub reasons: Vec<&'static str>,
    pub details: Vec<Option<String>>,
}

impl SkippedTicks {
    pub fn push(
        &mut self,
        schedule_id: Uuid,
        scheduled_for: DateTime<Utc>,
        reason: &'static str,
        detail: Option<String>,
    ) {
        self.schedule_ids.push(schedule_id);
        self.scheduled_for.push(scheduled_for);
        self.reasons.push(reason);
        self.details.push(detail);
    }

    pub fn len(&self) -> usize {
        self.schedule_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.schedule_ids.is_empty()
    }
}

/// Records skipped ticks, each with its reason and detail, in one statement; already recorded
/// ticks are left as they are.
pub async fn record_skipped_ticks_batch(
    tx: &Transaction<'_>,
    ticks: &SkippedTicks,
) -> Result<u64, tokio_postgres::Error> {
    let _timed = super::timed("record_skipped_ticks_batch");
    if ticks.is_empty() {
        return Ok(0);
    }
    tx.execute(
        "insert into public.app_cron_ticks (schedule_id, scheduled_for, outcome, reason, detail)
         select s, t, 'skipped', r, d
         from unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[]) as u(s, t, r, d)
         on conflict (schedule_id, scheduled_for) do nothing",
        &[
            &ticks.schedule_ids,
            &ticks.scheduled_for,
            &ticks.reasons,
            &ticks.details,
        ],
    )
    .await
}

/// How a batch of schedules moves on: each to its next tick and, when something fired, the
/// newest run (`last_run_at` is that run's nominal instant).
#[derive(Debug, Default)]
pub struct Advances {
    pub schedule_ids: Vec<Uuid>,
    pub next_run_at: Vec<DateTime<Utc>>,
    pub last_run_at: Vec<Option<DateTime<Utc>>>,
    pub last_run_id: Vec<Option<Uuid>>,
}

impl Advances {
    pub fn push(
        &mut self,
        schedule_id: Uuid,
        next_run_at: DateTime<Utc>,
        last_run: Option<(DateTime<Utc>, Uuid)>,
    ) {
        let (at, id) = last_run.unzip();
        self.schedule_ids.push(schedule_id);
        self.next_run_at.push(next_run_at);
        self.last_run_at.push(at);
        self.last_run_id.push(id);
    }
}

pub async fn advance_schedules(
    tx: &Transaction<'_>,
    advances: &Advances,
) -> Result<u64, tokio_postgres::Error> {
    let _timed = super::timed("advance_schedules");
    if advances.schedule_ids.is_empty() {
        return Ok(0);
    }
    tx.execute(
        "update public.app_cron_schedules s
         set next_run_at = u.next_run_at,
             last_run_at = coalesce(u.last_run_at, s.last_run_at),
             last_run_id = coalesce(u.last_run_id, s.last_run_id)
         from unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::uuid[])
           as u(id, next_run_at, last_run_at, last_run_id)
         where s.id = u.id",
        &[
            &advances.schedule_ids,
            &advances.next_run_at,
            &advances.last_run_at,
            &advances.last_run_id,
        ],
    )
    .await
}

/// Records ticks that did not fire, with one reason for all of them; already recorded ticks
/// are left as they are.
pub async fn record_skipped_ticks(
    tx: &Transaction<'_>,
    schedule_id: Uuid,
    ticks: &[DateTime<Utc>],
    reason: &str,
    detail: Option<&str>,
) -> Result<u64, tokio_postgres::Error> {
    let _timed = super::timed("record_skipped_ticks");
    if ticks.is_empty() {
        return Ok(0);
    }
    tx.execute(
        "insert into public.app_cron_ticks (schedule_id, scheduled_for, outcome, reason, detail)
         select $1, t, 'skipped', $3, $4 from unnest($2::timestamptz[]) as t
         on conflict (schedule_id, scheduled_for) do nothing",
        &[&schedule_id, &ticks, &reason, &detail],
    )
    .await
}

/// What the scheduler needs to know to sleep after a pass; see [`next_run_at_bounds`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextRunAtBounds {
    /// The earliest `next_run_at` of an active schedule; one not yet planned (another daemon is
    /// planning it) counts as due at `now`.
    pub earliest: Option<DateTime<Utc>>,
    /// Active schedules due by the horizon (the end of the fire-ahead window).
    pub in_window: i64,
    /// The earliest `next_run_at` after the horizon.
    pub beyond: Option<DateTime<Utc>>,
}

/// When the scheduler next has work, as of `now` with the fire-ahead window ending at `horizon`.
pub async fn next_run_at_bounds(
    client: &Client,
    now: DateTime<Utc>,
    horizon: DateTime<Utc>,
) -> Result<NextRunAtBounds, tokio_postgres::Error> {
    let _timed = super::timed("next_run_at_bounds");
    let row = client
        .query_one(
            // Each part an index probe of app_cron_schedules_due_idx (which holds nulls too).
            "select case when exists (select 1 from public.app_cron_schedules
                                       where is_active and next_run_at is null) then $1
                        else (select min(next_run_at) from public.app_cron_schedules where is_active)
                   end,
                   (select count(*) from public.app_cron_schedules
                     where is_active and next_run_at <= $2),
                   (select min(next_run_at) from public.app_cron_schedules
                     where is_active and next_run_at > $2)",
            &[&now, &horizon],
        )
        .await?;
    Ok(NextRunAtBounds {
        earliest: row.get(0),
        in_window: row.get(1),
        beyond: row.get(2),
    })
}
