//! Integration tests against the real thing: a real PostgreSQL server, a real Docker engine,
//! the real binary. One test binary; `harness` holds the shared fixtures.

mod harness;

mod alerts;
mod archive;
mod artifact;
mod bench;
mod builds;
mod cli;
mod cron;
mod db_tls;
mod demo;
mod docker;
mod install_registry;
mod logs;
mod migrate;
mod monitoring;
mod ops;
mod output_fs;
mod outputs;
mod publish;
mod queue;
mod retention;
mod rls;
mod run_logs;
mod sandbox;
mod schema;
mod seed_contract;
mod status;
mod storage;
mod storage_keys;
mod supabase_cli;
mod usage;
mod webhooks;
