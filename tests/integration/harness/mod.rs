//! Shared fixtures: a fresh database per test cloned from a migrated template ([`TestDb`]),
//! a running Docker engine and the offline runtime image ([`docker`]), a claimed run ([`run`]),
//! and the built binary.

pub mod apps;
pub mod daemon;
pub mod docker;
pub mod postgres;
pub mod registry;
pub mod run;
pub mod storage_double;

pub use postgres::{insert_tenant, TestDb};

/// Path of the `app-executor` binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_app-executor")
}

/// `app-executor <args>` as an async command against `db`, with the repository's
/// `executor.toml` (what a user runs after `migrate`).
pub fn cli(db: &TestDb, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary());
    command.args(args).env("DATABASE_URL", db.url.expose()).env(
        "APP_EXECUTOR_CONFIG",
        concat!(env!("CARGO_MANIFEST_DIR"), "/executor.toml"),
    );
    command
}
