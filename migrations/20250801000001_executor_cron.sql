-- Cron bookkeeping for the daemon's scheduler.
--
-- app_cron_ticks records what every nominal tick of a schedule became: a run (fired) or a
-- skip with its reason. Together with UNIQUE (schedule_id, scheduled_for) on app_runs it makes a
-- double fire impossible however many daemons evaluate the same schedule.
-- A schedule whose expression or zone cannot be parsed is deactivated by the daemon with a
-- human-readable `disabled_reason`; editing the expression or zone clears it and recomputes.

alter table public.app_cron_schedules
  add column disabled_reason text;

create table public.app_cron_ticks (
  schedule_id uuid not null references public.app_cron_schedules (id) on delete cascade,
  scheduled_for timestamptz not null,
  outcome text not null check (outcome in ('fired', 'skipped')),
  reason text check (reason in ('overlap', 'downtime', 'catch_up_cap', 'invalid_schedule', 'inactive')),
  run_id uuid references public.app_runs (id) on delete set null,
  detail text,
  recorded_at timestamptz not null default now(),
  primary key (schedule_id, scheduled_for),
  constraint app_cron_ticks_reason_matches check ((outcome = 'skipped') = (reason is not null))
);
create index app_cron_ticks_run_idx on public.app_cron_ticks (run_id);

alter table public.app_cron_ticks enable row level security;
create policy "members read company ticks" on public.app_cron_ticks
  for select to authenticated
  using (exists (
    select 1 from public.app_cron_schedules s
    where s.id = schedule_id and app_exec.is_company_member(s.company_id)
  ));
grant select on public.app_cron_ticks to authenticated;
grant all on public.app_cron_ticks to service_role;
revoke all on public.app_cron_ticks from anon;

-- A changed expression or zone (or a re-activation) makes the daemon recompute next_run_at.
create function app_exec.reset_schedule_on_change() returns trigger
language plpgsql
as $$
begin
  if new.cron_expression is distinct from old.cron_expression
     or new.timezone is distinct from old.timezone
     or (new.is_active and not old.is_active) then
    new.next_run_at := null;
    new.disabled_reason := null;
  end if;
  new.updated_at := now();
  return new;
end
$$;

create trigger app_cron_schedules_reset_on_change
  before update on public.app_cron_schedules
  for each row execute function app_exec.reset_schedule_on_change();

create function app_exec.notify_schedule_change() returns trigger
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
  after insert or update or delete on public.app_cron_schedules
  for each row execute function app_exec.notify_schedule_change();
