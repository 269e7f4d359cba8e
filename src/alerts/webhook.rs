//! POSTing events to the configured webhook: the signature, which answers are retried, and the
//! bounded retry loop of one delivery.
//!
//! A delivery is one event with a delivery id (`X-App-Executor-Delivery`, the same on every
//! attempt, so a receiver can drop duplicates). 2xx ends it; 5xx, 429, timeouts and connection
//! errors are retried with exponential backoff up to `max_attempts`, waiting at least what a
//! `Retry-After` header asks (capped like the backoff); any other answer (a 4xx other than 429,
//! a redirect) is final. Never logs the secret, nor the URL's path (it often
//! carries a token).

use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use uuid::Uuid;

use super::event::EventKind;
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
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub event: EventKind,
    pub run_id: Uuid,
    /// The event's JSON document, sent byte for byte as signed.
    pub body: String,
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

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered {
        attempts: u32,
    },
    /// Out of attempts, or a final refusal; `last` describes the last attempt.
    Failed {
        attempts: u32,
        last: String,
    },
}

/// The webhook client: the HTTP client `app` built, and the settings.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub client: reqwest::Client,
    pub settings: WebhookSettings,
}

impl Webhook {
    /// Sends one delivery, retrying as the module header says.
    pub async fn deliver(&self, delivery: &Delivery) -> DeliveryResult {
        let settings = &self.settings;
        let signature = settings
            .secret
            .as_ref()
            .map(|s| signature(s, delivery.body.as_bytes()));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .client
                .post(settings.url.clone())
                .timeout(settings.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(EVENT_HEADER, delivery.event.as_str())
                .header(DELIVERY_HEADER, delivery.id.to_string())
                .body(delivery.body.clone());
            if let Some(signature) = &signature {
                request = request.header(SIGNATURE_HEADER, signature);
            }
            let (verdict, last, asked_wait) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let asked_wait = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry_after(v, SystemTime::now()));
                    (
                        verdict(status.as_u16()),
                        format!("HTTP {status}"),
                        asked_wait,
                    )
                }
                // Connection refused, reset, TLS, timeout: the receiver may come back.
                Err(e) => (Verdict::Retry, describe(&e), None),
            };
            match verdict {
                Verdict::Delivered => return DeliveryResult::Delivered { attempts: attempt },
                Verdict::Retry if attempt < settings.max_attempts => {
                    let wait = backoff(settings.retry_backoff, attempt)
                        .max(asked_wait.unwrap_or_default())
                        .min(MAX_BACKOFF);
                    tracing::debug!(delivery_id = %delivery.id, attempt, %last, retry_in = ?wait, "webhook attempt failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Verdict::Retry | Verdict::GiveUp => {
                    return DeliveryResult::Failed {
                        attempts: attempt,
                        last,
                    }
                }
            }
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
}
