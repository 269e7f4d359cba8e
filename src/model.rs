//! Data the components exchange: a claimed run and the outcome of executing it. No I/O here.
//!
//! A run's outcome is data, not an `Err`: the runner maps it onto the terminal status and the
//! stable snake_case `error_kind` stored in `app_runs`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A run this daemon holds the lease of. `(executor_id, attempt)` fences every later write.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub id: Uuid,
    pub app_id: Uuid,
    pub company_id: Uuid,
    pub build_id: Option<Uuid>,
    pub run_type: String,
    /// Attempt number of this claim (1 for the first).
    pub attempt: i32,
    pub max_attempts: i32,
    pub input_data: serde_json::Value,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
}

/// A build this daemon holds the lease of (an `app_builds` row in `building`), fenced like a
/// run.
#[derive(Debug, Clone)]
pub struct ClaimedBuild {
    pub id: Uuid,
    pub app_id: Uuid,
    /// The app version (`app_storage.version`) to build.
    pub version: String,
    /// `build_config`: `{"script", "env", "timeout"}`, all optional.
    pub config: serde_json::Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
}

/// Work a daemon claimed from one of the two queues. Everything about holding it (lease,
/// fencing, cancel, drain, retries) is the same for both; only executing it differs.
#[derive(Debug, Clone)]
pub enum Job {
    Run(ClaimedRun),
    Build(ClaimedBuild),
}

impl Job {
    pub fn id(&self) -> Uuid {
        match self {
            Job::Run(run) => run.id,
            Job::Build(build) => build.id,
        }
    }

    pub fn attempt(&self) -> i32 {
        match self {
            Job::Run(run) => run.attempt,
            Job::Build(build) => build.attempt,
        }
    }

    pub fn max_attempts(&self) -> i32 {
        match self {
            Job::Run(run) => run.max_attempts,
            Job::Build(build) => build.max_attempts,
        }
    }

    /// The queue (table) the job came from.
    pub fn queue(&self) -> Queue {
        match self {
            Job::Run(_) => Queue::Runs,
            Job::Build(_) => Queue::Builds,
        }
    }
}

/// A table the daemons claim work from: `app_runs` or `app_builds` (their SQL names are in
/// `db::queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Runs,
    Builds,
}

impl Queue {
    /// What one item is called in messages: `run`, `build`.
    pub fn noun(self) -> &'static str {
        match self {
            Queue::Runs => "run",
            Queue::Builds => "build",
        }
    }

    /// The status written for a final outcome: a build has no `timeout` status (the document's
    /// values), so a build past its timeout is `failed` (its `error_kind` says `build_timeout`).
    pub fn final_status(self, status: FinalStatus) -> &'static str {
        match (self, status) {
            (Queue::Builds, FinalStatus::Timeout) => "failed",
            _ => status.as_str(),
        }
    }
}

/// Final status of a run that ended on this daemon, as written to `app_runs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalStatus {
    Success,
    Failed,
    Timeout,
}

impl FinalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Success => "success",
            FinalStatus::Failed => "failed",
            FinalStatus::Timeout => "timeout",
        }
    }
}

/// What executing a run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The app ran (or could not run for a reason of its own): a terminal status.
    Finished {
        status: FinalStatus,
        /// Stable snake_case code, `None` on success.
        error_kind: Option<String>,
        error_message: Option<String>,
        exit_code: Option<i32>,
    },
    /// The execution stopped because its cancellation token fired (client cancel, lost lease,
    /// shutdown); the runner knows which.
    Stopped,
    /// Infrastructure failed (storage, Docker, …): retried with backoff up to `max_attempts`.
    InfraFailure { error_kind: String, message: String },
}

impl Outcome {
    pub fn success() -> Self {
        Outcome::Finished {
            status: FinalStatus::Success,
            error_kind: None,
            error_message: None,
            exit_code: Some(0),
        }
    }

    pub fn failed(error_kind: &str, message: impl Into<String>) -> Self {
        Outcome::Finished {
            status: FinalStatus::Failed,
            error_kind: Some(error_kind.to_owned()),
            error_message: Some(message.into()),
            exit_code: None,
        }
    }
}

/// Why the runner stopped an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A client set the run to `cancelled`.
    Cancelled,
    /// Our lease is gone (expired and rescued, or fenced out): keep nothing.
    LeaseLost,
    /// The daemon is draining and the grace period ran out: release without charging.
    Shutdown,
}

/// Exponential retry delay after `attempt` failed attempts: base × 2^(attempt−1), capped.
pub fn retry_delay(
    attempt: i32,
    base: std::time::Duration,
    cap: std::time::Duration,
) -> std::time::Duration {
    let exponent = attempt.clamp(1, 20) as u32 - 1;
    base.saturating_mul(2u32.saturating_pow(exponent)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        let base = Duration::from_secs(5);
        let cap = Duration::from_secs(60);
        assert_eq!(retry_delay(1, base, cap), Duration::from_secs(5));
        assert_eq!(retry_delay(2, base, cap), Duration::from_secs(10));
        assert_eq!(retry_delay(4, base, cap), Duration::from_secs(40));
        assert_eq!(retry_delay(5, base, cap), cap);
        assert_eq!(retry_delay(1000, base, cap), cap);
    }
}
