//! Alerts: failed, timed-out, out-of-memory, rescued and security-relevant run endings go out as
//! `NOTIFY <namespace>_events` and, when configured, as signed POSTs to a webhook.
//!
//! - [`event`]: which endings raise an event, and its JSON document (pure).
//! - [`webhook`]: signing, and what one attempt's answer means.
//! - [`settings`]: the `[alerts]` section.
//!
//! An alert is raised inside the transaction of the run ending it reports
//! ([`crate::db::alert::raise`]): its NOTIFY goes out when that ending commits, and its webhook
//! delivery is a row of `app_exec.alert_outbox`, sent by whichever daemon with a webhook takes it
//! ([`start`]). A daemon that crashes, restarts or drains right after a run failed therefore
//! loses no alert, a receiver that is down gets its events when it is back (within
//! `max_attempts`), and raising never waits for the receiver. The outbox holds at most
//! `queue_capacity` deliveries; beyond that a new event skips the webhook with a warning (its
//! NOTIFY still goes out). Nothing here logs the webhook secret or the URL's path.

pub mod event;
pub mod settings;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use event::{classify, AlertEvent, EventKind};
pub use settings::{AlertSettings, WebhookSecret, WebhookSettings};
use webhook::{Delivery, Verdict, Webhook};

use crate::db;
use crate::db::alert::{Raised, Recorded};
use crate::model::ClaimedRun;
use crate::ops::metrics;

/// How long an attempt in flight may still finish after shutdown began (an unfinished one is
/// sent again by the next daemon, once its hold runs out).
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long past the request timeout a daemon holds a delivery it is sending.
const HOLD_MARGIN: Duration = Duration::from_secs(30);
/// How often an idle sender looks for deliveries other daemons queued or that became due.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The handle components raise events through: which sinks are on, and the local sender's
/// wake-up. Cheap to clone; [`Alerts::disabled`] raises nothing (tests, one-shot subcommands).
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    notify: bool,
    /// `Some(queue_capacity)` when a webhook is configured.
    webhook_capacity: Option<i64>,
    wake: Arc<Notify>,
}

impl Alerts {
    pub fn disabled() -> Self {
        Self::default()
    }

    /// The alert a run's final write raises, if any (see [`event::classify`]), to pass to the
    /// write so both commit together.
    pub fn for_ending(
        &self,
        run: &ClaimedRun,
        executor_id: &str,
        status: &str,
        error_kind: Option<&str>,
        error_message: Option<&str>,
    ) -> Option<Raised> {
        let kind = classify(status, error_kind)?;
        self.raise(AlertEvent {
            event: kind,
            run_id: run.id,
            app_id: run.app_id,
            company_id: run.company_id,
            status: status.to_owned(),
            error_kind: error_kind.map(str::to_owned),
            error_message: error_message.map(str::to_owned),
            attempt: run.attempt,
            executor_id: Some(executor_id.to_owned()),
            at: chrono::Utc::now(),
            thresholds: None,
        })
    }

    /// `run_rescued` for a run whose lease expired (requeued, or failed out of attempts); none
    /// for a build (it has no company to tell).
    pub fn for_rescue(&self, rescued: &db::queue::Rescued) -> Option<Raised> {
        self.raise(AlertEvent {
            event: EventKind::RunRescued,
            run_id: rescued.run_id,
            app_id: rescued.app_id,
            company_id: rescued.company_id?,
            status: rescued.status.clone(),
            error_kind: Some("lease_expired".into()),
            error_message: rescued.error_message.clone(),
            attempt: rescued.attempt,
            executor_id: rescued.previous_executor.clone(),
            at: chrono::Utc::now(),
            thresholds: None,
        })
    }

    /// `resource_threshold` for a run that used `crossings` (a JSON array) of its limits, to
    /// write with its record (see `db::runs::record_thresholds`).
    pub fn for_thresholds(
        &self,
        run: &ClaimedRun,
        executor_id: &str,
        crossings: serde_json::Value,
    ) -> Option<Raised> {
        self.raise(AlertEvent {
            event: EventKind::ResourceThreshold,
            run_id: run.id,
            app_id: run.app_id,
            company_id: run.company_id,
            status: "running".to_owned(),
            error_kind: None,
            error_message: None,
            attempt: run.attempt,
            executor_id: Some(executor_id.to_owned()),
            at: chrono::Utc::now(),
            thresholds: Some(crossings),
        })
    }

    fn raise(&self, event: AlertEvent) -> Option<Raised> {
        if !self.notify && self.webhook_capacity.is_none() {
            return None;
        }
        Some(Raised {
            event: event.event.as_str(),
            run_id: event.run_id,
            body: event.to_json(),
            notify: self.notify,
            webhook_capacity: self.webhook_capacity,
        })
    }

