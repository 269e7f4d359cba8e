//! Where the scheduler's time comes from. Production uses [`SystemClock`]; tests drive a
//! [`ManualClock`] explicitly, so no test asserts timing by sleeping.
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
