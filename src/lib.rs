//! app-executor: a daemon that runs user-submitted Node.js apps for a multi-tenant Supabase
//! platform. It claims pending `app_runs` rows from PostgreSQL, fetches and verifies the app's
//! files from Supabase Storage, runs `pnpm install` and the entrypoint in hardened Docker
//! containers, streams logs to storage and records the outcome. See `README.md` for operating it
//! and `../shared/DESIGN.md` for the contract.
//!
//! # Layout
//!
//! - [`cli`]: argument parsing, output formatting (human or `--json`) and exit codes.
//! - [`app`]: the composition root; builds every client from the config and runs operations.
//! - [`config`]: `executor.toml` + `APP_EXECUTOR_*` overrides, validated; the only reader of
//!   files and environment for configuration; secrets redacted when printed.
//! - [`telemetry`]: tracing subscriber (human, JSON, journald).
//! - [`db`]: every SQL statement; connections, the pool, the Supabase-compatible migrator,
//!   the queue's statements and the LISTEN session.
//! - [`model`]: data exchanged between components (claimed runs, outcomes); no I/O.
//! - [`runner`]: the claim loop, leases, outcome writes, rescue, drain; the `RunExecutor` seam.
//! - [`artifact`]: an app's files: archives extracted under a reject-not-rewrite policy,
//!   directories read back without following links, `manifest.json` validation.
//! - [`sandbox`]: the production execution: image, dependency install (cached), the app in a
//!   hardened container, outcome mapping; orphaned containers swept.
//! - [`shutdown`]: OS signals to a cancellation token (drain, then hard exit).
//! - [`cron`]: cron expressions with time zones and the DST policy, the injectable clock, and
//!   the scheduler loop that fires due schedules as runs.
//! - [`storage`]: the `Storage` trait over Supabase Storage (HTTP) and a local directory
//!   backend, with the server's bucket rules (size limits, MIME allow-lists, key syntax).
//! - [`demo`]: `app-executor demo`, the whole system once on an embedded database.
//! - [`logs`]: an attempt's stdout/stderr spooled, streamed to `app-logs` as ordered chunks,
//!   capped and compacted; `app-executor logs` reads them back.
//! - [`outputs`]: the `/output` contract (result, metrics, files) read back with an archive
//!   reader's care, and the fenced recording of a run's `app_outputs` rows.
//! - [`embedded_postgres`]: a private PostgreSQL cluster from the host's binaries (demo, tests).
//! - [`alerts`]: failed, timed-out, OOM, rescued and security-relevant run endings as `NOTIFY`
//!   events and signed, retried webhook POSTs, off the run's critical path.
//! - [`retention`]: the background deletion of old logs, outputs, builds and versions (storage
//!   objects, then rows), one daemon at a time under an advisory lock.
//! - [`ops`]: how systemd and Prometheus see the daemon: `READY`/`STATUS`/`WATCHDOG`/`STOPPING`
//!   notifications, metrics with the helpers every component records through, and the
//!   loopback `/metrics`, `/healthz`, `/readyz` endpoints.
//!
//! Boundaries: only `db` holds SQL; only `config` reads configuration sources; only `app`
//! constructs clients. Pure logic is unit-tested next to its code; behaviour against real
//! PostgreSQL and Docker is tested in `tests/integration`.

pub mod alerts;
pub mod app;
pub mod artifact;
pub mod cli;
pub mod config;
pub mod cron;
pub mod db;
pub mod demo;
pub mod embedded_postgres;
pub mod logs;
pub mod model;
pub mod ops;
pub mod outputs;
pub mod pipeline;
pub mod retention;
pub mod runner;
pub mod sandbox;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod units;
