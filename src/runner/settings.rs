//! The `[queue]` and `[executor]` configuration sections: how many runs this daemon takes, its
//! leases, retries, drain and fairness caps; and where it keeps its state (run directories,
//! the blob and dependency caches).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{format_duration, parse_byte_size, parse_duration};

/// The run queue: concurrency, leases, retries, drain and fairness caps.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub max_concurrent_runs: usize,
    /// Builds this daemon processes at once, in slots of their own (a build never waits for a
    /// run's slot, nor takes one); 0: this host builds nothing.
    pub max_concurrent_builds: usize,
    pub lease: Duration,
    pub heartbeat_interval: Duration,
    pub poll_interval: Duration,
    pub rescue_interval: Duration,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub drain_grace: Duration,
    pub company_running_cap: i32,
    pub app_running_cap: i32,
    /// Per-company overrides of `company_running_cap`, keyed by company id.
    pub company_caps: BTreeMap<uuid::Uuid, i32>,
}

/// What the TOML file and the environment may contain under `[queue]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    max_concurrent_runs: usize,
    max_concurrent_builds: usize,
    lease: String,
    heartbeat_interval: String,
    poll_interval: String,
    rescue_interval: String,
    retry_backoff: String,
    retry_backoff_max: String,
    drain_grace: String,
    company_running_cap: i32,
    app_running_cap: i32,
    company_caps: BTreeMap<String, i32>,
}

impl Default for RawQueue {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 4,
            max_concurrent_builds: 1,
            lease: "30s".into(),
            heartbeat_interval: "10s".into(),
            poll_interval: "5s".into(),
            rescue_interval: "10s".into(),
            retry_backoff: "5s".into(),
            retry_backoff_max: "5m".into(),
            drain_grace: "60s".into(),
            company_running_cap: 4,
            app_running_cap: 4,
            company_caps: BTreeMap::new(),
        }
    }
}

impl QueueSettings {
    /// Validates `[queue]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawQueue, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        let mut duration = |key: &str, value: &str| {
            parse_duration(&format!("queue.{key}"), value, violations).unwrap_or_default()
        };
        let lease = duration("lease", &raw.lease);
        let heartbeat_interval = duration("heartbeat_interval", &raw.heartbeat_interval);
        let poll_interval = duration("poll_interval", &raw.poll_interval);
        let rescue_interval = duration("rescue_interval", &raw.rescue_interval);
        let retry_backoff = duration("retry_backoff", &raw.retry_backoff);
        let retry_backoff_max = duration("retry_backoff_max", &raw.retry_backoff_max);
        let drain_grace = duration("drain_grace", &raw.drain_grace);
        if violations.len() == before && heartbeat_interval * 2 > lease {
            violations.push(format!(
                "queue.heartbeat_interval = {:?} with queue.lease = {:?}: the heartbeat must come at most every half lease (a third is better), or healthy runs get rescued",
                raw.heartbeat_interval, raw.lease
            ));
        }
        if raw.max_concurrent_runs == 0 {
            violations.push("queue.max_concurrent_runs = 0: must be at least 1".into());
        }
        for (key, value) in [
            ("company_running_cap", raw.company_running_cap),
            ("app_running_cap", raw.app_running_cap),
        ] {
            if value < 1 {
                violations.push(format!("queue.{key} = {value}: must be at least 1"));
            }
        }
        let mut company_caps = BTreeMap::new();
        for (company, cap) in &raw.company_caps {
            match company.parse::<uuid::Uuid>() {
                Ok(id) if *cap >= 0 => {
                    company_caps.insert(id, *cap);
                }
                Ok(_) => violations.push(format!(
                    "queue.company_caps.{company} = {cap}: must be 0 (paused) or more"
                )),
                Err(_) => violations.push(format!(
                    "queue.company_caps: key {company:?} is not a company id (uuid)"
                )),
            }
        }
        (violations.len() == before).then_some(Self {
            max_concurrent_runs: raw.max_concurrent_runs,
            max_concurrent_builds: raw.max_concurrent_builds,
            lease,
            heartbeat_interval,
            poll_interval,
            rescue_interval,
            retry_backoff,
            retry_backoff_max,
            drain_grace,
            company_running_cap: raw.company_running_cap,
            app_running_cap: raw.app_running_cap,
            company_caps,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "max_concurrent_runs": self.max_concurrent_runs,
            "max_concurrent_builds": self.max_concurrent_builds,
            "lease": format_duration(self.lease),
            "heartbeat_interval": format_duration(self.heartbeat_interval),
            "poll_interval": format_duration(self.poll_interval),
            "rescue_interval": format_duration(self.rescue_interval),
            "retry_backoff": format_duration(self.retry_backoff),
            "retry_backoff_max": format_duration(self.retry_backoff_max),
            "drain_grace": format_duration(self.drain_grace),
            "company_running_cap": self.company_running_cap,
            "app_running_cap": self.app_running_cap,
            "company_caps": self.company_caps,
        })
    }
}

/// `[executor]`: this host's state directory and the size of its verified blob cache.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub state_dir: PathBuf,
    /// Size cap of the verified blob cache (`<state_dir>/cache/blobs`), LRU beyond it.
    pub blob_cache_max_bytes: u64,
}

/// What the TOML file and the environment may contain under `[executor]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawExecutor {
    /// Also the default parent of `storage.local_root`.
    pub(crate) state_dir: PathBuf,
    blob_cache_max: String,
}

impl Default for RawExecutor {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/app-executor"),
            blob_cache_max: "5GB".into(),
        }
    }
}

impl ExecutorSettings {
    /// Validates `[executor]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawExecutor, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        if !raw.state_dir.is_absolute() {
            violations.push(format!(
                "executor.state_dir = {:?}: must be an absolute path",
                raw.state_dir.display()
            ));
        }
        let blob_cache_max_bytes = parse_byte_size("executor.blob_cache_max", &raw.blob_cache_max)
            .map_err(|e| violations.push(e))
            .unwrap_or_default();
        (violations.len() == before).then(|| Self {
            state_dir: raw.state_dir.clone(),
            blob_cache_max_bytes,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "state_dir": self.state_dir.display().to_string(),
            "blob_cache_max_bytes": self.blob_cache_max_bytes,
        })
    }
}
