//! The `[alerts]` configuration section: whether events go out as `NOTIFY`, the optional
//! webhook and its retry policy. `config` resolves the signing secret, which never comes from
//! the file, from the environment or systemd credential named here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::parse_duration;

/// Name of the environment variable holding the webhook signing secret.
pub const SECRET_ENV: &str = "APP_EXECUTOR_ALERTS__WEBHOOK_SECRET";
/// Name of the systemd credential holding the webhook signing secret.
pub const SECRET_CREDENTIAL: &str = "alerts-webhook-secret";

/// What the TOML file and the environment may contain under `[alerts]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAlerts {
    notify: bool,
    webhook_url: String,
    webhook_timeout: String,
    max_attempts: u32,
    retry_backoff: String,
    queue_capacity: usize,
    memory_threshold: f64,
    output_threshold: f64,
    logs_threshold: f64,
    cpu_throttle_threshold: f64,
    /// Only to refuse it with a message naming the fix: the secret never lives in the file.
    #[serde(skip_serializing)]
    webhook_secret: Option<String>,
    /// Resolved from the environment or credentials by `config`, never from the file.
    #[serde(skip)]
    pub(crate) resolved_secret: Option<WebhookSecret>,
}

impl Default for RawAlerts {
    fn default() -> Self {
        Self {
            notify: true,
            webhook_url: String::new(),
            webhook_timeout: "10s".into(),
            max_attempts: 5,
            retry_backoff: "1s".into(),
            queue_capacity: 10_000,
            memory_threshold: 0.9,
            output_threshold: 0.9,
            logs_threshold: 0.9,
            cpu_throttle_threshold: 0.5,
            webhook_secret: None,
            resolved_secret: None,
        }
    }
}

/// The HMAC key webhook bodies are signed with: `Debug` never shows it.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// For computing signatures only. Never log this.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The secret as text, for the Standard Webhooks key (`whsec_…` decoded). Never log this.
    pub fn expose_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// The validated `[alerts]` section.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// Send each event as `NOTIFY <namespace>_events`.
    pub notify: bool,
    /// `None` when `webhook_url` is empty.
    pub webhook: Option<WebhookSettings>,
    /// Webhook deliveries the outbox (`app_exec.alert_outbox`, shared by all daemons) holds;
    /// beyond it a new event skips the webhook with a warning, so a receiver that stays down
    /// cannot grow the table without bound.
    pub queue_capacity: usize,
    /// When a run's use of a resource raises a `resource_threshold` event.
    pub thresholds: Thresholds,
}

/// Fractions of a run's limits at or above which its ending raises `resource_threshold`
/// (`[alerts] memory_threshold`, ...); `1.0` or more turns one off.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Thresholds {
    /// Peak memory of the limit.
    pub memory: f64,
    /// Bytes or files in `/output` of `sandbox.output_max` / `output_max_files`.
    pub output: f64,
    /// Bytes a stream wrote of `logs.stream_cap`.
    pub logs: f64,
    /// CFS periods in which the CPU limit throttled the app, of the periods it ran.
    pub cpu_throttled: f64,
}

/// Where and how events are POSTed. `Debug` shows the URL redacted.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: url::Url,
    /// Signs each body (`X-App-Executor-Signature: sha256=<hex>`) when set.
    pub secret: Option<WebhookSecret>,
    /// Per request, connection included.
    pub timeout: Duration,
    /// Attempts per event, the first included (5xx, 429 and connection errors are retried),
    /// whichever daemons make them.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles per attempt, capped at [`MAX_BACKOFF`].
    pub retry_backoff: Duration,
}

/// Longest wait between two attempts of one delivery.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.redacted_url())
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .finish()
    }
}

