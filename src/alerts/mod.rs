//! Alerts: failed, timed-out, out-of-memory, rescued and security-relevant run endings go out as
//! `NOTIFY <namespace>_events` and, when configured, as signed POSTs to a webhook.
//!
//! - [`event`]: which endings raise an event, and its JSON document (pure).
//! - [`webhook`]: signing and the bounded retry loop of one delivery.
//! - [`settings`]: the `[alerts]` section.
//!
//! Raising an event never waits: [`Alerts::emit`] puts it on a bounded queue per sink and
//! returns; one task per sink sends them in order. A full queue drops the new event with a
//! warning (and a metric), so a slow or dead receiver can never hold up a run's completion. On
//! shutdown the queues are worked off for at most [`DRAIN_GRACE`]; what is left is dropped with
//! a warning. Nothing here logs the webhook secret or the URL's path.

pub mod event;
pub mod settings;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use event::{classify, AlertEvent, EventKind};
pub use settings::{AlertSettings, WebhookSecret, WebhookSettings};
use webhook::{Delivery, DeliveryResult, Webhook};

use crate::db;
use crate::model::ClaimedRun;
use crate::ops::metrics;

/// How long queued events may still be sent after shutdown began.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The handle components raise events through. Cheap to clone; [`Alerts::disabled`] drops
/// everything (tests, one-shot subcommands).
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    notify: Option<mpsc::Sender<AlertEvent>>,
    webhook: Option<mpsc::Sender<Delivery>>,
}

impl Alerts {
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Queues `event` for every sink, without waiting.
    pub fn emit(&self, event: AlertEvent) {
        tracing::debug!(run_id = %event.run_id, app_id = %event.app_id, company_id = %event.company_id, event = event.event.as_str(), "alert raised");
        if let Some(webhook) = &self.webhook {
            let delivery = Delivery {
                id: uuid::Uuid::new_v4(),
                event: event.event,
                run_id: event.run_id,
                body: event.to_json(),
            };
            enqueue(webhook, delivery, "webhook", event.event);
        }
        if let Some(notify) = &self.notify {
            let kind = event.event;
            enqueue(notify, event, "notify", kind);
        }
    }

    /// Raises the event a run's final write implies, if any (see [`event::classify`]).
    pub fn run_ended(
        &self,
        run: &ClaimedRun,
        executor_id: &str,
        status: &str,
        error_kind: Option<&str>,
        error_message: Option<&str>,
    ) {
        if let Some(kind) = classify(status, error_kind) {
            self.emit(AlertEvent {
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
            });
        }
    }

    /// Raises `run_rescued` for a run whose lease expired (requeued, or failed out of attempts).
    pub fn run_rescued(&self, rescued: &db::queue::Rescued) {
        self.emit(AlertEvent {
            event: EventKind::RunRescued,
            run_id: rescued.run_id,
            app_id: rescued.app_id,
            company_id: rescued.company_id,
            status: rescued.status.clone(),
            error_kind: Some("lease_expired".into()),
            error_message: rescued.error_message.clone(),
            attempt: rescued.attempt,
            executor_id: rescued.previous_executor.clone(),
            at: chrono::Utc::now(),
        });
    }
}

fn enqueue<T>(queue: &mpsc::Sender<T>, item: T, sink: &'static str, event: EventKind) {
    match queue.try_send(item) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::alert_sent(sink, "dropped");
            tracing::warn!(
                sink,
                event = event.as_str(),
                "alert queue full; event dropped"
            );
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            metrics::alert_sent(sink, "dropped");
            tracing::warn!(
                sink,
                event = event.as_str(),
                "alerts are shutting down; event dropped"
            );
        }
    }
}

/// The sink tasks; [`AlertTasks::stop`] drains them.
pub struct AlertTasks {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts one task per configured sink and returns the handle to raise events through.
/// `http` is the client the webhook is POSTed with (built by `app`).
pub fn start(settings: &AlertSettings, pool: Pool, http: reqwest::Client) -> (Alerts, AlertTasks) {
    let stop = CancellationToken::new();
    let mut alerts = Alerts::default();
    let mut tasks = Vec::new();
    if settings.notify {
        let (tx, rx) = mpsc::channel::<AlertEvent>(settings.queue_capacity);
        alerts.notify = Some(tx);
        tasks.push(tokio::spawn(work_off(rx, stop.clone(), move |event| {
            let pool = pool.clone();
            async move {
                match db::alert::notify_event(&pool, &event.to_json()).await {
                    Ok(()) => metrics::alert_sent("notify", "sent"),
                    Err(e) => {
                        metrics::alert_sent("notify", "failed");
                        tracing::warn!(run_id = %event.run_id, event = event.event.as_str(), error = %e, "could not NOTIFY an alert");
                    }
                }
            }
        })));
    }
    if let Some(webhook_settings) = &settings.webhook {
        let (tx, rx) = mpsc::channel::<Delivery>(settings.queue_capacity);
        alerts.webhook = Some(tx);
        let webhook = Arc::new(Webhook {
            client: http,
            settings: webhook_settings.clone(),
        });
        let target = webhook_settings.redacted_url();
        tracing::info!(webhook = %target, signed = webhook_settings.secret.is_some(), "alerts go to a webhook");
        tasks.push(tokio::spawn(work_off(rx, stop.clone(), move |delivery| {
            let (webhook, target) = (webhook.clone(), target.clone());
            async move {
                match webhook.deliver(&delivery).await {
                    DeliveryResult::Delivered { attempts } => {
                        metrics::alert_sent("webhook", "sent");
                        tracing::debug!(run_id = %delivery.run_id, delivery_id = %delivery.id, attempts, "alert delivered to the webhook");
                    }
                    DeliveryResult::Failed { attempts, last } => {
                        metrics::alert_sent("webhook", "failed");
                        tracing::warn!(run_id = %delivery.run_id, delivery_id = %delivery.id, event = delivery.event.as_str(), webhook = %target, attempts, last = %last, "alert not delivered to the webhook");
                    }
                }
            }
        })));
    }
    (alerts, AlertTasks { stop, tasks })
}

/// Handles queued items one at a time, in order. Once `stop` fires, what is already queued is
/// still handled (the caller bounds that with its grace period).
async fn work_off<T, F, Fut>(mut queue: mpsc::Receiver<T>, stop: CancellationToken, mut handle: F)
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            item = queue.recv() => item,
        };
        match item {
            Some(item) => handle(item).await,
            None => return,
        }
    }
    queue.close();
    while let Some(item) = queue.recv().await {
        handle(item).await;
    }
}

impl AlertTasks {
    /// Stops taking events and sends what is queued, for at most `grace`; then gives up on the
    /// rest with a warning.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        let mut tasks = self.tasks;
        let all = futures_util::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                ?grace,
                "alerts still queued at shutdown were not all sent; giving up on them"
            );
            for task in &tasks {
                task.abort();
            }
        }
    }
}
