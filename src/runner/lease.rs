//! One job's lease (a run's or a build's): renewing it while the job executes, and writing the
//! outcome afterwards. Both queues have the same lease columns; `queue` names the table.
//!
//! Renewal is fenced: if the row is no longer ours the execution is stopped at once (a client
//! cancelled it, or another daemon rescued it). If the database cannot be reached for longer
//! than the lease, we must assume another daemon has rescued the run, so the execution is
//! stopped too: two daemons must never both believe they own a run.
//! Outcome writes are retried on database errors until they land or turn out to match no row.
//! Only a final write that landed raises an alert (a fenced-out attempt's result is not ours to
//! report).

use std::future::Future;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::Stop;
use crate::alerts::Alerts;
use crate::db::queue::{self, Completion, LeaseState, Queue, QueueError};
use crate::model::{retry_delay, Job, Outcome, StopReason};
use crate::ops::metrics;
use crate::runner::settings::QueueSettings;

/// Renews the lease every heartbeat interval until aborted or the lease is gone. A failed
/// renewal is tried again soon (a quarter of the interval), not a whole interval later, so a
/// short database hiccup never lets the lease run out; an expired lease is never renewed (the
/// database refuses it: a rescuer may already own the run).
///
/// Self-fencing: the database may set the lease's end any time after a renewal is *sent*, so
/// the lease is taken to end `lease` after the last successful renewal was sent, and the job is
/// stopped a margin before that ([`fence_margin`]) when no renewal has landed: the container is
/// killed before a rescuer can claim the next attempt. Every renewal is bounded by the time
/// left, so a statement stuck on a dead connection cannot carry the job past its lease.
pub(super) async fn keep(
    pool: Pool,
    queue: Queue,
    executor_id: String,
    run_id: Uuid,
    attempt: i32,
    settings: QueueSettings,
    in_flight: Stop,
) {
    let margin = fence_margin(settings.lease);
    // The claim set the lease just before the job started: count from now, as for a renewal.
    let mut renewal_sent = Instant::now();
    let mut wait = settings.heartbeat_interval;
    loop {
        tokio::time::sleep(wait).await;
        wait = settings.heartbeat_interval;
        let fenced_at = renewal_sent + settings.lease.saturating_sub(margin);
        let sent = Instant::now();
        let left = fenced_at.saturating_duration_since(sent);
        let renewed = tokio::time::timeout(
            left,
            queue::extend_lease(&pool, queue, run_id, &executor_id, attempt, settings.lease),
        )
        .await;
        let error = match renewed {
            Ok(Ok(LeaseState::Held)) => {
                renewal_sent = sent;
                continue;
            }
            Ok(Ok(LeaseState::Cancelled)) => {
                tracing::info!(%run_id, "run cancelled by a client; stopping it");
                in_flight.stop_for(StopReason::Cancelled);
                return;
            }
            Ok(Ok(LeaseState::Lost)) => {
                tracing::warn!(%run_id, attempt, "lease lost (the run was rescued or finished elsewhere); abandoning it");
                in_flight.stop_for(StopReason::LeaseLost);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {left:?}"),
        };
        let left = fenced_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(%run_id, error, ?margin, "could not renew the lease; stopping the run before it expires, since another daemon may rescue it then");
            in_flight.stop_for(StopReason::LeaseLost);
            return;
        }
        wait = (settings.heartbeat_interval / 4)
            .max(Duration::from_millis(50))
            .min(left);
        tracing::warn!(%run_id, error, retry_in = ?wait, "lease renewal failed; retrying");
    }
}

/// How long before its end a lease that cannot be renewed is given up: time to kill the
/// container before anyone may rescue the job (a tenth of the lease, 200 ms to 2 s).
fn fence_margin(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(200), Duration::from_secs(2))
}

