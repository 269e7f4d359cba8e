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
