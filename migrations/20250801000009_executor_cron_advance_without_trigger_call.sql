-- The scheduler's advance of a fired schedule (next_run_at later, last_run_at, last_run_id) no
-- longer calls a trigger function at all.
--
-- Migration 000005 made that advance quiet, but decided so inside the plpgsql trigger function,
-- by comparing to_jsonb(old) with to_jsonb(new): a function call and two JSON documents per
-- fired schedule. With 10,000 schedules firing in one minute that was ~0.6 s of the database's
-- ~1.5 s for the whole minute (EXPLAIN ANALYZE of the `scripts/bench cron` baseline statement).
-- The same rule now sits in the trigger's WHEN clause, which PostgreSQL evaluates without calling
-- the function; the function only sends the notification.
--
-- What notifies is unchanged: inserts, deletes, and updates that set next_run_at to null or move
-- it earlier, or change any column other than the scheduler's bookkeeping (next_run_at,
-- last_run_at, last_run_id, updated_at). A column added to app_cron_schedules later must be added
-- to both row constructors below, or edits of it will not wake the schedulers.

drop trigger app_cron_schedules_notify on public.app_cron_schedules;

create or replace function app_exec.notify_schedule_change() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  perform pg_notify(
    app_exec.notify_channel('schedule_changed'),
    json_build_object('schedule_id', coalesce(new.id, old.id), 'op', lower(tg_op))::text
  );
  return null;
end
$$;

create trigger app_cron_schedules_notify
  after insert or delete on public.app_cron_schedules
  for each row execute function app_exec.notify_schedule_change();

create trigger app_cron_schedules_notify_update
  after update on public.app_cron_schedules
  for each row
  when (old.next_run_at is null
        or new.next_run_at is null
        or new.next_run_at < old.next_run_at
        or (old.id, old.app_id, old.company_id, old.name, old.cron_expression, old.timezone,
            old.is_active, old.config, old.created_by, old.created_at, old.disabled_reason)
           is distinct from
           (new.id, new.app_id, new.company_id, new.name, new.cron_expression, new.timezone,
            new.is_active, new.config, new.created_by, new.created_at, new.disabled_reason))
  execute function app_exec.notify_schedule_change();
