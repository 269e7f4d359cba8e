//! Sandboxed execution end to end: the real daemon, real Docker, the offline node + pnpm image,
//! real pnpm. Apps are published with `app-executor publish` and run by `app-executor run`.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::harness::apps::{self, enqueue, publish_ok, run_record, write_app, RunRecord};
use crate::harness::daemon::{Daemon, DaemonOptions};
use crate::harness::docker::{self, assert_no_containers, containers_created_since};
use crate::harness::{insert_tenant, TestDb};

/// Runs the daemon until the queue is empty; panics with its log if it fails or hangs.
fn run_until_idle(db: &TestDb, options: DaemonOptions) -> String {
    let mut daemon = Daemon::spawn(db, options.until_idle());
    let status = daemon.wait(Duration::from_secs(240));
    let log = daemon.log_text();
    assert!(status.success(), "daemon failed: {log}");
    log
}

fn limits(timeout: &str, memory: &str) -> serde_json::Value {
    json!({"timeout": timeout, "memory_limit": memory, "cpu_limit": 1})
}

fn assert_status(record: &RunRecord, expected: &str, log: &str) {
    assert_eq!(
        record.summary(),
        expected,
        "message: {:?}\ndaemon log:\n{log}",
        record.error_message
    );
    assert!(record.completed, "completed_at not set");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_app_installs_its_dependency_runs_and_reuses_the_installed_tree() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let label = DaemonOptions::test_label(state.path());
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, state.path(), Path::new(apps::HELLO), app);

    let since = docker::unix_now();
    let first = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, DaemonOptions::production(state.path()));
    let record = run_record(&client, first).await;
    assert_status(&record, "success/-", &log);
    assert_eq!(record.exit_code, Some(0));
    assert_eq!(containers_created_since(&since, &label, "install"), 1);
    assert_eq!(containers_created_since(&since, &label, "run"), 1);

    let second = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, DaemonOptions::production(state.path()));
    assert_status(&run_record(&client, second).await, "success/-", &log);
    assert_eq!(
        containers_created_since(&since, &label, "install"),
        1,
        "the second run installed again instead of using the cache"
    );
    assert!(log.contains("dependencies from the cache"), "{log}");
    assert_no_containers(&label);
    assert!(
        !state.path().join("runs").read_dir().unwrap().any(|_| true),
        "run directories left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_without_pnpm_installs_with_npm() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, state.path(), Path::new(apps::HELLO), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let options =
        DaemonOptions::production(state.path()).sandbox("image", docker::npm_runtime_image());
    let log = run_until_idle(&db, options);
    assert_status(&run_record(&client, run).await, "success/-", &log);
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lockfile_that_does_not_match_fails_the_install_with_its_log() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = apps::copy_hello();
    // A dependency the lockfile does not have: `--frozen-lockfile` must refuse.
    let package = std::fs::read_to_string(dir.path().join("package.json")).unwrap();
    std::fs::write(
        dir.path().join("package.json"),
        package.replace(
            "\"greeting\": \"file:vendor/greeting-1.0.0.tgz\"",
            "\"greeting\": \"file:vendor/greeting-1.0.0.tgz\", \"left-pad\": \"1.3.0\"",
        ),
    )
    .unwrap();
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, DaemonOptions::production(state.path()));
    let record = run_record(&client, run).await;
    assert_status(&record, "failed/install_failed", &log);
    let message = record.error_message.unwrap();
    assert!(
        message.contains("lockfile") && message.contains("install log"),
        "{message}"
    );
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

