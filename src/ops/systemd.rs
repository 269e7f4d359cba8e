//! systemd's notify protocol (`Type=notify`): `READY=1` once the startup checks pass,
//! `STATUS=` with running/capacity and queue depth, `WATCHDOG=1` while the claim loop makes
//! progress, `STOPPING=1` when a drain begins.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every notification is a no-op. The protocol's
//! own variables (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`) are read by the `sd-notify`
//! crate, not by `config`: they describe the supervisor, not the daemon's configuration.
//!
//! Watchdog policy: a free-running ping would keep a deadlocked daemon "healthy", so a ping is
//! sent every half `WATCHDOG_USEC` only if the claim loop ticked within that half period. The
//! loop's idle wait is capped at a quarter period ([`DaemonStatus::set_max_idle`]) so an idle
//! but healthy loop always ticks in time; a loop stuck in an await stops the pings and systemd
//! restarts the service. Once draining, the loop has exited by design and the drain is bounded
//! by `queue.drain_grace` (and systemd's `TimeoutStopSec`), so pings continue until exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use super::status::{DaemonStatus, Phase};

/// A notification, owned so it can cross to the sender thread.
#[derive(Debug)]
enum Message {
    Ready(String),
    Status(String),
    Stopping(String),
    Watchdog,
}

/// Messages waiting for the sender thread; beyond this they are dropped (the supervisor is not
/// reading; a watchdog ping or status line more or less changes nothing then).
const QUEUE: usize = 32;

/// The notify socket of this process's supervisor, if any.
///
/// `sd_notify::notify` writes to a blocking datagram socket, and a supervisor that stops
/// reading (a full socket queue) would block the caller. So sends happen on a thread of their
/// own, fed by a bounded queue: the runtime never waits on systemd.
#[derive(Debug, Default)]
pub struct Systemd {
    /// `WATCHDOG_USEC`, when a watchdog is configured for this process.
    watchdog: Option<Duration>,
    /// `None` when notifications go nowhere (tests of this module).
    queue: Option<std::sync::mpsc::SyncSender<Message>>,
    /// A full queue is logged once, not every refresh.
    warned: Arc<AtomicBool>,
}

impl Systemd {
    pub fn from_env() -> Self {
        let (queue, received) = std::sync::mpsc::sync_channel::<Message>(QUEUE);
        let warned = Arc::new(AtomicBool::new(false));
        let warned_by_sender = warned.clone();
        let spawned = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for message in received {
                    let sent = match &message {
                        Message::Ready(status) => sd_notify::notify(&[
                            NotifyState::Ready,
                            NotifyState::Status(status),
                        ]),
                        Message::Status(status) => {
                            sd_notify::notify(&[NotifyState::Status(status)])
                        }
                        Message::Stopping(status) => sd_notify::notify(&[
                            NotifyState::Stopping,
                            NotifyState::Status(status),
                        ]),
                        Message::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
                    };
                    if let Err(e) = sent {
                        if !warned_by_sender.swap(true, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET); readiness and watchdog messages are lost");
                        }
                    }
                }
            });
        if let Err(e) = &spawned {
            tracing::warn!(error = %e, "cannot start the systemd notification thread; systemd will not hear from this daemon");
        }
        Self {
            watchdog: sd_notify::watchdog_enabled(),
            queue: spawned.ok().map(|_| queue),
            warned,
        }
    }

    /// The watchdog timeout systemd enforces, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    pub fn ready(&self, status: &str) {
        self.send(Message::Ready(status.to_owned()));
    }

    pub fn status(&self, status: &str) {
        self.send(Message::Status(status.to_owned()));
    }

    pub fn stopping(&self, status: &str) {
        self.send(Message::Stopping(status.to_owned()));
    }

    fn watchdog_ping(&self) {
        self.send(Message::Watchdog);
    }

    fn send(&self, message: Message) {
        let Some(queue) = &self.queue else { return };
        if let Err(std::sync::mpsc::TrySendError::Full(dropped)) = queue.try_send(message) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    ?dropped,
                    "systemd is not reading notifications; dropping them"
                );
            }
        }
    }
}

