//! The install phase: `pnpm install` (or npm) in its own container, once per dependency set.
//!
//! The result is cached under `<state>/cache/deps/<key>/node_modules`, keyed by a digest of
//! everything that decides what gets installed: `package.json`, the lockfile, `.npmrc` /
//! `.pnpmrc`, the requested package manager, whether lifecycle scripts may run, and the image
//! id (which fixes node, pnpm and npm versions — and whether pnpm exists at all). A file lock
//! per key makes the install happen once per host even when several runs (or daemons) need
//! it at the same moment. Runs mount the cached `node_modules` read-only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::artifact::digest::Sha256;
use tokio_util::sync::CancellationToken;

use super::egress::EgressProxy;
use super::engine::{ContainerExit, Ended, Engine, EngineError, OutputSink, Timing};
use super::output::TailSink;
use super::profile::{ContainerSpec, Mount};
use super::SandboxSettings;
use crate::artifact::manifest::PackageManager;

/// Files of the app root that decide the installed dependency set.
const KEY_FILES: [&str; 5] = [
    "package.json",
    "pnpm-lock.yaml",
    "package-lock.json",
    ".npmrc",
    ".pnpmrc",
];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("dependency install failed (exit code {exit_code}); last lines of the install log:\n{log_tail}")]
    Failed { exit_code: i64, log_tail: String },
    #[error("dependency install ran out of memory ({limit} bytes); last lines of the install log:\n{log_tail}")]
    OutOfMemory { limit: u64, log_tail: String },
    #[error("dependency install did not finish within {}; last lines of the install log:\n{log_tail}", humantime::format_duration(*.timeout))]
    TimedOut { timeout: Duration, log_tail: String },
    #[error("dependency install was stopped")]
    Stopped,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("preparing the dependency install in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl InstallError {
    pub fn error_kind(&self) -> &'static str {
        match self {
            InstallError::Failed { .. } => "install_failed",
            InstallError::OutOfMemory { .. } => "install_oom_killed",
            InstallError::TimedOut { .. } => "install_timeout",
            InstallError::Stopped => "stopped",
            InstallError::Engine(e) => e.error_kind(),
            InstallError::Io { .. } => "install_io",
        }
    }

    /// Infrastructure trouble (retried) as opposed to a fault of the app's dependencies.
    pub fn is_retryable(&self) -> bool {
        matches!(self, InstallError::Engine(_) | InstallError::Io { .. })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Installed dependencies, ready to mount at `/app/node_modules`.
#[derive(Debug, Clone)]
pub struct Dependencies {
    pub node_modules: PathBuf,
    pub key: String,
    /// `None` when the cache had them (no install container ran).
    pub installed_in: Option<Duration>,
}

/// What the install phase needs to know about one run.
pub struct InstallRequest<'a> {
    pub app_dir: &'a Path,
    pub package_manager: PackageManager,
    pub image: &'a str,
    pub image_id: &'a str,
    pub allow_scripts: bool,
    /// Install `devDependencies` too (a build needs its compilers and bundlers; a run only what
    /// it imports).
    pub include_dev: bool,
    pub cpu: f64,
    /// Name prefix and labels for the install container.
    pub container_name: String,
    pub labels: HashMap<String, String>,
}

pub struct Installer {
    pub engine: Engine,
    pub settings: SandboxSettings,
    /// `[install]`: registries, tokens, CA bundle, proxy.
    pub registry: super::registry::InstallSettings,
    /// `<state>/cache/deps`.
    pub cache_dir: PathBuf,
}

impl Installer {
    /// The app's dependencies, installed now or taken from the cache; `None` when the app has
    /// no `package.json`.
    pub async fn ensure(
        &self,
        request: &InstallRequest<'_>,
        stop: &CancellationToken,
    ) -> Result<Option<Dependencies>, InstallError> {
        if !request.app_dir.join("package.json").is_file() {
            return Ok(None);
        }
        let key = dependency_key(request, &self.registry).map_err(io(request.app_dir))?;
        let entry = self.cache_dir.join(&key);
        let node_modules = entry.join("node_modules");
        tokio::fs::create_dir_all(&self.cache_dir)
            .await
            .map_err(io(&self.cache_dir))?;
        let lock_path = self.cache_dir.join(format!("{key}.lock"));
        let lock = tokio::select! {
            lock = lock_key(lock_path.clone()) => lock.map_err(io(&lock_path))?,
            _ = stop.cancelled() => return Err(InstallError::Stopped),
        };
        if node_modules.is_dir() {
            drop(lock);
            return Ok(Some(Dependencies {
                node_modules,
                key,
                installed_in: None,
            }));
        }
        let started = std::time::Instant::now();
        let result = self.install(request, &key, &entry, stop).await;
        drop(lock);
        result?;
        Ok(Some(Dependencies {
            node_modules,
            key,
            installed_in: Some(started.elapsed()),
        }))
    }

