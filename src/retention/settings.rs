//! The `[retention]` configuration section: how old finished runs' logs and outputs, and unused
//! builds and versions, get before they are deleted, and how often and in what batches.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::parse_duration;

/// The shortest any age may be: a typo such as "30s" for "30d" must not empty the buckets.
pub const MIN_AGE: Duration = Duration::from_secs(3600);

/// What the TOML file and the environment may contain under `[retention]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetention {
    enabled: bool,
    logs_max_age: String,
    outputs_max_age: String,
    builds_max_age: String,
    interval: String,
    batch_size: usize,
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            enabled: true,
            logs_max_age: "30d".into(),
            outputs_max_age: "30d".into(),
            builds_max_age: "90d".into(),
            interval: "1h".into(),
            batch_size: 500,
        }
    }
}

/// The validated `[retention]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Whether this daemon runs the retention loop (one daemon at a time does the work).
    pub enabled: bool,
    /// Logs of runs finished longer ago than this are deleted.
    pub logs_max_age: Duration,
    /// Outputs (`app_outputs` rows other than the logs', `…/output/` objects) likewise.
    pub outputs_max_age: Duration,
    /// Non-current builds, and app versions no build or active run uses, older than this.
    pub builds_max_age: Duration,
    /// Time between two passes.
    pub interval: Duration,
    /// Runs, builds or versions handled per batch; also the most keys per storage delete.
    pub batch_size: usize,
}

impl RetentionSettings {
    /// Validates the raw section, recording one violation per bad key.
    pub(crate) fn from_raw(raw: &RawRetention, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        let mut age = |key: &str, value: &str| {
            let name = format!("retention.{key}");
            let parsed = parse_duration(&name, value, violations)?;
            if parsed < MIN_AGE {
                violations.push(format!(
                    "{name} = {value:?}: at least 1h; ages are in days usually, e.g. \"30d\""
                ));
                return None;
            }
            Some(parsed)
        };
        let logs_max_age = age("logs_max_age", &raw.logs_max_age);
        let outputs_max_age = age("outputs_max_age", &raw.outputs_max_age);
        let builds_max_age = age("builds_max_age", &raw.builds_max_age);
        let interval = parse_duration("retention.interval", &raw.interval, violations);
        if !(1..=10_000).contains(&raw.batch_size) {
            violations.push(format!(
                "retention.batch_size = {}: must be between 1 and 10000",
                raw.batch_size
            ));
        }
        (violations.len() == before).then(|| Self {
            enabled: raw.enabled,
            logs_max_age: logs_max_age.unwrap_or_default(),
            outputs_max_age: outputs_max_age.unwrap_or_default(),
            builds_max_age: builds_max_age.unwrap_or_default(),
            interval: interval.unwrap_or_default(),
            batch_size: raw.batch_size,
        })
    }

    /// The section as `check` prints it.
    pub fn to_json(&self) -> serde_json::Value {
        // Whole days as "90d" (humantime would say "2months 29days 2h 52m 48s").
        let human = |d: Duration| match d.as_secs() {
            secs if secs % 86_400 == 0 => format!("{}d", secs / 86_400),
            _ => humantime::format_duration(d).to_string(),
        };
        serde_json::json!({
            "enabled": self.enabled,
            "logs_max_age": human(self.logs_max_age),
            "outputs_max_age": human(self.outputs_max_age),
            "builds_max_age": human(self.builds_max_age),
            "interval": human(self.interval),
            "batch_size": self.batch_size,
        })
    }
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self::from_raw(&RawRetention::default(), &mut Vec::new()).expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_thirty_and_ninety_days_hourly() {
        let s = RetentionSettings::default();
        assert!(s.enabled);
        assert_eq!(s.logs_max_age, Duration::from_secs(30 * 86400));
        assert_eq!(s.outputs_max_age, Duration::from_secs(30 * 86400));
        assert_eq!(s.builds_max_age, Duration::from_secs(90 * 86400));
        assert_eq!(s.interval, Duration::from_secs(3600));
        assert_eq!(s.batch_size, 500);
    }

    #[test]
    fn short_ages_and_bad_values_are_named() {
        let raw = RawRetention {
            logs_max_age: "30s".into(),
            builds_max_age: "ninety days".into(),
            batch_size: 0,
            ..RawRetention::default()
        };
        let mut violations = Vec::new();
        assert!(RetentionSettings::from_raw(&raw, &mut violations).is_none());
        let all = violations.join("\n");
        assert!(
            all.contains("retention.logs_max_age = \"30s\": at least 1h"),
            "{all}"
        );
        assert!(
            all.contains("retention.builds_max_age = \"ninety days\""),
            "{all}"
        );
        assert!(all.contains("retention.batch_size = 0"), "{all}");
    }
}
