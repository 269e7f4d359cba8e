//! The daemon's Prometheus metrics: names, buckets, and one small function per event, so the
//! components that observe something (runner, blob cache, cron, sandbox, logs) record it without
//! knowing the exporter.
//!
//! Recording goes through the `metrics` facade: until [`install`] sets the global recorder (the
//! daemon does, other subcommands and unit tests do not) every function here is a no-op. Label
//! values are bounded sets (statuses, stable `error_kind` codes, phase and reason names), never
//! ids. Counters end in `_total`, durations are in seconds, sizes in bytes.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const RUNS_FINISHED: &str = "app_executor_runs_finished_total";
pub const BUILDS_FINISHED: &str = "app_executor_builds_finished_total";
pub const RUNS_CLAIMED: &str = "app_executor_runs_claimed_total";
pub const RUNS_RESCUED: &str = "app_executor_runs_rescued_total";
pub const RUNS_RELEASED: &str = "app_executor_runs_released_total";
pub const LEASE_LOSSES: &str = "app_executor_lease_losses_total";
pub const CANCELLATIONS: &str = "app_executor_cancellations_total";
pub const PHASE_DURATION: &str = "app_executor_phase_duration_seconds";
pub const QUEUE_DEPTH: &str = "app_executor_queue_depth";
pub const RUNS_RUNNING: &str = "app_executor_runs_running";
pub const RUN_SLOTS: &str = "app_executor_run_slots";
pub const BLOB_CACHE_HITS: &str = "app_executor_blob_cache_hits_total";
pub const BLOB_CACHE_MISSES: &str = "app_executor_blob_cache_misses_total";
pub const BLOB_DOWNLOADED_BYTES: &str = "app_executor_blob_downloaded_bytes_total";
pub const LOG_BYTES: &str = "app_executor_log_bytes_total";
pub const OOM_KILLS: &str = "app_executor_oom_kills_total";
pub const CRON_FIRES: &str = "app_executor_cron_fires_total";
pub const CRON_SKIPS: &str = "app_executor_cron_skips_total";
pub const CRON_LAG: &str = "app_executor_cron_fire_lag_seconds";
pub const BUILD_INFO: &str = "app_executor_build_info";
pub const ALERTS: &str = "app_executor_alerts_total";
pub const ALERTS_WAITING: &str = "app_executor_alerts_waiting";
pub const RETENTION_DELETED: &str = "app_executor_retention_deleted_total";
pub const DATABASE_UP: &str = "app_executor_database_up";
pub const CLAIM_LOOP_AGE: &str = "app_executor_claim_loop_tick_age_seconds";
pub const STATE_DIR_FREE: &str = "app_executor_state_dir_free_bytes";
pub const STATE_DIR_SIZE: &str = "app_executor_state_dir_size_bytes";
pub const WEBHOOK_REQUESTS: &str = "app_executor_webhook_requests_total";
pub const WEBHOOK_DURATION: &str = "app_executor_webhook_request_duration_seconds";
pub const STORAGE_DURATION: &str = "app_executor_storage_request_duration_seconds";
pub const STORAGE_BYTES: &str = "app_executor_storage_bytes_total";
pub const STORED_BYTES: &str = "app_executor_storage_stored_bytes";
pub const STORED_OBJECTS: &str = "app_executor_storage_stored_objects";
pub const DB_STATEMENT_DURATION: &str = crate::db::STATEMENT_DURATION;

