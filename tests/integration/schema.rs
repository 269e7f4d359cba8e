//! The schema's own guarantees: CHECK enums, uniqueness, the terminal-state guard, NOTIFY.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, Client};
use uuid::Uuid;

use crate::harness::TestDb;

struct Fixture {
    company: Uuid,
    app: Uuid,
}

async fn fixture(client: &Client) -> Fixture {
    let company: Uuid = client
        .query_one(
            "insert into public.companies (name) values ('Acme') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let app: Uuid = client
        .query_one(
            "insert into public.applications (name) values ('hello') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    Fixture { company, app }
}

async fn insert_run(client: &Client, f: &Fixture) -> Uuid {
    client
        .query_one(
            "insert into public.app_runs (app_id, company_id) values ($1, $2) returning id",
            &[&f.app, &f.company],
        )
        .await
        .unwrap()
        .get(0)
}

/// A schedule of the fixture's app with `cron_expression`.
async fn insert_schedule(client: &Client, f: &Fixture, cron_expression: &str) -> Uuid {
    client
        .query_one(
            "insert into public.app_cron_schedules (app_id, company_id, cron_expression) values ($1, $2, $3) returning id",
            &[&f.app, &f.company, &cron_expression],
        )
        .await
        .unwrap()
        .get(0)
}

fn sqlstate(result: Result<u64, tokio_postgres::Error>) -> String {
    match result {
        Ok(n) => format!("succeeded ({n} rows)"),
        Err(e) => e
            .code()
            .map(|c| c.code().to_owned())
            .unwrap_or_else(|| e.to_string()),
    }
}

#[tokio::test]
async fn every_check_enum_rejects_a_bad_value() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let f = fixture(&client).await;
    let run = insert_run(&client, &f).await;
    let schedule = insert_schedule(&client, &f, "* * * * *").await;
    let sha = format!("sha256:{}", "a".repeat(64));
    let cases: Vec<(&str, Result<u64, tokio_postgres::Error>)> = vec![
        (
            "app_storage.file_type",
            client.execute(
                "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum) values ($1, '1.0.0', 'app_' || $1::uuid::text || '/1.0.0/a.js', 'binary', 1, $2)",
                &[&f.app, &sha],
            ).await,
        ),
        (
            "app_storage.checksum",
            client.execute(
                "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum) values ($1, '1.0.0', 'app_' || $1::uuid::text || '/1.0.0/a.js', 'source', 1, 'md5:abc')",
                &[&f.app],
            ).await,
        ),
        (
            "app_builds.build_status",
            client.execute(
                "insert into public.app_builds (app_id, build_version, build_status) values ($1, '1.0.0', 'done')",
                &[&f.app],
            ).await,
        ),
        (
            "app_runs.status",
            client.execute("update public.app_runs set status = 'done' where id = $1", &[&run]).await,
        ),
        (
            "app_runs.run_type",
            client.execute(
                "insert into public.app_runs (app_id, company_id, run_type) values ($1, $2, 'bogus')",
                &[&f.app, &f.company],
            ).await,
        ),
        (
            "app_runs.error_kind",
            client.execute("update public.app_runs set error_kind = 'Not Snake' where id = $1", &[&run]).await,
        ),
        (
            "app_outputs.output_type",
            client.execute(
                "insert into public.app_outputs (run_id, output_type) values ($1, 'blob')",
                &[&run],
            ).await,
        ),
        (
            "app_permissions.permission_type",
            client.execute(
                "insert into public.app_permissions (app_id, permission_type) values ($1, 'root')",
                &[&f.app],
            ).await,
        ),
        (
            "app_executors.state",
            client.execute(
                "insert into public.app_executors (id, host, version, capacity, state) values ('e1', 'h', '0', 1, 'sleeping')",
                &[],
            ).await,
        ),
        (
            "app_cron_ticks.outcome",
            client.execute(
                "insert into public.app_cron_ticks (schedule_id, scheduled_for, outcome) values ($1, now(), 'maybe')",
                &[&schedule],
            ).await,
        ),
        (
            "app_cron_ticks.reason",
            client.execute(
                "insert into public.app_cron_ticks (schedule_id, scheduled_for, outcome, reason) values ($1, now(), 'skipped', 'bored')",
                &[&schedule],
            ).await,
        ),
    ];
    for (what, result) in cases {
        assert_eq!(sqlstate(result), "23514", "{what} accepted a bad value");
    }
}

#[tokio::test]
async fn duplicates_are_rejected_by_unique_constraints() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let f = fixture(&client).await;
    let sha = format!("sha256:{}", "b".repeat(64));
    let insert_file = "insert into public.app_storage (app_id, version, file_path, file_type, file_size, checksum) values ($1, '1.0.0', 'app_' || $1::uuid::text || '/1.0.0/index.js', 'source', 1, $2)";
    client.execute(insert_file, &[&f.app, &sha]).await.unwrap();
    assert_eq!(
        sqlstate(client.execute(insert_file, &[&f.app, &sha]).await),
        "23505"
    );

    let schedule = insert_schedule(&client, &f, "0 * * * *").await;
    let tick = "insert into public.app_runs (app_id, company_id, run_type, schedule_id, scheduled_for) values ($1, $2, 'cron', $3, '2026-01-01T00:00:00Z')";
    client
        .execute(tick, &[&f.app, &f.company, &schedule])
        .await
        .unwrap();
    assert_eq!(
        sqlstate(client.execute(tick, &[&f.app, &f.company, &schedule]).await),
        "23505",
        "a schedule fired twice for one tick"
    );
}

