-- The app platform's tables, the membership functions its policies go through, and RLS.
--
-- Host tables: the platform already has `companies` and `applications`; minimal versions are
-- created only where they are absent (a plain database, the demo, the tests). Everything else
-- is owned by this project.
--
-- Tenancy model. Every policy calls a function in the `app_exec` schema (not exposed through
-- the API). A host whose membership data lives elsewhere redefines these functions and nothing
-- else:
--   app_exec.is_superadmin()                 the caller manages everything
--   app_exec.user_company_ids()              companies the caller belongs to
--   app_exec.company_role(company)           'owner' | 'admin' | 'member' | null
--   app_exec.is_company_member(company)      reads the company's runs, outputs, schedules
--   app_exec.can_manage_company(company)     owners and admins create runs, manage schedules
--   app_exec.company_has_app(company, app)   the app is assigned to the company
--   app_exec.can_read_app(app)               the app is assigned to one of the caller's companies
--   app_exec.can_read_run(run)               the run belongs to one of the caller's companies
-- The daemon connects with a role that bypasses RLS (service_role or the database owner).

-- Host tables ---------------------------------------------------------------------------------

do $$
begin
  if to_regclass('public.companies') is null then
    create table public.companies (
      id uuid primary key default gen_random_uuid(),
      name text not null,
      created_at timestamptz not null default now()
    );
    alter table public.companies enable row level security;
  end if;
  if to_regclass('public.applications') is null then
    create table public.applications (
      id uuid primary key default gen_random_uuid(),
      name text not null,
      created_at timestamptz not null default now()
    );
    alter table public.applications enable row level security;
  end if;
end
$$;

-- Membership data the policies need -----------------------------------------------------------

create schema app_exec;

create table app_exec.company_members (
  company_id uuid not null references public.companies (id) on delete cascade,
  user_id uuid not null,
  role text not null check (role in ('owner', 'admin', 'member')),
  created_at timestamptz not null default now(),
  primary key (company_id, user_id)
);
create index company_members_user_idx on app_exec.company_members (user_id);

create table app_exec.superadmins (
  user_id uuid primary key,
  created_at timestamptz not null default now()
);

