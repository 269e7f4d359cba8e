//! `app-executor status` against a live daemon: `--json` shows its executor, the queue and the
//! run in flight; `--watch` draws the same on a terminal (driven under tmux).

use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::harness::apps::enqueue;
use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::{insert_tenant, TestDb};

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_executor_the_queue_and_the_running_run_as_json_and_on_screen() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let first = enqueue(&client, app, company, serde_json::json!({})).await;
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::new("sleep=60s")
            .queue("max_concurrent_runs", "1")
            .queue("drain_grace", "1s"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .query_one(
            "select status from public.app_runs where id = $1",
            &[&first],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
        != "running"
    {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    enqueue(&client, app, company, serde_json::json!({})).await;
    enqueue(&client, app, company, serde_json::json!({})).await;

    // The executor row's `running` is written by its heartbeat: ask until it has caught up.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let out = crate::harness::cli(&db, &["status", "--json"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["executors"][0]["running"] == 1 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let executors = status["executors"].as_array().unwrap();
    assert_eq!(executors.len(), 1, "{status}");
    assert_eq!(executors[0]["state"], "active");
    assert_eq!(
        (
            executors[0]["capacity"].as_i64(),
            executors[0]["running"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let executor = executors[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(status["queue"][0]["company_id"], company.to_string());
    assert_eq!(status["queue"][0]["pending"], 2);
    assert_eq!(status["running"][0]["run_id"], first.to_string());
    assert_eq!(status["running"][0]["executor_id"], executor.as_str());
    assert_eq!(status["failures_last_hour"], serde_json::json!([]));

    // The same on a terminal: tmux on a socket of its own, the screen captured.
    let socket = format!("status-{}", Uuid::new_v4().simple());
    let command = format!(
        "env DATABASE_URL='{}' APP_EXECUTOR_CONFIG='{}' {} status --watch --interval 200ms",
        db.url.expose(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        crate::harness::binary()
    );
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .expect("tmux is installed by scripts/test")
    };
    let started = tmux(&["new-session", "-d", "-x", "200", "-y", "50", &command]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let screen = loop {
        let screen = String::from_utf8(tmux(&["capture-pane", "-p"]).stdout).unwrap();
        if screen.contains(&first.to_string()) || Instant::now() > deadline {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = tmux(&["kill-server"]);
    assert!(screen.contains(&executor), "{screen}");
    assert!(screen.contains("queue: 2 pending"), "{screen}");
    assert!(screen.contains(&format!("run {first}")), "{screen}");
    assert_eq!(
        screen.matches("app-executor status at").count(),
        1,
        "redrawn in place:\n{screen}"
    );
    daemon.stop();
}