    async fn install(
        &self,
        request: &InstallRequest<'_>,
        key: &str,
        entry: &Path,
        stop: &CancellationToken,
    ) -> Result<(), InstallError> {
        let staging = self
            .cache_dir
            .join(format!("{key}.tmp-{}", uuid::Uuid::new_v4().simple()));
        let work = staging.join("work");
        let result = async {
            let (app_dir, work_owned, user) = (
                request.app_dir.to_path_buf(),
                work.clone(),
                self.settings.user.clone(),
            );
            tokio::task::spawn_blocking(move || prepare_work_dir(&app_dir, &work_owned, &user))
                .await
                .expect("the copy task does not panic")
                .map_err(io(&work))?;
            let app_npmrc = self.write_npmrc(&work, request).await?;
            // Under `egress = "registries"` the container has no network; its one way out is
            // this proxy, which allows only the registries (and stops when it is dropped).
            let egress = match self.registry.egress_policy() {
                Some(policy) => {
                    let dir = staging.join("egress");
                    Some(EgressProxy::start(&dir, policy).map_err(io(&dir))?)
                }
                None => None,
            };
            // Lifecycle scripts run apart, with no network, when the fetch phase has a way out.
            let scripts_apart = request.allow_scripts && egress.is_some();
            let mut env: Vec<String> = vec![
                "HOME=/tmp".into(),
                "CI=true".into(),
                "npm_config_cache=/tmp/.npm".into(),
                "npm_config_update_notifier=false".into(),
            ];
            let offline_env = env.clone();
            env.extend(self.registry.env());
            let mut mounts = vec![Mount {
                host: work.clone(),
                container: "/app",
                read_only: false,
            }];
            if let Some(ca) = &self.registry.ca_file {
                mounts.push(Mount {
                    host: ca.clone(),
                    container: super::registry::CA_PATH_IN_CONTAINER,
                    read_only: true,
                });
            }
            let mut script = install_script(request, !scripts_apart);
            let mut sysctls = HashMap::new();
            if let Some(proxy) = &egress {
                mounts.push(Mount {
                    host: proxy.dir().to_path_buf(),
                    container: super::egress::DIR_IN_CONTAINER,
                    read_only: true,
                });
                mounts.push(Mount {
                    host: proxy.hosts_file(),
                    container: "/etc/hosts",
                    read_only: true,
                });
                sysctls = proxy.sysctls();
                script = format!("{}{script}", EgressProxy::shell_prelude());
            }
            let network = match egress {
                Some(_) => "none".to_owned(),
                None => self.settings.install_network.clone(),
            };
            let deadline = tokio::time::Instant::now() + self.settings.install_timeout;
            let spec = ContainerSpec {
                name: request.container_name.clone(),
                image: request.image.to_owned(),
                cmd: vec!["sh".into(), "-c".into(), script],
                working_dir: "/app",
                env,
                mounts,
                volumes: Vec::new(),
                memory_bytes: self.settings.install_memory_bytes,
                cpu: request.cpu,
                tmp_size_bytes: self.settings.install_tmp_size_bytes,
                network,
                sysctls,
                labels: request.labels.clone(),
            };
            let log_path = staging.join("install.log");
            let mut log = TailSink::create(&log_path, 16 << 20).map_err(io(&log_path))?;
            let exit = self.run_phase(&spec, &mut log, deadline, stop).await?;
            let explanation = egress
                .as_ref()
                .map(EgressProxy::explanation)
                .unwrap_or_default();
            drop(egress);
            self.check_exit(&exit, &log, &explanation)?;
            if scripts_apart {
                // The token is not needed offline, and a script must not copy it into
                // node_modules, which runs see.
                self.write_npmrc_text(&work, &app_npmrc, false).await?;
                let spec = ContainerSpec {
                    name: format!("{}-scripts", request.container_name),
                    cmd: vec!["sh".into(), "-c".into(), lifecycle_script(request)],
                    env: offline_env,
                    mounts: vec![Mount {
                        host: work.clone(),
                        container: "/app",
                        read_only: false,
                    }],
                    network: "none".into(),
                    sysctls: HashMap::new(),
                    ..spec
                };
                let exit = self.run_phase(&spec, &mut log, deadline, stop).await?;
                self.check_exit(&exit, &log, "")?;
            }
            tokio::fs::rename(work.join("node_modules"), staging.join("node_modules"))
                .await
                .map_err(io(&work))?;
            let _ = tokio::fs::remove_dir_all(&work).await;
            match tokio::fs::rename(&staging, entry).await {
                Ok(()) => Ok(()),
                // Another process finished the same key first: theirs is as good as ours.
                Err(_) if entry.join("node_modules").is_dir() => Ok(()),
                Err(e) => Err(io(entry)(e)),
            }
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&staging).await;
        result
    }
}

