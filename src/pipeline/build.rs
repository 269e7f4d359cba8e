//! The build pipeline: what happens to one attempt of a claimed build (an `app_builds` row).
//! The runner holds its lease exactly as it holds a run's; this is the work in between:
//!
//! 1. **prepare** the version's published files, verified ([`Resolver::prepare_version`]);
//! 2. **image** for the manifest's Node version;
//! 3. **install** the dependencies, `devDependencies` included, through the install phase (its
//!    cache and lifecycle-script policy);
//! 4. **build**: the `build_config` script, else `package.json`'s `build` script when there is
//!    one, in a container with the run profile (no network, the app's limits), the app copy
//!    writable and `node_modules` read-only; its output streamed live to `app-logs` under
//!    `app_<appId>/builds/<buildId>/`;
//! 5. **pack** the app tree, `node_modules` and the build output into one `.tar.gz`, refused
//!    when no run could extract it under the archive policy;
//! 6. **upload** it to `app-storage` at `app_<appId>/builds/<buildId>/app.tar.gz` (the same key
//!    every attempt: a rescued build leaves one archive), and publish a frontend's assets as
//!    `dist` rows;
//! 7. **record** `build_path`, `artifact_digest`, `archive_size`, `build_logs` and
//!    `build_log_path`, fenced by the lease. The runner then writes `success`, which moves
//!    `is_current` to the newest successful build.
//!
//! A run that uses the build downloads the archive, verifies its digest, extracts it and starts
//! the entrypoint with no install phase (see `artifact::resolve`).

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::phases::Phases;
use super::{infra, RunPipeline};
use crate::artifact::manifest::{AppType, PackageManager};
use crate::artifact::pack::{self, PackError, PackSource};
use crate::artifact::resolve::PreparedApp;
use crate::db::builds::{self as sql, BuildRecord, DistFile};
use crate::logs::{LogStream, LogTarget, RunLog};
use crate::model::{ClaimedBuild, FinalStatus, Outcome};
use crate::ops::metrics;
use crate::runner::Stop;
use crate::sandbox::engine::{Ended, OutputSink, OutputStream, Timing};
use crate::sandbox::install::{self, InstallError, InstallRequest};
use crate::sandbox::profile::{ContainerSpec, Mount};
use crate::storage::{UploadBody, APP_STORAGE_BUCKET};

/// `app_builds.build_logs` keeps at most this much of the log's end (the column's cap).
const BUILD_LOGS_BYTES: usize = 64 * 1024;

/// A build's script is stopped after this long unless `build_config.timeout` says otherwise.
const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// `build_config`, validated: `{"script": "build", "env": {"NAME": "value"}, "timeout": 600}`.
#[derive(Debug, Default, PartialEq)]
pub struct BuildConfig {
    pub script: Option<String>,
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
}

/// Environment names a build may not set: the ones the sandbox itself decides.
const RESERVED_ENV: [&str; 4] = ["HOME", "PATH", "NODE_OPTIONS", "CI"];

impl BuildConfig {
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let mut config = BuildConfig::default();
        let Some(object) = value.as_object() else {
            return if value.is_null() {
                Ok(config)
            } else {
                Err(format!("build_config must be a JSON object, found {value}"))
            };
        };
        for (key, value) in object {
            match (key.as_str(), value) {
                ("script", serde_json::Value::String(name))
                    if !name.is_empty()
                        && name.len() <= 100
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || ":_-.".contains(c)) =>
                {
                    config.script = Some(name.clone())
                }
                ("script", other) => {
                    return Err(format!(
                        "build_config.script = {other}: must name a package.json script (letters, digits, : _ - .)"
                    ))
                }
                ("timeout", serde_json::Value::Number(n))
                    if n.as_u64().is_some_and(|s| (1..=24 * 3600).contains(&s)) =>
                {
                    config.timeout = Some(Duration::from_secs(n.as_u64().unwrap()))
                }
                ("timeout", other) => {
                    return Err(format!(
                        "build_config.timeout = {other}: must be whole seconds from 1 to 86400"
                    ))
                }
                ("env", serde_json::Value::Object(vars)) => {
                    for (name, value) in vars {
                        let valid = !name.is_empty()
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                            && !name.starts_with(|c: char| c.is_ascii_digit());
                        if !valid || RESERVED_ENV.contains(&name.as_str()) {
                            return Err(format!(
                                "build_config.env.{name}: not a name a build may set (letters, digits and _, not {})",
                                RESERVED_ENV.join(", ")
                            ));
                        }
                        let Some(text) = value.as_str() else {
                            return Err(format!("build_config.env.{name} = {value}: must be a string"));
                        };
                        config.env.push((name.clone(), text.to_owned()));
                    }
                }
                ("env", other) => {
                    return Err(format!("build_config.env = {other}: must be an object of strings"))
                }
                (other, _) => {
                    return Err(format!(
                        "build_config.{other}: unknown key; expected script, env, timeout"
                    ))
                }
            }
        }
        Ok(config)
    }
}

