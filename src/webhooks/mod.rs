//! The webhook trigger: `POST /hooks/{hook_id}` turns a signed request into a `webhook` run of
//! the hook's app, answered `202 {"run_id": …}` once the run is committed, or (with
//! `?wait=<duration>`) held until the run ends and answered with its status and `result`.
//!
//! Served by the daemon (`app-executor run`) when `[webhooks] listen` is set, behind the
//! operator's TLS-terminating proxy. It lives in the daemon rather than a process of its own
//! because it needs nothing the daemon lacks (the pool, metrics, `/readyz`, the drain) and a
//! separate service would duplicate all of it; hosts that should only take webhooks run a
//! daemon with `queue.max_concurrent_runs` as small as they like.
//!
//! A request, in order: the body is read up to `max_body` (413); the hook is looked up (404
//! for an unknown or disabled hook, the same body either way); the Standard Webhooks signature
//! ([`crate::signature`]) is checked against the hook's secret and, during a rotation's grace,
//! the previous one — or the bearer token, when the hook allows it (401); the hook's rate limit
//! (429 with `Retry-After`); then one transaction records the `webhook-id` and inserts the run,
//! or finds the run an earlier delivery of the same `webhook-id` created within 24 hours, or
//! refuses because the company has `company_pending_cap` pending runs (429). A database that
//! does not answer is 503 with nothing written.

mod rate;
pub mod settings;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::db::webhooks::{self as db, Delivery, Hook};
use crate::ops::metrics;
use crate::signature;
use rate::RateLimits;
pub use settings::WebhookSettings;

/// Request headers copied into the run's input (besides none of the secret-bearing ones).
const FORWARDED_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "x-request-id",
    "x-github-event",
    "x-github-delivery",
    "x-gitlab-event",
];
/// How often a `?wait` request looks at its run.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// How often expired idempotency records are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// The running listener.
pub struct WebhookListener {
    pub local_addr: std::net::SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

struct Shared {
    pool: Pool,
    settings: WebhookSettings,
    limits: RateLimits,
    /// Fires at the drain: `?wait` requests answer with the run's status at once.
    stopping: CancellationToken,
}

impl WebhookListener {
    /// Binds `settings.listen` and serves until [`WebhookListener::stop`].
    pub async fn start(settings: &WebhookSettings, pool: Pool) -> std::io::Result<Option<Self>> {
        let Some(addr) = settings.listen else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr().unwrap_or(addr);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            settings: settings.clone(),
            limits: RateLimits::default(),
            stopping: stop.clone(),
        });
        let app = Router::new()
            .route("/hooks/{hook_id}", post(deliver))
            .with_state(shared);
        let stopped = stop.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the webhook listener stopped");
            }
        });
        let purging = stop.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = purging.cancelled() => return,
                    _ = tokio::time::sleep(PURGE_INTERVAL) => {}
                }
                match db::purge_deliveries(&pool).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "expired webhook-id records deleted"),
                    Err(e) => tracing::warn!(error = %e, "could not purge webhook-id records"),
                }
            }
        });
        tasks.close();
        tracing::info!(%local_addr, "webhook listener listening: POST /hooks/{{hook_id}}");
        Ok(Some(Self {
            local_addr,
            stop,
            tasks,
        }))
    }

    /// Stops accepting, answers waiting requests, and returns once in-flight requests are done.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

#[derive(Debug, serde::Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

/// An answer with a JSON body `{"error": kind, "message": …}`.
fn refuse(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": kind, "message": message.into() })),
    )
        .into_response()
}

fn with_retry_after(mut response: Response, wait: Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.to_string()).expect("digits are a header value"),
    );
    response
}

fn unavailable(error: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %error, "webhook request refused: the database does not answer");
    with_retry_after(
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the run queue is not reachable; nothing was recorded, retry later",
        ),
        Duration::from_secs(5),
    )
}

async fn deliver(
    State(shared): State<Arc<Shared>>,
    Path(hook_id): Path<String>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let (outcome, response) = handle(&shared, &hook_id, query, &headers, body).await;
    metrics::webhook_request(outcome, started.elapsed());
    response
}

