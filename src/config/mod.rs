//! Configuration: `executor.toml` layered with `APP_EXECUTOR_<SECTION>__<KEY>` environment
//! overrides, validated once at start.
//!
//! This is the only module that reads configuration files, environment variables or systemd
//! credentials. It does not know what a section means: each component owns its section in a
//! `settings.rs` of its own (the serde form `Raw*` and the validated form, with its messages),
//! and this module layers the sources, hands each section to its owner, collects every
//! violation into one error and prints the result with secrets redacted.
//!
//! - `sources`: which file, the environment overrides, and figment's errors as one line each.
//! - `secrets`: the database URL, storage key, webhook secret and registry password, from
//!   the command line, the environment or systemd credentials, never from the file.
//!
//! Loading has two phases: figment deserialises the layers into the `Raw*` structs (unknown keys
//! and values of the wrong type are errors that name the key and where it came from), then each
//! owner's `from_raw` parses durations and sizes and records what is wrong.

mod secrets;
mod sources;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::alerts::settings::RawAlerts;
use crate::alerts::AlertSettings;
use crate::artifact::settings::{LimitsSettings, RawLimits};
use crate::cron::settings::{CronSettings, RawCron};
use crate::db::settings::{DatabaseSettings, RawDatabase};
use crate::logs::settings::{LogSettings, RawLogs};
use crate::ops::settings::{OpsSettings, RawOps};
use crate::outputs::settings::{OutputLimits, RawOutputs};
use crate::retention::settings::RawRetention;
use crate::retention::RetentionSettings;
use crate::runner::settings::{ExecutorSettings, QueueSettings, RawExecutor, RawQueue};
use crate::sandbox::{RawSandbox, SandboxSettings};
use crate::storage::settings::{RawStorage, StorageSettings};
use crate::telemetry::{LogFormat, RawTelemetry, TelemetrySettings};
use crate::webhooks::settings::{RawWebhooks, WebhookSettings};

pub use sources::{CONFIG_PATH_ENV, ENV_PREFIX};

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

/// The validated configuration every component is built from: one owner's settings per section.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the values came from, if any (for `check`).
    pub source_file: Option<PathBuf>,
    pub database: DatabaseSettings,
    pub executor: ExecutorSettings,
    pub queue: QueueSettings,
    pub telemetry: TelemetrySettings,
    pub cron: CronSettings,
    pub limits: LimitsSettings,
    pub storage: StorageSettings,
    pub ops: OpsSettings,
    pub sandbox: SandboxSettings,
    /// `[logs]`: live log streaming of each run (see `logs::RunLog`).
    pub logs: LogSettings,
    /// `[outputs]`: caps on what is read back from a run's `/output`.
    pub outputs: OutputLimits,
    /// `[alerts]`: failure events as NOTIFY and to an optional webhook.
    pub alerts: AlertSettings,
    /// `[retention]`: how long logs, outputs and builds are kept.
    pub retention: RetentionSettings,
    /// `[webhooks]`: the webhook trigger's listener (off unless `listen` is set).
    pub webhooks: WebhookSettings,
    /// `[install]`: the registries, tokens, CA bundle and proxy of the install phase.
    pub install: crate::sandbox::registry::InstallSettings,
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
    sandbox: RawSandbox,
    logs: RawLogs,
    outputs: RawOutputs,
    alerts: RawAlerts,
    retention: RawRetention,
    webhooks: RawWebhooks,
    install: crate::sandbox::registry::RawInstall,
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
        let source_file = sources::resolve_config_path(overrides, env)?;
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
        figment = figment.merge(sources::EnvOverrides::from_env(env));
        let mut raw: RawConfig = figment.extract().map_err(|errors| {
            ConfigError::Violations(
                errors
                    .into_iter()
                    .map(sources::describe_figment_error)
                    .collect(),
            )
        })?;
        raw.storage.resolved_key = secrets::service_key(env)?;
        raw.alerts.resolved_secret = secrets::webhook_secret(env)?;
        raw.sandbox.resolved_registry_password = secrets::registry_password(env)?;
        raw.install.resolved_tokens = secrets::install_tokens(env, &raw.install.tokens)?;
        let url = secrets::database_url(overrides, env, raw.database.url.as_deref(), &source_file)?;
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

    /// Hands each section to its owner; every violation of every section is reported at once.
    fn from_raw(
        raw: RawConfig,
        url: Option<crate::db::DatabaseUrl>,
        source_file: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let mut violations = Vec::new();
        let v = &mut violations;
        let database = DatabaseSettings::from_raw(&raw.database, url, v);
        let telemetry = TelemetrySettings::from_raw(&raw.telemetry, v);
        let executor = ExecutorSettings::from_raw(&raw.executor, v);
        let queue = QueueSettings::from_raw(&raw.queue, v);
        let cron = CronSettings::from_raw(&raw.cron, v);
        let limits = LimitsSettings::from_raw(&raw.limits, v);
        let storage = StorageSettings::from_raw(&raw.storage, &raw.executor.state_dir, v);
        let ops = OpsSettings::from_raw(&raw.ops, v);
        let sandbox = SandboxSettings::from_raw(&raw.sandbox, v);
        let logs = LogSettings::from_raw(&raw.logs, v);
        let outputs = OutputLimits::from_raw(&raw.outputs, v);
        let alerts = AlertSettings::from_raw(&raw.alerts, v);
        let retention = RetentionSettings::from_raw(&raw.retention, v);
        let webhooks = WebhookSettings::from_raw(&raw.webhooks, v);
        let install = crate::sandbox::registry::InstallSettings::from_raw(&raw.install, v);
        let reported = "violations were reported above";
        if !violations.is_empty() {
            return Err(ConfigError::Violations(violations));
        }
        Ok(Self {
            source_file,
            database: database.expect(reported),
            executor: executor.expect(reported),
            queue: queue.expect(reported),
            telemetry: telemetry.expect(reported),
            cron: cron.expect(reported),
            limits: limits.expect(reported),
            storage: storage.expect(reported),
            ops: ops.expect(reported),
            sandbox: sandbox.expect(reported),
            logs: logs.expect(reported),
            outputs: outputs.expect(reported),
            alerts: alerts.expect(reported),
            retention: retention.expect(reported),
            webhooks: webhooks.expect(reported),
            install: install.expect(reported),
        })
    }

    /// The effective configuration as JSON, secrets redacted, for `check`.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::json!({
            "source_file": self.source_file.as_ref().map(|p| p.display().to_string()),
            "database": self.database.to_json(),
            "executor": self.executor.to_json(),
            "queue": self.queue.to_json(),
            "telemetry": self.telemetry.to_json(),
            "cron": self.cron.to_json(),
            "sandbox": self.sandbox,
            "limits": self.limits.to_json(),
            "storage": self.storage.to_json(),
            "ops": self.ops.to_json(),
            "logs": self.logs.to_json(),
            "outputs": self.outputs.to_json(),
            "alerts": self.alerts.redacted_json(),
            "retention": self.retention.to_json(),
            "webhooks": self.webhooks.to_json(),
            "install": self.install.to_json(),
        })
    }
}
