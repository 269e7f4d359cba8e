//! `/output` as a filesystem of its own (`sandbox::engine::output_volume`): nothing an app
//! plants there is privileged or executable on the host, the kernel stops writes at the caps,
//! and whatever the app does to modes, the daemon reads its outputs and leaves nothing behind,
//! run as root and as a non-root user in the docker group (README "Running under systemd").

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::harness::apps::{enqueue, publish_ok, run_record, run_stdout, write_app};
use crate::harness::daemon::{run_until_idle, Daemon, DaemonOptions};
use crate::harness::docker::assert_no_containers;
use crate::harness::{insert_tenant, TestDb};

/// A uid no host account uses: the non-root daemon.
const DAEMON_UID: u32 = 64123;

fn limits() -> Value {
    json!({"timeout": "60s", "memory_limit": "256MiB", "cpu_limit": 1, "stop_grace": "1s"})
}

/// The daemon as root, or as [`DAEMON_UID`] in the docker group.
fn daemon_options(state: &Path, root: bool) -> DaemonOptions {
    let options = DaemonOptions::production(state);
    if root {
        options
    } else {
        options.run_as_user(DAEMON_UID, state)
    }
}

/// The run's `app_outputs` rows as (type, name, data).
async fn outputs(
    client: &tokio_postgres::Client,
    run: Uuid,
) -> Vec<(String, Option<String>, Value)> {
    client
        .query(
            "select output_type, output_name, coalesce(output_data, 'null') from public.app_outputs
              where run_id = $1 order by output_type, output_name",
            &[&run],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The host directory of the `/output` volume of the run's container, while it runs (root can
/// enter it). The volume may be a spare, which names no run: it is found through the container.
fn volume_mountpoint(run: Uuid) -> Option<String> {
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let container = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=app-executor.run={run}"),
        "--filter",
        "label=app-executor.phase=run",
    ]);
    if container.is_empty() {
        return None;
    }
    let binds = docker(&["inspect", "-f", "{{json .HostConfig.Binds}}", &container]);
    let binds: Vec<String> = serde_json::from_str(&binds).ok()?;
    let volume = binds
        .iter()
        .find_map(|b| b.strip_suffix(":/output:rw,nocopy"))?
        .to_owned();
    let mountpoint = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &volume]);
    (!mountpoint.is_empty()).then_some(mountpoint)
}

