//! The LISTEN session: a dedicated connection that turns NOTIFY messages into wake-ups.
//!
//! Channels are `<namespace>_run_pending`, `<namespace>_run_cancelled`,
//! `<namespace>_schedule_changed` (see the `executor_queue` migration), and
//! `<namespace>_build_pending` / `<namespace>_build_cancelled` (`executor_builds`). Builds and
//! runs share one queue in the daemon, so their channels feed the same wake-ups: a build id and
//! a run id are both UUIDs and never collide. The session reconnects
//! with backoff when it drops; because notifications sent while it was down are lost, every
//! (re)connect wakes all waiters once so they look for themselves. Polling in the runner stays
//! on as the fallback either way.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::DatabaseUrl;

/// Where the listener delivers what it hears.
#[derive(Clone)]
pub struct Wakeups {
    /// A run or a build became pending (new or requeued).
    pub run_pending: Arc<Notify>,
    /// A schedule was created, changed or deleted.
    pub schedule_changed: Arc<Notify>,
    /// Ids of runs and builds a client cancelled.
    pub run_cancelled: mpsc::UnboundedSender<Uuid>,
}

/// Runs until `shutdown`; never returns an error (failures are logged and retried).
pub async fn listen(
    url: DatabaseUrl,
    connect_timeout: Duration,
    namespace: String,
    wakeups: Wakeups,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            lost = session(&url, connect_timeout, &namespace, &wakeups, &shutdown) => {
                match lost {
                    None => return,
                    Some(reason) => {
                        tracing::warn!(error = %reason, retry_in = ?backoff, "LISTEN session lost; polling covers the gap");
                    }
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One LISTEN session: returns `None` on shutdown, or why the session was lost.
async fn session(
    url: &DatabaseUrl,
    connect_timeout: Duration,
    namespace: &str,
    wakeups: &Wakeups,
    shutdown: &CancellationToken,
) -> Option<String> {
    let (mut config, tls) = match super::session_config(url, connect_timeout) {
        Ok(pair) => pair,
        Err(e) => return Some(e.to_string()),
    };
    config
        .application_name("app-executor listener")
        .keepalives_idle(Duration::from_secs(30));
    let (client, mut connection) = match config.connect(tls).await {
        Ok(pair) => pair,
        Err(e) => return Some(format!("cannot connect: {e}")),
    };
    let (tx, mut messages) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            let failed = message.is_err();
            if tx.send(message).is_err() || failed {
                break;
            }
        }
    });
    let pending = format!("{namespace}_run_pending");
    let cancelled = format!("{namespace}_run_cancelled");
    let schedules = format!("{namespace}_schedule_changed");
    let build_pending = format!("{namespace}_build_pending");
    let build_cancelled = format!("{namespace}_build_cancelled");
    let subscribed = client
        .batch_execute(&format!(
            "listen \"{pending}\"; listen \"{cancelled}\"; listen \"{schedules}\"; \
             listen \"{build_pending}\"; listen \"{build_cancelled}\""
        ))
        .await;
    if let Err(e) = subscribed {
        driver.abort();
        return Some(format!("LISTEN failed: {e}"));
    }
    tracing::debug!(%namespace, "listening for run and schedule notifications");
    // Anything sent while we were not listening is lost: make everyone look once.
    wakeups.run_pending.notify_waiters();
    wakeups.schedule_changed.notify_one();

    let lost = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break None,
            message = messages.recv() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let channel = n.channel();
                    if channel == pending || channel == build_pending {
                        wakeups.run_pending.notify_waiters();
                    } else if channel == cancelled || channel == build_cancelled {
                        let field = if channel == cancelled { "run_id" } else { "build_id" };
                        let run = serde_json::from_str::<serde_json::Value>(n.payload())
                            .ok()
                            .and_then(|v| v[field].as_str().and_then(|s| s.parse::<Uuid>().ok()));
                        if let Some(run) = run {
                            let _ = wakeups.run_cancelled.send(run);
                        }
                    } else if channel == schedules {
                        wakeups.schedule_changed.notify_one();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(e.to_string()),
                None => break Some("the server closed the session".to_owned()),
            }
        }
    };
    driver.abort();
    drop(client);
    lost
}
