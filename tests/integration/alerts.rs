//! Alerts from the real daemon: a failed run is announced on `<namespace>_events` and POSTed to
//! a loopback webhook (signed, retried after a 500), a rescued run raises `run_rescued`, a
//! webhook that never answers holds up neither the runs nor the shutdown, a 429's `Retry-After`
//! is honoured, and an undelivered alert outlives the daemon that raised it and is sent exactly
//! once by one of two others.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures_util::StreamExt;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use tokio_postgres::{AsyncMessage, Client};
use uuid::Uuid;

use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::{insert_tenant, TestDb};

const SECRET: &str = "test-webhook-secret";

/// A LISTEN session on `channel`; yields the payloads it hears.
async fn listen(
    db: &TestDb,
    channel: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let config: tokio_postgres::Config = db.url.expose().parse().unwrap();
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(serde_json::from_str(n.payload()).unwrap());
            }
        }
    });
    client
        .batch_execute(&format!("listen {channel}"))
        .await
        .unwrap();
    (client, rx)
}

async fn next_event(events: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("no event within 30 s")
        .unwrap()
}

/// One request the receiver got: its headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A webhook receiver on a loopback port that answers the first `failures` requests with 500
/// and the rest with 200. Returns its URL and what it received.
async fn receiver(failures: usize) -> (String, Received) {
    let received: Received = Arc::default();
    let seen = received.clone();
    let router = axum::Router::new().route(
        "/hooks/app-executor",
        post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let mut all = seen.lock().unwrap();
                all.push((headers, body));
                if all.len() <= failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hooks/app-executor",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, received)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

async fn insert_run(client: &Client, company: Uuid, app: Uuid) -> Uuid {
    client
        .query_one(
            "insert into public.app_runs (app_id, company_id, max_attempts) values ($1, $2, 1) returning id",
            &[&app, &company],
        )
        .await
        .unwrap()
        .get(0)
}

fn alerting(execution: &str, webhook: Option<&str>) -> DaemonOptions {
    let mut options = DaemonOptions::new(execution);
    if let Some(url) = webhook {
        options.env.extend([
            ("APP_EXECUTOR_ALERTS__WEBHOOK_URL".into(), url.to_owned()),
            ("APP_EXECUTOR_ALERTS__WEBHOOK_SECRET".into(), SECRET.into()),
            ("APP_EXECUTOR_ALERTS__RETRY_BACKOFF".into(), "100ms".into()),
        ]);
    }
    options
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_is_notified_and_posted_signed_and_retried_after_a_500() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let (_session, mut events) = listen(&db, "app_executor_events").await;
    let (url, received) = receiver(1).await;

    let run = insert_run(&client, company, app).await;
    let mut daemon = Daemon::spawn(&db, alerting("fail=nonzero_exit", Some(&url)));

    let event = next_event(&mut events).await;
    assert_eq!(event["event"], "run_failed");
    assert_eq!(event["run_id"], run.to_string());
    assert_eq!(event["app_id"], app.to_string());
    assert_eq!(event["company_id"], company.to_string());
    assert_eq!(event["status"], "failed");
    assert_eq!(event["error_kind"], "nonzero_exit");
    assert_eq!(
        event["error_message"],
        "the test execution ended with nonzero_exit as told"
    );
    assert_eq!(event["attempt"], 1);
    assert!(event["executor_id"].as_str().unwrap().contains('-'));
    assert!(event["at"].as_str().is_some());
    let status: String = client
        .query_one("select status from public.app_runs where id = $1", &[&run])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");

    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the webhook was not retried after its 500; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Delivered on the second attempt: nothing more comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = received.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "delivered once retried, then no more");
    let (first, second) = (&requests[0], &requests[1]);
    assert_eq!(first.1, second.1, "a retry sends the same body");
    assert_eq!(
        header(&first.0, "x-app-executor-delivery"),
        header(&second.0, "x-app-executor-delivery"),
        "a retry keeps the delivery id"
    );
    assert!(header(&first.0, "x-app-executor-delivery")
        .parse::<Uuid>()
        .is_ok());
    assert_eq!(header(&second.0, "x-app-executor-event"), "run_failed");
    assert_eq!(header(&second.0, "content-type"), "application/json");
    let body: Value = serde_json::from_str(&second.1).unwrap();
    assert_eq!(body, event, "the webhook gets the NOTIFY document");

    // The receiver's check: HMAC-SHA256 of the raw body under the shared secret.
    let signature = header(&second.0, "x-app-executor-signature");
    let hex = signature.strip_prefix("sha256=").expect("sha256= prefix");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut mac = hmac::Hmac::<sha2_hmac::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(second.1.as_bytes());
    mac.verify_slice(&bytes)
        .expect("the signature verifies with the secret");
    let mut wrong = hmac::Hmac::<sha2_hmac::Sha256>::new_from_slice(b"other").unwrap();
    wrong.update(second.1.as_bytes());
    assert!(wrong.verify_slice(&bytes).is_err());

    // The Standard Webhooks headers verify with the same verifier the webhook listener uses,
    // the delivery id as webhook-id.
    assert_eq!(
        header(&second.0, "webhook-id"),
        header(&second.0, "x-app-executor-delivery")
    );
    let verified = app_executor::signature::verify(
        &[app_executor::signature::key_of(SECRET)],
        header(&second.0, "webhook-id"),
        header(&second.0, "webhook-timestamp"),
        header(&second.0, "webhook-signature"),
        second.1.as_bytes(),
        std::time::SystemTime::now(),
    );
    assert_eq!(verified, Ok(()));
    assert!(app_executor::signature::verify(
        &[b"other".to_vec()],
        header(&second.0, "webhook-id"),
        header(&second.0, "webhook-timestamp"),
        header(&second.0, "webhook-signature"),
        second.1.as_bytes(),
        std::time::SystemTime::now(),
    )
    .is_err());

    let log = daemon.log_text();
    assert!(!log.contains(SECRET), "the secret was logged:\n{log}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rescued_run_raises_run_rescued_naming_the_dead_executor() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let (_session, mut events) = listen(&db, "app_executor_events").await;
    let run: Uuid = client
        .query_one(
            "insert into public.app_runs (app_id, company_id) values ($1, $2) returning id",
            &[&app, &company],
        )
        .await
        .unwrap()
        .get(0);

    let mut holder = Daemon::spawn(&db, alerting("sleep=600s", None));
    let deadline = Instant::now() + Duration::from_secs(20);
    let stale: String = loop {
        let row = client
            .query_one(
                "select status, executor_id from public.app_runs where id = $1",
                &[&run],
            )
            .await
            .unwrap();
        if row.get::<_, String>(0) == "running" {
            break row.get(1);
        }
        assert!(Instant::now() < deadline, "the run was never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    holder.kill_hard();

    let mut rescuer = Daemon::spawn(&db, alerting("sleep=10ms", None));
    let event = next_event(&mut events).await;
    assert_eq!(event["event"], "run_rescued");
    assert_eq!(event["run_id"], run.to_string());
    assert_eq!(event["status"], "pending", "requeued: attempts were left");
    assert_eq!(event["error_kind"], "lease_expired");
    assert_eq!(event["attempt"], 1);
    assert_eq!(event["executor_id"], stale.as_str());
    assert!(event["error_message"].as_str().unwrap().contains(&stale));
    // The retry then succeeds: no further event.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .is_err(),
        "a successful retry raised an event"
    );
    rescuer.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_never_answers_holds_up_neither_runs_nor_shutdown() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let (_session, mut events) = listen(&db, "app_executor_events").await;
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());

    let mut runs = Vec::new();
    for _ in 0..20 {
        runs.push(insert_run(&client, company, app).await);
    }
    let mut options = alerting("fail=oom_killed", Some(&url));
    options.env.extend([
        ("APP_EXECUTOR_ALERTS__WEBHOOK_TIMEOUT".into(), "60s".into()),
        ("APP_EXECUTOR_ALERTS__QUEUE_CAPACITY".into(), "2".into()),
    ]);
    let started = Instant::now();
    let mut daemon = Daemon::spawn(&db, options);
    loop {
        let failed: i64 = client
            .query_one(
                "select count(*) from public.app_runs where status = 'failed' and error_kind = 'oom_killed'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if failed == runs.len() as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "runs waited for the webhook: {failed} of {} failed after {:?}; log:\n{}",
            runs.len(),
            started.elapsed(),
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // NOTIFY goes out with each ending's commit, whatever the webhook does: one per run.
    let mut heard = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        assert_eq!(event["event"], "run_oom");
        heard.push(event["run_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    heard.sort();
    runs.sort();
    assert_eq!(heard, runs, "every ending is announced exactly once");

    let stopping = Instant::now();
    daemon.stop();
    // An attempt in flight gets 5 s, then is left in the outbox for the next daemon.
    assert!(
        stopping.elapsed() < Duration::from_secs(12),
        "{:?}",
        stopping.elapsed()
    );
    let log = daemon.log_text();
    assert!(log.contains("alert outbox full"), "{log}");
    assert!(log.contains("it stays in the outbox"), "{log}");
    // The outbox kept as many deliveries as it may hold, for whichever daemon comes next.
    let waiting: i64 = client
        .query_one("select count(*) from app_exec.alert_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 2);
    drop(silent);
}

/// What a [`switchable_receiver`] got: headers, body and the status it answered.
type Answered = Arc<Mutex<Vec<(HeaderMap, String, StatusCode)>>>;

/// A webhook receiver on a loopback port answering 503 while `down` is set, 200 otherwise.
async fn switchable_receiver(down: Arc<AtomicBool>) -> (String, Answered) {
    let answered: Answered = Arc::default();
    let seen = answered.clone();
    let router = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let (seen, down) = (seen.clone(), down.clone());
            async move {
                let status = if down.load(Ordering::SeqCst) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                seen.lock().unwrap().push((headers, body, status));
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, answered)
}

/// The webhook was down when a run failed and its daemon was killed (`kill -9`): the alert
/// waited in the outbox, and once the receiver is back, one of two new daemons sends it, with
/// the delivery id of the attempts before; every alert of the two arrives exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_outlives_the_daemon_that_raised_it_and_is_sent_once_by_one_of_two_others() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let down = Arc::new(AtomicBool::new(true));
    let (url, answered) = switchable_receiver(down.clone()).await;
    let options = || {
        let mut options = alerting("fail=nonzero_exit", Some(&url));
        options.env.extend([
            ("APP_EXECUTOR_ALERTS__RETRY_BACKOFF".into(), "200ms".into()),
            ("APP_EXECUTOR_ALERTS__MAX_ATTEMPTS".into(), "20".into()),
            ("APP_EXECUTOR_ALERTS__WEBHOOK_TIMEOUT".into(), "2s".into()),
        ]);
        options
    };

    let first = insert_run(&client, company, app).await;
    let mut raiser = Daemon::spawn(&db, options());
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the alert was never attempted twice; log:\n{}",
            raiser.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While it waits, the outbox shows on /metrics.
    let metrics_url = format!("http://{}/metrics", raiser.ops_addr());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.lines().any(|l| l == "app_executor_alerts_waiting 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no alerts_waiting 1 in:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    raiser.kill_hard();
    let early_id = header(&answered.lock().unwrap()[0].0, "x-app-executor-delivery").to_owned();
    let row = client
        .query_one(
            "select id::text, run_id, attempts from app_exec.alert_outbox",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        early_id,
        "the outbox row is the delivery"
    );
    assert_eq!(row.get::<_, Uuid>(1), first);
    assert!(row.get::<_, i32>(2) >= 2);

    down.store(false, Ordering::SeqCst);
    let mut daemons = [Daemon::spawn(&db, options()), Daemon::spawn(&db, options())];
    let mut runs = vec![first];
    for _ in 0..10 {
        runs.push(insert_run(&client, company, app).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (waiting, delivered): (i64, usize) = (
            client
                .query_one("select count(*) from app_exec.alert_outbox", &[])
                .await
                .unwrap()
                .get(0),
            answered
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, _, status)| *status == StatusCode::OK)
                .count(),
        );
        if waiting == 0 && delivered >= runs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} alerts still in the outbox, {delivered} delivered; logs:\n{}\n{}",
            daemons[0].log_text(),
            daemons[1].log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let any duplicate that was on its way arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answered = answered.lock().unwrap().clone();
    let delivered: Vec<_> = answered
        .iter()
        .filter(|(_, _, status)| *status == StatusCode::OK)
        .collect();
    let mut delivery_ids: Vec<&str> = delivered
        .iter()
        .map(|(headers, _, _)| header(headers, "x-app-executor-delivery"))
        .collect();
    delivery_ids.sort();
    delivery_ids.dedup();
    assert_eq!(delivered.len(), runs.len(), "no delivery sent twice");
    assert_eq!(delivery_ids.len(), runs.len());
    let mut delivered_runs: Vec<Uuid> = delivered
        .iter()
        .map(|(_, body, _)| {
            let event: Value = serde_json::from_str(body).unwrap();
            assert_eq!(event["event"], "run_failed");
            event["run_id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    delivered_runs.sort();
    runs.sort();
    assert_eq!(delivered_runs, runs, "one alert per failed run");
    assert!(
        delivery_ids.contains(&early_id.as_str()),
        "the first alert kept its delivery id across daemons"
    );
    for daemon in &mut daemons {
        daemon.stop();
    }
}

/// A receiver that is rate limiting says when to come back; the retry waits at least that long
/// even when the configured backoff is far shorter.
#[tokio::test(flavor = "multi_thread")]
async fn a_429_with_retry_after_is_retried_no_sooner_than_asked() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let router = axum::Router::new().route(
        "/hook",
        post(move || {
            let seen = seen.clone();
            async move {
                let mut all = seen.lock().unwrap();
                all.push(Instant::now());
                if all.len() == 1 {
                    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")])
                } else {
                    (StatusCode::OK, [("retry-after", "0")])
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let mut options = alerting("fail=nonzero_exit", Some(&url));
    options
        .env
        .push(("APP_EXECUTOR_ALERTS__RETRY_BACKOFF".into(), "10ms".into()));
    insert_run(&client, company, app).await;
    let mut daemon = Daemon::spawn(&db, options);
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no retry; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = {
        let arrivals = arrivals.lock().unwrap();
        arrivals[1] - arrivals[0]
    };
    assert!(
        waited >= Duration::from_secs(2),
        "retried after {waited:?}, Retry-After asked for 2 s"
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_near_its_memory_limit_raises_one_resource_threshold_event_and_one_at_half_none() {
    crate::harness::docker::ensure_engine();
    let db = TestDb::migrated().await;
    let state = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    // Allocates (and touches) memory until its cgroup's usage, as the container sees it,
    // reaches input.fraction of its limit (RSS would count shared pages charged elsewhere).
    let dir = crate::harness::apps::write_app(
        &[(
            "index.js",
            r#"const fs = require("fs");
const read = (...files) => {
  for (const f of files) { try { return Number(fs.readFileSync(f, "utf8").trim()); } catch {} }
  return NaN;
};
const usage = () => read("/sys/fs/cgroup/memory/memory.usage_in_bytes", "/sys/fs/cgroup/memory.current");
const limit = read("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max");
const target = JSON.parse(process.env.APP_INPUT).fraction * limit;
const kept = [];
while (usage() < target) kept.push(Buffer.alloc(1024 * 1024, 1));
console.log("usage", usage(), "of", limit);
// Held for a moment: the cgroup's high-water mark is sampled every 50 ms while the container
// lives, and its cgroup is gone the instant it exits.
setTimeout(() => console.log("kept", kept.length), 300);"#,
        )],
        serde_json::json!({"memory_limit": "256MiB"}),
        serde_json::json!([]),
    );
    crate::harness::apps::publish_ok(&db, state.path(), dir.path(), app);
    let (_session, mut events) = listen(&db, "app_executor_events").await;
    let near =
        crate::harness::apps::enqueue(&client, app, company, serde_json::json!({"fraction": 0.95}))
            .await;
    let half =
        crate::harness::apps::enqueue(&client, app, company, serde_json::json!({"fraction": 0.5}))
            .await;
    let log = crate::harness::daemon::run_until_idle(
        &db,
        DaemonOptions::production(state.path()).queue("max_concurrent_runs", "1"),
    )
    .await;

    let status = |run: Uuid| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "select status, metadata from public.app_runs where id = $1",
                    &[&run],
                )
                .await
                .unwrap();
            (row.get::<_, String>(0), row.get::<_, Value>(1))
        }
    };
    let (near_status, near_metadata) = status(near).await;
    let (half_status, half_metadata) = status(half).await;
    assert_eq!(
        (near_status.as_str(), half_status.as_str()),
        ("success", "success"),
        "{log}"
    );

    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap_or_else(|_| panic!("no event; metadata {near_metadata}; log:\n{log}"))
        .unwrap();
    assert_eq!(event["event"], "resource_threshold", "{event}");
    assert_eq!(event["run_id"], near.to_string());
    let crossings = event["thresholds"].as_array().unwrap();
    assert_eq!(crossings.len(), 1, "{event}");
    let memory = &crossings[0];
    assert_eq!(memory["resource"], "memory");
    assert_eq!(memory["limit"], 256 * 1024 * 1024);
    let ratio = memory["ratio"].as_f64().unwrap();
    assert!((0.9..=1.0).contains(&ratio), "{memory}");
    assert!(
        memory["used"].as_u64().unwrap() >= 240 * 1024 * 1024,
        "{memory}"
    );
    assert_eq!(near_metadata["resource_thresholds"], event["thresholds"]);

    // The run at half its limit raised nothing and records nothing.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .is_err(),
        "a second event"
    );
    assert!(
        half_metadata.get("resource_thresholds").is_none(),
        "{half_metadata}"
    );
}

/// A run that spins under a small CPU limit for three seconds is throttled in most of its CFS
/// periods and raises `resource_threshold` with `cpu_throttled`; one that sleeps as long does
/// not.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_held_back_by_its_cpu_limit_raises_cpu_throttled_and_an_idle_one_none() {
    crate::harness::docker::ensure_engine();
    let db = TestDb::migrated().await;
    let state = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let dir = crate::harness::apps::write_app(
        &[(
            "index.js",
            r#"const spin = JSON.parse(process.env.APP_INPUT).spin;
const end = Date.now() + 3000;
if (spin) { while (Date.now() < end) {} } else { setTimeout(() => {}, 3000); }
console.log(spin ? "spun" : "slept");"#,
        )],
        serde_json::json!({"memory_limit": "128MiB", "cpu_limit": 0.2}),
        serde_json::json!([]),
    );
    crate::harness::apps::publish_ok(&db, state.path(), dir.path(), app);
    let (_session, mut events) = listen(&db, "app_executor_events").await;
    let spinner =
        crate::harness::apps::enqueue(&client, app, company, serde_json::json!({"spin": true}))
            .await;
    let sleeper =
        crate::harness::apps::enqueue(&client, app, company, serde_json::json!({"spin": false}))
            .await;
    let log = crate::harness::daemon::run_until_idle(
        &db,
        DaemonOptions::production(state.path()).queue("max_concurrent_runs", "1"),
    )
    .await;
    let metadata = |run: Uuid| {
        let client = &client;
        async move {
            client
                .query_one(
                    "select status, metadata from public.app_runs where id = $1",
                    &[&run],
                )
                .await
                .map(|row| (row.get::<_, String>(0), row.get::<_, Value>(1)))
                .unwrap()
        }
    };
    let (spun, spun_metadata) = metadata(spinner).await;
    let (slept, slept_metadata) = metadata(sleeper).await;
    assert_eq!(
        (spun.as_str(), slept.as_str()),
        ("success", "success"),
        "{log}"
    );
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap_or_else(|_| panic!("no event; metadata {spun_metadata}; log:\n{log}"))
        .unwrap();
    assert_eq!(event["run_id"], spinner.to_string(), "{event}");
    let crossings = event["thresholds"].as_array().unwrap();
    let cpu = crossings
        .iter()
        .find(|c| c["resource"] == "cpu_throttled")
        .unwrap_or_else(|| panic!("{event}"));
    assert!(cpu["ratio"].as_f64().unwrap() >= 0.5, "{cpu}");
    assert!(cpu["limit"].as_u64().unwrap() >= 20, "{cpu}");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .is_err(),
        "the idle run raised an event"
    );
    assert!(
        slept_metadata.get("resource_thresholds").is_none(),
        "{slept_metadata}"
    );
}
