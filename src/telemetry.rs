//! Log output: human text on a terminal, JSON when asked, journald fields under systemd.
//!
//! The only module that touches `tracing_subscriber`. Under systemd (`JOURNAL_STREAM` set) the
//! journald layer sends structured fields without a prefix, so operators can filter with
//! `journalctl -u app-executor RUN_ID=<id>`. Secrets are never logged: config values that are
//! secret are wrapped in types whose `Debug`/`Display` redact them.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use serde::{Deserialize, Serialize};

/// `[telemetry]`: how log lines are written and which ones. `format = "auto"` is resolved by
/// `config` (journald under systemd); `RUST_LOG` wins over `level`.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
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

/// What the TOML file and the environment may contain under `[telemetry]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTelemetry {
    format: LogFormat,
    level: String,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

impl TelemetrySettings {
    /// Validates `[telemetry]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawTelemetry, violations: &mut Vec<String>) -> Option<Self> {
        if raw.level.parse::<EnvFilter>().is_err() {
            violations.push(format!(
                "telemetry.level = {:?}: not a log filter; use e.g. \"info\" or \"app_executor=debug,info\"",
                raw.level
            ));
            return None;
        }
        Some(Self {
            format: raw.format,
            level: raw.level.clone(),
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "format": self.format,
            "level": self.level,
        })
    }
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive; `format` has been
/// resolved by the config (`auto` is journald under systemd, human text otherwise). Calling it
/// twice is harmless (the second call keeps the first subscriber).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let layer: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .boxed(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => layer
                .with_field_prefix(None)
                .with_syslog_identifier("app-executor".into())
                .boxed(),
            // No journal socket after all: fall back to text on stderr, which systemd also
            // captures.
            Err(_) => human_layer().boxed(),
        },
        LogFormat::Human | LogFormat::Auto => human_layer().boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

fn human_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal;
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
}
