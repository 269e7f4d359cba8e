-- Tenant guards found by acting as one company's users against another's data.
--
-- 1. Functions: PostgreSQL lets PUBLIC execute every new function, so functions created after
--    the first migration's schema-wide grant (the claim, the fired-ahead withdrawal, ...) were
--    callable by anon and by any company's users. Every app_exec function is now revoked from
--    PUBLIC, anon and authenticated, and only the helpers RLS policies and CHECK constraints
--    call as the user are granted back, to authenticated (policies apply to that role only).
--    Trigger functions need no grant. Later migrations revoke what they create the same way;
--    `rls::only_policy_helpers_are_executable_by_clients` fails on any function left open.
-- 2. A run's build must be a build of the run's app (a composite foreign key).
-- 3. A client's run or schedule records the caller (`auth.uid()`) as who triggered or created it.
-- 4. A log object is readable only under its run's own `app_<app_id>/runs/<run_id>/` prefix.

-- 4. Storage read policies: the whole prefix, and canonical uuids only (no cast errors).
create or replace function app_exec.can_read_run_object(object_name text) returns boolean
language sql stable security definer set search_path = ''
as $$
  select coalesce((
    select (storage.foldername(object_name))[1] = 'app_' || r.app_id::text
       and app_exec.is_company_member(r.company_id)
      from public.app_runs r
     where (storage.foldername(object_name))[2] = 'runs'
       and (storage.foldername(object_name))[3]
           ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
       and r.id = ((storage.foldername(object_name))[3])::uuid
  ), false)
$$;

create or replace function app_exec.can_read_app_object(object_name text) returns boolean
language sql stable security definer set search_path = ''
as $$
  select coalesce(
    (storage.foldername(object_name))[1]
      ~ '^app_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
    and app_exec.can_read_app(substring((storage.foldername(object_name))[1] from 5)::uuid),
    false
  )
$$;

-- 2. A run's build is one of its app's builds. `on delete set null (build_id)` keeps the run.
alter table public.app_builds add constraint app_builds_id_app_key unique (id, app_id);
alter table public.app_runs drop constraint app_runs_build_id_fkey;
alter table public.app_runs
  add constraint app_runs_build_of_app foreign key (build_id, app_id)
    references public.app_builds (id, app_id) on delete set null (build_id);

-- 3. Who triggered a run or created a schedule, for clients: the caller, whatever they sent.
create function app_exec.record_client_caller() returns trigger
language plpgsql set search_path = ''
as $$
begin
  if current_user = 'authenticated' then
    if tg_table_name = 'app_runs' then
      new.triggered_by := auth.uid();
    else
      new.created_by := auth.uid();
    end if;
  end if;
  return new;
end
$$;
create trigger app_runs_record_client_caller before insert on public.app_runs
  for each row execute function app_exec.record_client_caller();
create trigger app_cron_schedules_record_client_caller before insert on public.app_cron_schedules
  for each row execute function app_exec.record_client_caller();

-- 1. Execute rights: nothing by default, the policy helpers for authenticated users, everything
--    for the service role (the daemon connects as it or as the owner).
revoke execute on all functions in schema app_exec from public, anon, authenticated;
grant execute on function
  app_exec.is_superadmin(),
  app_exec.user_company_ids(),
  app_exec.company_role(uuid),
  app_exec.is_company_member(uuid),
  app_exec.can_manage_company(uuid),
  app_exec.company_has_app(uuid, uuid),
  app_exec.can_read_app(uuid),
  app_exec.can_read_run(uuid),
  app_exec.can_read_app_object(text),
  app_exec.can_read_run_object(text),
  app_exec.is_app_object_key(uuid, text)
  to authenticated;
grant execute on all functions in schema app_exec to service_role;
revoke usage on schema app_exec from anon;
