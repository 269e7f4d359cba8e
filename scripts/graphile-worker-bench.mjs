#!/usr/bin/env node
// A baseline for `scripts/bench queue`: graphile-worker processing no-op jobs on the same
// PostgreSQL server, reported as jobs/s.
//
//   node scripts/graphile-worker-bench.mjs <postgres-url> <jobs> <concurrency> [--batched]
//
// Prints exactly one line on stdout, the jobs/s (e.g. `1234.5`); progress and warnings go to
// stderr. Exits 0 on success, 2 on bad usage, 3 when --batched is asked of a graphile-worker
// without batching, 1 on any other failure.
//
// Steps, in this order (only step 5 is timed):
//   1. migrate graphile-worker's schema (makeWorkerUtils(...).migrate());
//   2. remove every leftover job (truncate of graphile-worker's job table, locked ones included);
//   3. insert <jobs> jobs of task `noop` in one statement: graphile_worker.add_jobs() over an
//      array built by generate_series;
//   4. vacuum analyze + checkpoint (as `scripts/bench queue` does before each round), then open
//      every connection of the pool the worker will use, so connection setup is not timed;
//   5. runOnce() with the task list { noop: async () => {} } and <concurrency> concurrent jobs:
//      the clock starts just before runOnce() is called and stops when it resolves, that is once
//      the workers have found no more jobs and the pool has shut down (with --batched: after the
//      local queue was released and the last batch of completions was written). Inside that
//      window runOnce also compiles its options and checks the (already migrated) schema: one
//      query;
//   6. check that the job table is empty and that exactly <jobs> jobs succeeded (none failed).
//
// Default mode is graphile-worker's defaults: a fetch and a completion per job
// (localQueue.size -1, completeJobBatchDelay -1). --batched uses the settings of graphile-worker's
// performance page: localQueue { size: 500 }, completeJobBatchDelay 0, failJobBatchDelay 0.
//
// The pool is a pg.Pool with max = max(10, concurrency + 2): graphile-worker's default
// maxPoolSize (10) unless the concurrency needs more (its docs recommend concurrency + 2).
//
// graphile-worker is loaded from $GRAPHILE_WORKER_DIR/node_modules (default
// <repo>/target/bench/graphile-worker, where scripts/graphile-worker-install puts it).

import { EventEmitter } from "node:events";
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const EXPECTED_VERSION = "0.17.3";
const SCHEMA = "graphile_worker";
const IDLE_TIMEOUT_MS = 30_000; // how long to wait for graphile-worker's last queries after runOnce
const BATCHED_PRESET = {
  worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 },
};
const USAGE =
  "usage: node scripts/graphile-worker-bench.mjs <postgres-url> <jobs> <concurrency> [--batched]";

const log = (msg) => process.stderr.write(`graphile-worker-bench: ${msg}\n`);
class Failure extends Error {
  constructor(message, code = 1) {
    super(message);
    this.code = code;
  }
}

// Runs one step; an unexpected error becomes a Failure that names the step.
async function step(what, fn) {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof Failure) throw e;
    throw new Failure(`${what} failed: ${e && e.message ? e.message : e}`);
  }
}

function parseArgs(argv) {
  const positional = [];
  let batched = false;
  for (const arg of argv) {
    if (arg === "--batched") batched = true;
    else if (arg === "-h" || arg === "--help") {
      process.stderr.write(`${USAGE}\n`);
      process.exit(0);
    } else if (arg.startsWith("--")) throw new Failure(`unknown option '${arg}'\n${USAGE}`, 2);
    else positional.push(arg);
  }
  if (positional.length !== 3) throw new Failure(USAGE, 2);
  const [url, jobsArg, concurrencyArg] = positional;
  const positiveInt = (name, s) => {
    if (!/^[1-9][0-9]*$/.test(s)) throw new Failure(`<${name}> must be a positive integer, got '${s}'\n${USAGE}`, 2);
    return Number(s);
  };
  return {
    url,
    jobs: positiveInt("jobs", jobsArg),
    concurrency: positiveInt("concurrency", concurrencyArg),
    batched,
  };
}

