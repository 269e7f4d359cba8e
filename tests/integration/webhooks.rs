//! The webhook trigger end to end: hooks made with the real CLI, requests from real HTTP
//! clients (curl, and reqwest for bursts) to the daemon's listener, runs in PostgreSQL, and
//! (for one test) the app in a real container.

use std::time::{Duration, SystemTime};

use app_executor::signature;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::harness::apps::{publish_ok, write_app};
use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::{insert_tenant, TestDb};

/// A company with an app enabled for it.
pub(crate) async fn tenant(db: &TestDb) -> (Uuid, Uuid) {
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    client
        .execute(
            "insert into app_exec.company_apps (company_id, app_id) values ($1, $2)",
            &[&company, &app],
        )
        .await
        .unwrap();
    (company, app)
}

/// `app-executor webhook <args> --json` (or without `--json` when `json` is false): stdout.
async fn cli(db: &TestDb, args: &[&str]) -> String {
    let out = crate::harness::cli(db, &[&["webhook"], args].concat())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "webhook {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A new hook: `(id, secret)`.
pub(crate) async fn create_hook(
    db: &TestDb,
    app: Uuid,
    company: Uuid,
    extra: &[&str],
) -> (Uuid, String) {
    let (app, company) = (app.to_string(), company.to_string());
    let mut args = vec!["create", "--app", &app, "--company", &company, "--json"];
    args.extend_from_slice(extra);
    let created: Value = serde_json::from_str(&cli(db, &args).await).unwrap();
    (
        created["id"].as_str().unwrap().parse().unwrap(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

/// A daemon with the webhook listener on a free loopback port.
fn daemon(db: &TestDb, mut options: DaemonOptions, extra: &[(&str, &str)]) -> (Daemon, String) {
    options.env.push((
        "APP_EXECUTOR_WEBHOOKS__LISTEN".to_owned(),
        "127.0.0.1:0".to_owned(),
    ));
    for (k, v) in extra {
        options.env.push(((*k).to_owned(), (*v).to_owned()));
    }
    let mut daemon = Daemon::spawn(db, options);
    let base = format!("http://{}", daemon.webhooks_addr());
    (daemon, base)
}

/// The Standard Webhooks headers for `body` signed with `secret` at `timestamp`.
pub(crate) fn signed(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        (
            "webhook-signature".into(),
            signature::sign(&signature::key_of(secret), id, timestamp, body),
        ),
    ]
}

pub(crate) fn now() -> i64 {
    signature::unix_seconds(SystemTime::now())
}

/// POSTs `body` with `headers`: `(status, parsed body, Retry-After)`.
pub(crate) async fn post(
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, Value, Option<String>) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, retry_after)
}

async fn webhook_runs(db: &TestDb, company: Uuid) -> i64 {
    db.client()
        .await
        .query_one(
            "select count(*) from public.app_runs where company_id = $1 and run_type = 'webhook'",
            &[&company],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_curl_request_runs_the_app_with_its_body_and_wait_answers_the_result() {
    crate::harness::docker::ensure_engine();
    let db = TestDb::migrated().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = tenant(&db).await;
    let app_dir = write_app(
        &[(
            "index.js",
            r#"const fs = require("fs");
const input = JSON.parse(fs.readFileSync("/input/input.json", "utf8"));
console.log("webhook body", JSON.stringify(input.body));
fs.writeFileSync("/output/result.json", JSON.stringify({
  got: input.body, content_type: input.content_type, run_type: process.env.RUN_TYPE,
  headers: Object.keys(input.headers).sort(),
}));"#,
        )],
        json!({}),
        json!([]),
    );
    publish_ok(&db, state.path(), app_dir.path(), app);
    let (hook, secret) = create_hook(&db, app, company, &[]).await;
    let (mut daemon, base) = daemon(&db, DaemonOptions::production(state.path()), &[]);

    let body = br#"{"event":"push","ref":"main"}"#;
    let mut command = tokio::process::Command::new("curl");
    command.args([
        "-sS",
        "--max-time",
        "90",
        "-w",
        "\n%{http_code}",
        "-H",
        "content-type: application/json",
    ]);
    for (k, v) in signed(&secret, "msg_curl_1", now(), body) {
        command.args(["-H", &format!("{k}: {v}")]);
    }
    command
        .args(["-H", "authorization: Bearer must-not-reach-the-app"])
        .args(["--data-binary", std::str::from_utf8(body).unwrap()])
        .arg(format!("{base}/hooks/{hook}?wait=60s"));
    let out = command.output().await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (answer, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{text}\n{}", daemon.log_text());
    let answer: Value = serde_json::from_str(answer).unwrap();
    assert_eq!(
        answer["status"],
        "success",
        "{answer}\n{}",
        daemon.log_text()
    );
    let result = &answer["result"];
    assert_eq!(result["got"], json!({"event": "push", "ref": "main"}));
    assert_eq!(result["content_type"], "application/json");
    assert_eq!(result["run_type"], "webhook");
    assert_eq!(
        result["headers"],
        json!([
            "content-type",
            "user-agent",
            "webhook-id",
            "webhook-timestamp"
        ]),
        "signatures and authorization never reach the app"
    );

    let run: Uuid = answer["run_id"].as_str().unwrap().parse().unwrap();
    let row = db
        .client()
        .await
        .query_one(
            "select run_type, metadata, company_id from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "webhook");
    let metadata: Value = row.get(1);
    assert_eq!(metadata["webhook"]["webhook_id"], "msg_curl_1");
    assert_eq!(metadata["webhook"]["hook_id"], hook.to_string());
    assert_eq!(row.get::<_, Uuid>(2), company);
    assert!(
        !daemon.log_text().contains(&secret),
        "the secret was logged"
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_answer_the_same_run_and_forged_stale_unknown_or_large_requests_are_refused() {
    let db = TestDb::migrated().await;
    let (company, app) = tenant(&db).await;
    let (hook, secret) = create_hook(&db, app, company, &[]).await;
    let (mut daemon, base) = daemon(&db, DaemonOptions::new("sleep=10ms"), &[]);
    let url = format!("{base}/hooks/{hook}");
    let body = br#"{"n":1}"#;

    // The same webhook-id, ten times at once: one run, the same id in every answer.
    let headers = signed(&secret, "msg_replayed", now(), body);
    let answers = futures_util::future::join_all((0..10).map(|_| post(&url, &headers, body))).await;
    let runs: std::collections::HashSet<String> = answers
        .iter()
        .map(|(status, answer, _)| {
            assert_eq!(*status, 202, "{answer}");
            answer["run_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(runs.len(), 1, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|(_, a, _)| a["replayed"] == false)
            .count(),
        1
    );
    assert_eq!(webhook_runs(&db, company).await, 1);

    // Stale, forged, unsigned.
    let stale = signed(&secret, "msg_stale", now() - 400, body);
    assert_eq!(post(&url, &stale, body).await.0, 401);
    let forged = signed(&signature::generate_secret(), "msg_forged", now(), body);
    assert_eq!(post(&url, &forged, body).await.0, 401);
    let tampered = signed(&secret, "msg_tampered", now(), body);
    assert_eq!(post(&url, &tampered, br#"{"n":2}"#).await.0, 401);
    let (status, answer, _) = post(&url, &[], body).await;
    assert_eq!(status, 401);
    assert_eq!(answer["error"], "unauthorized");
    // A bearer token is refused on a hook that does not allow it.
    let bearer = vec![("authorization".to_owned(), format!("Bearer {secret}"))];
    assert_eq!(post(&url, &bearer, body).await.0, 401);

    // Unknown and disabled hooks look the same.
    let unknown = post(&format!("{base}/hooks/{}", Uuid::new_v4()), &headers, body).await;
    let garbage = post(&format!("{base}/hooks/not-a-hook"), &headers, body).await;
    cli(&db, &["disable", &hook.to_string()]).await;
    let disabled = post(&url, &signed(&secret, "msg_off", now(), body), body).await;
    assert_eq!((unknown.0, garbage.0, disabled.0), (404, 404, 404));
    assert_eq!(unknown.1, disabled.1);
    assert_eq!(unknown.1, garbage.1);
    cli(&db, &["enable", &hook.to_string()]).await;

    // Past max_body (256 KiB by default).
    let large = vec![b'x'; 300 * 1024];
    let (status, answer, _) =
        post(&url, &signed(&secret, "msg_large", now(), &large), &large).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "too_large");
    assert_eq!(
        webhook_runs(&db, company).await,
        1,
        "nothing refused was written"
    );

    // Rotation: both secrets during the grace, only the new one after it.
    let rotated: Value = serde_json::from_str(
        &cli(
            &db,
            &["rotate", &hook.to_string(), "--grace", "3s", "--json"],
        )
        .await,
    )
    .unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    let old_within = post(&url, &signed(&secret, "msg_old_1", now(), body), body).await;
    assert_eq!(old_within.0, 202, "{:?}", old_within.1);
    let new_now = post(&url, &signed(&new_secret, "msg_new_1", now(), body), body).await;
    assert_eq!(new_now.0, 202);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let old_after = post(&url, &signed(&secret, "msg_old_2", now(), body), body).await;
    assert_eq!(
        old_after.0, 401,
        "the rotated-out secret outlived its grace"
    );
    let new_after = post(&url, &signed(&new_secret, "msg_new_2", now(), body), body).await;
    assert_eq!(new_after.0, 202);

    // `list` never shows a secret.
    let listed = cli(&db, &["list", "--json"]).await;
    assert!(
        !listed.contains(&new_secret) && !listed.contains("whsec_"),
        "{listed}"
    );
    assert!(!daemon.log_text().contains(&new_secret));
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_hook_accepts_its_secret_as_a_token_and_nothing_else() {
    let db = TestDb::migrated().await;
    let (company, app) = tenant(&db).await;
    let (hook, secret) = create_hook(&db, app, company, &["--bearer"]).await;
    let (mut daemon, base) = daemon(&db, DaemonOptions::new("sleep=10ms"), &[]);
    let url = format!("{base}/hooks/{hook}");
    let token = |t: &str| vec![("authorization".to_owned(), format!("Bearer {t}"))];
    assert_eq!(post(&url, &token(&secret), b"{}").await.0, 202);
    assert_eq!(post(&url, &token("whsec_wrong"), b"{}").await.0, 401);
    // Signed requests still work on a bearer hook.
    assert_eq!(
        post(&url, &signed(&secret, "msg_signed", now(), b"{}"), b"{}")
            .await
            .0,
        202
    );
    assert_eq!(webhook_runs(&db, company).await, 2);

    // Every answer is counted by outcome, and timed.
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.ops_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"app_executor_webhook_requests_total{outcome="accepted"} 2"#,
        r#"app_executor_webhook_requests_total{outcome="unauthorized"} 1"#,
        "app_executor_webhook_request_duration_seconds_count 3",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_is_held_to_the_hooks_rate_and_the_companys_pending_cap() {
    let db = TestDb::migrated().await;
    let (company, app) = tenant(&db).await;
    let (slow, slow_secret) = create_hook(&db, app, company, &["--rate-limit", "60"]).await;
    let (fast, fast_secret) = create_hook(&db, app, company, &[]).await;
    // The company is paused (cap 0), so its runs stay pending and count against the cap.
    let (mut daemon, base) = daemon(
        &db,
        DaemonOptions::new("sleep=10ms"),
        &[
            ("APP_EXECUTOR_WEBHOOKS__COMPANY_PENDING_CAP", "8"),
            (&format!("APP_EXECUTOR_QUEUE__COMPANY_CAPS__{company}"), "0"),
        ],
    );

    // 60 per minute: a burst gets a tenth of that, the rest 429 with Retry-After.
    let url = format!("{base}/hooks/{slow}");
    let answers = futures_util::future::join_all((0..20).map(|i| {
        let headers = signed(&slow_secret, &format!("msg_burst_{i}"), now(), b"{}");
        let url = url.clone();
        async move { post(&url, &headers, b"{}").await }
    }))
    .await;
    let accepted = answers.iter().filter(|a| a.0 == 202).count();
    let limited: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!((accepted, limited.len()), (6, 14), "{answers:?}");
    assert!(limited
        .iter()
        .all(|a| a.1["error"] == "rate_limited" && a.2.is_some()));

    // The cap: 8 pending at most, whatever the concurrency.
    let url = format!("{base}/hooks/{fast}");
    let answers = futures_util::future::join_all((0..12).map(|i| {
        let headers = signed(&fast_secret, &format!("msg_cap_{i}"), now(), b"{}");
        let url = url.clone();
        async move { post(&url, &headers, b"{}").await }
    }))
    .await;
    let accepted = answers.iter().filter(|a| a.0 == 202).count();
    assert_eq!(accepted, 2, "6 pending already, cap 8: {answers:?}");
    assert!(answers
        .iter()
        .filter(|a| a.0 != 202)
        .all(|a| a.0 == 429 && a.1["error"] == "company_pending_cap" && a.2.is_some()));
    assert_eq!(webhook_runs(&db, company).await, 8);
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_database_down_requests_get_503_and_nothing_is_written() {
    let (cluster, db) = TestDb::private_cluster("webhooks").await;
    let root = cluster.root().to_path_buf();
    let (company, app) = tenant(&db).await;
    let (hook, secret) = create_hook(&db, app, company, &[]).await;
    let (mut daemon, base) = daemon(&db, DaemonOptions::new("sleep=10ms"), &[]);
    let url = format!("{base}/hooks/{hook}");
    assert_eq!(
        post(&url, &signed(&secret, "msg_up", now(), b"{}"), b"{}")
            .await
            .0,
        202
    );

    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop().unwrap())
        .await
        .unwrap();
    let (status, answer, retry_after) =
        post(&url, &signed(&secret, "msg_down", now(), b"{}"), b"{}").await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "unavailable");
    assert!(retry_after.is_some());

    let restart_root = root.clone();
    tokio::task::spawn_blocking(move || {
        app_executor::embedded_postgres::EmbeddedPostgres::ensure_running(&restart_root).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(webhook_runs(&db, company).await, 1, "the 503 wrote nothing");
    let seen: i64 = db
        .client()
        .await
        .query_one(
            "select count(*) from app_exec.webhook_deliveries where webhook_id = 'msg_down'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0);
    // Retried once the database is back, the request goes through.
    let retried = post(&url, &signed(&secret, "msg_down", now(), b"{}"), b"{}").await;
    assert_eq!(retried.0, 202, "{:?}", retried.1);
    daemon.stop();
    drop(db);
    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_needs_an_app_enabled_for_its_company() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let (app, company) = (app.to_string(), company.to_string());
    let out = crate::harness::cli(
        &db,
        &["webhook", "create", "--app", &app, "--company", &company],
    )
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not enabled for company") && stderr.contains("company_apps"),
        "{stderr}"
    );
}
