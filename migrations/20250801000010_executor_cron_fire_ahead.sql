-- Cron runs may be inserted a little before their nominal instant ("fire ahead", the daemon's
-- cron.fire_ahead, default 2 s) with run_after = scheduled_for, so a run is claimable at its
-- instant instead of after the database has written a whole minute's worth of runs. The
-- scheduler only fires a tick ahead when nothing that happens before the instant can change the
-- decision (no active run of the schedule, or overlap = allow). What it cannot foresee is an
-- edit of the schedule between the insert and the instant. This migration covers that:
--
-- * An edit of anything but the scheduler's bookkeeping (next_run_at, last_run_at, last_run_id,
--   updated_at) withdraws the runs inserted ahead whose instant has not come: the still-pending
--   run and its `fired` tick are deleted, last_run_at / last_run_id go back to the newest tick
--   that remains, and next_run_at is cleared so the daemons plan the schedule again under its
--   new definition (the withdrawn tick fires again if it is still a tick, with the new input).
-- * Deleting a schedule cancels its runs inserted ahead (app_runs.schedule_id would otherwise
--   be set null and the orphaned run would still start at its instant). They are cancelled, not
--   deleted: a BEFORE DELETE trigger may not cause a change to the row being deleted, and
--   deleting a run sets the schedule's last_run_id to null; an AFTER trigger comes too late,
--   since the foreign key has already detached the runs by then.
--
-- A run already claimed (running) is never withdrawn; the delete's status check is re-evaluated
-- under the row lock, so a claim that wins the race keeps its run.
--
-- The runners wake at the earliest future run_after of a pending run (a timer, besides NOTIFY
-- and the poll interval); the partial index keeps that lookup an index probe.

create index app_runs_pending_run_after_idx on public.app_runs (run_after)
  where status = 'pending';

-- Deletes the still-pending runs of `p_schedule` whose instant has not come, with their ticks.
-- Returns how many runs it deleted.
create function app_exec.withdraw_runs_fired_ahead(p_schedule uuid) returns integer
language plpgsql security definer set search_path = ''
as $$
declare
  withdrawn integer;
begin
  -- One statement, so a claim racing with it either keeps its run and tick or loses both.
  with gone as (
    delete from public.app_runs r
     where r.schedule_id = p_schedule
       and r.status = 'pending'
       and r.scheduled_for > now()
    returning r.schedule_id, r.scheduled_for
  ), ticks as (
    delete from public.app_cron_ticks t
     using gone g
     where t.schedule_id = g.schedule_id and t.scheduled_for = g.scheduled_for
  )
  select count(*) into withdrawn from gone;
  return withdrawn;
end
$$;

create function app_exec.withdraw_runs_on_schedule_edit() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  if app_exec.withdraw_runs_fired_ahead(new.id) > 0 then
    update public.app_cron_schedules s
       set next_run_at = null,
           (last_run_at, last_run_id) = (
             select t.scheduled_for, t.run_id from public.app_cron_ticks t
              where t.schedule_id = s.id and t.outcome = 'fired'
              order by t.scheduled_for desc limit 1)
     where s.id = new.id;
  end if;
  return null;
end
$$;

-- Same column list as app_cron_schedules_notify_update (20250801000009); a column added to the
-- table must be added to both.
create trigger app_cron_schedules_withdraw_on_edit
  after update on public.app_cron_schedules
  for each row
  when ((old.id, old.app_id, old.company_id, old.name, old.cron_expression, old.timezone,
         old.is_active, old.config, old.created_by, old.created_at, old.disabled_reason)
        is distinct from
        (new.id, new.app_id, new.company_id, new.name, new.cron_expression, new.timezone,
         new.is_active, new.config, new.created_by, new.created_at, new.disabled_reason))
  execute function app_exec.withdraw_runs_on_schedule_edit();

create function app_exec.withdraw_runs_on_schedule_delete() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  update public.app_runs r
     set status = 'cancelled',
         completed_at = now(),
         error_kind = 'schedule_deleted',
         error_message = 'its cron schedule was deleted before the run''s scheduled time'
   where r.schedule_id = old.id
     and r.status = 'pending'
     and r.scheduled_for > now();
  return old;
end
$$;

create trigger app_cron_schedules_withdraw_on_delete
  before delete on public.app_cron_schedules
  for each row execute function app_exec.withdraw_runs_on_schedule_delete();
