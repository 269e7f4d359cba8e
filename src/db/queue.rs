//! The queue's statements: claim, lease, finish, release, rescue and the queue's counts (the
//! executor registry is [`super::executors`]). One function per statement, named for its
//! effect.
//!
//! Two tables are queues: `app_runs` and `app_builds` ([`Queue`]). They have the same lease
//! columns, so every statement after the claim serves both; only the claims differ (runs are
//! fair per company, builds per app).
//!
//! Every write after the claim is fenced on `(executor_id, attempt)` and the expected status;
//! a write that matches no row means the lease is gone, and callers must keep nothing.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::Row;
use uuid::Uuid;

use super::alert::{self, Raised, Recorded};
use crate::model::{ClaimedBuild, ClaimedRun, FinalStatus};

pub use crate::model::Queue;

/// The SQL names of a queue's table and status.
impl Queue {
    fn table(self) -> &'static str {
        match self {
            Queue::Runs => "public.app_runs",
            Queue::Builds => "public.app_builds",
        }
    }

    /// The status column.
    fn status(self) -> &'static str {
        match self {
            Queue::Runs => "status",
            Queue::Builds => "build_status",
        }
    }

    /// The status of work a daemon holds.
    fn running(self) -> &'static str {
        match self {
            Queue::Runs => "running",
            Queue::Builds => "building",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no database connection for {action}: {source}")]
    Pool {
        action: &'static str,
        #[source]
        source: deadpool_postgres::PoolError,
    },
    #[error("failed to {action}: {}", super::error_text(source))]
    Query {
        action: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

type Result<T, E = QueueError> = std::result::Result<T, E>;

/// A pooled connection, or a [`QueueError::Pool`] naming what it was for.
pub(crate) async fn client(pool: &Pool, action: &'static str) -> Result<deadpool_postgres::Client> {
    pool.get()
        .await
        .map_err(|source| QueueError::Pool { action, source })
}

/// Maps a statement's error to a [`QueueError::Query`] naming what it was doing.
pub(crate) fn query(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> QueueError {
    move |source| QueueError::Query { action, source }
}

/// Postgres `interval` from a duration, as text (`'1500 milliseconds'`).
pub(crate) fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

/// Caps the claim enforces.
#[derive(Debug, Clone)]
pub struct ClaimLimits {
    pub lease: Duration,
    pub company_cap: i32,
    pub app_cap: i32,
    /// Per-company overrides of `company_cap`, `{"<company uuid>": cap}`.
    pub company_caps: serde_json::Value,
}

fn claimed_run(row: &Row) -> ClaimedRun {
    ClaimedRun {
        id: row.get("id"),
        app_id: row.get("app_id"),
        company_id: row.get("company_id"),
        build_id: row.get("build_id"),
        run_type: row.get("run_type"),
        attempt: row.get("attempt"),
        max_attempts: row.get("max_attempts"),
        input_data: row.get("input_data"),
        metadata: row.get("metadata"),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
    }
}

/// What one claim statement took.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    pub runs: Vec<ClaimedRun>,
    /// Nothing was claimed, but only because a company or an app was passed over while
    /// another claim held its lock: runs are pending, so it is worth trying again shortly.
    pub contended: bool,
}

/// Claims up to `max_runs` eligible runs for `executor_id` in one statement (fairness and caps:
/// see the migration `executor_claim_batch`). Never waits for another claim's lock.
pub async fn claim_runs(
    pool: &Pool,
    executor_id: &str,
    limits: &ClaimLimits,
    max_runs: usize,
) -> Result<ClaimBatch> {
    let _timed = super::timed("claim_runs");
    let client = client(pool, "claiming runs").await?;
    let statement = client
        .prepare_cached("select * from app_exec.claim_runs($1, $2::text::interval, $3, $4, $5, $6)")
        .await
        .map_err(query("prepare a queue statement"))?;
    let rows = client
        .query(
            &statement,
            &[
                &executor_id,
                &interval(limits.lease),
                &i32::try_from(max_runs).unwrap_or(i32::MAX),
                &limits.company_cap,
                &limits.app_cap,
                &limits.company_caps,
            ],
        )
        .await
        .map_err(query("claim runs"))?;
    let mut batch = ClaimBatch::default();
    for row in &rows {
        // The function's marker for "passed over a busy lock": a row of nulls.
        if row.get::<_, Option<Uuid>>("id").is_none() {
            batch.contended = true;
        } else {
            batch.runs.push(claimed_run(row));
        }
    }
    Ok(batch)
}

/// Claims the next eligible run for `executor_id`, or `None` when nothing is eligible now (or
/// what is eligible is being claimed by another session right now).
pub async fn claim_next_run(
    pool: &Pool,
    executor_id: &str,
    limits: &ClaimLimits,
) -> Result<Option<ClaimedRun>> {
    Ok(claim_runs(pool, executor_id, limits, 1)
        .await?
        .runs
        .into_iter()
        .next())
}

fn claimed_build(row: &Row) -> ClaimedBuild {
    ClaimedBuild {
        id: row.get("id"),
        app_id: row.get("app_id"),
        version: row.get("build_version"),
        config: row.get("build_config"),
        attempt: row.get("attempt"),
        max_attempts: row.get("max_attempts"),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
    }
}

/// Claims the oldest pending build that is due and whose app has no build in progress (see
/// the migration `executor_builds`), or `None`.
pub async fn claim_next_build(
    pool: &Pool,
    executor_id: &str,
    lease: Duration,
) -> Result<Option<ClaimedBuild>> {
    let _timed = super::timed("claim_next_build");
    let client = client(pool, "claiming a build").await?;
    let statement = client
        .prepare_cached("select * from app_exec.claim_next_build($1, $2::text::interval)")
        .await
        .map_err(query("prepare a queue statement"))?;
    let row = client
        .query_opt(&statement, &[&executor_id, &interval(lease)])
        .await
        .map_err(query("claim the next build"))?;
    Ok(row.as_ref().map(claimed_build))
}

/// What a fenced lease extension found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Still ours and running; the lease was extended.
    Held,
    /// A client cancelled the run (it is still attributed to us).
    Cancelled,
    /// The run is no longer ours (rescued, finished elsewhere, or deleted).
    Lost,
}

/// Extends the lease of a run (or build) we hold; reports a cancellation or a lost lease
/// instead.
pub async fn extend_lease(
    pool: &Pool,
    queue: Queue,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
    lease: Duration,
) -> Result<LeaseState> {
    let _timed = super::timed("extend_lease");
    let client = client(pool, "extending a lease").await?;
    let (table, status, running) = (queue.table(), queue.status(), queue.running());
    let statement = client
        .prepare_cached(&format!(
            "update {table}
                set lease_expires_at = now() + $4::text::interval, heartbeat_at = now()
              where id = $1 and executor_id = $2 and attempt = $3 and {status} = '{running}'
                and lease_expires_at > now()"
        ))
        .await
        .map_err(query("prepare a queue statement"))?;
    let extended = client
        .execute(
            &statement,
            &[&run_id, &executor_id, &attempt, &interval(lease)],
        )
        .await
        .map_err(query("extend a run's lease"))?;
    if extended == 1 {
        return Ok(LeaseState::Held);
    }
    let cancelled = client
        .query_opt(
            &format!(
                "select 1 from {table}
                  where id = $1 and executor_id = $2 and attempt = $3 and {status} = 'cancelled'"
            ),
            &[&run_id, &executor_id, &attempt],
        )
        .await
        .map_err(query("check a run for cancellation"))?;
    Ok(if cancelled.is_some() {
        LeaseState::Cancelled
    } else {
        LeaseState::Lost
    })
}

/// The outcome fields written when a run ends.
#[derive(Debug, Clone)]
pub struct Completion<'a> {
    pub status: FinalStatus,
    pub error_kind: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub exit_code: Option<i32>,
}

