//! The gauges of what the buckets hold (`app_executor_storage_stored_bytes{bucket}` and
//! `_objects`), refreshed every `ops.storage_usage_interval` from the database: one aggregate
//! over `storage.objects` (Supabase backend) or over our own records (local backend); see
//! [`StoredSource`]. Every daemon exports the same figures, like the queue depth.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::status::{stored_per_bucket, StoredSource};
use crate::storage::{APP_LOGS_BUCKET, APP_STORAGE_BUCKET};

/// Refreshes the gauges now and every `interval` until `stop`.
pub async fn stored_loop(
    pool: Pool,
    source: StoredSource,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        match tokio::time::timeout(interval, stored_per_bucket(&pool, source)).await {
            Ok(Ok(buckets)) => {
                for stored in buckets {
                    let bucket = match stored.bucket.as_str() {
                        APP_STORAGE_BUCKET => APP_STORAGE_BUCKET,
                        APP_LOGS_BUCKET => APP_LOGS_BUCKET,
                        _ => continue,
                    };
                    super::metrics::set_stored(bucket, stored.bytes, stored.objects);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, ?source, "cannot count the bytes stored per bucket")
            }
            Err(_) => tracing::warn!(
                ?interval,
                ?source,
                "counting the bytes stored per bucket took longer than ops.storage_usage_interval"
            ),
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
