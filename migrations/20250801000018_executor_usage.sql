-- Usage per company and app per day: what the platform shows a tenant (and bills, if it does).
--
-- One row per (company, app, UTC day of the run's end), kept up to date by a trigger on
-- `app_runs`, so every way a run ends counts: the daemon's final write, a rescue that fails a
-- run, a client's cancel of a pending run. What is counted:
--   * runs by terminal status, when a run reaches it;
--   * the resources of the attempt that ended it: `duration_ms` (claim to end, the time it held
--     an executor slot) and, from `metadata.usage` (written by the daemon with the run's outputs),
--     CPU time, peak memory, bytes downloaded from storage, and log and output bytes.
-- Earlier attempts that were given back to the queue (infrastructure failures, a lost lease, a
-- drain) are not charged: their failure was the platform's, not the tenant's.
--
-- A run a client cancels while it executes is counted at the cancel; its resources are added
-- when its daemon completes the record (`duration_ms` set on the cancelled row).
--
-- Companies' members read their own rows under RLS (`app_exec.is_company_member`); only the
-- trigger writes. Where the `supabase_realtime` publication exists, the table is published like
-- `app_runs` and `app_outputs` (migration 16), so the platform's UI can show usage live.

create table public.app_usage_daily (
  company_id uuid not null references public.companies (id) on delete cascade,
  app_id uuid not null references public.applications (id) on delete cascade,
  day date not null,
  runs_total integer not null default 0,
  runs_success integer not null default 0,
  runs_failed integer not null default 0,
  runs_timeout integer not null default 0,
  runs_cancelled integer not null default 0,
  run_seconds double precision not null default 0,
  cpu_seconds double precision not null default 0,
  peak_memory_bytes bigint not null default 0,
  downloaded_bytes bigint not null default 0,
  log_bytes bigint not null default 0,
  output_bytes bigint not null default 0,
  updated_at timestamptz not null default now(),
  primary key (company_id, app_id, day)
);

comment on table public.app_usage_daily is
  'runs and resources per company, app and UTC day, maintained by app-executor (app-executor addition)';
comment on column public.app_usage_daily.run_seconds is
  'sum of duration_ms / 1000 of the attempts that ended the runs (claim to end)';
comment on column public.app_usage_daily.peak_memory_bytes is
  'the largest peak memory of one run that day';

create index app_usage_daily_day_idx on public.app_usage_daily (day);

alter table public.app_usage_daily enable row level security;
create policy "members read their company's usage" on public.app_usage_daily
  for select to authenticated using (app_exec.is_company_member(company_id));

-- Supabase grants every new public table to anon and authenticated: take that back; members
-- may read, nobody but the trigger writes.
revoke all on public.app_usage_daily from public, anon, authenticated;
grant select on public.app_usage_daily to authenticated;

-- A jsonb number as bigint, 0 when absent or not a number (the daemon writes integers).
create function app_exec.usage_number(value jsonb) returns bigint
language sql immutable set search_path = ''
as $$
  select case when jsonb_typeof(value) = 'number' then greatest(0, (value #>> '{}')::numeric)::bigint else 0 end
$$;

-- Adds `runs` (0 or 1) of `status` and, when `charge` is set, the row's resources to its day.
create function app_exec.add_run_usage(run public.app_runs, runs integer, charge boolean)
returns void
language plpgsql security definer set search_path = ''
as $$
declare
  usage jsonb := case when charge then coalesce(run.metadata -> 'usage', '{}') else '{}' end;
begin
  insert into public.app_usage_daily as u (
    company_id, app_id, day, runs_total, runs_success, runs_failed, runs_timeout, runs_cancelled,
    run_seconds, cpu_seconds, peak_memory_bytes, downloaded_bytes, log_bytes, output_bytes)
  values (
    run.company_id, run.app_id, (coalesce(run.completed_at, now()) at time zone 'UTC')::date,
    runs,
    case when run.status = 'success' then runs else 0 end,
    case when run.status = 'failed' then runs else 0 end,
    case when run.status = 'timeout' then runs else 0 end,
    case when run.status = 'cancelled' then runs else 0 end,
    case when charge then coalesce(run.duration_ms, 0) / 1000.0 else 0 end,
    app_exec.usage_number(usage -> 'cpu_ms') / 1000.0,
    app_exec.usage_number(usage -> 'peak_memory_bytes'),
    app_exec.usage_number(usage -> 'downloaded_bytes'),
    app_exec.usage_number(usage -> 'log_bytes'),
    app_exec.usage_number(usage -> 'output_bytes'))
  on conflict (company_id, app_id, day) do update set
    runs_total = u.runs_total + excluded.runs_total,
    runs_success = u.runs_success + excluded.runs_success,
    runs_failed = u.runs_failed + excluded.runs_failed,
    runs_timeout = u.runs_timeout + excluded.runs_timeout,
    runs_cancelled = u.runs_cancelled + excluded.runs_cancelled,
    run_seconds = u.run_seconds + excluded.run_seconds,
    cpu_seconds = u.cpu_seconds + excluded.cpu_seconds,
    peak_memory_bytes = greatest(u.peak_memory_bytes, excluded.peak_memory_bytes),
    downloaded_bytes = u.downloaded_bytes + excluded.downloaded_bytes,
    log_bytes = u.log_bytes + excluded.log_bytes,
    output_bytes = u.output_bytes + excluded.output_bytes,
    updated_at = now();
end
$$;

create function app_exec.count_run_usage() returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  terminal constant text[] := array['success', 'failed', 'timeout', 'cancelled'];
begin
  if new.status = any (terminal) and not (old.status = any (terminal)) then
    -- The run ended: count it, with the resources of the attempt that ended it (none yet for
    -- a client's cancel of a running run: its duration is not known until its daemon records).
    perform app_exec.add_run_usage(new, 1, new.duration_ms is not null);
  elsif new.status = 'cancelled' and old.status = 'cancelled'
        and old.duration_ms is null and new.duration_ms is not null then
    -- The daemon completed the record of a run cancelled under it: its resources.
    perform app_exec.add_run_usage(new, 0, true);
  end if;
  return null;
end
$$;

create trigger app_runs_count_usage
  after update of status, duration_ms on public.app_runs
  for each row execute function app_exec.count_run_usage();

revoke execute on function app_exec.usage_number(jsonb),
  app_exec.add_run_usage(public.app_runs, integer, boolean), app_exec.count_run_usage()
  from public, anon, authenticated;

-- Supabase Realtime, as for runs and outputs (migration 16).
do $$
begin
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
     and not exists (
       select 1 from pg_publication_tables
        where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'app_usage_daily'
     ) then
    alter publication supabase_realtime add table public.app_usage_daily;
  end if;
end
$$;