impl Installer {
    /// One container of the install phase, killed at `deadline` (the phase's, shared by the
    /// fetch and the lifecycle-script containers).
    async fn run_phase(
        &self,
        spec: &ContainerSpec,
        log: &mut TailSink,
        deadline: tokio::time::Instant,
        stop: &CancellationToken,
    ) -> Result<ContainerExit, InstallError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        Ok(self
            .engine
            .run_container(
                spec,
                &self.settings,
                log as &mut dyn OutputSink,
                &Timing::kill_at_once(left),
                stop,
            )
            .await?)
    }

    /// Success, or the error with the install log's redacted tail and what the egress proxy
    /// has to say about the install ([`EgressProxy::explanation`]).
    fn check_exit(
        &self,
        exit: &ContainerExit,
        log: &TailSink,
        explanation: &str,
    ) -> Result<(), InstallError> {
        let mut log_tail = self.registry.redact(&log.tail_text());
        log_tail.push_str(explanation);
        judge_exit(exit, &self.settings, log_tail)
    }

    /// The work copy's `.npmrc`: the app's (with `.pnpmrc`) less the keys it may not set, then
    /// the operator's `[install]` settings. The dropped keys are named in the daemon's log.
    /// Returns the app's own text, for [`Self::write_npmrc_text`] later.
    async fn write_npmrc(
        &self,
        work: &Path,
        request: &InstallRequest<'_>,
    ) -> Result<String, InstallError> {
        let path = work.join(".npmrc");
        let app = match tokio::fs::read(&path).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        let dropped = self.write_npmrc_text(work, &app, true).await?;
        if !dropped.is_empty() {
            tracing::warn!(
                app_dir = %request.app_dir.display(),
                keys = ?dropped,
                "the app's .npmrc sets registry, auth, TLS or proxy keys that are the operator's ([install]); they are ignored"
            );
        }
        Ok(app)
    }

    /// Writes the work copy's `.npmrc` from the app's text (with the registry tokens or
    /// without); returns the app's keys that were dropped.
    async fn write_npmrc_text(
        &self,
        work: &Path,
        app: &str,
        tokens: bool,
    ) -> Result<Vec<String>, InstallError> {
        let path = work.join(".npmrc");
        let (npmrc, dropped) = if tokens {
            self.registry.npmrc(app)
        } else {
            super::registry::InstallSettings {
                tokens: Vec::new(),
                ..self.registry.clone()
            }
            .npmrc(app)
        };
        tokio::fs::write(&path, npmrc).await.map_err(io(&path))?;
        // Readable by the container's user, writable by nobody else (it may hold a token).
        let ids = self
            .settings
            .user
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)));
        let owned = ids.is_some_and(|(uid, gid)| {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).is_ok()
        });
        let mode = if owned { 0o600 } else { 0o644 };
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(io(&path))?;
        Ok(dropped)
    }
}

/// The install phase's outcome from its container's exit; `log_tail` already redacted.
fn judge_exit(
    exit: &ContainerExit,
    settings: &SandboxSettings,
    log_tail: String,
) -> Result<(), InstallError> {
    match exit.ended {
        Ended::Stopped => Err(InstallError::Stopped),
        Ended::TimedOut => Err(InstallError::TimedOut {
            timeout: settings.install_timeout,
            log_tail,
        }),
        Ended::Exited | Ended::OutputTooLarge if exit.oom_killed => {
            Err(InstallError::OutOfMemory {
                limit: settings.install_memory_bytes,
                log_tail,
            })
        }
        _ => match exit.exit_code {
            Some(0) => Ok(()),
            code => Err(InstallError::Failed {
                exit_code: code.unwrap_or(-1),
                log_tail,
            }),
        },
    }
}

/// Takes the per-key file lock (blocking, so on a blocking thread). The lock is released when
/// the returned file is dropped.
async fn lock_key(path: PathBuf) -> std::io::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .expect("the lock task does not panic")
}

