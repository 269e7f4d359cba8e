//! The timer of an attempt: each phase's wall-clock time, logged once at its end as
//! `run phases` (`phases_ms` by name).

use std::time::{Duration, Instant};

/// Wall-clock time of each phase of an attempt, logged once at its end (`run phases`).
pub(super) struct Phases {
    run_id: uuid::Uuid,
    last: Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Phases {
    pub(super) fn start(run_id: uuid::Uuid) -> Self {
        Self {
            run_id,
            last: Instant::now(),
            took: Vec::new(),
        }
    }

    /// Ends `phase`; returns how long it took.
    pub(super) fn done(&mut self, phase: &'static str) -> Duration {
        let now = Instant::now();
        let took = now - self.last;
        self.took.push((phase, took));
        self.last = now;
        took
    }

    pub(super) fn report(&self) {
        let ms: serde_json::Map<String, serde_json::Value> = self
            .took
            .iter()
            .map(|(phase, d)| {
                (
                    (*phase).to_owned(),
                    (d.as_secs_f64() * 1000.0).round().into(),
                )
            })
            .collect();
        tracing::info!(run_id = %self.run_id, phases_ms = %serde_json::Value::Object(ms), "run phases");
    }
}
