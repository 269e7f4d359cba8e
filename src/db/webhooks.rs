//! The webhook trigger's statements: the hooks (`public.app_webhooks`) and the idempotent
//! insert of a `webhook` run (`app_exec.webhook_deliveries`). One function per statement or
//! transaction, named for its effect.

use std::time::Duration;

use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use super::queue::{client, interval, query, QueueError};

type Result<T, E = QueueError> = std::result::Result<T, E>;

/// How long a `webhook-id` names the same run.
pub const IDEMPOTENCY_WINDOW: &str = "24 hours";

/// A hook as the listener needs it: who it runs for and what it accepts.
#[derive(Clone)]
pub struct Hook {
    pub id: Uuid,
    pub app_id: Uuid,
    pub company_id: Uuid,
    pub is_active: bool,
    pub allow_bearer: bool,
    pub rate_limit_per_minute: i32,
    /// The current secret, then the previous one while its rotation grace lasts.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("id", &self.id)
            .field("app_id", &self.app_id)
            .field("company_id", &self.company_id)
            .field("is_active", &self.is_active)
            .field("secrets", &"***")
            .finish()
    }
}

/// A hook as `webhook list` shows it: never its secrets.
#[derive(Debug, Clone, Serialize)]
pub struct HookSummary {
    pub id: Uuid,
    pub app_id: Uuid,
    pub company_id: Uuid,
    pub is_active: bool,
    pub allow_bearer: bool,
    pub rate_limit_per_minute: i32,
    pub description: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub rotated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Until when the secret before the last rotation is still accepted.
    pub previous_secret_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The hook, or `None` when there is none with this id.
pub async fn find_hook(pool: &Pool, id: Uuid) -> Result<Option<Hook>> {
    let client = client(pool, "looking up a webhook").await?;
    let row = client
        .query_opt(
            "select id, app_id, company_id, is_active, allow_bearer, rate_limit_per_minute, secret,
                    case when previous_secret_expires_at > now() then previous_secret end
               from public.app_webhooks where id = $1",
            &[&id],
        )
        .await
        .map_err(query("look up a webhook"))?;
    Ok(row.map(|r| Hook {
        id: r.get(0),
        app_id: r.get(1),
        company_id: r.get(2),
        is_active: r.get(3),
        allow_bearer: r.get(4),
        rate_limit_per_minute: r.get(5),
        secrets: std::iter::once(r.get::<_, String>(6))
            .chain(r.get::<_, Option<String>>(7))
            .collect(),
    }))
}

/// What a delivery turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A new pending run (committed).
    Created(Uuid),
    /// The `webhook-id` was seen within the window: the run it created then.
    Replayed(Uuid),
    /// The company has `pending` runs at the cap already; nothing was written.
    CompanyFull { pending: i64 },
}

/// A `webhook` run of the hook's app for its company with `input`, unless the `webhook-id` was
/// seen within [`IDEMPOTENCY_WINDOW`] (then that run) or the company has `company_cap` pending
/// runs already. One transaction: a request answered `Created` has its run committed.
///
/// Concurrent deliveries for one company are serialised by an advisory lock, so the cap holds
/// under a burst; two deliveries of one `webhook-id` are decided by the primary key of
/// `webhook_deliveries` whatever the timing.
pub async fn deliver(
    pool: &Pool,
    hook: &Hook,
    webhook_id: Option<&str>,
    input: &serde_json::Value,
    company_cap: i64,
) -> Result<Delivery> {
    let mut client = client(pool, "recording a webhook delivery").await?;
    let tx = client
        .transaction()
        .await
        .map_err(query("begin a webhook delivery"))?;
    tx.execute(
        "select pg_advisory_xact_lock(hashtextextended('app_exec.webhook_company:' || $1::uuid::text, 0))",
        &[&hook.company_id],
    )
    .await
    .map_err(query("lock the company's webhook deliveries"))?;
    if let Some(webhook_id) = webhook_id {
        let seen = tx
            .query_opt(
                &format!(
                    "select run_id from app_exec.webhook_deliveries
                      where hook_id = $1 and webhook_id = $2
                        and received_at > now() - interval '{IDEMPOTENCY_WINDOW}'"
                ),
                &[&hook.id, &webhook_id],
            )
            .await
            .map_err(query("look up a webhook-id"))?;
        if let Some(row) = seen {
            return Ok(Delivery::Replayed(row.get(0)));
        }
    }
    let pending: i64 = tx
        .query_one(
            "select count(*) from public.app_runs where company_id = $1 and status = 'pending'",
            &[&hook.company_id],
        )
        .await
        .map_err(query("count the company's pending runs"))?
        .get(0);
    if pending >= company_cap {
        return Ok(Delivery::CompanyFull { pending });
    }
    let run_id = Uuid::new_v4();
    if let Some(webhook_id) = webhook_id {
        // An expired record of the same id is taken over; a live one means another request
        // won after all (it cannot, under the lock, but the key is what guarantees it).
        let claimed = tx
            .query_opt(
                &format!(
                    "insert into app_exec.webhook_deliveries (hook_id, webhook_id, run_id)
                     values ($1, $2, $3)
                     on conflict (hook_id, webhook_id) do update
                       set run_id = excluded.run_id, received_at = now()
                       where webhook_deliveries.received_at <= now() - interval '{IDEMPOTENCY_WINDOW}'
                     returning run_id"
                ),
                &[&hook.id, &webhook_id, &run_id],
            )
            .await
            .map_err(query("record a webhook-id"))?;
        if claimed.is_none() {
            let row = tx
                .query_one(
                    "select run_id from app_exec.webhook_deliveries
                      where hook_id = $1 and webhook_id = $2",
                    &[&hook.id, &webhook_id],
                )
                .await
                .map_err(query("look up a webhook-id"))?;
            return Ok(Delivery::Replayed(row.get(0)));
        }
    }
    let metadata = serde_json::json!({
        "webhook": { "hook_id": hook.id, "webhook_id": webhook_id },
    });
    tx.execute(
        "insert into public.app_runs (id, app_id, company_id, run_type, input_data, metadata)
         values ($1, $2, $3, 'webhook', $4, $5)",
        &[&run_id, &hook.app_id, &hook.company_id, input, &metadata],
    )
    .await
    .map_err(query("insert a webhook run"))?;
    tx.commit()
        .await
        .map_err(query("commit a webhook delivery"))?;
    Ok(Delivery::Created(run_id))
}

