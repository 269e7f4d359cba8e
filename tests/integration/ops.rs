//! Operating the daemon as systemd, Prometheus and an operator see it: the unit file verifies,
//! the real binary speaks the notify protocol (READY, STATUS, WATCHDOG only while its claim loop
//! progresses, STOPPING), `/metrics` parses as Prometheus text and moves after runs, and
//! `/readyz` follows the database down and back up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::{binary, insert_tenant, TestDb};

// ---- the unit file -------------------------------------------------------------------------

fn unit_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/app-executor.service"
    ))
    .unwrap()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit: String = unit_text()
        .lines()
        .map(|line| match line.strip_prefix("ExecStart=") {
            Some(_) => format!("ExecStart={} run\n", binary()),
            None => format!("{line}\n"),
        })
        .collect();
    let path = dir.path().join("app-executor.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian package systemd; scripts/test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unparseable directives are only warnings ("…, ignoring") with exit 0: refuse them too.
    let about_ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("app-executor.service"))
        .collect();
    assert!(about_ours.is_empty(), "{about_ours:#?}");
}

#[test]
fn the_units_stop_timeout_outlasts_the_default_drain_grace() {
    let text = unit_text();
    let directive = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in the unit"))
            .trim()
            .to_owned()
    };
    let stop = humantime::parse_duration(&directive("TimeoutStopSec")).unwrap();
    let config = app_executor::config::Config::load_from(
        &app_executor::config::Overrides {
            config_path: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml").into()),
            database_url: None,
        },
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(
        stop >= config.queue.drain_grace + config.limits.host.max_stop_grace + Duration::from_secs(30),
        "TimeoutStopSec={stop:?} leaves no margin over queue.drain_grace = {:?} plus limits.max_stop_grace = {:?}",
        config.queue.drain_grace,
        config.limits.host.max_stop_grace
    );
    assert_eq!(directive("Type"), "notify");
    assert!(!directive("WatchdogSec").is_empty());
}

// ---- the notify protocol ---------------------------------------------------------------------

