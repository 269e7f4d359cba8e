//! Readiness: is this daemon able to do its job right now? The database answers `select 1`,
//! the Docker engine answers a ping (when this daemon's execution uses Docker), and the daemon
//! is active (started, not draining). Each check is bounded by `ops.probe_timeout`, and they
//! run concurrently, so `/readyz` answers within that time even when everything hangs.
//!
//! Docker is reached through the [`DockerProbe`] seam: the composition root hands in whatever
//! client it built, so this module never touches a Docker client library.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use serde::Serialize;

use super::status::{DaemonStatus, Phase};

/// Pings the Docker engine: `Ok` with a short description (e.g. the API version), or `Err`
/// with why it does not answer.
pub trait DockerProbe: Send + Sync + 'static {
    fn ping(&self) -> BoxFuture<'_, Result<String, String>>;
}

/// Any `Fn() -> Future<Output = Result<String, String>>` is a probe.
impl<F, Fut> DockerProbe for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
{
    fn ping(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self())
    }
}

/// Whether readiness asks Docker.
#[derive(Clone)]
pub enum DockerCheck {
    /// This daemon's execution starts no containers; the reason is shown instead of a probe.
    NotUsed(&'static str),
    Probe(Arc<dyn DockerProbe>),
}

/// One line of a readiness report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    /// Names of the failing checks, for a quick look (`curl …/readyz | jq .not_ready`).
    pub not_ready: Vec<&'static str>,
    pub checks: Vec<Check>,
}

impl ReadinessReport {
    fn new(checks: Vec<Check>) -> Self {
        let not_ready: Vec<&'static str> =
            checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        Self {
            ready: not_ready.is_empty(),
            not_ready,
            checks,
        }
    }
}

/// Everything `/readyz` looks at.
#[derive(Clone)]
pub struct Readiness {
    pub pool: Pool,
    pub docker: DockerCheck,
    pub status: Arc<DaemonStatus>,
    /// Bound on each probe (`ops.probe_timeout`).
    pub timeout: Duration,
}

impl Readiness {
    pub async fn check(&self) -> ReadinessReport {
        let (database, docker) = tokio::join!(self.database(), self.docker());
        ReadinessReport::new(vec![database, docker, state(self.status.phase())])
    }

    async fn database(&self) -> Check {
        let (ok, detail) =
            match tokio::time::timeout(self.timeout, crate::db::ping(&self.pool)).await {
                Ok(Ok(())) => (true, "reachable".to_owned()),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (false, no_answer(self.timeout)),
            };
        Check {
            name: "database",
            ok,
            detail,
        }
    }

    async fn docker(&self) -> Check {
        let (ok, detail) = match &self.docker {
            DockerCheck::NotUsed(reason) => (true, format!("not used: {reason}")),
            DockerCheck::Probe(probe) => {
                match tokio::time::timeout(self.timeout, probe.ping()).await {
                    Ok(Ok(detail)) => (true, detail),
                    Ok(Err(e)) => (false, e),
                    Err(_) => (false, no_answer(self.timeout)),
                }
            }
        };
        Check {
            name: "docker",
            ok,
            detail,
        }
    }
}

fn no_answer(timeout: Duration) -> String {
    format!(
        "no answer within {} (ops.probe_timeout)",
        humantime::format_duration(timeout)
    )
}

/// Ready to take work only while active: not before the startup checks, not while draining.
fn state(phase: Phase) -> Check {
    let (ok, detail) = match phase {
        Phase::Active => (true, "active"),
        Phase::Starting => (false, "starting: the startup checks have not passed yet"),
        Phase::Draining => (
            false,
            "draining: shutdown requested, no new runs are claimed",
        ),
        Phase::Stopped => (false, "stopped"),
    };
    Check {
        name: "state",
        ok,
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_active_daemon_is_ready_to_take_work() {
        assert!(state(Phase::Active).ok);
        for phase in [Phase::Starting, Phase::Draining, Phase::Stopped] {
            let check = state(phase);
            assert!(!check.ok, "{phase:?}");
            assert!(check.detail.starts_with(phase.as_str()), "{check:?}");
        }
    }

    #[test]
    fn a_report_names_every_failing_check() {
        let check = |name, ok| Check {
            name,
            ok,
            detail: String::new(),
        };
        let report = ReadinessReport::new(vec![
            check("database", false),
            check("docker", true),
            check("state", false),
        ]);
        assert!(!report.ready);
        assert_eq!(report.not_ready, vec!["database", "state"]);
        assert!(ReadinessReport::new(vec![check("docker", true)]).ready);
    }
}