/// Deletes idempotency records past the window; returns how many.
pub async fn purge_deliveries(pool: &Pool) -> Result<u64> {
    let client = client(pool, "purging webhook deliveries").await?;
    client
        .execute(
            &format!(
                "delete from app_exec.webhook_deliveries
                  where received_at <= now() - interval '{IDEMPOTENCY_WINDOW}'"
            ),
            &[],
        )
        .await
        .map_err(query("purge webhook deliveries"))
}

/// What `webhook create` asks for.
pub struct NewHook<'a> {
    pub app_id: Uuid,
    pub company_id: Uuid,
    pub secret: &'a str,
    pub allow_bearer: bool,
    pub rate_limit_per_minute: i32,
    pub description: Option<&'a str>,
}

/// Creates a hook; returns its id.
pub async fn create_hook(pool: &Pool, hook: &NewHook<'_>) -> Result<Uuid> {
    let client = client(pool, "creating a webhook").await?;
    let row = client
        .query_one(
            "insert into public.app_webhooks
               (app_id, company_id, secret, allow_bearer, rate_limit_per_minute, description)
             values ($1, $2, $3, $4, $5, $6) returning id",
            &[
                &hook.app_id,
                &hook.company_id,
                &hook.secret,
                &hook.allow_bearer,
                &hook.rate_limit_per_minute,
                &hook.description,
            ],
        )
        .await
        .map_err(query("create a webhook"))?;
    Ok(row.get(0))
}

/// Replaces the hook's secret; the old one stays valid for `grace`. `false` when there is no
/// such hook.
pub async fn rotate_hook(pool: &Pool, id: Uuid, secret: &str, grace: Duration) -> Result<bool> {
    let client = client(pool, "rotating a webhook secret").await?;
    let changed = client
        .execute(
            "update public.app_webhooks
                set previous_secret = secret, secret = $2, rotated_at = now(),
                    previous_secret_expires_at = now() + $3::text::interval
              where id = $1",
            &[&id, &secret, &interval(grace)],
        )
        .await
        .map_err(query("rotate a webhook secret"))?;
    Ok(changed == 1)
}

/// Enables or disables a hook. `false` when there is no such hook.
pub async fn set_hook_active(pool: &Pool, id: Uuid, active: bool) -> Result<bool> {
    let client = client(pool, "updating a webhook").await?;
    let changed = client
        .execute(
            "update public.app_webhooks set is_active = $2 where id = $1",
            &[&id, &active],
        )
        .await
        .map_err(query("update a webhook"))?;
    Ok(changed == 1)
}

/// The hooks, of one app when given, oldest first.
pub async fn list_hooks(pool: &Pool, app: Option<Uuid>) -> Result<Vec<HookSummary>> {
    let client = client(pool, "listing webhooks").await?;
    let rows = client
        .query(
            "select id, app_id, company_id, is_active, allow_bearer, rate_limit_per_minute,
                    description, created_at, rotated_at, previous_secret_expires_at
               from public.app_webhooks
              where $1::uuid is null or app_id = $1
              order by created_at, id",
            &[&app],
        )
        .await
        .map_err(query("list webhooks"))?;
    Ok(rows
        .iter()
        .map(|r| HookSummary {
            id: r.get(0),
            app_id: r.get(1),
            company_id: r.get(2),
            is_active: r.get(3),
            allow_bearer: r.get(4),
            rate_limit_per_minute: r.get(5),
            description: r.get(6),
            created_at: r.get(7),
            rotated_at: r.get(8),
            previous_secret_expires_at: r.get(9),
        })
        .collect())
}
