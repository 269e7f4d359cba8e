//! `Config::load_from` over files and environments: every accepted spelling, every
//! violation message, and that no secret is ever printed.

use std::time::Duration;

use super::*;
use crate::storage::StorageBackend;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn write_config(text: &str) -> (tempfile::TempDir, Overrides) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("executor.toml");
    std::fs::write(&path, text).unwrap();
    let overrides = Overrides {
        config_path: Some(path),
        database_url: None,
    };
    (dir, overrides)
}

fn load_error(text: &str, env_pairs: &[(&str, &str)]) -> String {
    let (_dir, overrides) = write_config(text);
    Config::load_from(&overrides, &env(env_pairs))
        .unwrap_err()
        .to_string()
}

#[test]
fn the_committed_example_config_is_valid() {
    let overrides = Overrides {
        config_path: Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/executor.toml"
        ))),
        database_url: None,
    };
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert_eq!(config.database.notify_namespace, "app_executor");
}

#[test]
fn a_missing_config_file_is_named() {
    let overrides = Overrides {
        config_path: Some(PathBuf::from("/nonexistent/executor.toml")),
        database_url: None,
    };
    let err = Config::load_from(&overrides, &env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::MissingFile { .. }));
    assert!(err.to_string().contains("/nonexistent/executor.toml"));
}

