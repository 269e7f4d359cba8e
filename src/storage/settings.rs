//! The `[storage]` configuration section: which backend `app::storage` builds, its URL, local
//! root, timeouts and retries. The service key never comes from the file: `config` resolves it
//! from the environment or systemd credentials named here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{format_duration, parse_duration};

/// Environment variables holding the service key, in the order they are tried.
pub const SERVICE_KEY_ENV: &str = "APP_EXECUTOR_STORAGE__SERVICE_KEY";
/// The Supabase CLI's and the platform's usual name for the same key.
pub const SUPABASE_SERVICE_KEY_ENV: &str = "SUPABASE_SERVICE_ROLE_KEY";
/// Name of the systemd credential holding the Supabase service key.
pub const SERVICE_KEY_CREDENTIAL: &str = "storage-service-key";

/// What to do when the service key is missing, for the commands that use storage.
pub fn missing_service_key_fix() -> String {
    format!(
        "storage.backend = \"supabase\" needs the service key: set {SERVICE_KEY_ENV} or {SUPABASE_SERVICE_KEY_ENV}, or the systemd credential {SERVICE_KEY_CREDENTIAL}"
    )
}

/// `[storage]`: which backend `app::storage` builds. The service key never comes from the file.
#[derive(Debug, Clone)]
pub struct StorageSettings {
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

/// What the TOML file and the environment may contain under `[storage]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    backend: StorageBackend,
    url: Option<String>,
    local_root: Option<PathBuf>,
    connect_timeout: String,
    read_timeout: String,
    max_retries: u32,
    /// Only to refuse it with a message naming the fix: the key is a secret.
    #[serde(skip_serializing)]
    service_key: Option<String>,
    /// Resolved from the environment or credentials by `config`, never from the file.
    #[serde(skip)]
    pub(crate) resolved_key: Option<ServiceKey>,
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

impl StorageSettings {
    /// Validates `[storage]`; `None` when a violation was recorded. `state_dir` is the
    /// default parent of `local_root`.
    pub fn from_raw(
        raw: &RawStorage,
        state_dir: &Path,
        violations: &mut Vec<String>,
    ) -> Option<Self> {
        let before = violations.len();
        let connect_timeout =
            parse_duration("storage.connect_timeout", &raw.connect_timeout, violations);
        let read_timeout = parse_duration("storage.read_timeout", &raw.read_timeout, violations);
        if raw.service_key.is_some() {
            violations.push(format!(
                "storage.service_key: the service key is a secret and must not be in the config file; remove it and set {SERVICE_KEY_ENV} or SUPABASE_SERVICE_ROLE_KEY, or the systemd credential {SERVICE_KEY_CREDENTIAL}"
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
        (violations.len() == before).then(|| Self {
            backend: raw.backend,
            url,
            service_key: raw.resolved_key.clone(),
            local_root,
            connect_timeout: connect_timeout.unwrap_or_default(),
            read_timeout: read_timeout.unwrap_or_default(),
            max_retries: raw.max_retries,
        })
    }

    /// As `check` prints it: the service key only as `***`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": self.backend,
            "url": self.url.as_ref().map(url::Url::as_str),
            "service_key": self.service_key.as_ref().map(|_| "***"),
            "local_root": self.local_root.display().to_string(),
            "connect_timeout": format_duration(self.connect_timeout),
            "read_timeout": format_duration(self.read_timeout),
            "max_retries": self.max_retries,
        })
    }
}