/// The fenced final write: `$1` run, `$2` executor, `$3` attempt, `$4` status, `$5` error
/// kind, `$6` message, `$7` exit code.
fn finish_statement(queue: Queue) -> String {
    let (table, status, running) = (queue.table(), queue.status(), queue.running());
    format!(
        "update {table}
            set {status} = $4, completed_at = now(),
                duration_ms = (extract(epoch from now() - started_at) * 1000)::bigint,
                error_kind = $5, error_message = $6, exit_code = $7, lease_expires_at = null
          where id = $1 and executor_id = $2 and attempt = $3 and {status} = '{running}'"
    )
}

/// Writes a terminal status, fenced. `false` when the run is no longer ours (nothing written).
/// A successful build also becomes its app's current build when it is the newest successful
/// one (`app_exec.promote_current_build`), in the same transaction.
pub async fn finish_run(
    pool: &Pool,
    queue: Queue,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
    completion: &Completion<'_>,
) -> Result<bool> {
    let _timed = super::timed("finish_run");
    let mut client = client(pool, "finishing a run").await?;
    let statement = client
        .prepare_cached(&finish_statement(queue))
        .await
        .map_err(query("prepare a queue statement"))?;
    if queue == Queue::Runs {
        return execute_finish(
            &client,
            &statement,
            queue,
            run_id,
            executor_id,
            attempt,
            completion,
        )
        .await
        .map_err(query("write a run's final status"));
    }
    let tx = client
        .transaction()
        .await
        .map_err(query("begin a build's final write"))?;
    let matched = execute_finish(
        &tx,
        &statement,
        queue,
        run_id,
        executor_id,
        attempt,
        completion,
    )
    .await
    .map_err(query("write a build's final status"))?;
    if matched && completion.status == FinalStatus::Success {
        tx.execute(
            "select app_exec.promote_current_build(app_id) from public.app_builds where id = $1",
            &[&run_id],
        )
        .await
        .map_err(query("make a build its app's current build"))?;
    }
    tx.commit()
        .await
        .map_err(query("commit a build's final write"))?;
    Ok(matched)
}