/// Nothing of the state directory's run directories is left.
fn assert_no_run_dirs(state: &Path) {
    let left: Vec<_> = std::fs::read_dir(state.join("runs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "run directories left: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_planted_in_output_or_tmp_is_setuid_or_executable_on_the_host() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(
        &[(
            "index.js",
            "const fs = require('fs');\n\
             const cp = require('child_process');\n\
             const tried = {};\n\
             for (const dir of ['/output', '/tmp']) {\n\
               fs.copyFileSync('/bin/sh', `${dir}/sh`);\n\
               fs.chmodSync(`${dir}/sh`, 0o6755);\n\
               const r = cp.spawnSync(`${dir}/sh`, ['-c', 'echo ran']);\n\
               tried[dir] = r.error ? r.error.code : `ran with status ${r.status}`;\n\
             }\n\
             fs.writeFileSync('/output/result.json', JSON.stringify(tried));\n\
             console.log('planted');\n\
             setTimeout(() => {}, 120000);\n",
        )],
        limits(),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), app);
    let daemon = Daemon::spawn(&db, DaemonOptions::production(state.path()));
    let run = enqueue(&client, app, company, json!({})).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    let mountpoint = loop {
        if let Some(mp) = volume_mountpoint(run) {
            if Path::new(&mp).join("result.json").exists() {
                break mp;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing planted; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The host's view: the planted shell keeps the bits the app set, on a mount that honours
    // none of them.
    let planted = format!("{mountpoint}/sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&planted).unwrap().permissions(),
    );
    assert_eq!(
        mode & 0o6000,
        0o6000,
        "the app's chmod did not apply: {mode:o}"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mountpoint.as_str()))
        .unwrap_or_else(|| panic!("{mountpoint} is not a mount point:\n{mountinfo}"));
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(
            line.split(' ')
                .nth(5)
                .unwrap()
                .split(',')
                .any(|o| o == flag),
            "{flag}: {line}"
        );
    }
    // Another host user, handed an open descriptor (no directory in the way), cannot run it.
    let out = Command::new("sh")
        .args([
            "-c",
            "exec 3<\"$1\" && exec runuser -u nobody -- /proc/self/fd/3 -c 'id -eu'",
            "sh",
            &planted,
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "ran as nobody: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    client
        .execute(
            "update public.app_runs set status = 'cancelled' where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&mountpoint).exists()
        || state.path().join("runs").join(format!("{run}-1")).exists()
    {
        assert!(
            Instant::now() < deadline,
            "the volume or run directory stayed; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the app saw inside: neither copy could be executed.
    let recorded = outputs(&client, run).await;
    let result = recorded
        .iter()
        .find(|(kind, _, _)| kind == "result")
        .unwrap_or_else(|| panic!("no result recorded: {recorded:?}"));
    assert_eq!(result.2, json!({"/output": "EACCES", "/tmp": "EACCES"}));
    // The planted shell was collected as plain bytes.
    assert!(
        recorded
            .iter()
            .any(|(kind, name, _)| kind == "file" && name.as_deref() == Some("sh")),
        "{recorded:?}"
    );
    drop(daemon);
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

/// Writes to `/output` the way `mode` says until a write fails, then prints what happened and
/// exits 0: the outcome must come from the usage, not from the app's exit.
const FILLER: &str = "const fs = require('fs');\n\
    const mode = JSON.parse(process.env.APP_INPUT).mode;\n\
    let count = 0, code = null;\n\
    try {\n\
      if (mode === 'one-file') {\n\
        const chunk = Buffer.alloc(64 << 10, 1); const fd = fs.openSync('/output/big', 'w');\n\
        for (;;) count += fs.writeSync(fd, chunk);\n\
      } else if (mode === 'many-files') {\n\
        for (;;) { fs.writeFileSync(`/output/f${count}`, 'x'); count++; }\n\
      } else if (mode === 'deep-tree') {\n\
        let dir = '/output'; for (;;) { dir += '/d'; fs.mkdirSync(dir); count++; }\n\
      } else if (mode === 'hard-links') {\n\
        fs.writeFileSync('/output/a', 'x'); for (;;) { fs.linkSync('/output/a', `/output/l${count}`); count++; }\n\
      } else if (mode === 'locked-dir') {\n\
        fs.mkdirSync('/output/locked'); const chunk = Buffer.alloc(64 << 10, 1);\n\
        const fd = fs.openSync('/output/locked/big', 'w');\n\
        try { for (;;) count += fs.writeSync(fd, chunk); } finally { fs.chmodSync('/output/locked', 0); fs.chmodSync('/output', 0); }\n\
      }\n\
    } catch (e) { code = e.code; }\n\
    console.log(JSON.stringify({ mode, count, code }));\n";

const CAP_BYTES: u64 = 4 << 20;
const CAP_FILES: u64 = 20;

/// Every way of filling `/output` stops at the caps, under the daemon as root or not and under
/// the given OCI runtime (the engine's default when `None`).
async fn writes_past_the_caps(root: bool, runtime: Option<&str>) {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(&[("index.js", FILLER)], limits(), json!([]));
    publish_ok(&db, state.path(), dir.path(), app);
    let modes = [
        "one-file",
        "many-files",
        "deep-tree",
        "hard-links",
        "locked-dir",
    ];
    let mut runs = Vec::new();
    for mode in modes {
        runs.push(enqueue(&client, app, company, json!({"mode": mode})).await);
    }
    let mut options = daemon_options(state.path(), root)
        .sandbox("output_max", "4MiB")
        .sandbox("output_max_files", &CAP_FILES.to_string());
    if let Some(runtime) = runtime {
        crate::harness::docker::ensure_gvisor();
        options = options.sandbox("runtime", runtime);
    }
    let log = run_until_idle(&db, options).await;
    for (mode, run) in modes.iter().zip(&runs) {
        let record = run_record(&client, *run).await;
        assert_eq!(
            record.summary(),
            "failed/output_too_large",
            "{mode}: {:?}\n{log}",
            record.error_message
        );
        let stdout = run_stdout(&db, state.path(), *run).await;
        let said: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{mode}: {e}: {stdout:?}\n{log}"));
        assert_eq!(said["code"], "ENOSPC", "{mode}: {said}");
        let count = said["count"].as_u64().unwrap();
        match *mode {
            // Never more than the cap and 1 MiB.
            "one-file" | "locked-dir" => {
                assert!(
                    count > CAP_BYTES && count <= CAP_BYTES + (1 << 20),
                    "{mode}: {count}"
                )
            }
            // The entry cap and the one that shows it was crossed (the first file counts).
            "many-files" | "deep-tree" => assert_eq!(count, CAP_FILES + 1, "{mode}"),
            _ => assert_eq!(count, CAP_FILES, "{mode}"),
        }
    }
    assert_no_run_dirs(state.path());
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_past_the_output_caps_fail_with_enospc_and_the_run_is_output_too_large() {
    writes_past_the_caps(true, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_output_caps_hold_under_gvisor() {
    writes_past_the_caps(true, Some("runsc")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_root_daemon_holds_the_output_caps_and_leaves_nothing_behind() {
    writes_past_the_caps(false, None).await;
}

async fn locked_outputs(root: bool) {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    let (company, app) = insert_tenant(&client).await;
    let dir = write_app(
        &[(
            "index.js",
            "const fs = require('fs');\n\
             fs.mkdirSync('/output/locked/deeper', { recursive: true });\n\
             fs.writeFileSync('/output/locked/deeper/report.txt', 'the report');\n\
             fs.writeFileSync('/output/result.json', JSON.stringify({ ok: true }));\n\
             fs.chmodSync('/output/result.json', 0);\n\
             fs.chmodSync('/output/locked/deeper/report.txt', 0);\n\
             fs.chmodSync('/output/locked/deeper', 0);\n\
             fs.chmodSync('/output/locked', 0);\n\
             fs.chmodSync('/output', 0);\n\
             console.log('locked');\n",
        )],
        limits(),
        json!([]),
    );
    publish_ok(&db, state.path(), dir.path(), app);
    let run = enqueue(&client, app, company, json!({})).await;
    let log = run_until_idle(&db, daemon_options(state.path(), root)).await;
    assert_eq!(
        run_record(&client, run).await.summary(),
        "success/-",
        "{log}"
    );
    let recorded = outputs(&client, run).await;
    let names: Vec<_> = recorded
        .iter()
        .map(|(kind, name, _)| format!("{kind}:{}", name.as_deref().unwrap_or("")))
        .collect();
    assert!(
        names.contains(&"file:locked/deeper/report.txt".to_owned()),
        "{names:?}\n{log}"
    );
    let result = recorded
        .iter()
        .find(|(kind, _, _)| kind == "result")
        .unwrap();
    assert_eq!(result.2, json!({"ok": true}));
    assert!(
        !recorded.iter().any(|(kind, _, _)| kind == "error"),
        "{recorded:?}"
    );
    assert_no_run_dirs(state.path());
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn mode_000_outputs_are_read_and_removed_by_a_root_daemon() {
    locked_outputs(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mode_000_outputs_are_read_and_removed_by_a_non_root_daemon() {
    locked_outputs(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spare_output_volumes_serve_one_run_each_and_start_empty() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let state = tempfile::tempdir().unwrap();
    // Each run must find /output empty and leave a mark a later run would see.
    let script = "const fs = require('fs');\n\
        const found = fs.readdirSync('/output');\n\
        if (found.length) { console.error(`/output holds ${found}`); process.exit(1); }\n\
        fs.writeFileSync('/output/mark', process.env.RUN_ID);\n\
        fs.writeFileSync('/output/result.json', JSON.stringify({ run: process.env.RUN_ID }));\n";
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (company, app) = insert_tenant(&client).await;
        let dir = write_app(&[("index.js", script)], limits(), json!([]));
        publish_ok(&db, state.path(), dir.path(), app);
        for _ in 0..3 {
            runs.push(enqueue(&client, app, company, json!({})).await);
        }
    }
    let options = DaemonOptions::production(state.path()).sandbox("output_spares", "2");
    let log = run_until_idle(&db, options).await;
    for run in &runs {
        assert_eq!(
            run_record(&client, *run).await.summary(),
            "success/-",
            "{log}"
        );
        let recorded = outputs(&client, *run).await;
        let result = recorded
            .iter()
            .find(|(kind, _, _)| kind == "result")
            .unwrap();
        assert_eq!(result.2, json!({"run": run.to_string()}));
    }
    assert!(
        log.contains("a spare /output volume for the attempt"),
        "no spare was used:\n{log}"
    );
    assert_no_containers(&DaemonOptions::test_label(state.path()));
}