/// The cache key: a digest of what decides the installed tree.
fn dependency_key(
    request: &InstallRequest<'_>,
    registry: &super::registry::InstallSettings,
) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(b"app-executor deps v1\n");
    hasher.update(format!("pm={:?}\n", request.package_manager).as_bytes());
    hasher.update(format!("image={}\n", request.image_id).as_bytes());
    hasher.update(format!("scripts={}\n", request.allow_scripts).as_bytes());
    if request.include_dev {
        // Only when set, so the keys of existing production installs stay as they were.
        hasher.update(b"dev=true\n");
    }
    let registries = registry.key_material();
    if registries != super::registry::InstallSettings::default().key_material() {
        // Only when set, likewise; tokens are never part of the key.
        hasher.update(registries.as_bytes());
    }
    for name in KEY_FILES {
        match std::fs::read(request.app_dir.join(name)) {
            Ok(bytes) => {
                hasher.update(format!("{name} {}\n", bytes.len()).as_bytes());
                hasher.update(&bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let digest = hasher.finish();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

/// The shell command of the install container. pnpm when the manifest asks for it and the
/// image has it (else npm, saying so); the lockfile is honoured strictly when present.
///
/// `run_scripts`: lifecycle scripts run in this container (only when the app may run them and
/// they do not get a container of their own, [`lifecycle_script`]). An app's `.pnpmfile.cjs`
/// is code too: it runs only for apps that may run scripts.
fn install_script(request: &InstallRequest<'_>, run_scripts: bool) -> String {
    let has = |name: &str| request.app_dir.join(name).is_file();
    let scripts = if run_scripts { "" } else { " --ignore-scripts" };
    let pnpmfile = if request.allow_scripts {
        ""
    } else {
        " --ignore-pnpmfile"
    };
    let (omit, prod) = if request.include_dev {
        ("", "")
    } else {
        (" --omit=dev", " --prod")
    };
    let npm = if has("package-lock.json") {
        format!("npm ci{omit} --no-audit --no-fund{scripts}")
    } else {
        format!("npm install{omit} --no-audit --no-fund --no-package-lock{scripts}")
    };
    let frozen = if has("pnpm-lock.yaml") {
        "--frozen-lockfile"
    } else {
        "--no-frozen-lockfile"
    };
    let pnpm = format!(
        "pnpm install {frozen}{prod} --reporter=append-only --store-dir /app/.pnpm-store{scripts}{pnpmfile}"
    );
    match request.package_manager {
        PackageManager::Npm => format!("{npm} && {STRIP_PRIVILEGE_BITS}"),
        PackageManager::Pnpm => format!(
            "if command -v pnpm >/dev/null 2>&1; then {pnpm}; else echo 'app-executor: this image has no pnpm; installing with npm instead' >&2; {npm}; fi && {STRIP_PRIVILEGE_BITS}"
        ),
    }
}

/// The last step of every install container: no setuid, setgid or sticky bit is left in the
/// tree (a package or a script may set them), so the installed tree carries no privilege to
/// the host, where it is cached and mounted into runs. Run in the container, as the files'
/// owner, so a daemon that is not root needs no rights over them. Links are not followed.
const STRIP_PRIVILEGE_BITS: &str = "node -e 'const fs = require(\"fs\"), path = require(\"path\"); const walk = (dir) => { for (const e of fs.readdirSync(dir, { withFileTypes: true })) { const f = path.join(dir, e.name); if (e.isSymbolicLink()) continue; const mode = fs.lstatSync(f).mode; if (mode & 0o7000) fs.chmodSync(f, mode & 0o777); if (e.isDirectory()) walk(f); } }; walk(\"/app\");'";

/// The lifecycle scripts of the installed tree (the dependencies' and the app's own
/// `preinstall`/`install`/`postinstall`/`prepare`), run after a fetch with `--ignore-scripts`,
/// by the same package manager the fetch used.
fn lifecycle_script(request: &InstallRequest<'_>) -> String {
    let npm = "npm rebuild --foreground-scripts && npm run --if-present prepare";
    let pnpm = "pnpm rebuild --reporter=append-only --store-dir /app/.pnpm-store";
    match request.package_manager {
        PackageManager::Npm => format!("{npm} && {STRIP_PRIVILEGE_BITS}"),
        PackageManager::Pnpm => format!(
            "if command -v pnpm >/dev/null 2>&1; then {pnpm}; else {npm}; fi && {STRIP_PRIVILEGE_BITS}"
        ),
    }
}

/// Copies the app into a writable work directory the container user can write to; `.pnpmrc`
/// lines are appended to `.npmrc`, which is what pnpm reads.
fn prepare_work_dir(app_dir: &Path, work: &Path, user: &str) -> std::io::Result<()> {
    copy_tree(app_dir, work)?;
    let pnpmrc = work.join(".pnpmrc");
    if pnpmrc.is_file() {
        let extra = std::fs::read(&pnpmrc)?;
        let mut npmrc = std::fs::read(work.join(".npmrc")).unwrap_or_default();
        if !npmrc.is_empty() && !npmrc.ends_with(b"\n") {
            npmrc.push(b'\n');
        }
        npmrc.extend_from_slice(&extra);
        std::fs::write(work.join(".npmrc"), npmrc)?;
    }
    hand_over(work, user)
}

/// Copies the app (without `node_modules`) into `work` and gives the whole copy to the sandbox
/// user: a build script may rewrite any file of it.
pub fn prepare_build_dir(app_dir: &Path, work: &Path, user: &str) -> std::io::Result<()> {
    copy_tree(app_dir, work)?;
    hand_over_tree(work, user)
}

fn hand_over_tree(dir: &Path, user: &str) -> std::io::Result<()> {
    hand_over(dir, user)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            hand_over_tree(&entry.path(), user)?;
        } else if kind.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let ids = user
                .split_once(':')
                .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)));
            let owned = ids
                .map(|(u, g)| std::os::unix::fs::lchown(entry.path(), Some(u), Some(g)).is_ok())
                .unwrap_or(false);
            if !owned {
                let mode = entry.metadata()?.permissions().mode() | 0o666;
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    Ok(())
}

/// Makes `dir` writable for the sandbox user: chown when we may (root), else mode 0777 on the
/// directory itself (the install only creates entries in it).
fn hand_over(dir: &Path, user: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let ids = user
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)));
    if let Some((uid, gid)) = ids {
        if std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).is_ok() {
            return Ok(());
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "node_modules" {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dir: &Path) -> InstallRequest<'_> {
        InstallRequest {
            app_dir: dir,
            package_manager: PackageManager::Pnpm,
            image: "img",
            image_id: "sha256:1",
            allow_scripts: false,
            include_dev: false,
            cpu: 1.0,
            container_name: "x".into(),
            labels: HashMap::new(),
        }
    }

    #[test]
    fn the_key_changes_with_the_lockfile_and_the_image_but_not_the_code() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        std::fs::write(dir.path().join("index.js"), "1").unwrap();
        let first = dependency_key(&request(dir.path()), &Default::default()).unwrap();
        std::fs::write(dir.path().join("index.js"), "2").unwrap();
        assert_eq!(
            dependency_key(&request(dir.path()), &Default::default()).unwrap(),
            first
        );
        std::fs::write(dir.path().join("pnpm-lock.yaml"), "lockfileVersion: '9.0'").unwrap();
        let locked = dependency_key(&request(dir.path()), &Default::default()).unwrap();
        assert_ne!(locked, first);
        let other_image = InstallRequest {
            image_id: "sha256:2",
            ..request(dir.path())
        };
        assert_ne!(
            dependency_key(&other_image, &Default::default()).unwrap(),
            locked
        );
    }

    #[test]
    fn the_install_command_is_strict_with_a_lockfile_and_scripts_stay_off() {
        let dir = tempfile::tempdir().unwrap();
        let script = install_script(&request(dir.path()), false);
        assert!(script.contains("--no-frozen-lockfile"), "{script}");
        assert!(script.contains("--ignore-scripts"), "{script}");
        assert!(script.contains("--ignore-pnpmfile"), "{script}");
        let trusted = InstallRequest {
            allow_scripts: true,
            ..request(dir.path())
        };
        let fetch = install_script(&trusted, false);
        assert!(fetch.contains("--ignore-scripts"), "scripts apart: {fetch}");
        assert!(!fetch.contains("--ignore-pnpmfile"), "{fetch}");
        assert!(!install_script(&trusted, true).contains("--ignore-scripts"));
        assert!(lifecycle_script(&trusted).contains("pnpm rebuild"));
        std::fs::write(dir.path().join("pnpm-lock.yaml"), "").unwrap();
        let script = install_script(&request(dir.path()), false);
        assert!(
            script.contains("pnpm install --frozen-lockfile"),
            "{script}"
        );
        assert!(script.contains("npm install"), "npm fallback: {script}");
    }
}