/// Upper bounds of the phase duration buckets, in seconds: from a cached prepare (milliseconds)
/// to the longest run a host allows (30 minutes by default).
pub const PHASE_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];
/// Upper bounds of the cron lag buckets, in seconds: on time is well under a second; catch-up
/// after downtime shows as minutes to a day.
pub const CRON_LAG_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// Upper bounds of the webhook request buckets, in seconds: a 202 takes milliseconds; a
/// `?wait` request lasts as long as its run.
pub const WEBHOOK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of the storage and database latency buckets, in seconds: a local statement or
/// a cached request takes a millisecond; a slow server or a large upload, seconds.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A phase of a run, the `phase` label of [`PHASE_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// From the run's creation to its claim (`started_at - created_at`; a retry's wait includes
    /// its earlier attempts and backoff).
    ClaimWait,
    /// Resolving, downloading, verifying and laying out the app's files.
    Prepare,
    /// Installing dependencies (`pnpm install`) in the install container.
    Install,
    /// The app's own container, from start to exit.
    Run,
    /// From the claim to the outcome written, on this daemon.
    Total,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::ClaimWait => "claim_wait",
            Phase::Prepare => "prepare",
            Phase::Install => "install",
            Phase::Run => "run",
            Phase::Total => "total",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(String),
}

/// Installs the Prometheus recorder as the process's global recorder (once; later calls return
/// the same handle) and describes every metric. The handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = builder()
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Counters without labels exist from the start at 0, so rules such as
            // `increase(…[15m]) > 0` see the first event (a series that appears with its first
            // increment has no earlier sample to increase from).
            for name in [
                RUNS_CLAIMED,
                LEASE_LOSSES,
                CANCELLATIONS,
                OOM_KILLS,
                BLOB_CACHE_HITS,
                BLOB_CACHE_MISSES,
                BLOB_DOWNLOADED_BYTES,
                CRON_FIRES,
            ] {
                counter!(name).absolute(0);
            }
            for outcome in ["requeued", "failed"] {
                counter!(RUNS_RESCUED, "outcome" => outcome).absolute(0);
            }
            for reason in ["retry", "shutdown", "stopped"] {
                counter!(RUNS_RELEASED, "reason" => reason).absolute(0);
            }
            for (sink, outcome) in [
                ("notify", "sent"),
                ("webhook", "sent"),
                ("webhook", "failed"),
                ("webhook", "dropped"),
            ] {
                counter!(ALERTS, "sink" => sink, "outcome" => outcome).absolute(0);
            }
            gauge!(ALERTS_WAITING).set(0.0);
            Ok(handle)
        })
        .clone()
        .map_err(MetricsError::Install)
}

/// The exporter configuration: true histograms (not summaries) with explicit buckets.
pub fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(PHASE_DURATION.into()), PHASE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(CRON_LAG.into()), CRON_LAG_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(WEBHOOK_DURATION.into()), WEBHOOK_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STORAGE_DURATION.into()), REQUEST_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(DB_STATEMENT_DURATION.into()), REQUEST_BUCKETS)
}