/// The build container's output: streamed to the build's log, its end kept for `build_logs`.
struct BuildSink {
    log: RunLog,
    tail: VecDeque<u8>,
}

impl BuildSink {
    fn note(&mut self, line: &str) {
        let line = format!("app-executor: {line}\n");
        self.push(LogStream::Stderr, line.as_bytes());
    }

    fn push(&mut self, stream: LogStream, bytes: &[u8]) {
        self.log.append(stream, bytes);
        let keep = &bytes[bytes.len().saturating_sub(BUILD_LOGS_BYTES)..];
        let overflow = (self.tail.len() + keep.len()).saturating_sub(BUILD_LOGS_BYTES);
        self.tail.drain(..overflow);
        self.tail.extend(keep);
    }

    /// The kept end as text, cut at a character boundary and within the column's byte cap.
    fn tail_text(&self) -> String {
        let bytes: Vec<u8> = self.tail.iter().copied().collect();
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        while text.len() > BUILD_LOGS_BYTES {
            let cut = text
                .char_indices()
                .nth(1)
                .map(|(i, _)| i)
                .unwrap_or(text.len());
            text.drain(..cut);
        }
        text
    }
}

impl OutputSink for BuildSink {
    fn output<'a>(&'a mut self, stream: OutputStream, bytes: Bytes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let stream = match stream {
                OutputStream::Stdout => LogStream::Stdout,
                OutputStream::Stderr => LogStream::Stderr,
            };
            self.push(stream, &bytes);
        })
    }
}

/// How an attempt ended before `record`: the outcome, and a line for the build's log.
type Step<T> = Result<T, Outcome>;

