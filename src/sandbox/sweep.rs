//! The orphan sweep: containers whose daemon is gone (crashed or stopped) are removed and
//! their runs handed back to the queue at once, and attempt directories no attempt in flight
//! uses are deleted. Runs on start and then periodically (see `app`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::engine::{Engine, ManagedContainer};
use crate::db::{executors, queue};

/// Sweeps what dead daemons left on this host.
pub struct Sweeper {
    pub engine: Engine,
    pub pool: deadpool_postgres::Pool,
    /// Where attempt directories live (`<state_dir>/runs`, as the resolver makes them).
    pub runs_dir: PathBuf,
    /// This daemon: its own containers are never swept.
    pub executor_id: String,
}

impl Sweeper {
    /// Removes containers whose daemon is gone and hands that daemon's runs back to the queue,
    /// then attempt directories no attempt in flight uses. On start (`host` given) a daemon also
    /// retires earlier instances on the same host whose process no longer exists, without
    /// waiting for their heartbeat to go stale.
    pub async fn sweep_orphans(&self, stale_after: Duration, host: Option<&str>) {
        let pool = &self.pool;
        if let Some(host) = host {
            match executors::executors_on_host(pool, host, &self.executor_id).await {
                Ok(ids) => {
                    for id in ids.iter().filter(|id| !process_alive(id)) {
                        match executors::retire_executor(pool, id).await {
                            Ok(runs) => {
                                tracing::warn!(executor = %id, runs, "a previous instance on this host is gone; its runs go back to the queue")
                            }
                            Err(e) => {
                                tracing::warn!(executor = %id, error = %e, "could not retire a dead executor")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not look up earlier executors of this host")
                }
            }
        }
        self.remove_orphaned_containers(stale_after).await;
        self.remove_abandoned_run_dirs(stale_after).await;
    }

    /// Removes the containers of daemons that are gone, with their run directories and
    /// `/output` volumes, and hands those daemons' runs back to the queue.
    async fn remove_orphaned_containers(&self, stale_after: Duration) {
        let pool = &self.pool;
        let listed = tokio::try_join!(
            self.engine.managed_containers(),
            self.engine.managed_volume_owners()
        );
        let (containers, volume_owners) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "could not list containers and volumes for the orphan sweep");
                return;
            }
        };
        let mut owners: Vec<String> = containers
            .iter()
            .map(|c| c.executor.clone())
            .chain(volume_owners)
            .filter(|e| *e != self.executor_id)
            .collect();
        owners.sort();
        owners.dedup();
        if owners.is_empty() {
            return;
        }
        let dead = match executors::dead_executors(pool, &owners, stale_after).await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(error = %e, "could not check container owners for the orphan sweep");
                return;
            }
        };
        for container in containers {
            let executor = &container.executor;
            if dead.contains(executor) {
                tracing::warn!(container = %container.id, %executor, run_id = %container.run, "removing a container left by a daemon that is gone");
                self.engine.remove(&container.id).await;
                remove_container_run_dir(
                    &self.runs_dir,
                    &container,
                    "a dead daemon left it with its container",
                )
                .await;
            }
        }
        for executor in owners.iter().filter(|e| dead.contains(*e)) {
            self.engine.remove_volumes_of(executor).await;
            if let Err(e) = executors::retire_executor(pool, executor).await {
                tracing::warn!(%executor, error = %e, "could not hand back the runs of a dead executor");
            }
        }
    }

    /// Removes attempt directories no attempt in flight uses: those a daemon killed before its
    /// container existed (while downloading or installing) left behind. A directory is removed
    /// when it is older than `stale_after` and its run is no longer `running` at that attempt
    /// (finished, requeued, rescued under a new attempt, or deleted). The age keeps a directory
    /// being prepared right now out of reach whatever the database said a moment before.
    async fn remove_abandoned_run_dirs(&self, stale_after: Duration) {
        let runs_dir = self.runs_dir.clone();
        let old_enough = move || -> Vec<(uuid::Uuid, i32, PathBuf)> {
            let now = std::time::SystemTime::now();
            std::fs::read_dir(&runs_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().into_string().ok()?;
                    let (run, attempt) = parse_run_dir_name(&name)?;
                    let modified = entry.metadata().ok()?.modified().ok()?;
                    let age = now.duration_since(modified).unwrap_or_default();
                    (age >= stale_after).then(|| (run, attempt, entry.path()))
                })
                .collect()
        };
        let candidates = tokio::task::spawn_blocking(old_enough)
            .await
            .unwrap_or_default();
        if candidates.is_empty() {
            return;
        }
        let runs: Vec<uuid::Uuid> = candidates.iter().map(|c| c.0).collect();
        let attempts: Vec<i32> = candidates.iter().map(|c| c.1).collect();
        let in_flight = match queue::attempts_in_flight(&self.pool, &runs, &attempts).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "could not check run directories for the sweep");
                return;
            }
        };
        for (run, attempt, dir) in candidates {
            if in_flight.contains(&(run, attempt)) {
                continue;
            }
            remove_left_run_dir(
                &dir,
                run,
                attempt,
                "no attempt uses it (its daemon stopped before the run's container started)",
            )
            .await;
        }
    }
}

