//! Configuration: `executor.toml` layered with `APP_EXECUTOR_<SECTION>__<KEY>` environment
//! overrides, validated once at start.
//!
//! This is the only module that reads configuration files or environment variables. Loading has
//! two phases: figment deserialises the layers into the `Raw*` structs (unknown keys and values
//! of the wrong type are errors that name the key and where it came from), then
//! [`Config::from_raw`] parses durations and sizes and collects every remaining violation.
//!
//! Secrets never come from the TOML file: the database password, the storage service key and
//! the alerts webhook secret are read from `--database-url`, the environment or systemd
//! credentials, and every printed form of the config redacts them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Prefix of every environment override: `APP_EXECUTOR_DATABASE__POOL_SIZE=32`.
pub const ENV_PREFIX: &str = "APP_EXECUTOR_";
/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "APP_EXECUTOR_CONFIG";
/// Config files tried, in order, when neither `--config` nor `APP_EXECUTOR_CONFIG` is given.
const DEFAULT_CONFIG_PATHS: &[&str] = &["executor.toml", "/etc/app-executor/executor.toml"];
/// Name of the systemd credential (`LoadCredential=database-url:…`) holding the database URL.
const DATABASE_URL_CREDENTIAL: &str = "database-url";
/// What to do when the service key is missing, for the commands that use storage.
pub fn missing_service_key_fix() -> String {
    format!(
        "storage.backend = \"supabase\" needs the service key: set {ENV_PREFIX}STORAGE__SERVICE_KEY or SUPABASE_SERVICE_ROLE_KEY, or the systemd credential {SERVICE_KEY_CREDENTIAL}"
    )
}

/// Name of the systemd credential holding the Supabase service key.
const SERVICE_KEY_CREDENTIAL: &str = "storage-service-key";

/// A configuration problem. Every message names the key or file and the offending value; the
/// process exits with status 78 (EX_CONFIG) on any of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist; pass an existing file with --config or create it (see executor.toml in the repository)")]
    MissingFile { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Violations(Vec<String>),
}

/// What the command line contributes to configuration.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config <path>`: must exist when given.
    pub config_path: Option<PathBuf>,
    /// `--database-url <url>`: wins over every other source of the database URL.
    pub database_url: Option<String>,
}

/// The validated configuration every component is built from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the values came from, if any (for `check`).
    pub source_file: Option<PathBuf>,
    pub database: DatabaseConfig,
    pub executor: ExecutorConfig,
    pub queue: QueueConfig,
    pub telemetry: TelemetryConfig,
    pub cron: CronSettings,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub ops: OpsConfig,
    pub sandbox: crate::sandbox::SandboxSettings,
    /// `[logs]`: live log streaming of each run (see `logs::RunLog`).
    pub logs: crate::logs::LogSettings,
    /// `[outputs]`: caps on what is read back from a run's `/output`.
    pub outputs: crate::outputs::OutputLimits,
    /// `[alerts]`: failure events as NOTIFY and to an optional webhook.
    pub alerts: crate::alerts::AlertSettings,
    /// `[retention]`: how long logs, outputs and builds are kept.
    pub retention: crate::retention::RetentionSettings,
}

/// `[ops]`: the loopback HTTP endpoints (`/metrics`, `/healthz`, `/readyz`) and the periodic
/// `STATUS=` / queue-depth refresh.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// Where the endpoints listen; `None` when disabled (`listen = ""`). Loopback unless
    /// `allow_non_loopback` was set (validated here).
    pub listen: Option<std::net::SocketAddr>,
    /// Longest a `/readyz` check of the database or Docker may take before it counts as down.
    pub probe_timeout: Duration,
    /// How often the queue depth gauge and the systemd `STATUS=` line are refreshed (one
    /// `count(*)` of pending runs each time).
    pub status_interval: Duration,
}

/// `[storage]`: which backend `app::storage` builds. The service key never comes from the file.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// The Supabase project URL (`/storage/v1` is appended); required for `supabase`.
    pub url: Option<url::Url>,
    pub service_key: Option<ServiceKey>,
    pub local_root: PathBuf,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    Supabase,
}

/// The Supabase service-role key: `Debug` never shows it; [`ServiceKey::expose`] is for the
/// request headers only.
#[derive(Clone)]
pub struct ServiceKey(String);

impl ServiceKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey(***)")
    }
}

/// `[limits]`: what one app may use on this host (manifests are clamped to the maxima and get
/// the defaults when silent), and the caps on extracting an app's archives.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub host: crate::artifact::HostLimits,
    pub extract: crate::artifact::ExtractLimits,
}

/// `[cron]`: the scheduler every daemon runs (see `cron::Scheduler`).
#[derive(Debug, Clone)]
pub struct CronSettings {
    /// Whether this daemon evaluates schedules at all (others sharing the database still do).
    pub enabled: bool,
    /// Longest sleep between passes even when nothing is due: bounds how late a missed wake
    /// (lost NOTIFY, clock step) is noticed.
    pub max_sleep: Duration,
    /// `catch_up = "all"` fires at most this many missed ticks; older ones are skipped.
    pub catch_up_cap: usize,
    /// Schedules planned or fired per transaction batch in one pass.
    pub batch_size: usize,
    /// How long before its nominal instant a tick may be fired: its run is inserted early with
    /// `run_after = scheduled_for`, so it is claimable at the instant itself rather than once
    /// the database has written it. Zero fires at the instant.
    pub fire_ahead: Duration,
}

/// The longest `cron.fire_ahead` accepted: a lead much beyond the time a pass takes only widens
/// the window in which an edit has to withdraw a run inserted ahead.
pub const MAX_FIRE_AHEAD: Duration = Duration::from_secs(60);

