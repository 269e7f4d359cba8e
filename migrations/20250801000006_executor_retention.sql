-- Retention bookkeeping: when a finished run's logs and outputs were deleted by the retention
-- policy (`[retention]` in executor.toml), and the indexes its scans use.
--
-- A run's logs and outputs are purged at most once each: the retention loop selects terminal
-- runs whose `completed_at` is older than the configured age and whose `*_purged_at` is still
-- null, deletes their objects from the `app-logs` bucket, then their `app_outputs` rows, and
-- stamps the column. The run row itself (status, error, duration, digest) is kept.

alter table public.app_runs
  add column logs_purged_at timestamptz,
  add column outputs_purged_at timestamptz;

comment on column public.app_runs.logs_purged_at is
  'when app-executor retention deleted this run''s logs (objects under app-logs/app_{app}/runs/{run}/ except output/, and its stdout/stderr app_outputs rows)';
comment on column public.app_runs.outputs_purged_at is
  'when app-executor retention deleted this run''s outputs (objects under app-logs/app_{app}/runs/{run}/output/ and its other app_outputs rows)';

create index app_runs_logs_retention_idx on public.app_runs (completed_at, id)
  where logs_purged_at is null and completed_at is not null;
create index app_runs_outputs_retention_idx on public.app_runs (completed_at, id)
  where outputs_purged_at is null and completed_at is not null;

-- Builds retention looks builds up by age and versions by (app, version).
create index app_builds_app_version_idx on public.app_builds (app_id, version);
create index app_runs_active_build_idx on public.app_runs (build_id)
  where status in ('pending', 'running') and build_id is not null;
-- An object may be named by several versions' rows; retention deletes it only when none of the
-- rows it keeps names it.
create index app_storage_storage_path_idx on public.app_storage (storage_path);
