//! Usage per company and app per day (`app_usage_daily`), from real runs of two companies
//! through the daemon: each company's row adds up exactly what its runs recorded, whichever
//! way they ended, and a company's member reads only its own rows.

use std::path::Path;

use serde_json::json;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::harness::apps::{self, enqueue, publish_ok, run_record, write_app};
use crate::harness::daemon::{run_until_idle, DaemonOptions};
use crate::harness::TestDb;
use crate::webhooks::tenant;

/// One `app_usage_daily` row, the numbers that tests compare.
#[derive(Debug, PartialEq)]
struct Usage {
    runs: [i32; 5],
    run_seconds: f64,
    cpu_seconds: f64,
    peak_memory_bytes: i64,
    downloaded_bytes: i64,
    log_bytes: i64,
    output_bytes: i64,
}

async fn usage_of(client: &Client, company: Uuid, app: Uuid) -> Usage {
    let rows = client
        .query(
            "select runs_total, runs_success, runs_failed, runs_timeout, runs_cancelled,
                    run_seconds, cpu_seconds, peak_memory_bytes, downloaded_bytes, log_bytes,
                    output_bytes, day = (now() at time zone 'UTC')::date
               from public.app_usage_daily where company_id = $1 and app_id = $2",
            &[&company, &app],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one row per company, app and day");
    let r = &rows[0];
    assert!(r.get::<_, bool>(11), "the row is today's (UTC)");
    Usage {
        runs: [r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)],
        run_seconds: r.get(5),
        cpu_seconds: r.get(6),
        peak_memory_bytes: r.get(7),
        downloaded_bytes: r.get(8),
        log_bytes: r.get(9),
        output_bytes: r.get(10),
    }
}

/// The sum of `metadata.usage.<key>` over the app's runs.
async fn recorded(client: &Client, app: Uuid, key: &str) -> i64 {
    client
        .query_one(
            "select coalesce(sum((metadata -> 'usage' ->> $2)::bigint), 0)::bigint
               from public.app_runs where app_id = $1",
            &[&app, &key],
        )
        .await
        .unwrap()
        .get(0)
}

