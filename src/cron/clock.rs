//! Where the scheduler's time comes from. Production uses [`DatabaseClock`]: the host's clock
//! corrected to the database server's, so that daemons whose hosts disagree on the time still
//! fire each tick at one instant (the database's, which `run_after`, leases and every
//! `now()` in SQL use too). Tests drive a [`ManualClock`] explicitly, so no test asserts timing
//! by sleeping.
//!
//! Owns only "what time is it" and "wake me at"; it must not know about schedules.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A future returned by [`Clock::sleep_until`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of the current instant that can also wait for a later one.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Completes once `now() >= deadline` (at once if it already is). Cancel-safe: dropping
    /// the future just stops waiting.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_>;
}

/// The wall clock. Sleeps are tokio timers, so a clock step (NTP) is noticed at the next wake;
/// the scheduler's `max_sleep` bounds how late that can be.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        let wait = (deadline - Utc::now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// The host's clock plus the offset to the database server's clock, kept up to date by
/// [`DatabaseClock::keep_in_step`]. Sleeps are tokio timers on the corrected time.
#[derive(Debug, Default, Clone)]
pub struct DatabaseClock {
    /// Database time minus host time, in microseconds.
    offset_micros: Arc<std::sync::atomic::AtomicI64>,
}

/// A host clock this far from the database's is reported (cron follows the database anyway).
const SKEW_WARNING: chrono::Duration = chrono::Duration::seconds(1);

impl DatabaseClock {
    /// The offset of the database's clock from this host's: one `clock_timestamp()` read,
    /// taken as the midpoint of its round trip.
    pub async fn measure(
        pool: &deadpool_postgres::Pool,
    ) -> Result<chrono::Duration, crate::db::DbError> {
        let sent = Utc::now();
        let database = crate::db::database_time(pool).await?;
        let received = Utc::now();
        Ok(offset_from(sent, database, received))
    }

    pub fn set_offset(&self, offset: chrono::Duration) {
        self.offset_micros.store(
            offset.num_microseconds().unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn offset(&self) -> chrono::Duration {
        chrono::Duration::microseconds(self.offset_micros.load(Ordering::Relaxed))
    }

    /// Measures the offset now and then every `every` until `stop`; a failed measurement keeps
    /// the last one. Logs when the host's clock is off by more than a second.
    pub async fn keep_in_step(
        self,
        pool: deadpool_postgres::Pool,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut warned = false;
        loop {
            match Self::measure(&pool).await {
                Ok(offset) => {
                    self.set_offset(offset);
                    let off = offset.abs() > SKEW_WARNING;
                    if off && !warned {
                        tracing::warn!(offset_ms = offset.num_milliseconds(), "this host's clock is off from the database's; cron fires by the database's clock");
                    }
                    warned = off;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not read the database's clock; keeping the last offset")
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// Database time minus host time, from a read sent at `sent` and answered by `received`.
fn offset_from(
    sent: DateTime<Utc>,
    database: DateTime<Utc>,
    received: DateTime<Utc>,
) -> chrono::Duration {
    let midpoint = sent + (received - sent) / 2;
    database - midpoint
}

impl Clock for DatabaseClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        let wait = (deadline - self.now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock for tests: time stands still until [`ManualClock::advance`] or
/// [`ManualClock::set`] moves it, and then every sleeper whose deadline has passed wakes.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
    sleepers: Arc<AtomicUsize>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(start)),
            sleepers: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        self.now.send_replace(at);
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.now.send_modify(|now| *now += by);
    }

    /// How many `sleep_until` futures are waiting right now. A test waits for its schedulers
    /// to be asleep (their pass finished) before it moves time or inspects the database.
    pub fn sleepers(&self) -> usize {
        self.sleepers.load(Ordering::SeqCst)
    }
}

/// Decrements the sleeper count however the sleep ends (deadline reached or future dropped).
struct SleeperGuard(Arc<AtomicUsize>);

impl Drop for SleeperGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let guard = SleeperGuard(self.sleepers.clone());
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            let _guard = guard;
            // The sender lives as long as `self`, which this future borrows.
            let _ = rx.wait_for(|now| *now >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_offset_is_taken_at_the_round_trips_midpoint() {
        let sent = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let received = sent + chrono::Duration::milliseconds(20);
        // The host is 10 minutes ahead of the database.
        let database = sent + chrono::Duration::milliseconds(10) - chrono::Duration::minutes(10);
        assert_eq!(
            super::offset_from(sent, database, received),
            -chrono::Duration::minutes(10)
        );
        let clock = super::DatabaseClock::default();
        clock.set_offset(-chrono::Duration::minutes(10));
        let behind = Utc::now() - chrono::Duration::minutes(10) - clock.now();
        assert!(behind.num_seconds().abs() < 5, "{behind}");
    }

    use super::*;

    #[tokio::test]
    async fn a_manual_sleeper_wakes_only_when_time_passes_its_deadline() {
        let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = ManualClock::new(start);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move {
                clock
                    .sleep_until(start + chrono::Duration::seconds(10))
                    .await
            })
        };
        while clock.sleepers() == 0 {
            tokio::task::yield_now().await;
        }
        clock.advance(chrono::Duration::seconds(9));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!sleeper.is_finished(), "woke before its deadline");
        clock.advance(chrono::Duration::seconds(1));
        sleeper.await.unwrap();
        assert_eq!(clock.sleepers(), 0);
        // A deadline already passed does not wait at all.
        clock.sleep_until(start).await;
    }
}
