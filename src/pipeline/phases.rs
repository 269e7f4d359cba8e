//! The timer of an attempt: each phase's wall-clock time, logged once at its end as
//! `run phases` or `build phases` (`phases_ms` by name).

use std::time::{Duration, Instant};

/// Wall-clock time of each phase of an attempt, logged once at its end (`run phases`).
pub(super) struct Phases {
    run_id: uuid::Uuid,
    /// A build's attempt: logged as `build phases` with `build_id`.
    build: bool,
    last: Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Phases {
    pub(super) fn start(run_id: uuid::Uuid) -> Self {
        Self {
            run_id,
            build: false,
            last: Instant::now(),
            took: Vec::new(),
        }
    }

    pub(super) fn start_build(build_id: uuid::Uuid) -> Self {
        Self {
            build: true,
            ..Self::start(build_id)
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

    /// Milliseconds by phase, in order, as logged.
    pub(super) fn as_json(&self) -> serde_json::Value {
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
        serde_json::Value::Object(ms)
    }

    pub(super) fn report(&self) {
        let ms = self.as_json();
        if self.build {
            tracing::info!(build_id = %self.run_id, phases_ms = %ms, "build phases");
        } else {
            tracing::info!(run_id = %self.run_id, phases_ms = %ms, "run phases");
        }
    }
}