fn describe() {
    describe_histogram!(
        STORAGE_DURATION,
        metrics::Unit::Seconds,
        "Storage requests by op (download: to the first byte; upload, list, delete, head, buckets), bucket (app-storage, app-logs, other) and outcome (ok, not_found, denied, unavailable, rejected, error)"
    );
    describe_counter!(
        STORAGE_BYTES,
        metrics::Unit::Bytes,
        "Bytes received (op=download) and sent (op=upload) from and to storage, by bucket"
    );
    describe_gauge!(
        STORED_BYTES,
        metrics::Unit::Bytes,
        "Bytes stored per bucket (all daemons' objects), refreshed every ops.usage_interval"
    );
    describe_gauge!(
        STORED_OBJECTS,
        "Objects stored per bucket, refreshed every ops.usage_interval"
    );
    describe_histogram!(
        DB_STATEMENT_DURATION,
        metrics::Unit::Seconds,
        "Database statements (or the short transaction one names) by statement, including the wait for a pooled connection"
    );
    describe_gauge!(
        DATABASE_UP,
        "1 when the last queue-depth query (every ops.status_interval) succeeded, else 0"
    );
    describe_gauge!(
        CLAIM_LOOP_AGE,
        metrics::Unit::Seconds,
        "Time since the claim loop last made progress (what the systemd watchdog checks)"
    );
    describe_gauge!(
        STATE_DIR_FREE,
        metrics::Unit::Bytes,
        "Bytes available to the daemon on the file system of executor.state_dir"
    );
    describe_gauge!(
        STATE_DIR_SIZE,
        metrics::Unit::Bytes,
        "Size of the file system of executor.state_dir"
    );
    describe_counter!(
        WEBHOOK_REQUESTS,
        "Webhook trigger requests, by outcome (accepted, replayed, unauthorized, not_found, too_large, rate_limited, company_full, unavailable, bad_request)"
    );
    describe_histogram!(
        WEBHOOK_DURATION,
        metrics::Unit::Seconds,
        "Time to answer a webhook trigger request (a ?wait request includes its run)"
    );
    describe_counter!(
        RUNS_FINISHED,
        "Runs this daemon brought to a terminal status, by status and error_kind"
    );
    describe_counter!(
        BUILDS_FINISHED,
        "Builds this daemon brought to a terminal status, by status and error_kind"
    );
    describe_counter!(RUNS_CLAIMED, "Runs claimed from the queue");
    describe_counter!(
        RUNS_RESCUED,
        "Runs with an expired lease (any daemon's) rescued by this daemon, by outcome (requeued or failed)"
    );
    describe_counter!(
        RUNS_RELEASED,
        "Runs given back to the queue unfinished, by reason (retry, shutdown, stopped)"
    );
    describe_counter!(
        LEASE_LOSSES,
        "Runs abandoned because this daemon's lease on them was lost"
    );
    describe_counter!(
        CANCELLATIONS,
        "Runs stopped because a client cancelled them"
    );
    describe_histogram!(
        PHASE_DURATION,
        metrics::Unit::Seconds,
        "Duration of a run's phases (claim_wait, prepare, install, run, total)"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Pending runs in the queue (all daemons), refreshed every ops.status_interval"
    );
    describe_gauge!(RUNS_RUNNING, "Runs in flight on this daemon");
    describe_gauge!(
        RUN_SLOTS,
        "Runs this daemon executes at once (queue.max_concurrent_runs)"
    );
    describe_counter!(BLOB_CACHE_HITS, "App files served from the blob cache");
    describe_counter!(
        BLOB_CACHE_MISSES,
        "App files not in the blob cache (downloaded)"
    );
    describe_counter!(
        BLOB_DOWNLOADED_BYTES,
        metrics::Unit::Bytes,
        "Bytes of app files downloaded and verified into the blob cache"
    );
    describe_counter!(
        LOG_BYTES,
        metrics::Unit::Bytes,
        "Bytes of run logs captured, by stream"
    );
    describe_counter!(
        OOM_KILLS,
        "Run containers killed for exceeding their memory limit"
    );
    describe_counter!(CRON_FIRES, "Cron ticks fired as runs");
    describe_counter!(CRON_SKIPS, "Cron ticks skipped, by reason");
    describe_histogram!(
        CRON_LAG,
        metrics::Unit::Seconds,
        "How late a cron tick fired after its nominal time"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names this build");
    describe_counter!(
        ALERTS,
        "Alert events by sink (notify, webhook) and outcome (sent, failed, dropped)"
    );
    describe_gauge!(
        ALERTS_WAITING,
        "Webhook deliveries in the alert outbox (all daemons), refreshed when this daemon's sender is idle"
    );
    describe_counter!(
        RETENTION_DELETED,
        "What the retention policy deleted, by kind (log_objects, output_objects, output_rows, builds, version_objects, version_rows)"
    );
}

/// A storage request finished (see `storage::Metered`).
pub fn storage_request(
    op: &'static str,
    bucket: &'static str,
    outcome: &'static str,
    took: Duration,
) {
    histogram!(STORAGE_DURATION, "op" => op, "bucket" => bucket, "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// Bytes moved to (`upload`) or from (`download`) storage.
pub fn storage_bytes(op: &'static str, bucket: &'static str, bytes: u64) {
    counter!(STORAGE_BYTES, "op" => op, "bucket" => bucket).increment(bytes);
}

/// What a bucket holds now, as the database records it.
pub fn set_stored(bucket: &'static str, bytes: i64, objects: i64) {
    gauge!(STORED_BYTES, "bucket" => bucket).set(bytes as f64);
    gauge!(STORED_OBJECTS, "bucket" => bucket).set(objects as f64);
}

/// A run reached a terminal status on this daemon (`success`, `failed`, `timeout`,
/// `cancelled`); `error_kind` is `None` on success.
pub fn run_finished(status: &str, error_kind: Option<&str>) {
    counter!(
        RUNS_FINISHED,
        "status" => status.to_owned(),
        "error_kind" => error_kind.unwrap_or("none").to_owned()
    )
    .increment(1);
}

/// A run or build reached a terminal status on this daemon.
pub fn job_finished(queue: crate::model::Queue, status: &str, error_kind: Option<&str>) {
    match queue {
        crate::model::Queue::Runs => run_finished(status, error_kind),
        crate::model::Queue::Builds => counter!(
            BUILDS_FINISHED,
            "status" => status.to_owned(),
            "error_kind" => error_kind.unwrap_or("none").to_owned()
        )
        .increment(1),
    }
}

/// A run or build in flight was stopped because a client cancelled it (builds are counted in
/// [`BUILDS_FINISHED`] only).
pub fn job_cancelled(queue: crate::model::Queue) {
    if queue == crate::model::Queue::Runs {
        run_cancelled();
    }
}

/// A run was claimed; `queue_wait` is `started_at - created_at`.
pub fn run_claimed(queue_wait: Duration) {
    counter!(RUNS_CLAIMED).increment(1);
    phase_finished(Phase::ClaimWait, queue_wait);
}

/// Runs with expired leases were rescued: `requeued` back to pending, `failed` out of attempts.
pub fn runs_rescued(requeued: u64, failed: u64) {
    if requeued > 0 {
        counter!(RUNS_RESCUED, "outcome" => "requeued").increment(requeued);
    }
    if failed > 0 {
        counter!(RUNS_RESCUED, "outcome" => "failed").increment(failed);
    }
}

/// A run went back to the queue unfinished: `retry` (infrastructure failure), `shutdown`
/// (drain grace over) or `stopped` (the execution stopped by itself).
pub fn run_released(reason: &'static str) {
    counter!(RUNS_RELEASED, "reason" => reason).increment(1);
}

/// This daemon's lease on a run was lost; the run's result is discarded.
pub fn lease_lost() {
    counter!(LEASE_LOSSES).increment(1);
}

/// A running run was stopped because a client cancelled it.
pub fn run_cancelled() {
    counter!(CANCELLATIONS).increment(1);
}

/// One phase of a run took `duration`. The sandbox records [`Phase::Install`] and
/// [`Phase::Run`]; the runner records the others.
pub fn phase_finished(phase: Phase, duration: Duration) {
    histogram!(PHASE_DURATION, "phase" => phase.as_str()).record(duration.as_secs_f64());
}

/// An alert event left through `sink` (`notify`, `webhook`) with `outcome` (`sent`, `failed`
/// after its attempts, `dropped` because the queue was full or shutting down).
pub fn alert_sent(sink: &'static str, outcome: &'static str) {
    counter!(ALERTS, "sink" => sink, "outcome" => outcome).increment(1);
}

/// The retention policy deleted `count` things of `kind`.
/// Whether the database answered the last status query.
pub fn set_database_up(up: bool) {
    gauge!(DATABASE_UP).set(if up { 1.0 } else { 0.0 });
}

/// Time since the claim loop last made progress.
pub fn set_claim_loop_age(age: Duration) {
    gauge!(CLAIM_LOOP_AGE).set(age.as_secs_f64());
}

/// Free and total bytes of the state directory's file system.
pub fn set_state_dir_space(free: u64, size: u64) {
    gauge!(STATE_DIR_FREE).set(free as f64);
    gauge!(STATE_DIR_SIZE).set(size as f64);
}

/// One webhook trigger request answered.
pub fn webhook_request(outcome: &'static str, took: Duration) {
    counter!(WEBHOOK_REQUESTS, "outcome" => outcome).increment(1);
    histogram!(WEBHOOK_DURATION).record(took.as_secs_f64());
}

pub fn retention_deleted(kind: &'static str, count: u64) {
    if count > 0 {
        counter!(RETENTION_DELETED, "kind" => kind).increment(count);
    }
}

/// Webhook deliveries waiting in the alert outbox.
pub fn set_alerts_waiting(waiting: i64) {
    gauge!(ALERTS_WAITING).set(waiting as f64);
}

/// Pending runs in the queue.
pub fn set_queue_depth(pending: i64) {
    gauge!(QUEUE_DEPTH).set(pending as f64);
}

/// Runs in flight on this daemon, and its capacity.
pub fn set_running(running: usize, slots: usize) {
    gauge!(RUNS_RUNNING).set(running as f64);
    gauge!(RUN_SLOTS).set(slots as f64);
}

/// An app file was found in the blob cache.
pub fn blob_cache_hit() {
    counter!(BLOB_CACHE_HITS).increment(1);
}

/// An app file was not cached and had to be fetched.
pub fn blob_cache_miss() {
    counter!(BLOB_CACHE_MISSES).increment(1);
}

/// `bytes` of an app file were downloaded and verified into the cache.
pub fn blob_downloaded(bytes: u64) {
    counter!(BLOB_DOWNLOADED_BYTES).increment(bytes);
}

/// `bytes` of a run's log were captured on `stream` (`stdout`, `stderr`, `install`).
pub fn log_bytes(stream: &'static str, bytes: u64) {
    counter!(LOG_BYTES, "stream" => stream).increment(bytes);
}

/// A run's container was killed by the kernel for exceeding its memory limit.
pub fn oom_killed() {
    counter!(OOM_KILLS).increment(1);
}

/// A cron tick fired as a run, `lag` after its nominal time.
pub fn cron_fired(lag: Duration) {
    counter!(CRON_FIRES).increment(1);
    histogram!(CRON_LAG).record(lag.as_secs_f64());
}

/// `count` cron ticks were skipped for `reason` (`overlap`, `downtime`, `catch_up_cap`,
/// `invalid_schedule`).
pub fn cron_skipped(reason: &'static str, count: u64) {
    if count > 0 {
        counter!(CRON_SKIPS, "reason" => reason).increment(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_with(record: impl FnOnce()) -> String {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, record);
        handle.render()
    }

    #[test]
    fn phase_durations_render_as_histograms_with_the_configured_buckets() {
        let text = render_with(|| {
            phase_finished(Phase::Prepare, Duration::from_millis(300));
            run_claimed(Duration::from_secs(2));
        });
        assert!(
            text.contains("# TYPE app_executor_phase_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"app_executor_phase_duration_seconds_bucket{phase="prepare",le="0.5"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"app_executor_phase_duration_seconds_bucket{phase="prepare",le="0.25"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"app_executor_phase_duration_seconds_count{phase="claim_wait"} 1"#),
            "{text}"
        );
        assert!(text.contains("app_executor_runs_claimed_total 1"), "{text}");
    }

    #[test]
    fn outcomes_are_counted_by_status_and_error_kind() {
        let text = render_with(|| {
            run_finished("success", None);
            run_finished("failed", Some("oom_killed"));
            run_finished("failed", Some("oom_killed"));
            cron_skipped("overlap", 0);
            cron_fired(Duration::from_millis(40));
        });
        assert!(
            text.contains(
                r#"app_executor_runs_finished_total{status="failed",error_kind="oom_killed"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"app_executor_runs_finished_total{status="success",error_kind="none"} 1"#
            ),
            "{text}"
        );
        assert!(
            !text.contains("cron_skips"),
            "a zero skip count created a series: {text}"
        );
        assert!(
            text.contains(r#"app_executor_cron_fire_lag_seconds_bucket{le="0.1"} 1"#),
            "{text}"
        );
    }
}
