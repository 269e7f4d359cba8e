//! The `[sandbox]` configuration section: which image runs an app, and the hardening knobs
//! every container gets. Parsed here (not in `config.rs`) so the section reads next to the
//! code that uses it; `config.rs` only embeds it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{parse_byte_size, parse_duration};

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
    pids_limit: i64,
    nofile: i64,
    app_network: String,
    install_network: String,
    install_timeout: String,
    install_memory: String,
    install_tmp_size: String,
    install_scripts_apps: Vec<String>,
    labels: BTreeMap<String, String>,
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
            pids_limit: 256,
            nofile: 1024,
            app_network: "bridge".into(),
            install_network: "bridge".into(),
            install_timeout: "5m".into(),
            install_memory: "1GiB".into(),
            install_tmp_size: "512MiB".into(),
            install_scripts_apps: Vec::new(),
            labels: BTreeMap::new(),
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
}

fn human<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

impl SandboxSettings {
    /// The image for a Node.js version from the manifest.
    pub fn image_for(&self, node_version: &str) -> String {
        self.image.replace("{version}", node_version)
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
        let valid_user = raw
            .user
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)));
        match valid_user {
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
        if violations.len() > before {
            return None;
        }
        Some(Self {
            image: raw.image.clone(),
            pull: raw.pull,
            docker_host: raw.docker_host.clone(),
            user: raw.user.clone(),
            runtime: raw.runtime.clone(),
            tmp_size_bytes,
            output_max_bytes,
            output_max_files: raw.output_max_files,
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
