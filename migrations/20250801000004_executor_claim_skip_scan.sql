-- Makes the claim's cost independent of the backlog size.
--
-- The first version of app_exec.claim_next_run grouped every eligible pending run by company on
-- each call, so a claim cost O(backlog). This version walks the distinct companies with pending
-- runs by a skip scan over an index (one index probe per company), takes each company's oldest
-- eligible run from the same index, and counts running runs through a partial index. Behaviour
-- (order, caps, locks) is unchanged; see 20250801000003_executor_claim.sql.

create index app_runs_pending_company_created_idx on public.app_runs (company_id, created_at)
  where status = 'pending';
create index app_runs_running_company_idx on public.app_runs (company_id)
  where status = 'running';

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

    for picked in
      select * from public.app_runs q
       where q.company_id = candidate.company_id
         and q.status = 'pending'
         and q.run_after <= now()
       order by q.priority desc, q.created_at
       for update skip locked
    loop
      perform pg_advisory_xact_lock(hashtextextended('app_exec.claim.app:' || picked.app_id::text, 0));
      select count(*) into running_now from public.app_runs
       where app_id = picked.app_id and status = 'running';
      continue when running_now >= p_app_cap;

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
