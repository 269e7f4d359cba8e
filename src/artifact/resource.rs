//! The resource limits an app may ask for in `manifest.json` (`config.memory_limit`,
//! `config.cpu_limit`, `config.timeout`, `config.stop_grace`): their accepted forms, and the host's maxima and
//! defaults they are clamped to. Pure.

use std::time::Duration;

use serde_json::Value;

/// What the host allows and what an app gets when its manifest says nothing (`[limits]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostLimits {
    pub max_memory: u64,
    pub max_cpu: f64,
    pub max_timeout: Duration,
    pub default_memory: u64,
    pub default_cpu: f64,
    pub default_timeout: Duration,
    /// Longest SIGTERM-to-SIGKILL grace an app may ask for, and what it gets unasked.
    pub max_stop_grace: Duration,
    pub default_stop_grace: Duration,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            max_memory: 2 << 30,
            max_cpu: 2.0,
            max_timeout: Duration::from_secs(30 * 60),
            default_memory: 512 << 20,
            default_cpu: 1.0,
            default_timeout: Duration::from_secs(5 * 60),
            max_stop_grace: Duration::from_secs(60),
            default_stop_grace: Duration::from_secs(10),
        }
    }
}

/// The limits a run gets, after defaults and clamping.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ResourceLimits {
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub cpu: f64,
    /// Between SIGTERM and SIGKILL when the run is stopped (cancel, time limit, drain).
    #[serde(with = "duration_secs")]
    pub stop_grace: Duration,
}

mod duration_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

/// A memory size: a string in any form [`crate::units::parse_size`] accepts, or a number of
/// bytes. Zero is refused.
pub fn parse_memory(value: &Value) -> Result<u64, String> {
    let bytes = match value {
        Value::String(s) => crate::units::parse_size(s).map_err(|e| {
            format!("not a size ({e}); use e.g. \"256MB\", \"512MiB\", \"1GB\" or \"256m\"")
        })?,
        Value::Number(n) => n
            .as_u64()
            .ok_or("must be a whole, positive number of bytes or a size like \"256MB\"")?,
        _ => return Err("must be a size like \"256MB\"".to_owned()),
    };
    if bytes == 0 {
        return Err("must be greater than zero".to_owned());
    }
    Ok(bytes)
}

/// CPUs as a positive decimal: a number (`0.5`) or a string of one (`"1.5"`).
pub fn parse_cpu(value: &Value) -> Result<f64, String> {
    let cpu = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or("must be a decimal number of CPUs, e.g. 0.5 or 2")?;
    if !cpu.is_finite() || cpu <= 0.0 {
        return Err("must be a positive number of CPUs, e.g. 0.5 or 2".to_owned());
    }
    Ok(cpu)
}

/// A timeout: a whole number of seconds (`300` or `"300"`) or a duration string (`"30s"`,
/// `"5m"`, `"1h 30m"`). Zero is refused.
pub fn parse_timeout(value: &Value) -> Result<Duration, String> {
    let hint = "use seconds (e.g. 300) or a duration like \"30s\", \"5m\", \"1h 30m\"";
    let duration = match value {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("must be a whole number of seconds; {hint}"))?,
        Value::String(s)
            if s.trim().chars().all(|c| c.is_ascii_digit()) && !s.trim().is_empty() =>
        {
            Duration::from_secs(s.trim().parse().map_err(|_| format!("too large; {hint}"))?)
        }
        Value::String(s) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("not a duration ({e}); {hint}"))?,
        _ => return Err(format!("must be a duration; {hint}")),
    };
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn memory_accepts_decimal_binary_and_docker_forms() {
        assert_eq!(parse_memory(&json!("256MB")), Ok(256_000_000));
        assert_eq!(parse_memory(&json!("1GB")), Ok(1_000_000_000));
        assert_eq!(parse_memory(&json!("512MiB")), Ok(512 << 20));
        assert_eq!(parse_memory(&json!("256m")), Ok(256 << 20));
        assert_eq!(parse_memory(&json!(1048576)), Ok(1 << 20));
        for bad in [
            json!("-1"),
            json!(-1),
            json!("12XB"),
            json!("0"),
            json!(0),
            json!(true),
        ] {
            assert!(parse_memory(&bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn cpu_is_a_positive_decimal() {
        assert_eq!(parse_cpu(&json!(0.5)), Ok(0.5));
        assert_eq!(parse_cpu(&json!("1.5")), Ok(1.5));
        for bad in [json!(0), json!("0"), json!(-1), json!("lots"), json!(null)] {
            assert!(parse_cpu(&bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn timeouts_are_seconds_or_duration_strings() {
        assert_eq!(parse_timeout(&json!(300)), Ok(Duration::from_secs(300)));
        assert_eq!(parse_timeout(&json!("300")), Ok(Duration::from_secs(300)));
        assert_eq!(parse_timeout(&json!("30s")), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout(&json!("5m")), Ok(Duration::from_secs(300)));
        for bad in [json!(0), json!("0s"), json!(-5), json!(1.5), json!("soon")] {
            assert!(parse_timeout(&bad).is_err(), "{bad} was accepted");
        }
    }
}