function loadGraphileWorker() {
  const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
  const dir = path.resolve(process.env.GRAPHILE_WORKER_DIR || path.join(repo, "target/bench/graphile-worker"));
  const pkgDir = path.join(dir, "node_modules", "graphile-worker");
  const hint = `run scripts/graphile-worker-install${process.env.GRAPHILE_WORKER_DIR ? " with the same GRAPHILE_WORKER_DIR" : ""}`;
  let version;
  try {
    version = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;
  } catch (e) {
    throw new Failure(`graphile-worker is not installed in ${dir} (${e.code || e.message}): ${hint}`);
  }
  // Resolve from the install prefix only, never from wherever this script happens to live.
  const requireFromDir = createRequire(path.join(dir, "package.json"));
  let gw, pg, entry;
  try {
    entry = requireFromDir.resolve("graphile-worker");
    gw = requireFromDir("graphile-worker");
    // The pg that graphile-worker itself uses, so the pool we hand it is of the same class.
    pg = createRequire(entry)("pg");
  } catch (e) {
    throw new Failure(`cannot load graphile-worker from ${dir}: ${e.message}: ${hint}`);
  }
  if (!entry.startsWith(dir + path.sep)) throw new Failure(`graphile-worker resolved to ${entry}, outside ${dir}`);
  if (version !== EXPECTED_VERSION) log(`warning: graphile-worker ${version} in ${dir}, expected ${EXPECTED_VERSION}`);
  for (const name of ["runOnce", "makeWorkerUtils", "Logger"]) {
    if (typeof gw[name] !== "function") throw new Failure(`graphile-worker ${version} has no '${name}' export`);
  }
  // Batching (local queue, batched completion) arrived with the local queue module; look for it
  // and for the option the worker pool reads, rather than trusting a version number.
  const distDir = path.dirname(entry);
  let mainSource = "";
  try {
    mainSource = fs.readFileSync(path.join(distDir, "main.js"), "utf8");
  } catch {
    /* checked below */
  }
  const hasBatching =
    fs.existsSync(path.join(distDir, "localQueue.js")) &&
    mainSource.includes("localQueue") &&
    mainSource.includes("completeJobBatchDelay");
  return { gw, pg, version, dir, hasBatching };
}

