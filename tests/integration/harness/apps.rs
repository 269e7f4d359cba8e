//! Apps for tests that really run them: write one into a directory, publish it with the real
//! `app-executor publish` (local storage backend under the test's state directory), enqueue
//! runs and read back what became of them.

use std::path::Path;
use std::process::{Command, Output};

use tokio_postgres::Client;
use uuid::Uuid;

use super::{binary, TestDb};

/// The sample app of `examples/hello` (a dependency from a vendored tarball, a lockfile).
pub const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");

/// `app-executor publish <dir> --app <app>` with the test's database and state directory.
/// `app` as text, so tests can pass ids that are not UUIDs.
pub fn publish(db: &TestDb, state: &Path, dir: &Path, app: &str, extra: &[&str]) -> Output {
    Command::new(binary())
        .arg("publish")
        .arg(dir)
        .args(["--app", app])
        .args(extra)
        .env("DATABASE_URL", db.url.expose())
        .env(
            "APP_EXECUTOR_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
        )
        .env("APP_EXECUTOR_EXECUTOR__STATE_DIR", state)
        .output()
        .unwrap()
}

/// Publishes `dir` and panics with the command's output if that fails.
pub fn publish_ok(db: &TestDb, state: &Path, dir: &Path, app: Uuid) {
    let out = publish(db, state, dir, &app.to_string(), &[]);
    assert!(
        out.status.success(),
        "publishing {} failed: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory with `manifest.json` (backend app, node 20, `index.js`, the given `config`
/// limits and `permissions`) and the given files.
pub fn write_app(
    files: &[(&str, &str)],
    config: serde_json::Value,
    permissions: serde_json::Value,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let manifest = serde_json::json!({
        "name": "test-app",
        "version": "1.0.0",
        "type": "backend",
        "runtime": {"backend": {
            "type": "nodejs", "version": "20", "entrypoint": "index.js", "package_manager": "pnpm"
        }},
        "permissions": permissions,
        "config": config,
    });
    std::fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

/// Copies `examples/hello` into a fresh directory, for variations of it.
pub fn copy_hello() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(Path::new(HELLO), dir.path());
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Inserts a pending run and returns its id.
pub async fn enqueue(client: &Client, app: Uuid, company: Uuid, input: serde_json::Value) -> Uuid {
    client
        .query_one(
            "insert into public.app_runs (app_id, company_id, input_data) values ($1, $2, $3) returning id",
            &[&app, &company, &input],
        )
        .await
        .unwrap()
        .get(0)
}

/// What became of a run.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub status: String,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub exit_code: Option<i32>,
    pub completed: bool,
}

impl RunRecord {
    /// `status/error_kind`, for compact assertions.
    pub fn summary(&self) -> String {
        format!(
            "{}/{}",
            self.status,
            self.error_kind.as_deref().unwrap_or("-")
        )
    }
}

pub async fn run_record(client: &Client, run: Uuid) -> RunRecord {
    let row = client
        .query_one(
            "select status, error_kind, error_message, exit_code, completed_at is not null
               from public.app_runs where id = $1",
            &[&run],
        )
        .await
        .unwrap();
    RunRecord {
        status: row.get(0),
        error_kind: row.get(1),
        error_message: row.get(2),
        exit_code: row.get(3),
        completed: row.get(4),
    }
}

/// The run's stdout as `app-executor logs` prints it from the state directory's storage.
pub async fn run_stdout(db: &TestDb, state: &Path, run: Uuid) -> String {
    let logs = super::cli(db, &["logs", &run.to_string()])
        .env("APP_EXECUTOR_EXECUTOR__STATE_DIR", state)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&logs.stdout).into_owned()
}
