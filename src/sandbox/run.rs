//! The run container: the app's entrypoint under its limits, with its files, dependencies,
//! input and output mounted, an environment built from an allow-list only, and the labels the
//! orphan sweep reads. The hardening itself is the [`super::profile`] every container gets.

use std::collections::HashMap;
use std::path::Path;

use super::engine::output_volume::OUTPUT_DIR;
use super::install::Dependencies;
use super::profile::{
    ContainerSpec, Mount, VolumeMount, LABEL_ATTEMPT, LABEL_EXECUTOR, LABEL_PHASE, LABEL_RUN,
};
use super::SandboxSettings;
use crate::artifact::manifest::PermissionType;
use crate::artifact::resolve::PreparedApp;
use crate::model::ClaimedRun;

/// Where the app's files, dependencies and outputs appear inside a container.
const APP_DIR: &str = "/app";
const INPUT_DIR: &str = "/input";

/// What the run container is made of.
pub struct RunRequest<'a> {
    pub run: &'a ClaimedRun,
    pub app: &'a PreparedApp,
    pub image: &'a str,
    pub entrypoint: &'a str,
    /// The attempt's directory: `input/` is created in it.
    pub run_dir: &'a Path,
    /// The attempt's `/output` volume.
    pub output: VolumeMount,
    /// The installed `node_modules`, mounted read-only at `/app/node_modules`.
    pub dependencies: Option<&'a Dependencies>,
}

/// Prepares the attempt's `input/` directory and returns the run container's spec.
pub async fn prepare(
    settings: &SandboxSettings,
    executor_id: &str,
    request: &RunRequest<'_>,
) -> std::io::Result<ContainerSpec> {
    let RunRequest {
        run,
        app,
        image,
        entrypoint,
        run_dir,
        dependencies,
        ref output,
    } = *request;
    let input = run_dir.join("input");
    tokio::fs::create_dir_all(&input).await?;
    // Only the daemon's user may enter the run directory on the host (the app's files, its
    // input, the copy of its outputs); the container sees its mounts whatever their host
    // parents allow.
    {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700)).await?;
    }
    let input_json = serde_json::to_vec(&run.input_data).expect("JSON values serialise");
    tokio::fs::write(input.join("input.json"), &input_json).await?;
    let mut mounts = vec![
        Mount {
            host: app.dir.clone(),
            container: APP_DIR,
            read_only: true,
        },
        Mount {
            host: input,
            container: INPUT_DIR,
            read_only: true,
        },
    ];
    if let Some(deps) = dependencies {
        // The mount point must exist in the (read-only) app directory.
        tokio::fs::create_dir_all(app.dir.join("node_modules")).await?;
        mounts.push(Mount {
            host: deps.node_modules.clone(),
            container: "/app/node_modules",
            read_only: true,
        });
    }
    let network_granted = app
        .granted
        .iter()
        .any(|(kind, _)| *kind == PermissionType::Network);
    Ok(ContainerSpec {
        name: container_name(run.id, run.attempt, "run"),
        image: image.to_owned(),
        cmd: vec!["node".into(), entrypoint.to_owned()],
        working_dir: APP_DIR,
        env: app_environment(run, &app.version, &input_json),
        mounts,
        volumes: vec![output.clone()],
        memory_bytes: app.manifest.limits.memory_bytes,
        cpu: app.manifest.limits.cpu,
        tmp_size_bytes: settings.tmp_size_bytes,
        network: if network_granted {
            settings.app_network.clone()
        } else {
            "none".into()
        },
        sysctls: HashMap::new(),
        labels: labels(executor_id, run.id, run.attempt, "run"),
    })
}

/// The labels every container of an attempt carries: the orphan sweep finds a dead daemon's
/// containers, runs and attempts by them. `id` is a run's or a build's.
pub fn labels(
    executor_id: &str,
    id: uuid::Uuid,
    attempt: i32,
    phase: &str,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_EXECUTOR.to_owned(), executor_id.to_owned()),
        (LABEL_RUN.to_owned(), id.to_string()),
        (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
        (LABEL_PHASE.to_owned(), phase.to_owned()),
    ])
}

/// A container name unique per attempt and phase, readable in `docker ps`.
pub fn container_name(id: uuid::Uuid, attempt: i32, phase: &str) -> String {
    format!(
        "app-executor-{}-{attempt}-{phase}-{}",
        id.simple(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// The only environment a container gets: an allow-list built from the run.
fn app_environment(run: &ClaimedRun, version: &str, input_json: &[u8]) -> Vec<String> {
    let mut env = vec![
        format!("APP_ID={}", run.app_id),
        format!("RUN_ID={}", run.id),
        format!("RUN_TYPE={}", run.run_type),
        format!("APP_VERSION={version}"),
        format!("APP_INPUT_FILE={INPUT_DIR}/input.json"),
        format!("APP_OUTPUT_DIR={OUTPUT_DIR}"),
        "HOME=/tmp".to_owned(),
        "NODE_ENV=production".to_owned(),
    ];
    // Small inputs also come inline; large ones only as the file (the kernel caps one
    // environment string at 128 KiB).
    if input_json.len() <= 64 * 1024 {
        env.push(format!("APP_INPUT={}", String::from_utf8_lossy(input_json)));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_environment_is_the_allow_list() {
        let run = ClaimedRun {
            id: uuid::Uuid::nil(),
            app_id: uuid::Uuid::nil(),
            company_id: uuid::Uuid::nil(),
            build_id: None,
            run_type: "manual".into(),
            attempt: 1,
            max_attempts: 3,
            input_data: serde_json::json!({"a": 1}),
            metadata: serde_json::json!({}),
            created_at: chrono::Utc::now(),
            started_at: chrono::Utc::now(),
        };
        let env = app_environment(&run, "1.0.0", br#"{"a":1}"#);
        let names: Vec<&str> = env.iter().map(|e| e.split('=').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "APP_ID",
                "RUN_ID",
                "RUN_TYPE",
                "APP_VERSION",
                "APP_INPUT_FILE",
                "APP_OUTPUT_DIR",
                "HOME",
                "NODE_ENV",
                "APP_INPUT"
            ]
        );
        let big = vec![b'1'; 100_000];
        assert!(!app_environment(&run, "1", &big)
            .iter()
            .any(|e| e.starts_with("APP_INPUT=")));
    }
}
