//! Run logs and outputs end to end: the real daemon process running real apps in real Docker
//! containers, their stdout/stderr streamed to storage (the local backend under the daemon's
//! state directory, or the Supabase HTTP client against the storage double with its faults),
//! and `/output` read back into `app_outputs`. What `logs.rs` and `outputs.rs` check of the
//! parts, checked here through the whole path: container → attach stream → spool → chunks →
//! compacted objects → rows → status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::harness::apps::{self, enqueue, publish_ok, run_record, write_app, RunRecord};
use crate::harness::daemon::{run_until_idle, Daemon, DaemonOptions};
use crate::harness::docker::assert_no_containers;
use crate::harness::storage_double::{StorageDouble, SERVICE_KEY};
use crate::harness::{binary, insert_tenant, TestDb};

const LOGS: &str = "app-logs";

fn limits(timeout: &str, memory: &str) -> Value {
    json!({"timeout": timeout, "memory_limit": memory, "cpu_limit": 1})
}

/// The production execution with the app's output kept out of the daemon's own log (it is
/// traced at debug level, which the harness turns on for `app_executor`).
fn options(state: &Path) -> DaemonOptions {
    let mut options = DaemonOptions::production(state);
    options.env.push((
        "RUST_LOG".into(),
        "info,app_executor=debug,app_executor::app_output=info".into(),
    ));
    options
}

/// Where the local backend of a daemon with state directory `state` keeps `key` of `app-logs`.
fn local_object(state: &Path, key: &str) -> PathBuf {
    state.join("storage").join(LOGS).join(key)
}

fn run_prefix(app: Uuid, run: Uuid) -> String {
    format!("app_{app}/runs/{run}/")
}

/// The chunk files of every attempt folder of a run in local storage: folder name → chunk
/// names (sorted; fixed-width sequence numbers sort in order).
fn local_chunks(state: &Path, app: Uuid, run: Uuid) -> BTreeMap<String, Vec<String>> {
    let mut folders = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(local_object(state, &run_prefix(app, run))) else {
        return folders;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("attempt-") {
            continue;
        }
        let mut chunks: Vec<String> = std::fs::read_dir(entry.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        chunks.sort();
        folders.insert(name, chunks);
    }
    folders
}

/// One stream's chunks of one attempt folder, concatenated in order.
fn local_stream(state: &Path, app: Uuid, run: Uuid, folder: &str, stream: &str) -> Vec<u8> {
    let mut all = Vec::new();
    for name in local_chunks(state, app, run)
        .get(folder)
        .into_iter()
        .flatten()
    {
        if name.starts_with(&format!("{stream}.")) {
            let key = format!("{}{folder}/{name}", run_prefix(app, run));
            all.extend(std::fs::read(local_object(state, &key)).unwrap());
        }
    }
    all
}

fn local_compacted(state: &Path, app: Uuid, run: Uuid, stream: &str) -> Vec<u8> {
    let key = format!("{}{stream}.log", run_prefix(app, run));
    std::fs::read(local_object(state, &key)).unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "success" | "failed" | "timeout" | "cancelled")
}

/// Polls the run until it is terminal (at most `limit`); panics with the daemon's log if not.
async fn wait_terminal(client: &Client, run: Uuid, limit: Duration, daemon: &Daemon) -> RunRecord {
    poll_until_terminal(
        client,
        run,
        limit,
        daemon,
        Duration::from_millis(50),
        |_| {},
    )
    .await
}

/// [`wait_terminal`] polling every `every`, calling `on_poll` with each record read (the
/// terminal one included) for what a test samples meanwhile.
async fn poll_until_terminal(
    client: &Client,
    run: Uuid,
    limit: Duration,
    daemon: &Daemon,
    every: Duration,
    mut on_poll: impl FnMut(&RunRecord),
) -> RunRecord {
    let deadline = Instant::now() + limit;
    loop {
        let record = run_record(client, run).await;
        on_poll(&record);
        if is_terminal(&record.status) {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "run {run} still {} after {limit:?}; daemon log:\n{}",
            record.status,
            daemon.log_text()
        );
        tokio::time::sleep(every).await;
    }
}

/// SIGTERM, then waits (off the runtime's threads) for a clean exit.
async fn stop(mut daemon: Daemon) {
    daemon.signal("TERM");
    let (daemon, status) = tokio::task::spawn_blocking(move || {
        let status = daemon.wait(Duration::from_secs(60));
        (daemon, status)
    })
    .await
    .unwrap();
    assert!(status.success(), "daemon failed: {}", daemon.log_text());
}

fn assert_success(record: &RunRecord, log: &str) {
    assert_eq!(
        record.summary(),
        "success/-",
        "message: {:?}\ndaemon log:\n{log}",
        record.error_message
    );
    assert!(record.completed, "completed_at not set");
}

