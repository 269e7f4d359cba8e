//! Alert events in the database: `NOTIFY <namespace>_events` (the channel named by the
//! database's own `app_exec.notify_channel`, like every other channel of ours) and the webhook
//! outbox `app_exec.alert_outbox`. Both are written inside the transaction of the run ending
//! that raised the alert ([`raise`]), so an alert goes out exactly when that ending commits.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use uuid::Uuid;

use super::queue::{client, interval, query, QueueError};

/// An alert to raise with a run ending, as the alerts module built it.
#[derive(Debug, Clone)]
pub struct Raised {
    /// `run_failed`, `run_oom`, ...
    pub event: &'static str,
    pub run_id: Uuid,
    /// The event's JSON document (under 8000 bytes, NOTIFY's limit).
    pub body: String,
    /// Send it as `NOTIFY <namespace>_events`.
    pub notify: bool,
    /// Queue it for the webhook, unless this many deliveries are already waiting.
    pub webhook_capacity: Option<i64>,
}

/// What [`raise`] did with an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub notified: bool,
    /// `Some(true)` queued for the webhook, `Some(false)` dropped (the outbox was full).
    pub queued: Option<bool>,
}

/// Sends `alert`'s NOTIFY and queues its webhook delivery, on `client`: the caller's open
/// transaction, so both take effect only if the run ending they report commits.
pub async fn raise(
    client: &impl GenericClient,
    alert: &Raised,
) -> Result<Recorded, tokio_postgres::Error> {
    let _timed = super::timed("raise");
    if alert.notify {
        client
            .execute(
                "select pg_notify(app_exec.notify_channel('events'), $1)",
                &[&alert.body],
            )
            .await?;
    }
    let queued = match alert.webhook_capacity {
        None => None,
        Some(capacity) => {
            // One writer at a time until commit, so the count below sees every earlier row and
            // the cap holds exactly (the lock's own statement comes first: a statement's
            // snapshot is taken before it waits). Only endings that raise alerts take it.
            client
                .execute(
                    "select pg_advisory_xact_lock(hashtextextended('app_exec.alert_outbox', 0))",
                    &[],
                )
                .await?;
            let n = client
                .execute(
                    "insert into app_exec.alert_outbox (event, run_id, body)
                     select $1, $2, $3
                      where (select count(*) from app_exec.alert_outbox) < $4",
                    &[&alert.event, &alert.run_id, &alert.body, &capacity],
                )
                .await?;
            Some(n == 1)
        }
    };
    Ok(Recorded {
        notified: alert.notify,
        queued,
    })
}

/// A webhook delivery taken from the outbox.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery id (`X-App-Executor-Delivery`), the same on every attempt.
    pub id: Uuid,
    pub event: String,
    pub run_id: Uuid,
    pub body: String,
    /// This attempt's number, the first being 1.
    pub attempt: i32,
}

/// Takes the oldest due delivery and holds it for `hold` (longer than one request), so no other
/// daemon sends it meanwhile; a daemon that dies holding it leaves it due again after `hold`.
pub async fn claim_delivery(pool: &Pool, hold: Duration) -> Result<Option<Claimed>, QueueError> {
    let _timed = super::timed("claim_delivery");
    let client = client(pool, "taking an alert from the outbox").await?;
    let row = client
        .query_opt(
            "update app_exec.alert_outbox o
                set attempts = o.attempts + 1, next_attempt_at = now() + $1::text::interval
              where o.id = (select id from app_exec.alert_outbox
                             where next_attempt_at <= now()
                             order by next_attempt_at
                             limit 1
                             for update skip locked)
          returning o.id, o.event, o.run_id, o.body, o.attempts",
            &[&interval(hold)],
        )
        .await
        .map_err(query("take an alert from the outbox"))?;
    Ok(row.map(|r| Claimed {
        id: r.get(0),
        event: r.get(1),
        run_id: r.get(2),
        body: r.get(3),
        attempt: r.get(4),
    }))
}

/// Removes a delivery that arrived or was given up on.
pub async fn remove_delivery(pool: &Pool, id: Uuid) -> Result<(), QueueError> {
    let _timed = super::timed("remove_delivery");
    let client = client(pool, "removing a sent alert").await?;
    client
        .execute("delete from app_exec.alert_outbox where id = $1", &[&id])
        .await
        .map_err(query("remove an alert from the outbox"))?;
    Ok(())
}

/// Makes a delivery due again after `wait`, recording why the attempt failed.
pub async fn retry_delivery(
    pool: &Pool,
    id: Uuid,
    wait: Duration,
    error: &str,
) -> Result<(), QueueError> {
    let _timed = super::timed("retry_delivery");
    let client = client(pool, "rescheduling an alert").await?;
    client
        .execute(
            "update app_exec.alert_outbox
                set next_attempt_at = now() + $2::text::interval, last_error = $3
              where id = $1",
            &[&id, &interval(wait), &error],
        )
        .await
        .map_err(query("reschedule an alert"))?;
    Ok(())
}

/// Webhook deliveries in the outbox, due or waiting for a retry.
pub async fn count_deliveries(pool: &Pool) -> Result<i64, QueueError> {
    let _timed = super::timed("count_deliveries");
    let client = client(pool, "counting waiting alerts").await?;
    let row = client
        .query_one("select count(*) from app_exec.alert_outbox", &[])
        .await
        .map_err(query("count waiting alerts"))?;
    Ok(row.get(0))
}
