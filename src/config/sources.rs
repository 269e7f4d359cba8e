//! Where configuration comes from: the file (`--config`, `APP_EXECUTOR_CONFIG`, or the default
//! paths) and the `APP_EXECUTOR_<SECTION>__<KEY>` environment overrides; and figment's errors
//! as one line each, naming the key both ways and where the value came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::Serialized;

use super::{ConfigError, Overrides};

/// Prefix of every environment override: `APP_EXECUTOR_DATABASE__POOL_SIZE=32`.
pub const ENV_PREFIX: &str = "APP_EXECUTOR_";
/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "APP_EXECUTOR_CONFIG";
/// Config files tried, in order, when neither `--config` nor `APP_EXECUTOR_CONFIG` is given.
const DEFAULT_CONFIG_PATHS: &[&str] = &["executor.toml", "/etc/app-executor/executor.toml"];

/// The config file to read: the explicit one (which must exist), else the first default path
/// that exists, else none (the defaults alone).
pub(super) fn resolve_config_path(
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

/// Environment overrides (`APP_EXECUTOR_<SECTION>__<KEY>`), except the database URL, which
/// `secrets::database_url` reads as an opaque string. Built from an explicit map rather than
/// figment's `Env` so that tests need not mutate the process environment.
pub(super) struct EnvOverrides(BTreeMap<String, toml::Value>);

impl EnvOverrides {
    pub(super) fn from_env(env: &BTreeMap<String, String>) -> Self {
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
                || key.starts_with("install_token_")
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
/// are strings otherwise, so `APP_EXECUTOR_DATABASE__POOL_SIZE=32` fills an integer. A value in
/// brackets that parses as a TOML array is one (`["a", "b"]`), for the list keys.
fn parse_env_value(value: &str) -> toml::Value {
    if value.trim_start().starts_with('[') {
        if let Ok(mut table) = format!("v = {value}").parse::<toml::Table>() {
            if let Some(array @ toml::Value::Array(_)) = table.remove("v") {
                return array;
            }
        }
    }
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
pub(super) fn describe_figment_error(error: figment::Error) -> String {
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