impl WebhookSettings {
    /// The URL as it may be printed or logged: scheme, host and port only (a webhook URL's path
    /// often carries a token).
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

fn redact(url: &url::Url) -> String {
    let origin = url.origin().ascii_serialization();
    if url.path() == "/" && url.query().is_none() {
        format!("{origin}/")
    } else {
        format!("{origin}/***")
    }
}

impl AlertSettings {
    /// Validates the raw section, recording one violation per bad key.
    pub(crate) fn from_raw(raw: &RawAlerts, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        if raw.webhook_secret.is_some() {
            violations.push(format!(
                "alerts.webhook_secret: the webhook secret must not be in the config file; remove it and set {SECRET_ENV} or the systemd credential {SECRET_CREDENTIAL}"
            ));
        }
        let timeout = parse_duration("alerts.webhook_timeout", &raw.webhook_timeout, violations);
        let retry_backoff = parse_duration("alerts.retry_backoff", &raw.retry_backoff, violations);
        if !(1..=20).contains(&raw.max_attempts) {
            violations.push(format!(
                "alerts.max_attempts = {}: must be between 1 and 20",
                raw.max_attempts
            ));
        }
        if !(1..=1_000_000).contains(&raw.queue_capacity) {
            violations.push(format!(
                "alerts.queue_capacity = {}: must be between 1 and 1000000",
                raw.queue_capacity
            ));
        }
        for (key, value) in [
            ("memory_threshold", raw.memory_threshold),
            ("output_threshold", raw.output_threshold),
            ("logs_threshold", raw.logs_threshold),
            ("cpu_throttle_threshold", raw.cpu_throttle_threshold),
        ] {
            if !(value.is_finite() && value > 0.0) {
                violations.push(format!(
                    "alerts.{key} = {value}: must be a fraction above 0, e.g. 0.9 (1.0 or more turns it off)"
                ));
            }
        }
        let url = match raw.webhook_url.trim() {
            "" => None,
            text => match url::Url::parse(text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
                Ok(url) => {
                    violations.push(format!(
                        "alerts.webhook_url = {:?}: must be an http:// or https:// URL with a host, e.g. \"https://hooks.example.com/app-executor\" (or \"\" for no webhook)",
                        redact(&url)
                    ));
                    None
                }
                Err(e) => {
                    violations.push(format!(
                        "alerts.webhook_url: not a URL ({e}); use e.g. \"https://hooks.example.com/app-executor\", or \"\" for no webhook"
                    ));
                    None
                }
            },
        };
        if violations.len() != before {
            return None;
        }
        Some(Self {
            notify: raw.notify,
            webhook: url.map(|url| WebhookSettings {
                url,
                secret: raw.resolved_secret.clone(),
                timeout: timeout.unwrap_or_default(),
                max_attempts: raw.max_attempts,
                retry_backoff: retry_backoff.unwrap_or_default(),
            }),
            queue_capacity: raw.queue_capacity,
            thresholds: Thresholds {
                memory: raw.memory_threshold,
                output: raw.output_threshold,
                logs: raw.logs_threshold,
                cpu_throttled: raw.cpu_throttle_threshold,
            },
        })
    }

    /// The section as `check` prints it: the secret only as "set", the URL without its path.
    pub fn redacted_json(&self) -> serde_json::Value {
        let webhook = self.webhook.as_ref();
        serde_json::json!({
            "notify": self.notify,
            "webhook_url": webhook.map(WebhookSettings::redacted_url).unwrap_or_default(),
            "webhook_secret": webhook.and_then(|w| w.secret.as_ref()).map(|_| "***"),
            "thresholds": self.thresholds,
            "webhook_timeout": webhook.map(|w| humantime::format_duration(w.timeout).to_string()),
            "max_attempts": webhook.map(|w| w.max_attempts),
            "retry_backoff": webhook.map(|w| humantime::format_duration(w.retry_backoff).to_string()),
            "queue_capacity": self.queue_capacity,
        })
    }
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self::from_raw(&RawAlerts::default(), &mut Vec::new()).expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str) -> RawAlerts {
        RawAlerts {
            webhook_url: url.into(),
            ..RawAlerts::default()
        }
    }

    #[test]
    fn defaults_notify_and_have_no_webhook() {
        let settings = AlertSettings::default();
        assert!(settings.notify);
        assert!(settings.webhook.is_none());
    }

    #[test]
    fn webhook_urls_must_be_http_and_errors_name_the_key() {
        for bad in [
            "ftp://example.com/x",
            "not a url",
            "file:///etc/passwd",
            "mailto:a@b",
        ] {
            let mut violations = Vec::new();
            assert!(AlertSettings::from_raw(&raw(bad), &mut violations).is_none());
            assert!(
                violations[0].starts_with("alerts.webhook_url"),
                "{violations:?}"
            );
        }
        let settings =
            AlertSettings::from_raw(&raw("https://h.example/hook?token=s3"), &mut Vec::new())
                .unwrap();
        let webhook = settings.webhook.unwrap();
        assert_eq!(webhook.max_attempts, 5);
        assert_eq!(webhook.redacted_url(), "https://h.example/***");
    }

    #[test]
    fn the_secret_is_never_printed() {
        let mut raw = raw("http://127.0.0.1:9/");
        raw.resolved_secret = Some(WebhookSecret::new("hunter2"));
        let settings = AlertSettings::from_raw(&raw, &mut Vec::new()).unwrap();
        let printed = format!("{settings:?} {}", settings.redacted_json());
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("***"), "{printed}");
    }
}
