//! The `[webhooks]` configuration section: whether this daemon listens for webhook requests,
//! where, the URL senders are given, and the caps on bodies, `?wait` and a company's pending
//! runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{bounded_size, format_duration, parse_duration};

/// The longest `?wait` accepted at all: beyond it, proxies and clients time out anyway.
pub const MAX_WAIT_CEILING: Duration = Duration::from_secs(300);

/// `[webhooks]`, validated.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Where `POST /hooks/{id}` is served; `None` when off (the default). Any address: the
    /// listener is meant to sit behind a TLS-terminating proxy, and every request is
    /// authenticated by its hook's secret.
    pub listen: Option<std::net::SocketAddr>,
    /// The URL senders reach the listener at (e.g. `https://hooks.example.com`), printed by
    /// `webhook create`; empty prints the path only.
    pub public_url: String,
    /// Longest `?wait=` honoured; a longer one is cut to it.
    pub max_wait: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body: u64,
    /// `pending` runs a company may have before webhook requests for it are refused (429).
    pub company_pending_cap: i64,
}

/// What the TOML file and the environment may contain under `[webhooks]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhooks {
    listen: String,
    public_url: String,
    max_wait: String,
    max_body: String,
    company_pending_cap: i64,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        Self {
            listen: String::new(),
            public_url: String::new(),
            max_wait: "60s".into(),
            max_body: "256KiB".into(),
            company_pending_cap: 1000,
        }
    }
}

impl WebhookSettings {
    /// Validates `[webhooks]`; `None` when a violation was recorded.
    pub fn from_raw(raw: &RawWebhooks, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        let listen = match raw.listen.trim() {
            "" => None,
            text => match text.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    violations.push(format!(
                        "webhooks.listen = {text:?}: not an address and port; use e.g. \"127.0.0.1:9470\" (behind your TLS proxy), or \"\" to turn the listener off"
                    ));
                    None
                }
            },
        };
        let public_url = raw.public_url.trim().trim_end_matches('/').to_owned();
        if !public_url.is_empty() && url::Url::parse(&public_url).is_err() {
            violations.push(format!(
                "webhooks.public_url = {:?}: not a URL; use e.g. \"https://hooks.example.com\"",
                raw.public_url
            ));
        }
        let max_wait = parse_duration("webhooks.max_wait", &raw.max_wait, violations);
        if max_wait.is_some_and(|w| w > MAX_WAIT_CEILING) {
            violations.push(format!(
                "webhooks.max_wait = {:?}: at most {}",
                raw.max_wait,
                format_duration(MAX_WAIT_CEILING)
            ));
        }
        let max_body = bounded_size(
            "webhooks",
            "max_body",
            &raw.max_body,
            (1024, 16 << 20),
            violations,
        );
        if raw.company_pending_cap < 1 {
            violations.push(format!(
                "webhooks.company_pending_cap = {}: must be at least 1",
                raw.company_pending_cap
            ));
        }
        (violations.len() == before).then(|| Self {
            listen,
            public_url,
            max_wait: max_wait.unwrap_or_default(),
            max_body,
            company_pending_cap: raw.company_pending_cap,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.map(|a| a.to_string()).unwrap_or_default(),
            "public_url": self.public_url,
            "max_wait": format_duration(self.max_wait),
            "max_body": self.max_body,
            "company_pending_cap": self.company_pending_cap,
        })
    }

    /// The URL (or path) a hook is reached at.
    pub fn hook_url(&self, hook: uuid::Uuid) -> String {
        format!("{}/hooks/{hook}", self.public_url)
    }
}