/// The run queue: concurrency, leases, retries, drain and fairness caps.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub max_concurrent_runs: usize,
    pub lease: Duration,
    pub heartbeat_interval: Duration,
    pub poll_interval: Duration,
    pub rescue_interval: Duration,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub drain_grace: Duration,
    pub company_running_cap: i32,
    pub app_running_cap: i32,
    /// Per-company overrides of `company_running_cap`, keyed by company id.
    pub company_caps: BTreeMap<uuid::Uuid, i32>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `None` when no URL was configured anywhere (the embedded default of `demo`).
    pub url: Option<DatabaseUrl>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub notify_namespace: String,
}

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub state_dir: PathBuf,
    /// Size cap of the verified blob cache (`<state_dir>/cache/blobs`), LRU beyond it.
    pub blob_cache_max_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    pub level: String,
}

/// How log lines are written. `Auto` picks journald under systemd (`JOURNAL_STREAM`), human
/// text otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Human,
    Json,
    Journald,
}

/// A PostgreSQL URL whose password is never printed: `Display` and `Debug` redact it.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn parse(raw: &str, source: &str) -> Result<Self, ConfigError> {
        let parsed = url::Url::parse(raw).map_err(|e| {
            ConfigError::Invalid(format!(
                "database URL from {source} is not a valid URL ({e}); expected postgres://user:password@host:5432/dbname"
            ))
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::Invalid(format!(
                "database URL from {source} has scheme {:?}; expected postgres:// or postgresql://",
                parsed.scheme()
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The URL with its password, for connecting only. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn has_password(&self) -> bool {
        url::Url::parse(&self.0)
            .map(|u| u.password().is_some())
            .unwrap_or(false)
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            Err(_) => "<unparseable url>".to_owned(),
        }
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

// ---- raw layer: exactly what the TOML file and the environment may contain ------------------

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    database: RawDatabase,
    executor: RawExecutor,
    queue: RawQueue,
    telemetry: RawTelemetry,
    cron: RawCron,
    limits: RawLimits,
    storage: RawStorage,
    ops: RawOps,
    sandbox: crate::sandbox::RawSandbox,
    logs: RawLogs,
    outputs: RawOutputs,
    alerts: crate::alerts::settings::RawAlerts,
    retention: crate::retention::settings::RawRetention,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogs {
    chunk_interval: String,
    chunk_bytes: String,
    stream_cap: String,
    durable_retry_window: String,
}

impl Default for RawLogs {
    fn default() -> Self {
        Self {
            chunk_interval: "2s".into(),
            chunk_bytes: "256KiB".into(),
            stream_cap: "50MiB".into(),
            durable_retry_window: "60s".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOutputs {
    max_files: usize,
    max_bytes: String,
    max_file_bytes: String,
    max_result_bytes: String,
}

impl Default for RawOutputs {
    fn default() -> Self {
        Self {
            max_files: 100,
            max_bytes: "100MiB".into(),
            max_file_bytes: "50MiB".into(),
            max_result_bytes: "1MiB".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOps {
    listen: String,
    allow_non_loopback: bool,
    probe_timeout: String,
    status_interval: String,
}

impl Default for RawOps {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            allow_non_loopback: false,
            probe_timeout: "2s".into(),
            status_interval: "5s".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_memory: String,
    max_cpu: f64,
    max_timeout: String,
    default_memory: String,
    default_cpu: f64,
    default_timeout: String,
    max_stop_grace: String,
    default_stop_grace: String,
    archive_max_entries: usize,
    archive_max_bytes: String,
    archive_max_file_bytes: String,
    archive_max_ratio: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_memory: "2GiB".into(),
            max_cpu: 2.0,
            max_timeout: "30m".into(),
            default_memory: "512MiB".into(),
            default_cpu: 1.0,
            default_timeout: "5m".into(),
            max_stop_grace: "1m".into(),
            default_stop_grace: "10s".into(),
            archive_max_entries: 10_000,
            archive_max_bytes: "500MB".into(),
            archive_max_file_bytes: "100MB".into(),
            archive_max_ratio: 100,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    backend: StorageBackend,
    url: Option<String>,
    local_root: Option<PathBuf>,
    connect_timeout: String,
    read_timeout: String,
    max_retries: u32,
    /// Only to refuse it with a message naming the fix: the key is a secret.
    #[serde(skip_serializing)]
    service_key: Option<String>,
    /// Resolved from the environment or credentials by `resolve_service_key`, never the file.
    #[serde(skip)]
    resolved_key: Option<ServiceKey>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCron {
    enabled: bool,
    max_sleep: String,
    catch_up_cap: usize,
    batch_size: usize,
    fire_ahead: String,
}

impl Default for RawCron {
    fn default() -> Self {
        Self {
            enabled: true,
            max_sleep: "30s".into(),
            catch_up_cap: 100,
            batch_size: 1000,
            fire_ahead: "2s".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    max_concurrent_runs: usize,
    lease: String,
    heartbeat_interval: String,
    poll_interval: String,
    rescue_interval: String,
    retry_backoff: String,
    retry_backoff_max: String,
    drain_grace: String,
    company_running_cap: i32,
    app_running_cap: i32,
    company_caps: BTreeMap<String, i32>,
}

impl Default for RawQueue {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 4,
            lease: "30s".into(),
            heartbeat_interval: "10s".into(),
            poll_interval: "5s".into(),
            rescue_interval: "10s".into(),
            retry_backoff: "5s".into(),
            retry_backoff_max: "5m".into(),
            drain_grace: "60s".into(),
            company_running_cap: 4,
            app_running_cap: 4,
            company_caps: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: Option<String>,
    pool_size: usize,
    connect_timeout: String,
    notify_namespace: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawExecutor {
    state_dir: PathBuf,
    blob_cache_max: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTelemetry {
    format: LogFormat,
    level: String,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Local,
            url: None,
            local_root: None,
            connect_timeout: "10s".into(),
            read_timeout: "30s".into(),
            max_retries: 3,
            service_key: None,
            resolved_key: None,
        }
    }
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 16,
            connect_timeout: "10s".into(),
            notify_namespace: "app_executor".into(),
        }
    }
}

impl Default for RawExecutor {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/app-executor"),
            blob_cache_max: "5GB".into(),
        }
    }
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads the configuration from the file chosen by `overrides` (or the defaults), the
    /// process environment and the command line.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(overrides, &env)
    }

    /// [`Config::load`] with an explicit environment, so tests need not touch the process's.
    pub fn load_from(
        overrides: &Overrides,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let source_file = resolve_config_path(overrides, env)?;
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(path) = &source_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("cannot read config file {}: {e}", path.display()))
            })?;
            // Parse first so a syntax error names the file, line and column.
            toml::from_str::<toml::Value>(&text).map_err(|e| {
                ConfigError::Invalid(format!(
                    "config file {} is not valid TOML: {}",
                    path.display(),
                    e.to_string().trim_end()
                ))
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(EnvOverrides::from_env(env));
        let mut raw: RawConfig = figment.extract().map_err(|errors| {
            ConfigError::Violations(errors.into_iter().map(describe_figment_error).collect())
        })?;
        raw.storage.resolved_key = resolve_service_key(env)?;
        raw.alerts.resolved_secret = resolve_webhook_secret(env)?;
        raw.sandbox.resolved_registry_password = resolve_secret(
            env,
            &[crate::sandbox::settings::REGISTRY_PASSWORD_ENV],
            crate::sandbox::settings::REGISTRY_PASSWORD_CREDENTIAL,
        )?
        .map(crate::sandbox::RegistryPassword::new);
        let url = resolve_database_url(overrides, env, raw.database.url.as_deref(), &source_file)?;
        let mut config = Self::from_raw(raw, url, source_file)?;
        // Under systemd, stderr is the journal: `auto` means structured journald fields there.
        if config.telemetry.format == LogFormat::Auto {
            config.telemetry.format = if env.contains_key("JOURNAL_STREAM") {
                LogFormat::Journald
            } else {
                LogFormat::Human
            };
        }
        // RUST_LOG, the conventional override, wins over telemetry.level.
        if let Some(directive) = env.get("RUST_LOG").filter(|d| !d.is_empty()) {
            config.telemetry.level = directive.clone();
        }
        Ok(config)
    }

    fn from_raw(
        raw: RawConfig,
        url: Option<DatabaseUrl>,
        source_file: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let mut violations = Vec::new();
        let connect_timeout = parse_duration(
            "database.connect_timeout",
            &raw.database.connect_timeout,
            &mut violations,
        );
        if raw.database.pool_size == 0 {
            violations.push("database.pool_size = 0: must be at least 1".to_owned());
        }
        let ns = &raw.database.notify_namespace;
        if ns.is_empty()
            || ns.len() > 40
            || !ns
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            violations.push(format!(
                "database.notify_namespace = {ns:?}: use 1-40 characters of a-z, 0-9 and _"
            ));
        }
        if raw
            .telemetry
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            violations.push(format!(
                "telemetry.level = {:?}: not a log filter; use e.g. \"info\" or \"app_executor=debug,info\"",
                raw.telemetry.level
            ));
        }
        if !raw.executor.state_dir.is_absolute() {
            violations.push(format!(
                "executor.state_dir = {:?}: must be an absolute path",
                raw.executor.state_dir.display()
            ));
        }
        let queue = queue_from_raw(&raw.queue, &mut violations);
        let cron_max_sleep = parse_duration("cron.max_sleep", &raw.cron.max_sleep, &mut violations);
        let max_cap = crate::cron::scheduler::MAX_TICKS_PER_PASS;
        if !(1..=max_cap).contains(&raw.cron.catch_up_cap) {
            violations.push(format!(
                "cron.catch_up_cap = {}: must be between 1 and {max_cap}",
                raw.cron.catch_up_cap
            ));
        }
        if raw.cron.batch_size == 0 {
            violations.push("cron.batch_size = 0: must be at least 1".to_owned());
        }
        let fire_ahead = match humantime::parse_duration(&raw.cron.fire_ahead) {
            Ok(d) if d <= MAX_FIRE_AHEAD => d,
            Ok(_) => {
                violations.push(format!(
                    "cron.fire_ahead = {:?}: must be at most {}; a few seconds is enough",
                    raw.cron.fire_ahead,
                    humantime::format_duration(MAX_FIRE_AHEAD)
                ));
                Duration::ZERO
            }
            Err(e) => {
                violations.push(format!(
                    "cron.fire_ahead = {:?}: not a duration ({e}); use e.g. \"2s\", or \"0s\" to fire at the instant",
                    raw.cron.fire_ahead
                ));
                Duration::ZERO
            }
        };
        let limits = limits_from_raw(&raw.limits, &mut violations);
        let storage = storage_from_raw(&raw.storage, &raw.executor.state_dir, &mut violations);
        let ops = ops_from_raw(&raw.ops, &mut violations);
        let sandbox = crate::sandbox::SandboxSettings::from_raw(&raw.sandbox, &mut violations);
        let logs = logs_from_raw(&raw.logs, &mut violations);
        let outputs = outputs_from_raw(&raw.outputs, &mut violations);
        let alerts = crate::alerts::AlertSettings::from_raw(&raw.alerts, &mut violations);
        let retention =
            crate::retention::RetentionSettings::from_raw(&raw.retention, &mut violations);
        let blob_cache_max_bytes =
            parse_byte_size("executor.blob_cache_max", &raw.executor.blob_cache_max)
                .map_err(|e| violations.push(e))
                .unwrap_or_default();
        if !violations.is_empty() {
            return Err(ConfigError::Violations(violations));
        }
        Ok(Self {
            storage: storage.expect("violations were reported above"),
            source_file,
            database: DatabaseConfig {
                url,
                pool_size: raw.database.pool_size,
                connect_timeout: connect_timeout.unwrap_or_default(),
                notify_namespace: raw.database.notify_namespace,
            },
            executor: ExecutorConfig {
                state_dir: raw.executor.state_dir,
                blob_cache_max_bytes,
            },
            queue: queue.expect("violations were reported above"),
            telemetry: TelemetryConfig {
                format: raw.telemetry.format,
                level: raw.telemetry.level,
            },
            cron: CronSettings {
                enabled: raw.cron.enabled,
                max_sleep: cron_max_sleep.unwrap_or_default(),
                catch_up_cap: raw.cron.catch_up_cap,
                batch_size: raw.cron.batch_size,
                fire_ahead,
            },
            limits: limits.expect("violations were reported above"),
            ops: ops.expect("violations were reported above"),
            sandbox: sandbox.expect("violations were reported above"),
            logs: logs.expect("violations were reported above"),
            outputs: outputs.expect("violations were reported above"),
            alerts: alerts.expect("violations were reported above"),
            retention: retention.expect("violations were reported above"),
        })
    }

    /// The effective configuration as JSON, secrets redacted, for `check`.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::json!({
            "source_file": self.source_file.as_ref().map(|p| p.display().to_string()),
            "database": {
                "url": self.database.url.as_ref().map(DatabaseUrl::redacted),
                "pool_size": self.database.pool_size,
                "connect_timeout": humantime::format_duration(self.database.connect_timeout).to_string(),
                "notify_namespace": self.database.notify_namespace,
            },
            "executor": {
                "state_dir": self.executor.state_dir.display().to_string(),
                "blob_cache_max_bytes": self.executor.blob_cache_max_bytes,
            },
            "queue": {
                "max_concurrent_runs": self.queue.max_concurrent_runs,
                "lease": human(self.queue.lease),
                "heartbeat_interval": human(self.queue.heartbeat_interval),
                "poll_interval": human(self.queue.poll_interval),
                "rescue_interval": human(self.queue.rescue_interval),
                "retry_backoff": human(self.queue.retry_backoff),
                "retry_backoff_max": human(self.queue.retry_backoff_max),
                "drain_grace": human(self.queue.drain_grace),
                "company_running_cap": self.queue.company_running_cap,
                "app_running_cap": self.queue.app_running_cap,
                "company_caps": self.queue.company_caps,
            },
            "telemetry": {
                "format": self.telemetry.format,
                "level": self.telemetry.level,
            },
            "cron": {
                "enabled": self.cron.enabled,
                "max_sleep": humantime::format_duration(self.cron.max_sleep).to_string(),
                "catch_up_cap": self.cron.catch_up_cap,
                "batch_size": self.cron.batch_size,
                "fire_ahead": humantime::format_duration(self.cron.fire_ahead).to_string(),
            },
            "sandbox": self.sandbox,
            "limits": {
                "max_memory": self.limits.host.max_memory,
                "max_cpu": self.limits.host.max_cpu,
                "max_timeout": human(self.limits.host.max_timeout),
                "default_memory": self.limits.host.default_memory,
                "default_cpu": self.limits.host.default_cpu,
                "default_timeout": human(self.limits.host.default_timeout),
                "max_stop_grace": human(self.limits.host.max_stop_grace),
                "default_stop_grace": human(self.limits.host.default_stop_grace),
                "archive_max_entries": self.limits.extract.max_entries,
                "archive_max_bytes": self.limits.extract.max_total_bytes,
                "archive_max_file_bytes": self.limits.extract.max_file_bytes,
                "archive_max_ratio": self.limits.extract.max_ratio,
            },
            "storage": {
                "backend": self.storage.backend,
                "url": self.storage.url.as_ref().map(url::Url::as_str),
                "service_key": self.storage.service_key.as_ref().map(|_| "***"),
                "local_root": self.storage.local_root.display().to_string(),
                "connect_timeout": human(self.storage.connect_timeout),
                "read_timeout": human(self.storage.read_timeout),
                "max_retries": self.storage.max_retries,
            },
            "ops": {
                "listen": self.ops.listen.map(|a| a.to_string()).unwrap_or_default(),
                "probe_timeout": human(self.ops.probe_timeout),
                "status_interval": human(self.ops.status_interval),
            },
            "logs": {
                "chunk_interval": human(self.logs.chunk_interval),
                "chunk_bytes": self.logs.chunk_bytes,
                "stream_cap": self.logs.stream_cap,
                "durable_retry_window": human(self.logs.durable_retry_window),
            },
            "outputs": {
                "max_files": self.outputs.max_files,
                "max_bytes": self.outputs.max_bytes,
                "max_file_bytes": self.outputs.max_file_bytes,
                "max_result_bytes": self.outputs.max_result_bytes,
            },
            "alerts": self.alerts.redacted_json(),
            "retention": self.retention.to_json(),
        })
    }
}

/// Environment overrides (`APP_EXECUTOR_<SECTION>__<KEY>`), except the database URL, which
/// [`resolve_database_url`] reads as an opaque string. Built from an explicit map rather than
/// figment's `Env` so that tests need not mutate the process environment.
struct EnvOverrides(BTreeMap<String, toml::Value>);

impl EnvOverrides {
    fn from_env(env: &BTreeMap<String, String>) -> Self {
        let mut tree = BTreeMap::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if key == "config"
                || key == "database__url"
                || key == "storage__service_key"
                || key == "alerts__webhook_secret"
                || key == "sandbox__registry_password"
            {
                continue;
            }
            let path: Vec<&str> = key.split("__").collect();
            insert_path(&mut tree, &path, parse_env_value(value));
        }
        Self(tree)
    }
}

impl figment::Provider for EnvOverrides {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("{ENV_PREFIX}* environment variables"))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::globals(&self.0).data()
    }
}

