-- Webhook triggers: a signed HTTP request to a daemon's `[webhooks]` listener becomes a
-- `webhook` run of the hook's app for the hook's company.
--
-- public.app_webhooks: one row per hook. Company owners and admins see and manage their
-- company's hooks through the API (list, disable, delete, describe) under RLS; the secrets are
-- readable and writable only by the service role (column grants), so hooks are created and
-- rotated with `app-executor webhook create|rotate`, which prints the secret once.
--
-- app_exec.webhook_deliveries: the idempotency record. `webhook-id` is unique per hook for 24
-- hours: the primary key, not a check-then-insert, decides which of two concurrent requests
-- creates the run; the other answers the same run id.

create table public.app_webhooks (
  id uuid primary key default gen_random_uuid(),
  app_id uuid not null references public.applications (id) on delete cascade,
  company_id uuid not null references public.companies (id) on delete cascade,
  -- Standard Webhooks form: `whsec_` and the base64 of at least 24 random bytes.
  secret text not null check (secret ~ '^whsec_[A-Za-z0-9+/]{32,}={0,2}$'),
  -- The secret before the last rotation, still accepted until previous_secret_expires_at.
  previous_secret text check (previous_secret ~ '^whsec_[A-Za-z0-9+/]{32,}={0,2}$'),
  previous_secret_expires_at timestamptz,
  is_active boolean not null default true,
  -- Also accept `Authorization: Bearer <secret>` (for senders that cannot sign).
  allow_bearer boolean not null default false,
  -- Requests per minute this hook accepts (per listening daemon).
  rate_limit_per_minute integer not null default 600 check (rate_limit_per_minute between 1 and 600000),
  description text check (length(description) <= 500),
  created_by uuid,
  created_at timestamptz not null default now(),
  rotated_at timestamptz
);
create index app_webhooks_company_idx on public.app_webhooks (company_id);

alter table public.app_webhooks enable row level security;
create policy "managers read their company's hooks" on public.app_webhooks
  for select to authenticated using (app_exec.can_manage_company(company_id));
create policy "managers update their company's hooks" on public.app_webhooks
  for update to authenticated
  using (app_exec.can_manage_company(company_id))
  with check (app_exec.can_manage_company(company_id));
create policy "managers delete their company's hooks" on public.app_webhooks
  for delete to authenticated using (app_exec.can_manage_company(company_id));

-- Supabase grants every new public table to anon and authenticated: take that back, then give
-- authenticated the columns it may see and change. The secrets are in neither list.
revoke all on public.app_webhooks from public, anon, authenticated;
grant select (id, app_id, company_id, is_active, allow_bearer, rate_limit_per_minute,
              description, created_by, created_at, rotated_at, previous_secret_expires_at)
  on public.app_webhooks to authenticated;
grant update (is_active, description) on public.app_webhooks to authenticated;
grant delete on public.app_webhooks to authenticated;
grant all on public.app_webhooks to service_role;

create table app_exec.webhook_deliveries (
  hook_id uuid not null references public.app_webhooks (id) on delete cascade,
  webhook_id text not null check (length(webhook_id) between 1 and 255),
  run_id uuid not null,
  received_at timestamptz not null default now(),
  primary key (hook_id, webhook_id)
);
-- For the purge of records past the 24-hour window.
create index webhook_deliveries_received_idx on app_exec.webhook_deliveries (received_at);
revoke all on app_exec.webhook_deliveries from public, anon, authenticated;
grant all on app_exec.webhook_deliveries to service_role;

-- One delivery in one round trip (the listener answers 202 once it returns): the `webhook-id`
-- seen within `idempotency_window` answers its run; a company at `company_cap` pending runs gets nothing
-- written; otherwise the id is recorded and the run inserted. Deliveries for one company are
-- serialised by an advisory lock so the cap holds under a burst; the primary key decides
-- between two deliveries of one id whatever the timing. Counting stops at the cap, so its cost
-- is bounded by the cap, not the backlog (the partial index of pending runs by company).
create function app_exec.deliver_webhook(
  hook uuid, app uuid, company uuid, delivery text, input jsonb, company_cap bigint,
  idempotency_window interval,
  out outcome text, out run_id uuid, out pending bigint)
language plpgsql set search_path = ''
as $$
begin
  perform pg_advisory_xact_lock(hashtextextended('app_exec.webhook_company:' || company::text, 0));
  if delivery is not null then
    select d.run_id into run_id from app_exec.webhook_deliveries d
     where d.hook_id = hook and d.webhook_id = delivery
       and d.received_at > now() - idempotency_window;
    if found then
      outcome := 'replayed';
      return;
    end if;
  end if;
  select count(*) into pending from (
    select 1 from public.app_runs r
     where r.company_id = company and r.status = 'pending' limit company_cap) p;
  if pending >= company_cap then
    outcome := 'company_full';
    return;
  end if;
  run_id := gen_random_uuid();
  if delivery is not null then
    -- An expired record of the same id is taken over; a live one means another delivery won.
    insert into app_exec.webhook_deliveries as d (hook_id, webhook_id, run_id)
    values (hook, delivery, run_id)
    on conflict (hook_id, webhook_id) do update
      set run_id = excluded.run_id, received_at = now()
      where d.received_at <= now() - idempotency_window
    returning d.run_id into run_id;
    if run_id is null then
      select d.run_id into run_id from app_exec.webhook_deliveries d
       where d.hook_id = hook and d.webhook_id = delivery;
      outcome := 'replayed';
      return;
    end if;
  end if;
  insert into public.app_runs (id, app_id, company_id, run_type, input_data, metadata)
  values (run_id, app, company, 'webhook', input,
          jsonb_build_object('webhook', jsonb_build_object('hook_id', hook, 'webhook_id', delivery)));
  outcome := 'created';
end
$$;
revoke execute on function app_exec.deliver_webhook(uuid, uuid, uuid, text, jsonb, bigint, interval)
  from public, anon, authenticated;
grant execute on function app_exec.deliver_webhook(uuid, uuid, uuid, text, jsonb, bigint, interval)
  to service_role;