/// The original document's apps name their packages in `manifest.json` only: with no
/// `package.json` one is generated from `runtime.backend.dependencies` and installed; with one
/// that disagrees, `validate` and `publish` name the dependency and publish nothing.
#[tokio::test(flavor = "multi_thread")]
async fn manifest_dependencies_install_without_a_package_json_and_must_match_one() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = apps::copy_hello();
    std::fs::remove_file(dir.path().join("package.json")).unwrap();
    std::fs::remove_file(dir.path().join("pnpm-lock.yaml")).unwrap();
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, DaemonOptions::production(state.path()));
    let record = run_record(&client, run).await;
    assert_status(&record, "success/-", &log);
    let stdout = std::fs::read_to_string(
        state
            .path()
            .join(format!("storage/app-logs/app_{app}/runs/{run}/stdout.log")),
    )
    .unwrap();
    assert!(stdout.contains("Hello, app "), "{stdout}");

    let mismatched = apps::copy_hello();
    let package = std::fs::read_to_string(mismatched.path().join("package.json")).unwrap();
    std::fs::write(
        mismatched.path().join("package.json"),
        package.replace(
            "\"greeting\": \"file:vendor/greeting-1.0.0.tgz\"",
            "\"greeting\": \"^2.0.0\"",
        ),
    )
    .unwrap();
    let other = insert_tenant(&client).await.1;
    let out = apps::publish(
        &db,
        state.path(),
        mismatched.path(),
        &other.to_string(),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("runtime.backend.dependencies.greeting") && stderr.contains("^2.0.0"),
        "{stderr}"
    );
    let files: i64 = client
        .query_one(
            "select count(*) from public.app_storage where app_id = $1",
            &[&other],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(files, 0, "a refused publish records nothing");
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

/// A tiny HTTP server on the Docker bridge's gateway address (reachable from containers on the
/// default bridge network, nowhere else). Counts the requests it answers; stops with the test.
struct BridgeServer {
    url: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl BridgeServer {
    fn start() -> Self {
        let listener =
            std::net::TcpListener::bind((crate::harness::docker::bridge_gateway().as_str(), 0))
                .unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut request = [0u8; 1024];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.read(&mut request);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        Self { url, hits }
    }
}

/// Host processes whose command line contains `needle` (outside any container now).
fn host_processes(needle: &str) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", needle])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().lines().count()
}

/// The app scripts of the hostile-app test: (name, script, config, network permission,
/// expected `status/error_kind`). Each "probe" app exits 0 when the sandbox held and 1 with
/// the reason on stderr when it did not, so a broken sandbox shows up in the run's message.
fn hostile_apps() -> Vec<(&'static str, String, serde_json::Value, bool, &'static str)> {
    let probe = |body: &str| {
        format!(
            "'use strict';\nconst fs = require('fs');\nconst cp = require('child_process');\nconst problems = [];\n{body}\nif (problems.length) {{ console.error(problems.join('\\n')); process.exit(1); }}\nconsole.log('sandbox held');\n"
        )
    };
    vec![
        (
            "fork-bomb",
            "require('child_process').spawn('sh', ['-c', 'bomb(){ bomb | bomb & }; bomb'], {stdio: 'ignore'});\nsetInterval(() => {}, 1000);\n".to_owned(),
            limits("4s", "128MiB"),
            false,
            "timeout/timeout",
        ),
        (
            "memory-bomb",
            "const hoard = [];\nfor (;;) hoard.push(Buffer.alloc(8 << 20, 1));\n".to_owned(),
            limits("60s", "64MiB"),
            false,
            "failed/oom_killed",
        ),
        (
            // A child hits the limit and is killed; the main process carries on and exits 0.
            "child-oom",
            "const r = require('child_process').spawnSync('node', ['-e', 'const h = []; for (;;) h.push(Buffer.alloc(8 << 20, 1))']);\nconsole.log('child ended by', r.signal);\n".to_owned(),
            limits("60s", "64MiB"),
            false,
            "success/-",
        ),
        (
            "busy-loop",
            "for (;;) {}\n".to_owned(),
            limits("3s", "128MiB"),
            false,
            "timeout/timeout",
        ),
        (
            // SIGTERM at the limit, SIGKILL after the 1 s grace it asked for.
            "ignores-sigterm",
            "process.on('SIGTERM', () => console.log('ignoring SIGTERM'));\nsetInterval(() => {}, 1000);\n".to_owned(),
            {
                let mut config = limits("3s", "128MiB");
                config["stop_grace"] = json!("1s");
                config
            },
            false,
            "timeout/timeout",
        ),
        (
            "writes-everywhere",
            probe(
                "for (const path of ['/escape', '/app/escape', '/usr/escape', '/app/index.js', '/etc/passwd']) {\n  try { fs.writeFileSync(path, 'x'); problems.push(`wrote ${path}`); } catch (e) {}\n}",
            ),
            limits("20s", "128MiB"),
            false,
            "success/-",
        ),
        (
            "fills-tmp",
            probe(
                "let written = 0; const chunk = Buffer.alloc(1 << 20, 1);\ntry { for (;;) { fs.appendFileSync('/tmp/fill', chunk); written += chunk.length; if (written > (1 << 30)) break; } } catch (e) { if (e.code !== 'ENOSPC') problems.push(`unexpected ${e.code}`); }\nif (written > (70 << 20)) problems.push(`wrote ${written} bytes to /tmp`);",
            ),
            limits("30s", "256MiB"),
            false,
            "success/-",
        ),
        (
            "opens-100k-files",
            probe(
                "const fds = []; let error = null;\ntry { for (let i = 0; i < 100000; i++) fds.push(fs.openSync('/app/index.js', 'r')); } catch (e) { error = e.code; }\nif (error !== 'EMFILE') problems.push(`opened ${fds.length} files, error ${error}`);\nif (fds.length > 1100) problems.push(`opened ${fds.length} files`);",
            ),
            limits("30s", "256MiB"),
            false,
            "success/-",
        ),
        (
            "escalates",
            probe(
                "for (const [cmd, args] of [['mount', ['-t', 'tmpfs', 'none', '/tmp']], ['unshare', ['-r', 'true']], ['unshare', ['-m', 'true']]]) {\n  const r = cp.spawnSync(cmd, args);\n  if (r.error) problems.push(`${cmd} missing: ${r.error.code}`); else if (r.status === 0) problems.push(`${cmd} ${args.join(' ')} succeeded`);\n}\nconst status = fs.readFileSync('/proc/self/status', 'utf8');\nif (!/CapEff:\\s*0000000000000000/.test(status)) problems.push('has capabilities');\nif (!/NoNewPrivs:\\s*1/.test(status)) problems.push('may gain privileges');\nif (!/Seccomp:\\s*2/.test(status)) problems.push('no seccomp filter (ptrace, unshare and mount stay open)');\ntry { process.setuid(0); problems.push('became root'); } catch (e) {}\nif (process.getuid() === 0) problems.push('runs as root');",
            ),
            limits("20s", "128MiB"),
            false,
            "success/-",
        ),
        (
            "reads-secrets",
            probe(
                "const allowed = new Set(['APP_ID', 'RUN_ID', 'RUN_TYPE', 'APP_VERSION', 'APP_INPUT', 'APP_INPUT_FILE', 'APP_OUTPUT_DIR', 'HOME', 'NODE_ENV', 'PATH', 'HOSTNAME']);\nfor (const name of Object.keys(process.env)) if (!allowed.has(name)) problems.push(`unexpected variable ${name}`);\nconst init = fs.readFileSync('/proc/1/environ', 'utf8');\nfor (const text of [JSON.stringify(process.env), init]) if (/canary|postgres:|SERVICE_KEY|DATABASE_URL/i.test(text)) problems.push(`secret visible: ${text}`);\nfor (const sock of ['/var/run/docker.sock', '/run/docker.sock']) if (fs.existsSync(sock)) problems.push(`${sock} is reachable`);",
            ),
            limits("20s", "128MiB"),
            false,
            "success/-",
        ),
        (
            "detached-grandchild",
            "const cp = require('child_process');\ncp.spawn('sh', ['-c', 'sleep 987'], {detached: true, stdio: 'ignore'}).unref();\nconsole.log('leaving a grandchild behind');\n".to_owned(),
            limits("60s", "128MiB"),
            false,
            "success/-",
        ),
        (
            "network-without-permission",
            probe(
                "const http = require('http');\nconst url = JSON.parse(process.env.APP_INPUT).url;\nhttp.get(url, { timeout: 3000 }, () => { console.error(`reached ${url}`); process.exit(1); })\n  .on('error', () => { console.log('no network, as expected'); process.exit(0); })\n  .on('timeout', () => process.exit(0));",
            ),
            limits("20s", "128MiB"),
            false,
            "success/-",
        ),
        (
            "network-with-permission",
            "const http = require('http');\nconst url = JSON.parse(process.env.APP_INPUT).url;\nhttp.get(url, (res) => process.exit(res.statusCode === 200 ? 0 : 1))\n  .on('error', (e) => { console.error(`cannot reach ${url}: ${e.message}`); process.exit(1); });\n".to_owned(),
            limits("20s", "128MiB"),
            true,
            "success/-",
        ),
        (
            "tmp-is-private",
            probe(
                "if (fs.existsSync('/tmp/left-behind')) problems.push('saw the file an earlier run left in /tmp');\nfs.writeFileSync('/tmp/left-behind', 'x');",
            ),
            limits("20s", "128MiB"),
            false,
            "success/-",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_apps_get_their_outcome_and_leave_the_host_unchanged() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let label = DaemonOptions::test_label(state.path());
    let server = BridgeServer::start();
    let company: Uuid = insert_tenant(&client).await.0;

    let mut runs = Vec::new();
    for (name, script, config, network, expected) in hostile_apps() {
        let app: Uuid = client
            .query_one(
                "insert into public.applications (name) values ($1) returning id",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        let permissions = if network {
            client
                .execute(
                    "insert into public.app_permissions (app_id, permission_type, permission_value) values ($1, 'network', '*')",
                    &[&app],
                )
                .await
                .unwrap();
            json!([{"type": "network", "scope": "*", "required": true}])
        } else {
            json!([])
        };
        let dir = write_app(&[("index.js", &script)], config, permissions);
        publish_ok(&db, state.path(), dir.path(), app);
        let input = json!({"url": server.url});
        runs.push((
            name,
            enqueue(&client, app, company, input.clone()).await,
            expected,
        ));
        if name == "tmp-is-private" {
            runs.push((name, enqueue(&client, app, company, input).await, expected));
        }
    }

    let options = DaemonOptions::production(state.path())
        .queue("max_concurrent_runs", "4")
        .queue("company_running_cap", "4");
    let mut options = options;
    options.env.push((
        "SUPABASE_SERVICE_ROLE_KEY".into(),
        "canary-service-key".into(),
    ));
    let log = run_until_idle(&db, options);

    let mut wrong = Vec::new();
    for (name, run, expected) in &runs {
        let record = run_record(&client, *run).await;
        if record.summary() != *expected || !record.completed {
            wrong.push(format!(
                "{name}: expected {expected}, got {} ({:?})",
                record.summary(),
                record.error_message
            ));
        }
    }
    assert!(wrong.is_empty(), "{}\ndaemon log:\n{log}", wrong.join("\n"));
    let oom = run_record(
        &client,
        runs.iter().find(|r| r.0 == "memory-bomb").unwrap().1,
    )
    .await;
    assert!(
        oom.error_message.unwrap().contains("memory limit"),
        "the OOM message names the limit"
    );
    // Peak memory from the cgroup's high-water mark (not 1 s stats samples), and the child's
    // OOM kill recorded on a run that succeeded.
    let limit = 64.0 * 1024.0 * 1024.0;
    for name in ["memory-bomb", "child-oom"] {
        let run = runs.iter().find(|r| r.0 == name).unwrap().1;
        let peak: f64 = client
            .query_one(
                "select (output_data #>> '{}')::float8 from public.app_outputs
                  where run_id = $1 and output_type = 'metric' and output_name = 'peak_memory_bytes'",
                &[&run],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            (peak - limit).abs() <= limit * 0.1,
            "{name}: peak {peak} is not within 10% of the 64 MiB limit"
        );
        let oom_kills: Option<i64> = client
            .query_one(
                "select (metadata->>'oom_kills')::int8 from public.app_runs where id = $1",
                &[&run],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            oom_kills.unwrap_or(0) >= 1,
            "{name}: oom_kills {oom_kills:?}"
        );
    }
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "exactly the app with the network permission reached the bridge"
    );
    // The host: no container, no process of a fork bomb or a detached grandchild left.
    assert_no_containers(&label);
    assert_eq!(host_processes("bomb(){ bomb"), 0, "fork bomb survived");
    assert_eq!(
        host_processes("sleep 987"),
        0,
        "detached grandchild survived"
    );
    assert!(!log.contains("canary-service-key"), "a secret was logged");
}

/// The id of the running container of `run` in `phase`, waiting up to `limit` for it.
fn wait_for_container(run: Uuid, phase: &str, limit: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        let out = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("label=app-executor.run={run}"))
            .args(["--filter", &format!("label=app-executor.phase={phase}")])
            .output()
            .unwrap();
        let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        if !id.is_empty() {
            return Some(id);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// How long until `container` no longer exists (at most `limit`).
fn time_until_gone(container: &str, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        let out = std::process::Command::new("docker")
            .args(["inspect", "--format", "{{.Id}}", container])
            .output()
            .unwrap();
        if !out.status.success() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    limit
}

fn inspect(container: &str) -> serde_json::Value {
    let out = std::process::Command::new("docker")
        .args(["inspect", container])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_run_container_has_every_hardening_field() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(
        &[("index.js", "setTimeout(() => {}, 4000);\n")],
        json!({"timeout": "60s", "memory_limit": "128MiB", "cpu_limit": 0.5}),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let mut daemon = Daemon::spawn(&db, DaemonOptions::production(state.path()).until_idle());
    let container = wait_for_container(run, "run", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no run container; log:\n{}", daemon.log_text()));
    let found = inspect(&container);
    let output_volume = found["HostConfig"]["Binds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.as_str()?.strip_suffix(":/output:rw,nocopy"))
        .next()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no /output volume: {}", found["HostConfig"]["Binds"]));
    let volume = std::process::Command::new("docker")
        .args(["volume", "inspect", &output_volume])
        .output()
        .unwrap();
    let volume: serde_json::Value = serde_json::from_slice(&volume.stdout).unwrap();
    assert!(daemon.wait(Duration::from_secs(60)).success());

    let config = &found["Config"];
    let host = &found["HostConfig"];
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert_eq!(host["CapAdd"], serde_json::Value::Null);
    assert!(host["SecurityOpt"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o.as_str().unwrap().starts_with("no-new-privileges")));
    assert_eq!(host["PidsLimit"], 256);
    assert_eq!(host["Memory"], 128 << 20);
    assert_eq!(host["MemorySwap"], host["Memory"], "no swap beyond memory");
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(
        host["Ulimits"],
        json!([{"Name": "nofile", "Soft": 1024, "Hard": 1024}])
    );
    assert_eq!(host["Init"], true);
    assert_eq!(host["RestartPolicy"]["Name"], "no");
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(host["IpcMode"], "private");
    assert_eq!(host["LogConfig"]["Type"], "none");
    let tmp = host["Tmpfs"]["/tmp"].as_str().unwrap();
    assert!(tmp.contains("size=") && tmp.contains("noexec"), "{tmp}");
    let binds: Vec<&str> = host["Binds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert!(binds.iter().any(|b| b.ends_with(":/app:ro")), "{binds:?}");
    assert!(binds.iter().any(|b| b.ends_with(":/input:ro")), "{binds:?}");
    // /output is a capped tmpfs of its own that carries nothing executable or privileged.
    let options = &volume[0]["Options"];
    assert_eq!(options["type"], "tmpfs", "{volume}");
    let mount = options["o"].as_str().unwrap();
    for option in [
        "size=101048576",
        "nr_inodes=1002",
        "uid=1000",
        "nosuid",
        "nodev",
        "noexec",
    ] {
        assert!(
            mount.split(',').any(|o| o == option),
            "{option} missing: {mount}"
        );
    }
    assert!(
        binds.iter().all(|b| !b.contains("docker.sock")),
        "{binds:?}"
    );
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().split('=').next().unwrap())
        .collect();
    for name in &env {
        assert!(
            [
                "APP_ID",
                "RUN_ID",
                "RUN_TYPE",
                "APP_VERSION",
                "APP_INPUT",
                "APP_INPUT_FILE",
                "APP_OUTPUT_DIR",
                "HOME",
                "NODE_ENV",
                "PATH"
            ]
            .contains(name),
            "unexpected variable {name}"
        );
    }
    let labels = &config["Labels"];
    assert_eq!(labels["app-executor.run"], run.to_string());
    assert_eq!(labels["app-executor.phase"], "run");
    assert_eq!(labels["app-executor.managed"], "true");
    assert!(labels["app-executor.executor"].as_str().unwrap().len() > 8);
    assert_eq!(run_record(&client, run).await.summary(), "success/-");
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

/// A TCP server on the Docker bridge that accepts connections and never answers: an install
/// pointed at it as its registry hangs until it is stopped.
fn black_hole_registry() -> String {
    let listener =
        std::net::TcpListener::bind((crate::harness::docker::bridge_gateway().as_str(), 0))
            .unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_or_losing_the_lease_kills_the_container_within_seconds() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let company = insert_tenant(&client).await.0;
    let new_app = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "insert into public.applications (name) values ($1) returning id",
                    &[&name],
                )
                .await
                .unwrap()
                .get::<_, Uuid>(0)
        }
    };
    let sleeper = new_app("sleeper").await;
    let dir = write_app(
        &[("index.js", "setTimeout(() => {}, 120000);\n")],
        json!({"timeout": "5m", "memory_limit": "128MiB", "cpu_limit": 0.5}),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), sleeper);
    let hanging = new_app("hanging-install").await;
    let registry = black_hole_registry();
    let dir = write_app(
        &[
            ("index.js", "require('left-pad');\n"),
            (
                "package.json",
                r#"{"name": "hanging", "version": "1.0.0", "dependencies": {"left-pad": "1.3.0"}}"#,
            ),
            (".npmrc", "fetch-retries=0\n"),
        ],
        json!({"timeout": "5m", "memory_limit": "128MiB", "cpu_limit": 0.5}),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), hanging);

    // The operator's registry (an app may not choose one): a registry that never answers.
    let mut options = DaemonOptions::production(state.path());
    options.env.push((
        "APP_EXECUTOR_INSTALL__REGISTRY".to_owned(),
        registry.clone(),
    ));
    let mut daemon = Daemon::spawn(&db, options);
    let cancel = "update public.app_runs set status = 'cancelled' where id = $1";
    // Another daemon "rescued" the run: our fenced lease renewal stops matching.
    let steal = "update public.app_runs set executor_id = 'someone-else' where id = $1";
    for (app, phase, action) in [
        (sleeper, "run", cancel),
        (hanging, "install", cancel),
        (sleeper, "run", steal),
        (hanging, "install", steal),
    ] {
        let run = enqueue(&client, app, company, json!({})).await;
        let container = wait_for_container(run, phase, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no {phase} container; log:\n{}", daemon.log_text()));
        client.execute(action, &[&run]).await.unwrap();
        let took = time_until_gone(&container, Duration::from_secs(20));
        assert!(
            took < Duration::from_secs(5),
            "{phase} container of run {run} still there {took:?} after `{action}`; log:\n{}",
            daemon.log_text()
        );
        if action == cancel {
            let record = run_record(&client, run).await;
            assert_eq!(record.status, "cancelled");
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                run_record(&client, run).await.completed,
                "completed_at not filled"
            );
        } else {
            // End the stolen run so that nothing claims it again.
            client
                .execute(
                    "update public.app_runs set status = 'cancelled' where id = $1",
                    &[&run],
                )
                .await
                .unwrap();
        }
    }
    daemon.stop();
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gvisor_runtime_runs_the_sample_app_when_configured() {
    crate::harness::docker::ensure_gvisor();
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(
        &[(
            "index.js",
            "// gVisor reports its own kernel version, not the host's.\nconsole.log(require('os').release());\nsetTimeout(() => {}, 1500);\n",
        )],
        limits("60s", "256MiB"),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let mut daemon = Daemon::spawn(
        &db,
        DaemonOptions::production(state.path())
            .sandbox("runtime", "runsc")
            .until_idle(),
    );
    let container = wait_for_container(run, "run", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no run container; log:\n{}", daemon.log_text()));
    assert_eq!(inspect(&container)["HostConfig"]["Runtime"], "runsc");
    assert!(daemon.wait(Duration::from_secs(120)).success());
    let log = daemon.log_text();
    assert_status(&run_record(&client, run).await, "success/-", &log);
    let stdout: String = client
        .query_one(
            "select logs_path from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    let stored = std::fs::read_to_string(
        state
            .path()
            .join("storage/app-logs")
            .join(stdout)
            .join("stdout.log"),
    )
    .unwrap();
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        stored.trim(),
        host_kernel.trim(),
        "the app saw the host's kernel"
    );
    assert_eq!(stored.trim(), "4.4.0", "not gVisor's kernel: {stored}");
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

/// `sandbox.pull = "if-absent"` against a registry on a loopback port serving the runtime
/// image: the first run pulls it (manifest, config and layer fetched, progress in the log) and
/// succeeds; the next run finds it on the host and fetches nothing; a tag the registry does
/// not have fails the run with `image_pull_failed` naming the image.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_is_pulled_once_and_an_unknown_tag_fails_the_run() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, state.path(), Path::new(apps::HELLO), app);
    // The sample app asks for Node 20: the registry serves the runtime image as tag 20.
    let registry = crate::harness::registry::Registry::serving(docker::runtime_image(), "20").await;
    let repository = format!("{}/pull-test-{}", registry.addr, Uuid::new_v4().simple());
    let pulled = format!("{repository}:20");
    let _remove = RemoveImage(pulled.clone());
    let pulling = |image: &str| {
        DaemonOptions::production(state.path())
            .sandbox("image", image)
            .sandbox("pull", "if-absent")
    };

    let first = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, pulling(&format!("{repository}:{{version}}")));
    assert_status(&run_record(&client, first).await, "success/-", &log);
    assert!(log.contains("image not on this host; pulling it"), "{log}");
    assert!(log.contains("image pulled"), "{log}");
    let fetched = registry.requests();
    let blobs = fetched.iter().filter(|p| p.contains("/blobs/")).count();
    assert!(
        fetched.iter().any(|p| p.ends_with("/manifests/20")) && blobs >= 2,
        "the engine did not fetch the manifest, config and layer: {fetched:?}"
    );
    let inspected = std::process::Command::new("docker")
        .args(["image", "inspect", &pulled])
        .output()
        .unwrap();
    assert!(inspected.status.success(), "{pulled} is not on the host");

    let second = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, pulling(&pulled));
    assert_status(&run_record(&client, second).await, "success/-", &log);
    assert_eq!(
        registry.requests().len(),
        fetched.len(),
        "the second run went to the registry again"
    );
    assert!(!log.contains("pulling it"), "{log}");

    let missing = format!("{repository}:20-missing");
    let third = enqueue(&client, app, company, json!({})).await;
    single_attempt(&client, third).await;
    let log = run_until_idle(&db, pulling(&missing));
    let record = run_record(&client, third).await;
    assert_status(&record, "failed/image_pull_failed", &log);
    let message = record.error_message.unwrap_or_default();
    assert!(
        message.contains(&format!("could not pull image {missing}")),
        "{message}"
    );
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

/// Lets `run` fail on its first infrastructure failure instead of being retried.
async fn single_attempt(client: &tokio_postgres::Client, run: Uuid) {
    client
        .execute(
            "update public.app_runs set max_attempts = 1 where id = $1",
            &[&run],
        )
        .await
        .unwrap();
}

/// Removes a pulled test image however the test ends.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["image", "rm", "-f", &self.0])
            .output();
    }
}

/// A registry that needs a login: without `sandbox.registry_username` and the password the
/// pull is refused (`image_pull_failed`); with them it succeeds, and the password appears
/// nowhere in the daemon's log.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_needs_a_login_is_pulled_from_with_the_configured_one() {
    const PASSWORD: &str = "registry-pw-canary-7d1f";
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    publish_ok(&db, state.path(), Path::new(apps::HELLO), app);
    let registry = crate::harness::registry::Registry::requiring_login(
        docker::runtime_image(),
        "20",
        "puller",
        PASSWORD,
    )
    .await;
    let image = format!(
        "{}/login-test-{}:20",
        registry.addr,
        Uuid::new_v4().simple()
    );
    let _remove = RemoveImage(image.clone());
    let pulling = || {
        DaemonOptions::production(state.path())
            .sandbox("image", &image)
            .sandbox("pull", "if-absent")
    };

    let refused = enqueue(&client, app, company, json!({})).await;
    single_attempt(&client, refused).await;
    let log = run_until_idle(&db, pulling());
    assert_status(
        &run_record(&client, refused).await,
        "failed/image_pull_failed",
        &log,
    );

    let allowed = enqueue(&client, app, company, json!({})).await;
    let mut options = pulling().sandbox("registry_username", "puller");
    options.env.push((
        "APP_EXECUTOR_SANDBOX__REGISTRY_PASSWORD".into(),
        PASSWORD.into(),
    ));
    let log = run_until_idle(&db, options);
    assert_status(&run_record(&client, allowed).await, "success/-", &log);
    assert!(log.contains("image pulled"), "{log}");
    assert!(!log.contains(PASSWORD), "the registry password was logged");
    assert!(
        registry.requests().iter().any(|p| p.contains("/blobs/")),
        "{:?}",
        registry.requests()
    );
}