/// Env values are typed like TOML scalars when they look like one (`32`, `true`, `1.5`), and
/// are strings otherwise, so `APP_EXECUTOR_DATABASE__POOL_SIZE=32` fills an integer.
fn parse_env_value(value: &str) -> toml::Value {
    if let Ok(i) = value.parse::<i64>() {
        if !(value.starts_with('0') && value.len() > 1) {
            return toml::Value::Integer(i);
        }
    }
    match value {
        "true" => return toml::Value::Boolean(true),
        "false" => return toml::Value::Boolean(false),
        _ => {}
    }
    if let Ok(f) = value.parse::<f64>() {
        if value.contains('.') {
            return toml::Value::Float(f);
        }
    }
    toml::Value::String(value.to_owned())
}

fn insert_path(tree: &mut BTreeMap<String, toml::Value>, path: &[&str], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            tree.insert((*last).to_owned(), value);
        }
        [head, rest @ ..] => {
            let entry = tree
                .entry((*head).to_owned())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            if let toml::Value::Table(table) = entry {
                let mut sub: BTreeMap<String, toml::Value> =
                    std::mem::take(table).into_iter().collect();
                insert_path(&mut sub, rest, value);
                *table = sub.into_iter().collect();
            } else {
                // `A__B=1` and `A__B__C=2` conflict; the deeper key wins and the conflict shows
                // up as an unknown or mistyped key.
                let mut sub = BTreeMap::new();
                insert_path(&mut sub, rest, value);
                *entry = toml::Value::Table(sub.into_iter().collect());
            }
        }
    }
}

