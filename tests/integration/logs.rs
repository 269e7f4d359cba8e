//! Run logs end to end: `RunLog` writing through the real storage backends (the local directory
//! backend, and the Supabase HTTP client against the storage double with its faults), and the
//! real `app-executor logs` binary reading them back from a real database and storage.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app_executor::logs::{layout, LogSettings, LogStream, LogSummary, LogTarget, RunLog};
use app_executor::model::{ClaimedRun, FinalStatus};
use app_executor::storage::ServiceKey;
use app_executor::storage::{
    BucketPolicy, ListEntry, LocalStorage, Storage, SupabaseOptions, SupabaseStorage,
    APP_LOGS_BUCKET,
};
use chrono::Utc;
use uuid::Uuid;

use crate::harness::run::{claim_run, EXECUTOR};
use crate::harness::storage_double::{StorageDouble, SERVICE_KEY};
use crate::harness::{binary, TestDb};

const MIB: usize = 1024 * 1024;

/// A storage backend and what keeps it alive.
struct Backend {
    storage: Arc<dyn Storage>,
    double: Option<StorageDouble>,
    dir: tempfile::TempDir,
}

impl Backend {
    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path().join("storage"), BucketPolicy::default());
        Self {
            storage: Arc::new(storage),
            double: None,
            dir,
        }
    }

    async fn supabase() -> Self {
        let double = StorageDouble::start().await;
        let mut options = SupabaseOptions::new(double.url.clone(), ServiceKey::new(SERVICE_KEY));
        options.retry_base_delay = Duration::from_millis(20);
        options.retry_max_delay = Duration::from_millis(100);
        options.read_timeout = Duration::from_secs(5);
        Self {
            storage: Arc::new(SupabaseStorage::new(options).unwrap()),
            double: Some(double),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn spool(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join("spool").join(name)
    }

    fn start(&self, target: &LogTarget, settings: LogSettings) -> RunLog {
        let spool = self.spool(&format!("attempt-{}", target.attempt));
        RunLog::start(self.storage.clone(), &spool, target.clone(), settings).unwrap()
    }
}

fn target(attempt: i32) -> LogTarget {
    LogTarget {
        app_id: Uuid::new_v4(),
        run_id: Uuid::new_v4(),
        attempt,
        claimed_at: Utc::now(),
        build: false,
    }
}

fn folder(target: &LogTarget) -> String {
    format!(
        "{}{}/",
        layout::run_prefix(target.app_id, target.run_id),
        layout::attempt_folder(target.attempt, target.claimed_at)
    )
}

async fn read(storage: &dyn Storage, key: &str) -> Vec<u8> {
    storage
        .download(APP_LOGS_BUCKET, key)
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .bytes()
        .await
        .unwrap()
}

async fn compacted(storage: &dyn Storage, target: &LogTarget, stream: LogStream) -> Vec<u8> {
    read(
        storage,
        &layout::compacted_key(target.app_id, target.run_id, stream),
    )
    .await
}

/// The chunk names of a claim's folder, in storage's order.
async fn chunk_names(storage: &dyn Storage, target: &LogTarget) -> Vec<String> {
    storage
        .list(APP_LOGS_BUCKET, &folder(target))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e, ListEntry::Object { .. }))
        .map(|e| e.name().to_owned())
        .collect()
}

/// A stream's chunks concatenated in sequence order.
async fn chunks_of(storage: &dyn Storage, target: &LogTarget, stream: LogStream) -> Vec<u8> {
    let mut chunks: Vec<(u32, String)> = chunk_names(storage, target)
        .await
        .into_iter()
        .filter_map(|name| {
            layout::parse_chunk_name(&name)
                .filter(|(s, _)| *s == stream)
                .map(|(_, seq)| (seq, name))
        })
        .collect();
    chunks.sort();
    let mut all = Vec::new();
    for (i, (seq, name)) in chunks.iter().enumerate() {
        assert_eq!(
            *seq as usize,
            i + 1,
            "chunks are numbered from 1 without gaps"
        );
        all.extend(read(storage, &format!("{}{name}", folder(target))).await);
    }
    all
}

