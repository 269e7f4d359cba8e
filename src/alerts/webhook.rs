//! POSTing events to the configured webhook: the signature, and what one attempt's answer
//! means for the delivery.
//!
//! A delivery is one event with a delivery id (`X-App-Executor-Delivery`, the same on every
//! attempt, so a receiver can drop duplicates). 2xx ends it; 5xx, 429, timeouts and connection
//! errors are retried with exponential backoff up to `max_attempts`, waiting at least what a
//! `Retry-After` header asks (capped like the backoff); any other answer (a 4xx other than 429,
//! a redirect) is final. The waiting happens in the outbox (`next_attempt_at`), not here. Never
//! logs the secret, nor the URL's path (it often carries a token).
//!
//! With a secret, a delivery is signed twice: the Standard Webhooks headers (`webhook-id` = the
//! delivery id, `webhook-timestamp`, `webhook-signature: v1,…`; see [`crate::signature`]), which
//! the same verifier as our webhook listener checks, and `X-App-Executor-Signature:
//! sha256=<hex>` over the body alone, kept for receivers written against it.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use uuid::Uuid;

use super::settings::{WebhookSecret, WebhookSettings, MAX_BACKOFF};

pub const SIGNATURE_HEADER: &str = "X-App-Executor-Signature";
pub const EVENT_HEADER: &str = "X-App-Executor-Event";
pub const DELIVERY_HEADER: &str = "X-App-Executor-Delivery";

type HmacSha256 = Hmac<sha2_hmac::Sha256>;

/// `sha256=<lowercase hex HMAC-SHA256 of body under secret>`, the signature header's value.
pub fn signature(secret: &WebhookSecret, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("HMAC accepts any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// One event on its way to the webhook.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub id: Uuid,
    /// The event's name (`X-App-Executor-Event`).
    pub event: &'a str,
    /// The event's JSON document, sent byte for byte as signed.
    pub body: &'a str,
}

/// What an attempt's result means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    Retry,
    GiveUp,
}

/// The verdict on an HTTP status.
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        429 | 500..=599 => Verdict::Retry,
        _ => Verdict::GiveUp,
    }
}

/// The wait after failed attempt `attempt` (1-based): base × 2^(attempt−1), capped.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exponent = attempt.clamp(1, 20) - 1;
    base.saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_BACKOFF)
}

/// The wait before the next attempt: the backoff, or longer when the receiver asked for it
/// (`Retry-After`), and never more than [`MAX_BACKOFF`].
pub fn retry_wait(base: Duration, attempt: u32, asked: Option<Duration>) -> Duration {
    backoff(base, attempt)
        .max(asked.unwrap_or_default())
        .min(MAX_BACKOFF)
}

/// The wait a `Retry-After` value asks for: delay-seconds or an HTTP date (RFC 9110 §10.2.3);
/// `None` when it is neither. A date in the past asks for no wait.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub verdict: Verdict,
    /// The answer (`HTTP 503 Service Unavailable`) or the error, for logs and `last_error`.
    pub last: String,
    /// What a `Retry-After` header asked for.
    pub asked_wait: Option<Duration>,
}

/// The webhook client: the HTTP client `app` built, and the settings.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub client: reqwest::Client,
    pub settings: WebhookSettings,
}

impl Webhook {
    /// POSTs `delivery` once, signed when a secret is set.
    pub async fn attempt(&self, delivery: Delivery<'_>) -> Attempt {
        let settings = &self.settings;
        let mut request = self
            .client
            .post(settings.url.clone())
            .timeout(settings.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, delivery.event)
            .header(DELIVERY_HEADER, delivery.id.to_string())
            .body(delivery.body.to_owned());
        if let Some(secret) = &settings.secret {
            let id = delivery.id.to_string();
            let timestamp = crate::signature::unix_seconds(SystemTime::now());
            let key = crate::signature::key_of(secret.expose_str());
            request = request
                .header(
                    SIGNATURE_HEADER,
                    signature(secret, delivery.body.as_bytes()),
                )
                .header(crate::signature::ID_HEADER, &id)
                .header(crate::signature::TIMESTAMP_HEADER, timestamp.to_string())
                .header(
                    crate::signature::SIGNATURE_HEADER,
                    crate::signature::sign(&key, &id, timestamp, delivery.body.as_bytes()),
                );
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let asked_wait = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, SystemTime::now()));
                Attempt {
                    verdict: verdict(status.as_u16()),
                    last: format!("HTTP {status}"),
                    asked_wait,
                }
            }
            // Connection refused, reset, TLS, timeout: the receiver may come back.
            Err(e) => Attempt {
                verdict: Verdict::Retry,
                last: describe(&e),
                asked_wait: None,
            },
        }
    }
}

/// A request error without its URL (which may carry a token).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(e) = source {
        detail = e.to_string();
        source = e.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        let secret = WebhookSecret::new("Jefe");
        assert_eq!(
            signature(&secret, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_server_errors_and_429_are_retried() {
        assert_eq!(verdict(200), Verdict::Delivered);
        assert_eq!(verdict(204), Verdict::Delivered);
        assert_eq!(verdict(500), Verdict::Retry);
        assert_eq!(verdict(503), Verdict::Retry);
        assert_eq!(verdict(429), Verdict::Retry);
        assert_eq!(verdict(400), Verdict::GiveUp);
        assert_eq!(verdict(404), Verdict::GiveUp);
        assert_eq!(verdict(301), Verdict::GiveUp);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 1), Duration::from_secs(1));
        assert_eq!(backoff(base, 2), Duration::from_secs(2));
        assert_eq!(backoff(base, 4), Duration::from_secs(8));
        assert_eq!(backoff(base, 10), MAX_BACKOFF);
        assert_eq!(backoff(base, u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_retry_waits_at_least_what_the_receiver_asked_up_to_the_cap() {
        let base = Duration::from_millis(10);
        assert_eq!(retry_wait(base, 1, None), base);
        assert_eq!(
            retry_wait(base, 1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(retry_wait(base, 3, Some(Duration::ZERO)), base * 4);
        assert_eq!(
            retry_wait(base, 1, Some(Duration::from_secs(3600))),
            MAX_BACKOFF
        );
    }
}