/// One line per figment error: the key (as the user would write it in TOML and in the
/// environment), what is wrong, and where the value came from.
fn describe_figment_error(error: figment::Error) -> String {
    let key = error.path.join(".");
    let source = match &error.metadata {
        Some(m) => match &m.source {
            Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
            _ => format!(" (in {})", m.name),
        },
        None => String::new(),
    };
    let env_name = if key.is_empty() {
        String::new()
    } else {
        format!(
            " / {ENV_PREFIX}{}",
            error.path.join("__").to_ascii_uppercase()
        )
    };
    let what = match &error.kind {
        figment::error::Kind::UnknownField(_, expected) => {
            return format!(
                "unknown key {key:?}{env_name}{source}; expected one of: {}",
                expected.join(", ")
            );
        }
        kind => kind.to_string(),
    };
    if key.is_empty() {
        format!("{what}{source}")
    } else {
        format!("{key}{env_name}: {what}{source}")
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Validates `[queue]`; `None` when a violation was recorded.
fn queue_from_raw(raw: &RawQueue, violations: &mut Vec<String>) -> Option<QueueConfig> {
    let before = violations.len();
    let mut duration = |key: &str, value: &str| {
        parse_duration(&format!("queue.{key}"), value, violations).unwrap_or_default()
    };
    let lease = duration("lease", &raw.lease);
    let heartbeat_interval = duration("heartbeat_interval", &raw.heartbeat_interval);
    let poll_interval = duration("poll_interval", &raw.poll_interval);
    let rescue_interval = duration("rescue_interval", &raw.rescue_interval);
    let retry_backoff = duration("retry_backoff", &raw.retry_backoff);
    let retry_backoff_max = duration("retry_backoff_max", &raw.retry_backoff_max);
    let drain_grace = duration("drain_grace", &raw.drain_grace);
    if violations.len() == before && heartbeat_interval * 2 > lease {
        violations.push(format!(
            "queue.heartbeat_interval = {:?} with queue.lease = {:?}: the heartbeat must come at most every half lease (a third is better), or healthy runs get rescued",
            raw.heartbeat_interval, raw.lease
        ));
    }
    if raw.max_concurrent_runs == 0 {
        violations.push("queue.max_concurrent_runs = 0: must be at least 1".into());
    }
    for (key, value) in [
        ("company_running_cap", raw.company_running_cap),
        ("app_running_cap", raw.app_running_cap),
    ] {
        if value < 1 {
            violations.push(format!("queue.{key} = {value}: must be at least 1"));
        }
    }
    let mut company_caps = BTreeMap::new();
    for (company, cap) in &raw.company_caps {
        match company.parse::<uuid::Uuid>() {
            Ok(id) if *cap >= 0 => {
                company_caps.insert(id, *cap);
            }
            Ok(_) => violations.push(format!(
                "queue.company_caps.{company} = {cap}: must be 0 (paused) or more"
            )),
            Err(_) => violations.push(format!(
                "queue.company_caps: key {company:?} is not a company id (uuid)"
            )),
        }
    }
    (violations.len() == before).then_some(QueueConfig {
        max_concurrent_runs: raw.max_concurrent_runs,
        lease,
        heartbeat_interval,
        poll_interval,
        rescue_interval,
        retry_backoff,
        retry_backoff_max,
        drain_grace,
        company_running_cap: raw.company_running_cap,
        app_running_cap: raw.app_running_cap,
        company_caps,
    })
}

/// Validates `[limits]`; `None` when a violation was recorded.
fn limits_from_raw(raw: &RawLimits, violations: &mut Vec<String>) -> Option<LimitsConfig> {
    let before = violations.len();
    let mut size = |key: &str, value: &str| {
        parse_byte_size(&format!("limits.{key}"), value)
            .and_then(|b| match b {
                0 => Err(format!(
                    "limits.{key} = {value:?}: must be greater than zero"
                )),
                b => Ok(b),
            })
            .map_err(|e| violations.push(e))
            .unwrap_or_default()
    };
    let max_memory = size("max_memory", &raw.max_memory);
    let default_memory = size("default_memory", &raw.default_memory);
    let archive_max_bytes = size("archive_max_bytes", &raw.archive_max_bytes);
    let archive_max_file_bytes = size("archive_max_file_bytes", &raw.archive_max_file_bytes);
    let max_timeout = parse_duration("limits.max_timeout", &raw.max_timeout, violations);
    let default_timeout =
        parse_duration("limits.default_timeout", &raw.default_timeout, violations);
    let max_stop_grace = parse_duration("limits.max_stop_grace", &raw.max_stop_grace, violations);
    let default_stop_grace = parse_duration(
        "limits.default_stop_grace",
        &raw.default_stop_grace,
        violations,
    );
    if default_stop_grace > max_stop_grace {
        violations.push(format!(
            "limits.default_stop_grace = {:?}: above limits.max_stop_grace = {:?}",
            raw.default_stop_grace, raw.max_stop_grace
        ));
    }
    for (key, value) in [("max_cpu", raw.max_cpu), ("default_cpu", raw.default_cpu)] {
        if !(value.is_finite() && value > 0.0) {
            violations.push(format!(
                "limits.{key} = {value}: must be a positive number of CPUs"
            ));
        }
    }
    if default_memory > max_memory {
        violations.push(format!(
            "limits.default_memory = {:?}: above limits.max_memory = {:?}",
            raw.default_memory, raw.max_memory
        ));
    }
    if raw.default_cpu > raw.max_cpu {
        violations.push(format!(
            "limits.default_cpu = {}: above limits.max_cpu = {}",
            raw.default_cpu, raw.max_cpu
        ));
    }
    if default_timeout > max_timeout {
        violations.push(format!(
            "limits.default_timeout = {:?}: above limits.max_timeout = {:?}",
            raw.default_timeout, raw.max_timeout
        ));
    }
    for (key, value) in [
        ("archive_max_entries", raw.archive_max_entries as u64),
        ("archive_max_ratio", raw.archive_max_ratio),
    ] {
        if value == 0 {
            violations.push(format!("limits.{key} = 0: must be at least 1"));
        }
    }
    (violations.len() == before).then(|| LimitsConfig {
        host: crate::artifact::HostLimits {
            max_memory,
            max_cpu: raw.max_cpu,
            max_timeout: max_timeout.unwrap_or_default(),
            default_memory,
            default_cpu: raw.default_cpu,
            default_timeout: default_timeout.unwrap_or_default(),
            max_stop_grace: max_stop_grace.unwrap_or_default(),
            default_stop_grace: default_stop_grace.unwrap_or_default(),
        },
        extract: crate::artifact::ExtractLimits {
            max_entries: raw.archive_max_entries,
            max_total_bytes: archive_max_bytes,
            max_file_bytes: archive_max_file_bytes,
            max_ratio: raw.archive_max_ratio,
            ..Default::default()
        },
    })
}

/// The `app-logs` bucket's object size limit (the bucket migration): a compacted log or an
/// output file is one object, so the caps on them cannot exceed it.
const APP_LOGS_OBJECT_LIMIT: u64 = 52_428_800;

/// A byte size of `section.key` that must lie in `min..=max`; records a violation otherwise.
fn bounded_size(
    section: &str,
    key: &str,
    value: &str,
    (min, max): (u64, u64),
    violations: &mut Vec<String>,
) -> u64 {
    let name = format!("{section}.{key}");
    match parse_byte_size(&name, value) {
        Ok(bytes) if (min..=max).contains(&bytes) => bytes,
        Ok(bytes) => {
            violations.push(format!(
                "{name} = {value:?} ({bytes} bytes): must be between {} and {}",
                crate::artifact::resource::format_bytes(min),
                crate::artifact::resource::format_bytes(max)
            ));
            0
        }
        Err(e) => {
            violations.push(e);
            0
        }
    }
}

/// Validates `[logs]`; `None` when a violation was recorded.
fn logs_from_raw(raw: &RawLogs, violations: &mut Vec<String>) -> Option<crate::logs::LogSettings> {
    let before = violations.len();
    let chunk_interval = parse_duration("logs.chunk_interval", &raw.chunk_interval, violations);
    let durable_retry_window = parse_duration(
        "logs.durable_retry_window",
        &raw.durable_retry_window,
        violations,
    );
    let stream_cap = bounded_size(
        "logs",
        "stream_cap",
        &raw.stream_cap,
        (4096, APP_LOGS_OBJECT_LIMIT),
        violations,
    );
    let chunk_bytes = bounded_size(
        "logs",
        "chunk_bytes",
        &raw.chunk_bytes,
        (1024, 16 << 20),
        violations,
    );
    (violations.len() == before).then(|| crate::logs::LogSettings {
        chunk_interval: chunk_interval.unwrap_or_default(),
        chunk_bytes,
        stream_cap,
        durable_retry_window: durable_retry_window.unwrap_or_default(),
    })
}

/// Validates `[outputs]`; `None` when a violation was recorded.
fn outputs_from_raw(
    raw: &RawOutputs,
    violations: &mut Vec<String>,
) -> Option<crate::outputs::OutputLimits> {
    let before = violations.len();
    if !(1..=10_000).contains(&raw.max_files) {
        violations.push(format!(
            "outputs.max_files = {}: must be between 1 and 10000",
            raw.max_files
        ));
    }
    let max_bytes = bounded_size(
        "outputs",
        "max_bytes",
        &raw.max_bytes,
        (1, u64::MAX),
        violations,
    );
    let max_file_bytes = bounded_size(
        "outputs",
        "max_file_bytes",
        &raw.max_file_bytes,
        (1, APP_LOGS_OBJECT_LIMIT),
        violations,
    );
    let max_result_bytes = bounded_size(
        "outputs",
        "max_result_bytes",
        &raw.max_result_bytes,
        (2, 64 << 20),
        violations,
    );
    (violations.len() == before).then_some(crate::outputs::OutputLimits {
        max_files: raw.max_files,
        max_bytes,
        max_file_bytes,
        max_result_bytes,
    })
}

/// Validates `[storage]`; `None` when a violation was recorded.
fn storage_from_raw(
    raw: &RawStorage,
    state_dir: &Path,
    violations: &mut Vec<String>,
) -> Option<StorageConfig> {
    let before = violations.len();
    let connect_timeout =
        parse_duration("storage.connect_timeout", &raw.connect_timeout, violations);
    let read_timeout = parse_duration("storage.read_timeout", &raw.read_timeout, violations);
    if raw.service_key.is_some() {
        violations.push(format!(
            "storage.service_key: the service key is a secret and must not be in the config file; remove it and set {ENV_PREFIX}STORAGE__SERVICE_KEY or SUPABASE_SERVICE_ROLE_KEY, or the systemd credential {SERVICE_KEY_CREDENTIAL}"
        ));
    }
    let url = raw.url.as_deref().and_then(|u| match url::Url::parse(u) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Some(parsed),
        _ => {
            violations.push(format!(
                "storage.url = {u:?}: expected the project URL, e.g. \"https://<ref>.supabase.co\""
            ));
            None
        }
    });
    if raw.backend == StorageBackend::Supabase && raw.url.is_none() {
        violations.push("storage.backend = \"supabase\" needs storage.url, the project URL (e.g. \"https://<ref>.supabase.co\")".into());
    }
    // The service key is required by the commands that use storage (`app::storage`), not here:
    // `migrate`, `validate`, `enqueue` and `cron next` never touch storage, and a migration job
    // should not need the key.
    let local_root = raw
        .local_root
        .clone()
        .unwrap_or_else(|| state_dir.join("storage"));
    if !local_root.is_absolute() {
        violations.push(format!(
            "storage.local_root = {:?}: must be an absolute path",
            local_root.display()
        ));
    }
    if raw.max_retries > 20 {
        violations.push(format!(
            "storage.max_retries = {}: at most 20",
            raw.max_retries
        ));
    }
    (violations.len() == before).then(|| StorageConfig {
        backend: raw.backend,
        url,
        service_key: raw.resolved_key.clone(),
        local_root,
        connect_timeout: connect_timeout.unwrap_or_default(),
        read_timeout: read_timeout.unwrap_or_default(),
        max_retries: raw.max_retries,
    })
}

/// Validates `[ops]`; `None` when a violation was recorded.
fn ops_from_raw(raw: &RawOps, violations: &mut Vec<String>) -> Option<OpsConfig> {
    let before = violations.len();
    let probe_timeout = parse_duration("ops.probe_timeout", &raw.probe_timeout, violations);
    let status_interval = parse_duration("ops.status_interval", &raw.status_interval, violations);
    let listen = match raw.listen.trim() {
        "" => None,
        text => match text.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() || raw.allow_non_loopback => Some(addr),
            Ok(addr) => {
                violations.push(format!(
                    "ops.listen = {text:?}: {} is not a loopback address; the endpoints have no authentication, so they listen on 127.0.0.1 or [::1] unless ops.allow_non_loopback = true",
                    addr.ip()
                ));
                None
            }
            Err(_) => {
                violations.push(format!(
                    "ops.listen = {text:?}: not an address and port; use e.g. \"127.0.0.1:9464\", or \"\" to disable the endpoints"
                ));
                None
            }
        },
    };
    (violations.len() == before).then(|| OpsConfig {
        listen,
        probe_timeout: probe_timeout.unwrap_or_default(),
        status_interval: status_interval.unwrap_or_default(),
    })
}