/// The service manager's end of `NOTIFY_SOCKET`: a datagram socket whose every line is
/// collected, with its arrival time, by a task that reads as systemd would (promptly).
struct NotifySocket {
    path: PathBuf,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    fn bind() -> Self {
        // Unix socket paths are limited to 108 bytes: keep it short.
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "n-{}.sock",
            &Uuid::new_v4().simple().to_string()[..8]
        ));
        let socket = UnixDatagram::bind(&path).unwrap();
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let collected = lines.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let now = Instant::now();
                let mut lines = collected.lock().unwrap();
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    lines.push((now, line.to_owned()));
                }
            }
        });
        Self {
            path,
            lines,
            reader,
        }
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line received after `since` matching `want`; panics naming `what` and every
    /// line received.
    async fn expect(
        &self,
        what: &str,
        since: Instant,
        limit: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((at, _)) = self
                .lines()
                .into_iter()
                .find(|(at, l)| *at >= since && want(l))
            {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; lines received: {:#?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pings_between(&self, from: Instant, to: Instant) -> Vec<Instant> {
        self.lines()
            .into_iter()
            .filter(|(at, l)| l == "WATCHDOG=1" && *at >= from && *at <= to)
            .map(|(at, _)| at)
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn notified_daemon(db: &TestDb, execution: &str, notify: &NotifySocket) -> Daemon {
    let mut options = DaemonOptions::new(execution);
    options.env.extend([
        (
            "NOTIFY_SOCKET".to_owned(),
            notify.path.display().to_string(),
        ),
        ("WATCHDOG_USEC".to_owned(), "2000000".to_owned()),
        (
            "APP_EXECUTOR_OPS__STATUS_INTERVAL".to_owned(),
            "300ms".to_owned(),
        ),
    ]);
    Daemon::spawn(db, options)
}

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

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_tells_systemd_it_is_ready_alive_busy_and_stopping() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let notify = NotifySocket::bind();
    let started = Instant::now();
    let mut daemon = notified_daemon(&db, "sleep=3s", &notify);
    let addr = daemon.ops_addr();

    let ready = notify
        .expect("READY=1", started, Duration::from_secs(30), |l| {
            l == "READY=1"
        })
        .await;
    notify
        .expect("an idle STATUS=", ready, Duration::from_secs(5), |l| {
            l.starts_with("STATUS=running 0/4, queue depth")
        })
        .await;

    // WATCHDOG_USEC = 2 s: a ping every second while the claim loop ticks.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let pings = notify.pings_between(ready, Instant::now());
    assert!(pings.len() >= 2, "{:#?}", notify.lines());
    for pair in pings.windows(2) {
        assert!(
            pair[1] - pair[0] < Duration::from_millis(1900),
            "pings too far apart for a 2 s watchdog: {:?}",
            pair[1] - pair[0]
        );
    }

    let enqueued = Instant::now();
    let run = enqueue(&client, company, app, 1).await[0];
    notify
        .expect("a busy STATUS=", enqueued, Duration::from_secs(10), |l| {
            l.starts_with("STATUS=running 1/4")
        })
        .await;

    let terminated = Instant::now();
    daemon.signal("TERM");
    notify
        .expect("STOPPING=1", terminated, Duration::from_secs(10), |l| {
            l == "STOPPING=1"
        })
        .await;
    // Draining (the run still has its sleep to finish): not ready for new work.
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert!(
        daemon.wait(Duration::from_secs(30)).success(),
        "{}",
        daemon.log_text()
    );
    let status: String = client
        .query_one("select status from public.app_runs where id = $1", &[&run])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "success", "the drain let the run finish");
}

/// A TCP forwarder to PostgreSQL that can stop passing bytes without closing anything: the
/// daemon's queries then hang, as on a half-dead network path.
struct FreezingProxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, flag.clone()));
                tokio::spawn(forward(server_read, client_write, flag.clone()));
            }
        });
        Self { addr, frozen, task }
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_loop_stuck_on_a_hanging_database_stops_the_watchdog_pings() {
    let db = TestDb::migrated().await;
    let url = url::Url::parse(db.url.expose()).unwrap();
    let upstream: SocketAddr =
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
            .parse()
            .unwrap();
    let proxy = FreezingProxy::start(upstream).await;
    let mut proxied = url.clone();
    proxied.set_port(Some(proxy.addr.port())).unwrap();
    let via_proxy =
        TestDb::attach(app_executor::db::DatabaseUrl::parse(proxied.as_str(), "the test").unwrap());
    let notify = NotifySocket::bind();
    let started = Instant::now();
    let mut daemon = notified_daemon(&via_proxy, "", &notify);
    let ready = notify
        .expect("READY=1", started, Duration::from_secs(30), |l| {
            l == "READY=1"
        })
        .await;
    notify
        .expect("a first ping", ready, Duration::from_secs(5), |l| {
            l == "WATCHDOG=1"
        })
        .await;

    // The next claim hangs: the loop stops ticking, so within a ping period or two the pings
    // stop, for as long as it hangs.
    proxy.frozen.store(true, Ordering::Relaxed);
    let frozen_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let late = notify.pings_between(frozen_at + Duration::from_millis(2500), Instant::now());
    assert!(
        late.is_empty(),
        "{} pings while the claim loop was stuck; log:\n{}",
        late.len(),
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("withholding watchdog pings"),
        "{}",
        daemon.log_text()
    );

    // The database answers again: the loop moves on and the pings resume.
    proxy.frozen.store(false, Ordering::Relaxed);
    let thawed_at = Instant::now();
    notify
        .expect(
            "pings after the thaw",
            thawed_at,
            Duration::from_secs(10),
            |l| l == "WATCHDOG=1",
        )
        .await;
    daemon.stop();
}

// ---- the HTTP endpoints ----------------------------------------------------------------------

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let code = response.status().as_u16();
    (code, response.text().await.unwrap())
}

