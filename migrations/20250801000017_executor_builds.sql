-- Builds: the daemons process pending `app_builds` rows through the same queue as runs.
--
-- Lifecycle (the document's values): pending -> building -> success | failed; pending ->
-- cancelled; building -> cancelled (a client); building -> pending when a build is requeued
-- (rescued lease, interrupted by shutdown, infrastructure retry). Terminal states are absorbing.
--
-- The queue columns are the ones app_runs has (lease, fencing on executor and attempt, retry
-- backoff), so the daemon's lease, rescue, cancel and drain code serves both tables. A build has
-- no company: builds are fair per app (one build of an app at a time), oldest first.

alter table public.app_builds
  add column started_at timestamptz,
  add column run_after timestamptz not null default now(),
  add column attempt integer not null default 0 check (attempt >= 0),
  add column max_attempts integer not null default 3 check (max_attempts between 1 and 100),
  add column executor_id text,
  add column lease_expires_at timestamptz,
  add column heartbeat_at timestamptz,
  add column error_kind text check (error_kind ~ '^[a-z][a-z0-9_]*$'),
  add column exit_code integer,
  add column duration_ms bigint check (duration_ms >= 0),
  add column archive_size bigint check (archive_size >= 0),
  add constraint app_builds_building_has_lease
    check (build_status <> 'building' or (executor_id is not null and lease_expires_at is not null));

comment on column public.app_builds.artifact_digest is
  'sha256:<hex> of the build archive at build_path (app-executor addition)';
comment on column public.app_builds.archive_size is
  'bytes of the build archive at build_path (app-executor addition)';
comment on column public.app_builds.executor_id is
  'the daemon holding (or last holding) the build''s lease (app-executor addition)';

create index app_builds_pending_idx on public.app_builds (created_at) where build_status = 'pending';
create index app_builds_lease_idx on public.app_builds (lease_expires_at) where build_status = 'building';
create index app_builds_building_app_idx on public.app_builds (app_id) where build_status = 'building';

-- Terminal-state guard ------------------------------------------------------------------------

create function app_exec.guard_build_transition() returns trigger
language plpgsql
as $$
begin
  if new.build_status is not distinct from old.build_status then
    return new;
  end if;
  if old.build_status in ('success', 'failed', 'cancelled') then
    raise exception 'build % is already %; a finished build cannot become %', old.id, old.build_status, new.build_status
      using errcode = 'check_violation', hint = 'terminal build states are final; create a new build instead';
  end if;
  if old.build_status = 'pending' and new.build_status not in ('building', 'cancelled', 'failed') then
    raise exception 'build % is pending; it cannot become % without building first', old.id, new.build_status
      using errcode = 'check_violation';
  end if;
  return new;
end
$$;

create trigger app_builds_guard_transition
  before update of build_status on public.app_builds
  for each row execute function app_exec.guard_build_transition();

-- NOTIFY: `<namespace>_build_pending` wakes the claim loops, `<namespace>_build_cancelled`
-- stops a build in flight. Security definer for the same reason as the run triggers.

create function app_exec.notify_build_change() returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  if new.build_status = 'pending' and (tg_op = 'INSERT' or old.build_status is distinct from 'pending') then
    perform pg_notify(
      app_exec.notify_channel('build_pending'),
      json_build_object('build_id', new.id, 'app_id', new.app_id)::text
    );
  elsif tg_op = 'UPDATE' and new.build_status = 'cancelled' and old.build_status is distinct from 'cancelled' then
    perform pg_notify(
      app_exec.notify_channel('build_cancelled'),
      json_build_object('build_id', new.id, 'executor_id', new.executor_id)::text
    );
  end if;
  return null;
end
$$;

create trigger app_builds_notify_insert
  after insert on public.app_builds
  for each row execute function app_exec.notify_build_change();
create trigger app_builds_notify_update
  after update of build_status on public.app_builds
  for each row execute function app_exec.notify_build_change();

-- The claim ---------------------------------------------------------------------------------
-- The oldest pending build that is due and whose app has no build in progress. Two daemons can
-- race past the per-app check and build one app twice at once; both builds are correct, and
-- `is_current` goes to the newest successful one either way.

create function app_exec.claim_next_build(executor text, lease interval)
returns setof public.app_builds
language sql
as $$
  with next as (
    select b.id from public.app_builds b
     where b.build_status = 'pending' and b.run_after <= now()
       and not exists (select 1 from public.app_builds o
                        where o.app_id = b.app_id and o.build_status = 'building')
     order by b.created_at, b.id
     limit 1
     for update skip locked
  )
  update public.app_builds b
     set build_status = 'building', executor_id = executor, attempt = b.attempt + 1,
         started_at = now(), lease_expires_at = now() + lease, heartbeat_at = now(),
         completed_at = null
    from next
   where b.id = next.id
  returning b.*
$$;

-- `is_current` moves to the newest successful build of the app (by creation), never to an older
-- one that happened to finish later. Called in the transaction that records a success.
create function app_exec.promote_current_build(app uuid) returns void
language sql
as $$
  update public.app_builds set is_current = false
   where app_id = app and is_current
     and id is distinct from (select id from public.app_builds
                               where app_id = app and build_status = 'success'
                               order by created_at desc, id desc limit 1);
  update public.app_builds set is_current = true
   where id = (select id from public.app_builds
                where app_id = app and build_status = 'success'
                order by created_at desc, id desc limit 1)
     and not is_current;
$$;

-- Like every app_exec function (migration 13): only the service role may call these; the
-- trigger functions need no grant at all.
revoke execute on function app_exec.guard_build_transition(), app_exec.notify_build_change(),
  app_exec.claim_next_build(text, interval), app_exec.promote_current_build(uuid)
  from public, anon, authenticated;
grant execute on function app_exec.claim_next_build(text, interval),
  app_exec.promote_current_build(uuid) to service_role;
