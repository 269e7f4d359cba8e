//! The `[cron]` configuration section: whether this daemon evaluates schedules, how long it
//! sleeps at most, the catch-up cap, batch size and how far ahead a tick may be fired.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{format_duration, parse_duration};

/// `[cron]`: the scheduler every daemon runs (see `cron::Scheduler`).
#[derive(Debug, Clone)]
pub struct CronSettings {
    /// Whether this daemon evaluates schedules at all (others sharing the database still do).
    pub enabled: bool,
    /// Longest sleep between passes even when nothing is due: bounds how late a missed wake
    /// (lost NOTIFY, clock step) is noticed.
    pub max_sleep: Duration,
    /// `catch_up = "all"` fires at most this many missed ticks; older ones are skipped.
    pub catch_up_cap: usize,
    /// Schedules planned or fired per transaction batch in one pass.
    pub batch_size: usize,
    /// How long before its nominal instant a tick may be fired: its run is inserted early with
    /// `run_after = scheduled_for`, so it is claimable at the instant itself rather than once
    /// the database has written it. Zero fires at the instant.
    pub fire_ahead: Duration,
}

/// The longest `cron.fire_ahead` accepted: a lead much beyond the time a pass takes only widens
/// the window in which an edit has to withdraw a run inserted ahead.
pub const MAX_FIRE_AHEAD: Duration = Duration::from_secs(60);

/// What the TOML file and the environment may contain under `[cron]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCron {
    enabled: bool,
    max_sleep: String,
    catch_up_cap: usize,
    batch_size: usize,
    fire_ahead: String,
}

impl Default for RawCron {
    fn default() -> Self {
        Self {
            enabled: true,
            max_sleep: "30s".into(),
            catch_up_cap: 100,
            batch_size: 1000,
            fire_ahead: "2s".into(),
        }
    }
}

impl CronSettings {
    /// Validates `[cron]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawCron, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        let max_sleep = parse_duration("cron.max_sleep", &raw.max_sleep, violations);
        let max_cap = super::scheduler::MAX_TICKS_PER_PASS;
        if !(1..=max_cap).contains(&raw.catch_up_cap) {
            violations.push(format!(
                "cron.catch_up_cap = {}: must be between 1 and {max_cap}",
                raw.catch_up_cap
            ));
        }
        if raw.batch_size == 0 {
            violations.push("cron.batch_size = 0: must be at least 1".to_owned());
        }
        let fire_ahead = match humantime::parse_duration(&raw.fire_ahead) {
            Ok(d) if d <= MAX_FIRE_AHEAD => d,
            Ok(_) => {
                violations.push(format!(
                    "cron.fire_ahead = {:?}: must be at most {}; a few seconds is enough",
                    raw.fire_ahead,
                    format_duration(MAX_FIRE_AHEAD)
                ));
                Duration::ZERO
            }
            Err(e) => {
                violations.push(format!(
                    "cron.fire_ahead = {:?}: not a duration ({e}); use e.g. \"2s\", or \"0s\" to fire at the instant",
                    raw.fire_ahead
                ));
                Duration::ZERO
            }
        };
        (violations.len() == before).then(|| Self {
            enabled: raw.enabled,
            max_sleep: max_sleep.unwrap_or_default(),
            catch_up_cap: raw.catch_up_cap,
            batch_size: raw.batch_size,
            fire_ahead,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "enabled": self.enabled,
            "max_sleep": format_duration(self.max_sleep),
            "catch_up_cap": self.catch_up_cap,
            "batch_size": self.batch_size,
            "fire_ahead": format_duration(self.fire_ahead),
        })
    }
}
