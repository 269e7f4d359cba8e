//! The `[ops]` configuration section: where the `/metrics`, `/healthz` and `/readyz` endpoints
//! listen (loopback unless allowed otherwise), probe timeouts and the status refresh.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{format_duration, parse_duration};

/// `[ops]`: the loopback HTTP endpoints (`/metrics`, `/healthz`, `/readyz`) and the periodic
/// `STATUS=` / queue-depth refresh.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// Where the endpoints listen; `None` when disabled (`listen = ""`). Loopback unless
    /// `allow_non_loopback` was set (validated here).
    pub listen: Option<std::net::SocketAddr>,
    /// Longest a `/readyz` check of the database or Docker may take before it counts as down.
    pub probe_timeout: Duration,
    /// How often the queue depth gauge and the systemd `STATUS=` line are refreshed (one
    /// `count(*)` of pending runs each time).
    pub status_interval: Duration,
    /// How often the bytes stored per bucket are counted (one aggregate query); `None` when
    /// disabled (`"0"`).
    pub storage_usage_interval: Option<Duration>,
}

/// What the TOML file and the environment may contain under `[ops]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOps {
    listen: String,
    allow_non_loopback: bool,
    probe_timeout: String,
    status_interval: String,
    storage_usage_interval: String,
}

impl Default for RawOps {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            allow_non_loopback: false,
            probe_timeout: "2s".into(),
            status_interval: "5s".into(),
            storage_usage_interval: "5m".into(),
        }
    }
}

impl OpsSettings {
    /// Validates `[ops]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawOps, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        let probe_timeout = parse_duration("ops.probe_timeout", &raw.probe_timeout, violations);
        let status_interval =
            parse_duration("ops.status_interval", &raw.status_interval, violations);
        let storage_usage_interval = match raw.storage_usage_interval.trim() {
            "0" => None,
            text => parse_duration("ops.storage_usage_interval", text, violations),
        };
        let listen = match raw.listen.trim() {
            "" => None,
            text => match text.parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() || raw.allow_non_loopback => Some(addr),
                Ok(addr) => {
                    violations.push(format!(
                        "ops.listen = {text:?}: {} is not a loopback address; the endpoints have no authentication, so they listen on 127.0.0.1 or [::1] unless ops.allow_non_loopback = true",
                        addr.ip()
                    ));
                    None
                }
                Err(_) => {
                    violations.push(format!(
                        "ops.listen = {text:?}: not an address and port; use e.g. \"127.0.0.1:9464\", or \"\" to disable the endpoints"
                    ));
                    None
                }
            },
        };
        (violations.len() == before).then(|| Self {
            listen,
            probe_timeout: probe_timeout.unwrap_or_default(),
            status_interval: status_interval.unwrap_or_default(),
            storage_usage_interval,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.map(|a| a.to_string()).unwrap_or_default(),
            "probe_timeout": format_duration(self.probe_timeout),
            "status_interval": format_duration(self.status_interval),
            "storage_usage_interval": self.storage_usage_interval.map(format_duration).unwrap_or_else(|| "0".into()),
        })
    }
}