/// Bytes of the `file` outputs of the app's runs.
async fn output_files(client: &Client, app: Uuid) -> i64 {
    client
        .query_one(
            "select coalesce(sum(o.file_size), 0)::bigint from public.app_outputs o
               join public.app_runs r on r.id = o.run_id
              where r.app_id = $1 and o.output_type = 'file'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_rows_add_up_each_companys_runs_and_a_member_reads_only_their_companys() {
    crate::harness::docker::ensure_engine();
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company_a, app_a) = tenant(&db).await;
    let (company_b, app_b) = tenant(&db).await;
    publish_ok(&db, state.path(), Path::new(apps::HELLO), app_a);
    let failing = write_app(
        &[(
            "index.js",
            r#"console.log("x".repeat(1000));
require("fs").writeFileSync("/output/report.txt", "abc");
process.exit(3);"#,
        )],
        json!({}),
        json!([]),
    );
    publish_ok(&db, state.path(), failing.path(), app_b);

    let a_runs = [
        enqueue(&client, app_a, company_a, json!({})).await,
        enqueue(&client, app_a, company_a, json!({})).await,
    ];
    let b_failed = enqueue(&client, app_b, company_b, json!({})).await;
    // Cancelled by a client before any daemon saw it: counted, with no resources.
    let b_cancelled = enqueue(&client, app_b, company_b, json!({})).await;
    client
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&b_cancelled],
        )
        .await
        .unwrap();
    let log = run_until_idle(
        &db,
        DaemonOptions::production(state.path()).queue("max_concurrent_runs", "1"),
    )
    .await;
    for run in a_runs {
        assert_eq!(
            run_record(&client, run).await.summary(),
            "success/-",
            "{log}"
        );
    }
    assert_eq!(
        run_record(&client, b_failed).await.summary(),
        "failed/nonzero_exit",
        "{log}"
    );

    let seconds = |app: Uuid| {
        let client = &client;
        async move {
            client
                .query_one(
                    "select coalesce(sum(duration_ms), 0)::float8 / 1000 from public.app_runs where app_id = $1",
                    &[&app],
                )
                .await
                .unwrap()
                .get::<_, f64>(0)
        }
    };
    let a = usage_of(&client, company_a, app_a).await;
    assert_eq!(a.runs, [2, 2, 0, 0, 0]);
    assert!((a.run_seconds - seconds(app_a).await).abs() < 1e-6, "{a:?}");
    assert!(a.run_seconds > 0.0 && a.cpu_seconds > 0.0, "{a:?}\n{log}");
    assert_eq!(
        (a.cpu_seconds * 1000.0).round() as i64,
        recorded(&client, app_a, "cpu_ms").await
    );
    assert!(a.peak_memory_bytes > 1 << 20, "{a:?}");
    // The first run downloaded the app's files; the second found them in the blob cache.
    let files: i64 = client
        .query_one(
            "select sum(file_size)::bigint from public.app_storage where app_id = $1",
            &[&app_a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(a.downloaded_bytes, files, "{a:?}");
    assert_eq!(a.log_bytes, recorded(&client, app_a, "log_bytes").await);
    assert!(a.log_bytes > 0, "{a:?}");
    assert_eq!(a.output_bytes, output_files(&client, app_a).await, "{a:?}");

    let b = usage_of(&client, company_b, app_b).await;
    assert_eq!(b.runs, [2, 0, 1, 0, 1]);
    assert!((b.run_seconds - seconds(app_b).await).abs() < 1e-6, "{b:?}");
    assert!(b.log_bytes >= 1001, "{b:?}");
    assert_eq!((b.output_bytes, output_files(&client, app_b).await), (3, 3));

    // Under RLS (as PostgREST runs a request): a member of A sees A's row only.
    let member = Uuid::new_v4();
    client
        .execute(
            "insert into app_exec.company_members (company_id, user_id, role) values ($1, $2, 'member')",
            &[&company_a, &member],
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("set local role authenticated")
        .await
        .unwrap();
    tx.execute(
        "select set_config('request.jwt.claims', $1, true)",
        &[&json!({"sub": member, "role": "authenticated"}).to_string()],
    )
    .await
    .unwrap();
    let seen: Vec<Uuid> = tx
        .query("select company_id from public.app_usage_daily", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, [company_a]);
    let write = tx
        .execute(
            "update public.app_usage_daily set runs_total = 0 where company_id = $1",
            &[&company_a],
        )
        .await;
    assert_eq!(
        write.unwrap_err().code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "members cannot change usage"
    );
}

/// A run a client cancels while a daemon runs it: counted once at the cancel, its resources
/// added when the daemon completes the record (the statement `record_cancellation` runs), and
/// nothing counted twice by later writes to the finished row.
#[tokio::test]
async fn a_run_cancelled_while_running_is_counted_once_and_charged_when_its_record_completes() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = tenant(&db).await;
    let run = enqueue(&client, app, company, json!({})).await;
    client
        .execute(
            "update public.app_runs
                set status = 'running', executor_id = 'e', attempt = 1, started_at = now() - interval '2 seconds',
                    lease_expires_at = now() + interval '1 minute'
              where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    client
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    let at_cancel = usage_of(&client, company, app).await;
    assert_eq!(at_cancel.runs, [1, 0, 0, 0, 1]);
    assert_eq!((at_cancel.run_seconds, at_cancel.log_bytes), (0.0, 0));

    // What the daemon writes: its record (metadata.usage), then the cancellation's completion.
    client
        .execute(
            "update public.app_runs
                set metadata = metadata || '{\"usage\": {\"cpu_ms\": 1500, \"peak_memory_bytes\": 7340032,
                    \"downloaded_bytes\": 10, \"log_bytes\": 20, \"output_bytes\": 30}}'
              where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    let n = client
        .execute(
            "update public.app_runs
                set completed_at = coalesce(completed_at, now()), duration_ms = 2000, lease_expires_at = null
              where id = $1 and status = 'cancelled'",
            &[&run],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // A later write to the finished row (retention clearing a pointer) changes nothing.
    client
        .execute(
            "update public.app_runs set logs_path = null, duration_ms = duration_ms where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    assert_eq!(
        usage_of(&client, company, app).await,
        Usage {
            runs: [1, 0, 0, 0, 1],
            run_seconds: 2.0,
            cpu_seconds: 1.5,
            peak_memory_bytes: 7 << 20,
            downloaded_bytes: 10,
            log_bytes: 20,
            output_bytes: 30,
        }
    );
}