fn assert_durable(summary: &LogSummary) {
    assert!(summary.durable && summary.compacted, "{summary:#?}");
}

// ---- behaviours of both backends ------------------------------------------------------------

async fn the_first_chunk_is_readable_while_the_run_still_writes(backend: Backend) {
    let storage = backend.storage.as_ref();
    let target = target(1);
    let mut log = backend.start(&target, LogSettings::default());
    let started = Instant::now();
    let mut written = Vec::new();
    let mut seen_after = None;
    for i in 0.. {
        let line = format!("line {i}\n");
        log.append(LogStream::Stdout, line.as_bytes());
        written.extend_from_slice(line.as_bytes());
        if seen_after.is_none() && !chunk_names(storage, &target).await.is_empty() {
            seen_after = Some(started.elapsed());
            let first = read(storage, &format!("{}stdout.000001.log", folder(&target))).await;
            assert!(first.starts_with(b"line 0\nline 1\n"), "{first:?}");
        }
        // Keep writing a little after the first chunk showed up: the run is still live.
        if seen_after.is_some_and(|at| started.elapsed() > at + Duration::from_millis(500)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no chunk readable within 5 s of the first line"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = log.finish().await;
    assert_durable(&summary);
    assert_eq!(
        compacted(storage, &target, LogStream::Stdout).await,
        written
    );
    assert_eq!(compacted(storage, &target, LogStream::Stderr).await, b"");
    assert!(
        chunk_names(storage, &target).await.is_empty(),
        "chunks are deleted once compacted"
    );
    assert_eq!(summary.stdout.received_bytes, written.len() as u64);
    assert_eq!(summary.stdout.dropped_bytes, 0);
}

async fn interleaved_stdout_and_stderr_each_keep_their_order(backend: Backend) {
    let storage = backend.storage.as_ref();
    let target = target(1);
    let settings = LogSettings {
        chunk_bytes: 1024,
        chunk_interval: Duration::from_millis(50),
        ..LogSettings::default()
    };
    let mut log = backend.start(&target, settings);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for i in 0..3000 {
        let (stream, sink) = if i % 3 == 0 {
            (LogStream::Stderr, &mut err)
        } else {
            (LogStream::Stdout, &mut out)
        };
        let line = format!("{} {i}\n", stream.as_str());
        log.append(stream, line.as_bytes());
        sink.extend_from_slice(line.as_bytes());
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    // Before finishing, the chunks already hold each stream in order.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(chunks_of(storage, &target, LogStream::Stdout).await, out);
    assert_eq!(chunks_of(storage, &target, LogStream::Stderr).await, err);
    let summary = log.finish().await;
    assert_durable(&summary);
    assert!(summary.stdout.chunks > 10, "{summary:#?}");
    assert_eq!(compacted(storage, &target, LogStream::Stdout).await, out);
    assert_eq!(compacted(storage, &target, LogStream::Stderr).await, err);
}

async fn binary_output_is_stored_byte_for_byte(backend: Backend) {
    let storage = backend.storage.as_ref();
    let target = target(1);
    let mut log = backend.start(&target, LogSettings::default());
    let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    for piece in bytes.chunks(777) {
        log.append(LogStream::Stderr, piece);
    }
    let summary = log.finish().await;
    assert_durable(&summary);
    assert_eq!(compacted(storage, &target, LogStream::Stderr).await, bytes);
}

async fn a_twenty_megabyte_line_without_a_newline_is_stored_whole(backend: Backend) {
    let storage = backend.storage.as_ref();
    let target = target(1);
    let mut log = backend.start(&target, LogSettings::default());
    // With app output traced at debug level, so the line splitter runs too.
    let traced = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let sink = traced.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || EventSize(sink.clone()))
        .finish();
    let line: Vec<u8> = (0..20 * MIB).map(|i| b'a' + (i % 26) as u8).collect();
    tracing::subscriber::with_default(subscriber, || {
        for piece in line.chunks(64 * 1024) {
            log.append(LogStream::Stdout, piece);
        }
    });
    let summary = log.finish().await;
    assert_durable(&summary);
    let stored = compacted(storage, &target, LogStream::Stdout).await;
    assert!(
        stored == line,
        "the stored line differs ({} bytes)",
        stored.len()
    );
    let traced = traced.lock().unwrap();
    assert!(traced.len() >= 20 * MIB / 4096, "{} events", traced.len());
    let longest = traced.iter().max().copied().unwrap_or(0);
    assert!(longest < 4096 + 512, "a traced piece of {longest} bytes");
}

/// Counts the bytes of each formatted tracing event.
struct EventSize(Arc<std::sync::Mutex<Vec<usize>>>);

impl std::io::Write for EventSize {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().push(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn a_second_attempt_never_touches_the_first_attempts_chunks(backend: Backend) {
    let storage = backend.storage.as_ref();
    let settings = LogSettings {
        chunk_interval: Duration::from_millis(100),
        ..LogSettings::default()
    };
    // Attempt 1 gets a chunk out, then its daemon dies: nothing more is uploaded.
    let first = target(1);
    let mut log = backend.start(&first, settings.clone());
    log.append(LogStream::Stdout, b"attempt one, before the crash\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while chunk_names(storage, &first).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "attempt one's chunk never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.abandon();
    let kept = chunk_names(storage, &first).await;
    let kept_bytes = chunks_of(storage, &first, LogStream::Stdout).await;
    assert_eq!(kept_bytes, b"attempt one, before the crash\n");

    // The same run claimed again: a shutdown re-claim that got attempt number 1 back (a later
    // claim time; interrupted, so its chunks stay), then attempt 2, which finishes.
    let reclaimed = LogTarget {
        claimed_at: first.claimed_at + chrono::Duration::milliseconds(1),
        ..first.clone()
    };
    let second = LogTarget {
        attempt: 2,
        claimed_at: Utc::now() + chrono::Duration::seconds(1),
        ..first.clone()
    };
    assert_ne!(folder(&reclaimed), folder(&first));
    let spool = |t: &LogTarget| backend.spool(&folder(t).replace('/', "_"));
    let mut log = RunLog::start(
        backend.storage.clone(),
        &spool(&reclaimed),
        reclaimed.clone(),
        settings.clone(),
    )
    .unwrap();
    log.append(LogStream::Stdout, b"re-claimed attempt one\n");
    let summary = log.interrupt().await;
    assert!(summary.durable && !summary.compacted, "{summary:#?}");
    let mut log = RunLog::start(
        backend.storage.clone(),
        &spool(&second),
        second.clone(),
        settings,
    )
    .unwrap();
    log.append(LogStream::Stdout, b"attempt two\n");
    assert_durable(&log.finish().await);

    assert_eq!(chunk_names(storage, &first).await, kept);
    assert_eq!(
        chunks_of(storage, &first, LogStream::Stdout).await,
        kept_bytes
    );
    assert_eq!(
        chunks_of(storage, &reclaimed, LogStream::Stdout).await,
        b"re-claimed attempt one\n"
    );
    assert!(chunk_names(storage, &second).await.is_empty());
    assert_eq!(
        compacted(storage, &second, LogStream::Stdout).await,
        b"attempt two\n"
    );
}

async fn steady_small_output_goes_out_once_per_interval_not_in_tiny_chunks(backend: Backend) {
    let storage = backend.storage.as_ref();
    let target = target(1);
    let settings = LogSettings {
        chunk_interval: Duration::from_millis(200),
        ..LogSettings::default()
    };
    let mut log = backend.start(&target, settings);
    let mut written = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let line = format!("tick {i}\n");
        log.append(LogStream::Stdout, line.as_bytes());
        written.extend_from_slice(line.as_bytes());
        i += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let summary = log.finish().await;
    assert_durable(&summary);
    // About one chunk per 200 ms interval (and the tail), however often the app writes.
    assert!(
        (5..=20).contains(&summary.stdout.chunks),
        "{} chunks for {i} writes in 2 s",
        summary.stdout.chunks
    );
    assert_eq!(
        compacted(storage, &target, LogStream::Stdout).await,
        written
    );
}

macro_rules! for_both_backends {
    ($($behaviour:ident),* $(,)?) => {
        mod supabase_backend {
            $(#[tokio::test]
            async fn $behaviour() {
                super::$behaviour(super::Backend::supabase().await).await;
            })*
        }
        mod local_backend {
            $(#[tokio::test]
            async fn $behaviour() {
                super::$behaviour(super::Backend::local()).await;
            })*
        }
    };
}

for_both_backends!(
    the_first_chunk_is_readable_while_the_run_still_writes,
    interleaved_stdout_and_stderr_each_keep_their_order,
    binary_output_is_stored_byte_for_byte,
    a_twenty_megabyte_line_without_a_newline_is_stored_whole,
    a_second_attempt_never_touches_the_first_attempts_chunks,
    steady_small_output_goes_out_once_per_interval_not_in_tiny_chunks,
);

// ---- caps and memory ------------------------------------------------------------------------

fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn two_hundred_megabytes_store_exactly_the_cap_with_a_marker_in_bounded_memory() {
    let backend = Backend::local();
    let storage = backend.storage.as_ref();
    let target = target(1);
    let settings = LogSettings::default();
    let cap = settings.stream_cap;
    // Reset the peak RSS, so VmHWM below is the peak of this test's work alone.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let before = status_kib("VmHWM:");
    let mut log = backend.start(&target, settings);
    let block: Vec<u8> = (0..64 * 1024)
        .map(|i| {
            if i % 100 == 99 {
                b'\n'
            } else {
                b'0' + (i % 10) as u8
            }
        })
        .collect();
    let total = 200 * 1000 * 1000u64;
    let mut sent = 0u64;
    while sent < total {
        let n = block.len().min((total - sent) as usize);
        log.append(LogStream::Stdout, &block[..n]);
        sent += n as u64;
    }
    let summary = log.finish().await;
    let peak = status_kib("VmHWM:");
    eprintln!(
        "peak RSS {} MiB -> {} MiB while 200 MB were logged",
        before / 1024,
        peak / 1024
    );
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "peak RSS grew by {} MiB while 200 MB were logged",
        (peak - before) / 1024
    );
    assert_durable(&summary);
    let kept = cap - layout::MARKER_RESERVE;
    assert_eq!(summary.stdout.received_bytes, total);
    assert_eq!(summary.stdout.dropped_bytes, total - kept);
    let stored = compacted(storage, &target, LogStream::Stdout).await;
    assert_eq!(stored.len() as u64, summary.stdout.stored_bytes);
    assert!(stored.len() as u64 <= cap, "{} > {cap}", stored.len());
    let expected_head: Vec<u8> = block.iter().copied().cycle().take(kept as usize).collect();
    assert!(
        stored[..kept as usize] == expected_head[..],
        "the kept bytes differ"
    );
    let marker = format!(
        "[app-executor: {} bytes of stdout dropped over the 50MiB cap]\n",
        total - kept
    );
    assert_eq!(
        String::from_utf8_lossy(&stored[kept as usize..]),
        if stored[kept as usize - 1] == b'\n' {
            marker
        } else {
            format!("\n{marker}")
        }
    );
}

// ---- storage faults -------------------------------------------------------------------------

#[tokio::test]
async fn storage_failing_for_ten_seconds_mid_stream_loses_nothing() {
    let backend = Backend::supabase().await;
    let double = backend.double.as_ref().unwrap();
    let storage = backend.storage.as_ref();
    let target = target(1);
    let settings = LogSettings {
        chunk_interval: Duration::from_millis(200),
        chunk_bytes: 4096,
        ..LogSettings::default()
    };
    let mut log = backend.start(&target, settings);
    let mut written = Vec::new();
    let mut write = |log: &mut RunLog, i: usize| {
        let line = format!("{i:06} {}\n", "x".repeat(i % 200));
        log.append(LogStream::Stdout, line.as_bytes());
        written.extend_from_slice(line.as_bytes());
    };
    for i in 0..200 {
        write(&mut log, i);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_outage = chunk_names(storage, &target).await.len();
    assert!(before_outage > 0, "chunks were uploaded before the outage");
    double.fail_for(Duration::from_secs(10));
    let outage = Instant::now();
    // The app keeps writing through the outage; appends never wait on storage.
    for i in 200..2200 {
        let append_started = Instant::now();
        write(&mut log, i);
        assert!(append_started.elapsed() < Duration::from_millis(100));
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let summary = log.finish().await;
    assert!(
        outage.elapsed() >= Duration::from_secs(10),
        "finish returned during the outage"
    );
    assert_durable(&summary);
    let failed = double
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST /storage/v1/object/app-logs/"))
        .count();
    assert!(
        failed > summary.stdout.chunks as usize,
        "uploads were retried"
    );
    assert_eq!(
        compacted(storage, &target, LogStream::Stdout).await,
        written
    );
    assert!(chunk_names(storage, &target).await.is_empty());
}

#[tokio::test]
async fn storage_down_past_the_retry_window_reports_the_logs_not_durable() {
    let backend = Backend::supabase().await;
    let double = backend.double.as_ref().unwrap();
    let storage = backend.storage.as_ref();
    let target = target(1);
    let settings = LogSettings {
        chunk_interval: Duration::from_millis(100),
        durable_retry_window: Duration::from_secs(2),
        ..LogSettings::default()
    };
    let mut log = backend.start(&target, settings);
    log.append(LogStream::Stdout, b"uploaded before the outage\n");
    tokio::time::sleep(Duration::from_millis(600)).await;
    double.fail_for(Duration::from_secs(600));
    log.append(LogStream::Stdout, b"never uploaded\n");
    let finishing = Instant::now();
    let summary = log.finish().await;
    assert!(
        finishing.elapsed() < Duration::from_secs(5),
        "finish took {:?}",
        finishing.elapsed()
    );
    assert!(!summary.durable && !summary.compacted, "{summary:#?}");
    assert_eq!(summary.stdout.stored_bytes, 42);
    // What reached storage stays there for the reader.
    let chunk = double
        .get(
            APP_LOGS_BUCKET,
            &format!("{}stdout.000001.log", folder(&target)),
        )
        .unwrap();
    assert_eq!(chunk.0, b"uploaded before the outage\n");
    assert_eq!(chunk.1, "text/plain");
    let _ = storage;
}

// ---- the `logs` command ---------------------------------------------------------------------

/// Ends a claimed run the way the runner will: logs finished, outputs recorded, status written.
async fn end_run(
    pool: &deadpool_postgres::Pool,
    storage: &dyn Storage,
    run: &ClaimedRun,
    log: RunLog,
) {
    let summary = log.finish().await;
    assert_durable(&summary);
    record_end(pool, storage, run, &summary).await;
}

async fn record_end(
    pool: &deadpool_postgres::Pool,
    storage: &dyn Storage,
    run: &ClaimedRun,
    summary: &LogSummary,
) {
    let record = app_executor::outputs::RunRecord {
        logs: Some(summary),
        ..Default::default()
    };
    let recorded = app_executor::outputs::record(pool, storage, run, EXECUTOR, &record)
        .await
        .unwrap();
    assert!(recorded.fence_held);
    let completion = app_executor::db::queue::Completion {
        status: FinalStatus::Success,
        error_kind: None,
        error_message: None,
        exit_code: Some(0),
    };
    let finished = app_executor::db::queue::finish_run(
        pool,
        app_executor::db::queue::Queue::Runs,
        run.id,
        EXECUTOR,
        run.attempt,
        &completion,
    )
    .await
    .unwrap();
    assert!(finished);
}

fn logs_command(
    db: &TestDb,
    storage_env: &[(String, String)],
    args: &[&str],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary());
    command
        .arg("logs")
        .args(args)
        .env("DATABASE_URL", db.url.expose())
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in storage_env {
        command.env(k, v);
    }
    command
}

fn supabase_env(double: &StorageDouble) -> Vec<(String, String)> {
    vec![
        ("APP_EXECUTOR_STORAGE__BACKEND".into(), "supabase".into()),
        ("APP_EXECUTOR_STORAGE__URL".into(), double.url.to_string()),
        ("SUPABASE_SERVICE_ROLE_KEY".into(), SERVICE_KEY.into()),
    ]
}

fn local_env(root: &Path) -> Vec<(String, String)> {
    vec![
        ("APP_EXECUTOR_STORAGE__BACKEND".into(), "local".into()),
        (
            "APP_EXECUTOR_STORAGE__LOCAL_ROOT".into(),
            root.display().to_string(),
        ),
    ]
}

#[tokio::test]
async fn the_logs_command_prints_a_finished_runs_stdout_and_stderr_apart() {
    let db = TestDb::migrated().await;
    let (pool, run) = claim_run(&db).await;
    let backend = Backend::supabase().await;
    let mut log = backend.start(&LogTarget::of(&run), LogSettings::default());
    log.append(LogStream::Stdout, b"hello from stdout\n");
    log.append(LogStream::Stderr, b"a warning\n");
    log.append(LogStream::Stdout, b"bye \xff\n");
    end_run(&pool, backend.storage.as_ref(), &run, log).await;
    let env = supabase_env(backend.double.as_ref().unwrap());

    let out = logs_command(&db, &env, &[&run.id.to_string()])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello from stdout\nbye \xff\n");
    assert_eq!(out.stderr, b"a warning\n");

    let unknown = Uuid::new_v4();
    let out = logs_command(&db, &env, &[&unknown.to_string()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("there is no run or build {unknown}")),
        "{stderr}"
    );

    let out = logs_command(&db, &env, &["not-a-run"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"not-a-run\" is not a run or build id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_logs_command_falls_back_to_the_chunks_when_the_logs_are_incomplete() {
    let db = TestDb::migrated().await;
    let (pool, run) = claim_run(&db).await;
    let backend = Backend::supabase().await;
    let double = backend.double.as_ref().unwrap();
    let settings = LogSettings {
        chunk_interval: Duration::from_millis(100),
        durable_retry_window: Duration::from_secs(1),
        ..LogSettings::default()
    };
    let target = LogTarget::of(&run);
    let mut log = backend.start(&target, settings);
    log.append(LogStream::Stdout, b"reached storage\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while chunk_names(backend.storage.as_ref(), &target)
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the chunk never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    double.fail_for(Duration::from_secs(3));
    log.append(LogStream::Stdout, b"lost in the outage\n");
    let summary = log.finish().await;
    assert!(!summary.durable);
    tokio::time::sleep(Duration::from_secs(3)).await;
    record_end(&pool, backend.storage.as_ref(), &run, &summary).await;

    let out = logs_command(&db, &supabase_env(double), &[&run.id.to_string()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(out.stdout, b"reached storage\n");
    assert!(
        stderr.contains("its compacted logs are missing (logs_incomplete)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn logs_follow_prints_live_output_and_exits_when_the_run_ends() {
    let db = TestDb::migrated().await;
    let (pool, run) = claim_run(&db).await;
    let backend = Backend::local();
    let root = backend.dir.path().join("storage");
    let settings = LogSettings {
        chunk_interval: Duration::from_millis(200),
        ..LogSettings::default()
    };
    let mut log = backend.start(&LogTarget::of(&run), settings);
    log.append(LogStream::Stdout, b"first line\n");
    let mut follower = logs_command(&db, &local_env(&root), &[&run.id.to_string(), "--follow"])
        .spawn()
        .unwrap();
    let mut stdout = follower.stdout.take().unwrap();

    // The first line arrives while the run is still going.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.ends_with(b"first line\n") {
        assert!(Instant::now() < deadline, "follow printed {seen:?}");
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut stdout, &mut buf),
        )
        .await
        .expect("follow printed the first line")
        .unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    let mut expected = b"first line\n".to_vec();
    for i in 0..20 {
        let line = format!("line {i}\n");
        log.append(LogStream::Stdout, line.as_bytes());
        expected.extend_from_slice(line.as_bytes());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.append(LogStream::Stderr, b"the end\n");
    end_run(&pool, backend.storage.as_ref(), &run, log).await;

    let status = tokio::time::timeout(Duration::from_secs(10), follower.wait())
        .await
        .expect("follow exits once the run ends")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut rest)
        .await
        .unwrap();
    seen.extend(rest);
    assert_eq!(
        String::from_utf8_lossy(&seen),
        String::from_utf8_lossy(&expected)
    );
    let mut stderr = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(follower.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&stderr), "the end\n");
}