-- Which apps a company may see and run.
create table app_exec.company_apps (
  company_id uuid not null references public.companies (id) on delete cascade,
  app_id uuid not null references public.applications (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (company_id, app_id)
);
create index company_apps_app_idx on app_exec.company_apps (app_id);

-- Only the owner (and roles bypassing RLS) touch these tables directly; everyone else goes
-- through the security-definer functions below.
alter table app_exec.company_members enable row level security;
alter table app_exec.superadmins enable row level security;
alter table app_exec.company_apps enable row level security;

-- Membership functions ------------------------------------------------------------------------

create function app_exec.is_superadmin() returns boolean
language sql stable security definer set search_path = ''
as $$
  select exists (select 1 from app_exec.superadmins s where s.user_id = auth.uid())
$$;

create function app_exec.user_company_ids() returns setof uuid
language sql stable security definer set search_path = ''
as $$
  select m.company_id from app_exec.company_members m where m.user_id = auth.uid()
$$;

create function app_exec.company_role(company uuid) returns text
language sql stable security definer set search_path = ''
as $$
  select m.role from app_exec.company_members m
  where m.company_id = company and m.user_id = auth.uid()
$$;

create function app_exec.is_company_member(company uuid) returns boolean
language sql stable security definer set search_path = ''
as $$
  select app_exec.is_superadmin() or app_exec.company_role(company) is not null
$$;

create function app_exec.can_manage_company(company uuid) returns boolean
language sql stable security definer set search_path = ''
as $$
  select app_exec.is_superadmin() or coalesce(app_exec.company_role(company) in ('owner', 'admin'), false)
$$;

create function app_exec.company_has_app(company uuid, app uuid) returns boolean
language sql stable security definer set search_path = ''
as $$
  select exists (select 1 from app_exec.company_apps ca where ca.company_id = company and ca.app_id = app)
$$;

create function app_exec.can_read_app(app uuid) returns boolean
language sql stable security definer set search_path = ''
as $$
  select app_exec.is_superadmin() or exists (
    select 1 from app_exec.company_apps ca
    join app_exec.company_members m on m.company_id = ca.company_id
    where ca.app_id = app and m.user_id = auth.uid()
  )
$$;

grant usage on schema app_exec to anon, authenticated, service_role;
grant execute on all functions in schema app_exec to anon, authenticated, service_role;

-- Host table policies (only effective where this migration created the tables) ---------------

do $$
begin
  if not exists (select 1 from pg_policies where schemaname = 'public' and tablename = 'companies') then
    create policy "members read their companies" on public.companies
      for select to authenticated using (app_exec.is_company_member(id));
    create policy "superadmins manage companies" on public.companies
      for all to authenticated using (app_exec.is_superadmin()) with check (app_exec.is_superadmin());
  end if;
  if not exists (select 1 from pg_policies where schemaname = 'public' and tablename = 'applications') then
    create policy "members read assigned apps" on public.applications
      for select to authenticated using (app_exec.can_read_app(id));
    create policy "superadmins manage apps" on public.applications
      for all to authenticated using (app_exec.is_superadmin()) with check (app_exec.is_superadmin());
  end if;
end
$$;

grant select on public.companies, public.applications to authenticated;

-- app_storage: one row per published file ------------------------------------------------------

create table public.app_storage (
  id uuid primary key default gen_random_uuid(),
  app_id uuid not null references public.applications (id) on delete cascade,
  version text not null,
  file_path text not null,
  storage_path text not null,
  file_type text not null check (file_type in ('manifest', 'source', 'config', 'asset', 'archive', 'other')),
  file_size bigint not null check (file_size >= 0),
  checksum text not null check (checksum ~ '^sha256:[0-9a-f]{64}$'),
  mime_type text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint app_storage_file_key unique (app_id, version, file_path),
  constraint app_storage_path_relative check (file_path !~ '^/' and file_path !~ '(^|/)\.\.(/|$)')
);
create index app_storage_app_version_idx on public.app_storage (app_id, version);

-- app_builds: a version of an app prepared for running ----------------------------------------

create table public.app_builds (
  id uuid primary key default gen_random_uuid(),
  app_id uuid not null references public.applications (id) on delete cascade,
  version text not null,
  build_status text not null default 'pending'
    check (build_status in ('pending', 'building', 'success', 'failed')),
  is_current boolean not null default false,
  artifact_digest text check (artifact_digest ~ '^sha256:[0-9a-f]{64}$'),
  build_log_path text,
  error_message text,
  metadata jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  completed_at timestamptz
);
create index app_builds_app_idx on public.app_builds (app_id, created_at desc);
create unique index app_builds_one_current_idx on public.app_builds (app_id) where is_current;

-- app_runs: one row per execution; the daemon's queue -----------------------------------------

create table public.app_runs (
  id uuid primary key default gen_random_uuid(),
  app_id uuid not null references public.applications (id) on delete cascade,
  company_id uuid not null references public.companies (id) on delete cascade,
  build_id uuid references public.app_builds (id) on delete set null,
  run_type text not null default 'manual' check (run_type in ('manual', 'cron', 'api', 'webhook')),
  status text not null default 'pending'
    check (status in ('pending', 'running', 'success', 'failed', 'timeout', 'cancelled')),
  input_data jsonb not null default '{}'::jsonb,
  metadata jsonb not null default '{}'::jsonb,
  triggered_by uuid,
  executor_id text,
  started_at timestamptz,
  completed_at timestamptz,
  duration_ms bigint check (duration_ms >= 0),
  error_message text,
  logs_path text,
  output_path text
);
create index app_runs_company_idx on public.app_runs (company_id);
create index app_runs_app_idx on public.app_runs (app_id);

-- app_outputs: what a run produced ------------------------------------------------------------

create table public.app_outputs (
  id uuid primary key default gen_random_uuid(),
  run_id uuid not null references public.app_runs (id) on delete cascade,
  output_type text not null
    check (output_type in ('stdout', 'stderr', 'result', 'metric', 'file', 'error')),
  name text,
  output_data jsonb,
  file_path text,
  file_size bigint check (file_size >= 0),
  mime_type text,
  created_at timestamptz not null default now()
);
create index app_outputs_run_idx on public.app_outputs (run_id);

-- app_cron_schedules: schedules evaluated by the daemons --------------------------------------

create table public.app_cron_schedules (
  id uuid primary key default gen_random_uuid(),
  app_id uuid not null references public.applications (id) on delete cascade,
  company_id uuid not null references public.companies (id) on delete cascade,
  name text,
  cron_expression text not null,
  timezone text not null default 'UTC',
  is_active boolean not null default true,
  config jsonb not null default '{}'::jsonb,
  last_run_at timestamptz,
  last_run_id uuid references public.app_runs (id) on delete set null,
  next_run_at timestamptz,
  created_by uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index app_cron_schedules_due_idx on public.app_cron_schedules (next_run_at) where is_active;
create index app_cron_schedules_company_idx on public.app_cron_schedules (company_id);

-- app_permissions: what the platform granted an app -------------------------------------------

create table public.app_permissions (
  id uuid primary key default gen_random_uuid(),
  app_id uuid not null references public.applications (id) on delete cascade,
  permission_type text not null
    check (permission_type in ('network', 'storage', 'database', 'secrets', 'filesystem')),
  scope text not null default '*',
  granted_by uuid,
  created_at timestamptz not null default now(),
  constraint app_permissions_key unique (app_id, permission_type, scope)
);

-- Row-level security --------------------------------------------------------------------------

create function app_exec.can_read_run(run uuid) returns boolean
language sql stable security definer set search_path = ''
as $$
  select exists (
    select 1 from public.app_runs r where r.id = run and app_exec.is_company_member(r.company_id)
  )
$$;
grant execute on function app_exec.can_read_run(uuid) to anon, authenticated, service_role;

alter table public.app_storage enable row level security;
alter table public.app_builds enable row level security;
alter table public.app_runs enable row level security;
alter table public.app_outputs enable row level security;
alter table public.app_cron_schedules enable row level security;
alter table public.app_permissions enable row level security;

-- Files, builds and permissions: readable for the companies an app is assigned to; written by
-- superadmins (and by `app-executor publish`, which connects as the service role).
create policy "members read assigned apps' files" on public.app_storage
  for select to authenticated using (app_exec.can_read_app(app_id));
create policy "superadmins manage files" on public.app_storage
  for all to authenticated using (app_exec.is_superadmin()) with check (app_exec.is_superadmin());

create policy "members read assigned apps' builds" on public.app_builds
  for select to authenticated using (app_exec.can_read_app(app_id));
create policy "superadmins manage builds" on public.app_builds
  for all to authenticated using (app_exec.is_superadmin()) with check (app_exec.is_superadmin());

create policy "members read assigned apps' permissions" on public.app_permissions
  for select to authenticated using (app_exec.can_read_app(app_id));
create policy "superadmins manage permissions" on public.app_permissions
  for all to authenticated using (app_exec.is_superadmin()) with check (app_exec.is_superadmin());

-- Runs: members read their company's; owners and admins create pending runs of apps assigned to
-- their company and may cancel them; nothing else is writable by clients (column grants below).
create policy "members read company runs" on public.app_runs
  for select to authenticated using (app_exec.is_company_member(company_id));
create policy "managers create runs" on public.app_runs
  for insert to authenticated
  with check (
    status = 'pending'
    and app_exec.can_manage_company(company_id)
    and app_exec.company_has_app(company_id, app_id)
  );
create policy "managers cancel runs" on public.app_runs
  for update to authenticated
  using (app_exec.can_manage_company(company_id))
  with check (app_exec.can_manage_company(company_id) and status = 'cancelled');
create policy "superadmins manage runs" on public.app_runs
  for all to authenticated using (app_exec.is_superadmin()) with check (app_exec.is_superadmin());

create policy "members read company outputs" on public.app_outputs
  for select to authenticated using (app_exec.can_read_run(run_id));
create policy "superadmins manage outputs" on public.app_outputs
  for all to authenticated using (app_exec.is_superadmin()) with check (app_exec.is_superadmin());

create policy "members read company schedules" on public.app_cron_schedules
  for select to authenticated using (app_exec.is_company_member(company_id));
create policy "managers create schedules" on public.app_cron_schedules
  for insert to authenticated
  with check (app_exec.can_manage_company(company_id) and app_exec.company_has_app(company_id, app_id));
create policy "managers update schedules" on public.app_cron_schedules
  for update to authenticated
  using (app_exec.can_manage_company(company_id))
  with check (app_exec.can_manage_company(company_id) and app_exec.company_has_app(company_id, app_id));
create policy "managers delete schedules" on public.app_cron_schedules
  for delete to authenticated using (app_exec.can_manage_company(company_id));
create policy "superadmins manage schedules" on public.app_cron_schedules
  for all to authenticated using (app_exec.is_superadmin()) with check (app_exec.is_superadmin());

-- Table privileges: RLS filters rows, these grants limit columns. `anon` gets nothing.
grant select on public.app_storage, public.app_builds, public.app_permissions,
  public.app_runs, public.app_outputs, public.app_cron_schedules to authenticated;
grant insert, update, delete on public.app_storage, public.app_builds, public.app_permissions,
  public.app_outputs to authenticated;
grant insert (app_id, company_id, build_id, run_type, input_data, metadata, triggered_by)
  on public.app_runs to authenticated;
grant update (status) on public.app_runs to authenticated;
grant insert, update, delete on public.app_cron_schedules to authenticated;
grant all on public.app_storage, public.app_builds, public.app_permissions, public.app_runs,
  public.app_outputs, public.app_cron_schedules to service_role;
revoke all on public.app_storage, public.app_builds, public.app_permissions, public.app_runs,
  public.app_outputs, public.app_cron_schedules from anon;

-- Storage objects -----------------------------------------------------------------------------
-- app-storage keys start with `app_{appId}/`; app-logs keys are `app_{appId}/runs/{runId}/…`.

create function app_exec.can_read_app_object(object_name text) returns boolean
language sql stable security definer set search_path = ''
as $$
  select coalesce(
    substring((storage.foldername(object_name))[1] from '^app_([0-9a-fA-F-]{36})$')::uuid
      in (select ca.app_id from app_exec.company_apps ca
          join app_exec.company_members m on m.company_id = ca.company_id
          where m.user_id = auth.uid()),
    false
  )
$$;

create function app_exec.can_read_run_object(object_name text) returns boolean
language sql stable security definer set search_path = ''
as $$
  select coalesce(
    (storage.foldername(object_name))[2] = 'runs'
      and app_exec.can_read_run(
        substring((storage.foldername(object_name))[3] from '^([0-9a-fA-F-]{36})$')::uuid),
    false
  )
$$;

grant execute on function app_exec.can_read_app_object(text), app_exec.can_read_run_object(text)
  to anon, authenticated, service_role;

create policy "app-executor: members read assigned apps' files" on storage.objects
  for select to authenticated
  using (bucket_id = 'app-storage' and app_exec.can_read_app_object(name));
create policy "app-executor: members read their runs' logs and outputs" on storage.objects
  for select to authenticated
  using (bucket_id = 'app-logs' and app_exec.can_read_run_object(name));
create policy "app-executor: superadmins manage app objects" on storage.objects
  for all to authenticated
  using (bucket_id in ('app-storage', 'app-logs') and app_exec.is_superadmin())
  with check (bucket_id in ('app-storage', 'app-logs') and app_exec.is_superadmin());
