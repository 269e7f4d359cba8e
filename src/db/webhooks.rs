//! The webhook trigger's statements: the hooks (`public.app_webhooks`) and the idempotent
//! insert of a `webhook` run (`app_exec.webhook_deliveries`). One function per statement or
//! transaction, named for its effect.

use std::time::Duration;

use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use super::queue::{client, interval, query, QueueError};

type Result<T, E = QueueError> = std::result::Result<T, E>;

/// How long a `webhook-id` names the same run: passed to `app_exec.deliver_webhook` and used
/// by the purge, so both agree.
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
    let _timed = super::timed("find_hook");
    let client = client(pool, "looking up a webhook").await?;
    // Prepared once per connection: every request runs this and `deliver`.
    let statement = client
        .prepare_cached(
            "select id, app_id, company_id, is_active, allow_bearer, rate_limit_per_minute, secret,
                    case when previous_secret_expires_at > now() then previous_secret end
               from public.app_webhooks where id = $1",
        )
        .await
        .map_err(query("prepare the webhook lookup"))?;
    let row = client
        .query_opt(&statement, &[&id])
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
/// runs already: one call of `app_exec.deliver_webhook`, one transaction, one round trip. A
/// delivery answered `Created` has its run committed.
pub async fn deliver(
    pool: &Pool,
    hook: &Hook,
    webhook_id: Option<&str>,
    input: &serde_json::Value,
    company_cap: i64,
) -> Result<Delivery> {
    let _timed = super::timed("deliver");
    let client = client(pool, "recording a webhook delivery").await?;
    let statement = client
        .prepare_cached(
            "select outcome, run_id, pending
               from app_exec.deliver_webhook($1, $2, $3, $4, $5, $6, $7::text::interval)",
        )
        .await
        .map_err(query("prepare the webhook delivery"))?;
    let row = client
        .query_one(
            &statement,
            &[
                &hook.id,
                &hook.app_id,
                &hook.company_id,
                &webhook_id,
                input,
                &company_cap,
                &IDEMPOTENCY_WINDOW,
            ],
        )
        .await
        .map_err(query("record a webhook delivery"))?;
    let outcome: String = row.get(0);
    Ok(match outcome.as_str() {
        "created" => Delivery::Created(row.get(1)),
        "replayed" => Delivery::Replayed(row.get(1)),
        _ => Delivery::CompanyFull {
            pending: row.get(2),
        },
    })
}

/// Deletes idempotency records past the window; returns how many.
pub async fn purge_deliveries(pool: &Pool) -> Result<u64> {
    let _timed = super::timed("purge_deliveries");
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
    let _timed = super::timed("create_hook");
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
    let _timed = super::timed("rotate_hook");
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
    let _timed = super::timed("set_hook_active");
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
    let _timed = super::timed("list_hooks");
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
