-- The scheduler advances every schedule it fires (next_run_at, last_run_at, last_run_id; the
-- before-update trigger touches updated_at). Notifying <namespace>_schedule_changed for that
-- woke every daemon's scheduler for an extra pass per fired schedule (10,000 schedules firing
-- each minute: 10,000 notifications a minute, and busy passes finding nothing to do).
-- Such an update now stays quiet when next_run_at only moves later: nothing becomes due sooner,
-- and the daemons' wake-up times already cover it. Every other change still notifies: inserts,
-- deletes, edits of the expression, zone, config or is_active, and next_run_at set to null or
-- moved earlier.

create or replace function app_exec.notify_schedule_change() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  if tg_op = 'UPDATE'
     and old.next_run_at is not null
     and new.next_run_at is not null
     and new.next_run_at >= old.next_run_at
     and (to_jsonb(new) - array['next_run_at', 'last_run_at', 'last_run_id', 'updated_at'])
         = (to_jsonb(old) - array['next_run_at', 'last_run_at', 'last_run_id', 'updated_at']) then
    return null;
  end if;
  perform pg_notify(
    app_exec.notify_channel('schedule_changed'),
    json_build_object('schedule_id', coalesce(new.id, old.id), 'op', lower(tg_op))::text
  );
  return null;
end
$$;