/// Removes the per-attempt directory (app files, log spool, `/output`) a dead daemon left
/// for the container's run, when it lives under this daemon's state directory. Nobody
/// else uses it: the attempt was charged to the dead claim, so the run's next claim gets
/// a directory of its own. The spool's tail that never reached storage goes with it (a
/// crash loses at most that, see `logs`). `runs_dir` is that directory's parent; the container's labels name the attempt.
pub(super) async fn remove_container_run_dir(
    runs_dir: &Path,
    container: &ManagedContainer,
    why: &str,
) {
    // Labels come from the engine: only a run id and an attempt number name a directory.
    let (Ok(run), Ok(attempt)) = (
        container.run.parse::<uuid::Uuid>(),
        container.attempt.parse::<i32>(),
    ) else {
        return;
    };
    let dir = runs_dir.join(orphaned_run_dir_name(run, attempt));
    remove_left_run_dir(&dir, run, attempt, why).await;
}

/// Removes an attempt directory the sweep found left behind; `why` goes into the log line.
/// Gone already is fine; any other failure is logged and retried by the next sweep.
async fn remove_left_run_dir(dir: &Path, run: uuid::Uuid, attempt: i32, why: &str) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {
            tracing::info!(run_id = %run, attempt, dir = %dir.display(), why, "removed a run directory left behind")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(run_id = %run, attempt, dir = %dir.display(), why, error = %e, "could not remove a run directory left behind")
        }
    }
}

/// The name `Resolver::run_dir` gives an attempt's directory (`{run id}-{attempt}`), for
/// an attempt known only by its container's labels. The crash test of `run_logs` checks that
/// the two agree (the directory of the killed daemon's attempt is gone).
fn orphaned_run_dir_name(run: uuid::Uuid, attempt: i32) -> String {
    format!("{run}-{attempt}")
}

/// The run and attempt a directory named by [`orphaned_run_dir_name`] belongs to; `None` for
/// any other name (left alone).
fn parse_run_dir_name(name: &str) -> Option<(uuid::Uuid, i32)> {
    let (run, attempt) = name.rsplit_once('-')?;
    Some((run.parse().ok()?, attempt.parse().ok()?))
}

/// Whether the process named in an executor id (`<host>-<pid>-<suffix>`) still exists here.
fn process_alive(executor_id: &str) -> bool {
    let mut parts = executor_id.rsplitn(3, '-');
    let _suffix = parts.next();
    match parts.next().and_then(|pid| pid.parse::<u32>().ok()) {
        Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        // Not an id this daemon makes: leave it to the heartbeat check.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_ids_name_a_process() {
        let me = format!("host-name-{}-abc123", std::process::id());
        assert!(process_alive(&me));
        assert!(!process_alive("host-name-4000000-abc123"));
        assert!(process_alive("not an id"));
    }
}