/// Polls `path` until it answers `code`; panics with the last body after `limit`.
async fn wait_for_status(addr: SocketAddr, path: &str, code: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (got, body) = get(addr, path).await;
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got} after {limit:?} (wanted {code}): {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format strictly: `# HELP`/`# TYPE` comments and
/// `name{label="value",…} value` samples, each sample belonging to a declared family. Panics
/// naming the first bad line.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let is_name = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = |why: &str| -> ! { panic!("bad metrics line ({why}): {line:?}\n{text}") };
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !is_name(name)
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind)
                    {
                        bad("TYPE");
                    }
                    types.insert((*name).to_owned(), (*kind).to_owned());
                }
                ["HELP", name, ..] if is_name(name) => {}
                _ => bad("comment"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| bad("no value"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| bad("value")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| bad("labels"));
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (key, quoted) = pair.split_once('=').unwrap_or_else(|| bad("label"));
                    let inner = quoted
                        .strip_prefix('"')
                        .and_then(|q| q.strip_suffix('"'))
                        .unwrap_or_else(|| bad("label quoting"));
                    if !is_name(key) || inner.contains('"') {
                        bad("label");
                    }
                    labels.insert(key.to_owned(), inner.to_owned());
                }
                (name, labels)
            }
        };
        if !is_name(name) {
            bad("name");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            bad("sample without a # TYPE line");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none: a
/// counter that never moved has no series yet).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}

async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    parse_prometheus(&body)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_count_the_runs_done() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let (company, app) = insert_tenant(&client).await;
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::new("sleep=50ms").queue("max_concurrent_runs", "2"),
    );
    let addr = daemon.ops_addr();
    let success = [("status", "success"), ("error_kind", "none")];

    let before = scrape(addr).await;
    assert_eq!(
        value(&before, "app_executor_runs_finished_total", &success),
        0.0
    );
    assert_eq!(value(&before, "app_executor_build_info", &[]), 1.0);

    enqueue(&client, company, app, 3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = client
            .query_one(
                "select count(*) from public.app_runs where status = 'success'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if done == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The outcome is written before the task counts itself out: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let after = scrape(addr).await;
    assert_eq!(
        value(&after, "app_executor_runs_finished_total", &success),
        3.0
    );
    assert_eq!(value(&after, "app_executor_runs_claimed_total", &[]), 3.0);
    for phase in ["claim_wait", "total"] {
        assert_eq!(
            value(
                &after,
                "app_executor_phase_duration_seconds_count",
                &[("phase", phase)]
            ),
            3.0,
            "{phase}"
        );
        assert_eq!(
            value(
                &after,
                "app_executor_phase_duration_seconds_bucket",
                &[("phase", phase), ("le", "+Inf")]
            ),
            3.0,
            "{phase}"
        );
    }
    assert!(
        value(
            &after,
            "app_executor_phase_duration_seconds_sum",
            &[("phase", "total")]
        ) >= 0.15,
        "three runs of at least 50 ms each"
    );
    assert_eq!(value(&after, "app_executor_runs_running", &[]), 0.0);
    assert_eq!(value(&after, "app_executor_run_slots", &[]), 2.0);
    assert!(
        after.iter().any(|s| s.name == "app_executor_queue_depth"),
        "no queue depth gauge"
    );

    let (code, body) = get(addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_turns_unready_while_the_database_is_down_and_ready_again_after() {
    let (cluster, db) = TestDb::private_cluster("readyz").await;
    let root = cluster.root().to_path_buf();
    let mut options = DaemonOptions::new("");
    options.env.push((
        "APP_EXECUTOR_OPS__PROBE_TIMEOUT".to_owned(),
        "1s".to_owned(),
    ));
    let mut daemon = Daemon::spawn(&db, options);
    let addr = daemon.ops_addr();

    let body = wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], true, "{body}");
    let docker = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "docker")
        .unwrap();
    assert!(
        docker["detail"].as_str().unwrap().starts_with("not used"),
        "{body}"
    );

    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop().unwrap())
        .await
        .unwrap();
    let body = wait_for_status(addr, "/readyz", 503, Duration::from_secs(15)).await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        report["not_ready"],
        serde_json::json!(["database"]),
        "{body}"
    );
    let (code, _) = get(addr, "/healthz").await;
    assert_eq!(code, 200, "alive, if not ready");

    let restart_root = root.clone();
    tokio::task::spawn_blocking(move || {
        app_executor::embedded_postgres::EmbeddedPostgres::ensure_running(&restart_root).unwrap()
    })
    .await
    .unwrap();
    wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;

    daemon.stop();
    drop(db);
    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandboxed_run_shows_its_phases_and_cache_use_and_readyz_pings_docker() {
    use crate::harness::apps::{self, publish_ok, run_record};
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, state.path(), std::path::Path::new(apps::HELLO), app);
    let mut daemon = Daemon::spawn(&db, DaemonOptions::production(state.path()));
    let addr = daemon.ops_addr();

    let body = wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;
    assert!(body.contains("engine answers"), "{body}");

    let mut finished = 0.0;
    for round in 1..=2 {
        let run = apps::enqueue(&client, app, company, serde_json::json!({})).await;
        let deadline = Instant::now() + Duration::from_secs(180);
        while !run_record(&client, run).await.completed {
            assert!(Instant::now() < deadline, "{}", daemon.log_text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            run_record(&client, run).await.summary(),
            "success/-",
            "{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let samples = scrape(addr).await;
        let phases = |phase| {
            value(
                &samples,
                "app_executor_phase_duration_seconds_count",
                &[("phase", phase)],
            )
        };
        assert_eq!(phases("prepare"), f64::from(round), "round {round}");
        assert_eq!(phases("run"), f64::from(round), "round {round}");
        // Installed once; the second run mounts the cached tree.
        assert_eq!(phases("install"), 1.0, "round {round}");
        let success = [("status", "success"), ("error_kind", "none")];
        assert!(value(&samples, "app_executor_runs_finished_total", &success) > finished);
        finished = value(&samples, "app_executor_runs_finished_total", &success);
        assert!(value(&samples, "app_executor_blob_cache_misses_total", &[]) >= 1.0);
        assert!(value(&samples, "app_executor_blob_downloaded_bytes_total", &[]) > 0.0);
        if round == 2 {
            assert!(
                value(&samples, "app_executor_blob_cache_hits_total", &[]) >= 1.0,
                "the second run downloaded its files again"
            );
        }
    }
    daemon.stop();
    crate::harness::docker::assert_no_containers(&DaemonOptions::test_label(state.path()));
}
