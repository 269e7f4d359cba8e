//! Resource thresholds: which of a finished attempt's resources came within a fraction of
//! their limits (`[alerts] memory_threshold`, `output_threshold`, `logs_threshold`,
//! `cpu_throttle_threshold`), as the
//! numbers the `resource_threshold` event and `metadata.resource_thresholds` carry. Pure.

use serde_json::{json, Value};

use crate::alerts::settings::Thresholds;

/// CFS periods (100 ms each by default) a run must span before its throttling is judged.
pub const MIN_CPU_PERIODS: u64 = 20;

/// What an attempt used, and of what.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// The cgroup's high-water mark (the limit itself after an OOM kill).
    pub peak_memory: Option<u64>,
    pub memory_limit: u64,
    pub output_bytes: u64,
    pub output_max_bytes: u64,
    pub output_files: u64,
    pub output_max_files: u64,
    /// Bytes each stream wrote, by stream name.
    pub log_bytes: Vec<(&'static str, u64)>,
    pub log_cap: u64,
    /// CFS periods the container ran under its CPU limit, and those it was throttled in.
    pub cpu_periods: u64,
    pub cpu_throttled_periods: u64,
}

/// Each resource at or above its threshold as `{"resource", "used", "limit", "ratio"}`, in a
/// fixed order; empty when none is.
pub fn crossed(thresholds: &Thresholds, usage: &Usage) -> Vec<Value> {
    let mut crossed = Vec::new();
    let mut check = |resource: String, used: u64, limit: u64, threshold: f64| {
        if limit == 0 {
            return;
        }
        let ratio = used as f64 / limit as f64;
        if ratio >= threshold {
            let ratio = (ratio * 1000.0).round() / 1000.0;
            crossed
                .push(json!({"resource": resource, "used": used, "limit": limit, "ratio": ratio}));
        }
    };
    if let Some(peak) = usage.peak_memory {
        check("memory".into(), peak, usage.memory_limit, thresholds.memory);
    }
    check(
        "output_bytes".into(),
        usage.output_bytes,
        usage.output_max_bytes,
        thresholds.output,
    );
    check(
        "output_files".into(),
        usage.output_files,
        usage.output_max_files,
        thresholds.output,
    );
    for (stream, bytes) in &usage.log_bytes {
        check(
            format!("logs_{stream}"),
            *bytes,
            usage.log_cap,
            thresholds.logs,
        );
    }
    // Node's own start is throttled under any small limit: judge only runs long enough to say.
    if usage.cpu_periods >= MIN_CPU_PERIODS {
        check(
            "cpu_throttled".into(),
            usage.cpu_throttled_periods,
            usage.cpu_periods,
            thresholds.cpu_throttled,
        );
    }
    crossed
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Thresholds = Thresholds {
        memory: 0.9,
        output: 0.9,
        logs: 0.9,
        cpu_throttled: 0.5,
    };

    fn usage(peak: u64) -> Usage {
        Usage {
            peak_memory: Some(peak),
            memory_limit: 1000,
            output_bytes: 10,
            output_max_bytes: 100,
            output_files: 1,
            output_max_files: 10,
            log_bytes: vec![("stdout", 5), ("stderr", 95)],
            log_cap: 100,
            cpu_periods: 100,
            cpu_throttled_periods: 10,
        }
    }

    #[test]
    fn only_what_reached_its_threshold_is_reported_with_its_numbers() {
        let crossed = crossed(&DEFAULTS, &usage(950));
        assert_eq!(
            crossed,
            [
                json!({"resource": "memory", "used": 950, "limit": 1000, "ratio": 0.95}),
                json!({"resource": "logs_stderr", "used": 95, "limit": 100, "ratio": 0.95}),
            ]
        );
        let mut half = usage(500);
        half.log_bytes = vec![("stdout", 50)];
        assert!(super::crossed(&DEFAULTS, &half).is_empty());
        // A threshold of 1.0 or more reports only a resource at its limit, or nothing.
        let off = Thresholds {
            memory: 1.5,
            ..DEFAULTS
        };
        let mut full = usage(1000);
        full.log_bytes.clear();
        assert!(super::crossed(&off, &full).is_empty());
    }

    #[test]
    fn a_run_throttled_in_half_its_periods_is_reported() {
        let mut throttled = usage(100);
        throttled.log_bytes.clear();
        throttled.cpu_throttled_periods = 60;
        assert_eq!(
            crossed(&DEFAULTS, &throttled),
            [json!({"resource": "cpu_throttled", "used": 60, "limit": 100, "ratio": 0.6})]
        );
        // Too short to judge (or no CPU limit, no periods).
        throttled.cpu_periods = MIN_CPU_PERIODS - 1;
        throttled.cpu_throttled_periods = MIN_CPU_PERIODS - 1;
        assert!(crossed(&DEFAULTS, &throttled).is_empty());
    }
}
