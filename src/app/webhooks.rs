//! The webhook operations of the CLI: create (the app must be enabled for the company), rotate,
//! list and enable/disable, over a small pool of their own.

use std::time::Duration;

use uuid::Uuid;

use super::{company_of, database_url};
use crate::config::Config;
use crate::db;
use crate::db::webhooks::{HookSummary, NewHook};

/// A new hook and its secret, which is shown this once.
pub struct CreatedWebhook {
    pub id: Uuid,
    pub secret: String,
}

fn pool(config: &Config) -> anyhow::Result<deadpool_postgres::Pool> {
    Ok(db::pool(
        database_url(config)?,
        config.database.connect_timeout,
        2,
    )?)
}

fn parse_id(what: &str, text: &str) -> anyhow::Result<Uuid> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("{what} {text:?} is not an id (a uuid)"))
}

/// `webhook create`.
pub async fn create_webhook(
    config: &Config,
    app: &str,
    company: Option<&str>,
    allow_bearer: bool,
    rate_limit_per_minute: i32,
    description: Option<&str>,
) -> anyhow::Result<CreatedWebhook> {
    let app = parse_id("--app", app)?;
    if !(1..=600_000).contains(&rate_limit_per_minute) {
        anyhow::bail!("--rate-limit {rate_limit_per_minute}: must be between 1 and 600000 requests per minute");
    }
    let pool = pool(config)?;
    let company = company_of(&pool, app, company).await?;
    if !db::runs::companies_of_app(&pool, app)
        .await?
        .contains(&company)
    {
        anyhow::bail!(
            "app {app} is not enabled for company {company} (app_exec.company_apps); enable it first, or pass the company it is enabled for"
        );
    }
    let secret = crate::signature::generate_secret();
    let id = db::webhooks::create_hook(
        &pool,
        &NewHook {
            app_id: app,
            company_id: company,
            secret: &secret,
            allow_bearer,
            rate_limit_per_minute,
            description,
        },
    )
    .await?;
    tracing::info!(hook_id = %id, %app, %company, "webhook created");
    Ok(CreatedWebhook { id, secret })
}

/// `webhook rotate`: the new secret.
pub async fn rotate_webhook(config: &Config, id: &str, grace: Duration) -> anyhow::Result<String> {
    let id = parse_id("webhook", id)?;
    let secret = crate::signature::generate_secret();
    if !db::webhooks::rotate_hook(&pool(config)?, id, &secret, grace).await? {
        anyhow::bail!("there is no webhook {id}; see `app-executor webhook list`");
    }
    tracing::info!(hook_id = %id, grace = ?grace, "webhook secret rotated");
    Ok(secret)
}

/// `webhook list`.
pub async fn list_webhooks(config: &Config, app: Option<&str>) -> anyhow::Result<Vec<HookSummary>> {
    let app = app.map(|a| parse_id("--app", a)).transpose()?;
    Ok(db::webhooks::list_hooks(&pool(config)?, app).await?)
}

/// `webhook enable|disable`.
pub async fn set_webhook_active(config: &Config, id: &str, active: bool) -> anyhow::Result<()> {
    let id = parse_id("webhook", id)?;
    if !db::webhooks::set_hook_active(&pool(config)?, id, active).await? {
        anyhow::bail!("there is no webhook {id}; see `app-executor webhook list`");
    }
    eprintln!(
        "webhook {id} {}",
        if active { "enabled" } else { "disabled" }
    );
    Ok(())
}
