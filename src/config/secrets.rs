//! Secrets: the database URL, the storage service key, the alerts webhook secret and the
//! registry password. None of them is read from the config file; each comes from the command
//! line (the database URL only), the environment or a systemd credential
//! (`LoadCredential=<name>:<file>`, read from `$CREDENTIALS_DIRECTORY`). The names are owned by
//! the component that uses the secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{ConfigError, Overrides, ENV_PREFIX};
use crate::alerts::settings::{SECRET_CREDENTIAL, SECRET_ENV};
use crate::alerts::WebhookSecret;
use crate::db::settings::DATABASE_URL_CREDENTIAL;
use crate::db::DatabaseUrl;
use crate::sandbox::settings::{REGISTRY_PASSWORD_CREDENTIAL, REGISTRY_PASSWORD_ENV};
use crate::sandbox::RegistryPassword;
use crate::storage::settings::{SERVICE_KEY_CREDENTIAL, SERVICE_KEY_ENV, SUPABASE_SERVICE_KEY_ENV};
use crate::storage::ServiceKey;

/// The storage service key, from `APP_EXECUTOR_STORAGE__SERVICE_KEY`,
/// `SUPABASE_SERVICE_ROLE_KEY` or the systemd credential `storage-service-key`, in that order.
pub(super) fn service_key(
    env: &BTreeMap<String, String>,
) -> Result<Option<ServiceKey>, ConfigError> {
    let key = resolve_secret(
        env,
        &[SERVICE_KEY_ENV, SUPABASE_SERVICE_KEY_ENV],
        SERVICE_KEY_CREDENTIAL,
    )?;
    Ok(key.map(ServiceKey::new))
}

/// The webhook signing secret, from `APP_EXECUTOR_ALERTS__WEBHOOK_SECRET` or the systemd
/// credential `alerts-webhook-secret`, in that order.
pub(super) fn webhook_secret(
    env: &BTreeMap<String, String>,
) -> Result<Option<WebhookSecret>, ConfigError> {
    Ok(resolve_secret(env, &[SECRET_ENV], SECRET_CREDENTIAL)?.map(WebhookSecret::new))
}

/// The password for pulling `sandbox.image`, from `APP_EXECUTOR_SANDBOX__REGISTRY_PASSWORD` or
/// the systemd credential `registry-password`, in that order.
pub(super) fn registry_password(
    env: &BTreeMap<String, String>,
) -> Result<Option<RegistryPassword>, ConfigError> {
    Ok(
        resolve_secret(env, &[REGISTRY_PASSWORD_ENV], REGISTRY_PASSWORD_CREDENTIAL)?
            .map(RegistryPassword::new),
    )
}

/// The install phase's registry tokens: for each `[install.tokens]` entry (registry URL ->
/// credential name), the token from `APP_EXECUTOR_INSTALL_TOKEN_<NAME>` or the systemd
/// credential `<name>`. Entries without one are left out; `[install]` validation names them.
pub(super) fn install_tokens(
    env: &BTreeMap<String, String>,
    tokens: &BTreeMap<String, String>,
) -> Result<Vec<(String, crate::sandbox::registry::InstallToken)>, ConfigError> {
    let mut found = Vec::new();
    for (url, name) in tokens {
        let var = crate::sandbox::registry::token_env(name);
        if let Some(token) = resolve_secret(env, &[var.as_str()], name)? {
            found.push((
                url.clone(),
                crate::sandbox::registry::InstallToken::new(token),
            ));
        }
    }
    Ok(found)
}

/// A secret from the first non-empty environment variable of `names`, else from the systemd
/// credential `credential` (a file in `$CREDENTIALS_DIRECTORY`); trimmed. Never from the file.
fn resolve_secret(
    env: &BTreeMap<String, String>,
    names: &[&str],
    credential: &str,
) -> Result<Option<String>, ConfigError> {
    Ok(find_secret(env, names, credential)?.map(|(secret, _source)| secret))
}

/// [`resolve_secret`] with where the secret came from (the variable's name, or "the systemd
/// credential <name>"), for messages about its value.
fn find_secret(
    env: &BTreeMap<String, String>,
    names: &[&str],
    credential: &str,
) -> Result<Option<(String, String)>, ConfigError> {
    for name in names {
        if let Some(secret) = env.get(*name).filter(|v| !v.trim().is_empty()) {
            return Ok(Some((secret.trim().to_owned(), (*name).to_owned())));
        }
    }
    if let Some(dir) = env.get("CREDENTIALS_DIRECTORY") {
        let path = Path::new(dir).join(credential);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::Invalid(format!("cannot read credential {}: {e}", path.display()))
            })?;
            let source = format!("the systemd credential {credential}");
            return Ok(Some((text.trim().to_owned(), source)));
        }
    }
    Ok(None)
}

/// The database URL, from the first source that has one: `--database-url`,
/// `APP_EXECUTOR_DATABASE__URL`, `DATABASE_URL`, the systemd credential `database-url`, then
/// `database.url` in the file — which must not contain a password.
pub(super) fn database_url(
    overrides: &Overrides,
    env: &BTreeMap<String, String>,
    from_file: Option<&str>,
    file: &Option<PathBuf>,
) -> Result<Option<DatabaseUrl>, ConfigError> {
    if let Some(url) = &overrides.database_url {
        return DatabaseUrl::parse(url, "--database-url")
            .map(Some)
            .map_err(ConfigError::Invalid);
    }
    let env_name = format!("{ENV_PREFIX}DATABASE__URL");
    let found = find_secret(
        env,
        &[env_name.as_str(), "DATABASE_URL"],
        DATABASE_URL_CREDENTIAL,
    )?;
    if let Some((url, source)) = found {
        return DatabaseUrl::parse(&url, &source)
            .map(Some)
            .map_err(ConfigError::Invalid);
    }
    if let Some(url) = from_file {
        let file = file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let url = DatabaseUrl::parse(url, &format!("database.url in {file}"))
            .map_err(ConfigError::Invalid)?;
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