/// Writes what became of the job, fenced on `(executor_id, attempt)`.
pub(super) async fn record_outcome(
    pool: &Pool,
    executor_id: &str,
    job: &Job,
    settings: &QueueSettings,
    outcome: Outcome,
    reason: Option<StopReason>,
    alerts: &Alerts,
) {
    let run_id = job.id();
    let attempt = job.attempt();
    let queue = job.queue();
    let noun = queue.noun();
    match (reason, outcome) {
        (Some(StopReason::LeaseLost), _) => {
            metrics::lease_lost();
            tracing::warn!(%run_id, attempt, job = noun, "lease lost: the result of this attempt is discarded");
        }
        (Some(StopReason::Cancelled), _) => {
            metrics::job_cancelled(queue);
            let written = retry_write("record a cancellation", run_id, || {
                queue::record_cancellation(pool, queue, run_id, executor_id, attempt)
            })
            .await;
            if written {
                metrics::job_finished(queue, "cancelled", None);
            }
            tracing::info!(%run_id, job = noun, recorded = written, "cancelled");
        }
        (Some(StopReason::Shutdown), _) => {
            let released = retry_write("release an interrupted run", run_id, || {
                queue::release_run(
                    pool,
                    queue,
                    run_id,
                    executor_id,
                    attempt,
                    false,
                    Duration::ZERO,
                    None,
                )
            })
            .await;
            if released {
                metrics::run_released("shutdown");
            }
            tracing::info!(%run_id, job = noun, released, "interrupted by shutdown and returned to the queue (attempt not charged)");
        }
        (
            None,
            Outcome::Finished {
                status,
                error_kind,
                error_message,
                exit_code,
            },
        ) => {
            let completion = Completion {
                status,
                error_kind: error_kind.as_deref(),
                error_message: error_message.as_deref(),
                exit_code,
            };
            let written = write_final(
                "write the final status",
                pool,
                executor_id,
                job,
                &completion,
                alerts,
            )
            .await;
            let status = queue.final_status(status);
            if written {
                metrics::job_finished(queue, status, completion.error_kind);
                tracing::info!(%run_id, job = noun, status, error_kind = ?completion.error_kind, "finished");
            } else {
                settle_unwritten_finish(pool, executor_id, job).await;
            }
        }
        (
            None,
            Outcome::InfraFailure {
                error_kind,
                message,
            },
        ) => {
            if attempt < job.max_attempts() {
                let delay =
                    retry_delay(attempt, settings.retry_backoff, settings.retry_backoff_max);
                let released = retry_write("release a run for retry", run_id, || {
                    queue::release_run(
                        pool,
                        queue,
                        run_id,
                        executor_id,
                        attempt,
                        true,
                        delay,
                        Some((&error_kind, &message)),
                    )
                })
                .await;
                if released {
                    metrics::run_released("retry");
                }
                tracing::warn!(%run_id, job = noun, attempt, %error_kind, error = %message, retry_in = ?delay, released, "infrastructure failure; will be retried");
            } else {
                let completion = Completion {
                    status: crate::model::FinalStatus::Failed,
                    error_kind: Some(&error_kind),
                    error_message: Some(&message),
                    exit_code: None,
                };
                let written = write_final(
                    "fail a job out of attempts",
                    pool,
                    executor_id,
                    job,
                    &completion,
                    alerts,
                )
                .await;
                if written {
                    metrics::job_finished(queue, "failed", Some(&error_kind));
                }
                tracing::warn!(%run_id, job = noun, attempt, %error_kind, error = %message, written, "infrastructure failure on the last attempt; failed");
            }
        }
        (None, Outcome::Stopped) => {
            // The execution stopped without being told to: treat as an infrastructure failure.
            let released = retry_write("release a job that stopped by itself", run_id, || {
                queue::release_run(
                    pool,
                    queue,
                    run_id,
                    executor_id,
                    attempt,
                    true,
                    settings.retry_backoff,
                    Some((
                        "execution_stopped",
                        "the execution stopped without a reason",
                    )),
                )
            })
            .await;
            if released {
                metrics::run_released("stopped");
            }
            tracing::warn!(%run_id, job = noun, released, "execution stopped unexpectedly; released for retry");
        }
    }
}

/// A fenced final write matched no row: a client cancelled at the last moment (cancel wins; we
/// complete its record), or the lease is gone (keep nothing).
async fn settle_unwritten_finish(pool: &Pool, executor_id: &str, job: &Job) {
    let (id, attempt, queue) = (job.id(), job.attempt(), job.queue());
    let cancelled = retry_write("record a late cancellation", id, || {
        queue::record_cancellation(pool, queue, id, executor_id, attempt)
    })
    .await;
    if cancelled {
        metrics::job_cancelled(queue);
        metrics::job_finished(queue, "cancelled", None);
        tracing::info!(run_id = %id, job = queue.noun(), "cancelled as it finished; cancellation kept");
    } else {
        metrics::lease_lost();
        tracing::warn!(run_id = %id, job = queue.noun(), attempt, "final status not written: the lease was lost; result discarded");
    }
}

/// Writes a final status together with the alert it raises, if any (one transaction, so the
/// alert exists exactly when the ending does). Returns whether the write matched a row.
async fn write_final(
    what: &str,
    pool: &Pool,
    executor_id: &str,
    job: &Job,
    completion: &Completion<'_>,
    alerts: &Alerts,
) -> bool {
    let (run_id, attempt, queue) = (job.id(), job.attempt(), job.queue());
    let status = completion.status.as_str();
    // Alerts are about runs (their events name a company); a build's ending raises none.
    let raised = match job {
        Job::Run(run) => alerts.for_ending(
            run,
            executor_id,
            status,
            completion.error_kind,
            completion.error_message,
        ),
        Job::Build(_) => None,
    };
    match raised {
        None => {
            retry_write(what, run_id, || {
                queue::finish_run(pool, queue, run_id, executor_id, attempt, completion)
            })
            .await
        }
        Some(raised) => {
            let recorded = retry_write(what, run_id, || {
                queue::finish_run_raising(pool, run_id, executor_id, attempt, completion, &raised)
            })
            .await;
            if let Some(recorded) = recorded {
                alerts.raised(&raised, recorded);
            }
            recorded.is_some()
        }
    }
}

/// Retries a fenced write on database errors (outages, restarts) with capped backoff. Returns
/// what the write returned (whether it matched a row).
async fn retry_write<T, F, Fut>(what: &str, run_id: Uuid, mut write: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(matched) => return matched,
            Err(e) => {
                tracing::warn!(%run_id, error = %e, retry_in = ?backoff, "could not {what}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_given_up_a_tenth_early_within_bounds() {
        assert_eq!(
            fence_margin(Duration::from_secs(30)),
            Duration::from_secs(2)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(1)),
            Duration::from_millis(200)
        );
    }
}
