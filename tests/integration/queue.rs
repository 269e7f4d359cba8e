//! The run queue across real daemon processes on a real database: exactly-once completion,
//! rescue after kill -9 with fencing, cancellation, drain, polling fallback, fairness, caps,
//! and connections killed under the daemons.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use uuid::Uuid;

use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::{insert_tenant as tenant, TestDb};

async fn enqueue(client: &Client, company: Uuid, app: Uuid, n: i32) -> Vec<Uuid> {
    client
        .query(
            "insert into public.app_runs (app_id, company_id)
             select $1, $2 from generate_series(1, $3) returning id",
            &[&app, &company, &n],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Takes (in `holder`'s session) the advisory lock a claim takes for `company`, as a stuck
/// session or another daemon's claim in flight would hold it.
async fn hold_company_claim(holder: &Client, company: Uuid) {
    holder
        .execute(
            "select pg_advisory_lock(hashtextextended('app_exec.claim.company:' || $1::uuid::text, 0))",
            &[&company],
        )
        .await
        .unwrap();
}

async fn release_company_claim(holder: &Client, company: Uuid) {
    holder
        .execute(
            "select pg_advisory_unlock(hashtextextended('app_exec.claim.company:' || $1::uuid::text, 0))",
            &[&company],
        )
        .await
        .unwrap();
}

async fn status_counts(client: &Client) -> HashMap<String, i64> {
    client
        .query(
            "select status, count(*) from public.app_runs group by status",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Polls `condition` every 50 ms until it holds; panics after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn record_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("executions-{}", Uuid::new_v4()))
}

/// `(run id, attempt)` per recorded execution start, in order.
fn recorded(path: &std::path::Path) -> Vec<(Uuid, i32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (id, attempt) = l.split_once(' ').unwrap();
            (id.parse().unwrap(), attempt.parse().unwrap())
        })
        .collect()
}

async fn run_row(client: &Client, run: Uuid) -> (String, i32, Option<String>) {
    let row = client
        .query_one(
            "select status, attempt, executor_id from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_finish_2000_runs_each_exactly_once() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let mut all = Vec::new();
    for _ in 0..20 {
        let (company, app) = tenant(&client).await;
        all.extend(enqueue(&client, company, app, 100).await);
    }
    let record = record_file();
    let execution = format!("record={}", record.display());
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|_| {
            Daemon::spawn(
                &db,
                DaemonOptions::new(&execution)
                    .queue("max_concurrent_runs", "8")
                    .until_idle(),
            )
        })
        .collect();
    for daemon in &mut daemons {
        let status = daemon.wait(Duration::from_secs(240));
        assert!(status.success(), "{}", daemon.log_text());
    }

    assert_eq!(
        status_counts(&client).await,
        HashMap::from([("success".to_owned(), 2000)])
    );
    let executions = recorded(&record);
    let distinct: HashSet<Uuid> = executions.iter().map(|(id, _)| *id).collect();
    assert_eq!(executions.len(), 2000, "some run executed twice");
    assert_eq!(distinct, all.iter().copied().collect::<HashSet<_>>());
    assert!(executions.iter().all(|(_, attempt)| *attempt == 1));
    let executors = client
        .query(
            "select state, running, capacity from public.app_executors",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(executors.len(), 3);
    for row in executors {
        let (state, running, capacity): (String, i32, i32) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((state.as_str(), running, capacity), ("stopped", 0, 8));
    }
    let untidy: i64 = client
        .query_one(
            "select count(*) from public.app_runs where completed_at is null or duration_ms is null or lease_expires_at is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(untidy, 0);
    let _ = std::fs::remove_file(record);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemons_runs_are_rescued_within_one_lease_and_its_late_write_is_fenced() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = tenant(&client).await;
    let runs = enqueue(&client, company, app, 3).await;

    let mut holder = Daemon::spawn(&db, DaemonOptions::new("sleep=600s"));
    wait_for(
        "the first daemon to hold all runs",
        Duration::from_secs(20),
        || async { status_counts(&client).await.get("running") == Some(&3) },
    )
    .await;
    let (_, _, stale_executor) = run_row(&client, runs[0]).await;
    holder.kill_hard();
    let killed_at = Instant::now();

    let mut rescuer = Daemon::spawn(&db, DaemonOptions::new("sleep=50ms"));
    wait_for(
        "the runs to be finished by another daemon",
        Duration::from_secs(30),
        || async { status_counts(&client).await.get("success") == Some(&3) },
    )
    .await;
    let took = killed_at.elapsed();
    // Lease 3 s + rescue sweep 500 ms + heartbeat 500 ms, plus process start-up.
    assert!(took < Duration::from_secs(8), "rescue took {took:?}");

    for run in &runs {
        let (status, attempt, executor) = run_row(&client, *run).await;
        assert_eq!(status, "success");
        assert_eq!(attempt, 2, "the rescue did not count a new attempt");
        assert_ne!(executor, stale_executor);
    }

    // The dead daemon's late completion matches no row and changes nothing.
    let pool = app_executor::db::pool(&db.url, Duration::from_secs(10), 2).unwrap();
    let late = app_executor::db::queue::finish_run(
        &pool,
        app_executor::db::queue::Queue::Runs,
        runs[0],
        stale_executor.as_deref().unwrap(),
        1,
        &app_executor::db::queue::Completion {
            status: app_executor::model::FinalStatus::Failed,
            error_kind: Some("late"),
            error_message: Some("late write from a dead daemon"),
            exit_code: Some(1),
        },
    )
    .await
    .unwrap();
    assert!(!late, "a stale executor's write was accepted");
    assert_eq!(run_row(&client, runs[0]).await.0, "success");

    rescuer.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_runs_pending_or_running_stay_cancelled() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = tenant(&client).await;
    let runs = enqueue(&client, company, app, 2).await;
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::new("sleep=600s").queue("company_running_cap", "1"),
    );
    wait_for("one run to be running", Duration::from_secs(20), || async {
        status_counts(&client).await.get("running") == Some(&1)
    })
    .await;
    let cancelled_at = Instant::now();
    client
        .execute("update public.app_runs set status = 'cancelled'", &[])
        .await
        .unwrap();
    wait_for("the running run's cancellation to be recorded", Duration::from_secs(10), || async {
        client
            .query_one(
                "select count(*) from public.app_runs where status = 'cancelled' and completed_at is not null",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    // NOTIFY makes this prompt; the periodic lease check (500 ms) would catch it too.
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    let row = client
        .query_one(
            "select error_kind, duration_ms from public.app_runs where completed_at is not null",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("cancelled")
    );
    assert!(row.get::<_, Option<i64>>(1).is_some());

    daemon.stop();
    for run in runs {
        assert_eq!(run_row(&client, run).await.0, "cancelled");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_lets_short_runs_finish() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = tenant(&client).await;
    enqueue(&client, company, app, 2).await;
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::new("sleep=1500ms").queue("drain_grace", "20s"),
    );
    wait_for("two running runs", Duration::from_secs(20), || async {
        status_counts(&client).await.get("running") == Some(&2)
    })
    .await;
    daemon.stop();
    assert_eq!(
        status_counts(&client).await,
        HashMap::from([("success".to_owned(), 2)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_returns_over_long_runs_to_the_queue_without_charging_an_attempt() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = tenant(&client).await;
    let runs = enqueue(&client, company, app, 2).await;
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::new("sleep=600s").queue("drain_grace", "1s"),
    );
    wait_for("two running runs", Duration::from_secs(20), || async {
        status_counts(&client).await.get("running") == Some(&2)
    })
    .await;
    daemon.stop();
    for run in runs {
        let (status, attempt, executor) = run_row(&client, run).await;
        assert_eq!((status.as_str(), attempt, executor), ("pending", 0, None));
    }
    let state: String = client
        .query_one("select state from public.app_executors", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = tenant(&client).await;
    enqueue(&client, company, app, 1).await;
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::new("sleep=600s").queue("drain_grace", "10m"),
    );
    wait_for("a running run", Duration::from_secs(20), || async {
        status_counts(&client).await.get("running") == Some(&1)
    })
    .await;
    daemon.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.signal("TERM");
    let status = daemon.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(app_executor::shutdown::EXIT_FORCED));
    // The run stays leased until its lease expires and another daemon rescues it.
    assert_eq!(status_counts(&client).await.get("running"), Some(&1));
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_are_picked_up_by_polling_when_notifications_are_missed() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = tenant(&client).await;
    let mut daemon = Daemon::spawn(&db, DaemonOptions::new("").queue("poll_interval", "1s"));
    // Wait until the daemon has registered (and so is past its namespace check), then send
    // every NOTIFY to a channel nobody listens on.
    wait_for(
        "the daemon to register",
        Duration::from_secs(20),
        || async {
            client
                .query_one("select count(*) from public.app_executors", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        },
    )
    .await;
    client
        .execute(
            "update app_exec.settings set value = 'nobody_listens' where key = 'notify_namespace'",
            &[],
        )
        .await
        .unwrap();
    enqueue(&client, company, app, 3).await;
    wait_for(
        "polling to pick the runs up",
        Duration::from_secs(10),
        || async { status_counts(&client).await.get("success") == Some(&3) },
    )
    .await;
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_company_is_served_before_an_earlier_companys_backlog() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company_a, app_a) = tenant(&client).await;
    let (company_b, app_b) = tenant(&client).await;
    enqueue(&client, company_a, app_a, 500).await;
    let record = record_file();
    let slots = 4;
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::new(&format!("sleep=20ms,record={}", record.display()))
            .queue("max_concurrent_runs", &slots.to_string())
            .queue("company_running_cap", "50")
            .queue("app_running_cap", "50")
            .until_idle(),
    );
    wait_for(
        "company A's backlog to be under way",
        Duration::from_secs(20),
        || async { recorded(&record).len() >= 20 },
    )
    .await;
    let b_runs: HashSet<Uuid> = enqueue(&client, company_b, app_b, 5)
        .await
        .into_iter()
        .collect();
    let started_before_b = recorded(&record).len();
    assert!(
        daemon.wait(Duration::from_secs(120)).success(),
        "{}",
        daemon.log_text()
    );

    let order = recorded(&record);
    let last_b = order
        .iter()
        .rposition(|(id, _)| b_runs.contains(id))
        .expect("company B's runs never ran");
    // The guarantee: a company with fewer runs in flight gets the next free slot, so all of
    // B's n runs start within 2n + slots claims of being enqueued.
    let bound = 2 * b_runs.len() + slots;
    assert!(
        last_b < started_before_b + bound,
        "B's last run started {} claims after B enqueued (bound {bound})",
        last_b - started_before_b
    );
    let _ = std::fs::remove_file(record);
}

#[tokio::test(flavor = "multi_thread")]
async fn running_caps_hold_across_daemons() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (capped, capped_app) = tenant(&client).await;
    let (overridden, overridden_app) = tenant(&client).await;
    enqueue(&client, capped, capped_app, 20).await;
    enqueue(&client, overridden, overridden_app, 20).await;
    let options = || {
        DaemonOptions::new("sleep=200ms")
            .queue("max_concurrent_runs", "8")
            .queue("company_running_cap", "2")
            .queue("app_running_cap", "50")
            .queue(&format!("company_caps__{overridden}"), "5")
            .until_idle()
    };
    let mut daemons = [Daemon::spawn(&db, options()), Daemon::spawn(&db, options())];
    let mut peak: HashMap<Uuid, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_counts(&client).await.get("success") != Some(&40) {
        assert!(Instant::now() < deadline, "runs did not finish");
        for row in client
            .query(
                "select company_id, count(*) from public.app_runs where status = 'running' group by company_id",
                &[],
            )
            .await
            .unwrap()
        {
            let entry = peak.entry(row.get(0)).or_default();
            *entry = (*entry).max(row.get(1));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for daemon in &mut daemons {
        assert!(daemon.wait(Duration::from_secs(20)).success());
    }
    assert!(
        peak[&capped] <= 2,
        "company cap exceeded: {}",
        peak[&capped]
    );
    assert!(
        peak[&overridden] <= 5,
        "override exceeded: {}",
        peak[&overridden]
    );
    assert!(
        peak[&overridden] > 2,
        "the override was not applied: {}",
        peak[&overridden]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_daemons_database_sessions_mid_run_loses_nothing() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = tenant(&client).await;
    let runs = enqueue(&client, company, app, 40).await;
    let record = record_file();
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::new(&format!("sleep=300ms,record={}", record.display()))
            .queue("company_running_cap", "8")
            .queue("app_running_cap", "8")
            .queue("max_concurrent_runs", "8")
            .until_idle(),
    );
    for _ in 0..4 {
        wait_for("some runs in flight", Duration::from_secs(20), || async {
            status_counts(&client)
                .await
                .get("running")
                .copied()
                .unwrap_or(0)
                > 0
        })
        .await;
        client
            .execute(
                "select pg_terminate_backend(pid) from pg_stat_activity
                  where datname = current_database() and application_name like 'app-executor%' and pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let status = daemon.wait(Duration::from_secs(90));
    assert!(status.success(), "{}", daemon.log_text());
    assert_eq!(
        status_counts(&client).await,
        HashMap::from([("success".to_owned(), 40)])
    );
    let executions = recorded(&record);
    let distinct: HashSet<Uuid> = executions.iter().map(|(id, _)| *id).collect();
    assert_eq!(executions.len(), 40, "a run was executed twice");
    assert_eq!(distinct, runs.into_iter().collect::<HashSet<_>>());
    let _ = std::fs::remove_file(record);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_mid_run_loses_and_duplicates_nothing() {
    let (cluster, db) = TestDb::private_cluster("restart").await;
    let root = cluster.root().to_path_buf();
    let client = db.client().await;
    let (company, app) = tenant(&client).await;
    let runs = enqueue(&client, company, app, 20).await;
    drop(client);
    let record = record_file();
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::new(&format!("sleep=400ms,record={}", record.display()))
            .queue("max_concurrent_runs", "4")
            .until_idle(),
    );
    wait_for("runs in flight", Duration::from_secs(20), || async {
        recorded(&record).len() >= 4
    })
    .await;

    let restart = cluster.clone();
    tokio::task::spawn_blocking(move || {
        restart.stop().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        app_executor::embedded_postgres::EmbeddedPostgres::ensure_running(restart.root()).unwrap()
    })
    .await
    .unwrap();

    let status = daemon.wait(Duration::from_secs(90));
    assert!(status.success(), "{}", daemon.log_text());
    let client = db.client().await;
    assert_eq!(
        status_counts(&client).await,
        HashMap::from([("success".to_owned(), 20)])
    );
    let executions = recorded(&record);
    assert_eq!(executions.len(), 20, "a run was executed twice");
    let distinct: HashSet<Uuid> = executions.iter().map(|(id, _)| *id).collect();
    assert_eq!(distinct, runs.into_iter().collect::<HashSet<_>>());
    drop(client);
    cluster.stop().unwrap();
    let _ = std::fs::remove_file(record);
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_runs_with_a_clear_reason_and_the_queue_keeps_flowing() {
    use app_executor::storage::{BucketPolicy, LocalStorage, Storage, UploadBody};
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, unpublished_app) = tenant(&client).await;
    let app: Uuid = client
        .query_one(
            "insert into public.applications (name) values ('hello') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Publish examples/hello's manifest and entrypoint by hand into the daemon's local storage.
    let storage = LocalStorage::new(state.path().join("storage"), BucketPolicy::default());
    for file in ["manifest.json", "index.js"] {
        let bytes = std::fs::read(format!(
            "{}/examples/hello/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let key = format!("app_{app}/1.0.0/{file}");
        storage
            .upload(
                "app-storage",
                &key,
                UploadBody::Bytes(bytes.clone().into()),
                "application/octet-stream",
                false,
            )
            .await
            .unwrap();
        let checksum = format!(
            "sha256:{}",
            app_executor::artifact::version::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes))
        );
        let file_type = if file == "manifest.json" {
            "manifest"
        } else {
            "source"
        };
        client
            .execute(
                "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum)
                 values ($1, '1.0.0', $2, $3, $4, $5)",
                &[&app, &key, &file_type, &(bytes.len() as i64), &checksum],
            )
            .await
            .unwrap();
    }
    let insert = "insert into public.app_runs (app_id, company_id, metadata) values ($1, $2, $3) returning id";
    let id = |row: tokio_postgres::Row| row.get::<_, Uuid>(0);
    let unpublished = id(client
        .query_one(
            insert,
            &[&unpublished_app, &company, &serde_json::json!({})],
        )
        .await
        .unwrap());
    let garbage = id(client
        .query_one(
            insert,
            &[
                &app,
                &company,
                &serde_json::json!({"version": {"not": "a version"}}),
            ],
        )
        .await
        .unwrap());
    let unknown = id(client
        .query_one(
            insert,
            &[&app, &company, &serde_json::json!({"version": "7.0.0"})],
        )
        .await
        .unwrap());
    let good = id(client
        .query_one(insert, &[&app, &company, &serde_json::json!({})])
        .await
        .unwrap());

    let mut daemon = Daemon::spawn(&db, DaemonOptions::production(state.path()).until_idle());
    assert!(
        daemon.wait(Duration::from_secs(60)).success(),
        "{}",
        daemon.log_text()
    );

    let outcome = |run: Uuid| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "select status, error_kind, error_message, artifact_digest from public.app_runs where id = $1",
                    &[&run],
                )
                .await
                .unwrap();
            (
                row.get::<_, String>(0),
                row.get::<_, Option<String>>(1).unwrap_or_default(),
                row.get::<_, Option<String>>(2).unwrap_or_default(),
                row.get::<_, Option<String>>(3),
            )
        }
    };
    let (status, kind, message, _) = outcome(unpublished).await;
    assert_eq!(
        (status.as_str(), kind.as_str()),
        ("failed", "app_not_published"),
        "{message}"
    );
    let (status, kind, message, _) = outcome(garbage).await;
    assert_eq!(
        (status.as_str(), kind.as_str()),
        ("failed", "unknown_version")
    );
    assert!(message.contains("metadata.version"), "{message}");
    let (_, kind, message, _) = outcome(unknown).await;
    assert_eq!(kind, "unknown_version");
    assert!(
        message.contains("7.0.0") && message.contains("1.0.0"),
        "{message}"
    );
    // The good run's files verified (digest recorded): without package.json one is generated
    // from the manifest's dependencies, whose vendored tarball was not published, and the
    // install says so.
    let (status, kind, message, digest) = outcome(good).await;
    assert_eq!(
        (status.as_str(), kind.as_str()),
        ("failed", "install_failed"),
        "{message}"
    );
    assert!(message.contains("greeting-1.0.0.tgz"), "{message}");
    assert!(digest.is_some_and(|d| d.starts_with("sha256:")));
    assert!(
        !state.path().join("runs").read_dir().unwrap().any(|_| true),
        "run directories left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_claim_takes_priority_then_age_and_passes_over_an_app_at_its_cap() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, busy_app) = tenant(&client).await;
    let other_app: Uuid = client
        .query_one(
            "insert into public.applications (name) values ('other') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let insert = |app: Uuid, priority: i32| {
        let client = &client;
        async move {
            let id: Uuid = client
                .query_one(
                    "insert into public.app_runs (app_id, company_id, priority) values ($1, $2, $3) returning id",
                    &[&app, &company, &priority],
                )
                .await
                .unwrap()
                .get(0);
            id
        }
    };
    // Oldest first: two runs of the busy app, then the other app's run; then a later, urgent one.
    let busy_first = insert(busy_app, 0).await;
    let busy_second = insert(busy_app, 0).await;
    let other = insert(other_app, 0).await;
    let urgent = insert(busy_app, 5).await;
    let claim = |app_cap: i32| {
        let client = &client;
        async move {
            client
                .query_opt(
                    "select id from app_exec.claim_next_run('claimer', '30 seconds', 100, $1)",
                    &[&app_cap],
                )
                .await
                .unwrap()
                .map(|row| row.get::<_, Uuid>(0))
        }
    };

    assert_eq!(claim(1).await, Some(urgent), "higher priority goes first");
    // The busy app is now at its cap of 1: its older runs wait, the other app's run is next.
    assert_eq!(claim(1).await, Some(other));
    assert_eq!(claim(1).await, None, "only the capped app has pending runs");
    assert_eq!(claim(2).await, Some(busy_first), "then oldest first");
    assert_eq!(claim(3).await, Some(busy_second));
}

/// tokio-postgres prints a server's error as just "db error"; a queue error carries the
/// server's message and SQLSTATE, so an operator reading the daemon's log sees the cause.
#[tokio::test]
async fn a_failing_statement_names_the_servers_reason() {
    let db = TestDb::empty().await;
    let pool = app_executor::db::pool(&db.url, Duration::from_secs(10), 1).unwrap();
    let error = app_executor::db::queue::finish_run(
        &pool,
        app_executor::db::queue::Queue::Runs,
        Uuid::new_v4(),
        "e1",
        1,
        &app_executor::db::queue::Completion {
            status: app_executor::model::FinalStatus::Success,
            error_kind: None,
            error_message: None,
            exit_code: Some(0),
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("failed to prepare a queue statement")
            && error.contains("relation \"public.app_runs\" does not exist")
            && error.contains("SQLSTATE 42P01"),
        "{error}"
    );
}

#[tokio::test]
async fn a_session_holding_a_companys_claim_lock_delays_no_other_company() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (stuck_company, stuck_app) = tenant(&client).await;
    let (other_company, other_app) = tenant(&client).await;
    // The stuck company's run is the older one, so the claim tries its company first.
    let stuck_run = enqueue(&client, stuck_company, stuck_app, 1).await[0];
    let other_run = enqueue(&client, other_company, other_app, 1).await[0];
    let holder = db.client().await;
    hold_company_claim(&holder, stuck_company).await;
    let pool = app_executor::db::pool(&db.url, Duration::from_secs(10), 2).unwrap();
    let first = crate::harness::run::claim(&pool).await;
    assert_eq!(
        first.map(|r| r.id),
        Some(other_run),
        "the other company waited"
    );
    // Only the stuck company is left: nothing to claim now, and no error.
    assert!(crate::harness::run::claim(&pool).await.is_none());
    release_company_claim(&holder, stuck_company).await;
    let last = crate::harness::run::claim(&pool).await;
    assert_eq!(last.map(|r| r.id), Some(stuck_run));
}

#[tokio::test]
async fn an_expired_lease_is_not_renewed() {
    let db = TestDb::migrated().await;
    let (pool, run) = crate::harness::run::claim_run(&db).await;
    let client = db.client().await;
    let renew = || {
        app_executor::db::queue::extend_lease(
            &pool,
            app_executor::db::queue::Queue::Runs,
            run.id,
            crate::harness::run::EXECUTOR,
            run.attempt,
            Duration::from_secs(30),
        )
    };
    assert_eq!(
        renew().await.unwrap(),
        app_executor::db::queue::LeaseState::Held
    );
    // The lease runs out (no rescuer has looked yet): renewing it now would race a rescuer.
    client
        .execute(
            "update public.app_runs set lease_expires_at = now() - interval '1 second' where id = $1",
            &[&run.id],
        )
        .await
        .unwrap();
    assert_eq!(
        renew().await.unwrap(),
        app_executor::db::queue::LeaseState::Lost
    );
}

/// One statement claims for several free slots: a round per company in fairness order (fewest
/// running, then oldest eligible run), each company and app cap holding within the batch.
#[tokio::test]
async fn a_batch_claim_serves_companies_in_rounds_under_their_caps() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let mut companies = Vec::new();
    for _ in 0..3 {
        let (company, app) = tenant(&client).await;
        enqueue(&client, company, app, 5).await;
        companies.push(company);
    }
    let claim = |max_runs: i32, company_cap: i32| {
        let client = &client;
        async move {
            client
                .query(
                    "select company_id from app_exec.claim_runs('batcher', '30 seconds', $1, $2, 100)",
                    &[&max_runs, &company_cap],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<_, Uuid>(0))
                .collect::<Vec<_>>()
        }
    };
    let per_company = |claimed: &[Uuid]| {
        companies
            .iter()
            .map(|c| claimed.iter().filter(|x| *x == c).count())
            .collect::<Vec<_>>()
    };

    // Eight slots over three companies with nothing running: 3, 3 and 2, oldest company first,
    // and the order of the batch is the rounds' order.
    let first = claim(8, 100).await;
    assert_eq!(per_company(&first), vec![3, 3, 2], "{first:?}");
    assert_eq!(
        &first[..3],
        &companies[..],
        "round one: one run each, oldest first"
    );
    // A company cap of 4: the first two companies have 3 running (one more each), the third
    // has 2 (two more); asking for 8 gets those 4 and no more.
    let second = claim(8, 4).await;
    assert_eq!(per_company(&second), vec![1, 1, 2], "{second:?}");
    // Every company at its cap: nothing, and no contention reported.
    assert!(claim(8, 4).await.is_empty());
}

/// A claim never waits for another session's claim lock: with the only company that has runs
/// locked elsewhere it returns at once (a statement timeout far below the function's own
/// `lock_timeout` would cancel a wait), with the marker row that says runs are pending but
/// were passed over.
#[tokio::test]
async fn a_claim_passes_over_a_locked_company_without_waiting_and_says_so() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = tenant(&client).await;
    let run = enqueue(&client, company, app, 1).await[0];
    let holder = db.client().await;
    hold_company_claim(&holder, company).await;
    client
        .batch_execute("set statement_timeout = '200ms'")
        .await
        .unwrap();
    let rows = client
        .query(
            "select id from app_exec.claim_runs('passer', '30 seconds', 4, 100, 100)",
            &[],
        )
        .await
        .expect("the claim returned without waiting for the lock");
    let ids: Vec<Option<Uuid>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![None], "one marker row, no run");

    // Through the daemon's own call: nothing claimed, contended.
    let pool = app_executor::db::pool(&db.url, Duration::from_secs(10), 1).unwrap();
    let limits = app_executor::db::queue::ClaimLimits {
        lease: Duration::from_secs(30),
        company_cap: 100,
        app_cap: 100,
        company_caps: serde_json::json!({}),
    };
    let batch = app_executor::db::queue::claim_runs(&pool, "passer", &limits, 4)
        .await
        .unwrap();
    assert!(batch.runs.is_empty() && batch.contended, "{batch:?}");

    release_company_claim(&holder, company).await;
    let batch = app_executor::db::queue::claim_runs(&pool, "passer", &limits, 4)
        .await
        .unwrap();
    assert_eq!(
        batch.runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![run]
    );
    assert!(!batch.contended);
}