/// `(output_type, output_name) → (output_data, output_path, file_size)` of a run's outputs.
async fn outputs(
    client: &Client,
    run: Uuid,
) -> BTreeMap<(String, String), (Option<Value>, Option<String>, Option<i64>)> {
    client
        .query(
            "select output_type, coalesce(output_name, ''), output_data, output_path, file_size
               from public.app_outputs where run_id = $1",
            &[&run],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4))))
        .collect()
}

fn millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `{"VmHWM": kB, "VmRSS": kB}` of a process.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

// ---- live streaming -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_first_lines_of_a_live_run_are_in_storage_within_seconds() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let script = "let i = 0;\n\
        const tick = () => {\n\
          console.log(`line ${i} at ${Date.now()}`);\n\
          if (++i < 10) setTimeout(tick, 1000);\n\
        };\n\
        tick();\n";
    let dir = write_app(&[("index.js", script)], limits("60s", "128MiB"), json!([]));
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let daemon = Daemon::spawn(&db, options(state.path()));

    let deadline = Instant::now() + Duration::from_secs(120);
    let (folder, first_chunk, seen_at, status_then) = loop {
        let chunks = local_chunks(state.path(), app, run);
        if let Some((folder, names)) = chunks.iter().find(|(_, n)| !n.is_empty()) {
            let seen_at = millis_now();
            let status = run_record(&client, run).await.status;
            let key = format!("{}{folder}/{}", run_prefix(app, run), names[0]);
            let chunk = std::fs::read(local_object(state.path(), &key)).unwrap();
            break (folder.clone(), chunk, seen_at, status);
        }
        assert!(
            Instant::now() < deadline,
            "no chunk in storage; daemon log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let first = String::from_utf8(first_chunk).unwrap();
    assert!(first.starts_with("line 0 at "), "{first:?}");
    let printed_at: u64 = first.lines().next().unwrap()["line 0 at ".len()..]
        .parse()
        .unwrap();
    let latency = Duration::from_millis(seen_at.saturating_sub(printed_at));
    let lines_in_chunk = first.lines().count();
    eprintln!(
        "first chunk ({lines_in_chunk} lines) readable {latency:?} after the first line was printed"
    );
    assert_eq!(
        status_then, "running",
        "the run had ended before its first chunk was readable"
    );
    assert!(
        lines_in_chunk < 10,
        "the first chunk already holds every line: not live"
    );
    assert!(
        latency <= Duration::from_secs(5),
        "the first line took {latency:?} to reach storage"
    );

    let record = wait_terminal(&client, run, Duration::from_secs(60), &daemon).await;
    assert_success(&record, &daemon.log_text());
    let stored = String::from_utf8(local_compacted(state.path(), app, run, "stdout")).unwrap();
    let numbers: Vec<String> = stored
        .lines()
        .map(|l| l.split(" at ").next().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
    assert_eq!(numbers, expected);
    assert!(
        stored.starts_with(&first),
        "the chunk is the log's beginning"
    );
    assert!(
        local_chunks(state.path(), app, run)
            .get(&folder)
            .is_none_or(Vec::is_empty),
        "chunks are removed once compacted"
    );
    stop(daemon).await;
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

// ---- volume and bytes -----------------------------------------------------------------------

/// Writes `count` times the same 1 MiB block (a line of 99 digits and a newline, repeated)
/// to stdout as fast as the pipe takes it, waiting for `drain` when told to.
const FLOOD: &str = "'use strict';\n\
const { once } = require('events');\n\
const block = Buffer.alloc(1 << 20);\n\
for (let i = 0; i < block.length; i++) block[i] = i % 100 === 99 ? 10 : 48 + (i % 10);\n\
(async () => {\n\
  const count = JSON.parse(process.env.APP_INPUT).mib;\n\
  for (let i = 0; i < count; i++) {\n\
    if (!process.stdout.write(block)) await once(process.stdout, 'drain');\n\
  }\n\
})();\n";

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_megabytes_of_output_store_the_cap_and_a_marker_in_bounded_daemon_memory() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(&[("index.js", FLOOD)], limits("120s", "256MiB"), json!([]));
    publish_ok(&db, state.path(), dir.path(), app);
    let mib = 200u64;
    let run = enqueue(&client, app, company, json!({ "mib": mib })).await;
    let daemon = Daemon::spawn(&db, options(state.path()));
    let pid = daemon.pid();

    let started = Instant::now();
    let mut peak_rss = 0;
    let record = poll_until_terminal(
        &client,
        run,
        Duration::from_secs(180),
        &daemon,
        Duration::from_millis(20),
        |_| peak_rss = peak_rss.max(memory_kib(pid).1),
    )
    .await;
    // VmHWM is the kernel's own high-water mark of the whole process life, samples or not.
    let (hwm, _) = memory_kib(pid);
    let log = daemon.log_text();
    eprintln!(
        "daemon peak RSS while {mib} MiB were printed: VmHWM {} MiB (highest sampled VmRSS {} MiB), run took {:?}",
        hwm / 1024,
        peak_rss / 1024,
        started.elapsed()
    );
    assert_success(&record, &log);

    let total = mib << 20;
    let cap = 50u64 << 20;
    let kept = cap - 256; // the marker's reserve (`logs::layout::MARKER_RESERVE`)
    let stored = local_compacted(state.path(), app, run, "stdout");
    assert!(stored.len() as u64 > kept, "{} bytes stored", stored.len());
    let block: Vec<u8> = (0..1 << 20)
        .map(|i| {
            if i % 100 == 99 {
                b'\n'
            } else {
                b'0' + (i % 10) as u8
            }
        })
        .collect();
    let head = &stored[..kept as usize];
    assert!(
        head.chunks(block.len()).all(|c| c == &block[..c.len()]),
        "the kept bytes are not what the app printed"
    );
    let marker = String::from_utf8_lossy(&stored[kept as usize..]);
    assert_eq!(
        marker,
        format!(
            "\n[app-executor: {} bytes of stdout dropped over the 50MiB cap]\n",
            total - kept
        )
    );
    let rows = outputs(&client, run).await;
    let (data, path, size) = &rows[&("stdout".into(), "stdout".into())];
    assert_eq!(
        data.as_ref().unwrap(),
        &json!({"received_bytes": total, "dropped_bytes": total - kept, "complete": true})
    );
    assert_eq!(
        path.as_deref(),
        Some(&*format!("{}stdout.log", run_prefix(app, run)))
    );
    assert_eq!(*size, Some(stored.len() as i64));
    // Measured: 23 MiB for the whole daemon (runtime, pools, clients, one run). 64 MiB leaves
    // almost 3x headroom for allocator and scheduling noise, yet fails as soon as the daemon
    // holds the kept 50 MiB in memory, let alone the 200 MiB printed.
    assert!(
        hwm < 64 * 1024,
        "the daemon's peak RSS reached {} MiB",
        hwm / 1024
    );
    stop(daemon).await;
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

/// Prints what `APP_INPUT.mode` asks for; each mode's bytes are rebuilt by [`expected_bytes`].
const SHAPES: &str = "'use strict';\n\
const { once } = require('events');\n\
const put = async (stream, data) => { if (!stream.write(data)) await once(stream, 'drain'); };\n\
(async () => {\n\
  const mode = JSON.parse(process.env.APP_INPUT).mode;\n\
  if (mode === 'long-line') {\n\
    const piece = Buffer.alloc(65536);\n\
    for (let i = 0; i < piece.length; i++) piece[i] = 97 + (i % 26);\n\
    for (let left = 20000000; left > 0; left -= piece.length) await put(process.stdout, piece.subarray(0, Math.min(left, piece.length)));\n\
  } else if (mode === 'interleaved') {\n\
    for (let i = 0; i < 6000; i++) {\n\
      if (i % 3 === 0) await put(process.stderr, `err ${i}\\n`); else await put(process.stdout, `out ${i}\\n`);\n\
    }\n\
  } else if (mode === 'binary') {\n\
    const all = Buffer.alloc(256);\n\
    for (let i = 0; i < 256; i++) all[i] = i;\n\
    for (let r = 0; r < 1000; r++) {\n\
      await put(process.stdout, all);\n\
      await put(process.stderr, Buffer.from([0xff, 0xfe, 0xc3, 0x28, r & 0xff, 0xe2, 0x82]));\n\
    }\n\
  }\n\
})();\n";

/// `(stdout, stderr)` the [`SHAPES`] app prints in `mode`.
fn expected_bytes(mode: &str) -> (Vec<u8>, Vec<u8>) {
    match mode {
        "long-line" => {
            let piece: Vec<u8> = (0..65536).map(|i| b'a' + (i % 26) as u8).collect();
            (
                piece.iter().copied().cycle().take(20_000_000).collect(),
                vec![],
            )
        }
        "interleaved" => {
            let (mut out, mut err) = (String::new(), String::new());
            for i in 0..6000 {
                if i % 3 == 0 {
                    err.push_str(&format!("err {i}\n"));
                } else {
                    out.push_str(&format!("out {i}\n"));
                }
            }
            (out.into_bytes(), err.into_bytes())
        }
        "binary" => {
            let all: Vec<u8> = (0..=255).collect();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            for r in 0..1000u32 {
                out.extend_from_slice(&all);
                err.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, (r & 0xff) as u8, 0xe2, 0x82]);
            }
            (out, err)
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_line_interleaved_streams_and_binary_bytes_are_stored_byte_exact() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(&[("index.js", SHAPES)], limits("120s", "256MiB"), json!([]));
    publish_ok(&db, state.path(), dir.path(), app);
    let mut runs = Vec::new();
    for mode in ["long-line", "interleaved", "binary"] {
        runs.push((
            mode,
            enqueue(&client, app, company, json!({ "mode": mode })).await,
        ));
    }
    let log = run_until_idle(&db, options(state.path())).await;
    for (mode, run) in runs {
        assert_success(&run_record(&client, run).await, &log);
        let (out, err) = expected_bytes(mode);
        let stored_out = local_compacted(state.path(), app, run, "stdout");
        let stored_err = local_compacted(state.path(), app, run, "stderr");
        assert!(
            stored_out == out,
            "{mode}: stdout differs ({} bytes stored, {} printed)",
            stored_out.len(),
            out.len()
        );
        assert!(
            stored_err == err,
            "{mode}: stderr differs ({} bytes stored, {} printed)",
            stored_err.len(),
            err.len()
        );
        let rows = outputs(&client, run).await;
        for (stream, bytes) in [("stdout", &out), ("stderr", &err)] {
            let (data, _, size) = &rows[&(stream.into(), stream.into())];
            assert_eq!(*size, Some(bytes.len() as i64), "{mode} {stream}");
            assert_eq!(
                data.as_ref().unwrap()["dropped_bytes"],
                0,
                "{mode} {stream}"
            );
        }
    }
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

// ---- storage outage -------------------------------------------------------------------------

/// The daemon and `publish` talking to the storage double.
fn supabase_env(double: &StorageDouble) -> Vec<(String, String)> {
    vec![
        ("APP_EXECUTOR_STORAGE__BACKEND".into(), "supabase".into()),
        ("APP_EXECUTOR_STORAGE__URL".into(), double.url.to_string()),
        (
            "APP_EXECUTOR_STORAGE__SERVICE_KEY".into(),
            SERVICE_KEY.into(),
        ),
    ]
}

/// `app-executor publish` into the storage double.
async fn publish_to_double(
    db: &TestDb,
    state: &Path,
    dir: &Path,
    app: Uuid,
    double: &StorageDouble,
) {
    let published = tokio::process::Command::new(binary())
        .arg("publish")
        .arg(dir)
        .args(["--app", &app.to_string()])
        .env("DATABASE_URL", db.url.expose())
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .env("APP_EXECUTOR_EXECUTOR__STATE_DIR", state)
        .envs(supabase_env(double))
        .output()
        .await
        .unwrap();
    assert!(
        published.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&published.stderr)
    );
}

/// Waits for the first chunk under `prefix` in the double; returns its key.
async fn wait_for_chunk_in_double(double: &StorageDouble, prefix: &str, daemon: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((key, _)) = double
            .keys(LOGS, prefix)
            .into_iter()
            .find(|(k, _)| k.contains("/attempt-"))
        {
            return key;
        }
        assert!(
            Instant::now() < deadline,
            "no chunk reached the double; daemon log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_second_storage_outage_mid_run_loses_nothing_and_the_status_waits_for_the_logs() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let double = StorageDouble::start().await;
    let (company, app) = insert_tenant(&client).await;
    // 80 lines, 100 ms apart: the run ends while storage is still down.
    let script = "let i = 0;\n\
        const timer = setInterval(() => {\n\
          console.log(`line ${i} ${'x'.repeat(i * 7 % 300)}`);\n\
          if (i % 10 === 9) console.error(`progress ${i}`);\n\
          if (++i === 80) clearInterval(timer);\n\
        }, 100);\n";
    let dir = write_app(&[("index.js", script)], limits("60s", "128MiB"), json!([]));
    publish_to_double(&db, state.path(), dir.path(), app, &double).await;
    let run = enqueue(&client, app, company, json!({})).await;
    let mut options = options(state.path());
    options.env.extend(supabase_env(&double));
    let daemon = Daemon::spawn(&db, options);

    let prefix = run_prefix(app, run);
    wait_for_chunk_in_double(&double, &prefix, &daemon).await;
    let outage = Duration::from_secs(10);
    double.fail_for(outage);
    let outage_ends = Instant::now() + outage;
    let requests_before = double.requests().len();
    assert_eq!(run_record(&client, run).await.status, "running");

    // The status must not turn terminal before the compacted logs are in storage.
    let stdout_key = format!("{prefix}stdout.log");
    let stderr_key = format!("{prefix}stderr.log");
    let mut stored_when_terminal = None;
    let record = poll_until_terminal(
        &client,
        run,
        Duration::from_secs(120),
        &daemon,
        Duration::from_millis(20),
        |record| {
            if is_terminal(&record.status) {
                stored_when_terminal = Some(double.get(LOGS, &stdout_key));
            }
        },
    )
    .await;
    let stored_when_terminal = stored_when_terminal.expect("read at the terminal poll");
    let terminal_at = Instant::now();
    let log = daemon.log_text();
    assert_success(&record, &log);
    assert!(
        terminal_at >= outage_ends,
        "the status was written {:?} before storage came back",
        outage_ends - terminal_at
    );
    let (stdout, content_type) =
        stored_when_terminal.expect("the status was written before stdout.log was in storage");
    assert_eq!(content_type, "text/plain");
    let expected_out: String = (0..80)
        .map(|i| format!("line {i} {}\n", "x".repeat(i * 7 % 300)))
        .collect();
    let expected_err: String = (0..80)
        .filter(|i| i % 10 == 9)
        .map(|i| format!("progress {i}\n"))
        .collect();
    assert_eq!(String::from_utf8(stdout).unwrap(), expected_out);
    assert_eq!(
        String::from_utf8(double.get(LOGS, &stderr_key).unwrap().0).unwrap(),
        expected_err
    );
    let failed_uploads = double.requests()[requests_before..]
        .iter()
        .filter(|r| r.starts_with("POST /storage/v1/object/app-logs/"))
        .count();
    assert!(
        failed_uploads > 2,
        "the uploads were not retried through the outage ({failed_uploads} requests)"
    );
    assert!(
        log.contains("log chunk upload failed; retrying from the spool"),
        "{log}"
    );
    let metadata: Value = client
        .query_one(
            "select metadata from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    assert!(metadata.get("logs_incomplete").is_none(), "{metadata}");
    let rows = outputs(&client, run).await;
    assert_eq!(
        rows[&("stdout".into(), "stdout".into())]
            .0
            .as_ref()
            .unwrap()["complete"],
        true
    );
    assert!(
        double
            .keys(LOGS, &prefix)
            .iter()
            .all(|(k, _)| !k.contains("/attempt-")),
        "chunks are removed once compacted: {:?}",
        double.keys(LOGS, &prefix)
    );
    stop(daemon).await;
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

/// `phases_ms` of the daemon's `run phases` line for `run`.
fn phases_ms(log: &str, run: Uuid) -> Value {
    let line = log
        .lines()
        .find(|l| l.contains("run phases") && l.contains(&run.to_string()))
        .unwrap_or_else(|| panic!("no `run phases` line for {run}:\n{log}"));
    let json = line
        .split_once("phases_ms=")
        .unwrap_or_else(|| panic!("{line}"))
        .1;
    serde_json::from_str(json.split_whitespace().next().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_that_stops_answering_flags_the_run_logs_incomplete_within_the_retry_window() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let double = StorageDouble::start().await;
    let (company, app) = insert_tenant(&client).await;
    let script = "let i = 0;\n\
        const timer = setInterval(() => {\n\
          console.log(`line ${i}`);\n\
          if (++i === 40) clearInterval(timer);\n\
        }, 100);\n";
    let dir = write_app(&[("index.js", script)], limits("60s", "128MiB"), json!([]));
    publish_to_double(&db, state.path(), dir.path(), app, &double).await;
    let run = enqueue(&client, app, company, json!({})).await;
    let window = Duration::from_secs(3);
    let mut options = options(state.path());
    options.env.extend(supabase_env(&double));
    options.env.push((
        "APP_EXECUTOR_LOGS__DURABLE_RETRY_WINDOW".into(),
        format!("{}s", window.as_secs()),
    ));
    let daemon = Daemon::spawn(&db, options);

    let prefix = run_prefix(app, run);
    let first_chunk = wait_for_chunk_in_double(&double, &prefix, &daemon).await;
    // From now on every request hangs (longer than the client's read timeout).
    double.delay(Duration::from_secs(600));
    let record = wait_terminal(&client, run, Duration::from_secs(120), &daemon).await;
    let log = daemon.log_text();
    assert_success(&record, &log);
    // Ending the logs (the `logs` phase) gives up at the window, even with an upload of the
    // live phase hanging when the run ended.
    let logs_ms = phases_ms(&log, run)["logs"].as_f64().unwrap();
    eprintln!("logs given up {logs_ms} ms after the container ended (window {window:?})");
    assert!(
        logs_ms < (window.as_millis() + 1500) as f64,
        "ending the logs took {logs_ms} ms with a {window:?} retry window; log:\n{log}"
    );
    let metadata: Value = client
        .query_one(
            "select metadata from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(metadata["logs_incomplete"], true, "{metadata}");
    let rows = outputs(&client, run).await;
    assert_eq!(
        rows[&("stdout".into(), "stdout".into())]
            .0
            .as_ref()
            .unwrap()["complete"],
        false
    );
    // What reached storage before stays.
    let (chunk, _) = double.get(LOGS, &first_chunk).unwrap();
    assert!(chunk.starts_with(b"line 0\n"), "{chunk:?}");
    stop(daemon).await;
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

// ---- daemon crash ---------------------------------------------------------------------------

fn containers_of(run: Uuid, attempt: i32) -> Vec<String> {
    crate::harness::docker::docker_list(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=app-executor.run={run}"),
        "--filter",
        &format!("label=app-executor.attempt={attempt}"),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemons_container_goes_before_its_lease_its_chunks_stay_and_the_rescue_logs_apart(
) {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    // The container's hostname tells the attempts apart.
    let script = "const host = require('os').hostname();\n\
        let i = 0;\n\
        const timer = setInterval(() => {\n\
          console.log(`${host} line ${i}`);\n\
          if (++i === 40) clearInterval(timer);\n\
        }, 200);\n";
    let dir = write_app(&[("index.js", script)], limits("60s", "128MiB"), json!([]));
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let mut first = Daemon::spawn(&db, options(state.path()));

    let deadline = Instant::now() + Duration::from_secs(120);
    let folder = loop {
        if let Some((folder, _)) = local_chunks(state.path(), app, run)
            .into_iter()
            .find(|(_, names)| !names.is_empty())
        {
            break folder;
        }
        assert!(
            Instant::now() < deadline,
            "no chunk; log:\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(folder.starts_with("attempt-1-"), "{folder}");
    assert!(!containers_of(run, 1).is_empty());
    let lease_at_kill: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "select lease_expires_at from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    first.kill_hard();
    // Local storage writes are a temp file and a rename: no chunk is half there.
    let kept_names = local_chunks(state.path(), app, run)[&folder].clone();
    let kept = local_stream(state.path(), app, run, &folder, "stdout");
    // The dead-man's switch: the daemon's reaper removes its container as soon as it dies, before
    // the lease it held runs out, so no rescuer's attempt 2 can overlap it. It then hands the
    // run back at once (the lease is expired), so the rescue does not wait for the lease.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !containers_of(run, 1).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the killed daemon's container is still there after 20 s; log:\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (gone_at, lease_now): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = {
        let row = client
            .query_one(
                "select clock_timestamp(), lease_expires_at from public.app_runs where id = $1",
                &[&run],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        gone_at < lease_at_kill,
        "the container was removed at {gone_at}, after the lease it ran under expired ({lease_at_kill}); log:\n{}",
        first.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lease_now = lease_now;
    while lease_now > chrono::Utc::now() {
        assert!(
            Instant::now() < deadline,
            "the run's lease was not handed back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        lease_now = client
            .query_one(
                "select lease_expires_at from public.app_runs where id = $1",
                &[&run],
            )
            .await
            .unwrap()
            .get(0);
    }
    let first_lines = String::from_utf8(kept.clone()).unwrap();
    let first_host = first_lines.split(' ').next().unwrap().to_owned();
    assert!(
        first_lines.starts_with(&format!("{first_host} line 0\n")),
        "{first_lines}"
    );

    let second = Daemon::spawn(&db, options(state.path()));
    let record = poll_until_terminal(
        &client,
        run,
        Duration::from_secs(120),
        &second,
        Duration::from_millis(50),
        |_| {
            assert!(
                containers_of(run, 1).is_empty(),
                "attempt 1's container came back"
            );
        },
    )
    .await;
    let log = second.log_text();
    assert_success(&record, &log);
    let attempt: i32 = client
        .query_one("select attempt from public.app_runs where id = $1", &[&run])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempt, 2);

    // The first attempt's chunks are untouched.
    let folders = local_chunks(state.path(), app, run);
    assert_eq!(folders[&folder], kept_names, "{folders:?}");
    assert_eq!(
        local_stream(state.path(), app, run, &folder, "stdout"),
        kept
    );
    // The second attempt wrote its own folder (chunks removed once compacted), and the
    // compacted log is its output alone, whole.
    assert!(
        folders
            .iter()
            .all(|(name, names)| name == &folder || names.is_empty()),
        "{folders:?}"
    );
    let stored = String::from_utf8(local_compacted(state.path(), app, run, "stdout")).unwrap();
    let second_host = stored.split(' ').next().unwrap();
    assert_ne!(second_host, first_host, "{stored}");
    let expected: String = (0..40)
        .map(|i| format!("{second_host} line {i}\n"))
        .collect();
    assert_eq!(stored, expected);
    stop(second).await;
    assert_no_containers(&DaemonOptions::test_label(state.path()));
    // The killed daemon's attempt directory (app files, spool, /output) went with its
    // container; the rescuer cleaned up its own.
    let left: Vec<PathBuf> = std::fs::read_dir(state.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "run directories left behind: {left:?}");
}

/// A daemon killed while downloading or installing leaves its attempt directory and no
/// container; the next daemon's sweep removes such directories once no attempt in flight can
/// be using them, and leaves everything else alone.
#[tokio::test(flavor = "multi_thread")]
async fn run_directories_no_attempt_uses_are_removed_at_start() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let insert = |status: &'static str, attempt: i32| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "insert into public.app_runs
                       (app_id, company_id, status, attempt, executor_id, lease_expires_at)
                     values ($1, $2, $3, $4,
                             case when $3 = 'running' then 'another-host-1-x' end,
                             case when $3 = 'running' then now() + interval '1 hour' end)
                     returning id",
                    &[&app, &company, &status, &attempt],
                )
                .await
                .unwrap();
            row.get::<_, Uuid>(0)
        }
    };
    let finished = insert("success", 1).await;
    let rescued = insert("running", 2).await; // its attempt 1 died; attempt 2 runs elsewhere
    let held = insert("running", 1).await;
    let just_made = insert("success", 1).await;
    let runs = state.path().join("runs");
    let dir = |name: String| {
        let path = runs.join(name);
        std::fs::create_dir_all(path.join("app")).unwrap();
        std::fs::write(path.join("app/index.js"), "x").unwrap();
        path
    };
    let old = |path: &Path| {
        let status = std::process::Command::new("touch")
            .args(["-d", "1 day ago"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    };
    let removed = [
        dir(format!("{finished}-1")),
        dir(format!("{rescued}-1")),
        dir(format!("{}-1", Uuid::new_v4())), // a run deleted since
    ];
    let kept = [
        dir(format!("{held}-1")),
        dir(format!("{just_made}-1")), // too young to judge
        dir("not-a-run-directory".to_owned()),
    ];
    for path in removed.iter().chain(&kept[..1]).chain(&kept[2..]) {
        old(path);
    }

    let daemon = Daemon::spawn(&db, options(state.path()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while removed.iter().any(|p| p.exists()) {
        assert!(
            Instant::now() < deadline,
            "left: {:?}; log:\n{}",
            removed.iter().filter(|p| p.exists()).collect::<Vec<_>>(),
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in &kept {
        assert!(path.exists(), "{} was removed", path.display());
    }
    stop(daemon).await;
}

// ---- many runs at once ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_runs_of_several_companies_keep_their_logs_and_outputs_apart() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let script = "'use strict';\n\
        const fs = require('fs');\n\
        const input = JSON.parse(fs.readFileSync(process.env.APP_INPUT_FILE, 'utf8'));\n\
        let i = 0;\n\
        const timer = setInterval(() => {\n\
          console.log(`run ${process.env.RUN_ID} app ${process.env.APP_ID} token ${input.token} line ${i}`);\n\
          console.error(`run ${process.env.RUN_ID} stderr ${i}`);\n\
          if (++i < 5) return;\n\
          clearInterval(timer);\n\
          fs.writeFileSync('/output/result.json', JSON.stringify({ run_id: process.env.RUN_ID, input }));\n\
        }, 300);\n";
    let dir = write_app(&[("index.js", script)], limits("60s", "128MiB"), json!([]));
    let mut companies = Vec::new();
    for _ in 0..4 {
        companies.push(insert_tenant(&client).await);
    }
    // A fifth app for the first company: two apps of one company run side by side too.
    let extra: Uuid = client
        .query_one(
            "insert into public.applications (name) values ('second') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut tenants: Vec<(Uuid, Uuid)> = companies.clone();
    tenants.push((companies[0].0, extra));
    for (_, app) in &tenants {
        publish_ok(&db, state.path(), dir.path(), *app);
    }
    let mut runs = Vec::new();
    for k in 0..20 {
        let (company, app) = tenants[k % tenants.len()];
        let input = json!({"token": format!("t{k}-{}", Uuid::new_v4().simple()), "k": k});
        runs.push((
            app,
            enqueue(&client, app, company, input.clone()).await,
            input,
        ));
    }
    let options = options(state.path())
        .queue("max_concurrent_runs", "8")
        .queue("company_running_cap", "8")
        .queue("app_running_cap", "8");
    let log = run_until_idle(&db, options).await;

    let mut spans = Vec::new();
    for (app, run, input) in &runs {
        let record = run_record(&client, *run).await;
        assert_success(&record, &log);
        let token = input["token"].as_str().unwrap();
        let expected_out: String = (0..5)
            .map(|i| format!("run {run} app {app} token {token} line {i}\n"))
            .collect();
        let expected_err: String = (0..5).map(|i| format!("run {run} stderr {i}\n")).collect();
        let stored =
            String::from_utf8(local_compacted(state.path(), *app, *run, "stdout")).unwrap();
        assert_eq!(stored, expected_out, "stdout of run {run}");
        let stored =
            String::from_utf8(local_compacted(state.path(), *app, *run, "stderr")).unwrap();
        assert_eq!(stored, expected_err, "stderr of run {run}");
        let rows = outputs(&client, *run).await;
        let result = rows[&("result".into(), "result".into())].0.clone().unwrap();
        assert_eq!(
            result,
            json!({"run_id": run.to_string(), "input": input}),
            "result of run {run}"
        );
        let span = client
            .query_one(
                "select extract(epoch from started_at)::float8, extract(epoch from completed_at)::float8
                   from public.app_runs where id = $1",
                &[run],
            )
            .await
            .unwrap();
        spans.push((span.get::<_, f64>(0), span.get::<_, f64>(1)));
    }
    // They really ran side by side.
    let most_at_once = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    eprintln!("at most {most_at_once} of 20 runs were running at once");
    assert!(most_at_once >= 4, "only {most_at_once} runs overlapped");
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

// ---- /output ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_apps_result_and_metrics_become_outputs_with_the_daemons_metrics() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, state.path(), Path::new(apps::HELLO), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, options(state.path())).await;
    assert_success(&run_record(&client, run).await, &log);

    let rows = outputs(&client, run).await;
    let value = |kind: &str, name: &str| {
        rows.get(&(kind.to_owned(), name.to_owned()))
            .and_then(|r| r.0.clone())
            .unwrap_or_else(|| panic!("no {kind} output {name:?}: {rows:#?}"))
    };
    assert_eq!(
        value("result", "result"),
        json!({"greeting": format!("Hello, app {app}!")})
    );
    assert_eq!(value("metric", "answer"), json!(42));
    assert_eq!(value("metric", "exit_code"), json!(0));
    let duration = value("metric", "duration_ms").as_i64().unwrap();
    assert!((1..30_000).contains(&duration), "{duration}");
    assert!(
        !rows
            .keys()
            .any(|(kind, _)| kind == "error" || kind == "file"),
        "{rows:#?}"
    );
    let (logs_path, output_path): (Option<String>, Option<String>) = {
        let row = client
            .query_one(
                "select logs_path, output_path from public.app_runs where id = $1",
                &[&run],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(logs_path.as_deref(), Some(&*run_prefix(app, run)));
    assert_eq!(
        output_path, None,
        "no file besides result.json and metrics.json"
    );
    assert_eq!(
        local_compacted(state.path(), app, run, "stdout"),
        format!("Hello, app {app}!\n").into_bytes()
    );
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

// ---- graceful stop -------------------------------------------------------------------------

/// An app that, on SIGTERM, prints a line, writes `/output/partial.json` and exits.
const GRACEFUL: &str = "process.on('SIGTERM', () => {\n\
  console.log('got SIGTERM, saving');\n\
  require('fs').writeFileSync('/output/partial.json', JSON.stringify({saved: true}));\n\
  setTimeout(() => process.exit(0), 200);\n\
});\n\
console.log('working');\n\
setInterval(() => {}, 1000);\n";

#[tokio::test]
async fn a_stopped_app_gets_sigterm_and_its_grace_and_what_it_saves_is_kept() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(
        &[("index.js", GRACEFUL)],
        json!({"timeout": "3s", "memory_limit": "128MiB", "cpu_limit": 1, "stop_grace": "5s"}),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), app);
    let daemon = Daemon::spawn(&db, options(state.path()));
    // At the time limit, and by a client's cancel.
    let timed_out = enqueue(&client, app, company, json!({})).await;
    let cancelled = enqueue(&client, app, company, json!({})).await;
    // Cancel once it printed its first line (it is running with its handler installed).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let started = local_chunks(state.path(), app, cancelled)
            .keys()
            .any(|folder| {
                local_stream(state.path(), app, cancelled, folder, "stdout")
                    .windows(7)
                    .any(|w| w == b"working")
            });
        if started {
            break;
        }
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&cancelled],
        )
        .await
        .unwrap();
    for (run, status) in [(timed_out, "timeout"), (cancelled, "cancelled")] {
        let record = wait_terminal(&client, run, Duration::from_secs(120), &daemon).await;
        assert_eq!(record.status, status, "{record:?}\n{}", daemon.log_text());
        // Wait for its record (logs and outputs come with the final write, or just after a
        // client's cancel).
        let deadline = Instant::now() + Duration::from_secs(30);
        let rows = loop {
            let rows = outputs(&client, run).await;
            if rows.contains_key(&("stdout".into(), "stdout".into())) {
                break rows;
            }
            assert!(
                Instant::now() < deadline,
                "{status}: no logs recorded; {}",
                daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let stdout = std::fs::read_to_string(local_object(
            state.path(),
            &format!("{}stdout.log", run_prefix(app, run)),
        ))
        .unwrap();
        assert!(
            stdout.contains("got SIGTERM, saving"),
            "{status}: {stdout:?}"
        );
        assert!(
            rows.contains_key(&("file".into(), "partial.json".into())),
            "{status}: /output/partial.json not recorded: {rows:?}"
        );
    }
    stop(daemon).await;
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}
