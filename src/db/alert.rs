//! Alert events as `NOTIFY`: the channel is `<namespace>_events`, named by the database's own
//! `app_exec.notify_channel`, like every other channel of ours.

use deadpool_postgres::Pool;

use super::queue::QueueError;

/// Sends `payload` (an event's JSON document, under 8000 bytes) on `<namespace>_events`.
pub async fn notify_event(pool: &Pool, payload: &str) -> Result<(), QueueError> {
    let client = pool.get().await.map_err(|source| QueueError::Pool {
        action: "sending an alert",
        source,
    })?;
    client
        .execute(
            "select pg_notify(app_exec.notify_channel('events'), $1)",
            &[&payload],
        )
        .await
        .map_err(|source| QueueError::Query {
            action: "notify an alert event",
            source,
        })?;
    Ok(())
}
