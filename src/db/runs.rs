//! Statements of the operator CLI about single runs: create one, find an app's company, read a
//! run's state. (The daemon's own run statements are in [`super::queue`].)

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::queue::{client, query, QueueError};

/// Inserts a pending run (the daemons hear of it by NOTIFY) and returns its id.
pub async fn insert_run(
    pool: &Pool,
    app: Uuid,
    company: Uuid,
    run_type: &str,
    input: &serde_json::Value,
) -> Result<Uuid, QueueError> {
    let _timed = super::timed("insert_run");
    let client = client(pool, "enqueueing a run").await?;
    let row = client
        .query_one(
            "insert into public.app_runs (app_id, company_id, run_type, input_data)
             values ($1, $2, $3, $4) returning id",
            &[&app, &company, &run_type, input],
        )
        .await
        .map_err(query("insert a run"))?;
    Ok(row.get(0))
}

/// The companies an app is enabled for (`app_exec.company_apps`).
pub async fn companies_of_app(pool: &Pool, app: Uuid) -> Result<Vec<Uuid>, QueueError> {
    let _timed = super::timed("companies_of_app");
    let client = client(pool, "looking up an app's companies").await?;
    let rows = client
        .query(
            "select company_id from app_exec.company_apps where app_id = $1 order by company_id",
            &[&app],
        )
        .await
        .map_err(query("look up an app's companies"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether rows with these ids exist in `companies` / `applications`.
pub async fn tenant_exists(
    pool: &Pool,
    app: Uuid,
    company: Uuid,
) -> Result<(bool, bool), QueueError> {
    let _timed = super::timed("tenant_exists");
    let client = client(pool, "checking an app and a company").await?;
    let row = client
        .query_one(
            "select exists (select 1 from public.applications where id = $1),
                    exists (select 1 from public.companies where id = $2)",
            &[&app, &company],
        )
        .await
        .map_err(query("check an app and a company"))?;
    Ok((row.get(0), row.get(1)))
}

/// A run as the CLI shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunState {
    pub id: Uuid,
    pub app_id: Uuid,
    pub status: String,
    pub attempt: i32,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<i64>,
    pub logs_path: Option<String>,
    pub output_path: Option<String>,
}

impl RunState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            "success" | "failed" | "timeout" | "cancelled"
        )
    }
}

/// The run's current state, or `None` when there is no such run.
pub async fn run_state(pool: &Pool, run: Uuid) -> Result<Option<RunState>, QueueError> {
    let _timed = super::timed("run_state");
    let client = client(pool, "reading a run").await?;
    let row = client
        .query_opt(
            "select id, app_id, status, attempt, error_kind, error_message, exit_code, duration_ms,
                    logs_path, output_path
               from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .map_err(query("read a run"))?;
    Ok(row.map(|r| RunState {
        id: r.get(0),
        app_id: r.get(1),
        status: r.get(2),
        attempt: r.get(3),
        error_kind: r.get(4),
        error_message: r.get(5),
        exit_code: r.get(6),
        duration_ms: r.get(7),
        logs_path: r.get(8),
        output_path: r.get(9),
    }))
}

/// The demo's company and application (fixed ids), created when missing, and the app enabled
/// for the company.
pub async fn ensure_demo_tenant(pool: &Pool, company: Uuid, app: Uuid) -> Result<(), QueueError> {
    let _timed = super::timed("ensure_demo_tenant");
    let client = client(pool, "creating the demo tenant").await?;
    client
        .batch_execute(&format!(
            "insert into public.companies (id, name) values ('{company}', 'demo company') on conflict do nothing;
             insert into public.applications (id, name) values ('{app}', 'hello') on conflict do nothing;
             insert into app_exec.company_apps (company_id, app_id) values ('{company}', '{app}') on conflict do nothing;"
        ))
        .await
        .map_err(query("create the demo tenant"))
}

/// A cron schedule named `name` for the app (created once; later calls return the same row),
/// with its next planned fire time once the scheduler has planned it.
pub async fn ensure_schedule(
    pool: &Pool,
    app: Uuid,
    company: Uuid,
    name: &str,
    expression: &str,
    timezone: &str,
) -> Result<Uuid, QueueError> {
    let _timed = super::timed("ensure_schedule");
    let client = client(pool, "creating a schedule").await?;
    if let Some(row) = client
        .query_opt(
            "select id from public.app_cron_schedules where app_id = $1 and company_id = $2 and name = $3",
            &[&app, &company, &name],
        )
        .await
        .map_err(query("look up a schedule"))?
    {
        return Ok(row.get(0));
    }
    let row = client
        .query_one(
            "insert into public.app_cron_schedules (app_id, company_id, name, cron_expression, timezone)
             values ($1, $2, $3, $4, $5) returning id",
            &[&app, &company, &name, &expression, &timezone],
        )
        .await
        .map_err(query("create a schedule"))?;
    Ok(row.get(0))
}

/// A schedule's next planned fire time, if the scheduler has planned it.
pub async fn schedule_next_run(
    pool: &Pool,
    schedule: Uuid,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, QueueError> {
    let _timed = super::timed("schedule_next_run");
    let client = client(pool, "reading a schedule").await?;
    let row = client
        .query_one(
            "select next_run_at from public.app_cron_schedules where id = $1",
            &[&schedule],
        )
        .await
        .map_err(query("read a schedule"))?;
    Ok(row.get(0))
}

/// The run's `result` output (`/output/result.json`), if it wrote one.
pub async fn run_result(pool: &Pool, run: Uuid) -> Result<Option<serde_json::Value>, QueueError> {
    let _timed = super::timed("run_result");
    let client = client(pool, "reading a run's result").await?;
    let row = client
        .query_opt(
            "select output_data from public.app_outputs
              where run_id = $1 and output_type = 'result' order by created_at desc limit 1",
            &[&run],
        )
        .await
        .map_err(query("read a run's result"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Records on a running run (fenced by its claim) the resources it used at or above their
/// thresholds (`metadata.resource_thresholds`), and raises `alert` with it in one transaction.
/// `None` when the run is no longer this claim's (nothing written).
pub async fn record_thresholds(
    pool: &Pool,
    run: Uuid,
    executor_id: &str,
    attempt: i32,
    crossings: &serde_json::Value,
    alert: Option<&super::alert::Raised>,
) -> Result<Option<Option<super::alert::Recorded>>, QueueError> {
    let _timed = super::timed("record_thresholds");
    let mut client = client(pool, "recording a run's resource thresholds").await?;
    let tx = client
        .transaction()
        .await
        .map_err(query("begin recording resource thresholds"))?;
    let updated = tx
        .execute(
            "update public.app_runs
                set metadata = metadata || jsonb_build_object('resource_thresholds', $4::jsonb)
              where id = $1 and executor_id = $2 and attempt = $3 and status = 'running'",
            &[&run, &executor_id, &attempt, crossings],
        )
        .await
        .map_err(query("record resource thresholds"))?;
    if updated == 0 {
        return Ok(None);
    }
    let recorded = match alert {
        Some(alert) => Some(
            super::alert::raise(&tx, alert)
                .await
                .map_err(query("raise a resource_threshold alert"))?,
        ),
        None => None,
    };
    tx.commit()
        .await
        .map_err(query("commit resource thresholds"))?;
    Ok(Some(recorded))
}
