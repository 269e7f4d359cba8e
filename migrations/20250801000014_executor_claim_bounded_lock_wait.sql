-- The claim never waits long on another session: a session (or a stuck daemon) holding a
-- company's or an app's claim lock used to make every claim of that company wait without end,
-- each waiting claim holding a pooled connection, until lease renewals, rescues and heartbeats
-- of other companies' runs found no connection and healthy runs were abandoned. Each advisory
-- lock wait is now bounded by the function's own `lock_timeout` (1 s); past it the claim skips
-- that company (or app) and goes on with the others. Otherwise as in
-- 20250801000008_executor_claim_indexed_pick.sql. Execute rights are unchanged (a replaced
-- function keeps its grants; 20250801000013 gave them to service_role only).

create or replace function app_exec.claim_next_run(
  p_executor text,
  p_lease interval,
  p_company_cap integer,
  p_app_cap integer,
  p_company_caps jsonb default '{}'::jsonb
) returns setof public.app_runs
language plpgsql
-- Bounds every advisory-lock wait inside the claim; a wait past it skips that company or app.
set lock_timeout = '1s'
as $$
declare
  candidate record;
  picked public.app_runs;
  cap integer;
  running_now integer;
  apps_at_cap uuid[];
begin
  for candidate in
    with recursive companies as (
      (select r.company_id from public.app_runs r
        where r.status = 'pending' order by r.company_id limit 1)
      union all
      select (select r.company_id from public.app_runs r
               where r.status = 'pending' and r.company_id > c.company_id
               order by r.company_id limit 1)
        from companies c
       where c.company_id is not null
    )
    select c.company_id,
           (select count(*) from public.app_runs x
             where x.company_id = c.company_id and x.status = 'running') as running,
           (select p.created_at from public.app_runs p
             where p.company_id = c.company_id and p.status = 'pending' and p.run_after <= now()
             order by p.created_at limit 1) as oldest
      from companies c
     where c.company_id is not null
     order by 2, 3
  loop
    continue when candidate.oldest is null;
    cap := coalesce((p_company_caps ->> candidate.company_id::text)::integer, p_company_cap);
    continue when candidate.running >= cap;
    begin
      perform pg_advisory_xact_lock(hashtextextended('app_exec.claim.company:' || candidate.company_id::text, 0));
    exception when lock_not_available then
      continue; -- held by a stuck session: the other companies still get their runs
    end;
    select count(*) into running_now from public.app_runs
     where company_id = candidate.company_id and status = 'running';
    continue when running_now >= cap;

    apps_at_cap := '{}';
    loop
      select * into picked from public.app_runs q
       where q.company_id = candidate.company_id
         and q.status = 'pending'
         and q.run_after <= now()
         and q.app_id <> all (apps_at_cap)
       order by q.priority desc, q.created_at
       limit 1
       for update skip locked;
      exit when not found;

      begin
        perform pg_advisory_xact_lock(hashtextextended('app_exec.claim.app:' || picked.app_id::text, 0));
      exception when lock_not_available then
        apps_at_cap := apps_at_cap || picked.app_id;
        continue;
      end;
      select count(*) into running_now from public.app_runs
       where app_id = picked.app_id and status = 'running';
      if running_now >= p_app_cap then
        apps_at_cap := apps_at_cap || picked.app_id;
        continue;
      end if;

      update public.app_runs
         set status = 'running',
             executor_id = p_executor,
             started_at = now(),
             attempt = attempt + 1,
             lease_expires_at = now() + p_lease,
             heartbeat_at = now(),
             completed_at = null,
             duration_ms = null,
             exit_code = null
       where id = picked.id
      returning * into picked;
      return next picked;
      return;
    end loop;
  end loop;
end
$$;