/// [`finish_run`] for a run's ending that raises an alert: the final status and the alert
/// (NOTIFY, webhook outbox) commit together or not at all. `None` when the fence matched no row
/// (and nothing was raised).
pub async fn finish_run_raising(
    pool: &Pool,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
    completion: &Completion<'_>,
    raised: &Raised,
) -> Result<Option<Recorded>> {
    let _timed = super::timed("finish_run_raising");
    let mut client = client(pool, "finishing a run").await?;
    let tx = client
        .transaction()
        .await
        .map_err(query("begin a run's final write"))?;
    let finish = finish_statement(Queue::Runs);
    let matched = execute_finish(
        &tx,
        finish.as_str(),
        Queue::Runs,
        run_id,
        executor_id,
        attempt,
        completion,
    )
    .await
    .map_err(query("write a run's final status"))?;
    if !matched {
        return Ok(None);
    }
    let recorded = alert::raise(&tx, raised)
        .await
        .map_err(query("raise the alert of a run's ending"))?;
    tx.commit()
        .await
        .map_err(query("commit a run's final write"))?;
    Ok(Some(recorded))
}

/// Runs [`finish_statement`] (or its prepared form) on `client`; whether it matched the run.
async fn execute_finish<T>(
    client: &impl GenericClient,
    statement: &T,
    queue: Queue,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
    completion: &Completion<'_>,
) -> Result<bool, tokio_postgres::Error>
where
    T: ?Sized + tokio_postgres::ToStatement + Sync + Send,
{
    let status = queue.final_status(completion.status);
    let n = client
        .execute(
            statement,
            &[
                &run_id,
                &executor_id,
                &attempt,
                &status,
                &completion.error_kind,
                &completion.error_message,
                &completion.exit_code,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Completes the record of a run a client cancelled while we ran it: completion time and
/// duration (the status stays `cancelled`). Fenced like every write.
pub async fn record_cancellation(
    pool: &Pool,
    queue: Queue,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
) -> Result<bool> {
    let _timed = super::timed("record_cancellation");
    let client = client(pool, "recording a cancellation").await?;
    let (table, status) = (queue.table(), queue.status());
    let n = client
        .execute(
            &format!(
                "update {table}
                    set completed_at = coalesce(completed_at, now()),
                        duration_ms = (extract(epoch from coalesce(completed_at, now()) - started_at) * 1000)::bigint,
                        error_kind = coalesce(error_kind, 'cancelled'), lease_expires_at = null
                  where id = $1 and executor_id = $2 and attempt = $3 and {status} = 'cancelled'"
            ),
            &[&run_id, &executor_id, &attempt],
        )
        .await
        .map_err(query("record a run's cancellation"))?;
    Ok(n == 1)
}

/// Puts a run we hold back to `pending`. `charge_attempt = false` (shutdown) gives the attempt
/// back; `delay` postpones the next claim (retry backoff). Fenced.
// The fence (queue, id, executor, attempt) is four of the eight.
#[allow(clippy::too_many_arguments)]
pub async fn release_run(
    pool: &Pool,
    queue: Queue,
    run_id: Uuid,
    executor_id: &str,
    attempt: i32,
    charge_attempt: bool,
    delay: Duration,
    reason: Option<(&str, &str)>,
) -> Result<bool> {
    let _timed = super::timed("release_run");
    let client = client(pool, "releasing a run").await?;
    let (kind, message) = reason.unzip();
    let (table, status, running) = (queue.table(), queue.status(), queue.running());
    let n = client
        .execute(
            &format!(
                "update {table}
                    set {status} = 'pending', executor_id = null, lease_expires_at = null,
                        heartbeat_at = null, started_at = null,
                        attempt = case when $4 then attempt else attempt - 1 end,
                        run_after = now() + $5::text::interval,
                        error_kind = coalesce($6, error_kind), error_message = coalesce($7, error_message)
                  where id = $1 and executor_id = $2 and attempt = $3 and {status} = '{running}'"
            ),
            &[
                &run_id,
                &executor_id,
                &attempt,
                &charge_attempt,
                &interval(delay),
                &kind,
                &message,
            ],
        )
        .await
        .map_err(query("release a run"))?;
    Ok(n == 1)
}

/// A run (or build) rescued from an expired lease.
#[derive(Debug, Clone)]
pub struct Rescued {
    pub run_id: Uuid,
    pub previous_executor: Option<String>,
    /// `pending` (retried) or `failed` (attempts exhausted).
    pub status: String,
    pub app_id: Uuid,
    /// `None` for a build (builds belong to no company).
    pub company_id: Option<Uuid>,
    /// The attempt whose lease expired.
    pub attempt: i32,
    pub error_message: Option<String>,
}

/// Requeues (or fails, when attempts are exhausted) up to `limit` running runs whose lease
/// expired, and marks executors silent for `stale_after` as stopped. `alert_for` names the alert
/// each rescue raises; it is raised in the rescue's transaction (see [`alert::raise`]).
pub async fn rescue_expired_leases(
    pool: &Pool,
    queue: Queue,
    limit: i64,
    retry_delay: Duration,
    stale_after: Duration,
    alert_for: impl Fn(&Rescued) -> Option<Raised>,
) -> Result<Vec<(Rescued, Option<(Raised, Recorded)>)>> {
    let _timed = super::timed("rescue_expired_leases");
    let mut client = client(pool, "rescuing expired leases").await?;
    let tx = client
        .transaction()
        .await
        .map_err(query("begin a rescue"))?;
    let (table, status, running) = (queue.table(), queue.status(), queue.running());
    let company = match queue {
        Queue::Runs => "r.company_id",
        Queue::Builds => "null::uuid",
    };
    let rows = tx
        .query(
            &format!("with expired as (
               select id, executor_id from {table}
                where {status} = '{running}' and lease_expires_at < now()
                order by lease_expires_at
                limit $1
                for update skip locked
             )
             update {table} r
                set {status} = case when r.attempt >= r.max_attempts then 'failed' else 'pending' end,
                    error_kind = 'lease_expired',
                    error_message = format('the lease of executor %s expired during attempt %s (daemon crashed, hung or lost the database)', e.executor_id, r.attempt),
                    completed_at = case when r.attempt >= r.max_attempts then now() end,
                    run_after = now() + $2::text::interval,
                    executor_id = case when r.attempt >= r.max_attempts then r.executor_id end,
                    lease_expires_at = null, heartbeat_at = null,
                    started_at = case when r.attempt >= r.max_attempts then r.started_at end
               from expired e
              where r.id = e.id
             returning r.id, e.executor_id, r.{status}, r.app_id, {company}, r.attempt, r.error_message"),
            &[&limit, &interval(retry_delay)],
        )
        .await
        .map_err(query("rescue runs with expired leases"))?;
    let mut rescued = Vec::with_capacity(rows.len());
    for r in &rows {
        let run = Rescued {
            run_id: r.get(0),
            previous_executor: r.get(1),
            status: r.get(2),
            app_id: r.get(3),
            company_id: r.get(4),
            attempt: r.get(5),
            error_message: r.get(6),
        };
        let recorded = match alert_for(&run) {
            Some(raised) => {
                let recorded = alert::raise(&tx, &raised)
                    .await
                    .map_err(query("raise the alert of a rescue"))?;
                Some((raised, recorded))
            }
            None => None,
        };
        rescued.push((run, recorded));
    }
    tx.commit().await.map_err(query("commit a rescue"))?;
    client
        .execute(
            "update public.app_executors set state = 'stopped', running = 0
              where state <> 'stopped' and heartbeat_at < now() - $1::text::interval",
            &[&interval(stale_after)],
        )
        .await
        .map_err(query("mark silent executors stopped"))?;
    Ok(rescued)
}

/// Pending runs and builds, whether eligible now or waiting for a retry delay.
pub async fn count_pending_runs(pool: &Pool) -> Result<i64> {
    let _timed = super::timed("count_pending_runs");
    let client = client(pool, "counting pending runs").await?;
    let row = client
        .query_one(
            "select (select count(*) from public.app_runs where status = 'pending')
                  + (select count(*) from public.app_builds where build_status = 'pending')",
            &[],
        )
        .await
        .map_err(query("count pending runs"))?;
    Ok(row.get(0))
}

/// How long until the earliest pending run that is not claimable yet becomes claimable (its
/// `run_after` is in the future: a cron tick fired ahead, a retry's backoff); `None` when no
/// such run exists.
pub async fn time_until_next_waiting_run(pool: &Pool) -> Result<Option<Duration>> {
    let _timed = super::timed("time_until_next_waiting_run");
    let client = client(pool, "looking up the next waiting run").await?;
    let statement = client
        .prepare_cached(
            "select extract(epoch from least(
                      (select min(run_after) from public.app_runs
                        where status = 'pending' and run_after > now()),
                      (select min(run_after) from public.app_builds
                        where build_status = 'pending' and run_after > now())) - now())::float8",
        )
        .await
        .map_err(query("prepare a queue statement"))?;
    let row = client
        .query_one(&statement, &[])
        .await
        .map_err(query("look up the next waiting run"))?;
    Ok(row
        .get::<_, Option<f64>>(0)
        .map(|seconds| Duration::from_secs_f64(seconds.max(0.0))))
}

/// The namespace the database's NOTIFY triggers use.
pub async fn notify_namespace(pool: &Pool) -> Result<Option<String>> {
    let _timed = super::timed("notify_namespace");
    let client = client(pool, "reading the notify namespace").await?;
    let row = client
        .query_opt(
            "select value from app_exec.settings where key = 'notify_namespace'",
            &[],
        )
        .await
        .map_err(query("read app_exec.settings"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Of the attempts `(run or build, attempt)`, the ones still in flight: the run is `running`
/// (the build `building`) at that attempt (some daemon holds it, or held it until its lease
/// runs out).
pub async fn attempts_in_flight(
    pool: &Pool,
    runs: &[Uuid],
    attempts: &[i32],
) -> Result<Vec<(Uuid, i32)>> {
    let _timed = super::timed("attempts_in_flight");
    let client = client(pool, "looking up attempts").await?;
    let rows = client
        .query(
            "select r.id, r.attempt from public.app_runs r
               join unnest($1::uuid[], $2::int[]) as a(id, attempt)
                 on a.id = r.id and a.attempt = r.attempt
              where r.status = 'running'
             union all
             select b.id, b.attempt from public.app_builds b
               join unnest($1::uuid[], $2::int[]) as a(id, attempt)
                 on a.id = b.id and a.attempt = b.attempt
              where b.build_status = 'building'",
            &[&runs, &attempts],
        )
        .await
        .map_err(query("look up attempts in flight"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
