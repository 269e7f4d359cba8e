//! What the daemon is doing right now, shared between the runner (which writes it) and the
//! operations side (readiness, the watchdog, the `STATUS=` line, gauges), which only reads it.
//!
//! Plain atomics: the runner's hot path pays a relaxed store per event and never waits on a
//! reader.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The daemon's life cycle as readiness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Startup checks (database schema, Docker) not passed yet.
    Starting,
    /// Claiming and executing runs.
    Active,
    /// Shutdown requested: no new claims, runs in flight finishing.
    Draining,
    /// The runner has returned.
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Active => "active",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Phase::Starting,
            1 => Phase::Active,
            2 => Phase::Draining,
            _ => Phase::Stopped,
        }
    }
}

#[derive(Debug)]
pub struct DaemonStatus {
    phase: AtomicU8,
    running: AtomicUsize,
    capacity: usize,
    /// Milliseconds since `origin` of the claim loop's latest sign of life.
    last_tick_ms: AtomicU64,
    origin: Instant,
    /// Longest the claim loop may idle between two ticks, so the watchdog sees it alive; set
    /// once, before the runner starts, when a systemd watchdog is configured.
    max_idle: OnceLock<Duration>,
}

impl DaemonStatus {
    pub fn new(capacity: usize) -> Self {
        Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            running: AtomicUsize::new(0),
            capacity,
            last_tick_ms: AtomicU64::new(0),
            origin: Instant::now(),
            max_idle: OnceLock::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves the phase forward (never back: a drain is not undone).
    pub fn advance(&self, to: Phase) {
        self.phase.fetch_max(to as u8, Ordering::AcqRel);
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A run started executing on this daemon.
    pub fn run_started(&self) {
        let running = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        super::metrics::set_running(running, self.capacity);
    }

    /// A run's task ended (whatever became of the run).
    pub fn run_ended(&self) {
        let running = self
            .running
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        super::metrics::set_running(running, self.capacity);
    }

    /// The claim loop is alive: it is at the top of an iteration or about to make a bounded
    /// wait (a claim, the idle sleep). A loop stuck in an unbounded wait stops calling this.
    pub fn loop_ticked(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last_tick_ms.store(now, Ordering::Release);
    }

    /// How long ago the claim loop last ticked (since creation if it never did).
    pub fn since_last_tick(&self) -> Duration {
        let last = Duration::from_millis(self.last_tick_ms.load(Ordering::Acquire));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Caps the claim loop's idle wait (see [`DaemonStatus::idle_wait`]).
    pub fn set_max_idle(&self, max_idle: Duration) {
        let _ = self.max_idle.set(max_idle);
    }

    /// How long the claim loop may wait for work: `poll_interval`, shortened when a watchdog
    /// needs the loop to show life more often.
    pub fn idle_wait(&self, poll_interval: Duration) -> Duration {
        match self.max_idle.get() {
            Some(cap) => poll_interval.min(*cap),
            None => poll_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_only_moves_forward() {
        let status = DaemonStatus::new(4);
        assert_eq!(status.phase(), Phase::Starting);
        status.advance(Phase::Draining);
        status.advance(Phase::Active);
        assert_eq!(status.phase(), Phase::Draining);
    }

    #[test]
    fn the_idle_wait_is_capped_only_when_a_watchdog_asks() {
        let status = DaemonStatus::new(1);
        let poll = Duration::from_secs(5);
        assert_eq!(status.idle_wait(poll), poll);
        status.set_max_idle(Duration::from_millis(500));
        assert_eq!(status.idle_wait(poll), Duration::from_millis(500));
        assert_eq!(
            status.idle_wait(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn a_tick_resets_the_time_since_the_last_one() {
        let status = DaemonStatus::new(1);
        std::thread::sleep(Duration::from_millis(30));
        assert!(status.since_last_tick() >= Duration::from_millis(30));
        status.loop_ticked();
        assert!(status.since_last_tick() < Duration::from_millis(30));
    }
}