    /// Accounts for an alert whose ending committed, and wakes the webhook sender for it.
    pub fn raised(&self, raised: &Raised, recorded: Recorded) {
        tracing::debug!(run_id = %raised.run_id, event = raised.event, "alert raised");
        if recorded.notified {
            metrics::alert_sent("notify", "sent");
        }
        match recorded.queued {
            Some(true) => self.wake.notify_one(),
            Some(false) => {
                metrics::alert_sent("webhook", "dropped");
                tracing::warn!(
                    run_id = %raised.run_id,
                    event = raised.event,
                    capacity = self.webhook_capacity,
                    "alert outbox full (alerts.queue_capacity deliveries waiting); event not queued for the webhook"
                );
            }
            None => {}
        }
    }
}

/// The webhook sender; [`AlertTasks::stop`] ends it.
pub struct AlertTasks {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Returns the handle to raise events through and, with a webhook configured, starts the task
/// that sends the outbox's deliveries. `http` is the client the webhook is POSTed with (built
/// by `app`).
pub fn start(settings: &AlertSettings, pool: Pool, http: reqwest::Client) -> (Alerts, AlertTasks) {
    let stop = CancellationToken::new();
    let alerts = Alerts {
        notify: settings.notify,
        webhook_capacity: settings
            .webhook
            .as_ref()
            .map(|_| i64::try_from(settings.queue_capacity).unwrap_or(i64::MAX)),
        wake: Arc::new(Notify::new()),
    };
    let mut tasks = Vec::new();
    if let Some(webhook_settings) = &settings.webhook {
        let webhook = Webhook {
            client: http,
            settings: webhook_settings.clone(),
        };
        tracing::info!(webhook = %webhook_settings.redacted_url(), signed = webhook_settings.secret.is_some(), "alerts go to a webhook");
        tasks.push(tokio::spawn(send_outbox(
            pool,
            webhook,
            alerts.wake.clone(),
            stop.clone(),
        )));
    }
    (alerts, AlertTasks { stop, tasks })
}

/// Sends due deliveries one at a time, oldest first, until `stop`; idles until woken by a local
/// ending or for [`POLL_INTERVAL`].
async fn send_outbox(pool: Pool, webhook: Webhook, wake: Arc<Notify>, stop: CancellationToken) {
    let hold = webhook.settings.timeout + HOLD_MARGIN;
    while !stop.is_cancelled() {
        match db::alert::claim_delivery(&pool, hold).await {
            Ok(Some(delivery)) => {
                send_one(&pool, &webhook, delivery).await;
                continue;
            }
            Ok(None) => match db::alert::count_deliveries(&pool).await {
                Ok(waiting) => metrics::set_alerts_waiting(waiting),
                Err(e) => tracing::warn!(error = %e, "could not count the alert outbox"),
            },
            Err(e) => tracing::warn!(error = %e, "could not read the alert outbox"),
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// One attempt at `delivery`, and what the outbox keeps of it.
async fn send_one(pool: &Pool, webhook: &Webhook, delivery: db::alert::Claimed) {
    let settings = &webhook.settings;
    let attempt = webhook
        .attempt(Delivery {
            id: delivery.id,
            event: &delivery.event,
            body: &delivery.body,
        })
        .await;
    let attempts = u32::try_from(delivery.attempt).unwrap_or(u32::MAX);
    let target = settings.redacted_url();
    let result = match attempt.verdict {
        Verdict::Delivered => {
            metrics::alert_sent("webhook", "sent");
            tracing::debug!(run_id = %delivery.run_id, delivery_id = %delivery.id, attempts, "alert delivered to the webhook");
            db::alert::remove_delivery(pool, delivery.id).await
        }
        Verdict::Retry if attempts < settings.max_attempts => {
            let wait = webhook::retry_wait(settings.retry_backoff, attempts, attempt.asked_wait);
            tracing::debug!(run_id = %delivery.run_id, delivery_id = %delivery.id, attempts, last = %attempt.last, retry_in = ?wait, "webhook attempt failed; retrying");
            db::alert::retry_delivery(pool, delivery.id, wait, &attempt.last).await
        }
        Verdict::Retry | Verdict::GiveUp => {
            metrics::alert_sent("webhook", "failed");
            tracing::warn!(run_id = %delivery.run_id, delivery_id = %delivery.id, event = %delivery.event, webhook = %target, attempts, last = %attempt.last, "alert not delivered to the webhook; giving up on it");
            db::alert::remove_delivery(pool, delivery.id).await
        }
    };
    if let Err(e) = result {
        // The hold runs out and the delivery is due again: sent once more at worst.
        tracing::warn!(delivery_id = %delivery.id, error = %e, "could not record a webhook attempt in the outbox");
    }
}

impl AlertTasks {
    /// Stops the sender, letting an attempt in flight finish for at most `grace`.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        let mut tasks = self.tasks;
        let all = futures_util::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                ?grace,
                "a webhook attempt was still in flight at shutdown; it stays in the outbox and is sent again later"
            );
            for task in &tasks {
                task.abort();
            }
        }
    }
}
