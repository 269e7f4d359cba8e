//! The executor registry's statements (`app_executors`): a daemon registers, heartbeats and is
//! retired; the sweep asks which daemons are dead and which ran on this host. One function per
//! statement, named for its effect.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::queue::{client, interval, query, QueueError};

type Result<T, E = QueueError> = std::result::Result<T, E>;

/// Registers (or re-registers) this daemon in `app_executors`.
pub async fn register_executor(
    pool: &Pool,
    executor_id: &str,
    host: &str,
    version: &str,
    capacity: i32,
) -> Result<()> {
    let _timed = super::timed("register_executor");
    let client = client(pool, "registering the executor").await?;
    client
        .execute(
            "insert into public.app_executors (id, host, version, capacity, running, state)
             values ($1, $2, $3, $4, 0, 'active')
             on conflict (id) do update
               set host = excluded.host, version = excluded.version, capacity = excluded.capacity,
                   running = 0, state = 'active', started_at = now(), heartbeat_at = now()",
            &[&executor_id, &host, &version, &capacity],
        )
        .await
        .map_err(query("register in app_executors"))?;
    Ok(())
}

/// The executor's own heartbeat: liveness, how many runs it holds, and its state
/// (`active` | `draining` | `stopped`).
pub async fn heartbeat_executor(
    pool: &Pool,
    executor_id: &str,
    running: i32,
    state: &str,
) -> Result<()> {
    let _timed = super::timed("heartbeat_executor");
    let client = client(pool, "heartbeating the executor").await?;
    client
        .execute(
            "update public.app_executors set heartbeat_at = now(), running = $2, state = $3 where id = $1",
            &[&executor_id, &running, &state],
        )
        .await
        .map_err(query("update app_executors"))?;
    Ok(())
}

/// Executors among `ids` that are gone: stopped, or silent for longer than `stale_after`.
/// Ids this database does not know are not ours to judge and are left out.
pub async fn dead_executors(
    pool: &Pool,
    ids: &[String],
    stale_after: Duration,
) -> Result<Vec<String>> {
    let _timed = super::timed("dead_executors");
    let client = client(pool, "looking up executors").await?;
    let rows = client
        .query(
            "select id from public.app_executors
              where id = any($1)
                and (state = 'stopped' or heartbeat_at < now() - $2::text::interval)",
            &[&ids, &interval(stale_after)],
        )
        .await
        .map_err(query("look up dead executors"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Executors registered from `host` other than `except`, with their ids.
pub async fn executors_on_host(pool: &Pool, host: &str, except: &str) -> Result<Vec<String>> {
    let _timed = super::timed("executors_on_host");
    let client = client(pool, "looking up executors").await?;
    let rows = client
        .query(
            "select id from public.app_executors where host = $1 and id <> $2 and state <> 'stopped'",
            &[&host, &except],
        )
        .await
        .map_err(query("look up executors of this host"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Marks a dead executor stopped and expires the leases of the runs and builds it held, so the
/// next rescue pass requeues them instead of waiting out their leases. Returns the jobs
/// affected.
pub async fn retire_executor(pool: &Pool, executor_id: &str) -> Result<u64> {
    let _timed = super::timed("retire_executor");
    let client = client(pool, "retiring an executor").await?;
    client
        .execute(
            "update public.app_executors set state = 'stopped', running = 0 where id = $1",
            &[&executor_id],
        )
        .await
        .map_err(query("mark an executor stopped"))?;
    let runs = client
        .execute(
            "update public.app_runs set lease_expires_at = now()
              where executor_id = $1 and status = 'running' and lease_expires_at > now()",
            &[&executor_id],
        )
        .await
        .map_err(query("expire the leases of a dead executor"))?;
    let builds = client
        .execute(
            "update public.app_builds set lease_expires_at = now()
              where executor_id = $1 and build_status = 'building' and lease_expires_at > now()",
            &[&executor_id],
        )
        .await
        .map_err(query("expire the build leases of a dead executor"))?;
    Ok(runs + builds)
}