/// The storage service key, from `APP_EXECUTOR_STORAGE__SERVICE_KEY`,
/// `SUPABASE_SERVICE_ROLE_KEY` or the systemd credential `storage-service-key`, in that order.
fn resolve_service_key(env: &BTreeMap<String, String>) -> Result<Option<ServiceKey>, ConfigError> {
    let env_name = format!("{ENV_PREFIX}STORAGE__SERVICE_KEY");
    let key = resolve_secret(
        env,
        &[env_name.as_str(), "SUPABASE_SERVICE_ROLE_KEY"],
        SERVICE_KEY_CREDENTIAL,
    )?;
    Ok(key.map(|key| ServiceKey::new(&key)))
}

/// The webhook signing secret, from `APP_EXECUTOR_ALERTS__WEBHOOK_SECRET` or the systemd
/// credential `alerts-webhook-secret`, in that order.
fn resolve_webhook_secret(
    env: &BTreeMap<String, String>,
) -> Result<Option<crate::alerts::WebhookSecret>, ConfigError> {
    use crate::alerts::settings::{SECRET_CREDENTIAL, SECRET_ENV};
    Ok(resolve_secret(env, &[SECRET_ENV], SECRET_CREDENTIAL)?
        .map(crate::alerts::WebhookSecret::new))
}

