//! The `[sandbox]` configuration section: which image runs an app, and the hardening knobs
//! every container gets. `config` resolves the registry password, which never comes from the
//! file, from the environment or systemd credential named here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{parse_byte_size, parse_duration};

/// What the TOML file and the environment may contain under `[sandbox]`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSandbox {
    image: String,
    pull: PullPolicy,
    docker_host: String,
    user: String,
    runtime: String,
    tmp_size: String,
    output_max: String,
    output_max_files: usize,
    output_spares: usize,
    pids_limit: i64,
    nofile: i64,
    app_network: String,
    install_network: String,
    install_timeout: String,
    install_memory: String,
    install_tmp_size: String,
    install_scripts_apps: Vec<String>,
    labels: BTreeMap<String, String>,
    registry_username: String,
    /// Only to refuse it with a message naming the fix: the password never lives in the file.
    #[serde(skip_serializing)]
    registry_password: Option<String>,
    /// Resolved from the environment or credentials by `config`, never from the file.
    #[serde(skip)]
    pub(crate) resolved_registry_password: Option<RegistryPassword>,
}

/// Name of the environment variable holding the registry password.
pub const REGISTRY_PASSWORD_ENV: &str = "APP_EXECUTOR_SANDBOX__REGISTRY_PASSWORD";
/// Name of the systemd credential holding the registry password.
pub const REGISTRY_PASSWORD_CREDENTIAL: &str = "registry-password";

/// The password (or token) for pulling `sandbox.image`: `Debug` never shows it.
#[derive(Clone)]
pub struct RegistryPassword(String);

impl RegistryPassword {
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// For the pull request only. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RegistryPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryPassword(***)")
    }
}

/// The login the engine pulls `sandbox.image` with.
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    pub username: String,
    pub password: RegistryPassword,
}

impl Serialize for RegistryAuth {
    /// As `check` prints it: the user name, and the password only as `***`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({"username": self.username, "password": "***"}).serialize(s)
    }
}

impl Default for RawSandbox {
    fn default() -> Self {
        Self {
            image: "node:{version}-bookworm-slim".into(),
            pull: PullPolicy::IfAbsent,
            docker_host: String::new(),
            user: "1000:1000".into(),
            runtime: String::new(),
            tmp_size: "64MiB".into(),
            output_max: "100MB".into(),
            output_max_files: 1000,
            output_spares: 2,
            pids_limit: 256,
            nofile: 1024,
            app_network: "bridge".into(),
            install_network: "bridge".into(),
            install_timeout: "5m".into(),
            install_memory: "1GiB".into(),
            install_tmp_size: "512MiB".into(),
            install_scripts_apps: Vec::new(),
            labels: BTreeMap::new(),
            registry_username: String::new(),
            registry_password: None,
            resolved_registry_password: None,
        }
    }
}

/// When a missing image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull when the engine does not have the image (progress goes to the log).
    IfAbsent,
    /// Never pull: a missing image fails the run with `image_missing`.
    Never,
}

/// The validated `[sandbox]` section.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxSettings {
    /// Image reference; `{version}` is replaced by the manifest's `runtime.backend.version`.
    pub image: String,
    pub pull: PullPolicy,
    /// Docker endpoint (`unix:///…`); empty = `DOCKER_HOST` or the local socket.
    pub docker_host: String,
    /// `uid:gid` every container runs as; never root.
    pub user: String,
    /// OCI runtime (`runsc` for gVisor); empty = the engine's default.
    pub runtime: String,
    pub tmp_size_bytes: u64,
    pub output_max_bytes: u64,
    pub output_max_files: usize,
    /// Spare `/output` volumes kept ready per runtime image (`output_pool`); 0: each run
    /// starts its own keeper.
    pub output_spares: usize,
    pub pids_limit: i64,
    pub nofile: i64,
    /// Docker network of apps granted the `network` permission (all others get `none`).
    pub app_network: String,
    /// Docker network of the install phase (the package registry must be reachable).
    pub install_network: String,
    #[serde(serialize_with = "human")]
    pub install_timeout: Duration,
    pub install_memory_bytes: u64,
    pub install_tmp_size_bytes: u64,
    /// Apps whose dependency lifecycle scripts (`postinstall`, …) may run during install.
    pub install_scripts_apps: Vec<uuid::Uuid>,
    /// Extra labels on every container (operators' own bookkeeping, tests' cleanup checks).
    pub labels: BTreeMap<String, String>,
    /// The login for pulling `image` from a registry that needs one (`None`: pull anonymously).
    pub registry: Option<RegistryAuth>,
}

