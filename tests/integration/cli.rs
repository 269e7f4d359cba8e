//! The binary's contract with operators: config errors exit 78 and name the problem, `--json`
//! prints one document, bad input is named and changes nothing, secrets are never printed.

use std::process::{Command, Output};

use crate::harness::{binary, TestDb};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("APP_EXECUTOR_CONFIG")
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_config_file_exits_78_and_names_it() {
    let out = run(&["check", "--config", "/nonexistent/executor.toml"], &[]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent/executor.toml"));
}

#[test]
fn bad_toml_exits_78_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[database\npool_size = 3\n").unwrap();
    let out = run(&["migrate", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
}

#[test]
fn an_unknown_environment_override_exits_78_and_names_the_key() {
    let out = run(&["check"], &[("APP_EXECUTOR_DATABASE__POOL_SIZ", "4")]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("database.pool_siz"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_duration_exits_78_and_names_key_and_value() {
    let out = run(
        &["check"],
        &[("APP_EXECUTOR_DATABASE__CONNECT_TIMEOUT", "soon")],
    );
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(
        err.contains("database.connect_timeout") && err.contains("soon"),
        "{err}"
    );
}

#[test]
fn migrate_without_a_database_exits_78_and_says_how_to_configure_one() {
    let out = run(&["migrate"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("DATABASE_URL"), "{}", stderr(&out));
}

#[tokio::test]
async fn only_commands_that_use_storage_need_the_supabase_service_key() {
    let db = TestDb::empty().await;
    let supabase_without_key = [
        ("DATABASE_URL", db.url.expose()),
        ("APP_EXECUTOR_STORAGE__BACKEND", "supabase"),
        ("APP_EXECUTOR_STORAGE__URL", "http://127.0.0.1:9"),
    ];
    let out = run(&["migrate"], &supabase_without_key);
    assert_eq!(out.status.code(), Some(0), "migrate: {}", stderr(&out));
    let out = run(&["validate", &example("hello")], &supabase_without_key);
    assert_eq!(out.status.code(), Some(0), "validate: {}", stderr(&out));
    for args in [
        &["run"][..],
        &["logs", "00000000-0000-4000-8000-000000000001"][..],
    ] {
        let out = run(args, &supabase_without_key);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("needs the service key")
                && stderr(&out).contains("APP_EXECUTOR_STORAGE__SERVICE_KEY"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn enqueue_names_bad_input_and_creates_nothing() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let url = db.url.expose();
    let (company, app) = crate::harness::insert_tenant(&client).await;
    for (args, named) in [
        (
            vec!["enqueue", "--app", "not-a-uuid"],
            "--app \"not-a-uuid\"",
        ),
        (
            vec![
                "enqueue",
                "--app",
                &app.to_string(),
                "--company",
                &company.to_string(),
                "--input",
                "{bad",
            ],
            "--input is not JSON",
        ),
        (vec!["enqueue", "--app", &app.to_string()], "pass --company"),
        (
            vec![
                "enqueue",
                "--app",
                &uuid::Uuid::nil().to_string(),
                "--company",
                &company.to_string(),
            ],
            "no application",
        ),
    ] {
        let out = run(&args, &[("DATABASE_URL", url)]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(named), "{args:?}: {}", stderr(&out));
    }
    let runs: i64 = client
        .query_one("select count(*) from public.app_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 0, "bad input created a run");
    let out = run(
        &[
            "enqueue",
            "--app",
            &app.to_string(),
            "--company",
            &company.to_string(),
            "--json",
        ],
        &[("DATABASE_URL", url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id: uuid::Uuid = printed["run_id"].as_str().unwrap().parse().unwrap();
    let status: String = client
        .query_one("select status from public.app_runs where id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "pending");
}

#[test]
fn cron_next_prints_local_and_utc_fire_times_across_the_spring_gap() {
    let args = [
        "cron",
        "next",
        "30 2 * * *",
        "--tz",
        "America/New_York",
        "--after",
        "2026-03-07T00:00:00Z",
        "-n",
        "3",
    ];
    let out = run(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[1].contains("2026-03-08 03:00:00 EDT"), "{stdout}");
    assert!(lines[1].ends_with("2026-03-08T07:00:00Z"), "{stdout}");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = run(&json_args, &[]);
    let fires: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        fires,
        serde_json::json!([
            {"utc": "2026-03-07T07:30:00Z", "local": "2026-03-07T02:30:00-05:00"},
            {"utc": "2026-03-08T07:00:00Z", "local": "2026-03-08T03:00:00-04:00"},
            {"utc": "2026-03-09T06:30:00Z", "local": "2026-03-09T02:30:00-04:00"},
        ])
    );
}

#[test]
fn cron_next_with_a_bad_expression_or_zone_exits_1_and_names_it() {
    let out = run(&["cron", "next", "61 * * * *"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("minute 61 is out of range 0-59"),
        "{}",
        stderr(&out)
    );
    let out = run(&["cron", "next", "@daily", "--tz", "Mars/Olympus"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Mars/Olympus") && stderr(&out).contains("IANA"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn check_reports_a_migrated_database_and_never_prints_the_password() {
    let db = TestDb::migrated().await;
    // Loopback trust auth accepts any password, so a password-bearing URL still connects.
    let url = db.url.expose().replace("postgres@", "postgres:hunter2@");
    let out = run(&["check", "--json"], &[("DATABASE_URL", &url)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["checks"][1]["name"], "database");
    assert!(!stdout.contains("hunter2") && !stderr(&out).contains("hunter2"));
    assert!(report["config"]["database"]["url"]
        .as_str()
        .unwrap()
        .contains("***"));
}

#[tokio::test]
async fn check_fails_on_an_unmigrated_database_and_names_the_fix() {
    let db = TestDb::empty().await;
    let out = run(&["check"], &[("DATABASE_URL", db.url.expose())]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("app-executor migrate"), "{stdout}");
}

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_accepts_the_hello_example() {
    let out = run(&["validate", &example("hello")], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr(&out));
    assert!(stdout.contains("hello 1.0.0"), "{stdout}");
    assert!(stdout.contains("valid"), "{stdout}");

    let out = run(&["validate", &example("hello"), "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["manifest"]["backend"]["entrypoint"], "index.js");
    assert_eq!(report["manifest"]["limits"]["memory_bytes"], 256 << 20);
}

#[test]
fn validate_lists_every_problem_of_a_broken_app_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = serde_json::json!({
        "name": "broken",
        "version": "one",
        "type": "backend",
        "runtime": {"backend": {"type": "nodejs", "version": "20", "entrypoint": "../x.js"}},
        "permissions": [{"type": "root"}],
        "config": {"memory_limit": "12XB", "cpu_limit": 0, "timeout": "2h"}
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::write(dir.path().join("package.json"), "{ not json").unwrap();
    let path = dir.path().to_str().unwrap();

    let out = run(&["validate", path], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "version = \"one\": not a semantic version",
        "runtime.backend.entrypoint = \"../x.js\": must stay inside the app directory",
        "permissions[0].type = \"root\"",
        "config.memory_limit = \"12XB\": not a size",
        "config.cpu_limit = 0: must be a positive number",
        "package.json: not valid JSON",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(stderr(&out).contains("6 problem(s)"), "{}", stderr(&out));

    let out = run(&["validate", path, "--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let fields: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec![
            "version",
            "runtime.backend.entrypoint",
            "permissions[0].type",
            "config.memory_limit",
            "config.cpu_limit",
            "package.json"
        ]
    );
}

#[test]
fn validate_without_a_manifest_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["validate", dir.path().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("manifest.json: cannot read"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// Multi-threaded: the storage double serves from this runtime while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread")]
async fn check_names_the_dependency_that_is_not_reachable() {
    let db = TestDb::migrated().await;
    crate::harness::docker::ensure_engine();
    let url = db.url.expose();

    let out = run(
        &["check"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("check failed: database"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &["check"],
        &[
            ("DATABASE_URL", url),
            (
                "APP_EXECUTOR_SANDBOX__DOCKER_HOST",
                "unix:///nonexistent/docker.sock",
            ),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stderr(&out).contains("check failed: docker"),
        "{}",
        stderr(&out)
    );
    assert!(stdout.contains("/nonexistent/docker.sock"), "{stdout}");

    let double = crate::harness::storage_double::StorageDouble::start().await;
    let out = run(
        &["check"],
        &[
            ("DATABASE_URL", url),
            ("APP_EXECUTOR_STORAGE__BACKEND", "supabase"),
            ("APP_EXECUTOR_STORAGE__URL", double.url.as_str()),
            ("APP_EXECUTOR_STORAGE__MAX_RETRIES", "0"),
            ("APP_EXECUTOR_STORAGE__SERVICE_KEY", "not-the-key-4711"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stderr(&out).contains("check failed: storage"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout.contains("not-the-key-4711") && !stderr(&out).contains("not-the-key-4711"));

    let out = run(
        &["check"],
        &[
            ("DATABASE_URL", url),
            ("APP_EXECUTOR_STORAGE__BACKEND", "supabase"),
            ("APP_EXECUTOR_STORAGE__URL", double.url.as_str()),
            (
                "APP_EXECUTOR_STORAGE__SERVICE_KEY",
                crate::harness::storage_double::SERVICE_KEY,
            ),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}
