//! The real `app-executor run` as a child process, with short queue timings and the test
//! execution (`--test-execution`), so tests can kill it with SIGKILL or drain it with SIGTERM.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::TestDb;

pub struct DaemonOptions {
    /// The test execution (`--test-execution`), or `None` for the production execution.
    pub execution: Option<String>,
    pub env: Vec<(String, String)>,
    pub until_idle: bool,
    /// Runs the daemon as this uid with the `docker` group (README "Running under systemd":
    /// a non-root user in the docker group) instead of as the test's user.
    pub run_as: Option<u32>,
}

impl DaemonOptions {
    pub fn new(execution: &str) -> Self {
        Self {
            execution: Some(execution.to_owned()),
            env: Vec::new(),
            until_idle: false,
            run_as: None,
        }
    }

    /// The execution production uses (real Docker, the offline runtime image, never pulling),
    /// with its state (storage, caches, run dirs) in `state_dir`. Its containers carry the
    /// label `app-executor.test=<state dir name>` (see [`DaemonOptions::test_label`]).
    pub fn production(state_dir: &std::path::Path) -> Self {
        let image = super::docker::runtime_image();
        Self {
            execution: None,
            env: vec![(
                "APP_EXECUTOR_EXECUTOR__STATE_DIR".to_owned(),
                state_dir.display().to_string(),
            )],
            until_idle: false,
            run_as: None,
        }
        .sandbox("image", image)
        .sandbox("pull", "never")
        .sandbox(
            &format!("labels__{}", super::docker::TEST_LABEL),
            &Self::test_label(state_dir),
        )
    }

    /// The test label value of containers started by a daemon with this state directory.
    pub fn test_label(state_dir: &std::path::Path) -> String {
        state_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// Sets `APP_EXECUTOR_SANDBOX__<KEY>`.
    pub fn sandbox(mut self, key: &str, value: &str) -> Self {
        self.env.push((
            format!("APP_EXECUTOR_SANDBOX__{}", key.to_ascii_uppercase()),
            value.to_owned(),
        ));
        self
    }

    /// Sets `APP_EXECUTOR_QUEUE__<KEY>`.
    pub fn queue(mut self, key: &str, value: &str) -> Self {
        self.env.push((
            format!("APP_EXECUTOR_QUEUE__{}", key.to_ascii_uppercase()),
            value.to_owned(),
        ));
        self
    }

    pub fn until_idle(mut self) -> Self {
        self.until_idle = true;
        self
    }

    /// As `uid` in the docker group; `state_dir` (and all in it) is given to that user.
    pub fn run_as_user(mut self, uid: u32, state_dir: &std::path::Path) -> Self {
        let chowned = Command::new("chown")
            .args(["-R", &uid.to_string()])
            .arg(state_dir)
            .status()
            .unwrap();
        assert!(chowned.success());
        self.run_as = Some(uid);
        self
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(db: &TestDb, options: DaemonOptions) -> Self {
        let log = std::env::temp_dir().join(format!("daemon-{}.log", uuid::Uuid::new_v4()));
        let mut command = match options.run_as {
            Some(uid) => {
                let docker = super::docker::docker_group_id();
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={docker}"))
                    .arg(format!("--groups={docker}"))
                    .arg("--")
                    .arg(super::binary());
                command
            }
            None => Command::new(super::binary()),
        };
        command
            .arg("run")
            .env("DATABASE_URL", db.url.expose())
            .env(
                "APP_EXECUTOR_CONFIG",
                concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
            )
            .env("APP_EXECUTOR_TELEMETRY__FORMAT", "human")
            .env("RUST_LOG", "app_executor=debug,info")
            // Fast defaults for tests; each test may override.
            .env("APP_EXECUTOR_QUEUE__LEASE", "3s")
            .env("APP_EXECUTOR_QUEUE__HEARTBEAT_INTERVAL", "500ms")
            .env("APP_EXECUTOR_QUEUE__POLL_INTERVAL", "1s")
            .env("APP_EXECUTOR_QUEUE__RESCUE_INTERVAL", "500ms")
            .env("APP_EXECUTOR_QUEUE__RETRY_BACKOFF", "100ms")
            // Several daemons per test and tests in parallel: any free port (see `ops_addr`).
            .env("APP_EXECUTOR_OPS__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(execution) = &options.execution {
            command.args(["--test-execution", execution]);
        }
        if options.until_idle {
            command.arg("--until-idle");
        }
        for (k, v) in &options.env {
            command.env(k, v);
        }
        Self {
            child: command.spawn().unwrap(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no drain, no cleanup.
    pub fn kill_hard(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit, at most `limit`; panics with its log otherwise.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "daemon did not exit within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A drain: SIGTERM, then the exit within 30 s, which must be clean; panics with the log
    /// otherwise.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let status = self.wait(Duration::from_secs(30));
        assert!(
            status.success(),
            "the daemon did not drain cleanly ({status}); log:\n{}",
            self.log_text()
        );
    }

    /// The address of the ops endpoints (`/metrics`, `/healthz`, `/readyz`), from the line the
    /// daemon logs once it listens; panics with the log if that does not happen within 30 s.
    pub fn ops_addr(&mut self) -> std::net::SocketAddr {
        self.listening_addr("ops endpoints listening")
    }

    /// The address of the webhook listener (`[webhooks] listen`), like [`Daemon::ops_addr`].
    pub fn webhooks_addr(&mut self) -> std::net::SocketAddr {
        self.listening_addr("webhook listener listening")
    }

    /// The `local_addr=` of the first log line containing `marker`.
    fn listening_addr(&mut self, marker: &str) -> std::net::SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log_text();
            if let Some(line) = log.lines().find(|l| l.contains(marker)) {
                let addr = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("local_addr="))
                    .unwrap_or_else(|| panic!("no local_addr in {line:?}"));
                return addr.parse().unwrap();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daemon exited ({status}) before logging {marker:?}; log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not log {marker:?} within 30 s; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs a daemon with `options` until the queue is empty, waiting off the runtime's threads (at
/// most 240 s); returns its log, or panics with it when the daemon fails.
pub async fn run_until_idle(db: &TestDb, options: DaemonOptions) -> String {
    let daemon = Daemon::spawn(db, options.until_idle());
    tokio::task::spawn_blocking(move || {
        let mut daemon = daemon;
        let status = daemon.wait(Duration::from_secs(240));
        let log = daemon.log_text();
        assert!(status.success(), "daemon failed: {log}");
        log
    })
    .await
    .unwrap()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