/// The `STATUS=` line (also shown by `systemctl status`).
pub fn status_line(phase: Phase, running: usize, capacity: usize, depth: Option<i64>) -> String {
    let depth = match depth {
        Some(depth) => format!("queue depth {depth}"),
        None => "queue depth unknown (database unreachable)".to_owned(),
    };
    match phase {
        Phase::Starting => "starting: checking the database and Docker".to_owned(),
        Phase::Active => format!("running {running}/{capacity}, {depth}"),
        Phase::Draining => format!("draining: running {running}/{capacity}, {depth}"),
        Phase::Stopped => "stopped".to_owned(),
    }
}

/// Sends `WATCHDOG=1` every half `watchdog` while the claim loop shows progress (see the
/// module doc), until `stop`.
pub async fn watchdog_loop(
    systemd: Arc<Systemd>,
    watchdog: Duration,
    status: Arc<DaemonStatus>,
    stop: CancellationToken,
) {
    let period = watchdog / 2;
    let mut stalled = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let since = status.since_last_tick();
        if loop_alive(since, period, status.phase()) {
            if stalled {
                tracing::info!("the claim loop is making progress again; watchdog pings resumed");
                stalled = false;
            }
            systemd.watchdog_ping();
        } else if !stalled {
            stalled = true;
            tracing::error!(
                stalled_for = ?since,
                "the claim loop has made no progress; withholding watchdog pings, so systemd will restart the service"
            );
        }
    }
}

/// Whether the watchdog may be fed: the claim loop ticked within the last ping period, or the
/// daemon is draining (the loop has exited by design; the drain has its own deadline).
fn loop_alive(since_last_tick: Duration, period: Duration, phase: Phase) -> bool {
    since_last_tick < period || matches!(phase, Phase::Draining | Phase::Stopped)
}

/// Every `interval`: counts pending runs (queue depth gauge), refreshes the running gauge and
/// the `STATUS=` line, and runs the metrics exporter's upkeep; until `stop`.
pub async fn status_loop(
    systemd: Arc<Systemd>,
    pool: Pool,
    state_dir: std::path::PathBuf,
    status: Arc<DaemonStatus>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let depth =
            match tokio::time::timeout(interval, crate::db::queue::count_pending_runs(&pool)).await
            {
                Ok(Ok(depth)) => {
                    super::metrics::set_queue_depth(depth);
                    Some(depth)
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot count pending runs for the status line");
                    None
                }
                Err(_) => None,
            };
        super::metrics::set_database_up(depth.is_some());
        super::metrics::set_claim_loop_age(status.since_last_tick());
        match nix::sys::statvfs::statvfs(&state_dir) {
            Ok(fs) => {
                let block = fs.fragment_size();
                super::metrics::set_state_dir_space(
                    fs.blocks_available() * block,
                    fs.blocks() * block,
                );
            }
            Err(e) => {
                tracing::debug!(dir = %state_dir.display(), error = %e, "cannot stat the state directory's file system")
            }
        }
        super::metrics::set_running(status.running(), status.capacity());
        if let Some(handle) = &metrics {
            handle.run_upkeep();
        }
        systemd.status(&status_line(
            status.phase(),
            status.running(),
            status.capacity(),
            depth,
        ));
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_shows_running_capacity_and_queue_depth() {
        assert_eq!(
            status_line(Phase::Active, 1, 4, Some(7)),
            "running 1/4, queue depth 7"
        );
        assert_eq!(
            status_line(Phase::Draining, 2, 4, None),
            "draining: running 2/4, queue depth unknown (database unreachable)"
        );
        assert!(status_line(Phase::Starting, 0, 4, None).starts_with("starting"));
    }

    #[test]
    fn the_watchdog_is_fed_only_while_the_claim_loop_ticks_or_drains() {
        let period = Duration::from_secs(15);
        let recent = Duration::from_secs(3);
        let stale = Duration::from_secs(16);
        assert!(loop_alive(recent, period, Phase::Active));
        assert!(!loop_alive(stale, period, Phase::Active));
        assert!(loop_alive(stale, period, Phase::Draining));
        assert!(loop_alive(stale, period, Phase::Stopped));
    }
}