/// The request's answer and its outcome label for the metrics.
async fn handle(
    shared: &Shared,
    hook_id: &str,
    query: WaitQuery,
    headers: &HeaderMap,
    body: Body,
) -> (&'static str, Response) {
    let settings = &shared.settings;
    let wait = match query.wait.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(wait)) => Some(wait.min(settings.max_wait)),
        Some(Err(e)) => {
            return (
                "bad_request",
                refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("?wait is not a duration ({e}); use e.g. ?wait=30s"),
                ),
            )
        }
    };
    let limit = usize::try_from(settings.max_body).unwrap_or(usize::MAX);
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => {
            return (
                "too_large",
                refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!(
                        "the body is larger than {}",
                        crate::units::format_bytes(settings.max_body)
                    ),
                ),
            )
        }
    };
    let not_found = || {
        (
            "not_found",
            refuse(StatusCode::NOT_FOUND, "not_found", "no such webhook"),
        )
    };
    let Ok(hook_id) = hook_id.parse::<Uuid>() else {
        return not_found();
    };
    let hook = match db::find_hook(&shared.pool, hook_id).await {
        Ok(Some(hook)) if hook.is_active => hook,
        Ok(_) => return not_found(),
        Err(e) => return ("unavailable", unavailable(e)),
    };
    let webhook_id = match authenticate(&hook, headers, &body) {
        Ok(id) => id,
        Err(message) => {
            return (
                "unauthorized",
                refuse(StatusCode::UNAUTHORIZED, "unauthorized", message),
            )
        }
    };
    if let Err(wait) = shared
        .limits
        .take(hook.id, hook.rate_limit_per_minute, Instant::now())
    {
        let message = format!(
            "this webhook accepts {} requests per minute",
            hook.rate_limit_per_minute
        );
        return (
            "rate_limited",
            with_retry_after(
                refuse(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message),
                wait,
            ),
        );
    }
    let input = run_input(headers, &body);
    let delivered = db::deliver(
        &shared.pool,
        &hook,
        webhook_id.as_deref(),
        &input,
        settings.company_pending_cap,
    )
    .await;
    let (run_id, replayed) = match delivered {
        Ok(Delivery::Created(run)) => (run, false),
        Ok(Delivery::Replayed(run)) => (run, true),
        Ok(Delivery::CompanyFull { pending }) => {
            let message = format!(
                "the company has {pending} pending runs, the most webhooks may queue; retry once some have run"
            );
            return (
                "company_full",
                with_retry_after(
                    refuse(
                        StatusCode::TOO_MANY_REQUESTS,
                        "company_pending_cap",
                        message,
                    ),
                    Duration::from_secs(10),
                ),
            );
        }
        Err(e) => return ("unavailable", unavailable(e)),
    };
    if replayed {
        tracing::info!(hook_id = %hook.id, run_id = %run_id, "webhook-id seen before: the same run");
    } else {
        tracing::info!(hook_id = %hook.id, run_id = %run_id, "webhook run created");
    }
    let outcome = if replayed { "replayed" } else { "accepted" };
    let accepted = |status: Option<String>| {
        let mut body = json!({ "run_id": run_id, "replayed": replayed });
        if let Some(status) = status {
            body["status"] = status.into();
        }
        (StatusCode::ACCEPTED, Json(body)).into_response()
    };
    let Some(wait) = wait else {
        return (outcome, accepted(None));
    };
    match wait_for_end(shared, run_id, wait).await {
        Ok(Some(ended)) => (outcome, (StatusCode::OK, Json(ended)).into_response()),
        Ok(None) => (
            outcome,
            accepted(Some(current_status(shared, run_id).await)),
        ),
        // The run is committed: say so, with what we know.
        Err(_) => (outcome, accepted(None)),
    }
}

