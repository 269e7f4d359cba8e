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
