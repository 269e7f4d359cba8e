-- The claim picks a company's next run with an index probe instead of sorting its backlog.
--
-- 20250801000004 walked companies by a skip scan, but inside a company it still looped over
-- `select ... order by priority desc, created_at for update skip locked` without a limit; for a
-- cursor PostgreSQL planned that as a sequential scan plus a sort of every pending run of the
-- company (7.5 ms per claim with a 4,000-run backlog, O(backlog), and all of it under the
-- company's advisory lock, so every claimer of that company waited for it). This version asks
-- for one row at a time with LIMIT 1, which the planner serves from app_runs_pending_idx
-- (company_id, priority desc, created_at) in constant time, and excludes apps already found at
-- their running cap. Behaviour (order, caps, locks) is unchanged; see
-- 20250801000003_executor_claim.sql.

create or replace function app_exec.claim_next_run(
  p_executor text,
  p_lease interval,
  p_company_cap integer,
  p_app_cap integer,
  p_company_caps jsonb default '{}'::jsonb
) returns setof public.app_runs
language plpgsql
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
    perform pg_advisory_xact_lock(hashtextextended('app_exec.claim.company:' || candidate.company_id::text, 0));
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

      perform pg_advisory_xact_lock(hashtextextended('app_exec.claim.app:' || picked.app_id::text, 0));
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
