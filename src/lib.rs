//! app-executor: a daemon that runs user-submitted Node.js apps for a multi-tenant Supabase
//! platform. It claims pending `app_runs` rows from PostgreSQL, fetches and verifies the app's
//! files from Supabase Storage, runs `pnpm install` and the entrypoint in hardened Docker
//! containers, streams logs to storage and records the outcome. Pending `app_builds` rows are
//! built once into an archive runs on any host start from. See `README.md` for operating it
//! and `../shared/DESIGN.md` for the contract.
//!
//! # Layout
//!
//! Bottom-up, in the layer order [`layers`] checks (a module uses only lower layers):
//!
//! - [`units`], [`model`]: durations and sizes as operators write them; data exchanged between
//!   components (claimed runs, outcomes). No I/O, nothing of ours imported.
//! - [`storage`]: the `Storage` trait over Supabase Storage (HTTP) and a local directory
//!   backend, with the server's bucket rules (size limits, MIME allow-lists, key syntax).
//! - [`db`]: every SQL statement; connections, the pool, the Supabase-compatible migrator,
//!   the queue's and the executor registry's statements and the LISTEN session.
//! - [`telemetry`] (tracing: human, JSON, journald), [`shutdown`] (OS signals to a drain).
//! - [`ops`]: how systemd and Prometheus see the daemon: `READY`/`STATUS`/`WATCHDOG`/`STOPPING`
//!   notifications, metrics with the helpers every component records through, and the
//!   loopback `/metrics`, `/healthz`, `/readyz` endpoints. [`embedded_postgres`]: a private
//!   PostgreSQL cluster from the host's binaries (demo, tests).
//! - [`artifact`]: an app's files: archives extracted under a reject-not-rewrite policy,
//!   directories read back without following links, `manifest.json` validation, the verified
//!   blob cache, build archives packed under the same policy. [`logs`]: an attempt's stdout/stderr spooled, streamed to `app-logs` as ordered
//!   chunks, capped and compacted; `app-executor logs` reads them back. [`alerts`]: failed,
//!   timed-out, OOM, rescued and security-relevant run endings as `NOTIFY` events and signed,
//!   retried webhook POSTs. [`cron`]: cron expressions with time zones and the DST policy, the
//!   clock, and the scheduler loop that fires due schedules as runs.
//! - [`outputs`]: the `/output` contract read back with an archive reader's care, and the
//!   fenced recording of a run's `app_outputs` rows. [`retention`]: the background deletion of
//!   old logs, outputs, builds and versions. [`sandbox`]: the container engine only — the
//!   hardened profile, the install and run containers, the orphan sweep. [`runner`]: the claim
//!   loop over both queues (runs and builds, slots of their own), leases, outcome writes,
//!   rescue, drain; the `JobExecutor` seam.
//! - [`pipeline`]: one attempt of a run, phase by phase (prepare, image, install, run, collect,
//!   record), and one attempt of a build (prepare, install, build script, pack, upload,
//!   record): the production `JobExecutor`.
//! - [`config`]: finds and layers `executor.toml`, `APP_EXECUTOR_*` and systemd credentials,
//!   hands each section to the component that owns it (`<component>/settings.rs`), collects
//!   the violations and redacts secrets.
//! - [`app`]: the composition root; builds every client from the config and runs operations.
//!   [`demo`]: `app-executor demo`, the whole system once on an embedded database.
//! - [`cli`]: argument parsing, output formatting (human or `--json`) and exit codes.
//!
//! Boundaries: only `db` holds SQL; only `config` reads configuration sources; only `app`
//! constructs clients; only `sandbox` speaks to Docker. Pure logic is unit-tested next to its
//! code; behaviour against real PostgreSQL and Docker is tested in `tests/integration`.

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
pub mod signature;
pub mod storage;
pub mod telemetry;
pub mod units;
pub mod webhooks;

pub mod layers;