/// The `webhook-id` (the idempotency key; `None` for a bearer request without one), or why the
/// request is not the hook's.
fn authenticate(hook: &Hook, headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = text(signature::ID_HEADER).map(str::to_owned);
    if hook.allow_bearer {
        if let Some(token) = text("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
            let matches = hook.secrets.iter().any(|secret| {
                signature::constant_time_eq(secret.as_bytes(), token.trim().as_bytes())
            });
            return if matches {
                Ok(id)
            } else {
                Err("the bearer token is not this webhook's secret".into())
            };
        }
    }
    let (Some(id), Some(timestamp), Some(signatures)) = (
        id,
        text(signature::TIMESTAMP_HEADER),
        text(signature::SIGNATURE_HEADER),
    ) else {
        return Err(signature::Refusal::Malformed.as_str().into());
    };
    let keys: Vec<Vec<u8>> = hook.secrets.iter().map(|s| signature::key_of(s)).collect();
    signature::verify(&keys, &id, timestamp, signatures, body, SystemTime::now())
        .map(|()| Some(id))
        .map_err(|refusal| refusal.as_str().to_owned())
}

/// The run's `input_data`: the body (JSON when it is JSON, else text, else base64), its content
/// type, and the allow-listed headers.
fn run_input(headers: &HeaderMap, body: &[u8]) -> Value {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let is_json = essence == "application/json" || essence.ends_with("+json");
    let mut input = json!({ "content_type": content_type });
    match (
        is_json,
        serde_json::from_slice::<Value>(body),
        std::str::from_utf8(body),
    ) {
        (true, Ok(value), _) => input["body"] = value,
        (_, _, Ok(text)) => input["body"] = text.into(),
        (_, _, Err(_)) => {
            input["body"] = base64::engine::general_purpose::STANDARD
                .encode(body)
                .into();
            input["body_encoding"] = "base64".into();
        }
    }
    let forwarded: serde_json::Map<String, Value> = FORWARDED_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.into()))
        })
        .collect();
    input["headers"] = Value::Object(forwarded);
    input
}

/// The run's end as the `?wait` answer, or `None` when it did not end within `wait` (or the
/// daemon is draining).
async fn wait_for_end(
    shared: &Shared,
    run: Uuid,
    wait: Duration,
) -> Result<Option<Value>, crate::db::queue::QueueError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(state) = crate::db::runs::run_state(&shared.pool, run).await? {
            if state.is_terminal() {
                let result = crate::db::runs::run_result(&shared.pool, run).await?;
                return Ok(Some(json!({
                    "run_id": run,
                    "status": state.status,
                    "error_kind": state.error_kind,
                    "error_message": state.error_message,
                    "result": result,
                })));
            }
        }
        tokio::select! {
            _ = shared.stopping.cancelled() => return Ok(None),
            _ = tokio::time::sleep_until(deadline) => return Ok(None),
            _ = tokio::time::sleep(WAIT_POLL) => {}
        }
    }
}

async fn current_status(shared: &Shared, run: Uuid) -> String {
    match crate::db::runs::run_state(&shared.pool, run).await {
        Ok(Some(state)) => state.status,
        _ => "pending".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn the_input_carries_json_as_json_text_as_text_binary_as_base64_and_only_safe_headers() {
        let json_headers = headers(&[
            ("content-type", "application/vnd.api+json; charset=utf-8"),
            ("authorization", "Bearer secret"),
            ("webhook-signature", "v1,abc"),
            ("x-github-event", "push"),
            ("cookie", "a=b"),
        ]);
        let input = run_input(&json_headers, br#"{"a": [1, 2]}"#);
        assert_eq!(input["body"], json!({"a": [1, 2]}));
        assert_eq!(
            input["headers"],
            json!({"content-type": "application/vnd.api+json; charset=utf-8", "x-github-event": "push"})
        );
        // JSON that does not parse is kept as the text it is.
        assert_eq!(run_input(&json_headers, b"{oops")["body"], "{oops");
        let text = run_input(&headers(&[("content-type", "text/plain")]), b"[1]");
        assert_eq!(text["body"], "[1]", "only a JSON content type makes JSON");
        let binary = run_input(&HeaderMap::new(), &[0xff, 0x00, 0xfe]);
        assert_eq!(binary["body"], "/wD+");
        assert_eq!(binary["body_encoding"], "base64");
        assert_eq!(binary["content_type"], "");
    }
}
