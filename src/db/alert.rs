//! Alert events as `NOTIFY`: the channel is `<namespace>_events`, named by the database's own
//! `app_exec.notify_channel`, like every other channel of ours.

use deadpool_postgres::Pool;

use super::queue::{client, query, QueueError};

/// Sends `payload` (an event's JSON document, under 8000 bytes) on `<namespace>_events`.
pub async fn notify_event(pool: &Pool, payload: &str) -> Result<(), QueueError> {
    let client = client(pool, "sending an alert").await?;
    client
        .execute(
            "select pg_notify(app_exec.notify_channel('events'), $1)",
            &[&payload],
        )
        .await
        .map_err(query("notify an alert event"))?;
    Ok(())
}
