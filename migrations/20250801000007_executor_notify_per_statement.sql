-- New pending runs notify the daemons once per INSERT statement instead of once per row.
--
-- The cron scheduler inserts hundreds of runs per statement; a per-row trigger ran a plpgsql
-- function, a settings lookup and a pg_notify with a distinct payload for each of them, and every
-- daemon then received (and ignored the payload of) each notification. The daemons only need to
-- know that something became claimable. A single-row insert (a client, `enqueue`) still sends the
-- same payload as before, `{"run_id", "company_id", "app_id"}`; a multi-row insert sends
-- `{"runs": <count>}`. Updates (requeue, cancel) keep their per-row trigger.

drop trigger app_runs_notify_insert on public.app_runs;

create function app_exec.notify_runs_inserted() returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  pending bigint;
  only_run record;
begin
  select count(*) into pending from inserted where status = 'pending';
  if pending = 1 then
    select id, company_id, app_id into only_run from inserted where status = 'pending';
    perform pg_notify(
      app_exec.notify_channel('run_pending'),
      json_build_object('run_id', only_run.id, 'company_id', only_run.company_id, 'app_id', only_run.app_id)::text
    );
  elsif pending > 1 then
    perform pg_notify(
      app_exec.notify_channel('run_pending'),
      json_build_object('runs', pending)::text
    );
  end if;
  return null;
end
$$;

create trigger app_runs_notify_insert
  after insert on public.app_runs
  referencing new table as inserted
  for each statement execute function app_exec.notify_runs_inserted();
