-- The daemon's claim: fairness and running caps enforced inside one short statement.
--
-- app_exec.claim_next_run picks the next run for an executor and marks it running under a
-- lease, in the caller's (single-statement) transaction:
--   1. companies with eligible pending runs are visited least-loaded first (fewest running
--      runs), ties broken by the age of their oldest eligible run: a company with nothing
--      running is served before one with a backlog in progress, so one tenant's backlog cannot
--      starve another's;
--   2. a company at its running cap (p_company_cap, or its override in p_company_caps) is
--      skipped; the cap is re-checked under a per-company advisory lock so concurrent claimers
--      on other daemons cannot overshoot it;
--   3. within the company: highest priority, then oldest, skipping rows other claimers hold
--      (SKIP LOCKED) and apps at their running cap (re-checked under a per-app lock).
-- The row is returned with its new attempt number: every later write is fenced on
-- (executor_id, attempt).

create function app_exec.claim_next_run(
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
    select p.company_id,
           (select count(*) from public.app_runs x
             where x.company_id = p.company_id and x.status = 'running') as running,
           p.oldest
      from (select company_id, min(created_at) as oldest
              from public.app_runs
             where status = 'pending' and run_after <= now()
             group by company_id) p
     order by 2, 3
  loop
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
