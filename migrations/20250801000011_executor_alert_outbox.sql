-- Alerts that still have to reach the webhook (the daemon's [alerts] webhook_url).
--
-- A run ending that raises an alert writes its row here in the same transaction as the run's
-- final status (and sends its NOTIFY <namespace>_events in that transaction too), so an alert
-- exists exactly when the ending does: a daemon that crashes, is restarted or is drained right
-- after a run failed loses nothing. Any daemon with a webhook delivers the rows; a row is
-- claimed by moving next_attempt_at past the request's timeout (FOR UPDATE SKIP LOCKED, so two
-- daemons never send one at once), deleted once delivered or given up on, and otherwise
-- rescheduled with backoff. A daemon killed mid-request leaves the row to be sent again when its
-- claim runs out: delivery is at least once, and `id` is the X-App-Executor-Delivery header
-- receivers drop duplicates by.
create table app_exec.alert_outbox (
  id uuid primary key default gen_random_uuid(),
  event text not null,
  run_id uuid not null,
  -- The event's JSON document exactly as signed and sent (text, not jsonb: jsonb would
  -- reorder keys and change the bytes the signature covers).
  body text not null,
  created_at timestamptz not null default now(),
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  last_error text
);
create index alert_outbox_due_idx on app_exec.alert_outbox (next_attempt_at);
-- Only the daemon's role (which bypasses RLS) reads or writes it; platform clients see nothing.
alter table app_exec.alert_outbox enable row level security;
