//! Per-hook rate limits: a token bucket per hook in this process, refilled at the hook's
//! `rate_limit_per_minute` and holding at most a tenth of it (at least one), so a sender may
//! burst briefly but not sustain more than its rate. Each listening daemon counts on its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Buckets kept at most; full buckets (idle hooks) are dropped beyond it.
const MAX_BUCKETS: usize = 10_000;

#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    /// Takes a token for `hook` at `now`; `Err(wait)` with the time until the next token when
    /// the bucket is empty.
    pub fn take(&self, hook: Uuid, per_minute: i32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(per_minute.max(1)) / 60.0;
        let capacity = (f64::from(per_minute.max(1)) / 10.0).ceil().max(1.0);
        let mut buckets = self
            .buckets
            .lock()
            .expect("the rate limiter does not panic");
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < capacity
            });
        }
        let bucket = buckets.entry(hook).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_gets_a_tenth_of_the_rate_then_one_token_per_interval() {
        let limits = RateLimits::default();
        let hook = Uuid::new_v4();
        let start = Instant::now();
        let accepted = (0..20)
            .filter(|_| limits.take(hook, 60, start).is_ok())
            .count();
        assert_eq!(accepted, 6);
        let wait = limits.take(hook, 60, start).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(limits
            .take(hook, 60, start + Duration::from_secs(1))
            .is_ok());
        // Another hook has its own bucket.
        assert!(limits.take(Uuid::new_v4(), 60, start).is_ok());
    }
}