impl RunPipeline {
    /// One attempt of a build; the attempt directory is removed afterwards.
    pub(super) async fn build(&self, build: &ClaimedBuild, stop: &Stop) -> Outcome {
        let dir = self.resolver.attempt_dir(build.id, build.attempt);
        let outcome = match self.build_attempt(build, stop, &dir).await {
            Ok(outcome) | Err(outcome) => outcome,
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        outcome
    }

    async fn build_attempt(&self, build: &ClaimedBuild, stop: &Stop, dir: &Path) -> Step<Outcome> {
        let config = BuildConfig::parse(&build.config)
            .map_err(|message| Outcome::failed("invalid_build_config", message))?;
        let mut phases = Phases::start_build(build.id);
        let prepared = tokio::select! {
            biased;
            _ = stop.token().cancelled() => return Err(Outcome::Stopped),
            prepared = self.resolver.prepare_version(build.app_id, &build.version, dir) => prepared,
        };
        let app = match prepared {
            Ok(app) => app,
            Err(e) if e.is_retryable() => return Err(infra(e.error_kind(), e.to_string())),
            Err(e) => return Err(Outcome::failed(e.error_kind(), e.to_string())),
        };
        metrics::phase_finished(metrics::Phase::Prepare, phases.done("prepare"));
        tokio::fs::create_dir_all(dir.join("spool"))
            .await
            .map_err(|e| infra("prepare_io", format!("creating {}: {e}", dir.display())))?;
        let log = RunLog::start(
            self.resolver.storage.clone(),
            &dir.join("spool"),
            LogTarget::of_build(build),
            self.logs.clone(),
        )
        .map_err(|e| infra("log_spool", e.to_string()))?;
        let mut sink = BuildSink {
            log,
            tail: VecDeque::new(),
        };
        sink.note(&format!(
            "building version {} of app {} (attempt {})",
            build.version, build.app_id, build.attempt
        ));
        let result = self
            .build_steps(build, &config, &app, dir, stop, &mut sink, &mut phases)
            .await;
        let (outcome, packed) = match result {
            Ok(packed) => (Outcome::success(), Some(packed)),
            Err(outcome) => {
                if let Outcome::Finished {
                    error_message: Some(message),
                    ..
                } = &outcome
                {
                    sink.note(message);
                }
                (outcome, None)
            }
        };
        let logs_text = sink.tail_text();
        let BuildSink { log, .. } = sink;
        if matches!(outcome, Outcome::Stopped | Outcome::InfraFailure { .. }) {
            // Back to the queue (or someone else's now): the next attempt writes its own log.
            log.interrupt().await;
            return Err(outcome);
        }
        let summary = log.finish().await;
        let record = BuildRecord {
            archive: packed.as_ref().map(|p| {
                (
                    p.key.as_str(),
                    p.report.digest.as_str(),
                    p.report.archive_bytes,
                )
            }),
            build_logs: &logs_text,
            build_log_path: &summary.logs_path,
            phases_ms: phases.as_json(),
        };
        let recorded =
            sql::record_build(&self.resolver.pool, build, &self.executor_id, &record).await;
        phases.done("record");
        phases.report();
        if let Err(e) = recorded {
            return Err(infra("database_unavailable", e.to_string()));
        }
        Ok(outcome)
    }

    /// Install, build, pack, upload; what to record on success.
    #[allow(clippy::too_many_arguments)]
    async fn build_steps(
        &self,
        build: &ClaimedBuild,
        config: &BuildConfig,
        app: &PreparedApp,
        dir: &Path,
        stop: &Stop,
        sink: &mut BuildSink,
        phases: &mut Phases,
    ) -> Step<Packed> {
        let (node_version, package_manager) = match &app.manifest.backend {
            Some(backend) => (backend.node_version.clone(), backend.package_manager),
            None => ("20".to_owned(), PackageManager::Pnpm),
        };
        let (image, image_id) = self.image(&node_version, stop).await?;
        phases.done("image");

        let install = InstallRequest {
            app_dir: &app.dir,
            package_manager,
            image: &image,
            image_id: &image_id,
            allow_scripts: self.settings.install_scripts_apps.contains(&build.app_id),
            include_dev: true,
            cpu: app.manifest.limits.cpu,
            container_name: crate::sandbox::run::container_name(build.id, build.attempt, "install"),
            labels: crate::sandbox::run::labels(
                &self.executor_id,
                build.id,
                build.attempt,
                "install",
            ),
        };
        sink.note("installing dependencies");
        let dependencies = match self.installer.ensure(&install, stop.token()).await {
            Ok(deps) => deps,
            Err(InstallError::Stopped) => return Err(Outcome::Stopped),
            Err(e) if e.is_retryable() => return Err(infra(e.error_kind(), e.to_string())),
            Err(e) => return Err(Outcome::failed(e.error_kind(), e.to_string())),
        };
        if let Some(deps) = &dependencies {
            sink.note(&match deps.installed_in {
                Some(took) => format!(
                    "dependencies installed in {}",
                    humantime::format_duration(round(took))
                ),
                None => "dependencies from the cache".to_owned(),
            });
        }
        let took = phases.done("install");
        if dependencies
            .as_ref()
            .is_some_and(|d| d.installed_in.is_some())
        {
            metrics::phase_finished(metrics::Phase::Install, took);
        }

        let work = dir.join("work");
        let (from, to, user) = (app.dir.clone(), work.clone(), self.settings.user.clone());
        tokio::task::spawn_blocking(move || install::prepare_build_dir(&from, &to, &user))
            .await
            .expect("the copy task does not panic")
            .map_err(|e| {
                infra(
                    "prepare_io",
                    format!("copying the app to {}: {e}", work.display()),
                )
            })?;

        match build_script(config, &app.dir) {
            Some(script) => {
                sink.note(&format!("running the {script:?} script"));
                self.run_script(build, config, app, &script, &image, &work, dependencies.as_ref(), stop, sink)
                    .await?;
            }
            None => sink.note("no build script (build_config.script, or package.json's \"build\"): packing the app as installed"),
        }
        phases.done("build");

        if let (AppType::Frontend | AppType::Both, Some(frontend)) =
            (app.manifest.app_type, &app.manifest.frontend)
        {
            if !work.join(&frontend.entrypoint).is_file() {
                return Err(Outcome::failed(
                    "frontend_missing",
                    format!(
                        "the build left no {} (runtime.frontend.entrypoint); the frontend cannot be served",
                        frontend.entrypoint
                    ),
                ));
            }
        }

        let archive = dir.join("app.tar.gz");
        let (work_owned, archive_owned, limits) =
            (work.clone(), archive.clone(), self.resolver.extract.clone());
        let node_modules = dependencies.as_ref().map(|d| d.node_modules.clone());
        let report = tokio::task::spawn_blocking(move || {
            let mut sources = vec![PackSource {
                dir: &work_owned,
                prefix: "",
                skip: &["node_modules", ".pnpm-store"],
            }];
            if let Some(node_modules) = &node_modules {
                sources.push(PackSource {
                    dir: node_modules,
                    prefix: "node_modules",
                    skip: &[],
                });
            }
            pack::pack(&sources, &archive_owned, &limits)
        })
        .await
        .expect("the pack task does not panic")
        .map_err(|e| match e {
            PackError::Io { .. } => infra("build_io", e.to_string()),
            e => Outcome::failed("build_too_large", e.to_string()),
        })?;
        sink.note(&format!(
            "packed {} entries ({} bytes) into a {}-byte archive, {}",
            report.entries, report.content_bytes, report.archive_bytes, report.digest
        ));
        phases.done("pack");

        let key = format!("app_{}/builds/{}/app.tar.gz", build.app_id, build.id);
        let uploaded = tokio::select! {
            biased;
            _ = stop.token().cancelled() => return Err(Outcome::Stopped),
            uploaded = self.resolver.storage.upload(
                APP_STORAGE_BUCKET,
                &key,
                UploadBody::File(archive.clone()),
                "application/gzip",
                true,
            ) => uploaded,
        };
        match uploaded {
            Ok(()) => {}
            Err(e) if e.is_retryable() => return Err(infra("storage_unavailable", e.to_string())),
            Err(e) => {
                return Err(Outcome::failed(
                    "archive_rejected",
                    format!("uploading the build archive: {e}"),
                ))
            }
        }

        if let (AppType::Frontend | AppType::Both, Some(frontend)) =
            (app.manifest.app_type, &app.manifest.frontend)
        {
            self.publish_dist(build, &work, &frontend.assets, stop, sink)
                .await?;
        }
        phases.done("upload");
        Ok(Packed { key, report })
    }

    /// Runs `script` in the build container.
    #[allow(clippy::too_many_arguments)]
    async fn run_script(
        &self,
        build: &ClaimedBuild,
        config: &BuildConfig,
        app: &PreparedApp,
        script: &str,
        image: &str,
        work: &Path,
        dependencies: Option<&install::Dependencies>,
        stop: &Stop,
        sink: &mut BuildSink,
    ) -> Step<()> {
        let manager = match &app.manifest.backend {
            Some(b) if b.package_manager == PackageManager::Npm => "npm",
            _ => "pnpm",
        };
        let command = format!(
            "if [ {manager} = pnpm ] && command -v pnpm >/dev/null 2>&1; then exec pnpm run {script}; else exec npm run {script}; fi"
        );
        let mut mounts = vec![Mount {
            host: work.to_path_buf(),
            container: "/app",
            read_only: false,
        }];
        if let Some(deps) = dependencies {
            tokio::fs::create_dir_all(work.join("node_modules"))
                .await
                .map_err(|e| infra("prepare_io", e.to_string()))?;
            mounts.push(Mount {
                host: deps.node_modules.clone(),
                container: "/app/node_modules",
                read_only: true,
            });
        }
        let mut env = vec![
            format!("APP_ID={}", build.app_id),
            format!("BUILD_ID={}", build.id),
            format!("APP_VERSION={}", build.version),
            "HOME=/tmp".to_owned(),
            "CI=true".to_owned(),
            "NODE_ENV=production".to_owned(),
            "npm_config_update_notifier=false".to_owned(),
        ];
        env.retain(|e| {
            let name = e.split('=').next().unwrap_or("");
            !config.env.iter().any(|(n, _)| n == name)
        });
        env.extend(config.env.iter().map(|(n, v)| format!("{n}={v}")));
        let spec = ContainerSpec {
            name: crate::sandbox::run::container_name(build.id, build.attempt, "build"),
            image: image.to_owned(),
            cmd: vec!["sh".into(), "-c".into(), command],
            working_dir: "/app",
            env,
            mounts,
            volumes: Vec::new(),
            memory_bytes: self
                .settings
                .install_memory_bytes
                .max(app.manifest.limits.memory_bytes),
            cpu: app.manifest.limits.cpu,
            tmp_size_bytes: self.settings.install_tmp_size_bytes,
            network: "none".into(),
            sysctls: Default::default(),
            labels: crate::sandbox::run::labels(
                &self.executor_id,
                build.id,
                build.attempt,
                "build",
            ),
        };
        let timeout = config.timeout.unwrap_or(DEFAULT_BUILD_TIMEOUT);
        let exit = self
            .engine
            .run_container(
                &spec,
                &self.settings,
                sink,
                &Timing::kill_at_once(timeout),
                stop.token(),
            )
            .await
            .map_err(|e| infra(e.error_kind(), e.to_string()))?;
        let tail = || {
            let text = sink_tail(sink);
            if text.is_empty() {
                "(no output)".to_owned()
            } else {
                text
            }
        };
        match exit.ended {
            Ended::Stopped => Err(Outcome::Stopped),
            Ended::TimedOut => Err(Outcome::Finished {
                status: FinalStatus::Timeout,
                error_kind: Some("build_timeout".into()),
                error_message: Some(format!(
                    "the {script:?} script did not finish within {}; last lines:\n{}",
                    humantime::format_duration(timeout),
                    tail()
                )),
                exit_code: None,
            }),
            _ if exit.oom_killed => Err(Outcome::failed(
                "build_oom_killed",
                format!(
                    "the {script:?} script ran out of memory ({} bytes); last lines:\n{}",
                    spec.memory_bytes,
                    tail()
                ),
            )),
            _ => match exit.exit_code {
                Some(0) => Ok(()),
                code => Err(Outcome::Finished {
                    status: FinalStatus::Failed,
                    error_kind: Some("build_script_failed".into()),
                    error_message: Some(format!(
                        "the {script:?} script failed (exit code {}); last lines:\n{}",
                        code.unwrap_or(-1),
                        tail()
                    )),
                    exit_code: code.map(|c| c as i32),
                }),
            },
        }
    }

    /// Uploads the files under the frontend's asset folders and records them as `dist` rows of
    /// the build's version (`metadata.build_id` names the build; runs never read them).
    async fn publish_dist(
        &self,
        build: &ClaimedBuild,
        work: &Path,
        assets: &[String],
        stop: &Stop,
        sink: &mut BuildSink,
    ) -> Step<()> {
        let mut files = Vec::new();
        for asset in assets {
            let root = work.join(asset.trim_end_matches('/'));
            let walked = tokio::task::spawn_blocking({
                let root = root.clone();
                move || {
                    crate::artifact::walk_regular_files(
                        &root,
                        &crate::artifact::WalkLimits::default(),
                    )
                }
            })
            .await
            .expect("the walk does not panic");
            let walked = match walked {
                Ok(walked) => walked,
                Err(e) => {
                    return Err(Outcome::failed(
                        "frontend_missing",
                        format!("runtime.frontend.assets {asset:?}: {e}"),
                    ))
                }
            };
            for file in walked.files {
                let relative = format!(
                    "{}/{}",
                    asset.trim_end_matches('/'),
                    file.relative.to_string_lossy()
                );
                files.push((relative, root.join(&file.relative)));
            }
        }
        let mut rows = Vec::with_capacity(files.len());
        for (relative, path) in files {
            if stop.token().is_cancelled() {
                return Err(Outcome::Stopped);
            }
            let content = tokio::fs::read(&path)
                .await
                .map_err(|e| infra("build_io", format!("reading {}: {e}", path.display())))?;
            let mime = crate::artifact::publish::content_type(&relative);
            let key = format!("app_{}/builds/{}/dist/{relative}", build.app_id, build.id);
            let size = content.len() as i64;
            let checksum = format!("sha256:{}", crate::artifact::digest::sha256_hex(&content));
            match self
                .resolver
                .storage
                .upload(
                    APP_STORAGE_BUCKET,
                    &key,
                    UploadBody::Bytes(content.into()),
                    mime,
                    true,
                )
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    return Err(infra("storage_unavailable", e.to_string()))
                }
                Err(e) => {
                    return Err(Outcome::failed(
                        "archive_rejected",
                        format!("publishing the frontend asset {relative}: {e}"),
                    ))
                }
            }
            rows.push(DistFile {
                key,
                size,
                checksum,
                mime: mime.to_owned(),
            });
        }
        sink.note(&format!(
            "published {} frontend assets as dist files",
            rows.len()
        ));
        sql::record_dist(&self.resolver.pool, build, &self.executor_id, &rows)
            .await
            .map_err(|e| infra("database_unavailable", e.to_string()))?;
        Ok(())
    }
}

