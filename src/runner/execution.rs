//! The execution seam: what turns a claimed job (a run or a build) into an [`Outcome`].
//!
//! The runner owns leases, cancellation and status writes; an execution only does the work and
//! must return promptly once `stop` fires. Production uses `pipeline::RunPipeline`;
//! [`TestExecution`] (sleep, record, succeed) exists for tests and benchmarks of the queue and
//! can only be selected in debug or benchmark builds.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use std::sync::{Arc, Mutex};

use crate::model::{FinalStatus, Job, Outcome, StopReason};

/// How a run in flight is stopped from outside its task (client cancel, lost lease, drain),
/// and why: the reason is set before the token fires, so whoever sees the token can ask.
#[derive(Clone, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the run for `reason` (the first reason given wins).
    pub fn stop_for(&self, reason: StopReason) {
        self.reason.lock().unwrap().get_or_insert(reason);
        self.token.cancel();
    }

    /// Fires when the run must stop.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why the run was stopped, once it was.
    pub fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap()
    }
}

/// Executes one claimed job to an outcome. Must return [`Outcome::Stopped`] soon after `stop`
/// fires.
pub trait JobExecutor: Send + Sync + 'static {
    fn execute<'a>(&'a self, job: &'a Job, stop: Stop) -> BoxFuture<'a, Outcome>;
}

/// A trivial execution for queue tests and benchmarks: optionally appends
/// `<run or build id> <attempt>` to a file (O_APPEND, so several processes can share it), sleeps, and
/// succeeds (or ends as `fail` says); stops early when told to.
#[derive(Debug, Clone, Default)]
pub struct TestExecution {
    pub sleep: Duration,
    pub record: Option<PathBuf>,
    /// End with this `error_kind` instead of succeeding: status `timeout` for `timeout`,
    /// `failed` for anything else (alert tests).
    pub fail: Option<String>,
}

impl TestExecution {
    /// Parses `sleep=200ms,record=/path/to/file,fail=oom_killed` (all optional; empty = succeed
    /// at once).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut execution = Self::default();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("sleep", value)) => {
                    execution.sleep = humantime::parse_duration(value)
                        .map_err(|e| format!("test execution sleep={value:?}: {e}"))?;
                }
                Some(("record", path)) => execution.record = Some(PathBuf::from(path)),
                Some(("fail", kind))
                    if !kind.is_empty()
                        && kind
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
                {
                    execution.fail = Some(kind.to_owned());
                }
                _ => {
                    return Err(format!(
                        "test execution: unknown part {part:?}; expected sleep=<duration>,record=<path>,fail=<error_kind>"
                    ))
                }
            }
        }
        Ok(execution)
    }
}

impl JobExecutor for TestExecution {
    fn execute<'a>(&'a self, job: &'a Job, stop: Stop) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if let Some(path) = &self.record {
                let line = format!("{} {}\n", job.id(), job.attempt());
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
                if let Err(e) = written {
                    return Outcome::InfraFailure {
                        error_kind: "test_record_failed".into(),
                        message: format!("cannot append to {}: {e}", path.display()),
                    };
                }
            }
            if self.sleep.is_zero() {
                // No timer: even a zero sleep waits for the next tick of tokio's 1 ms wheel,
                // which would dominate a queue benchmark.
                return self.ending();
            }
            tokio::select! {
                biased;
                _ = stop.token().cancelled() => Outcome::Stopped,
                _ = tokio::time::sleep(self.sleep) => self.ending(),
            }
        })
    }
}

impl TestExecution {
    /// Success, or the outcome `fail` asks for.
    fn ending(&self) -> Outcome {
        match self.fail.as_deref() {
            None => Outcome::success(),
            Some(kind) => Outcome::Finished {
                status: if kind == "timeout" {
                    FinalStatus::Timeout
                } else {
                    FinalStatus::Failed
                },
                error_kind: Some(kind.to_owned()),
                error_message: Some(format!("the test execution ended with {kind} as told")),
                exit_code: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_execution_specs_parse_and_bad_ones_are_named() {
        let e = TestExecution::parse("sleep=250ms,record=/tmp/x").unwrap();
        assert_eq!(e.sleep, Duration::from_millis(250));
        assert_eq!(e.record, Some(PathBuf::from("/tmp/x")));
        assert!(TestExecution::parse("nap=1s")
            .unwrap_err()
            .contains("nap=1s"));
        let e = TestExecution::parse("fail=oom_killed").unwrap();
        assert_eq!(e.fail.as_deref(), Some("oom_killed"));
        assert!(TestExecution::parse("fail=Bad Kind").is_err());
    }
}
