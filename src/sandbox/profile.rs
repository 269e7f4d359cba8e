//! The hardened container profile (DESIGN §7), as data: what a container of either phase is
//! allowed. Pure, so every field can be unit-tested and the integration test can compare a real
//! container's inspected config against the same expectations.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum,
};

use super::SandboxSettings;

/// Label every container of this daemon carries (value `true`), for leftover cleanup.
pub const LABEL_MANAGED: &str = "app-executor.managed";
pub const LABEL_EXECUTOR: &str = "app-executor.executor";
pub const LABEL_RUN: &str = "app-executor.run";
pub const LABEL_ATTEMPT: &str = "app-executor.attempt";
/// `install` or `run`.
pub const LABEL_PHASE: &str = "app-executor.phase";

/// A host directory mounted into the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: &'static str,
    pub read_only: bool,
}

/// A named engine volume mounted read-write: the run's `/output` filesystem (see
/// `engine::output_volume`). `nocopy`: the engine must not copy the image's directory (and its
/// owner and mode) into the fresh volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeMount {
    pub volume: String,
    pub container: &'static str,
}

/// One container to create: the phase-specific parts; everything else comes from the profile.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name (unique; names the run, attempt and phase for `docker ps`).
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub working_dir: &'static str,
    /// `NAME=value`, already allow-listed by the caller.
    pub env: Vec<String>,
    pub mounts: Vec<Mount>,
    pub volumes: Vec<VolumeMount>,
    pub memory_bytes: u64,
    pub cpu: f64,
    pub tmp_size_bytes: u64,
    /// Docker network mode: `none` unless the phase or the app's permission needs one.
    pub network: String,
    /// Namespaced kernel settings (the install's forwarder binds registry ports below 1024 on
    /// the container's own loopback).
    pub sysctls: HashMap<String, String>,
    pub labels: HashMap<String, String>,
}

/// The create request for `spec` under the hardened profile.
pub fn container_config(spec: &ContainerSpec, settings: &SandboxSettings) -> ContainerCreateBody {
    let memory = i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX);
    let binds = spec
        .mounts
        .iter()
        .map(|m| {
            format!(
                "{}:{}:{}",
                m.host.display(),
                m.container,
                if m.read_only { "ro" } else { "rw" }
            )
        })
        .chain(
            spec.volumes
                .iter()
                .map(|v| format!("{}:{}:rw,nocopy", v.volume, v.container)),
        )
        .collect();
    let tmpfs = HashMap::from([(
        "/tmp".to_owned(),
        format!(
            "rw,noexec,nosuid,nodev,size={},mode=1777",
            spec.tmp_size_bytes
        ),
    )]);
    let mut labels = spec.labels.clone();
    for (k, v) in &settings.labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    labels.insert(LABEL_MANAGED.into(), "true".into());
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.cmd.clone()),
        // The image's entrypoint (if any) must not wrap the command.
        entrypoint: Some(Vec::new()),
        working_dir: Some(spec.working_dir.into()),
        user: Some(settings.user.clone()),
        env: Some(spec.env.clone()),
        labels: Some(labels),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        attach_stdin: Some(false),
        open_stdin: Some(false),
        tty: Some(false),
        network_disabled: Some(spec.network == "none"),
        host_config: Some(HostConfig {
            binds: Some(binds),
            tmpfs: Some(tmpfs),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            privileged: Some(false),
            pids_limit: Some(settings.pids_limit),
            memory: Some(memory),
            // Swap equal to memory: no swap on top of the limit.
            memory_swap: Some(memory),
            nano_cpus: Some((spec.cpu * 1e9).round() as i64),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(settings.nofile),
                hard: Some(settings.nofile),
            }]),
            init: Some(true),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            network_mode: Some(spec.network.clone()),
            sysctls: (!spec.sysctls.is_empty()).then(|| spec.sysctls.clone()),
            ipc_mode: Some("private".into()),
            // The daemon reads output through the attach stream and spools it itself; the
            // engine keeps no second copy on disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            runtime: (!settings.runtime.is_empty()).then(|| settings.runtime.clone()),
            auto_remove: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "t".into(),
            image: "node:20".into(),
            cmd: vec!["node".into(), "index.js".into()],
            working_dir: "/app",
            env: vec!["APP_ID=x".into()],
            mounts: vec![Mount {
                host: "/var/lib/app-executor/runs/r-1/app".into(),
                container: "/app",
                read_only: true,
            }],
            volumes: vec![VolumeMount {
                volume: "app-executor-r-1-output".into(),
                container: "/output",
            }],
            memory_bytes: 256 << 20,
            cpu: 0.5,
            tmp_size_bytes: 64 << 20,
            network: "none".into(),
            sysctls: HashMap::new(),
            labels: HashMap::from([(LABEL_RUN.to_owned(), "r".to_owned())]),
        }
    }

    #[test]
    fn every_container_gets_the_hardened_profile() {
        let config = container_config(&spec(), &SandboxSettings::default());
        let host = config.host_config.unwrap();
        assert_eq!(config.user.as_deref(), Some("1000:1000"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".to_owned()])
        );
        assert_eq!(host.memory, Some(256 << 20));
        assert_eq!(host.memory_swap, host.memory);
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(256));
        assert_eq!(host.init, Some(true));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(config.network_disabled, Some(true));
        assert_eq!(
            host.binds.unwrap(),
            vec![
                "/var/lib/app-executor/runs/r-1/app:/app:ro".to_owned(),
                "app-executor-r-1-output:/output:rw,nocopy".to_owned()
            ]
        );
        assert!(host.tmpfs.unwrap()["/tmp"].contains("size=67108864"));
        assert_eq!(config.labels.unwrap()[LABEL_MANAGED], "true");
    }
}