#[tokio::test]
async fn a_finished_run_cannot_become_running_again() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let f = fixture(&client).await;
    let run = insert_run(&client, &f).await;
    client
        .execute(
            "update public.app_runs set status = 'running', executor_id = 'e1', lease_expires_at = now() + interval '30 seconds' where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    client
        .execute(
            "update public.app_runs set status = 'success' where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    let err = client
        .execute(
            "update public.app_runs set status = 'running' where id = $1",
            &[&run],
        )
        .await
        .unwrap_err();
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("already success"), "{message}");
    let status: String = client
        .query_one("select status from public.app_runs where id = $1", &[&run])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "success");
}

#[tokio::test]
async fn a_cancelled_run_cannot_be_completed_late() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let f = fixture(&client).await;
    let run = insert_run(&client, &f).await;
    client
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    for late in ["success", "failed", "running", "pending"] {
        let result = client
            .execute(
                &format!("update public.app_runs set status = '{late}' where id = $1"),
                &[&run],
            )
            .await;
        assert_eq!(sqlstate(result), "23514", "cancelled became {late}");
    }
}

#[tokio::test]
async fn a_pending_run_cannot_skip_to_success() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let f = fixture(&client).await;
    let run = insert_run(&client, &f).await;
    let result = client
        .execute(
            "update public.app_runs set status = 'success' where id = $1",
            &[&run],
        )
        .await;
    assert_eq!(sqlstate(result), "23514");
}

/// A session that has run `listen` (e.g. `listen a; listen b`) and forwards every notification
/// it receives as `(channel, payload)`. The returned client keeps the session open.
async fn listen(
    db: &TestDb,
    listen: &str,
) -> (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    let config: tokio_postgres::Config = db.url.expose().parse().unwrap();
    let (listener, mut connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute(listen).await.unwrap();
    (listener, rx)
}

#[tokio::test]
async fn pending_runs_cancellations_and_schedule_changes_notify_the_namespaced_channels() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .execute(
            "update app_exec.settings set value = 'ns_test' where key = 'notify_namespace'",
            &[],
        )
        .await
        .unwrap();
    let (_listener, mut rx) = listen(
        &db,
        "listen ns_test_run_pending; listen ns_test_run_cancelled; listen ns_test_schedule_changed; listen app_executor_run_pending",
    )
    .await;

    let f = fixture(&client).await;
    let run = insert_run(&client, &f).await;
    client
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    insert_schedule(&client, &f, "0 * * * *").await;

    let mut received = Vec::new();
    while received.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(n)) => received.push(n),
            _ => break,
        }
    }
    let channels: Vec<&str> = received.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        channels,
        vec![
            "ns_test_run_pending",
            "ns_test_run_cancelled",
            "ns_test_schedule_changed"
        ]
    );
    let pending: serde_json::Value = serde_json::from_str(&received[0].1).unwrap();
    assert_eq!(pending["run_id"], run.to_string());
    assert_eq!(pending["company_id"], f.company.to_string());

    // A multi-row insert (the cron scheduler's) notifies once, with the count.
    client
        .execute(
            "insert into public.app_runs (app_id, company_id) select $1, $2 from generate_series(1, 3)",
            &[&f.app, &f.company],
        )
        .await
        .unwrap();
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(channel, "ns_test_run_pending");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&payload).unwrap(),
        serde_json::json!({"runs": 3})
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "one notification per statement"
    );
}