/// What a successful build uploaded.
struct Packed {
    key: String,
    report: pack::PackReport,
}

fn sink_tail(sink: &BuildSink) -> String {
    let text = sink.tail_text();
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// The script to run: `build_config.script`, else `build` when `package.json` has one.
fn build_script(config: &BuildConfig, app_dir: &Path) -> Option<String> {
    if let Some(script) = &config.script {
        return Some(script.clone());
    }
    let text = std::fs::read_to_string(app_dir.join("package.json")).ok()?;
    let package: serde_json::Value = serde_json::from_str(&text).ok()?;
    package["scripts"]["build"]
        .is_string()
        .then(|| "build".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn build_configs_parse_and_bad_ones_are_named() {
        assert_eq!(
            BuildConfig::parse(&json!({})).unwrap(),
            BuildConfig::default()
        );
        let config = BuildConfig::parse(
            &json!({"script": "build:prod", "env": {"API_URL": "x"}, "timeout": 60}),
        )
        .unwrap();
        assert_eq!(config.script.as_deref(), Some("build:prod"));
        assert_eq!(config.env, [("API_URL".to_owned(), "x".to_owned())]);
        assert_eq!(config.timeout, Some(Duration::from_secs(60)));
        for (bad, named) in [
            (json!({"script": "a; rm -rf /"}), "build_config.script"),
            (json!({"timeout": 0}), "build_config.timeout"),
            (json!({"env": {"PATH": "/x"}}), "build_config.env.PATH"),
            (json!({"env": {"A": 1}}), "build_config.env.A"),
            (json!({"scripts": "x"}), "build_config.scripts"),
            (json!([1]), "JSON object"),
        ] {
            let error = BuildConfig::parse(&bad).unwrap_err();
            assert!(error.contains(named), "{bad}: {error}");
        }
    }

    #[test]
    fn the_script_is_the_configured_one_or_package_jsons_build() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(build_script(&BuildConfig::default(), dir.path()), None);
        std::fs::write(
            dir.path().join("package.json"),
            r#"{"scripts": {"build": "tsc"}}"#,
        )
        .unwrap();
        assert_eq!(
            build_script(&BuildConfig::default(), dir.path()).as_deref(),
            Some("build")
        );
        let named = BuildConfig {
            script: Some("compile".into()),
            ..BuildConfig::default()
        };
        assert_eq!(build_script(&named, dir.path()).as_deref(), Some("compile"));
    }
}