/// A secret from the first non-empty environment variable of `names`, else from the systemd
/// credential `credential` (a file in `$CREDENTIALS_DIRECTORY`); trimmed. Never from the file.
fn resolve_secret(
    env: &BTreeMap<String, String>,
    names: &[&str],
    credential: &str,
) -> Result<Option<String>, ConfigError> {
    for name in names {
        if let Some(secret) = env.get(*name).filter(|v| !v.trim().is_empty()) {
            return Ok(Some(secret.trim().to_owned()));
        }
    }
    if let Some(dir) = env.get("CREDENTIALS_DIRECTORY") {
        let path = Path::new(dir).join(credential);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::Invalid(format!("cannot read credential {}: {e}", path.display()))
            })?;
            return Ok(Some(text.trim().to_owned()));
        }
    }
    Ok(None)
}

/// A positive duration for `key`, or a violation naming it.
pub(crate) fn parse_duration(
    key: &str,
    value: &str,
    violations: &mut Vec<String>,
) -> Option<Duration> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            violations.push(format!("{key} = {value:?}: must be greater than zero"));
            None
        }
        Err(e) => {
            violations.push(format!(
                "{key} = {value:?}: not a duration ({e}); use e.g. \"30s\", \"5m\" or \"1h 30m\""
            ));
            None
        }
    }
}

