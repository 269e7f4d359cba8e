//! `app-executor webhook create|rotate|list|disable|enable`: managing webhook triggers. A
//! secret is printed once, when it is made; `list` never shows one.

use super::WebhookCommand;
use crate::app;
use crate::config::Config;

pub(super) async fn run(config: &Config, command: WebhookCommand) -> anyhow::Result<()> {
    match command {
        WebhookCommand::Create {
            app: app_id,
            company,
            bearer,
            rate_limit,
            description,
            json,
        } => {
            let created = app::create_webhook(
                config,
                &app_id,
                company.as_deref(),
                bearer,
                rate_limit,
                description.as_deref(),
            )
            .await?;
            let url = config.webhooks.hook_url(created.id);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": created.id, "url": url, "secret": created.secret})
                );
            } else {
                println!("id:     {}", created.id);
                println!("url:    {url}");
                println!("secret: {}", created.secret);
                eprintln!(
                    "The secret is shown only now. Sign requests with it (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature headers){}.",
                    if bearer { " or send it as a bearer token" } else { "" }
                );
                if config.webhooks.public_url.is_empty() {
                    eprintln!("Set webhooks.public_url to print the full URL senders use.");
                }
            }
            Ok(())
        }
        WebhookCommand::Rotate { id, grace, json } => {
            let grace = humantime::parse_duration(&grace).map_err(|e| {
                anyhow::anyhow!("--grace {grace:?} is not a duration ({e}); use e.g. 24h or 15m")
            })?;
            let secret = app::rotate_webhook(config, &id, grace).await?;
            if json {
                println!("{}", serde_json::json!({"id": id, "secret": secret}));
            } else {
                println!("secret: {secret}");
                eprintln!(
                    "The old secret is accepted for {} more; switch the sender to this one before then.",
                    humantime::format_duration(grace)
                );
            }
            Ok(())
        }
        WebhookCommand::List { app: app_id, json } => {
            let hooks = app::list_webhooks(config, app_id.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hooks)?);
                return Ok(());
            }
            if hooks.is_empty() {
                eprintln!("no webhooks");
            }
            for hook in hooks {
                println!(
                    "{}  app {}  company {}  {}{}  {}/min  {}",
                    hook.id,
                    hook.app_id,
                    hook.company_id,
                    if hook.is_active { "active" } else { "disabled" },
                    if hook.allow_bearer { ", bearer" } else { "" },
                    hook.rate_limit_per_minute,
                    config.webhooks.hook_url(hook.id),
                );
            }
            Ok(())
        }
        WebhookCommand::Disable { id } => app::set_webhook_active(config, &id, false).await,
        WebhookCommand::Enable { id } => app::set_webhook_active(config, &id, true).await,
    }
}