#[test]
fn bad_toml_names_the_file_and_line() {
    let err = load_error("[database]\npool_size = = 3\n", &[]);
    assert!(err.contains("not valid TOML"), "{err}");
    assert!(err.contains("executor.toml"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn an_unknown_key_in_the_file_is_named() {
    let err = load_error("[database]\npool_sise = 3\n", &[]);
    assert!(err.contains("\"database.pool_sise\""), "{err}");
    assert!(
        err.contains("pool_size"),
        "expected the valid keys listed: {err}"
    );
}

#[test]
fn an_unknown_env_override_is_named() {
    let err = load_error("", &[("APP_EXECUTOR_DATABASE__POOLSIZE", "3")]);
    assert!(err.contains("database.poolsize"), "{err}");
}

#[test]
fn a_bad_env_value_names_the_key_and_the_value() {
    let err = load_error("", &[("APP_EXECUTOR_DATABASE__POOL_SIZE", "many")]);
    assert!(err.contains("database.pool_size"), "{err}");
    assert!(err.contains("many"), "{err}");
}

#[test]
fn env_overrides_win_over_the_file() {
    let (_dir, overrides) = write_config("[database]\npool_size = 4\n");
    let config = Config::load_from(
        &overrides,
        &env(&[("APP_EXECUTOR_DATABASE__POOL_SIZE", "32")]),
    )
    .unwrap();
    assert_eq!(config.database.pool_size, 32);
}

#[test]
fn an_env_value_in_brackets_is_a_list() {
    let app = "7d3f4c1e-8a2b-4c5d-9e6f-0a1b2c3d4e5f";
    let (_dir, overrides) = write_config("");
    let config = Config::load_from(
        &overrides,
        &env(&[(
            "APP_EXECUTOR_SANDBOX__INSTALL_SCRIPTS_APPS",
            &format!("[\"{app}\"]"),
        )]),
    )
    .unwrap();
    assert_eq!(
        config.sandbox.install_scripts_apps,
        vec![app.parse::<uuid::Uuid>().unwrap()]
    );
    let err = load_error(
        "",
        &[("APP_EXECUTOR_SANDBOX__INSTALL_SCRIPTS_APPS", "[oops")],
    );
    assert!(err.contains("sandbox.install_scripts_apps"), "{err}");
}

#[test]
fn a_bad_duration_names_the_key_and_the_value() {
    let err = load_error("[database]\nconnect_timeout = \"ten seconds\"\n", &[]);
    assert!(err.contains("database.connect_timeout"), "{err}");
    assert!(err.contains("ten seconds"), "{err}");
}

#[test]
fn a_password_in_the_config_file_is_refused() {
    let err = load_error("[database]\nurl = \"postgres://u:secret@db/x\"\n", &[]);
    assert!(err.contains("contains a password"), "{err}");
    assert!(!err.contains("secret@"), "the password leaked: {err}");
}

#[test]
fn the_database_url_comes_from_the_first_source_that_has_one() {
    let (_dir, mut overrides) = write_config("[database]\nurl = \"postgres://u@file/x\"\n");
    let all = env(&[
        ("APP_EXECUTOR_DATABASE__URL", "postgres://u@prefixed/x"),
        ("DATABASE_URL", "postgres://u@conventional/x"),
    ]);
    let host = |c: Config| c.database.url.unwrap().redacted();
    assert!(host(Config::load_from(&overrides, &all).unwrap()).contains("prefixed"));
    let conventional = env(&[("DATABASE_URL", "postgres://u@conventional/x")]);
    assert!(host(Config::load_from(&overrides, &conventional).unwrap()).contains("conventional"));
    assert!(host(Config::load_from(&overrides, &env(&[])).unwrap()).contains("file"));
    overrides.database_url = Some("postgres://u@flag/x".into());
    assert!(host(Config::load_from(&overrides, &all).unwrap()).contains("flag"));
}

#[test]
fn printed_config_never_contains_the_password() {
    let (_dir, overrides) = write_config("");
    let config = Config::load_from(
        &overrides,
        &env(&[("DATABASE_URL", "postgres://u:hunter2@db:5432/x")]),
    )
    .unwrap();
    let printed = config.redacted_json().to_string();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("***"), "{printed}");
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn a_heartbeat_slower_than_half_the_lease_is_rejected() {
    let err = load_error(
        "[queue]\nlease = \"10s\"\nheartbeat_interval = \"8s\"\n",
        &[],
    );
    assert!(err.contains("queue.heartbeat_interval"), "{err}");
}

#[test]
fn company_cap_overrides_must_be_keyed_by_company_id() {
    let err = load_error("[queue.company_caps]\nacme = 3\n", &[]);
    assert!(err.contains("\"acme\" is not a company id"), "{err}");
    let (_dir, overrides) =
        write_config("[queue.company_caps]\n\"6f1c2a8e-0d5b-4c83-9e0b-0a4c1f9e2b7d\" = 10\n");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert_eq!(
        config
            .queue
            .company_caps
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![10]
    );
}

#[test]
fn cron_settings_have_defaults_and_bad_values_are_named() {
    let (_dir, overrides) = write_config("");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert!(config.cron.enabled);
    assert_eq!(config.cron.max_sleep, Duration::from_secs(30));
    assert_eq!(
        (config.cron.catch_up_cap, config.cron.batch_size),
        (100, 1000)
    );
    assert_eq!(config.cron.fire_ahead, Duration::from_secs(2));
    let err = load_error(
        "[cron]\nmax_sleep = \"forever\"\ncatch_up_cap = 0\nfire_ahead = \"5m\"\n",
        &[],
    );
    assert!(
        err.contains("cron.max_sleep") && err.contains("forever"),
        "{err}"
    );
    assert!(err.contains("cron.catch_up_cap = 0"), "{err}");
    assert!(
        err.contains("cron.fire_ahead = \"5m\": must be at most 1m"),
        "{err}"
    );
    let err = load_error("[cron]\nfire_ahead = \"soon\"\n", &[]);
    assert!(err.contains("cron.fire_ahead = \"soon\""), "{err}");
    let (_dir, overrides) = write_config("[cron]\nfire_ahead = \"0s\"\n");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert_eq!(config.cron.fire_ahead, Duration::ZERO);
}

#[test]
fn limits_have_defaults_and_bad_values_are_named() {
    let (_dir, overrides) = write_config("");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert_eq!(config.limits.host, crate::artifact::HostLimits::default());
    assert_eq!(
        config.limits.extract,
        crate::artifact::ExtractLimits::default()
    );
    let err = load_error(
        "[limits]\nmax_memory = \"12XB\"\nmax_cpu = 0.0\ndefault_timeout = \"2h\"\n",
        &[],
    );
    assert!(err.contains("limits.max_memory = \"12XB\""), "{err}");
    assert!(err.contains("limits.max_cpu = 0"), "{err}");
    assert!(
        err.contains("limits.default_timeout = \"2h\": above"),
        "{err}"
    );
}

#[test]
fn ops_listens_on_loopback_by_default_and_refuses_other_addresses() {
    let (_dir, overrides) = write_config("");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert_eq!(config.ops.listen, Some("127.0.0.1:9464".parse().unwrap()));
    let err = load_error("[ops]\nlisten = \"0.0.0.0:9464\"\n", &[]);
    assert!(err.contains("ops.listen = \"0.0.0.0:9464\""), "{err}");
    assert!(err.contains("ops.allow_non_loopback"), "{err}");
    let err = load_error(
        "[ops]\nlisten = \"localhost\"\nprobe_timeout = \"soon\"\n",
        &[],
    );
    assert!(err.contains("ops.listen = \"localhost\""), "{err}");
    assert!(err.contains("ops.probe_timeout"), "{err}");
    let (_dir, overrides) =
        write_config("[ops]\nlisten = \"0.0.0.0:9464\"\nallow_non_loopback = true\n");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert!(config.ops.listen.unwrap().ip().is_unspecified());
    let (_dir, overrides) = write_config("");
    let config = Config::load_from(&overrides, &env(&[("APP_EXECUTOR_OPS__LISTEN", "")])).unwrap();
    assert_eq!(
        config.ops.listen, None,
        "an empty listen disables the endpoints"
    );
    let config = Config::load_from(
        &overrides,
        &env(&[("APP_EXECUTOR_OPS__LISTEN", "[::1]:9000")]),
    )
    .unwrap();
    assert_eq!(config.ops.listen, Some("[::1]:9000".parse().unwrap()));
}

#[test]
fn logs_and_outputs_have_defaults_and_bad_values_are_named() {
    let (_dir, overrides) = write_config("");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert_eq!(config.logs, crate::logs::LogSettings::default());
    assert_eq!(config.outputs, crate::outputs::OutputLimits::default());
    let err = load_error(
        "[logs]\nchunk_interval = \"often\"\nstream_cap = \"1GiB\"\nchunk_bytes = \"512\"\n[outputs]\nmax_files = 0\n",
        &[("APP_EXECUTOR_OUTPUTS__MAX_RESULT_BYTES", "lots")],
    );
    assert!(err.contains("logs.chunk_interval = \"often\""), "{err}");
    assert!(
        err.contains(
            "logs.stream_cap = \"1GiB\" (1073741824 bytes): must be between 4KiB and 50MiB"
        ),
        "{err}"
    );
    assert!(
        err.contains("logs.chunk_bytes = \"512\" (512 bytes): must be between 1KiB"),
        "{err}"
    );
    assert!(err.contains("outputs.max_files = 0"), "{err}");
    assert!(err.contains("outputs.max_result_bytes = \"lots\""), "{err}");
}

#[test]
fn a_relative_state_dir_is_rejected() {
    let err = load_error("[executor]\nstate_dir = \"state\"\n", &[]);
    assert!(err.contains("executor.state_dir"), "{err}");
}

#[test]
fn storage_defaults_to_the_local_backend_under_the_state_dir() {
    let (_dir, overrides) = write_config("[executor]\nstate_dir = \"/srv/x\"\n");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert_eq!(config.storage.backend, StorageBackend::Local);
    assert_eq!(config.storage.local_root, PathBuf::from("/srv/x/storage"));
    assert_eq!(config.storage.max_retries, 3);
}

#[test]
fn a_service_key_in_the_config_file_is_refused_with_the_fix() {
    let err = load_error("[storage]\nservice_key = \"sekrit\"\n", &[]);
    assert!(err.contains("storage.service_key"), "{err}");
    assert!(err.contains("SUPABASE_SERVICE_ROLE_KEY"), "{err}");
    assert!(!err.contains("sekrit"), "the key leaked: {err}");
}

#[test]
fn a_bad_webhook_url_is_named() {
    let err = load_error("[alerts]\nwebhook_url = \"ftp://hooks.example/x\"\n", &[]);
    assert!(err.contains("alerts.webhook_url"), "{err}");
    assert!(err.contains("http:// or https://"), "{err}");
    let err = load_error("", &[("APP_EXECUTOR_ALERTS__WEBHOOK_URL", "hooks.example")]);
    assert!(err.contains("alerts.webhook_url: not a URL"), "{err}");
}

#[test]
fn a_webhook_secret_in_the_config_file_is_refused_with_the_fix() {
    let err = load_error("[alerts]\nwebhook_secret = \"s3cr3t\"\n", &[]);
    assert!(err.contains("alerts.webhook_secret"), "{err}");
    assert!(
        err.contains("APP_EXECUTOR_ALERTS__WEBHOOK_SECRET")
            && err.contains("alerts-webhook-secret"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "the secret leaked: {err}");
}

#[test]
fn the_webhook_secret_comes_from_env_or_credentials_and_is_never_printed() {
    let (dir, overrides) =
        write_config("[alerts]\nwebhook_url = \"https://hooks.example/t/abc\"\n");
    let config = Config::load_from(
        &overrides,
        &env(&[("APP_EXECUTOR_ALERTS__WEBHOOK_SECRET", "from-env")]),
    )
    .unwrap();
    let webhook = config.alerts.webhook.as_ref().unwrap();
    assert_eq!(webhook.secret.as_ref().unwrap().expose(), b"from-env");
    let printed = format!("{} {config:?}", config.redacted_json());
    assert!(!printed.contains("from-env"), "{printed}");
    assert!(
        !printed.contains("/t/abc"),
        "the URL's path leaked: {printed}"
    );
    std::fs::write(dir.path().join("alerts-webhook-secret"), "from-cred\n").unwrap();
    let creds = dir.path().display().to_string();
    let config = Config::load_from(&overrides, &env(&[("CREDENTIALS_DIRECTORY", &creds)])).unwrap();
    let webhook = config.alerts.webhook.unwrap();
    assert_eq!(webhook.secret.unwrap().expose(), b"from-cred");
}

#[test]
fn the_registry_login_needs_both_parts_and_its_password_never_comes_from_or_goes_to_print() {
    let err = load_error("[sandbox]\nregistry_password = \"hunter2\"\n", &[]);
    assert!(
        err.contains("sandbox.registry_password")
            && err.contains("APP_EXECUTOR_SANDBOX__REGISTRY_PASSWORD")
            && err.contains("registry-password"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
    let err = load_error("[sandbox]\nregistry_username = \"puller\"\n", &[]);
    assert!(err.contains("has no password"), "{err}");
    let err = load_error("", &[("APP_EXECUTOR_SANDBOX__REGISTRY_PASSWORD", "pw")]);
    assert!(err.contains("registry_username is empty"), "{err}");

    let (dir, overrides) = write_config("[sandbox]\nregistry_username = \"puller\"\n");
    let config = Config::load_from(
        &overrides,
        &env(&[("APP_EXECUTOR_SANDBOX__REGISTRY_PASSWORD", "from-env")]),
    )
    .unwrap();
    let auth = config.sandbox.registry.as_ref().unwrap();
    assert_eq!(
        (auth.username.as_str(), auth.password.expose()),
        ("puller", "from-env")
    );
    let printed = format!("{} {config:?}", config.redacted_json());
    assert!(!printed.contains("from-env"), "{printed}");
    assert!(printed.contains("puller"), "{printed}");
    std::fs::write(dir.path().join("registry-password"), "from-cred\n").unwrap();
    let creds = dir.path().display().to_string();
    let config = Config::load_from(&overrides, &env(&[("CREDENTIALS_DIRECTORY", &creds)])).unwrap();
    assert_eq!(
        config.sandbox.registry.unwrap().password.expose(),
        "from-cred"
    );
}

#[test]
fn retention_has_defaults_and_bad_values_are_named() {
    let (_dir, overrides) = write_config("");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert_eq!(
        config.retention,
        crate::retention::RetentionSettings::default()
    );
    let err = load_error(
        "[retention]\nlogs_max_age = \"soon\"\n",
        &[("APP_EXECUTOR_RETENTION__INTERVAL", "0s")],
    );
    assert!(err.contains("retention.logs_max_age = \"soon\""), "{err}");
    assert!(err.contains("retention.interval"), "{err}");
}

#[test]
fn the_supabase_backend_needs_a_url_but_the_key_only_where_storage_is_used() {
    let err = load_error("[storage]\nbackend = \"supabase\"\n", &[]);
    assert!(err.contains("needs storage.url"), "{err}");
    assert!(!err.contains("service key"), "{err}");
    let (_dir, overrides) =
        write_config("[storage]\nbackend = \"supabase\"\nurl = \"https://x.supabase.co\"\n");
    let config = Config::load_from(&overrides, &env(&[])).unwrap();
    assert!(config.storage.service_key.is_none());
}

#[test]
fn the_service_key_comes_from_env_or_credentials_and_is_never_printed() {
    let toml = "[storage]\nbackend = \"supabase\"\nurl = \"https://abc.supabase.co\"\n";
    let (dir, overrides) = write_config(toml);
    let config = Config::load_from(
        &overrides,
        &env(&[
            ("APP_EXECUTOR_STORAGE__SERVICE_KEY", "k-prefixed"),
            ("SUPABASE_SERVICE_ROLE_KEY", "k-plain"),
        ]),
    )
    .unwrap();
    assert_eq!(
        config.storage.service_key.as_ref().unwrap().expose(),
        "k-prefixed"
    );
    let printed = format!("{} {config:?}", config.redacted_json());
    assert!(!printed.contains("k-prefixed"), "{printed}");
    std::fs::write(dir.path().join("storage-service-key"), "k-cred\n").unwrap();
    let creds = dir.path().display().to_string();
    let config = Config::load_from(&overrides, &env(&[("CREDENTIALS_DIRECTORY", &creds)])).unwrap();
    assert_eq!(config.storage.service_key.unwrap().expose(), "k-cred");
}