/// Parses a byte size such as `256MB`, `1GB`, `512MiB` or `256m`, naming `key` on error.
/// See [`parse_size`] for the units.
pub fn parse_byte_size(key: &str, value: &str) -> Result<u64, String> {
    parse_size(value).map_err(|e| {
        format!("{key} = {value:?}: not a size ({e}); use e.g. \"256MB\", \"512MiB\" or \"1g\"")
    })
}

/// Parses a byte size. `KB`/`MB`/`GB`/`TB` are decimal (SI: `256MB` = 256,000,000 bytes),
/// `KiB`/`MiB`/`GiB`/`TiB` binary, and a lone `k`/`m`/`g`/`t` (either case) is binary like
/// Docker's `--memory 256m` (= 256 MiB), so limits copied from a `docker run` line mean the
/// same here. A bare number is bytes; fractions are allowed (`1.5GiB`). Units: the `bytesize`
/// crate, except the lone letters, which it would read as decimal.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    if !value.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("must start with a number".to_owned());
    }
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let shift = match unit.trim() {
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => {
            return value
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| e.to_string());
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err("too large".to_owned());
    }
    Ok(bytes.round() as u64)
}

fn resolve_config_path(
    overrides: &Overrides,
    env: &BTreeMap<String, String>,
) -> Result<Option<PathBuf>, ConfigError> {
    let explicit = overrides
        .config_path
        .clone()
        .or_else(|| env.get(CONFIG_PATH_ENV).map(PathBuf::from));
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(ConfigError::MissingFile { path });
        }
        return Ok(Some(path));
    }
    Ok(DEFAULT_CONFIG_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf))
}