/// The scheduler moves `next_run_at` later after every fire; that must not wake every daemon's
/// scheduler (10,000 schedules a minute would be 10,000 notifications), while any edit must.
#[tokio::test]
async fn advancing_a_schedule_is_quiet_but_every_edit_notifies() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let f = fixture(&client).await;
    let (_listener, mut rx) = listen(&db, "listen app_executor_schedule_changed").await;
    let schedule = insert_schedule(&client, &f, "0 * * * *").await;
    let run = insert_run(&client, &f).await;
    // Everything received until the channel has been quiet for 300 ms.
    async fn drain(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    ) -> Vec<(String, String)> {
        let mut received = Vec::new();
        while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            received.push(n);
        }
        received
    }
    assert_eq!(drain(&mut rx).await.len(), 1, "the insert notifies");
    let changes = [
        // (SET clause, notifies?)
        ("next_run_at = '2030-01-01 10:00Z'", true), // planned: it was null
        (
            "next_run_at = '2030-01-01 11:00Z', last_run_at = '2030-01-01 10:00Z', last_run_id = $2",
            false, // the scheduler's advance after a fire
        ),
        ("next_run_at = '2030-01-01 09:00Z'", true), // moved earlier
        ("config = '{\"overlap\": \"queue\"}'", true),
        ("name = 'nightly'", true),
        ("is_active = false", true),
        ("is_active = true", true),
        ("cron_expression = '5 * * * *'", true),
    ];
    for (set, notifies) in changes {
        let sql = format!(
            "update public.app_cron_schedules set {set} where id = $1 and $2::uuid is not null"
        );
        client.execute(&sql, &[&schedule, &run]).await.unwrap();
        let received = drain(&mut rx).await;
        assert_eq!(
            received.len(),
            usize::from(notifies),
            "`set {set}` sent {received:?}"
        );
    }
}

/// Migrations 20250801000009 and 20250801000010 list the columns whose edits notify the
/// schedulers and withdraw runs fired ahead; a new column must be added to both, or edits of
/// it would go unnoticed.
#[tokio::test]
async fn the_schedule_edit_triggers_know_every_column() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let columns: Vec<String> = client
        .query(
            "select column_name::text from information_schema.columns
             where table_schema = 'public' and table_name = 'app_cron_schedules'
             order by column_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The scheduler's own bookkeeping; every other column is an edit.
    let bookkeeping = ["next_run_at", "last_run_at", "last_run_id", "updated_at"];
    for trigger in [
        "app_cron_schedules_notify_update",
        "app_cron_schedules_withdraw_on_edit",
    ] {
        let definition: String = client
            .query_one(
                "select pg_get_triggerdef(oid) from pg_trigger where tgname = $1",
                &[&trigger],
            )
            .await
            .unwrap()
            .get(0);
        for column in columns
            .iter()
            .filter(|c| !bookkeeping.contains(&c.as_str()))
        {
            assert!(
                definition.contains(&format!("old.{column}"))
                    && definition.contains(&format!("new.{column}")),
                "app_cron_schedules.{column} is missing from the WHEN clause of {trigger}: \
                 an edit of it would go unnoticed\n{definition}"
            );
        }
    }
}
