//! The `[database]` configuration section, and the database URL, whose password is never printed.
//! The URL itself never comes from this section alone: `config` resolves it from
//! `--database-url`, the environment, systemd credentials or (without a password) the file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{format_duration, parse_duration};

/// Name of the systemd credential (`LoadCredential=database-url:…`) holding the database URL.
pub const DATABASE_URL_CREDENTIAL: &str = "database-url";

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `None` when no URL was configured anywhere (the embedded default of `demo`).
    pub url: Option<DatabaseUrl>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub notify_namespace: String,
}

/// What the TOML file and the environment may contain under `[database]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDatabase {
    /// Read by `config`, which refuses it when it holds a password.
    pub(crate) url: Option<String>,
    pool_size: usize,
    connect_timeout: String,
    notify_namespace: String,
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

impl DatabaseSettings {
    /// Validates `[database]` with the URL `config` resolved; `None` when a violation was
    /// recorded.
    pub fn from_raw(
        raw: &RawDatabase,
        url: Option<DatabaseUrl>,
        violations: &mut Vec<String>,
    ) -> Option<Self> {
        let before = violations.len();
        let connect_timeout =
            parse_duration("database.connect_timeout", &raw.connect_timeout, violations);
        if raw.pool_size == 0 {
            violations.push("database.pool_size = 0: must be at least 1".to_owned());
        }
        let ns = &raw.notify_namespace;
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
        (violations.len() == before).then(|| Self {
            url,
            pool_size: raw.pool_size,
            connect_timeout: connect_timeout.unwrap_or_default(),
            notify_namespace: raw.notify_namespace.clone(),
        })
    }

    /// As `check` prints it: the URL without its password.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url.as_ref().map(DatabaseUrl::redacted),
            "pool_size": self.pool_size,
            "connect_timeout": format_duration(self.connect_timeout),
            "notify_namespace": self.notify_namespace,
        })
    }
}

/// A PostgreSQL URL whose password is never printed: `Display` and `Debug` redact it.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn parse(raw: &str, source: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(raw).map_err(|e| {
            format!(
                "database URL from {source} is not a valid URL ({e}); expected postgres://user:password@host:5432/dbname"
            )
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "database URL from {source} has scheme {:?}; expected postgres:// or postgresql://",
                parsed.scheme()
            ));
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