/// The database URL, from the first source that has one: `--database-url`,
/// `APP_EXECUTOR_DATABASE__URL`, `DATABASE_URL`, the systemd credential `database-url`, then
/// `database.url` in the file — which must not contain a password.
fn resolve_database_url(
    overrides: &Overrides,
    env: &BTreeMap<String, String>,
    from_file: Option<&str>,
    file: &Option<PathBuf>,
) -> Result<Option<DatabaseUrl>, ConfigError> {
    if let Some(url) = &overrides.database_url {
        return DatabaseUrl::parse(url, "--database-url").map(Some);
    }
    let env_name = format!("{ENV_PREFIX}DATABASE__URL");
    for name in [env_name.as_str(), "DATABASE_URL"] {
        if let Some(url) = env.get(name).filter(|v| !v.is_empty()) {
            return DatabaseUrl::parse(url, name).map(Some);
        }
    }
    if let Some(dir) = env.get("CREDENTIALS_DIRECTORY") {
        let path = Path::new(dir).join(DATABASE_URL_CREDENTIAL);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::Invalid(format!("cannot read credential {}: {e}", path.display()))
            })?;
            return DatabaseUrl::parse(text.trim(), "the systemd credential database-url")
                .map(Some);
        }
    }
    if let Some(url) = from_file {
        let file = file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let url = DatabaseUrl::parse(url, &format!("database.url in {file}"))?;
        if url.has_password() {
            return Err(ConfigError::Invalid(format!(
                "database.url in {file} contains a password; secrets must not live in the config file. \
                 Remove it and set DATABASE_URL (or {env_name}, or the systemd credential database-url) instead"
            )));
        }
        return Ok(Some(url));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_bad_duration_names_the_key_and_the_value() {
        let err = load_error("[database]\nconnect_timeout = \"ten seconds\"\n", &[]);
        assert!(err.contains("database.connect_timeout"), "{err}");
        assert!(err.contains("ten seconds"), "{err}");
    }

    #[test]
    fn byte_sizes_accept_the_documented_forms_and_reject_others() {
        assert_eq!(parse_byte_size("k", "256MB").unwrap(), 256_000_000);
        assert_eq!(parse_byte_size("k", "512MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_byte_size("k", "1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_byte_size("k", "256m").unwrap(), 256 * 1024 * 1024);
        assert_eq!(parse_byte_size("k", "2G").unwrap(), 2 << 30);
        assert_eq!(parse_byte_size("k", "1.5GiB").unwrap(), 3 << 29);
        for bad in ["-1", "12XB", "", "m", "1.2.3m"] {
            assert!(parse_byte_size("k", bad).is_err(), "{bad:?} was accepted");
        }
        let err = parse_byte_size("sandbox.max_memory", "lots").unwrap_err();
        assert!(
            err.contains("sandbox.max_memory") && err.contains("lots"),
            "{err}"
        );
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
        assert!(
            host(Config::load_from(&overrides, &conventional).unwrap()).contains("conventional")
        );
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
        let config =
            Config::load_from(&overrides, &env(&[("APP_EXECUTOR_OPS__LISTEN", "")])).unwrap();
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
        let config =
            Config::load_from(&overrides, &env(&[("CREDENTIALS_DIRECTORY", &creds)])).unwrap();
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
        let config =
            Config::load_from(&overrides, &env(&[("CREDENTIALS_DIRECTORY", &creds)])).unwrap();
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
        let config =
            Config::load_from(&overrides, &env(&[("CREDENTIALS_DIRECTORY", &creds)])).unwrap();
        assert_eq!(config.storage.service_key.unwrap().expose(), "k-cred");
    }
}
