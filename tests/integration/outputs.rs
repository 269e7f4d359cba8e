//! The `/output` contract end to end: a directory as an app could leave it, read back by
//! `outputs::collect` and recorded by `outputs::record` into a real database and real storage
//! (the local backend, and the Supabase HTTP client against the storage double), fenced on the
//! run's claim.

use std::sync::Arc;
use std::time::Duration;

use app_executor::logs::{LogSettings, LogStream, LogTarget, RunLog};
use app_executor::model::ClaimedRun;
use app_executor::outputs::{
    collect, Collected, DaemonMetrics, OutputLimits, Recorded, RunFailure, RunRecord,
};
use app_executor::storage::ServiceKey;
use app_executor::storage::{
    BucketPolicy, LocalStorage, Storage, SupabaseOptions, SupabaseStorage, APP_LOGS_BUCKET,
};
use deadpool_postgres::Pool;
use serde_json::{json, Value};

use crate::harness::run::{claim_run, EXECUTOR};
use crate::harness::storage_double::{StorageDouble, SERVICE_KEY};
use crate::harness::TestDb;

/// One `app_outputs` row: (type, output_name, output_data, output_path, file_size, mime_type), ordered
/// by type, name, then path and message of the data.
type Row = (
    String,
    Option<String>,
    Option<Value>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

async fn output_rows(db: &TestDb, run: &ClaimedRun) -> Vec<Row> {
    db.client()
        .await
        .query(
            "select output_type, output_name, output_data, output_path, file_size, mime_type
               from public.app_outputs where run_id = $1
              order by output_type, output_name, output_data->>'path', output_data->>'message'",
            &[&run.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

fn of_type<'a>(rows: &'a [Row], kind: &str) -> Vec<&'a Row> {
    rows.iter().filter(|r| r.0 == kind).collect()
}

/// `invalid_output` problems recorded, as `(path, reason)`.
fn problems(rows: &[Row]) -> Vec<(String, String)> {
    of_type(rows, "error")
        .into_iter()
        .filter(|r| r.1.as_deref() == Some("invalid_output"))
        .map(|r| {
            let data = r.2.as_ref().unwrap();
            (
                data["path"].as_str().unwrap().to_owned(),
                data["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

struct Fixture {
    db: TestDb,
    pool: Pool,
    run: ClaimedRun,
    storage: Arc<dyn Storage>,
    _double: Option<StorageDouble>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn local() -> Self {
        let db = TestDb::migrated().await;
        let (pool, run) = claim_run(&db).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("output")).unwrap();
        let storage = LocalStorage::new(dir.path().join("storage"), BucketPolicy::default());
        Self {
            db,
            pool,
            run,
            storage: Arc::new(storage),
            _double: None,
            dir,
        }
    }

    async fn supabase() -> Self {
        let mut fixture = Self::local().await;
        let double = StorageDouble::start().await;
        let mut options = SupabaseOptions::new(double.url.clone(), ServiceKey::new(SERVICE_KEY));
        options.retry_base_delay = Duration::from_millis(20);
        fixture.storage = Arc::new(SupabaseStorage::new(options).unwrap());
        fixture._double = Some(double);
        fixture
    }

    fn output(&self) -> std::path::PathBuf {
        self.dir.path().join("output")
    }

    fn write(&self, relative: &str, bytes: impl AsRef<[u8]>) {
        let path = self.output().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    async fn collect(&self) -> Collected {
        tokio::time::timeout(
            Duration::from_secs(20),
            collect(&self.output(), &OutputLimits::default()),
        )
        .await
        .expect("collect never blocks")
        .unwrap()
    }

    async fn record(&self, what: &RunRecord<'_>) -> Recorded {
        app_executor::outputs::record(&self.pool, self.storage.as_ref(), &self.run, EXECUTOR, what)
            .await
            .unwrap()
    }

    async fn collect_and_record(&self) -> (Collected, Recorded, Vec<Row>) {
        let collected = self.collect().await;
        let recorded = self
            .record(&RunRecord {
                collected: Some(&collected),
                ..Default::default()
            })
            .await;
        assert!(recorded.fence_held);
        let rows = output_rows(&self.db, &self.run).await;
        (collected, recorded, rows)
    }

    fn output_key(&self, relative: &str) -> String {
        format!(
            "app_{}/runs/{}/output/{relative}",
            self.run.app_id, self.run.id
        )
    }

    async fn stored(&self, key: &str) -> Option<Vec<u8>> {
        match self.storage.download(APP_LOGS_BUCKET, key).await {
            Ok(download) => Some(download.bytes().await.unwrap()),
            Err(app_executor::storage::StorageError::NotFound { .. }) => None,
            Err(e) => panic!("{key}: {e}"),
        }
    }

    async fn run_paths(&self) -> (Option<String>, Option<String>, Value) {
        let row = self
            .db
            .client()
            .await
            .query_one(
                "select logs_path, output_path, metadata from public.app_runs where id = $1",
                &[&self.run.id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }
}

#[tokio::test]
async fn a_complete_run_records_logs_result_metrics_files_and_its_failure() {
    let fixture = Fixture::supabase().await;
    fixture.write("result.json", br#"{"answer": 42, "items": [1, 2]}"#);
    fixture.write("metrics.json", br#"{"rows": 1200, "ratio": 0.25}"#);
    fixture.write("report.csv", "a,b\n1,2\n");
    fixture.write("charts/plot.png", [0x89, b'P', b'N', b'G']);
    fixture.write("raw.bin", [0u8, 1, 2]);

    let spool = fixture.dir.path().join("spool");
    let mut log = RunLog::start(
        fixture.storage.clone(),
        &spool,
        LogTarget::of(&fixture.run),
        LogSettings::default(),
    )
    .unwrap();
    log.append(LogStream::Stdout, b"working\n");
    log.append(LogStream::Stderr, b"oops\n");
    let logs = log.finish().await;
    let collected = fixture.collect().await;
    let failure = RunFailure {
        kind: "exit_nonzero".into(),
        message: "the app exited with status 3".into(),
    };
    let recorded = fixture
        .record(&RunRecord {
            collected: Some(&collected),
            metrics: DaemonMetrics {
                duration_ms: Some(1234),
                peak_memory_bytes: Some(50 << 20),
                exit_code: Some(3),
                oom_kills: 0,
                cpu_ms: Some(800),
                downloaded_bytes: 4096,
            },
            logs: Some(&logs),
            failure: Some(&failure),
        })
        .await;
    assert!(recorded.fence_held);
    assert_eq!((recorded.files_uploaded, recorded.upload_failures), (3, 0));

    let rows = output_rows(&fixture.db, &fixture.run).await;
    let prefix = format!("app_{}/runs/{}/", fixture.run.app_id, fixture.run.id);
    let stdout = of_type(&rows, "stdout");
    assert_eq!(stdout.len(), 1);
    assert_eq!(
        stdout[0].3.as_deref(),
        Some(&*format!("{prefix}stdout.log"))
    );
    assert_eq!(
        (stdout[0].4, stdout[0].5.as_deref()),
        (Some(8), Some("text/plain"))
    );
    assert_eq!(of_type(&rows, "stderr")[0].4, Some(5));
    let result = of_type(&rows, "result");
    assert_eq!(result[0].2, Some(json!({"answer": 42, "items": [1, 2]})));
    let metrics: Vec<(String, Value)> = of_type(&rows, "metric")
        .iter()
        .map(|r| (r.1.clone().unwrap(), r.2.clone().unwrap()))
        .collect();
    assert_eq!(
        metrics,
        vec![
            ("duration_ms".into(), json!(1234)),
            ("exit_code".into(), json!(3)),
            ("peak_memory_bytes".into(), json!(50 << 20)),
            ("ratio".into(), json!(0.25)),
            ("rows".into(), json!(1200)),
        ]
    );
    let files: Vec<(&str, &str, i64, &str)> = of_type(&rows, "file")
        .iter()
        .map(|r| {
            (
                r.1.as_deref().unwrap(),
                r.3.as_deref().unwrap(),
                r.4.unwrap(),
                r.5.as_deref().unwrap(),
            )
        })
        .collect();
    let key = |rel: &str| fixture.output_key(rel);
    assert_eq!(
        files,
        vec![
            ("charts/plot.png", &*key("charts/plot.png"), 4, "image/png"),
            ("raw.bin", &*key("raw.bin"), 3, "application/octet-stream"),
            ("report.csv", &*key("report.csv"), 8, "text/csv"),
        ]
    );
    assert_eq!(
        fixture.stored(&key("report.csv")).await.unwrap(),
        b"a,b\n1,2\n"
    );
    assert_eq!(fixture.stored(&key("result.json")).await, None);
    let errors = of_type(&rows, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].1.as_deref(), Some("exit_nonzero"));
    assert_eq!(
        errors[0].2,
        Some(json!({"kind": "exit_nonzero", "message": "the app exited with status 3"}))
    );
    let (logs_path, output_path, metadata) = fixture.run_paths().await;
    assert_eq!(logs_path.as_deref(), Some(&*prefix));
    assert_eq!(output_path, Some(format!("{prefix}output/")));
    assert_eq!(metadata.get("logs_incomplete"), None);
}

#[tokio::test]
async fn invalid_json_in_result_json_is_an_error_output_saying_why() {
    let fixture = Fixture::local().await;
    fixture.write("result.json", b"{\"answer\": 42,");
    let (_, _, rows) = fixture.collect_and_record().await;
    assert!(of_type(&rows, "result").is_empty());
    let errors = of_type(&rows, "error");
    assert_eq!(errors.len(), 1);
    let data = errors[0].2.as_ref().unwrap();
    assert_eq!(data["reason"], "invalid_json");
    assert!(
        data["message"]
            .as_str()
            .unwrap()
            .starts_with("result.json is not valid JSON: EOF while parsing"),
        "{data}"
    );
}

#[tokio::test]
async fn a_five_megabyte_result_is_refused_unread() {
    let fixture = Fixture::local().await;
    let big = format!("[{}0]", "0,".repeat(5 * 1024 * 1024 / 2));
    fixture.write("result.json", &big);
    let (_, _, rows) = fixture.collect_and_record().await;
    assert!(of_type(&rows, "result").is_empty());
    assert_eq!(
        problems(&rows),
        vec![("result.json".into(), "too_large".into())]
    );
    let message = of_type(&rows, "error")[0].2.as_ref().unwrap()["message"].clone();
    assert!(
        message.as_str().unwrap().contains(&format!(
            "is {} bytes, over outputs.max_result_bytes = 1048576",
            big.len()
        )),
        "{message}"
    );
}

#[tokio::test]
async fn metrics_keep_the_numbers_and_name_the_key_that_is_not_one() {
    let fixture = Fixture::local().await;
    fixture.write(
        "metrics.json",
        br#"{"accuracy": 0.97, "label": "fast", "count": 3, "nested": {"a": 1}}"#,
    );
    let (_, _, rows) = fixture.collect_and_record().await;
    let metrics: Vec<(String, Value)> = of_type(&rows, "metric")
        .iter()
        .map(|r| (r.1.clone().unwrap(), r.2.clone().unwrap()))
        .collect();
    assert_eq!(
        metrics,
        vec![("accuracy".into(), json!(0.97)), ("count".into(), json!(3))]
    );
    let messages: Vec<String> = of_type(&rows, "error")
        .iter()
        .map(|r| {
            r.2.as_ref().unwrap()["message"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        messages,
        vec![
            "metrics.json: \"label\" is a string, not a number; it was not recorded",
            "metrics.json: \"nested\" is an object, not a number; it was not recorded",
        ]
    );
}

#[tokio::test]
async fn a_symlink_to_a_host_file_is_skipped_and_the_host_content_never_uploaded() {
    let fixture = Fixture::supabase().await;
    let secret = format!("host secret {}", uuid::Uuid::new_v4());
    let host = fixture.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("secret.env"), &secret).unwrap();
    let output = fixture.output();
    std::os::unix::fs::symlink(host.join("secret.env"), output.join("result.json")).unwrap();
    std::os::unix::fs::symlink(host.join("secret.env"), output.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(&host, output.join("hostdir")).unwrap();
    fixture.write("fine.txt", "ok");

    let (collected, recorded, rows) = fixture.collect_and_record().await;
    assert_eq!(collected.result, None);
    assert_eq!(recorded.files_uploaded, 1);
    assert_eq!(
        problems(&rows),
        vec![
            ("hostdir".into(), "symlink".into()),
            ("leak.txt".into(), "symlink".into()),
            ("result.json".into(), "symlink".into()),
        ]
    );
    let double = fixture._double.as_ref().unwrap();
    let stored = double.keys(APP_LOGS_BUCKET, "");
    assert_eq!(stored, vec![(fixture.output_key("fine.txt"), 2)]);
    for (key, _) in stored {
        let (bytes, _) = double.get(APP_LOGS_BUCKET, &key).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&secret));
    }
    let all_rows = format!("{rows:?}");
    assert!(
        !all_rows.contains(&secret),
        "the host content reached a row"
    );
}

#[tokio::test]
async fn fifos_are_skipped_without_ever_being_opened() {
    let fixture = Fixture::local().await;
    for name in ["result.json", "data.fifo"] {
        let status = std::process::Command::new("mkfifo")
            .arg(fixture.output().join(name))
            .status()
            .unwrap();
        assert!(status.success());
    }
    fixture.write("after.txt", "still collected");
    // `collect` runs under a timeout: opening a FIFO without a writer would block forever.
    let (collected, recorded, rows) = fixture.collect_and_record().await;
    assert_eq!(collected.result, None);
    assert_eq!(recorded.files_uploaded, 1);
    assert_eq!(
        problems(&rows),
        vec![
            ("data.fifo".into(), "fifo".into()),
            ("result.json".into(), "fifo".into())
        ]
    );
}

#[tokio::test]
async fn ten_thousand_files_are_capped_and_the_rest_reported() {
    let fixture = Fixture::local().await;
    for i in 0..10_000 {
        fixture.write(&format!("d{}/f{i:05}.txt", i % 10), format!("{i}"));
    }
    let (collected, recorded, rows) = fixture.collect_and_record().await;
    assert_eq!(collected.files.len(), 100);
    assert_eq!(recorded.files_uploaded, 100);
    assert_eq!(of_type(&rows, "file").len(), 100);
    assert_eq!(
        of_type(&rows, "file")[0].1.as_deref(),
        Some("d0/f00000.txt")
    );
    let errors = of_type(&rows, "error");
    assert_eq!(errors.len(), 1);
    let data = errors[0].2.as_ref().unwrap();
    assert_eq!(data["reason"], "too_many_files");
    assert!(
        data["message"]
            .as_str()
            .unwrap()
            .starts_with("9900 files beyond outputs.max_files = 100 were not collected"),
        "{data}"
    );
}

#[tokio::test]
async fn a_record_writes_nothing_for_a_run_not_ours_and_completes_a_cancelled_one() {
    let fixture = Fixture::local().await;
    fixture.write("result.json", b"{}");
    fixture.write("report.csv", "a\n");
    let collected = fixture.collect().await;
    let what = RunRecord {
        collected: Some(&collected),
        metrics: DaemonMetrics {
            duration_ms: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    // Another executor, and a stale attempt of ours: neither holds the claim.
    let stale = ClaimedRun {
        attempt: fixture.run.attempt + 1,
        ..fixture.run.clone()
    };
    let other = app_executor::outputs::record(
        &fixture.pool,
        fixture.storage.as_ref(),
        &fixture.run,
        "someone-else",
        &what,
    )
    .await
    .unwrap();
    let late = app_executor::outputs::record(
        &fixture.pool,
        fixture.storage.as_ref(),
        &stale,
        EXECUTOR,
        &what,
    )
    .await
    .unwrap();
    for recorded in [other, late] {
        assert_eq!(recorded, Recorded::default());
    }
    assert!(output_rows(&fixture.db, &fixture.run).await.is_empty());
    assert_eq!(
        fixture.stored(&fixture.output_key("report.csv")).await,
        None
    );
    let (logs_path, output_path, _) = fixture.run_paths().await;
    assert_eq!((logs_path, output_path), (None, None));

    // A client cancelled the run while we held it: the holder still completes its record
    // (logs, outputs); the status stays `cancelled`.
    fixture
        .db
        .client()
        .await
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&fixture.run.id],
        )
        .await
        .unwrap();
    assert!(fixture.record(&what).await.fence_held);
    assert!(!output_rows(&fixture.db, &fixture.run).await.is_empty());
}

#[tokio::test]
async fn logs_that_are_not_durable_flag_the_run_logs_incomplete() {
    let fixture = Fixture::supabase().await;
    let double = fixture._double.as_ref().unwrap();
    let settings = LogSettings {
        durable_retry_window: Duration::from_secs(1),
        ..LogSettings::default()
    };
    let mut log = RunLog::start(
        fixture.storage.clone(),
        &fixture.dir.path().join("spool"),
        LogTarget::of(&fixture.run),
        settings,
    )
    .unwrap();
    log.append(LogStream::Stdout, b"lost to the outage\n");
    double.fail_for(Duration::from_secs(5));
    let logs = log.finish().await;
    assert!(!logs.durable);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let recorded = fixture
        .record(&RunRecord {
            logs: Some(&logs),
            ..Default::default()
        })
        .await;
    assert!(recorded.fence_held);
    let (logs_path, _, metadata) = fixture.run_paths().await;
    assert!(logs_path.is_some());
    assert_eq!(metadata["logs_incomplete"], json!(true));
    let rows = output_rows(&fixture.db, &fixture.run).await;
    let stdout = of_type(&rows, "stdout");
    assert_eq!(stdout[0].3, None, "no compacted object to point at");
    assert_eq!(stdout[0].2.as_ref().unwrap()["complete"], json!(false));
}

#[tokio::test]
async fn a_retried_run_keeps_only_the_outputs_of_the_attempt_that_finishes_it() {
    let mut fixture = Fixture::local().await;
    fixture.write("a.txt", "from attempt one");
    fixture.write("b.txt", "from attempt one");
    let (_, recorded, _) = fixture.collect_and_record().await;
    assert_eq!(recorded.files_uploaded, 2);
    let first = fixture.run.clone();

    // Attempt 1 loses its lease before finishing; the run is requeued and claimed again.
    fixture
        .db
        .client()
        .await
        .execute(
            "update public.app_runs set status = 'pending', executor_id = null,
                    lease_expires_at = null, started_at = null where id = $1",
            &[&first.id],
        )
        .await
        .unwrap();
    fixture.run = crate::harness::run::claim(&fixture.pool).await.unwrap();
    assert_eq!((fixture.run.id, fixture.run.attempt), (first.id, 2));
    std::fs::remove_dir_all(fixture.output()).unwrap();
    fixture.write("b.txt", "from attempt two");
    fixture.write("c.txt", "from attempt two");
    let (_, recorded, rows) = fixture.collect_and_record().await;
    assert_eq!(recorded.files_uploaded, 2);

    let files: Vec<&str> = of_type(&rows, "file")
        .iter()
        .map(|r| r.1.as_deref().unwrap())
        .collect();
    assert_eq!(files, vec!["b.txt", "c.txt"]);
    assert_eq!(fixture.stored(&fixture.output_key("a.txt")).await, None);
    assert_eq!(
        fixture.stored(&fixture.output_key("b.txt")).await.unwrap(),
        b"from attempt two"
    );
    // The stale attempt can no longer record anything.
    let late = app_executor::outputs::record(
        &fixture.pool,
        fixture.storage.as_ref(),
        &first,
        EXECUTOR,
        &RunRecord::default(),
    )
    .await
    .unwrap();
    assert!(!late.fence_held);
    assert_eq!(
        of_type(&output_rows(&fixture.db, &fixture.run).await, "file").len(),
        2
    );
}