// Drops debug and info; warnings and errors go to stderr.
function makeLogger(gw) {
  return new gw.Logger((scope) => (level, message) => {
    if (level !== "error" && level !== "warning") return;
    const where = scope && scope.label ? ` [${scope.label}${scope.workerId ? ` ${scope.workerId}` : ""}]` : "";
    process.stderr.write(`graphile-worker ${level}${where}: ${message}\n`);
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { gw, pg, version, dir, hasBatching } = loadGraphileWorker();
  if (args.batched && !hasBatching) {
    throw new Failure(`graphile-worker ${version} (in ${dir}) has no batching options (localQueue, completeJobBatchDelay)`, 3);
  }
  const logger = makeLogger(gw);
  const poolMax = Math.max(10, args.concurrency + 2);
  const pool = new pg.Pool({ connectionString: args.url, max: poolMax });
  // Handlers on the pool and on each client, so an idle client's error is reported instead of
  // crashing the process (graphile-worker warns about pools without them).
  pool.on("error", (e) => log(`idle PostgreSQL client error: ${e.message}`));
  pool.on("connect", (client) => client.on("error", (e) => log(`PostgreSQL client error: ${e.message}`)));
  try {
    log(`graphile-worker ${version}, ${args.jobs} jobs, concurrency ${args.concurrency}, ${args.batched ? "batched (localQueue.size 500, completeJobBatchDelay 0, failJobBatchDelay 0)" : "default mode"}, pool max ${poolMax}`);

    await step("migrating graphile-worker's schema", async () => {
      const utils = await gw.makeWorkerUtils({ pgPool: pool, logger });
      try {
        await utils.migrate();
      } finally {
        await utils.release();
      }
    });

    await step("queueing the jobs", async () => {
      await pool.query(`truncate ${SCHEMA}._private_jobs`);
      const added = await pool.query(
        `select count(*)::int as n from ${SCHEMA}.add_jobs(
           array(select row('noop', '{}'::json, null, null, null, null, null, null)::${SCHEMA}.job_spec
                 from generate_series(1, $1::int)))`,
        [args.jobs],
      );
      if (added.rows[0].n !== args.jobs) throw new Failure(`add_jobs added ${added.rows[0].n} jobs, not ${args.jobs}`);
      await pool.query(`vacuum analyze ${SCHEMA}._private_jobs`);
      await pool.query("checkpoint");
    });

    // Open every connection of the pool now, so connection setup is not timed.
    await step(`opening ${poolMax} connections`, async () => {
      const clients = await Promise.all(Array.from({ length: poolMax }, () => pool.connect()));
      try {
        await Promise.all(clients.map((c) => c.query("select 1")));
      } finally {
        for (const c of clients) c.release();
      }
    });
    log(`${args.jobs} jobs queued, ${pool.totalCount} connections open; processing`);

    const events = new EventEmitter();
    let succeeded = 0;
    let failed = 0;
    let firstError = null;
    events.on("job:success", () => succeeded++);
    events.on("job:error", ({ error }) => {
      failed++;
      firstError ??= error;
    });

    // runOnce can resolve while the last completions are still in flight: in default mode a
    // worker does not wait for its job's completion query before fetching the next job, and
    // nothing waits for the last one. So the clock stops when runOnce has resolved AND every
    // client is back in the pool (no query of graphile-worker's still running).
    let busy = 0;
    let onIdle = null;
    pool.on("acquire", () => busy++);
    pool.on("release", () => {
      busy--;
      if (busy === 0 && onIdle) onIdle();
    });
    const poolIdle = () =>
      busy === 0
        ? Promise.resolve()
        : new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Failure(`${busy} PostgreSQL client(s) still busy ${IDLE_TIMEOUT_MS} ms after runOnce resolved`)), IDLE_TIMEOUT_MS);
            onIdle = () => {
              clearTimeout(timer);
              resolve();
            };
          });

    const started = performance.now();
    await step("runOnce", () =>
      gw.runOnce({
        pgPool: pool,
        taskList: { noop: async () => {} },
        concurrency: args.concurrency,
        noHandleSignals: true,
        logger,
        events,
        ...(args.batched ? { preset: BATCHED_PRESET } : {}),
      }),
    );
    const runOnceSeconds = (performance.now() - started) / 1000;
    await poolIdle();
    const seconds = (performance.now() - started) / 1000;

    const left = await pool.query(`select count(*)::int as n, count(*) filter (where locked_at is not null)::int as locked from ${SCHEMA}._private_jobs`);
    if (failed > 0) throw new Failure(`${failed} job(s) failed, first error: ${firstError && firstError.message}`);
    if (left.rows[0].n !== 0) throw new Failure(`runOnce returned with ${left.rows[0].n} job(s) left (${left.rows[0].locked} locked)`);
    if (succeeded !== args.jobs) throw new Failure(`${succeeded} job(s) succeeded, not ${args.jobs}`);
    log(`${args.jobs} jobs in ${seconds.toFixed(3)} s (runOnce resolved at ${runOnceSeconds.toFixed(3)} s)`);
    process.stdout.write(`${(args.jobs / seconds).toFixed(1)}\n`);
  } finally {
    await pool.end();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    if (e instanceof Failure) log(e.message);
    else log(`failed: ${e && e.stack ? e.stack : e}`);
    process.exit(e instanceof Failure ? e.code : 1);
  },
);
