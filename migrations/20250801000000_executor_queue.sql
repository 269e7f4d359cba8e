-- What the daemon adds for its queue: lease and retry columns on app_runs, the executor
-- registry, the terminal-state guard, and NOTIFY triggers.
--
-- Lifecycle: pending -> running -> success | failed | timeout | cancelled; pending -> cancelled;
-- running -> pending when a run is requeued (rescued lease, interrupted by shutdown, infra
-- retry). Terminal states are absorbing; the guard trigger rejects any way out of them, so a
-- late completion can never overwrite a cancellation.

alter table public.app_runs
  add column created_at timestamptz not null default now(),
  add column priority integer not null default 0,
  add column run_after timestamptz not null default now(),
  add column attempt integer not null default 0 check (attempt >= 0),
  add column max_attempts integer not null default 3 check (max_attempts between 1 and 100),
  add column lease_expires_at timestamptz,
  add column heartbeat_at timestamptz,
  add column schedule_id uuid references public.app_cron_schedules (id) on delete set null,
  add column scheduled_for timestamptz,
  add column error_kind text check (error_kind ~ '^[a-z][a-z0-9_]*$'),
  add column exit_code integer,
  add column artifact_digest text check (artifact_digest ~ '^sha256:[0-9a-f]{64}$'),
  add constraint app_runs_schedule_tick_key unique (schedule_id, scheduled_for),
  add constraint app_runs_running_has_lease
    check (status <> 'running' or (executor_id is not null and lease_expires_at is not null));

-- The claim scans pending runs in fairness order; rescue scans running leases; the per-company
-- and per-app caps count running runs.
create index app_runs_pending_idx on public.app_runs (company_id, priority desc, created_at)
  where status = 'pending';
create index app_runs_lease_idx on public.app_runs (lease_expires_at) where status = 'running';
create index app_runs_running_app_idx on public.app_runs (app_id) where status = 'running';
create index app_runs_created_idx on public.app_runs (created_at);

-- Clients may also set a priority on the runs they create.
grant insert (priority) on public.app_runs to authenticated;

-- The executor registry: one row per daemon process -------------------------------------------

create table public.app_executors (
  id text primary key,
  host text not null,
  version text not null,
  started_at timestamptz not null default now(),
  heartbeat_at timestamptz not null default now(),
  capacity integer not null check (capacity >= 0),
  running integer not null default 0 check (running >= 0),
  state text not null default 'active' check (state in ('active', 'draining', 'stopped'))
);
alter table public.app_executors enable row level security;
create policy "superadmins read executors" on public.app_executors
  for select to authenticated using (app_exec.is_superadmin());
grant select on public.app_executors to authenticated;
grant all on public.app_executors to service_role;
revoke all on public.app_executors from anon;

-- Terminal-state guard ------------------------------------------------------------------------

create function app_exec.guard_run_transition() returns trigger
language plpgsql
as $$
begin
  if new.status is not distinct from old.status then
    return new;
  end if;
  if old.status in ('success', 'failed', 'timeout', 'cancelled') then
    raise exception 'run % is already %; a finished run cannot become %', old.id, old.status, new.status
      using errcode = 'check_violation', hint = 'terminal run states are final; create a new run instead';
  end if;
  if old.status = 'pending' and new.status not in ('running', 'cancelled', 'failed') then
    raise exception 'run % is pending; it cannot become % without running first', old.id, new.status
      using errcode = 'check_violation';
  end if;
  return new;
end
$$;

create trigger app_runs_guard_transition
  before update of status on public.app_runs
  for each row execute function app_exec.guard_run_transition();

-- NOTIFY --------------------------------------------------------------------------------------
-- Channels are `<namespace>_<event>`; the namespace comes from app_exec.settings so that several
-- deployments (or test suites) sharing one database do not wake each other. The daemon's
-- `database.notify_namespace` must name the same value.

create table app_exec.settings (
  key text primary key,
  value text not null
);
alter table app_exec.settings enable row level security;
insert into app_exec.settings (key, value) values ('notify_namespace', 'app_executor');

create function app_exec.notify_channel(event text) returns text
language sql stable security definer set search_path = ''
as $$
  select coalesce(
    (select s.value from app_exec.settings s where s.key = 'notify_namespace'),
    'app_executor'
  ) || '_' || event
$$;

-- Security definer: clients inserting runs under RLS must not need access to app_exec.settings.
create function app_exec.notify_run_change() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  if new.status = 'pending' and (tg_op = 'INSERT' or old.status is distinct from 'pending') then
    perform pg_notify(
      app_exec.notify_channel('run_pending'),
      json_build_object('run_id', new.id, 'company_id', new.company_id, 'app_id', new.app_id)::text
    );
  elsif tg_op = 'UPDATE' and new.status = 'cancelled' and old.status is distinct from 'cancelled' then
    perform pg_notify(
      app_exec.notify_channel('run_cancelled'),
      json_build_object('run_id', new.id, 'executor_id', new.executor_id)::text
    );
  end if;
  return null;
end
$$;

create trigger app_runs_notify_insert
  after insert on public.app_runs
  for each row execute function app_exec.notify_run_change();
create trigger app_runs_notify_update
  after update of status on public.app_runs
  for each row execute function app_exec.notify_run_change();