/// `"uid:gid"` as numbers.
fn parse_user(user: &str) -> Option<(u32, u32)> {
    let (u, g) = user.split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

fn human<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

impl SandboxSettings {
    /// The image for a Node.js version from the manifest.
    pub fn image_for(&self, node_version: &str) -> String {
        self.image.replace("{version}", node_version)
    }

    /// `user` as numbers (validated at load: numeric and not root).
    pub fn user_ids(&self) -> (u32, u32) {
        parse_user(&self.user).unwrap_or((65534, 65534))
    }

    pub(crate) fn from_raw(raw: &RawSandbox, violations: &mut Vec<String>) -> Option<Self> {
        let before = violations.len();
        let mut size = |key: &str, value: &str| {
            parse_byte_size(&format!("sandbox.{key}"), value)
                .and_then(|b| match b {
                    0 => Err(format!(
                        "sandbox.{key} = {value:?}: must be greater than zero"
                    )),
                    b => Ok(b),
                })
                .map_err(|e| violations.push(e))
                .unwrap_or_default()
        };
        let tmp_size_bytes = size("tmp_size", &raw.tmp_size);
        let output_max_bytes = size("output_max", &raw.output_max);
        let install_memory_bytes = size("install_memory", &raw.install_memory);
        let install_tmp_size_bytes = size("install_tmp_size", &raw.install_tmp_size);
        let install_timeout =
            parse_duration("sandbox.install_timeout", &raw.install_timeout, violations);
        if raw.image.trim().is_empty() {
            violations.push(
                "sandbox.image = \"\": name an image, e.g. \"node:{version}-bookworm-slim\"".into(),
            );
        }
        match parse_user(&raw.user) {
            Some((0, _)) | Some((_, 0)) => violations.push(format!(
                "sandbox.user = {:?}: apps never run as root; use an unprivileged uid:gid such as \"1000:1000\"",
                raw.user
            )),
            None => violations.push(format!(
                "sandbox.user = {:?}: expected numeric \"uid:gid\", e.g. \"1000:1000\"",
                raw.user
            )),
            Some(_) => {}
        }
        for (key, value) in [("pids_limit", raw.pids_limit), ("nofile", raw.nofile)] {
            if value < 16 {
                violations.push(format!("sandbox.{key} = {value}: must be at least 16"));
            }
        }
        if raw.output_max_files == 0 {
            violations.push("sandbox.output_max_files = 0: must be at least 1".into());
        }
        for (key, value) in [
            ("app_network", &raw.app_network),
            ("install_network", &raw.install_network),
        ] {
            if matches!(value.as_str(), "host" | "") || value.starts_with("container:") {
                violations.push(format!(
                    "sandbox.{key} = {value:?}: must be a Docker network such as \"bridge\" or \"none\" (host and container networking would expose the host)"
                ));
            }
        }
        let mut install_scripts_apps = Vec::new();
        for app in &raw.install_scripts_apps {
            match app.parse() {
                Ok(id) => install_scripts_apps.push(id),
                Err(_) => violations.push(format!(
                    "sandbox.install_scripts_apps: {app:?} is not an app id (UUID)"
                )),
            }
        }
        if raw.registry_password.is_some() {
            violations.push(format!(
                "sandbox.registry_password: the registry password must not be in the config file; remove it and set {REGISTRY_PASSWORD_ENV} or the systemd credential {REGISTRY_PASSWORD_CREDENTIAL}"
            ));
        }
        let username = raw.registry_username.trim();
        let registry = match (username, &raw.resolved_registry_password) {
            ("", None) => None,
            ("", Some(_)) => {
                violations.push(format!(
                    "sandbox.registry_username is empty but a registry password is set ({REGISTRY_PASSWORD_ENV} or the credential {REGISTRY_PASSWORD_CREDENTIAL}); set the user name the password belongs to"
                ));
                None
            }
            (_, None) => {
                violations.push(format!(
                    "sandbox.registry_username = {username:?} has no password; set {REGISTRY_PASSWORD_ENV} or the systemd credential {REGISTRY_PASSWORD_CREDENTIAL}"
                ));
                None
            }
            (username, Some(password)) => Some(RegistryAuth {
                username: username.to_owned(),
                password: password.clone(),
            }),
        };
        if violations.len() > before {
            return None;
        }
        Some(Self {
            registry,
            image: raw.image.clone(),
            pull: raw.pull,
            docker_host: raw.docker_host.clone(),
            user: raw.user.clone(),
            runtime: raw.runtime.clone(),
            tmp_size_bytes,
            output_max_bytes,
            output_max_files: raw.output_max_files,
            output_spares: raw.output_spares,
            pids_limit: raw.pids_limit,
            nofile: raw.nofile,
            app_network: raw.app_network.clone(),
            install_network: raw.install_network.clone(),
            install_timeout: install_timeout?,
            install_memory_bytes,
            install_tmp_size_bytes,
            install_scripts_apps,
            labels: raw.labels.clone(),
        })
    }
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self::from_raw(&RawSandbox::default(), &mut Vec::new()).expect("the defaults are valid")
    }
}
